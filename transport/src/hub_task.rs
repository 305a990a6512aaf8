//! The one task that owns the [`Hub`].
//!
//! Connections send [`Event`]s over a bounded channel; this task feeds them
//! to the hub, carries out its outputs, and runs its heartbeat timer. It is
//! the only place real time becomes a [`Timestamp`] (wall-clock milliseconds
//! since the Unix epoch, advanced monotonically from the start).
//!
//! The broadcast path never waits: a `Send` is pushed into the connection's
//! [`Outbox`] without awaiting; a full outbox is reported back to the hub as
//! `Input::QueueFull` once the current outputs are drained, and the hub
//! decides the eviction. The task awaits only its channel, its timer, and
//! (briefly, bounded) the scheduler: after a batch it yields while writers
//! it woke have not started yet, so it cannot outrun healthy clients merely
//! because their writers are waiting for a CPU.
//!
//! For `/metrics` the task publishes the hub's counters after a batch: when
//! its channel is empty (it is about to sleep) or at most every
//! [`PUBLISH_INTERVAL`] while busy (see [`Metrics::publish_hub`] for why a
//! published snapshot rather than scrapes asking the task).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use hubbub_core::record::Unsupported;
use hubbub_core::{
    BusMessage, CloseReason, Config, ConnId, Hub, Input, Output, Route, Stats, StoreError,
    StoreEvent, StoreRequest, Timestamp,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::outbox::{Outbox, Push, WriterGauge};

/// Most events handled in one go before the task yields, so the writers it
/// woke get to run. Also at most half a send queue: a burst the hub handles
/// in one go must not, by itself, fill a healthy client's queue.
const MAX_BATCH: usize = 64;

/// Most times the task yields after a batch while writers it woke have not
/// started yet. A bound, so the hub never depends on them; writers blocked
/// on slow sockets are not counted at all.
const MAX_YIELDS: usize = 32;

/// While events keep coming, how often the hub's counters are published for
/// `/metrics` at most; an idle hub has published its latest ones.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Messages between shards that may be in flight at once, per shard,
/// before readers stop reading from their clients until the shards catch
/// up: the bus pushes back on the publishers instead of growing or dropping.
pub const BUS_HIGH_WATER: usize = 16_384;

/// How much is in flight on the bus between shards. Shared by every shard;
/// readers consult it before reading a client's next frame.
#[derive(Debug)]
pub struct BusLoad {
    in_flight: AtomicUsize,
    high_water: usize,
}

impl Default for BusLoad {
    fn default() -> Self {
        Self::new(1)
    }
}

impl BusLoad {
    #[must_use]
    pub fn new(shards: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            high_water: BUS_HIGH_WATER.saturating_mul(shards.max(1)),
        }
    }

    fn sent(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn received(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Messages sent and not yet taken by their shard.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether readers should wait before reading more client input.
    #[must_use]
    pub fn congested(&self) -> bool {
        self.in_flight() > self.high_water
    }
}

/// A shard's ends of the bus: its inbox, and the other shards' inboxes
/// (indexed by shard; its own entry is never used).
#[derive(Debug)]
pub struct ShardLinks {
    pub shard: usize,
    pub inbox: mpsc::UnboundedReceiver<BusMessage>,
    pub peers: Vec<mpsc::UnboundedSender<BusMessage>>,
    pub load: Arc<BusLoad>,
}

impl ShardLinks {
    /// The links of the only shard of a one-shard server.
    #[must_use]
    pub fn single() -> Self {
        let (tx, inbox) = mpsc::unbounded_channel();
        Self {
            shard: 0,
            inbox,
            peers: vec![tx],
            load: Arc::new(BusLoad::new(1)),
        }
    }
}

/// What connections tell the hub task.
#[derive(Debug)]
pub enum Event {
    /// A WebSocket handshake completed; `outbox` is where the hub's frames for it go.
    Open {
        conn: ConnId,
        route: Route,
        outbox: Arc<Outbox>,
    },
    /// Anything else the hub must hear (message, pong, disconnect, shutdown).
    Input(Input),
    /// A server API request. Boxed: it is three times the size of the
    /// other events, and every reader and writer task holds an event in
    /// its state while it waits for room in the hub's queue.
    Api(Box<ApiEvent>),
}

/// A server API request; the reply body goes to `reply`.
#[derive(Debug)]
pub struct ApiEvent {
    pub request: hubbub_core::ApiRequest,
    /// The request as it came, when the hub records its inputs.
    pub recorded: Option<hubbub_core::record::ApiCall>,
    pub reply: tokio::sync::oneshot::Sender<bytes::Bytes>,
}

/// Converts between the tokio clock and the hub's millisecond timestamps:
/// wall-clock milliseconds since the Unix epoch, read once at the start and
/// advanced by the monotonic clock (so they never go back, and a stream's
/// publication times keep their meaning across restarts for `history_ttl`).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    /// The start, in milliseconds since the Unix epoch.
    origin_ms: u64,
}

impl Clock {
    /// A clock whose `start` is now on the wall clock.
    #[must_use]
    pub fn new(start: Instant) -> Self {
        let origin_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::with_origin(start, origin_ms)
    }

    /// A clock whose `start` is `origin_ms`.
    #[must_use]
    pub fn with_origin(start: Instant, origin_ms: u64) -> Self {
        Self { start, origin_ms }
    }

    /// The timestamp of `at`, rounded down (never before the start).
    #[must_use]
    pub fn timestamp(&self, at: Instant) -> Timestamp {
        let ms = at.saturating_duration_since(self.start).as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        Timestamp::from_millis(self.origin_ms.saturating_add(ms))
    }

    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.timestamp(Instant::now())
    }

    /// The instant of `ts` (far in the future when it does not fit).
    #[must_use]
    pub fn instant(&self, ts: Timestamp) -> Instant {
        let ms = ts.as_millis().saturating_sub(self.origin_ms);
        self.start
            .checked_add(Duration::from_millis(ms))
            .unwrap_or_else(|| far_future(self.start))
    }
}

