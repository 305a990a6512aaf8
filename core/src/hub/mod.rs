//! The hub: every chat rule, as a deterministic state machine, one per shard.
//!
//! - this file: ids, inputs and outputs, the [`Hub`] and its driving
//!   contract, its public queries, and the routing of bus messages;
//! - [`home`]: the home side: a channel's members on every shard, its
//!   stream position, publications encoded once per protocol, queries;
//! - [`session`]: the connection side: each connection's session (codec,
//!   subscriptions, heartbeat), the Centrifugo commands, and the fan-out
//!   of a home's deliveries to this shard's members.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::bus::{Audience, BusMessage, Delivery, PubPayload, Query, Recovery, ShardId, Stored};
use crate::centrifuge::{self, ClientInfo, Command, ErrorCode, Line};
use crate::channel::{self, ChannelName, ChannelOptions};
use crate::close::CloseReason;
use crate::codec::{encode_seed, ClientMessage, Codec, Frame, SeedType};
use crate::config::Config;
use crate::route::{Name, Route};
use crate::store::{StoreEvent, StoreRequest};
use crate::time::Timestamp;

mod api;
mod home;
mod session;

use home::{HomeMember, Room};
use session::{Conn, LocalRoom};

/// A connection, named by the driver. Ids must not be reused while the hub
/// may still know the old connection; the transport counts up from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A connection's client id, as Centrifugo clients and publication infos
/// show it: a UUID-shaped string derived from the driver's entropy and the
/// connection id (unique per connection, different on every server start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u128);

impl ClientId {
    /// The id of `conn` under `entropy`: a bijection of the connection id,
    /// so two connections never share one.
    #[must_use]
    pub fn derive(entropy: u64, conn: ConnId) -> Self {
        let hi = mix64(conn.0 ^ entropy);
        let lo = mix64(hi ^ entropy.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15);
        // Version 4, variant 1 bits, so it reads as a random UUID.
        let v = (u128::from(hi) << 64) | u128::from(lo);
        let v = (v & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
        Self(v)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

/// Streams the in-memory engine keeps when the hub runs it itself; the
/// least recently used is forgotten beyond it (a new epoch if it returns).
pub const INLINE_STREAMS: usize = 100_000;

/// SplitMix64's finaliser: a bijection that scatters bits.
#[must_use]
pub const fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A room, numbered by the hub in creation order (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId(pub u64);

/// Everything that can happen to the hub. Inputs about a connection the hub
/// no longer knows are ignored: the driver may race a close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A WebSocket handshake completed for `route`.
    Open { conn: ConnId, route: Route },
    /// A complete (reassembled) data message from the client.
    Message { conn: ConnId, frame: Frame },
    /// The client answered a ping.
    Pong { conn: ConnId },
    /// The driver could not queue an output for `conn`: its queue is full.
    QueueFull { conn: ConnId },
    /// The driver ended, or must end, the connection: the peer closed or
    /// vanished, a write stalled, or the WebSocket layer rejected a frame.
    Disconnect { conn: ConnId, reason: CloseReason },
    /// The server is stopping: close everyone with 1001.
    Shutdown,
}

/// What the hub asks the driver to do, drained with [`Hub::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Queue `frame` for `conn`. When `presence` is set, the frame is a
    /// presence snapshot (`online_users`) of that room: a newer snapshot for
    /// the same room makes an unsent older one obsolete, so the driver may
    /// drop the older one instead of writing both.
    Send {
        conn: ConnId,
        frame: Frame,
        presence: Option<RoomId>,
    },
    /// Send a WebSocket ping to `conn`.
    Ping { conn: ConnId },
    /// The hub is done with `conn`: send a close frame with `reason.code()`
    /// (unless one was already exchanged), flush what is queued where the
    /// reason allows, and drop the socket. Exactly one per connection; no
    /// output for `conn` follows it.
    Close { conn: ConnId, reason: CloseReason },
}

/// Why a [`Config`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Pings must come more often than the pong deadline, or live clients are closed.
    PingIntervalNotBelowPongTimeout,
    ZeroDuration,
    ZeroLimit,
    ShardOutOfRange,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PingIntervalNotBelowPongTimeout => {
                "ping interval must be shorter than pong timeout (a live client could not answer in time)"
            }
            Self::ZeroDuration => {
                "ping interval, pong timeout and connect timeout must be greater than zero"
            }
            Self::ZeroLimit => "max message bytes, max command bytes, send queue, max connections, channel limit, max channel bytes, shards and store queue must be at least 1",
            Self::ShardOutOfRange => "the hub's shard must be below the number of shards",
        })
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the limits make sense together.
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ping_interval.is_zero()
            || self.pong_timeout.is_zero()
            || self.connect_timeout.is_zero()
        {
            Err(ConfigError::ZeroDuration)
        } else if self.ping_interval >= self.pong_timeout {
            Err(ConfigError::PingIntervalNotBelowPongTimeout)
        } else if self.max_message_bytes == 0
            || self.max_command_bytes == 0
            || self.send_queue == 0
            || self.max_connections == 0
            || self.channel_limit == 0
            || self.max_channel_bytes == 0
            || self.shards == 0
            || self.store_queue == 0
        {
            Err(ConfigError::ZeroLimit)
        } else if self.shard.0 >= self.shards {
            Err(ConfigError::ShardOutOfRange)
        } else {
            Ok(())
        }
    }
}

