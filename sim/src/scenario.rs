//! Seeded scenarios: a whole run derived from one `u64`.
//!
//! [`SimParams::derive`] turns a seed into every knob of a run: client and
//! room counts, hub limits, latencies, rates, and which faults are on at all
//! (swarm testing: a seed with only a few fault kinds finds bugs that a
//! uniform mix of all of them drowns out). [`run`] drives the [`World`]:
//!
//! 1. **Safety**: clients join rooms or the relay and chat; faults are
//!    injected (clean leaves, vanishing hosts, silent and stalled clients,
//!    slow readers, oversize / invalid UTF-8 / binary-on-JSON / garbage
//!    messages, garbled frames, reconnect storms) until `steps` hub inputs
//!    have been handled. Invariants are checked around every hub call and
//!    every observation (see [`crate::invariants`]).
//! 2. **Liveness**: no new faults or actions; some impaired clients recover
//!    (by seed), the rest must be closed by the hub; everything in flight is
//!    delivered; then convergence is checked and the hub is shut down, after
//!    which every connection must have been closed exactly once.

use std::fmt;
use std::time::Duration;

use hubbub_core::{Config, ConnId, Frame, Name, Route, Stats, Timestamp};

use crate::client::Link;
use crate::invariants::{Checks, Violation};
use crate::rng::{Ppm, SimRng};
use crate::world::{Counters, Step, World, WorldSettings};

/// Values given on the command line instead of derived from the seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub clients: Option<u32>,
    pub rooms: Option<u32>,
    pub steps: Option<u64>,
}

/// How often a client decides each thing, relative to the others. Zero
/// switches a behaviour off for the whole run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behaviours {
    pub chat: u32,
    pub leave: u32,
    pub vanish: u32,
    pub silence: u32,
    pub stall: u32,
    pub slow_reader: u32,
    pub oversize: u32,
    pub invalid_utf8: u32,
    pub binary_on_json: u32,
    pub garbage: u32,
    pub garbled_frame: u32,
}

impl Behaviours {
    /// Every behaviour off (presets switch on what they want).
    #[must_use]
    pub const fn none() -> Self {
        Self {
            chat: 0,
            leave: 0,
            vanish: 0,
            silence: 0,
            stall: 0,
            slow_reader: 0,
            oversize: 0,
            invalid_utf8: 0,
            binary_on_json: 0,
            garbage: 0,
            garbled_frame: 0,
        }
    }

    fn weights(&self) -> [u32; 11] {
        [
            self.chat,
            self.leave,
            self.vanish,
            self.silence,
            self.stall,
            self.slow_reader,
            self.oversize,
            self.invalid_utf8,
            self.binary_on_json,
            self.garbage,
            self.garbled_frame,
        ]
    }
}

/// Everything about one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimParams {
    pub seed: u64,
    pub clients: u32,
    pub rooms: u32,
    /// Hub inputs handled in the safety phase.
    pub steps: u64,
    /// Clients `0..relay_clients` use the relay (`/ws`), the rest rooms.
    pub relay_clients: u32,
    pub config: Config,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Clients first connect at a uniform time in `0..=ramp_ms`.
    pub ramp_ms: u64,
    /// Mean time between a client's decisions.
    pub think_ms: u64,
    /// A normal reader's time per batch is uniform in `0..=read_interval_max_ms`.
    pub read_interval_max_ms: u64,
    pub read_batch: u32,
    /// A slow reader's time per frame.
    pub slow_read_interval_ms: u64,
    pub behaviours: Behaviours,
    /// A stalled client resumes reading later (else stays stalled).
    pub resume: Ppm,
    /// A client whose connection ended comes back after a short pause (else
    /// after a long one: the population never dies out).
    pub reconnect: Ppm,
    /// Mean time between reconnect storms; 0 for none.
    pub storm_every_ms: u64,
    /// Share of connected clients a storm sends away and back.
    pub storm_share: Ppm,
    /// In the liveness phase, an impaired client recovers (else must be closed).
    pub heal: Ppm,
}

