//! The Redis engine (`--store redis`): several nodes share channels' streams.
//!
//! Offsets and epochs are assigned in Redis, by one Lua script per
//! publication ([`APPEND`]): it takes the stream's next offset, appends the
//! publication to the channel's Redis stream (trimmed to `history_size`, the
//! key expiring `history_ttl` after the last publication) and PUBLISHes it
//! to the nodes, atomically. An `Open` ([`OPEN`]) reads the position, epoch
//! and tail in one script too, creating the stream with the proposed epoch
//! when Redis has none (a flushed Redis starts new epochs, so recovery says
//! plainly that it cannot). Keys, for channel `C`:
//!
//! ```text
//! hubbub:{C}:meta     hash   epoch (decimal u64), top (last offset)
//! hubbub:{C}:stream   stream entries with id "<offset>-1", field p = publication
//! hubbub:<db>:C       pub/sub channel: "<offset> <epoch> <publication>", or
//!                     "0 <node> <publication>" for a channel without history
//! ```
//!
//! Channels without history have no stream: their publications are only
//! PUBLISHed (offset 0, with the sending node's random id, so a node skips
//! its own), to the nodes that follow them while they have members there.
//!
//! The engine runs on its own thread (`hubbub-redis`) with a
//! current-thread runtime, takes every shard's requests from one bounded
//! queue (full: the request is refused at once, error 100), and sends each
//! batch as one pipeline: one round trip for up to [`MAX_BATCH`] requests.
//! Before a channel's `Open` is read, the node SUBSCRIBEs to it (and waits
//! for Redis to confirm), so every publication after the read is delivered
//! ([`StoreEvent::Delivered`] to the channel's home shard); the hub
//! unfollows a channel when its room goes, and the node UNSUBSCRIBEs.
//!
//! When Redis cannot be reached, every request fails at once with an error
//! (no request waits for a reconnection) and `/health` says 503; the engine
//! reconnects every [`RETRY`], subscribes again to every followed channel,
//! and tells each home to read its stream again ([`StoreEvent::Resync`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{AsyncConnectionConfig, Client, Value};
use bytes::Bytes;
use futures_util::StreamExt;
use hubbub_core::bus::Stored;
use hubbub_core::{
    ChannelName, ClientId, Name, StoreError, StoreEvent, StoreRequest, StreamState, Timestamp,
};
use tokio::sync::mpsc::{self, UnboundedSender};

use super::StoreClosed;

mod cluster;
mod presence;

pub use cluster::{ClusterAnswer, ClusterQuery};

/// The most requests in one pipeline.
pub const MAX_BATCH: usize = 1024;

/// Requests waiting for the engine, all shards together; beyond it a
/// request is refused at once (error 100).
pub const QUEUE: usize = 16_384;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a pipeline or a subscription may take before the connection
/// is given up (its requests fail) and made again.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// While Redis is unreachable: how often the engine tries again.
pub const RETRY: Duration = Duration::from_millis(250);

/// Appends one publication: the next offset, the stream entry (trimmed),
/// the key's expiry, the message to the nodes. A stream whose meta is gone
/// starts again with the proposed epoch (its old entries go with it).
///
/// KEYS: meta, stream. ARGV: proposed epoch, size, ttl ms, publication,
/// pub/sub channel. Returns `{offset, epoch}`.
pub const APPEND: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local top = redis.call('HINCRBY', KEYS[1], 'top', 1)
local id = string.format('%d-1', top)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], id, 'p', ARGV[4])
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
redis.call('PUBLISH', ARGV[5], string.format('%d ', top) .. epoch .. ' ' .. ARGV[4])
return {top, epoch}
";

/// Opens a stream: its position, epoch and latest entries (newest first),
/// creating it with the proposed epoch when Redis has none.
///
/// KEYS: meta, stream. ARGV: proposed epoch, size. Returns
/// `{top, epoch, entries}`.
pub const OPEN: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
local tail = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
return {top, epoch, tail}
";

/// The engine's counters and state, shared with `/metrics` and `/health`.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Requests answered with an error (Redis unreachable, a script error,
    /// a timeout) or refused because the queue was full.
    pub errors: AtomicU64,
    /// Connections made again after they were lost.
    pub reconnects: AtomicU64,
    /// Attempts to connect that failed.
    pub connect_failures: AtomicU64,
    /// Appends answered `Ok`.
    pub appends: AtomicU64,
    /// Opens answered `Ok`.
    pub opens: AtomicU64,
    /// Publications delivered to a home from pub/sub.
    pub delivered: AtomicU64,
    /// Pipelines sent (requests / pipelines: the mean batch).
    pub pipelines: AtomicU64,
    /// Messages or entries that could not be read (written by something
    /// else, or corrupt): skipped.
    pub malformed: AtomicU64,
    /// Local joins and leaves written to Redis for the other nodes.
    pub presence_writes: AtomicU64,
    /// Channels' members on other nodes read from Redis.
    pub snapshots: AtomicU64,
    /// Other nodes whose liveness ran out (their members left here).
    pub nodes_gone: AtomicU64,
    /// The instances that are down, with why.
    down: Mutex<BTreeMap<usize, String>>,
}

