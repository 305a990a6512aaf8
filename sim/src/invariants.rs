//! The oracle: what the hub must do, worked out independently of it.
//!
//! The oracle keeps its own small model of the chat rules (who is open, who
//! is in which room in join order, what every connection is owed) and never
//! reads the hub's private state. The world consults it around every hub
//! call and every client observation:
//!
//! | when | method | checks | cost |
//! |---|---|---|---|
//! | before every hub call | [`Oracle::before_input`], [`Oracle::before_timeout`] | predicts the closes, fan-outs and membership changes the call owes | O(recipients) |
//! | every drained output | [`Oracle::on_output`] | output-after-close, close-once, close-reason (1000/1009/1007/1003/1008/1013 for their causes), unexpected-close, heartbeat window (too early, too late, live client), ping cadence, fan-out (no send to a non-recipient) | O(1) |
//! | after every hub call | [`Oracle::after_call`] | missing-close; fan-out (every recipient got its sends in this call: nothing lost or delayed); membership of what the call touched (`is_open`, `room_members` in join order, `room_chat_seq`, `relay_members`); `connection_count`, the whole of `stats()`; timer progress | O(touched rooms' members) |
//! | every world event | [`Oracle::check_clock`] | no open connection is past `last pong + pong_timeout + ping_interval` | O(1) |
//! | every frame a client reads | [`Oracle::observe`], [`Oracle::observe_close`] | the frame is the next one owed (chat, user_joined, user_left: exactly once, in order, nobody else), presence snapshots in order and equal to the members when made, relay frames verbatim, close code, a flushing close loses nothing | O(1) |
//! | every max(1024, connections) hub calls, and at the end | [`Oracle::audit`] | the whole hub against the model: room list, every room's members, chat seq and presence names, relay, `is_open` of every connection, stats | O(connections) |
//! | end of the liveness phase | [`Oracle::settled`] | every open connection has a healthy client, is owed nothing, and its latest `online_users` equals its room's live members | O(connections) |
//! | after shutdown | [`Oracle::all_closed_once`] | every connection was closed exactly once | O(connections) |
//!
//! Determinism (same seed, same trace hash) is checked by running a seed
//! twice (`tests/seeds.rs`); the queue bound is checked by the world on
//! every push.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::rc::Rc;

use hubbub_core::{
    CloseCode, CloseReason, Config, ConnId, Frame, Hub, Input, MessageKind, Name, Output,
    SeedMessage, SeedType, Stats, Timestamp,
};

use crate::client::Seen;

/// Each rule the simulation enforces; a failure names the one it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    OutputAfterClose,
    CloseOnce,
    CloseReason,
    UnexpectedClose,
    MissingClose,
    HeartbeatTooEarly,
    HeartbeatTooLate,
    LiveClientTimedOut,
    PingCadence,
    FanOut,
    Membership,
    Stats,
    TimerProgress,
    WireFormat,
    ChatDelivery,
    NoticeDelivery,
    PresenceDelivery,
    RelayDelivery,
    CloseDelivery,
    QueueBound,
    Convergence,
}

