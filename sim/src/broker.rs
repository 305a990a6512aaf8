//! Several nodes over a modelled broker (the Redis engine's contract), in
//! the deterministic world.
//!
//! Each node is one real [`Hub`] made with [`Hub::with_delivering_store`].
//! The broker keeps the streams (a [`MemoryStore`]: offsets are assigned
//! there) and every node's channel members, and delivers what a node
//! follows: publications, joins and leaves, each after a seeded latency,
//! in order within a channel but not between channels; answers to a
//! node's requests come in order with its channel's deliveries (the real
//! engine talks to a channel's Redis instance on one connection). Faults:
//! - **partitions**: for a while a node's requests fail (error 100 to its
//!   publishers), deliveries to it are lost, and its joins and leaves wait;
//!   when it heals, its joins and leaves are written, and it is told to
//!   read every followed stream again (`Resync`) and every followed
//!   channel's members (`RemoteMembers`), as the engine does on
//!   reconnection;
//! - **broker restarts** (its data kept, as with AOF): every delivery in
//!   flight is lost, every node resyncs and re-reads members.
//!
//! Clients speak Centrifugo JSON, subscribe with recovery, publish, and move
//! to another node now and then (their connection ends; they subscribe
//! again there, recovering from their last offset). What a run checks
//! ([`Rule`]), after every step and at the end:
//! - **order**: per subscription, `pub` offsets rise by exactly one, and a
//!   recovered subscribe continues exactly from the client's position:
//!   each offset of a channel seen once, in order, across moves;
//! - **offsets-once**: an offset of a stream carries one publication only,
//!   for every client on every node;
//! - **durable-ack**: an acknowledged publish is in the broker;
//! - **failed-unseen**: a refused publish is never delivered;
//! - **caught-up**: at the end (faults healed, everything delivered), each
//!   subscriber has seen its channel up to the broker's top;
//! - **presence-converges**: at the end, each node's view of the other
//!   nodes' members of each of its channels is the broker's, and the
//!   broker's members of each node are the clients subscribed there;
//! - **relay-once**: relay clients (`/ws`, on any node) get each relay
//!   frame at most once, byte for byte with its opcode, and only frames
//!   some relay client sent (across nodes the relay is best effort: a
//!   partition or a restart may lose frames, as Redis pub/sub does);
//! - **relay-reaches**: at the end (links healed), a frame from each node
//!   reaches every relay client on every node.
//!
//! [`BrokerFault`] plants bugs in the broker; sim/tests/broker.rs checks
//! that each is caught.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hubbub_core::bus::Stored;
use hubbub_core::{
    ChannelName, ChannelOptions, ClientId, Config, ConnId, Frame, Hub, Input, MemoryStore,
    Namespaces, Output, RemoteMember, Route, StoreError, StoreEvent, StoreRequest, Timestamp,
};
use serde_json::{json, Value};

use crate::rng::{Ppm, SimRng};

/// A bug planted in the broker, to show the rules catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerFault {
    /// An append is answered Ok but not kept.
    AckWithoutKeeping,
    /// After a restart, the next append reuses the top offset.
    ReuseOffsetAfterRestart,
    /// A leave is not recorded in the broker's member table.
    ForgetLeave,
    /// A delivery to a node is lost without a `Resync`.
    LoseDeliverySilently,
    /// A relay frame (a publication without offset) is delivered twice.
    BroadcastTwice,
    /// Publications without offset (the relay's) never leave their node.
    DropBroadcasts,
}

/// A rule a run keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Order,
    OffsetsOnce,
    DurableAck,
    FailedUnseen,
    CaughtUp,
    PresenceConverges,
    RelayOnce,
    RelayReaches,
}

/// A rule broken: which, at which step, and what was seen.
#[derive(Debug)]
pub struct Breach {
    pub rule: Rule,
    pub step: usize,
    pub detail: String,
}

impl Rule {
    pub const ALL: [Self; 8] = [
        Self::Order,
        Self::OffsetsOnce,
        Self::DurableAck,
        Self::FailedUnseen,
        Self::CaughtUp,
        Self::PresenceConverges,
        Self::RelayOnce,
        Self::RelayReaches,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::OffsetsOnce => "offsets-once",
            Self::DurableAck => "durable-ack",
            Self::FailedUnseen => "failed-unseen",
            Self::CaughtUp => "caught-up",
            Self::PresenceConverges => "presence-converges",
            Self::RelayOnce => "relay-once",
            Self::RelayReaches => "relay-reaches",
        }
    }
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} broken at step {}: {}",
            self.rule, self.step, self.detail
        )
    }
}

