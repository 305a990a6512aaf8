//! Several nodes over a real `redis-server` (`--store redis`): each test
//! starts its own Redis on a free loopback port with a temporary directory
//! and stops it by PID, and starts the `hubbub` binaries itself.
//!
//! Cases: cross-node delivery for both protocols; one global offset order
//! with publishers on two nodes; kill -9 of a node under a publishing load,
//! then exact recovery on another; Redis stopped (publishes get 100,
//! `/health` 503) and started again (nodes resubscribe, nothing missed);
//! Redis flushed (a new epoch: `recovered: false`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::Process;
use common::redis::Redis;
use common::sdk::Sdk;
use common::{get, next_seed, send_text, within, Ws, STEP};
use hubbub_core::SeedType;
use serde_json::{json, Value};

/// A `hubbub` node on `redis`, two shards.
fn node(redis: &Redis) -> Process {
    Process::start(&[
        "--store",
        "redis",
        "--redis-url",
        &redis.url(),
        "--shards",
        "2",
    ])
}

/// A seed client in `room` as `user`, past its own join notices.
async fn seed_join(addr: SocketAddr, room: &str, user: &str) -> Ws {
    let url = format!("ws://{addr}/ws/{room}?username={user}");
    let (mut ws, _) = within(STEP, "seed connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    loop {
        let m = next_seed(&mut ws).await;
        if m.kind == SeedType::UserJoined && m.username == user {
            return ws;
        }
    }
}

/// The next chat line a seed client gets: (content, username).
async fn next_chat(ws: &mut Ws) -> (String, String) {
    loop {
        let m = next_seed(ws).await;
        if m.kind == SeedType::Chat {
            return (m.content, m.username);
        }
    }
}

