//! Several shards and the bus between them, in the deterministic world.
//!
//! A [`Cluster`] runs one real [`Hub`] per shard, with connections spread
//! over the shards round robin (as the server's acceptor does), and
//! carries the hubs' bus messages with a latency per message over FIFO
//! links, one per (sender, receiver) pair, as the server's channels do.
//! Clients speak the Centrifugo protocol (most of them) and the seed room
//! protocol, in the same channels, on every shard. Virtual time jumps from
//! event to event; a seed replays a run exactly.
//!
//! Hubs keep their streams in an external store engine
//! ([`crate::store_model`]): every request is answered after a seeded
//! latency, in order per hub, with slow commits and failures; a publication
//! is durable once its `Append` is answered. With `crash_every_ms` the whole
//! server crashes now and then: every hub is replaced by a fresh one (new
//! entropy), bus messages, store answers and client traffic in flight are
//! lost, clients see their connection end and connect again (new
//! connections), subscribing again with recovery from their last position;
//! the store survives.
//!
//! The bus is bounded the way the server bounds it: while more than
//! `bus_high_water` messages are in flight, client input waits in its
//! connection (TCP pushes back) instead of reaching a hub; nothing is ever
//! dropped.
//!
//! What a run checks ([`Rule`]), after every event and at quiescence:
//! - **order**: per channel, every subscriber on every shard sees offsets
//!   rise by exactly one, and the same publication at the same offset; a
//!   seed member sees chat lines in that same order, with no gap; across
//!   crashes too (positions continue from the store);
//! - **offsets-once**: an offset of a stream (channel, epoch) is given to
//!   one publication only, over the whole run, crashes included: checked
//!   where the store answers an `Append` and wherever a client reads one;
//! - **recovery-exact** (and retention): a client that left a channel, or
//!   whose connection a crash ended, resubscribes from its last position;
//!   when recovered, the reply echoes its offset and carries exactly the
//!   missed publications, contiguous, as the store holds them (same data at
//!   the same offsets), and live ones continue from there; when not, it
//!   carries none;
//! - **durable-ack**: when a publisher reads an Ok publish reply, the store
//!   holds the publication at that moment;
//! - **failed-publish-unseen**: a publication the store refused (its
//!   publisher got error 100) is never delivered to anybody, nor stored;
//! - **reply-before-push**, **one reply** per command id;
//! - **presence**: at quiescence each channel's home lists exactly the
//!   model's members, every `presence` reply a client then asks for agrees,
//!   each seed member's latest `online_users` is the named members in the
//!   home's join order, and each join/leave subscriber's view (its
//!   presence reply after subscribing, then the joins and leaves after it)
//!   equals the members;
//! - **bus**: in flight never beyond the bound plus one call's output, and
//!   every message sent was delivered once (or lost with a crashed server).
//!
//! [`BusFault`] plants bugs in the bus (a lost, doubled or reordered
//! message), [`StoreFault`] in the store (an ack before the write, an
//! offset reused after a crash, a hole in an opened tail); tests check each
//! one is caught (sim/tests/cluster.rs, sim/tests/store.rs).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use hubbub_core::{
    BusMessage, Config, ConnId, Frame, Hub, Input, Name, Output, Route, SeedMessage, SeedType,
    ShardId, StoreEvent, StoreRequest, Timestamp,
};
use serde_json::{json, Value};

use crate::network::EventQueue;
use crate::rng::SimRng;
pub use crate::store_model::StoreFault;
use crate::store_model::{text_of, StoreCounts, StoreModel, StoreParams};
use crate::trace::fnv1a;

/// What a cluster run found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Order,
    ReplyBeforePush,
    OneReply,
    Presence,
    Bus,
    DurableAck,
    OffsetsOnce,
    RecoveryExact,
    FailedUnseen,
}

impl Rule {
    /// Every rule, in declaration order.
    pub const ALL: [Self; 9] = [
        Self::Order,
        Self::ReplyBeforePush,
        Self::OneReply,
        Self::Presence,
        Self::Bus,
        Self::DurableAck,
        Self::OffsetsOnce,
        Self::RecoveryExact,
        Self::FailedUnseen,
    ];
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Order => "channel-order",
            Self::ReplyBeforePush => "reply-before-push",
            Self::OneReply => "one-reply-per-command",
            Self::Presence => "presence-across-shards",
            Self::Bus => "bus-bounded-and-lossless",
            Self::DurableAck => "durable-before-ack",
            Self::OffsetsOnce => "offsets-once",
            Self::RecoveryExact => "recovery-exact",
            Self::FailedUnseen => "failed-publish-unseen",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Breach {
    pub rule: Rule,
    pub at: Timestamp,
    pub detail: String,
    /// Events carried out until it was caught (client actions among them).
    pub events: u64,
    pub actions: u64,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.rule, self.at, self.detail)
    }
}

/// A planted bug in the bus, for tests that the rules catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusFault {
    None,
    /// The `n`th delivery of a publication to a shard is lost.
    DropDelivery(u64),
    /// The `n`th delivery of a publication is delivered twice.
    DoubleDelivery(u64),
    /// The `n`th delivery of a publication is overtaken by the next
    /// delivery on its link.
    Reorder(u64),
}

/// A run's knobs, all derived from the seed except those given.
#[derive(Clone, Debug)]
pub struct ClusterParams {
    pub seed: u64,
    pub shards: u16,
    pub clients: u32,
    /// Client actions in the run.
    pub actions: u32,
    pub channels: u32,
    /// Of 100 clients, how many speak the seed protocol.
    pub seed_percent: u32,
    pub bus_latency_max_ms: u64,
    pub client_latency_max_ms: u64,
    pub bus_high_water: usize,
    pub fault: BusFault,
    /// The store engine: each answer takes `0..=store_latency_max_ms`.
    pub store_latency_max_ms: u64,
    /// Of 1000 store requests, how many are slow commits (50–500 ms more).
    pub slow_commit_permille: u64,
    /// Of 1000 store answers, how many are errors.
    pub store_fail_permille: u64,
    /// The whole server crashes and restarts about this often (0: never).
    pub crash_every_ms: u64,
    pub store_fault: StoreFault,
}

impl ClusterParams {
    #[must_use]
    pub fn derive(seed: u64, shards: u16) -> Self {
        let mut r = SimRng::stream(seed, "cluster");
        let mut s = SimRng::stream(seed, "cluster-store");
        Self {
            seed,
            shards,
            clients: u32::try_from(r.between(4, 60)).unwrap_or(4),
            actions: u32::try_from(r.between(200, 2_000)).unwrap_or(200),
            channels: u32::try_from(r.between(1, 4)).unwrap_or(1),
            seed_percent: u32::try_from(r.between(0, 40)).unwrap_or(0),
            bus_latency_max_ms: r.between(0, 30),
            client_latency_max_ms: r.between(0, 30),
            bus_high_water: usize::try_from(r.between(8, 200)).unwrap_or(8),
            fault: BusFault::None,
            // From a stream of their own, so the knobs above keep their values.
            store_latency_max_ms: s.between(0, 20),
            slow_commit_permille: s.between(0, 10),
            store_fail_permille: 0,
            crash_every_ms: 0,
            store_fault: StoreFault::None,
        }
    }