/// What a run is.
#[derive(Clone, Debug)]
pub struct BrokerParams {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub channels: usize,
    pub steps: usize,
    /// Per step: a client publishes / moves to another node.
    pub publish: Ppm,
    pub moves: Ppm,
    /// Per step: a node is partitioned / the broker restarts.
    pub partition: Ppm,
    pub restart: Ppm,
    pub max_latency_ms: u64,
    /// Relay (`/ws`) clients, each on a node of its own draw, and the
    /// chance per step that each sends a frame.
    pub relays: usize,
    pub relay_send: Ppm,
    pub fault: Option<BrokerFault>,
}

impl BrokerParams {
    /// A mix from `seed`; `partition_heavy` makes partitions and restarts
    /// frequent.
    #[must_use]
    pub fn derive(seed: u64, partition_heavy: bool) -> Self {
        let mut rng = SimRng::stream(seed, "broker-params");
        Self {
            seed,
            nodes: rng.between(2, 4) as usize,
            clients: rng.between(4, 24) as usize,
            channels: rng.between(1, 4) as usize,
            steps: 1500,
            publish: Ppm(rng.between_u32(100_000, 500_000)),
            moves: Ppm(rng.between_u32(5_000, 40_000)),
            partition: Ppm(if partition_heavy { 20_000 } else { 2_000 }),
            restart: Ppm(if partition_heavy { 5_000 } else { 500 }),
            max_latency_ms: rng.between(1, 30),
            relays: rng.between(2, 5) as usize,
            relay_send: Ppm(rng.between_u32(10_000, 100_000)),
            fault: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub hub_inputs: u64,
    pub publications: u64,
    pub refused: u64,
    pub deliveries: u64,
    pub lost_deliveries: u64,
    pub moves: u64,
    pub recovered: u64,
    pub partitions: u64,
    pub restarts: u64,
    pub remote_presence_events: u64,
    pub relay_frames: u64,
    /// Relay frames received, all relay clients together.
    pub relay_received: u64,
    /// How often each rule was examined (a rule never examined proves nothing).
    pub examined: BTreeMap<Rule, u64>,
}

struct Sub {
    epoch: String,
    /// The last offset seen (0: none yet).
    offset: u64,
    /// Whether the subscribe was answered (pushes before it are refused).
    live: bool,
}

struct Client {
    node: usize,
    conn: ConnId,
    channels: Vec<ChannelName>,
    subs: BTreeMap<String, Sub>,
    /// Subscribe command id → channel; publish id → (channel, data).
    subscribing: BTreeMap<u64, String>,
    publishing: BTreeMap<u64, (String, i64)>,
    next_id: u64,
}

/// A relay (`/ws`) client: it stays on its node.
struct RelayClient {
    node: usize,
    conn: ConnId,
    /// The frames it got, by id.
    got: BTreeSet<u64>,
}

/// The broker's view of one node.
#[derive(Default)]
struct Link {
    follows: BTreeSet<ChannelName>,
    /// Partitioned until this time.
    partitioned_until: Option<u64>,
    /// Joins and leaves made while partitioned, written when it heals.
    waiting: Vec<hubbub_core::PresenceChange>,
    /// The last delivery time per channel (FIFO within a channel).
    channel_clock: BTreeMap<ChannelName, u64>,
}

/// A run.
pub struct BrokerWorld {
    params: BrokerParams,
    rng: SimRng,
    now: u64,
    step: usize,
    nodes: Vec<Hub>,
    links: Vec<Link>,
    store: MemoryStore,
    /// (channel, node, client) → member, as the broker records it.
    members: BTreeMap<(ChannelName, u64, ClientId), RemoteMember>,
    /// Events in flight: (time, seq) → (node, event).
    flight: BTreeMap<(u64, u64), (usize, StoreEvent)>,
    seq: u64,
    clients: Vec<Client>,
    /// (node, conn) → client.
    owner: BTreeMap<(usize, ConnId), usize>,
    relays: Vec<RelayClient>,
    /// (node, conn) → relay client.
    relay_owner: BTreeMap<(usize, ConnId), usize>,
    /// Relay frames sent, by id.
    relay_sent: BTreeMap<u64, Frame>,
    next_conn: u64,
    next_data: i64,
    /// (channel, epoch, offset) → data, as first seen.
    seen: BTreeMap<(String, String, u64), Value>,
    refused: BTreeSet<i64>,
    restarted: bool,
    report: Report,
}

impl BrokerWorld {
    #[must_use]
    pub fn new(params: BrokerParams) -> Self {
        let rng = SimRng::stream(params.seed, "broker");
        let options = Arc::new(ChannelOptions {
            history_size: 100_000,
            history_ttl: Duration::from_secs(86_400),
            force_recovery: true,
            force_positioning: true,
            join_leave: true,
            ..ChannelOptions::default()
        });
        let nodes = (0..params.nodes)
            .map(|i| {
                Hub::with_delivering_store(Config {
                    entropy: params.seed ^ (0x9e37_79b9 * (i as u64 + 1)),
                    namespaces: Namespaces {
                        default: options.clone(),
                        ..Namespaces::default()
                    },
                    ..Config::default()
                })
            })
            .collect();
        let links = (0..params.nodes).map(|_| Link::default()).collect();
        let mut world = Self {
            rng,
            now: 1,
            step: 0,
            nodes,
            links,
            store: MemoryStore::new(1_000),
            members: BTreeMap::new(),
            flight: BTreeMap::new(),
            seq: 0,
            clients: Vec::new(),
            owner: BTreeMap::new(),
            relays: Vec::new(),
            relay_owner: BTreeMap::new(),
            relay_sent: BTreeMap::new(),
            next_conn: 1,
            next_data: 1,
            seen: BTreeMap::new(),
            refused: BTreeSet::new(),
            restarted: false,
            report: Report::default(),
            params,
        };
        for c in 0..world.params.clients {
            let node = world.rng.below(world.params.nodes as u64) as usize;
            let mut channels = Vec::new();
            for ch in 0..world.params.channels {
                if ch == c % world.params.channels || world.rng.below(2) == 0 {
                    channels.push(ChannelName::new(&format!("room{ch}")));
                }
            }
            world.clients.push(Client {
                node,
                conn: ConnId(0),
                channels,
                subs: BTreeMap::new(),
                subscribing: BTreeMap::new(),
                publishing: BTreeMap::new(),
                next_id: 1,
            });
        }
        for _ in 0..world.params.relays {
            let node = world.rng.below(world.params.nodes as u64) as usize;
            world.relays.push(RelayClient {
                node,
                conn: ConnId(0),
                got: BTreeSet::new(),
            });
        }
        world
    }

    /// Runs every step, then heals, drains and checks the end rules.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn run(mut self) -> Result<Report, Breach> {
        for c in 0..self.clients.len() {
            self.connect(c)?;
        }
        for r in 0..self.relays.len() {
            let (node, conn) = (self.relays[r].node, ConnId(self.next_conn));
            self.next_conn += 1;
            self.relays[r].conn = conn;
            self.relay_owner.insert((node, conn), r);
            self.input(
                node,
                Input::Open {
                    conn,
                    route: Route::Relay,
                },
            )?;
        }
        for step in 0..self.params.steps {
            self.step = step;
            self.now += self.rng.between(1, 5);
            self.faults()?;
            for c in 0..self.clients.len() {
                if self.rng.chance(self.params.publish) {
                    self.publish(c)?;
                }
                if self.rng.chance(self.params.moves) {
                    self.move_client(c)?;
                }
            }
            for r in 0..self.relays.len() {
                if self.rng.chance(self.params.relay_send) {
                    self.relay_send(r)?;
                }
            }
            self.deliver_due()?;
        }
        // The end: every partition heals, everything in flight arrives.
        self.step = self.params.steps;
        for node in 0..self.nodes.len() {
            if self.links[node].partitioned_until.is_some() {
                self.heal(node)?;
            }
        }
        self.settle()?;
        // A frame from each node with relay clients, everything healed.
        let mut last = Vec::new();
        let mut from_nodes = BTreeSet::new();
        for r in 0..self.relays.len() {
            if from_nodes.insert(self.relays[r].node) {
                last.push(self.relay_send(r)?);
            }
        }
        self.settle()?;
        self.check_end(&last)?;
        Ok(self.report)
    }

    /// Everything in flight arrives.
    fn settle(&mut self) -> Result<(), Breach> {
        for _ in 0..10_000 {
            if self.flight.is_empty() {
                break;
            }
            self.now += 50;
            self.deliver_due()?;
        }
        Ok(())
    }

    fn examined(&mut self, rule: Rule) {
        *self.report.examined.entry(rule).or_default() += 1;
    }

    fn breach(&self, rule: Rule, detail: String) -> Breach {
        Breach {
            rule,
            step: self.step,
            detail,
        }
    }

    // ---- clients ---------------------------------------------------------

    fn connect(&mut self, c: usize) -> Result<(), Breach> {
        let node = self.clients[c].node;
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.clients[c].conn = conn;
        self.owner.insert((node, conn), c);
        self.input(
            node,
            Input::Open {
                conn,
                route: Route::Centrifuge,
            },
        )?;
        let client = &mut self.clients[c];
        let mut lines = vec![json!({"id": client.next_id, "connect": {}}).to_string()];
        client.next_id += 1;
        for channel in client.channels.clone() {
            let id = client.next_id;
            client.next_id += 1;
            let mut sub =
                json!({"channel": channel.as_str(), "recoverable": true, "positioned": true});
            if let Some(s) = client.subs.get(channel.as_str()) {
                sub["recover"] = json!(true);
                sub["offset"] = json!(s.offset);
                sub["epoch"] = json!(s.epoch);
            }
            client.subscribing.insert(id, channel.as_str().to_owned());
            lines.push(json!({"id": id, "subscribe": sub}).to_string());
        }
        for sub in self.clients[c].subs.values_mut() {
            sub.live = false;
        }
        self.send(node, conn, &lines.join("\n"))
    }

    fn publish(&mut self, c: usize) -> Result<(), Breach> {
        let client = &mut self.clients[c];
        let Some(channel) = client
            .subs
            .iter()
            .filter(|(_, s)| s.live)
            .map(|(ch, _)| ch.clone())
            .nth(0)
        else {
            return Ok(());
        };
        let data = self.next_data;
        self.next_data += 1;
        let id = client.next_id;
        client.next_id += 1;
        client.publishing.insert(id, (channel.clone(), data));
        let (node, conn) = (client.node, client.conn);
        let line = json!({"id": id, "publish": {"channel": channel, "data": data}}).to_string();
        self.send(node, conn, &line)
    }

    fn move_client(&mut self, c: usize) -> Result<(), Breach> {
        let (node, conn) = (self.clients[c].node, self.clients[c].conn);
        self.owner.remove(&(node, conn));
        self.input(
            node,
            Input::Disconnect {
                conn,
                reason: hubbub_core::CloseReason::PeerClosed,
            },
        )?;
        let client = &mut self.clients[c];
        client.subscribing.clear();
        // Publishes in flight are neither acknowledged nor refused: forgotten.
        client.publishing.clear();
        client.node =
            (node + 1 + self.rng.below(self.params.nodes as u64 - 1) as usize) % self.params.nodes;
        self.report.moves += 1;
        self.connect(c)
    }

    /// Relay client `r` sends a frame (text or binary, by its id); returns its id.
    fn relay_send(&mut self, r: usize) -> Result<u64, Breach> {
        let id = self.relay_sent.len() as u64 + 1;
        let frame = if id % 2 == 0 {
            Frame::text(format!("relay {id}"))
        } else {
            let mut bytes = vec![0xff];
            bytes.extend_from_slice(&id.to_be_bytes());
            Frame::binary(bytes)
        };
        self.relay_sent.insert(id, frame.clone());
        self.report.relay_frames += 1;
        let (node, conn) = (self.relays[r].node, self.relays[r].conn);
        self.input(node, Input::Message { conn, frame })?;
        Ok(id)
    }

    /// What relay client `r` read: a frame some relay client sent, as sent,
    /// the first time.
    fn relay_read(&mut self, r: usize, frame: &Frame) -> Result<(), Breach> {
        self.examined(Rule::RelayOnce);
        self.report.relay_received += 1;
        let id = match frame.kind {
            hubbub_core::MessageKind::Text => std::str::from_utf8(&frame.payload)
                .ok()
                .and_then(|t| t.strip_prefix("relay "))
                .and_then(|n| n.parse().ok()),
            hubbub_core::MessageKind::Binary => frame
                .payload
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
        };
        let Some(id) = id.filter(|id| self.relay_sent.get(id) == Some(frame)) else {
            return Err(self.breach(
                Rule::RelayOnce,
                format!(
                    "relay client {r} on node {} got a frame nobody sent: {frame:?}",
                    self.relays[r].node
                ),
            ));
        };
        if !self.relays[r].got.insert(id) {
            return Err(self.breach(
                Rule::RelayOnce,
                format!(
                    "relay client {r} on node {} got frame {id} twice",
                    self.relays[r].node
                ),
            ));
        }
        Ok(())
    }

    fn send(&mut self, node: usize, conn: ConnId, text: &str) -> Result<(), Breach> {
        self.input(
            node,
            Input::Message {
                conn,
                frame: Frame::text(text.to_owned()),
            },
        )
    }

    fn input(&mut self, node: usize, input: Input) -> Result<(), Breach> {
        self.report.hub_inputs += 1;
        self.nodes[node].handle_input(Timestamp::from_millis(self.now), input);
        self.drain(node)
    }

    /// What a client read.
    fn read(&mut self, node: usize, conn: ConnId, frame: &Frame) -> Result<(), Breach> {
        let Some(&c) = self.owner.get(&(node, conn)) else {
            return Ok(());
        };
        for line in frame.payload.split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if let Some(push) = v.get("push") {
                if let (Some(channel), Some(p)) = (push["channel"].as_str(), push.get("pub")) {
                    self.pushed(c, channel, p)?;
                }
                continue;
            }
            let id = v["id"].as_u64().unwrap_or(0);
            if let Some(channel) = self.clients[c].subscribing.remove(&id) {
                self.subscribed(c, &channel, &v)?;
            } else if let Some((channel, data)) = self.clients[c].publishing.remove(&id) {
                self.published(&channel, data, &v)?;
            }
        }
        Ok(())
    }

