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
//! The bus is bounded the way the server bounds it: while more than
//! `bus_high_water` messages are in flight, client input waits in its
//! connection (TCP pushes back) instead of reaching a hub; nothing is ever
//! dropped.
//!
//! What a run checks ([`Rule`]), after every event and at quiescence:
//! - **order**: per channel, every subscriber on every shard sees offsets
//!   rise by exactly one, and the same publication at the same offset; a
//!   seed member sees chat lines in that same order, with no gap;
//! - **recovery**: a client that left a channel resubscribes from its last
//!   position; when recovered, the reply echoes its offset and carries
//!   exactly the missed publications, contiguous and the same as everyone
//!   saw, and live ones continue from there;
//! - **reply-before-push**, **one reply** per command id;
//! - **presence**: at quiescence each channel's home lists exactly the
//!   model's members, every `presence` reply a client then asks for agrees,
//!   each seed member's latest `online_users` is the named members in the
//!   home's join order, and each join/leave subscriber's view (its
//!   presence reply after subscribing, then the joins and leaves after it)
//!   equals the members;
//! - **bus**: in flight never beyond the bound plus one call's output, and
//!   every message sent was delivered once.
//!
//! [`BusFault`] plants bugs in the bus (a lost, doubled or reordered
//! message); tests check each one is caught.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use hubbub_core::{
    BusMessage, Config, ConnId, Frame, Hub, Input, Name, Output, Route, SeedMessage, SeedType,
    ShardId, Timestamp,
};
use serde_json::{json, Value};

use crate::network::EventQueue;
use crate::rng::SimRng;
use crate::trace::fnv1a;

/// What a cluster run found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Order,
    ReplyBeforePush,
    OneReply,
    Presence,
    Bus,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Order => "channel-order",
            Self::ReplyBeforePush => "reply-before-push",
            Self::OneReply => "one-reply-per-command",
            Self::Presence => "presence-across-shards",
            Self::Bus => "bus-bounded-and-lossless",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Breach {
    pub rule: Rule,
    pub at: Timestamp,
    pub detail: String,
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
}

impl ClusterParams {
    #[must_use]
    pub fn derive(seed: u64, shards: u16) -> Self {
        let mut r = SimRng::stream(seed, "cluster");
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
        }
    }
}

#[derive(Debug)]
enum Event {
    /// Client input reaches its shard's hub.
    ToHub { conn: ConnId, input: Input },
    /// A bus message reaches a shard.
    Bus { to: ShardId, msg: BusMessage },
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
    /// A message held back by a planted reorder, sent after the next one.
    reorder_hold: Option<(u16, ShardId, BusMessage)>,
}

