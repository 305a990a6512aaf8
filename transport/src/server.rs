//! The accept loop, per-connection HTTP tasks, and graceful shutdown.
//!
//! Accept errors (out of file descriptors or memory) never stop the server:
//! they are logged at most once a second and the loop backs off (10 ms,
//! doubling to 1 s, reset by the next success) so existing clients keep
//! chatting while the pressure lasts. Each is counted in
//! `hubbub_accept_errors_total` (see [`crate::metrics`]).
//!
//! Shutdown order: stop accepting; tell idle HTTP connections to finish;
//! send the hub `Input::Shutdown` (it orders every WebSocket closed with
//! 1001, and writers flush first); wait, at most `write_timeout + 1s`, until
//! every tracked task has ended.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hubbub_core::{CloseReason, Input, Stats};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::{ServerConfig, HEADER_READ_TIMEOUT, HUB_CHANNEL_CAPACITY};
use crate::http;
use crate::hub_task::{self, BusLoad, Clock, Event, ShardLinks};
use crate::metrics::{Metrics, OutboxMetrics};
use crate::outbox::WriterGauge;
use crate::shutdown::TaskTracker;
use crate::state::Shared;

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Requests one connection may make before it upgrades (or is closed).
pub const MAX_REQUESTS_PER_CONNECTION: usize = 32;

/// The most bytes of request head (line and headers) a connection may
/// send: beyond it hyper answers 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a connection may speak HTTP before its upgrade.
pub const PRE_UPGRADE_LIFETIME: Duration = Duration::from_secs(60);

/// How long the hub task gets to finish once every connection has.
const HUB_EXIT_WAIT: Duration = Duration::from_secs(1);

