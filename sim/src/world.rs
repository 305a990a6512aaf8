//! The world: the real [`Hub`] inside a discrete-event simulation.
//!
//! The world plays the transport and the network around the hub the way
//! `transport/src/hub_task.rs` does: every input is followed by a full drain
//! of outputs; a `Send` that finds the connection's outbox full is dropped,
//! and after the drain every such connection gets `Input::QueueFull` (in id
//! order, then one drain for all of them); `handle_timeout` runs at
//! `poll_timeout()`. Virtual time jumps to the next event (the hub's
//! deadline first on ties, then network arrivals, outbox drains and client
//! decisions in scheduling order), so an hour of heartbeats costs
//! milliseconds and a seed replays exactly.
//!
//! Each connection has:
//! - two [`Pipe`]s (client→hub, hub→client), FIFO with per-message latency;
//! - an [`Outbox`] of `send_queue` frames that the writer empties at the
//!   client's reading pace. Pings bypass it (the writer sends control frames
//!   ahead of queued data) but not the pipe: a stalled client, whose TCP
//!   window is shut, gets no pings either, so it cannot pong;
//! - a [`ClientView`]: what the client did and observed.
//!
//! The [`Oracle`] judges every call, output and observation.

use std::collections::BTreeSet;

use hubbub_core::{CloseReason, Config, ConnId, Frame, Hub, Input, Output, Route, Timestamp};

use crate::client::{ClientView, Link, ParseCache};
use crate::invariants::{close_flushes_queue, Invariant, Oracle, Violation};
use crate::network::{Downstream, EventQueue, Offer, Outbox, Pipe, Upstream};
use crate::rng::{mix64, SimRng};
use crate::trace::Trace;

/// The world's fixed physics.
#[derive(Clone, Debug)]
pub struct WorldSettings {
    /// Seeds the network's latency draws.
    pub seed: u64,
    pub config: Config,
    /// One-way latency bounds, drawn per message.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
}

#[derive(Debug)]
enum Event {
    AtHub {
        conn: ConnId,
        msg: Upstream,
    },
    AtClient {
        conn: ConnId,
        msg: Downstream,
    },
    /// The writer moves the next batch of the outbox onto the wire.
    Drain {
        conn: ConnId,
    },
    /// A wake-up the driver scheduled; handed back to it by [`World::step`].
    Driver(u64),
}

impl Event {
    /// Traffic that must finish before the world is quiet; heartbeats never
    /// finish and driver wake-ups are the driver's business.
    fn is_data(&self) -> bool {
        match self {
            Self::AtHub { msg, .. } => !matches!(msg, Upstream::Pong),
            Self::AtClient { msg, .. } => !matches!(msg, Downstream::Ping),
            Self::Drain { .. } => true,
            Self::Driver(_) => false,
        }
    }
}

/// What one [`World::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ran the hub's heartbeat.
    Hub,
    /// Moved something through the network or an outbox (possibly a hub input).
    World,
    /// A driver wake-up is due.
    Driver(u64),
    /// Nothing left to do, ever.
    Idle,
}

/// Running totals for reports.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub hub_inputs: u64,
    pub hub_timeouts: u64,
    /// Every world event plus every heartbeat call.
    pub events: u64,
    pub frames_delivered: u64,
    pub conflated: u64,
    pub queue_full_reports: u64,
    pub max_queue_len: usize,
    pub max_queue_bytes: usize,
    pub audits: u64,
}

#[derive(Debug)]
struct Connection {
    outbox: Outbox,
    up: Pipe,
    down: Pipe,
    drain_scheduled: bool,
    /// The close to write once the outbox is flushed.
    close_after_flush: Option<CloseReason>,
    client: ClientView,
}

/// The hub, its transport, the network and the clients' ends.
pub struct World {
    now: Timestamp,
    hub: Hub,
    config: Config,
    latency: (u64, u64),
    /// Keys every latency draw (see [`World::latency`]).
    latency_key: u64,
    events: EventQueue<Event>,
    /// Events for which [`Event::is_data`] holds.
    data_in_flight: usize,
    /// Indexed by `ConnId - 1`.
    conns: Vec<Connection>,
    oracle: Oracle,
    /// Seed frames the clients parsed lately (a broadcast is parsed once).
    parsed: ParseCache,
    trace: Trace,
    /// Connections whose outbox refused a frame in the current drain.
    full: BTreeSet<ConnId>,
    counters: Counters,
    max_read_interval_ms: u64,
    next_audit: u64,
}

fn index(conn: ConnId) -> usize {
    usize::try_from(conn.0 - 1).expect("connection ids are small")
}

