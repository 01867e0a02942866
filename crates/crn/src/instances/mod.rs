//! Instances: full VMs (systemd, cloud-init, sshd) that their owners log into over SSH
//! and that keep their disk across stops, reboots and node restarts.
//!
//! Each instance has a folder `DATA/instances/<first 16 hex of its hash>/` with its
//! record ([`record::InstanceRecord`]: message, parent image, subnet, SSH port), its root
//! disk overlay and cloud-init seed ([`crate::instance`]), and the VM's own files (the
//! driver's pidfile, sockets and console log). Persistent volumes live beside the
//! programs' (`DATA/volumes/<owner>/<name>.ext4`) and outlive the instance until
//! `erase`. The network (TAP, firewall rules, port forwards) is set up at each start and
//! torn down at each stop; nothing of it is touched before the first start, so a node
//! that runs no instance never changes the host's network.
//!
//! Each instance gets 22/tcp forwarded from a host port, and the ports its owner lists
//! in the `port-forwarding` aggregate ([`port_plan`]), read at each start and again
//! while it runs ([`port_aggregate`]); a guest port keeps its host port while listed.
//!
//! The scheduler's allocation says which instances run here ([`crate::persistent`]
//! calls [`Instances::reconcile`]); their owners stop, reboot, erase and reinstall them
//! through `/control/machine/{ref}/...`.

pub mod boot;
pub mod port_aggregate;
mod port_forwards;
pub mod port_plan;
pub mod record;

use crate::error::ProgramError;
use crate::execution::prepare::{make_ext4, safe_name, sniff_format};
use crate::hypervisor::{
    ChannelSpec, Drive, DriveFormat, Hypervisor, Machine, RunningVm, StopOutcome, StopTimeouts,
    VmSpec, VmStatus,
};
use crate::instance::{InstanceDisks, SeedConfig, SeedMount, create_overlay, write_seed};
use crate::network::{HostPorts, LoopbackRelay, VmNet, VmNetwork};
use crate::persistent::backoff::{BackoffPolicy, Restarts};
use crate::pool::Pool;
use crate::pool::admission::{Amount, Reservation};
use crate::resources::instance::InstanceMessage;
use crate::resources::program::Volume;
use aleph_protocol::agent::VolumeFormat;
use boot::BootPlan;
use chrono::{DateTime, Utc};
use port_aggregate::{AggregateReader, REREAD_INTERVAL, ReadSchedule};
use port_forwards::Installed;
use record::InstanceRecord;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a guest gets to power off after the ACPI button before QEMU is told to quit.
const POWERDOWN_WAIT: Duration = Duration::from_secs(60);

/// What the node reports of one instance.
#[derive(Debug, Clone)]
pub struct InstanceStatus {
    pub item_hash: String,
    pub record: InstanceRecord,
    pub running: bool,
    pub started_at: Option<DateTime<Utc>>,
    /// Why the last start failed, until one succeeds.
    pub error: Option<String>,
}

struct Running {
    vm: Arc<dyn RunningVm>,
    /// Its owner, whose aggregate says what it forwards.
    owner: String,
    started_at: DateTime<Utc>,
    _reservation: Option<Reservation>,
}

struct State {
    ports: HostPorts,
    running: HashMap<String, Running>,
    /// Starts under way, so the loop does not queue more.
    starting: std::collections::HashSet<String>,
    restarts: HashMap<String, Restarts>,
    errors: HashMap<String, String>,
    /// When the owners' `port-forwarding` aggregates are read again.
    reads: ReadSchedule,
    /// The entries of each instance's aggregate skipped, as last logged.
    skipped_ports: HashMap<String, Vec<String>>,
}

pub struct Instances {
    pool: Arc<Pool>,
    hypervisor: Box<dyn Hypervisor>,
    root: PathBuf,
    volumes_dir: PathBuf,
    kernels_dir: PathBuf,
    policy: BackoffPolicy,
    state: Mutex<State>,
    /// One operation (start, stop, erase...) per instance at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The tcp forwards reached from the node itself, per running instance and host
    /// port.
    relays: Mutex<HashMap<String, HashMap<u16, LoopbackRelay>>>,
    aggregates: AggregateReader,
}