/// Subscribes `sdk` to `channel` with a position; returns the reply's `subscribe`.
async fn subscribe(sdk: &mut Sdk, channel: &str) -> Value {
    let reply = sdk
        .call(json!({"subscribe": {"channel": channel, "recoverable": true, "positioned": true}}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    reply["subscribe"].clone()
}

/// The next `pub` push of `channel`: (offset, data).
async fn next_pub(sdk: &mut Sdk, channel: &str) -> (u64, Value) {
    let m = sdk
        .until(|m| m["push"]["channel"] == json!(channel) && m["push"]["pub"].is_object())
        .await;
    let p = &m["push"]["pub"];
    (p["offset"].as_u64().unwrap_or(0), p["data"].clone())
}

async fn publish(sdk: &mut Sdk, channel: &str, data: Value) -> Value {
    sdk.call(json!({"publish": {"channel": channel, "data": data}}))
        .await
}

/// Polls `/health` of `addr` until it answers `status`; returns the body.
async fn health_until(addr: SocketAddr, status: u16) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let r = get(addr, "/health", &[]).await;
        if r.status == status {
            return r.json();
        }
        assert!(
            Instant::now() < deadline,
            "/health stayed {} ({}), wanted {status}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let r = get(addr, "/metrics", &[]).await;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_cross_nodes_once_for_both_protocols() {
    let redis = Redis::start(false);
    let a = node(&redis);
    let b = node(&redis);
    let mut sub_a = Sdk::connect(a.addr).await;
    let mut sub_b = Sdk::connect(b.addr).await;
    subscribe(&mut sub_a, "lobby").await;
    subscribe(&mut sub_b, "lobby").await;
    let mut bea = seed_join(b.addr, "lobby", "Bea").await;
    let mut ann = seed_join(a.addr, "lobby", "Ann").await;
    let mut pub_a = Sdk::connect(a.addr).await;

    // A Centrifugo publication on node A, then a seed line on node A.
    let r = publish(&mut pub_a, "lobby", json!({"n": 1})).await;
    assert!(r.get("error").is_none(), "{r}");
    send_text(&mut ann, "hello from a").await;
    // Node B: both, once each, in offset order, for both protocols.
    assert_eq!(next_pub(&mut sub_b, "lobby").await, (1, json!({"n": 1})));
    let (offset, data) = next_pub(&mut sub_b, "lobby").await;
    assert_eq!((offset, data), (2, json!({"text": "hello from a"})));
    assert_eq!(
        next_chat(&mut bea).await,
        (r#"{"n":1}"#.into(), String::new())
    );
    assert_eq!(
        next_chat(&mut bea).await,
        ("hello from a".into(), "Ann".into())
    );
    // A seed line on node B reaches node A's clients.
    send_text(&mut bea, "hello from b").await;
    assert_eq!(
        next_pub(&mut sub_a, "lobby").await,
        (1, json!({"n": 1})),
        "node A's own publication, once"
    );
    assert_eq!(next_pub(&mut sub_a, "lobby").await.0, 2);
    assert_eq!(
        next_pub(&mut sub_a, "lobby").await,
        (3, json!({"text": "hello from b"}))
    );
    assert_eq!(next_chat(&mut ann).await.0, r#"{"n":1}"#);
    assert_eq!(next_chat(&mut ann).await.0, "hello from a");
    assert_eq!(
        next_chat(&mut ann).await,
        ("hello from b".into(), "Bea".into())
    );
    // Nothing came twice: a marker is the very next publication everywhere.
    publish(&mut pub_a, "lobby", json!({"n": "end"})).await;
    assert_eq!(
        next_pub(&mut sub_b, "lobby").await,
        (3, json!({"text": "hello from b"}))
    );
    for sub in [&mut sub_a, &mut sub_b] {
        assert_eq!(next_pub(sub, "lobby").await, (4, json!({"n": "end"})));
    }
    assert_eq!(next_chat(&mut bea).await.0, "hello from b");
    assert_eq!(next_chat(&mut bea).await.0, r#"{"n":"end"}"#);
    assert_eq!(next_chat(&mut ann).await.0, r#"{"n":"end"}"#);
    assert!(metric(b.addr, "hubbub_redis_delivered_total").await >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_on_two_nodes_make_one_offset_order() {
    let redis = Redis::start(false);
    let a = node(&redis);
    let b = node(&redis);
    let mut sub_a = Sdk::connect(a.addr).await;
    let mut sub_b = Sdk::connect(b.addr).await;
    subscribe(&mut sub_a, "race").await;
    subscribe(&mut sub_b, "race").await;
    let per_node = 150u64;
    let publisher = |addr: SocketAddr, tag: &'static str| async move {
        let mut sdk = Sdk::connect(addr).await;
        let mut ids = Vec::new();
        for i in 0..per_node {
            let data = json!({"from": tag, "i": i});
            ids.push(
                sdk.send(json!({"publish": {"channel": "race", "data": data}}))
                    .await,
            );
        }
        for id in ids {
            let r = sdk.until(|m| m["id"] == json!(id)).await;
            assert!(r.get("error").is_none(), "{r}");
        }
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(publisher(a.addr, "a")),
        tokio::spawn(publisher(b.addr, "b"))
    );
    ra.unwrap();
    rb.unwrap();
    let mut seen = Vec::new();
    for sub in [&mut sub_a, &mut sub_b] {
        let mut pubs = Vec::new();
        for _ in 0..2 * per_node {
            pubs.push(next_pub(sub, "race").await);
        }
        let offsets: Vec<u64> = pubs.iter().map(|p| p.0).collect();
        assert_eq!(offsets, (1..=2 * per_node).collect::<Vec<_>>());
        // Each publisher's own order is kept within the global one.
        for tag in ["a", "b"] {
            let mine: Vec<u64> = pubs
                .iter()
                .filter(|p| p.1["from"] == json!(tag))
                .map(|p| p.1["i"].as_u64().unwrap())
                .collect();
            assert_eq!(mine, (0..per_node).collect::<Vec<_>>(), "{tag}");
        }
        seen.push(pubs);
    }
    assert_eq!(seen[0], seen[1], "the same publication at each offset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_acknowledged_and_clients_recover_on_another() {
    let redis = Redis::start(true);
    let mut a = node(&redis);
    let b = node(&redis);
    let channel = "durable";
    let mut subscriber = Sdk::connect(a.addr).await;
    let epoch = subscribe(&mut subscriber, channel).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut pub_b = Sdk::connect(b.addr).await;
    for i in 0..10 {
        publish(&mut pub_b, channel, json!({"b": i})).await;
    }
    for i in 1..=10 {
        assert_eq!(next_pub(&mut subscriber, channel).await.0, i);
    }
    // A publisher on node A pipelines; node A is killed while it publishes.
    let mut pub_a = Sdk::connect(a.addr).await;
    let mut acked = Vec::new();
    let mut in_flight = BTreeMap::new();
    let mut next = 0u64;
    while acked.len() < 150 {
        while in_flight.len() < 32 {
            let id = pub_a
                .send(json!({"publish": {"channel": channel, "data": {"a": next}}}))
                .await;
            in_flight.insert(id, next);
            next += 1;
        }
        let m = pub_a.next().await.unwrap();
        if let Some(n) = m["id"].as_u64().and_then(|id| in_flight.remove(&id)) {
            assert!(m.get("error").is_none(), "{m}");
            acked.push(n);
        }
    }
    a.signal("KILL");
    a.wait(STEP);
    // Node B goes on; the subscriber from node A reconnects to node B.
    for i in 10..15 {
        let r = publish(&mut pub_b, channel, json!({"b": i})).await;
        assert!(r.get("error").is_none(), "{r}");
    }
    let mut reader = Sdk::connect(b.addr).await;
    let (history, top, now_epoch) = reader.whole_history(channel).await;
    assert_eq!(now_epoch, epoch, "the stream lives in Redis, not in node A");
    let offsets: Vec<u64> = history.iter().map(|p| p.0).collect();
    assert_eq!(
        offsets,
        (1..=top).collect::<Vec<_>>(),
        "no offset twice or lost"
    );
    for n in &acked {
        assert!(
            history.iter().any(|p| p.1 == json!({"a": n})),
            "acknowledged publication {n} lost"
        );
    }
    let mut moved = Sdk::connect(b.addr).await;
    let reply = moved
        .call(
            json!({"subscribe": {"channel": channel, "recover": true, "offset": 10,
            "epoch": epoch, "recoverable": true, "positioned": true}}),
        )
        .await;
    let sub = &reply["subscribe"];
    assert_eq!(sub["recovered"], json!(true), "{reply}");
    let recovered: Vec<(u64, Value)> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].clone()))
        .collect();
    assert_eq!(recovered, history[10..].to_vec(), "exactly what it missed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_with_100_and_nodes_resubscribe_when_it_is_back() {
    let mut redis = Redis::start(true);
    let a = node(&redis);
    let b = node(&redis);
    health_until(a.addr, 200).await;
    let mut sub_b = Sdk::connect(b.addr).await;
    let epoch = subscribe(&mut sub_b, "c").await["epoch"].clone();
    let mut pub_a = Sdk::connect(a.addr).await;
    publish(&mut pub_a, "c", json!(1)).await;
    assert_eq!(next_pub(&mut sub_b, "c").await, (1, json!(1)));

    redis.stop();
    // Temporary refusals, at once; the nodes and their clients stay.
    let started = Instant::now();
    let r = publish(&mut pub_a, "c", json!(2)).await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let body = health_until(a.addr, 503).await;
    assert_eq!(body["status"], "unavailable");
    assert!(!body["reason"].as_str().unwrap().is_empty(), "{body}");
    health_until(b.addr, 503).await;
    let r = publish(&mut pub_a, "c", json!(3)).await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");
    assert_eq!(metric(a.addr, "hubbub_redis_up").await, 0);

    redis.restart();
    health_until(a.addr, 200).await;
    health_until(b.addr, 200).await;
    let r = publish(&mut pub_a, "c", json!(4)).await;
    assert!(r.get("error").is_none(), "{r}");
    // Node B subscribed again by itself: the same stream, the next offset.
    assert_eq!(next_pub(&mut sub_b, "c").await, (2, json!(4)));
    assert!(metric(b.addr, "hubbub_redis_reconnects_total").await >= 1);
    // A client that missed it recovers it on either node.
    let mut late = Sdk::connect(a.addr).await;
    let reply = late
        .call(
            json!({"subscribe": {"channel": "c", "recover": true, "offset": 1,
            "epoch": epoch, "recoverable": true, "positioned": true}}),
        )
        .await;
    assert_eq!(reply["subscribe"]["recovered"], json!(true), "{reply}");
    assert_eq!(reply["subscribe"]["publications"][0]["data"], json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_starts_a_new_epoch_and_recovery_says_so() {
    let redis = Redis::start(false);
    let a = node(&redis);
    let b = node(&redis);
    let mut sub_b = Sdk::connect(b.addr).await;
    let old = subscribe(&mut sub_b, "f").await["epoch"].clone();
    let mut pub_a = Sdk::connect(a.addr).await;
    for i in 1..=3 {
        publish(&mut pub_a, "f", json!(i)).await;
        assert_eq!(next_pub(&mut sub_b, "f").await, (i, json!(i)));
    }
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    let r = publish(&mut pub_a, "f", json!("after")).await;
    assert!(r.get("error").is_none(), "{r}");
    // The stream started again: its first publication reaches node B.
    assert_eq!(next_pub(&mut sub_b, "f").await, (1, json!("after")));
    for addr in [a.addr, b.addr] {
        let mut late = Sdk::connect(addr).await;
        let reply = late
            .call(
                json!({"subscribe": {"channel": "f", "recover": true, "offset": 3,
                "epoch": old, "recoverable": true, "positioned": true}}),
            )
            .await;
        let sub = &reply["subscribe"];
        // `recovered: false` is omitted, as Centrifugo omits empty fields.
        assert_eq!(sub["was_recovering"], json!(true), "{reply}");
        assert_ne!(sub["recovered"], json!(true), "{reply}");
        assert_ne!(sub["epoch"], old, "{reply}");
        assert_eq!(sub["offset"], json!(1), "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_without_history_cross_nodes_once_without_offsets() {
    let redis = Redis::start(false);
    // No history: seed rooms have no stream; `typing:ROOM` never has one.
    let a = Process::start(&[
        "--store",
        "redis",
        "--redis-url",
        &redis.url(),
        "--history-size",
        "0",
    ]);
    let b = Process::start(&[
        "--store",
        "redis",
        "--redis-url",
        &redis.url(),
        "--history-size",
        "0",
    ]);
    let mut bea = seed_join(b.addr, "lobby", "Bea").await;
    let mut ann = seed_join(a.addr, "lobby", "Ann").await;
    let mut sub_b = Sdk::connect(b.addr).await;
    let r = sub_b
        .call(json!({"subscribe": {"channel": "typing:lobby"}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let mut pub_a = Sdk::connect(a.addr).await;
    // Node B subscribes in Redis as its rooms come to be, without holding
    // up the join: send until something arrives, then a marker.
    let deadline = Instant::now() + STEP;
    loop {
        assert!(
            Instant::now() < deadline,
            "node B never heard node A's room"
        );
        send_text(&mut ann, "ready?").await;
        if tokio::time::timeout(Duration::from_millis(200), next_chat(&mut bea))
            .await
            .is_ok()
        {
            break;
        }
    }
    send_text(&mut ann, "go").await;
    while next_chat(&mut bea).await.0 != "go" {}
    while next_chat(&mut ann).await.0 != "go" {}
    loop {
        assert!(Instant::now() < deadline, "node B never heard typing:lobby");
        publish(&mut pub_a, "typing:lobby", json!({"ready": true})).await;
        let got = tokio::time::timeout(
            Duration::from_millis(200),
            next_pub(&mut sub_b, "typing:lobby"),
        );
        if got.await.is_ok() {
            break;
        }
    }
    publish(&mut pub_a, "typing:lobby", json!("go")).await;
    while next_pub(&mut sub_b, "typing:lobby").await.1 != json!("go") {}

    // Now exactly once each way, without offsets (and without an order
    // between nodes: one line at a time).
    send_text(&mut ann, "one").await;
    assert_eq!(next_chat(&mut bea).await, ("one".into(), "Ann".into()));
    assert_eq!(next_chat(&mut ann).await, ("one".into(), "Ann".into()));
    send_text(&mut bea, "two").await;
    assert_eq!(next_chat(&mut ann).await, ("two".into(), "Bea".into()));
    assert_eq!(next_chat(&mut bea).await, ("two".into(), "Bea".into()));
    publish(&mut pub_a, "typing:lobby", json!({"typing": "Ann"})).await;
    assert_eq!(
        next_pub(&mut sub_b, "typing:lobby").await,
        (0, json!({"typing": "Ann"})),
        "no offset"
    );
    send_text(&mut ann, "end").await;
    assert_eq!(next_chat(&mut bea).await.0, "end", "nothing twice");
    assert_eq!(next_chat(&mut ann).await.0, "end", "its own line once");
}

/// A channel name that `--redis-url` number `want` (of `count`) keeps.
fn channel_on(want: usize, count: usize) -> String {
    (0..)
        .map(|i| format!("spread{i}"))
        .find(|c| hubbub::store::redis::instance_of(c, count) == want)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_spread_over_two_redis_instances_and_one_down_spares_the_others() {
    let first = Redis::start(false);
    let mut second = Redis::start(true);
    let args = |_: ()| {
        Process::start(&[
            "--store",
            "redis",
            "--redis-url",
            &first.url(),
            "--redis-url",
            &second.url(),
            "--shards",
            "2",
        ])
    };
    let (a, b) = (args(()), args(()));
    let (x, y) = (channel_on(0, 2), channel_on(1, 2));
    let mut sub = Sdk::connect(b.addr).await;
    subscribe(&mut sub, &x).await;
    subscribe(&mut sub, &y).await;
    let mut publisher = Sdk::connect(a.addr).await;
    for channel in [&x, &y] {
        let r = publish(&mut publisher, channel, json!("one")).await;
        assert!(r.get("error").is_none(), "{r}");
        assert_eq!(next_pub(&mut sub, channel).await, (1, json!("one")));
    }
    // Each channel's stream is in its own instance only.
    let exists = |r: &Redis, c: &str| r.command(&format!("EXISTS hubbub:{{{c}}}:meta"));
    assert_eq!(
        (exists(&first, &x), exists(&first, &y)),
        (":1".into(), ":0".into())
    );
    assert_eq!(
        (exists(&second, &x), exists(&second, &y)),
        (":0".into(), ":1".into())
    );
    // The second instance goes: its channels refuse (100), the others go on.
    second.stop();
    let r = publish(&mut publisher, &y, json!("two")).await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");
    let r = publish(&mut publisher, &x, json!("two")).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(next_pub(&mut sub, &x).await, (2, json!("two")));
    let body = health_until(a.addr, 503).await;
    assert!(!body["reason"].as_str().unwrap().is_empty(), "{body}");
    // Back (its append-only file kept the stream): the next offset.
    second.restart();
    health_until(a.addr, 200).await;
    health_until(b.addr, 200).await;
    let r = publish(&mut publisher, &y, json!("three")).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(next_pub(&mut sub, &y).await, (2, json!("three")));
}
