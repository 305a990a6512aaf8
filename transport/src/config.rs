//! Server settings: the hub's limits plus what only the transport needs.
//!
//! Kept apart from the command line ([`crate::cli`]) so tests and embedders
//! build a [`ServerConfig`] directly.

use std::fmt;
use std::time::Duration;

use hubbub_core::{Config, ConfigError};

/// Events from connections to the hub task that may wait in its channel.
/// Bounded so a flooding reader is slowed down instead of buffered.
pub(crate) const HUB_CHANNEL_CAPACITY: usize = 4096;

/// After the server's close frame is written, how long the reader keeps
/// reading for the client's close reply (or draining what the client still
/// sends) before the socket is dropped. Draining avoids a TCP reset that
/// could destroy the close frame before the client reads it.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How long the HTTP layer waits for a request's headers.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Fresh entropy for the hub (client ids, channel epochs): from the
/// operating system's random keys, mixed with the clock, so every start differs.
#[must_use]
pub fn entropy() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Where channels' streams (history, offsets, epochs) are kept.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// In memory, in each hub: gone when the process ends.
    #[default]
    Memory,
    /// SQLite under `dir` (file `hubbub.db`), committed in batches on a
    /// thread of its own; a publication is fanned out and acknowledged once
    /// its commit is done.
    Sqlite {
        dir: std::path::PathBuf,
        sync: crate::store::HistorySync,
    },
    /// Redis at `url`, shared by every node started with it: offsets are
    /// assigned there, and every node's publications reach every node.
    /// (Several URLs: channels spread over the instances by a hash of their name.)
    Redis {
        urls: Vec<String>,
        /// How long a node's presence entries outlive it (`--presence-ttl`).
        presence_ttl: std::time::Duration,
    },
}

/// Everything [`crate::serve`] needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The hub's limits: heartbeat, message size, queue size, connection cap.
    pub hub: Config,
    /// A batch of writes to one connection that takes longer than this ends
    /// the connection (`CloseReason::WriteTimeout`).
    pub write_timeout: Duration,
    /// Shards: threads, each with its own runtime, hub and connections.
    pub shards: usize,
    /// A woken writer waits this long before writing, to send more per
    /// syscall (`None`: writes at once, the default).
    pub write_coalesce: Option<Duration>,
    /// Where streams are kept (in memory unless configured: the command
    /// line defaults to SQLite under `./hubbub-data`).
    pub store: StoreConfig,
    /// The server HTTP API's key (`None`: the API is off, `/api/…` is 404).
    pub api_key: Option<crate::api::ApiKey>,
    /// Serve HTTPS and WSS with these PEM files (`None`: plain).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Open client sockets of any kind (WebSockets and connections still in
    /// their HTTP phase); one accepted beyond it is answered 503 and closed.
    pub max_sockets: usize,
    /// Browser origins allowed to open WebSockets (empty: any).
    pub origins: crate::origin::OriginPolicy,
    /// Per-IP connection and handshake limits.
    pub ip_limits: crate::limits::IpLimitConfig,
    /// `--record-inputs`: write every hub input to a file (off: `None`).
    pub record: Option<crate::record::RecordConfig>,
}

/// The most shards a server runs.
pub const MAX_SHARDS: usize = 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hub: Config::default(),
            write_timeout: Duration::from_secs(10),
            shards: 1,
            write_coalesce: None,
            store: StoreConfig::Memory,
            api_key: None,
            tls: None,
            max_sockets: 101_024,
            origins: crate::origin::OriginPolicy::default(),
            ip_limits: crate::limits::IpLimitConfig::default(),
            record: None,
        }
    }
}

/// Why a [`ServerConfig`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerConfigError {
    Hub(ConfigError),
    ZeroWriteTimeout,
    Shards,
    /// `--record-inputs` records one shard (bus messages are not recorded).
    RecordNeedsOneShard,
}

impl fmt::Display for ServerConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hub(e) => e.fmt(f),
            Self::ZeroWriteTimeout => f.write_str("write timeout must be greater than zero"),
            Self::Shards => write!(f, "shards must be between 1 and {MAX_SHARDS}"),
            Self::RecordNeedsOneShard => f.write_str(
                "--record-inputs needs --shards 1 (messages between shards are not recorded yet)",
            ),
        }
    }
}

impl std::error::Error for ServerConfigError {}

impl ServerConfig {
    /// Checks the settings make sense together.
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn validate(&self) -> Result<(), ServerConfigError> {
        self.hub.validate().map_err(ServerConfigError::Hub)?;
        if self.write_timeout.is_zero() {
            return Err(ServerConfigError::ZeroWriteTimeout);
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(ServerConfigError::Shards);
        }
        if self.record.is_some() && self.shards != 1 {
            return Err(ServerConfigError::RecordNeedsOneShard);
        }
        Ok(())
    }

    /// How long shutdown waits for connections to flush and close.
    #[must_use]
    pub fn shutdown_grace(&self) -> Duration {
        self.write_timeout + Duration::from_secs(1)
    }
}
