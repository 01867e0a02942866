//! `aleph-node bench placement`: placements per second on one core with simulated nodes
//! and VMs of mixed sizes, and how full the nodes get before the first VM fails to
//! place, against first-fit-decreasing on the same inputs. The logic is
//! `aleph_scheduler::placement::bench`; this only parses arguments and prints.

use aleph_scheduler::placement::{Policy, bench};
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Simulated VMs, placed in arrival order.
    #[arg(long, default_value_t = 100_000)]
    vms: usize,
    /// Seed of the generator (same seed, same nodes and VMs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// bin-pack or spread.
    #[arg(long, default_value = "bin-pack", value_parser = parse_policy)]
    policy: Policy,
}

fn parse_policy(value: &str) -> Result<Policy, String> {
    match value {
        "bin-pack" | "binpack" => Ok(Policy::BinPack),
        "spread" => Ok(Policy::Spread),
        other => Err(format!("unknown policy {other:?}: use bin-pack or spread")),
    }
}

pub async fn run(args: Args) -> Result<()> {
    let config = bench::Config {
        nodes: args.nodes,
        vms: args.vms,
        seed: args.seed,
        policy: args.policy,
    };
    // Single-threaded and CPU-bound: off the async workers.
    let report = tokio::task::spawn_blocking(move || bench::run(&config)).await?;
    println!("{report}");
    Ok(())
}
