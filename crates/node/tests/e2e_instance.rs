//! End to end, as an instance's owner: a devnet (CCN, scheduler, one CRN) runs inside a
//! network namespace this test creates; a second namespace plays the owner's machine,
//! linked to the first by a veth pair. The real `aleph` CLI creates an instance of the
//! devnet's Debian 12 root filesystem with a persistent volume; the owner logs in over
//! SSH through the CRN's port forward, writes to the volume, reboots the instance with a
//! signed owner request, finds the file again, and deletes the instance, after which its
//! TAP device, firewall rules, root disk and seed are gone. On the way: a port the owner's
//! `port-forwarding` aggregate names is forwarded (and keeps its host port across the
//! reboot), the instance cannot reach a service of its host nor another wallet's
//! instance on the same CRN (IPv4 and IPv6), another wallet's owner
//! request is refused, the owner reads its console, and (devnet `--ipv6`) the instance
//! has its IPv6 address and reaches the owner's machine over IPv6, but not the host. A
//! program uploaded with `--internet` gets a network card on the same CRN: it reaches
//! the owner's machine, not the host's service, and its TAP and rules go with its VM.
//!
//! Prints the time from `instance create` to a working SSH login, and from the reboot
//! to the next one (docs/benchmarks.md).
//!
//! Needs root, `ip`, `nft`, `ssh`, `ssh-keygen`, QEMU, the guest images and the instance
//! root filesystem in `$ALEPH_DATA_DIR` (`scripts/test` builds them), and the `aleph`
//! binary of this build; without them it says why and passes. All traffic to
//! addresses outside 127.0.0.0/8 stays inside the two namespaces.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DEVNET_TIMEOUT: Duration = Duration::from_secs(600);
/// A first boot under TCG on a busy 2-core machine (cloud-init, host keys): 1–2 min.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);
const CRN_SIDE: &str = "192.168.250.1";
const OWNER_SIDE: &str = "192.168.250.2";
const CRN_SIDE_V6: &str = "fd99::1";
const OWNER_SIDE_V6: &str = "fd99::2";
/// The first instance's IPv6 address and gateway with the devnet's `--ipv6` (first CRN).
const GUEST_V6: &str = "fd00:a1e::2";
const GATEWAY_V6: &str = "fd00:a1e::1";
/// A service of the owner's machine the instance reaches over IPv6 (NAT66 out).
const OWNER_SERVICE_PORT: u16 = 4998;
/// A service of the CRN's host that instances must not reach.
const HOST_SERVICE_PORT: u16 = 4999;
/// A service of the owner's machine a program with `--internet` reaches over IPv4.
const OWNER_SERVICE_PORT_V4: u16 = 4997;

/// The two namespaces, deleted (with their links) when dropped.
struct Namespaces {
    crn: String,
    owner: String,
}

impl Namespaces {
    fn create() -> Self {
        let id = std::process::id();
        let namespaces = Self {
            crn: format!("aleph-e2e-crn-{id}"),
            owner: format!("aleph-e2e-own-{id}"),
        };
        let veth = format!("ae2e{}", id % 100_000);
        let peer = format!("ae2o{}", id % 100_000);
        for ns in [&namespaces.crn, &namespaces.owner] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        run(
            "ip",
            &[
                "link",
                "add",
                &veth,
                "netns",
                &namespaces.crn,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &namespaces.owner,
            ],
        );
        for (ns, link, v4, v6) in [
            (&namespaces.crn, &veth, CRN_SIDE, CRN_SIDE_V6),
            (&namespaces.owner, &peer, OWNER_SIDE, OWNER_SIDE_V6),
        ] {
            let (v4, v6) = (format!("{v4}/30"), format!("{v6}/64"));
            run("ip", &["-n", ns, "addr", "add", &v4, "dev", link]);
            run("ip", &["-n", ns, "addr", "add", &v6, "dev", link, "nodad"]);
            run("ip", &["-n", ns, "link", "set", link, "up"]);
        }
        namespaces
    }

