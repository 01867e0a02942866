//! Host ports for port forwarding, handed out from the configured range.

use super::config::NetworkConfig;
use super::error::{NetworkError, Result};
use std::collections::BTreeSet;

#[derive(Debug, Clone)]
pub struct HostPorts {
    first: u16,
    last: u16,
    in_use: BTreeSet<u16>,
}

impl HostPorts {
    pub fn new(config: &NetworkConfig) -> Self {
        let (first, last) = config.port_range;
        Self {
            first,
            last,
            in_use: BTreeSet::new(),
        }
    }

    /// Takes the lowest free port.
    pub fn allocate(&mut self) -> Result<u16> {
        let port = (self.first..=self.last)
            .find(|port| !self.in_use.contains(port))
            .ok_or(NetworkError::PortsExhausted {
                first: self.first,
                last: self.last,
            })?;
        self.in_use.insert(port);
        Ok(port)
    }

    /// Marks a port taken (a forward re-adopted after a restart); false if it already
    /// was or lies outside the range.
    pub fn reserve(&mut self, port: u16) -> bool {
        (self.first..=self.last).contains(&port) && self.in_use.insert(port)
    }

    pub fn release(&mut self, port: u16) -> bool {
        self.in_use.remove(&port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_range_lowest_first() {
        let mut ports = HostPorts::new(&NetworkConfig {
            port_range: (24000, 24002),
            ..NetworkConfig::default()
        });
        assert!(ports.reserve(24001));
        assert!(!ports.reserve(24001));
        assert!(!ports.reserve(23999));
        assert_eq!(ports.allocate().unwrap(), 24000);
        assert_eq!(ports.allocate().unwrap(), 24002);
        assert!(matches!(
            ports.allocate(),
            Err(NetworkError::PortsExhausted { .. })
        ));
        assert!(ports.release(24001));
        assert_eq!(ports.allocate().unwrap(), 24001);
    }
}