/// Counters for metrics and tests. Monotonic except the gauges `connections` and `rooms`
/// (rooms and channels are one: `rooms` counts channels with members).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub rooms: usize,
    pub opened: u64,
    pub messages_in: u64,
    pub sends: u64,
    pub pings: u64,
    /// Centrifugo commands handled (every command of every frame).
    pub commands: u64,
    /// Centrifugo commands answered with an error reply.
    pub command_errors: u64,
    /// Messages sent to and received from other shards.
    pub bus_out: u64,
    pub bus_in: u64,
    /// Publications made durable by the store (appends answered `Ok`).
    pub store_appends: u64,
    /// Appends and opens the store answered with an error.
    pub store_failures: u64,
    /// Publications refused because `store_queue` appends were waiting.
    pub store_rejected: u64,
    /// Streams opened (loaded from the store).
    pub store_opens: u64,
    /// Commands (Centrifugo commands, seed lines) refused by `command_rate`.
    pub commands_limited: u64,
    /// Publications refused by `user_publish_rate`.
    pub publishes_limited: u64,
    /// `online_users` snapshots held back by `presence_rate` (each storm
    /// ends with one exact snapshot).
    pub presence_deferred: u64,
    /// Closes by [`CloseReason`], indexed like [`CloseReason::ALL`].
    pub closes: [u64; CloseReason::ALL.len()],
}

impl Stats {
    #[must_use]
    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.closes[i])
    }
}

/// Members in join order: a vector sorted by join position. Joins come in
/// order, so adding is a push; a one-member channel costs one small
/// allocation (a map's node would cost a dozen entries' worth).
#[derive(Debug)]
struct JoinOrder<T> {
    entries: Vec<(u64, T)>,
}

