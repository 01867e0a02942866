//! Which guest ports an instance's owner wants forwarded, and how to get there from the
//! forwards in place. Pure functions; the firewall, the host port pool and the relays
//! are driven by [`super::port_forwards`].
//!
//! The owner lists them in the `port-forwarding` aggregate on the CCN, per instance:
//! `{"<vm hash>": {"ports": {"80": {"tcp": true, "udp": false}, ...}}}`. One host port
//! carries a guest port for both protocols, and keeps it for as long as the port is
//! listed (restarts included), so clients can remember it. 22/tcp is forwarded always,
//! from the instance's SSH port.

use crate::network::{PortForward, Protocol, SSH_PORT};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The key of the owner's aggregate that lists the ports.
pub const AGGREGATE_KEY: &str = "port-forwarding";

/// The most guest ports forwarded to one instance, SSH's included. Each takes a host
/// port from the node's range shared by all instances (and a firewall rule per
/// protocol), so that one owner's aggregate cannot use the range up; the ports listed
/// past it (in port number order) are skipped.
pub const MAX_FORWARDED_PORTS: usize = 32;

/// The protocols a guest port is forwarded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Protocols {
    pub tcp: bool,
    pub udp: bool,
}

impl Protocols {
    pub fn any(self) -> bool {
        self.tcp || self.udp
    }

    pub fn has(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Tcp => self.tcp,
            Protocol::Udp => self.udp,
        }
    }

    fn set(&mut self, protocol: Protocol, on: bool) {
        match protocol {
            Protocol::Tcp => self.tcp = on,
            Protocol::Udp => self.udp = on,
        }
    }

    fn each(self) -> impl Iterator<Item = Protocol> {
        [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .filter(move |protocol| self.has(*protocol))
    }
}

/// One guest port's forward, in the shape of `mapped_ports` entries:
/// `{"host": 24001, "tcp": true, "udp": false}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedPort {
    pub host: u16,
    pub tcp: bool,
    pub udp: bool,
}

impl MappedPort {
    pub fn protocols(self) -> Protocols {
        Protocols {
            tcp: self.tcp,
            udp: self.udp,
        }
    }

    fn with(host: u16, protocols: Protocols) -> Self {
        Self {
            host,
            tcp: protocols.tcp,
            udp: protocols.udp,
        }
    }
}

/// An instance's forwards by guest port.
pub type PortMapping = BTreeMap<u16, MappedPort>;

/// The protocols wanted per guest port.
pub type WantedPorts = BTreeMap<u16, Protocols>;

/// What the aggregate asks for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requested {
    /// 22/tcp always among them.
    pub ports: WantedPorts,
    /// Why entries were left out, one line each (for the log).
    pub skipped: Vec<String>,
}

/// The ports `vm_hash` gets from its owner's `port-forwarding` aggregate (`None`: the
/// owner has none). Entries that are not a port number from 1 to 65535 or ask for
/// neither tcp nor udp are skipped, as are those past [`MAX_FORWARDED_PORTS`].
pub fn requested_ports(aggregate: Option<&Value>, vm_hash: &str) -> Requested {
    let mut requested = Requested::default();
    let listed = match aggregate {
        None | Some(Value::Null) => None,
        Some(Value::Object(by_vm)) => match by_vm.get(vm_hash) {
            None | Some(Value::Null) => None,
            Some(Value::Object(entry)) => match entry.get("ports") {
                None | Some(Value::Null) => None,
                Some(Value::Object(ports)) => Some(ports),
                Some(_) => {
                    requested
                        .skipped
                        .push("its \"ports\" is not an object".into());
                    None
                }
            },
            Some(_) => {
                requested.skipped.push("its entry is not an object".into());
                None
            }
        },
        Some(_) => {
            requested
                .skipped
                .push("the aggregate is not an object".into());
            None
        }
    };
    let mut ports = WantedPorts::new();
    for (key, value) in listed.into_iter().flatten() {
        match parse_entry(key, value) {
            Ok((port, protocols)) => {
                ports.insert(port, protocols);
            }
            Err(why) => requested.skipped.push(format!("port {key:?}: {why}")),
        }
    }
    // SSH stays whatever the list says (its udp is the owner's choice).
    let ssh = ports.remove(&SSH_PORT).unwrap_or_default();
    requested.ports.insert(
        SSH_PORT,
        Protocols {
            tcp: true,
            udp: ssh.udp,
        },
    );
    for (port, protocols) in ports {
        if requested.ports.len() < MAX_FORWARDED_PORTS {
            requested.ports.insert(port, protocols);
        } else {
            requested.skipped.push(format!(
                "port {port}: past the limit of {MAX_FORWARDED_PORTS} forwarded ports"
            ));
        }
    }
    requested
}