impl SimParams {
    /// Every parameter from `seed`. Overrides replace derived values without
    /// shifting any other draw, so the printed reproduce command (which
    /// spells out clients, rooms and steps) replays the same run.
    #[must_use]
    pub fn derive(seed: u64, overrides: Overrides) -> Self {
        let mut r = SimRng::stream(seed, "params");
        let clients = u32::try_from(r.between(2, 300)).expect("small");
        let rooms = u32::try_from(r.between(1, 24)).expect("small");
        let steps = r.between(5_000, 60_000);
        let relay_share = if r.chance(Ppm(600_000)) {
            Ppm(r.between_u32(20_000, 200_000))
        } else {
            Ppm::NEVER
        };
        let ping = r.between(40, 3_000);
        let latency_max_ms = r.between(0, (ping / 2).min(250));
        let latency_min_ms = r.between(0, latency_max_ms);
        // A live client's pong comes back within two one-way latencies of the
        // ping; the margin keeps it inside the pong deadline.
        let margin = r.between(1, ping);
        let pong = ping + 2 * latency_max_ms + margin;
        let max_message_bytes = *r.pick(&[1, 8, 24, 64, 128, 512, 512, 2_048]);
        let send_queue = *r.pick(&[1, 2, 3, 8, 32, 128, 256, 256]);
        let server_full = r.chance(Ppm(150_000));
        let full_share = Ppm(r.between_u32(300_000, 950_000));
        let ramp_ms = r.between(0, 4 * ping);
        let think_factor = r.between(1, 12);
        let read_interval_max_ms = r.between(0, 20);
        let read_batch = r.between_u32(1, 8);
        let slow_read_interval_ms = r.between(50, 2_000);
        let fault = |r: &mut SimRng| {
            if r.chance(Ppm(650_000)) {
                r.between_u32(1, 40)
            } else {
                0
            }
        };
        let behaviours = Behaviours {
            chat: r.between_u32(100, 400),
            leave: fault(&mut r),
            vanish: fault(&mut r),
            silence: fault(&mut r),
            stall: fault(&mut r),
            slow_reader: fault(&mut r),
            oversize: fault(&mut r),
            invalid_utf8: fault(&mut r),
            binary_on_json: fault(&mut r),
            garbage: fault(&mut r),
            garbled_frame: fault(&mut r),
        };
        let resume = Ppm(r.between_u32(0, 1_000_000));
        let reconnect = Ppm(r.between_u32(300_000, 1_000_000));
        let storms = r.chance(Ppm(500_000));
        let storm_every_ms = ping * r.between(2, 40);
        let storm_share = Ppm(r.between_u32(50_000, 600_000));
        let heal = Ppm(r.between_u32(0, 1_000_000));

        let clients = overrides.clients.unwrap_or(clients).max(1);
        let rooms = overrides.rooms.unwrap_or(rooms).max(1);
        let steps = overrides.steps.unwrap_or(steps);
        // Relay fan-out is to every relay client: keep it a small crowd.
        let relay_clients =
            u32::try_from(relay_share.of(u64::from(clients)).min(64)).expect("at most 64");
        let max_connections = if server_full {
            usize::try_from(full_share.of(u64::from(clients)).max(1)).expect("small")
        } else {
            2 * clients as usize + 16
        };
        // Bigger rooms talk less per member, so a run's cost per hub input
        // stays flat as rooms grow (fan-out is O(members)).
        let members_per_room = u64::from(clients.saturating_sub(relay_clients)) / u64::from(rooms);
        let think_ms = (ping * think_factor / 2).max(1) * (members_per_room / 8).max(1);
        Self {
            seed,
            clients,
            rooms,
            steps,
            relay_clients,
            config: Config {
                ping_interval: Duration::from_millis(ping),
                pong_timeout: Duration::from_millis(pong),
                max_message_bytes,
                send_queue,
                max_connections,
                // Fixed, so a seed replays its client ids and epochs.
                entropy: seed,
                // The oracle's rooms end with their last member (the
                // cluster simulation covers streams that outlive them).
                idle_streams: 0,
                // The oracle owes every member a snapshot in the call that
                // changed its room; held-back snapshots (`presence_rate`)
                // are checked by the cluster simulation's end-state rule.
                presence_rate: None,
                ..Config::default()
            },
            latency_min_ms,
            latency_max_ms,
            ramp_ms,
            think_ms,
            read_interval_max_ms,
            read_batch,
            slow_read_interval_ms,
            behaviours,
            resume,
            reconnect,
            storm_every_ms: if storms { storm_every_ms } else { 0 },
            storm_share,
            heal,
        }
    }