impl<T> JoinOrder<T> {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    fn insert(&mut self, seq: u64, value: T) {
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(1);
        }
        match self.entries.last() {
            Some(&(last, _)) if last > seq => {
                let at = self.entries.partition_point(|(s, _)| *s < seq);
                self.entries.insert(at, (seq, value));
            }
            _ => self.entries.push((seq, value)),
        }
    }

    fn remove(&mut self, seq: u64) -> Option<T> {
        let at = self.entries.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        let (_, value) = self.entries.remove(at);
        if self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
        Some(value)
    }

    fn position(&self, pred: impl Fn(&T) -> bool) -> Option<u64> {
        self.entries.iter().find(|(_, v)| pred(v)).map(|(s, _)| *s)
    }

    fn values(&self) -> impl Iterator<Item = &T> + Clone {
        self.entries.iter().map(|(_, v)| v)
    }

    /// (join position, value), in join order.
    fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.entries.iter().map(|(s, v)| (*s, v))
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// The chat hub as a sans-IO state machine: one per shard.
///
/// The hub never reads a clock, opens a socket or spawns a thread: the
/// driver feeds it inputs stamped with the current time and carries out the
/// outputs. The driving contract:
///
/// 1. Call [`Hub::handle_input`] for every event (connection opened, message
///    read, pong, queue full, disconnect, shutdown), and
///    [`Hub::handle_bus`] for every message from another shard.
/// 2. After each call, drain [`Hub::poll_output`] until `None`, performing
///    each [`Output`]. If queueing a `Send` fails because the connection's
///    queue is full, report [`Input::QueueFull`] (after draining). Drain
///    [`Hub::poll_bus`] too and deliver each message to its shard, in order
///    (per receiving shard, messages must arrive in the order they were
///    polled).
/// 3. Arrange to call [`Hub::handle_timeout`] at [`Hub::poll_timeout`]
///    (re-read it after every call); early or repeated calls are harmless.
///
/// With one shard (the default) the hub is the home of every channel and
/// [`Hub::poll_bus`] is always empty.
///
/// A `Ping` output is a WebSocket ping, except on a Centrifugo connection,
/// where the driver writes the protocol's ping message
/// ([`centrifuge::PING`]) instead. On a Centrifugo connection, consecutive
/// `Send`s may share one WebSocket frame, joined by `\n`.
///
/// The same inputs at the same times always give the same outputs, byte for byte.
///
/// ```
/// use hubbub_core::{Config, ConnId, Hub, Input, Output, Route, Timestamp};
///
/// let mut hub = Hub::new(Config::default());
/// let now = Timestamp::from_millis(0);
/// hub.handle_input(now, Input::Open { conn: ConnId(1), route: Route::Relay });
/// hub.handle_input(now, Input::Message { conn: ConnId(1), frame: hubbub_core::Frame::text("hi") });
/// let mut sent = Vec::new();
/// while let Some(out) = hub.poll_output() {
///     if let Output::Send { conn, frame, .. } = out {
///         sent.push((conn, frame.payload));
///     }
/// }
/// assert_eq!(sent, vec![(ConnId(1), bytes::Bytes::from("hi"))]);
/// assert!(hub.poll_bus().is_none(), "one shard: its own home");
/// // The first heartbeat is due one ping interval after the open.
/// assert_eq!(hub.poll_timeout(), Some(Timestamp::from_millis(54_000)));
/// ```
#[derive(Debug)]
pub struct Hub {
    config: Config,
    conns: BTreeMap<ConnId, Conn>,
    /// Channels with members on this shard.
    local: BTreeMap<ChannelName, LocalRoom>,
    /// Channels whose home this shard is (with members, or idle streams).
    rooms: BTreeMap<ChannelName, Box<Room>>,
    /// Homed channels without members whose streams are kept, oldest first.
    idle: BTreeSet<(u64, ChannelName)>,
    next_idle: u64,
    /// One entry per connection: when its heartbeat next needs attention.
    timers: BTreeSet<(Timestamp, ConnId)>,
    /// Rooms homed here whose `online_users` snapshot is held back by
    /// `presence_rate`, and when it may go.
    presence_timers: BTreeSet<(Timestamp, ChannelName)>,
    /// Named users with connections on this shard: how many, and their
    /// publication budget (`user_connection_limit`, `user_publish_rate`).
    users: BTreeMap<Name, session::UserEntry>,
    /// Users whose home this shard is: their connections on every shard,
    /// sorted (`user_connection_limit` is counted here, exactly; with one
    /// shard `users` counts them and this stays empty). A `Vec`
    /// grown one at a time: most users hold one connection, and a
    /// one-element `BTreeSet` allocates a whole 192-byte node.
    user_homes: BTreeMap<Name, Vec<(ShardId, ConnId)>>,
    outputs: VecDeque<Output>,
    /// Messages to other shards.
    bus_out: VecDeque<(ShardId, BusMessage)>,
    /// Messages to this shard itself, handled before a call returns.
    bus_self: VecDeque<BusMessage>,
    /// Requests for the store engine.
    store_out: VecDeque<StoreRequest>,
    /// Channels whose streams are being opened, with the messages to their
    /// home that wait for it, in arrival order.
    loading: BTreeMap<ChannelName, Vec<BusMessage>>,
    /// Publications waiting for the store, by append token.
    appending: BTreeMap<u64, home::Appending>,
    next_token: u64,
    /// The in-memory engine, when the hub serves its own store requests
    /// (the default); `None` when the driver runs an engine.
    inline_store: Option<crate::store::MemoryStore>,
    /// Whether the engine delivers other nodes' publications
    /// ([`Hub::with_delivering_store`]): then the hub says which channels
    /// it stops following.
    delivering: bool,
    /// Channels whose rooms went away since the driver last asked, to be
    /// unfollowed (an `Open` queued since takes its channel out).
    unfollow: BTreeSet<ChannelName>,
    /// Channels without a stream whose rooms came to be since the driver
    /// last asked, to be followed (streams are followed from their `Open`).
    follow: BTreeSet<ChannelName>,
    /// Publications without a position for the other nodes (a delivering
    /// engine), in order; at most `store_queue`.
    broadcasts: VecDeque<(ChannelName, Stored)>,
    /// Local joins and leaves for the other nodes (a delivering engine), in
    /// order; drained with the other outputs after every call.
    presence_changes: VecDeque<crate::store::PresenceChange>,
    /// Members on other nodes reported while their channel's stream was
    /// first being opened: they join the room before the members waiting
    /// for it (one snapshot per channel loading).
    early_members: BTreeMap<ChannelName, Vec<crate::store::RemoteMember>>,
    /// The channel whose waiting messages are being carried out after its
    /// stream was read: a leave among them does not end the room (a join
    /// behind it would find no room, and its stream unread).
    settling: Option<ChannelName>,
    /// Joins that made their stream be read again (at most once each).
    reread: BTreeSet<(ChannelName, ConnId)>,
    /// Publications delivered while their channel's stream was being
    /// opened (with their epoch), applied once it is: at most
    /// `MAX_PUBLICATIONS` per channel.
    early: BTreeMap<ChannelName, Vec<(u64, Stored)>>,
    next_join_seq: u64,
    next_room_id: u64,
    next_local_room: u64,
    /// The time of the call in progress (what the home stamps publications with).
    now: Timestamp,
    shutting_down: bool,
    stats: Stats,
    /// Server API requests in progress, and what homes here remember for it.
    api: api::ApiState,
}