    fn subscribed(&mut self, c: usize, channel: &str, v: &Value) -> Result<(), Breach> {
        let Some(reply) = v.get("subscribe") else {
            // Refused (the node's broker link is down): try again later.
            self.clients[c].subs.remove(channel);
            return Ok(());
        };
        let epoch = reply["epoch"].as_str().unwrap_or_default().to_owned();
        // Recovered: the client's own offset, then what it missed; not
        // recovered: the stream's top, from which pushes continue.
        let top = reply["offset"].as_u64().unwrap_or(0);
        let recovered = reply["recovered"].as_bool().unwrap_or(false);
        if let Some(s) = self.clients[c].subs.get(channel) {
            // A position in the same stream, at most 300 behind (what one
            // recovery carries), on any node: recovered exactly.
            let fresh = s.epoch == epoch && top.saturating_sub(s.offset) <= 300;
            if fresh && !recovered {
                return Err(self.breach(
                    Rule::Order,
                    format!(
                        "client {c} on node {} not recovered on {channel} from {} (top {top})",
                        self.clients[c].node, s.offset
                    ),
                ));
            }
        }
        let mut from = match self.clients[c].subs.get(channel) {
            Some(s) if recovered => {
                if s.epoch != epoch {
                    return Err(self.breach(
                        Rule::Order,
                        format!("recovered into another epoch on {channel}"),
                    ));
                }
                s.offset
            }
            _ => top,
        };
        if recovered {
            self.examined(Rule::Order);
            self.report.recovered += 1;
            for p in reply["publications"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let offset = p["offset"].as_u64().unwrap_or(0);
                if offset != from + 1 {
                    return Err(self.breach(
                        Rule::Order,
                        format!("recovery on {channel} gave {offset} after {from}"),
                    ));
                }
                self.observe(channel, &epoch, offset, &p["data"])?;
                from = offset;
            }
        }
        self.clients[c].subs.insert(
            channel.to_owned(),
            Sub {
                epoch,
                offset: from,
                live: true,
            },
        );
        Ok(())
    }

