//! The nftables objects for our table and for one VM, built as data (no `nft` here).
//!
//! Every rule a VM owns carries a comment naming it (`aleph vm=<id>`, port forwards
//! `aleph vm=<id> forward=<proto>/<host port>:<guest port>`), which is how removal finds
//! exactly its rules again, after a restart too. All rules match the VM's own TAP
//! or subnet, so VMs' rules never interfere whatever their order in a chain.

use super::VmNet;
use super::pool_v6::is_unique_local;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem,
};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Our base chains: name, type, hook, priority.
pub const BASE_CHAINS: [(&str, NfChainType, NfHook, i32); 4] = [
    // Before the usual filter priority 0, so that our drops come first.
    ("input", NfChainType::Filter, NfHook::Input, -10),
    ("forward", NfChainType::Filter, NfHook::Forward, -10),
    // dstnat and srcnat.
    ("prerouting", NfChainType::NAT, NfHook::Prerouting, -100),
    ("postrouting", NfChainType::NAT, NfHook::Postrouting, 100),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host port forwarded to a guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortForward {
    pub protocol: Protocol,
    pub host_port: u16,
    pub guest_port: u16,
}

/// The comment that marks every rule of the VM `vm_id`.
pub fn vm_tag(vm_id: &str) -> String {
    format!("aleph vm={vm_id}")
}

/// The comment of one port forward of the VM `vm_id`.
pub fn forward_tag(vm_id: &str, forward: &PortForward) -> String {
    format!(
        "{} forward={}/{}:{}",
        vm_tag(vm_id),
        forward.protocol,
        forward.host_port,
        forward.guest_port
    )
}

/// Whether a rule's comment marks it as the VM's (its own rules and its forwards).
pub fn belongs_to(comment: &str, vm_id: &str) -> bool {
    let tag = vm_tag(vm_id);
    comment == tag
        || comment
            .strip_prefix(&tag)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// The port forward a comment describes, if it is one of `vm_id`'s.
pub fn parse_forward_tag(comment: &str, vm_id: &str) -> Option<PortForward> {
    let rest = comment.strip_prefix(&vm_tag(vm_id))?;
    let (protocol, ports) = rest.strip_prefix(" forward=")?.split_once('/')?;
    let (host_port, guest_port) = ports.split_once(':')?;
    Some(PortForward {
        protocol: Protocol::parse(protocol)?,
        host_port: host_port.parse().ok()?,
        guest_port: guest_port.parse().ok()?,
    })
}

/// Our table and its base chains. Adding what exists changes nothing, so this is
/// safe to apply on every start; the policies accept, as other tables may carry the
/// host's own traffic rules and ours only ever decide about VM traffic.
pub fn base(table: &str) -> Vec<NfListObject<'static>> {
    let mut objects = vec![NfListObject::Table(Table {
        family: NfFamily::INet,
        name: table.to_string().into(),
        handle: None,
    })];
    for (name, kind, hook, priority) in BASE_CHAINS {
        objects.push(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: table.to_string().into(),
            name: name.into(),
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(priority),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }
    objects
}

/// The rules that let one VM out to the world and keep everything else away from it.
///
/// * input: from the TAP only replies to what the host started (no host service is
///   reachable from a VM);
/// * forward, towards the TAP: replies and port-forwarded connections only;
/// * forward, from the TAP: never into the pool (other VMs), else out by the uplink
///   (by anything but the TAP itself when no uplink is set);
/// * postrouting: masquerade the VM's subnet on the way out.
///
/// Where the VM has an IPv6 side, the same for IPv6 (the filter rules that match by
/// interface already hold for both families): neighbour discovery from the TAP is let
/// in (the guest must resolve its gateway), the IPv6 pool `pool_v6` is closed to it
/// like the IPv4 one, and its IPv6 subnet is masqueraded (NAT66) only when the pool is
/// unique local; a routed pool's addresses leave as they are. Either way nothing new
/// comes in from outside but port forwards, as for IPv4.
pub fn vm_rules(
    table: &str,
    pool: (Ipv4Addr, u8),
    pool_v6: Option<(Ipv6Addr, u8)>,
    uplink: Option<&str>,
    vm: &VmNet,
) -> Vec<NfListObject<'static>> {
    let tap = vm.tap.as_str();
    let rule = |chain: &str, expr: Vec<Statement<'static>>| {
        NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: table.to_string().into(),
            chain: chain.to_string().into(),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: Some(vm_tag(&vm.vm_id).into()),
        })
    };
    let accept = || Statement::Accept(None);
    let drop = || Statement::Drop(None);

    // The IPv6 side and the pool it is closed off from.
    let v6 = vm.ipv6.zip(pool_v6);

    let mut rules = vec![rule(
        "input",
        vec![
            iifname(tap),
            ct_in("state", &["established", "related"]),
            accept(),
        ],
    )];
    if v6.is_some() {
        rules.push(rule(
            "input",
            vec![
                iifname(tap),
                compare(
                    payload("icmpv6", "type"),
                    Operator::EQ,
                    set(&["nd-neighbor-solicit", "nd-neighbor-advert"]),
                ),
                accept(),
            ],
        ));
    }
    rules.extend([
        rule("input", vec![iifname(tap), drop()]),
        rule(
            "forward",
            vec![
                oifname(tap),
                ct_in("state", &["established", "related"]),
                accept(),
            ],
        ),
        rule(
            "forward",
            vec![oifname(tap), ct_in("status", &["dnat"]), accept()],
        ),
        rule("forward", vec![oifname(tap), drop()]),
        rule(
            "forward",
            vec![iifname(tap), ip_field_in("daddr", pool), drop()],
        ),
    ]);
    if let Some((_, pool_v6)) = v6 {
        rules.push(rule(
            "forward",
            vec![iifname(tap), ip6_field_in("daddr", pool_v6), drop()],
        ));
    }
    let masquerade_out = match uplink {
        Some(uplink) => {
            rules.push(rule(
                "forward",
                vec![iifname(tap), oifname(uplink), accept()],
            ));
            rules.push(rule("forward", vec![iifname(tap), drop()]));
            compare(meta(MetaKey::Oifname), Operator::EQ, text(uplink))
        }
        None => {
            rules.push(rule("forward", vec![iifname(tap), accept()]));
            compare(meta(MetaKey::Oifname), Operator::NEQ, text(tap))
        }
    };
    rules.push(rule(
        "postrouting",
        vec![
            ip_field_in("saddr", (vm.network(), vm.prefix)),
            masquerade_out.clone(),
            Statement::Masquerade(None),
        ],
    ));
    if let Some((vm_v6, (pool_network, pool_prefix))) = v6
        && is_unique_local(pool_network, pool_prefix)
    {
        rules.push(rule(
            "postrouting",
            vec![
                ip6_field_in("saddr", (vm_v6.network(), vm_v6.prefix)),
                masquerade_out,
                Statement::Masquerade(None),
            ],
        ));
    }
    rules
}

