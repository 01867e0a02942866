//! `aleph-node bench <what>`: benchmarks that print ratios against a baseline measured in the same run.

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.what {}
}