    fn pushed(&mut self, c: usize, channel: &str, p: &Value) -> Result<(), Breach> {
        let offset = p["offset"].as_u64().unwrap_or(0);
        let Some(sub) = self.clients[c].subs.get(channel) else {
            return Ok(());
        };
        if !sub.live {
            return Err(self.breach(Rule::Order, format!("a push on {channel} before its reply")));
        }
        *self.report.examined.entry(Rule::Order).or_default() += 1;
        if offset != sub.offset + 1 {
            return Err(self.breach(
                Rule::Order,
                format!(
                    "client {c} on node {} got {channel} offset {offset} after {}",
                    self.clients[c].node, sub.offset
                ),
            ));
        }
        let epoch = sub.epoch.clone();
        self.observe(channel, &epoch, offset, &p["data"])?;
        if let Some(sub) = self.clients[c].subs.get_mut(channel) {
            sub.offset = offset;
        }
        Ok(())
    }

    fn observe(
        &mut self,
        channel: &str,
        epoch: &str,
        offset: u64,
        data: &Value,
    ) -> Result<(), Breach> {
        self.examined(Rule::FailedUnseen);
        self.examined(Rule::OffsetsOnce);
        if data.as_i64().is_some_and(|d| self.refused.contains(&d)) {
            return Err(self.breach(
                Rule::FailedUnseen,
                format!("{data} was refused, yet delivered on {channel}"),
            ));
        }
        let key = (channel.to_owned(), epoch.to_owned(), offset);
        match self.seen.get(&key) {
            Some(first) if first != data => Err(self.breach(
                Rule::OffsetsOnce,
                format!("{channel} offset {offset}: {first} and {data}"),
            )),
            Some(_) => Ok(()),
            None => {
                self.seen.insert(key, data.clone());
                Ok(())
            }
        }
    }

