//! The hub: every chat rule, as a deterministic state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use bytes::Bytes;

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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PingIntervalNotBelowPongTimeout => {
                "ping interval must be shorter than pong timeout (a live client could not answer in time)"
            }
            Self::ZeroDuration => "ping interval and pong timeout must be greater than zero",
            Self::ZeroLimit => "max message bytes, send queue and max connections must be at least 1",
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
        if self.ping_interval.is_zero() || self.pong_timeout.is_zero() {
            Err(ConfigError::ZeroDuration)
        } else if self.ping_interval >= self.pong_timeout {
            Err(ConfigError::PingIntervalNotBelowPongTimeout)
        } else if self.max_message_bytes == 0 || self.send_queue == 0 || self.max_connections == 0 {
            Err(ConfigError::ZeroLimit)
        } else {
            Ok(())
        }
    }
}

/// Counters for metrics and tests. Monotonic except the gauges `connections` and `rooms`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub rooms: usize,
    pub opened: u64,
    pub messages_in: u64,
    pub sends: u64,
    pub pings: u64,
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

/// A connection's membership of one room.
#[derive(Clone, Debug)]
struct Membership {
    room: Name,
    /// Position in the room's join order.
    join_seq: u64,
}

#[derive(Debug)]
struct Conn {
    codec: Codec,
    username: Option<Name>,
    /// The rooms this connection is in (one with the seed protocol).
    rooms: Vec<Membership>,
    last_pong: Timestamp,
    next_ping: Timestamp,
    /// The instant of this connection's entry in `Hub::timers`.
    timer: Timestamp,
}

#[derive(Debug)]
struct Room {
    id: RoomId,
    /// Members in join order.
    members: BTreeMap<u64, ConnId>,
    /// Chat messages accepted so far; the next message's sequence number.
    chat_seq: u64,
}

/// The chat hub as a sans-IO state machine.
///
/// The hub never reads a clock, opens a socket or spawns a thread: the
/// driver feeds it inputs stamped with the current time and carries out the
/// outputs. The driving contract:
///
/// 1. Call [`Hub::handle_input`] for every event (connection opened, message
///    read, pong, queue full, disconnect, shutdown).
/// 2. After each call, drain [`Hub::poll_output`] until `None`, performing
///    each [`Output`]. If queueing a `Send` fails because the connection's
///    queue is full, report [`Input::QueueFull`] (after draining).
/// 3. Arrange to call [`Hub::handle_timeout`] at [`Hub::poll_timeout`]
///    (re-read it after every call); early or repeated calls are harmless.
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
/// // The first heartbeat is due one ping interval after the open.
/// assert_eq!(hub.poll_timeout(), Some(Timestamp::from_millis(54_000)));
/// ```
#[derive(Debug)]
pub struct Hub {
    config: Config,
    conns: BTreeMap<ConnId, Conn>,
    relay: BTreeSet<ConnId>,
    rooms: BTreeMap<Name, Room>,
    /// One entry per connection: when its heartbeat next needs attention.
    timers: BTreeSet<(Timestamp, ConnId)>,
    outputs: VecDeque<Output>,
    next_join_seq: u64,
    next_room_id: u64,
    shutting_down: bool,
    stats: Stats,
}

