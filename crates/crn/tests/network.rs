//! VM networking against the real kernel: TAP devices, addresses and nftables rules,
//! then traffic. Everything happens in network namespaces this test creates and always
//! deletes (a guard does it, also when an assertion fails); the host's own interfaces,
//! routes and ruleset are never touched.
//!
//! Layout, all inside namespaces:
//!
//! ```text
//!   out (10.99.0.2) ──veth── uplink0 (10.99.0.1)  host  vmac100100, vmac100200: real TAPs
//!                                                       vmac100500 ──veth── vm-c (172.16.5.2)
//!                                                       vmac100600 ──veth── vm-d (172.16.6.2)
//! ```
//!
//! A TAP carries traffic only while a VM holds it, so the traffic checks plug veth
//! pairs, named like TAPs, into the same firewall rules; the library's TAP path is
//! checked on the real TAPs (devices, addresses, rules, teardown).
//!
//! The IPv6 case has the same layout with a unique local pool (`fd00:a1e::/64`, a /124
//! per VM) and the uplink on `fd99::/64`.

use aleph_crn::network::{
    Firewall, NetworkConfig, PortForward, Protocol, VmNet, VmNetwork, enable_ipv4_forwarding,
    rules, tap,
};
use nix::sched::{CloneFlags, setns};
use serde_json::Value;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A network namespace that lives as long as this value.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Self {
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `ip -n <name> ...`: iproute2 enters the namespace for the one command.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command run inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `work` on a thread that has entered the namespace; the library acts in the
    /// namespace of the thread that calls it.
    fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    setns(&file, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
                    work()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `enter` with a current-thread runtime, so that every task stays on the thread
    /// that entered the namespace.
    fn block_on<F: Future>(&self, work: impl FnOnce() -> F + Send) -> F::Output
    where
        F::Output: Send,
    {
        self.enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(work())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes every device in it, and with them the rules.
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, TAP devices, nftables)".into());
    }
    for (program, flag, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        if !Command::new(program)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("`{program}` is missing (Debian package {package})"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// Deletes the namespaces of earlier runs that were killed before their guards ran
/// (`aleph-nettest-<pid>...` where no process `<pid>` lives any more).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("aleph-nettest-") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("deleting stale network namespace {name}");
            drop(Netns { name });
        }
    }
}

