//! One WebSocket connection's life: upgrade, register with the hub, run a
//! reader task and a writer, log the open and the close.
//!
//! After the upgrade the raw `TcpStream` is taken back from hyper
//! (`Upgraded::downcast`) and split into owned halves, so reading and
//! writing never contend for a lock; bytes hyper had already read past the
//! handshake are read first. If the downcast ever fails (another IO type),
//! `tokio::io::split` is the fallback.
//!
//! The reader and the writer each run in a task of their own, and the task
//! that did the upgrade ends (its state would otherwise be most of an idle
//! connection's memory). When the writer has written the close frame, the
//! reader gets a short linger (1 s) to see the client's close reply or end
//! of stream, then is aborted. Aborting is the
//! only way `read_frame` is ever cancelled, and nothing reads afterwards.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::log_budget::{self, LogLine};
use fastwebsockets::upgrade::UpgradeFut;
use hubbub_core::{Codec, ConnId, Route};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::bounded::{Source, WaitReadable};
use crate::config::CLOSE_LINGER;
use crate::hub_task::Event;
use crate::outbox::Outbox;
use crate::reader;
use crate::shutdown::TaskToken;
use crate::state::{ConnectionSlot, Shared};
use crate::tls::Lookahead;
use crate::writer::{self, WriterEnd};
use tokio_rustls::server::TlsStream;

/// Everything a connection task starts with.
pub struct Accepted {
    pub conn: ConnId,
    pub peer: SocketAddr,
    pub route: Route,
    pub upgrade: UpgradeFut,
    /// Counts the connection against `max_connections` until dropped.
    pub slot: ConnectionSlot,
    /// Counts it against its address's limit until dropped.
    pub ip: crate::limits::IpGuard,
    pub token: TaskToken,
}

/// Takes one connection from the completed handshake to its two tasks.
///
/// This task ends once the reader and writer tasks run: an idle connection
/// then costs only their (small) states, not this one's as well.
pub async fn run(shared: Arc<Shared>, accepted: Accepted) {
    let Accepted {
        conn,
        peer,
        route,
        upgrade,
        slot,
        ip,
        token,
    } = accepted;
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            debug!(conn = conn.0, %peer, error = %e, "upgrade failed");
            return;
        }
    };
    let upgraded = ws.into_inner().into_inner();
    let guards = Guards {
        _slot: slot,
        _ip: ip,
        _token: token,
    };
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            let read = Source::new(&parts.read_buf, read);
            // `read_buf` is a slice of hyper's 8 KiB read buffer: let it go
            // now, not when the connection ends.
            drop(parts.read_buf);
            start(shared, conn, peer, route, read, write, guards).await;
        }
        Err(upgraded) => match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
            // TLS: split (a short lock per poll), read one frame at a time,
            // and wait for the next one by reading a byte ahead.
            Ok(parts) => {
                debug!(conn = conn.0, "tls: reading one frame at a time");
                let (read, write) = tokio::io::split(parts.io.into_inner());
                let read = Lookahead::new(&parts.read_buf, read);
                drop(parts.read_buf);
                start(shared, conn, peer, route, read, write, guards).await;
            }
            Err(upgraded) => {
                debug!(
                    conn = conn.0,
                    "unknown IO under the upgrade: reading unbounded"
                );
                let (read, write) = tokio::io::split(TokioIo::new(upgraded));
                start(shared, conn, peer, route, read, write, guards).await;
            }
        },
    }
}

/// What a connection holds until its writer is done: its place under
/// `--max-connections` and the shutdown tracker's count.
struct Guards {
    _slot: ConnectionSlot,
    _ip: crate::limits::IpGuard,
    _token: TaskToken,
}

/// Registers the connection with the hub and spawns its reader and writer.
async fn start<R, W>(
    shared: Arc<Shared>,
    conn: ConnId,
    peer: SocketAddr,
    route: Route,
    read: R,
    write: W,
    guards: Guards,
) where
    R: AsyncRead + WaitReadable + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let codec = match route {
        Route::Relay => Codec::Relay,
        Route::Room { .. } => Codec::SeedJson,
        Route::Centrifuge => Codec::Centrifuge,
    };
    let max_message_bytes = if codec == Codec::Centrifuge {
        shared.config.hub.max_command_bytes
    } else {
        shared.config.hub.max_message_bytes
    };
    let outbox = Arc::new(Outbox::for_codec(
        shared.config.hub.send_queue,
        shared.gauge.clone(),
        codec,
    ));
    if let LogLine::Log { suppressed } = log_budget::CONNECTIONS.line() {
        info!(conn = conn.0, %peer, route = %describe(&route), suppressed, "connection opened");
    }
    let open = Event::Open {
        conn,
        route,
        outbox: outbox.clone(),
    };
    if shared.hub.send(open).await.is_err() {
        return; // the hub is gone: the server is stopping
    }
    shared.opened.fetch_add(1, Ordering::Relaxed);
    let reader = tokio::spawn(reader::run(
        read,
        conn,
        max_message_bytes,
        outbox.clone(),
        shared.hub.clone(),
    ));
    tokio::spawn(write_until_closed(
        shared, conn, outbox, write, reader, guards,
    ));
}

/// The writer task: writes until the connection closes, gives the reader a
/// short linger to see the client's close reply, logs the close.
// Not an `async fn` on purpose: its arguments would be stored twice.
#[allow(clippy::manual_async_fn)]
fn write_until_closed<W>(
    shared: Arc<Shared>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    write: W,
    mut reader: JoinHandle<()>,
    guards: Guards,
) -> impl std::future::Future<Output = ()>
where
    W: AsyncWrite + Unpin,
{
    // An `async move` block, not an `async fn`: see `reader::run`.
    async move {
        let opened = Instant::now();
        let end = writer::run(
            write,
            conn,
            &outbox,
            shared.config.write_timeout,
            shared.config.write_coalesce.as_ref(),
            &shared.hub,
        )
        .await;
        match end {
            WriterEnd::Closed(_) => {
                if tokio::time::timeout(CLOSE_LINGER, &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                }
            }
            WriterEnd::Failed(_) => reader.abort(),
        }
        let reason = end.reason();
        // `suppressed`: connection lines left out since the last one logged
        // (at most `LINES_PER_SECOND` a second are logged one by one).
        if let LogLine::Log { suppressed } = log_budget::CONNECTIONS.line() {
            info!(
                conn = conn.0,
                reason = %reason,
                code = reason.code_for(outbox.codec()).0,
                clean = matches!(end, WriterEnd::Closed(_)),
                duration_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
                suppressed,
                "connection closed"
            );
        }
        drop(guards);
    }
}

fn describe(route: &Route) -> String {
    match route {
        Route::Relay => "relay".to_owned(),
        Route::Room { room, username, .. } => format!("room={room:?} user={username:?}"),
        Route::Centrifuge => "centrifuge".to_owned(),
    }
}
