//! `aleph program upload|update|list|delete|persist|unpersist|status`:
//! serverless programs.
//!
//! A program is two messages: a STORE pinning its code (a zip of the folder)
//! and a PROGRAM saying how to run it (entrypoint, runtime, resources). The
//! PROGRAM's hash is its address on every CRN: `{crn}/vm/{hash}/`, or the host
//! `{base32(hash)}.{domain}`. A new version of the code is a STORE whose `ref`
//! is the original code STORE; the program keeps its hash and CRNs run the
//! newest version because `code.use_latest` is set.
//!
//! A persistent program (`on.persistent`) is kept running on one node by the
//! scheduler instead of booted on demand. As upstream, making a program
//! persistent or not posts a copy of its PROGRAM with the flag flipped (a new
//! hash) and forgets the old one, so the scheduler drops it.

use super::file::{self, PaymentChoice};
use super::publish;
use crate::archive;
use crate::client::CcnClient;
use crate::context::Context;
use aleph_protocol::scheduler::{AllocationEntry, VmEntry, vm_status};
use aleph_protocol::signing::Signer;
use aleph_types::item_hash::ItemHash;
use aleph_types::message::execution::base::{Encoding, ExecutableContent, Payment};
use aleph_types::message::execution::environment::{
    FunctionEnvironment, FunctionTriggers, MachineResources,
};
use aleph_types::message::{
    CodeContent, ForgetContent, FunctionRuntime, MessageType, ProgramContent, RawFileRef,
};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The aggregate listing runtimes, with the shape of the public network's
/// (`{runtimes: {name: {hash, display_name}}, defaults: {runtime: name}}`).
const VM_IMAGES_KEY: &str = "vm-images";

#[derive(Subcommand)]
pub enum ProgramCommand {
    /// Upload a folder (zipped), a .zip or a .squashfs as a program and print its URL.
    Upload(UploadArgs),
    /// Publish a new version of a program's code; the program keeps its hash and URL.
    Update {
        /// The PROGRAM message's hash.
        hash: String,
        /// The new code: a folder, a .zip or a .squashfs, like the original.
        path: PathBuf,
        /// Channel of the new STORE; default: the original code's.
        #[arg(long)]
        channel: Option<String>,
        #[command(flatten)]
        crn: CrnArg,
    },
    /// List the programs of an address.
    List {
        /// Owner of the programs; default: the signing account.
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        crn: CrnArg,
    },
    /// Forget a program and (unless --keep-code) its code and the code's versions.
    Delete {
        hash: String,
        #[arg(long)]
        keep_code: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Keep a program running on one node (placed by the scheduler): posts a
    /// copy with `on.persistent` set (a new hash) and forgets the old one.
    Persist(PersistArgs),
    /// Run a persistent program on demand again: posts a copy without
    /// `on.persistent` (a new hash) and forgets the old one, which stops it.
    Unpersist(PersistArgs),
    /// Where a persistent program runs and since when (the scheduler's view),
    /// or that it runs on demand.
    Status {
        /// The PROGRAM (or INSTANCE) message's hash.
        hash: String,
        #[command(flatten)]
        crn: CrnArg,
    },
}

#[derive(Args)]
pub struct PersistArgs {
    /// The PROGRAM message's hash.
    hash: String,
    /// Channel of the new PROGRAM; default: the old one's.
    #[arg(long)]
    channel: Option<String>,
    #[command(flatten)]
    crn: CrnArg,
}

#[derive(Args)]
pub struct CrnArg {
    /// The CRN whose URL to print for the program.
    #[arg(
        long,
        env = "ALEPH_CRN",
        default_value = "http://127.0.0.1:4020",
        value_name = "URL"
    )]
    crn: String,
}

