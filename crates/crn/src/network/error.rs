//! What can go wrong wiring a VM to the network.

use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid address pool {network}/{prefix} with /{vm_prefix} per VM: {reason}")]
    InvalidPool {
        network: Ipv4Addr,
        prefix: u8,
        vm_prefix: u8,
        reason: &'static str,
    },
    #[error("invalid IPv6 pool {network}/{prefix} with /{vm_prefix} per VM: {reason}")]
    InvalidPoolV6 {
        network: Ipv6Addr,
        prefix: u8,
        vm_prefix: u8,
        reason: String,
    },
    #[error("the address pool is exhausted: all {capacity} VM subnets are in use")]
    PoolExhausted { capacity: u32 },
    #[error("VM subnet index {index} is outside the pool (it holds {capacity})")]
    IndexOutOfRange { index: u32, capacity: u32 },
    #[error("VM subnet index {index} is already in use")]
    IndexTaken { index: u32 },
    #[error("VM id {0:?} cannot name firewall rules: use 1 to 80 letters, digits, '-', '_' or '.'")]
    InvalidVmId(String),
    #[error("all host ports {first}..={last} are forwarded already")]
    PortsExhausted { first: u16, last: u16 },
    #[error("TAP device {name}: {action}: {source}")]
    Tap {
        name: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink, {action} on {name}: {source}")]
    Netlink {
        name: String,
        action: &'static str,
        // Boxed: netlink errors carry the whole message and would make every result big.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("nft {action}: {detail}")]
    Nft { action: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = NetworkError> = std::result::Result<T, E>;