    /// The one command that replays this run.
    #[must_use]
    pub fn reproduce_command(&self) -> String {
        format!(
            "cargo run --release -p hubbub-sim -- --seed {:#018x} --clients {} --rooms {} --steps {}",
            self.seed, self.clients, self.rooms, self.steps
        )
    }
}

impl fmt::Display for SimParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let b = &self.behaviours;
        writeln!(
            f,
            "seed {:#018x}: {} clients ({} relay) in {} rooms, {} hub inputs",
            self.seed, self.clients, self.relay_clients, self.rooms, self.steps
        )?;
        writeln!(
            f,
            "  hub: ping_interval {}ms, pong_timeout {}ms, max_message_bytes {}, send_queue {}, max_connections {}",
            c.ping_interval.as_millis(),
            c.pong_timeout.as_millis(),
            c.max_message_bytes,
            c.send_queue,
            c.max_connections
        )?;
        writeln!(
            f,
            "  network: latency {}..={}ms; reads every 0..={}ms x{}, slow readers every {}ms",
            self.latency_min_ms,
            self.latency_max_ms,
            self.read_interval_max_ms,
            self.read_batch,
            self.slow_read_interval_ms
        )?;
        writeln!(
            f,
            "  clients: ramp {}ms, think {}ms; weights chat {} leave {} vanish {} silence {} stall {} slow {} oversize {} bad-utf8 {} binary {} garbage {} garbled {}",
            self.ramp_ms,
            self.think_ms,
            b.chat,
            b.leave,
            b.vanish,
            b.silence,
            b.stall,
            b.slow_reader,
            b.oversize,
            b.invalid_utf8,
            b.binary_on_json,
            b.garbage,
            b.garbled_frame
        )?;
        let storms = if self.storm_every_ms == 0 {
            "none".to_owned()
        } else {
            format!(
                "every ~{}ms, {} of clients",
                self.storm_every_ms, self.storm_share
            )
        };
        write!(
            f,
            "  resume {}, reconnect {}, heal {}, storms {storms}",
            self.resume, self.reconnect, self.heal
        )
    }
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct Report {
    pub params: SimParams,
    pub counters: Counters,
    pub trace_hash: u64,
    pub connections: usize,
    /// The hub's stats just before shutdown.
    pub stats: Stats,
    pub end: Timestamp,
    /// Per invariant, how many checks examined something.
    pub checks: Checks,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        let closes: Vec<String> = hubbub_core::CloseReason::ALL
            .iter()
            .filter(|r| self.stats.closes_for(**r) > 0)
            .map(|r| format!("{r} {}", self.stats.closes_for(*r)))
            .collect();
        writeln!(
            f,
            "ok: {} hub inputs, {} heartbeats, {} events, {} frames read, {} connections over {}s virtual",
            c.hub_inputs,
            c.hub_timeouts,
            c.events,
            c.frames_delivered,
            self.connections,
            self.end.as_millis() / 1_000
        )?;
        writeln!(
            f,
            "  hub: {} messages in, {} sends, {} pings; closes before shutdown: {}",
            self.stats.messages_in,
            self.stats.sends,
            self.stats.pings,
            closes.join(", ")
        )?;
        write!(
            f,
            "  transport: {} queue-full reports, {} presence conflations, outbox high water {} frames / {} bytes; {} audits; trace {:#018x}",
            c.queue_full_reports,
            c.conflated,
            c.max_queue_len,
            c.max_queue_bytes,
            c.audits,
            self.trace_hash
        )
    }
}

