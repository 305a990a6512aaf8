//! Durable history against the real binary: SIGKILL in the middle of a
//! publishing load, a restart on the same data directory, and what must
//! hold after it (every acknowledged publication in history with its
//! offset, no offset reused, exact recovery for a client from before the
//! kill); and the store's refusals at start.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{Process, BIN};
use common::sdk::Sdk;
use common::{within, STEP};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A fresh, empty directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("hubbub-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(data: &TempDir) -> Process {
    Process::start(&[
        "--store",
        "sqlite",
        "--data-dir",
        data.arg(),
        "--shards",
        "2",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publications_survive_sigkill_and_recovery_is_exact() {
    let data = TempDir::new("sigkill");
    let mut server = start(&data);
    let channel = "durable";

    // A subscriber reads the first publications, then goes away: it will
    // recover the rest after the restart.
    let mut subscriber = Sdk::connect(server.addr).await;
    let reply = subscriber
        .call(json!({"subscribe": {"channel": channel, "recoverable": true, "positioned": true}}))
        .await;
    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();

    // The publisher pipelines 400 publishes, 32 in flight; its acks say
    // which are durable. The kill comes while it is still publishing.
    let mut publisher = Sdk::connect(server.addr).await;
    let total = 400u64;
    let kill_after_acks = 330;
    let mut acked: Vec<u64> = Vec::new();
    let mut in_flight: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next = 0u64;
    let mut seen_by_subscriber: Vec<u64> = Vec::new();
    while acked.len() < kill_after_acks {
        while in_flight.len() < 32 && next < total {
            let id = publisher
                .send(json!({"publish": {"channel": channel, "data": {"n": next}}}))
                .await;
            in_flight.insert(id, next);
            next += 1;
        }
        let m = publisher.next().await.unwrap();
        if let Some(n) = m["id"].as_u64().and_then(|id| in_flight.remove(&id)) {
            assert!(m.get("error").is_none(), "publish {n} refused: {m}");
            acked.push(n);
        }
        // The subscriber keeps up for the first 100, then stops reading.
        while seen_by_subscriber.len() < 100 && !subscriber.pending.is_empty() {
            let m = subscriber.next().await.unwrap();
            if let Some(p) = m["push"].get("pub") {
                seen_by_subscriber.push(p["offset"].as_u64().unwrap());
            }
        }
    }
    while seen_by_subscriber.len() < 100 {
        let m = subscriber.next().await.unwrap();
        if let Some(p) = m["push"].get("pub") {
            seen_by_subscriber.push(p["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(seen_by_subscriber, (1..=100).collect::<Vec<u64>>());
    server.signal("KILL");
    server.wait(Duration::from_secs(5));
    drop(publisher);
    drop(subscriber);

    let server = start(&data);
    let mut reader = Sdk::connect(server.addr).await;
    let (history, top, epoch_after) = reader.whole_history(channel).await;
    assert_eq!(
        epoch_after, epoch,
        "the stream is the same one after a crash"
    );
    // No offset reused or skipped: 1..=top, each once.
    let offsets: Vec<u64> = history.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=top).collect::<Vec<u64>>());
    // Every acknowledged publication is there; anything else stored is a
    // publication whose ack the kill cut off (never an unknown one).
    let stored: Vec<u64> = history
        .iter()
        .map(|(_, d)| d["n"].as_u64().unwrap())
        .collect();
    for n in &acked {
        assert!(stored.contains(n), "acknowledged publication {n} was lost");
    }
    assert!(stored.iter().all(|n| *n < next), "{stored:?}");
    let mut distinct = stored.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), stored.len(), "a publication stored twice");
    assert!(top >= kill_after_acks as u64);

    // The subscriber from before the kill recovers exactly what it missed.
    let mut back = Sdk::connect(server.addr).await;
    let reply = back
        .call(json!({"subscribe": {"channel": channel, "recover": true,
            "offset": 100, "epoch": epoch, "recoverable": true, "positioned": true}}))
        .await;
    let sub = &reply["subscribe"];
    assert_eq!(sub["recovered"], json!(true), "{reply}");
    let recovered: Vec<(u64, Value)> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].clone()))
        .collect();
    assert_eq!(recovered, history[100..].to_vec());

    // And the stream goes on from there: the next offset is top + 1.
    let ack = back
        .call(json!({"publish": {"channel": channel, "data": {"n": "after"}}}))
        .await;
    assert!(ack.get("error").is_none(), "{ack}");
    let push = back.until(|m| m["push"].get("pub").is_some()).await;
    assert_eq!(push["push"]["pub"]["offset"], json!(top + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_seed_history_and_offsets() {
    let data = TempDir::new("restart");
    let mut server = start(&data);
    let url = format!("ws://{}/ws/lobby?username=ann", server.addr);
    let (mut ann, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for i in 0..5 {
        ann.send(Message::text(format!("line {i}"))).await.unwrap();
    }
    // Each line comes back once it is stored.
    let mut echoed = 0;
    while echoed < 5 {
        let Some(Ok(Message::Text(t))) = within(STEP, "echo", ann.next()).await else {
            panic!("ann's connection ended");
        };
        if t.as_str().contains("\"type\":\"chat\"") {
            echoed += 1;
        }
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(10)), Some(0));

    let server = start(&data);
    let url = format!("ws://{}/ws/lobby?username=bob&history=3", server.addr);
    let (mut bob, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let Some(Ok(Message::Text(t))) = within(STEP, "history", bob.next()).await else {
            panic!("bob's connection ended");
        };
        let m: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(m["type"], "chat", "history comes first: {m}");
        assert_eq!(m["username"], "ann");
        lines.push(m["content"].as_str().unwrap().to_owned());
    }
    assert_eq!(lines, ["line 2", "line 3", "line 4"]);
    let mut sdk = Sdk::connect(server.addr).await;
    let (history, top, _) = sdk.whole_history("lobby").await;
    assert_eq!(top, 5);
    assert_eq!(history.len(), 5);
    assert_eq!(history[0].1, json!({"text": "line 0"}));
}

/// Starts the binary on `data` and expects it to refuse: a non-zero exit
/// and a message naming the database file.
fn refused_at_start(data: &TempDir, what: &str) -> String {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--store", "sqlite", "--data-dir"])
        .arg(data.arg())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what}: started anyway: {stderr}");
    let file = data.path().join("hubbub.db");
    assert!(
        stderr.contains(file.to_str().unwrap()),
        "{what}: the message does not name the file: {stderr}"
    );
    stderr
}

#[test]
fn a_corrupt_or_newer_store_is_refused_at_start_and_left_alone() {
    let data = TempDir::new("corrupt");
    let file = data.path().join("hubbub.db");
    let garbage = b"this is not an SQLite database, but somebody's data".repeat(100);
    std::fs::write(&file, &garbage).unwrap();
    let stderr = refused_at_start(&data, "garbage");
    assert!(stderr.contains("not a database"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "left as it was");

    // A store written by a newer hubbub: its schema version is higher.
    let newer = TempDir::new("newer");
    {
        let mut server = start(&newer);
        server.signal("TERM");
        server.wait(Duration::from_secs(10));
    }
    let status = Command::new("sqlite3")
        .arg(newer.path().join("hubbub.db"))
        .arg("PRAGMA user_version = 99;")
        .status();
    match status {
        Ok(s) if s.success() => {
            let stderr = refused_at_start(&newer, "newer schema");
            assert!(stderr.contains("99"), "{stderr}");
        }
        // The store's own tests cover a newer schema without the shell.
        _ => eprintln!("sqlite3 shell not installed: newer-schema refusal checked in unit tests"),
    }
}

/// A small tmpfs mounted for one test and unmounted on drop; `None` where
/// this machine does not let the test mount (not root, or no tmpfs).
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = TempDir::new("disk");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `dir` with a ballast file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    ballast
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_with_100_and_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount("2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); the store's unit tests cover a full disk with max_page_count");
        return;
    };
    let data = disk.dir.path().join("data");
    let mut server = Process::start(&["--store", "sqlite", "--data-dir", data.to_str().unwrap()]);
    let mut alice = Sdk::connect(server.addr).await;
    let reply = alice
        .call(json!({"subscribe": {"channel": "full", "recoverable": true, "positioned": true}}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    let ok = alice
        .call(json!({"publish": {"channel": "full", "data": {"n": 1}}}))
        .await;
    assert!(ok.get("error").is_none(), "{ok}");

    let ballast = fill(disk.dir.path());
    // Publications big enough to need new pages: refused with 100, temporary.
    let big = "x".repeat(16 * 1024);
    let mut refused = 0;
    for _ in 0..20 {
        let reply = alice
            .call(json!({"publish": {"channel": "full", "data": {"big": big}}}))
            .await;
        if reply["error"]["code"] == json!(100) {
            assert_eq!(reply["error"]["temporary"], json!(true), "{reply}");
            refused += 1;
        }
    }
    assert!(refused > 0, "a full disk refused nothing");
    // The connection and the server are fine: presence still answers.
    let stats = alice
        .call(json!({"presence_stats": {"channel": "full"}}))
        .await;
    assert_eq!(stats["presence_stats"]["num_clients"], json!(1), "{stats}");

    // Space comes back: publishing works again, the offsets go on.
    std::fs::remove_file(ballast).unwrap();
    let mut offsets = Vec::new();
    let ok = alice
        .call(json!({"publish": {"channel": "full", "data": {"n": 2}}}))
        .await;
    assert!(ok.get("error").is_none(), "{ok}");
    let (history, top, _) = alice.whole_history("full").await;
    for (offset, _) in &history {
        offsets.push(*offset);
    }
    assert_eq!(
        offsets,
        (1..=top).collect::<Vec<u64>>(),
        "no offset reused or skipped"
    );
    assert_eq!(history.last().unwrap().1, json!({"n": 2}));
    let metrics = common::get(server.addr, "/metrics", &[]).await;
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l.starts_with("hubbub_store_failed_commits_total ") && !l.ends_with(" 0")),
        "the failed commits are counted"
    );
    server.signal("TERM");
    server.wait(Duration::from_secs(10));
}