    fn published(&mut self, channel: &str, data: i64, v: &Value) -> Result<(), Breach> {
        if v.get("error").is_some() {
            self.report.refused += 1;
            self.refused.insert(data);
            return Ok(());
        }
        self.report.publications += 1;
        self.examined(Rule::DurableAck);
        let kept = self
            .store
            .publications(channel)
            .any(|p| p.data.as_ref() == data.to_string().as_bytes());
        if !kept {
            return Err(self.breach(
                Rule::DurableAck,
                format!("{data} acknowledged on {channel}, not in the broker"),
            ));
        }
        Ok(())
    }

    // ---- the broker --------------------------------------------------------

    fn schedule(&mut self, node: usize, at: u64, event: StoreEvent) {
        self.seq += 1;
        self.flight.insert((at, self.seq), (node, event));
    }

    fn latency(&mut self) -> u64 {
        self.rng.between(0, self.params.max_latency_ms)
    }

    /// A delivery to `node` on `channel`, in order within the channel;
    /// lost while the node is partitioned.
    fn deliver_later(&mut self, node: usize, channel: &ChannelName, event: StoreEvent) {
        if self.links[node].partitioned_until.is_some() {
            self.report.lost_deliveries += 1;
            return;
        }
        if self.params.fault == Some(BrokerFault::LoseDeliverySilently) && self.rng.below(40) == 0 {
            return;
        }
        self.in_channel_order(node, channel, event);
    }

