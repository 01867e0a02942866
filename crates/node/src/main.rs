//! `aleph-node`: every service of the network as a subcommand of one binary.

mod bench;
mod ccn;
mod crn;
mod devnet;
mod images;
mod scheduler;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aleph-node",
    version,
    about = "Run the services of an Aleph compute network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Core Channel Node (messages, files, aggregates, balances).
    Ccn(ccn::Args),
    /// Run a Compute Resource Node (on-demand programs in microVMs).
    Crn(crn::Args),
    /// Run the scheduler of persistent VMs (registry, heartbeats, placement, failover).
    Scheduler(scheduler::Args),
    /// Run a local network on loopback: a CCN with pre-funded accounts.
    Devnet(devnet::Args),
    /// Build and cache the guest images (kernel, initramfs, runtimes, instance root filesystem).
    Images(images::Args),
    /// Run a benchmark and print its figures.
    Bench(bench::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // netlink-packet-route warns about every attribute newer than itself.
                .unwrap_or_else(|_| "info,netlink_packet_route=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Ccn(args) => ccn::run(args).await,
        Command::Crn(args) => crn::run(args).await,
        Command::Scheduler(args) => scheduler::run(args).await,
        Command::Devnet(args) => devnet::run(args).await,
        Command::Images(args) => images::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