impl RedisStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value.
    #[must_use]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Whether every Redis instance is reachable (as of the engines' last
    /// contact).
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Why the engine is down (empty while up): each unreachable
    /// instance's reason.
    #[must_use]
    pub fn reason(&self) -> String {
        let down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down.len() == 1 {
            return down.values().next().cloned().unwrap_or_default();
        }
        down.iter()
            .map(|(i, why)| format!("redis-url #{}: {why}", i + 1))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Why `instance` is down (empty while up).
    fn reason_of(&self, instance: usize) -> String {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&instance)
            .cloned()
            .unwrap_or_default()
    }

    fn set_down(&self, instance: usize, reason: &str) {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance, reason.to_owned());
    }

    fn set_up(&self, instance: usize) {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&instance);
    }
}

/// What the hubs ask of the engine.
enum Command {
    Request(usize, StoreRequest),
    /// The shard's hub follows a channel without a stream.
    Follow(usize, ChannelName),
    /// A publication without a position for the other nodes.
    Broadcast(ChannelName, Stored),
    /// The shard's hub no longer follows the channel.
    Unfollow(ChannelName),
    /// A local member joined or left a channel.
    Presence(hubbub_core::PresenceChange),
    /// An API call for the other nodes: method, body.
    Forward(String, Bytes),
    /// An API question for Redis.
    Query(ClusterQuery, cluster::Answer),
}

/// One Redis instance's engine thread and its queue.
struct Instance {
    tx: Arc<Mutex<Option<mpsc::Sender<Command>>>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// Submits requests to the engines' threads, one per `--redis-url`; a
/// channel's requests go to the instance [`instance_of`] names. Cheap to
/// clone.
#[derive(Clone)]
pub struct RedisHandle {
    instances: Arc<[Instance]>,
    stats: Arc<RedisStats>,
    /// API calls other nodes forwarded, until the server takes them.
    forwarded: Arc<Mutex<Option<Forwarded>>>,
    /// This node's `info` entry, as the server last made it.
    node_info: Arc<Mutex<Option<Bytes>>>,
    beat_every: Duration,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("instances", &self.instances.len())
            .field("up", &self.stats.is_up())
            .finish_non_exhaustive()
    }
}

/// API calls (method, body) other nodes forwarded, for the server to run.
pub type Forwarded = mpsc::Receiver<(String, Bytes)>;

/// API calls forwarded by other nodes waiting to run here; beyond it they
/// are dropped (and counted as errors).
pub const FORWARDED_QUEUE: usize = 1024;

/// Which of `count` instances keeps `channel`: FNV-1a (64-bit) of its name,
/// modulo `count`. Stable across versions and nodes; every node must be
/// given the same `--redis-url`s in the same order.
#[must_use]
pub fn instance_of(channel: &str, count: usize) -> usize {
    usize::try_from(fnv1a(channel) % count.max(1) as u64).unwrap_or(0)
}

/// FNV-1a, 64 bits.
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Starts one engine thread per URL (the first also carries the node's
/// liveness entry for `info` and the API calls forwarded between nodes);
/// answers and deliveries for shard `i` go to `shards[i]`. Redis need not
/// be up: each engine connects (and reconnects) by itself.
///
/// # Errors
/// No URL, a URL that is not a Redis URL, or a thread could not be spawned.
pub fn spawn(
    urls: &[String],
    presence_ttl: Duration,
    shards: &[UnboundedSender<StoreEvent>],
) -> std::io::Result<RedisHandle> {
    if urls.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--store redis needs a --redis-url",
        ));
    }
    let mut clients = Vec::with_capacity(urls.len());
    for url in urls {
        let client = Client::open(url.as_str()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("--redis-url {url:?}: {e}"),
            )
        })?;
        clients.push(client);
    }
    let stats = Arc::new(RedisStats::default());
    let (forward_tx, forwarded) = mpsc::channel(FORWARDED_QUEUE);
    let mut forward_tx = Some(forward_tx);
    let node_info = Arc::new(Mutex::new(None));
    let beat_every = presence::Presence::new(presence_ttl).beat_every();
    let node = hubbub_core::hub::mix64(now_nanos() ^ u64::from(std::process::id()));
    let mut instances = Vec::with_capacity(clients.len());
    for (instance, client) in clients.into_iter().enumerate() {
        stats.set_down(instance, "not connected yet");
        let db = client.get_connection_info().redis_settings().db();
        let (tx, rx) = mpsc::channel(QUEUE);
        let primary = instance == 0;
        let engine = Engine {
            client,
            db,
            instance,
            conn: None,
            sink: None,
            stream: None,
            followed: BTreeMap::new(),
            shards: shards.to_vec(),
            stats: stats.clone(),
            last_attempt: None,
            ever_connected: false,
            fresh: 0,
            node,
            presence: presence::Presence::new(presence_ttl),
            forward_tx: if primary { forward_tx.take() } else { None },
            node_info: if primary {
                node_info.clone()
            } else {
                Arc::new(Mutex::new(None))
            },
        };
        let thread = std::thread::Builder::new()
            .name(format!("hubbub-redis-{instance}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(run(engine, rx)),
                    Err(e) => tracing::error!(error = %e, "redis engine: no runtime"),
                }
            })?;
        instances.push(Instance {
            tx: Arc::new(Mutex::new(Some(tx))),
            thread: Arc::new(Mutex::new(Some(thread))),
        });
    }
    Ok(RedisHandle {
        instances: instances.into(),
        stats,
        forwarded: Arc::new(Mutex::new(Some(forwarded))),
        node_info,
        beat_every,
    })
}