fn parse_entry(key: &str, value: &Value) -> Result<(u16, Protocols), &'static str> {
    let port: u64 = key.parse().map_err(|_| "not a port number")?;
    let port = u16::try_from(port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or("not a port from 1 to 65535")?;
    let Value::Object(flags) = value else {
        return Err("not an object like {\"tcp\": true, \"udp\": false}");
    };
    let protocols = Protocols {
        tcp: flags.get("tcp") == Some(&Value::Bool(true)),
        udp: flags.get("udp") == Some(&Value::Bool(true)),
    };
    if !protocols.any() {
        return Err("neither tcp nor udp");
    }
    Ok((port, protocols))
}

/// The wanted ports that keep `mapping` as it is (when the aggregate cannot be read).
pub fn wanted_as_mapped(mapping: &PortMapping) -> WantedPorts {
    mapping
        .iter()
        .map(|(guest, mapped)| (*guest, mapped.protocols()))
        .collect()
}

/// The mapping that forwards `wanted`: ports already mapped keep their host port, new
/// ones get one from `allocate(guest port)`. Also the guest ports `allocate` had none
/// for (left out).
pub fn next_mapping(
    current: &PortMapping,
    wanted: &WantedPorts,
    mut allocate: impl FnMut(u16) -> Option<u16>,
) -> (PortMapping, Vec<u16>) {
    let mut mapping = PortMapping::new();
    let mut unplaced = Vec::new();
    for (guest, protocols) in wanted {
        let host = match current.get(guest) {
            Some(mapped) => Some(mapped.host),
            None => allocate(*guest),
        };
        match host {
            Some(host) => {
                mapping.insert(*guest, MappedPort::with(host, *protocols));
            }
            None => unplaced.push(*guest),
        }
    }
    (mapping, unplaced)
}

/// Every forward `mapping` installs.
pub fn forwards(mapping: &PortMapping) -> Vec<PortForward> {
    mapping
        .iter()
        .flat_map(|(guest, mapped)| {
            mapped.protocols().each().map(|protocol| PortForward {
                protocol,
                host_port: mapped.host,
                guest_port: *guest,
            })
        })
        .collect()
}

/// The firewall changes that take an instance from `before` to `after`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardChanges {
    pub remove: Vec<PortForward>,
    pub add: Vec<PortForward>,
}

pub fn forward_changes(before: &PortMapping, after: &PortMapping) -> ForwardChanges {
    let (before, after) = (forwards(before), forwards(after));
    ForwardChanges {
        remove: before
            .iter()
            .filter(|f| !after.contains(f))
            .copied()
            .collect(),
        add: after
            .iter()
            .filter(|f| !before.contains(f))
            .copied()
            .collect(),
    }
}

/// Where a change ended once applied, failures included.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settled {
    /// The forwards in place (to record).
    pub mapping: PortMapping,
    /// Host ports no guest port holds any more (back to the pool).
    pub released: Vec<u16>,
}

