//! # hubbub
//!
//! The hubbub chat server: a dumb pipe between sockets, timers and the
//! [`hubbub_core::Hub`] state machine, which owns every chat rule. hyper
//! answers HTTP and performs the WebSocket upgrade; fastwebsockets parses
//! client frames; the server encodes its own frames and writes them in
//! batches.
//!
//! Run it in-process (as the tests do):
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let stop = async { let _ = tokio::signal::ctrl_c().await; };
//! hubbub::serve(listener, hubbub::ServerConfig::default(), stop).await
//! # }
//! ```
//!
//! ## Layout
//! - [`server`]: [`serve`], the accept loop with back-off, HTTP connection tasks, graceful shutdown.
//! - [`http`]: routes (`/health`, `/metrics`, the page, `/ws…`) and pre-upgrade validation (JSON errors: 400/404/405/426/503).
//! - [`api`]: the server HTTP API (`POST /api/<method>`, `--api-key`): auth, limits, hand-off to a hub.
//! - [`tls`]: `--tls-cert`/`--tls-key`: rustls, and reading TLS without an idle buffer.
//! - [`static_files`]: the browser chat page at `/`, embedded, with its CSP and cache headers.
//! - [`metrics`]: `GET /metrics` in the Prometheus text format: the hub's published counters, outbox and writer atomics.
//! - [`connection`]: one WebSocket's life: upgrade, socket split, reader and writer, logs.
//! - [`reader`]: client frames → hub inputs; fragment reassembly and limits.
//! - [`writer`]: outbox → vectored writes under a deadline; the close sequence.
//! - [`outbox`]: the bounded per-connection queue between hub task and writer.
//! - [`wire`]: server frame encoding and write batches.
//! - [`hub_task`]: per shard, the task that owns its hub, its clock, its timer and its bus links.
//! - [`state`]: what a shard's handlers and connection tasks share (built by [`server`]).
//! - [`shutdown`]: task tracking and signals.
//! - [`config`], [`cli`]: settings and the command line.
//!
//! ## Invariants
//! - Only the hub task touches the [`hubbub_core::Hub`]; it never awaits a
//!   socket. A slow client fills its own outbox and is evicted by the core.
//!   The hub does yield (a bounded number of times) while writers it woke
//!   have not been scheduled yet, so scheduling lag under a burst is not
//!   mistaken for a slow client; a writer blocked on its socket never
//!   holds the hub up.
//! - Every queue is bounded: the hub channel, each outbox (`--send-queue`
//!   messages plus one batch being written), pending pongs.
//! - `read_frame` is never raced in a `select!`; a reader is only aborted
//!   once nothing will read from its socket again.
//! - Exactly one close frame is written per connection.
//! - Metrics cost the message path one relaxed `fetch_add` per push (and
//!   per batch written); the hub's counters reach `/metrics` as a snapshot
//!   the hub task publishes, so a scrape never goes through the hub task.
#![forbid(unsafe_code)]

pub mod api;
pub mod api_cluster;
pub mod auth;
pub mod bounded;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod connection;
pub mod http;
pub mod hub_task;
pub mod limits;
pub mod log_budget;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod reader;
pub mod record;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod static_files;
pub mod store;
pub mod tls;
pub mod wire;
pub mod writer;

pub use config::{ServerConfig, ServerConfigError};
pub use server::serve;