fn far_future(from: Instant) -> Instant {
    // About 30 years: tokio's timer wheel handles it; the guard on the
    // select branch keeps it from ever mattering.
    from + Duration::from_secs(86_400 * 365 * 30)
}

/// A shard's link to the store engine's thread.
pub struct StoreLink {
    pub handle: crate::store::Engine,
    pub events: mpsc::UnboundedReceiver<StoreEvent>,
}

/// The hub and where its outputs go.
struct Driver {
    hub: Hub,
    clock: Clock,
    /// Never iterated for output, so hash order cannot leak into behavior.
    outboxes: HashMap<ConnId, Arc<Outbox>>,
    /// Connections whose outbox was full while draining (id order).
    full: BTreeSet<ConnId>,
    /// The other shards' inboxes, indexed by shard.
    peers: Vec<mpsc::UnboundedSender<BusMessage>>,
    load: Arc<BusLoad>,
    shard: usize,
    /// The store engine's thread (`None`: the hub's own in-memory engine).
    store: Option<crate::store::Engine>,
    /// API requests waiting for the hub's reply, by id.
    api_waiting: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<bytes::Bytes>>,
    /// `--record-inputs`: every input, and a hash of every output.
    recorder: Option<crate::record::Recorder>,
    /// A heartbeat deadline has passed, and this many connection events
    /// that were queued when it was seen are still to be handled first.
    timeout_waits_for: Option<usize>,
}

