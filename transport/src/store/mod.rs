//! The SQLite engine: channels' streams made durable under `--data-dir`.
//!
//! [`SqliteStore`] carries out [`hubbub_core::StoreRequest`]s in batches,
//! one transaction per batch (group commit), and answers each with its
//! [`hubbub_core::StoreEvent`] only once the batch is committed. [`spawn`]
//! runs it on a thread of its own (`hubbub-store`), so a hub never waits on
//! the disk: it submits through a [`StoreHandle`] and gets its answers on
//! its shard's channel, in the order it asked.
//!
//! - [`sqlite`]: the file, its schema and its checks at open; `execute`
//!   (group commit) and `sweep` (retention by `history_ttl`).
//! - [`thread`]: the store thread, batching and shutdown.
//!
//! The file is `hubbub.db` in WAL mode; its schema version is
//! `PRAGMA user_version` ([`SCHEMA_VERSION`]). A store that cannot be used
//! as it is (unreadable, corrupt, newer schema, read-only) is refused at
//! open with an [`OpenError`] that names the file: hubbub never starts
//! empty over existing data.

pub mod redis;
pub mod sqlite;
#[cfg(test)]
mod tests;
pub mod thread;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use sqlite::{SqliteStore, DB_FILE, SCHEMA_VERSION, SWEEP_CHUNK};
pub use thread::{spawn, StoreClosed, StoreHandle};

/// The engine a server's hubs submit their store requests to.
#[derive(Clone)]
pub enum Engine {
    /// SQLite on one node: one writer, so nothing is delivered.
    Sqlite(StoreHandle),
    /// Redis shared by several nodes: it assigns offsets and delivers
    /// every node's publications to the channels a hub follows.
    Redis(redis::RedisHandle),
}

impl Engine {
    /// Queues `request` from `shard` without waiting.
    ///
    /// # Errors
    /// The engine has ended, or (Redis) its queue is full: the request is
    /// given back, to be refused (error 100).
    pub fn submit(
        &self,
        shard: usize,
        request: hubbub_core::StoreRequest,
    ) -> Result<(), StoreClosed> {
        match self {
            Self::Sqlite(handle) => handle.submit(shard, request),
            Self::Redis(handle) => handle.submit(shard, request),
        }
    }

    /// Whether hubs must be made with `Hub::with_delivering_store`.
    #[must_use]
    pub fn delivers(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// The hub of `shard` follows `channel`, which has no stream (only a
    /// delivering engine cares).
    pub fn follow(&self, shard: usize, channel: hubbub_core::ChannelName) {
        if let Self::Redis(handle) = self {
            handle.follow(shard, channel);
        }
    }

    /// A publication without a position for the other nodes.
    pub fn broadcast(
        &self,
        channel: hubbub_core::ChannelName,
        publication: hubbub_core::bus::Stored,
    ) {
        if let Self::Redis(handle) = self {
            handle.broadcast(channel, publication);
        }
    }

    /// A local member joined or left a channel (only a delivering engine
    /// cares: it tells the other nodes).
    pub fn presence(&self, change: hubbub_core::PresenceChange) {
        if let Self::Redis(handle) = self {
            handle.presence(change);
        }
    }

    /// A hub no longer follows `channel` (only a delivering engine cares).
    pub fn unfollow(&self, channel: hubbub_core::ChannelName) {
        if let Self::Redis(handle) = self {
            handle.unfollow(channel);
        }
    }

    /// Asks the engine to end once it has answered what was queued.
    pub fn close(&self) {
        match self {
            Self::Sqlite(handle) => handle.close(),
            Self::Redis(handle) => handle.close(),
        }
    }

    /// Waits for the engine's thread to end (after [`Self::close`]).
    pub fn join(&self) {
        match self {
            Self::Sqlite(handle) => handle.join(),
            Self::Redis(handle) => handle.join(),
        }
    }
}

/// `--history-sync`: how hard a commit pushes to the disk. WAL mode always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistorySync {
    /// `PRAGMA synchronous = NORMAL`: the WAL is synced at checkpoints, not
    /// at every commit. The database is never corrupted; a power loss (not
    /// a process crash) may take back the last commits.
    #[default]
    Normal,
    /// `PRAGMA synchronous = FULL`: every commit is synced before it is
    /// acknowledged; durable across a power loss.
    Full,
}

