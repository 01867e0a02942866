//! Types shared by our services that `aleph-types` lacks.
//!
//! - [`agent`]: the host↔guest channel API spoken between a CRN and the guest agent.
//! - [`hostname`]: the base32 host names of programs.
//! - [`signing`]: building and signing messages ([`signing::Signer`]).

pub mod agent;
pub mod hostname;
pub mod signing;