/// Serves HTTP and WebSocket clients on `listener` until `shutdown`
/// resolves, then closes every connection with 1001 and returns once they
/// are gone (or `write_timeout + 1s` has passed).
///
/// # Errors
/// When `config` is invalid (`InvalidInput`), the listener has no address,
/// or the hub task died (a bug; connections were closed with 1001).
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let addr = listener.local_addr()?;
    let shards = config.shards;
    let metrics = Arc::new(Metrics::new());
    let outbox_metrics = Arc::new(OutboxMetrics::default());
    let bus = Arc::new(BusLoad::new(shards));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let grace = config.shutdown_grace();
    let clock = Clock::new(Instant::now());
    let global = Global {
        live: Arc::new(AtomicUsize::new(0)),
        pre_upgrade: Arc::new(AtomicUsize::new(0)),
        next_conn: Arc::new(AtomicU64::new(1)),
        opened: Arc::new(AtomicU64::new(0)),
        stopping: Arc::new(AtomicBool::new(false)),
    };
    let tls = match &config.tls {
        Some(files) => Some(
            crate::tls::load(files)
                .map(crate::tls::Acceptor)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let ip_limits = crate::limits::IpLimits::new(config.ip_limits);
    let (store, mut store_links) = start_store(&config, shards)?;
    match &store {
        Some(crate::store::Engine::Sqlite(handle)) => metrics.set_store(handle.stats().clone()),
        Some(crate::store::Engine::Redis(handle)) => metrics.set_redis(handle.stats().clone()),
        None => {}
    }
    let (inboxes, peers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            (rx, tx)
        })
        .unzip();
    let mut shard_handles = Vec::with_capacity(shards);
    let mut shared = Vec::with_capacity(shards);
    for (shard, inbox) in inboxes.into_iter().enumerate() {
        let (hub_tx, hub_rx) = mpsc::channel(HUB_CHANNEL_CAPACITY);
        let gauge = Arc::new(WriterGauge::sharing(outbox_metrics.clone(), bus.clone()));
        let mut hub_config = config.hub.clone();
        hub_config.shards = u16::try_from(shards).unwrap_or(u16::MAX);
        hub_config.shard = hubbub_core::ShardId(u16::try_from(shard).unwrap_or(0));
        let links = ShardLinks {
            shard,
            inbox,
            peers: peers.clone(),
            load: bus.clone(),
        };
        let state = Arc::new(Shared {
            config: config.clone(),
            hub: hub_tx,
            live: global.live.clone(),
            pre_upgrade: global.pre_upgrade.clone(),
            next_conn: global.next_conn.clone(),
            opened: global.opened.clone(),
            stopping: global.stopping.clone(),
            tracker: tracker.clone(),
            gauge: gauge.clone(),
            metrics: metrics.clone(),
            bus: bus.clone(),
            started,
            tls: tls.clone(),
            ip_limits: ip_limits.clone(),
            cluster: match &store {
                Some(crate::store::Engine::Redis(handle)) => Some(handle.clone()),
                _ => None,
            },
        });
        let store_link = store_links.next();
        // One shard (validated): shard 0 records, with its engine's events.
        let recorder = match (&config.record, shard) {
            (Some(settings), 0) => {
                use hubbub_core::record::Engine;
                let engine = match &store_link {
                    Some(link) if link.handle.delivers() => Engine::Delivering,
                    Some(_) => Engine::External,
                    None => Engine::Inline,
                };
                Some(crate::record::Recorder::start(
                    settings,
                    &hub_config,
                    engine,
                )?)
            }
            _ => None,
        };
        let hub = hub_task::run(
            hub_config,
            clock,
            gauge,
            metrics.clone(),
            hub_rx,
            links,
            store_link,
            recorder,
        );
        shard_handles.push(start_shard(shard, hub, state.clone(), stop_rx.clone())?);
        shared.push(state);
    }
    drop(peers);
    if let Some(crate::store::Engine::Redis(handle)) = &store {
        start_cluster_tasks(handle, &shared[0], &stop_rx);
    }
    info!(
        %addr,
        shards,
        tls = tls.is_some(),
        api = config.api_key.is_some(),
        max_connections = config.hub.max_connections,
        max_sockets = config.max_sockets,
        "listening"
    );

    // A hub task only ends once every connection is gone; one ending
    // earlier panicked, and the server cannot work without it.
    let mut hub_failed = None;
    let senders: Vec<_> = shard_handles.iter().map(|h| h.streams.clone()).collect();
    {
        let first_ended = std::future::poll_fn(|cx| {
            for (shard, handle) in shard_handles.iter_mut().enumerate() {
                if std::pin::Pin::new(&mut handle.done).poll(cx).is_ready() {
                    return std::task::Poll::Ready(shard);
                }
            }
            std::task::Poll::Pending
        });
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                shard = first_ended => hub_failed = Some(shard),
            }
        };
        accept_loop(&listener, &shared[0], &senders, stop).await;
    }
    drop(senders);
    drop(listener);
    if let Some(shard) = &hub_failed {
        error!(shard, "a hub task ended unexpectedly; shutting down");
    }

    let started = Instant::now();
    global.stopping.store(true, Ordering::Release);
    let open = global.live.load(Ordering::Acquire);
    info!(websockets = open, "shutting down: stopped accepting");
    let _ = stop_tx.send(true);
    for state in &shared {
        let _ = state.hub.send(Event::Input(Input::Shutdown)).await;
    }
    let unfinished = tracker.wait(grace).await;
    let opened = global.opened.load(Ordering::Relaxed);
    drop(shared);
    let mut stats: Option<Stats> = Some(Stats::default());
    for (shard, handle) in shard_handles.iter_mut().enumerate() {
        handle.streams = closed_sender();
        if hub_failed == Some(shard) {
            // Its end was already seen (a receiver is polled to its end once).
            stats = None;
            continue;
        }
        let ended = tokio::time::timeout(HUB_EXIT_WAIT, &mut handle.done)
            .await
            .ok()
            .and_then(Result::ok);
        match (&mut stats, ended) {
            (Some(total), Some(s)) => {
                total.opened += s.opened;
                total.messages_in += s.messages_in;
                total.sends += s.sends;
                for (t, n) in total.closes.iter_mut().zip(s.closes) {
                    *t += n;
                }
            }
            _ => stats = None,
        }
    }
    if let Some(store) = store {
        // Every hub is done: the engine finishes what is queued (nothing
        // acknowledged is ever lost; this only completes the last batch).
        store.close();
        let _ = tokio::task::spawn_blocking(move || store.join()).await;
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if unfinished > 0 {
        warn!(
            unfinished,
            elapsed_ms, "shutdown: connections still open after the grace period were abandoned"
        );
    }
    match stats.filter(|_| hub_failed.is_none()) {
        Some(stats) => info!(
            websockets_at_shutdown = open,
            closed_for_shutdown = stats.closes_for(CloseReason::ServerShutdown),
            opened = stats.opened,
            messages_in = stats.messages_in,
            sends = stats.sends,
            evicted = stats.closes_for(CloseReason::SlowConsumer),
            heartbeat_timeouts = stats.closes_for(CloseReason::HeartbeatTimeout),
            elapsed_ms,
            "shutdown complete"
        ),
        None => info!(
            websockets_at_shutdown = open,
            opened, elapsed_ms, "shutdown complete"
        ),
    }
    match hub_failed {
        Some(_) => Err(io::Error::other("a hub task failed")),
        None => Ok(()),
    }
}

