//! `aleph instance create|list|delete|stop|reboot|erase|reinstall|logs|ssh`:
//! full VMs that their owner logs into over SSH.
//!
//! An instance is one INSTANCE message: the root filesystem it copies (a STORE,
//! named in the `vm-images` aggregate's `rootfs` map), its resources and the SSH
//! keys cloud-init installs for `root`. The scheduler places it on a CRN (or on
//! the node `requirements.node.node_hash` pins); that CRN lists it under its hash
//! in `/v2/about/executions/list`, with the host port its port 22 is forwarded
//! to. SSH goes to the CRN's host on that port.
//!
//! The owner's controls (`stop`, `reboot`, `erase`, `reinstall`, `logs`) are
//! requests to that CRN signed with the operator scheme: an ephemeral P-256 key
//! that the account's wallet authorises (`X-SignedPubKey`), signing each request
//! (`X-SignedOperation`) for the CRN's host name and the request's path.

mod volumes;

use super::publish;
use crate::client::CcnClient;
use crate::context::Context;
use crate::keystore;
use crate::scheduler::SchedulerClient;
use aleph_protocol::auth::operator::OperatorKey;
use aleph_protocol::scheduler::{
    CORECHAN_OPERATION, CREATE_RESOURCE_NODE, DROP_NODE, VmEntry, vm_status,
};
use aleph_protocol::signing::Signer;
use aleph_types::item_hash::ItemHash;
use aleph_types::message::execution::base::{ExecutableContent, Payment};
use aleph_types::message::execution::environment::{
    HostRequirements, Hypervisor, InstanceEnvironment, MachineResources, NodeRequirements,
};
use aleph_types::message::execution::volume::{
    MachineVolume, ParentVolume, PersistentVolumeSize, RootfsVolume, VolumePersistence,
};
use aleph_types::message::{ForgetContent, InstanceContent, MessageType};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use volumes::VolumeFlags;

