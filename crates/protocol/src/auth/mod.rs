//! Request authentication schemes spoken between our services.
//!
//! - [`eip191_v1`]: `Authorization: Aleph-EIP191-V1 …`, a request signed by an EVM key
//!   (the scheduler's allocation pushes to CRNs, CRNs' heartbeats to the scheduler).

pub mod eip191_v1;