/// With the Redis engine: runs the API calls other nodes forward, and
/// keeps this node's `info` entry current for theirs. Both end with the
/// server: they end when it stops (they hold a hub's sender, which must
/// close for the hub to end).
fn start_cluster_tasks(
    handle: &crate::store::redis::RedisHandle,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) {
    if let Some(mut forwarded) = handle.take_forwarded() {
        let (shared, mut stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    call = forwarded.recv() => match call {
                        Some((method, body)) => crate::api::run_forwarded(&shared, &method, &body).await,
                        None => break,
                    },
                    () = stopped(&mut stop) => break,
                }
            }
        });
    }
    let (handle, shared, mut stop) = (handle.clone(), shared.clone(), stop.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(handle.beat_every());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = stopped(&mut stop) => break,
            }
            if let Some(entry) = crate::api::local_node_info(&shared).await {
                handle.set_node_info(entry);
            }
        }
    });
}

/// Opens the configured store and starts its thread: its handle, and each
/// shard's link to it (none with the in-memory store).
///
/// # Errors
/// The store cannot be opened (the message names the file and the problem).
fn start_store(
    config: &ServerConfig,
    shards: usize,
) -> io::Result<(
    Option<crate::store::Engine>,
    std::vec::IntoIter<crate::hub_task::StoreLink>,
)> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
    let handle = match &config.store {
        crate::config::StoreConfig::Memory => return Ok((None, Vec::new().into_iter())),
        crate::config::StoreConfig::Sqlite { dir, sync } => {
            let store = crate::store::SqliteStore::open(dir, *sync)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            info!(path = %store.path().display(), sync = %sync, "history store opened");
            crate::store::Engine::Sqlite(crate::store::spawn(store, senders)?)
        }
        crate::config::StoreConfig::Redis { urls, presence_ttl } => {
            for url in urls {
                info!(url = %redacted(url), "redis engine starting");
            }
            crate::store::Engine::Redis(crate::store::redis::spawn(urls, *presence_ttl, &senders)?)
        }
    };
    let links: Vec<_> = receivers
        .into_iter()
        .map(|events| crate::hub_task::StoreLink {
            handle: handle.clone(),
            events,
        })
        .collect();
    Ok((Some(handle), links.into_iter()))
}

/// `SO_SNDBUF` for client sockets (Linux doubles it for its own
/// bookkeeping): ample for chat at any rate a reader keeps up with.
pub const SEND_BUFFER_BYTES: usize = 256 * 1024;

/// An accepted socket on its way to a shard, counted in `pre_upgrade`
/// until its HTTP phase ends.
type Accepted = (std::net::TcpStream, SocketAddr, PreUpgrade);

