//! VM networking on the host: an IPv4 subnet per VM from a pool (and an IPv6 one where
//! an IPv6 pool is configured), a TAP device per VM, and nftables rules in a table of our own (NAT out, port forwarding in, isolation
//! between VMs and from the host's services).
//!
//! Forwarding must be on for VMs to reach anything beyond the host
//! (`net.ipv4.ip_forward=1`): the operator sets it, or the CRN calls
//! [`enable_ipv4_forwarding`] at start ([`VmNetwork::enable_forwarding`] also turns
//! IPv6 forwarding on where an IPv6 pool is configured). It is a host-wide setting, so
//! the library never sets it on its own.

pub mod config;
pub mod error;
pub mod firewall;
pub mod pool;
pub mod pool_v6;
pub mod ports;
pub mod relay;
pub mod rules;
pub mod shared;
pub mod tap;

pub use config::NetworkConfig;
pub use error::NetworkError;
pub use firewall::Firewall;
pub use pool::{AddressPool, VmSubnet};
pub use pool_v6::{Ipv6Pool, VmSubnetV6};
pub use ports::HostPorts;
pub use relay::LoopbackRelay;
pub use rules::{PortForward, Protocol};
pub use shared::SharedNetwork;

use crate::hypervisor::TapSpec;
use error::Result;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The name server VMs are given: the host's own resolver is not reachable from them
/// (they are kept off the host's services); a public one is.
pub const VM_NAMESERVER: Ipv4Addr = Ipv4Addr::new(9, 9, 9, 9);

/// The guest port every instance gets forwarded (SSH).
pub const SSH_PORT: u16 = 22;

/// One VM's network as set up on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    /// The VM's id (its item hash); names its firewall rules.
    pub vm_id: String,
    /// Index of its subnet in the pool.
    pub index: u32,
    pub tap: String,
    /// The host's address on the TAP: the guest's gateway.
    pub host_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
    pub prefix: u8,
    /// The guest's MAC address, `02:00:` then the guest's IPv4 address: locally
    /// administered and unique as long as the address is.
    pub mac: String,
    /// The IPv6 side, where the node has an IPv6 pool (records made without one have
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<VmNetV6>,
}

/// The IPv6 side of one VM's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetV6 {
    /// The host's address on the TAP: the guest's gateway.
    pub host_ip: Ipv6Addr,
    pub guest_ip: Ipv6Addr,
    pub prefix: u8,
}

impl VmNetV6 {
    pub fn from_subnet(subnet: &VmSubnetV6) -> Self {
        Self {
            host_ip: subnet.host_ip(),
            guest_ip: subnet.guest_ip(),
            prefix: subnet.prefix,
        }
    }

    /// The subnet's network address.
    pub fn network(&self) -> Ipv6Addr {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv6Addr::from(u128::from(self.guest_ip) & mask)
    }

    /// The subnet as `network/prefix`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }
}

impl VmNet {
    /// The network of the VM `vm_id` on subnet `index` (`network/prefix`); touches
    /// nothing.
    pub fn new(vm_id: &str, index: u32, network: Ipv4Addr, prefix: u8) -> Self {
        Self::from_subnet(
            vm_id,
            &VmSubnet {
                index,
                network,
                prefix,
            },
        )
    }

    pub fn from_subnet(vm_id: &str, subnet: &VmSubnet) -> Self {
        let guest_ip = subnet.guest_ip();
        let [a, b, c, d] = guest_ip.octets();
        Self {
            vm_id: vm_id.to_string(),
            index: subnet.index,
            tap: tap::tap_name(subnet.network),
            host_ip: subnet.host_ip(),
            guest_ip,
            prefix: subnet.prefix,
            mac: format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
            ipv6: None,
        }
    }

    /// The same network with `subnet` as its IPv6 side (`None`: IPv4 only).
    pub fn with_ipv6(self, subnet: Option<&VmSubnetV6>) -> Self {
        Self {
            ipv6: subnet.map(VmNetV6::from_subnet),
            ..self
        }
    }

