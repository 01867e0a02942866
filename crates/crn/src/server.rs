//! A running node: the pool, its background tasks (idle reaper, update watcher) and
//! the HTTP server.

use crate::config::CrnConfig;
use crate::execution::prepare::BootImages;
use crate::hypervisor::qemu::{AccelPolicy, QemuConfig, QemuDriver};
use crate::instances::Instances;
use crate::persistent::Persistent;
use crate::pool::Pool;
use crate::pool::admission::Admission;
use crate::records::Records;
use crate::resources::Resources;
use crate::resources::ccn::CcnClient;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct CrnHandle {
    addr: SocketAddr,
    pool: Arc<Pool>,
    persistent: Arc<Persistent>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl CrnHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The persistent programs' allocation and lease.
    pub fn persistent(&self) -> &Arc<Persistent> {
        &self.persistent
    }

    /// Stops serving. Running VMs are left running: a node started on the same data
    /// folder takes them back. Use [`CrnHandle::shutdown_and_stop_vms`] to end them.
    pub async fn shutdown(self) {
        self.pool.drain();
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        for task in self.tasks {
            let _ = task.await;
        }
        self.pool.records().close().await;
    }

    /// Stops serving and stops every VM, recording their executions.
    pub async fn shutdown_and_stop_vms(self) {
        self.pool.drain();
        let instances = self.persistent.instances().clone();
        tokio::join!(
            self.pool.stop_all("node stopped"),
            instances.stop_all("node stopped")
        );
        self.shutdown().await;
    }
}

fn boot_images(config: &CrnConfig) -> Result<BootImages> {
    let dir = config.images_dir();
    let images = crate::images::cached(&dir).with_context(|| {
        format!(
            "no guest images in {} (run `aleph-node images build`, or set ALEPH_DATA_DIR / images_dir)",
            dir.display()
        )
    })?;
    Ok(BootImages {
        kernel: images.vmlinuz,
        initramfs: images.initramfs,
    })
}

fn accel(config: &CrnConfig) -> Result<AccelPolicy> {
    Ok(match config.accel.as_str() {
        "auto" => AccelPolicy::Auto,
        "kvm" => AccelPolicy::Kvm,
        "tcg" => AccelPolicy::Tcg,
        other => bail!("accel must be auto, kvm or tcg, not {other:?}"),
    })
}

/// Starts a node with the guest images of `config.images_dir`.
pub async fn start(config: CrnConfig) -> Result<CrnHandle> {
    let images = boot_images(&config)?;
    start_with_images(config, images).await
}

/// Starts a node booting programs with `images` (benchmarks and tests that bring
/// their own kernel and initramfs).
pub async fn start_with_images(config: CrnConfig, images: BootImages) -> Result<CrnHandle> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let qemu = QemuConfig {
        accel: accel(&config)?,
        state_dir: Some(config.images_dir()),
        // Instances booted by firmware bring no kernel for the KVM probe.
        probe_kernel: Some(images.kernel.clone()),
        ..QemuConfig::default()
    };
    let driver = QemuDriver::new(qemu.clone());
    let resources = Resources::new(CcnClient::new(config.ccn_url()), &config.data_dir)?;
    let records = Records::open(&config.data_dir.join("records.sqlite")).await?;
    let memory = crate::about::total_memory_mib().saturating_sub(config.reserved_memory_mib);
    let memory = config
        .max_program_memory_mib
        .map_or(memory, |max| max.min(memory));
    let admission = Admission::new(
        memory,
        crate::about::cpu_count() * u64::from(config.vcpu_overcommit),
        &config.data_dir,
        config.reserved_disk_mib,
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let watch_updates = config.watch_updates;
    let heartbeats = config.heartbeats()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let allowed_schedulers = config.allowed_schedulers.clone();
    let heartbeat_interval = config.heartbeat_interval();
    let pool = Arc::new(Pool::new(
        config,
        Box::new(driver),
        images,
        resources,
        records,
        admission,
    )?);
    let adopted = pool.adopt_all().await;
    if adopted > 0 {
        tracing::info!("took back {adopted} running VM(s)");
    }

    // The programs the stored allocation lists are marked persistent before the idle
    // reaper first runs, so an adopted one is never taken for an idle on-demand VM.
    let instances = Instances::open(pool.clone(), Box::new(QemuDriver::new(qemu))).await?;
    let persistent = Persistent::open(pool.clone(), instances.clone(), heartbeats.is_some())?;
    let sender = heartbeats
        .map(|settings| {
            crate::heartbeat::Sender::new(
                persistent.clone(),
                settings,
                public_url,
                heartbeat_interval,
            )
        })
        .transpose()?;

    let (stop, stopped) = watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(reap_idle(pool.clone(), stopped.clone())),
        tokio::spawn(crate::persistent::run(persistent.clone(), stopped.clone())),
    ];
    if let Some(sender) = sender {
        tracing::info!("heartbeats signed by {}", sender.address());
        tasks.push(tokio::spawn(sender.run(stopped.clone())));
    }
    if watch_updates {
        tasks.push(tokio::spawn(crate::pool::updates::watch(
            pool.clone(),
            stopped.clone(),
        )));
    }
    let control = Arc::new(crate::control::Control::new(
        allowed_schedulers,
        persistent.clone(),
    ));
    let app = crate::api::router(pool.clone(), instances).layer(axum::Extension(control));
    // A proxied answer is written as a head and a body: without TCP_NODELAY, Nagle's
    // algorithm holds the body until the client's delayed ACK, 40 ms later.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    let mut server_stop = stopped;
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("CRN server stopped: {e}");
        }
    });
    tracing::info!("CRN listening on http://{addr}");
    Ok(CrnHandle {
        addr,
        pool,
        persistent,
        stop,
        server,
        tasks,
    })
}

async fn reap_idle(pool: Arc<Pool>, mut stop: watch::Receiver<bool>) {
    // Checking every quarter of the timeout keeps the overshoot small.
    let period = (pool.config().idle_timeout() / 4)
        .clamp(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(period) => pool.stop_idle().await,
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
