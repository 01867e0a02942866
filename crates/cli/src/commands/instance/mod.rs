//! `aleph instance create|list|delete|stop|reboot|erase|reinstall|logs|ssh`:
//! full VMs that their owner logs into over SSH.
//!
//! An instance is one INSTANCE message: the root filesystem it copies (a STORE,
//! named in the `vm-images` aggregate's `rootfs` map), its resources and the SSH
//! keys cloud-init installs for `root`, and any extra volumes (persistent,
//! ephemeral, immutable; see `volumes`). The scheduler places it on a CRN
//! (only on the node `requirements.node.node_hash` pins, if any); that CRN lists
//! it under its hash in `/v2/about/executions/list`, with the host port its
//! port 22 is forwarded to. SSH goes to the CRN's host on that port.
//!
//! The owner's controls (`stop`, `reboot`, `erase`, `reinstall`, `logs`) are
//! requests to that CRN signed with the operator scheme: an ephemeral P-256 key
//! that the account's wallet authorises (`X-SignedPubKey`), signing each request
//! (`X-SignedOperation`) for the CRN's host name and the request's path.
//!
//! This file holds the arguments, `create`, `list` and `delete`; the parts
//! they use are in the submodules below, one job each.

mod control;
mod crn;
mod nodes;
mod rootfs;
mod ssh;
mod ssh_key;
mod volumes;
mod wait;

use super::publish;
use crate::client::CcnClient;
use crate::context::Context;
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
use control::Control;
use crn::{ExecutionEntry, SshEndpoint, crn_host, crn_http, executions};
use nodes::{KnownNode, NodeDirectory};
use rootfs::resolve_rootfs;
use serde_json::{Value, json};
use ssh_key::{default_public_key_file, read_public_keys};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use volumes::VolumeFlags;
use wait::{Progress, wait_until_reachable};

/// Instances log in as root: cloud-init installs the keys there (`disable_root: false`).
const SSH_USER: &str = "root";
const SSH_PORT: &str = "22";

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
    /// (ext4, mounted at /M), e.g. `name=data,size_mib=1024,mount=/data`;
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

pub async fn run(ctx: &Context, command: InstanceCommand) -> Result<()> {
    match command {
        InstanceCommand::Create(args) => create(ctx, args).await,
        InstanceCommand::List { address } => list(ctx, address).await,
        InstanceCommand::Delete { hash, reason } => delete(ctx, &hash, reason).await,
        InstanceCommand::Stop(args) => control::run(ctx, args, Control::Stop).await,
        InstanceCommand::Reboot(args) => control::run(ctx, args, Control::Reboot).await,
        InstanceCommand::Erase(args) => control::run(ctx, args, Control::Erase).await,
        InstanceCommand::Reinstall(args) => control::run(ctx, args, Control::Reinstall).await,
        InstanceCommand::Logs(args) => control::run(ctx, args, Control::Logs).await,
        InstanceCommand::Ssh(args) => ssh::run(ctx, args).await,
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

fn parse_hash(hash: &str, what: &str) -> Result<ItemHash> {
    ItemHash::try_from(hash.trim())
        .map_err(|e| anyhow::anyhow!("{what}: {hash:?} is not an item hash ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFxPG4xo1hM3lIwcbRA+1Oppc69wW5V3q2MKcoL92jPH test@aleph";

    #[test]
    fn the_content_has_the_public_networks_instance_shape() {
        let content = instance_content(&InstanceSpec {
            name: "box",
            authorized_keys: vec![ED25519.to_owned()],
            vcpus: 2,
            memory_mib: 4096,
            rootfs: parse_hash(&"cd".repeat(32), "rootfs").unwrap(),
            rootfs_size: PersistentVolumeSize::try_from(8192).unwrap(),
            volumes: volumes::volumes_of(&VolumeFlags {
                persistent: vec!["name=data,size_mib=1024,mount=/data".into()],
                ..VolumeFlags::default()
            })
            .unwrap(),
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
        assert_eq!(
            value["volumes"],
            json!([{"mount": "/data", "persistence": "host", "name": "data", "size_mib": 1024}])
        );
        // It reads back as an INSTANCE content.
        let back: InstanceContent = serde_json::from_value(value).unwrap();
        assert_eq!(back, content);
    }
}