/// The mapping after going from `before` towards `target` when some removals and adds
/// failed: a forward that could not be removed stays (its host port too, and the next
/// round tries again); one that could not be added is left out, and a guest port left
/// with no protocol gives its host port back.
pub fn settle(
    before: &PortMapping,
    target: &PortMapping,
    failed_removals: &[PortForward],
    failed_adds: &[PortForward],
) -> Settled {
    let mut mapping = target.clone();
    for failed in failed_adds {
        if let Some(mapped) = mapping.get_mut(&failed.guest_port) {
            let mut protocols = mapped.protocols();
            protocols.set(failed.protocol, false);
            *mapped = MappedPort::with(mapped.host, protocols);
        }
    }
    mapping.retain(|_, mapped| mapped.protocols().any());
    for failed in failed_removals {
        let mapped = mapping
            .entry(failed.guest_port)
            .or_insert(MappedPort::with(failed.host_port, Protocols::default()));
        let mut protocols = mapped.protocols();
        protocols.set(failed.protocol, true);
        *mapped = MappedPort::with(mapped.host, protocols);
    }
    let held: Vec<u16> = mapping.values().map(|mapped| mapped.host).collect();
    let mut released: Vec<u16> = before
        .values()
        .chain(target.values())
        .map(|mapped| mapped.host)
        .filter(|host| !held.contains(host))
        .collect();
    released.sort_unstable();
    released.dedup();
    Settled { mapping, released }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VM: &str = "8e4e5a0bb39d1b5dcc9aa7e0cc3f2e5d9ffcd5ab4e6ea5bd7a2df0a2bd3a8b11";

    fn tcp() -> Protocols {
        Protocols {
            tcp: true,
            udp: false,
        }
    }

    fn both() -> Protocols {
        Protocols {
            tcp: true,
            udp: true,
        }
    }

    fn mapped(host: u16, protocols: Protocols) -> MappedPort {
        MappedPort::with(host, protocols)
    }

    fn forward(protocol: Protocol, host_port: u16, guest_port: u16) -> PortForward {
        PortForward {
            protocol,
            host_port,
            guest_port,
        }
    }

    #[test]
    fn the_listed_ports_of_this_vm_are_read_and_ssh_is_always_in() {
        let aggregate = json!({
            VM: {"ports": {
                "80": {"tcp": true, "udp": false},
                "53": {"tcp": true, "udp": true},
                "5000": {"udp": true},
            }},
            "another vm": {"ports": {"8080": {"tcp": true}}},
        });
        let requested = requested_ports(Some(&aggregate), VM);
        assert_eq!(requested.skipped, Vec::<String>::new());
        let udp = Protocols {
            tcp: false,
            udp: true,
        };
        assert_eq!(
            requested.ports,
            WantedPorts::from([(22, tcp()), (53, both()), (80, tcp()), (5000, udp)])
        );
    }

    #[test]
    fn no_aggregate_no_entry_or_no_ports_forward_ssh_only() {
        let ssh_only = WantedPorts::from([(22, tcp())]);
        for aggregate in [
            None,
            Some(json!(null)),
            Some(json!({})),
            Some(json!({VM: null})),
            Some(json!({VM: {}})),
            Some(json!({VM: {"ports": null}})),
            Some(json!({VM: {"ports": {}}})),
        ] {
            let requested = requested_ports(aggregate.as_ref(), VM);
            assert_eq!(requested.ports, ssh_only, "{aggregate:?}");
            assert!(requested.skipped.is_empty(), "{aggregate:?}");
        }
        for aggregate in [json!([]), json!({VM: 3}), json!({VM: {"ports": [80]}})] {
            let requested = requested_ports(Some(&aggregate), VM);
            assert_eq!(requested.ports, ssh_only, "{aggregate:?}");
            assert_eq!(requested.skipped.len(), 1, "{aggregate:?}");
        }
    }

    #[test]
    fn bad_entries_are_skipped_with_a_reason_each() {
        let aggregate = json!({VM: {"ports": {
            "0": {"tcp": true},
            "65536": {"tcp": true},
            "65535": {"tcp": true},
            "http": {"tcp": true},
            "-1": {"tcp": true},
            "81": {"tcp": false, "udp": false},
            "82": {"tcp": "true"},
            "83": true,
            "84": {},
        }}});
        let requested = requested_ports(Some(&aggregate), VM);
        assert_eq!(
            requested.ports,
            WantedPorts::from([(22, tcp()), (65535, tcp())])
        );
        let mut skipped = requested.skipped.clone();
        skipped.sort();
        assert_eq!(
            skipped,
            [
                "port \"-1\": not a port number",
                "port \"0\": not a port from 1 to 65535",
                "port \"65536\": not a port from 1 to 65535",
                "port \"81\": neither tcp nor udp",
                "port \"82\": neither tcp nor udp",
                "port \"83\": not an object like {\"tcp\": true, \"udp\": false}",
                "port \"84\": neither tcp nor udp",
                "port \"http\": not a port number",
            ]
        );
    }

    #[test]
    fn ssh_keeps_tcp_whatever_the_list_says_and_may_add_udp() {
        let aggregate = json!({VM: {"ports": {"22": {"tcp": false, "udp": true}}}});
        let requested = requested_ports(Some(&aggregate), VM);
        assert_eq!(requested.ports, WantedPorts::from([(22, both())]));
        let aggregate = json!({VM: {"ports": {"22": {"tcp": false, "udp": false}}}});
        let requested = requested_ports(Some(&aggregate), VM);
        assert_eq!(requested.ports, WantedPorts::from([(22, tcp())]));
        assert_eq!(requested.skipped.len(), 1);
    }

    #[test]
    fn ports_past_the_cap_are_skipped_lowest_kept() {
        let ports: serde_json::Map<String, Value> = (1000..1100)
            .map(|port| (port.to_string(), json!({"tcp": true})))
            .collect();
        let aggregate = json!({VM: {"ports": ports}});
        let requested = requested_ports(Some(&aggregate), VM);
        assert_eq!(requested.ports.len(), MAX_FORWARDED_PORTS);
        assert!(requested.ports.contains_key(&22));
        let highest = 1000 + MAX_FORWARDED_PORTS as u16 - 2;
        assert_eq!(requested.ports.keys().last(), Some(&highest));
        assert_eq!(requested.skipped.len(), 100 - (MAX_FORWARDED_PORTS - 1));
        assert!(requested.skipped[0].contains("limit of 32"));
    }

    #[test]
    fn mapped_ports_keep_their_host_port_and_new_ones_get_one() {
        let current = PortMapping::from([(22, mapped(24000, tcp())), (80, mapped(24003, tcp()))]);
        let wanted = WantedPorts::from([(22, tcp()), (80, both()), (443, tcp()), (8080, tcp())]);
        let mut free = vec![24005, 24004];
        let (mapping, unplaced) = next_mapping(&current, &wanted, |_| free.pop());
        assert_eq!(
            mapping,
            PortMapping::from([
                (22, mapped(24000, tcp())),
                (80, mapped(24003, both())),
                (443, mapped(24004, tcp())),
                (8080, mapped(24005, tcp())),
            ])
        );
        assert!(unplaced.is_empty());

        // Nothing left in the pool: the port is left out, the others go on.
        let (mapping, unplaced) = next_mapping(&current, &wanted, |_| None);
        assert_eq!(mapping.len(), 2);
        assert_eq!(unplaced, [443, 8080]);
    }

    #[test]
    fn the_diff_adds_what_appeared_and_removes_what_went() {
        let before = PortMapping::from([
            (22, mapped(24000, tcp())),
            (53, mapped(24001, both())),
            (80, mapped(24002, tcp())),
        ]);
        let after = PortMapping::from([
            (22, mapped(24000, tcp())),
            (53, mapped(24001, tcp())),
            (443, mapped(24003, both())),
        ]);
        let changes = forward_changes(&before, &after);
        assert_eq!(
            changes.remove,
            [
                forward(Protocol::Udp, 24001, 53),
                forward(Protocol::Tcp, 24002, 80)
            ]
        );
        assert_eq!(
            changes.add,
            [
                forward(Protocol::Tcp, 24003, 443),
                forward(Protocol::Udp, 24003, 443)
            ]
        );
        assert_eq!(forward_changes(&after, &after), ForwardChanges::default());
        // From nothing (a start), everything is added.
        assert_eq!(
            forward_changes(&PortMapping::new(), &after).add,
            forwards(&after)
        );
        assert_eq!(forwards(&after).len(), 4);
    }

    #[test]
    fn settling_releases_the_host_ports_of_ports_gone() {
        let before = PortMapping::from([(22, mapped(24000, tcp())), (80, mapped(24002, tcp()))]);
        let target = PortMapping::from([(22, mapped(24000, tcp())), (443, mapped(24003, tcp()))]);
        let settled = settle(&before, &target, &[], &[]);
        assert_eq!(settled.mapping, target);
        assert_eq!(settled.released, [24002]);
    }

    #[test]
    fn settling_keeps_what_could_not_be_removed_and_drops_what_could_not_be_added() {
        let before = PortMapping::from([
            (22, mapped(24000, tcp())),
            (53, mapped(24001, both())),
            (80, mapped(24002, tcp())),
        ]);
        let target = PortMapping::from([
            (22, mapped(24000, tcp())),
            (53, mapped(24001, tcp())),
            (443, mapped(24003, tcp())),
            (8080, mapped(24004, both())),
        ]);
        let settled = settle(
            &before,
            &target,
            &[
                forward(Protocol::Tcp, 24002, 80),
                forward(Protocol::Udp, 24001, 53),
            ],
            &[
                forward(Protocol::Tcp, 24003, 443),
                forward(Protocol::Udp, 24004, 8080),
            ],
        );
        assert_eq!(
            settled.mapping,
            PortMapping::from([
                (22, mapped(24000, tcp())),
                (53, mapped(24001, both())),
                (80, mapped(24002, tcp())),
                (8080, mapped(24004, tcp())),
            ])
        );
        assert_eq!(settled.released, [24003]);
    }

    #[test]
    fn the_unreadable_case_wants_what_is_mapped() {
        let mapping = PortMapping::from([(22, mapped(24000, tcp())), (53, mapped(24001, both()))]);
        let wanted = wanted_as_mapped(&mapping);
        let (next, _) = next_mapping(&mapping, &wanted, |_| panic!("no new port"));
        assert_eq!(next, mapping);
        assert_eq!(forward_changes(&mapping, &next), ForwardChanges::default());
    }

    #[test]
    fn mapped_ports_serialize_in_the_executions_list_shape() {
        let mapping = PortMapping::from([(22, mapped(24000, tcp())), (80, mapped(24001, tcp()))]);
        assert_eq!(
            serde_json::to_value(&mapping).unwrap(),
            json!({
                "22": {"host": 24000, "tcp": true, "udp": false},
                "80": {"host": 24001, "tcp": true, "udp": false},
            })
        );
        let back: PortMapping = serde_json::from_value(json!({
            "80": {"host": 24001, "tcp": true, "udp": false}
        }))
        .unwrap();
        assert_eq!(back, PortMapping::from([(80, mapped(24001, tcp()))]));
    }
}