    /// An answer to `node`: in order with everything else on its channel
    /// (one engine connection per channel's instance), never lost.
    fn answer_later(&mut self, node: usize, event: StoreEvent) {
        let channel = match &event {
            StoreEvent::Opened { channel, .. }
            | StoreEvent::Appended { channel, .. }
            | StoreEvent::Delivered { channel, .. }
            | StoreEvent::Resync { channel }
            | StoreEvent::RemoteJoined { channel, .. }
            | StoreEvent::RemoteLeft { channel, .. }
            | StoreEvent::RemoteMembers { channel, .. } => channel.clone(),
            StoreEvent::NodeGone { .. } => ChannelName::new(""),
        };
        self.in_channel_order(node, &channel, event);
    }

    fn in_channel_order(&mut self, node: usize, channel: &ChannelName, event: StoreEvent) {
        let at = self.now + self.latency();
        let clock = self.links[node]
            .channel_clock
            .entry(channel.clone())
            .or_default();
        let at = at.max(*clock);
        *clock = at;
        self.schedule(node, at, event);
    }

    fn drain(&mut self, node: usize) -> Result<(), Breach> {
        while let Some(out) = self.nodes[node].poll_output() {
            if let Output::Send { conn, frame, .. } = out {
                if let Some(&r) = self.relay_owner.get(&(node, conn)) {
                    self.relay_read(r, &frame)?;
                } else {
                    self.read(node, conn, &frame)?;
                }
            }
        }
        let down = self.links[node].partitioned_until.is_some();
        while let Some(request) = self.nodes[node].poll_store() {
            if down {
                let event = request.fail(StoreError::new("partitioned"));
                self.answer_later(node, event);
                continue;
            }
            self.execute(node, request);
        }
        while let Some(channel) = self.nodes[node].poll_follow() {
            self.links[node].follows.insert(channel.clone());
            let snapshot = self.snapshot(&channel, node);
            self.deliver_later(node, &channel, snapshot);
        }
        while let Some((channel, publication)) = self.nodes[node].poll_broadcast() {
            if down {
                // Refused by the unreachable engine: the frame stays local.
                continue;
            }
            self.broadcast(node, &channel, &publication);
        }
        while let Some(change) = self.nodes[node].poll_presence() {
            if down {
                self.links[node].waiting.push(change);
            } else {
                self.record_presence(node, change);
            }
        }
        while let Some(channel) = self.nodes[node].poll_unfollow() {
            self.links[node].follows.remove(&channel);
        }
        Ok(())
    }