/// Rules of our table, as `(chain, comment)`, listed by `nft` in the namespace.
fn listed_rules(host: &Netns) -> Vec<(String, String)> {
    let ruleset: Value =
        serde_json::from_str(&host.exec("nft", &["-j", "list", "ruleset"])).unwrap();
    let objects = ruleset["nftables"].as_array().unwrap();
    for object in objects {
        if let Some(table) = object.get("table") {
            assert_eq!(
                (table["family"].as_str(), table["name"].as_str()),
                (Some("inet"), Some("aleph")),
                "only our table exists in the namespace"
            );
        }
    }
    objects
        .iter()
        .filter_map(|object| object.get("rule"))
        .map(|rule| {
            (
                rule["chain"].as_str().unwrap().to_string(),
                rule["comment"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn rules_of(rules: &[(String, String)], vm_id: &str) -> Vec<(String, String)> {
    rules
        .iter()
        .filter(|(_, comment)| rules::belongs_to(comment, vm_id))
        .cloned()
        .collect()
}

/// `ifname -> (is up, IPv4 addresses with prefix)` from `ip -j addr`.
fn interfaces(host: &Netns) -> Vec<(String, bool, Vec<String>)> {
    let links: Value = serde_json::from_str(&host.ip(&["-j", "addr", "show"])).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .map(|link| {
            let flags = link["flags"].as_array().unwrap();
            let addresses = link["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                .collect();
            (
                link["ifname"].as_str().unwrap().to_string(),
                flags.iter().any(|flag| flag == "UP"),
                addresses,
            )
        })
        .collect()
}

/// The global IPv6 addresses of `name`, with prefix, from `ip -j addr`.
fn global_ipv6_addresses(netns: &Netns, name: &str) -> Vec<String> {
    let links: Value =
        serde_json::from_str(&netns.ip(&["-j", "-6", "addr", "show", "dev", name])).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

fn interface(host: &Netns, name: &str) -> Option<(bool, Vec<String>)> {
    interfaces(host)
        .into_iter()
        .find(|(ifname, _, _)| ifname == name)
        .map(|(_, up, addresses)| (up, addresses))
}

const VM_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const VM_B: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const VM_C: &str = "vm-c";
const VM_D: &str = "vm-d";

fn config() -> NetworkConfig {
    NetworkConfig {
        uplink: Some("uplink0".to_string()),
        ..NetworkConfig::default()
    }
}

#[test]
fn vm_networks_are_wired_isolated_forwarded_and_removed_exactly() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipped: {reason}");
        return;
    }
    remove_stale_namespaces();
    let prefix = format!("aleph-nettest-{}", std::process::id());
    let host = Netns::create(prefix.clone());
    let out = Netns::create(format!("{prefix}-out"));
    let vm_c = Netns::create(format!("{prefix}-c"));
    let vm_d = Netns::create(format!("{prefix}-d"));
    let host_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    // The uplink: a veth pair from the host namespace to the "outside" one.
    host.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", &out.name,
    ]);
    host.ip(&["addr", "add", "10.99.0.1/24", "dev", "uplink0"]);
    host.ip(&["link", "set", "uplink0", "up"]);
    out.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    out.ip(&["link", "set", "eth0", "up"]);

    let network = VmNetwork::new(config()).unwrap();

    // Two VMs on real TAPs, through the library's whole path.
    let (a, b, a_forwards) = host.block_on(|| async {
        enable_ipv4_forwarding().unwrap();
        network.ensure_base().await.unwrap();
        // Twice: a restarted CRN runs it again.
        network.ensure_base().await.unwrap();
        let a = network.setup(VM_A, 1).await.unwrap();
        let b = network.setup(VM_B, 2).await.unwrap();
        network
            .add_forward(&a, Protocol::Tcp, 24000, 22)
            .await
            .unwrap();
        network
            .add_forward(&a, Protocol::Udp, 24002, 53)
            .await
            .unwrap();
        network
            .add_forward(&b, Protocol::Tcp, 24001, 22)
            .await
            .unwrap();
        // The same host port again replaces the forward instead of adding one.
        network
            .add_forward(&a, Protocol::Tcp, 24000, 22)
            .await
            .unwrap();
        // Setting a VM up again (re-adoption) leaves it set up once.
        let again = network.setup(VM_A, 1).await.unwrap();
        assert_eq!(again, a);
        let forwards = network.firewall().forwards(VM_A).await.unwrap();
        (a, b, forwards)
    });

    assert_eq!(
        host.exec("cat", &["/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forwarding,
        "the host's own setting is untouched"
    );
    assert_eq!(
        (a.tap.as_str(), a.guest_ip),
        ("vmac100100", Ipv4Addr::new(172, 16, 1, 2))
    );
    assert_eq!(a.tap_spec().mac, "02:00:ac:10:01:02");
    assert_eq!(
        interface(&host, "vmac100100"),
        Some((true, vec!["172.16.1.1/24".to_string()]))
    );
    assert_eq!(
        interface(&host, "vmac100200"),
        Some((true, vec!["172.16.2.1/24".to_string()]))
    );
    let tun_flags = host.exec("cat", &["/sys/class/net/vmac100100/tun_flags"]);
    assert_eq!(
        tun_flags.trim(),
        "0x1802",
        "IFF_TAP | IFF_NO_PI | IFF_PERSIST"
    );
    assert_eq!(
        a_forwards,
        [
            PortForward {
                protocol: Protocol::Udp,
                host_port: 24002,
                guest_port: 53
            },
            PortForward {
                protocol: Protocol::Tcp,
                host_port: 24000,
                guest_port: 22
            },
        ]
    );

    let listed = listed_rules(&host);
    let count = |vm, chain: &str| {
        rules_of(&listed, vm)
            .iter()
            .filter(|(c, _)| c == chain)
            .count()
    };
    for vm in [VM_A, VM_B] {
        assert_eq!(count(vm, "input"), 2, "{listed:#?}");
        // With an uplink: replies in, forwards in, drop in; pool drop, out, drop out.
        assert_eq!(count(vm, "forward"), 6, "{listed:#?}");
        assert_eq!(count(vm, "postrouting"), 1, "{listed:#?}");
    }
    assert_eq!(count(VM_A, "prerouting"), 2, "{listed:#?}");
    assert_eq!(count(VM_B, "prerouting"), 1, "{listed:#?}");
    assert_eq!(
        listed.len(),
        2 * 9 + 3,
        "no rule without its VM: {listed:#?}"
    );
    let ruleset = host.exec("nft", &["list", "ruleset"]);
    assert!(ruleset.contains("dnat ip to 172.16.1.2:22"), "{ruleset}");
    assert!(
        ruleset.contains("ip saddr 172.16.2.0/24 oifname \"uplink0\" masquerade"),
        "{ruleset}"
    );

    // Tearing B down removes exactly its rules and its TAP.
    host.block_on(|| async { network.teardown(&b).await.unwrap() });
    let after = listed_rules(&host);
    assert!(rules_of(&after, VM_B).is_empty(), "{after:#?}");
    assert_eq!(rules_of(&after, VM_A), rules_of(&listed, VM_A));
    assert_eq!(after.len(), 11);
    assert_eq!(interface(&host, "vmac100200"), None);
    assert!(interface(&host, "vmac100100").is_some());
    // Again: nothing left to remove is not an error.
    host.block_on(|| async { network.teardown(&b).await.unwrap() });

    traffic_is_forwarded_and_isolated(&host, &out, &vm_c, &vm_d);

    // Our table goes, and only it: the namespace's ruleset is empty again.
    let firewall = Firewall::new(&config());
    let removed = host.block_on(|| async { firewall.teardown().await.unwrap() });
    assert!(removed);
    assert_eq!(host.exec("nft", &["list", "ruleset"]).trim(), "");
}

/// The same rules on veth pairs that stand in for VMs' TAPs, with real TCP traffic.
fn traffic_is_forwarded_and_isolated(host: &Netns, out: &Netns, vm_c: &Netns, vm_d: &Netns) {
    let c = VmNet::new(VM_C, 5, Ipv4Addr::new(172, 16, 5, 0), 24);
    let d = VmNet::new(VM_D, 6, Ipv4Addr::new(172, 16, 6, 0), 24);
    for (vm, guest) in [(&c, vm_c), (&d, vm_d)] {
        host.ip(&[
            "link",
            "add",
            &vm.tap,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &guest.name,
        ]);
        guest.ip(&[
            "addr",
            "add",
            &format!("{}/{}", vm.guest_ip, vm.prefix),
            "dev",
            "eth0",
        ]);
        guest.ip(&["link", "set", "eth0", "up"]);
        guest.ip(&["route", "add", "default", "via", &vm.host_ip.to_string()]);
    }
    let firewall = Firewall::new(&config());
    host.block_on(|| async {
        for vm in [&c, &d] {
            tap::configure_host_side(&vm.tap, vm.host_ip, vm.prefix)
                .await
                .unwrap();
            firewall.add_vm(vm).await.unwrap();
        }
        firewall
            .add_forward(&c, Protocol::Tcp, 24010, 22)
            .await
            .unwrap();
    });
    let wait = Duration::from_secs(2);

    // Out to the world, masqueraded behind the host's uplink address.
    let seen = serve_once(out, "10.99.0.2:8080", || {
        assert!(
            connect(vm_c, "10.99.0.2:8080", wait),
            "the VM reaches the outside"
        );
    });
    assert_eq!(
        seen.map(|peer| peer.ip().to_string()),
        Some("10.99.0.1".to_string())
    );

    // Never into another VM, although the host itself reaches it.
    let seen = serve_once(vm_d, "172.16.6.2:8080", || {
        assert!(
            !connect(vm_c, "172.16.6.2:8080", wait),
            "VM c must not reach VM d"
        );
        assert!(
            connect(host, "172.16.6.2:8080", wait),
            "the host reaches VM d"
        );
    });
    assert!(seen.is_some());

    // Never to the host's own services, by any of its addresses.
    let seen = serve_once(host, "0.0.0.0:9090", || {
        assert!(
            !connect(vm_c, "172.16.5.1:9090", wait),
            "the gateway address is closed"
        );
        assert!(
            !connect(vm_c, "10.99.0.1:9090", wait),
            "the uplink address is closed"
        );
        assert!(
            connect(out, "10.99.0.1:9090", wait),
            "the service itself is up"
        );
    });
    assert!(seen.is_some());

    // In by the forwarded port, with the client's own address.
    let seen = serve_once(vm_c, "0.0.0.0:22", || {
        assert!(
            connect(out, "10.99.0.1:24010", wait),
            "the forward reaches the guest"
        );
    });
    assert_eq!(
        seen.map(|peer| peer.ip().to_string()),
        Some("10.99.0.2".to_string())
    );

    // Removed, the forward is gone too.
    let removed = host.block_on(|| async { firewall.remove_vm(VM_C).await.unwrap() });
    // Its 9 own rules (uplink set) and its one forward.
    assert_eq!(removed, 9 + 1);
    serve_once(vm_c, "0.0.0.0:22", || {
        assert!(
            !connect(out, "10.99.0.1:24010", wait),
            "no forward after removal"
        );
    });
}

/// Listens on `address` inside `netns` while `client` runs; the peer of the first
/// connection accepted, which gets one byte written back.
fn serve_once(netns: &Netns, address: &str, client: impl FnOnce()) -> Option<SocketAddr> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::scope(|scope| {
        let server = scope.spawn(|| {
            netns.enter(move || {
                let listener = TcpListener::bind(address).expect("listen");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                let mut peer = None;
                // Accept until the client is done, so a late connection still counts.
                while done_rx.try_recv().is_err() {
                    match listener.accept() {
                        Ok((mut stream, address)) => {
                            stream.set_nonblocking(false).unwrap();
                            stream.write_all(b"!").unwrap();
                            peer.get_or_insert(address);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                peer
            })
        });
        ready_rx.recv().expect("the server starts");
        client();
        done_tx.send(()).unwrap();
        server
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Whether a TCP connection from `netns` to `address` opens and carries the server's
/// byte within `wait`.
fn connect(netns: &Netns, address: &str, wait: Duration) -> bool {
    let address: SocketAddr = address.parse().unwrap();
    netns.enter(move || {
        let started = Instant::now();
        let Ok(mut stream) = TcpStream::connect_timeout(&address, wait) else {
            return false;
        };
        stream
            .set_read_timeout(Some(
                wait.saturating_sub(started.elapsed())
                    .max(Duration::from_millis(100)),
            ))
            .unwrap();
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(1))
    })
}

#[test]
fn without_an_uplink_vms_leave_by_any_interface_but_their_own() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipped: {reason}");
        return;
    }
    let host = Netns::create(format!("aleph-nettest-{}-any", std::process::id()));
    let network = VmNetwork::new(NetworkConfig::default()).unwrap();
    let vm = host.block_on(|| async {
        network.ensure_base().await.unwrap();
        network.setup(VM_A, 0).await.unwrap()
    });
    assert_eq!(
        interface(&host, "vmac100000"),
        Some((true, vec!["172.16.0.1/24".to_string()]))
    );
    let listed = listed_rules(&host);
    // Replies in, forwards in, drop in; pool drop, out; input 2; masquerade.
    assert_eq!(rules_of(&listed, VM_A).len(), 8, "{listed:#?}");
    let ruleset = host.exec("nft", &["list", "ruleset"]);
    assert!(
        ruleset.contains("ip saddr 172.16.0.0/24 oifname != \"vmac100000\" masquerade"),
        "{ruleset}"
    );
    host.block_on(|| async { network.teardown(&vm).await.unwrap() });
    assert!(listed_rules(&host).is_empty());
    assert_eq!(interface(&host, "vmac100000"), None);
}

fn config_v6() -> NetworkConfig {
    NetworkConfig {
        uplink: Some("uplink0".to_string()),
        ipv6_pool: Some(("fd00:a1e::".parse().unwrap(), 64)),
        ..NetworkConfig::default()
    }
}

#[test]
fn ipv6_vms_leave_by_nat66_and_stay_isolated() {
    if let Some(reason) = missing_prerequisite() {
        eprintln!("skipped: {reason}");
        return;
    }
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        eprintln!("skipped: IPv6 is disabled on this host");
        return;
    }
    remove_stale_namespaces();
    let prefix = format!("aleph-nettest-{}-v6", std::process::id());
    let host = Netns::create(prefix.clone());
    let out = Netns::create(format!("{prefix}-out"));
    let vm_c = Netns::create(format!("{prefix}-c"));
    let vm_d = Netns::create(format!("{prefix}-d"));
    let host_forwarding =
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap();

    host.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "eth0", "netns", &out.name,
    ]);
    // No duplicate address detection: the addresses are usable at once.
    host.ip(&["addr", "add", "fd99::1/64", "dev", "uplink0", "nodad"]);
    host.ip(&["link", "set", "uplink0", "up"]);
    out.ip(&["addr", "add", "fd99::2/64", "dev", "eth0", "nodad"]);
    out.ip(&["link", "set", "eth0", "up"]);

    let network = VmNetwork::new(config_v6()).unwrap();

    // One VM on a real TAP, through the library's whole path.
    let a = host.block_on(|| async {
        network.enable_forwarding().unwrap();
        network.ensure_base().await.unwrap();
        let a = network.setup(VM_A, 1).await.unwrap();
        // Again (re-adoption): set up once.
        assert_eq!(network.setup(VM_A, 1).await.unwrap(), a);
        a
    });
    assert_eq!(
        host.exec("cat", &["/proc/sys/net/ipv6/conf/all/forwarding"])
            .trim(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap(),
        host_forwarding,
        "the host's own setting is untouched"
    );
    let a_v6 = a.ipv6.expect("an IPv6 side");
    assert_eq!(a_v6.guest_ip.to_string(), "fd00:a1e::12");
    assert_eq!(
        global_ipv6_addresses(&host, "vmac100100"),
        ["fd00:a1e::11/124"]
    );
    assert_eq!(
        interface(&host, "vmac100100"),
        Some((true, vec!["172.16.1.1/24".to_string()]))
    );
    let listed = listed_rules(&host);
    let count = |chain: &str| {
        rules_of(&listed, VM_A)
            .iter()
            .filter(|(c, _)| c == chain)
            .count()
    };
    // Input: replies, neighbour discovery, drop. Forward: the IPv4 six and the IPv6
    // pool drop. Postrouting: masquerade for each family.
    assert_eq!(
        (count("input"), count("forward"), count("postrouting")),
        (3, 7, 2),
        "{listed:#?}"
    );
    let ruleset = host.exec("nft", &["list", "ruleset"]);
    for expected in [
        "ip6 saddr fd00:a1e::10/124 oifname \"uplink0\" masquerade",
        "ip6 daddr fd00:a1e::/64 drop",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
    ] {
        assert!(ruleset.contains(expected), "{expected} in {ruleset}");
    }

    ipv6_traffic_is_masqueraded_and_isolated(&host, &out, &vm_c, &vm_d, &network);

    // Everything goes: the TAP with its addresses, the rules, our table.
    host.block_on(|| async { network.teardown(&a).await.unwrap() });
    assert_eq!(interface(&host, "vmac100100"), None);
    assert!(listed_rules(&host).is_empty());
    let removed = host.block_on(|| async { network.firewall().teardown().await.unwrap() });
    assert!(removed);
    assert_eq!(host.exec("nft", &["list", "ruleset"]).trim(), "");
}

/// IPv6 traffic through veth pairs standing in for TAPs (IPv6 side only).
fn ipv6_traffic_is_masqueraded_and_isolated(
    host: &Netns,
    out: &Netns,
    vm_c: &Netns,
    vm_d: &Netns,
    network: &VmNetwork,
) {
    let c = network.vm_net(VM_C, 5).unwrap();
    let d = network.vm_net(VM_D, 6).unwrap();
    for (vm, guest) in [(&c, vm_c), (&d, vm_d)] {
        let v6 = vm.ipv6.unwrap();
        host.ip(&[
            "link",
            "add",
            &vm.tap,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &guest.name,
        ]);
        guest.ip(&[
            "addr",
            "add",
            &format!("{}/{}", v6.guest_ip, v6.prefix),
            "dev",
            "eth0",
            "nodad",
        ]);
        guest.ip(&["link", "set", "eth0", "up"]);
        guest.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &v6.host_ip.to_string(),
        ]);
    }
    host.block_on(|| async {
        for vm in [&c, &d] {
            let v6 = vm.ipv6.unwrap();
            tap::configure_host_side(&vm.tap, vm.host_ip, vm.prefix)
                .await
                .unwrap();
            tap::configure_host_side_v6(&vm.tap, v6.host_ip, v6.prefix)
                .await
                .unwrap();
            network.firewall().add_vm(vm).await.unwrap();
        }
    });
    let wait = Duration::from_secs(3);
    let c_gateway = c.ipv6.unwrap().host_ip;
    let d_guest = d.ipv6.unwrap().guest_ip;
    assert_eq!(d_guest.to_string(), "fd00:a1e::62");

    // Out to the world, masqueraded behind the uplink's address (NAT66).
    let seen = serve_once(out, "[fd99::2]:8080", || {
        assert!(
            connect(vm_c, "[fd99::2]:8080", wait),
            "the VM reaches the outside over IPv6"
        );
    });
    assert_eq!(
        seen.map(|peer| peer.ip().to_string()),
        Some("fd99::1".to_string())
    );

    // Never into another VM's IPv6 address, although the host reaches it.
    let d_address = format!("[{d_guest}]:8080");
    let seen = serve_once(vm_d, &d_address, || {
        assert!(
            !connect(vm_c, &d_address, wait),
            "VM c must not reach VM d over IPv6"
        );
        assert!(connect(host, &d_address, wait), "the host reaches VM d");
    });
    assert!(seen.is_some());

    // Never to the host's own services over IPv6.
    let seen = serve_once(host, "[::]:9090", || {
        assert!(
            !connect(vm_c, &format!("[{c_gateway}]:9090"), wait),
            "the IPv6 gateway address is closed"
        );
        assert!(
            !connect(vm_c, "[fd99::1]:9090", wait),
            "the uplink's IPv6 address is closed"
        );
        assert!(
            connect(out, "[fd99::1]:9090", wait),
            "the service itself is up"
        );
    });
    assert!(seen.is_some());

    let removed = host.block_on(|| async {
        let c = network.firewall().remove_vm(VM_C).await.unwrap();
        let d = network.firewall().remove_vm(VM_D).await.unwrap();
        (c, d)
    });
    assert_eq!(removed, (12, 12));
}
