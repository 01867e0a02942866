//! Boots the agent in real microVMs (QEMU `microvm`, TCG) from the cached images and
//! talks HTTP/2 to it over the virtio-serial channel, as the host will.
//!
//! Needs root, `qemu-system-x86_64`, the static agent (`scripts/build-guest`) and the
//! images (`aleph-node images build`; this test runs the same build, which is instant
//! when they are cached and rebuilds the initramfs when the agent changed). Without the
//! agent binary or QEMU the tests say so and pass without running.

use aleph_crn::images::{self, BuildOptions, GuestImages, NoProgress};
use aleph_protocol::agent::{
    AGENT_PORT_NAME, AgentConfig, AppState, CodeConfig, CodeEncoding, CodeInterface, Health,
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

static IMAGES: OnceCell<Option<GuestImages>> = OnceCell::const_new();

async fn images() -> Option<&'static GuestImages> {
    IMAGES
        .get_or_init(|| async {
            let opts = BuildOptions::new(images::default_data_dir());
            if !opts.guest_bin().exists()
                || Command::new("qemu-system-x86_64")
                    .arg("--version")
                    .output()
                    .is_err()
            {
                eprintln!(
                    "skipped: needs qemu-system-x86_64 and the static agent (scripts/build-guest)"
                );
                return None;
            }
            Some(
                images::build(&opts, &NoProgress)
                    .await
                    .expect("building the guest images"),
            )
        })
        .await
        .as_ref()
}

struct Vm {
    qemu: Child,
    dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// A drive's size must be a whole number of sectors; the agent reads `size` bytes of it.
fn drive(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(bytes).unwrap();
    file.set_len((bytes.len() as u64).div_ceil(512).max(1) * 512)
        .unwrap();
    path
}

impl Vm {
    fn boot(images: &GuestImages, code: &[u8]) -> Vm {
        Self::boot_with(images, code, &[])
    }