/// A broken invariant, with what it takes to replay it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub params: SimParams,
    pub violation: Violation,
    pub counters: Counters,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.violation)?;
        writeln!(
            f,
            "  after {} hub inputs ({} events)",
            self.counters.hub_inputs, self.counters.events
        )?;
        writeln!(f, "  {}", self.params.to_string().replace('\n', "\n  "))?;
        write!(f, "reproduce: {}", self.params.reproduce_command())
    }
}

impl std::error::Error for Failure {}

/// Runs the scenario `params` describes, both phases.
///
/// # Errors
/// The first invariant violation, with the command that replays it.
pub fn run(params: &SimParams) -> Result<Report, Box<Failure>> {
    let mut driver = Driver::new(params);
    match driver.run() {
        Ok(()) => Ok(Report {
            params: params.clone(),
            counters: driver.world.counters().clone(),
            trace_hash: driver.world.trace_hash(),
            connections: driver.world.connections(),
            stats: driver.stats_before_shutdown,
            end: driver.world.now(),
            checks: driver.world.checks().clone(),
        }),
        Err(violation) => Err(Box::new(Failure {
            params: params.clone(),
            violation,
            counters: driver.world.counters().clone(),
        })),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    Connect = 0,
    Decide = 1,
    Resume = 2,
    Storm = 3,
}

/// A driver token: which client, which wake-up, and the client's
/// generation, so wake-ups meant for an earlier connection are ignored.
fn token(client: usize, wake: Wake, generation: u32) -> u64 {
    (u64::from(generation) << 32) | ((client as u64) << 2) | wake as u64
}

fn untoken(token: u64) -> (usize, Wake, u32) {
    let wake = match token & 3 {
        0 => Wake::Connect,
        1 => Wake::Decide,
        2 => Wake::Resume,
        _ => Wake::Storm,
    };
    let client = usize::try_from((token >> 2) & 0x3fff_ffff).expect("fits");
    (client, wake, (token >> 32) as u32)
}

#[derive(Debug)]
struct SimClient {
    username: Name,
    conn: Option<ConnId>,
    generation: u32,
    chats: u64,
}

/// The seed's clients acting on the world.
struct Driver<'p> {
    params: &'p SimParams,
    rng: SimRng,
    world: World,
    clients: Vec<SimClient>,
    rooms: Vec<Name>,
    phase: Phase,
    stats_before_shutdown: Stats,
}

const TEXT_PALETTE: &[&str] = &[
    "a", "b", "c", " ", " ", "\"", "\\", "\n", "\t", "é", "€", "😀", "\u{1}", "/", "<>", "{}", ",",
];

impl<'p> Driver<'p> {
    fn new(params: &'p SimParams) -> Self {
        let world = World::new(&WorldSettings {
            seed: params.seed,
            config: params.config.clone(),
            latency_min_ms: params.latency_min_ms,
            latency_max_ms: params.latency_max_ms,
        });
        let rooms = (0..params.rooms)
            .map(|i| {
                let name = match i {
                    0 => hubbub_core::route::DEFAULT_ROOM.to_owned(),
                    1 => "café \"☕\" \\ lounge".to_owned(),
                    _ => format!("room-{i}"),
                };
                Name::new(&name).expect("room names are valid")
            })
            .collect();
        let clients = (0..params.clients)
            .map(|i| {
                let name = if i % 7 == 3 {
                    format!("Jörg \"{i}\" \\o/")
                } else {
                    format!("u{i}")
                };
                SimClient {
                    username: Name::new(&name).expect("usernames are valid"),
                    conn: None,
                    generation: 0,
                    chats: 0,
                }
            })
            .collect();
        Self {
            params,
            rng: SimRng::stream(params.seed, "clients"),
            world,
            clients,
            rooms,
            phase: Phase::Safety,
            stats_before_shutdown: Stats::default(),
        }
    }

