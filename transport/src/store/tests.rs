//! The SQLite engine against `MemoryStore`'s semantics, and its failure
//! modes: corrupt file, newer schema, read-only directory, full disk.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hubbub_core::bus::Stored;
use hubbub_core::{
    ChannelName, ClientId, MemoryStore, Name, StoreEvent, StoreRequest, StreamLimits, StreamState,
    Timestamp,
};

use super::*;

/// A directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "hubbub-store-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn db(&self) -> PathBuf {
        self.0.join(DB_FILE)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LIMITS: StreamLimits = StreamLimits {
    size: 2,
    ttl: Duration::from_secs(10),
};

fn publication(at: u64, text: &str) -> Stored {
    Stored {
        offset: 0,
        at: Timestamp::from_millis(at),
        data: Bytes::from(format!("{{\"text\":\"{text}\"}}")),
        text: Some(text.into()),
        user: Some(Name::new("ann").unwrap()),
        client: ClientId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        // Every other one with the publisher's token infos, which must
        // come back as they went in.
        infos: hubbub_core::bus::infos(
            (at % 2 == 0).then(|| Bytes::from_static(br#"{"name":"Ann"}"#)),
            (at % 4 == 0).then(|| Bytes::from_static(br#"{"role":"mod"}"#)),
        ),
    }
}

fn append_request(channel: &str, at: u64, limits: StreamLimits) -> StoreRequest {
    StoreRequest::Append {
        channel: ChannelName::new(channel),
        token: at,
        publication: publication(at, &format!("m{at}")),
        limits,
    }
}

fn open_request(channel: &str, epoch: u64, limits: StreamLimits, now: u64) -> StoreRequest {
    StoreRequest::Open {
        channel: ChannelName::new(channel),
        new_epoch: epoch,
        limits,
        now: Timestamp::from_millis(now),
    }
}

fn one(store: &mut SqliteStore, request: StoreRequest) -> StoreEvent {
    let mut events = store.execute(vec![request]);
    assert_eq!(events.len(), 1);
    events.remove(0)
}

fn append(store: &mut SqliteStore, channel: &str, at: u64) -> (u64, u64) {
    match one(store, append_request(channel, at, LIMITS)) {
        StoreEvent::Appended { result: Ok(r), .. } => r,
        other => panic!("{other:?}"),
    }
}

fn open(store: &mut SqliteStore, channel: &str, epoch: u64, now: u64) -> StreamState {
    open_with(store, channel, epoch, LIMITS, now)
}

fn open_with(
    store: &mut SqliteStore,
    channel: &str,
    epoch: u64,
    limits: StreamLimits,
    now: u64,
) -> StreamState {
    match one(store, open_request(channel, epoch, limits, now)) {
        StoreEvent::Opened { result: Ok(s), .. } => s,
        other => panic!("{other:?}"),
    }
}

fn offsets(state: &StreamState) -> Vec<u64> {
    state.tail.iter().map(|p| p.offset).collect()
}

fn refused(dir: &Path) -> OpenError {
    match SqliteStore::open(dir, HistorySync::Normal) {
        Ok(_) => panic!("{} was opened", dir.display()),
        Err(e) => {
            eprintln!("refused as expected: {e}");
            e
        }
    }
}

#[test]
fn store_round_trip_survives_a_restart() {
    let dir = TempDir::new("restart");
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    assert!(dir.db().is_file(), "created on first start");
    assert_eq!(open(&mut store, "a", 42, 0).epoch, 42);
    assert_eq!(append(&mut store, "a", 1), (1, 42));
    assert_eq!(append(&mut store, "a", 2), (2, 42));
    assert_eq!(append(&mut store, "a", 3), (3, 42));
    drop(store);

    let mut store = SqliteStore::open(&dir.0, HistorySync::Full).unwrap();
    let state = open(&mut store, "a", 99, 3);
    assert_eq!((state.top, state.epoch), (3, 42), "the epoch survives");
    assert_eq!(offsets(&state), [2, 3], "trimmed to the size");
    let mut expected = publication(3, "m3");
    expected.offset = 3;
    assert_eq!(state.tail[1], expected, "every field round-trips");
    let mut expected = publication(2, "m2");
    expected.offset = 2;
    assert!(expected.infos.is_some());
    assert_eq!(state.tail[0], expected, "conn_info too");
    assert_eq!(append(&mut store, "a", 4), (4, 42), "offsets go on");
    // A u64 epoch with the top bit set survives the i64 column.
    assert_eq!(open(&mut store, "b", u64::MAX - 1, 0).epoch, u64::MAX - 1);
    drop(store);
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    assert_eq!(open(&mut store, "b", 5, 0).epoch, u64::MAX - 1);
}

#[test]
fn store_tail_follows_size_and_ttl() {
    let dir = TempDir::new("tail");
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    let limits = StreamLimits {
        size: 3,
        ttl: Duration::from_millis(100),
    };
    open_with(&mut store, "a", 1, limits, 0);
    for at in [10, 20, 30, 40, 50] {
        one(&mut store, append_request("a", at, limits));
    }
    assert_eq!(
        offsets(&open_with(&mut store, "a", 1, limits, 50)),
        [3, 4, 5]
    );
    assert_eq!(offsets(&open_with(&mut store, "a", 1, limits, 135)), [4, 5]);
    assert_eq!(offsets(&open_with(&mut store, "a", 1, limits, 150)), [5]);
    let state = open_with(&mut store, "a", 1, limits, 10_000);
    assert_eq!((state.top, state.tail.len()), (5, 0), "the position stays");
    // Trimmed on disk too: only `size` rows are kept.
    let rows: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM publications", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3);
}

#[test]
fn store_sweep_removes_expired_rows() {
    let dir = TempDir::new("sweep");
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    let limits = StreamLimits {
        size: 5000,
        ttl: Duration::from_secs(1),
    };
    open_with(&mut store, "old", 1, limits, 0);
    open_with(&mut store, "new", 2, limits, 0);
    let mut batch: Vec<_> = (1..=1500)
        .map(|at| append_request("old", at, limits))
        .collect();
    batch.extend((1..=10).map(|i| append_request("new", 100_000 + i, limits)));
    store.execute(batch);
    let removed = store.sweep(Timestamp::from_millis(100_500)).unwrap();
    assert_eq!(removed, 1500, "more than one chunk");
    assert_eq!(StoreStats::get(&store.stats().swept), 1500);
    let old = open_with(&mut store, "old", 9, limits, 100_500);
    assert_eq!((old.top, old.epoch, old.tail.len()), (1500, 1, 0));
    assert_eq!(
        open_with(&mut store, "new", 9, limits, 100_500).tail.len(),
        10
    );
    assert_eq!(store.sweep(Timestamp::from_millis(100_500)).unwrap(), 0);
}

#[test]
fn store_group_commit_numbers_each_channel_contiguously() {
    let dir = TempDir::new("group");
    let mut store = SqliteStore::open(&dir.0, HistorySync::Full).unwrap();
    let limits = StreamLimits {
        size: 100,
        ttl: Duration::from_secs(3600),
    };
    let channels = ["a", "b", "c", "d", "e", "f", "g"];
    let mut batch: Vec<_> = channels
        .iter()
        .map(|c| open_request(c, 7, limits, 0))
        .collect();
    batch.extend((0..1000).map(|i| append_request(channels[i % 7], i as u64, limits)));
    let events = store.execute(batch);
    assert_eq!(events.len(), 1007);
    let mut next = std::collections::HashMap::new();
    for event in events {
        if let StoreEvent::Appended {
            channel, result, ..
        } = event
        {
            let expected = next.entry(channel).or_insert(1_u64);
            assert_eq!(result, Ok((*expected, 7)));
            *expected += 1;
        }
    }
    let stats = store.stats();
    assert_eq!(StoreStats::get(&stats.commits), 1, "one transaction");
    assert_eq!(StoreStats::get(&stats.appends), 1000);
    let a = open_with(&mut store, "a", 0, limits, 0);
    assert_eq!((a.top, a.tail.len()), (143, 100));
}

/// Random batches of opens and appends give exactly `MemoryStore`'s answers.
#[test]
fn store_answers_as_the_memory_store_does() {
    let dir = TempDir::new("model");
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    let mut model = MemoryStore::new(1000);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let channels = ["x", "y", "z"];
    for c in channels {
        store.execute(vec![open_request(c, 3, LIMITS, 0)]);
        model.execute(open_request(c, 3, LIMITS, 0));
    }
    let mut now = 0;
    for _ in 0..300 {
        let batch: Vec<_> = (0..=random(5))
            .map(|_| {
                now += random(4000);
                let c = channels[random(3) as usize];
                let limits = StreamLimits {
                    size: 1 + random(4) as u32,
                    ttl: LIMITS.ttl,
                };
                if random(3) == 0 {
                    open_request(c, 1, limits, now)
                } else {
                    append_request(c, now, limits)
                }
            })
            .collect();
        let expected: Vec<_> = batch.iter().map(|r| model.execute(r.clone())).collect();
        assert_eq!(store.execute(batch), expected);
    }
}

#[test]
fn store_refuses_a_corrupt_file() {
    let dir = TempDir::new("garbage");
    std::fs::create_dir_all(&dir.0).unwrap();
    let garbage: Vec<u8> = (0..8192_u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(dir.db(), &garbage).unwrap();
    let e = refused(&dir.0);
    assert!(matches!(e.problem, OpenProblem::NotADatabase(_)), "{e:?}");
    assert!(e.to_string().contains(&dir.db().display().to_string()));
    assert!(e.to_string().contains("not an SQLite database"));
    assert_eq!(std::fs::read(dir.db()).unwrap(), garbage, "left as it was");
}

#[test]
fn store_refuses_a_database_with_damaged_pages() {
    let dir = TempDir::new("damaged");
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    let limits = StreamLimits {
        size: 10_000,
        ttl: Duration::from_secs(3600),
    };
    store.execute((0..2000).map(|i| append_request("a", i, limits)).collect());
    drop(store); // checkpoints the WAL into the file
    let mut bytes = std::fs::read(dir.db()).unwrap();
    assert!(bytes.len() > 16 * 4096, "{}", bytes.len());
    // Pages 3 to 6 (b-tree pages of the publications) overwritten.
    for b in &mut bytes[2 * 4096..6 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(dir.db(), &bytes).unwrap();
    let e = refused(&dir.0);
    assert!(matches!(e.problem, OpenProblem::Corrupt(_)), "{e:?}: {e}");
    assert!(e.to_string().contains("corrupt"));
}

#[test]
fn store_upgrades_a_version_1_file_in_place() {
    let dir = TempDir::new("upgrade");
    std::fs::create_dir_all(&dir.0).unwrap();
    // A store as the first release wrote it, with one publication.
    let old = rusqlite::Connection::open(dir.db()).unwrap();
    old.execute_batch(
        "CREATE TABLE streams (channel TEXT PRIMARY KEY NOT NULL, epoch INTEGER NOT NULL, \
         top INTEGER NOT NULL, size INTEGER NOT NULL, ttl_ms INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE publications (channel TEXT NOT NULL, offset INTEGER NOT NULL, \
         at_ms INTEGER NOT NULL, data BLOB NOT NULL, text TEXT, user TEXT, client BLOB NOT NULL, \
         PRIMARY KEY (channel, offset)) WITHOUT ROWID;
         INSERT INTO streams VALUES ('a', 7, 1, 10, 3600000);
         INSERT INTO publications VALUES ('a', 1, 1, CAST('{\"text\":\"old\"}' AS BLOB), 'old', 'ann', \
         x'0123456789abcdeffedcba9876543210');
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(old);
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    let state = open(&mut store, "a", 99, 2);
    assert_eq!((state.top, state.epoch, offsets(&state)), (1, 7, vec![1]));
    assert_eq!(state.tail[0].text.as_deref(), Some("old"));
    assert_eq!(state.tail[0].infos, None);
    assert_eq!(append(&mut store, "a", 2), (2, 7));
    drop(store);
    let version: i64 = rusqlite::Connection::open(dir.db())
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

#[test]
fn store_refuses_a_newer_schema_and_a_foreign_database() {
    let dir = TempDir::new("newer");
    drop(SqliteStore::open(&dir.0, HistorySync::Normal).unwrap());
    rusqlite::Connection::open(dir.db())
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let e = refused(&dir.0);
    assert!(
        matches!(
            e.problem,
            OpenProblem::NewerSchema {
                found: 99,
                supported: 2
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("schema version 99"));

    let dir = TempDir::new("foreign");
    std::fs::create_dir_all(&dir.0).unwrap();
    rusqlite::Connection::open(dir.db())
        .unwrap()
        .execute_batch("CREATE TABLE accounts (id INTEGER)")
        .unwrap();
    let e = refused(&dir.0);
    assert!(matches!(e.problem, OpenProblem::Foreign(_)), "{e:?}");
}

/// A data directory that cannot be created (a regular file is in the way):
/// works everywhere, root included.
#[test]
fn store_refuses_a_data_dir_it_cannot_create() {
    let dir = TempDir::new("blocked");
    std::fs::write(&dir.0, b"a file, not a directory").unwrap();
    let e = refused(&dir.0.join("data"));
    assert!(matches!(e.problem, OpenProblem::Directory(_)), "{e:?}");
    assert!(e.to_string().contains("data directory"));
    std::fs::remove_file(&dir.0).unwrap();
}

/// Runs `mount` with `args`; false (loudly) where this process may not.
fn mount(args: &[&str]) -> bool {
    match Command::new("mount").args(args).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "SKIPPED PART: `mount {}` is not permitted here: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("SKIPPED PART: cannot run mount: {e}");
            false
        }
    }
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// A store on a filesystem mounted read-only (permission bits do not stop
/// root; a read-only mount does). Needs `mount`: skipped loudly without.
#[test]
fn store_refuses_a_read_only_directory() {
    let dir = TempDir::new("readonly");
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.to_str().unwrap();
    if !mount(&["-t", "tmpfs", "-o", "size=4m", "tmpfs", path]) {
        return;
    }
    let _mounted = Mounted(&dir.0);
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    open(&mut store, "a", 1, 0);
    append(&mut store, "a", 1);
    drop(store);
    assert!(mount(&["-o", "remount,ro", path]), "remount read-only");
    let e = refused(&dir.0);
    assert!(matches!(e.problem, OpenProblem::ReadOnly(_)), "{e:?}: {e}");
    assert!(e.to_string().contains(&dir.db().display().to_string()));
    // A fresh data dir on a read-only filesystem cannot be created.
    let e = refused(&dir.0.join("sub"));
    assert!(matches!(e.problem, OpenProblem::Directory(_)), "{e:?}");
}

fn fill_until_full(store: &mut SqliteStore, payload: usize) -> (u64, Vec<StoreEvent>) {
    let limits = StreamLimits {
        size: 1_000_000,
        ttl: Duration::from_secs(3600),
    };
    let mut last = 0;
    for i in 0..100_000_u64 {
        let mut batch = Vec::new();
        for j in 0..3 {
            let mut p = publication(i, "x");
            p.data = Bytes::from(vec![b'x'; payload + j]);
            batch.push(StoreRequest::Append {
                channel: ChannelName::new("full"),
                token: i * 3 + j as u64,
                publication: p,
                limits,
            });
        }
        let events = store.execute(batch);
        match &events[2] {
            StoreEvent::Appended {
                result: Ok((o, _)), ..
            } => last = *o,
            StoreEvent::Appended { result: Err(_), .. } => return (last, events),
            other => panic!("{other:?}"),
        }
    }
    panic!("never full");
}

fn assert_all_failed(events: &[StoreEvent]) {
    for event in events {
        let StoreEvent::Appended { result: Err(e), .. } = event else {
            panic!("every request of a failed batch fails: {event:?}");
        };
        assert!(e.message.contains("full"), "{e}");
    }
}

fn assert_next(store: &mut SqliteStore, expected: u64) {
    let limits = StreamLimits {
        size: 1_000_000,
        ttl: Duration::from_secs(3600),
    };
    match one(store, append_request("full", 0, limits)) {
        StoreEvent::Appended {
            result: Ok((offset, _)),
            ..
        } => assert_eq!(offset, expected, "no offset reused or skipped"),
        other => panic!("{other:?}"),
    }
}

/// SQLite's own limit on the file (`max_page_count`): works everywhere.
#[test]
fn store_survives_a_full_database() {
    let dir = TempDir::new("maxpages");
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    let pages: i64 = store
        .connection()
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    store
        .connection()
        .pragma_update(None, "max_page_count", pages + 20)
        .unwrap();
    let (last, events) = fill_until_full(&mut store, 1000);
    assert!(last > 10, "{last}");
    assert_all_failed(&events);
    let stats = store.stats();
    assert_eq!(StoreStats::get(&stats.failed_commits), 1);
    assert_eq!(StoreStats::get(&stats.failed_requests), 3);
    assert!(store.connection().is_autocommit(), "rolled back");
    // Failed again while still full; then space is made.
    assert_all_failed(&fill_until_full(&mut store, 1000).1);
    store
        .connection()
        .pragma_update(None, "max_page_count", pages + 1000)
        .unwrap();
    assert_next(&mut store, last + 1);
    drop(store);
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    assert_next(&mut store, last + 2);
}

/// A real full filesystem: a small tmpfs. Needs `mount`: skipped loudly
/// without.
#[test]
fn store_survives_a_full_disk() {
    let dir = TempDir::new("tmpfs");
    std::fs::create_dir_all(&dir.0).unwrap();
    if !mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=1m",
        "tmpfs",
        dir.0.to_str().unwrap(),
    ]) {
        return;
    }
    let _mounted = Mounted(&dir.0);
    let ballast = [dir.0.join("ballast1"), dir.0.join("ballast2")];
    // The second frees room for the WAL to be checkpointed into the file.
    for (file, kib) in ballast.iter().zip([256, 320]) {
        std::fs::write(file, vec![0_u8; kib * 1024]).unwrap();
    }
    let mut store = SqliteStore::open(&dir.0, HistorySync::Full).unwrap();
    let (last, events) = fill_until_full(&mut store, 2000);
    assert!(last > 10, "{last}");
    assert_all_failed(&events);
    assert_eq!(StoreStats::get(&store.stats().failed_commits), 1);
    std::fs::remove_file(&ballast[0]).unwrap();
    assert_next(&mut store, last + 1);
    assert_next(&mut store, last + 2);
    // Full again, and restarted while full: the store opens (it is intact),
    // appends fail until space is freed.
    let (last, events) = fill_until_full(&mut store, 2000);
    assert_all_failed(&events);
    drop(store);
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    assert_all_failed(&fill_until_full(&mut store, 2000).1);
    std::fs::remove_file(&ballast[1]).unwrap();
    assert_next(&mut store, last + 1);
    drop(store);
    let mut store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    assert_next(&mut store, last + 2);
}

#[test]
fn store_thread_answers_each_shard_in_order_and_drains_at_close() {
    let dir = TempDir::new("thread");
    let store = SqliteStore::open(&dir.0, HistorySync::Normal).unwrap();
    let (tx0, mut rx0) = tokio::sync::mpsc::unbounded_channel();
    let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel();
    let handle = spawn(store, vec![tx0, tx1]).unwrap();
    let limits = StreamLimits {
        size: 10_000,
        ttl: Duration::from_secs(3600),
    };
    let other = handle.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..2000 {
            other.submit(1, append_request("b", i, limits)).unwrap();
        }
    });
    for i in 0..2000 {
        handle.submit(0, append_request("a", i, limits)).unwrap();
    }
    writer.join().unwrap();
    handle.close();
    handle.join();
    for (rx, channel) in [(&mut rx0, "a"), (&mut rx1, "b")] {
        for i in 0..2000 {
            match rx.try_recv() {
                Ok(StoreEvent::Appended {
                    channel: c,
                    token,
                    result: Ok((offset, _)),
                }) => {
                    assert_eq!((c.as_str(), token, offset), (channel, i, i + 1));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let stats = handle.stats();
    assert_eq!(StoreStats::get(&stats.appends), 4000);
    assert!(StoreStats::get(&stats.batches) <= 4000);
    eprintln!(
        "4000 appends in {} batches",
        StoreStats::get(&stats.batches)
    );
    assert!(matches!(
        handle.submit(0, append_request("a", 0, limits)),
        Err(StoreClosed(_))
    ));
}

/// Appends per second with batches of 1, 10 and 100, both sync modes:
/// `cargo test -p hubbub --lib store_rates -- --ignored --nocapture`
/// (the test profile is opt-level 2).
#[test]
#[ignore = "a measurement, not a test"]
fn store_rates() {
    let limits = StreamLimits {
        size: 100,
        ttl: Duration::from_secs(3600),
    };
    for sync in [HistorySync::Normal, HistorySync::Full] {
        for batch in [1_usize, 10, 100] {
            let dir = TempDir::new("rates");
            let mut store = SqliteStore::open(&dir.0, sync).unwrap();
            let mut n = 0_u64;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let requests = (0..batch)
                    .map(|i| append_request(["a", "b", "c", "d"][i % 4], n + i as u64, limits))
                    .collect();
                store.execute(requests);
                n += batch as u64;
            }
            let rate = n as f64 / started.elapsed().as_secs_f64();
            println!("sync={sync} batch={batch:>3}: {rate:>9.0} appends/s ({n} in 3 s)");
        }
    }
}
