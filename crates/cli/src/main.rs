//! `aleph`: accounts, files, messages, aggregates and programs on an Aleph network.

mod archive;
mod client;
mod commands;
mod context;
mod keystore;
mod output;
mod rejection;
mod scheduler;

use clap::{Parser, Subcommand};
use client::CcnError;
use context::Context;
use output::Output;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "aleph",
    version,
    about = "Use an Aleph compute network from the command line"
)]
struct Cli {
    /// URL of the CCN to talk to.
    #[arg(
        long,
        global = true,
        env = "ALEPH_CCN",
        default_value = "http://127.0.0.1:4024"
    )]
    ccn: String,

    /// URL of the scheduler that places persistent programs (`aleph-node scheduler`).
    #[arg(
        long,
        global = true,
        env = "ALEPH_SCHEDULER_URL",
        default_value = "http://127.0.0.1:4030"
    )]
    scheduler: String,

    /// Sign with this private key (64 hex characters); takes precedence over --account.
    #[arg(long, global = true, value_name = "HEX")]
    private_key: Option<String>,

    /// Sign with this stored account (see `aleph account list`); default: the default account.
    #[arg(long, global = true, value_name = "NAME")]
    account: Option<String>,

    /// Print results (and errors) as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, import and inspect local accounts (signing keys).
    Account {
        #[command(subcommand)]
        command: commands::account::AccountCommand,
    },
    /// Upload and download files.
    File {
        #[command(subcommand)]
        command: commands::file::FileCommand,
    },
    /// Read, list and forget messages.
    Message {
        #[command(subcommand)]
        command: commands::message::MessageCommand,
    },
    /// Post and read aggregates (per-address key-value documents).
    Aggregate {
        #[command(subcommand)]
        command: commands::aggregate::AggregateCommand,
    },
    /// Upload, update, list and delete programs (serverless HTTP apps).
    Program {
        #[command(subcommand)]
        command: commands::program::ProgramCommand,
    },
    /// Create, list and control instances (full VMs reached over SSH).
    Instance {
        #[command(subcommand)]
        command: commands::instance::InstanceCommand,
    },
    /// Stop keeping a persistent program running (`program unpersist`).
    Unpersist(commands::program::PersistArgs),
    /// The compute nodes the scheduler knows.
    Node {
        #[command(subcommand)]
        command: commands::node::NodeCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output { json: cli.json };
    let ctx = Context {
        ccn_url: cli.ccn,
        scheduler_url: cli.scheduler,
        private_key: cli.private_key,
        account: cli.account,
        out,
    };
    let result = match cli.command {
        Command::Account { command } => commands::account::run(&ctx, command).await,
        Command::File { command } => commands::file::run(&ctx, command).await,
        Command::Message { command } => commands::message::run(&ctx, command).await,
        Command::Aggregate { command } => commands::aggregate::run(&ctx, command).await,
        Command::Program { command } => commands::program::run(&ctx, command).await,
        Command::Instance { command } => commands::instance::run(&ctx, command).await,
        Command::Unpersist(args) => commands::program::set_persistent(&ctx, args, false).await,
        Command::Node { command } => commands::node::run(&ctx, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report_error(&error, out);
            ExitCode::FAILURE
        }
    }
}

/// Shows an error: on stderr for a person, or as a JSON object on stdout with
/// `--json` so scripts can read the rejection code.
fn report_error(error: &anyhow::Error, out: Output) {
    eprintln!("error: {error:#}");
    if out.json {
        let ccn = error.downcast_ref::<CcnError>();
        let code = ccn.and_then(|e| e.code);
        let value = serde_json::json!({
            "error": format!("{error:#}"),
            "http_status": ccn.map(|e| e.http_status),
            "code": code,
            "meaning": code.and_then(rejection::meaning),
            "details": ccn.and_then(|e| e.details.clone()),
        });
        println!("{value:#}");
    }
}