/// The folder of instance `hash`: short, because the VM's Unix sockets live in it.
fn folder_name(hash: &str) -> &str {
    &hash[..16.min(hash.len())]
}

impl Instances {
    /// Sets instances' networks up and tears them down: the node's, held by the pool.
    fn network(&self) -> &VmNetwork {
        self.pool.network().vm_network()
    }

    /// Takes back the instances an earlier node process left: their addresses and
    /// ports stay reserved, and the VMs still running are adopted.
    pub async fn open(
        pool: Arc<Pool>,
        hypervisor: Box<dyn Hypervisor>,
    ) -> anyhow::Result<Arc<Self>> {
        let data_dir = pool.config().data_dir.clone();
        let root = data_dir.join("instances");
        std::fs::create_dir_all(&root)?;
        // The node's network and subnets are the pool's (see [`crate::network::shared`]).
        let network = pool.network();
        let mut ports = HostPorts::new(network.vm_network().config());
        let config = pool.config();
        let policy = BackoffPolicy {
            initial: Duration::from_millis(config.restart_backoff_initial_ms.max(1)),
            max: Duration::from_secs(config.restart_backoff_max_seconds.max(1)),
        };
        let mut running = HashMap::new();
        for entry in std::fs::read_dir(&root)?.flatten() {
            let folder = entry.path();
            let Some(mut record) = InstanceRecord::load(&folder) else {
                continue;
            };
            let hash = record.message.item_hash.clone();
            if !network.reserve(record.net.index) || !ports.reserve(record.ssh_port) {
                tracing::warn!("instance {hash}: its address or port is taken twice");
            }
            for (guest, mapped) in &record.forwarded_ports {
                if mapped.host != record.ssh_port && !ports.reserve(mapped.host) {
                    tracing::warn!(
                        "instance {hash}: host port {} (guest port {guest}) is taken twice",
                        mapped.host
                    );
                }
            }
            if let Ok(vm) = hypervisor.adopt(&folder).await {
                tracing::info!("instance {hash}: took back its VM (pid {})", vm.pid());
                let reservation = pool.admission().reserve(demand(&record.message)).ok();
                running.insert(
                    hash,
                    Running {
                        vm: Arc::from(vm),
                        owner: record.message.content.address.clone(),
                        started_at: Utc::now(),
                        _reservation: reservation,
                    },
                );
            } else {
                follow_ipv6_setting(network.vm_network(), &mut record, &folder);
            }
        }
        let aggregates = AggregateReader::new(config.ccn_url());
        let instances = Arc::new(Self {
            volumes_dir: data_dir.join("volumes"),
            kernels_dir: boot::cache_dir(&data_dir),
            pool,
            hypervisor,
            root,
            policy,
            state: Mutex::new(State {
                ports,
                running,
                starting: Default::default(),
                restarts: HashMap::new(),
                errors: HashMap::new(),
                reads: ReadSchedule::new(REREAD_INTERVAL),
                skipped_ports: HashMap::new(),
            }),
            locks: Mutex::new(HashMap::new()),
            relays: Mutex::new(HashMap::new()),
            aggregates,
        });
        // Their forwards are still in the firewall; the relays went with the process.
        let adopted: Vec<String> = instances.state().running.keys().cloned().collect();
        for hash in adopted {
            if let Some(record) = instances.record(&hash) {
                instances.open_relays(&record).await;
            }
        }
        Ok(instances)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("instances state")
    }

