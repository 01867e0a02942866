//! Real microVMs under QEMU (TCG where KVM cannot boot guests), the real guest agent,
//! real apps. Each test boots one VM and checks everything that VM can honestly show,
//! so the suite stays at three boots; they run in parallel.

mod common;

use aleph_crn::channel::{AgentChannel, ChannelError};
use aleph_crn::hypervisor::qemu::{QemuConfig, QemuDriver, probe};
use aleph_crn::hypervisor::{
    BootSource, ChannelSpec, Hypervisor, Machine, StopOutcome, StopTimeouts, VmError, VmSpec,
    VmStatus, stop,
};
use aleph_protocol::agent::{AppState, CodeInterface};
use bytes::Bytes;
use common::{FASTAPI_HELLO, Program, boot, console, host};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use std::sync::Arc;
use std::time::Duration;

/// One GET through the channel; a hang fails the test instead of stalling the suite.
async fn get(channel: &AgentChannel, path: &str) -> (u16, String) {
    let request = http::Request::get(path)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let call = async {
        let response = channel
            .forward(request)
            .await
            .expect("the request goes through");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no answer in 60 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_app_answers_concurrently_survives_a_new_driver_and_stops_gracefully() {
    let Some(host) = host() else { return };
    let driver = host.driver();
    let vm = boot(&host, &driver, "fastapi", &FASTAPI_HELLO).await;

    let reply = vm
        .channel
        .configure(&vm.config)
        .await
        .unwrap_or_else(|e| panic!("configure failed: {e}\nconsole:\n{}", console(&vm.folder)));
    assert_eq!(reply.status, "running");
    assert_eq!(
        get(&vm.channel, "/").await,
        (200, r#"{"message":"Hello World"}"#.to_string())
    );

    // Many requests at once, as streams of one session.
    let calls = (0..48).map(|i| {
        let channel = vm.channel.clone();
        async move {
            let path = if i % 4 == 3 {
                format!("/missing/{i}")
            } else {
                format!("/?n={i}")
            };
            (i, get(&channel, &path).await)
        }
    });
    for (i, (status, body)) in futures::future::join_all(calls).await {
        if i % 4 == 3 {
            assert_eq!(status, 404, "request {i}: {body}");
        } else {
            assert_eq!(
                (status, body.as_str()),
                (200, r#"{"message":"Hello World"}"#),
                "request {i}"
            );
        }
    }

    // The app's output reaches the host: follow the logs, make a request, see it logged.
    let mut logs = Box::pin(vm.channel.logs().await.expect("logs"));
    get(&vm.channel, "/?logged=1").await;
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = logs.next().await {
            if line.expect("a log line").message.contains("logged=1") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "uvicorn's access log line for the request");
    drop(logs);

    // Drop every handle: the VM must keep running, and a new driver adopts it. The old
    // host closes its socket and stays away a moment, as a restarting supervisor does:
    // the agent tells host sessions apart only by seeing the host leave in between.
    let (pid, folder, guard, config) = (vm.vm.pid(), vm.folder.clone(), vm.guard, vm.config);
    vm.channel.disconnect().await;
    drop((vm.vm, vm.channel, driver));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let driver = host.driver();
    let adopted = driver.adopt(&folder).await.expect("the VM is re-adopted");
    assert_eq!(adopted.pid(), pid);
    assert_eq!(adopted.status().await, VmStatus::Running);
    assert_eq!(adopted.spec().drives.len(), 2);
    // A second VM in the same folder would clobber this one's sockets.
    assert!(matches!(
        driver.start(adopted.spec()).await,
        Err(VmError::InvalidSpec(_))
    ));
    let channel = Arc::new(AgentChannel::new(adopted.channel()));
    let health = channel
        .wait_ready(common::BOOT_TIMEOUT)
        .await
        .expect("the agent answers the new host");
    assert_eq!(health.app, AppState::Running);
    assert_eq!(
        get(&channel, "/").await,
        (200, r#"{"message":"Hello World"}"#.to_string())
    );
    // It is configured already: the agent keeps its state across host sessions.
    assert!(matches!(
        channel.configure(&config).await,
        Err(ChannelError::Agent { status, .. }) if status == 409
    ));

    let ask = channel.clone();
    let outcome = stop(
        adopted.as_ref(),
        Some(Box::pin(async move {
            let _ = ask.shutdown().await;
        })),
        StopTimeouts::default(),
    )
    .await;
    assert_eq!(
        outcome,
        StopOutcome::Guest,
        "console:\n{}",
        console(&folder)
    );
    assert_eq!(adopted.status().await, VmStatus::Exited);
    assert!(matches!(
        driver.adopt(&folder).await,
        Err(VmError::NotRunning(_))
    ));
    drop(guard);
}

const BINARY_SERVER: Program = Program {
    file: "server.py",
    source: r#"#!/usr/bin/python3
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("binary says " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"#,
    entrypoint: "server.py",
    interface: CodeInterface::Binary,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_app_on_8080_answers_and_a_vm_killed_from_outside_is_seen_dead() {
    let Some(host) = host() else { return };
    let driver = host.driver();
    let vm = boot(&host, &driver, "binary", &BINARY_SERVER).await;
    vm.channel
        .configure(&vm.config)
        .await
        .unwrap_or_else(|e| panic!("configure failed: {e}\nconsole:\n{}", console(&vm.folder)));
    assert_eq!(
        get(&vm.channel, "/hello?x=1").await,
        (200, "binary says /hello?x=1".into())
    );

    // Killed behind the driver's back, as the OOM killer or an operator would.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.vm.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        vm.vm.wait_exit(Duration::from_secs(10)).await,
        "the kill is noticed"
    );
    assert_eq!(vm.vm.status().await, VmStatus::Exited);
    let request = http::Request::get("/").body(Empty::<Bytes>::new()).unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), vm.channel.forward(request)).await;
    assert!(
        matches!(after, Ok(Err(_))),
        "a request to a dead VM fails at once"
    );
    assert!(matches!(
        driver.adopt(&vm.folder).await,
        Err(VmError::NotRunning(_))
    ));
    assert_eq!(
        stop(vm.vm.as_ref(), None, StopTimeouts::default()).await,
        StopOutcome::AlreadyExited
    );
}

const BROKEN_IMPORT: Program = Program {
    file: "main.py",
    source: "import definitely_not_installed_module\napp = None\n",
    entrypoint: "main:app",
    interface: CodeInterface::Asgi,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_import_fails_reports_its_traceback() {
    let Some(host) = host() else { return };
    let driver = host.driver();
    let vm = boot(&host, &driver, "broken", &BROKEN_IMPORT).await;
    let error = vm
        .channel
        .configure(&vm.config)
        .await
        .expect_err("the app cannot start");
    let traceback = error
        .traceback()
        .unwrap_or_else(|| panic!("no traceback in {error:?}"));
    assert!(
        traceback.contains("ModuleNotFoundError")
            && traceback.contains("definitely_not_installed_module"),
        "{traceback}"
    );
    assert!(matches!(error, ChannelError::Agent { status, .. } if status.is_server_error()));
    assert_eq!(vm.channel.health().await.unwrap().app, AppState::Failed);
    // User requests get a clear error, not a hang.
    let request = http::Request::get("/").body(Empty::<Bytes>::new()).unwrap();
    let response = vm.channel.forward(request).await.unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());

    // Without asking the agent: the ACPI power button alone must bring the guest down.
    let outcome = stop(vm.vm.as_ref(), None, StopTimeouts::default()).await;
    assert_eq!(
        outcome,
        StopOutcome::Acpi,
        "console:\n{}",
        console(&vm.folder)
    );
    assert!(vm.vm.wait_exit(Duration::ZERO).await);
}

/// The driver on its own, without the agent: the KVM probe's verdict, and a guest that
/// powers itself off (the probe's hand-made init, booted with the verdict's
/// acceleration) is seen as exited, its console kept in the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_init_boots_prints_and_powers_off() {
    let Some(host) = host() else { return };
    let driver = QemuDriver::new(QemuConfig {
        state_dir: Some(host.data_dir.clone()),
        ..QemuConfig::default()
    });
    let verdict = driver.accel_for(&host.images.vmlinuz).await;
    eprintln!("acceleration: {verdict:?}");
    let folder = host.work.path().join("probe");
    let _guard = common::KillByPidfile(folder.clone());
    std::fs::create_dir_all(&folder).unwrap();
    let initramfs = folder.join("probe.cpio");
    std::fs::write(&initramfs, probe::probe_initramfs()).unwrap();
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 128,
        machine: Machine::Microvm,
        boot: Some(BootSource {
            kernel: host.images.vmlinuz.clone(),
            initramfs: Some(initramfs),
            cmdline: "quiet".into(),
        }),
        drives: vec![],
        channel: ChannelSpec::default(),
        network: None,
        folder: folder.clone(),
    };
    let vm = driver.start(&spec).await.expect("the VM starts");
    assert_eq!(vm.accel(), verdict.accel);
    assert!(
        vm.wait_exit(common::BOOT_TIMEOUT).await,
        "the guest powers off"
    );
    assert_eq!(vm.status().await, VmStatus::Exited);
    assert!(
        console(&folder).contains("ALEPH-KVM-PROBE-OK"),
        "{}",
        console(&folder)
    );
}
