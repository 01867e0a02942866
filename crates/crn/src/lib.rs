//! placeholder
pub mod channel;
pub mod hypervisor;
pub mod images;