#[derive(Args)]
pub struct UploadArgs {
    /// A folder (zipped, its files at the root), a .zip, a .squashfs, or a single file.
    path: PathBuf,
    /// `module:app` for an ASGI app (main:app is main.py's `app`), else a file to run.
    entrypoint: String,
    /// The runtime's STORE hash; default: the CCN's `vm-images` default runtime.
    #[arg(long, env = "ALEPH_RUNTIME", value_name = "HASH")]
    runtime: Option<String>,
    /// Whose `vm-images` aggregate names the default runtime; default: the
    /// devnet's first account (`aleph-node devnet` publishes it there), else
    /// the public network's.
    #[arg(long, env = "ALEPH_IMAGES_ADDRESS", value_name = "ADDRESS")]
    images_address: Option<String>,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory of the VM in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    memory: u64,
    /// Per-request timeout.
    #[arg(long, default_value_t = 30, value_name = "S")]
    timeout_seconds: u32,
    /// Environment variables of the app: `K=V,K2=V2`.
    #[arg(long, value_name = "K=V,...")]
    env_vars: Option<String>,
    /// Give the VM a network interface with internet access.
    #[arg(long)]
    internet: bool,
    /// Keep it running (allocated by the scheduler) instead of on demand.
    #[arg(long)]
    persistent: bool,
    /// Allow later PROGRAM messages to replace this one (`allow_amend`).
    #[arg(long)]
    updatable: bool,
    /// A name shown by `program list`; default: the folder's or file's name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_enum, default_value_t = PaymentChoice::Credit)]
    payment: PaymentChoice,
    #[arg(long)]
    channel: Option<String>,
    #[command(flatten)]
    crn: CrnArg,
}

pub async fn run(ctx: &Context, command: ProgramCommand) -> Result<()> {
    match command {
        ProgramCommand::Upload(args) => upload(ctx, args).await,
        ProgramCommand::Update {
            hash,
            path,
            channel,
            crn,
        } => update(ctx, &hash, &path, channel, &crn.crn).await,
        ProgramCommand::List { address, crn } => list(ctx, address, &crn.crn).await,
        ProgramCommand::Delete {
            hash,
            keep_code,
            reason,
        } => delete(ctx, &hash, keep_code, reason).await,
        ProgramCommand::Persist(args) => set_persistent(ctx, args, true).await,
        ProgramCommand::Unpersist(args) => set_persistent(ctx, args, false).await,
        ProgramCommand::Status { hash, crn } => status(ctx, &hash, &crn.crn).await,
    }
}

async fn upload(ctx: &Context, args: UploadArgs) -> Result<()> {
    let signer = ctx.signer()?;
    let client = ctx.client()?;
    // Everything that can be checked locally is, before anything is uploaded.
    let archive = archive::prepare(&args.path, &args.entrypoint)?;
    let variables = args.env_vars.as_deref().map(parse_env_vars).transpose()?;
    let explicit_runtime = args
        .runtime
        .as_deref()
        .map(|hash| parse_hash(hash, "--runtime"))
        .transpose()?;
    let runtime = match explicit_runtime {
        Some(reference) => FunctionRuntime {
            reference,
            use_latest: true,
            comment: String::new(),
        },
        None => default_runtime(&client, args.images_address.as_deref(), &ctx.ccn_url).await?,
    };
    let payment: Payment = args.payment.into();

    let stored = file::store(
        ctx,
        &client,
        &signer,
        &archive.path,
        None,
        payment.clone(),
        args.channel.clone(),
    )
    .await
    .context("uploading the code")?;

    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.path));
    let content = ProgramContent {
        program_type: Default::default(),
        base: ExecutableContent {
            allow_amend: args.updatable,
            metadata: Some(HashMap::from([("name".to_owned(), json!(name))])),
            variables,
            resources: MachineResources {
                vcpus: args.vcpus,
                memory: memsizes::MiB::from(args.memory),
                seconds: args.timeout_seconds,
                published_ports: None,
            },
            payment: Some(payment),
            requirements: None,
            volumes: Vec::new(),
            replaces: None,
            authorized_keys: None,
        },
        code: CodeContent {
            encoding: archive.encoding.clone(),
            entrypoint: args.entrypoint.clone(),
            reference: parse_hash(&stored.item_hash, "the code STORE")?,
            // The interface follows from the entrypoint (`:` means ASGI), as upstream.
            interface: None,
            args: None,
            use_latest: true,
        },
        runtime: runtime.clone(),
        data: None,
        environment: FunctionEnvironment {
            reproducible: false,
            internet: args.internet,
            aleph_api: true,
            shared_cache: false,
        },
        export: None,
        on: FunctionTriggers {
            http: true,
            persistent: Some(args.persistent),
        },
    };
    let (message, accepted) = publish(
        &client,
        &signer,
        MessageType::Program,
        &content,
        args.channel,
    )
    .await
    .context("posting the PROGRAM message")?;

    let item_hash = message.item_hash.to_string();
    let url = vm_url(&args.crn.crn, &item_hash);
    let host = hostname(&item_hash);
    let allocation_url = args
        .persistent
        .then(|| allocation_url(&ctx.scheduler_url, &item_hash));
    let value = json!({
        "item_hash": item_hash,
        "status": accepted.status,
        "pending_reason": accepted.pending_reason,
        "url": url,
        "hostname": host,
        "code_ref": stored.item_hash,
        "file_hash": stored.file_hash,
        "encoding": encoding_name(&archive.encoding),
        "entrypoint": args.entrypoint,
        "runtime": runtime.reference.to_string(),
        "name": name,
        "persistent": args.persistent,
        "allocation_url": allocation_url,
    });
    ctx.out.result(&value, || {
        let mut lines = vec![
            format!("program {item_hash} ({})", accepted.describe()),
            format!(
                "  code:     STORE {} ({}, {})",
                stored.item_hash,
                encoding_name(&archive.encoding),
                args.path.display()
            ),
            format!("  runtime:  {}", runtime.reference),
        ];
        // A persistent program answers on the node the scheduler places it on, which
        // this CRN may not be (it then answers 503).
        if allocation_url.is_none() {
            lines.push(format!("  URL:      {url}"));
        }
        if let Some(host) = &host {
            lines.push(format!("  host:     {host}.<domain of the CRN>"));
        }
        match &allocation_url {
            Some(allocation) => {
                lines.push(format!(
                    "  persistent: the scheduler places it on a node ({allocation})"
                ));
                lines.push(format!(
                    "Where it runs (and its URL): aleph program status {item_hash}"
                ));
            }
            None => lines.push(format!("Try: curl {url}")),
        }
        lines.join("\n")
    });
    Ok(())
}