impl RedisHandle {
    /// The instance that keeps `channel`.
    fn of(&self, channel: &ChannelName) -> &Instance {
        &self.instances[instance_of(channel.as_str(), self.instances.len())]
    }

    /// The first instance (liveness entries for `info`, forwarded calls).
    fn primary(&self) -> &Instance {
        &self.instances[0]
    }

    /// Queues `request` from `shard` without waiting; its answer comes on
    /// that shard's channel.
    ///
    /// # Errors
    /// The queue is full or the engine has ended: the request is given back.
    pub fn submit(&self, shard: usize, request: StoreRequest) -> Result<(), StoreClosed> {
        // A clone, so the lock is held only to read the sender.
        let tx = self
            .of(request.channel())
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(tx) = tx else {
            return Err(StoreClosed(Box::new(request)));
        };
        let permit = tx.try_reserve();
        if let Ok(permit) = permit {
            permit.send(Command::Request(shard, request));
            return Ok(());
        }
        RedisStats::add(&self.stats.errors, 1);
        Err(StoreClosed(Box::new(request)))
    }

    /// The hub no longer follows `channel`. Best effort: with the queue
    /// full, the node stays subscribed, and the hub ignores what comes.
    pub fn unfollow(&self, channel: ChannelName) {
        let to = self.of(&channel);
        self.best_effort(to, Command::Unfollow(channel));
    }

    /// The hub of `shard` follows `channel`, which has no stream.
    pub fn follow(&self, shard: usize, channel: ChannelName) {
        let to = self.of(&channel);
        self.best_effort(to, Command::Follow(shard, channel));
    }

    /// Hands a publication without a position to the other nodes.
    pub fn broadcast(&self, channel: ChannelName, publication: Stored) {
        let to = self.of(&channel);
        self.best_effort(to, Command::Broadcast(channel, publication));
    }

    /// A local member joined or left: recorded in Redis, told to the other
    /// nodes. Best effort: with the queue full it is counted as an error,
    /// and the other nodes learn the truth at their next snapshot.
    pub fn presence(&self, change: hubbub_core::PresenceChange) {
        let to = self.of(&change.channel);
        self.best_effort(to, Command::Presence(change));
    }

    /// Hands an API call (one that acts on users' connections) to the
    /// other nodes, which run it as it comes. Best effort.
    pub fn forward_api(&self, method: &str, body: Bytes) {
        self.best_effort(self.primary(), Command::Forward(method.to_owned(), body));
    }

    /// Asks Redis an API question (presence, channels, nodes).
    ///
    /// # Errors
    /// Redis cannot be reached or does not answer in time, or the queue is full.
    pub async fn query(&self, query: ClusterQuery) -> Result<ClusterAnswer, String> {
        match query {
            ClusterQuery::Members(channel) => {
                let to = self.of(&channel);
                self.ask(to, ClusterQuery::Members(channel)).await
            }
            ClusterQuery::Nodes => self.ask(self.primary(), ClusterQuery::Nodes).await,
            ClusterQuery::Channels => {
                // Each channel lives on one instance: the union.
                let mut all = BTreeMap::new();
                for instance in self.instances.iter() {
                    if let ClusterAnswer::Channels(some) =
                        self.ask(instance, ClusterQuery::Channels).await?
                    {
                        all.extend(some);
                    }
                }
                Ok(ClusterAnswer::Channels(all))
            }
        }
    }

