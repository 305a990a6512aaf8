//! `hubbub.db`: the schema, the checks at open, group commit and the sweep.
//!
//! ```sql
//! streams(channel TEXT PRIMARY KEY, epoch INTEGER NOT NULL, top INTEGER NOT NULL,
//!         size INTEGER NOT NULL, ttl_ms INTEGER NOT NULL) WITHOUT ROWID
//! publications(channel TEXT, offset INTEGER, at_ms INTEGER, data BLOB,
//!              text TEXT NULL, user TEXT NULL, client BLOB,
//!              PRIMARY KEY (channel, offset)) WITHOUT ROWID
//! ```
//!
//! `epoch` is the u64 bit-cast to i64; `client` the 16 big-endian bytes of
//! the `ClientId`; `at_ms` wall-clock milliseconds since the Unix epoch;
//! `size` and `ttl_ms` the limits last used with the stream (for the sweep).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hubbub_core::bus::Stored;
use hubbub_core::{
    ClientId, Name, StoreError, StoreEvent, StoreRequest, StreamLimits, StreamState, Timestamp,
};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{HistorySync, OpenError, OpenProblem, StoreStats};

/// The database file in the data directory.
pub const DB_FILE: &str = "hubbub.db";

/// The schema this hubbub writes (`PRAGMA user_version`). Version 2 added
/// the publisher's `conn_info` and `chan_info`; a version 1 store is
/// upgraded in place when opened (two nullable columns).
pub const SCHEMA_VERSION: i64 = 2;

/// WAL pages (4 KiB) after which a commit checkpoints (SQLite's default
/// is 1,000).
pub const WAL_CHECKPOINT_PAGES: i64 = 100;

/// Bytes of WAL kept after a checkpoint (`PRAGMA journal_size_limit`).
pub const WAL_SIZE_LIMIT: i64 = 16 << 20;

/// Rows removed per sweep step: short write transactions, so appends
/// queued behind the sweep wait milliseconds at most.
pub const SWEEP_CHUNK: u32 = 512;

const SCHEMA: &str = "
CREATE TABLE streams (
    channel TEXT PRIMARY KEY NOT NULL,
    epoch INTEGER NOT NULL,
    top INTEGER NOT NULL,
    size INTEGER NOT NULL,
    ttl_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE publications (
    channel TEXT NOT NULL,
    offset INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    text TEXT,
    user TEXT,
    client BLOB NOT NULL,
    conn_info BLOB,
    chan_info BLOB,
    PRIMARY KEY (channel, offset)
) WITHOUT ROWID;
";

/// From schema 1 to 2.
const UPGRADE_1_TO_2: &str = "
ALTER TABLE publications ADD COLUMN conn_info BLOB;
ALTER TABLE publications ADD COLUMN chan_info BLOB;
";

const SELECT_STREAM: &str = "SELECT epoch, top FROM streams WHERE channel = ?1";
const INSERT_STREAM: &str =
    "INSERT INTO streams (channel, epoch, top, size, ttl_ms) VALUES (?1, ?2, 0, ?3, ?4)";
const UPDATE_STREAM: &str =
    "UPDATE streams SET top = ?2, size = ?3, ttl_ms = ?4 WHERE channel = ?1";
const INSERT_PUBLICATION: &str = "INSERT INTO publications \
     (channel, offset, at_ms, data, text, user, client, conn_info, chan_info) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const SELECT_TAIL: &str = "SELECT offset, at_ms, data, text, user, client, conn_info, chan_info \
     FROM publications \
     WHERE channel = ?1 AND offset > ?3 ORDER BY offset DESC LIMIT ?2";
const TRIM: &str = "DELETE FROM publications WHERE channel = ?1 AND offset <= ?2";
const SWEEP: &str = "DELETE FROM publications WHERE channel = ?1 AND offset IN \
     (SELECT offset FROM publications WHERE channel = ?1 AND at_ms < ?2 \
      ORDER BY offset LIMIT ?3)";

/// The SQLite engine. Not shared: one thread owns it ([`super::spawn`]).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    stats: Arc<StoreStats>,
    /// Streams still to sweep, with their cutoff (see [`Self::sweep_step`]).
    sweeping: Vec<(String, i64)>,
    /// Mixed into the epoch of a stream created by an `Append`.
    fresh: u64,
}

/// A stream as a batch sees it.
struct Stream {
    epoch: u64,
    top: u64,
    /// Offsets up to here are beyond a size this batch used: deleted at
    /// its end, and not in the tail an `Open` returns meanwhile.
    floor: u64,
    /// The last limits used, written back at the end of the batch.
    limits: Option<StreamLimits>,
}

