//! The IPv6 side of the address pool: VM `i`'s IPv6 subnet is the `i`-th block of
//! `vm_prefix_v6` size in the IPv6 pool, `i` being the index of its IPv4 subnet (one
//! index, both families, so the IPv4 pool's bookkeeping covers both). The host side of
//! the TAP takes `::1`, the guest `::2`. Arithmetic only; it touches no device.

use super::config::NetworkConfig;
use super::error::{NetworkError, Result};
use super::pool::AddressPool;
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;

/// Longest VM prefix: the subnet must hold `::`, `::1` and `::2`.
const MAX_VM_PREFIX: u8 = 126;

/// One VM's IPv6 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmSubnetV6 {
    /// Network address (host bits zero).
    pub network: Ipv6Addr,
    pub prefix: u8,
}

impl VmSubnetV6 {
    /// The host's address on the VM's TAP, the guest's gateway.
    pub fn host_ip(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) + 1)
    }

    pub fn guest_ip(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network) + 2)
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask(self.prefix) == u128::from(self.network)
    }
}

/// Cuts VM IPv6 subnets out of the configured pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pool {
    network: u128,
    prefix: u8,
    vm_prefix: u8,
}

impl Ipv6Pool {
    /// The IPv6 pool of `config`, `None` when it has none. Refuses a pool that holds
    /// fewer VM subnets than the IPv4 pool, since every IPv4 index needs its IPv6
    /// subnet.
    pub fn from_config(config: &NetworkConfig) -> Result<Option<Self>> {
        let Some((network, prefix)) = config.ipv6_pool else {
            return Ok(None);
        };
        let needed = AddressPool::new(config)?.capacity();
        Self::new(network, prefix, config.vm_prefix_v6, needed).map(Some)
    }

    /// A pool `network/prefix` of `/vm_prefix` subnets that must hold at least `needed`.
    pub fn new(network: Ipv6Addr, prefix: u8, vm_prefix: u8, needed: u32) -> Result<Self> {
        let invalid = |reason: String| NetworkError::InvalidPoolV6 {
            network,
            prefix,
            vm_prefix,
            reason,
        };
        if vm_prefix > MAX_VM_PREFIX {
            return Err(invalid(format!(
                "a VM subnet must be /{MAX_VM_PREFIX} or larger (it holds ::, ::1 and ::2)"
            )));
        }
        if vm_prefix < prefix {
            return Err(invalid("a VM subnet cannot be larger than the pool".into()));
        }
        if u128::from(network) & !mask(prefix) != 0 {
            return Err(invalid("the pool address has host bits set".into()));
        }
        let pool = Self {
            network: u128::from(network),
            prefix,
            vm_prefix,
        };
        if pool.capacity() < u128::from(needed) {
            return Err(invalid(format!(
                "it holds {} VM subnets, fewer than the {needed} of the IPv4 pool \
                 (shorten the pool's prefix or lengthen vm_prefix_v6)",
                pool.capacity()
            )));
        }
        Ok(pool)
    }

    /// How many VM subnets the pool holds (at most 2^126: VM prefixes are at most 126).
    pub fn capacity(&self) -> u128 {
        1u128 << (self.vm_prefix - self.prefix)
    }

    pub fn network(&self) -> (Ipv6Addr, u8) {
        (Ipv6Addr::from(self.network), self.prefix)
    }

    /// Whether the pool is unique local (`fc00::/7`): such addresses are not routed on
    /// the Internet, so VM traffic is masqueraded (NAT66) on the way out.
    pub fn is_unique_local(&self) -> bool {
        is_unique_local(Ipv6Addr::from(self.network), self.prefix)
    }

    /// The subnet of the VM whose IPv4 subnet has `index`.
    pub fn subnet(&self, index: u32) -> Result<VmSubnetV6> {
        if u128::from(index) >= self.capacity() {
            return Err(NetworkError::IndexOutOfRange {
                index,
                capacity: u32::try_from(self.capacity()).unwrap_or(u32::MAX),
            });
        }
        let size_bits = 128 - u32::from(self.vm_prefix);
        Ok(VmSubnetV6 {
            network: Ipv6Addr::from(self.network + (u128::from(index) << size_bits)),
            prefix: self.vm_prefix,
        })
    }
}

