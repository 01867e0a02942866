//! `aleph-node images`: builds and caches the guest images (see `aleph_crn::images`).

use aleph_crn::images::{self, BuildOptions, StderrProgress};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Build whatever is missing or stale, verify the rest, and print where they are.
    Build {
        /// The node's data folder (images go to DATA/images).
        #[arg(long, env = images::DATA_DIR_ENV)]
        data_dir: Option<PathBuf>,
        /// The static guest agent (default: $ALEPH_GUEST_BIN, else the output of scripts/build-guest).
        #[arg(long)]
        guest_bin: Option<PathBuf>,
    },
    /// Build (or verify) an instance root filesystem, and print where it is.
    Rootfs {
        /// Which one; only `debian12` so far.
        #[arg(value_enum)]
        distribution: Distribution,
        /// The node's data folder (images go to DATA/images).
        #[arg(long, env = images::DATA_DIR_ENV)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Distribution {
    Debian12,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Build {
            data_dir,
            guest_bin,
        } => {
            let mut opts = BuildOptions::new(data_dir.unwrap_or_else(images::default_data_dir));
            opts.guest_bin = guest_bin;
            let built = images::build(&opts, &StderrProgress).await?;
            println!("kernel_version = {:?}", built.kernel_version);
            println!("vmlinuz        = {:?}", built.vmlinuz);
            println!("vmlinux        = {:?}", built.vmlinux);
            println!("initramfs      = {:?}", built.initramfs);
            println!("python_runtime = {:?}", built.python_runtime);
            println!("agent_sha256   = {:?}", built.agent_sha256);
            Ok(())
        }
        Command::Rootfs {
            distribution: Distribution::Debian12,
            data_dir,
        } => {
            let data_dir = data_dir.unwrap_or_else(images::default_data_dir);
            let built = images::build_rootfs(&data_dir, &StderrProgress).await?;
            println!("image          = {:?}", built.image);
            println!("kernel         = {:?}", built.kernel);
            println!("initrd         = {:?}", built.initrd);
            println!("kernel_version = {:?}", built.kernel_version);
            println!("size_bytes     = {}", built.size_bytes);
            Ok(())
        }
    }
}