impl Hub {
    /// A hub with no connections. `config` should pass [`Config::validate`].
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            conns: BTreeMap::new(),
            relay: BTreeSet::new(),
            rooms: BTreeMap::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            next_join_seq: 0,
            next_room_id: 0,
            shutting_down: false,
            stats: Stats::default(),
        }
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Feeds one event to the hub. Drain [`Hub::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Timestamp, input: Input) {
        match input {
            Input::Open { conn, route } => self.open(now, conn, route),
            Input::Message { conn, frame } => self.message(conn, frame),
            Input::Pong { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.last_pong = now;
                    // The timer entry may now be early; handle_timeout re-arms it.
                }
            }
            Input::QueueFull { conn } => self.end(conn, CloseReason::SlowConsumer),
            Input::Disconnect { conn, reason } => self.end(conn, reason),
            Input::Shutdown => self.shutdown(),
        }
    }

    /// Runs the heartbeat: pings connections that are due and closes those
    /// whose pong deadline has passed. Call at [`Hub::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let deadline = c.last_pong.saturating_add(self.config.pong_timeout);
            if now >= deadline {
                self.end(conn, CloseReason::HeartbeatTimeout);
                continue;
            }
            if now >= c.next_ping {
                self.outputs.push_back(Output::Ping { conn });
                self.stats.pings += 1;
                while c.next_ping <= now {
                    c.next_ping = c.next_ping.saturating_add(self.config.ping_interval);
                }
            }
            c.timer = c.next_ping.min(deadline);
            self.timers.insert((c.timer, conn));
        }
    }

    /// The next output for the driver, in the order the hub decided them.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Hub::handle_timeout`] must next be called, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|&(at, _)| at)
    }

    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            rooms: self.rooms.len(),
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

    /// Room names, in order.
    pub fn rooms(&self) -> impl Iterator<Item = &Name> {
        self.rooms.keys()
    }

    /// A room's members in join order (empty if the room does not exist).
    pub fn room_members(&self, room: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.members.values().copied())
    }

    /// Relay (`/ws`) connections, in id order.
    pub fn relay_members(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.relay.iter().copied()
    }

    /// How many chat messages the room has accepted (its next sequence number).
    #[must_use]
    pub fn room_chat_seq(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(|r| r.chat_seq)
    }

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
        let timer = next_ping.min(now.saturating_add(self.config.pong_timeout));
        let (codec, username, room) = match route {
            Route::Relay => (Codec::Relay, None, None),
            Route::Room { room, username } => (Codec::SeedJson, Some(username), Some(room)),
        };
        self.conns.insert(
            conn,
            Conn {
                codec,
                username,
                rooms: Vec::new(),
                last_pong: now,
                next_ping,
                timer,
            },
        );
        self.timers.insert((timer, conn));
        match room {
            None => {
                self.relay.insert(conn);
            }
            Some(room) => self.join(conn, &room),
        }
    }

    fn join(&mut self, conn: ConnId, room_name: &Name) {
        let join_seq = self.next_join_seq;
        self.next_join_seq += 1;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.rooms.push(Membership {
            room: room_name.clone(),
            join_seq,
        });
        let username = c.username.clone();
        let next_room_id = &mut self.next_room_id;
        let room = self.rooms.entry(room_name.clone()).or_insert_with(|| {
            let id = RoomId(*next_room_id);
            *next_room_id += 1;
            Room {
                id,
                members: BTreeMap::new(),
                chat_seq: 0,
            }
        });
        room.members.insert(join_seq, conn);
        // Seed order: the hub registers the client and sends the new list,
        // then the handler broadcasts the join notice.
        let user = username.as_ref().map_or("", Name::as_str);
        let joined = encode_seed(
            SeedType::UserJoined,
            &format!("{user} joined the room"),
            room_name.as_str(),
            user,
        );
        self.broadcast_presence(room_name);
        self.broadcast_room(room_name, &joined);
    }

    fn message(&mut self, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        self.stats.messages_in += 1;
        match c
            .codec
            .decode(frame.kind, frame.payload, self.config.max_message_bytes)
        {
            Err(reason) => self.end(conn, reason),
            Ok(ClientMessage::Relay(frame)) => {
                for &to in &self.relay {
                    self.outputs.push_back(Output::Send {
                        conn: to,
                        frame: frame.clone(),
                        presence: None,
                    });
                }
                self.stats.sends += self.relay.len() as u64;
            }
            Ok(ClientMessage::Chat(text)) => {
                let user = c.username.clone();
                let user = user.as_ref().map_or("", Name::as_str);
                // Decode checked UTF-8; a failure here would be a core bug, so
                // fall back to a lossy copy rather than panic.
                let content = String::from_utf8_lossy(&text);
                let rooms: Vec<Name> = c.rooms.iter().map(|m| m.room.clone()).collect();
                for room in rooms {
                    let out = encode_seed(SeedType::Chat, &content, room.as_str(), user);
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.chat_seq += 1;
                    }
                    self.broadcast_room(&room, &out);
                }
            }
        }
    }

    /// Removes `conn` for `reason`: its close first, then the notices its
    /// departure owes the rooms it was in.
    fn end(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.timers.remove(&(c.timer, conn));
        self.relay.remove(&conn);
        self.count_close(reason);
        self.outputs.push_back(Output::Close { conn, reason });
        let user = c.username.as_ref().map_or("", Name::as_str);
        for m in &c.rooms {
            let Some(room) = self.rooms.get_mut(&m.room) else {
                continue;
            };
            room.members.remove(&m.join_seq);
            if room.members.is_empty() {
                self.rooms.remove(&m.room);
                continue;
            }
            let left = encode_seed(
                SeedType::UserLeft,
                &format!("{user} left the room"),
                m.room.as_str(),
                user,
            );
            self.broadcast_room(&m.room, &left);
            self.broadcast_presence(&m.room);
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
        self.relay.clear();
        self.rooms.clear();
        self.timers.clear();
    }

    /// Sends the room's `online_users` (usernames in join order) to every member.
    fn broadcast_presence(&mut self, room_name: &Name) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        let mut list = String::new();
        for (i, conn) in room.members.values().enumerate() {
            if i > 0 {
                list.push(',');
            }
            if let Some(name) = self.conns.get(conn).and_then(|c| c.username.as_ref()) {
                list.push_str(name.as_str());
            }
        }
        let frame = encode_seed(SeedType::OnlineUsers, &list, room_name.as_str(), "");
        let id = room.id;
        self.fan_out(room_name, &frame, Some(id));
    }

    fn broadcast_room(&mut self, room_name: &Name, frame: &Frame) {
        self.fan_out(room_name, frame, None);
    }

    fn fan_out(&mut self, room_name: &Name, frame: &Frame, presence: Option<RoomId>) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        for &conn in room.members.values() {
            self.outputs.push_back(Output::Send {
                conn,
                frame: frame.clone(),
                presence,
            });
        }
        self.stats.sends += room.members.len() as u64;
    }

    fn count_close(&mut self, reason: CloseReason) {
        if let Some(i) = CloseReason::ALL.iter().position(|r| *r == reason) {
            self.stats.closes[i] += 1;
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
