//! writ-core: the pure heart of writ.
//!
//! Everything here is deterministic: no I/O, no async, no clock reads. Time,
//! keys and configuration arrive as parameters, so the server, the CLI's
//! offline `policy test` and the benchmarks all run the very same checks.

pub mod b64;
pub mod claims;
pub mod issuer;
pub mod jwt;
pub mod narrow;
pub mod policy;
pub mod token;