    /// `extra`: more QEMU arguments (drives after the code, a NIC).
    fn boot_with(images: &GuestImages, code: &[u8], extra: &[String]) -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let code = drive(dir.path(), "code.img", code);
        let socket = dir.path().join("agent.sock");
        let mut append = String::from("console=ttyS0 quiet panic=-1 aleph.root=/dev/vda");
        if let Some(khz) = aleph_crn::hypervisor::qemu::host_tsc_khz() {
            // TCG's TSC runs at the host's rate; calibrating it fails on a busy host.
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
        let qemu = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,x-option-roms=off,rtc=on",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-m",
                "512",
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("serial.log").display()))
            .arg("-kernel")
            .arg(&images.vmlinuz)
            .arg("-initrd")
            .arg(&images.initramfs)
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                images.python_runtime.display()
            ))
            .args(["-device", "virtio-blk-device,drive=root"])
            .arg("-drive")
            .arg(format!(
                "id=code,file={},format=raw,if=none,readonly=on",
                code.display()
            ))
            .args([
                "-device",
                "virtio-blk-device,drive=code",
                "-device",
                "virtio-serial-device",
            ])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                socket.display()
            ))
            .args([
                "-device",
                &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}"),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting qemu");
        Vm { qemu, dir }
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default()
    }

    /// A fresh HTTP/2 session on the channel.
    async fn connect(&self) -> SendRequest<Full<Bytes>> {
        self.open().await.0
    }

    /// A fresh HTTP/2 session and its socket, to shut down whatever is in flight
    /// (dropping hyper's handles leaves the connection open until its requests end).
    async fn open(&self) -> (SendRequest<Full<Bytes>>, std::os::unix::net::UnixStream) {
        let socket = self.dir.path().join("agent.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
                let stream = stream.into_std().unwrap();
                let socket = stream.try_clone().unwrap();
                let stream = tokio::net::UnixStream::from_std(stream).unwrap();
                let (sender, connection) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                return (sender, socket);
            }
            assert!(
                Instant::now() < deadline,
                "no channel socket; serial:\n{}",
                self.serial()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the agent to answer health. One connection, no retries: virtio-serial
    /// has no connection boundaries in-band, so bytes of a connection abandoned before the
    /// guest opened the port would still reach the guest, ahead of the next connection's.
    async fn ready(&self) -> SendRequest<Full<Bytes>> {
        self.ready_session().await.0
    }

    /// [`Vm::ready`], with the session's socket.
    async fn ready_session(&self) -> (SendRequest<Full<Bytes>>, std::os::unix::net::UnixStream) {
        let (mut client, socket) = self.open().await;
        let answer = tokio::time::timeout(
            Duration::from_secs(120),
            call(&mut client, "GET", "/_agent/health", Bytes::new()),
        )
        .await;
        let Ok(Some((StatusCode::OK, body))) = answer else {
            panic!("agent never answered; serial:\n{}", self.serial());
        };
        let health: Health = serde_json::from_slice(&body).unwrap();
        assert_eq!(health.app, AppState::Waiting);
        (client, socket)
    }

    fn exited_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.qemu.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

async fn call(
    client: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Bytes,
) -> Option<(StatusCode, Bytes)> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(Full::new(body))
        .unwrap();
    let response = client.send_request(request).await.ok()?;
    let status = response.status();
    Some((
        status,
        response.into_body().collect().await.ok()?.to_bytes(),
    ))
}

fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn config(
    code: &[u8],
    encoding: CodeEncoding,
    entrypoint: &str,
    interface: CodeInterface,
) -> Bytes {
    let config = AgentConfig {
        hostname: "testvm".into(),
        code: CodeConfig {
            device: "/dev/vdb".into(),
            encoding,
            size: code.len() as u64,
            entrypoint: entrypoint.into(),
            interface,
            args: vec![],
        },
        variables: [("GREETING".to_owned(), "Hello World".to_owned())].into(),
        volumes: vec![],
        network: None,
        startup_timeout_seconds: 120,
    };
    serde_json::to_vec(&config).unwrap().into()
}

const FASTAPI_APP: &str = r#"
import os
from fastapi import FastAPI, Request, Response
app = FastAPI()

@app.get("/")
async def root():
    return {"message": os.environ["GREETING"]}

@app.post("/echo")
async def echo(request: Request):
    body = await request.body()
    return Response(body, headers={"x-seen": request.headers.get("x-test", ""),
                                   "x-query": request.url.query})
"#;

#[tokio::test(flavor = "multi_thread")]
async fn fastapi_app_answers_through_the_channel() {
    let Some(images) = images().await else { return };
    let code = zip_of(&[("main.py", FASTAPI_APP)]);
    let mut vm = Vm::boot(images, &code);
    let started = Instant::now();
    let mut client = vm.ready().await;
    let ready = started.elapsed();

    let (status, body) = call(
        &mut client,
        "POST",
        "/_agent/configure",
        config(&code, CodeEncoding::Zip, "main:app", CodeInterface::Asgi),
    )
    .await
    .unwrap_or_else(|| panic!("configure failed; serial:\n{}", vm.serial()));
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\nserial:\n{}",
        String::from_utf8_lossy(&body),
        vm.serial()
    );
    let (status, body) = call(&mut client, "GET", "/", Bytes::new()).await.unwrap();
    let first = started.elapsed();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &br#"{"message":"Hello World"}"#[..])
    );
    eprintln!("agent ready {ready:?}, first response {first:?} after QEMU started");

    // Headers, query and a large body make it through, both ways.
    let payload = Bytes::from(vec![b'x'; 3 << 20]);
    let request = Request::builder()
        .method("POST")
        .uri("http://localhost/echo?a=1&b=two")
        .header("x-test", "kept")
        .body(Full::new(payload.clone()))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.headers()["x-seen"], "kept");
    assert_eq!(response.headers()["x-query"], "a=1&b=two");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        payload
    );

    // Many streams at once on one connection.
    let calls = (0..32).map(|_| {
        let mut client = client.clone();
        async move { call(&mut client, "GET", "/", Bytes::new()).await }
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer.unwrap().0, StatusCode::OK);
    }

    // The host goes away and comes back: a fresh session works.
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = vm.connect().await;
    let (status, body) = call(&mut client, "GET", "/_agent/health", Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Health>(&body).unwrap().app,
        AppState::Running
    );

    // The app's output reaches the host as log lines (the stream stays open).
    let request = Request::builder()
        .uri("http://localhost/_agent/logs")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut logs = client.send_request(request).await.unwrap().into_body();
    let mut seen = String::new();
    while !seen.contains("Application startup complete") {
        let frame = tokio::time::timeout(Duration::from_secs(10), logs.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
    }
    assert!(
        seen.lines()
            .all(|l| serde_json::from_str::<aleph_protocol::agent::LogLine>(l).is_ok())
    );

    let (status, _) = call(&mut client, "POST", "/_agent/shutdown", Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        vm.exited_within(Duration::from_secs(30)),
        "the VM did not power off"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_import_is_reported_with_its_traceback() {
    let Some(images) = images().await else { return };
    let code = b"import this_module_does_not_exist\napp = None\n";
    let vm = Vm::boot(images, code);
    let mut client = vm.ready().await;
    let (status, body) = call(
        &mut client,
        "POST",
        "/_agent/configure",
        config(code, CodeEncoding::Plain, "main:app", CodeInterface::Asgi),
    )
    .await
    .unwrap_or_else(|| panic!("configure failed; serial:\n{}", vm.serial()));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let error: aleph_protocol::agent::AgentError = serde_json::from_slice(&body).unwrap();
    let traceback = error.traceback.unwrap_or_default();
    assert!(traceback.contains("ModuleNotFoundError"), "{traceback}");
    let (_, body) = call(&mut client, "GET", "/_agent/health", Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Health>(&body).unwrap().app,
        AppState::Failed
    );
    let (status, _) = call(&mut client, "GET", "/", Bytes::new()).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A program of its own on port 8080 (here a Python script, the runtime has no other
/// interpreter), reached over the loopback interface the agent brought up.
#[tokio::test(flavor = "multi_thread")]
async fn binary_program_on_8080_answers() {
    let Some(images) = images().await else { return };
    let server = r#"#!/usr/bin/python3
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("binary says " + os.environ["GREETING"] + " at " + self.path).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
"#;
    let code = zip_of(&[("bin/server", server)]);
    let vm = Vm::boot(images, &code);
    let mut client = vm.ready().await;
    let (status, body) = call(
        &mut client,
        "POST",
        "/_agent/configure",
        config(
            &code,
            CodeEncoding::Zip,
            "bin/server",
            CodeInterface::Binary,
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, body) = call(&mut client, "GET", "/x?y=1", Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"binary says Hello World at /x?y=1"[..])
    );
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}");
}

/// Code as a squashfs drive, an ext4 volume, the network over QEMU's user-mode NIC
/// (`restrict=on`: nothing leaves the VM), host name, variables and resolver.
#[tokio::test(flavor = "multi_thread")]
async fn squashfs_code_volume_and_network_are_set_up() {
    let Some(images) = images().await else { return };
    let work = tempfile::tempdir().unwrap();
    let code_dir = work.path().join("code");
    std::fs::create_dir_all(code_dir.join("bin")).unwrap();
    let server = r#"#!/usr/bin/python3
import fcntl, http.server, json, os, socket, struct
def ipv4(name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()))[20:24])
def default_gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(f[2], 16)))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "hostname": socket.gethostname(),
            "volume": open("/data/hello.txt").read(),
            "resolv": open("/etc/resolv.conf").read(),
            "address": ipv4("eth0"),
            "gateway": default_gateway(),
            "variable": os.environ["GREETING"],
        }).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
