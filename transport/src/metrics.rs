//! `GET /metrics`: the server's counters in the Prometheus text exposition
//! format, version 0.0.4, written by hand (no client library needed for a
//! few dozen lines of text).
//!
//! Where the figures come from:
//! - the hub's [`Stats`] (connections, rooms, opened, messages in and out,
//!   pings, closes by reason): a snapshot the hub task publishes into
//!   [`Metrics`] (see [`Metrics::publish_hub`] for why and how often);
//! - the outboxes (queue depth at each push, presence snapshots conflated)
//!   and the writers (bytes written): [`OutboxMetrics`], atomics every
//!   outbox reaches through its [`crate::outbox::WriterGauge`];
//! - the HTTP layer (refusals by status) and the accept loop (errors):
//!   counters in [`Metrics`].
//!
//! Every counter on a per-message path is one relaxed `fetch_add` on an
//! atomic; nothing there takes a lock. A scrape reads the atomics one by
//! one, so counters of different families may be a few events apart; the
//! hub's figures among themselves are one consistent snapshot.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hubbub_core::{CloseReason, Stats};
use hyper::StatusCode;

/// The content type of the text exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (`le`) of the `hubbub_queue_depth` buckets; `+Inf` follows.
pub const DEPTH_BUCKETS: [u64; 10] = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Depths counted one by one: 0 up to the largest finite bucket bound.
const EXACT_DEPTHS: usize = 257;

/// The HTTP refusals counted, by status (`hubbub_http_rejections_total`).
const REJECTIONS: [StatusCode; 9] = [
    StatusCode::BAD_REQUEST,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::URI_TOO_LONG,
    StatusCode::UPGRADE_REQUIRED,
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::SERVICE_UNAVAILABLE,
];

/// The close reasons that are evictions: the server ended a connection
/// because its client fell behind or went silent.
const EVICTIONS: [CloseReason; 3] = [
    CloseReason::SlowConsumer,
    CloseReason::HeartbeatTimeout,
    CloseReason::WriteTimeout,
];

/// Keeps what it holds on its own cache lines (128 bytes: adjacent-line
/// prefetching pairs 64-byte lines on x86), so counters bumped by different
/// threads do not slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CachePadded<T>(T);

/// The outbox depth seen at each push, as a histogram.
///
/// Depths up to 256 are counted exactly, one counter per depth, and binned
/// into the buckets only when scraped. So an observation is a single relaxed
/// `fetch_add` (no separate `_sum` and `_count` updates: both are derived
/// from the exact counts), and it is exact. Only depths beyond 256 (possible
/// with `--send-queue` above 256) cost a second `fetch_add` for their sum.
#[derive(Debug)]
pub struct DepthHistogram {
    /// `exact[d]`: pushes that found `d` messages waiting.
    exact: [AtomicU64; EXACT_DEPTHS],
    /// Pushes that found more than 256 messages waiting, and their depths' sum.
    over: AtomicU64,
    over_sum: AtomicU64,
}

impl Default for DepthHistogram {
    fn default() -> Self {
        Self {
            exact: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            over_sum: AtomicU64::new(0),
        }
    }
}

/// A histogram read at one point: cumulative bucket counts (one per
/// [`DEPTH_BUCKETS`] bound; `count` is the `+Inf` bucket), sum and count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DepthSnapshot {
    pub buckets: [u64; DEPTH_BUCKETS.len()],
    pub sum: u64,
    pub count: u64,
}

impl DepthHistogram {
    /// Records one push that found `depth` messages waiting.
    #[inline]
    pub fn observe(&self, depth: usize) {
        match self.exact.get(depth) {
            Some(counter) => {
                counter.fetch_add(1, Relaxed);
            }
            None => {
                self.over.fetch_add(1, Relaxed);
                self.over_sum.fetch_add(depth as u64, Relaxed);
            }
        }
    }

    #[must_use]
    pub fn snapshot(&self) -> DepthSnapshot {
        let mut snap = DepthSnapshot::default();
        for (depth, counter) in (0u64..).zip(&self.exact) {
            let n = counter.load(Relaxed);
            if n == 0 {
                continue;
            }
            // Every exact depth is at most the largest bound.
            if let Some(i) = DEPTH_BUCKETS.iter().position(|&le| depth <= le) {
                snap.buckets[i] = snap.buckets[i].wrapping_add(n);
            }
            snap.sum = snap.sum.wrapping_add(depth.wrapping_mul(n));
        }
        let mut cumulative = 0u64;
        for bucket in &mut snap.buckets {
            cumulative = cumulative.wrapping_add(*bucket);
            *bucket = cumulative;
        }
        snap.count = cumulative.wrapping_add(self.over.load(Relaxed));
        snap.sum = snap.sum.wrapping_add(self.over_sum.load(Relaxed));
        snap
    }
}