    fn lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("instance locks")
            .entry(hash.to_owned())
            .or_default()
            .clone()
    }

    pub fn folder(&self, hash: &str) -> PathBuf {
        self.root.join(folder_name(hash))
    }

    /// The record of `hash`, if this node has the instance (running or not).
    pub fn record(&self, hash: &str) -> Option<InstanceRecord> {
        InstanceRecord::load(&self.folder(hash)).filter(|r| r.message.item_hash == hash)
    }

    /// The instances this node keeps, running or not.
    pub fn known(&self) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return BTreeSet::new();
        };
        entries
            .flatten()
            .filter_map(|e| InstanceRecord::load(&e.path()))
            .map(|r| r.message.item_hash)
            .collect()
    }

    pub fn is_running(&self, hash: &str) -> bool {
        self.state().running.contains_key(hash)
    }

    /// The running VM of `hash`.
    pub fn vm(&self, hash: &str) -> Option<Arc<dyn RunningVm>> {
        self.state().running.get(hash).map(|r| r.vm.clone())
    }

    pub fn statuses(&self) -> Vec<InstanceStatus> {
        self.known()
            .into_iter()
            .filter_map(|hash| {
                let record = self.record(&hash)?;
                let state = self.state();
                let running = state.running.get(&hash);
                Some(InstanceStatus {
                    running: running.is_some(),
                    started_at: running.map(|r| r.started_at),
                    error: state.errors.get(&hash).cloned(),
                    item_hash: hash,
                    record,
                })
            })
            .collect()
    }

    /// Brings what runs to `allocated`: instances no longer allocated are stopped and
    /// deleted (root disk, seed, address; persistent volumes stay until `erase`),
    /// those whose VM ended are restarted after a backoff, and those not running are
    /// started (unless `may_start` is false or their owner stopped them).
    /// `may_run` false stops every instance (the lease lapsed) and keeps their disks.
    pub async fn reconcile(
        self: &Arc<Self>,
        allocated: &BTreeSet<String>,
        may_run: bool,
        may_start: bool,
    ) {
        for hash in self.known() {
            if !allocated.contains(&hash) {
                if let Err(e) = self.delete(&hash).await {
                    tracing::warn!("instance {hash}: not deleted: {e}");
                }
            } else if !may_run && self.is_running(&hash) {
                self.stop(&hash, "lease lapsed").await;
            }
        }
        if !may_run {
            return;
        }
        // VMs that ended on their own (a crash, or a poweroff from inside).
        let running: Vec<(String, Arc<dyn RunningVm>)> = self
            .state()
            .running
            .iter()
            .map(|(h, r)| (h.clone(), r.vm.clone()))
            .collect();
        for (hash, vm) in running {
            if vm.status().await == VmStatus::Exited {
                tracing::warn!("instance {hash}: its VM exited");
                self.stop(&hash, "its VM exited").await;
                let mut state = self.state();
                let delay = state
                    .restarts
                    .entry(hash.clone())
                    .or_default()
                    .failed(&self.policy, Instant::now());
                tracing::info!("instance {hash}: restart in {delay:?}");
            }
        }
        self.refresh_due_forwards();
        if !may_start {
            return;
        }
        for hash in allocated {
            let due = {
                let state = self.state();
                !state.running.contains_key(hash)
                    && !state.starting.contains(hash)
                    && state
                        .restarts
                        .get(hash)
                        .is_none_or(|r| r.ready(Instant::now()))
            };
            let held = self.record(hash).is_some_and(|r| r.held);
            if due && !held {
                self.state().starting.insert(hash.clone());
                let this = self.clone();
                let hash = hash.clone();
                tokio::spawn(async move {
                    let _ = this.start(&hash).await;
                });
            }
        }
    }

    /// Starts instance `hash` (created on its first start); returns once its VM runs.
    /// One its owner stopped or erased stays stopped: only `reboot` and `reinstall`
    /// (which release it first) start it again, whatever start was queued meanwhile.
    pub async fn start(&self, hash: &str) -> Result<(), ProgramError> {
        let lock = self.lock(hash);
        let _one = lock.lock().await;
        let held = self.record(hash).is_some_and(|r| r.held);
        if held || self.is_running(hash) {
            self.state().starting.remove(hash);
            return Ok(());
        }
        self.state().starting.insert(hash.to_owned());
        let outcome = self.start_locked(hash).await;
        let mut state = self.state();
        state.starting.remove(hash);
        match &outcome {
            Ok(()) => {
                state.errors.remove(hash);
            }
            Err(e) => {
                tracing::warn!("instance {hash} did not start: {e}");
                state.errors.insert(hash.to_owned(), e.to_string());
                state
                    .restarts
                    .entry(hash.to_owned())
                    .or_default()
                    .failed(&self.policy, Instant::now());
            }
        }
        outcome
    }

    async fn start_locked(&self, hash: &str) -> Result<(), ProgramError> {
        let hash = crate::resources::check_hash(hash)?;
        let folder = self.folder(&hash);
        let mut record = match self.record(&hash) {
            Some(record) => record,
            None => self.create(&hash, &folder).await?,
        };
        let reservation = self
            .pool
            .admission()
            .reserve(demand(&record.message))
            .map_err(ProgramError::NoCapacity)?;
        let spec = self.prepare(&record, &folder).await?;

        self.pool.network().ensure_ready().await?;
        let net = self
            .network()
            .setup(&hash, record.net.index)
            .await
            .map_err(|e| ProgramError::internal(format!("network: {e}")))?;
        let owner = record.message.content.address.clone();
        let wanted = self.wanted_ports_now(&record).await;
        self.state().reads.done(&owner, Instant::now());
        let forwarded = self
            .apply_forwards(&mut record, &wanted, Installed::Unsure)
            .await;
        if let Err(e) = forwarded {
            self.unplug(&hash, &net).await;
            return Err(e);
        }
        let vm = match self.hypervisor.start(&spec).await {
            Ok(vm) => vm,
            Err(e) => {
                self.unplug(&hash, &net).await;
                return Err(ProgramError::StartFailed {
                    error: e.to_string(),
                    traceback: None,
                });
            }
        };
        tracing::info!(
            "instance {hash} started (pid {}), SSH on host port {}",
            vm.pid(),
            record.ssh_port
        );
        self.state().running.insert(
            hash,
            Running {
                vm: Arc::from(vm),
                owner,
                started_at: Utc::now(),
                _reservation: Some(reservation),
            },
        );
        Ok(())
    }

    /// Undoes a start's network (TAP, rules, forwards, relays) after it failed.
    async fn unplug(&self, hash: &str, net: &VmNet) {
        self.relays.lock().expect("relays").remove(hash);
        if let Err(e) = self.network().teardown(net).await {
            tracing::warn!("instance {hash}: network not torn down: {e}");
        }
    }

    /// The record of a new instance: its message, parent image, subnet and port.
    async fn create(&self, hash: &str, folder: &Path) -> Result<InstanceRecord, ProgramError> {
        let message = self.pool.resources().instance(hash).await?;
        check_supported(&message)?;
        let content = &message.content;
        let parent = self
            .pool
            .resources()
            .store_file(
                &content.rootfs.parent.reference,
                content.rootfs.parent.use_latest,
                &content.address,
            )
            .await?;
        if folder.exists() {
            // A leftover of an instance that was not deleted cleanly, or (most
            // unlikely) another hash with the same first 16 digits.
            return Err(ProgramError::internal(format!(
                "{} exists but holds no record of {hash}",
                folder.display()
            )));
        }
        let (subnet, ssh_port) = {
            let mut state = self.state();
            let subnet = self
                .pool
                .network()
                .allocate()
                .map_err(|e| ProgramError::NoCapacity(e.to_string()))?;
            match state.ports.allocate() {
                Ok(port) => (subnet, port),
                Err(e) => {
                    self.pool.network().release(subnet.index);
                    return Err(ProgramError::NoCapacity(e.to_string()));
                }
            }
        };
        let net = match self.network().vm_net(hash, subnet.index) {
            Ok(net) => net,
            Err(e) => {
                let mut state = self.state();
                self.pool.network().release(subnet.index);
                state.ports.release(ssh_port);
                return Err(ProgramError::internal(format!("network: {e}")));
            }
        };
        let record = InstanceRecord {
            net,
            message,
            parent,
            ssh_port,
            held: false,
            forwarded_ports: Default::default(),
        };
        if let Err(e) = record.save(folder) {
            let mut state = self.state();
            self.pool.network().release(subnet.index);
            state.ports.release(ssh_port);
            return Err(ProgramError::internal(format!("{}: {e}", folder.display())));
        }
        Ok(record)
    }

    /// The disks (the overlay made on the first start only) and the machine.
    async fn prepare(
        &self,
        record: &InstanceRecord,
        folder: &Path,
    ) -> Result<VmSpec, ProgramError> {
        let message = &record.message;
        let content = &message.content;
        let disks = InstanceDisks::in_folder(folder);
        if !disks.rootfs.exists() {
            create_overlay(&record.parent.path, &disks.rootfs, content.rootfs.size_mib)
                .await
                .map_err(|e| ProgramError::Unsupported(format!("root disk: {e}")))?;
        }
        let mut drives = vec![
            Drive::writable(&disks.rootfs).with_format(DriveFormat::Qcow2),
            Drive::read_only(&disks.seed),
        ];
        let mut mounts = Vec::new();
        for (index, volume) in content.volumes.iter().enumerate() {
            let serial = format!("vol{index}");
            let (drive, mount) = match volume {
                Volume::Immutable {
                    reference,
                    use_latest,
                    mount,
                } => {
                    let file = self
                        .pool
                        .resources()
                        .store_file(reference, *use_latest, &content.address)
                        .await?;
                    if sniff_format(&file.path) != Some(VolumeFormat::Ext4) {
                        return Err(ProgramError::Unsupported(format!(
                            "volume {reference}: instances mount ext4 images only"
                        )));
                    }
                    (Drive::read_only(&file.path), mount)
                }
                Volume::Ephemeral {
                    size_mib, mount, ..
                } => {
                    // Made again at each start: discarded at stop.
                    let path = folder.join(format!("ephemeral-{index}.ext4"));
                    let _ = tokio::fs::remove_file(&path).await;
                    make_ext4(&path, *size_mib).await?;
                    (Drive::writable(path), mount)
                }
                Volume::Persistent {
                    name,
                    size_mib,
                    mount,
                    persistence,
                    ..
                } => {
                    if persistence.as_deref() == Some("store") {
                        return Err(ProgramError::Unsupported(
                            "persistent volumes kept on the CCN (`persistence: store`) are not supported".into(),
                        ));
                    }
                    let path = self.persistent_volume(&content.address, name)?;
                    if !path.exists() {
                        make_ext4(&path, *size_mib).await?;
                    }
                    (Drive::writable(path), mount)
                }
            };
            drives.push(drive.with_serial(&serial));
            mounts.push(SeedMount {
                device: format!("/dev/disk/by-id/virtio-{serial}"),
                mount_point: mount.clone(),
            });
        }
        let hostname = aleph_protocol::hostname::encode(&message.item_hash)
            .map_err(|e| ProgramError::BadReference(e.to_string()))?;
        let seed = SeedConfig {
            instance_id: message.item_hash.clone(),
            hostname,
            ssh_authorized_keys: content.authorized_keys.clone().unwrap_or_default(),
            network: Some(static_network(&record.net)),
            mounts,
        };
        write_seed(&disks.seed, &seed)
            .map_err(|e| ProgramError::Unsupported(format!("cloud-init seed: {e}")))?;

        let boot = match boot::plan(
            &record.parent.path,
            &record.parent.file_hash,
            &self.kernels_dir,
        )
        .await?
        {
            BootPlan::Kernel(source) => Some(source),
            BootPlan::Firmware => None,
        };
        let vcpus = u8::try_from(content.resources.vcpus)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                ProgramError::Unsupported(format!("{} vCPUs", content.resources.vcpus))
            })?;
        let memory_mib = u32::try_from(content.resources.memory)
            .map_err(|_| ProgramError::Unsupported("memory".into()))?;
        Ok(VmSpec {
            machine: Machine::Pc,
            vcpus,
            memory_mib,
            boot,
            drives,
            channel: ChannelSpec::default(),
            network: Some(record.net.tap_spec()),
            folder: folder.to_path_buf(),
        })
    }

    fn persistent_volume(&self, owner: &str, name: &str) -> Result<PathBuf, ProgramError> {
        Ok(self
            .volumes_dir
            .join(safe_name(owner)?)
            .join(format!("{}.ext4", safe_name(name)?)))
    }

    /// Powers instance `hash` off (ACPI, then `quit`, then SIGKILL) and unplugs its
    /// network; its disks stay. Returns how it ended, `None` if it was not running.
    pub async fn stop(&self, hash: &str, reason: &str) -> Option<StopOutcome> {
        self.relays.lock().expect("relays").remove(hash);
        let running = self.state().running.remove(hash)?;
        let outcome = crate::hypervisor::stop(
            running.vm.as_ref(),
            None,
            StopTimeouts {
                acpi: POWERDOWN_WAIT,
                ..StopTimeouts::default()
            },
        )
        .await;
        tracing::info!("instance {hash} stopped ({reason}): {outcome:?}");
        if let Some(record) = self.record(hash)
            && let Err(e) = self.network().teardown(&record.net).await
        {
            tracing::warn!("instance {hash}: network not torn down: {e}");
        }
        Some(outcome)
    }

    /// Stops every running instance (the node stops); disks and records stay, so a
    /// node started again on the same data starts them again.
    pub async fn stop_all(&self, reason: &str) {
        let running: Vec<String> = self.state().running.keys().cloned().collect();
        let stops = running.iter().map(|hash| self.stop(hash, reason));
        futures::future::join_all(stops).await;
    }

    /// Stops `hash` at its owner's request: it stays stopped until rebooted.
    pub async fn stop_held(&self, hash: &str) -> Result<Option<StopOutcome>, ProgramError> {
        let lock = self.lock(hash);
        let _one = lock.lock().await;
        self.set_held(hash, true)?;
        Ok(self.stop(hash, "stopped by its owner").await)
    }

    /// Stops and starts `hash` again (its disks kept).
    pub async fn reboot(&self, hash: &str) -> Result<(), ProgramError> {
        {
            let lock = self.lock(hash);
            let _one = lock.lock().await;
            self.stop(hash, "rebooted by its owner").await;
            self.set_held(hash, false)?;
        }
        self.start(hash).await
    }

    /// A fresh root disk from the parent image (volumes kept), then a start.
    pub async fn reinstall(&self, hash: &str) -> Result<(), ProgramError> {
        {
            let lock = self.lock(hash);
            let _one = lock.lock().await;
            self.stop(hash, "reinstalled by its owner").await;
            remove_file(&InstanceDisks::in_folder(&self.folder(hash)).rootfs)?;
            self.set_held(hash, false)?;
        }
        self.start(hash).await
    }

    /// Stops `hash` and deletes its root disk and its persistent volumes; it stays
    /// stopped (a reboot starts it again, from a fresh disk). Its forwarded ports but
    /// SSH's go back to the pool (a reboot forwards them again, from new host ports).
    pub async fn erase(&self, hash: &str) -> Result<(), ProgramError> {
        let lock = self.lock(hash);
        let _one = lock.lock().await;
        let mut record = self
            .record(hash)
            .ok_or_else(|| ProgramError::NotFound(format!("no instance {hash} on this node")))?;
        self.stop(hash, "erased by its owner").await;
        remove_file(&InstanceDisks::in_folder(&self.folder(hash)).rootfs)?;
        for volume in &record.message.content.volumes {
            if let Volume::Persistent { name, .. } = volume {
                remove_file(&self.persistent_volume(&record.message.content.address, name)?)?;
            }
        }
        self.release_forwarded_ports(&mut record);
        record.held = true;
        record
            .save(&self.folder(hash))
            .map_err(ProgramError::internal)
    }

    /// Stops `hash` and forgets it: folder (root disk, seed, record), address and host
    /// ports.
    /// Persistent volumes stay (only `erase` deletes them).
    pub async fn delete(&self, hash: &str) -> Result<(), ProgramError> {
        let lock = self.lock(hash);
        let _one = lock.lock().await;
        let Some(record) = self.record(hash) else {
            return Ok(());
        };
        self.stop(hash, "deallocated").await;
        // A VM adopted as stopped still has its rules if the node died mid-stop.
        if let Err(e) = self.network().teardown(&record.net).await {
            tracing::warn!("instance {hash}: network not torn down: {e}");
        }
        let folder = self.folder(hash);
        std::fs::remove_dir_all(&folder)
            .map_err(|e| ProgramError::internal(format!("{}: {e}", folder.display())))?;
        let mut state = self.state();
        self.pool.network().release(record.net.index);
        for mapped in record.port_mapping().values() {
            state.ports.release(mapped.host);
        }
        state.restarts.remove(hash);
        state.errors.remove(hash);
        state.skipped_ports.remove(hash);
        tracing::info!("instance {hash} deleted");
        Ok(())
    }

    fn set_held(&self, hash: &str, held: bool) -> Result<(), ProgramError> {
        let folder = self.folder(hash);
        let mut record = self
            .record(hash)
            .ok_or_else(|| ProgramError::NotFound(format!("no instance {hash} on this node")))?;
        if record.held != held {
            record.held = held;
            record.save(&folder).map_err(ProgramError::internal)?;
        }
        if !held {
            self.state().restarts.remove(hash);
        }
        Ok(())
    }

    /// The guest's console output (its serial port), as lines.
    pub fn console(&self, hash: &str) -> Option<String> {
        let path = crate::hypervisor::qemu::Layout::new(&self.folder(hash)).serial_log();
        std::fs::read(path)
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// What an instance holds while it runs.
fn demand(message: &InstanceMessage) -> Amount {
    let content = &message.content;
    Amount {
        memory_mib: content.resources.memory,
        vcpus: u64::from(content.resources.vcpus),
        disk_mib: content.rootfs.size_mib
            + crate::execution::prepare::volumes_disk_mib(&content.volumes),
    }
}

/// What this node cannot run, refused before anything is made.
fn check_supported(message: &InstanceMessage) -> Result<(), ProgramError> {
    let environment = &message.content.environment;
    if let Some(hypervisor) = environment.hypervisor.as_deref()
        && hypervisor != "qemu"
    {
        return Err(ProgramError::Unsupported(format!(
            "instances run under QEMU on this node, not {hypervisor}"
        )));
    }
    if environment.trusted_execution.is_some() {
        return Err(ProgramError::Unsupported(
            "confidential instances (trusted_execution) are not offered by this node".into(),
        ));
    }
    if message.content.rootfs.size_mib == 0 {
        return Err(ProgramError::Unsupported("rootfs.size_mib is 0".into()));
    }
    Ok(())
}

/// A stopped instance's IPv6 side as the node's configuration has it now (an IPv6
/// pool added or removed since it was made), so that its next start gives the guest
/// the same addresses the host sets up. A running one keeps what it runs with.
fn follow_ipv6_setting(network: &VmNetwork, record: &mut InstanceRecord, folder: &Path) {
    let hash = record.message.item_hash.clone();
    match network.vm_net(&hash, record.net.index) {
        Ok(net) if net.ipv6 != record.net.ipv6 => {
            record.net.ipv6 = net.ipv6;
            if let Err(e) = record.save(folder) {
                tracing::warn!("instance {hash}: IPv6 setting not saved: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("instance {hash}: no IPv6 side: {e}"),
    }
}

fn static_network(net: &VmNet) -> crate::instance::StaticNetwork {
    use crate::instance::{Ipv4Cidr, Ipv6Cidr, StaticNetwork};
    StaticNetwork {
        mac: net.mac.clone(),
        ipv4: Ipv4Cidr::new(net.guest_ip, net.prefix),
        gateway_v4: net.host_ip,
        ipv6: net.ipv6.map(|v6| Ipv6Cidr::new(v6.guest_ip, v6.prefix)),
        gateway_v6: net.ipv6.map(|v6| v6.host_ip),
        nameservers: vec![std::net::IpAddr::V4(crate::network::VM_NAMESERVER)],
    }
}

fn remove_file(path: &Path) -> Result<(), ProgramError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProgramError::internal(format!("{}: {e}", path.display()))),
    }
}