fn breach(rule: Rule, at: Timestamp, detail: String) -> Breach {
    Breach { rule, at, detail }
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
            entropy: params.seed,
            shards: params.shards,
            ..Config::default()
        };
        let hubs = (0..params.shards)
            .map(|s| {
                Hub::new(Config {
                    shard: ShardId(s),
                    ..config.clone()
                })
            })
            .collect();
        let rng = SimRng::stream(params.seed, "cluster-run");
        let actions_left = params.actions;
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
            reorder_hold: None,
        }
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
        while let Some((at, event)) = self.events.pop() {
            self.now = self.now.max(at);
            self.step(event)?;
        }
        self.flush_held()?;
        self.quiescence()?;
        Ok(Report {
            hash: self.hash,
            bus_messages: self.sent,
            max_in_flight: self.max_in_flight,
            deliveries: self.deliveries,
            publications: self.order.values().map(BTreeMap::len).sum(),
            recoveries: self.recoveries,
        })
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
            Event::Bus { to, msg } => {
                self.in_flight -= 1;
                self.delivered += 1;
                self.hash ^= fnv1a(format!("{}{to:?}{msg:?}", self.now).as_bytes()).rotate_left(7);
                let shard = usize::from(to.0);
                self.hubs[shard].handle_bus(self.now, msg);
                self.drain(shard)?;
                if self.in_flight <= self.params.bus_high_water / 2 {
                    self.release_held()?;
                }
                Ok(())
            }
            Event::ToClient { conn, out } => self.observe(conn, &out),
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
        let shard = self.shard_of(conn);
        self.hash ^= fnv1a(format!("{}{input:?}", self.now).as_bytes());
        self.hubs[shard].handle_input(self.now, input);
        self.drain(shard)
    }

    /// Carries out a hub's outputs: to clients over their links, to other
    /// shards over the bus.
    fn drain(&mut self, shard: usize) -> Result<(), Breach> {
        while let Some(out) = self.hubs[shard].poll_output() {
            let conn = out.conn();
            let latency = self.rng.between(0, self.params.client_latency_max_ms);
            let c = &mut self.clients[usize::try_from(conn.0 - 1).unwrap_or(0)];
            let at = plus(self.now, latency).max(c.down_last);
            c.down_last = at;
            self.events.push(at, Event::ToClient { conn, out });
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
        let bound = self.params.bus_high_water + 256 * usize::from(self.params.shards);
        if self.in_flight > bound {
            return Err(breach(
                Rule::Bus,
                self.now,
                format!("{} bus messages in flight, bound {bound}", self.in_flight),
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
        self.events.push(at, Event::Bus { to, msg });
    }

    // ---- clients --------------------------------------------------------------

    fn up(&mut self, conn: ConnId, input: Input) {
        let latency = self.rng.between(0, self.params.client_latency_max_ms);
        let c = &mut self.clients[usize::try_from(conn.0 - 1).unwrap_or(0)];
        let at = plus(self.now, latency).max(c.up_last);
        c.up_last = at;
        self.events.push(at, Event::ToHub { conn, input });
    }

    fn command(&mut self, conn: ConnId, body: Value) {
        let c = &mut self.clients[usize::try_from(conn.0 - 1).unwrap_or(0)];
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
        let conn = ConnId(self.clients.len() as u64 + 1);
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
        let i = usize::try_from(conn.0 - 1).unwrap_or(0);
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
            3..=14 if !subscribed && !subscribing && !leaving => {
                let join_leave = self.rng.below(2) == 0;
                let mut sub =
                    json!({"channel": channel, "join_leave": join_leave, "recoverable": true});
                if let Some((epoch, offset)) = self.clients[i].positions.get(&channel) {
                    sub["recover"] = json!(true);
                    sub["epoch"] = json!(epoch);
                    sub["offset"] = json!(offset);
                }
                self.command(conn, json!({ "subscribe": sub }));
            }
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
        let i = usize::try_from(conn.0 - 1).unwrap_or(0);
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
        let i = usize::try_from(conn.0 - 1).unwrap_or(0);
        if !self.clients[i].open {
            return Ok(());
        }
        let Output::Send { frame, .. } = out else {
            return Ok(());
        };
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
            let seen = self.order.entry(stream).or_default();
            match seen.get(&offset) {
                Some(other) if *other != data => {
                    return Err(breach(
                        Rule::Order,
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
        let c = &mut self.clients[i];
        let conn = c.conn;
        let Some(command) = c.pending.remove(&id) else {
            return Err(breach(
                Rule::OneReply,
                now,
                format!("{conn}: reply to {id}, which is not pending: {msg}"),
            ));
        };
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
                if result["recovered"] == json!(true) {
                    // Exactly what was missed, in order, from the client's own offset.
                    let asked = sub["offset"].as_u64().unwrap_or(0);
                    if last_offset != asked {
                        return Err(breach(
                            Rule::Order,
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
                                Rule::Order,
                                now,
                                format!("{conn} recovering {channel}: offset {offset} after {last_offset}"),
                            ));
                        }
                        last_offset = offset;
                        let seen = self.order.entry(stream.clone()).or_default();
                        if seen.get(&offset).is_some_and(|other| *other != data) {
                            return Err(breach(
                                Rule::Order,
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
            SeedType::Chat => c.seed_texts.push(msg.content.clone()),
            SeedType::UserJoined | SeedType::UserLeft => {}
        }
        Ok(())
    }

    /// Everything delivered: the homes, the clients' views and the model agree.
    fn quiescence(&mut self) -> Result<(), Breach> {
        let now = self.now;
        if self.sent != self.delivered || self.in_flight != 0 {
            return Err(breach(
                Rule::Bus,
                now,
                format!(
                    "{} bus messages sent, {} delivered",
                    self.sent, self.delivered
                ),
            ));
        }
        for c in &self.clients {
            if c.open {
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
                    self.clients[usize::try_from(conn.0 - 1).unwrap_or(0)]
                        .seed
                        .as_ref()
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
    pub bus_messages: u64,
    pub max_in_flight: usize,
    pub deliveries: u64,
    pub publications: usize,
    pub recoveries: u64,
}
