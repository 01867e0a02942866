//! `aleph-node images`: builds and caches the guest images and the instance
//! root filesystem (see `aleph_crn::images`).

use aleph_crn::images::{self, BuildOptions, RootfsImage, StderrProgress};
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Build whatever is missing or stale (the instance root filesystem too),
    /// verify the rest, and print where they are.
    Build {
        /// The node's data folder (images go to DATA/images).
        #[arg(long, env = images::DATA_DIR_ENV)]
        data_dir: Option<PathBuf>,
        /// The static guest agent (default: $ALEPH_GUEST_BIN, else the output of scripts/build-guest).
        #[arg(long)]
        guest_bin: Option<PathBuf>,
        /// Skip the instance root filesystem (Debian 12; needs root and debootstrap).
        #[arg(long)]
        no_rootfs: bool,
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
            no_rootfs,
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
            if !no_rootfs {
                let rootfs = images::build_rootfs(&opts.data_dir, &StderrProgress)
                    .await
                    .context("building the instance root filesystem (--no-rootfs skips it)")?;
                print_rootfs("rootfs_", &rootfs);
            }
            Ok(())
        }
        Command::Rootfs {
            distribution: Distribution::Debian12,
            data_dir,
        } => {
            let data_dir = data_dir.unwrap_or_else(images::default_data_dir);
            let built = images::build_rootfs(&data_dir, &StderrProgress).await?;
            print_rootfs("", &built);
            Ok(())
        }
    }
}

/// One `name = value` line per file, names starting with `prefix`.
fn print_rootfs(prefix: &str, rootfs: &RootfsImage) {
    let lines = [
        ("image", format!("{:?}", rootfs.image)),
        ("kernel", format!("{:?}", rootfs.kernel)),
        ("initrd", format!("{:?}", rootfs.initrd)),
        ("kernel_version", format!("{:?}", rootfs.kernel_version)),
        ("size_bytes", rootfs.size_bytes.to_string()),
    ];
    for (name, value) in lines {
        println!("{:<14} = {value}", format!("{prefix}{name}"));
    }
}