/// What the outboxes and writers count, shared by all of a server's outboxes.
/// Aligned so the histogram does not share a cache line with what it is
/// embedded next to (the writer gauge, which writers bump).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct OutboxMetrics {
    /// Bumped by the hub task only (it is the only one that pushes).
    pub queue_depth: DepthHistogram,
    /// Presence snapshots dropped because a newer one replaced them (hub task).
    presence_conflated: AtomicU64,
    /// Bumped by every writer: kept apart from the hub task's counters.
    bytes_out: CachePadded<AtomicU64>,
}

impl OutboxMetrics {
    pub fn count_conflated(&self) {
        self.presence_conflated.fetch_add(1, Relaxed);
    }

    pub fn count_bytes_out(&self, bytes: usize) {
        self.bytes_out.0.fetch_add(bytes as u64, Relaxed);
    }

    #[must_use]
    pub fn presence_conflated(&self) -> u64 {
        self.presence_conflated.load(Relaxed)
    }

    #[must_use]
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.0.load(Relaxed)
    }
}

/// The server's metrics apart from the outboxes': the hub's published
/// counters, HTTP refusals, accept errors, and the start time.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// The last published counters of each shard's hub.
    hub: Mutex<Vec<Stats>>,
    rejections: [AtomicU64; REJECTIONS.len()],
    accept_errors: AtomicU64,
    /// The SQLite store's counters, when it runs.
    store: std::sync::OnceLock<Arc<crate::store::StoreStats>>,
    /// The Redis engine's counters and state, when it runs.
    redis: std::sync::OnceLock<Arc<crate::store::redis::RedisStats>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics; uptime counts from now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            hub: Mutex::new(Vec::new()),
            rejections: Default::default(),
            accept_errors: AtomicU64::new(0),
            store: std::sync::OnceLock::new(),
            redis: std::sync::OnceLock::new(),
        }
    }

    /// Shows the store engine's counters (set once, at start).
    pub fn set_store(&self, stats: Arc<crate::store::StoreStats>) {
        let _ = self.store.set(stats);
    }

    /// Shows the Redis engine's counters (set once, at start).
    pub fn set_redis(&self, stats: Arc<crate::store::redis::RedisStats>) {
        let _ = self.redis.set(stats);
    }

    /// Why the engine cannot serve requests, if it cannot (`/health`):
    /// only the Redis engine can be down while the process runs.
    #[must_use]
    pub fn engine_down(&self) -> Option<String> {
        let redis = self.redis.get()?;
        (!redis.is_up()).then(|| redis.reason())
    }

    fn hub_stats(&self) -> MutexGuard<'_, Vec<Stats>> {
        // Only whole `Stats` values are stored: a poisoned one is still whole.
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the hub's published counters (hub task).
    ///
    /// Why the hub task publishes a snapshot instead of a scrape asking it
    /// (an `Event::Snapshot(oneshot::Sender<Stats>)` through its channel):
    /// a scrape then never enters the hub's event channel. Under load that
    /// channel holds thousands of chat events, so a scrape would wait behind
    /// them (and time out exactly when the figures matter), and every scrape
    /// would be work for the one task all chat depends on; an unauthenticated
    /// client hammering `/metrics` cannot slow the hub down this way.
    ///
    /// The cost to the hub: after a batch, when its channel is empty (it is
    /// about to sleep) or 100 ms after the last publish, it copies
    /// `Hub::stats()` (a dozen integers) in here. The lock is only ever held
    /// for that copy, on either side, so the hub never waits more than a
    /// copy's time, and never for a socket. The figures are current when the
    /// hub is idle and at most ~100 ms old under load. A mutex rather than an
    /// atomic per field, so a scrape sees one consistent state of the hub.
    pub fn publish_hub(&self, stats: Stats) {
        self.publish_shard(0, stats);
    }

    /// Replaces shard `shard`'s published counters (its hub task).
    pub fn publish_shard(&self, shard: usize, stats: Stats) {
        let mut all = self.hub_stats();
        if all.len() <= shard {
            all.resize(shard + 1, Stats::default());
        }
        all[shard] = stats;
    }

    /// The hubs' counters as last published, summed over the shards.
    #[must_use]
    pub fn hub(&self) -> Stats {
        let all = self.hub_stats();
        let mut sum = Stats::default();
        for s in all.iter() {
            sum.connections += s.connections;
            sum.rooms += s.rooms;
            sum.opened += s.opened;
            sum.messages_in += s.messages_in;
            sum.sends += s.sends;
            sum.pings += s.pings;
            sum.commands += s.commands;
            sum.command_errors += s.command_errors;
            sum.bus_out += s.bus_out;
            sum.bus_in += s.bus_in;
            sum.store_appends += s.store_appends;
            sum.store_failures += s.store_failures;
            sum.store_rejected += s.store_rejected;
            sum.store_opens += s.store_opens;
            sum.commands_limited += s.commands_limited;
            sum.publishes_limited += s.publishes_limited;
            sum.presence_deferred += s.presence_deferred;
            for (total, n) in sum.closes.iter_mut().zip(s.closes) {
                *total += n;
            }
        }
        sum
    }

    /// Counts a response if it is one of the refusals in
    /// `hubbub_http_rejections_total` (400, 403, 404, 405, 414, 426, 429, 431, 503).
    pub fn count_response(&self, status: StatusCode) {
        if let Some(i) = REJECTIONS.iter().position(|s| *s == status) {
            self.rejections[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts an `accept()` failure the server backs off from.
    pub fn count_accept_error(&self) {
        self.accept_errors.fetch_add(1, Relaxed);
    }

    /// Refusals counted with `status`.
    #[must_use]
    pub fn rejections(&self, status: StatusCode) -> u64 {
        REJECTIONS
            .iter()
            .position(|s| *s == status)
            .map_or(0, |i| self.rejections[i].load(Relaxed))
    }

    /// Writes every metric in the text exposition format.
    #[must_use]
    pub fn render(&self, outbox: &OutboxMetrics) -> String {
        // The hub's snapshot first: what the hub task did before publishing
        // it (its pushes into the depth histogram) is then visible below.
        let hub = self.hub();
        let depth = outbox.queue_depth.snapshot();
        let mut out = Text(String::with_capacity(4096));

        out.family(
            "hubbub_connections",
            "gauge",
            "Live WebSocket connections (open in the hub).",
        );
        out.sample("hubbub_connections", &[], hub.connections);
        out.family("hubbub_rooms", "gauge", "Rooms with at least one member.");
        out.sample("hubbub_rooms", &[], hub.rooms);
        out.counter(
            "hubbub_connections_opened_total",
            "WebSocket connections opened (handshake completed, registered with the hub).",
            hub.opened,
        );
        out.counter(
            "hubbub_messages_in_total",
            "Client messages handled by the hub.",
            hub.messages_in,
        );
        out.counter(
            "hubbub_messages_out_total",
            "Frames the hub queued to connections, one per recipient.",
            hub.sends,
        );
        out.counter(
            "hubbub_bytes_out_total",
            "Bytes of WebSocket frames (headers included) written to sockets by the writers.",
            outbox.bytes_out(),
        );
        out.counter(
            "hubbub_pings_total",
            "Heartbeat pings sent by the hub.",
            hub.pings,
        );
        out.counter(
            "hubbub_bus_messages_total",
            "Messages sent from one shard to another (joins, leaves, publications and \
             queries to a channel's home shard; its deliveries, once per shard).",
            hub.bus_out,
        );
        out.counter(
            "hubbub_commands_total",
            "Centrifugo protocol commands handled.",
            hub.commands,
        );
        out.counter(
            "hubbub_command_errors_total",
            "Centrifugo protocol commands answered with an error reply.",
            hub.command_errors,
        );
        out.counter(
            "hubbub_commands_limited_total",
            "Commands (Centrifugo commands, seed lines) refused by --command-rate (error 111, or dropped).",
            hub.commands_limited,
        );
        out.counter(
            "hubbub_publishes_limited_total",
            "Publications refused by --user-publish-rate (error 111, or dropped).",
            hub.publishes_limited,
        );
        out.counter(
            "hubbub_presence_deferred_total",
            "online_users lists held back by --presence-rate (sent later as one).",
            hub.presence_deferred,
        );
        out.counter(
            "hubbub_publications_stored_total",
            "Publications the store made durable (then fanned out and acknowledged).",
            hub.store_appends,
        );
        out.counter(
            "hubbub_store_failures_total",
            "Stream opens and appends the store failed (publishers got error 100).",
            hub.store_failures,
        );
        out.counter(
            "hubbub_store_rejected_total",
            "Publications refused because the store's queue was full (error 100).",
            hub.store_rejected,
        );
        out.counter(
            "hubbub_streams_opened_total",
            "Channel streams loaded from the store.",
            hub.store_opens,
        );
        if let Some(store) = self.store.get() {
            use crate::store::StoreStats as S;
            out.counter(
                "hubbub_store_commits_total",
                "SQLite transactions committed (each a batch of requests: group commit).",
                S::get(&store.commits),
            );
            out.counter(
                "hubbub_store_failed_commits_total",
                "SQLite transactions that failed and were rolled back.",
                S::get(&store.failed_commits),
            );
            out.counter(
                "hubbub_store_batched_requests_total",
                "Requests executed in batches (divide by commits for the mean batch).",
                S::get(&store.batched_requests),
            );
            out.counter(
                "hubbub_store_commit_seconds_total",
                "Time spent executing batches, in whole seconds.",
                S::get(&store.commit_micros) / 1_000_000,
            );
            out.counter(
                "hubbub_store_swept_total",
                "Publications removed by the retention sweep (older than history_ttl).",
                S::get(&store.swept),
            );
        }
        if let Some(redis) = self.redis.get() {
            use crate::store::redis::RedisStats as R;
            out.family(
                "hubbub_redis_up",
                "gauge",
                "1 while the Redis engine is connected (commands and pub/sub), else 0.",
            );
            out.sample("hubbub_redis_up", &[], u8::from(redis.is_up()));
            out.counter(
                "hubbub_redis_errors_total",
                "Requests the Redis engine answered with an error or refused (error 100).",
                R::get(&redis.errors),
            );
            out.counter(
                "hubbub_redis_reconnects_total",
                "Times the Redis engine connected again after losing Redis.",
                R::get(&redis.reconnects),
            );
            out.counter(
                "hubbub_redis_connect_failures_total",
                "Attempts to connect to Redis that failed.",
                R::get(&redis.connect_failures),
            );
            out.counter(
                "hubbub_redis_pipelines_total",
                "Pipelines sent to Redis (requests divided by pipelines: the mean batch).",
                R::get(&redis.pipelines),
            );
            out.counter(
                "hubbub_redis_delivered_total",
                "Publications delivered from Redis pub/sub to this node's homes.",
                R::get(&redis.delivered),
            );
            out.counter(
                "hubbub_redis_malformed_total",
                "Messages or stream entries in Redis that could not be read (skipped).",
                R::get(&redis.malformed),
            );
            out.counter(
                "hubbub_redis_presence_writes_total",
                "Local joins and leaves written to Redis for the other nodes.",
                R::get(&redis.presence_writes),
            );
            out.counter(
                "hubbub_redis_snapshots_total",
                "Channels' members on other nodes read from Redis.",
                R::get(&redis.snapshots),
            );
            out.counter(
                "hubbub_redis_nodes_gone_total",
                "Other nodes whose liveness ran out; their members left this node's channels.",
                R::get(&redis.nodes_gone),
            );
        }

        out.family(
            "hubbub_closes_total",
            "counter",
            "Connections closed, by reason and close code (the seed protocols' code; \
             Centrifugo connections get Centrifugo's code for the same reason).",
        );
        for (reason, n) in CloseReason::ALL.iter().zip(hub.closes) {
            let code = reason.code().0.to_string();
            out.sample(
                "hubbub_closes_total",
                &[("reason", reason.name()), ("code", &code)],
                n,
            );
        }
        out.family(
            "hubbub_evictions_total",
            "counter",
            "Connections the server closed because the client fell behind or went silent: \
             slow_consumer (send queue full), heartbeat_timeout (no pong in time), \
             write_timeout (a write stalled).",
        );
        for reason in EVICTIONS {
            out.sample(
                "hubbub_evictions_total",
                &[("reason", reason.name())],
                hub.closes_for(reason),
            );
        }
        out.counter(
            "hubbub_presence_conflated_total",
            "Unsent online_users snapshots dropped because a newer one for the same room replaced them.",
            outbox.presence_conflated(),
        );

        out.family(
            "hubbub_queue_depth",
            "histogram",
            "Messages already waiting in a connection's send queue when the hub queued another.",
        );
        for (le, n) in DEPTH_BUCKETS.iter().zip(depth.buckets) {
            out.sample("hubbub_queue_depth_bucket", &[("le", &le.to_string())], n);
        }
        out.sample("hubbub_queue_depth_bucket", &[("le", "+Inf")], depth.count);
        out.sample("hubbub_queue_depth_sum", &[], depth.sum);
        out.sample("hubbub_queue_depth_count", &[], depth.count);

        out.family(
            "hubbub_http_rejections_total",
            "counter",
            "HTTP requests refused before any WebSocket upgrade, by status.",
        );
        for (status, counter) in REJECTIONS.iter().zip(&self.rejections) {
            out.sample(
                "hubbub_http_rejections_total",
                &[("status", status.as_str())],
                counter.load(Relaxed),
            );
        }
        out.counter(
            "hubbub_accept_errors_total",
            "accept() failures the server backed off from (out of file descriptors or memory).",
            self.accept_errors.load(Relaxed),
        );
        out.family(
            "hubbub_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
        );
        let uptime = format!("{:.3}", self.started.elapsed().as_secs_f64());
        out.sample("hubbub_uptime_seconds", &[], uptime);
        out.0
    }
}

/// The exposition text being written. Help texts and label values are
/// fixed ASCII without `\`, `"` or newlines, so nothing needs escaping.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        for (i, (key, val)) in labels.iter().enumerate() {
            self.0.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.0, "{key}=\"{val}\"");
        }
        if !labels.is_empty() {
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_exact_and_cumulative() {
        let h = DepthHistogram::default();
        for depth in [0, 0, 1, 2, 3, 4, 5, 100, 256, 257, 1000] {
            h.observe(depth);
        }
        let snap = h.snapshot();
        //                 le: 0  1  2  4  8 16 32 64 128 256
        assert_eq!(snap.buckets, [2, 3, 4, 6, 7, 7, 7, 7, 8, 9]);
        assert_eq!(snap.count, 11);
        assert_eq!(snap.sum, 1 + 2 + 3 + 4 + 5 + 100 + 256 + 257 + 1000);
        assert_eq!(
            DepthHistogram::default().snapshot(),
            DepthSnapshot::default()
        );
    }

    #[test]
    fn only_the_listed_refusals_are_counted() {
        let m = Metrics::new();
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::OK,
            StatusCode::SWITCHING_PROTOCOLS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            m.count_response(status);
        }
        assert_eq!(m.rejections(StatusCode::NOT_FOUND), 2);
        assert_eq!(m.rejections(StatusCode::SERVICE_UNAVAILABLE), 1);
        assert_eq!(m.rejections(StatusCode::BAD_REQUEST), 0);
        assert_eq!(m.rejections(StatusCode::OK), 0);
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::new();
        let mut stats = Stats {
            connections: 3,
            rooms: 1,
            opened: 5,
            messages_in: 7,
            sends: 11,
            pings: 2,
            ..Stats::default()
        };
        stats.closes[1] = 1; // MessageTooBig
        stats.closes[6] = 4; // SlowConsumer
        m.publish_hub(stats);
        m.count_response(StatusCode::UPGRADE_REQUIRED);
        m.count_accept_error();
        let o = OutboxMetrics::default();
        o.queue_depth.observe(0);
        o.queue_depth.observe(3);
        o.count_bytes_out(42);
        o.count_conflated();
        let text = m.render(&o);
        for line in [
            "# TYPE hubbub_connections gauge",
            "hubbub_connections 3",
            "hubbub_rooms 1",
            "hubbub_connections_opened_total 5",
            "hubbub_messages_in_total 7",
            "hubbub_messages_out_total 11",
            "hubbub_bytes_out_total 42",
            "hubbub_pings_total 2",
            "hubbub_closes_total{reason=\"peer_closed\",code=\"1000\"} 0",
            "hubbub_closes_total{reason=\"message_too_big\",code=\"1009\"} 1",
            "hubbub_closes_total{reason=\"slow_consumer\",code=\"1008\"} 4",
            "hubbub_evictions_total{reason=\"slow_consumer\"} 4",
            "hubbub_evictions_total{reason=\"heartbeat_timeout\"} 0",
            "hubbub_evictions_total{reason=\"write_timeout\"} 0",
            "hubbub_presence_conflated_total 1",
            "# TYPE hubbub_queue_depth histogram",
            "hubbub_queue_depth_bucket{le=\"0\"} 1",
            "hubbub_queue_depth_bucket{le=\"2\"} 1",
            "hubbub_queue_depth_bucket{le=\"4\"} 2",
            "hubbub_queue_depth_bucket{le=\"+Inf\"} 2",
            "hubbub_queue_depth_sum 3",
            "hubbub_queue_depth_count 2",
            "hubbub_http_rejections_total{status=\"426\"} 1",
            "hubbub_http_rejections_total{status=\"503\"} 0",
            "hubbub_accept_errors_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("hubbub_closes_total"))
                .count(),
            CloseReason::ALL.len()
        );
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(
            (helps, types),
            (24, 24),
            "the store's families show only with SQLite"
        );
        assert!(text.ends_with('\n'));
    }
}