    async fn ask(&self, to: &Instance, query: ClusterQuery) -> Result<ClusterAnswer, String> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let tx = to.tx.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let tx = tx.ok_or("the redis engine has ended")?;
        if tx.try_send(Command::Query(query, answer)).is_err() {
            RedisStats::add(&self.stats.errors, 1);
            return Err("the redis engine's queue is full".to_owned());
        }
        rx.await
            .unwrap_or_else(|_| Err("the redis engine has ended".to_owned()))
    }

    /// The API calls other nodes forward, once (for the server to run).
    #[must_use]
    pub fn take_forwarded(&self) -> Option<Forwarded> {
        self.forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// This node's `info` entry (a JSON object), written to Redis at each
    /// beat for the other nodes' `info`.
    pub fn set_node_info(&self, entry: Bytes) {
        *self
            .node_info
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(entry);
    }

    /// How often the node renews its liveness (and its `info` entry).
    #[must_use]
    pub fn beat_every(&self) -> Duration {
        self.beat_every
    }

    /// Queues `command` for `to` unless its queue is full (then it is
    /// counted as an error and dropped: none of these has a publisher
    /// waiting for it).
    fn best_effort(&self, to: &Instance, command: Command) {
        let tx = to.tx.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = tx.as_ref() {
            if tx.try_send(command).is_err() {
                RedisStats::add(&self.stats.errors, 1);
            }
        }
    }

    /// Asks the engines to end once they have answered what was queued.
    pub fn close(&self) {
        for instance in self.instances.iter() {
            instance
                .tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }

    /// Waits for the engines' threads to end (after [`Self::close`]).
    pub fn join(&self) {
        for instance in self.instances.iter() {
            let thread = instance
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(thread) = thread {
                if thread.join().is_err() {
                    tracing::error!("a redis engine thread panicked");
                }
            }
        }
    }

    #[must_use]
    pub fn stats(&self) -> &Arc<RedisStats> {
        &self.stats
    }
}

struct Engine {
    client: Client,
    db: i64,
    /// Which `--redis-url` (0: the first, which carries the node-wide keys).
    instance: usize,
    conn: Option<MultiplexedConnection>,
    sink: Option<PubSubSink>,
    stream: Option<PubSubStream>,
    /// Channels some home follows, and the shard of that home.
    followed: BTreeMap<ChannelName, usize>,
    shards: Vec<UnboundedSender<StoreEvent>>,
    stats: Arc<RedisStats>,
    last_attempt: Option<Instant>,
    ever_connected: bool,
    fresh: u64,
    /// This node's id in messages without a position and presence entries.
    node: u64,
    presence: presence::Presence,
    /// Where API calls forwarded by other nodes go.
    forward_tx: Option<mpsc::Sender<(String, Bytes)>>,
    node_info: Arc<Mutex<Option<Bytes>>>,
}

enum Wake {
    Command(Option<Command>),
    Message(Option<::redis::Msg>),
    Retry,
    Beat,
    Snapshot(presence::SnapshotAnswer),
}

async fn run(mut engine: Engine, mut rx: mpsc::Receiver<Command>) {
    engine.connect().await;
    // Nodes started together would beat (and read presence) together: each
    // starts its beats at its own point of the period (its id is random).
    let every = engine.presence.beat_every();
    let phase = every.mul_f64((engine.node % 1024) as f64 / 1024.0);
    let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut stream = engine.stream.take();
        let mut snapshot = engine.presence.answer.take();
        let down = !engine.is_up();
        let wake = tokio::select! {
            command = rx.recv() => Wake::Command(command),
            message = next_message(&mut stream) => Wake::Message(message),
            answer = next_snapshot(&mut snapshot) => Wake::Snapshot(answer),
            () = tokio::time::sleep(RETRY), if down => Wake::Retry,
            _ = beats.tick(), if !down => Wake::Beat,
        };
        engine.stream = stream;
        if !matches!(wake, Wake::Snapshot(_)) {
            engine.presence.answer = snapshot;
        }
        match wake {
            Wake::Command(None) => break,
            Wake::Command(Some(first)) => {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(command) => batch.push(command),
                        Err(_) => break,
                    }
                }
                engine.execute(batch).await;
            }
            Wake::Message(Some(message)) => engine.forward(&message),
            Wake::Message(None) => engine.lost("the pub/sub connection was lost"),
            Wake::Retry => engine.connect().await,
            Wake::Beat => engine.beat().await,
            Wake::Snapshot(answer) => engine.snapshot_answered(answer),
        }
    }
    tracing::debug!("redis engine ends");
}

async fn next_snapshot(
    answer: &mut Option<tokio::sync::oneshot::Receiver<presence::SnapshotAnswer>>,
) -> presence::SnapshotAnswer {
    match answer {
        Some(answer) => answer
            .await
            .unwrap_or_else(|_| Err("the snapshot task ended".to_owned())),
        None => std::future::pending().await,
    }
}

async fn next_message(stream: &mut Option<PubSubStream>) -> Option<::redis::Msg> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

impl Engine {
    fn is_up(&self) -> bool {
        self.conn.is_some() && self.sink.is_some()
    }

    /// The connections are gone: requests fail until they are back.
    fn lost(&mut self, why: &str) {
        if self.is_up() {
            tracing::warn!(
                instance = self.instance,
                reason = why,
                "redis engine: connection lost"
            );
        }
        self.conn = None;
        self.sink = None;
        self.stream = None;
        // A snapshot in flight is void; the one after reconnecting reads it all.
        self.presence.answer = None;
        self.presence.held = None;
        self.stats.set_down(self.instance, why);
    }

    fn pubsub_name(&self, channel: &ChannelName) -> String {
        format!("hubbub:{}:{}", self.db, channel.as_str())
    }

