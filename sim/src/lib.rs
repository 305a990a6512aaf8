//! hubbub-sim: a deterministic discrete-event world around the real
//! `hubbub-core` hub (the load generator for real servers is the
//! `hubbub-loadgen` crate).
//!
//! ## Layout
//! - [`rng`]: SplitMix64, the only randomness; every run is a function of one seed.
//! - [`trace`]: FNV-1a trace hash of every hub call and output (determinism check).
//! - [`network`]: virtual-time event queue, TCP-faithful pipes, the transport's bounded outbox.
//! - [`client`]: a client's end of a connection: how it behaves, what it observed.
//! - [`centrifuge_check`]: the oracle for Centrifugo clients (one reply per command, replies
//!   before pushes, contiguous offsets, presence, join/leave).
//! - [`broker`]: several nodes (one hub each) over a modelled broker (the Redis engine's
//!   contract): latency, reordering between channels, partitions, restarts, clients moving
//!   between nodes; order and recovery across nodes, presence converging, planted broker bugs.
//! - [`cluster`]: several shards and the bus between them, with Centrifugo and seed clients;
//!   channel order, presence and join/leave across shards, a bounded lossless bus, planted bugs;
//!   a store engine and crashes/restarts.
//! - [`store_model`]: the store engine the cluster runs: latency, slow commits, failures,
//!   crashes, planted store bugs.
//! - [`invariants`]: the oracle, an independent model of the chat rules, and every invariant.
//! - [`world`]: the hub driven exactly as the transport drives it; safety checks after
//!   every call, the liveness phase.
//! - [`scenario`]: seed → parameters → clients with behaviours and faults; [`scenario::run`].
//! - [`preset`]: named mixes (chat-heavy, churn-heavy, slow-consumer-heavy, mixed, sharded,
//!   restart-heavy) for soaks and for the test that every invariant fires.
//! - [`soak`]: the `hubbub-sim` command line for long runs (`hubbub-sim soak`: a billion inputs).
//! - [`replay`]: `hubbub-sim replay FILE`: a server's recorded inputs through a fresh hub,
//!   checked after every input, its outputs hashed against the server's.
//! - [`fuzz_targets`]: bodies of the cargo-fuzz targets, replayed by `cargo test`.
//!
//! **Architecture invariant:** nothing under the simulation reads a clock,
//! a thread or an unseeded random source; only [`soak`] reads the wall clock
//! (to pick a seed and to report speed).
#![forbid(unsafe_code)]

pub mod broker;
pub mod centrifuge_check;
pub mod client;
pub mod cluster;
pub mod fuzz_targets;
pub mod invariants;
pub mod network;
pub mod preset;
pub mod replay;
pub mod rng;
pub mod scenario;
pub mod soak;
pub mod store_model;
pub mod trace;
pub mod world;