impl Invariant {
    /// Every invariant, in declaration order.
    pub const ALL: [Self; 21] = [
        Self::OutputAfterClose,
        Self::CloseOnce,
        Self::CloseReason,
        Self::UnexpectedClose,
        Self::MissingClose,
        Self::HeartbeatTooEarly,
        Self::HeartbeatTooLate,
        Self::LiveClientTimedOut,
        Self::PingCadence,
        Self::FanOut,
        Self::Membership,
        Self::Stats,
        Self::TimerProgress,
        Self::WireFormat,
        Self::ChatDelivery,
        Self::NoticeDelivery,
        Self::PresenceDelivery,
        Self::RelayDelivery,
        Self::CloseDelivery,
        Self::QueueBound,
        Self::Convergence,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::OutputAfterClose => "output-after-close",
            Self::CloseOnce => "close-once",
            Self::CloseReason => "close-reason",
            Self::UnexpectedClose => "unexpected-close",
            Self::MissingClose => "missing-close",
            Self::HeartbeatTooEarly => "heartbeat-too-early",
            Self::HeartbeatTooLate => "heartbeat-too-late",
            Self::LiveClientTimedOut => "live-client-timed-out",
            Self::PingCadence => "ping-cadence",
            Self::FanOut => "fan-out",
            Self::Membership => "membership",
            Self::Stats => "stats",
            Self::TimerProgress => "timer-progress",
            Self::WireFormat => "wire-format",
            Self::ChatDelivery => "chat-delivery",
            Self::NoticeDelivery => "notice-delivery",
            Self::PresenceDelivery => "presence-delivery",
            Self::RelayDelivery => "relay-delivery",
            Self::CloseDelivery => "close-delivery",
            Self::QueueBound => "queue-bound",
            Self::Convergence => "convergence",
        }
    }

    /// The rule, in one sentence.
    #[must_use]
    pub const fn rule(self) -> &'static str {
        match self {
            Self::OutputAfterClose => "no output for a connection after its close (or before its open)",
            Self::CloseOnce => "exactly one close per connection",
            Self::CloseReason => "a close carries its cause's reason: peer close 1000, oversize 1009, bad UTF-8 1007, binary on JSON 1003, full queue / heartbeat 1008, full server 1013",
            Self::UnexpectedClose => "the hub closes nobody without a cause",
            Self::MissingClose => "a disconnect, bad message or full queue closes the connection in the same call",
            Self::HeartbeatTooEarly => "a silent client is closed no earlier than pong_timeout after its last pong",
            Self::HeartbeatTooLate => "a silent client is closed no later than pong_timeout + ping_interval after its last pong",
            Self::LiveClientTimedOut => "a live (ponging, reading) client is never closed by the heartbeat",
            Self::PingCadence => "pings come ping_interval after the open and every interval after, never early",
            Self::FanOut => "every accepted chat, join and departure is sent in the same call to exactly the room's members at that moment (the relay's, for relay frames): nobody else, nobody delayed or lost",
            Self::Membership => "the hub's query API (is_open, room_members in join order, relay_members, room_chat_seq, connection_count) agrees with the model",
            Self::Stats => "the hub's stats() count exactly the opens, messages, sends, pings and closes that happened",
            Self::TimerProgress => "after a call, poll_timeout() is later than now",
            Self::WireFormat => "a room client's frames are seed JSON of its room, tagged as presence exactly when they are online_users",
            Self::ChatDelivery => "every chat reaches every member of its room at acceptance exactly once, in the room's order, and nobody else",
            Self::NoticeDelivery => "exactly one user_joined per join and one user_left per departure, whatever the cause, seen by every other member present",
            Self::PresenceDelivery => "online_users snapshots arrive in order (older ones may be conflated away) and each equals the live members in join order when it was made",
            Self::RelayDelivery => "every relay frame reaches every relay connection verbatim, exactly once, in order",
            Self::CloseDelivery => "a client sees its close code, and a flushing close arrives after everything queued before it",
            Self::QueueBound => "no connection's outbox holds more than send_queue frames",
            Self::Convergence => "once faults heal, everything in flight is delivered, the impaired are closed, and every live client's view equals the hub's",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A broken invariant, with the virtual time it was found at.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: Invariant,
    pub at: Timestamp,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariant `{}` violated at t={}: {}\n  rule: {}",
            self.invariant,
            self.at,
            self.detail,
            self.invariant.rule()
        )
    }
}

impl std::error::Error for Violation {}

/// Whether the transport writes out what is queued before a close with this
/// reason: the core's rule, which the server's writers apply.
pub use hubbub_core::outbox::flushes_on_close as close_flushes_queue;