    /// Connects both connections, subscribes to every followed channel and
    /// asks their homes to read their streams again.
    async fn connect(&mut self) {
        self.last_attempt = Some(Instant::now());
        match self.try_connect().await {
            Ok(()) => {
                if self.ever_connected {
                    RedisStats::add(&self.stats.reconnects, 1);
                    tracing::info!(
                        instance = self.instance,
                        channels = self.followed.len(),
                        "redis engine: reconnected"
                    );
                } else {
                    tracing::info!(instance = self.instance, "redis engine: connected");
                }
                let again = self.ever_connected;
                self.ever_connected = true;
                self.stats.set_up(self.instance);
                for (channel, shard) in &self.followed {
                    if let Some(tx) = self.shards.get(*shard) {
                        let _ = tx.send(StoreEvent::Resync {
                            channel: channel.clone(),
                        });
                    }
                }
                if again {
                    // Leaves while Redis was away were not written, and
                    // other nodes' went unheard: this node's entries afresh
                    // now, everybody's members once the others have done so.
                    self.register_all(false).await;
                    self.snapshot_after_beats();
                }
                self.beat().await;
            }
            Err(e) => {
                // Said once per outage (the first failure), not every retry.
                if self.is_up() || RedisStats::get(&self.stats.connect_failures) == 0 {
                    tracing::warn!(instance = self.instance, error = %e, "redis engine: cannot connect; retrying every 250 ms");
                }
                RedisStats::add(&self.stats.connect_failures, 1);
                self.lost(&format!("cannot connect to redis: {e}"));
            }
        }
    }