    /// The subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv4Addr::from(u32::from(self.guest_ip) & mask)
    }

    /// The IPv4 subnet as `network/prefix`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network(), self.prefix)
    }

    /// What the hypervisor needs to plug the guest in.
    pub fn tap_spec(&self) -> TapSpec {
        TapSpec {
            tap: self.tap.clone(),
            mac: self.mac.clone(),
        }
    }
}

/// Sets VMs' networks up and tears them down: TAP, address, firewall rules.
#[derive(Debug, Clone)]
pub struct VmNetwork {
    config: NetworkConfig,
    ipv6: Option<Ipv6Pool>,
    firewall: Firewall,
}

impl VmNetwork {
    /// Checks the pools in `config` (the arithmetic only; nothing is touched).
    pub fn new(config: NetworkConfig) -> Result<Self> {
        AddressPool::new(&config)?;
        let ipv6 = Ipv6Pool::from_config(&config)?;
        let firewall = Firewall::new(&config);
        Ok(Self {
            config,
            ipv6,
            firewall,
        })
    }

    /// The network of VM `vm_id` on subnet `index` of the pools (IPv6 too where
    /// configured); touches nothing.
    pub fn vm_net(&self, vm_id: &str, index: u32) -> Result<VmNet> {
        let subnet = AddressPool::new(&self.config)?.subnet(index)?;
        let subnet_v6 = self.ipv6.map(|pool| pool.subnet(index)).transpose()?;
        Ok(VmNet::from_subnet(vm_id, &subnet).with_ipv6(subnet_v6.as_ref()))
    }

    /// Turns forwarding on in the calling thread's network namespace: IPv4 always,
    /// IPv6 only where an IPv6 pool is configured (see [`enable_ipv6_forwarding`]).
    pub fn enable_forwarding(&self) -> Result<()> {
        enable_ipv4_forwarding()?;
        if self.ipv6.is_some() {
            enable_ipv6_forwarding()?;
        }
        Ok(())
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    /// Creates our nftables table and base chains if missing; call once at start.
    pub async fn ensure_base(&self) -> Result<()> {
        self.firewall.ensure_base().await
    }

    /// Wires the VM `vm_id` on subnet `index` (from an [`AddressPool`]): TAP up with
    /// the host address, firewall rules in. Running it again for a VM that is already
    /// set up (a restarted CRN) leaves it set up once. On failure nothing new stays.
    pub async fn setup(&self, vm_id: &str, index: u32) -> Result<VmNet> {
        check_vm_id(vm_id)?;
        let vm = self.vm_net(vm_id, index)?;
        let existed = tap::exists(&vm.tap).await?;
        tap::create(&vm.tap)?;
        let wired = async {
            tap::configure_host_side(&vm.tap, vm.host_ip, vm.prefix).await?;
            if let Some(v6) = &vm.ipv6 {
                tap::configure_host_side_v6(&vm.tap, v6.host_ip, v6.prefix).await?;
            }
            self.firewall.add_vm(&vm).await
        };
        if let Err(error) = wired.await {
            if !existed {
                // Best effort: the error that matters is the first one.
                let _ = tap::delete(&vm.tap).await;
            }
            return Err(error);
        }
        Ok(vm)
    }

    /// Forwards `host_port` to `guest_port` on the VM.
    pub async fn add_forward(
        &self,
        vm: &VmNet,
        protocol: Protocol,
        host_port: u16,
        guest_port: u16,
    ) -> Result<()> {
        self.firewall
            .add_forward(vm, protocol, host_port, guest_port)
            .await
    }

    /// Removes the VM's rules (port forwards included) and its TAP. Missing pieces are
    /// not an error, so this also cleans up after a half-done setup.
    pub async fn teardown(&self, vm: &VmNet) -> Result<()> {
        self.firewall.remove_vm(&vm.vm_id).await?;
        tap::delete(&vm.tap).await?;
        Ok(())
    }
}

/// Turns IPv4 forwarding on in the calling thread's network namespace.
pub fn enable_ipv4_forwarding() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    std::fs::write(PATH, "1").map_err(|source| NetworkError::Io {
        what: format!("write 1 to {PATH}"),
        source,
    })
}

