//! What one shard's request handlers and connection tasks share, and the
//! server-wide counters in it. Its own module, so the HTTP layer and the
//! connection tasks depend on it rather than on the server that builds it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::ServerConfig;
use crate::hub_task::{BusLoad, Event};
use crate::metrics::Metrics;
use crate::outbox::WriterGauge;
use crate::shutdown::TaskTracker;

/// State every request handler and connection task of one shard shares;
/// the counters and flags in it are the whole server's.
#[derive(Debug)]
pub struct Shared {
    pub config: ServerConfig,
    /// This shard's hub task.
    pub hub: mpsc::Sender<Event>,
    /// WebSocket connections holding a [`ConnectionSlot`] (all shards).
    pub(crate) live: Arc<AtomicUsize>,
    /// Accepted sockets still in their HTTP phase (all shards).
    pub(crate) pre_upgrade: Arc<AtomicUsize>,
    pub(crate) next_conn: Arc<AtomicU64>,
    /// WebSocket connections that reached a hub (all shards).
    pub opened: Arc<AtomicU64>,
    pub(crate) stopping: Arc<AtomicBool>,
    pub tracker: TaskTracker,
    /// This shard's writers woken and not yet running (see
    /// [`crate::outbox`]); also carries the server's outbox and writer
    /// counters for `/metrics`.
    pub gauge: Arc<WriterGauge>,
    /// Everything else `/metrics` reports. Shared with the hub tasks apart
    /// from `Shared`: a hub task must not hold `Shared`, whose sender
    /// keeps its channel open.
    pub metrics: Arc<Metrics>,
    /// Messages in flight between shards; readers wait while it is high.
    pub bus: Arc<BusLoad>,
    /// When the server started (the API's `info` uptime).
    pub started: tokio::time::Instant,
    /// The TLS acceptor, with `--tls-cert`/`--tls-key`.
    pub tls: Option<crate::tls::Acceptor>,
    /// Connections and handshakes per IP (all shards).
    pub ip_limits: Arc<crate::limits::IpLimits>,
    /// The Redis engine, when the node is one of several (the API reaches
    /// the other nodes through it).
    pub cluster: Option<crate::store::redis::RedisHandle>,
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