/// Whether all of `network/prefix` lies in `fc00::/7`.
pub fn is_unique_local(network: Ipv6Addr, prefix: u8) -> bool {
    prefix >= 7 && network.segments()[0] & 0xfe00 == 0xfc00
}

fn mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v6(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn subnets_follow_the_ipv4_index_with_host_1_and_guest_2() {
        let config = NetworkConfig {
            ipv6_pool: Some((v6("fd00:a1e::"), 64)),
            ..NetworkConfig::default()
        };
        let pool = Ipv6Pool::from_config(&config).unwrap().unwrap();
        assert_eq!(pool.capacity(), 1 << 60);
        assert!(pool.is_unique_local());
        let first = pool.subnet(0).unwrap();
        assert_eq!(first.network, v6("fd00:a1e::"));
        assert_eq!(first.prefix, 124);
        assert_eq!(first.host_ip(), v6("fd00:a1e::1"));
        assert_eq!(first.guest_ip(), v6("fd00:a1e::2"));
        let seventh = pool.subnet(7).unwrap();
        assert_eq!(seventh.network, v6("fd00:a1e::70"));
        assert_eq!(seventh.guest_ip(), v6("fd00:a1e::72"));
        // The last IPv4 index of the default pool (4095) still has its subnet.
        let last = pool.subnet(4095).unwrap();
        assert_eq!(last.network, v6("fd00:a1e::fff0"));
        assert!(!first.contains(seventh.guest_ip()) && !seventh.contains(first.host_ip()));
        assert!(seventh.contains(v6("fd00:a1e::7f")));
    }

    #[test]
    fn no_pool_means_no_ipv6() {
        assert_eq!(
            Ipv6Pool::from_config(&NetworkConfig::default()).unwrap(),
            None
        );
    }

    #[test]
    fn other_vm_prefixes_work() {
        let pool = Ipv6Pool::new(v6("2001:db8:1::"), 48, 64, 4096).unwrap();
        assert!(!pool.is_unique_local());
        let subnet = pool.subnet(3).unwrap();
        assert_eq!(subnet.network, v6("2001:db8:1:3::"));
        assert_eq!(subnet.guest_ip(), v6("2001:db8:1:3::2"));
        let smallest = Ipv6Pool::new(v6("fd00::"), 120, 126, 64).unwrap();
        assert_eq!(smallest.subnet(63).unwrap().host_ip(), v6("fd00::fd"));
        assert!(smallest.subnet(64).is_err());
    }

    #[test]
    fn a_pool_smaller_than_the_ipv4_one_is_refused_clearly() {
        // The default IPv4 pool holds 4096 subnets; a /120 of /124s holds 16.
        let config = NetworkConfig {
            ipv6_pool: Some((v6("fd00::"), 120)),
            ..NetworkConfig::default()
        };
        let error = Ipv6Pool::from_config(&config).unwrap_err().to_string();
        assert!(
            error.contains("16 VM subnets, fewer than the 4096"),
            "{error}"
        );
        // Exactly as many is enough.
        let config = NetworkConfig {
            ipv4_pool: (Ipv4Addr::new(10, 0, 0, 0), 24),
            vm_prefix: 28,
            ..config
        };
        assert!(Ipv6Pool::from_config(&config).unwrap().is_some());
    }

    #[test]
    fn invalid_pools_are_refused() {
        assert!(Ipv6Pool::new(v6("fd00::"), 64, 127, 1).is_err());
        assert!(Ipv6Pool::new(v6("fd00::"), 64, 48, 1).is_err());
        assert!(Ipv6Pool::new(v6("fd00::1"), 64, 124, 1).is_err());
    }

    #[test]
    fn unique_local_is_fc00_7() {
        assert!(is_unique_local(v6("fc00::"), 7));
        assert!(is_unique_local(v6("fdff:1::"), 32));
        assert!(!is_unique_local(v6("fc00::"), 6));
        assert!(!is_unique_local(v6("fe80::"), 64));
        assert!(!is_unique_local(v6("2001:db8::"), 32));
    }
}
