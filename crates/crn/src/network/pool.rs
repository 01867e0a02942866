//! The IPv4 address pool: one subnet per VM, cut from the configured range.
//!
//! Subnet `i` is the `i`-th block of `vm_prefix` size in the pool; the host side of the
//! VM's TAP takes its first address (`.1`), the guest the second (`.2`). The pool only
//! does the arithmetic and the bookkeeping; it touches no device.

use super::config::NetworkConfig;
use super::error::{NetworkError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// One VM's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmSubnet {
    /// Position in the pool.
    pub index: u32,
    /// Network address (host bits zero).
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl VmSubnet {
    /// The host's address on the VM's TAP, the guest's gateway.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn guest_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }
}

/// Hands out VM subnets, lowest free index first.
#[derive(Debug, Clone)]
pub struct AddressPool {
    network: u32,
    prefix: u8,
    vm_prefix: u8,
    capacity: u32,
    in_use: BTreeSet<u32>,
}

impl AddressPool {
    pub fn new(config: &NetworkConfig) -> Result<Self> {
        let (network, prefix) = config.ipv4_pool;
        let vm_prefix = config.vm_prefix;
        let invalid = |reason| NetworkError::InvalidPool {
            network,
            prefix,
            vm_prefix,
            reason,
        };
        if prefix > 30 {
            return Err(invalid("the pool prefix must be at most 30"));
        }
        // A VM needs the network address, .1, .2 and the broadcast address.
        if vm_prefix > 30 {
            return Err(invalid("a VM subnet must be /30 or larger"));
        }
        if vm_prefix < prefix {
            return Err(invalid("a VM subnet cannot be larger than the pool"));
        }
        if u32::from(network) & !mask(prefix) != 0 {
            return Err(invalid("the pool address has host bits set"));
        }
        Ok(Self {
            network: u32::from(network),
            prefix,
            vm_prefix,
            capacity: 1u32 << (vm_prefix - prefix),
            in_use: BTreeSet::new(),
        })
    }

    /// How many VM subnets the pool holds.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Indices handed out, in order.
    pub fn in_use(&self) -> impl Iterator<Item = u32> + '_ {
        self.in_use.iter().copied()
    }

    /// The subnet at `index`, whether in use or not.
    pub fn subnet(&self, index: u32) -> Result<VmSubnet> {
        if index >= self.capacity {
            return Err(NetworkError::IndexOutOfRange {
                index,
                capacity: self.capacity,
            });
        }
        let size = 1u32 << (32 - self.vm_prefix);
        Ok(VmSubnet {
            index,
            network: Ipv4Addr::from(self.network + index * size),
            prefix: self.vm_prefix,
        })
    }

    /// The index of the VM subnet holding `ip`, if the pool holds it.
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let ip = u32::from(ip);
        if ip & mask(self.prefix) != self.network {
            return None;
        }
        Some((ip - self.network) >> (32 - self.vm_prefix))
    }

    /// Takes the free subnet with the lowest index.
    pub fn allocate(&mut self) -> Result<VmSubnet> {
        // The first gap in the sorted set, else the index after the last one.
        let index = self
            .in_use
            .iter()
            .enumerate()
            .find(|(position, index)| *position as u32 != **index)
            .map_or(self.in_use.len() as u32, |(position, _)| position as u32);
        if index >= self.capacity {
            return Err(NetworkError::PoolExhausted {
                capacity: self.capacity,
            });
        }
        self.reserve(index)
    }

    /// Takes the subnet at `index`: a restarted CRN re-adopts the VMs that still run.
    pub fn reserve(&mut self, index: u32) -> Result<VmSubnet> {
        let subnet = self.subnet(index)?;
        if !self.in_use.insert(index) {
            return Err(NetworkError::IndexTaken { index });
        }
        Ok(subnet)
    }

    /// Takes every index in `existing`; stops at the first one out of range or taken.
    pub fn reserve_all(&mut self, existing: impl IntoIterator<Item = u32>) -> Result<()> {
        for index in existing {
            self.reserve(index)?;
        }
        Ok(())
    }

    /// Gives the subnet back; false if it was not in use.
    pub fn release(&mut self, index: u32) -> bool {
        self.in_use.remove(&index)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(network: [u8; 4], prefix: u8, vm_prefix: u8) -> Result<AddressPool> {
        AddressPool::new(&NetworkConfig {
            ipv4_pool: (Ipv4Addr::from(network), prefix),
            vm_prefix,
            ..NetworkConfig::default()
        })
    }

    #[test]
    fn default_pool_gives_24s_with_host_1_and_guest_2() {
        let mut pool = AddressPool::new(&NetworkConfig::default()).unwrap();
        assert_eq!(pool.capacity(), 4096);
        let first = pool.allocate().unwrap();
        assert_eq!(first.index, 0);
        assert_eq!(first.network, Ipv4Addr::new(172, 16, 0, 0));
        assert_eq!(first.prefix, 24);
        assert_eq!(first.host_ip(), Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(first.guest_ip(), Ipv4Addr::new(172, 16, 0, 2));
        let second = pool.allocate().unwrap();
        assert_eq!(second.network, Ipv4Addr::new(172, 16, 1, 0));
        let last = pool.subnet(4095).unwrap();
        assert_eq!(last.network, Ipv4Addr::new(172, 31, 255, 0));
        assert_eq!(last.guest_ip(), Ipv4Addr::new(172, 31, 255, 2));
    }

    #[test]
    fn lowest_free_index_is_reused_after_release() {
        let mut pool = pool([10, 0, 0, 0], 16, 24).unwrap();
        for expected in 0..4 {
            assert_eq!(pool.allocate().unwrap().index, expected);
        }
        assert!(pool.release(1));
        assert!(!pool.release(1));
        assert_eq!(pool.allocate().unwrap().index, 1);
        assert_eq!(pool.allocate().unwrap().index, 4);
    }

    #[test]
    fn exhaustion_is_an_error_and_subnets_never_overlap() {
        let mut pool = pool([192, 168, 8, 0], 22, 24).unwrap();
        let subnets: Vec<_> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert!(matches!(
            pool.allocate(),
            Err(NetworkError::PoolExhausted { capacity: 4 })
        ));
        for (i, a) in subnets.iter().enumerate() {
            for b in &subnets[i + 1..] {
                assert!(!a.contains(b.network) && !b.contains(a.network));
                assert!(!a.contains(b.guest_ip()) && !b.contains(a.host_ip()));
            }
        }
    }

    #[test]
    fn reserve_readopts_running_vms_and_refuses_doubles() {
        let mut pool = pool([172, 16, 0, 0], 12, 24).unwrap();
        pool.reserve_all([0, 2, 5]).unwrap();
        assert!(matches!(
            pool.reserve(2),
            Err(NetworkError::IndexTaken { index: 2 })
        ));
        assert!(matches!(
            pool.reserve(4096),
            Err(NetworkError::IndexOutOfRange { .. })
        ));
        assert_eq!(pool.allocate().unwrap().index, 1);
        assert_eq!(pool.allocate().unwrap().index, 3);
        assert_eq!(pool.allocate().unwrap().index, 4);
        assert_eq!(pool.allocate().unwrap().index, 6);
        assert_eq!(pool.in_use().collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn index_of_finds_the_subnet_of_an_address() {
        let pool = pool([172, 16, 0, 0], 12, 24).unwrap();
        assert_eq!(pool.index_of(Ipv4Addr::new(172, 16, 3, 2)), Some(3));
        assert_eq!(pool.index_of(Ipv4Addr::new(172, 17, 0, 1)), Some(256));
        assert_eq!(pool.index_of(Ipv4Addr::new(10, 0, 0, 1)), None);
    }

    #[test]
    fn other_prefixes_work() {
        let mut pool = pool([10, 10, 0, 0], 24, 30).unwrap();
        assert_eq!(pool.capacity(), 64);
        pool.allocate().unwrap();
        let second = pool.allocate().unwrap();
        assert_eq!(second.network, Ipv4Addr::new(10, 10, 0, 4));
        assert_eq!(second.host_ip(), Ipv4Addr::new(10, 10, 0, 5));
        assert_eq!(second.guest_ip(), Ipv4Addr::new(10, 10, 0, 6));
    }

    #[test]
    fn invalid_pools_are_refused() {
        assert!(pool([172, 16, 0, 0], 12, 31).is_err());
        assert!(pool([172, 16, 0, 0], 24, 16).is_err());
        assert!(pool([172, 16, 0, 1], 12, 24).is_err());
    }
}