/// The aggregate naming root filesystems (`rootfs: {name: {hash, display_name}}`,
/// `defaults.rootfs`), next to the runtimes programs use.
const VM_IMAGES_KEY: &str = "vm-images";
/// The public network's `vm-images` publisher, as the official clients read it.
const NETWORK_IMAGES_ADDRESS: &str = "0xFba561a84A537fCaa567bb7A2257e7142701ae2A";
/// Instances log in as root: cloud-init installs the keys there (`disable_root: false`).
const SSH_USER: &str = "root";
const SSH_PORT: &str = "22";
/// How long the wallet's authorisation of a control key lasts: one command's worth.
const OPERATOR_KEY_LIFETIME: Duration = Duration::from_secs(600);
/// How often `create` asks the scheduler and the CRN while it waits.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Time allowed for one TCP connect or SSH banner read when checking that sshd answers.
const SSH_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Key types `authorized_keys` lines may start with (OpenSSH's `sshd -T` list).
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

#[derive(Subcommand)]
pub enum InstanceCommand {
    /// Create an instance and wait until it can be reached over SSH.
    Create(CreateArgs),
    /// The instances of an address: where each runs and how to SSH into it.
    List {
        /// Owner of the instances; default: the signing account.
        #[arg(long)]
        address: Option<String>,
    },
    /// Forget an instance: its CRN stops it and drops its disk.
    Delete {
        /// The INSTANCE message's hash.
        hash: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop the VM now (its CRN starts it again while it stays allocated there).
    Stop(ControlArgs),
    /// Restart the VM; its disk is kept.
    Reboot(ControlArgs),
    /// Stop the VM and delete its disk and persistent volumes on the CRN.
    Erase(ControlArgs),
    /// Put a fresh copy of the root filesystem back and boot it.
    Reinstall(ControlArgs),
    /// The VM's console output, as its CRN kept it.
    Logs(ControlArgs),
    /// Log into the instance with the system's `ssh`, or run CMD there.
    Ssh(SshArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The public key to log in with (a `.pub` file or `authorized_keys` lines);
    /// default: ~/.ssh/id_ed25519.pub, else ~/.ssh/id_rsa.pub.
    #[arg(long, value_name = "FILE")]
    ssh_pubkey_file: Option<PathBuf>,
    /// A root filesystem named in the `vm-images` aggregate, or a STORE hash.
    #[arg(long, default_value = "debian12", value_name = "NAME|HASH")]
    rootfs: String,
    /// Whose `vm-images` aggregate names the root filesystems; default: the
    /// devnet's first account (`aleph-node devnet` publishes it), else the
    /// public network's.
    #[arg(long, env = "ALEPH_IMAGES_ADDRESS", value_name = "ADDRESS")]
    images_address: Option<String>,
    /// Virtual CPUs of the VM.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory of the VM in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    memory: u64,
    /// Size of the root disk in MiB (a copy-on-write layer over the root
    /// filesystem; one compute unit includes 20 GiB of disk).
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    rootfs_size: u64,
    /// A disk kept on the CRN across stop, reboot and restarts until `erase`
    /// (ext4, mounted at MOUNT), e.g. `name=data,size_mib=1024,mount=/data`;
    /// repeatable. The CRN keeps one disk per owner and name: another instance
    /// of yours naming it on that CRN gets the same disk.
    #[arg(long, value_name = "name=N,size_mib=S,mount=/M")]
    persistent_volume: Vec<String>,
    /// A blank disk made at each start and discarded at stop (ext4, at most
    /// 1000 MiB), e.g. `size_mib=100,mount=/tmp/scratch`; repeatable.
    #[arg(long, value_name = "size_mib=S,mount=/M")]
    ephemeral_volume: Vec<String>,
    /// A read-only ext4 image stored on the network (a STORE), e.g.
    /// `ref=HASH,mount=/opt/lib`; `use_latest=false` pins that exact version;
    /// repeatable.
    #[arg(long, value_name = "ref=HASH,mount=/M[,use_latest=B]")]
    immutable_volume: Vec<String>,
    /// Run it on this CRN (its node hash goes in `requirements.node.node_hash`);
    /// default: where the scheduler places it.
    #[arg(long, value_name = "URL")]
    crn: Option<String>,
    /// A name shown by `instance list`.
    #[arg(long, default_value = "instance")]
    name: String,
    /// How it is paid; default: credit on a pinned node (`--crn`), else hold
    /// (the CCN takes credit payments only for instances pinned to a node).
    #[arg(long, value_enum)]
    payment: Option<InstancePayment>,
    /// Channel of the INSTANCE message.
    #[arg(long)]
    channel: Option<String>,
    /// Print the hash once posted, without waiting for the instance to run.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the instance to be reachable.
    #[arg(long, default_value_t = 600, value_name = "S")]
    wait_timeout: u64,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum InstancePayment {
    /// Pay with credits (needs a pinned node: `--crn`).
    Credit,
    /// Hold ALEPH tokens.
    Hold,
}

#[derive(Args)]
pub struct ControlArgs {
    /// The INSTANCE message's hash.
    hash: String,
    /// The CRN to send the request to; default: the one the scheduler placed it on.
    #[arg(long, value_name = "URL")]
    crn: Option<String>,
}

#[derive(Args)]
pub struct SshArgs {
    /// The INSTANCE message's hash.
    hash: String,
    /// The private key to log in with (`ssh -i`); default: ssh's own choice.
    #[arg(short = 'i', value_name = "KEY")]
    identity: Option<PathBuf>,
    /// The CRN it runs on; default: the one the scheduler placed it on.
    #[arg(long, value_name = "URL")]
    crn: Option<String>,
    /// Print the ssh command instead of running it.
    #[arg(long)]
    print_command: bool,
    /// A command to run on the instance instead of a login shell.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// The owner controls of `/control/machine/{ref}/…`.
#[derive(Clone, Copy)]
enum Control {
    Stop,
    Reboot,
    Erase,
    Reinstall,
    Logs,
}

impl Control {
    fn route(self) -> &'static str {
        match self {
            Control::Stop => "stop",
            Control::Reboot => "reboot",
            Control::Erase => "erase",
            Control::Reinstall => "reinstall",
            Control::Logs => "logs",
        }
    }

    fn method(self) -> reqwest::Method {
        match self {
            Control::Logs => reqwest::Method::GET,
            _ => reqwest::Method::POST,
        }
    }
}

pub async fn run(ctx: &Context, command: InstanceCommand) -> Result<()> {
    match command {
        InstanceCommand::Create(args) => create(ctx, args).await,
        InstanceCommand::List { address } => list(ctx, address).await,
        InstanceCommand::Delete { hash, reason } => delete(ctx, &hash, reason).await,
        InstanceCommand::Stop(args) => control(ctx, args, Control::Stop).await,
        InstanceCommand::Reboot(args) => control(ctx, args, Control::Reboot).await,
        InstanceCommand::Erase(args) => control(ctx, args, Control::Erase).await,
        InstanceCommand::Reinstall(args) => control(ctx, args, Control::Reinstall).await,
        InstanceCommand::Logs(args) => control(ctx, args, Control::Logs).await,
        InstanceCommand::Ssh(args) => ssh(ctx, args).await,
    }
}

// ---------------------------------------------------------------- create

async fn create(ctx: &Context, args: CreateArgs) -> Result<()> {
    let signer = ctx.signer()?;
    let client = ctx.client()?;
    // Everything checked locally first, so a mistake posts nothing.
    let key_file = match &args.ssh_pubkey_file {
        Some(path) => path.clone(),
        None => default_public_key_file()?,
    };
    let authorized_keys = read_public_keys(&key_file)?;
    let rootfs_size = PersistentVolumeSize::try_from(args.rootfs_size)
        .map_err(|e| anyhow::anyhow!("--rootfs-size {}: {e}", args.rootfs_size))?;
    let volumes = volumes::volumes_of(&VolumeFlags {
        persistent: args.persistent_volume.clone(),
        ephemeral: args.ephemeral_volume.clone(),
        immutable: args.immutable_volume.clone(),
    })?;
    let payment = match (args.payment, &args.crn) {
        (Some(InstancePayment::Credit), None) => bail!(
            "--payment credit needs a pinned node: add --crn URL (the CCN refuses credit-paid instances without requirements.node.node_hash)"
        ),
        (Some(InstancePayment::Credit), Some(_)) | (None, Some(_)) => Payment::credits(),
        (Some(InstancePayment::Hold), _) | (None, None) => Payment::hold(),
    };
    let rootfs = resolve_rootfs(
        &client,
        &args.rootfs,
        args.images_address.as_deref(),
        &ctx.ccn_url,
    )
    .await?;
    let pinned = match &args.crn {
        Some(url) => {
            let directory = NodeDirectory::load(&ctx.scheduler()?, &client).await;
            match directory.hash_of(url) {
                Some(hash) => Some(KnownNode {
                    hash: hash.to_owned(),
                    url: url.clone(),
                }),
                None => bail!(
                    "no CRN is registered at {url}{}: see `aleph node list`",
                    directory.caveat()
                ),
            }
        }
        None => None,
    };
    let node_hash = pinned.as_ref().map(|n| n.hash.clone());

    let content = instance_content(&InstanceSpec {
        name: &args.name,
        authorized_keys,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        rootfs: rootfs.reference.clone(),
        rootfs_size,
        volumes,
        node_hash: node_hash.clone(),
        payment,
    });
    let listed_volumes = volumes::listed_volumes(&serde_json::to_value(&content)?);
    let (message, accepted) = publish(
        &client,
        &signer,
        MessageType::Instance,
        &content,
        args.channel,
    )
    .await
    .context("posting the INSTANCE message")?;
    let item_hash = message.item_hash.to_string();
    let mut posted = format!(
        "instance {item_hash} ({}), root filesystem {} ({})",
        accepted.describe(),
        rootfs.reference,
        rootfs.name
    );
    if !listed_volumes.is_empty() {
        posted.push_str(&format!(
            "\n  volumes: {}",
            volumes::summary(&listed_volumes)
        ));
    }

    if args.no_wait || accepted.status != "processed" {
        let value = json!({
            "item_hash": item_hash,
            "status": accepted.status,
            "rootfs": rootfs.reference.to_string(),
            "volumes": listed_volumes,
            "node_hash": node_hash,
            "crn_url": null,
            "ssh": null,
        });
        ctx.out.result(&value, || {
            format!("{posted}\nWhere it runs and how to log in: aleph instance list")
        });
        return Ok(());
    }

    let progress = Progress::new(ctx.out.json);
    progress.line(&posted);
    let ready = wait_until_reachable(
        &ctx.scheduler()?,
        &crn_http()?,
        &item_hash,
        pinned.as_ref(),
        Duration::from_secs(args.wait_timeout),
        &progress,
    )
    .await;
    progress.finish();
    let ready = ready?;
    let value = json!({
        "item_hash": item_hash,
        "status": accepted.status,
        "rootfs": rootfs.reference.to_string(),
        "volumes": listed_volumes,
        "node_hash": ready.node_hash,
        "crn_url": ready.crn_url,
        "ssh": ready.ssh.to_json(),
        "ssh_ready": ready.ssh_answers,
    });
    ctx.out.result(&value, || {
        let mut lines = vec![
            format!("instance {item_hash}"),
            format!("  CRN: {}", ready.crn_url),
        ];
        if !ready.ssh_answers {
            lines.push(
                "  (its port 22 is forwarded but sshd did not answer yet; it may still be booting)"
                    .to_owned(),
            );
        }
        lines.push(ready.ssh.command_line());
        lines.join("\n")
    });
    Ok(())
}

/// What `create` puts in the INSTANCE message, before the signer adds `address` and `time`.
struct InstanceSpec<'a> {
    name: &'a str,
    authorized_keys: Vec<String>,
    vcpus: u32,
    memory_mib: u64,
    rootfs: ItemHash,
    rootfs_size: PersistentVolumeSize,
    /// Extra disks, checked already (see [`volumes`]).
    volumes: Vec<MachineVolume>,
    node_hash: Option<String>,
    payment: Payment,
}

fn instance_content(spec: &InstanceSpec<'_>) -> InstanceContent {
    let requirements = spec.node_hash.as_ref().map(|node_hash| HostRequirements {
        cpu: None,
        node: Some(NodeRequirements {
            owner: None,
            address_regex: None,
            node_hash: Some(node_hash.clone()),
            terms_and_conditions: None,
        }),
        gpu: None,
    });
    InstanceContent {
        base: ExecutableContent {
            allow_amend: false,
            metadata: Some(HashMap::from([("name".to_owned(), json!(spec.name))])),
            variables: None,
            resources: MachineResources {
                vcpus: spec.vcpus,
                memory: memsizes::MiB::from(spec.memory_mib),
                // Meaningless for an instance (no requests to time out); the
                // official clients send 30.
                seconds: 30,
                published_ports: None,
            },
            payment: Some(spec.payment.clone()),
            requirements,
            volumes: spec.volumes.clone(),
            replaces: None,
            authorized_keys: Some(spec.authorized_keys.clone()),
        },
        environment: InstanceEnvironment {
            internet: true,
            aleph_api: true,
            hypervisor: Some(Hypervisor::Qemu),
            trusted_execution: None,
            reproducible: false,
            shared_cache: false,
        },
        rootfs: RootfsVolume {
            parent: ParentVolume {
                reference: spec.rootfs.clone(),
                use_latest: true,
            },
            persistence: VolumePersistence::Host,
            size_mib: spec.rootfs_size,
            forgotten_by: None,
        },
    }
}

// ---------------------------------------------------------------- SSH public keys

/// `~/.ssh/id_ed25519.pub`, else `~/.ssh/id_rsa.pub`, whichever exists.
fn default_public_key_file() -> Result<PathBuf> {
    let home =
        dirs::home_dir().context("no home folder to find ~/.ssh in: pass --ssh-pubkey-file")?;
    let candidates = [
        home.join(".ssh/id_ed25519.pub"),
        home.join(".ssh/id_rsa.pub"),
    ];
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => Ok(path.clone()),
        None => bail!(
            "no SSH public key found ({} nor {}): pass --ssh-pubkey-file FILE, or make one with `ssh-keygen -t ed25519`",
            candidates[0].display(),
            candidates[1].display()
        ),
    }
}

/// The key lines of a public key file (blank lines and `#` comments skipped);
/// a private key or a line that is not a public key is refused.
fn read_public_keys(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the SSH public key {}", path.display()))?;
    if text.contains("PRIVATE KEY-----") {
        let public = PathBuf::from(format!("{}.pub", path.display()));
        let hint = if public.is_file() {
            format!(" (its public key is probably {})", public.display())
        } else {
            String::new()
        };
        bail!(
            "{} is a private key: give the public one (the .pub file){hint}; private keys never leave this machine",
            path.display()
        );
    }
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_public_key_line(line)
            .with_context(|| format!("{} line {}", path.display(), number + 1))?;
        keys.push(line.to_owned());
    }
    if keys.is_empty() {
        bail!("{} holds no SSH public key", path.display());
    }
    Ok(keys)
}

/// `TYPE BASE64 [COMMENT]`, where the base64 is a key blob that names TYPE
/// itself (as every OpenSSH public key does), so a truncated or pasted-wrong
/// key is caught here rather than as a failed login later.
fn check_public_key_line(line: &str) -> Result<()> {
    let mut fields = line.split_whitespace();
    let key_type = fields.next().unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&key_type) {
        bail!(
            "not an SSH public key: it starts with {:?}, not a key type ({})",
            truncate(key_type, 40),
            SSH_KEY_TYPES.join(", ")
        );
    }
    let Some(encoded) = fields.next() else {
        bail!("the {key_type} key has no key data after its type");
    };
    let Some(blob) = decode_base64(encoded) else {
        bail!("the {key_type} key's data is not valid base64");
    };
    // The blob is length-prefixed fields (u32 big-endian + bytes), the type
    // first, then the key's numbers; a cut-short key breaks the framing.
    let fields = ssh_fields(&blob);
    match fields.as_deref() {
        Some([named, _, ..]) if *named == key_type.as_bytes() => {}
        _ => bail!("the key data is not a {key_type} key (truncated or damaged?)"),
    }
    Ok(())
}