impl Driver {
    fn handle(&mut self, event: Event) {
        if let Some(waiting) = &mut self.timeout_waits_for {
            *waiting = waiting.saturating_sub(1);
        }
        let now = self.clock.now();
        match event {
            Event::Open {
                conn,
                route,
                outbox,
            } => {
                // Registered first, so the hub's first outputs (presence) reach it.
                self.outboxes.insert(conn, outbox);
                let input = Input::Open { conn, route };
                if let Some(r) = &mut self.recorder {
                    r.input(now, &input);
                }
                self.hub.handle_input(now, input);
            }
            Event::Input(input) => {
                if let Some(r) = &mut self.recorder {
                    r.input(now, &input);
                }
                self.hub.handle_input(now, input);
            }
            Event::Api(api) => {
                let ApiEvent {
                    request,
                    recorded,
                    reply,
                } = *api;
                if let Some(r) = &mut self.recorder {
                    match &recorded {
                        Some(call) => r.api(now, call),
                        None => r.unsupported(now, Unsupported::Api),
                    }
                }
                self.api_waiting.insert(request.id, reply);
                self.hub.handle_api(now, request);
            }
        }
        self.drain(now);
    }

    /// Runs the heartbeat if it is due by the clock (not by the timer),
    /// but only after the `queued` connection events that were waiting when
    /// it fell due: a pong a reader passed on before the deadline is judged
    /// before the deadline is, however far behind a storm has put the task.
    /// Those events are still handled batch by batch (the writers get their
    /// turn), and the count is fixed when the deadline is first seen, so
    /// events that arrive later cannot put the heartbeat off.
    fn maybe_timeout(&mut self, queued: usize) {
        let now = self.clock.now();
        if self.hub.poll_timeout().is_none_or(|at| at > now) {
            self.timeout_waits_for = None;
            return;
        }
        if *self.timeout_waits_for.get_or_insert(queued) > 0 {
            return;
        }
        self.timeout_waits_for = None;
        if let Some(r) = &mut self.recorder {
            r.timeout(now);
        }
        self.hub.handle_timeout(now);
        self.drain(now);
    }

    /// The store engine's answer.
    fn handle_store(&mut self, event: StoreEvent) {
        let now = self.clock.now();
        if let Some(r) = &mut self.recorder {
            r.store(now, &event);
        }
        self.hub.handle_store(now, event);
        self.drain(now);
    }

    /// A message from another shard.
    fn handle_bus(&mut self, msg: BusMessage) {
        self.load.received();
        let now = self.clock.now();
        if let Some(r) = &mut self.recorder {
            r.unsupported(now, Unsupported::Bus);
        }
        self.hub.handle_bus(now, msg);
        self.drain(now);
    }

    /// Performs every pending output; reports full queues, then performs
    /// what the resulting evictions produce, until nothing is left. Sends
    /// what the hub has for other shards, in order.
    fn drain(&mut self, now: Timestamp) {
        loop {
            while let Some(output) = self.hub.poll_output() {
                self.perform(output);
            }
            while let Some(reply) = self.hub.poll_api() {
                if let Some(r) = &mut self.recorder {
                    r.api_reply(&reply);
                }
                if let Some(tx) = self.api_waiting.remove(&reply.id) {
                    let _ = tx.send(reply.body);
                }
            }
            while let Some((to, msg)) = self.hub.poll_bus() {
                if let Some(peer) = self.peers.get(usize::from(to.0)) {
                    self.load.sent();
                    // A shard that is gone is stopping with the server.
                    if peer.send(msg).is_err() {
                        self.load.received();
                    }
                }
            }
            let mut refused = false;
            while let Some(request) = self.hub.poll_store() {
                let Some(store) = &self.store else { break };
                if let Err(closed) = store.submit(self.shard, request) {
                    // The engine is gone (shutting down): refused, not lost.
                    refused = true;
                    let event = refusal(*closed.0);
                    if let Some(r) = &mut self.recorder {
                        r.store(now, &event);
                    }
                    self.hub.handle_store(now, event);
                }
            }
            // After the opens they may follow (the hub names none opened since).
            if let Some(store) = &self.store {
                while let Some(channel) = self.hub.poll_follow() {
                    store.follow(self.shard, channel);
                }
                while let Some((channel, publication)) = self.hub.poll_broadcast() {
                    store.broadcast(channel, publication);
                }
                while let Some(change) = self.hub.poll_presence() {
                    store.presence(change);
                }
                while let Some(channel) = self.hub.poll_unfollow() {
                    store.unfollow(channel);
                }
            }
            if self.full.is_empty() && !refused {
                return;
            }
            for conn in std::mem::take(&mut self.full) {
                let input = Input::QueueFull { conn };
                if let Some(r) = &mut self.recorder {
                    r.input(now, &input);
                }
                self.hub.handle_input(now, input);
            }
        }
    }