async fn update(
    ctx: &Context,
    hash: &str,
    path: &Path,
    channel: Option<String>,
    crn: &str,
) -> Result<()> {
    let signer = ctx.signer()?;
    let client = ctx.client()?;
    let program = own_program(&client, &signer, hash).await?;
    let code = &program["code"];
    let code_ref = code["ref"]
        .as_str()
        .context("the PROGRAM has no code.ref")?
        .to_owned();
    if code["use_latest"].as_bool() != Some(true) {
        bail!(
            "program {hash} pins its code (code.use_latest is false): CRNs would never run a new version; upload a new program instead"
        );
    }
    let entrypoint = code["entrypoint"].as_str().unwrap_or_default();
    let archive = archive::prepare(path, entrypoint)?;
    let encoding = encoding_name(&archive.encoding);
    let current = code["encoding"].as_str().unwrap_or("zip");
    if encoding != current {
        bail!("the new code is {encoding} but program {hash} runs {current} code");
    }
    // The new version goes where the original is, paid the way the program is.
    let original = client.message(&code_ref).await?;
    let channel = channel.or_else(|| {
        original
            .as_ref()
            .and_then(|o| o["message"]["channel"].as_str())
            .map(str::to_owned)
    });
    let payment = match program["payment"]["type"].as_str() {
        Some("hold") => Payment::hold(),
        _ => Payment::credits(),
    };
    let stored = file::store(
        ctx,
        &client,
        &signer,
        &archive.path,
        Some(RawFileRef::ItemHash(parse_hash(&code_ref, "code.ref")?)),
        payment,
        channel,
    )
    .await
    .context("uploading the new code")?;

    let url = vm_url(crn, hash);
    let value = json!({
        "item_hash": hash,
        "code_ref": code_ref,
        "new_code_ref": stored.item_hash,
        "file_hash": stored.file_hash,
        "status": stored.status,
        "url": url,
        "hostname": hostname(hash),
    });
    ctx.out.result(&value, || {
        format!(
            "program {hash}: new code STORE {} ({}), a version of {code_ref}\nRunning VMs stop on their CRN when it sees it; next request runs the new code: curl {url}",
            stored.item_hash, stored.status
        )
    });
    Ok(())
}

