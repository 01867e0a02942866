//! placeholder
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
