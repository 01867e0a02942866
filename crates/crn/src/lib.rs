//! placeholder
pub mod channel;
pub mod hypervisor;