    async fn try_connect(&mut self) -> Result<(), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (mut sink, stream) = pubsub.split();
        let mut names: Vec<String> = self.followed.keys().map(|c| self.pubsub_name(c)).collect();
        if self.instance == 0 {
            names.push(cluster::control_name(self.db));
        }
        for chunk in names.chunks(MAX_BATCH) {
            tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(chunk))
                .await
                .map_err(|_| "subscribing timed out".to_owned())?
                .map_err(|e| e.to_string())?;
        }
        self.conn = Some(conn);
        self.sink = Some(sink);
        self.stream = Some(stream);
        Ok(())
    }

    /// A message from pub/sub: a publication for the home that follows it.
    fn forward(&mut self, message: &::redis::Msg) {
        if message.get_channel_name() == cluster::control_name(self.db) {
            self.forwarded(message.get_payload_bytes());
            return;
        }
        let prefix = format!("hubbub:{}:", self.db);
        let Some(channel) = message.get_channel_name().strip_prefix(&prefix) else {
            return;
        };
        let channel = ChannelName::new(channel);
        if let Some((version, heard)) =
            presence::parse_presence_message(message.get_payload_bytes())
        {
            match &mut self.presence.held {
                Some(held) => held.hold(channel, version, heard),
                None => self.forward_presence(channel, version, heard),
            }
            return;
        }
        let Some(shard) = self.followed.get(&channel).copied() else {
            return;
        };
        let Some((offset, epoch, publication)) = parse_message(message.get_payload_bytes()) else {
            RedisStats::add(&self.stats.malformed, 1);
            return;
        };
        // Without a position, the second field is the sending node: this
        // node's members had it already.
        let (offset, epoch) = match (offset, epoch) {
            (0, node) if node == self.node => return,
            (0, _) => (0, 0),
            position => position,
        };
        let Some(mut publication) = decode(publication) else {
            RedisStats::add(&self.stats.malformed, 1);
            return;
        };
        publication.offset = offset;
        RedisStats::add(&self.stats.delivered, 1);
        if let Some(tx) = self.shards.get(shard) {
            let _ = tx.send(StoreEvent::Delivered {
                channel,
                epoch,
                publication,
            });
        }
    }

    /// Carries out a batch: subscriptions first (so nothing appended after
    /// a read goes unseen), one pipeline, the answers in request order,
    /// then the unsubscriptions.
    async fn execute(&mut self, batch: Vec<Command>) {
        if !self.is_up() && self.last_attempt.is_none_or(|at| at.elapsed() >= RETRY) {
            self.connect().await;
        }
        let before: BTreeSet<ChannelName> = self.followed.keys().cloned().collect();
        let mut requests = Vec::with_capacity(batch.len());
        let mut subscribe = BTreeSet::new();
        let mut touched = BTreeSet::new();
        let mut broadcasts = Vec::new();
        let mut changes = Vec::new();
        let mut forwards = Vec::new();
        let mut queries = Vec::new();
        // Channels first followed by an `Open` here: if it fails, the hub
        // has no room for them (a followed channel without a stream stays
        // followed, and is subscribed again on reconnection).
        let mut first_opens = BTreeSet::new();
        for command in batch {
            match command {
                Command::Request(shard, request) => {
                    if let StoreRequest::Open { channel, .. } = &request {
                        if !self.followed.contains_key(channel) {
                            subscribe.insert(channel.clone());
                            first_opens.insert(channel.clone());
                        }
                        self.followed.insert(channel.clone(), shard);
                        touched.insert(channel.clone());
                    }
                    requests.push((shard, request));
                }
                Command::Follow(shard, channel) => {
                    if !self.followed.contains_key(&channel) {
                        subscribe.insert(channel.clone());
                    }
                    self.followed.insert(channel.clone(), shard);
                    touched.insert(channel);
                }
                Command::Broadcast(channel, publication) => {
                    broadcasts.push((channel, publication));
                }
                Command::Unfollow(channel) => {
                    self.followed.remove(&channel);
                    touched.insert(channel);
                }
                Command::Presence(change) => changes.push(change),
                Command::Forward(method, body) => forwards.push((method, body)),
                Command::Query(query, answer) => queries.push((query, answer)),
            }
        }
        if !self.is_up() {
            // Kept for when Redis is back (written again then).
            for change in &changes {
                self.presence.apply(change);
            }
            changes.clear();
        }
        let unsubscribe: Vec<ChannelName> = before
            .iter()
            .chain(&touched)
            .filter(|c| !self.followed.contains_key(*c))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let answers = match self
            .pipeline(&subscribe, &requests, &broadcasts, &changes)
            .await
        {
            Ok((answers, snapshots)) => {
                // The members already there, before the stream's answer, so
                // they come first in the join order.
                let named = subscribe.iter().filter(|c| !c.as_str().is_empty());
                for (channel, value) in named.zip(&snapshots) {
                    self.deliver_snapshot(channel, value);
                }
                answers
            }
            Err(e) => {
                self.lost(&e);
                for channel in &first_opens {
                    self.followed.remove(channel);
                }
                Vec::new()
            }
        };
        let mut answers = answers.into_iter();
        for (shard, request) in requests {
            let event = match answers.next() {
                Some(value) => self.answer(request, value),
                None => {
                    let why = self.stats.reason_of(self.instance);
                    request.fail(StoreError::new(format!("redis: {why}")))
                }
            };
            if matches!(
                event,
                StoreEvent::Opened { result: Err(_), .. }
                    | StoreEvent::Appended { result: Err(_), .. }
            ) {
                RedisStats::add(&self.stats.errors, 1);
            }
            if let Some(tx) = self.shards.get(shard) {
                let _ = tx.send(event);
            }
        }
        if !forwards.is_empty() {
            let mut pipe = ::redis::pipe();
            for (method, body) in &forwards {
                self.push_forward(&mut pipe, method, body);
            }
            if self.query(&pipe).await.is_none() {
                RedisStats::add(&self.stats.errors, forwards.len() as u64);
            }
        }
        for (query, answer) in queries {
            self.cluster_query(query, answer).await;
        }
        if !unsubscribe.is_empty() && self.is_up() {
            let names: Vec<String> = unsubscribe.iter().map(|c| self.pubsub_name(c)).collect();
            if let Some(sink) = &mut self.sink {
                match tokio::time::timeout(RESPONSE_TIMEOUT, sink.unsubscribe(&names)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.lost(&e.to_string()),
                    Err(_) => self.lost("unsubscribing timed out"),
                }
            }
        }
    }

    /// Subscribes to `subscribe`, then sends every request, publication
    /// and presence change in one pipeline, with a snapshot of each newly
    /// subscribed channel's members. Returns the requests' answers and the
    /// snapshots.
    async fn pipeline(
        &mut self,
        subscribe: &BTreeSet<ChannelName>,
        requests: &[(usize, StoreRequest)],
        broadcasts: &[(ChannelName, Stored)],
        changes: &[hubbub_core::PresenceChange],
    ) -> Result<(Vec<Value>, Vec<Value>), String> {
        if !self.is_up() {
            return Err(self.stats.reason_of(self.instance));
        }
        if !subscribe.is_empty() {
            let names: Vec<String> = subscribe.iter().map(|c| self.pubsub_name(c)).collect();
            let Some(sink) = &mut self.sink else {
                return Err(self.stats.reason_of(self.instance));
            };
            tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(&names))
                .await
                .map_err(|_| "subscribing timed out".to_owned())?
                .map_err(|e| format!("subscribing failed: {e}"))?;
        }
        if requests.is_empty()
            && broadcasts.is_empty()
            && changes.is_empty()
            && subscribe.is_empty()
        {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for (_, request) in requests {
            self.fresh = self.fresh.wrapping_add(1);
            let fresh = hubbub_core::hub::mix64(self.fresh ^ now_nanos());
            let pubsub = self.pubsub_name(request.channel());
            let channel = request.channel().as_str();
            let meta = format!("hubbub:{{{channel}}}:meta");
            let stream = format!("hubbub:{{{channel}}}:stream");
            match request {
                StoreRequest::Open {
                    new_epoch, limits, ..
                } => {
                    pipe.cmd("EVAL")
                        .arg(OPEN)
                        .arg(2)
                        .arg(&meta)
                        .arg(&stream)
                        .arg(new_epoch.to_string())
                        .arg(limits.size.max(1));
                }
                StoreRequest::Append {
                    publication,
                    limits,
                    ..
                } => {
                    let ttl = u64::try_from(limits.ttl.as_millis()).unwrap_or(u64::MAX);
                    pipe.cmd("EVAL")
                        .arg(APPEND)
                        .arg(2)
                        .arg(&meta)
                        .arg(&stream)
                        .arg(fresh.to_string())
                        .arg(limits.size.max(1))
                        .arg(ttl)
                        .arg(encode(publication))
                        .arg(&pubsub);
                }
            }
        }
        for (channel, publication) in broadcasts {
            let mut message = format!("0 {} ", self.node).into_bytes();
            message.extend_from_slice(&encode(publication));
            pipe.cmd("PUBLISH")
                .arg(self.pubsub_name(channel))
                .arg(message)
                .ignore();
        }
        for change in changes {
            self.push_change(&mut pipe, change);
        }
        let snapshots: Vec<&ChannelName> = subscribe
            .iter()
            .filter(|c| !c.as_str().is_empty())
            .collect();
        for channel in &snapshots {
            self.push_snapshot(&mut pipe, channel);
        }
        RedisStats::add(&self.stats.pipelines, 1);
        let Some(conn) = &mut self.conn else {
            return Err(self.stats.reason_of(self.instance));
        };
        let mut values: Vec<Value> = tokio::time::timeout(RESPONSE_TIMEOUT, pipe.query_async(conn))
            .await
            .map_err(|_| "redis did not answer in time".to_owned())?
            .map_err(|e| format!("redis: {e}"))?;
        // The publishes' and presence writes' answers are not kept.
        if values.len() != requests.len() + snapshots.len() {
            return Err(format!(
                "redis answered {} of {} requests",
                values.len(),
                requests.len() + snapshots.len()
            ));
        }
        let snapshots = values.split_off(requests.len());
        Ok((values, snapshots))
    }

    /// The event for `request`, from Redis' answer.
    fn answer(&self, request: StoreRequest, value: Value) -> StoreEvent {
        match request {
            StoreRequest::Open {
                channel,
                limits,
                now,
                ..
            } => match parse_open(value, limits.ttl, now) {
                Ok(state) => {
                    RedisStats::add(&self.stats.opens, 1);
                    StoreEvent::Opened {
                        channel,
                        result: Ok(state),
                    }
                }
                Err(e) => StoreEvent::Opened {
                    channel,
                    result: Err(StoreError::new(e)),
                },
            },
            StoreRequest::Append { channel, token, .. } => match parse_append(&value) {
                Ok(position) => {
                    RedisStats::add(&self.stats.appends, 1);
                    StoreEvent::Appended {
                        channel,
                        token,
                        result: Ok(position),
                    }
                }
                Err(e) => StoreEvent::Appended {
                    channel,
                    token,
                    result: Err(StoreError::new(e)),
                },
            },
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos() % (1 << 64)).unwrap_or(0))
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn script_error(value: &Value) -> String {
    match value {
        Value::ServerError(e) => format!("redis: {e:?}"),
        other => format!("redis: unexpected answer {other:?}"),
    }
}