/// The rule that sends connections to one of the host's addresses on `host_port` to
/// the guest. Only packets addressed to the host itself match (`fib daddr type local`),
/// so traffic passing through keeps its destination. Connections the host itself opens
/// go through `output`, not `prerouting`, and are not forwarded.
pub fn forward_rule(table: &str, vm: &VmNet, forward: &PortForward) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: table.to_string().into(),
        chain: "prerouting".into(),
        expr: vec![
            compare(
                Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: [FibFlag::Daddr].into_iter().collect(),
                })),
                Operator::EQ,
                text("local"),
            ),
            compare(
                meta(MetaKey::L4proto),
                Operator::EQ,
                text(forward.protocol.as_str()),
            ),
            compare(
                payload("th", "dport"),
                Operator::EQ,
                Expression::Number(forward.host_port.into()),
            ),
            Statement::DNAT(Some(NAT {
                addr: Some(text(&vm.guest_ip.to_string())),
                family: Some(NATFamily::IP),
                port: Some(Expression::Number(forward.guest_port.into())),
                flags: None,
            })),
        ]
        .into(),
        handle: None,
        index: None,
        comment: Some(forward_tag(&vm.vm_id, forward).into()),
    })
}

fn text(value: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(value.to_string()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn compare(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn iifname(name: &str) -> Statement<'static> {
    compare(meta(MetaKey::Iifname), Operator::EQ, text(name))
}

fn oifname(name: &str) -> Statement<'static> {
    compare(meta(MetaKey::Oifname), Operator::EQ, text(name))
}

/// `ip <field> <network>/<prefix>`.
fn ip_field_in(field: &'static str, (network, prefix): (Ipv4Addr, u8)) -> Statement<'static> {
    address_field_in(field, (IpAddr::V4(network), prefix))
}

/// `ip6 <field> <network>/<prefix>`.
fn ip6_field_in(field: &'static str, (network, prefix): (Ipv6Addr, u8)) -> Statement<'static> {
    address_field_in(field, (IpAddr::V6(network), prefix))
}

fn address_field_in(field: &'static str, (network, prefix): (IpAddr, u8)) -> Statement<'static> {
    let protocol = if network.is_ipv4() { "ip" } else { "ip6" };
    compare(
        payload(protocol, field),
        Operator::EQ,
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(text(&network.to_string())),
            len: prefix.into(),
        })),
    )
}

/// An anonymous set of names: `{ a, b }`.
fn set(items: &[&str]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .iter()
            .map(|item| SetItem::Element(text(item)))
            .collect(),
    ))
}