    /// Restart-heavy: a slow, failing store and a server that crashes
    /// every few hundred milliseconds of virtual time.
    #[must_use]
    pub fn restart_heavy(seed: u64, shards: u16) -> Self {
        let mut s = SimRng::stream(seed, "cluster-restarts");
        Self {
            store_latency_max_ms: s.between(0, 30),
            slow_commit_permille: s.between(5, 40),
            store_fail_permille: s.between(5, 40),
            crash_every_ms: s.between(150, 600),
            ..Self::derive(seed, shards)
        }
    }
}

#[derive(Debug)]
enum Event {
    /// Client input reaches its shard's hub.
    ToHub { conn: ConnId, input: Input },
    /// A bus message reaches a shard (of the server's run `gen`).
    Bus {
        to: ShardId,
        msg: BusMessage,
        gen: u64,
    },
    /// The store answers the oldest request of a shard's hub.
    Store { shard: usize, gen: u64 },
    /// The whole server crashes and restarts.
    Crash,
    /// A client whose connection a crash ended connects again.
    Reconnect { client: usize },
    /// A shard's hub is due a `handle_timeout` (held-back presence).
    Timeout { shard: usize, gen: u64 },
    /// Hub output reaches a client.
    ToClient { conn: ConnId, out: Output },
    /// The driver's next client action.
    Act,
}

#[derive(Debug, Default)]
struct Sub {
    /// The stream's epoch (a channel that empties starts a new stream).
    epoch: String,
    last_offset: Option<u64>,
    join_leave: bool,
    /// The presence reply asked right after subscribing has come: joins and
    /// leaves after it change `view`.
    view: Option<BTreeSet<String>>,
    view_id: Option<u32>,
}

/// A simulated client and what it saw.
#[derive(Debug)]
struct Client {
    conn: ConnId,
    seed: Option<(String, String)>,
    client_id: String,
    open: bool,
    /// Sent commands awaiting their reply.
    pending: BTreeMap<u32, Value>,
    subscribing: BTreeMap<String, u32>,
    subscribed: BTreeMap<String, Sub>,
    next_id: u32,
    /// Channels unsubscribed whose reply has not come: pushes may still arrive.
    leaving: BTreeSet<String>,
    /// The last position seen in each channel left: a later subscribe
    /// recovers from it.
    positions: BTreeMap<String, (String, u64)>,
    /// Seed: the chat lines read, and the latest online_users.
    seed_texts: Vec<String>,
    online_users: Option<String>,
    /// Upstream FIFO: when the last message sent arrives.
    up_last: Timestamp,
    down_last: Timestamp,
    /// Channels to subscribe to again after a crash ended the connection.
    resume: Vec<String>,
}

/// The shards, the bus, the clients, and the model.
pub struct Cluster {
    params: ClusterParams,
    now: Timestamp,
    hubs: Vec<Hub>,
    events: EventQueue<Event>,
    rng: SimRng,
    clients: Vec<Client>,
    /// Last arrival per bus link, for FIFO.
    links: BTreeMap<(u16, u16), Timestamp>,
    in_flight: usize,
    max_in_flight: usize,
    /// Client input held back while the bus is over its bound.
    held: VecDeque<(ConnId, Input)>,
    sent: u64,
    delivered: u64,
    deliveries: u64,
    /// Channel → offset → publication text, as the first subscriber saw it.
    order: BTreeMap<String, BTreeMap<u64, String>>,
    /// The model's members per channel: client ids.
    members: BTreeMap<String, BTreeSet<String>>,
    hash: u64,
    actions_left: u32,
    texts: u64,
    /// Subscribes that recovered (with or without publications to replay).
    recoveries: u64,
    refused_recoveries: u64,
    /// A message held back by a planted reorder, sent after the next one.
    reorder_hold: Option<(u16, ShardId, BusMessage)>,
    /// The hubs' configuration (a restart builds them again from it).
    config: Config,
    store: StoreModel,
    /// The server's run: bumped by every crash; what was in flight for an
    /// earlier run is gone.
    gen: u64,
    crashes: u64,
    /// Bus messages lost with a crashed server.
    bus_lost: u64,
    /// The `Timeout` event each shard has pending, if any.
    timeouts: Vec<Option<Timestamp>>,
    /// `online_users` snapshots the hubs held back (`presence_rate`).
    presence_deferred: u64,
    /// Connection → client; the connections of a crashed server are gone.
    conns: BTreeMap<u64, usize>,
    next_conn: u64,
    /// What the store acknowledged, as the hubs were told: (channel, epoch,
    /// offset) → text. An offset is given to one publication only.
    acked: BTreeMap<(String, u64, u64), String>,
    /// Texts the hubs asked the store to append.
    submitted: BTreeSet<String>,
    /// Appends the store has not answered: (shard, token) → text.
    appending: BTreeMap<(usize, u64), String>,
    /// Texts some client saw published, and texts refused to their publisher.
    seen_texts: BTreeSet<String>,
    failed_texts: BTreeSet<String>,
    /// Ok publish replies that found their publication in the store.
    durable_acks: u64,
    events_done: u64,
    /// Publications carried by recovering subscribe replies.
    store_recoveries: u64,
    /// Hub calls: `handle_input`, `handle_bus`, `handle_store`.
    hub_inputs: u64,
    /// Per rule (indexed as [`Rule::ALL`]): checks that examined something.
    checks: [u64; 9],
}

/// Per rule, how many checks examined something in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleChecks(pub [u64; 9]);

impl RuleChecks {
    #[must_use]
    pub fn get(&self, rule: Rule) -> u64 {
        self.0[rule as usize]
    }

    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// The rules never examined.
    #[must_use]
    pub fn never(&self) -> Vec<Rule> {
        Rule::ALL
            .into_iter()
            .filter(|r| self.get(*r) == 0)
            .collect()
    }
}

impl fmt::Display for RuleChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, r) in Rule::ALL.into_iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r} {}", self.get(r))?;
        }
        Ok(())
    }
}

fn breach(rule: Rule, at: Timestamp, detail: String) -> Breach {
    Breach {
        rule,
        at,
        detail,
        events: 0,
        actions: 0,
    }
}