/// Turns IPv6 forwarding on for every interface in the calling thread's network
/// namespace (`net.ipv6.conf.all.forwarding=1`).
///
/// On a host that configures its own uplink by SLAAC this also stops the kernel
/// accepting router advertisements (it is a router now), so its IPv6 default route
/// expires, unless the uplink has `accept_ra=2`.
pub fn enable_ipv6_forwarding() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    std::fs::write(PATH, "1").map_err(|source| NetworkError::Io {
        what: format!("write 1 to {PATH} (is IPv6 disabled on this host?)"),
        source,
    })
}

fn check_vm_id(vm_id: &str) -> Result<()> {
    let valid = (1..=80).contains(&vm_id.len())
        && vm_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(NetworkError::InvalidVmId(vm_id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_net_gives_the_hypervisor_its_tap_and_a_mac_from_the_address() {
        let vm = VmNet::new("abc", 7, Ipv4Addr::new(172, 16, 7, 0), 24);
        assert_eq!(vm.tap, "vmac100700");
        assert_eq!(vm.host_ip, Ipv4Addr::new(172, 16, 7, 1));
        assert_eq!(vm.guest_ip, Ipv4Addr::new(172, 16, 7, 2));
        assert_eq!(vm.network(), Ipv4Addr::new(172, 16, 7, 0));
        assert_eq!(
            vm.tap_spec(),
            TapSpec {
                tap: "vmac100700".to_string(),
                mac: "02:00:ac:10:07:02".to_string()
            }
        );
    }

    #[test]
    fn vm_net_has_an_ipv6_side_on_the_same_index_where_configured() {
        let config = NetworkConfig {
            ipv6_pool: Some(("fd00:a1e::".parse().unwrap(), 64)),
            ..NetworkConfig::default()
        };
        let vm = VmNetwork::new(config).unwrap().vm_net("abc", 7).unwrap();
        assert_eq!(vm.guest_ip, Ipv4Addr::new(172, 16, 7, 2));
        let v6 = vm.ipv6.unwrap();
        assert_eq!(v6.host_ip, "fd00:a1e::71".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.guest_ip, "fd00:a1e::72".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.prefix, 124);
        assert_eq!(v6.network(), "fd00:a1e::70".parse::<Ipv6Addr>().unwrap());

        let network = VmNetwork::new(NetworkConfig::default()).unwrap();
        assert_eq!(network.vm_net("abc", 7).unwrap().ipv6, None);
    }

    #[test]
    fn records_without_an_ipv6_side_still_load() {
        let vm = VmNet::new("abc", 7, Ipv4Addr::new(172, 16, 7, 0), 24);
        let json = serde_json::to_value(&vm).unwrap();
        assert!(json.get("ipv6").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<VmNet>(json).unwrap(), vm);
    }

    #[test]
    fn too_small_an_ipv6_pool_is_refused_at_start() {
        let config = NetworkConfig {
            ipv6_pool: Some(("fd00::".parse().unwrap(), 120)),
            ..NetworkConfig::default()
        };
        assert!(matches!(
            VmNetwork::new(config),
            Err(NetworkError::InvalidPoolV6 { .. })
        ));
    }

    #[test]
    fn vm_ids_that_could_break_a_comment_are_refused() {
        assert!(check_vm_id(&"a".repeat(64)).is_ok());
        assert!(check_vm_id("").is_err());
        assert!(check_vm_id("a b").is_err());
        assert!(check_vm_id("a\"b").is_err());
        assert!(check_vm_id(&"a".repeat(81)).is_err());
    }
}