impl HistorySync {
    /// The `PRAGMA synchronous` value.
    #[must_use]
    pub const fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

impl fmt::Display for HistorySync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Full => "full",
        })
    }
}

impl FromStr for HistorySync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            _ => Err(format!("expected `normal` or `full`, not `{s}`")),
        }
    }
}

/// Why a store could not be opened: the file and what is wrong with it.
#[derive(Debug)]
pub struct OpenError {
    /// The data directory or the database file.
    pub path: PathBuf,
    pub problem: OpenProblem,
}

/// What is wrong with a store at open.
#[derive(Debug)]
pub enum OpenProblem {
    /// The data directory could not be created or is not a directory.
    Directory(std::io::Error),
    /// The path exists but is not a regular file.
    NotAFile,
    /// SQLite could not open or read the file.
    Unreadable(String),
    /// The file is not an SQLite database.
    NotADatabase(String),
    /// The database failed its integrity check.
    Corrupt(String),
    /// Written by a newer hubbub.
    NewerSchema { found: i64, supported: i64 },
    /// An SQLite database, but not a hubbub store.
    Foreign(String),
    /// The file or its directory cannot be written.
    ReadOnly(String),
    /// The disk is full (refused only for a new file: an existing store
    /// opens, and its appends fail until space is freed).
    Full(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.problem {
            OpenProblem::Directory(e) => write!(
                f,
                "cannot use the data directory {path}: {e}; \
                 create it (writable by hubbub) or pass another --data-dir"
            ),
            OpenProblem::NotAFile => write!(
                f,
                "the history store {path} is not a regular file; \
                 move it aside or pass another --data-dir"
            ),
            OpenProblem::Unreadable(e) => write!(
                f,
                "cannot read the history store {path}: {e}; \
                 check its permissions and the disk, or restore it from a backup"
            ),
            OpenProblem::NotADatabase(e) => write!(
                f,
                "the history store {path} is not an SQLite database ({e}); \
                 restore it from a backup, or move it aside to start with empty history"
            ),
            OpenProblem::Corrupt(e) => write!(
                f,
                "the history store {path} is corrupt ({e}); \
                 restore it from a backup, or move it aside to start with empty history"
            ),
            OpenProblem::NewerSchema { found, supported } => write!(
                f,
                "the history store {path} has schema version {found}, \
                 newer than this hubbub supports ({supported}); \
                 run the newer hubbub, or restore a backup made by this version"
            ),
            OpenProblem::Foreign(e) => write!(
                f,
                "{path} is an SQLite database but not a hubbub history store ({e}); \
                 move it aside or pass another --data-dir"
            ),
            OpenProblem::Full(e) => write!(
                f,
                "the history store {path} cannot be written ({e}); free space on its disk"
            ),
            OpenProblem::ReadOnly(e) => write!(
                f,
                "the history store {path} cannot be written ({e}); \
                 hubbub needs write access to the file and its directory \
                 (for the -wal and -shm files)"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// The store's counters, shared with `/metrics` (relaxed atomics: each is
/// exact, a scrape may see them a batch apart).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Appends answered `Ok`.
    pub appends: AtomicU64,
    /// Opens answered `Ok`.
    pub opens: AtomicU64,
    /// Requests answered with an error (a failed batch, corrupt rows).
    pub failed_requests: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Transactions that failed and were rolled back.
    pub failed_commits: AtomicU64,
    /// Requests in all batches (divided by batches: the mean batch).
    pub batched_requests: AtomicU64,
    /// Batches executed (committed or failed).
    pub batches: AtomicU64,
    /// Time spent executing batches, microseconds.
    pub commit_micros: AtomicU64,
    /// Publications removed by the retention sweep.
    pub swept: AtomicU64,
    /// Sweep steps that failed.
    pub failed_sweeps: AtomicU64,
}

impl StoreStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value.
    #[must_use]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