"#;
    let server_path = code_dir.join("bin/server");
    std::fs::write(&server_path, server).unwrap();
    std::fs::set_permissions(
        &server_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let code = work.path().join("code.squashfs");
    run(
        "mksquashfs",
        &[
            code_dir.to_str().unwrap(),
            code.to_str().unwrap(),
            "-noappend",
            "-quiet",
            "-no-progress",
        ],
    );
    let volume_dir = work.path().join("volume");
    std::fs::create_dir_all(&volume_dir).unwrap();
    std::fs::write(volume_dir.join("hello.txt"), "from the volume").unwrap();
    let volume = work.path().join("volume.ext4");
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            volume_dir.to_str().unwrap(),
            volume.to_str().unwrap(),
            "8M",
        ],
    );

    let extra = [
        "-drive".to_owned(),
        format!("id=vol,file={},format=raw,if=none", volume.display()),
        "-device".to_owned(),
        "virtio-blk-device,drive=vol".to_owned(),
        "-netdev".to_owned(),
        "user,id=net0,restrict=on".to_owned(),
        "-device".to_owned(),
        "virtio-net-device,netdev=net0".to_owned(),
    ];
    let code_bytes = std::fs::read(&code).unwrap();
    let vm = Vm::boot_with(images, &code_bytes, &extra);
    let mut client = vm.ready().await;
    let config = AgentConfig {
        hostname: "squash-vm".into(),
        code: CodeConfig {
            device: "/dev/vdb".into(),
            encoding: CodeEncoding::Squashfs,
            size: code_bytes.len() as u64,
            entrypoint: "bin/server".into(),
            interface: CodeInterface::Binary,
            args: vec![],
        },
        variables: [("GREETING".to_owned(), "hi".to_owned())].into(),
        volumes: vec![aleph_protocol::agent::VolumeConfig {
            device: "/dev/vdc".into(),
            mount: "/data".into(),
            format: aleph_protocol::agent::VolumeFormat::Ext4,
            read_only: false,
        }],
        network: Some(aleph_protocol::agent::NetworkConfig {
            interface: "eth0".into(),
            ipv4: Some("10.0.2.15/24".into()),
            ipv4_gateway: Some("10.0.2.2".into()),
            ipv6: None,
            ipv6_gateway: None,
            dns_servers: vec!["10.0.2.3".into()],
        }),
        startup_timeout_seconds: 120,
    };
    let (status, body) = call(
        &mut client,
        "POST",
        "/_agent/configure",
        serde_json::to_vec(&config).unwrap().into(),
    )
    .await
    .unwrap_or_else(|| panic!("configure failed; serial:\n{}", vm.serial()));
    assert_eq!(
        status,
        StatusCode::OK,
        "{}\nserial:\n{}",
        String::from_utf8_lossy(&body),
        vm.serial()
    );
    let (status, body) = call(&mut client, "GET", "/", Bytes::new()).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "hostname": "squash-vm",
            "volume": "from the volume",
            "resolv": "nameserver 10.0.2.3\n",
            "address": "10.0.2.15",
            "gateway": "10.0.2.2",
            "variable": "hi",
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_lifespan_startup_is_reported_with_its_traceback() {
    let Some(images) = images().await else { return };
    // Debian's FastAPI 0.92 predates `FastAPI(lifespan=...)`; startup handlers run in
    // the same ASGI lifespan phase.
    let app = r#"
from fastapi import FastAPI
app = FastAPI()

@app.on_event("startup")
async def connect():
    raise RuntimeError("database unreachable")
"#;
    let code = zip_of(&[("main.py", app)]);
    let vm = Vm::boot(images, &code);
    let mut client = vm.ready().await;
    let (status, body) = call(
        &mut client,
        "POST",
        "/_agent/configure",
        config(&code, CodeEncoding::Zip, "main:app", CodeInterface::Asgi),
    )
    .await
    .unwrap_or_else(|| panic!("configure failed; serial:\n{}", vm.serial()));
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let error: aleph_protocol::agent::AgentError = serde_json::from_slice(&body).unwrap();
    let traceback = error.traceback.unwrap_or_default();
    assert!(
        traceback.contains("RuntimeError: database unreachable"),
        "{traceback}"
    );
}

