//! How the host wires VMs to the network: which addresses they get, which host ports
//! forward to them, and the name of our nftables table.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// The range every VM subnet is cut from: network address and prefix length.
    pub ipv4_pool: (Ipv4Addr, u8),
    /// Prefix length of one VM's subnet (host `.1`, guest `.2`); at most 30.
    pub vm_prefix: u8,
    /// The range every VM's IPv6 subnet is cut from; `None` (the default) gives VMs no
    /// IPv6. A ULA range (`fc00::/7`) is masqueraded behind the host (NAT66); any other
    /// is routed, so the host's uplink must have it routed to it.
    pub ipv6_pool: Option<(Ipv6Addr, u8)>,
    /// Prefix length of one VM's IPv6 subnet (host `::1`, guest `::2`); at most 126.
    /// VM `i` gets the `i`-th such subnet, `i` being its IPv4 subnet's index.
    pub vm_prefix_v6: u8,
    /// The interface VM traffic leaves by (masquerade, forward filter); `None` lets it
    /// leave by any interface other than the VM's own TAP.
    pub uplink: Option<String>,
    /// Host ports handed out for port forwarding, both ends included.
    pub port_range: (u16, u16),
    /// Name of our nftables table (family `inet`); nothing else is ever touched.
    pub table: String,
    /// Also relay each forwarded port from `127.0.0.1` (see [`super::relay`]), so the
    /// node itself reaches its VMs' forwarded ports.
    pub loopback_relay: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ipv4_pool: (Ipv4Addr::new(172, 16, 0, 0), 12),
            vm_prefix: 24,
            ipv6_pool: None,
            vm_prefix_v6: 124,
            uplink: None,
            port_range: (24000, 28000),
            table: "aleph".to_string(),
            loopback_relay: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_pool_is_read_from_toml_and_absent_by_default() {
        let config: NetworkConfig = toml::from_str("ipv6_pool = [\"fd00:a1e::\", 64]\n").unwrap();
        assert_eq!(config.ipv6_pool, Some(("fd00:a1e::".parse().unwrap(), 64)));
        assert_eq!(config.vm_prefix_v6, 124);
        let config: NetworkConfig = toml::from_str("vm_prefix = 24\n").unwrap();
        assert_eq!(config.ipv6_pool, None);
    }
}
