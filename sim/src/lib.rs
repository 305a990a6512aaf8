//! hubbub-sim: a deterministic discrete-event world around the real
//! `hubbub-core` hub, plus a load generator for real servers.
#![forbid(unsafe_code)]

pub mod fuzz_targets;
pub mod load;
pub mod soak;
