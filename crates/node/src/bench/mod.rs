//! `aleph-node bench <what>`: benchmarks that print ratios against a baseline measured in the same run.

mod vm;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Start a program VM to its first answer, against a bare QEMU reference; QEMU memory per idle VM.
    Vm(vm::Args),
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Vm(args) => vm::run(args).await,
    }
}