fn info<'a>(
    user: Option<&'a Name>,
    client: &'a str,
    infos: Option<&'a crate::bus::InfoPair>,
) -> ClientInfo<'a> {
    ClientInfo {
        user: user.map_or("", Name::as_str),
        client,
        conn_info: infos.and_then(|i| i.conn_info.as_deref()),
        chan_info: infos.and_then(|i| i.chan_info.as_deref()),
    }
}

impl Hub {
    /// A hub with no connections. `config` should pass [`Config::validate`].
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            conns: BTreeMap::new(),
            local: BTreeMap::new(),
            rooms: BTreeMap::new(),
            idle: BTreeSet::new(),
            next_idle: 0,
            timers: BTreeSet::new(),
            presence_timers: BTreeSet::new(),
            users: BTreeMap::new(),
            user_homes: BTreeMap::new(),
            outputs: VecDeque::new(),
            bus_out: VecDeque::new(),
            bus_self: VecDeque::new(),
            store_out: VecDeque::new(),
            loading: BTreeMap::new(),
            appending: BTreeMap::new(),
            next_token: 0,
            inline_store: Some(crate::store::MemoryStore::new(INLINE_STREAMS)),
            delivering: false,
            unfollow: BTreeSet::new(),
            follow: BTreeSet::new(),
            broadcasts: VecDeque::new(),
            presence_changes: VecDeque::new(),
            early_members: BTreeMap::new(),
            settling: None,
            reread: BTreeSet::new(),
            early: BTreeMap::new(),
            next_join_seq: 0,
            next_room_id: 0,
            next_local_room: 0,
            now: Timestamp::ZERO,
            shutting_down: false,
            stats: Stats::default(),
            api: api::ApiState::default(),
        }
    }

    /// A hub whose store requests the driver carries out with its own
    /// engine ([`Hub::poll_store`], [`Hub::handle_store`]), instead of the
    /// in-memory engine it runs itself by default.
    #[must_use]
    pub fn with_external_store(config: Config) -> Self {
        Self {
            inline_store: None,
            ..Self::new(config)
        }
    }

    /// A hub with an external engine shared by several nodes, which
    /// delivers publications appended by any of them
    /// ([`StoreEvent::Delivered`]) to the channels the hub follows: from
    /// the channel's `Open` until [`Hub::poll_unfollow`] names it.
    #[must_use]
    pub fn with_delivering_store(config: Config) -> Self {
        Self {
            delivering: true,
            ..Self::with_external_store(config)
        }
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Feeds one event to the hub. Drain [`Hub::poll_output`] and
    /// [`Hub::poll_bus`] afterwards.
    pub fn handle_input(&mut self, now: Timestamp, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Open { conn, route } => self.open(now, conn, route),
            Input::Message { conn, frame } => self.message(now, conn, frame),
            Input::Pong { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    // Centrifugo clients answer the protocol's own pings.
                    if c.codec != Codec::Centrifuge {
                        c.last_pong = now;
                        // The timer entry may now be early; handle_timeout re-arms it.
                    }
                }
            }
            Input::QueueFull { conn } => self.end(conn, CloseReason::SlowConsumer),
            Input::Disconnect { conn, reason } => self.end(conn, reason),
            Input::Shutdown => self.shutdown(),
        }
        self.pump();
    }

    /// Feeds one message from another shard. Drain the outputs afterwards.
    pub fn handle_bus(&mut self, now: Timestamp, msg: BusMessage) {
        self.now = self.now.max(now);
        self.stats.bus_in += 1;
        self.bus(msg);
        self.pump();
    }

    /// Feeds the store engine's answer to a request from
    /// [`Hub::poll_store`]. Drain the outputs afterwards.
    pub fn handle_store(&mut self, now: Timestamp, event: StoreEvent) {
        self.now = self.now.max(now);
        self.store_event(event);
        self.pump();
    }

    fn store_event(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Opened { channel, result } => self.opened(&channel, result),
            StoreEvent::Appended {
                channel,
                token,
                result,
            } => self.appended(&channel, token, result.as_ref().copied()),
            StoreEvent::Delivered {
                channel,
                epoch,
                publication,
            } => self.delivered(&channel, epoch, publication),
            StoreEvent::Resync { channel } => self.resync(&channel),
            StoreEvent::RemoteJoined { channel, member } => {
                self.remote_joined(&channel, member);
            }
            StoreEvent::RemoteLeft {
                channel,
                node,
                client,
            } => self.remote_left(&channel, node, client),
            StoreEvent::RemoteMembers { channel, members } => {
                self.remote_snapshot(&channel, members);
            }
            StoreEvent::NodeGone { node } => self.node_gone(node),
        }
    }

    /// Runs the heartbeat: pings connections that are due and closes those
    /// whose pong deadline has passed (and Centrifugo connections that never
    /// sent `connect`). Call at [`Hub::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if !c.connected {
                // Before `connect`, `next_ping` is the stale deadline.
                if now >= c.next_ping {
                    self.end(conn, CloseReason::Stale);
                    self.pump();
                } else {
                    c.timer = c.next_ping;
                    self.timers.insert((c.timer, conn));
                }
                continue;
            }
            if c.auth.is_some() && self.expire(now, conn) {
                self.pump();
                continue;
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let deadline = c.last_pong.saturating_add(self.config.pong_timeout);
            if now >= deadline {
                self.end(conn, CloseReason::HeartbeatTimeout);
                // Each departure is announced before the next one is
                // decided, as if they came one call after another.
                self.pump();
                continue;
            }
            if now >= c.next_ping {
                self.outputs.push_back(Output::Ping { conn });
                self.stats.pings += 1;
                c.ping_outstanding = true;
                while c.next_ping <= now {
                    c.next_ping = c.next_ping.saturating_add(self.config.ping_interval);
                }
            }
            c.timer = c.next_timer(&self.config);
            self.timers.insert((c.timer, conn));
        }
        while let Some((at, _)) = self.presence_timers.first() {
            if *at > now {
                break;
            }
            if let Some((_, channel)) = self.presence_timers.pop_first() {
                self.deferred_presence(now, &channel);
                self.pump();
            }
        }
        self.pump();
    }

    /// The next output for the driver, in the order the hub decided them.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next message for another shard, with its destination.
    pub fn poll_bus(&mut self) -> Option<(ShardId, BusMessage)> {
        self.bus_out.pop_front()
    }

    /// The next request for the store engine, in order. Answer each with
    /// [`Hub::handle_store`], in the order they were polled (per channel at
    /// least), whenever the engine is done: the hub never waits for it.
    pub fn poll_store(&mut self) -> Option<StoreRequest> {
        self.store_out.pop_front()
    }

    /// A channel whose stream this hub no longer follows (its room went
    /// away): a delivering engine stops delivering it. Poll after
    /// [`Hub::poll_store`], in the same drain: a channel opened again
    /// before this poll is not named (its `Open` came first). Only with
    /// [`Hub::with_delivering_store`].
    pub fn poll_unfollow(&mut self) -> Option<ChannelName> {
        self.unfollow.pop_first()
    }

    /// A channel without a stream (no history) that this hub now has a
    /// room for: a delivering engine delivers other nodes' publications to
    /// it (`StoreEvent::Delivered` with offset 0) until
    /// [`Hub::poll_unfollow`] names it. Poll with the others, in the same
    /// drain. Only with [`Hub::with_delivering_store`].
    pub fn poll_follow(&mut self) -> Option<ChannelName> {
        self.follow.pop_first()
    }

    /// A publication without a position (a channel without history, or the
    /// API's `skip_history`) for the other nodes: a delivering engine hands
    /// it to those that follow the channel, not back to this one. Only with
    /// [`Hub::with_delivering_store`].
    pub fn poll_broadcast(&mut self) -> Option<(ChannelName, Stored)> {
        self.broadcasts.pop_front()
    }

    /// A member of a channel on this node joined or left: a delivering
    /// engine records it for the other nodes and tells them, so presence,
    /// join/leave pushes and `online_users` span the cluster. Poll with the
    /// others, in the same drain. Only with [`Hub::with_delivering_store`].
    pub fn poll_presence(&mut self) -> Option<crate::store::PresenceChange> {
        self.presence_changes.pop_front()
    }

    /// `room`'s members on other nodes that this hub knows of (its home's
    /// view; empty on other shards), by node and client id.
    pub fn remote_members(
        &self,
        room: &str,
    ) -> impl Iterator<Item = crate::store::RemoteMember> + '_ {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.remote().iter().map(|(key, m)| m.member(*key)))
    }

    /// Publications waiting for the store.
    #[must_use]
    pub fn store_pending(&self) -> usize {
        self.appending.len()
    }

    /// When [`Hub::handle_timeout`] must next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let conns = self.timers.first().map(|&(at, _)| at);
        let rooms = self.presence_timers.first().map(|(at, _)| *at);
        match (conns, rooms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `room` (homed here) has an `online_users` list held back by
    /// `presence_rate`: its members' last lists may be stale until it goes.
    #[must_use]
    pub fn presence_held(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.presence_held)
    }

    #[must_use]
    pub fn stats(&self) -> Stats {
        let relay = usize::from(self.rooms.contains_key(""));
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len().saturating_sub(relay + self.idle.len()),
            ..self.stats.clone()
        }
    }

    #[must_use]
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The client id `conn` has (or would have).
    #[must_use]
    pub fn client_id(&self, conn: ConnId) -> ClientId {
        ClientId::derive(self.config.entropy, conn)
    }

    /// The names of the channels homed here with at least one member, in order.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms
            .iter()
            .filter(|(name, room)| !name.as_str().is_empty() && !room.members.is_empty())
            .map(|(name, _)| name.as_str())
    }

    /// Channels homed here whose streams outlive their last member.
    #[must_use]
    pub fn idle_streams(&self) -> usize {
        self.idle.len()
    }

    /// A room's members in join order, on every shard (empty if the room
    /// does not exist or is homed on another shard).
    pub fn room_members(&self, room: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.rooms
            .get(room)
            .filter(|_| !room.is_empty())
            .into_iter()
            .flat_map(|r| r.members.values().map(|m| m.conn))
    }

    /// A room's members on this shard, in join order.
    pub fn local_members(&self, room: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.local
            .get(room)
            .into_iter()
            .flat_map(|r| r.members.values().map(|m| m.conn))
    }

    /// Relay (`/ws`) connections of every shard, in id order (on the
    /// relay's home shard, shard 0; empty elsewhere).
    pub fn relay_members(&self) -> impl Iterator<Item = ConnId> + '_ {
        let mut members: Vec<ConnId> = self
            .rooms
            .get("")
            .into_iter()
            .flat_map(|r| r.members.values().map(|m| m.conn))
            .collect();
        members.sort_unstable();
        members.into_iter()
    }

    /// How many publications (chat lines) the room has accepted: its stream's top offset.
    #[must_use]
    pub fn room_chat_seq(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|r| r.top)
    }

    // ---- the bus ------------------------------------------------------------

    /// Sends `msg` to `to`: another shard through the driver, or this one
    /// through its own queue (handled before the current call returns).
    fn send_bus(&mut self, to: ShardId, msg: BusMessage) {
        if to == self.config.shard {
            self.bus_self.push_back(msg);
        } else {
            self.stats.bus_out += 1;
            self.bus_out.push_back((to, msg));
        }
    }

    fn home(&self, channel: &str) -> ShardId {
        if channel.is_empty() {
            ShardId(0)
        } else {
            crate::bus::home_of(channel, self.config.shards)
        }
    }

    /// Handles the messages this shard sent itself, in order, and (with
    /// the in-memory engine) its store requests.
    fn pump(&mut self) {
        loop {
            while let Some(msg) = self.bus_self.pop_front() {
                self.bus(msg);
            }
            let Some(store) = self.inline_store.as_mut() else {
                return;
            };
            let Some(request) = self.store_out.pop_front() else {
                return;
            };
            let event = store.execute(request);
            self.store_event(event);
        }
    }

    fn bus(&mut self, msg: BusMessage) {
        if self.shutting_down {
            return;
        }
        match msg {
            BusMessage::Join { .. }
            | BusMessage::Leave { .. }
            | BusMessage::Publish { .. }
            | BusMessage::Query { .. }
            | BusMessage::ApiHome { .. } => self.at_home(msg),
            BusMessage::ApiShard { op, reply } => self.api_shard(op, reply),
            BusMessage::ApiDone { token, part } => self.api_done(token, part),
            BusMessage::Joined {
                channel,
                conn,
                attempt,
                seq,
                top,
                epoch,
                recovery,
            } => self.joined(
                &channel,
                conn,
                attempt,
                seq,
                (top, epoch),
                recovery.as_ref(),
            ),
            BusMessage::JoinFailed {
                channel,
                conn,
                attempt,
            } => self.join_failed(&channel, conn, attempt),
            BusMessage::Deliver { channel, items } => self.deliver(&channel, &items),
            BusMessage::Reply { conn, reply } => {
                if self.conns.contains_key(&conn) {
                    self.reply(conn, reply);
                }
            }
            BusMessage::UserConnected { user, conn, shard } => {
                if !self.count_user_conn(&user, (shard, conn)) {
                    self.send_bus(shard, BusMessage::UserRefused { conn });
                }
            }
            BusMessage::UserDisconnected { user, conn, shard } => {
                self.uncount_user_conn(&user, (shard, conn));
            }
            BusMessage::UserRefused { conn } => {
                if self.conns.contains_key(&conn) {
                    self.end(conn, CloseReason::ConnectionLimit);
                }
            }
        }
    }

    /// A message to this shard as the channel's home. One whose channel's
    /// stream is being opened waits for it, in order; one that needs a
    /// stream this home has not opened yet starts opening it.
    pub(super) fn at_home(&mut self, msg: BusMessage) {
        let (channel, needs_stream) = match &msg {
            BusMessage::Join { channel, .. } => (channel, true),
            BusMessage::Publish {
                channel, payload, ..
            } => (channel, !matches!(payload, PubPayload::Relay(_))),
            BusMessage::Query {
                channel,
                query: Query::History { .. },
                ..
            } => (channel, true),
            BusMessage::ApiHome { channel, op, .. } => (channel, Self::api_needs_stream(op)),
            BusMessage::Leave { channel, .. } | BusMessage::Query { channel, .. } => {
                (channel, false)
            }
            _ => return,
        };
        if let Some(waiting) = self.loading.get_mut(channel) {
            if let BusMessage::Publish { from, reply, .. } = &msg {
                if waiting.len() >= self.config.store_queue {
                    let (from, reply) = (*from, *reply);
                    self.stats.store_rejected += 1;
                    self.publish_reply(from, reply, Err(ErrorCode::Internal));
                    return;
                }
            }
            waiting.push(msg);
            return;
        }
        if needs_stream && !self.rooms.contains_key(channel) && !channel.as_str().is_empty() {
            let options = self.config.namespaces.resolve_room(channel.as_str());
            if options.history() {
                let limits = options.stream_limits();
                let channel = channel.clone();
                let new_epoch = self.new_epoch();
                self.unfollow.remove(&channel);
                self.store_out.push_back(StoreRequest::Open {
                    channel: channel.clone(),
                    new_epoch,
                    limits,
                    now: self.now,
                });
                self.loading.insert(channel, vec![msg]);
                return;
            }
        }
        self.dispatch_or_reread(msg);
    }

    /// Carries out `msg`, unless it is a join whose client saw publications
    /// this node has not been delivered yet (it comes from another node):
    /// then the stream is read first, once per join, so that the client
    /// recovers exactly instead of being told it cannot.
    fn dispatch_or_reread(&mut self, msg: BusMessage) {
        if self.delivering && self.behind_the_client(&msg) {
            if let BusMessage::Join { channel, conn, .. } = &msg {
                let (channel, conn) = (channel.clone(), *conn);
                if self.reread.insert((channel.clone(), conn)) {
                    self.reopen(&channel);
                    if let Some(waiting) = self.loading.get_mut(&channel) {
                        waiting.push(msg);
                        return;
                    }
                }
                self.reread.remove(&(channel, conn));
            }
        }
        self.home_dispatch(msg);
    }

    /// Whether `msg` is a join recovering from a position in this room's
    /// epoch beyond the room's top.
    fn behind_the_client(&self, msg: &BusMessage) -> bool {
        let BusMessage::Join {
            channel,
            recover: Some((offset, epoch)),
            ..
        } = msg
        else {
            return false;
        };
        self.rooms
            .get(channel)
            .is_some_and(|room| *offset > room.top && *epoch == epoch_text(room.epoch))
    }

    /// Carries out a message to the home of a channel that is ready.
    fn home_dispatch(&mut self, msg: BusMessage) {
        match msg {
            BusMessage::Join {
                channel,
                conn,
                shard,
                codec,
                user,
                infos,
                join_leave,
                attempt,
                recover,
                last,
            } => self.home_join(
                &channel,
                HomeMember {
                    conn,
                    shard,
                    codec,
                    user,
                    infos,
                    join_leave,
                },
                attempt,
                (recover, last),
            ),
            BusMessage::Leave { channel, conn } => self.home_leave(&channel, conn),
            BusMessage::Publish {
                channel,
                from,
                user,
                infos,
                payload,
                reply,
            } => self.home_publish(&channel, from, (user, infos), payload, reply),
            BusMessage::Query {
                channel,
                conn,
                shard,
                id,
                query,
            } => {
                let reply = self.home_query(channel.as_str(), id, &query);
                self.send_bus(shard, BusMessage::Reply { conn, reply });
            }
            BusMessage::ApiHome { channel, op, reply } => self.api_home(&channel, op, reply),
            _ => {}
        }
    }
}

/// Shared bytes of an output frame, for drivers that only need the payload.
impl Output {
    #[must_use]
    pub fn conn(&self) -> ConnId {
        match self {
            Self::Send { conn, .. } | Self::Ping { conn } | Self::Close { conn, .. } => *conn,
        }
    }

    #[must_use]
    pub fn payload(&self) -> Option<&Bytes> {
        match self {
            Self::Send { frame, .. } => Some(&frame.payload),
            _ => None,
        }
    }
}