/// The length-prefixed fields of an SSH key blob, if they fill it exactly.
fn ssh_fields(mut blob: &[u8]) -> Option<Vec<&[u8]>> {
    let mut fields = Vec::new();
    while !blob.is_empty() {
        let (length, rest) = blob.split_first_chunk::<4>()?;
        let length = u32::from_be_bytes(*length) as usize;
        if rest.len() < length {
            return None;
        }
        let (field, rest) = rest.split_at(length);
        fields.push(field);
        blob = rest;
    }
    Some(fields)
}

/// Standard base64 with padding, as in public key files; `None` if it is not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let body = text.trim_end_matches('=').as_bytes();
    if bytes.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for &c in body {
        buffer = (buffer << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

// ---------------------------------------------------------------- root filesystem

/// The root filesystem an instance copies.
#[derive(Debug)]
struct Rootfs {
    reference: ItemHash,
    /// The aggregate's display name, or the hash's own text when given as one.
    name: String,
}

/// `--rootfs`: a 64-hex STORE hash as is, else a name of the `vm-images`
/// aggregate's `rootfs` map, looked up like programs' default runtime.
async fn resolve_rootfs(
    client: &CcnClient,
    spec: &str,
    images_address: Option<&str>,
    ccn_url: &str,
) -> Result<Rootfs> {
    let spec = spec.trim();
    if spec.len() == 64 && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Rootfs {
            reference: parse_hash(spec, "--rootfs")?,
            name: "given by hash".to_owned(),
        });
    }
    let candidates = match images_address {
        Some(address) => vec![address.to_owned()],
        None => vec![devnet_images_address()?, NETWORK_IMAGES_ADDRESS.to_owned()],
    };
    let mut problems = Vec::new();
    for address in &candidates {
        match client.aggregate(address, VM_IMAGES_KEY).await? {
            Some(images) => match rootfs_of(&images, spec) {
                Ok(rootfs) => return Ok(rootfs),
                Err(problem) => problems.push(format!("{address}: {problem}")),
            },
            None => problems.push(format!("{address}: no {VM_IMAGES_KEY:?} aggregate")),
        }
    }
    bail!(
        "cannot find the root filesystem {spec:?} on {ccn_url} ({}): pass --rootfs HASH (the STORE of a root filesystem image), or --images-address of the account whose {VM_IMAGES_KEY:?} aggregate names it; a devnet started with its CRN (`aleph-node devnet`) publishes debian12",
        problems.join("; ")
    )
}

/// The entry `name` of a `vm-images` aggregate's `rootfs` map.
fn rootfs_of(images: &Value, name: &str) -> Result<Rootfs> {
    let Some(known) = images["rootfs"].as_object() else {
        bail!("it names no root filesystem");
    };
    let Some(entry) = known.get(name) else {
        let names: Vec<&str> = known.keys().map(String::as_str).collect();
        bail!("it has no rootfs {name:?} (it has: {})", names.join(", "));
    };
    let Some(hash) = entry["hash"].as_str() else {
        bail!("its rootfs {name:?} has no hash");
    };
    Ok(Rootfs {
        reference: parse_hash(hash, &format!("rootfs {name:?}"))?,
        name: entry["display_name"].as_str().unwrap_or(name).to_owned(),
    })
}