    fn perform(&mut self, output: Output) {
        if let Some(r) = &mut self.recorder {
            r.output(&output);
        }
        match output {
            Output::Send {
                conn,
                frame,
                presence,
            } => {
                if let Some(outbox) = self.outboxes.get(&conn) {
                    if outbox.push(frame, presence) == Push::Full {
                        self.full.insert(conn);
                    }
                }
            }
            Output::Ping { conn } => {
                if let Some(outbox) = self.outboxes.get(&conn) {
                    outbox.ping();
                }
            }
            Output::Close { conn, reason } => {
                if let Some(outbox) = self.outboxes.remove(&conn) {
                    outbox.close(reason);
                }
            }
        }
    }
}

/// The answer to a request the engine can no longer take.
fn refusal(request: StoreRequest) -> StoreEvent {
    request.fail(StoreError::new("the store is closed or its queue is full"))
}

/// Publishes the hub's counters into [`Metrics`], throttled.
struct Publisher {
    metrics: Arc<Metrics>,
    shard: usize,
    last: Instant,
}

impl Publisher {
    /// After a batch: publishes when the hub is about to sleep (`idle`), or
    /// when the last publish is [`PUBLISH_INTERVAL`] old.
    fn after_batch(&mut self, hub: &Hub, idle: bool) {
        let now = Instant::now();
        if idle || now.duration_since(self.last) >= PUBLISH_INTERVAL {
            self.metrics.publish_shard(self.shard, hub.stats());
            self.last = now;
        }
    }
}