/// One hub per shard, each with the store outside it.
fn build_hubs(config: &Config) -> Vec<Hub> {
    (0..config.shards)
        .map(|s| {
            Hub::with_external_store(Config {
                shard: ShardId(s),
                ..config.clone()
            })
        })
        .collect()
}

/// Each shard's `store_queue` here: appends (and broadcasts) waiting for
/// the store.
const STORE_QUEUE: usize = 64;

/// A stream's epoch as Centrifugo clients are told it.
fn epoch_of(text: &str) -> u64 {
    u64::from_str_radix(text, 16).unwrap_or(u64::MAX)
}

fn plus(t: Timestamp, ms: u64) -> Timestamp {
    Timestamp::from_millis(t.as_millis() + ms)
}

impl Cluster {
    #[must_use]
    pub fn new(params: ClusterParams) -> Self {
        let config = Config {
            // Heartbeats are the single-shard world's business; here they
            // would only add noise.
            ping_interval: Duration::from_secs(3_600),
            pong_timeout: Duration::from_secs(7_200),
            connect_timeout: Duration::from_secs(3_600),
            send_queue: 1 << 20,
            max_connections: 1 << 20,
            // Small, so that the bus's bound below means something: the
            // store's answers fan out without any client input, and a full
            // queue refuses publishes (a path this world then exercises).
            store_queue: STORE_QUEUE,
            entropy: params.seed,
            shards: params.shards,
            // Low, so that joins and leaves often outrun it: held-back
            // snapshots must still leave every seed member's list exact.
            presence_rate: Some(hubbub_core::Rate::new(5, 2)),
            ..Config::default()
        };
        let hubs = build_hubs(&config);
        let timeouts = vec![None; hubs.len()];
        let rng = SimRng::stream(params.seed, "cluster-run");
        let actions_left = params.actions;
        let store = StoreModel::new(
            StoreParams {
                latency_max_ms: params.store_latency_max_ms,
                slow_permille: params.slow_commit_permille,
                fail_permille: params.store_fail_permille,
                fault: params.store_fault,
            },
            params.shards,
            params.seed,
        );
        Self {
            params,
            now: Timestamp::ZERO,
            hubs,
            events: EventQueue::default(),
            rng,
            clients: Vec::new(),
            links: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: 0,
            held: VecDeque::new(),
            sent: 0,
            delivered: 0,
            deliveries: 0,
            order: BTreeMap::new(),
            members: BTreeMap::new(),
            hash: 0,
            actions_left,
            texts: 0,
            recoveries: 0,
            refused_recoveries: 0,
            reorder_hold: None,
            config,
            store,
            gen: 0,
            crashes: 0,
            bus_lost: 0,
            timeouts,
            presence_deferred: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            acked: BTreeMap::new(),
            appending: BTreeMap::new(),
            submitted: BTreeSet::new(),
            seen_texts: BTreeSet::new(),
            failed_texts: BTreeSet::new(),
            durable_acks: 0,
            events_done: 0,
            store_recoveries: 0,
            hub_inputs: 0,
            checks: [0; 9],
        }
    }

    /// The client that `conn` is (or was) of.
    fn index(&self, conn: ConnId) -> Option<usize> {
        self.conns.get(&conn.0).copied()
    }

    fn shard_of(&self, conn: ConnId) -> usize {
        usize::try_from(conn.0 % u64::from(self.params.shards)).unwrap_or(0)
    }

    fn channel(&mut self) -> String {
        format!("ch{}", self.rng.below(u64::from(self.params.channels)))
    }

