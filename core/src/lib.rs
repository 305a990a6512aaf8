//! # hubbub-core
//!
//! The chat hub as a pure, deterministic state machine: no IO, no clock, no
//! randomness, no threads. Drivers (the `hubbub` server, the `hubbub-sim`
//! simulator, the fuzzers) feed it [`Input`]s stamped with a [`Timestamp`] and
//! carry out the [`Output`]s it produces. See [`Hub`] for the driving contract.
//!
//! ## Layout
//! - [`hub`]: the state machine: membership, presence, broadcast, heartbeat, eviction.
//! - [`codec`]: per-connection wire formats (relay, seed JSON, Centrifugo): decode limits, encode once.
//! - [`centrifuge`]: the Centrifugo client protocol (JSON): commands in, replies and pushes out.
//! - [`channel`]: channel names, namespaces and their options.
//! - [`outbox`]: the per-connection queue policy (bound, presence conflation, flush on
//!   close), run by the server's writers and the simulation alike.
//! - [`api`]: the server HTTP API's commands, decoded from JSON, and the hub's replies.
//! - [`bus`]: what crosses shards: joins, leaves, publications and queries to a channel's
//!   home shard, and its deliveries back, once per shard.
//! - [`store`]: the engine boundary: streams made durable by the driver's engine, and
//!   [`store::MemoryStore`], the in-memory engine.
//! - [`auth`]: token claims and the [`auth::TokenVerifier`] boundary (no cryptography here).
//! - [`route`]: handshake validation: path + query → [`Route`] or an HTTP error.
//! - [`close`]: why connections end and the close codes for it.
//! - [`rate`]: token buckets on virtual time (command, publish and presence rates).
//! - [`config`], [`time`]: limits and time as plain values.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bus;
pub mod centrifuge;
pub mod channel;
pub mod close;
pub mod codec;
pub mod config;
pub mod hub;
pub mod outbox;
pub mod rate;
pub mod record;
pub mod route;
pub mod store;
pub mod time;

pub use api::{ApiCommand, ApiReply, ApiRequest};
pub use auth::{Claims, TokenError, TokenVerifier, Tokens};
pub use bus::{BusMessage, ShardId};
pub use channel::{ChannelName, ChannelOptions, ChannelPattern, DataFormat, Namespaces};
pub use close::{CloseCode, CloseReason};
pub use codec::{encode_seed, ClientMessage, Codec, Frame, MessageKind, SeedMessage, SeedType};
pub use config::Config;
pub use hub::{ClientId, ConfigError, ConnId, Hub, Input, Output, RoomId, Stats};
pub use rate::Rate;
pub use route::{route, HandshakeError, Name, Route};
pub use store::{
    MemoryStore, PresenceChange, RemoteMember, StoreError, StoreEvent, StoreRequest, StreamLimits,
    StreamState,
};
pub use time::Timestamp;
