//! Every limit the hub enforces lives here.

use std::time::Duration;

use crate::auth::Tokens;
use crate::bus::ShardId;
use crate::channel::{Namespaces, MAX_CHANNEL_BYTES};
use crate::rate::Rate;

/// Hub limits. The defaults are the seed tutorials' constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A ping is sent this long after the connection opened, and every interval after.
    pub ping_interval: Duration,
    /// A connection with no pong for this long (since open or its last pong) is closed.
    pub pong_timeout: Duration,
    /// Largest message a client may send, in bytes (after reassembly of fragments).
    pub max_message_bytes: usize,
    /// Most messages waiting in one connection's outbound queue (enforced by
    /// the driver, which reports a full queue with `Input::QueueFull`).
    pub send_queue: usize,
    /// Most open connections; an `Open` beyond it is closed at once with 1013.
    pub max_connections: usize,
    /// Centrifugo protocol: largest incoming frame, in bytes (1009 beyond).
    pub max_command_bytes: usize,
    /// Centrifugo protocol: a connection that has not sent `connect` this
    /// long after opening is closed with 3502.
    pub connect_timeout: Duration,
    /// Centrifugo protocol: most channels one connection may be subscribed
    /// to (106 beyond).
    pub channel_limit: usize,
    /// Longest channel name in bytes (107 beyond).
    pub max_channel_bytes: usize,
    /// Streams (epoch, offsets, window) a home keeps for channels whose
    /// last member left, so a client that comes back recovers; the least
    /// recently emptied is forgotten first. 0 forgets a stream with its
    /// last member.
    pub idle_streams: usize,
    /// Publications a home may have waiting for its store at once (appends
    /// sent and not yet answered); beyond it publishes get error 100
    /// (temporary) and seed chat lines are dropped and counted.
    pub store_queue: usize,
    /// Channel options: the default namespace's and the named ones.
    pub namespaces: Namespaces,
    /// Entropy from the driver, from which client ids and channel epochs
    /// are derived (the core has no random source of its own). Different
    /// on every server start, so a restarted server never repeats an epoch;
    /// fixed in simulations, so they replay.
    pub entropy: u64,
    /// The server version reported in the Centrifugo connect reply.
    pub server_version: String,
    /// How many shards the process runs (each with its own hub), and which
    /// one this hub is. A channel's home is a hash of its name over `shards`.
    pub shards: u16,
    pub shard: ShardId,
    /// Who checks tokens' signatures. Without a verifier (the default)
    /// tokens are ignored and every connection is let in as before.
    pub tokens: Tokens,
    /// With a verifier: whether a Centrifugo client may connect without a
    /// token (as an anonymous user). Without, such a `connect` is closed
    /// with 3501.
    pub allow_anonymous: bool,
    /// Centrifugo protocol: how long past its token's `exp` a connection
    /// that has not sent `refresh` stays open before it is closed with 3005.
    pub expired_close_delay: Duration,
    /// Commands one connection may send (Centrifugo commands, seed chat
    /// lines): a token bucket. Over it a command gets error 111 (a seed
    /// line is dropped); a connection that keeps flooding is closed (3013,
    /// seed 1008). `None`: unlimited.
    pub command_rate: Option<Rate>,
    /// Publications one user may make across its connections on a shard
    /// (Centrifugo `publish` gets 111 beyond it; seed lines are dropped).
    pub user_publish_rate: Option<Rate>,
    /// Most connections one user may hold at once, across shards (counted
    /// by the user's home shard; Centrifugo 3504, seed 1008). 0: unlimited.
    pub user_connection_limit: usize,
    /// `online_users` snapshots a room sends per second: under a join and
    /// leave storm the snapshots beyond it wait and go out as one, exact,
    /// when the storm ends (notices are not held back). `None`: unlimited.
    pub presence_rate: Option<Rate>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
            max_message_bytes: 512,
            send_queue: 256,
            max_connections: 100_000,
            max_command_bytes: 65_536,
            connect_timeout: Duration::from_secs(10),
            channel_limit: 128,
            max_channel_bytes: MAX_CHANNEL_BYTES,
            idle_streams: 1_000,
            store_queue: 10_000,
            namespaces: Namespaces::default(),
            entropy: 0,
            server_version: concat!("hubbub ", env!("CARGO_PKG_VERSION")).to_owned(),
            shards: 1,
            shard: ShardId(0),
            tokens: Tokens::default(),
            allow_anonymous: false,
            expired_close_delay: Duration::from_secs(25),
            command_rate: Some(Rate::new(200, 400)),
            user_publish_rate: Some(Rate::new(500, 1_000)),
            user_connection_limit: 1_000,
            presence_rate: Some(Rate::new(20, 40)),
        }
    }
}
