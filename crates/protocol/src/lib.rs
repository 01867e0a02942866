//! Types shared by our services that `aleph-types` lacks.
//!
//! - [`agent`]: the host↔guest channel API spoken between a CRN and the guest agent.

pub mod agent;