impl Stream {
    /// What `MemoryStore` drops for `limits.size` now, dropped at the end
    /// of the batch.
    fn trim(&mut self, limits: StreamLimits) {
        let beyond = self.top.saturating_sub(u64::from(limits.size));
        self.floor = self.floor.max(beyond);
    }
}

/// An error that fails the whole batch (the transaction is rolled back).
type SqlResult<T> = rusqlite::Result<T>;

impl SqliteStore {
    /// Opens (or creates) `dir/hubbub.db`, checking it can be used as it is.
    ///
    /// # Errors
    /// An [`OpenError`] naming the file and what is wrong: the directory
    /// cannot be created, the file is unreadable, not a database, corrupt,
    /// of a newer schema, not a hubbub store, or cannot be written.
    pub fn open(dir: &Path, sync: HistorySync) -> Result<Self, OpenError> {
        let fail = |path: &Path, problem| OpenError {
            path: path.to_owned(),
            problem,
        };
        fs::create_dir_all(dir).map_err(|e| fail(dir, OpenProblem::Directory(e)))?;
        let path = dir.join(DB_FILE);
        match fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => return Err(fail(&path, OpenProblem::NotAFile)),
            Ok(meta) if meta.len() == 0 => {
                tracing::warn!(path = %path.display(), "history store is an empty file; initialising it");
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(&path, OpenProblem::Unreadable(e.to_string()))),
        }
        let conn = Self::check(&path, sync).map_err(|problem| fail(&path, problem))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Self {
            conn,
            path,
            stats: Arc::default(),
            sweeping: Vec::new(),
            fresh: now_nanos(),
        })
    }

    /// Opens the file and runs every check at start.
    fn check(path: &Path, sync: HistorySync) -> Result<Connection, OpenProblem> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| problem(&e))?;
        // SQLite opens a file it may not write read-only, silently.
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| problem(&e))?
        {
            return Err(OpenProblem::ReadOnly("opened read-only".into()));
        }
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| problem(&e))?;
        // The first read of the header: "file is not a database" here.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| problem(&e))?;
        if version > SCHEMA_VERSION {
            return Err(OpenProblem::NewerSchema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // Checked before anything is written, so nothing is changed in a
        // file that is refused.
        quick_check(&conn)?;
        if version == 0 {
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| problem(&e))?;
            if tables > 0 {
                return Err(OpenProblem::Foreign(format!(
                    "schema version 0 with {tables} tables or indexes"
                )));
            }
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| problem(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenProblem::ReadOnly(format!(
                "cannot switch to WAL mode (journal mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", sync.pragma())
            .map_err(|e| problem(&e))?;
        // After a checkpoint the WAL is cut back to this, rather than kept
        // at the largest size it ever reached.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(|e| problem(&e))?;
        // Small, frequent checkpoints: each one (a copy and a sync, inside
        // the commit that crosses the threshold) delays that commit's
        // publications, and a small one delays them least. Measured on the
        // rooms benchmark (BENCHMARKS.md): p99 6.1 ms at SQLite's 1,000
        // pages, 4.7 ms at 300, 4.4 ms at 100, 37 ms at 10,000; a second
        // connection checkpointing on its own thread was worse (15 ms): its
        // syncs stall the writer's appends to the same file.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(|e| problem(&e))?;
        // A write at every start: a store that cannot be written is refused
        // now, not at the first publication.
        let tx = conn
            .unchecked_transaction()
            .and_then(|tx| {
                if version == 0 {
                    tx.execute_batch(SCHEMA)?;
                }
                if version == 1 {
                    tx.execute_batch(UPGRADE_1_TO_2)?;
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()
            })
            .map_err(|e| problem(&e));
        match tx {
            Ok(()) => {}
            // A full disk is a storage failure like any other: the store is
            // intact and readable, appends fail until space is freed. Not
            // for a new file, which must get its schema first.
            Err(OpenProblem::Full(m)) if version > 0 => {
                tracing::warn!(path = %path.display(), error = %m, "history store: the disk is full; publications to channels with history will fail until space is freed");
            }
            Err(OpenProblem::Unreadable(m) | OpenProblem::Full(m)) => {
                return Err(OpenProblem::ReadOnly(m));
            }
            Err(other) => return Err(other),
        }
        if version == 0 {
            tracing::info!(path = %path.display(), schema = SCHEMA_VERSION, "history store created");
        }
        Ok(conn)
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters (for `/metrics`).
    #[must_use]
    pub fn stats(&self) -> Arc<StoreStats> {
        Arc::clone(&self.stats)
    }

    /// Carries out `batch` in one transaction and answers every request, in
    /// order. If the transaction fails (disk full, IO error) nothing of it
    /// is kept and every request is answered with the error; the store is
    /// usable again for the next batch.
    pub fn execute(&mut self, batch: Vec<StoreRequest>) -> Vec<StoreEvent> {
        if batch.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let n = batch.len() as u64;
        let outcome = self.transact(&batch);
        let stats = &self.stats;
        StoreStats::add(&stats.batches, 1);
        StoreStats::add(&stats.batched_requests, n);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        StoreStats::add(&stats.commit_micros, micros);
        match outcome {
            Ok(answers) => {
                StoreStats::add(&stats.commits, 1);
                batch
                    .into_iter()
                    .zip(answers)
                    .map(|(request, answer)| answer_event(stats, request, answer))
                    .collect()
            }
            Err(e) => {
                StoreStats::add(&stats.failed_commits, 1);
                StoreStats::add(&stats.failed_requests, n);
                if !self.conn.is_autocommit() {
                    // Normally rolled back when the transaction was dropped.
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    requests = n,
                    "history store: a batch failed and was rolled back; its publications were refused"
                );
                let error = StoreError::new(format!("history store write failed: {e}"));
                batch
                    .into_iter()
                    .map(|request| request.fail(error.clone()))
                    .collect()
            }
        }
    }

    /// The transaction of a batch: per request, its answer (a request whose
    /// rows are corrupt fails alone); an SQL error fails them all.
    fn transact(&mut self, batch: &[StoreRequest]) -> SqlResult<Vec<Result<Answer, StoreError>>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut streams: HashMap<&str, Result<Stream, StoreError>> = HashMap::new();
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch {
            let channel = request.channel().as_str();
            let answer = match request {
                StoreRequest::Open {
                    new_epoch,
                    limits,
                    now,
                    ..
                } => {
                    let stream = load(&tx, &mut streams, channel, *new_epoch, *limits)?;
                    match stream {
                        Ok(stream) => {
                            stream.limits = Some(*limits);
                            stream.trim(*limits);
                            let (top, epoch, floor) = (stream.top, stream.epoch, stream.floor);
                            match tail(&tx, channel, *limits, floor, *now)? {
                                Ok(tail) => Ok(Answer::Opened(StreamState { top, epoch, tail })),
                                Err(e) => Err(e),
                            }
                        }
                        Err(e) => Err(e.clone()),
                    }
                }
                StoreRequest::Append {
                    publication,
                    limits,
                    ..
                } => {
                    // A stream is opened before it is appended to; if it is
                    // missing anyway, it starts with an epoch of its own.
                    self.fresh = self.fresh.wrapping_add(1);
                    let epoch = hubbub_core::hub::mix64(self.fresh ^ now_nanos());
                    match load(&tx, &mut streams, channel, epoch, *limits)? {
                        Ok(stream) => {
                            let offset = stream.top + 1;
                            tx.prepare_cached(INSERT_PUBLICATION)?.execute(params![
                                channel,
                                to_sql(offset),
                                to_sql(publication.at.as_millis()),
                                publication.data.as_ref(),
                                publication.text.as_deref(),
                                publication.user.as_ref().map(Name::as_str),
                                publication.client.0.to_be_bytes().as_slice(),
                                publication
                                    .infos
                                    .as_ref()
                                    .and_then(|i| i.conn_info.as_deref()),
                                publication
                                    .infos
                                    .as_ref()
                                    .and_then(|i| i.chan_info.as_deref()),
                            ])?;
                            stream.top = offset;
                            stream.limits = Some(*limits);
                            stream.trim(*limits);
                            Ok(Answer::Appended(offset, stream.epoch))
                        }
                        Err(e) => Err(e.clone()),
                    }
                }
            };
            answers.push(answer);
        }
        // Once per stream of the batch: its position, limits, and trim.
        for (channel, stream) in &streams {
            let Ok(Stream {
                top,
                floor,
                limits: Some(limits),
                ..
            }) = stream
            else {
                continue;
            };
            tx.prepare_cached(UPDATE_STREAM)?.execute(params![
                channel,
                to_sql(*top),
                i64::from(limits.size),
                ttl_ms(limits.ttl),
            ])?;
            if *floor > 0 {
                tx.prepare_cached(TRIM)?
                    .execute(params![channel, to_sql(*floor)])?;
            }
        }
        tx.commit()?;
        Ok(answers)
    }

    /// Removes every publication older than its stream's ttl at `now`, in
    /// steps of [`SWEEP_CHUNK`] rows. Returns the rows removed.
    ///
    /// # Errors
    /// The first step that failed (what it removed before stays removed).
    pub fn sweep(&mut self, now: Timestamp) -> Result<u64, StoreError> {
        self.start_sweep(now)?;
        let mut removed = 0;
        while let Some(n) = self.sweep_step()? {
            removed += n;
        }
        Ok(removed)
    }

    /// Plans a sweep at `now` (replacing one under way); [`Self::sweep_step`]
    /// carries it out.
    ///
    /// # Errors
    /// Reading the streams failed.
    pub fn start_sweep(&mut self, now: Timestamp) -> Result<(), StoreError> {
        let now = to_sql(now.as_millis());
        let mut statement = self
            .conn
            .prepare_cached("SELECT channel, ttl_ms FROM streams")
            .map_err(|e| self.sweep_failed(&e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .and_then(Iterator::collect::<SqlResult<Vec<_>>>);
        drop(statement);
        let rows = rows.map_err(|e| self.sweep_failed(&e))?;
        self.sweeping = rows
            .into_iter()
            .map(|(channel, ttl)| (channel, now.saturating_sub(ttl.max(0))))
            .collect();
        Ok(())
    }

    /// Whether a sweep is under way.
    #[must_use]
    pub fn sweeping(&self) -> bool {
        !self.sweeping.is_empty()
    }

    /// One short transaction of the sweep under way: `None` when it is
    /// done, else the rows removed.
    ///
    /// # Errors
    /// The delete failed (the sweep is abandoned; the next one retries).
    pub fn sweep_step(&mut self) -> Result<Option<u64>, StoreError> {
        let Some((channel, cutoff)) = self.sweeping.last() else {
            return Ok(None);
        };
        let removed = self
            .conn
            .prepare_cached(SWEEP)
            .and_then(|mut s| s.execute(params![channel, cutoff, SWEEP_CHUNK]));
        match removed {
            Ok(n) => {
                if n < SWEEP_CHUNK as usize {
                    self.sweeping.pop();
                }
                let n = n as u64;
                StoreStats::add(&self.stats.swept, n);
                Ok(Some(n))
            }
            Err(e) => {
                self.sweeping.clear();
                Err(self.sweep_failed(&e))
            }
        }
    }

    fn sweep_failed(&self, e: &rusqlite::Error) -> StoreError {
        StoreStats::add(&self.stats.failed_sweeps, 1);
        tracing::warn!(path = %self.path.display(), error = %e, "history store: the retention sweep failed");
        StoreError::new(format!("history sweep failed: {e}"))
    }

    /// The connection, for tests that break the store on purpose.
    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// A request's answer before it becomes an event.
enum Answer {
    Opened(StreamState),
    Appended(u64, u64),
}

fn answer_event(
    stats: &StoreStats,
    request: StoreRequest,
    answer: Result<Answer, StoreError>,
) -> StoreEvent {
    match (request, answer) {
        (StoreRequest::Open { channel, .. }, Ok(Answer::Opened(state))) => {
            StoreStats::add(&stats.opens, 1);
            StoreEvent::Opened {
                channel,
                result: Ok(state),
            }
        }
        (StoreRequest::Append { channel, token, .. }, Ok(Answer::Appended(offset, epoch))) => {
            StoreStats::add(&stats.appends, 1);
            StoreEvent::Appended {
                channel,
                token,
                result: Ok((offset, epoch)),
            }
        }
        (request, Err(e)) => {
            StoreStats::add(&stats.failed_requests, 1);
            request.fail(e)
        }
        (request, Ok(_)) => request.fail(StoreError::new("history store: internal error")),
    }
}

/// `channel`'s stream in this batch: read once, created with `epoch` if
/// missing. `Ok(Err)`: its row is corrupt (that request fails alone).
fn load<'a, 'b>(
    tx: &Connection,
    streams: &'b mut HashMap<&'a str, Result<Stream, StoreError>>,
    channel: &'a str,
    epoch: u64,
    limits: StreamLimits,
) -> SqlResult<Result<&'b mut Stream, &'b StoreError>> {
    if !streams.contains_key(channel) {
        let row: Option<(i64, i64)> = tx
            .prepare_cached(SELECT_STREAM)?
            .query_row([channel], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let stream = match row {
            Some((epoch, top)) => match u64::try_from(top) {
                Ok(top) => Ok(Stream {
                    epoch: from_sql(epoch),
                    top,
                    floor: 0,
                    limits: None,
                }),
                Err(_) => Err(corrupt(channel, &format!("negative top {top}"))),
            },
            None => {
                tx.prepare_cached(INSERT_STREAM)?.execute(params![
                    channel,
                    to_sql(epoch),
                    i64::from(limits.size),
                    ttl_ms(limits.ttl),
                ])?;
                Ok(Stream {
                    epoch,
                    top: 0,
                    floor: 0,
                    limits: None,
                })
            }
        };
        streams.insert(channel, stream);
    }
    Ok(match streams.get_mut(channel) {
        Some(Ok(stream)) => Ok(stream),
        Some(Err(e)) => Err(e),
        None => unreachable!("inserted above"),
    })
}

/// The retained tail of `channel` at `now`, as `MemoryStore` trims it: the
/// latest `size`, then the oldest dropped while older than the ttl.
fn tail(
    tx: &Connection,
    channel: &str,
    limits: StreamLimits,
    floor: u64,
    now: Timestamp,
) -> SqlResult<Result<Vec<Stored>, StoreError>> {
    let mut statement = tx.prepare_cached(SELECT_TAIL)?;
    let mut rows = statement.query(params![channel, i64::from(limits.size), to_sql(floor)])?;
    let mut tail = Vec::new();
    while let Some(row) = rows.next()? {
        let raw = RawRow {
            offset: row.get(0)?,
            at_ms: row.get(1)?,
            data: row.get(2)?,
            text: row.get(3)?,
            user: row.get(4)?,
            client: row.get(5)?,
            conn_info: row.get(6)?,
            chan_info: row.get(7)?,
        };
        match raw.decode() {
            Ok(stored) => tail.push(stored),
            Err(what) => return Ok(Err(corrupt(channel, &what))),
        }
    }
    tail.reverse();
    let old = tail
        .iter()
        .take_while(|p| now.since(p.at) > limits.ttl)
        .count();
    tail.drain(..old);
    Ok(Ok(tail))
}

/// A publication's row as read, before it is checked.
struct RawRow {
    offset: i64,
    at_ms: i64,
    data: Vec<u8>,
    text: Option<String>,
    user: Option<String>,
    client: Vec<u8>,
    conn_info: Option<Vec<u8>>,
    chan_info: Option<Vec<u8>>,
}

impl RawRow {
    fn decode(self) -> Result<Stored, String> {
        let offset = u64::try_from(self.offset)
            .ok()
            .filter(|&o| o > 0)
            .ok_or_else(|| format!("offset {}", self.offset))?;
        let at = u64::try_from(self.at_ms).map_err(|_| format!("time {}", self.at_ms))?;
        let user = self
            .user
            .map(|u| Name::new(&u).map_err(|_| format!("user {u:?} at offset {offset}")))
            .transpose()?;
        let client: [u8; 16] = self
            .client
            .as_slice()
            .try_into()
            .map_err(|_| format!("client of {} bytes at offset {offset}", self.client.len()))?;
        Ok(Stored {
            offset,
            at: Timestamp::from_millis(at),
            data: Bytes::from(self.data),
            text: self.text.map(Arc::from),
            user,
            client: ClientId(u128::from_be_bytes(client)),
            infos: hubbub_core::bus::infos(
                self.conn_info.map(Bytes::from),
                self.chan_info.map(Bytes::from),
            ),
        })
    }
}

fn corrupt(channel: &str, what: &str) -> StoreError {
    tracing::warn!(channel, what, "history store: a corrupt row");
    StoreError::new(format!(
        "history store: corrupt data in channel {channel}: {what}"
    ))
}

/// `PRAGMA quick_check`: "ok", or the problems found.
fn quick_check(conn: &Connection) -> Result<(), OpenProblem> {
    let mut statement = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| problem(&e))?;
    let found: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .and_then(Iterator::collect)
        .map_err(|e| problem(&e))?;
    if found.len() == 1 && found[0] == "ok" {
        Ok(())
    } else {
        Err(OpenProblem::Corrupt(format!(
            "integrity check: {}",
            found.join("; ")
        )))
    }
}

/// What an SQLite error at open means for the operator.
fn problem(e: &rusqlite::Error) -> OpenProblem {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => OpenProblem::NotADatabase(e.to_string()),
        Some(ErrorCode::DatabaseCorrupt) => OpenProblem::Corrupt(e.to_string()),
        Some(ErrorCode::ReadOnly) => OpenProblem::ReadOnly(e.to_string()),
        Some(ErrorCode::DiskFull) => OpenProblem::Full(e.to_string()),
        _ => OpenProblem::Unreadable(e.to_string()),
    }
}

/// A u64 (epoch, offset, time) as SQLite's i64: a bit cast.
fn to_sql(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn from_sql(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
