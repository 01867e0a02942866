//! Types shared by our services that `aleph-types` lacks.
//!
//! - [`agent`]: the host↔guest channel API spoken between a CRN and the guest agent.
//! - [`auth`]: request signature schemes (`Aleph-EIP191-V1`).
//! - [`eip191`]: `personal_sign` over bytes and recovering its signer.
//! - [`hostname`]: the base32 host names of programs.
//! - [`scheduler`]: node registry, heartbeats, allocations, the scheduler's API.
//! - [`signing`]: building and signing messages ([`signing::Signer`]).

pub mod agent;
pub mod auth;
pub mod eip191;
pub mod hostname;
pub mod scheduler;
pub mod signing;