/// `{offset, epoch}`.
fn parse_append(value: &Value) -> Result<(u64, u64), String> {
    if let Value::Array(items) = value {
        if let [offset, epoch] = items.as_slice() {
            if let (Some(offset), Some(epoch)) = (int(offset), int(epoch)) {
                return Ok((offset, epoch));
            }
        }
    }
    Err(script_error(value))
}

/// `{top, epoch, [[id, [p, publication]], …]}`, newest first.
fn parse_open(value: Value, ttl: Duration, now: Timestamp) -> Result<StreamState, String> {
    let Value::Array(items) = value else {
        return Err(script_error(&value));
    };
    let [top, epoch, entries] = items.as_slice() else {
        return Err("redis: unexpected answer to open".to_owned());
    };
    let (Some(top), Some(epoch)) = (int(top), int(epoch)) else {
        return Err("redis: a stream's meta is not numbers".to_owned());
    };
    let mut tail = Vec::new();
    if let Value::Array(entries) = entries {
        for entry in entries.iter().rev() {
            let Some(publication) = parse_entry(entry) else {
                // Skipped: the tail is cut after a hole, so recovery across
                // it says it cannot.
                continue;
            };
            if now.since(publication.at) <= ttl {
                tail.push(publication);
            }
        }
    }
    Ok(StreamState { top, epoch, tail })
}

/// One stream entry: `[b"<offset>-1", [b"p", publication]]`.
fn parse_entry(entry: &Value) -> Option<Stored> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let offset: u64 = std::str::from_utf8(id)
        .ok()?
        .strip_suffix("-1")?
        .parse()
        .ok()?;
    let [Value::BulkString(name), Value::BulkString(body)] = fields.as_slice() else {
        return None;
    };
    if name.as_slice() != b"p" {
        return None;
    }
    let mut publication = decode(body)?;
    publication.offset = offset;
    Some(publication)
}

/// `"<offset> <epoch> <publication>"`.
fn parse_message(payload: &[u8]) -> Option<(u64, u64, &[u8])> {
    let space = payload.iter().position(|b| *b == b' ')?;
    let offset = std::str::from_utf8(&payload[..space]).ok()?.parse().ok()?;
    let rest = &payload[space + 1..];
    let space = rest.iter().position(|b| *b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    Some((offset, epoch, &rest[space + 1..]))
}

/// Absent user or text.
const NONE: u32 = u32::MAX;

/// A publication as Redis keeps it: version 2, `at` (ms, u64), client id
/// (u128), user, text, `conn_info` and `chan_info` (u32 length or `NONE`,
/// bytes), then the data; all big-endian. Version 1 (no infos) is still read.
#[must_use]
pub fn encode(p: &Stored) -> Vec<u8> {
    let user = p.user.as_ref().map(|u| u.as_str().as_bytes());
    let text = p.text.as_deref().map(str::as_bytes);
    let conn_info = p.infos.as_ref().and_then(|i| i.conn_info.as_deref());
    let chan_info = p.infos.as_ref().and_then(|i| i.chan_info.as_deref());
    let fields = [user, text, conn_info, chan_info];
    let mut out = Vec::with_capacity(
        1 + 8 + 16 + 16 + fields.iter().flatten().map(|f| f.len()).sum::<usize>() + p.data.len(),
    );
    out.push(2);
    out.extend_from_slice(&p.at.as_millis().to_be_bytes());
    out.extend_from_slice(&p.client.0.to_be_bytes());
    for field in fields {
        match field {
            Some(s) => {
                let len = u32::try_from(s.len()).unwrap_or(NONE - 1);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&s[..len as usize]);
            }
            None => out.extend_from_slice(&NONE.to_be_bytes()),
        }
    }
    out.extend_from_slice(&p.data);
    out
}

