//! The node's VM network, one for programs and instances: one configuration, one pool
//! of subnets (so neither ever takes the other's), the host set up once. Instances wire
//! themselves with [`SharedNetwork::vm_network`] (their subnet is kept in their record,
//! their ports forwarded); a program that asks for the internet (`environment.internet`)
//! is plugged in for as long as its VM runs: a TAP device, NAT out and the isolation
//! rules (no other VM, none of the host's own services), no port forwarded in (requests
//! reach it through its agent). A program that does not ask gets no network card.

use super::{AddressPool, NetworkConfig, NetworkError, VM_NAMESERVER, VmNet, VmNetwork, VmSubnet};
use crate::error::ProgramError;
use aleph_protocol::agent::NetworkConfig as AgentNetwork;
use std::sync::Mutex;

/// The guest's interface: the VM's only network card.
const GUEST_INTERFACE: &str = "eth0";

pub struct SharedNetwork {
    network: VmNetwork,
    /// The node's subnets, handed out to programs and instances alike.
    subnets: Mutex<AddressPool>,
    /// Our nftables table and base chains exist, and forwarding is on.
    ready: tokio::sync::OnceCell<()>,
}

impl SharedNetwork {
    /// Checks the pools of `config`; touches nothing on the host until a VM needs it.
    pub fn new(config: NetworkConfig) -> Result<Self, NetworkError> {
        let subnets = AddressPool::new(&config)?;
        Ok(Self {
            network: VmNetwork::new(config)?,
            subnets: Mutex::new(subnets),
            ready: tokio::sync::OnceCell::new(),
        })
    }

    /// Sets VMs' networks up and tears them down, with the node's configuration.
    pub fn vm_network(&self) -> &VmNetwork {
        &self.network
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AddressPool> {
        self.subnets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free subnet, for a program or an instance.
    pub fn allocate(&self) -> Result<VmSubnet, NetworkError> {
        self.lock().allocate()
    }

    /// Takes back subnet `index` of a VM an earlier node process left (false: it is
    /// taken already).
    pub fn reserve(&self, index: u32) -> bool {
        self.lock().reserve(index).is_ok()
    }

    /// Gives subnet `index` back.
    pub fn release(&self, index: u32) {
        self.lock().release(index);
    }

    /// Turns forwarding on and makes our nftables table and base chains, once: before
    /// the first VM (program or instance) is wired.
    pub async fn ensure_ready(&self) -> Result<(), ProgramError> {
        self.ready
            .get_or_try_init(|| async {
                self.network.enable_forwarding()?;
                self.network.ensure_base().await
            })
            .await
            .map(|_| ())
            .map_err(|e| ProgramError::internal(format!("host network: {e}")))
    }

    /// Wires program execution `id`: a subnet, its TAP and rules. Nothing stays on
    /// failure.
    pub async fn plug(&self, id: &str) -> Result<VmNet, ProgramError> {
        self.ensure_ready().await?;
        let subnet = self
            .allocate()
            .map_err(|e| ProgramError::NoCapacity(e.to_string()))?;
        match self.network.setup(id, subnet.index).await {
            Ok(net) => Ok(net),
            Err(e) => {
                self.release(subnet.index);
                Err(ProgramError::internal(format!("network: {e}")))
            }
        }
    }

    /// Removes the execution's TAP and rules and gives its subnet back.
    pub async fn unplug(&self, net: &VmNet) {
        if let Err(e) = self.network.teardown(net).await {
            tracing::warn!("execution {}: network not torn down: {e}", net.vm_id);
        }
        self.release(net.index);
    }
}

/// What the guest agent sets up for `net`.
pub fn agent_network(net: &VmNet) -> AgentNetwork {
    AgentNetwork {
        interface: GUEST_INTERFACE.into(),
        ipv4: Some(format!("{}/{}", net.guest_ip, net.prefix)),
        ipv4_gateway: Some(net.host_ip.to_string()),
        ipv6: net.ipv6.map(|v6| format!("{}/{}", v6.guest_ip, v6.prefix)),
        ipv6_gateway: net.ipv6.map(|v6| v6.host_ip.to_string()),
        dns_servers: vec![VM_NAMESERVER.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_gets_the_guest_side_of_the_subnet() {
        let network = VmNetwork::new(NetworkConfig::default()).unwrap();
        let net = network.vm_net("0123456789abcdef", 3).unwrap();
        let agent = agent_network(&net);
        assert_eq!(agent.interface, "eth0");
        assert_eq!(agent.ipv4, Some(format!("{}/{}", net.guest_ip, net.prefix)));
        assert_eq!(agent.ipv4_gateway, Some(net.host_ip.to_string()));
        assert_eq!(agent.dns_servers, ["9.9.9.9"]);
    }

    #[test]
    fn programs_and_instances_share_one_pool() {
        let shared = SharedNetwork::new(NetworkConfig::default()).unwrap();
        let taken = shared.allocate().unwrap();
        // Adopting an execution on a subnet an instance holds fails.
        assert!(!shared.reserve(taken.index));
        shared.release(taken.index);
        assert!(shared.reserve(taken.index));
        assert_ne!(shared.allocate().unwrap().index, taken.index);
    }
}