/// `ct <key> { flags }`: true when any of the flags is set.
fn ct_in(key: &'static str, flags: &[&str]) -> Statement<'static> {
    let right = match flags {
        [flag] => text(flag),
        _ => Expression::List(flags.iter().map(|flag| text(flag)).collect()),
    };
    compare(
        Expression::Named(NamedExpression::CT(CT {
            key: key.into(),
            family: None,
            dir: None,
        })),
        Operator::IN,
        right,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_find_the_vm_and_its_forwards_but_not_a_longer_id() {
        let forward = PortForward {
            protocol: Protocol::Udp,
            host_port: 24001,
            guest_port: 53,
        };
        let tag = forward_tag("abc", &forward);
        assert_eq!(tag, "aleph vm=abc forward=udp/24001:53");
        assert!(belongs_to(&tag, "abc"));
        assert!(belongs_to("aleph vm=abc", "abc"));
        assert!(!belongs_to("aleph vm=abcd", "abc"));
        assert!(!belongs_to(&tag, "ab"));
        assert_eq!(parse_forward_tag(&tag, "abc"), Some(forward));
        assert_eq!(parse_forward_tag("aleph vm=abc", "abc"), None);
    }

    #[test]
    fn vm_rules_serialize_to_the_nft_json_we_expect() {
        let vm = VmNet::new("vm1", 3, Ipv4Addr::new(172, 16, 3, 0), 24);
        let rules = vm_rules("aleph", (Ipv4Addr::new(172, 16, 0, 0), 12), None, None, &vm);
        let json = serde_json::to_value(&rules).unwrap();
        let text = json.to_string();
        assert!(text.contains(r#"{"meta":{"key":"iifname"}}"#), "{text}");
        assert!(
            text.contains(r#""right":{"prefix":{"addr":"172.16.0.0","len":12}}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""right":["established","related"]"#),
            "{text}"
        );
        assert!(text.contains(r#"{"masquerade":null}"#), "{text}");
        for rule in json.as_array().unwrap() {
            assert_eq!(rule["rule"]["comment"], "aleph vm=vm1");
            assert_eq!(rule["rule"]["table"], "aleph");
        }

        assert!(!text.contains("ip6"), "no IPv6 rule without IPv6: {text}");

        let forward = PortForward {
            protocol: Protocol::Tcp,
            host_port: 24000,
            guest_port: 22,
        };
        let json = serde_json::to_value(forward_rule("aleph", &vm, &forward)).unwrap();
        assert_eq!(json["rule"]["chain"], "prerouting");
        assert_eq!(
            json["rule"]["expr"][3],
            serde_json::json!({"dnat": {"addr": "172.16.3.2", "family": "ip", "port": 22}})
        );
    }

    fn vm_with_ipv6(pool_v6: &str) -> (VmNet, (Ipv6Addr, u8)) {
        let pool_v6 = (pool_v6.parse().unwrap(), 64);
        let subnet = crate::network::Ipv6Pool::new(pool_v6.0, 64, 124, 1)
            .unwrap()
            .subnet(3)
            .unwrap();
        let vm = VmNet::new("vm1", 3, Ipv4Addr::new(172, 16, 3, 0), 24).with_ipv6(Some(&subnet));
        (vm, pool_v6)
    }

    fn rules_text(rules: &[NfListObject<'static>], chain: &str) -> Vec<String> {
        serde_json::to_value(rules)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|rule| rule["rule"]["chain"] == chain)
            .map(|rule| rule["rule"]["expr"].to_string())
            .collect()
    }

    #[test]
    fn a_unique_local_ipv6_side_is_isolated_and_masqueraded() {
        let (vm, pool_v6) = vm_with_ipv6("fd00:a1e::");
        let pool = (Ipv4Addr::new(172, 16, 0, 0), 12);
        let rules = vm_rules("aleph", pool, Some(pool_v6), Some("eth0"), &vm);

        let input = rules_text(&rules, "input");
        assert_eq!(input.len(), 3, "{input:#?}");
        // Neighbour discovery comes before the drop, or the guest has no gateway.
        assert!(
            input[1].contains(r#""right":{"set":["nd-neighbor-solicit","nd-neighbor-advert"]}"#),
            "{input:#?}"
        );
        assert!(input[2].contains(r#"{"drop":null}"#), "{input:#?}");

        let forward = rules_text(&rules, "forward");
        assert_eq!(forward.len(), 7, "{forward:#?}");
        let pool_drop = r#"{"payload":{"field":"daddr","protocol":"ip6"}},"op":"==","right":{"prefix":{"addr":"fd00:a1e::","len":64}}"#;
        let pool_drop_at = forward
            .iter()
            .position(|rule| rule.contains(pool_drop))
            .unwrap_or_else(|| panic!("{pool_drop} in {forward:#?}"));
        // Before the rule that lets the VM out.
        assert!(forward[pool_drop_at + 1].contains(r#"{"accept":null}"#));

        let postrouting = rules_text(&rules, "postrouting");
        assert_eq!(postrouting.len(), 2, "{postrouting:#?}");
        assert!(
            postrouting[1].contains(
                r#"{"payload":{"field":"saddr","protocol":"ip6"}},"op":"==","right":{"prefix":{"addr":"fd00:a1e::30","len":124}}"#
            ),
            "{postrouting:#?}"
        );
        assert!(postrouting[1].contains(r#"{"masquerade":null}"#));
    }

    #[test]
    fn a_routed_ipv6_side_is_isolated_but_not_masqueraded() {
        let (vm, pool_v6) = vm_with_ipv6("2001:db8:5::");
        let pool = (Ipv4Addr::new(172, 16, 0, 0), 12);
        let rules = vm_rules("aleph", pool, Some(pool_v6), None, &vm);
        assert_eq!(rules_text(&rules, "input").len(), 3);
        let forward = rules_text(&rules, "forward");
        assert!(
            forward
                .iter()
                .any(|rule| rule.contains(r#""addr":"2001:db8:5::""#))
        );
        let postrouting = rules_text(&rules, "postrouting");
        assert_eq!(postrouting.len(), 1, "{postrouting:#?}");
        assert!(!postrouting[0].contains("ip6"));
    }
}
