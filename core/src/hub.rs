//! The hub: every chat rule, as a deterministic state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::bus::{Audience, BusMessage, Delivery, PubPayload, Query, ShardId};
use crate::centrifuge::{self, ClientInfo, Command, ErrorCode, Line};
use crate::channel::{self, ChannelName, ChannelOptions};
use crate::close::CloseReason;
use crate::codec::{encode_seed, ClientMessage, Codec, Frame, SeedType};
use crate::config::Config;
use crate::route::{Name, Route};
use crate::time::Timestamp;

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
            Self::ZeroLimit => "max message bytes, max command bytes, send queue, max connections, channel limit, max channel bytes and shards must be at least 1",
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

/// A subscription waiting for its home's answer.
#[derive(Debug)]
struct Pending {
    channel: ChannelName,
    attempt: u32,
    /// Centrifugo: the subscribe command to answer, and what it asked.
    request: Option<SubscribeAsk>,
    /// Centrifugo: whether the subscription gets join/leave pushes.
    join_leave: bool,
    /// The client unsubscribed meanwhile: answer, but do not register.
    cancelled: bool,
}

/// What a Centrifugo subscribe asked and was granted, kept until its home answers.
#[derive(Debug)]
struct SubscribeAsk {
    id: u32,
    positioned: bool,
    recoverable: bool,
    /// `recover` with the client's offset and epoch.
    recover: Option<(u64, String)>,
}

#[derive(Debug)]
struct Conn {
    codec: Codec,
    /// Shown as `user` to others: a seed client's username; `None` for an
    /// anonymous Centrifugo client (user `""`) and the relay.
    user: Option<Name>,
    /// Centrifugo: `connect` was accepted. Always true for the other protocols.
    connected: bool,
    /// The channels this connection is in and its place in each one's join
    /// order (a seed connection has exactly one: its room). A short list:
    /// at most `channel_limit`, usually one.
    subs: Vec<(ChannelName, u64)>,
    /// Joins asked of a home and not answered yet.
    pending: Vec<Pending>,
    next_attempt: u32,
    last_pong: Timestamp,
    next_ping: Timestamp,
    /// Centrifugo: a ping was sent and its pong has not come.
    ping_outstanding: bool,
    /// Centrifugo before `connect`: when the connection goes stale (3502).
    stale_at: Timestamp,
    /// The instant of this connection's entry in `Hub::timers`.
    timer: Timestamp,
}

impl Conn {
    fn sub(&self, channel: &str) -> Option<u64> {
        self.subs
            .iter()
            .find(|(c, _)| c.as_str() == channel)
            .map(|&(_, seq)| seq)
    }

    fn subscribing(&self, channel: &str) -> bool {
        self.pending
            .iter()
            .any(|p| !p.cancelled && p.channel.as_str() == channel)
    }