    fn run(&mut self) -> Result<(), Violation> {
        for i in 0..self.clients.len() {
            let at = Timestamp::from_millis(self.rng.between(0, self.params.ramp_ms));
            self.world.schedule(at, token(i, Wake::Connect, 0));
        }
        if self.params.storm_every_ms > 0 {
            let at = self.later(self.params.storm_every_ms);
            self.world.schedule(at, token(0, Wake::Storm, 0));
        }
        while self.world.counters().hub_inputs < self.params.steps {
            match self.world.step()? {
                Step::Driver(t) => self.wake(t)?,
                Step::Idle => break,
                Step::Hub | Step::World => {}
            }
        }
        self.phase = Phase::Liveness;
        self.heal()?;
        self.world.settle()?;
        self.stats_before_shutdown = self.world.hub().stats();
        self.world.finish()
    }

    fn later(&mut self, mean_ms: u64) -> Timestamp {
        let ms = self.rng.around(mean_ms);
        Timestamp::from_millis(self.world.now().as_millis() + ms)
    }

    fn wake(&mut self, t: u64) -> Result<(), Violation> {
        if self.phase != Phase::Safety {
            return Ok(());
        }
        let (i, wake, generation) = untoken(t);
        match wake {
            Wake::Storm => {
                self.storm();
                Ok(())
            }
            Wake::Connect => {
                self.connect(i);
                Ok(())
            }
            _ if generation != self.clients[i].generation => Ok(()),
            Wake::Resume => match self.clients[i].conn {
                Some(conn) => self.world.resume(conn),
                None => Ok(()),
            },
            Wake::Decide => {
                self.decide(i);
                Ok(())
            }
        }
    }

    fn connect(&mut self, i: usize) {
        let client = &self.clients[i];
        if client.conn.is_some_and(|c| !self.world.client(c).gone) {
            return; // still connected: a stale reconnect
        }
        let route = if i < self.params.relay_clients as usize {
            Route::Relay
        } else {
            let room = self.rng.pick(&self.rooms).clone();
            Route::Room {
                room,
                username: client.username.clone(),
                history: 0,
            }
        };
        let link = Link {
            read_interval_ms: self.rng.between(0, self.params.read_interval_max_ms),
            read_batch: self.params.read_batch,
            answers_pings: true,
        };
        let conn = self.world.open(route, link);
        let client = &mut self.clients[i];
        client.conn = Some(conn);
        client.generation += 1;
        let generation = client.generation;
        let at = self.later(self.params.think_ms);
        self.world.schedule(at, token(i, Wake::Decide, generation));
    }

    /// The client's next move on its connection.
    fn decide(&mut self, i: usize) {
        let Some(conn) = self.clients[i].conn else {
            return;
        };
        let generation = self.clients[i].generation;
        if self.world.client(conn).gone {
            // Its connection ended (it left, vanished or read its close).
            self.clients[i].conn = None;
            let pause = if self.rng.chance(self.params.reconnect) {
                self.params.think_ms
            } else {
                20 * self.params.think_ms
            };
            let at = self.later(pause);
            self.world.schedule(at, token(i, Wake::Connect, generation));
            return;
        }
        let relay = i < self.params.relay_clients as usize;
        let max = self.params.config.max_message_bytes;
        let weights = self.params.behaviours.weights();
        match self.rng.weighted(&weights).unwrap_or(0) {
            0 => {
                let frame = if relay && self.rng.chance(Ppm(300_000)) {
                    let len = self.rng.between(0, max as u64);
                    Frame::binary(self.random_bytes(len))
                } else {
                    let n = self.clients[i].chats;
                    self.clients[i].chats += 1;
                    Frame::text(self.chat_text(i, n, max))
                };
                self.world.send(conn, frame);
            }
            1 => self.world.leave(conn),
            2 => self.world.vanish(conn),
            3 => self.world.set_answers_pings(conn, false),
            4 => {
                self.world.stall(conn);
                if self.rng.chance(self.params.resume) {
                    let pong_ms = self.params.config.pong_timeout.as_millis() as u64;
                    let at = self.world.now().as_millis() + self.rng.between(1, 2 * pong_ms);
                    let at = Timestamp::from_millis(at);
                    self.world.schedule(at, token(i, Wake::Resume, generation));
                }
            }
            5 => self
                .world
                .set_read_pace(conn, self.params.slow_read_interval_ms, 1),
            6 => {
                let len = self.rng.between(max as u64 + 1, max as u64 + 64);
                let text = "x".repeat(usize::try_from(len).expect("small"));
                self.world.send(conn, Frame::text(text));
            }
            7 => {
                let len = self.rng.between(1, max as u64);
                let mut bytes = vec![b'a'; usize::try_from(len).expect("small")];
                let at = self.rng.below(len);
                bytes[usize::try_from(at).expect("small")] =
                    *self.rng.pick(&[0xff, 0xc3, 0x80, 0xed]);
                self.world.send(conn, Frame::text(bytes));
            }
            8 => {
                let len = self.rng.between(0, max as u64);
                let bytes = self.random_bytes(len);
                self.world.send(conn, Frame::binary(bytes));
            }
            9 => {
                let len = self.rng.between(0, 2 * max as u64);
                let bytes = self.random_bytes(len);
                let frame = if self.rng.chance(Ppm(500_000)) {
                    Frame::text(bytes)
                } else {
                    Frame::binary(bytes)
                };
                self.world.send(conn, frame);
            }
            _ => self.world.send_garbled(conn),
        }
        let at = self.later(self.params.think_ms);
        self.world.schedule(at, token(i, Wake::Decide, generation));
    }