    /// `program args` inside namespace `ns`.
    fn command(ns: &str, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(program);
        command
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.crn, &self.owner] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The devnet process, stopped with SIGTERM (its CRN then stops the VMs) when dropped.
struct Devnet {
    child: Child,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process killed when dropped (the host service stand-in).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Why this host cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces, TAP devices, nftables)".into());
    }
    for (program, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("ssh", "-V", "openssh-client"),
        ("ssh-keygen", "-?", "openssh-client"),
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("python3", "--version", "python3"),
    ] {
        let ran = Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if ran.is_err() {
            return Some(format!("{program} is missing (Debian package {package})"));
        }
    }
    let data_dir = aleph_crn::images::default_data_dir();
    if aleph_crn::images::cached(&data_dir).is_none() {
        return Some(format!("no guest images in {}", data_dir.display()));
    }
    if aleph_crn::images::cached_rootfs(&data_dir).is_none() {
        return Some(format!(
            "no instance root filesystem in {} (aleph-node images rootfs debian12)",
            data_dir.display()
        ));
    }
    None
}

/// `target/<profile>/aleph`, next to the test binaries' folder.
fn aleph_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let cli = exe.parent().and_then(Path::parent).unwrap().join("aleph");
    assert!(
        cli.is_file(),
        "{} is missing: build it with `cargo build -p aleph-cli` (cargo test --workspace does)",
        cli.display()
    );
    cli
}