/// One socket in its HTTP phase, counted server-wide and against its
/// address; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct PreUpgrade {
    count: Arc<AtomicUsize>,
    /// Held for its drop, which uncounts the socket from its address.
    _per_ip: crate::limits::SocketGuard,
}

impl Drop for PreUpgrade {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to a connection accepted past `max_sockets`, written straight
/// to the socket (no HTTP task is started for it).
const PER_IP_RESPONSE: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: 55\r\nretry-after: 5\r\nconnection: close\r\n\r\n{\"error\":\"too many open connections from this address\"}";

const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 67\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"error\":\"server full: too many open connections, try again later\"}";

/// `url` without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The server-wide counters and flags every shard's [`Shared`] points to.
struct Global {
    live: Arc<AtomicUsize>,
    /// Accepted sockets still in their HTTP phase (all shards).
    pre_upgrade: Arc<AtomicUsize>,
    next_conn: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
}

/// A running shard: a thread with its own runtime, hub task and connections.
struct ShardHandle {
    /// Accepted sockets for this shard to serve.
    streams: mpsc::UnboundedSender<Accepted>,
    /// The hub's final counters when it ends (an error if it panicked).
    done: tokio::sync::oneshot::Receiver<Stats>,
}

fn closed_sender() -> mpsc::UnboundedSender<Accepted> {
    mpsc::unbounded_channel().0
}

/// Starts shard `shard` on a thread of its own: a single-threaded runtime
/// running its hub task and every task of the connections it is given, so
/// a message's work stays on one core and nothing on the delivery path
/// wakes another thread (except the one message per shard a publication
/// costs on the bus).
fn start_shard(
    shard: usize,
    hub: impl Future<Output = Stats> + Send + 'static,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> io::Result<ShardHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (streams, mut accepted) = mpsc::unbounded_channel::<Accepted>();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("hubbub-shard-{shard}"))
        .spawn(move || {
            runtime.block_on(async move {
                let hub = tokio::spawn(hub);
                while let Some((stream, peer, counted)) = accepted.recv().await {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => spawn_http(stream, peer, counted, &shared, stop.clone()),
                        Err(e) => debug!(shard, error = %e, "could not adopt a socket"),
                    }
                }
                // The hub ends once every connection (and `shared`) is gone.
                drop(shared);
                if let Ok(stats) = hub.await {
                    let _ = done_tx.send(stats);
                }
            });
        })?;
    Ok(ShardHandle { streams, done })
}
/// Accepts connections until `shutdown` resolves.
async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    shards: &[mpsc::UnboundedSender<Accepted>],
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    let mut errors = ErrorLog::default();
    // Round robin: connections spread evenly, so a busy room spans every shard.
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                let open = shared.live.load(Ordering::Acquire)
                    + shared.pre_upgrade.load(Ordering::Acquire);
                if open >= shared.config.max_sockets {
                    // Out of sockets to give: say so now, while the reserve
                    // still has a descriptor for this one, rather than hang.
                    let _ = stream.try_write(FULL_RESPONSE);
                    shared
                        .metrics
                        .count_response(hyper::StatusCode::SERVICE_UNAVAILABLE);
                    continue;
                }
                let Some(per_ip) = shared
                    .ip_limits
                    .open_socket(peer.ip(), Instant::now().into_std())
                else {
                    let _ = stream.try_write(PER_IP_RESPONSE);
                    shared
                        .metrics
                        .count_response(hyper::StatusCode::TOO_MANY_REQUESTS);
                    continue;
                };
                shared.pre_upgrade.fetch_add(1, Ordering::AcqRel);
                let counted = PreUpgrade {
                    count: shared.pre_upgrade.clone(),
                    _per_ip: per_ip,
                };
                let Ok(stream) = stream.into_std() else {
                    continue; // it could not be taken off this runtime: drop it
                };
                if let Some(shard) = shards.get(next) {
                    let _ = shard.send((stream, peer, counted));
                }
                next = (next + 1) % shards.len().max(1);
            }
            // The client gave up before we accepted: nothing to do.
            Err(e) if is_connection_error(&e) => debug!(error = %e, "accept: connection error"),
            Err(e) => {
                shared.metrics.count_accept_error();
                errors.log(&e, backoff);
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Accept errors logged at most once a second, with a count of the rest.
#[derive(Debug, Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn log(&mut self, e: &io::Error, backoff: Duration) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        warn!(
            error = %e,
            backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            suppressed = self.suppressed,
            "accept failed (out of file descriptors or memory?); backing off"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Serves one TCP connection's HTTP/1.1 requests (and hands off upgrades).
fn spawn_http(
    stream: TcpStream,
    peer: SocketAddr,
    counted: PreUpgrade,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Chat messages are small and latency matters more than packet count;
    // the writer already batches.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "set_nodelay failed");
    }
    // A bounded kernel buffer: a client that stops reading fills it in
    // moments, then its send queue, and is evicted as slow (with a close
    // frame) instead of letting the kernel hold megabytes for it until
    // the write timeout.
    if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES) {
        debug!(%peer, error = %e, "SO_SNDBUF failed");
    }
    let token = shared.tracker.token();
    let tls = shared.tls.clone();
    let metrics = shared.metrics.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        // Before its upgrade a connection may make a bounded number of
        // requests: the last answer says `Connection: close`, so a client
        // pipelining requests it never reads pins no more than that.
        let served = Arc::new(AtomicUsize::new(0));
        let service = service_fn(move |req| {
            let shared = shared.clone();
            let served = served.clone();
            async move {
                let mut response = http::handle(shared, peer, req).await?;
                if served.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_REQUESTS_PER_CONNECTION {
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        match tls {
            None => serve_http(&builder, stream, service, peer, &metrics, &mut stop).await,
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.0.accept(stream));
                let stream = tokio::select! {
                    accepted = handshake => accepted,
                    () = stopped(&mut stop) => return,
                };
                match stream {
                    Ok(Ok(stream)) => {
                        serve_http(&builder, stream, service, peer, &metrics, &mut stop).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
        drop(token);
        drop(counted);
    });
}

/// Serves HTTP/1.1 on `stream` (plain or TLS) until it ends or shutdown.
async fn serve_http<S, F>(
    builder: &http1::Builder,
    stream: S,
    service: F,
    peer: SocketAddr,
    metrics: &crate::metrics::Metrics,
    stop: &mut watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<http::Body>,
            Error = std::convert::Infallible,
        > + Send,
    F::Future: Send + 'static,
{
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    // A connection's HTTP life (until its upgrade hands the socket on) is
    // bounded too: keep-alive clients reconnect, idle ones go.
    let lifetime = tokio::time::sleep(PRE_UPGRADE_LIFETIME);
    tokio::pin!(lifetime);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = &mut lifetime => {
            debug!(%peer, "http connection ended: pre-upgrade lifetime reached");
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(1), conn).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        // hyper answers a request it cannot parse itself (400, 414, 431);
        // count those refusals with ours.
        if let Some(status) = hyper_refusal(&e) {
            metrics.count_response(status);
        }
        debug!(%peer, error = %e, "http connection ended with an error");
    }
}

/// The status hyper wrote for a request it refused before our service saw
/// it, if it wrote one.
fn hyper_refusal(e: &hyper::Error) -> Option<hyper::StatusCode> {
    if !e.is_parse() {
        return None;
    }
    Some(if e.is_parse_too_large() {
        if e.to_string().contains("URI too long") {
            hyper::StatusCode::URI_TOO_LONG
        } else {
            hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        }
    } else {
        hyper::StatusCode::BAD_REQUEST
    })
}

/// Resolves once shutdown has begun (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not be held across an await.
    let _ = stop.wait_for(|stopping| *stopping).await;
}