/// The devnet's first account (key sha256("aleph-devnet-account-0")), which
/// `aleph-node devnet` publishes `vm-images` with; the same default as programs'.
fn devnet_images_address() -> Result<String> {
    let key = Sha256::digest(b"aleph-devnet-account-0");
    Ok(Signer::from_hex(&hex::encode(key))?.address().to_owned())
}

// ---------------------------------------------------------------- nodes

/// A CRN by its node hash and URL.
#[derive(Debug, Clone, PartialEq)]
struct KnownNode {
    hash: String,
    url: String,
}

/// The CRNs known by hash and URL: the scheduler's node list (the `corechannel`
/// aggregate's shape), then the CCN's registration messages that the scheduler
/// reads itself, so that a lookup still works while the scheduler is down.
struct NodeDirectory {
    nodes: Vec<KnownNode>,
    /// Why a source could not be read, to explain a failed lookup.
    problems: Vec<String>,
}

impl NodeDirectory {
    async fn load(scheduler: &SchedulerClient, client: &CcnClient) -> Self {
        let mut nodes = Vec::new();
        let mut problems = Vec::new();
        match scheduler.nodes().await {
            Ok(list) => nodes.extend(list.resource_nodes.into_iter().map(|n| KnownNode {
                hash: n.hash,
                url: n.address,
            })),
            Err(e) => problems.push(format!("{e:#}")),
        }
        let page = client
            .messages(&[
                ("msgTypes", "POST".to_owned()),
                ("contentTypes", CORECHAN_OPERATION.to_owned()),
                ("pagination", "500".to_owned()),
            ])
            .await;
        match page {
            Ok(page) => nodes.extend(registered_nodes(&page)),
            Err(e) => problems.push(format!("reading node registrations: {e:#}")),
        }
        Self { nodes, problems }
    }

    fn hash_of(&self, url: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| same_url(&n.url, url))
            .map(|n| n.hash.as_str())
    }

    fn url_of(&self, hash: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.hash == hash)
            .map(|n| n.url.as_str())
    }

    /// ` (why: …)` when a source could not be read, else nothing.
    fn caveat(&self) -> String {
        if self.problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.problems.join("; "))
        }
    }
}

/// The nodes that `create-resource-node` POSTs register and no `drop-node`
/// removed, newest first.
fn registered_nodes(page: &Value) -> Vec<KnownNode> {
    let messages = page["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let operation = |m: &Value| {
        m["content"]["content"]["action"]
            .as_str()
            .map(str::to_owned)
    };
    let dropped: Vec<&str> = messages
        .iter()
        .filter(|m| operation(m).as_deref() == Some(DROP_NODE))
        .filter_map(|m| m["content"]["ref"].as_str())
        .collect();
    let mut created: Vec<&Value> = messages
        .iter()
        .filter(|m| operation(m).as_deref() == Some(CREATE_RESOURCE_NODE))
        .collect();
    created.sort_by(|a, b| {
        let time = |m: &Value| m["time"].as_f64().unwrap_or(0.0);
        time(b).total_cmp(&time(a))
    });
    created
        .into_iter()
        .filter_map(|m| {
            let hash = m["item_hash"].as_str()?;
            let url = m["content"]["content"]["details"]["address"].as_str()?;
            (!dropped.contains(&hash)).then(|| KnownNode {
                hash: hash.to_owned(),
                url: url.to_owned(),
            })
        })
        .collect()
}

fn same_url(a: &str, b: &str) -> bool {
    let normal = |u: &str| u.trim().trim_end_matches('/').to_ascii_lowercase();
    normal(a) == normal(b)
}

// ---------------------------------------------------------------- where it runs

/// How to log into an instance.
#[derive(Debug, Clone, PartialEq)]
struct SshEndpoint {
    host: String,
    port: u16,
}

impl SshEndpoint {
    fn to_json(&self) -> Value {
        json!({"host": self.host, "port": self.port, "user": SSH_USER})
    }

    fn command_line(&self) -> String {
        format!("ssh {SSH_USER}@{} -p {}", self.host, self.port)
    }
}

/// An instance's entry in a CRN's `/v2/about/executions/list`.
#[derive(Debug, Deserialize)]
struct ExecutionEntry {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    networking: Option<Networking>,
}

#[derive(Debug, Deserialize)]
struct Networking {
    #[serde(default)]
    mapped_ports: Option<HashMap<String, MappedPort>>,
}

#[derive(Debug, Deserialize)]
struct MappedPort {
    host: u16,
    #[serde(default = "yes")]
    tcp: bool,
}

fn yes() -> bool {
    true
}

impl ExecutionEntry {
    /// The host port the guest's port 22 is forwarded to, once it is.
    fn ssh_port(&self) -> Option<u16> {
        let mapped = self.networking.as_ref()?.mapped_ports.as_ref()?;
        mapped.get(SSH_PORT).filter(|p| p.tcp).map(|p| p.host)
    }
}

fn crn_http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("aleph-rust-cli/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The CRN's executions list, keyed by VM hash.
async fn executions(http: &reqwest::Client, crn: &str) -> Result<HashMap<String, Value>> {
    let url = format!("{}/v2/about/executions/list", crn.trim_end_matches('/'));
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the CRN at {crn}"))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!(
            "the CRN at {crn} answered HTTP {status} for its executions list: {}",
            body.trim()
        );
    }
    serde_json::from_str(&body)
        .with_context(|| format!("the CRN at {crn} sent an unexpected executions list: {body}"))
}

/// `hash`'s entry in the CRN's executions list, if it has one.
async fn execution(
    http: &reqwest::Client,
    crn: &str,
    hash: &str,
) -> Result<Option<ExecutionEntry>> {
    match executions(http, crn).await?.remove(hash) {
        Some(entry) => Ok(Some(serde_json::from_value(entry).with_context(|| {
            format!("the CRN at {crn} lists {hash} in an unexpected shape")
        })?)),
        None => Ok(None),
    }
}

/// The host to SSH to: the CRN URL's (its forwarded ports are on that address).
fn crn_host(crn: &str) -> Result<String> {
    let url = reqwest::Url::parse(crn).with_context(|| format!("{crn:?} is not a URL"))?;
    match url.host_str() {
        // ssh takes an IPv6 address without the URL's brackets.
        Some(host) => Ok(host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()),
        None => bail!("the CRN URL {crn:?} has no host"),
    }
}