/// The protocol's verdict on a client message, from the spec rather than the
/// core's codec: size first (the transport enforces the limit before looking
/// at content), then binary on a JSON connection, then UTF-8 of text.
fn verdict(room_protocol: bool, frame: &Frame, max_bytes: usize) -> Result<(), CloseReason> {
    if frame.payload.len() > max_bytes {
        Err(CloseReason::MessageTooBig)
    } else if room_protocol && frame.kind == MessageKind::Binary {
        Err(CloseReason::BinaryNotAccepted)
    } else if frame.kind == MessageKind::Text && std::str::from_utf8(&frame.payload).is_err() {
        Err(CloseReason::InvalidUtf8)
    } else {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Registered by the world; `Input::Open` not handled yet.
    Connecting,
    Open,
    Closed(CloseReason),
}

/// A non-presence frame a room connection is owed, in order.
#[derive(Clone, Debug)]
enum Notice {
    Chat { content: Rc<str>, user: Rc<str> },
    Joined(Rc<str>),
    Left(Rc<str>),
}

impl Notice {
    fn matches(&self, msg: &SeedMessage) -> bool {
        match self {
            Self::Chat { content, user } => {
                msg.kind == SeedType::Chat && *msg.content == **content && *msg.username == **user
            }
            Self::Joined(user) => {
                msg.kind == SeedType::UserJoined
                    && *msg.username == **user
                    && msg.content.strip_suffix(" joined the room") == Some(&**user)
            }
            Self::Left(user) => {
                msg.kind == SeedType::UserLeft
                    && *msg.username == **user
                    && msg.content.strip_suffix(" left the room") == Some(&**user)
            }
        }
    }
}

#[derive(Debug)]
struct ConnModel {
    /// `None` for the relay.
    room: Option<Name>,
    username: Rc<str>,
    life: Life,
    closes: u32,
    opened_at: Timestamp,
    last_pong: Timestamp,
    next_ping: Timestamp,
    /// The client stopped reading, stopped ponging, vanished or left at some
    /// point: a heartbeat close is then legitimate (within its window).
    impaired: bool,
    /// Sends the current hub call still owes this connection.
    step_sends: u32,
    notices: VecDeque<Notice>,
    /// Presence snapshots owed, matched greedily (leftmost) against what the
    /// client reads: a client may skip older ones (conflation), never go back.
    presence: VecDeque<Rc<str>>,
    /// The latest snapshot the client read.
    presence_seen: Option<Rc<str>>,
    relay: VecDeque<Frame>,
}

impl ConnModel {
    /// Whether the client has yet to read the latest snapshot it is owed.
    /// Snapshots can repeat (A, B, A), so leftmost matching may leave owed
    /// entries behind that a later-matching reading would have consumed:
    /// what counts is that the last one read equals the last one owed.
    fn presence_owed(&self) -> bool {
        self.presence
            .back()
            .is_some_and(|last| self.presence_seen.as_deref() != Some(&**last))
    }

    fn owed(&self) -> usize {
        self.notices.len() + usize::from(self.presence_owed()) + self.relay.len()
    }

    /// What is still owed, for a violation's detail.
    fn describe_owed(&self) -> String {
        format!(
            "{} notice(s) (next {:?}), presence {:?} (read {:?}), {} relay frame(s)",
            self.notices.len(),
            self.notices.front(),
            self.presence.back(),
            self.presence_seen,
            self.relay.len()
        )
    }
}

#[derive(Debug)]
struct RoomModel {
    /// In join order.
    members: Vec<ConnId>,
    chat_seq: u64,
    /// The current `online_users` content.
    presence: Rc<str>,
}

/// What the hub call in progress must do.
#[derive(Debug, Default)]
struct CallPlan {
    closes: BTreeMap<ConnId, CloseReason>,
    heartbeat: bool,
    /// Connections whose state or owed sends this call touched.
    conns: Vec<ConnId>,
    rooms: Vec<Name>,
    relay: bool,
}

/// The independent model of what the hub must do.
#[derive(Debug)]
pub struct Oracle {
    ping_interval_ms: u64,
    pong_timeout_ms: u64,
    max_message_bytes: usize,
    max_connections: usize,
    /// Indexed by `ConnId - 1`: the world numbers connections from 1 without gaps.
    conns: Vec<ConnModel>,
    rooms: BTreeMap<Name, RoomModel>,
    /// The stream position (chat lines accepted) of rooms that emptied:
    /// the store keeps a stream past its last member, so a room made again
    /// goes on counting from there.
    streams: BTreeMap<Name, u64>,
    relay: BTreeSet<ConnId>,
    open: usize,
    shutting_down: bool,
    /// What `Hub::stats()` must say.
    stats: Stats,
    /// (latest permitted heartbeat close, conn) for every open connection.
    heartbeat_limits: BTreeSet<(Timestamp, ConnId)>,
    plan: CallPlan,
    /// Per invariant: how many checks examined something (a test fails if
    /// a preset set leaves one at zero: a rule that never fires proves nothing).
    checks: Checks,
}

/// How often each invariant was actually put to the test.
#[derive(Clone, Debug, Default)]
pub struct Checks([Cell<u64>; Invariant::ALL.len()]);

impl Checks {
    /// One check of `invariant` examined something.
    pub fn hit(&self, invariant: Invariant) {
        let c = &self.0[invariant as usize];
        c.set(c.get() + 1);
    }

    #[must_use]
    pub fn get(&self, invariant: Invariant) -> u64 {
        self.0[invariant as usize].get()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&self, other: &Self) {
        for (a, b) in self.0.iter().zip(&other.0) {
            a.set(a.get() + b.get());
        }
    }

    /// The invariants never examined.
    #[must_use]
    pub fn never(&self) -> Vec<Invariant> {
        Invariant::ALL
            .into_iter()
            .filter(|i| self.get(*i) == 0)
            .collect()
    }
}

impl fmt::Display for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, i) in Invariant::ALL.into_iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{i} {}", self.get(i))?;
        }
        Ok(())
    }
}

fn violation(invariant: Invariant, at: Timestamp, detail: String) -> Violation {
    Violation {
        invariant,
        at,
        detail,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn plus(t: Timestamp, ms: u64) -> Timestamp {
    Timestamp::from_millis(t.as_millis().saturating_add(ms))
}

fn close_index(reason: CloseReason) -> usize {
    CloseReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("every reason is in CloseReason::ALL")
}

/// Owes `conn` one more send in this call.
fn owe(conns: &mut [ConnModel], plan: &mut CallPlan, stats: &mut Stats, conn: ConnId) -> usize {
    let i = index(conn);
    if conns[i].step_sends == 0 {
        plan.conns.push(conn);
    }
    conns[i].step_sends += 1;
    stats.sends += 1;
    i
}

fn index(conn: ConnId) -> usize {
    usize::try_from(conn.0 - 1).expect("connection ids are small")
}

fn presence_of(members: &[ConnId], conns: &[ConnModel]) -> Rc<str> {
    let mut list = String::new();
    for (i, &m) in members.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&conns[index(m)].username);
    }
    list.into()
}

impl Oracle {
    #[must_use]
    pub fn new(config: &Config) -> Self {
        Self {
            ping_interval_ms: millis(config.ping_interval),
            pong_timeout_ms: millis(config.pong_timeout),
            max_message_bytes: config.max_message_bytes,
            max_connections: config.max_connections,
            conns: Vec::new(),
            rooms: BTreeMap::new(),
            streams: BTreeMap::new(),
            relay: BTreeSet::new(),
            open: 0,
            shutting_down: false,
            stats: Stats::default(),
            heartbeat_limits: BTreeSet::new(),
            plan: CallPlan::default(),
            checks: Checks::default(),
        }
    }