    fn anonymous(&self) -> bool {
        self.user.is_none()
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

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A local member of a channel, with what fan-out needs to know about it.
#[derive(Clone, Copy, Debug)]
struct Member {
    conn: ConnId,
    codec: Codec,
    /// Centrifugo: gets `join` / `leave` pushes.
    join_leave: bool,
}

/// A channel's members on this shard, in join order.
#[derive(Debug)]
struct LocalRoom {
    /// Names this shard's presence snapshots for conflation.
    id: RoomId,
    members: JoinOrder<Member>,
}

/// A member as the channel's home knows it.
#[derive(Clone, Debug)]
struct HomeMember {
    conn: ConnId,
    shard: ShardId,
    codec: Codec,
    user: Option<Name>,
    join_leave: bool,
}

/// A channel homed on this shard: every member on every shard.
#[derive(Debug)]
struct Room {
    options: Arc<ChannelOptions>,
    /// Members in join order.
    members: JoinOrder<HomeMember>,
    /// Members per shard, by shard: where deliveries go.
    shards: Vec<(ShardId, u32)>,
    /// Seed members (who need `online_users` and notices).
    seed_members: u32,
    /// Centrifugo members that get join/leave pushes.
    join_leave_members: u32,
    /// Publications accepted so far: the offset of the last one (the stream's top).
    top: u64,
    /// The stream's epoch, fixed when the channel came to be.
    epoch: u64,
}

impl Room {
    fn codecs(&self) -> (bool, bool, bool) {
        self.members
            .values()
            .fold((false, false, false), |(s, c, r), m| match m.codec {
                Codec::SeedJson => (true, c, r),
                Codec::Centrifuge => (s, true, r),
                Codec::Relay => (s, c, true),
            })
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
    /// Channels whose home this shard is.
    rooms: BTreeMap<ChannelName, Room>,
    /// One entry per connection: when its heartbeat next needs attention.
    timers: BTreeSet<(Timestamp, ConnId)>,
    outputs: VecDeque<Output>,
    /// Messages to other shards.
    bus_out: VecDeque<(ShardId, BusMessage)>,
    /// Messages to this shard itself, handled before a call returns.
    bus_self: VecDeque<BusMessage>,
    next_join_seq: u64,
    next_room_id: u64,
    next_local_room: u64,
    shutting_down: bool,
    stats: Stats,
}

/// A Centrifugo command that ends the connection instead of being answered.
struct Disconnect(CloseReason);

/// Where a connection stands with a channel it sends a command about.
struct Standing {
    options: Arc<ChannelOptions>,
    anonymous: bool,
    subscribed: bool,
    user: Option<Name>,
}

impl Standing {
    /// Centrifugo's rule for publish, presence and history: an anonymous
    /// client needs the `*_for_anonymous` option, and then either the
    /// `*_for_client` one, or `*_for_subscriber` while subscribed.
    fn may(&self, for_anonymous: bool, for_client: bool, for_subscriber: bool) -> bool {
        (!self.anonymous || for_anonymous) && (for_client || self.subscribed && for_subscriber)
    }
}

type CommandResult = Result<(), Disconnect>;

fn info<'a>(user: Option<&'a Name>, client: &'a str) -> ClientInfo<'a> {
    ClientInfo {
        user: user.map_or("", Name::as_str),
        client,
        conn_info: None,
        chan_info: None,
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
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            bus_out: VecDeque::new(),
            bus_self: VecDeque::new(),
            next_join_seq: 0,
            next_room_id: 0,
            next_local_room: 0,
            shutting_down: false,
            stats: Stats::default(),
        }
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Feeds one event to the hub. Drain [`Hub::poll_output`] and
    /// [`Hub::poll_bus`] afterwards.
    pub fn handle_input(&mut self, now: Timestamp, input: Input) {
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
    pub fn handle_bus(&mut self, _now: Timestamp, msg: BusMessage) {
        self.stats.bus_in += 1;
        self.bus(msg);
        self.pump();
    }

    /// Runs the heartbeat: pings connections that are due and closes those
    /// whose pong deadline has passed (and Centrifugo connections that never
    /// sent `connect`). Call at [`Hub::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if !c.connected {
                if now >= c.stale_at {
                    self.end(conn, CloseReason::Stale);
                    self.pump();
                } else {
                    c.timer = c.stale_at;
                    self.timers.insert((c.timer, conn));
                }
                continue;
            }
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
            c.timer = c.next_ping.min(deadline);
            self.timers.insert((c.timer, conn));
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

    /// When [`Hub::handle_timeout`] must next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|&(at, _)| at)
    }

    #[must_use]
    pub fn stats(&self) -> Stats {
        let relay = usize::from(self.rooms.contains_key(""));
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len() - relay,
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
            .keys()
            .map(ChannelName::as_str)
            .filter(|r| !r.is_empty())
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

    /// Handles the messages this shard sent itself, in order.
    fn pump(&mut self) {
        while let Some(msg) = self.bus_self.pop_front() {
            self.bus(msg);
        }
    }

    fn bus(&mut self, msg: BusMessage) {
        if self.shutting_down {
            return;
        }
        match msg {
            BusMessage::Join {
                channel,
                conn,
                shard,
                codec,
                user,
                join_leave,
                attempt,
            } => self.home_join(
                &channel,
                HomeMember {
                    conn,
                    shard,
                    codec,
                    user,
                    join_leave,
                },
                attempt,
            ),
            BusMessage::Leave { channel, conn } => self.home_leave(&channel, conn),
            BusMessage::Publish {
                channel,
                from,
                user,
                payload,
            } => self.home_publish(&channel, from, user.as_ref(), &payload),
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
            BusMessage::Joined {
                channel,
                conn,
                attempt,
                seq,
                top,
                epoch,
            } => self.joined(&channel, conn, attempt, seq, top, epoch),
            BusMessage::Deliver { channel, items } => self.deliver(&channel, &items),
            BusMessage::Reply { conn, reply } => {
                if self.conns.contains_key(&conn) {
                    self.reply(conn, reply);
                }
            }
        }
    }

    // ---- the home side: a channel's members, order and position ---------------

    fn home_join(&mut self, channel: &ChannelName, member: HomeMember, attempt: u32) {
        let seq = self.next_join_seq;
        self.next_join_seq += 1;
        let next_room_id = &mut self.next_room_id;
        let entropy = self.config.entropy;
        let shard = self.config.shard;
        let options = self
            .config
            .namespaces
            .resolve_room(channel.as_str())
            .clone();
        let room = self.rooms.entry(channel.clone()).or_insert_with(|| {
            let id = *next_room_id;
            *next_room_id += 1;
            Room {
                options,
                members: JoinOrder::new(),
                shards: Vec::new(),
                seed_members: 0,
                join_leave_members: 0,
                top: 0,
                // A fresh stream: its epoch differs from every earlier stream
                // of this name, in this run (ids count up per home shard) or
                // an earlier one (new entropy).
                epoch: mix64(entropy ^ mix64(id ^ (u64::from(shard.0) << 48) ^ 0x0065_706f_6368)),
            }
        });
        match room.shards.binary_search_by_key(&member.shard, |(s, _)| *s) {
            Ok(i) => room.shards[i].1 += 1,
            Err(i) => {
                if room.shards.capacity() == 0 {
                    room.shards.reserve_exact(1);
                }
                room.shards.insert(i, (member.shard, 1));
            }
        }
        if member.codec == Codec::SeedJson {
            room.seed_members += 1;
        }
        if member.codec == Codec::Centrifuge && member.join_leave {
            room.join_leave_members += 1;
        }
        let (top, epoch) = (room.top, room.epoch);
        let (conn, to) = (member.conn, member.shard);
        let user = member.user.clone();
        room.members.insert(seq, member);
        self.send_bus(
            to,
            BusMessage::Joined {
                channel: channel.clone(),
                conn,
                attempt,
                seq,
                top,
                epoch,
            },
        );
        self.announce(channel, conn, user.as_ref(), true);
    }

    fn home_leave(&mut self, channel: &ChannelName, conn: ConnId) {
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        let Some(seq) = room.members.position(|m| m.conn == conn) else {
            return;
        };
        let Some(m) = room.members.remove(seq) else {
            return;
        };
        if let Ok(i) = room.shards.binary_search_by_key(&m.shard, |(s, _)| *s) {
            room.shards[i].1 -= 1;
            if room.shards[i].1 == 0 {
                room.shards.remove(i);
            }
        }
        if m.codec == Codec::SeedJson {
            room.seed_members -= 1;
        }
        if m.codec == Codec::Centrifuge && m.join_leave {
            room.join_leave_members -= 1;
        }
        if room.members.is_empty() {
            self.rooms.remove(channel);
            return;
        }
        self.announce(channel, conn, m.user.as_ref(), false);
    }

    /// Tells the channel that `conn` joined (`joined`) or left: Centrifugo
    /// members that asked get `join` / `leave`; seed members get, in the
    /// seed's order, the new `online_users` and `user_joined` (join) or
    /// `user_left` and then `online_users` (departure) — when the member
    /// has a name (anonymous clients are invisible to seed presence).
    fn announce(&mut self, channel: &ChannelName, conn: ConnId, user: Option<&Name>, joined: bool) {
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let mut items = Vec::new();
        if room.options.join_leave && room.join_leave_members > 0 {
            let client = self.client_id(conn).to_string();
            let kind = if joined { "join" } else { "leave" };
            items.push(Delivery {
                frame: Frame::text(centrifuge::presence_push(
                    channel.as_str(),
                    kind,
                    &info(user, &client),
                )),
                to: Audience::CentrifugeJoinLeave,
            });
        }
        if let (Some(user), true) = (user, room.seed_members > 0) {
            let name = user.as_str();
            let list = Delivery {
                frame: self.seed_presence(room, channel),
                to: Audience::SeedPresence,
            };
            if joined {
                let notice = format!("{name} joined the room");
                items.push(list);
                items.push(Delivery {
                    frame: encode_seed(SeedType::UserJoined, &notice, channel.as_str(), name),
                    to: Audience::Seed,
                });
            } else {
                let notice = format!("{name} left the room");
                items.push(Delivery {
                    frame: encode_seed(SeedType::UserLeft, &notice, channel.as_str(), name),
                    to: Audience::Seed,
                });
                items.push(list);
            }
        }
        if !items.is_empty() {
            self.deliver_everywhere(channel, items);
        }
    }

    /// The room's `online_users`: named members in join order.
    fn seed_presence(&self, room: &Room, channel: &ChannelName) -> Frame {
        let mut list = String::new();
        for name in room.members.values().filter_map(|m| m.user.as_ref()) {
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(name.as_str());
        }
        // Names are never empty, so an empty list has no members with names.
        encode_seed(SeedType::OnlineUsers, &list, channel.as_str(), "")
    }

    /// Sends `items` to every shard with members of `channel`, once each.
    fn deliver_everywhere(&mut self, channel: &ChannelName, items: Vec<Delivery>) {
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let shards: Vec<ShardId> = room.shards.iter().map(|(s, _)| *s).collect();
        let items: Arc<[Delivery]> = items.into();
        for shard in shards {
            self.send_bus(
                shard,
                BusMessage::Deliver {
                    channel: channel.clone(),
                    items: items.clone(),
                },
            );
        }
    }

    /// Accepts a publication into `channel` from `from` and sends it to
    /// every shard with members, encoded once per protocol: seed members
    /// get a `chat` message, Centrifugo members a `pub` push (with the next
    /// offset when the channel is positioned), relay members the frame.
    /// Nothing happens when nobody is there.
    fn home_publish(
        &mut self,
        channel: &ChannelName,
        from: ConnId,
        user: Option<&Name>,
        payload: &PubPayload,
    ) {
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        room.top += 1;
        let offset = room.options.history().then_some(room.top);
        let (seed, centrifuge, relay) = room.codecs();
        let mut items = Vec::with_capacity(2);
        if let (true, PubPayload::Relay(frame)) = (relay, payload) {
            items.push(Delivery {
                frame: frame.clone(),
                to: Audience::Relay,
            });
        }
        let username = user.map_or("", Name::as_str);
        if seed {
            let content = match payload {
                PubPayload::Text(text) => Some(text.to_string()),
                PubPayload::Json(data) => Some(seed_content(data)),
                PubPayload::Relay(_) => None,
            };
            if let Some(content) = content {
                items.push(Delivery {
                    frame: encode_seed(SeedType::Chat, &content, channel.as_str(), username),
                    to: Audience::Seed,
                });
            }
        }
        if centrifuge {
            let client = self.client_id(from).to_string();
            let data = match payload {
                PubPayload::Text(text) => {
                    let mut data = Vec::with_capacity(text.len() + 12);
                    data.extend_from_slice(b"{\"text\":");
                    crate::codec::push_json_string(&mut data, text);
                    data.push(b'}');
                    Some(Bytes::from(data))
                }
                PubPayload::Json(data) => Some(data.clone()),
                PubPayload::Relay(_) => None,
            };
            if let Some(data) = data {
                items.push(Delivery {
                    frame: Frame::text(centrifuge::publication(
                        channel.as_str(),
                        &data,
                        Some(&info(user, &client)),
                        offset,
                    )),
                    to: Audience::Centrifuge,
                });
            }
        }
        self.deliver_everywhere(channel, items);
    }

    fn home_query(&self, channel: &str, id: u32, query: &Query) -> Bytes {
        let room = self.rooms.get(channel);
        let members = room.into_iter().flat_map(|r| r.members.values());
        match query {
            Query::PresenceStats => {
                let users: BTreeSet<&str> = members
                    .clone()
                    .map(|m| m.user.as_ref().map_or("", Name::as_str))
                    .collect();
                let clients = members.count() as u64;
                centrifuge::reply(id, "presence_stats", |r| {
                    r.uint("num_clients", clients)
                        .uint("num_users", users.len() as u64);
                })
            }
            Query::Presence => centrifuge::reply(id, "presence", |r| {
                r.object("presence", |p| {
                    for m in members {
                        let client = self.client_id(m.conn).to_string();
                        p.with(&client, |out| {
                            centrifuge::push_client_info(out, &info(m.user.as_ref(), &client));
                        });
                    }
                });
            }),
            Query::History { since, reverse } => {
                // A channel nobody is in has no stream: a fresh, empty one answers.
                let (top, epoch) = match room {
                    Some(room) => (room.top, epoch_text(room.epoch)),
                    None => (
                        0,
                        epoch_text(mix64(self.config.entropy ^ self.next_room_id)),
                    ),
                };
                if let Some(since) = since {
                    if since.epoch != epoch {
                        return centrifuge::error_reply(id, ErrorCode::UnrecoverablePosition);
                    }
                    if *reverse && since.offset == 0 {
                        return centrifuge::error_reply(id, ErrorCode::BadRequest);
                    }
                }
                // Publications are not stored yet: the reply is the position only.
                centrifuge::reply(id, "history", |r| {
                    r.str("epoch", &epoch).uint("offset", top);
                })
            }
        }
    }

    // ---- the connection side: sessions and local fan-out ------------------------

    fn open(&mut self, now: Timestamp, conn: ConnId, route: Route) {
        if self.conns.contains_key(&conn) {
            return; // a driver bug; the existing connection is left alone
        }
        if self.shutting_down || self.conns.len() >= self.config.max_connections {
            let reason = if self.shutting_down {
                CloseReason::ServerShutdown
            } else {
                CloseReason::ServerFull
            };
            self.count_close(reason);
            self.outputs.push_back(Output::Close { conn, reason });
            return;
        }
        self.stats.opened += 1;
        let next_ping = now.saturating_add(self.config.ping_interval);
        let stale_at = now.saturating_add(self.config.connect_timeout);
        let (codec, user, room) = match route {
            Route::Relay => (Codec::Relay, None, Some(crate::bus::relay_channel())),
            Route::Room { room, username } => (
                Codec::SeedJson,
                Some(username),
                Some(ChannelName::new(room.as_str())),
            ),
            Route::Centrifuge => (Codec::Centrifuge, None, None),
        };
        let connected = codec != Codec::Centrifuge;
        let timer = if connected {
            next_ping.min(now.saturating_add(self.config.pong_timeout))
        } else {
            stale_at
        };
        self.conns.insert(
            conn,
            Conn {
                codec,
                user,
                connected,
                subs: Vec::new(),
                pending: Vec::new(),
                next_attempt: 0,
                last_pong: now,
                next_ping,
                ping_outstanding: false,
                stale_at,
                timer,
            },
        );
        self.timers.insert((timer, conn));
        if let Some(room) = room {
            self.ask_join(conn, room, None, false);
        }
    }

    /// Asks `channel`'s home to add `conn`.
    fn ask_join(
        &mut self,
        conn: ConnId,
        channel: ChannelName,
        request: Option<SubscribeAsk>,
        join_leave: bool,
    ) {
        let shard = self.config.shard;
        let home = self.home(channel.as_str());
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let attempt = c.next_attempt;
        c.next_attempt = c.next_attempt.wrapping_add(1);
        if c.pending.capacity() == 0 {
            c.pending.reserve_exact(1);
        }
        c.pending.push(Pending {
            channel: channel.clone(),
            attempt,
            request,
            join_leave,
            cancelled: false,
        });
        let msg = BusMessage::Join {
            channel,
            conn,
            shard,
            codec: c.codec,
            user: c.user.clone(),
            join_leave,
            attempt,
        };
        self.send_bus(home, msg);
    }

    /// The home added `conn`: it becomes a local member (and a Centrifugo
    /// subscribe is answered), unless it went away or gave up meanwhile.
    fn joined(
        &mut self,
        channel: &ChannelName,
        conn: ConnId,
        attempt: u32,
        seq: u64,
        top: u64,
        epoch: u64,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return; // it left; its Leave is on its way to the home
        };
        let Some(i) = c
            .pending
            .iter()
            .position(|p| p.attempt == attempt && p.channel == *channel)
        else {
            return;
        };
        let pending = c.pending.remove(i);
        if c.pending.is_empty() {
            // Idle connections keep no buffer for joins long answered.
            c.pending = Vec::new();
        }
        let codec = c.codec;
        let join_leave = pending.join_leave;
        if !pending.cancelled {
            if c.subs.capacity() == 0 {
                c.subs.reserve_exact(1); // most connections are in one channel
            }
            c.subs.push((channel.clone(), seq));
            let next_local_room = &mut self.next_local_room;
            let room = self.local.entry(channel.clone()).or_insert_with(|| {
                let id = RoomId(*next_local_room);
                *next_local_room += 1;
                LocalRoom {
                    id,
                    members: JoinOrder::new(),
                }
            });
            room.members.insert(
                seq,
                Member {
                    conn,
                    codec,
                    join_leave,
                },
            );
        }
        let Some(ask) = pending.request else {
            return;
        };
        let epoch = epoch_text(epoch);
        let recovered = ask
            .recover
            .as_ref()
            .is_some_and(|(offset, e)| (e.is_empty() || *e == epoch) && *offset == top);
        self.reply(
            conn,
            centrifuge::reply(ask.id, "subscribe", |r| {
                if ask.positioned {
                    r.bool("recoverable", ask.recoverable)
                        .bool("positioned", true)
                        .str("epoch", &epoch)
                        .uint("offset", top);
                }
                r.bool("was_recovering", ask.recover.is_some())
                    .bool("recovered", recovered);
            }),
        );
    }

    /// Frames from a channel's home for this shard's members.
    fn deliver(&mut self, channel: &ChannelName, items: &[Delivery]) {
        let Some(room) = self.local.get(channel) else {
            return;
        };
        for item in items {
            let presence = (item.to == Audience::SeedPresence).then_some(room.id);
            for m in room.members.values() {
                if item.to.includes(m.codec, m.join_leave) {
                    self.outputs.push_back(Output::Send {
                        conn: m.conn,
                        frame: item.frame.clone(),
                        presence,
                    });
                    self.stats.sends += 1;
                }
            }
        }
    }

    fn message(&mut self, now: Timestamp, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        self.stats.messages_in += 1;
        let max = if c.codec == Codec::Centrifuge {
            self.config.max_command_bytes
        } else {
            self.config.max_message_bytes
        };
        let user = c.user.clone();
        match c.codec.decode(frame.kind, frame.payload, max) {
            Err(reason) => self.end(conn, reason),
            Ok(ClientMessage::Relay(frame)) => {
                let channel = crate::bus::relay_channel();
                let home = self.home("");
                let msg = BusMessage::Publish {
                    channel,
                    from: conn,
                    user: None,
                    payload: PubPayload::Relay(frame),
                };
                self.send_bus(home, msg);
            }
            Ok(ClientMessage::Chat(text)) if c.codec == Codec::Centrifuge => {
                self.centrifuge_frame(now, conn, &text);
            }
            Ok(ClientMessage::Chat(text)) => {
                // Decode checked UTF-8; a failure here would be a core bug, so
                // fall back to a lossy copy rather than panic.
                let content: Arc<str> = String::from_utf8_lossy(&text).into();
                let rooms: Vec<ChannelName> = c
                    .subs
                    .iter()
                    .map(|(r, _)| r.clone())
                    .chain(c.pending.iter().map(|p| p.channel.clone()))
                    .collect();
                for channel in rooms {
                    let home = self.home(channel.as_str());
                    let msg = BusMessage::Publish {
                        channel,
                        from: conn,
                        user: user.clone(),
                        payload: PubPayload::Text(content.clone()),
                    };
                    self.send_bus(home, msg);
                }
            }
        }
    }

    /// Removes `conn` for `reason`: its close first, then its leaves, whose
    /// notices the homes send the rooms it was in.
    fn end(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.timers.remove(&(c.timer, conn));
        self.count_close(reason);
        self.outputs.push_back(Output::Close { conn, reason });
        for (channel, seq) in &c.subs {
            self.leave_local(channel, *seq);
        }
        // Joins still in flight are left too: the home handles them in order.
        let channels = c.subs.into_iter().map(|(ch, _)| ch).chain(
            c.pending
                .into_iter()
                .filter(|p| !p.cancelled)
                .map(|p| p.channel),
        );
        for channel in channels {
            let home = self.home(channel.as_str());
            self.send_bus(home, BusMessage::Leave { channel, conn });
        }
    }

    fn leave_local(&mut self, channel: &ChannelName, seq: u64) {
        if let Some(room) = self.local.get_mut(channel) {
            room.members.remove(seq);
            if room.members.is_empty() {
                self.local.remove(channel);
            }
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        let conns = std::mem::take(&mut self.conns);
        for conn in conns.into_keys() {
            self.count_close(CloseReason::ServerShutdown);
            self.outputs.push_back(Output::Close {
                conn,
                reason: CloseReason::ServerShutdown,
            });
        }
        self.local.clear();
        self.rooms.clear();
        self.timers.clear();
        self.bus_self.clear();
    }

    fn count_close(&mut self, reason: CloseReason) {
        if let Some(i) = CloseReason::ALL.iter().position(|r| *r == reason) {
            self.stats.closes[i] += 1;
        }
    }

    // ---- the Centrifugo protocol -------------------------------------------

    /// Handles a Centrifugo frame's commands in order, each one through to
    /// its local effects before the next. A malformed line closes the
    /// connection (3501) after the commands before it.
    fn centrifuge_frame(&mut self, now: Timestamp, conn: ConnId, payload: &[u8]) {
        let (lines, malformed) = centrifuge::decode_frame(payload);
        for line in lines {
            if let Err(Disconnect(reason)) = self.centrifuge_line(now, conn, line) {
                self.end(conn, reason);
                return;
            }
            self.pump();
            if !self.conns.contains_key(&conn) {
                return;
            }
        }
        if malformed.is_some() {
            self.end(conn, CloseReason::BadRequest);
        }
    }

    fn reply(&mut self, conn: ConnId, bytes: Bytes) {
        self.outputs.push_back(Output::Send {
            conn,
            frame: Frame::text(bytes),
            presence: None,
        });
        self.stats.sends += 1;
    }

    fn error(&mut self, conn: ConnId, id: u32, code: ErrorCode) {
        self.stats.command_errors += 1;
        self.reply(conn, centrifuge::error_reply(id, code));
    }

    fn centrifuge_line(&mut self, now: Timestamp, conn: ConnId, line: Line) -> CommandResult {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let (id, command) = match line {
            // Anything before `connect` is a bad request, a pong included.
            _ if !c.connected
                && !matches!(
                    line,
                    Line::Command {
                        command: Command::Connect(_),
                        ..
                    }
                ) =>
            {
                return Err(Disconnect(CloseReason::BadRequest));
            }
            Line::Pong => {
                if !std::mem::take(&mut c.ping_outstanding) {
                    return Err(Disconnect(CloseReason::BadRequest));
                }
                c.last_pong = now;
                return Ok(());
            }
            Line::Unknown { .. } => return Err(Disconnect(CloseReason::BadRequest)),
            Line::Command { id, command } => (id, command),
        };
        self.stats.commands += 1;
        match command {
            Command::Connect(_) => self.connect(now, conn, id),
            Command::Subscribe(req) => self.subscribe(conn, id, &req),
            Command::Unsubscribe { channel } => self.unsubscribe(conn, id, &channel),
            Command::Publish { channel, data } => self.client_publish(conn, id, &channel, data),
            Command::Presence { channel } => self.presence(conn, id, &channel, false),
            Command::PresenceStats { channel } => self.presence(conn, id, &channel, true),
            Command::History(req) => self.history(conn, id, &req),
            Command::Ping => {
                self.error(conn, id, ErrorCode::NotAvailable);
                Ok(())
            }
            // No application handler for asynchronous messages: say so, as
            // Centrifugo does, rather than drop them silently.
            Command::Send { .. } => Err(Disconnect(CloseReason::NotAvailable)),
            Command::Rpc { .. } => {
                self.error(conn, id, ErrorCode::MethodNotFound);
                Ok(())
            }
            Command::Refresh { token } => {
                if token.is_empty() {
                    return Err(Disconnect(CloseReason::BadRequest));
                }
                // Connections do not expire yet (no tokens): nothing to extend.
                self.reply(conn, centrifuge::reply(id, "refresh", |_| {}));
                Ok(())
            }
            Command::SubRefresh { channel, token } => {
                if channel.is_empty() {
                    return Err(Disconnect(CloseReason::BadRequest));
                }
                let subscribed = self.conns.get(&conn).and_then(|c| c.sub(&channel));
                if subscribed.is_none() {
                    self.error(conn, id, ErrorCode::PermissionDenied);
                } else if token.is_empty() {
                    self.error(conn, id, ErrorCode::BadRequest);
                } else {
                    self.reply(conn, centrifuge::reply(id, "sub_refresh", |_| {}));
                }
                Ok(())
            }
        }
    }

    fn connect(&mut self, now: Timestamp, conn: ConnId, id: u32) -> CommandResult {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if c.connected {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        c.connected = true;
        c.last_pong = now;
        c.next_ping = now.saturating_add(self.config.ping_interval);
        self.timers.remove(&(c.timer, conn));
        c.timer = c
            .next_ping
            .min(now.saturating_add(self.config.pong_timeout));
        self.timers.insert((c.timer, conn));
        let client = self.client_id(conn).to_string();
        let version = self.config.server_version.clone();
        let ping = self.config.ping_interval.as_secs().max(1);
        self.reply(
            conn,
            centrifuge::reply(id, "connect", |r| {
                r.str("client", &client)
                    .str("version", &version)
                    .uint("ping", ping)
                    .bool("pong", true);
            }),
        );
        Ok(())
    }

    /// The checks every channel command shares, in Centrifugo's order:
    /// empty (3501), too long (107), unknown namespace (102), pattern (107).
    fn channel_options(
        &self,
        channel: &str,
    ) -> Result<Result<Arc<ChannelOptions>, ErrorCode>, Disconnect> {
        if channel.is_empty() {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        if channel.len() > self.config.max_channel_bytes {
            return Ok(Err(ErrorCode::BadRequest));
        }
        let Ok(options) = self.config.namespaces.resolve(channel) else {
            return Ok(Err(ErrorCode::UnknownChannel));
        };
        if options
            .channel_regex
            .as_ref()
            .is_some_and(|p| !p.is_match(channel))
        {
            return Ok(Err(ErrorCode::BadRequest));
        }
        Ok(Ok(options.clone()))
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        id: u32,
        req: &centrifuge::SubscribeRequest,
    ) -> CommandResult {
        if req.channel.is_empty() {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let channels = c.subs.len() + c.pending.iter().filter(|p| !p.cancelled).count();
        let refusal = if req.channel.len() > self.config.max_channel_bytes {
            Some(ErrorCode::BadRequest)
        } else if c.sub(&req.channel).is_some() || c.subscribing(&req.channel) {
            Some(ErrorCode::AlreadySubscribed)
        } else if channels >= self.config.channel_limit {
            Some(ErrorCode::LimitExceeded)
        } else {
            None
        };
        if let Some(code) = refusal {
            self.error(conn, id, code);
            return Ok(());
        }
        let anonymous = c.anonymous();
        let options = match self.channel_options(&req.channel)? {
            Ok(options) => options,
            Err(code) => {
                self.error(conn, id, code);
                return Ok(());
            }
        };
        // Private channels need a subscription token; tokens are not
        // accepted yet, so nobody may subscribe to them.
        let allowed = !channel::parse(&req.channel).private
            && options.allow_subscribe_for_client
            && (!anonymous || options.allow_subscribe_for_anonymous);
        if !allowed {
            self.error(conn, id, ErrorCode::PermissionDenied);
            return Ok(());
        }
        let history = options.history();
        let history_access = history
            && (!anonymous || options.allow_history_for_anonymous)
            && (options.allow_history_for_client || options.allow_history_for_subscriber);
        let presence_access = options.presence
            && (!anonymous || options.allow_presence_for_anonymous)
            && (options.allow_presence_for_client || options.allow_presence_for_subscriber);
        // A resubscribe asks to `recover` without repeating `recoverable`.
        let asks_recovery = req.recoverable || req.recover;
        let recoverable = history
            && (options.force_recovery
                || asks_recovery && (options.allow_recovery || history_access));
        let positioned = history
            && (recoverable
                || options.force_positioning
                || req.positioned && (options.allow_positioning || history_access));
        let join_leave = options.join_leave
            && (options.force_push_join_leave || req.join_leave && presence_access);
        // No publications are stored yet, so recovery succeeds only when
        // nothing was missed; otherwise the client is told plainly.
        let ask = SubscribeAsk {
            id,
            positioned,
            recoverable,
            recover: (req.recover && recoverable).then(|| (req.offset, req.epoch.clone())),
        };
        self.ask_join(conn, ChannelName::new(&req.channel), Some(ask), join_leave);
        Ok(())
    }

    fn unsubscribe(&mut self, conn: ConnId, id: u32, channel: &str) -> CommandResult {
        if channel.is_empty() {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let channel = ChannelName::new(channel);
        let mut leave = false;
        if let Some(i) = c.subs.iter().position(|(ch, _)| *ch == channel) {
            let (_, seq) = c.subs.remove(i);
            self.leave_local(&channel, seq);
            leave = true;
        } else if let Some(p) = c
            .pending
            .iter_mut()
            .find(|p| !p.cancelled && p.channel == channel)
        {
            p.cancelled = true;
            leave = true;
        }
        self.reply(conn, centrifuge::reply(id, "unsubscribe", |_| {}));
        if leave {
            let home = self.home(channel.as_str());
            self.send_bus(home, BusMessage::Leave { channel, conn });
        }
        Ok(())
    }

    /// The checks every channel command shares, then `conn`'s standing in
    /// the channel. Answers the error itself: `None` when it did (or the
    /// connection is gone).
    fn standing(
        &mut self,
        conn: ConnId,
        id: u32,
        channel: &str,
    ) -> Result<Option<Standing>, Disconnect> {
        let options = match self.channel_options(channel)? {
            Ok(options) => options,
            Err(code) => {
                self.error(conn, id, code);
                return Ok(None);
            }
        };
        Ok(self.conns.get(&conn).map(|c| Standing {
            options,
            anonymous: c.anonymous(),
            subscribed: c.sub(channel).is_some(),
            user: c.user.clone(),
        }))
    }

    fn client_publish(
        &mut self,
        conn: ConnId,
        id: u32,
        channel: &str,
        data: Option<Bytes>,
    ) -> CommandResult {
        let Some(st) = self.standing(conn, id, channel)? else {
            return Ok(());
        };
        let o = &st.options;
        if !st.may(
            o.allow_publish_for_anonymous,
            o.allow_publish_for_client,
            o.allow_publish_for_subscriber,
        ) {
            self.error(conn, id, ErrorCode::PermissionDenied);
            return Ok(());
        }
        let Some(data) = data else {
            self.error(conn, id, ErrorCode::BadRequest);
            return Ok(());
        };
        self.reply(conn, centrifuge::reply(id, "publish", |_| {}));
        let home = self.home(channel);
        let msg = BusMessage::Publish {
            channel: ChannelName::new(channel),
            from: conn,
            user: st.user,
            payload: PubPayload::Json(data),
        };
        self.send_bus(home, msg);
        Ok(())
    }

    /// Sends `query` about `channel` to its home, which answers `id`.
    fn ask(&mut self, conn: ConnId, id: u32, channel: &str, query: Query) {
        let home = self.home(channel);
        let msg = BusMessage::Query {
            channel: ChannelName::new(channel),
            conn,
            shard: self.config.shard,
            id,
            query,
        };
        self.send_bus(home, msg);
    }

    fn presence(&mut self, conn: ConnId, id: u32, channel: &str, stats: bool) -> CommandResult {
        let Some(st) = self.standing(conn, id, channel)? else {
            return Ok(());
        };
        let o = &st.options;
        if !o.presence {
            self.error(conn, id, ErrorCode::NotAvailable);
        } else if !st.may(
            o.allow_presence_for_anonymous,
            o.allow_presence_for_client,
            o.allow_presence_for_subscriber,
        ) {
            self.error(conn, id, ErrorCode::PermissionDenied);
        } else {
            let query = if stats {
                Query::PresenceStats
            } else {
                Query::Presence
            };
            self.ask(conn, id, channel, query);
        }
        Ok(())
    }

    fn history(
        &mut self,
        conn: ConnId,
        id: u32,
        req: &centrifuge::HistoryRequest,
    ) -> CommandResult {
        let Some(st) = self.standing(conn, id, &req.channel)? else {
            return Ok(());
        };
        let o = &st.options;
        if !o.history() {
            self.error(conn, id, ErrorCode::NotAvailable);
        } else if !st.may(
            o.allow_history_for_anonymous,
            o.allow_history_for_client,
            o.allow_history_for_subscriber,
        ) {
            self.error(conn, id, ErrorCode::PermissionDenied);
        } else {
            let query = Query::History {
                since: req.since.clone(),
                reverse: req.reverse,
            };
            self.ask(conn, id, &req.channel, query);
        }
        Ok(())
    }
}

/// A seed client's view of Centrifugo `data`: the `text` of an object that
/// has a string `text`, else the data's compact JSON.
fn seed_content(data: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(map)) => match map.get("text") {
            Some(serde_json::Value::String(text)) => text.clone(),
            _ => serde_json::Value::Object(map).to_string(),
        },
        Ok(other) => other.to_string(),
        Err(_) => String::from_utf8_lossy(data).into_owned(),
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