/// The host leaves and connects again, again and again, sometimes with requests in
/// flight (one the app is still answering, one whose body is still being sent): each
/// new connection gets a working session. The agent sees the host leave (POLLHUP) only
/// when it looks before the next host is there; otherwise the next connection's preface
/// ends the old session, whose late answers must not reach the new connection.
#[tokio::test(flavor = "multi_thread")]
async fn host_reconnecting_at_once_gets_a_fresh_session_each_time() {
    let Some(images) = images().await else { return };
    let app = r#"
import asyncio
from fastapi import FastAPI, Request, Response
app = FastAPI()

@app.get("/")
async def root():
    return {"message": "hi"}

@app.get("/slow")
async def slow():
    await asyncio.sleep(3)
    return {"message": "late"}

@app.post("/echo")
async def echo(request: Request):
    return Response(await request.body())
"#;
    let code = zip_of(&[("main.py", app)]);
    let vm = Vm::boot(images, &code);
    let (mut client, socket) = vm.ready_session().await;
    let (status, body) = call(
        &mut client,
        "POST",
        "/_agent/configure",
        config(&code, CodeEncoding::Zip, "main:app", CodeInterface::Asgi),
    )
    .await
    .unwrap_or_else(|| panic!("configure failed; serial:\n{}", vm.serial()));
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    // Leave as the rounds do. Dropping the client instead would say GOAWAY first, and
    // the agent's GOAWAY in answer, late on a busy host, would reach the next host: the
    // race the host avoids by pausing after a session it ends that way.
    socket.shutdown(std::net::Shutdown::Both).unwrap();

    let started = Instant::now();
    for round in 0..9 {
        let (mut client, socket) = vm.open().await;
        let answers = async {
            let health = call(&mut client, "GET", "/_agent/health", Bytes::new()).await;
            let root = call(&mut client, "GET", "/", Bytes::new()).await;
            (health, root)
        };
        let (health, root) = tokio::time::timeout(Duration::from_secs(60), answers)
            .await
            .unwrap_or_else(|_| panic!("round {round}: no answer; serial:\n{}", vm.serial()));
        let (status, body) = health
            .unwrap_or_else(|| panic!("round {round}: health failed; serial:\n{}", vm.serial()));
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert_eq!(
            serde_json::from_slice::<Health>(&body).unwrap().app,
            AppState::Running
        );
        assert_eq!(
            root.unwrap_or_else(|| panic!(
                "round {round}: request failed; serial:\n{}",
                vm.serial()
            )),
            (StatusCode::OK, Bytes::from_static(br#"{"message":"hi"}"#)),
            "round {round}"
        );
        match round % 3 {
            // Leave between requests.
            0 => {}
            // Leave while the app is answering: the agent answers into a closed session.
            1 => {
                let mut slow = client.clone();
                tokio::spawn(async move { call(&mut slow, "GET", "/slow", Bytes::new()).await });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Leave in the middle of sending a request body.
            _ => {
                let mut upload = client.clone();
                tokio::spawn(async move {
                    call(
                        &mut upload,
                        "POST",
                        "/echo",
                        Bytes::from(vec![b'x'; 1 << 20]),
                    )
                    .await
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Close the connection now, in-flight requests and all.
        socket.shutdown(std::net::Shutdown::Both).unwrap();
        if round % 3 == 2 {
            // The agent's flow-control answers to the last body bytes race a host that
            // connects at once, and nothing in the byte stream says which connection
            // they belong to (the host pauses after a failed session for this). Come
            // back after a pause here, longer than the agent takes to settle a
            // hang-up, so that it also sees one end a session.
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
    }
    let serial = vm.serial();
    eprintln!(
        "9 reconnections in {:?}; the agent saw {} sessions end at the next preface, {} at a \
         hang-up, and discarded bytes after {}",
        started.elapsed(),
        serial.matches("(the next host connected)").count(),
        serial.matches("(the host hung up)").count(),
        serial
            .matches("bytes the previous host left unread")
            .count()
    );
}