    /// How often each invariant examined something so far.
    #[must_use]
    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    fn latest_close(&self, last_pong: Timestamp) -> Timestamp {
        plus(last_pong, self.pong_timeout_ms + self.ping_interval_ms)
    }

    /// A connection the world is about to open; ids must count up from 1.
    pub fn register(&mut self, conn: ConnId, room: Option<Name>, username: &str) {
        assert_eq!(
            index(conn),
            self.conns.len(),
            "the world numbers connections from 1 without gaps"
        );
        self.conns.push(ConnModel {
            room,
            username: username.into(),
            life: Life::Connecting,
            closes: 0,
            opened_at: Timestamp::ZERO,
            last_pong: Timestamp::ZERO,
            next_ping: Timestamp::ZERO,
            impaired: false,
            step_sends: 0,
            notices: VecDeque::new(),
            presence: VecDeque::new(),
            presence_seen: None,
            relay: VecDeque::new(),
        });
    }

    /// The client stopped reading or ponging, vanished or left.
    pub fn mark_impaired(&mut self, conn: ConnId) {
        self.conns[index(conn)].impaired = true;
    }

    #[must_use]
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns
            .get(index(conn))
            .is_some_and(|m| m.life == Life::Open)
    }

    #[must_use]
    pub fn open_count(&self) -> usize {
        self.open
    }

    /// The client will read nothing more: what it was owed no longer matters.
    pub fn forget_owed(&mut self, conn: ConnId) {
        let m = &mut self.conns[index(conn)];
        m.notices = VecDeque::new();
        m.presence = VecDeque::new();
        m.relay = VecDeque::new();
    }

    /// Predicts what `handle_input(now, input)` must do.
    pub fn before_input(&mut self, now: Timestamp, input: &Input) {
        match input {
            Input::Open { conn, .. } => self.open_conn(now, *conn),
            Input::Message { conn, frame } => self.message(*conn, frame),
            Input::Pong { conn } => {
                if self.is_open(*conn) {
                    let latest = self.latest_close(now);
                    let m = &mut self.conns[index(*conn)];
                    let old = plus(m.last_pong, self.pong_timeout_ms + self.ping_interval_ms);
                    m.last_pong = now;
                    self.heartbeat_limits.remove(&(old, *conn));
                    self.heartbeat_limits.insert((latest, *conn));
                    self.plan.conns.push(*conn);
                }
            }
            Input::QueueFull { conn } => {
                if self.is_open(*conn) {
                    self.plan.closes.insert(*conn, CloseReason::SlowConsumer);
                }
            }
            Input::Disconnect { conn, reason } => {
                if self.is_open(*conn) {
                    self.plan.closes.insert(*conn, *reason);
                }
            }
            Input::Shutdown => {
                self.shutting_down = true;
                for (i, m) in self.conns.iter().enumerate() {
                    if m.life == Life::Open {
                        self.plan
                            .closes
                            .insert(ConnId(i as u64 + 1), CloseReason::ServerShutdown);
                    }
                }
            }
        }
    }

    /// Predicts `handle_timeout(now)`: heartbeat closes become legitimate.
    pub fn before_timeout(&mut self) {
        self.plan.heartbeat = true;
    }

    fn open_conn(&mut self, now: Timestamp, conn: ConnId) {
        let Some(m) = self.conns.get_mut(index(conn)) else {
            return;
        };
        if m.life != Life::Connecting {
            return;
        }
        self.plan.conns.push(conn);
        if self.shutting_down || self.open >= self.max_connections {
            let reason = if self.shutting_down {
                CloseReason::ServerShutdown
            } else {
                CloseReason::ServerFull
            };
            self.plan.closes.insert(conn, reason);
            return;
        }
        m.life = Life::Open;
        m.opened_at = now;
        m.last_pong = now;
        m.next_ping = plus(now, self.ping_interval_ms);
        let room = m.room.clone();
        self.open += 1;
        self.stats.opened += 1;
        self.heartbeat_limits.insert((
            plus(now, self.pong_timeout_ms + self.ping_interval_ms),
            conn,
        ));
        let Some(room) = room else {
            self.relay.insert(conn);
            self.plan.relay = true;
            return;
        };
        let Self {
            conns,
            rooms,
            streams,
            plan,
            stats,
            ..
        } = self;
        let r = rooms.entry(room.clone()).or_insert_with(|| RoomModel {
            members: Vec::new(),
            chat_seq: streams.remove(&room).unwrap_or(0),
            presence: "".into(),
        });
        r.members.push(conn);
        r.presence = presence_of(&r.members, conns);
        let user = conns[index(conn)].username.clone();
        for &member in &r.members {
            owe(conns, plan, stats, member);
            let i = owe(conns, plan, stats, member);
            conns[i].presence.push_back(r.presence.clone());
            conns[i].notices.push_back(Notice::Joined(user.clone()));
        }
        plan.rooms.push(room);
    }

    fn message(&mut self, conn: ConnId, frame: &Frame) {
        if !self.is_open(conn) {
            return;
        }
        self.stats.messages_in += 1;
        let room = self.conns[index(conn)].room.clone();
        if let Err(reason) = verdict(room.is_some(), frame, self.max_message_bytes) {
            self.plan.closes.insert(conn, reason);
            return;
        }
        let Self {
            conns,
            rooms,
            plan,
            stats,
            relay,
            ..
        } = self;
        let Some(room) = room else {
            plan.relay = true;
            for &member in relay.iter() {
                let i = owe(conns, plan, stats, member);
                conns[i].relay.push_back(frame.clone());
            }
            return;
        };
        let r = rooms.get_mut(&room).expect("an open member's room exists");
        r.chat_seq += 1;
        let content: Rc<str> = String::from_utf8_lossy(&frame.payload).into();
        let user = conns[index(conn)].username.clone();
        for &member in &r.members {
            let i = owe(conns, plan, stats, member);
            conns[i].notices.push_back(Notice::Chat {
                content: content.clone(),
                user: user.clone(),
            });
        }
        plan.rooms.push(room);
    }

    /// Judges one drained output and applies it to the model.
    ///
    /// # Errors
    /// The invariant the output breaks.
    pub fn on_output(&mut self, now: Timestamp, out: &Output) -> Result<(), Violation> {
        let conn = out.conn();
        let Some(m) = self.conns.get_mut(index(conn)) else {
            return Err(violation(
                Invariant::OutputAfterClose,
                now,
                format!("{out:?} for {conn}, a connection that never existed"),
            ));
        };
        if !matches!(out, Output::Close { .. }) {
            self.checks.hit(Invariant::OutputAfterClose);
        }
        match out {
            Output::Send { .. } | Output::Ping { .. } if m.life != Life::Open => {
                let detail = format!("{out:?} for {conn} in state {:?}", m.life);
                Err(violation(Invariant::OutputAfterClose, now, detail))
            }
            Output::Send { .. } => {
                self.checks.hit(Invariant::FanOut);
                if m.step_sends == 0 {
                    let detail = format!(
                        "{out:?}: {conn} is not owed anything by this call (not a member, or already served)"
                    );
                    return Err(violation(Invariant::FanOut, now, detail));
                }
                m.step_sends -= 1;
                Ok(())
            }
            Output::Ping { .. } => {
                self.checks.hit(Invariant::PingCadence);
                let since_open = now.as_millis() - m.opened_at.as_millis();
                if now < m.next_ping || since_open % self.ping_interval_ms != 0 {
                    let detail = format!(
                        "ping to {conn} at {now}: opened at {}, ping interval {}ms, next ping due {}",
                        m.opened_at, self.ping_interval_ms, m.next_ping
                    );
                    return Err(violation(Invariant::PingCadence, now, detail));
                }
                m.next_ping = plus(now, self.ping_interval_ms);
                self.stats.pings += 1;
                Ok(())
            }
            Output::Close { reason, .. } => self.close(now, conn, *reason),
        }
    }

    fn close(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        reason: CloseReason,
    ) -> Result<(), Violation> {
        let m = &self.conns[index(conn)];
        self.checks.hit(Invariant::CloseOnce);
        self.checks.hit(Invariant::UnexpectedClose);
        if let Life::Closed(first) = m.life {
            let detail = format!("{conn} closed again with {reason} after {first}");
            return Err(violation(Invariant::CloseOnce, now, detail));
        }
        if let Some(expected) = self.plan.closes.remove(&conn) {
            self.checks.hit(Invariant::CloseReason);
            self.checks.hit(Invariant::MissingClose);
            if expected != reason {
                let detail = format!(
                    "{conn} closed with {reason} ({}), its cause calls for {expected} ({})",
                    reason.code(),
                    expected.code()
                );
                return Err(violation(Invariant::CloseReason, now, detail));
            }
        } else if reason == CloseReason::HeartbeatTimeout
            && self.plan.heartbeat
            && m.life == Life::Open
        {
            self.checks.hit(Invariant::HeartbeatTooEarly);
            self.checks.hit(Invariant::HeartbeatTooLate);
            self.checks.hit(Invariant::LiveClientTimedOut);
            let earliest = plus(m.last_pong, self.pong_timeout_ms);
            let latest = self.latest_close(m.last_pong);
            let window = format!(
                "last pong {}, pong timeout {}ms, ping interval {}ms: allowed {earliest}..={latest}",
                m.last_pong, self.pong_timeout_ms, self.ping_interval_ms
            );
            if now < earliest {
                let detail = format!("{conn} timed out at {now}; {window}");
                return Err(violation(Invariant::HeartbeatTooEarly, now, detail));
            }
            if now > latest {
                let detail = format!("{conn} timed out at {now}; {window}");
                return Err(violation(Invariant::HeartbeatTooLate, now, detail));
            }
            if !m.impaired {
                let detail = format!("{conn} answered every ping and kept reading; {window}");
                return Err(violation(Invariant::LiveClientTimedOut, now, detail));
            }
        } else {
            let detail = format!(
                "{conn} ({:?}) closed with {reason} but nothing called for it",
                m.life
            );
            return Err(violation(Invariant::UnexpectedClose, now, detail));
        }
        self.stats.closes[close_index(reason)] += 1;
        let was_open = m.life == Life::Open;
        let last_pong = m.last_pong;
        let m = &mut self.conns[index(conn)];
        m.life = Life::Closed(reason);
        m.closes += 1;
        self.plan.conns.push(conn);
        if was_open {
            self.open -= 1;
            let limit = self.latest_close(last_pong);
            self.heartbeat_limits.remove(&(limit, conn));
            self.depart(conn);
        }
        Ok(())
    }

    /// `conn` left: the relay or its room forgets it; the others are told.
    fn depart(&mut self, conn: ConnId) {
        let Self {
            conns,
            rooms,
            streams,
            plan,
            stats,
            relay,
            shutting_down,
            ..
        } = self;
        let Some(room) = conns[index(conn)].room.clone() else {
            relay.remove(&conn);
            plan.relay = true;
            return;
        };
        plan.rooms.push(room.clone());
        let r = rooms.get_mut(&room).expect("an open member's room exists");
        r.members.retain(|&m| m != conn);
        if r.members.is_empty() {
            if let Some(r) = rooms.remove(&room) {
                streams.insert(room, r.chat_seq);
            }
            return;
        }
        if *shutting_down {
            return; // shutdown closes everyone and tells no one
        }
        r.presence = presence_of(&r.members, conns);
        let user = conns[index(conn)].username.clone();
        for &member in &r.members {
            owe(conns, plan, stats, member);
            let i = owe(conns, plan, stats, member);
            conns[i].notices.push_back(Notice::Left(user.clone()));
            conns[i].presence.push_back(r.presence.clone());
        }
    }

    /// Checks what the finished call left behind and compares the hub's
    /// query API for everything the call touched.
    ///
    /// # Errors
    /// The first invariant broken.
    pub fn after_call(&mut self, now: Timestamp, hub: &Hub) -> Result<(), Violation> {
        let plan = std::mem::take(&mut self.plan);
        if let Some((conn, reason)) = plan.closes.first_key_value() {
            let detail = format!(
                "{conn} should have been closed with {reason} ({}) by this call",
                reason.code()
            );
            return Err(violation(Invariant::MissingClose, now, detail));
        }
        for &conn in &plan.conns {
            self.checks.hit(Invariant::FanOut);
            let m = &mut self.conns[index(conn)];
            if m.step_sends != 0 {
                let detail = format!(
                    "{conn} is still owed {} send(s) at the end of the call: lost or delayed",
                    m.step_sends
                );
                m.step_sends = 0;
                return Err(violation(Invariant::FanOut, now, detail));
            }
            if hub.is_open(conn) != (m.life == Life::Open) {
                let detail = format!(
                    "hub.is_open({conn}) = {}, model says {:?}",
                    hub.is_open(conn),
                    m.life
                );
                return Err(violation(Invariant::Membership, now, detail));
            }
        }
        let mut rooms = plan.rooms;
        rooms.sort_unstable();
        rooms.dedup();
        for room in &rooms {
            self.check_room(now, hub, room)?;
        }
        if plan.relay {
            self.check_relay(now, hub)?;
        }
        self.check_totals(now, hub)?;
        if let Some(at) = hub.poll_timeout() {
            self.checks.hit(Invariant::TimerProgress);
            if at <= now {
                let detail = format!("poll_timeout() = {at} after a call at {now}");
                return Err(violation(Invariant::TimerProgress, now, detail));
            }
        }
        Ok(())
    }

    fn check_room(&self, now: Timestamp, hub: &Hub, room: &Name) -> Result<(), Violation> {
        self.checks.hit(Invariant::Membership);
        let model = self.rooms.get(room);
        let members: &[ConnId] = model.map_or(&[], |r| &r.members);
        if !hub.room_members(room.as_str()).eq(members.iter().copied()) {
            let got: Vec<ConnId> = hub.room_members(room.as_str()).collect();
            let detail =
                format!("room {room:?}: hub members {got:?}, model (join order) {members:?}");
            return Err(violation(Invariant::Membership, now, detail));
        }
        let seq = model.map(|r| r.chat_seq);
        if hub.room_chat_seq(room.as_str()) != seq {
            let detail = format!(
                "room {room:?}: hub chat seq {:?}, model {seq:?}",
                hub.room_chat_seq(room.as_str())
            );
            return Err(violation(Invariant::Membership, now, detail));
        }
        Ok(())
    }

    fn check_relay(&self, now: Timestamp, hub: &Hub) -> Result<(), Violation> {
        if !hub.relay_members().eq(self.relay.iter().copied()) {
            let got: BTreeSet<ConnId> = hub.relay_members().collect();
            let extra: Vec<&ConnId> = got.difference(&self.relay).collect();
            let missing: Vec<&ConnId> = self.relay.difference(&got).collect();
            let detail = format!(
                "relay_members(): the hub lists {extra:?} that are not relay members and lacks {missing:?}"
            );
            return Err(violation(Invariant::Membership, now, detail));
        }
        Ok(())
    }

    fn check_totals(&self, now: Timestamp, hub: &Hub) -> Result<(), Violation> {
        self.checks.hit(Invariant::Membership);
        self.checks.hit(Invariant::Stats);
        if hub.connection_count() != self.open {
            let detail = format!(
                "hub.connection_count() = {}, model {}",
                hub.connection_count(),
                self.open
            );
            return Err(violation(Invariant::Membership, now, detail));
        }
        let got = hub.stats();
        // The store's counters are the store model's to check; with the
        // hub's own in-memory engine nothing fails or is refused.
        let expected = Stats {
            connections: self.open,
            rooms: self.rooms.len(),
            store_appends: got.store_appends,
            store_opens: got.store_opens,
            ..self.stats.clone()
        };
        if got != expected {
            let detail = format!("hub.stats() = {got:?}, expected {expected:?}");
            return Err(violation(Invariant::Stats, now, detail));
        }
        Ok(())
    }

    /// After every world event: no open connection is past its latest
    /// permitted heartbeat close.
    ///
    /// # Errors
    /// [`Invariant::HeartbeatTooLate`].
    pub fn check_clock(&self, now: Timestamp) -> Result<(), Violation> {
        if !self.heartbeat_limits.is_empty() {
            self.checks.hit(Invariant::HeartbeatTooLate);
        }
        match self.heartbeat_limits.first() {
            Some(&(limit, conn)) if limit < now => {
                let m = &self.conns[index(conn)];
                let detail = format!(
                    "{conn} is still open at {now}; last pong {}, so it had to be closed by {limit}",
                    m.last_pong
                );
                Err(violation(Invariant::HeartbeatTooLate, now, detail))
            }
            _ => Ok(()),
        }
    }

    /// Judges one data frame a client read.
    ///
    /// # Errors
    /// The delivery invariant it breaks.
    pub fn observe(&mut self, now: Timestamp, conn: ConnId, seen: &Seen) -> Result<(), Violation> {
        let m = &mut self.conns[index(conn)];
        if matches!(seen, Seen::Relay(_)) {
            self.checks.hit(Invariant::RelayDelivery);
        }
        match seen {
            Seen::Relay(frame) => match m.relay.pop_front() {
                Some(owed) if owed == *frame => Ok(()),
                owed => {
                    let detail = format!("{conn} read {frame:?}; next owed {owed:?}");
                    Err(violation(Invariant::RelayDelivery, now, detail))
                }
            },
            Seen::Unparseable { why } => {
                let detail = format!("{conn} could not parse a frame: {why}");
                Err(violation(Invariant::WireFormat, now, detail))
            }
            Seen::Room {
                msg,
                tagged_presence,
            } => {
                let room = m.room.as_ref().map_or("", Name::as_str);
                let is_presence = msg.kind == SeedType::OnlineUsers;
                self.checks.hit(Invariant::WireFormat);
                self.checks.hit(match msg.kind {
                    SeedType::OnlineUsers => Invariant::PresenceDelivery,
                    SeedType::Chat => Invariant::ChatDelivery,
                    SeedType::UserJoined | SeedType::UserLeft => Invariant::NoticeDelivery,
                });
                if msg.room != room || is_presence != *tagged_presence {
                    let detail = format!(
                        "{conn} (room {room:?}) read {msg:?} tagged presence={tagged_presence}"
                    );
                    return Err(violation(Invariant::WireFormat, now, detail));
                }
                if is_presence {
                    // Older snapshots may have been conflated away; a newer
                    // one may not come before an older one.
                    while let Some(owed) = m.presence.pop_front() {
                        if *owed == *msg.content {
                            m.presence_seen = Some(owed);
                            return Ok(());
                        }
                    }
                    let detail = format!(
                        "{conn} read online_users {:?}, which is no snapshot it is owed (stale, reordered, duplicated or wrong)",
                        msg.content
                    );
                    return Err(violation(Invariant::PresenceDelivery, now, detail));
                }
                match m.notices.pop_front() {
                    Some(owed) if owed.matches(msg) => Ok(()),
                    owed => {
                        let chat =
                            msg.kind == SeedType::Chat || matches!(owed, Some(Notice::Chat { .. }));
                        let invariant = if chat {
                            Invariant::ChatDelivery
                        } else {
                            Invariant::NoticeDelivery
                        };
                        let detail = format!(
                            "{conn} read {:?} {:?} from {:?}; next owed {owed:?}",
                            msg.kind, msg.content, msg.username
                        );
                        Err(violation(invariant, now, detail))
                    }
                }
            }
        }
    }

    /// Judges the close frame a client read.
    ///
    /// # Errors
    /// [`Invariant::CloseDelivery`].
    pub fn observe_close(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        code: CloseCode,
    ) -> Result<(), Violation> {
        let m = &self.conns[index(conn)];
        self.checks.hit(Invariant::CloseDelivery);
        let Life::Closed(reason) = m.life else {
            let detail = format!("{conn} read close {code} while {:?}", m.life);
            return Err(violation(Invariant::CloseDelivery, now, detail));
        };
        if reason.code() != code {
            let detail = format!("{conn} read close {code}; it was closed for {reason}");
            return Err(violation(Invariant::CloseDelivery, now, detail));
        }
        if close_flushes_queue(reason) && m.owed() > 0 {
            let detail = format!(
                "{conn} read its close ({reason}) while still owed {}",
                m.describe_owed()
            );
            return Err(violation(Invariant::CloseDelivery, now, detail));
        }
        self.forget_owed(conn);
        Ok(())
    }

    /// Whole-hub agreement, O(connections + members).
    ///
    /// # Errors
    /// [`Invariant::Membership`] or [`Invariant::Stats`].
    pub fn audit(&self, now: Timestamp, hub: &Hub) -> Result<(), Violation> {
        if !hub.rooms().eq(self.rooms.keys().map(Name::as_str)) {
            let got: Vec<&str> = hub.rooms().collect();
            let want: Vec<&str> = self.rooms.keys().map(Name::as_str).collect();
            let detail = format!("hub rooms {got:?}, model {want:?}");
            return Err(violation(Invariant::Membership, now, detail));
        }
        for (name, room) in &self.rooms {
            self.check_room(now, hub, name)?;
            let mut list = String::new();
            for (i, conn) in hub.room_members(name.as_str()).enumerate() {
                if i > 0 {
                    list.push(',');
                }
                list.push_str(&self.conns[index(conn)].username);
            }
            if *list != *room.presence {
                let detail = format!(
                    "room {name:?}: hub members' names {list:?}, model presence {:?}",
                    room.presence
                );
                return Err(violation(Invariant::Membership, now, detail));
            }
        }
        self.check_relay(now, hub)?;
        for (i, m) in self.conns.iter().enumerate() {
            let conn = ConnId(i as u64 + 1);
            if hub.is_open(conn) != (m.life == Life::Open) {
                let detail = format!(
                    "hub.is_open({conn}) = {}, model {:?}",
                    hub.is_open(conn),
                    m.life
                );
                return Err(violation(Invariant::Membership, now, detail));
            }
        }
        self.check_totals(now, hub)
    }

    /// Convergence of one connection once everything in flight was delivered:
    /// an open one belongs to a healthy client, is owed nothing, and its
    /// latest `online_users` equals its room's live members in join order.
    ///
    /// # Errors
    /// [`Invariant::Convergence`].
    pub fn settled(
        &self,
        now: Timestamp,
        conn: ConnId,
        healthy: bool,
        last_presence: Option<&str>,
    ) -> Result<(), Violation> {
        let m = &self.conns[index(conn)];
        if m.life != Life::Open {
            return Ok(());
        }
        self.checks.hit(Invariant::Convergence);
        if !healthy {
            let detail = format!(
                "{conn} is still open but its client is stalled, silent or gone (last pong {})",
                m.last_pong
            );
            return Err(violation(Invariant::Convergence, now, detail));
        }
        if m.owed() > 0 {
            let detail = format!(
                "{conn} is still owed {} with nothing in flight",
                m.describe_owed()
            );
            return Err(violation(Invariant::Convergence, now, detail));
        }
        if let Some(room) = &m.room {
            let live = &self.rooms[room].presence;
            if last_presence != Some(&**live) {
                let detail = format!(
                    "{conn}'s latest online_users is {last_presence:?}; room {room:?} has {live:?}"
                );
                return Err(violation(Invariant::Convergence, now, detail));
            }
        }
        Ok(())
    }

    /// At the very end: every connection the hub heard of was closed exactly once.
    ///
    /// # Errors
    /// [`Invariant::CloseOnce`].
    pub fn all_closed_once(&self, now: Timestamp) -> Result<(), Violation> {
        for (i, m) in self.conns.iter().enumerate() {
            self.checks.hit(Invariant::CloseOnce);
            if m.closes != 1 {
                let detail = format!(
                    "c{} was closed {} times (state {:?})",
                    i + 1,
                    m.closes,
                    m.life
                );
                return Err(violation(Invariant::CloseOnce, now, detail));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_the_spec_precedence() {
        let max = 4;
        let ok = Frame::text("abcd");
        assert_eq!(verdict(true, &ok, max), Ok(()));
        assert_eq!(
            verdict(true, &Frame::binary(vec![0xff; 5]), max),
            Err(CloseReason::MessageTooBig)
        );
        assert_eq!(
            verdict(true, &Frame::binary(vec![1]), max),
            Err(CloseReason::BinaryNotAccepted)
        );
        assert_eq!(verdict(false, &Frame::binary(vec![0xff]), max), Ok(()));
        assert_eq!(
            verdict(false, &Frame::text(vec![0xff]), max),
            Err(CloseReason::InvalidUtf8)
        );
    }
}