    /// Many clients leave at once and come straight back.
    fn storm(&mut self) {
        let comeback = 2 * self.params.latency_max_ms + 20;
        for i in 0..self.clients.len() {
            let Some(conn) = self.clients[i].conn else {
                continue;
            };
            if self.world.client(conn).gone || !self.rng.chance(self.params.storm_share) {
                continue;
            }
            self.world.leave(conn);
            let client = &mut self.clients[i];
            client.conn = None;
            client.generation += 1; // cancels its pending decisions
            let at = self.world.now().as_millis() + self.rng.between(0, comeback);
            self.world
                .schedule(Timestamp::from_millis(at), token(i, Wake::Connect, 0));
        }
        let at = self.later(self.params.storm_every_ms);
        self.world.schedule(at, token(0, Wake::Storm, 0));
    }

    /// Liveness begins: some impaired clients recover, the rest stay as they
    /// are and must be closed by the hub.
    fn heal(&mut self) -> Result<(), Violation> {
        for i in 0..self.clients.len() {
            let Some(conn) = self.clients[i].conn else {
                continue;
            };
            let client = self.world.client(conn);
            if client.gone {
                continue;
            }
            if !client.link.answers_pings && self.rng.chance(self.params.heal) {
                self.world.set_answers_pings(conn, true);
            }
            if !self.world.client(conn).reading && self.rng.chance(self.params.heal) {
                self.world.resume(conn)?;
            }
            // The network heals: slow readers read at a normal pace again.
            if self.world.client(conn).link.read_interval_ms > self.params.read_interval_max_ms {
                let pace = self.rng.between(0, self.params.read_interval_max_ms);
                self.world.set_read_pace(conn, pace, self.params.read_batch);
            }
        }
        Ok(())
    }

    fn random_bytes(&mut self, len: u64) -> Vec<u8> {
        let mut bytes = vec![0; usize::try_from(len).expect("small")];
        self.rng.fill(&mut bytes);
        bytes
    }

    /// A chat line at most `max` bytes long, unique while it has room, with
    /// characters JSON must escape.
    fn chat_text(&mut self, client: usize, n: u64, max: usize) -> String {
        let mut text = format!("{client}.{n}:");
        let target = if self.rng.chance(Ppm(100_000)) {
            max
        } else {
            usize::try_from(self.rng.between(0, max as u64)).expect("small")
        };
        while text.len() < target {
            let piece = *self.rng.pick(TEXT_PALETTE);
            if text.len() + piece.len() > target {
                break;
            }
            text.push_str(piece);
        }
        while text.len() > max {
            text.pop();
        }
        text
    }
}