/// The publication [`encode`] wrote (offset 0), or `None` for anything else.
#[must_use]
pub fn decode(bytes: &[u8]) -> Option<Stored> {
    let (&version, rest) = bytes.split_first()?;
    let count = match version {
        1 => 2,
        2 => 4,
        _ => return None,
    };
    let (at, rest) = rest.split_at_checked(8)?;
    let (client, mut rest) = rest.split_at_checked(16)?;
    let at = u64::from_be_bytes(at.try_into().ok()?);
    let client = u128::from_be_bytes(client.try_into().ok()?);
    let mut fields: [Option<&[u8]>; 4] = [None; 4];
    for field in &mut fields[..count] {
        let (len, after) = rest.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?);
        rest = after;
        if len != NONE {
            let (s, after) = rest.split_at_checked(len as usize)?;
            *field = Some(s);
            rest = after;
        }
    }
    let [user, text, conn_info, chan_info] = fields;
    let user = match user {
        Some(u) => Some(Name::new(std::str::from_utf8(u).ok()?).ok()?),
        None => None,
    };
    let text = match text {
        Some(t) => Some(std::str::from_utf8(t).ok()?.to_owned()),
        None => None,
    };
    Some(Stored {
        offset: 0,
        at: Timestamp::from_millis(at),
        data: Bytes::copy_from_slice(rest),
        text: text.map(Into::into),
        user,
        client: ClientId(client),
        infos: hubbub_core::bus::infos(
            conn_info.map(Bytes::copy_from_slice),
            chan_info.map(Bytes::copy_from_slice),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_spread_by_a_stable_hash() {
        // FNV-1a 64 of "" and "a" (the published test vectors), modulo n.
        assert_eq!(
            instance_of("", 1_000_003),
            (0xcbf2_9ce4_8422_2325_u64 % 1_000_003) as usize
        );
        assert_eq!(
            instance_of("a", 1_000_003),
            (0xaf63_dc4c_8601_ec8c_u64 % 1_000_003) as usize
        );
        assert_eq!(instance_of("anything", 1), 0);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[instance_of(&format!("room{i}"), 3)] += 1;
        }
        assert!(counts.iter().all(|n| (800..1200).contains(n)), "{counts:?}");
    }

    #[test]
    fn publications_round_trip_and_garbage_is_refused() {
        let p = Stored {
            offset: 0,
            at: Timestamp::from_millis(1_700_000_000_123),
            data: Bytes::from_static(br#"{"text":"h\u00e9"}"#),
            text: Some("hé".into()),
            user: Name::new("ann").ok(),
            client: ClientId(u128::MAX - 5),
            infos: hubbub_core::bus::infos(
                Some(Bytes::from_static(br#"{"name":"Ann"}"#)),
                Some(Bytes::from_static(br#"{"role":"mod"}"#)),
            ),
        };
        let bytes = encode(&p);
        assert_eq!(decode(&bytes), Some(p.clone()));
        // A version 1 record (before infos) still reads, without them.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&bytes[1..25]);
        v1.extend_from_slice(&3u32.to_be_bytes());
        v1.extend_from_slice(b"ann");
        v1.extend_from_slice(&NONE.to_be_bytes());
        v1.extend_from_slice(b"{}");
        let old = decode(&v1).expect("version 1");
        assert_eq!(
            (old.user, old.text, old.infos),
            (Name::new("ann").ok(), None, None)
        );
        assert_eq!(old.data.as_ref(), b"{}");
        let anonymous = Stored {
            text: None,
            user: None,
            infos: None,
            data: Bytes::new(),
            ..p
        };
        assert_eq!(decode(&encode(&anonymous)), Some(anonymous));
        for cut in 0..bytes.len() - 10 {
            // Cut inside the header or a field: never a panic.
            let _ = decode(&bytes[..cut]);
        }
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x03abc"), None);
        let mut message = b"7 42 ".to_vec();
        message.extend_from_slice(&bytes);
        let (offset, epoch, rest) = parse_message(&message).expect("parses");
        assert_eq!((offset, epoch, rest), (7, 42, bytes.as_slice()));
        assert_eq!(parse_message(b"x 1 y"), None);
        assert_eq!(parse_message(b"1"), None);
    }
}
