//! Request authentication schemes spoken between our services.
//!
//! - [`eip191_v1`]: `Authorization: Aleph-EIP191-V1 …`, a request signed by an EVM key
//!   (the scheduler's allocation pushes to CRNs, CRNs' heartbeats to the scheduler).
//! - [`operator`]: `X-SignedPubKey` + `X-SignedOperation`, a VM owner's wallet-authorised
//!   ephemeral P-256 key signing each control request (stop, reboot, logs… on a CRN).

pub mod eip191_v1;
pub mod operator;
