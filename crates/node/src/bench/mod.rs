//! `aleph-node bench <what>`: benchmarks that print ratios against a baseline measured in the same run.

mod ccn;
mod placement;
mod program;
mod vm;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Signed messages accepted per second by a CCN on SQLite, p50/p99 latency, against signature verification alone.
    Ccn(ccn::Args),
    /// On-demand programs through a CRN: cold start against the bare QEMU floor, warm requests against direct ones.
    Program(program::Args),
    /// Placements per second with 10,000 simulated nodes and 100,000 VMs, and packing against first-fit-decreasing.
    Placement(placement::Args),
    /// Start a program VM to its first answer, against a bare QEMU reference; QEMU memory per idle VM.
    Vm(vm::Args),
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Ccn(args) => ccn::run(args).await,
        What::Program(args) => program::run(args).await,
        What::Placement(args) => placement::run(args).await,
        What::Vm(args) => vm::run(args).await,
    }
}
