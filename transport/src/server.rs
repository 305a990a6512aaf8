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

use hubbub_core::{CloseReason, Input};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::{ServerConfig, HEADER_READ_TIMEOUT, HUB_CHANNEL_CAPACITY};
use crate::http;
use crate::hub_task::{self, Clock, Event};
use crate::metrics::Metrics;
use crate::outbox::WriterGauge;
use crate::shutdown::TaskTracker;

const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long the hub task gets to finish once every connection has.
const HUB_EXIT_WAIT: Duration = Duration::from_secs(1);

/// State every request handler and connection task shares.
#[derive(Debug)]
pub struct Shared {
    pub config: ServerConfig,
    pub hub: mpsc::Sender<Event>,
    /// WebSocket connections holding a [`ConnectionSlot`].
    live: AtomicUsize,
    next_conn: AtomicU64,
    /// WebSocket connections that reached the hub.
    pub opened: AtomicU64,
    stopping: AtomicBool,
    pub tracker: TaskTracker,
    /// Writers woken and not yet running (see [`crate::outbox`]); also
    /// carries the outboxes' and writers' counters for `/metrics`.
    pub gauge: Arc<WriterGauge>,
    /// Everything else `/metrics` reports. Shared with the hub task apart
    /// from `Shared`: the hub task must not hold `Shared`, whose sender
    /// keeps its channel open.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// Takes one of the `max_connections` slots, if any is free.
    pub fn reserve(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.config.hub.max_connections;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }

    /// The next connection id (ids count up from 1 and are never reused).
    pub fn next_conn(&self) -> hubbub_core::ConnId {
        hubbub_core::ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// A reserved WebSocket connection slot, released on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

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
    let (hub_tx, hub_rx) = mpsc::channel(HUB_CHANNEL_CAPACITY);
    let gauge = Arc::new(WriterGauge::default());
    let metrics = Arc::new(Metrics::new());
    let mut hub_task = tokio::spawn(hub_task::run(
        config.hub.clone(),
        Clock::new(Instant::now()),
        gauge.clone(),
        metrics.clone(),
        hub_rx,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let grace = config.shutdown_grace();
    let shared = Arc::new(Shared {
        config,
        hub: hub_tx,
        live: AtomicUsize::new(0),
        next_conn: AtomicU64::new(1),
        opened: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        tracker: tracker.clone(),
        gauge,
        metrics,
    });
    info!(%addr, "listening");

    // The hub task only ends once every connection is gone; ending earlier
    // means it panicked, and the server cannot work without it.
    let mut hub_failed = None;
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            ended = &mut hub_task => hub_failed = Some(ended),
        }
    };
    accept_loop(&listener, &shared, &stop_rx, stop).await;
    drop(listener);
    if let Some(ended) = &hub_failed {
        error!(?ended, "the hub task ended unexpectedly; shutting down");
    }

    let started = Instant::now();
    shared.stopping.store(true, Ordering::Release);
    let open = shared.live.load(Ordering::Acquire);
    info!(websockets = open, "shutting down: stopped accepting");
    let _ = stop_tx.send(true);
    let _ = shared.hub.send(Event::Input(Input::Shutdown)).await;
    let unfinished = tracker.wait(grace).await;
    let opened = shared.opened.load(Ordering::Relaxed);
    drop(shared);
    let stats = match hub_failed {
        Some(_) => None,
        None => tokio::time::timeout(HUB_EXIT_WAIT, hub_task)
            .await
            .ok()
            .and_then(Result::ok),
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if unfinished > 0 {
        warn!(
            unfinished,
            elapsed_ms, "shutdown: connections still open after the grace period were abandoned"
        );
    }
    match stats {
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
        Some(_) => Err(io::Error::other("the hub task failed")),
        None => Ok(()),
    }
}

/// Accepts connections until `shutdown` resolves.
async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    let mut errors = ErrorLog::default();
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                spawn_http(stream, peer, shared, stop.clone());
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
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Chat messages are small and latency matters more than packet count;
    // the writer already batches.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "set_nodelay failed");
    }
    let token = shared.tracker.token();
    let shared = shared.clone();
    tokio::spawn(async move {
        let service = service_fn(move |req| http::handle(shared.clone(), peer, req));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(%peer, error = %e, "http connection ended with an error");
        }
        drop(token);
    });
}

/// Resolves once shutdown has begun (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not be held across an await.
    let _ = stop.wait_for(|stopping| *stopping).await;
}