fn start_devnet(ns: &str, dir: &Path) -> (Devnet, Value) {
    let log = std::fs::File::create(dir.join("devnet.log")).unwrap();
    let child = Namespaces::command(ns, Path::new(env!("CARGO_BIN_EXE_aleph-node")))
        .args(["devnet", "--crns", "1", "--accounts", "2", "--ipv6"])
        .arg("--data-dir")
        .arg(dir.join("net"))
        .arg("--images-dir")
        .arg(aleph_crn::images::default_data_dir())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut devnet = Devnet { child };
    let info_path = dir.join("net/devnet.json");
    let deadline = Instant::now() + DEVNET_TIMEOUT;
    loop {
        if let Ok(bytes) = std::fs::read(&info_path) {
            return (devnet, serde_json::from_slice(&bytes).unwrap());
        }
        if let Some(status) = devnet.child.try_wait().unwrap() {
            panic!(
                "the devnet exited with {status}: {}",
                std::fs::read_to_string(dir.join("devnet.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no devnet.json after {DEVNET_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The real CLI inside the CRN's namespace (the devnet's services are on its loopback),
/// signed by account `account`.
fn aleph(ns: &str, info: &Value, account: usize, args: &[&str]) -> Output {
    Namespaces::command(ns, &aleph_binary())
        .arg("--private-key")
        .arg(info["accounts"][account]["private_key"].as_str().unwrap())
        .arg("--json")
        .args(args)
        .env_remove("ALEPH_IMAGES_ADDRESS")
        .env_remove("ALEPH_CCN")
        .env_remove("ALEPH_SCHEDULER_URL")
        .output()
        .unwrap()
}

/// `ssh root@CRN -p port command` from the owner's namespace.
fn ssh(ns: &str, key: &Path, port: u16, command: &str) -> Output {
    Namespaces::command(ns, Path::new("ssh"))
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-p",
            &port.to_string(),
            &format!("root@{CRN_SIDE}"),
            command,
        ])
        .output()
        .unwrap()
}

/// Logs in until it works; the time it took.
fn wait_for_login(ns: &str, key: &Path, port: u16) -> Duration {
    let started = Instant::now();
    loop {
        let output = ssh(ns, key, port, "true");
        if output.status.success() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < LOGIN_TIMEOUT,
            "no SSH login after {LOGIN_TIMEOUT:?}: {}",
            text(&output)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn instance_over_ssh_keeps_its_volume_across_a_reboot_and_leaves_nothing_when_deleted() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let namespaces = Namespaces::create();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("owner-key");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let (devnet, info) = start_devnet(&namespaces.crn, dir.path());
    assert!(
        info["default_rootfs"].is_string(),
        "the devnet published no root filesystem: {info}"
    );

    // Create, and wait until SSH answers through the forward.
    let pubkey = format!("{}.pub", key.display());
    let started = Instant::now();
    let created = aleph(
        &namespaces.crn,
        &info,
        0,
        &[
            "instance",
            "create",
            "--ssh-pubkey-file",
            &pubkey,
            "--vcpus",
            "2",
            "--memory",
            "1024",
            "--persistent-volume",
            "name=data,size_mib=64,mount=/data",
            "--wait-timeout",
            "600",
        ],
    );
    assert!(created.status.success(), "create: {}", text(&created));
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let hash = created["item_hash"].as_str().unwrap().to_owned();
    let port = u16::try_from(created["ssh"]["port"].as_u64().unwrap()).unwrap();
    wait_for_login(&namespaces.owner, &key, port);
    let first_login = started.elapsed();
    eprintln!("instance create → SSH login: {first_login:.1?}");

    // Another wallet's instance on the same CRN, booting meanwhile: the first must not
    // reach it.
    let neighbour = aleph(
        &namespaces.crn,
        &info,
        1,
        &[
            "instance",
            "create",
            "--ssh-pubkey-file",
            &pubkey,
            "--vcpus",
            "1",
            "--memory",
            "512",
            "--no-wait",
        ],
    );
    assert!(
        neighbour.status.success(),
        "second instance: {}",
        text(&neighbour)
    );
    let neighbour: Value = serde_json::from_slice(&neighbour.stdout).unwrap();
    let neighbour = neighbour["item_hash"].as_str().unwrap().to_owned();

    let uname = ssh(&namespaces.owner, &key, port, "uname -a");
    assert!(
        uname.status.success() && String::from_utf8_lossy(&uname.stdout).contains("Linux"),
        "uname: {}",
        text(&uname)
    );
    let written = ssh(
        &namespaces.owner,
        &key,
        port,
        "mountpoint -q /data && echo kept-across-reboots > /data/proof && sync",
    );
    assert!(
        written.status.success(),
        "writing to the volume: {}",
        text(&written)
    );

    // The owner's `port-forwarding` aggregate adds a forward to a guest service.
    let forwards =
        format!(r#"{{"{hash}": {{"ports": {{"8080": {{"tcp": true, "udp": false}}}}}}}}"#);
    let posted = aleph(
        &namespaces.crn,
        &info,
        0,
        &["aggregate", "post", "port-forwarding", &forwards],
    );
    assert!(posted.status.success(), "aggregate: {}", text(&posted));
    let serving = ssh(
        &namespaces.owner,
        &key,
        port,
        "cd /tmp && echo forwarded > index.html && (setsid python3 -m http.server 8080 >/dev/null 2>&1 &)",
    );
    assert!(
        serving.status.success(),
        "guest web server: {}",
        text(&serving)
    );
    let web_port = wait_for_mapped_port(&namespaces.crn, &hash, "8080");
    let fetch = format!(
        "import urllib.request;print(urllib.request.urlopen('http://{CRN_SIDE}:{web_port}/index.html', timeout=10).read().decode())"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fetched = Namespaces::command(&namespaces.owner, Path::new("python3"))
            .args(["-c", &fetch])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&fetched.stdout).contains("forwarded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest's port 8080 not reached through host port {web_port}: {}",
            text(&fetched)
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Isolation: a service on the host, reachable from outside, is not from the VM.
    let service = Killed(
        Namespaces::command(&namespaces.crn, Path::new("python3"))
            .args(["-m", "http.server", &HOST_SERVICE_PORT.to_string()])
            // Both families (the v4-mapped socket takes IPv4 too).
            .args(["--bind", "::"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probe = format!("timeout 5 bash -c '</dev/tcp/%s/{HOST_SERVICE_PORT}'");
    let from_owner = Instant::now();
    loop {
        let reached = Namespaces::command(&namespaces.owner, Path::new("bash"))
            .args(["-c", &probe.replace("%s", CRN_SIDE)])
            .status()
            .unwrap();
        if reached.success() {
            break;
        }
        assert!(
            from_owner.elapsed() < Duration::from_secs(30),
            "the host service stand-in never answered"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let gateway = crn_listing(&namespaces.crn, &hash)["networking"]["ipv4_network"]
        .as_str()
        .map(|net| net.replace(".0/24", ".1"))
        .expect("the instance's network in the CRN's listing");
    let over_v6 = Namespaces::command(&namespaces.owner, Path::new("bash"))
        .args(["-c", &probe.replace("%s", CRN_SIDE_V6)])
        .status()
        .unwrap();
    assert!(
        over_v6.success(),
        "the host service stand-in is not reachable over IPv6"
    );
    for target in [gateway.as_str(), CRN_SIDE, GATEWAY_V6, CRN_SIDE_V6] {
        let blocked = ssh(&namespaces.owner, &key, port, &probe.replace("%s", target));
        assert!(
            !blocked.status.success(),
            "the instance reached the host's service at {target} port {HOST_SERVICE_PORT}"
        );
    }
    program_with_internet(&namespaces, &info, dir.path());
    drop(service);

    // Nor another VM: once the host reaches the neighbour's sshd, the instance must not.
    let neighbour_v4 = wait_for_listing(&namespaces.crn, &neighbour, "ipv4_ip");
    let neighbour_v6 = wait_for_listing(&namespaces.crn, &neighbour, "ipv6_ip");
    let to_sshd = |ip: &str| format!("timeout 5 bash -c '</dev/tcp/{ip}/22'");
    let from_host = Instant::now();
    loop {
        let reached = Namespaces::command(&namespaces.crn, Path::new("bash"))
            .args(["-c", &to_sshd(&neighbour_v4)])
            .status()
            .unwrap();
        if reached.success() {
            break;
        }
        assert!(
            from_host.elapsed() < LOGIN_TIMEOUT,
            "the second instance's sshd never answered the host"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    for target in [&neighbour_v4, &neighbour_v6] {
        let blocked = ssh(&namespaces.owner, &key, port, &to_sshd(target));
        assert!(
            !blocked.status.success(),
            "the instance reached another VM at {target}:22"
        );
    }
    let gone = aleph(
        &namespaces.crn,
        &info,
        1,
        &["instance", "delete", &neighbour],
    );
    assert!(
        gone.status.success(),
        "deleting the second instance: {}",
        text(&gone)
    );

    // IPv6: the instance has its address, and reaches the outside (NAT66).
    let listing = crn_listing(&namespaces.crn, &hash);
    assert_eq!(listing["networking"]["ipv6_ip"], GUEST_V6, "{listing}");
    let owner_service = Killed(
        Namespaces::command(&namespaces.owner, Path::new("python3"))
            .args(["-m", "http.server", &OWNER_SERVICE_PORT.to_string()])
            .args(["--bind", OWNER_SIDE_V6])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let v6_check = format!(
        "for i in $(seq 30); do ip -6 -o addr show scope global | grep -q '{GUEST_V6}/124' \
         && timeout 5 bash -c '</dev/tcp/{OWNER_SIDE_V6}/{OWNER_SERVICE_PORT}' && exit 0; sleep 1; done; \
         ip -6 addr; ip -6 route; exit 1"
    );
    let v6 = ssh(&namespaces.owner, &key, port, &v6_check);
    assert!(v6.status.success(), "IPv6 from the instance: {}", text(&v6));
    drop(owner_service);

    // Another wallet may not act on it.
    let stranger = aleph(&namespaces.crn, &info, 1, &["instance", "stop", &hash]);
    assert!(
        !stranger.status.success() && text(&stranger).contains("403"),
        "a stranger's stop: {}",
        text(&stranger)
    );

    // Reboot (signed by the owner), then the file is still there.
    let rebooted = Instant::now();
    let reboot = aleph(&namespaces.crn, &info, 0, &["instance", "reboot", &hash]);
    assert!(reboot.status.success(), "reboot: {}", text(&reboot));
    wait_for_login(&namespaces.owner, &key, port);
    let second_login = rebooted.elapsed();
    eprintln!("reboot → SSH login: {second_login:.1?}");
    let proof = ssh(&namespaces.owner, &key, port, "cat /data/proof");
    assert_eq!(
        wait_for_mapped_port(&namespaces.crn, &hash, "8080"),
        web_port,
        "a forward keeps its host port across a reboot"
    );
    assert_eq!(
        String::from_utf8_lossy(&proof.stdout).trim(),
        "kept-across-reboots",
        "{}",
        text(&proof)
    );

    // Its console, as its owner reads it.
    let logs = aleph(&namespaces.crn, &info, 0, &["instance", "logs", &hash]);
    assert!(
        logs.status.success() && String::from_utf8_lossy(&logs.stdout).contains("login:"),
        "logs: {}",
        text(&logs)
    );

    // Reinstall: a fresh root disk from the parent image; the volume is kept.
    let marked = ssh(
        &namespaces.owner,
        &key,
        port,
        "touch /root/on-the-old-disk && sync",
    );
    assert!(marked.status.success(), "{}", text(&marked));
    let reinstall = aleph(&namespaces.crn, &info, 0, &["instance", "reinstall", &hash]);
    assert!(
        reinstall.status.success(),
        "reinstall: {}",
        text(&reinstall)
    );
    wait_for_login(&namespaces.owner, &key, port);
    let fresh = ssh(
        &namespaces.owner,
        &key,
        port,
        "test ! -e /root/on-the-old-disk && cat /data/proof",
    );
    assert_eq!(
        String::from_utf8_lossy(&fresh.stdout).trim(),
        "kept-across-reboots",
        "after reinstall: {}",
        text(&fresh)
    );

    // Erase: stopped, its root disk and its persistent volume deleted.
    let folder = dir.path().join("net/crn-1/instances").join(&hash[..16]);
    let volumes = dir.path().join("net/crn-1/volumes");
    assert!(
        volume_files(&volumes) == 1,
        "the persistent volume is on the CRN"
    );
    let erase = aleph(&namespaces.crn, &info, 0, &["instance", "erase", &hash]);
    assert!(erase.status.success(), "erase: {}", text(&erase));
    assert!(
        !folder.join("rootfs.qcow2").exists(),
        "root disk left after erase"
    );
    assert_eq!(
        volume_files(&volumes),
        0,
        "persistent volume left after erase"
    );
    assert_eq!(crn_listing(&namespaces.crn, &hash)["running"], false);

    // Delete: everything of it on the CRN goes.
    let deleted = aleph(&namespaces.crn, &info, 0, &["instance", "delete", &hash]);
    assert!(deleted.status.success(), "delete: {}", text(&deleted));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rules = Command::new("ip")
            .args([
                "netns",
                "exec",
                &namespaces.crn,
                "nft",
                "list",
                "table",
                "inet",
                "aleph",
            ])
            .output()
            .unwrap();
        let tap = Command::new("ip")
            .args(["-n", &namespaces.crn, "-o", "link", "show", "type", "tun"])
            .output()
            .unwrap();
        let gone = !folder.exists()
            && !String::from_utf8_lossy(&rules.stdout).contains(&hash)
            && String::from_utf8_lossy(&tap.stdout).trim().is_empty();
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after delete: folder {} exists: {}; rules: {}; taps: {}",
            folder.display(),
            folder.exists(),
            String::from_utf8_lossy(&rules.stdout),
            String::from_utf8_lossy(&tap.stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "instance timings (TCG or KVM as probed): create → SSH {first_login:.1?}, reboot → SSH {second_login:.1?}"
    );
    drop(devnet);
    drop(namespaces);
}

/// How many volume files the CRN keeps under `dir` (one folder per owner).
fn volume_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|owners| {
            owners
                .flatten()
                .filter_map(|owner| std::fs::read_dir(owner.path()).ok())
                .map(|files| files.flatten().count())
                .sum()
        })
        .unwrap_or(0)
}

/// `networking.<field>` of the instance in the CRN's listing, once it is listed.
fn wait_for_listing(ns: &str, hash: &str, field: &str) -> String {
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    loop {
        let listing = crn_listing(ns, hash);
        if let Some(value) = listing["networking"][field].as_str() {
            return value.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{hash} never listed with {field}: {listing}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The host port the CRN lists for `guest_port` of the instance, once it does (the
/// aggregate is read again every 30 s).
fn wait_for_mapped_port(ns: &str, hash: &str, guest_port: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let listing = crn_listing(ns, hash);
        if let Some(host) = listing["networking"]["mapped_ports"][guest_port]["host"].as_u64() {
            return host;
        }
        assert!(
            Instant::now() < deadline,
            "port {guest_port} never forwarded: {listing}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The instance's entry in the CRN's `/v2/about/executions/list`, read from inside the
/// CRN's namespace.
fn crn_listing(ns: &str, hash: &str) -> Value {
    let output = Namespaces::command(ns, Path::new("python3"))
        .args([
            "-c",
            "import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1]).read().decode())",
            "http://127.0.0.1:4020/v2/about/executions/list",
        ])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("executions list: {e}: {}", text(&output)));
    list[hash].clone()
}

/// A program uploaded with `--internet` (on the CRN that runs the instances; the host's
/// service stand-in is up): its VM reaches the owner's machine through NAT (IPv4 and
/// IPv6), not the host's service, and its network card goes when its VM stops (a code
/// update).
fn program_with_internet(namespaces: &Namespaces, info: &Value, dir: &Path) {
    let source = dir.join("reach-app");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(
        source.join("main.py"),
        r#"import socket
from fastapi import FastAPI

app = FastAPI()


@app.get("/reach")
def reach(host: str, port: int):
    try:
        with socket.create_connection((host, port), timeout=3):
            return {"reached": True}
    except OSError as error:
        return {"reached": False, "error": str(error)}
"#,
    )
    .unwrap();
    let taps_before = taps(&namespaces.crn);
    let uploaded = aleph(
        &namespaces.crn,
        info,
        0,
        &[
            "program",
            "upload",
            source.to_str().unwrap(),
            "main:app",
            "--internet",
        ],
    );
    assert!(uploaded.status.success(), "upload: {}", text(&uploaded));
    let uploaded: Value = serde_json::from_slice(&uploaded.stdout).unwrap();
    let hash = uploaded["item_hash"].as_str().unwrap().to_owned();
    let owner_service = Killed(
        Namespaces::command(&namespaces.owner, Path::new("python3"))
            .args(["-m", "http.server", &OWNER_SERVICE_PORT_V4.to_string()])
            // Both families (the v4-mapped socket takes IPv4 too).
            .args(["--bind", "::"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let reach = |host: &str, port: u16| -> Value {
        let url = format!("http://127.0.0.1:4020/vm/{hash}/reach?host={host}&port={port}");
        let output = Namespaces::command(&namespaces.crn, Path::new("python3"))
            .args([
                "-c",
                "import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1], timeout=600).read().decode())",
                &url,
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{url}: {e}: {}", text(&output)))
    };
    // The owner's stand-in may take a moment to listen: ask again for a while.
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    loop {
        let answer = reach(OWNER_SIDE, OWNER_SERVICE_PORT_V4);
        if answer["reached"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the program with --internet never reached the owner's machine: {answer}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "program with --internet: upload → reaching the owner's machine {:.1?}",
        started.elapsed()
    );
    // IPv6 too (devnet `--ipv6`): out through NAT66.
    let answer = reach(OWNER_SIDE_V6, OWNER_SERVICE_PORT_V4);
    assert_eq!(
        answer["reached"], true,
        "the program did not reach the owner's machine over IPv6: {answer}"
    );
    drop(owner_service);
    let listing = crn_listing(&namespaces.crn, &hash);
    let gateway = listing["networking"]["ipv4_network"]
        .as_str()
        .map(|net| net.replace(".0/24", ".1"))
        .unwrap_or_else(|| panic!("the program's network in the CRN's listing: {listing}"));
    let gateway_v6 = listing["networking"]["ipv6_network"]
        .as_str()
        .and_then(|net| net.split('/').next()?.parse::<std::net::Ipv6Addr>().ok())
        .map(|net| std::net::Ipv6Addr::from(u128::from(net) + 1).to_string())
        .unwrap_or_else(|| panic!("the program's IPv6 network in the CRN's listing: {listing}"));
    for target in [gateway.as_str(), CRN_SIDE, gateway_v6.as_str(), CRN_SIDE_V6] {
        let answer = reach(target, HOST_SERVICE_PORT);
        assert_eq!(
            answer["reached"], false,
            "the program reached the host's service at {target}: {answer}"
        );
    }
    assert_eq!(taps(&namespaces.crn), taps_before + 1, "the program's TAP");

    // A new version of its code stops its VM: the TAP and the rules go with it.
    let execution = listing["execution_id"].as_str().unwrap().to_owned();
    let updated = aleph(
        &namespaces.crn,
        info,
        0,
        &["program", "update", &hash, source.to_str().unwrap()],
    );
    assert!(updated.status.success(), "update: {}", text(&updated));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rules = Namespaces::command(&namespaces.crn, Path::new("nft"))
            .args(["list", "ruleset"])
            .output()
            .unwrap();
        if taps(&namespaces.crn) == taps_before
            && !String::from_utf8_lossy(&rules.stdout).contains(&execution)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped program's TAP or rules stayed: {}",
            String::from_utf8_lossy(&rules.stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// How many TAP devices the CRN's namespace has.
fn taps(ns: &str) -> usize {
    let output = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "type", "tun"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}