fn plus(t: Timestamp, ms: u64) -> Timestamp {
    Timestamp::from_millis(t.as_millis().saturating_add(ms))
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl World {
    /// # Panics
    /// If `settings.config` fails [`Config::validate`].
    #[must_use]
    pub fn new(settings: &WorldSettings) -> Self {
        settings
            .config
            .validate()
            .expect("the simulation only runs valid configs");
        Self {
            now: Timestamp::ZERO,
            hub: Hub::new(settings.config.clone()),
            config: settings.config.clone(),
            latency: (settings.latency_min_ms, settings.latency_max_ms),
            latency_key: SimRng::stream(settings.seed, "network").next_u64(),
            events: EventQueue::default(),
            data_in_flight: 0,
            conns: Vec::new(),
            oracle: Oracle::new(&settings.config),
            parsed: ParseCache::default(),
            trace: Trace::default(),
            full: BTreeSet::new(),
            counters: Counters::default(),
            max_read_interval_ms: 0,
            next_audit: 0,
        }
    }

    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.now
    }

    #[must_use]
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How often each invariant examined something in this run.
    #[must_use]
    pub fn checks(&self) -> &crate::invariants::Checks {
        self.oracle.checks()
    }

    #[must_use]
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    #[must_use]
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn client(&self, conn: ConnId) -> &ClientView {
        &self.conns[index(conn)].client
    }

    /// Whether the hub holds `conn` (per the oracle, which agrees with the hub or fails).
    #[must_use]
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.oracle.is_open(conn)
    }

    // ---- what clients do -------------------------------------------------

    /// A client starts a handshake for `route`; the hub hears `Open` one
    /// latency later.
    pub fn open(&mut self, route: Route, link: Link) -> ConnId {
        let conn = ConnId(self.conns.len() as u64 + 1);
        let (room, username) = match &route {
            Route::Relay => (None, ""),
            Route::Room { room, username, .. } => (Some(room.clone()), username.as_str()),
            Route::Centrifuge => (None, ""),
        };
        let room_protocol = room.is_some();
        self.oracle.register(conn, room, username);
        self.max_read_interval_ms = self.max_read_interval_ms.max(link.read_interval_ms);
        self.conns.push(Connection {
            outbox: Outbox::new(self.config.send_queue),
            up: Pipe::default(),
            down: Pipe::default(),
            drain_scheduled: false,
            close_after_flush: None,
            client: ClientView::new(link, room_protocol),
        });
        self.send_up(conn, Upstream::Open(route));
        conn
    }

    /// The client writes a data message.
    pub fn send(&mut self, conn: ConnId, frame: Frame) {
        if !self.client(conn).gone {
            self.send_up(conn, Upstream::Data(frame));
        }
    }

    /// The client writes bytes the WebSocket layer rejects.
    pub fn send_garbled(&mut self, conn: ConnId) {
        if !self.client(conn).gone {
            self.send_up(conn, Upstream::Garbled);
        }
    }

    /// An unsolicited pong (allowed by RFC 6455 as a heartbeat).
    pub fn pong(&mut self, conn: ConnId) {
        if !self.client(conn).gone {
            self.send_up(conn, Upstream::Pong);
        }
    }

    /// The client closes cleanly and reads nothing more.
    pub fn leave(&mut self, conn: ConnId) {
        if self.client(conn).gone {
            return;
        }
        self.send_up(conn, Upstream::Close);
        self.abandon(conn, false);
    }

    /// The client's host disappears: no close, no reads, no pongs.
    pub fn vanish(&mut self, conn: ConnId) {
        if !self.client(conn).gone {
            self.abandon(conn, true);
        }
    }

    fn abandon(&mut self, conn: ConnId, stop_reading: bool) {
        let client = &mut self.conns[index(conn)].client;
        client.gone = true;
        client.unread.clear();
        if stop_reading {
            client.reading = false;
        }
        self.oracle.mark_impaired(conn);
        self.oracle.forget_owed(conn);
    }

    /// The client stops (or resumes) answering pings; it keeps reading.
    pub fn set_answers_pings(&mut self, conn: ConnId, answers: bool) {
        if !answers {
            self.oracle.mark_impaired(conn);
        }
        self.conns[index(conn)].client.link.answers_pings = answers;
    }

    /// The client stops reading: arrivals wait unread and the writer stops.
    pub fn stall(&mut self, conn: ConnId) {
        let client = &mut self.conns[index(conn)].client;
        if !client.gone {
            client.reading = false;
            self.oracle.mark_impaired(conn);
        }
    }

    /// A stalled client reads again: first what arrived meanwhile.
    ///
    /// # Errors
    /// A violation found in what it reads.
    pub fn resume(&mut self, conn: ConnId) -> Result<(), Violation> {
        let client = &mut self.conns[index(conn)].client;
        if client.gone || client.reading {
            return Ok(());
        }
        client.reading = true;
        while let Some(msg) = self.conns[index(conn)].client.unread.pop_front() {
            self.consume(conn, msg)?;
        }
        self.schedule_drain(conn);
        Ok(())
    }

    /// Changes how fast the client reads.
    pub fn set_read_pace(&mut self, conn: ConnId, interval_ms: u64, batch: u32) {
        let link = &mut self.conns[index(conn)].client.link;
        link.read_interval_ms = interval_ms;
        link.read_batch = batch.max(1);
        self.max_read_interval_ms = self.max_read_interval_ms.max(interval_ms);
    }

    // ---- what the transport may do on its own ------------------------------

    /// The transport reports a full queue for `conn` now.
    ///
    /// # Errors
    /// A violation of the hub's reaction.
    pub fn report_queue_full(&mut self, conn: ConnId) -> Result<(), Violation> {
        self.call_hub(Some(Input::QueueFull { conn }))
    }

    /// The server stops: `Input::Shutdown`.
    ///
    /// # Errors
    /// A violation of the hub's reaction.
    pub fn shutdown(&mut self) -> Result<(), Violation> {
        self.call_hub(Some(Input::Shutdown))
    }

    /// Hands `token` back from [`World::step`] at `at`.
    pub fn schedule(&mut self, at: Timestamp, token: u64) {
        self.push(at.max(self.now), Event::Driver(token));
    }

    // ---- running ----------------------------------------------------------

    /// Runs the next event: the hub's deadline if it is due no later than
    /// anything else, else the earliest scheduled event.
    ///
    /// # Errors
    /// The first invariant violation.
    pub fn step(&mut self) -> Result<Step, Violation> {
        let timer = self.hub.poll_timeout();
        let next = self.events.next_time();
        if let Some(at) = timer.filter(|&t| next.is_none_or(|e| t <= e)) {
            self.advance(at)?;
            self.call_hub(None)?;
            return Ok(Step::Hub);
        }
        let Some((at, event)) = self.events.pop() else {
            return Ok(Step::Idle);
        };
        if event.is_data() {
            self.data_in_flight -= 1;
        }
        self.advance(at)?;
        match event {
            Event::Driver(token) => return Ok(Step::Driver(token)),
            Event::AtHub { conn, msg } => {
                let input = match msg {
                    Upstream::Open(route) => Input::Open { conn, route },
                    Upstream::Data(frame) => Input::Message { conn, frame },
                    Upstream::Pong => Input::Pong { conn },
                    Upstream::Close => Input::Disconnect {
                        conn,
                        reason: CloseReason::PeerClosed,
                    },
                    Upstream::Garbled => Input::Disconnect {
                        conn,
                        reason: CloseReason::ProtocolError,
                    },
                };
                self.call_hub(Some(input))?;
            }
            Event::AtClient { conn, msg } => self.deliver(conn, msg)?,
            Event::Drain { conn } => self.drain(conn),
        }
        Ok(Step::World)
    }

    /// Runs everything due up to `until`, then moves the clock there.
    /// Driver wake-ups met on the way are dropped.
    ///
    /// # Errors
    /// The first invariant violation.
    pub fn run_until(&mut self, until: Timestamp) -> Result<(), Violation> {
        loop {
            let next = match (self.hub.poll_timeout(), self.events.next_time()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match next {
                Some(t) if t <= until => {
                    self.step()?;
                }
                _ => break,
            }
        }
        self.advance(until)
    }

    fn advance(&mut self, to: Timestamp) -> Result<(), Violation> {
        self.now = self.now.max(to);
        self.counters.events += 1;
        self.oracle.check_clock(self.now)
    }

    /// One hub call (`None`: the heartbeat) and its drain; then, as the
    /// transport does, every connection whose outbox refused a frame during
    /// the drain gets `Input::QueueFull`, in id order and all before the next
    /// drain, until a drain refuses nothing. The oracle judges each drain as
    /// one call.
    fn call_hub(&mut self, first: Option<Input>) -> Result<(), Violation> {
        let mut batch = vec![first];
        loop {
            let now = self.now;
            for call in batch {
                match call {
                    Some(input) => {
                        self.trace.input(now, &input);
                        self.oracle.before_input(now, &input);
                        self.hub.handle_input(now, input);
                        self.counters.hub_inputs += 1;
                    }
                    None => {
                        self.trace.timeout(now);
                        self.oracle.before_timeout();
                        self.hub.handle_timeout(now);
                        self.counters.hub_timeouts += 1;
                    }
                }
            }
            while let Some(out) = self.hub.poll_output() {
                self.trace.output(&out);
                self.oracle.on_output(now, &out)?;
                self.perform(out)?;
            }
            self.oracle.after_call(now, &self.hub)?;
            let calls_so_far = self.counters.hub_inputs + self.counters.hub_timeouts;
            if calls_so_far >= self.next_audit {
                // Whole-hub comparison, amortised to O(1) per call.
                self.oracle.audit(now, &self.hub)?;
                self.counters.audits += 1;
                self.next_audit = calls_so_far + 1024.max(self.conns.len() as u64);
            }
            if self.full.is_empty() {
                return Ok(());
            }
            self.counters.queue_full_reports += self.full.len() as u64;
            batch = std::mem::take(&mut self.full)
                .into_iter()
                .map(|conn| Some(Input::QueueFull { conn }))
                .collect();
        }
    }

    /// Carries out one output as the transport would.
    fn perform(&mut self, out: Output) -> Result<(), Violation> {
        match out {
            Output::Send {
                conn,
                frame,
                presence,
            } => {
                let c = &mut self.conns[index(conn)];
                match c.outbox.offer(frame, presence) {
                    Offer::Queued => {
                        let (len, bytes) = (c.outbox.len(), c.outbox.bytes());
                        self.counters.max_queue_len = self.counters.max_queue_len.max(len);
                        self.counters.max_queue_bytes = self.counters.max_queue_bytes.max(bytes);
                        self.oracle.checks().hit(Invariant::QueueBound);
                        if len > self.config.send_queue {
                            return Err(Violation {
                                invariant: Invariant::QueueBound,
                                at: self.now,
                                detail: format!("{conn}'s outbox holds {len} frames"),
                            });
                        }
                        self.schedule_drain(conn);
                    }
                    Offer::Conflated => self.counters.conflated += 1,
                    Offer::Full => {
                        self.full.insert(conn);
                    }
                }
            }
            Output::Ping { conn } => self.send_down(conn, Downstream::Ping),
            Output::Close { conn, reason } => {
                let c = &mut self.conns[index(conn)];
                if close_flushes_queue(reason) && !c.outbox.is_empty() {
                    c.close_after_flush = Some(reason);
                } else {
                    c.outbox.clear();
                    self.send_down(conn, Downstream::Close(reason));
                }
            }
        }
        Ok(())
    }

    /// The latency of message `seq` of `conn` in one direction.
    fn latency(&self, conn: ConnId, upstream: bool, seq: u64) -> u64 {
        let key = mix64(conn.0.wrapping_mul(2) + u64::from(upstream)) ^ seq;
        SimRng::new(mix64(self.latency_key ^ key)).between(self.latency.0, self.latency.1)
    }

    fn push(&mut self, at: Timestamp, event: Event) {
        if event.is_data() {
            self.data_in_flight += 1;
        }
        self.events.push(at, event);
    }

    fn send_up(&mut self, conn: ConnId, msg: Upstream) {
        let seq = self.conns[index(conn)].up.next_seq();
        let latency = self.latency(conn, true, seq);
        let at = self.conns[index(conn)].up.arrival(self.now, latency);
        self.push(at, Event::AtHub { conn, msg });
    }

    fn send_down(&mut self, conn: ConnId, msg: Downstream) {
        let seq = self.conns[index(conn)].down.next_seq();
        let latency = self.latency(conn, false, seq);
        let at = self.conns[index(conn)].down.arrival(self.now, latency);
        self.push(at, Event::AtClient { conn, msg });
    }

    fn schedule_drain(&mut self, conn: ConnId) {
        let c = &mut self.conns[index(conn)];
        if c.drain_scheduled || !c.client.reading || c.outbox.is_empty() {
            return;
        }
        c.drain_scheduled = true;
        let at = plus(self.now, c.client.link.read_interval_ms);
        self.push(at, Event::Drain { conn });
    }

    fn drain(&mut self, conn: ConnId) {
        let c = &mut self.conns[index(conn)];
        c.drain_scheduled = false;
        if !c.client.reading {
            return;
        }
        let batch = if c.client.link.read_interval_ms == 0 {
            usize::MAX
        } else {
            usize::try_from(c.client.link.read_batch).unwrap_or(usize::MAX)
        };
        for _ in 0..batch {
            let Some(q) = self.conns[index(conn)].outbox.pop() else {
                break;
            };
            let msg = Downstream::Data {
                frame: q.frame,
                presence: q.presence,
            };
            self.send_down(conn, msg);
        }
        let c = &mut self.conns[index(conn)];
        if c.outbox.is_empty() {
            if let Some(reason) = c.close_after_flush.take() {
                self.send_down(conn, Downstream::Close(reason));
            }
        }
        self.schedule_drain(conn);
    }

    fn deliver(&mut self, conn: ConnId, msg: Downstream) -> Result<(), Violation> {
        let client = &mut self.conns[index(conn)].client;
        if client.gone {
            return Ok(());
        }
        if !client.reading {
            client.unread.push_back(msg);
            return Ok(());
        }
        self.consume(conn, msg)
    }

    /// The client reads one arrival.
    fn consume(&mut self, conn: ConnId, msg: Downstream) -> Result<(), Violation> {
        let now = self.now;
        let client = &mut self.conns[index(conn)].client;
        match msg {
            Downstream::Ping => {
                client.observed.pings += 1;
                if client.link.answers_pings {
                    self.send_up(conn, Upstream::Pong);
                }
                Ok(())
            }
            Downstream::Close(reason) => {
                client.observed.close = Some(reason.code());
                client.gone = true;
                client.unread.clear();
                self.oracle.observe_close(now, conn, reason.code())
            }
            Downstream::Data { frame, presence } => {
                self.counters.frames_delivered += 1;
                let seen = client.see(&frame, presence, &mut self.parsed);
                self.oracle.observe(now, conn, &seen)
            }
        }
    }

    // ---- liveness -----------------------------------------------------------

    /// The liveness phase, once the driver has healed what it will heal and
    /// stopped injecting faults: run until nothing is in flight and every
    /// impaired client the hub still holds is closed; then one more full
    /// heartbeat cycle, which live clients must survive; then check that
    /// everything converged.
    ///
    /// # Errors
    /// [`Invariant::Convergence`] or any violation met on the way.
    pub fn settle(&mut self) -> Result<(), Violation> {
        let cycle = millis(self.config.pong_timeout) + millis(self.config.ping_interval);
        let budget = 3 * cycle
            + self.config.send_queue as u64 * (self.max_read_interval_ms + 1)
            + 16 * self.latency.1
            + 1_000;
        self.run_until_quiet(budget)?;
        let heartbeat_cycle = plus(self.now, cycle + millis(self.config.ping_interval));
        self.run_until(heartbeat_cycle)?;
        self.run_until_quiet(budget)?;
        self.check_converged()
    }

    fn run_until_quiet(&mut self, budget_ms: u64) -> Result<(), Violation> {
        let limit = plus(self.now, budget_ms);
        let mut impaired: Vec<ConnId> = (1..=self.conns.len() as u64)
            .map(ConnId)
            .filter(|&c| self.oracle.is_open(c) && !self.client(c).healthy())
            .collect();
        loop {
            if self.data_in_flight == 0 {
                impaired.retain(|&c| self.oracle.is_open(c));
                if impaired.is_empty() {
                    return Ok(());
                }
            }
            if self.now > limit || self.step()? == Step::Idle {
                let detail = format!(
                    "not quiet {budget_ms}ms into the liveness phase: {} frames in flight, impaired clients still open: {:?}",
                    self.data_in_flight,
                    &impaired[..impaired.len().min(8)]
                );
                return Err(Violation {
                    invariant: Invariant::Convergence,
                    at: self.now,
                    detail,
                });
            }
        }
    }

    /// Everything agrees: the hub with the model, every open connection's
    /// client with the hub.
    ///
    /// # Errors
    /// The first disagreement.
    pub fn check_converged(&mut self) -> Result<(), Violation> {
        self.oracle.audit(self.now, &self.hub)?;
        for i in 0..self.conns.len() {
            let conn = ConnId(i as u64 + 1);
            let client = &self.conns[i].client;
            self.oracle.settled(
                self.now,
                conn,
                client.healthy(),
                client.observed.last_presence.as_deref(),
            )?;
        }
        Ok(())
    }

    /// Shuts the hub down, lets the close frames through, and checks every
    /// connection was closed exactly once.
    ///
    /// # Errors
    /// The first violation.
    pub fn finish(&mut self) -> Result<(), Violation> {
        self.shutdown()?;
        while self.data_in_flight > 0 {
            if self.step()? == Step::Idle {
                break;
            }
        }
        self.oracle.audit(self.now, &self.hub)?;
        self.oracle.all_closed_once(self.now)
    }
}