    /// Runs the actions, then lets everything settle and checks the end state.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn run(&mut self) -> Result<Report, Breach> {
        self.events.push(Timestamp::ZERO, Event::Act);
        self.schedule_crash();
        let result = self.run_events();
        let (events, actions) = (
            self.events_done,
            u64::from(self.params.actions - self.actions_left),
        );
        result.map_err(|mut b| {
            b.events = events;
            b.actions = actions;
            b
        })?;
        Ok(Report {
            hash: self.hash,
            bus_messages: self.sent,
            max_in_flight: self.max_in_flight,
            deliveries: self.deliveries,
            publications: self.order.values().map(BTreeMap::len).sum(),
            recoveries: self.recoveries,
            refused_recoveries: self.refused_recoveries,
            crashes: self.crashes,
            store: self.store.counts,
            durable_acks: self.durable_acks,
            recovered_publications: self.store_recoveries,
            failed_publishes: self.failed_texts.len() as u64,
            presence_deferred: self.presence_deferred
                + self
                    .hubs
                    .iter()
                    .map(|h| h.stats().presence_deferred)
                    .sum::<u64>(),
            hub_inputs: self.hub_inputs,
            checks: RuleChecks(self.checks),
        })
    }

    fn hit(&mut self, rule: Rule) {
        self.checks[rule as usize] += 1;
    }

    fn run_events(&mut self) -> Result<(), Breach> {
        while let Some((at, event)) = self.events.pop() {
            self.now = self.now.max(at);
            self.events_done += 1;
            self.step(event)?;
        }
        self.flush_held()?;
        self.quiescence()
    }

    fn schedule_crash(&mut self) {
        let every = self.params.crash_every_ms;
        if every > 0 {
            let gap = self.rng.between(every / 2, every + every / 2);
            self.events.push(plus(self.now, gap), Event::Crash);
        }
    }

    /// The whole server dies and starts again: new hubs with new entropy,
    /// every connection and everything in flight gone; the store survives.
    /// Clients see their connection end and connect again a little later.
    fn crash(&mut self) {
        self.crashes += 1;
        self.gen += 1;
        self.hash ^= fnv1a(format!("{}crash{}", self.now, self.gen).as_bytes());
        self.store.crash();
        self.appending.clear();
        self.bus_lost += self.in_flight as u64;
        self.in_flight = 0;
        self.links.clear();
        self.reorder_hold = None;
        self.held.clear();
        self.config.entropy =
            crate::rng::mix64(self.params.seed ^ (self.gen << 40) ^ 0x7265_626f_6f74);
        self.presence_deferred += self
            .hubs
            .iter()
            .map(|h| h.stats().presence_deferred)
            .sum::<u64>();
        self.hubs = build_hubs(&self.config);
        self.timeouts = vec![None; self.hubs.len()];
        self.members.clear();
        self.conns.clear();
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if !c.open {
                continue;
            }
            c.open = false;
            c.pending.clear();
            c.leaving.clear();
            let mut resume: Vec<String> = c.subscribing.keys().cloned().collect();
            c.subscribing.clear();
            for (channel, sub) in std::mem::take(&mut c.subscribed) {
                let position = (sub.epoch, sub.last_offset.unwrap_or(0));
                c.positions.insert(channel.clone(), position);
                resume.push(channel);
            }
            resume.sort();
            resume.dedup();
            c.resume = resume;
            let delay = self.rng.between(0, 50);
            self.events
                .push(plus(self.now, delay), Event::Reconnect { client: i });
        }
    }

    /// A client whose connection died connects again (a new connection)
    /// and subscribes again to what it had, recovering from where it was.
    fn reconnect(&mut self, i: usize) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(conn.0, i);
        let client_id = self.hubs[0].client_id(conn).to_string();
        let c = &mut self.clients[i];
        c.conn = conn;
        c.client_id.clone_from(&client_id);
        c.open = true;
        let resume = std::mem::take(&mut c.resume);
        match c.seed.clone() {
            Some((room, user)) => {
                // A new member: what it reads is judged from here.
                c.seed_texts.clear();
                c.online_users = None;
                let route = Route::Room {
                    room: Name::new(&room).expect("valid"),
                    username: Name::new(&user).expect("valid"),
                    history: 0,
                };
                self.members.entry(room).or_default().insert(client_id);
                self.up(conn, Input::Open { conn, route });
            }
            None => {
                self.up(
                    conn,
                    Input::Open {
                        conn,
                        route: Route::Centrifuge,
                    },
                );
                self.command(conn, json!({"connect": {}}));
                for channel in resume {
                    self.subscribe(i, &channel);
                }
            }
        }
    }

    fn subscribe(&mut self, i: usize, channel: &str) {
        let join_leave = self.rng.below(2) == 0;
        let mut sub = json!({"channel": channel, "join_leave": join_leave, "recoverable": true});
        if let Some((epoch, offset)) = self.clients[i].positions.get(channel) {
            sub["recover"] = json!(true);
            sub["epoch"] = json!(epoch);
            sub["offset"] = json!(offset);
        }
        let conn = self.clients[i].conn;
        self.command(conn, json!({ "subscribe": sub }));
    }

    /// The store's answer, as the hub is about to be told it: an offset is
    /// given to one publication only; a refused one must stay unseen.
    fn check_answer(&mut self, shard: usize, event: &StoreEvent) -> Result<(), Breach> {
        let StoreEvent::Appended {
            channel,
            token,
            result,
        } = event
        else {
            return Ok(());
        };
        let Some(text) = self.appending.remove(&(shard, *token)) else {
            return Ok(());
        };
        match result {
            Ok((offset, epoch)) => {
                self.checks[Rule::OffsetsOnce as usize] += 1;
                let key = (channel.as_str().to_owned(), *epoch, *offset);
                match self.acked.get(&key) {
                    Some(other) if *other != text => Err(breach(
                        Rule::OffsetsOnce,
                        self.now,
                        format!("{channel}@{epoch:016x} offset {offset} given to {text:?}, already to {other:?}"),
                    )),
                    _ => {
                        self.acked.insert(key, text);
                        Ok(())
                    }
                }
            }
            Err(_) => {
                self.checks[Rule::FailedUnseen as usize] += 1;
                if self.seen_texts.contains(&text) {
                    return Err(breach(
                        Rule::FailedUnseen,
                        self.now,
                        format!("{text:?} refused by the store, already seen"),
                    ));
                }
                self.failed_texts.insert(text);
                Ok(())
            }
        }
    }

    fn step(&mut self, event: Event) -> Result<(), Breach> {
        match event {
            Event::Act => {
                if self.actions_left > 0 {
                    self.actions_left -= 1;
                    self.act();
                    let gap = self.rng.between(0, 5);
                    self.events.push(plus(self.now, gap), Event::Act);
                }
                Ok(())
            }
            Event::ToHub { conn, input } => {
                let congested = self.in_flight > self.params.bus_high_water
                    && matches!(input, Input::Message { .. });
                if congested || self.held.iter().any(|(c, _)| *c == conn) {
                    // Back-pressure: the reader leaves it in the socket,
                    // and what the client sends after it waits behind it.
                    self.held.push_back((conn, input));
                    return Ok(());
                }
                self.deliver_input(conn, input)
            }
            Event::Bus { to, msg, gen } => {
                if gen != self.gen {
                    // Lost with the server that sent it (counted then).
                    return Ok(());
                }
                self.in_flight -= 1;
                self.delivered += 1;
                self.hash ^= fnv1a(format!("{}{to:?}{msg:?}", self.now).as_bytes()).rotate_left(7);
                let shard = usize::from(to.0);
                self.hubs[shard].handle_bus(self.now, msg);
                self.hub_inputs += 1;
                self.drain(shard)?;
                if self.in_flight <= self.params.bus_high_water / 2 {
                    self.release_held()?;
                }
                Ok(())
            }
            Event::ToClient { conn, out } => self.observe(conn, &out),
            Event::Timeout { shard, gen } => {
                if gen != self.gen {
                    return Ok(());
                }
                self.timeouts[shard] = None;
                self.hubs[shard].handle_timeout(self.now);
                self.drain(shard)
            }
            Event::Store { shard, gen } => {
                if gen != self.gen {
                    return Ok(());
                }
                let Some(event) = self.store.deliver(shard) else {
                    return Ok(());
                };
                self.check_answer(shard, &event)?;
                self.hash ^=
                    fnv1a(format!("{}{shard}{event:?}", self.now).as_bytes()).rotate_left(3);
                self.hubs[shard].handle_store(self.now, event);
                self.hub_inputs += 1;
                self.drain(shard)
            }
            Event::Crash => {
                if self.actions_left > 0 {
                    self.crash();
                    self.schedule_crash();
                }
                Ok(())
            }
            Event::Reconnect { client } => {
                self.reconnect(client);
                Ok(())
            }
        }
    }

    fn release_held(&mut self) -> Result<(), Breach> {
        while self.in_flight <= self.params.bus_high_water {
            let Some((conn, input)) = self.held.pop_front() else {
                break;
            };
            self.deliver_input(conn, input)?;
        }
        Ok(())
    }

    fn flush_held(&mut self) -> Result<(), Breach> {
        loop {
            self.release_held()?;
            match self.events.pop() {
                Some((at, event)) => {
                    self.now = self.now.max(at);
                    self.events_done += 1;
                    self.step(event)?;
                }
                None if self.held.is_empty() => return Ok(()),
                None => {
                    // Nothing in flight: the bus is empty, release everything.
                    let (conn, input) = self.held.pop_front().expect("not empty");
                    self.deliver_input(conn, input)?;
                }
            }
        }
    }

    fn deliver_input(&mut self, conn: ConnId, input: Input) -> Result<(), Breach> {
        if self.index(conn).is_none() {
            // Sent over a connection that died with the server.
            return Ok(());
        }
        let shard = self.shard_of(conn);
        self.hash ^= fnv1a(format!("{}{input:?}", self.now).as_bytes());
        self.hubs[shard].handle_input(self.now, input);
        self.hub_inputs += 1;
        self.drain(shard)
    }

    /// Carries out a hub's outputs: to clients over their links, to other
    /// shards over the bus.
    fn drain(&mut self, shard: usize) -> Result<(), Breach> {
        while let Some(out) = self.hubs[shard].poll_output() {
            let conn = out.conn();
            let latency = self.rng.between(0, self.params.client_latency_max_ms);
            let Some(i) = self.index(conn) else {
                continue;
            };
            let c = &mut self.clients[i];
            let at = plus(self.now, latency).max(c.down_last);
            c.down_last = at;
            self.events.push(at, Event::ToClient { conn, out });
        }
        while let Some(request) = self.hubs[shard].poll_store() {
            if let StoreRequest::Append {
                token, publication, ..
            } = &request
            {
                let text = text_of(&publication.data);
                self.submitted.insert(text.clone());
                self.appending.insert((shard, *token), text);
            }
            let due = self.store.submit(shard, self.now, request);
            let gen = self.gen;
            self.events.push(due, Event::Store { shard, gen });
        }
        while let Some((to, msg)) = self.hubs[shard].poll_bus() {
            let from = u16::try_from(shard).unwrap_or(0);
            let publication = match &msg {
                BusMessage::Deliver { items, .. } => items
                    .iter()
                    .any(|d| d.to == hubbub_core::bus::Audience::Centrifuge),
                _ => false,
            };
            if publication {
                self.deliveries += 1;
                match self.params.fault {
                    BusFault::DropDelivery(n) if n == self.deliveries => continue,
                    BusFault::DoubleDelivery(n) if n == self.deliveries => {
                        self.send(from, to, msg.clone());
                    }
                    BusFault::Reorder(n) if n == self.deliveries => {
                        self.reorder_hold = Some((from, to, msg));
                        continue;
                    }
                    _ => {}
                }
            }
            // The held delivery is overtaken by the next delivery on its
            // link (a publish's reply between them would hide nothing).
            let delivery = matches!(msg, BusMessage::Deliver { .. });
            self.send(from, to, msg);
            if let Some((f, t, held)) = self.reorder_hold.take() {
                if (f, t) == (from, to) && delivery {
                    self.send(f, t, held);
                } else {
                    self.reorder_hold = Some((f, t, held));
                }
            }
        }
        // Timers that matter here are the held-back presence snapshots
        // (heartbeats are an hour away in this simulation).
        if let Some(at) = self.hubs[shard].poll_timeout() {
            let soon = at <= plus(self.now, 60_000);
            if soon && self.timeouts[shard].is_none_or(|t| at < t) {
                self.timeouts[shard] = Some(at);
                let gen = self.gen;
                self.events
                    .push(at.max(self.now), Event::Timeout { shard, gen });
            }
        }
        // Readers stop at the high water; what is in flight beyond it comes
        // from inputs that need no reader: one input's fan-out (256 a
        // shard), and the answers of the appends and broadcasts each shard
        // keeps waiting for the store (at most `STORE_QUEUE` of each), each
        // answer a delivery to every other shard and a reply.
        let shards = usize::from(self.params.shards);
        let bound = self.params.bus_high_water + 256 * shards + 2 * STORE_QUEUE * shards * shards;
        self.hit(Rule::Bus);
        if self.in_flight > bound {
            return Err(breach(
                Rule::Bus,
                self.now,
                format!(
                    "{} bus messages in flight, bound {bound} ({} client inputs held, {} appends in the store, {} events queued)",
                    self.in_flight,
                    self.held.len(),
                    self.appending.len(),
                    self.events.len()
                ),
            ));
        }
        Ok(())
    }

    fn send(&mut self, from: u16, to: ShardId, msg: BusMessage) {
        let latency = self.rng.between(0, self.params.bus_latency_max_ms);
        let link = self.links.entry((from, to.0)).or_insert(Timestamp::ZERO);
        let at = plus(self.now, latency).max(*link);
        *link = at;
        self.in_flight += 1;
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
        self.sent += 1;
        let gen = self.gen;
        self.events.push(at, Event::Bus { to, msg, gen });
    }

    // ---- clients --------------------------------------------------------------

    fn up(&mut self, conn: ConnId, input: Input) {
        let latency = self.rng.between(0, self.params.client_latency_max_ms);
        let Some(i) = self.index(conn) else {
            return;
        };
        let c = &mut self.clients[i];
        let at = plus(self.now, latency).max(c.up_last);
        c.up_last = at;
        self.events.push(at, Event::ToHub { conn, input });
    }

    fn command(&mut self, conn: ConnId, body: Value) {
        let Some(i) = self.index(conn) else {
            return;
        };
        let c = &mut self.clients[i];
        c.next_id += 1;
        let id = c.next_id;
        let mut command = body;
        command["id"] = json!(id);
        if let Some(sub) = command.get("subscribe") {
            let channel = sub["channel"].as_str().unwrap_or("").to_owned();
            c.subscribing.insert(channel, id);
        }
        c.pending.insert(id, command.clone());
        self.up(
            conn,
            Input::Message {
                conn,
                frame: Frame::text(command.to_string()),
            },
        );
    }

    fn open_client(&mut self) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(conn.0, self.clients.len());
        let seed = self.rng.below(100) < u64::from(self.params.seed_percent);
        let client_id = self.hubs[0].client_id(conn).to_string();
        let seed = seed.then(|| {
            let room = self.channel();
            (room, format!("u{}", conn.0))
        });
        self.clients.push(Client {
            conn,
            seed: seed.clone(),
            client_id: client_id.clone(),
            open: true,
            pending: BTreeMap::new(),
            subscribing: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            next_id: 0,
            leaving: BTreeSet::new(),
            positions: BTreeMap::new(),
            seed_texts: Vec::new(),
            online_users: None,
            up_last: Timestamp::ZERO,
            down_last: Timestamp::ZERO,
            resume: Vec::new(),
        });
        match seed {
            Some((room, user)) => {
                let route = Route::Room {
                    room: Name::new(&room).expect("valid"),
                    username: Name::new(&user).expect("valid"),
                    history: 0,
                };
                self.members.entry(room).or_default().insert(client_id);
                self.up(conn, Input::Open { conn, route });
            }
            None => {
                self.up(
                    conn,
                    Input::Open {
                        conn,
                        route: Route::Centrifuge,
                    },
                );
                self.command(conn, json!({"connect": {}}));
            }
        }
    }

    fn act(&mut self) {
        let open: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|c| c.open)
            .map(|c| c.conn)
            .collect();
        if open.is_empty()
            || (self.clients.len() < self.params.clients as usize && self.rng.below(4) == 0)
        {
            self.open_client();
            return;
        }
        let conn = *self.rng.pick(&open);
        let Some(i) = self.index(conn) else {
            return;
        };
        let roll = self.rng.below(100);
        if let Some((room, _)) = self.clients[i].seed.clone() {
            if roll < 3 {
                self.close(conn, Some(room));
            } else {
                self.texts += 1;
                let text = format!("t{}", self.texts);
                self.up(
                    conn,
                    Input::Message {
                        conn,
                        frame: Frame::text(text),
                    },
                );
            }
            return;
        }
        let channel = self.channel();
        let subscribed = self.clients[i].subscribed.contains_key(&channel);
        let subscribing = self.clients[i].subscribing.contains_key(&channel);
        let leaving = self.clients[i].leaving.contains(&channel);
        match roll {
            0..=2 => self.close(conn, None),
            3..=14 if !subscribed && !subscribing && !leaving => self.subscribe(i, &channel),
            15..=19 if subscribed => {
                if let Some(sub) = self.clients[i].subscribed.remove(&channel) {
                    let position = (sub.epoch, sub.last_offset.unwrap_or(0));
                    self.clients[i].positions.insert(channel.clone(), position);
                }
                self.clients[i].leaving.insert(channel.clone());
                let id = self.clients[i].client_id.clone();
                if let Some(m) = self.members.get_mut(&channel) {
                    m.remove(&id);
                }
                self.command(conn, json!({"unsubscribe": {"channel": channel}}));
            }
            20..=24 => {
                self.command(conn, json!({"presence_stats": {"channel": channel}}));
            }
            _ => {
                self.texts += 1;
                let text = format!("t{}", self.texts);
                self.command(
                    conn,
                    json!({"publish": {"channel": channel, "data": {"text": text}}}),
                );
            }
        }
    }

    fn close(&mut self, conn: ConnId, room: Option<String>) {
        let Some(i) = self.index(conn) else {
            return;
        };
        let c = &mut self.clients[i];
        c.open = false;
        c.pending.clear();
        let id = c.client_id.clone();
        let channels: Vec<String> = c
            .subscribed
            .keys()
            .cloned()
            .chain(c.subscribing.keys().cloned())
            .chain(room)
            .collect();
        for ch in channels {
            if let Some(m) = self.members.get_mut(&ch) {
                m.remove(&id);
            }
        }
        self.up(
            conn,
            Input::Disconnect {
                conn,
                reason: hubbub_core::CloseReason::PeerClosed,
            },
        );
    }

    /// A client reads an output.
    fn observe(&mut self, conn: ConnId, out: &Output) -> Result<(), Breach> {
        let now = self.now;
        let Some(i) = self.index(conn) else {
            // A connection of a server that crashed: gone.
            return Ok(());
        };
        if !self.clients[i].open || self.clients[i].conn != conn {
            return Ok(());
        }
        let out = match out {
            Output::Send { frame, .. } => frame,
            Output::Close { .. } => {
                // The server ended the connection (a seed member whose
                // room's stream could not be opened): it is nobody's member.
                let c = &mut self.clients[i];
                c.open = false;
                c.pending.clear();
                let id = c.client_id.clone();
                for m in self.members.values_mut() {
                    m.remove(&id);
                }
                return Ok(());
            }
            Output::Ping { .. } => return Ok(()),
        };
        let frame = out;
        let text = String::from_utf8_lossy(&frame.payload).into_owned();
        if self.clients[i].seed.is_some() {
            let msg: SeedMessage = serde_json::from_str(&text)
                .map_err(|e| breach(Rule::Order, now, format!("{conn}: {e}: {text}")))?;
            return self.observe_seed(i, &msg);
        }
        let msg: Value = serde_json::from_str(&text)
            .map_err(|e| breach(Rule::Order, now, format!("{conn}: {e}: {text}")))?;
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            return self.observe_reply(i, u32::try_from(id).unwrap_or(0), &msg);
        }
        let Some(push) = msg.get("push") else {
            return Ok(());
        };
        let channel = push["channel"].as_str().unwrap_or("").to_owned();
        self.checks[Rule::ReplyBeforePush as usize] += 1;
        let c = &mut self.clients[i];
        let Some(sub) = c.subscribed.get_mut(&channel) else {
            // A push after the client's unsubscribe was sent and before its
            // reply is legitimate; any other push of a channel the client
            // is not subscribed to is not.
            if !c.leaving.contains(&channel) {
                return Err(breach(
                    Rule::ReplyBeforePush,
                    now,
                    format!("{conn} got {msg} before its subscribe reply"),
                ));
            }
            return Ok(());
        };
        if let Some(p) = push.get("pub") {
            for rule in [Rule::Order, Rule::FailedUnseen, Rule::OffsetsOnce] {
                self.checks[rule as usize] += 1;
            }
            let offset = p["offset"].as_u64().unwrap_or(0);
            let data = p["data"]["text"].as_str().unwrap_or("").to_owned();
            if let Some(last) = sub.last_offset {
                if offset != last + 1 {
                    return Err(breach(
                        Rule::Order,
                        now,
                        format!("{conn} on {channel}: offset {offset} after {last}"),
                    ));
                }
            }
            sub.last_offset = Some(offset);
            let stream = format!("{channel}@{}", sub.epoch);
            if self.failed_texts.contains(&data) {
                return Err(breach(
                    Rule::FailedUnseen,
                    now,
                    format!("{conn} on {channel}: got {data:?}, which was refused"),
                ));
            }
            self.seen_texts.insert(data.clone());
            let seen = self.order.entry(stream).or_default();
            match seen.get(&offset) {
                Some(other) if *other != data => {
                    return Err(breach(
                        Rule::OffsetsOnce,
                        now,
                        format!("{conn} on {channel}: offset {offset} is {data:?}, others saw {other:?}"),
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert(offset, data);
                }
            }
        } else if let Some((kind, body)) = ["join", "leave"]
            .iter()
            .find_map(|k| push.get(*k).map(|b| (*k, b)))
        {
            self.checks[Rule::Presence as usize] += 1;
            if !sub.join_leave {
                return Err(breach(
                    Rule::Presence,
                    now,
                    format!("{conn} on {channel}: a {kind} it did not ask for"),
                ));
            }
            let client = body["info"]["client"].as_str().unwrap_or("").to_owned();
            if let Some(view) = sub.view.as_mut() {
                let changed = if kind == "join" {
                    view.insert(client.clone())
                } else {
                    view.remove(&client)
                };
                if !changed {
                    return Err(breach(
                        Rule::Presence,
                        now,
                        format!(
                            "{conn} on {channel}: a {kind} of {client} that does not fit its view"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn observe_reply(&mut self, i: usize, id: u32, msg: &Value) -> Result<(), Breach> {
        let now = self.now;
        self.hit(Rule::OneReply);
        let c = &mut self.clients[i];
        let conn = c.conn;
        let Some(command) = c.pending.remove(&id) else {
            return Err(breach(
                Rule::OneReply,
                now,
                format!("{conn}: reply to {id}, which is not pending: {msg}"),
            ));
        };
        if let Some(publish) = command.get("publish") {
            let channel = publish["channel"].as_str().unwrap_or("").to_owned();
            let text = publish["data"]["text"].as_str().unwrap_or("").to_owned();
            let rule = if msg.get("error").is_some() {
                Rule::FailedUnseen
            } else {
                Rule::DurableAck
            };
            self.checks[rule as usize] += 1;
            if msg.get("error").is_some() {
                // Refused: nobody may ever see it.
                if self.seen_texts.contains(&text) {
                    return Err(breach(
                        Rule::FailedUnseen,
                        now,
                        format!("{conn}: {text:?} refused ({msg}), yet somebody saw it"),
                    ));
                }
                self.failed_texts.insert(text);
            } else {
                // Acknowledged: the store holds it, now.
                if self.store.durable_at(&channel, &text).is_none() {
                    return Err(breach(
                        Rule::DurableAck,
                        now,
                        format!(
                            "{conn}: {text:?} in {channel} acknowledged, the store does not hold it ({})",
                            if self.submitted.contains(&text) {
                                "the store was asked to append it"
                            } else {
                                "the hub never asked the store to append it"
                            }
                        ),
                    ));
                }
                self.durable_acks += 1;
            }
            return Ok(());
        }
        if let Some(unsub) = command.get("unsubscribe") {
            // Nothing of the old subscription follows its reply.
            c.leaving.remove(unsub["channel"].as_str().unwrap_or(""));
        }
        if let Some(sub) = command.get("subscribe") {
            let channel = sub["channel"].as_str().unwrap_or("").to_owned();
            c.subscribing.remove(&channel);
            if msg.get("error").is_none() {
                let join_leave = sub["join_leave"].as_bool().unwrap_or(false);
                // Positioned: the first publication must be the next offset.
                let result = &msg["subscribe"];
                let epoch = result["epoch"].as_str().unwrap_or("").to_owned();
                let mut last_offset = result["offset"].as_u64().unwrap_or(0);
                let publications = result["publications"].as_array();
                if result["was_recovering"] == json!(true) || publications.is_some() {
                    self.checks[Rule::RecoveryExact as usize] += 1;
                }
                if result["recovered"] != json!(true) && publications.is_some_and(|p| !p.is_empty())
                {
                    return Err(breach(
                        Rule::RecoveryExact,
                        now,
                        format!("{conn} on {channel}: not recovered, yet publications: {msg}"),
                    ));
                }
                if result["was_recovering"] == json!(true) && result["recovered"] != json!(true) {
                    self.refused_recoveries += 1;
                }
                if result["recovered"] == json!(true) {
                    // Exactly what was missed, in order, from the client's own
                    // offset: what the store holds at those offsets.
                    let asked = sub["offset"].as_u64().unwrap_or(0);
                    if last_offset != asked {
                        return Err(breach(
                            Rule::RecoveryExact,
                            now,
                            format!("{conn} recovered on {channel} at offset {last_offset}, it asked {asked}"),
                        ));
                    }
                    let stream = format!("{channel}@{epoch}");
                    for p in result["publications"].as_array().into_iter().flatten() {
                        let offset = p["offset"].as_u64().unwrap_or(0);
                        let data = p["data"]["text"].as_str().unwrap_or("").to_owned();
                        if offset != last_offset + 1 {
                            return Err(breach(
                                Rule::RecoveryExact,
                                now,
                                format!("{conn} recovering {channel}: offset {offset} after {last_offset}"),
                            ));
                        }
                        last_offset = offset;
                        let held = self.store.durable(&channel, epoch_of(&epoch), offset);
                        if held != Some(data.as_str()) {
                            return Err(breach(
                                Rule::RecoveryExact,
                                now,
                                format!("{conn} recovered {channel}@{epoch} offset {offset} as {data:?}, the store holds {held:?}"),
                            ));
                        }
                        if self.failed_texts.contains(&data) {
                            return Err(breach(
                                Rule::FailedUnseen,
                                now,
                                format!("{conn} recovered {data:?}, which was refused"),
                            ));
                        }
                        self.seen_texts.insert(data.clone());
                        self.store_recoveries += 1;
                        let seen = self.order.entry(stream.clone()).or_default();
                        if seen.get(&offset).is_some_and(|other| *other != data) {
                            return Err(breach(
                                Rule::OffsetsOnce,
                                now,
                                format!("{conn} recovered {channel} offset {offset} as {data:?}, others saw otherwise"),
                            ));
                        }
                        seen.entry(offset).or_insert(data);
                    }
                    self.recoveries += 1;
                }
                let c = &mut self.clients[i];
                c.positions.remove(&channel);
                c.subscribed.insert(
                    channel.clone(),
                    Sub {
                        epoch,
                        last_offset: Some(last_offset),
                        join_leave,
                        ..Sub::default()
                    },
                );
                let id = c.client_id.clone();
                self.members.entry(channel.clone()).or_default().insert(id);
                if join_leave {
                    // The view starts from presence asked right now.
                    self.command(conn, json!({"presence": {"channel": channel}}));
                    let c = &mut self.clients[i];
                    let qid = c.next_id;
                    if let Some(sub) = c.subscribed.get_mut(&channel) {
                        sub.view_id = Some(qid);
                    }
                }
            }
        } else if let Some(p) = command.get("presence") {
            let channel = p["channel"].as_str().unwrap_or("").to_owned();
            if let Some(sub) = c.subscribed.get_mut(&channel) {
                if sub.view_id == Some(id) {
                    let listed: BTreeSet<String> = msg["presence"]["presence"]
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    sub.view = Some(listed);
                }
            }
        }
        Ok(())
    }

    fn observe_seed(&mut self, i: usize, msg: &SeedMessage) -> Result<(), Breach> {
        let c = &mut self.clients[i];
        match msg.kind {
            SeedType::OnlineUsers => c.online_users = Some(msg.content.clone()),
            // Judged at quiescence, against the order the Centrifugo
            // subscribers saw by then.
            SeedType::Chat => {
                self.checks[Rule::FailedUnseen as usize] += 1;
                if self.failed_texts.contains(&msg.content) {
                    return Err(breach(
                        Rule::FailedUnseen,
                        self.now,
                        format!("{}: read {:?}, which was refused", c.conn, msg.content),
                    ));
                }
                self.seen_texts.insert(msg.content.clone());
                c.seed_texts.push(msg.content.clone());
            }
            SeedType::UserJoined | SeedType::UserLeft => {}
        }
        Ok(())
    }

    /// Everything delivered: the homes, the clients' views and the model agree.
    fn quiescence(&mut self) -> Result<(), Breach> {
        let now = self.now;
        self.hit(Rule::Bus);
        self.hit(Rule::FailedUnseen);
        if self.sent != self.delivered + self.bus_lost || self.in_flight != 0 {
            return Err(breach(
                Rule::Bus,
                now,
                format!(
                    "{} bus messages sent, {} delivered, {} lost in crashes",
                    self.sent, self.delivered, self.bus_lost
                ),
            ));
        }
        if let Some(text) = self.failed_texts.iter().find(|t| self.store.holds_text(t)) {
            return Err(breach(
                Rule::FailedUnseen,
                now,
                format!("{text:?} was refused, yet the store holds it"),
            ));
        }
        for c in &self.clients {
            if c.open {
                self.checks[Rule::OneReply as usize] += 1;
                if let Some((id, cmd)) = c.pending.first_key_value() {
                    return Err(breach(
                        Rule::OneReply,
                        now,
                        format!("{}: command {id} never answered: {cmd}", c.conn),
                    ));
                }
            }
        }
        let channels: Vec<String> = (0..self.params.channels)
            .map(|i| format!("ch{i}"))
            .collect();
        for channel in &channels {
            let home = usize::from(hubbub_core::bus::home_of(channel, self.params.shards).0);
            let hub = &self.hubs[home];
            let listed: Vec<ConnId> = hub.room_members(channel).collect();
            let ids: BTreeSet<String> = listed
                .iter()
                .map(|c| hub.client_id(*c).to_string())
                .collect();
            let model = self.members.get(channel).cloned().unwrap_or_default();
            self.checks[Rule::Presence as usize] += 1;
            if ids != model {
                return Err(breach(
                    Rule::Presence,
                    now,
                    format!("{channel}: home lists {ids:?}, the model {model:?}"),
                ));
            }
            let names: Vec<String> = listed
                .iter()
                .filter_map(|conn| {
                    self.index(*conn)
                        .and_then(|i| self.clients[i].seed.as_ref())
                })
                .map(|(_, user)| user.clone())
                .collect();
            let names = names.join(",");
            for c in self.clients.iter().filter(|c| c.open) {
                if c.seed.as_ref().is_some_and(|(room, _)| room == channel)
                    && c.online_users.as_deref() != Some(names.as_str())
                {
                    return Err(breach(
                        Rule::Presence,
                        now,
                        format!(
                            "{} in {channel}: online_users {:?}, members {names:?}",
                            c.conn, c.online_users
                        ),
                    ));
                }
                if let Some(sub) = c.subscribed.get(channel) {
                    self.checks[Rule::Order as usize] += 1;
                    // Nothing missing at the end either: a live subscriber
                    // has read up to the stream's top.
                    let top = hub.room_chat_seq(channel).unwrap_or(0);
                    if sub.last_offset != Some(top) {
                        return Err(breach(
                            Rule::Order,
                            now,
                            format!(
                                "{} on {channel}: read up to offset {:?}, the top is {top}",
                                c.conn, sub.last_offset
                            ),
                        ));
                    }
                    if let Some(view) = &sub.view {
                        if *view != model {
                            return Err(breach(
                                Rule::Presence,
                                now,
                                format!(
                                    "{} on {channel}: join/leave view {view:?}, members {model:?}",
                                    c.conn
                                ),
                            ));
                        }
                    }
                }
            }
            // Seed members, open or since closed.
            for c in &self.clients {
                // Seed lines: in the channel's order, none missing between
                // the first and the last (where Centrifugo subscribers saw
                // them, which places them).
                if c.seed.as_ref().is_some_and(|(room, _)| room == channel) {
                    // The stream the seed member's lines belong to: a seed
                    // member stays in its room, so it sees one stream.
                    let prefix = format!("{channel}@");
                    let order = self
                        .order
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix))
                        .map(|(_, o)| o)
                        .find(|o| c.seed_texts.iter().any(|t| o.values().any(|v| v == t)));
                    let place: BTreeMap<&str, u64> = order
                        .map(|o| o.iter().map(|(&k, v)| (v.as_str(), k)).collect())
                        .unwrap_or_default();
                    let offsets: Vec<u64> = c
                        .seed_texts
                        .iter()
                        .filter_map(|t| place.get(t.as_str()).copied())
                        .collect();
                    if offsets.windows(2).any(|w| w[1] <= w[0]) {
                        return Err(breach(
                            Rule::Order,
                            now,
                            format!(
                                "{} in {channel}: lines out of order: offsets {offsets:?}",
                                c.conn
                            ),
                        ));
                    }
                    // And every line from the first placed one to the top.
                    let top = hub.room_chat_seq(channel).unwrap_or(0);
                    // (A member that closed may not have read the last ones.)
                    if let (Some(&first), true) = (offsets.first(), c.open) {
                        let from = c
                            .seed_texts
                            .iter()
                            .position(|t| place.get(t.as_str()) == Some(&first))
                            .unwrap_or(0);
                        let read = (c.seed_texts.len() - from) as u64;
                        if read != top + 1 - first {
                            return Err(breach(
                                Rule::Order,
                                now,
                                format!(
                                    "{} in {channel}: read {read} lines from offset {first}, the top is {top}",
                                    c.conn
                                ),
                            ));
                        }
                    }
                    if let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) {
                        let known = order.map_or(0, |o| o.range(first..=last).count());
                        if offsets.len() != known {
                            return Err(breach(
                                Rule::Order,
                                now,
                                format!(
                                    "{} in {channel}: read {} of the {known} lines of offsets {first}..={last}",
                                    c.conn,
                                    offsets.len()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a clean run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub hash: u64,
    pub crashes: u64,
    pub store: StoreCounts,
    /// Ok publish replies whose publication the store held.
    pub durable_acks: u64,
    /// Publications carried by recovering subscribe replies.
    pub recovered_publications: u64,
    /// Publications refused to their publisher (or by the store).
    pub failed_publishes: u64,
    pub bus_messages: u64,
    pub max_in_flight: usize,
    pub deliveries: u64,
    pub publications: usize,
    pub recoveries: u64,
    /// Recovering subscribes answered `recovered: false`.
    pub refused_recoveries: u64,
    /// `online_users` snapshots held back by `presence_rate` (and sent
    /// later as one).
    pub presence_deferred: u64,
    /// Hub calls (`handle_input`, `handle_bus`, `handle_store`).
    pub hub_inputs: u64,
    /// Per rule, how many checks examined something.
    pub checks: RuleChecks,
}
