//! What an instance's cloud-init seed says: plain data, checked by `seed::write_seed`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The guest's identity, who may log in, and (optionally) its static network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedConfig {
    /// cloud-init runs its per-instance modules again whenever this changes, so it must
    /// stay the same for the life of one instance (its item hash, say).
    pub instance_id: String,
    /// One or more RFC 1123 labels joined by dots.
    pub hostname: String,
    /// `authorized_keys` lines for root, each on one line.
    pub ssh_authorized_keys: Vec<String>,
    /// `None` leaves the guest to cloud-init's fallback (DHCP on the first NIC).
    pub network: Option<StaticNetwork>,
    /// ext4 disks to mount at boot (written to the guest's fstab once).
    #[serde(default)]
    pub mounts: Vec<SeedMount>,
}

/// An ext4 disk the guest mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedMount {
    /// Its path in the guest, stable across boots (`/dev/disk/by-id/virtio-<serial>`).
    pub device: String,
    /// An absolute path.
    pub mount_point: String,
}

/// A fixed address plan for the guest's one NIC, found by its MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticNetwork {
    /// `aa:bb:cc:dd:ee:ff`, as given to the hypervisor for the NIC.
    pub mac: String,
    pub ipv4: Ipv4Cidr,
    /// Must lie inside `ipv4`'s network.
    pub gateway_v4: Ipv4Addr,
    pub ipv6: Option<Ipv6Cidr>,
    /// Must lie inside `ipv6`'s network; needs `ipv6`.
    pub gateway_v6: Option<Ipv6Addr>,
    pub nameservers: Vec<IpAddr>,
}

/// An IPv4 address with the prefix length of its network (`10.0.0.2/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

/// An IPv6 address with the prefix length of its network (`fd00::2/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Cidr {
    pub address: Ipv6Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub const fn new(address: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            address,
            prefix_len,
        }
    }

    /// Whether `other` is in this address's network (false for a prefix over 32).
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        if self.prefix_len > 32 {
            return false;
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(self.address) & mask == u32::from(other) & mask
    }
}

impl Ipv6Cidr {
    pub const fn new(address: Ipv6Addr, prefix_len: u8) -> Self {
        Self {
            address,
            prefix_len,
        }
    }

    /// Whether `other` is in this address's network (false for a prefix over 128).
    pub fn contains(&self, other: Ipv6Addr) -> bool {
        if self.prefix_len > 128 {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u128::from(self.address) & mask == u128::from(other) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_network_membership() {
        let net = Ipv4Cidr::new(Ipv4Addr::new(10, 0, 3, 2), 24);
        assert!(net.contains(Ipv4Addr::new(10, 0, 3, 1)));
        assert!(!net.contains(Ipv4Addr::new(10, 0, 4, 1)));
        assert!(Ipv4Cidr::new(Ipv4Addr::new(1, 2, 3, 4), 0).contains(Ipv4Addr::BROADCAST));
        let host = Ipv4Cidr::new(Ipv4Addr::new(10, 0, 3, 2), 32);
        assert!(!host.contains(Ipv4Addr::new(10, 0, 3, 1)));
        assert!(
            !Ipv4Cidr::new(Ipv4Addr::new(10, 0, 3, 2), 33).contains(Ipv4Addr::new(10, 0, 3, 2))
        );
        assert_eq!(net.to_string(), "10.0.3.2/24");
    }

    #[test]
    fn v6_network_membership() {
        let net = Ipv6Cidr::new("fd00:1::2".parse().unwrap(), 64);
        assert!(net.contains("fd00:1::1".parse().unwrap()));
        assert!(!net.contains("fd00:2::1".parse().unwrap()));
        assert!(!Ipv6Cidr::new(Ipv6Addr::LOCALHOST, 129).contains(Ipv6Addr::LOCALHOST));
        assert_eq!(net.to_string(), "fd00:1::2/64");
    }
}