    fn execute(&mut self, node: usize, request: StoreRequest) {
        match request {
            StoreRequest::Open { ref channel, .. } => {
                let channel = channel.clone();
                self.links[node].follows.insert(channel.clone());
                // The members first, then the stream (as the engine does).
                let snapshot = self.snapshot(&channel, node);
                let event = self.store.execute(request);
                self.answer_later(node, snapshot);
                self.answer_later(node, event);
            }
            StoreRequest::Append { .. } => {
                let ack_only = self.params.fault == Some(BrokerFault::AckWithoutKeeping)
                    && self.rng.below(20) == 0;
                let reuse = self.params.fault == Some(BrokerFault::ReuseOffsetAfterRestart)
                    && std::mem::take(&mut self.restarted);
                let event = if ack_only {
                    let StoreRequest::Append { channel, token, .. } = request else {
                        return;
                    };
                    let (top, epoch) = self.store.position(channel.as_str()).unwrap_or((0, 1));
                    StoreEvent::Appended {
                        channel,
                        token,
                        result: Ok((top + 1, epoch)),
                    }
                } else {
                    self.store.execute(request)
                };
                if let StoreEvent::Appended {
                    channel,
                    token,
                    result: Ok((offset, epoch)),
                } = event
                {
                    let stored = self
                        .store
                        .publications(channel.as_str())
                        .find(|p| p.offset == offset)
                        .cloned();
                    let offset = if reuse && offset > 1 {
                        offset - 1
                    } else {
                        offset
                    };
                    if let Some(mut publication) = stored {
                        publication.offset = offset;
                        self.fan_out(&channel, epoch, &publication);
                    }
                    self.answer_later(
                        node,
                        StoreEvent::Appended {
                            channel,
                            token,
                            result: Ok((offset, epoch)),
                        },
                    );
                } else {
                    self.answer_later(node, event);
                }
            }
        }
    }

    /// A publication to every node that follows its channel.
    fn fan_out(&mut self, channel: &ChannelName, epoch: u64, publication: &Stored) {
        for to in 0..self.nodes.len() {
            if self.links[to].follows.contains(channel) {
                self.report.deliveries += 1;
                self.deliver_later(
                    to,
                    channel,
                    StoreEvent::Delivered {
                        channel: channel.clone(),
                        epoch,
                        publication: publication.clone(),
                    },
                );
            }
        }
    }

    /// A publication without offset (the relay's) to every other node that
    /// follows its channel: best effort, lost in a partition or a restart.
    fn broadcast(&mut self, from: usize, channel: &ChannelName, publication: &Stored) {
        if self.params.fault == Some(BrokerFault::DropBroadcasts) {
            return;
        }
        for to in 0..self.nodes.len() {
            if to == from || !self.links[to].follows.contains(channel) {
                continue;
            }
            let event = StoreEvent::Delivered {
                channel: channel.clone(),
                epoch: 0,
                publication: publication.clone(),
            };
            if self.params.fault == Some(BrokerFault::BroadcastTwice) && self.rng.below(5) == 0 {
                self.deliver_later(to, channel, event.clone());
            }
            self.deliver_later(to, channel, event);
        }
    }

    fn snapshot(&self, channel: &ChannelName, node: usize) -> StoreEvent {
        StoreEvent::RemoteMembers {
            channel: channel.clone(),
            members: self
                .members
                .iter()
                .filter(|((c, n, _), _)| c == channel && *n != node as u64)
                .map(|(_, m)| m.clone())
                .collect(),
        }
    }

    fn record_presence(&mut self, node: usize, change: hubbub_core::PresenceChange) {
        let key = (change.channel.clone(), node as u64, change.client);
        let event = if change.joined {
            let member = RemoteMember {
                node: node as u64,
                client: change.client,
                user: change.user,
                infos: change.infos,
            };
            self.members.insert(key, member.clone());
            StoreEvent::RemoteJoined {
                channel: change.channel.clone(),
                member,
            }
        } else {
            if self.params.fault != Some(BrokerFault::ForgetLeave) || self.rng.below(4) != 0 {
                self.members.remove(&key);
            }
            StoreEvent::RemoteLeft {
                channel: change.channel.clone(),
                node: node as u64,
                client: change.client,
            }
        };
        for to in 0..self.nodes.len() {
            if to != node && self.links[to].follows.contains(&change.channel) {
                self.report.remote_presence_events += 1;
                self.deliver_later(to, &change.channel, event.clone());
            }
        }
    }

    fn faults(&mut self) -> Result<(), Breach> {
        for node in 0..self.nodes.len() {
            match self.links[node].partitioned_until {
                Some(until) if until <= self.now => self.heal(node)?,
                None if self.rng.chance(self.params.partition) => {
                    self.report.partitions += 1;
                    let until = self.now + self.rng.between(10, 400);
                    self.links[node].partitioned_until = Some(until);
                }
                _ => {}
            }
        }
        if self.rng.chance(self.params.restart) {
            // Pub/sub drops what is in flight; the data stays (AOF).
            self.report.restarts += 1;
            self.restarted = true;
            let lost: Vec<(u64, u64)> = self
                .flight
                .iter()
                .filter(|(_, (_, e))| {
                    matches!(
                        e,
                        StoreEvent::Delivered { .. }
                            | StoreEvent::RemoteJoined { .. }
                            | StoreEvent::RemoteLeft { .. }
                    )
                })
                .map(|(k, _)| *k)
                .collect();
            for k in lost {
                self.flight.remove(&k);
                self.report.lost_deliveries += 1;
            }
            for node in 0..self.nodes.len() {
                if self.links[node].partitioned_until.is_none() {
                    self.resync(node);
                }
            }
        }
        Ok(())
    }

