//! The Compute Resource Node: programs on demand and persistent ([`pool`],
//! [`persistent`]), instances ([`instances`], their disks in [`instance`] and network in
//! [`network`]), what they are made from ([`resources`], [`images`]), the hypervisor
//! drivers ([`hypervisor`]) and the guest channel ([`channel`]), served by [`api`].
pub mod about;
pub mod api;
pub mod channel;
pub mod config;
pub mod control;
pub mod error;
pub mod execution;
pub mod heartbeat;
pub mod hypervisor;
pub mod images;
pub mod instance;
pub mod instances;
pub mod network;
pub mod persistent;
pub mod pool;
pub mod records;
pub mod resources;
mod server;

pub use config::CrnConfig;
pub use server::{CrnHandle, start, start_with_images};