async fn list(ctx: &Context, address: Option<String>, crn: &str) -> Result<()> {
    let address = ctx.address_or_own(address)?;
    let page = ctx
        .client()?
        .messages(&[
            ("msgTypes", "PROGRAM".to_owned()),
            ("owners", address.clone()),
            ("pagination", "500".to_owned()),
        ])
        .await?;
    let programs: Vec<Value> = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let hash = m["item_hash"].as_str().unwrap_or_default();
            let content = &m["content"];
            json!({
                "item_hash": hash,
                "name": content["metadata"]["name"],
                "entrypoint": content["code"]["entrypoint"],
                "code_ref": content["code"]["ref"],
                "runtime": content["runtime"]["ref"],
                "persistent": content["on"]["persistent"],
                "time": m["time"],
                "url": vm_url(crn, hash),
                "hostname": hostname(hash),
            })
        })
        .collect();
    let value = Value::Array(programs.clone());
    ctx.out.result(&value, || {
        if programs.is_empty() {
            return format!("{address} has no programs");
        }
        programs
            .iter()
            .map(|p| {
                format!(
                    "{}  {:<16} {}  {}",
                    p["item_hash"].as_str().unwrap_or("?"),
                    p["name"].as_str().unwrap_or("-"),
                    p["entrypoint"].as_str().unwrap_or("?"),
                    p["url"].as_str().unwrap_or("?"),
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

async fn delete(ctx: &Context, hash: &str, keep_code: bool, reason: Option<String>) -> Result<()> {
    let signer = ctx.signer()?;
    let client = ctx.client()?;
    let program = own_program(&client, &signer, hash).await?;
    // Found before anything is forgotten, so a failure here changes nothing.
    let code_hashes = match program["code"]["ref"].as_str() {
        Some(code_ref) if !keep_code => code_versions(&client, signer.address(), code_ref).await?,
        _ => Vec::new(),
    };
    // The program first: the CCN refuses to forget a STORE that a live
    // program still uses.
    let (forget, _) = publish(
        &client,
        &signer,
        MessageType::Forget,
        &ForgetContent::new(
            vec![parse_hash(hash, "the program")?],
            Vec::new(),
            reason.clone(),
        ),
        None,
    )
    .await
    .context("forgetting the program")?;

    let mut code_forget = None;
    if !code_hashes.is_empty() {
        let targets = code_hashes
            .iter()
            .map(|h| parse_hash(h, "a code STORE"))
            .collect::<Result<Vec<_>>>()?;
        let (message, _) = publish(
            &client,
            &signer,
            MessageType::Forget,
            &ForgetContent::new(targets, Vec::new(), reason),
            None,
        )
        .await
        .with_context(|| format!("the program {hash} is forgotten, but its code could not be"))?;
        code_forget = Some(message.item_hash.to_string());
    }
    let value = json!({
        "item_hash": hash,
        "forget_hash": forget.item_hash.to_string(),
        "code_forget_hash": code_forget,
        "forgotten_code": code_hashes,
    });
    ctx.out.result(&value, || {
        let mut text = format!("program {hash} forgotten ({})", forget.item_hash);
        if !code_hashes.is_empty() {
            text.push_str(&format!(
                "\ncode forgotten: {} STORE(s): {}",
                code_hashes.len(),
                code_hashes.join(", ")
            ));
        }
        text
    });
    Ok(())
}

/// `program persist|unpersist` and `aleph unpersist`: posts a copy of the
/// PROGRAM with `on.persistent` flipped (fresh time, same code, runtime and
/// resources), then forgets the old one so the scheduler stops it.
pub async fn set_persistent(ctx: &Context, args: PersistArgs, persistent: bool) -> Result<()> {
    let signer = ctx.signer()?;
    let client = ctx.client()?;
    let old_hash = args.hash.trim();
    let message = own_program_message(&client, &signer, old_hash).await?;
    let content = &message["content"];
    let state = |p: bool| if p { "persistent" } else { "on demand" };
    if is_persistent(content) == persistent {
        bail!(
            "program {old_hash} is already {}: nothing to do",
            state(persistent)
        );
    }
    let copy = persistent_copy(content, persistent)?;
    let channel = args
        .channel
        .or_else(|| message["channel"].as_str().map(str::to_owned));
    let (posted, accepted) = publish(&client, &signer, MessageType::Program, &copy, channel)
        .await
        .with_context(|| format!("posting the {} copy of {old_hash}", state(persistent)))?;
    let item_hash = posted.item_hash.to_string();
    let reason = format!("replaced by {item_hash} ({})", state(persistent));
    let (forget, _) = publish(
        &client,
        &signer,
        MessageType::Forget,
        &ForgetContent::new(
            vec![parse_hash(old_hash, "the program")?],
            Vec::new(),
            Some(reason),
        ),
        None,
    )
    .await
    .with_context(|| {
        format!(
            "program {item_hash} is posted, but the old {old_hash} could not be forgotten (it may still run): `aleph message forget {old_hash}`"
        )
    })?;

    let url = vm_url(&args.crn.crn, &item_hash);
    let allocation = persistent.then(|| allocation_url(&ctx.scheduler_url, &item_hash));
    let value = json!({
        "old_hash": old_hash,
        "item_hash": item_hash,
        "status": accepted.status,
        "url": url,
        "hostname": hostname(&item_hash),
        "persistent": persistent,
        "forget_hash": forget.item_hash.to_string(),
        "allocation_url": allocation,
    });
    ctx.out.result(&value, || {
        let mut lines = vec![
            format!(
                "program {item_hash} ({}), {}: a copy of {old_hash}, which is forgotten",
                accepted.describe(),
                state(persistent)
            ),
            format!("  URL: {url}"),
        ];
        match &allocation {
            Some(allocation) => {
                lines.push(format!(
                    "  the scheduler places it on a node ({allocation}); where it runs: aleph program status {item_hash}"
                ));
            }
            None => lines.push(format!(
                "  it no longer runs permanently; a CRN boots it at its first request: curl {url}"
            )),
        }
        lines.join("\n")
    });
    Ok(())
}

/// Whether a PROGRAM's content asks to be kept running.
fn is_persistent(content: &Value) -> bool {
    content["on"]["persistent"].as_bool() == Some(true)
}

/// The content to post for a copy of a PROGRAM with `on.persistent` set to
/// `persistent`: everything as it was but `address` and `time` (the signer
/// sets them afresh) and `replaces` (the copy replaces nothing).
fn persistent_copy(content: &Value, persistent: bool) -> Result<Value> {
    let Value::Object(fields) = content else {
        bail!("the PROGRAM's content is not an object");
    };
    let mut copy = fields.clone();
    copy.remove("address");
    copy.remove("time");
    if copy.contains_key("replaces") {
        copy.insert("replaces".into(), Value::Null);
    }
    let on = copy.entry("on").or_insert_with(|| json!({"http": true}));
    let Value::Object(on) = on else {
        bail!("the PROGRAM's `on` is not an object");
    };
    on.insert("persistent".into(), Value::Bool(persistent));
    Ok(Value::Object(copy))
}

/// `program status`: on demand, or the scheduler's view of where it runs.
async fn status(ctx: &Context, hash: &str, crn: &str) -> Result<()> {
    parse_hash(hash, "the program")?;
    let Some(status) = ctx.client()?.message(hash).await? else {
        bail!("the CCN does not know the message {hash}");
    };
    match status["status"].as_str() {
        Some("processed") => {}
        Some("forgotten") => bail!(
            "program {hash} is forgotten: it runs nowhere (a program made persistent or on demand has a new hash: see `aleph program list`)"
        ),
        Some(other) => bail!("message {hash} is {other}, not a live program"),
        None => bail!("the CCN sent no status for {hash}"),
    }
    let message = &status["message"];
    let kind = message["type"]
        .as_str()
        .unwrap_or("message of unknown type");
    if kind != "PROGRAM" && kind != "INSTANCE" {
        bail!("message {hash} is a {kind}, not a PROGRAM");
    }
    if kind == "PROGRAM" && !is_persistent(&message["content"]) {
        let url = vm_url(crn, hash);
        let value = json!({
            "item_hash": hash,
            "persistent": false,
            "status": "on-demand",
            "url": url,
        });
        ctx.out.result(&value, || {
            format!(
                "program {hash} runs on demand: a CRN boots it at its first request and stops it when idle\nTry: curl {url}"
            )
        });
        return Ok(());
    }
    let scheduler = ctx.scheduler()?;
    let vm = scheduler.vm(hash).await?;
    let allocation = scheduler.allocation(hash).await?;
    let (value, text) = placement(hash, vm.as_ref(), allocation.as_ref(), scheduler.base());
    ctx.out.result(&value, || text);
    Ok(())
}

/// What `program status` says of a persistent VM from the scheduler's two
/// answers: its entry in `/api/v1/vms` and its allocation, if any.
fn placement(
    hash: &str,
    vm: Option<&VmEntry>,
    allocation: Option<&AllocationEntry>,
    scheduler: &str,
) -> (Value, String) {
    let node_hash = allocation
        .map(|a| a.node.node_id.clone())
        .or_else(|| vm.and_then(|v| v.allocated_node.clone()));
    let node_url = allocation
        .map(|a| a.node.url.clone())
        .or_else(|| vm.and_then(|v| v.allocated_url.clone()));
    let since = allocation
        .map(|a| a.since.clone())
        .or_else(|| vm.and_then(|v| v.since.clone()));
    let status = vm.map(|v| v.status.clone()).unwrap_or_else(|| {
        if allocation.is_some() {
            vm_status::SCHEDULED.to_owned()
        } else {
            "unknown".to_owned()
        }
    });
    let reason = vm.and_then(|v| v.reason.clone());
    let url = node_url.as_deref().map(|n| vm_url(n, hash));
    let value = json!({
        "item_hash": hash,
        "persistent": true,
        "vm_type": vm.map(|v| v.vm_type.clone()).or_else(|| allocation.map(|a| a.vm_type.clone())),
        "status": status,
        "node": node_hash.as_ref().map(|h| json!({"hash": h, "url": node_url})),
        "url": url,
        "since": since,
        "reason": reason,
        "allocation_version": allocation.map(|a| a.allocation_version),
        "owner": vm.map(|v| v.owner.clone()),
    });
    let since_text = since
        .as_deref()
        .map(|s| format!(" since {s}"))
        .unwrap_or_default();
    let node_text = match (&node_hash, &node_url) {
        (Some(h), Some(u)) => format!("node {h} ({u})"),
        (Some(h), None) => format!("node {h}"),
        _ => "no node".to_owned(),
    };
    let text = match (vm, status.as_str()) {
        (None, _) if allocation.is_none() => format!(
            "program {hash} is persistent, but the scheduler at {scheduler} does not track it yet (it reads new programs from the CCN within seconds; ask again)"
        ),
        (_, vm_status::UNSCHEDULABLE) => format!(
            "program {hash} is persistent but cannot be placed{since_text}: {}",
            reason.as_deref().unwrap_or("the scheduler gave no reason")
        ),
        (_, vm_status::MISSING) => format!(
            "program {hash} was on {node_text}, which went silent{since_text}; the scheduler is placing it on another node"
        ),
        (_, vm_status::REMOVED) => format!(
            "program {hash} is no longer persistent (forgotten, replaced or unpersisted){since_text}; it runs nowhere"
        ),
        _ => {
            let mut lines = vec![format!(
                "program {hash} is {status} on {node_text}{since_text}"
            )];
            if let Some(url) = &url {
                lines.push(format!("Try: curl {url}"));
            }
            lines.join("\n")
        }
    };
    (value, text)
}

fn allocation_url(scheduler: &str, hash: &str) -> String {
    format!(
        "{}/api/v0/allocation/{hash}",
        scheduler.trim_end_matches('/')
    )
}

/// The code STORE and every new version of it (STOREs whose `ref` is it)
/// that `owner` posted and that are not forgotten yet.
async fn code_versions(client: &CcnClient, owner: &str, code_ref: &str) -> Result<Vec<String>> {
    let mut hashes = Vec::new();
    if let Some(status) = client.message(code_ref).await?
        && status["status"] == "processed"
        && status["message"]["content"]["address"]
            .as_str()
            .is_some_and(|a| a.eq_ignore_ascii_case(owner))
    {
        hashes.push(code_ref.to_owned());
    }
    let page = client
        .messages(&[
            ("msgTypes", "STORE".to_owned()),
            ("refs", code_ref.to_owned()),
            ("owners", owner.to_owned()),
            ("pagination", "500".to_owned()),
        ])
        .await?;
    for message in page["messages"].as_array().into_iter().flatten() {
        if let Some(hash) = message["item_hash"].as_str()
            && !hashes.iter().any(|h| h == hash)
        {
            hashes.push(hash.to_owned());
        }
    }
    Ok(hashes)
}

/// The content of a processed PROGRAM owned by the signer, or a clear error.
async fn own_program(client: &CcnClient, signer: &Signer, hash: &str) -> Result<Value> {
    Ok(own_program_message(client, signer, hash).await?["content"].take())
}

/// The message of a processed PROGRAM owned by the signer, or a clear error.
async fn own_program_message(client: &CcnClient, signer: &Signer, hash: &str) -> Result<Value> {
    parse_hash(hash, "the program")?;
    let Some(status) = client.message(hash).await? else {
        bail!("the CCN does not know the message {hash}");
    };
    match status["status"].as_str() {
        Some("processed") => {}
        Some(other) => bail!("message {hash} is {other}, not a live program"),
        None => bail!("the CCN sent no status for {hash}"),
    }
    let message = status["message"].clone();
    if message["type"] != "PROGRAM" {
        bail!(
            "message {hash} is a {}, not a PROGRAM",
            message["type"]
                .as_str()
                .unwrap_or("message of unknown type")
        );
    }
    let owner = message["content"]["address"].as_str().unwrap_or_default();
    if !owner.eq_ignore_ascii_case(signer.address()) {
        bail!(
            "program {hash} belongs to {owner}, not to the signing account {}",
            signer.address()
        );
    }
    Ok(message)
}

/// The address under which the public network's `vm-images` aggregate lives
/// (the foundation's, as the official clients read it).
const NETWORK_IMAGES_ADDRESS: &str = "0xFba561a84A537fCaa567bb7A2257e7142701ae2A";

/// The default runtime named in a `vm-images` aggregate: of `images_address`
/// when given, else of the devnet's first account, else of the public
/// network's address, whichever the CCN has first.
async fn default_runtime(
    client: &CcnClient,
    images_address: Option<&str>,
    ccn_url: &str,
) -> Result<FunctionRuntime> {
    let candidates = match images_address {
        Some(address) => vec![address.to_owned()],
        None => vec![devnet_images_address()?, NETWORK_IMAGES_ADDRESS.to_owned()],
    };
    let how_to = "pass --runtime HASH (the STORE of a runtime squashfs) or set ALEPH_RUNTIME; \
                  a devnet started with its CRN (`aleph-node devnet`) publishes a default";
    let mut problems = Vec::new();
    for address in &candidates {
        match client.aggregate(address, VM_IMAGES_KEY).await? {
            Some(images) => match runtime_of(&images) {
                Ok(runtime) => return Ok(runtime),
                Err(problem) => problems.push(format!("{address}: {problem}")),
            },
            None => problems.push(format!("{address}: no {VM_IMAGES_KEY:?} aggregate")),
        }
    }
    bail!(
        "no --runtime given, and no default runtime on {ccn_url} ({}): {how_to}",
        problems.join("; ")
    )
}

/// The default runtime of a `vm-images` aggregate's content.
fn runtime_of(images: &Value) -> Result<FunctionRuntime> {
    let Some(name) = images["defaults"]["runtime"].as_str() else {
        bail!("it names no default runtime");
    };
    let entry = &images["runtimes"][name];
    let Some(hash) = entry["hash"].as_str() else {
        bail!("its default runtime {name:?} has no hash");
    };
    Ok(FunctionRuntime {
        reference: parse_hash(hash, "the default runtime")?,
        use_latest: true,
        comment: entry["display_name"].as_str().unwrap_or(name).to_owned(),
    })
}

/// The devnet's first account (key sha256("aleph-devnet-account-0"), see
/// `aleph-node devnet`): the default publisher of the `vm-images` aggregate,
/// as the CLI's default CCN is the devnet's.
fn devnet_images_address() -> Result<String> {
    let key = Sha256::digest(b"aleph-devnet-account-0");
    Ok(Signer::from_hex(&hex::encode(key))?.address().to_owned())
}

fn parse_hash(hash: &str, what: &str) -> Result<ItemHash> {
    ItemHash::try_from(hash.trim())
        .map_err(|e| anyhow::anyhow!("{what}: {hash:?} is not an item hash ({e})"))
}

/// `K=V,K2=V2` into a map; values cannot hold a comma (as upstream).
fn parse_env_vars(text: &str) -> Result<HashMap<String, String>> {
    let mut variables = HashMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env-vars: {pair:?} is not KEY=VALUE");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--env-vars: {pair:?} has an empty name");
        }
        variables.insert(key.to_owned(), value.to_owned());
    }
    Ok(variables)
}

fn default_name(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into())
}

fn encoding_name(encoding: &Encoding) -> &'static str {
    match encoding {
        Encoding::Plain => "plain",
        Encoding::Zip => "zip",
        Encoding::Squashfs => "squashfs",
    }
}