/// The CRN `hash` runs on: `--crn`, else the one the scheduler allocated it
/// to, else the node its message pins (`requirements.node.node_hash`).
async fn crn_of(ctx: &Context, hash: &str, given: Option<String>) -> Result<String> {
    if let Some(crn) = given {
        return Ok(crn);
    }
    let scheduler = ctx.scheduler()?;
    let placed = match scheduler.vm(hash).await {
        Ok(Some(VmEntry {
            allocated_url: Some(url),
            ..
        })) => return Ok(url),
        Ok(Some(vm)) => format!(
            "the scheduler has it {}{}",
            vm.status,
            vm.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        Ok(None) => format!("the scheduler at {} does not track it", scheduler.base()),
        Err(e) => format!("{e:#}"),
    };
    let client = ctx.client()?;
    let pinned = match client.message(hash).await? {
        Some(status) => status["message"]["content"]["requirements"]["node"]["node_hash"]
            .as_str()
            .map(str::to_owned),
        None => bail!("the CCN does not know the message {hash}"),
    };
    if let Some(node) = pinned {
        let directory = NodeDirectory::load(&scheduler, &client).await;
        return match directory.url_of(&node) {
            Some(url) => Ok(url.to_owned()),
            None => bail!(
                "instance {hash} is pinned to node {node}, whose URL is unknown{}: name its CRN with --crn URL",
                directory.caveat()
            ),
        };
    }
    bail!(
        "instance {hash} is on no CRN yet ({placed}): see `aleph instance list`, or name its CRN with --crn URL"
    )
}

// ---------------------------------------------------------------- waiting

/// An instance ready to log into.
struct Reachable {
    crn_url: String,
    node_hash: Option<String>,
    ssh: SshEndpoint,
    /// Whether sshd answered through the forwarded port (else only the port is mapped).
    ssh_answers: bool,
}

/// Where an instance stands on the way to being reachable.
enum Stage {
    /// Not on a CRN yet; the words say why.
    Unplaced(String),
    /// Never going to run: the scheduler gave up or dropped it.
    Failed(String),
    /// On a CRN that does not run it yet (or cannot be read).
    Booting {
        crn: String,
        node: Option<String>,
        detail: String,
    },
    /// Running with port 22 forwarded.
    Forwarded {
        crn: String,
        node: Option<String>,
        ssh: SshEndpoint,
        answers: bool,
    },
}

impl Stage {
    fn describe(&self) -> String {
        match self {
            Stage::Unplaced(why) => why.clone(),
            Stage::Failed(why) => why.clone(),
            Stage::Booting { crn, node, detail } => match node {
                Some(node) => format!("placed on node {node} ({crn}): {detail}"),
                None => format!("placed on {crn}: {detail}"),
            },
            Stage::Forwarded { crn, ssh, .. } => format!(
                "running on {crn}, port 22 forwarded to {}:{}; waiting for sshd to answer",
                ssh.host, ssh.port
            ),
        }
    }
}

async fn wait_until_reachable(
    scheduler: &SchedulerClient,
    http: &reqwest::Client,
    hash: &str,
    pinned: Option<&KnownNode>,
    timeout: Duration,
    progress: &Progress,
) -> Result<Reachable> {
    let deadline = Instant::now() + timeout;
    loop {
        let stage = stage_of(scheduler, http, hash, pinned).await;
        match stage {
            Stage::Failed(why) => bail!("instance {hash} will not run: {why}"),
            Stage::Forwarded {
                crn,
                node,
                ssh,
                answers,
            } if answers || Instant::now() >= deadline => {
                return Ok(Reachable {
                    crn_url: crn,
                    node_hash: node,
                    ssh,
                    ssh_answers: answers,
                });
            }
            _ => {}
        }
        progress.set(&stage.describe());
        if Instant::now() >= deadline {
            bail!(
                "instance {hash} is not reachable after {} s: {}; it may still come up: `aleph instance list`",
                timeout.as_secs(),
                stage.describe()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One look at the scheduler, then the CRN, then the forwarded port. The
/// scheduler places a pinned instance too (on its node only), so its word
/// counts: not placed yet means waiting, and it giving up ends the wait. The
/// pinned node is still looked at when the scheduler is down or does not know
/// the instance yet, since that CRN may already run it.
async fn stage_of(
    scheduler: &SchedulerClient,
    http: &reqwest::Client,
    hash: &str,
    pinned: Option<&KnownNode>,
) -> Stage {
    let vm = scheduler.vm(hash).await;
    if let Ok(Some(vm)) = &vm {
        match vm.status.as_str() {
            vm_status::UNSCHEDULABLE => {
                return Stage::Failed(format!(
                    "the scheduler cannot place it: {}",
                    vm.reason.as_deref().unwrap_or("it gave no reason")
                ));
            }
            vm_status::REMOVED => {
                return Stage::Failed(
                    "the scheduler dropped it (forgotten or replaced)".to_owned(),
                );
            }
            _ => {}
        }
    }
    let (crn, node) = match (pinned, vm) {
        (Some(node), Ok(Some(vm))) if vm.allocated_url.is_none() => {
            return Stage::Unplaced(format!(
                "the scheduler has it {}, not on node {} yet",
                vm.status, node.hash
            ));
        }
        (Some(node), _) => (node.url.clone(), Some(node.hash.clone())),
        (None, Ok(Some(vm))) => match vm.allocated_url {
            Some(url) => (url, vm.allocated_node),
            None => {
                return Stage::Unplaced(format!(
                    "the scheduler has it {}, on no node yet",
                    vm.status
                ));
            }
        },
        (None, Ok(None)) => {
            return Stage::Unplaced(format!(
                "waiting for the scheduler at {} to see it",
                scheduler.base()
            ));
        }
        (None, Err(e)) => return Stage::Unplaced(format!("{e:#}")),
    };
    let booting = |detail: String| Stage::Booting {
        crn: crn.clone(),
        node: node.clone(),
        detail,
    };
    let entry = match execution(http, &crn, hash).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return booting("the CRN does not list it yet".to_owned()),
        Err(e) => return booting(format!("{e:#}")),
    };
    if !entry.running {
        return booting("the CRN is starting it".to_owned());
    }
    let Some(port) = entry.ssh_port() else {
        return booting("running, port 22 not forwarded yet".to_owned());
    };
    let host = match crn_host(&crn) {
        Ok(host) => host,
        Err(e) => return Stage::Failed(format!("{e:#}")),
    };
    let answers = ssh_answers(&host, port).await;
    Stage::Forwarded {
        crn,
        node,
        ssh: SshEndpoint { host, port },
        answers,
    }
}

/// Whether an SSH server answers at `host:port` (it speaks first: `SSH-2.0-…`).
/// The port is forwarded as soon as the VM starts, long before sshd is up.
async fn ssh_answers(host: &str, port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let connect = tokio::net::TcpStream::connect((host, port));
    let Ok(Ok(mut stream)) = tokio::time::timeout(SSH_PROBE_TIMEOUT, connect).await else {
        return false;
    };
    let mut banner = [0u8; 4];
    matches!(
        tokio::time::timeout(SSH_PROBE_TIMEOUT, stream.read_exact(&mut banner)).await,
        Ok(Ok(_)) if &banner == b"SSH-"
    )
}

/// A spinner on a terminal; plain lines on stderr otherwise; nothing with `--json`.
struct Progress {
    spinner: Option<ProgressBar>,
    plain: bool,
    last: std::sync::Mutex<String>,
}

impl Progress {
    fn new(json: bool) -> Self {
        let terminal = !json && std::io::stderr().is_terminal();
        let spinner = terminal.then(|| {
            let spinner = ProgressBar::new_spinner();
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("the spinner template is valid"),
            );
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        Self {
            spinner,
            plain: !json && !terminal,
            last: Default::default(),
        }
    }

    /// A line that stays (above the spinner).
    fn line(&self, text: &str) {
        match &self.spinner {
            Some(spinner) => spinner.println(text),
            None if self.plain => eprintln!("{text}"),
            None => {}
        }
    }

    /// The current state; printed as a line only when it changes.
    fn set(&self, text: &str) {
        let mut last = self.last.lock().expect("progress lock");
        if *last == text {
            return;
        }
        text.clone_into(&mut last);
        match &self.spinner {
            Some(spinner) => spinner.set_message(text.to_owned()),
            None if self.plain => eprintln!("… {text}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

// ---------------------------------------------------------------- list, delete

async fn list(ctx: &Context, address: Option<String>) -> Result<()> {
    let address = ctx.address_or_own(address)?;
    let client = ctx.client()?;
    let page = client
        .messages(&[
            ("msgTypes", "INSTANCE".to_owned()),
            ("owners", address.clone()),
            ("pagination", "500".to_owned()),
        ])
        .await?;
    let scheduler = ctx.scheduler()?;
    let http = crn_http()?;
    // One read per CRN, however many instances it runs; the scheduler's first
    // failure is kept and said once rather than per instance.
    let mut crn_lists: HashMap<String, Option<HashMap<String, Value>>> = HashMap::new();
    let mut scheduler_problem = None;
    // Read only if an instance pins a node, to find that node's URL.
    let mut directory: Option<NodeDirectory> = None;
    let mut instances = Vec::new();
    for message in page["messages"].as_array().into_iter().flatten() {
        let hash = message["item_hash"].as_str().unwrap_or_default().to_owned();
        let content = &message["content"];
        let vm = if scheduler_problem.is_none() {
            match scheduler.vm(&hash).await {
                Ok(vm) => vm,
                Err(e) => {
                    scheduler_problem = Some(format!("{e:#}"));
                    None
                }
            }
        } else {
            None
        };
        let pinned = content["requirements"]["node"]["node_hash"].as_str();
        let mut crn = vm.as_ref().and_then(|v| v.allocated_url.clone());
        if crn.is_none()
            && let Some(node) = pinned
        {
            if directory.is_none() {
                directory = Some(NodeDirectory::load(&scheduler, &client).await);
            }
            crn = directory
                .as_ref()
                .and_then(|d| d.url_of(node))
                .map(str::to_owned);
        }
        let mut running = None;
        let mut ssh = None;
        if let Some(crn) = &crn {
            if !crn_lists.contains_key(crn) {
                crn_lists.insert(crn.clone(), executions(&http, crn).await.ok());
            }
            if let Some(list) = &crn_lists[crn] {
                let entry = list
                    .get(&hash)
                    .and_then(|e| serde_json::from_value::<ExecutionEntry>(e.clone()).ok());
                running = Some(entry.as_ref().is_some_and(|e| e.running));
                if let (Some(port), Ok(host)) = (
                    entry.as_ref().and_then(ExecutionEntry::ssh_port),
                    crn_host(crn),
                ) {
                    ssh = Some(SshEndpoint { host, port });
                }
            }
        }
        instances.push(json!({
            "item_hash": hash,
            "name": content["metadata"]["name"],
            "time": message["time"],
            "vcpus": content["resources"]["vcpus"],
            "memory": content["resources"]["memory"],
            "rootfs": content["rootfs"]["parent"]["ref"],
            "rootfs_size": content["rootfs"]["size_mib"],
            "volumes": volumes::listed_volumes(content),
            "node_hash": pinned.map(str::to_owned).or_else(|| vm.as_ref().and_then(|v| v.allocated_node.clone())),
            "status": vm.as_ref().map(|v| v.status.clone()).unwrap_or_else(|| "unknown".into()),
            "crn_url": crn,
            "running": running,
            "ssh": ssh.as_ref().map(SshEndpoint::to_json),
        }));
    }
    let value = Value::Array(instances.clone());
    ctx.out.result(&value, || {
        if instances.is_empty() {
            return format!("{address} has no instances");
        }
        let mut lines: Vec<String> = instances.iter().map(describe_listed).collect();
        if let Some(problem) = &scheduler_problem {
            lines.push(format!("(where they run is unknown: {problem})"));
        }
        lines.join("\n")
    });
    Ok(())
}

fn describe_listed(instance: &Value) -> String {
    let text = |key: &str| instance[key].as_str().unwrap_or("-").to_owned();
    let mut line = format!(
        "{}  {:<16} {} vCPU {} MiB  {}",
        text("item_hash"),
        text("name"),
        instance["vcpus"],
        instance["memory"],
        text("status"),
    );
    if let Some(crn) = instance["crn_url"].as_str() {
        line.push_str(&format!(" on {crn}"));
    }
    if let Some(listed) = instance["volumes"].as_array().filter(|v| !v.is_empty()) {
        line.push_str(&format!("\n    volumes: {}", volumes::summary(listed)));
    }
    if let Some(ssh) = instance["ssh"].as_object() {
        line.push_str(&format!(
            "\n    ssh {SSH_USER}@{} -p {}",
            ssh["host"].as_str().unwrap_or("?"),
            ssh["port"]
        ));
    }
    line
}

async fn delete(ctx: &Context, hash: &str, reason: Option<String>) -> Result<()> {
    let signer = ctx.signer()?;
    let client = ctx.client()?;
    own_instance(&client, &signer, hash).await?;
    // Only the INSTANCE: its root filesystem is a shared image, not the owner's.
    let (forget, _) = publish(
        &client,
        &signer,
        MessageType::Forget,
        &ForgetContent::new(vec![parse_hash(hash, "the instance")?], Vec::new(), reason),
        None,
    )
    .await
    .context("forgetting the instance")?;
    let value = json!({"item_hash": hash, "forget_hash": forget.item_hash.to_string()});
    ctx.out.result(&value, || {
        format!(
            "instance {hash} forgotten ({}); its CRN stops it and deletes its disk",
            forget.item_hash
        )
    });
    Ok(())
}

/// The message of a processed INSTANCE owned by the signer, or a clear error.
async fn own_instance(client: &CcnClient, signer: &Signer, hash: &str) -> Result<Value> {
    parse_hash(hash, "the instance")?;
    let Some(status) = client.message(hash).await? else {
        bail!("the CCN does not know the message {hash}");
    };
    match status["status"].as_str() {
        Some("processed") => {}
        Some(other) => bail!("message {hash} is {other}, not a live instance"),
        None => bail!("the CCN sent no status for {hash}"),
    }
    let message = status["message"].clone();
    if message["type"] != "INSTANCE" {
        bail!(
            "message {hash} is a {}, not an INSTANCE",
            message["type"]
                .as_str()
                .unwrap_or("message of unknown type")
        );
    }
    let owner = message["content"]["address"].as_str().unwrap_or_default();
    if !owner.eq_ignore_ascii_case(signer.address()) {
        bail!(
            "instance {hash} belongs to {owner}, not to the signing account {}",
            signer.address()
        );
    }
    Ok(message)
}

// ---------------------------------------------------------------- owner controls

async fn control(ctx: &Context, args: ControlArgs, control: Control) -> Result<()> {
    let hash = args.hash.trim().to_owned();
    parse_hash(&hash, "the instance")?;
    let signer = ctx.signer()?;
    let crn = crn_of(ctx, &hash, args.crn).await?;
    let answer = send_control(&crn_http()?, &signer, &crn, &hash, control).await?;
    match control {
        Control::Logs => {
            let entries = answer.as_array().cloned().unwrap_or_default();
            ctx.out.result(&answer, || {
                entries
                    .iter()
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        _ => {
            let status = answer["status"].as_str().unwrap_or("done").to_owned();
            ctx.out
                .result(&answer, || format!("instance {hash} on {crn}: {status}"));
        }
    }
    Ok(())
}

/// One signed request to `/control/machine/{hash}/{route}`; the CRN's JSON answer.
async fn send_control(
    http: &reqwest::Client,
    signer: &Signer,
    crn: &str,
    hash: &str,
    control: Control,
) -> Result<Value> {
    let url = reqwest::Url::parse(&format!(
        "{}/control/machine/{hash}/{}",
        crn.trim_end_matches('/'),
        control.route()
    ))
    .with_context(|| format!("{crn:?} is not a CRN URL"))?;
    // The CRN checks the operation against its domain (else the Host it was
    // asked by, without port) and the request's path: sign what is sent.
    let domain = url
        .host_str()
        .context("the CRN URL has no host")?
        .to_owned();
    let key = OperatorKey::generate(signer, OPERATOR_KEY_LIFETIME)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let method = control.method();
    let mut request = http.request(method.clone(), url.clone());
    for (name, value) in key.headers(method.as_str(), &domain, url.path(), now) {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the CRN at {crn}"))?;
    let status = response.status();
    let body = response.text().await?;
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    if !status.is_success() {
        let error = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        bail!(
            "the CRN at {crn} refused {} {}: HTTP {status}: {error}",
            method,
            url.path()
        );
    }
    parsed.with_context(|| format!("the CRN at {crn} sent an answer that is not JSON: {body}"))
}

// ---------------------------------------------------------------- ssh

async fn ssh(ctx: &Context, args: SshArgs) -> Result<()> {
    let hash = args.hash.trim().to_owned();
    parse_hash(&hash, "the instance")?;
    let crn = crn_of(ctx, &hash, args.crn).await?;
    let Some(entry) = execution(&crn_http()?, &crn, &hash).await? else {
        bail!("the CRN at {crn} does not run {hash} (see `aleph instance list`)");
    };
    let Some(port) = entry.ssh_port() else {
        bail!(
            "the CRN at {crn} has not forwarded port 22 of {hash} (yet): is it running? (`aleph instance list`)"
        );
    };
    let endpoint = SshEndpoint {
        host: crn_host(&crn)?,
        port,
    };
    let known_hosts = keystore::config_dir()?.join("known_hosts").join(&hash);
    let command = ssh_command(
        &endpoint,
        args.identity.as_deref(),
        &known_hosts,
        &args.command,
    );
    if args.print_command {
        let value = json!({"command": command, "ssh": endpoint.to_json(), "crn_url": crn});
        ctx.out.result(&value, || shell_words(&command));
        return Ok(());
    }
    if let Some(folder) = known_hosts.parent() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    Err(error).context("running ssh (is OpenSSH's client installed?)")
}

/// The `ssh` argument list for `endpoint`.
///
/// - `StrictHostKeyChecking=accept-new`: a new instance's host key cannot be
///   known beforehand, so it is trusted on first use and checked from then on
///   (a changed key is still refused).
/// - `UserKnownHostsFile` of its own per instance: CRNs hand the same host port
///   to one instance after another, so keys kept under `[host]:port` in
///   ~/.ssh/known_hosts would clash with the next instance's and make ssh refuse.
/// - `-i KEY` comes with `IdentitiesOnly=yes`, so an agent holding many keys
///   does not use up the server's tries before the right one.
fn ssh_command(
    endpoint: &SshEndpoint,
    identity: Option<&Path>,
    known_hosts: &Path,
    remote: &[String],
) -> Vec<String> {
    let mut command = vec![
        "ssh".to_owned(),
        "-p".to_owned(),
        endpoint.port.to_string(),
        "-o".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
    ];
    if let Some(identity) = identity {
        command.extend([
            "-i".to_owned(),
            identity.display().to_string(),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
        ]);
    }
    command.push(format!("{SSH_USER}@{}", endpoint.host));
    // ssh stops reading options at the destination: what follows is the remote command.
    command.extend(remote.iter().cloned());
    command
}

/// The command as a shell line, quoting what needs it (for `--print-command`).
fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=@:,+".contains(&b));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse_hash(hash: &str, what: &str) -> Result<ItemHash> {
    ItemHash::try_from(hash.trim())
        .map_err(|e| anyhow::anyhow!("{what}: {hash:?} is not an item hash ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFxPG4xo1hM3lIwcbRA+1Oppc69wW5V3q2MKcoL92jPH test@aleph";

    #[test]
    fn base64_decodes_with_and_without_padding_and_refuses_junk() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aA==").unwrap(), b"h");
        assert!(
            decode_base64("aGVsbG8").is_none(),
            "length not a multiple of 4"
        );
        assert!(decode_base64("aGV*bG8=").is_none());
        assert!(decode_base64("a===").is_none());
        assert!(decode_base64("").is_none());
    }

    #[test]
    fn public_key_lines_must_carry_the_key_of_their_type() {
        check_public_key_line(ED25519).unwrap();
        // No comment is fine.
        check_public_key_line(ED25519.rsplit_once(' ').unwrap().0).unwrap();
        let error = |line: &str| format!("{:#}", check_public_key_line(line).unwrap_err());
        assert!(error("hello world").contains("not an SSH public key"));
        assert!(error("ssh-ed25519").contains("no key data"));
        assert!(error("ssh-ed25519 AAAA$$$$").contains("not valid base64"));
        // An ed25519 blob announced as RSA, and a truncated blob.
        let blob = ED25519.split(' ').nth(1).unwrap();
        assert!(error(&format!("ssh-rsa {blob}")).contains("not a ssh-rsa key"));
        assert!(error("ssh-ed25519 AAAAC3Nz").contains("not a ssh-ed25519 key"));
        // Only the type, no key after it.
        assert!(error("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5").contains("not a ssh-ed25519 key"));
    }

    #[test]
    fn key_files_give_their_lines_and_private_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("id.pub");
        std::fs::write(&public, format!("# mine\n\n{ED25519}\n")).unwrap();
        assert_eq!(read_public_keys(&public).unwrap(), [ED25519]);

        let private = dir.path().join("id");
        std::fs::write(
            &private,
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
        )
        .unwrap();
        let refused = format!("{:#}", read_public_keys(&private).unwrap_err());
        assert!(refused.contains("is a private key"), "{refused}");
        assert!(refused.contains("id.pub"), "{refused}");

        let empty = dir.path().join("empty.pub");
        std::fs::write(&empty, "\n# nothing\n").unwrap();
        assert!(
            format!("{:#}", read_public_keys(&empty).unwrap_err()).contains("no SSH public key")
        );

        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, format!("{ED25519}\nnot a key\n")).unwrap();
        let refused = format!("{:#}", read_public_keys(&bad).unwrap_err());
        assert!(refused.contains("line 2"), "{refused}");
    }

    #[test]
    fn a_rootfs_name_is_looked_up_in_the_aggregate() {
        let hash = "ab".repeat(32);
        let images = json!({
            "runtimes": {},
            "rootfs": {"debian12": {"hash": hash, "display_name": "Debian 12"}, "broken": {}},
            "defaults": {"runtime": "py", "rootfs": "debian12"},
        });
        let rootfs = rootfs_of(&images, "debian12").unwrap();
        assert_eq!(rootfs.reference.to_string(), hash);
        assert_eq!(rootfs.name, "Debian 12");
        let missing = format!("{}", rootfs_of(&images, "ubuntu").unwrap_err());
        assert!(missing.contains("broken, debian12") || missing.contains("debian12, broken"));
        assert!(format!("{}", rootfs_of(&images, "broken").unwrap_err()).contains("no hash"));
        assert!(format!("{}", rootfs_of(&json!({}), "debian12").unwrap_err()).contains("names no"));
    }

    #[test]
    fn the_content_has_the_public_networks_instance_shape() {
        let content = instance_content(&InstanceSpec {
            name: "box",
            authorized_keys: vec![ED25519.to_owned()],
            vcpus: 2,
            memory_mib: 4096,
            rootfs: parse_hash(&"cd".repeat(32), "rootfs").unwrap(),
            rootfs_size: PersistentVolumeSize::try_from(8192).unwrap(),
            volumes: Vec::new(),
            node_hash: Some("ef".repeat(32)),
            payment: Payment::credits(),
        });
        let value = serde_json::to_value(&content).unwrap();
        assert_eq!(value["allow_amend"], false);
        assert_eq!(value["metadata"], json!({"name": "box"}));
        assert_eq!(value["authorized_keys"], json!([ED25519]));
        assert_eq!(
            value["environment"],
            json!({"internet": true, "aleph_api": true, "hypervisor": "qemu", "reproducible": false, "shared_cache": false})
        );
        assert_eq!(
            value["resources"],
            json!({"vcpus": 2, "memory": 4096, "seconds": 30})
        );
        assert_eq!(
            value["rootfs"],
            json!({"parent": {"ref": "cd".repeat(32), "use_latest": true}, "persistence": "host", "size_mib": 8192})
        );
        assert_eq!(
            value["requirements"],
            json!({"node": {"node_hash": "ef".repeat(32)}})
        );
        assert_eq!(value["payment"]["type"], "credit");
        assert_eq!(value["volumes"], json!([]));
        // It reads back as an INSTANCE content.
        let back: InstanceContent = serde_json::from_value(value).unwrap();
        assert_eq!(back, content);
    }

    #[test]
    fn the_ssh_port_is_read_from_the_executions_list_shape() {
        let entry: ExecutionEntry = serde_json::from_value(json!({
            "networking": {"ipv4_network": "172.16.3.0/24", "ipv4_ip": "172.16.3.2",
                "host_ipv4": null, "ipv6_network": null, "ipv6_ip": null,
                "mapped_ports": {"22": {"host": 24000, "tcp": true, "udp": false}}},
            "running": true, "vm_type": "instance", "status": {"started_at": "x"},
        }))
        .unwrap();
        assert!(entry.running);
        assert_eq!(entry.ssh_port(), Some(24000));
        let unmapped: ExecutionEntry =
            serde_json::from_value(json!({"networking": {"mapped_ports": null}, "running": true}))
                .unwrap();
        assert_eq!(unmapped.ssh_port(), None);
        let bare: ExecutionEntry = serde_json::from_value(json!({"running": false})).unwrap();
        assert_eq!(bare.ssh_port(), None);
    }

    #[test]
    fn the_crn_host_is_what_ssh_connects_to() {
        assert_eq!(crn_host("http://127.0.0.1:4020").unwrap(), "127.0.0.1");
        assert_eq!(
            crn_host("https://crn.example.org/").unwrap(),
            "crn.example.org"
        );
        assert_eq!(crn_host("http://[::1]:4020").unwrap(), "::1");
        assert!(crn_host("not a url").is_err());
    }

    #[test]
    fn a_node_is_found_by_its_registration_unless_dropped() {
        let register = |hash: &str, time: f64, address: &str| {
            json!({"item_hash": hash, "time": time, "content": {"type": "corechan-operation",
                "content": {"action": "create-resource-node", "details": {"name": "n", "address": address}}}})
        };
        let drop = |target: &str| {
            json!({"item_hash": "d", "time": 9.0, "content": {"type": "corechan-operation",
                "ref": target, "content": {"action": "drop-node"}}})
        };
        let directory = |messages: Vec<Value>| NodeDirectory {
            nodes: registered_nodes(&json!({"messages": messages})),
            problems: Vec::new(),
        };
        let mut messages = vec![
            register("old", 1.0, "http://127.0.0.1:4020"),
            register("new", 2.0, "http://127.0.0.1:4020/"),
            register("other", 3.0, "http://127.0.0.1:4021"),
        ];
        let nodes = directory(messages.clone());
        assert_eq!(nodes.hash_of("http://127.0.0.1:4020"), Some("new"));
        assert_eq!(nodes.url_of("other"), Some("http://127.0.0.1:4021"));
        messages.push(drop("new"));
        let nodes = directory(messages);
        assert_eq!(nodes.hash_of("HTTP://127.0.0.1:4020/"), Some("old"));
        assert_eq!(nodes.url_of("new"), None);
        assert_eq!(nodes.hash_of("http://127.0.0.1:9"), None);
        assert_eq!(nodes.caveat(), "");
    }

    #[test]
    fn the_ssh_command_pins_port_key_and_known_hosts() {
        let endpoint = SshEndpoint {
            host: "127.0.0.1".into(),
            port: 24001,
        };
        let known = Path::new("/cfg/known_hosts/abc");
        let plain = ssh_command(&endpoint, None, known, &[]);
        assert_eq!(
            plain,
            [
                "ssh",
                "-p",
                "24001",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "UserKnownHostsFile=/cfg/known_hosts/abc",
                "root@127.0.0.1"
            ]
        );
        let remote = vec!["uname".to_owned(), "-a".to_owned()];
        let full = ssh_command(&endpoint, Some(Path::new("/k/id")), known, &remote);
        assert_eq!(
            &full[7..],
            [
                "-i",
                "/k/id",
                "-o",
                "IdentitiesOnly=yes",
                "root@127.0.0.1",
                "uname",
                "-a"
            ]
        );
        assert_eq!(
            shell_words(&["echo".into(), "it's".into(), "a b".into(), "x=1".into()]),
            r"echo 'it'\''s' 'a b' x=1"
        );
    }
}