    /// The node's link is back: its joins and leaves are written, it reads
    /// every followed stream and channel's members again.
    fn heal(&mut self, node: usize) -> Result<(), Breach> {
        self.links[node].partitioned_until = None;
        for change in std::mem::take(&mut self.links[node].waiting) {
            self.record_presence(node, change);
        }
        self.resync(node);
        self.deliver_due()
    }

    fn resync(&mut self, node: usize) {
        let follows: Vec<ChannelName> = self.links[node].follows.iter().cloned().collect();
        for channel in follows {
            self.deliver_later(
                node,
                &channel,
                StoreEvent::Resync {
                    channel: channel.clone(),
                },
            );
            let snapshot = self.snapshot(&channel, node);
            self.deliver_later(node, &channel, snapshot);
        }
    }

    fn deliver_due(&mut self) -> Result<(), Breach> {
        while let Some(entry) = self.flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (node, event) = entry.remove();
            self.report.hub_inputs += 1;
            self.nodes[node].handle_store(Timestamp::from_millis(self.now), event);
            self.drain(node)?;
        }
        Ok(())
    }

    // ---- the end ---------------------------------------------------------

    /// The end rules; `last`: the relay frames sent after everything healed.
    fn check_end(&mut self, last: &[u64]) -> Result<(), Breach> {
        for r in 0..self.relays.len() {
            for id in last {
                self.examined(Rule::RelayReaches);
                if !self.relays[r].got.contains(id) {
                    return Err(self.breach(
                        Rule::RelayReaches,
                        format!(
                            "relay client {r} on node {} never got frame {id}",
                            self.relays[r].node
                        ),
                    ));
                }
            }
        }
        for c in 0..self.clients.len() {
            for (channel, sub) in &self.clients[c].subs {
                if !sub.live {
                    continue;
                }
                let top = self.store.position(channel).map_or(0, |(top, _)| top);
                *self.report.examined.entry(Rule::CaughtUp).or_default() += 1;
                if sub.offset != top {
                    return Err(self.breach(
                        Rule::CaughtUp,
                        format!(
                            "client {c} on node {} saw {channel} up to {}, the broker has {top}",
                            self.clients[c].node, sub.offset
                        ),
                    ));
                }
            }
        }
        // The broker's members of each node are the clients subscribed
        // there: none left behind by a leave that was lost.
        let mut subscribed: BTreeMap<(String, u64), usize> = BTreeMap::new();
        for client in &self.clients {
            for (channel, sub) in &client.subs {
                if sub.live {
                    *subscribed
                        .entry((channel.clone(), client.node as u64))
                        .or_default() += 1;
                }
            }
        }
        let mut recorded: BTreeMap<(String, u64), usize> = BTreeMap::new();
        for (channel, node, _) in self.members.keys() {
            if !channel.as_str().is_empty() {
                *recorded
                    .entry((channel.as_str().to_owned(), *node))
                    .or_default() += 1;
            }
        }
        self.examined(Rule::PresenceConverges);
        if subscribed != recorded {
            return Err(self.breach(
                Rule::PresenceConverges,
                format!("members by (channel, node): clients {subscribed:?}, broker {recorded:?}"),
            ));
        }
        for node in 0..self.nodes.len() {
            for channel in self.links[node].follows.clone() {
                let want: BTreeSet<(u64, ClientId)> = self
                    .members
                    .keys()
                    .filter(|(c, n, _)| *c == channel && *n != node as u64)
                    .map(|(_, n, client)| (*n, *client))
                    .collect();
                let got: BTreeSet<(u64, ClientId)> = self.nodes[node]
                    .remote_members(channel.as_str())
                    .map(|m| (m.node, m.client))
                    .collect();
                self.examined(Rule::PresenceConverges);
                if want != got {
                    return Err(self.breach(
                        Rule::PresenceConverges,
                        format!(
                            "node {node} sees {} of others' members of {}, the broker {}",
                            got.len(),
                            channel.as_str(),
                            want.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