fn vm_url(crn: &str, hash: &str) -> String {
    format!("{}/vm/{hash}/", crn.trim_end_matches('/'))
}

/// The host name label CRNs route `{label}.{domain}` by; only native
/// (sha256) hashes have one.
fn hostname(hash: &str) -> Option<String> {
    aleph_protocol::hostname::encode(hash).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_runtime_is_read_from_the_aggregate_shape() {
        let hash = "ab".repeat(32);
        let images = json!({
            "runtimes": {"py": {"hash": hash, "display_name": "Python"}, "old": {"hash": "cd".repeat(32)}},
            "defaults": {"runtime": "py"},
        });
        let runtime = runtime_of(&images).unwrap();
        assert_eq!(runtime.reference.to_string(), hash);
        assert_eq!(runtime.comment, "Python");
        assert!(runtime.use_latest);
        let no_default = json!({"runtimes": {"py": {"hash": hash}}});
        assert!(format!("{}", runtime_of(&no_default).unwrap_err()).contains("no default"));
        let dangling = json!({"runtimes": {}, "defaults": {"runtime": "py"}});
        assert!(format!("{}", runtime_of(&dangling).unwrap_err()).contains("no hash"));
    }

    #[test]
    fn env_vars_are_pairs() {
        let vars = parse_env_vars("A=1,B=x=y, C=").unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "x=y");
        assert_eq!(vars["C"], "");
        assert!(parse_env_vars("A").is_err());
        assert!(parse_env_vars("=1").is_err());
    }

    #[test]
    fn urls_join_without_double_slashes() {
        assert_eq!(
            vm_url("http://127.0.0.1:4020/", "ab"),
            "http://127.0.0.1:4020/vm/ab/"
        );
    }

    #[test]
    fn a_persistent_copy_changes_the_flag_and_nothing_the_program_runs() {
        let content = json!({
            "address": "0xabc",
            "time": 1700000000.5,
            "type": "vm-function",
            "code": {"encoding": "zip", "entrypoint": "main:app", "ref": "aa", "use_latest": true},
            "runtime": {"ref": "bb", "use_latest": true, "comment": ""},
            "resources": {"vcpus": 2, "memory": 512, "seconds": 30},
            "on": {"http": true, "persistent": false},
            "replaces": "cc",
            "variables": {"A": "1"},
        });
        let copy = persistent_copy(&content, true).unwrap();
        assert_eq!(copy["on"], json!({"http": true, "persistent": true}));
        assert!(copy.get("address").is_none() && copy.get("time").is_none());
        assert_eq!(copy["replaces"], Value::Null);
        for same in ["type", "code", "runtime", "resources", "variables"] {
            assert_eq!(copy[same], content[same], "{same}");
        }
        assert!(is_persistent(&copy));
        let back = persistent_copy(&copy, false).unwrap();
        assert!(!is_persistent(&back));
        // A program without `on` gets one.
        let bare = persistent_copy(&json!({"code": {}}), true).unwrap();
        assert_eq!(bare["on"], json!({"http": true, "persistent": true}));
        assert!(persistent_copy(&json!("text"), true).is_err());
        assert!(persistent_copy(&json!({"on": 1}), true).is_err());
    }

    fn vm_entry(status: &str, node: Option<&str>, reason: Option<&str>) -> VmEntry {
        VmEntry {
            vm_hash: "ab".repeat(32),
            vm_type: "persistent_program".into(),
            allocated_node: node.map(str::to_owned),
            allocated_url: node.map(|_| "http://127.0.0.1:4021".to_owned()),
            status: status.into(),
            owner: "0xowner".into(),
            since: Some("2026-11-23T11:00:00Z".into()),
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn status_says_where_it_runs_since_when_or_why_not() {
        let hash = "ab".repeat(32);
        let vm = vm_entry(vm_status::DISPATCHED, Some("node1"), None);
        let allocation = AllocationEntry {
            vm_hash: hash.clone(),
            vm_type: "persistent_program".into(),
            node: aleph_protocol::scheduler::AllocatedNode {
                node_id: "node1".into(),
                url: "http://127.0.0.1:4021/".into(),
            },
            allocation_version: 7,
            since: "2026-11-23T11:00:01Z".into(),
        };
        let (value, text) = placement(&hash, Some(&vm), Some(&allocation), "http://s");
        assert_eq!(value["status"], "dispatched");
        assert_eq!(
            value["node"],
            json!({"hash": "node1", "url": "http://127.0.0.1:4021/"})
        );
        assert_eq!(value["url"], format!("http://127.0.0.1:4021/vm/{hash}/"));
        assert_eq!(value["since"], "2026-11-23T11:00:01Z");
        assert_eq!(value["allocation_version"], 7);
        assert!(
            text.contains(
                "dispatched on node node1 (http://127.0.0.1:4021/) since 2026-11-23T11:00:01Z"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("curl http://127.0.0.1:4021/vm/{hash}/")),
            "{text}"
        );

        let stuck = vm_entry(
            vm_status::UNSCHEDULABLE,
            None,
            Some("no node has 64 vCPUs free"),
        );
        let (value, text) = placement(&hash, Some(&stuck), None, "http://s");
        assert_eq!(value["status"], "unschedulable");
        assert_eq!(value["node"], Value::Null);
        assert_eq!(value["reason"], "no node has 64 vCPUs free");
        assert!(
            text.contains("cannot be placed") && text.contains("64 vCPUs"),
            "{text}"
        );

        let lost = vm_entry(vm_status::MISSING, Some("node2"), None);
        let (_, text) = placement(&hash, Some(&lost), None, "http://s");
        assert!(
            text.contains("went silent") && text.contains("node2"),
            "{text}"
        );

        let (value, text) = placement(&hash, None, None, "http://s");
        assert_eq!(value["status"], "unknown");
        assert!(text.contains("does not track it yet"), "{text}");
    }
}