/// Runs the hub until every sender of `events` is gone; returns its final
/// counters. Publishes them into `metrics` as it goes.
// Each argument is one of the task's separate links; bundling them would
// only move the list into a struct built once, at the one call site.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: Config,
    clock: Clock,
    gauge: Arc<WriterGauge>,
    metrics: Arc<Metrics>,
    mut events: mpsc::Receiver<Event>,
    links: ShardLinks,
    store: Option<StoreLink>,
    recorder: Option<crate::record::Recorder>,
) -> Stats {
    let config_send_queue = config.send_queue;
    let ShardLinks {
        shard,
        mut inbox,
        peers,
        load,
    } = links;
    let (store, mut store_events) = match store {
        Some(link) => (Some(link.handle), Some(link.events)),
        None => (None, None),
    };
    let hub = match &store {
        Some(engine) if engine.delivers() => Hub::with_delivering_store(config),
        Some(_) => Hub::with_external_store(config),
        None => Hub::new(config),
    };
    let mut driver = Driver {
        hub,
        clock,
        outboxes: HashMap::new(),
        full: BTreeSet::new(),
        peers,
        load,
        shard,
        store,
        api_waiting: std::collections::BTreeMap::new(),
        recorder,
        timeout_waits_for: None,
    };
    let sleep = tokio::time::sleep_until(far_future(Instant::now()));
    tokio::pin!(sleep);
    let mut armed: Option<Timestamp> = None;
    let batch = (config_send_queue / 2).clamp(1, MAX_BATCH);
    let mut publisher = Publisher {
        metrics,
        shard,
        last: Instant::now(),
    };
    loop {
        let deadline = driver.hub.poll_timeout();
        if deadline != armed {
            if let Some(at) = deadline {
                sleep.as_mut().reset(clock.instant(at));
            }
            armed = deadline;
        }
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                driver.handle(event);
                // Take whatever else is already waiting before sleeping again.
                for _ in 1..batch {
                    match events.try_recv() {
                        Ok(event) => driver.handle(event),
                        Err(_) => break,
                    }
                }
            }
            msg = inbox.recv() => {
                // Never None while this task runs: it holds its own sender.
                if let Some(msg) = msg {
                    driver.handle_bus(msg);
                    for _ in 1..batch {
                        match inbox.try_recv() {
                            Ok(msg) => driver.handle_bus(msg),
                            Err(_) => break,
                        }
                    }
                }
            }
            event = next_store_event(&mut store_events) => {
                if let Some(event) = event {
                    driver.handle_store(event);
                    if let Some(rx) = &mut store_events {
                        for _ in 1..batch {
                            match rx.try_recv() {
                                Ok(event) => driver.handle_store(event),
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            // Not while queued events go first: they keep the task busy.
            () = &mut sleep, if deadline.is_some() && driver.timeout_waits_for.is_none() => {
                // The timer firing only means "look at the clock".
                armed = None;
            }
        }
        driver.maybe_timeout(events.len());
        let idle = events.is_empty()
            && inbox.is_empty()
            && store_events
                .as_ref()
                .is_none_or(mpsc::UnboundedReceiver::is_empty);
        publisher.after_batch(&driver.hub, idle);
        if idle {
            if let Some(r) = &mut driver.recorder {
                r.idle();
            }
        }
        // Let the writers this batch woke start on it before producing more.
        let mut yields = 0;
        while gauge.runnable() > 0 && yields < MAX_YIELDS {
            tokio::task::yield_now().await;
            yields += 1;
        }
    }
    let stats = driver.hub.stats();
    if let Some(r) = &mut driver.recorder {
        r.finish();
    }
    publisher.metrics.publish_shard(shard, stats.clone());
    stats
}

/// The next answer from the store engine; pending for ever without one
/// (and once its thread is gone: the hub keeps running without it).
async fn next_store_event(
    events: &mut Option<mpsc::UnboundedReceiver<StoreEvent>>,
) -> Option<StoreEvent> {
    match events {
        Some(rx) => match rx.recv().await {
            Some(event) => Some(event),
            None => {
                *events = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

impl Drop for Driver {
    /// No connection can hear from the hub any more (it stopped, or it
    /// panicked): close the ones it still knew, so none waits forever.
    fn drop(&mut self) {
        for (_, outbox) in self.outboxes.drain() {
            outbox.close(CloseReason::ServerShutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_core::Frame;

    use crate::outbox::Work;

    #[test]
    fn clock_round_trips_milliseconds() {
        let start = Instant::now();
        let clock = Clock::with_origin(start, 1_000_000);
        let at = start + Duration::from_millis(1234) + Duration::from_micros(999);
        assert_eq!(clock.timestamp(at), Timestamp::from_millis(1_001_234));
        assert_eq!(
            clock.instant(Timestamp::from_millis(1_001_234)),
            start + Duration::from_millis(1234)
        );
        assert_eq!(
            clock.timestamp(start - Duration::from_millis(5)),
            Timestamp::from_millis(1_000_000)
        );
        assert_eq!(clock.instant(Timestamp::ZERO), start, "before the start");
        assert!(clock.instant(Timestamp::from_millis(u64::MAX)) > start);
    }

    #[tokio::test]
    async fn an_idle_hub_has_published_its_counters() {
        let (tx, rx) = mpsc::channel(16);
        let gauge = Arc::new(WriterGauge::default());
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(run(
            Config::default(),
            Clock::new(Instant::now()),
            gauge.clone(),
            metrics.clone(),
            rx,
            ShardLinks::single(),
            None,
            None,
        ));
        let outbox = Arc::new(Outbox::new(8, gauge.clone()));
        tx.send(Event::Open {
            conn: ConnId(1),
            route: Route::Relay,
            outbox: outbox.clone(),
        })
        .await
        .expect("hub alive");
        tx.send(Event::Input(Input::Message {
            conn: ConnId(1),
            frame: Frame::text("hi"),
        }))
        .await
        .expect("hub alive");
        // The hub keeps running; once it has nothing to do, the figures are out.
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.hub().messages_in < 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let stats = metrics.hub();
        assert_eq!((stats.connections, stats.opened), (1, 1));
        assert_eq!((stats.messages_in, stats.sends), (1, 1));
        // The echo found an empty queue.
        let depth = gauge.metrics.queue_depth.snapshot();
        assert_eq!((depth.count, depth.buckets[0]), (1, 1));
        drop(tx);
        let last = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("hub ends")
            .expect("hub ran");
        assert_eq!(metrics.hub(), last);
    }

    /// A pong that a reader queued before the heartbeat deadline counts,
    /// even when the clock has passed the deadline by the time the hub
    /// task gets to it: here it waits behind more than a batch of other
    /// events (a storm), and the task looks at the clock after each batch.
    #[tokio::test(start_paused = true)]
    async fn a_pong_queued_before_the_deadline_beats_it() {
        let config = Config {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(2),
            ..Config::default()
        };
        for round in 0..4 {
            let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
            let gauge = Arc::new(WriterGauge::default());
            let task = tokio::spawn(run(
                config.clone(),
                Clock::new(Instant::now()),
                gauge.clone(),
                Arc::new(Metrics::new()),
                rx,
                ShardLinks::single(),
                None,
                None,
            ));
            let conn = ConnId(1);
            tx.send(Event::Open {
                conn,
                route: Route::Relay,
                outbox: Arc::new(Outbox::new(8, gauge)),
            })
            .await
            .expect("hub alive");
            // The hub pings at 1 s; the deadline is 2 s after the open.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // Other connections' events, then the pong, all queued before
            // the deadline; the hub task does not run again until the
            // clock is past it. (A pong from an unknown connection is a
            // no-op for the hub.)
            for _ in 0..2 * MAX_BATCH {
                tx.try_send(Event::Input(Input::Pong { conn: ConnId(99) }))
                    .expect("room in the queue");
            }
            tx.try_send(Event::Input(Input::Pong { conn }))
                .expect("room in the queue");
            tokio::time::advance(Duration::from_millis(1000)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(tx);
            let stats = tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("hub ends")
                .expect("hub ran");
            assert_eq!(
                stats.closes_for(CloseReason::HeartbeatTimeout),
                0,
                "round {round}: closed for a pong that came in time"
            );
            assert_eq!(stats.connections, 1, "round {round}: still open at the end");
        }
    }

    #[tokio::test]
    async fn full_queue_is_reported_and_evicts() {
        let config = Config {
            send_queue: 2,
            ..Config::default()
        };
        let (tx, rx) = mpsc::channel(16);
        let gauge = Arc::new(WriterGauge::default());
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(run(
            config,
            Clock::new(Instant::now()),
            gauge.clone(),
            metrics.clone(),
            rx,
            ShardLinks::single(),
            None,
            None,
        ));
        let slow = Arc::new(Outbox::new(2, gauge.clone()));
        let fast = Arc::new(Outbox::new(2, gauge));
        for (conn, outbox) in [(ConnId(1), &slow), (ConnId(2), &fast)] {
            tx.send(Event::Open {
                conn,
                route: Route::Relay,
                outbox: outbox.clone(),
            })
            .await
            .expect("hub alive");
        }
        let mut work = Work::default();
        for i in 0..3 {
            tx.send(Event::Input(Input::Message {
                conn: ConnId(2),
                frame: Frame::text(format!("m{i}")),
            }))
            .await
            .expect("hub alive");
            // The fast connection keeps up.
            let deadline = Instant::now() + Duration::from_secs(5);
            while fast.queued() == 0 && Instant::now() < deadline {
                tokio::task::yield_now().await;
            }
            assert!(fast.take(&mut work));
        }
        drop(tx);
        let stats = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("hub ends")
            .expect("hub ran");
        assert_eq!(stats.closes_for(CloseReason::SlowConsumer), 1);
        assert_eq!(metrics.hub(), stats);
        assert!(slow.take(&mut work));
        assert_eq!(work.close, Some(CloseReason::SlowConsumer));
    }
}
