//! Three `hubbub` nodes on one real `redis-server` (`--store redis`), each
//! with clients of both protocols (seed rooms and Centrifugo JSON) in the
//! same rooms. Each test starts its own Redis on a free loopback port in a
//! temporary directory and its own nodes, and stops them by PID (also when
//! it fails half-way: both are killed on drop). The tests take turns (one
//! cluster at a time), so that a loaded machine does not make them flaky.
//!
//! Cases: every client on every node gets each message once; concurrent
//! publishers on all three nodes make one offset order; the server API's
//! `publish` on node A reaches node C; kill -9 of a node under a publishing
//! load, its clients moved to the other nodes recover exactly; Redis
//! stopped (100, `/health` 503) and started again (the nodes resubscribe by
//! themselves, what was missed is recovered); Redis flushed (a new epoch,
//! `recovered: false`); presence, join/leave and `online_users` across the
//! nodes, and a killed node's members leaving within `--presence-ttl`;
//! the relay (`/ws`) reaching every relay client on every node.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::Process;
use common::redis::Redis;
use common::sdk::Sdk;
use common::{get, next_seed, seed_until, send_text, within, Ws, STEP};
use futures_util::{SinkExt, StreamExt};
use hubbub_core::SeedType;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// One cluster at a time in this test binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const API_KEY: &str = "cluster-key";

/// Three `hubbub` nodes on `redis`, two shards each, with the server API
/// on, without the per-connection and per-user rate limits (the tests
/// publish in bursts from one connection) and with room for every
/// publication of a test in the streams.
fn three_nodes(redis: &Redis) -> [Process; 3] {
    three_nodes_with(redis, &[])
}

/// [`three_nodes`] with `extra` arguments.
fn three_nodes_with(redis: &Redis, extra: &[&str]) -> [Process; 3] {
    let url = redis.url();
    let mut args = vec![
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--shards",
        "2",
        "--api-key",
        API_KEY,
        "--command-rate",
        "0",
        "--user-publish-rate",
        "0",
        "--history-size",
        "50000",
    ];
    args.extend_from_slice(extra);
    [
        Process::start(&args),
        Process::start(&args),
        Process::start(&args),
    ]
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

/// Subscribes with recovery from (`offset`, `epoch`); returns the reply's `subscribe`.
async fn recover(sdk: &mut Sdk, channel: &str, offset: u64, epoch: &Value) -> Value {
    let reply = sdk
        .call(
            json!({"subscribe": {"channel": channel, "recover": true, "offset": offset,
            "epoch": epoch, "recoverable": true, "positioned": true}}),
        )
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    reply["subscribe"].clone()
}

/// (offset, data) of each publication in a subscribe reply.
fn publications(sub: &Value) -> Vec<(u64, Value)> {
    sub["publications"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| (p["offset"].as_u64().unwrap_or(0), p["data"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The next `pub` push of `channel`: (offset, data).
async fn next_pub(sdk: &mut Sdk, channel: &str) -> (u64, Value) {
    let m = sdk
        .until(|m| m["push"]["channel"] == json!(channel) && m["push"]["pub"].is_object())
        .await;
    let p = &m["push"]["pub"];
    (p["offset"].as_u64().unwrap_or(0), p["data"].clone())
}

/// `pub` pushes of `channel` until one with `data == last`; all of them.
async fn pubs_until(sdk: &mut Sdk, channel: &str, last: &Value) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    loop {
        let p = next_pub(sdk, channel).await;
        let done = &p.1 == last;
        out.push(p);
        if done {
            return out;
        }
    }
}

/// Chat lines of a seed client until one with content `last`; the contents as JSON.
async fn chats_until(ws: &mut Ws, last: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let (content, _) = next_chat(ws).await;
        let done = content == last;
        out.push(serde_json::from_str(&content).unwrap_or(Value::String(content)));
        if done {
            return out;
        }
    }
}

async fn publish(sdk: &mut Sdk, channel: &str, data: Value) -> Value {
    sdk.call(json!({"publish": {"channel": channel, "data": data}}))
        .await
}

/// `POST /api/METHOD` with the key; the JSON answer (status 200).
async fn api(addr: SocketAddr, method: &str, body: &Value) -> Value {
    let body = body.to_string();
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: test\r\nX-API-Key: {API_KEY}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = within(STEP, "api connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    within(STEP, "api response", stream.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Polls `/health` of `addr` until it answers `status`; returns the body.
async fn health_until(addr: SocketAddr, status: u16) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let r = get(addr, "/health", &[]).await;
        if r.status == status {
            assert!(
                r.header("content-type")
                    .is_some_and(|t| t.contains("application/json")),
                "{:?}",
                r.head
            );
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

fn assert_alive(nodes: &mut [Process]) {
    for (i, n) in nodes.iter_mut().enumerate() {
        assert!(
            n.child.try_wait().unwrap().is_none(),
            "node {i} exited:\n{}",
            n.full_log().join("\n")
        );
    }
}

/// The offsets of `pubs` are exactly 1..=n.
fn assert_gapless(pubs: &[(u64, Value)], who: &str) {
    let offsets: Vec<u64> = pubs.iter().map(|p| p.0).collect();
    let want: Vec<u64> = (1..=pubs.len() as u64).collect();
    assert_eq!(offsets, want, "{who}: offsets not exactly 1..=n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_on_every_node_gets_each_message_once() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let nodes = three_nodes(&redis);
    let room = "lobby";
    let mut subs = Vec::new();
    let mut seeds = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut sdk = Sdk::connect(n.addr).await;
        subscribe(&mut sdk, room).await;
        subs.push(sdk);
        seeds.push(seed_join(n.addr, room, &format!("user{i}")).await);
    }
    let mut publishers = Vec::new();
    for n in &nodes {
        publishers.push(Sdk::connect(n.addr).await);
    }
    // From each node: a Centrifugo publication and a seed line, without
    // waiting in between (their order across nodes is Redis' to choose).
    let mut sent = BTreeSet::new();
    for (i, (p, s)) in publishers.iter_mut().zip(seeds.iter_mut()).enumerate() {
        let r = publish(p, room, json!({"cf": i})).await;
        assert!(r.get("error").is_none(), "{r}");
        sent.insert(json!({"cf": i}).to_string());
        send_text(s, &format!("seed line {i}")).await;
        sent.insert(json!({"text": format!("seed line {i}")}).to_string());
    }
    let count = sent.len();
    let mut orders = Vec::new();
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut pubs = Vec::new();
        for _ in 0..count {
            pubs.push(next_pub(sub, room).await);
        }
        assert_gapless(&pubs, &format!("subscriber on node {i}"));
        let got: BTreeSet<String> = pubs.iter().map(|p| p.1.to_string()).collect();
        assert_eq!(got, sent, "node {i}: each message once");
        orders.push(pubs);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "the same publication at each offset on every node"
    );
    // Seed clients: every line once, in the same (offset) order. A
    // Centrifugo publication's data is the content; a seed line's
    // publication has the line as its `text`.
    let want: Vec<String> = orders[0]
        .iter()
        .map(|p| {
            p.1["text"]
                .as_str()
                .map_or_else(|| p.1.to_string(), str::to_owned)
        })
        .collect();
    for (i, seed) in seeds.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..count {
            let (content, user) = next_chat(seed).await;
            if let Some(n) = content.strip_prefix("seed line ") {
                assert_eq!(user, format!("user{n}"), "the sender's name crosses nodes");
            }
            let content =
                serde_json::from_str::<Value>(&content).map_or(content, |v| v.to_string());
            got.push(content);
        }
        assert_eq!(got, want, "seed client on node {i}");
    }
    // Nothing more came: a marker is the very next message everywhere.
    let r = publish(&mut publishers[2], room, json!("end")).await;
    assert!(r.get("error").is_none(), "{r}");
    for sub in &mut subs {
        assert_eq!(next_pub(sub, room).await, (count as u64 + 1, json!("end")));
    }
    for seed in &mut seeds {
        assert_eq!(next_chat(seed).await.0, r#""end""#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_on_three_nodes_make_one_offset_order() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let nodes = three_nodes(&redis);
    let room = "race";
    let mut subs = Vec::new();
    let mut seeds = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for _ in 0..2 {
            let mut sdk = Sdk::connect(n.addr).await;
            subscribe(&mut sdk, room).await;
            subs.push(sdk);
        }
        seeds.push(seed_join(n.addr, room, &format!("watcher{i}")).await);
    }
    let per_node = 120u64;
    let publisher = |addr: SocketAddr, tag: usize| async move {
        let mut sdk = Sdk::connect(addr).await;
        let mut ids = Vec::new();
        for i in 0..per_node {
            let data = json!({"from": tag, "i": i});
            ids.push(
                sdk.send(json!({"publish": {"channel": room, "data": data}}))
                    .await,
            );
        }
        for id in ids {
            let r = sdk.until(|m| m["id"] == json!(id)).await;
            assert!(r.get("error").is_none(), "{r}");
        }
    };
    let tasks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(tag, n)| tokio::spawn(publisher(n.addr, tag)))
        .collect();
    for t in tasks {
        within(Duration::from_secs(30), "publisher", t)
            .await
            .unwrap();
    }
    let total = 3 * per_node;
    let mut seen = Vec::new();
    for (k, sub) in subs.iter_mut().enumerate() {
        let mut pubs = Vec::new();
        for _ in 0..total {
            pubs.push(next_pub(sub, room).await);
        }
        assert_gapless(&pubs, &format!("subscriber {k}"));
        for tag in 0..3 {
            let mine: Vec<u64> = pubs
                .iter()
                .filter(|p| p.1["from"] == json!(tag))
                .map(|p| p.1["i"].as_u64().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..per_node).collect::<Vec<_>>(),
                "subscriber {k}: publisher {tag}'s own order, each once"
            );
        }
        seen.push(pubs);
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every subscriber on every node sees the same publication at each offset"
    );
    let want: Vec<Value> = seen[0].iter().map(|p| p.1.clone()).collect();
    for (i, seed) in seeds.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..total {
            got.push(serde_json::from_str::<Value>(&next_chat(seed).await.0).unwrap());
        }
        assert_eq!(got, want, "seed client on node {i}: the same order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publish_on_node_a_reaches_clients_on_node_c() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let [a, b, c] = three_nodes(&redis);
    let room = "news";
    let mut sub_c = Sdk::connect(c.addr).await;
    subscribe(&mut sub_c, room).await;
    let mut sub_b = Sdk::connect(b.addr).await;
    subscribe(&mut sub_b, room).await;
    let mut seed_c = seed_join(c.addr, room, "Cid").await;

    let r = api(
        a.addr,
        "publish",
        &json!({"channel": room, "data": {"headline": 1}}),
    )
    .await;
    assert_eq!(r["result"]["offset"], json!(1), "{r}");
    let epoch = r["result"]["epoch"].clone();
    assert_eq!(
        next_pub(&mut sub_c, room).await,
        (1, json!({"headline": 1}))
    );
    assert_eq!(
        next_pub(&mut sub_b, room).await,
        (1, json!({"headline": 1}))
    );
    assert_eq!(next_chat(&mut seed_c).await.0, r#"{"headline":1}"#);
    // A batch on node B: in order, after it, on node C.
    let r = api(
        b.addr,
        "batch",
        &json!({"commands": [
            {"publish": {"channel": room, "data": {"headline": 2}}},
            {"publish": {"channel": room, "data": {"headline": 3}}}
        ]}),
    )
    .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        next_pub(&mut sub_c, room).await,
        (2, json!({"headline": 2}))
    );
    assert_eq!(
        next_pub(&mut sub_c, room).await,
        (3, json!({"headline": 3}))
    );
    assert_eq!(next_chat(&mut seed_c).await.0, r#"{"headline":2}"#);
    assert_eq!(next_chat(&mut seed_c).await.0, r#"{"headline":3}"#);
    // A client of node C that missed them recovers them there.
    let mut late = Sdk::connect(c.addr).await;
    let sub = recover(&mut late, room, 0, &epoch).await;
    assert_eq!(sub["recovered"], json!(true), "{sub}");
    assert_eq!(
        publications(&sub),
        vec![
            (1, json!({"headline": 1})),
            (2, json!({"headline": 2})),
            (3, json!({"headline": 3}))
        ]
    );
}

/// Publishes `{"p": tag, "i": n}` on `sdk` with a few in flight, paced,
/// until `stop` is set or the connection ends; pushes each acknowledged
/// `n` to `acked`. Returns the number of error replies.
async fn publish_load(
    mut sdk: Sdk,
    channel: &'static str,
    tag: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
) -> usize {
    let mut in_flight = BTreeMap::new();
    let mut next = 0u64;
    let mut errors = 0;
    loop {
        while in_flight.len() < 4 && !stop.load(Ordering::Relaxed) {
            let command = json!({"publish": {"channel": channel, "data": {"p": tag, "i": next}}});
            let Some(id) = sdk.try_send(command).await else {
                return errors;
            };
            in_flight.insert(id, next);
            next += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if in_flight.is_empty() {
            return errors;
        }
        let Some(m) = sdk.next().await else {
            return errors;
        };
        if let Some(n) = m["id"].as_u64().and_then(|id| in_flight.remove(&id)) {
            if m.get("error").is_some() {
                errors += 1;
            } else {
                acked.lock().unwrap().push(n);
            }
        }
    }
}

/// A Centrifugo client of the node that will be killed: reads until its
/// connection ends, waits `away`, then connects to `to`, recovers from the
/// last offset it saw and reads until `last`. Returns everything it got,
/// in order, and the recovering `subscribe` reply.
async fn mover(
    mut sdk: Sdk,
    channel: &'static str,
    epoch: Value,
    (to, away): (SocketAddr, Duration),
    last: Value,
) -> (Vec<(u64, Value)>, Value) {
    let mut got = Vec::new();
    while let Some(m) = sdk.next().await {
        let p = &m["push"]["pub"];
        if m["push"]["channel"] == json!(channel) && p.is_object() {
            got.push((p["offset"].as_u64().unwrap(), p["data"].clone()));
        }
    }
    tokio::time::sleep(away).await;
    let since = got.last().map_or(0, |p| p.0);
    let mut sdk = Sdk::connect(to).await;
    let mut sub = recover(&mut sdk, channel, since, &epoch).await;
    got.extend(publications(&sub));
    sub["asked_from"] = json!(since);
    if got.last().map(|p| &p.1) != Some(&last) {
        got.extend(pubs_until(&mut sdk, channel, &last).await);
    }
    (got, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_its_clients_recover_exactly_on_the_others() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let [mut a, b, c] = three_nodes(&redis);
    const CH: &str = "load";
    let last = json!({"last": true});

    // Node A: two Centrifugo clients (they move to B and C) and a seed
    // client; node B: a Centrifugo client that stays; node C: a seed client.
    let mut m0 = Sdk::connect(a.addr).await;
    let epoch = subscribe(&mut m0, CH).await["epoch"].clone();
    let mut m1 = Sdk::connect(a.addr).await;
    subscribe(&mut m1, CH).await;
    let mut seed_a = seed_join(a.addr, CH, "Ann").await;
    let mut stay = Sdk::connect(b.addr).await;
    subscribe(&mut stay, CH).await;
    let mut seed_c = seed_join(c.addr, CH, "Cy").await;

    let movers = [
        // One comes back at once, one after a while (more to recover, but
        // within the 300 a recovery may hold at this publishing rate).
        tokio::spawn(mover(
            m0,
            CH,
            epoch.clone(),
            (b.addr, Duration::ZERO),
            last.clone(),
        )),
        tokio::spawn(mover(
            m1,
            CH,
            epoch.clone(),
            (c.addr, Duration::from_millis(100)),
            last.clone(),
        )),
    ];
    let stayer = {
        let last = last.clone();
        tokio::spawn(async move { pubs_until(&mut stay, CH, &last).await })
    };
    let last_text = last.to_string();
    let seed_c_task = tokio::spawn(async move { chats_until(&mut seed_c, &last_text).await });
    // Node A's seed client: its connection ends; it joins node C again.
    let (rejoined_tx, rejoined) = tokio::sync::oneshot::channel();
    let seed_a_task = {
        let (c_addr, last_text) = (c.addr, last.to_string());
        tokio::spawn(async move {
            while let Some(Ok(_)) = within(STEP, "seed on A", seed_a.next()).await {}
            let mut again = seed_join(c_addr, CH, "Ann").await;
            send_text(&mut again, "Ann is back").await;
            // Its own line comes back through Redis: it chats on node C.
            while next_chat(&mut again).await.0 != "Ann is back" {}
            let _ = rejoined_tx.send(());
            chats_until(&mut again, &last_text).await;
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<Mutex<Vec<u64>>>> = (0..3).map(|_| Arc::default()).collect();
    let mut loads = Vec::new();
    for (i, (n, tag)) in [(&a, "a"), (&b, "b"), (&c, "c")].into_iter().enumerate() {
        let sdk = Sdk::connect(n.addr).await;
        loads.push(tokio::spawn(publish_load(
            sdk,
            CH,
            tag,
            stop.clone(),
            acked[i].clone(),
        )));
    }
    // Kill node A while all three publish.
    let deadline = Instant::now() + STEP;
    while acked[0].lock().unwrap().len() < 150 || acked[1].lock().unwrap().len() < 50 {
        assert!(Instant::now() < deadline, "publishing too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.signal("KILL");
    a.wait(STEP);
    // B and C go on while A's clients move over.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for load in loads {
        errors.push(within(STEP, "publisher ends", load).await.unwrap());
    }
    assert_eq!(&errors[1..], &[0, 0], "B and C publish without errors");
    within(STEP, "the seed client of node A is back", rejoined)
        .await
        .unwrap();
    let mut closer = Sdk::connect(c.addr).await;
    let r = publish(&mut closer, CH, last.clone()).await;
    assert!(r.get("error").is_none(), "{r}");

    let stayed = within(STEP, "stayer", stayer).await.unwrap();
    assert_gapless(&stayed, "the client on node B");
    let (history, top, now_epoch) = closer.whole_history(CH).await;
    assert_eq!(now_epoch, epoch.as_str().unwrap());
    assert_eq!(stayed.len() as u64, top, "the stayer saw the whole stream");
    assert_eq!(history, stayed, "and it is what Redis keeps");
    for (i, m) in movers.into_iter().enumerate() {
        let (got, sub) = within(Duration::from_secs(30), "mover", m).await.unwrap();
        eprintln!(
            "mover {i}: recovered {} publications on another node",
            publications(&sub).len()
        );
        assert_eq!(sub["recovered"], json!(true), "mover {i}: {sub}");
        assert_eq!(sub["epoch"], epoch, "mover {i}: the stream lives in Redis");
        assert_gapless(&got, &format!("mover {i}"));
        assert_eq!(got, stayed, "mover {i}: exactly what the stayer saw");
    }
    eprintln!(
        "stream top {top}; acknowledged a/b/c: {}/{}/{}",
        acked[0].lock().unwrap().len(),
        acked[1].lock().unwrap().len(),
        acked[2].lock().unwrap().len()
    );
    // Every acknowledged publication exactly once, each publisher's in its order.
    for (tag, acked) in ["a", "b", "c"].iter().zip(&acked) {
        let in_stream: Vec<u64> = stayed
            .iter()
            .filter(|p| p.1["p"] == json!(tag))
            .map(|p| p.1["i"].as_u64().unwrap())
            .collect();
        assert!(
            in_stream.windows(2).all(|w| w[0] < w[1]),
            "{tag}: in its order, once"
        );
        let in_stream: BTreeSet<u64> = in_stream.into_iter().collect();
        for n in acked.lock().unwrap().iter() {
            assert!(
                in_stream.contains(n),
                "{tag}: acknowledged publication {n} lost"
            );
        }
    }
    let seed_got = within(STEP, "seed on C", seed_c_task).await.unwrap();
    let want: Vec<Value> = stayed
        .iter()
        .filter(|p| p.1.get("p").is_some() || p.1 == last)
        .map(|p| p.1.clone())
        .collect();
    let seed_pubs: Vec<Value> = seed_got
        .into_iter()
        .filter(|v| v.get("p").is_some() || v == &last)
        .collect();
    assert_eq!(
        seed_pubs, want,
        "the seed client on node C: each once, in order"
    );
    within(STEP, "seed from A", seed_a_task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_then_restarted_under_three_nodes() {
    let _turn = SERIAL.lock().await;
    let mut redis = Redis::start(true);
    let mut nodes = three_nodes(&redis);
    let [a, b, c] = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    let room = "outage";
    for n in [a, b, c] {
        health_until(n, 200).await;
    }
    let mut sub_b = Sdk::connect(b).await;
    let epoch = subscribe(&mut sub_b, room).await["epoch"].clone();
    let mut sub_c = Sdk::connect(c).await;
    subscribe(&mut sub_c, room).await;
    let mut seed_a = seed_join(a, room, "Ann").await;
    let mut seed_c = seed_join(c, room, "Cy").await;
    // A client that will be away during the outage.
    let mut away = Sdk::connect(a).await;
    subscribe(&mut away, room).await;
    let mut pubs = Vec::new();
    for n in [a, b, c] {
        pubs.push(Sdk::connect(n).await);
    }
    let r = publish(&mut pubs[0], room, json!(1)).await;
    assert!(r.get("error").is_none(), "{r}");
    for sub in [&mut sub_b, &mut sub_c, &mut away] {
        assert_eq!(next_pub(sub, room).await, (1, json!(1)));
    }
    assert_eq!(next_chat(&mut seed_c).await.0, "1");
    assert_eq!(next_chat(&mut seed_a).await.0, "1");
    drop(away);

    redis.stop();
    // Every node refuses at once with 100; /health says why; nothing ends.
    for (i, p) in pubs.iter_mut().enumerate() {
        let started = Instant::now();
        let r = publish(p, room, json!({"down": i})).await;
        assert_eq!(r["error"]["code"], json!(100), "node {i}: {r}");
        assert!(started.elapsed() < Duration::from_secs(3), "node {i}");
    }
    for n in [a, b, c] {
        let body = health_until(n, 503).await;
        assert_eq!(body["status"], "unavailable", "{body}");
        assert!(!body["reason"].as_str().unwrap().is_empty(), "{body}");
        assert_eq!(metric(n, "hubbub_redis_up").await, 0);
    }
    for (i, p) in pubs.iter_mut().enumerate() {
        let r = publish(p, room, json!({"still down": i})).await;
        assert_eq!(r["error"]["code"], json!(100), "node {i}: {r}");
    }
    assert_alive(&mut nodes);

    redis.restart();
    for n in [a, b, c] {
        health_until(n, 200).await;
    }
    let r = publish(&mut pubs[2], room, json!(2)).await;
    assert!(r.get("error").is_none(), "{r}");
    let r = publish(&mut pubs[1], room, json!(3)).await;
    assert!(r.get("error").is_none(), "{r}");
    // The nodes subscribed again by themselves: the same stream, the next
    // offsets, nothing of the refused ones.
    for sub in [&mut sub_b, &mut sub_c] {
        assert_eq!(next_pub(sub, room).await, (2, json!(2)));
        assert_eq!(next_pub(sub, room).await, (3, json!(3)));
    }
    for seed in [&mut seed_a, &mut seed_c] {
        assert_eq!(next_chat(seed).await.0, "2");
        assert_eq!(next_chat(seed).await.0, "3");
    }
    for n in [a, b, c] {
        assert!(metric(n, "hubbub_redis_reconnects_total").await >= 1);
    }
    // The client that was away recovers what it missed, on any node.
    for n in [a, c] {
        let mut back = Sdk::connect(n).await;
        let sub = recover(&mut back, room, 1, &epoch).await;
        assert_eq!(sub["recovered"], json!(true), "{sub}");
        assert_eq!(publications(&sub), vec![(2, json!(2)), (3, json!(3))]);
    }
    assert_alive(&mut nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_starts_a_new_epoch_on_every_node() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let nodes = three_nodes(&redis);
    let room = "flush";
    let mut subs = Vec::new();
    let mut old = Value::Null;
    for n in &nodes {
        let mut sdk = Sdk::connect(n.addr).await;
        old = subscribe(&mut sdk, room).await["epoch"].clone();
        subs.push(sdk);
    }
    let mut seed_b = seed_join(nodes[1].addr, room, "Bo").await;
    let mut pub_a = Sdk::connect(nodes[0].addr).await;
    for i in 1..=3 {
        let r = publish(&mut pub_a, room, json!(i)).await;
        assert!(r.get("error").is_none(), "{r}");
        for sub in &mut subs {
            assert_eq!(next_pub(sub, room).await, (i, json!(i)));
        }
        assert_eq!(next_chat(&mut seed_b).await.0, i.to_string());
    }
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    // Through the server API of node C: its answer names the position.
    let r = api(
        nodes[2].addr,
        "publish",
        &json!({"channel": room, "data": "after"}),
    )
    .await;
    let new = r["result"]["epoch"].clone();
    assert_eq!(r["result"]["offset"], json!(1), "{r}");
    assert_ne!(new, old, "{r}");
    // The new stream's first publication reaches every node.
    for sub in &mut subs {
        assert_eq!(next_pub(sub, room).await, (1, json!("after")));
    }
    assert_eq!(next_chat(&mut seed_b).await.0, r#""after""#);
    for n in &nodes {
        let mut late = Sdk::connect(n.addr).await;
        let sub = recover(&mut late, room, 3, &old).await;
        // `recovered: false` is omitted, as Centrifugo omits empty fields.
        assert_eq!(sub["was_recovering"], json!(true), "{sub}");
        assert_ne!(sub["recovered"], json!(true), "{sub}");
        assert_ne!(sub["epoch"], old, "{sub}");
        assert_eq!(sub["epoch"], new, "{sub}");
        assert_eq!(sub["offset"], json!(1), "{sub}");
    }
}

/// Reads seed messages until an `online_users` listing exactly `want`
/// (in any order); fails after `limit`.
async fn online_until(ws: &mut Ws, want: &[&str], limit: Duration) {
    let want: BTreeSet<&str> = want.iter().copied().collect();
    within(limit, "online_users", async {
        loop {
            let m = next_seed(ws).await;
            if m.kind == SeedType::OnlineUsers {
                let got: BTreeSet<&str> = m.content.split(',').filter(|s| !s.is_empty()).collect();
                if got == want {
                    return;
                }
            }
        }
    })
    .await;
}

/// A seed client in `room` as `user`, past its own join notices; with the
/// `online_users` it got just before them.
async fn seed_join_online(addr: SocketAddr, room: &str, user: &str) -> (Ws, String) {
    let url = format!("ws://{addr}/ws/{room}?username={user}");
    let (mut ws, _) = within(STEP, "seed connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    let mut online = String::new();
    loop {
        let m = next_seed(&mut ws).await;
        match m.kind {
            SeedType::OnlineUsers => online = m.content,
            SeedType::UserJoined if m.username == user => return (ws, online),
            _ => {}
        }
    }
}

/// The users (by name) in a presence result's `presence` object.
fn users(presence: &Value) -> BTreeSet<String> {
    presence
        .as_object()
        .map(|m| {
            m.values()
                .map(|i| i["user"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_nodes_and_a_killed_nodes_members_leave_within_the_ttl() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let ttl = Duration::from_secs(2);
    let [mut a, b, c] = three_nodes_with(&redis, &["--presence-ttl", "2s"]);
    let room = "town";
    let mut ann = seed_join(a.addr, room, "ann").await;
    let mut bob = seed_join(b.addr, room, "bob").await;
    // A Centrifugo client on node C, with join/leave pushes.
    let mut sdk = Sdk::connect(c.addr).await;
    let reply = sdk
        .call(json!({"subscribe": {"channel": room, "join_leave": true}}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    let (mut cat, online) = seed_join_online(c.addr, room, "cat").await;
    // Each seed client sees every node's members; the newcomer on node C
    // gets them in its first list, those already there first.
    assert_eq!(online, "ann,bob,cat");
    online_until(&mut ann, &["ann", "bob", "cat"], STEP).await;
    online_until(&mut bob, &["ann", "bob", "cat"], STEP).await;
    // Presence on node C lists the members on A and B; so does the API on A.
    let p = sdk.call(json!({"presence": {"channel": room}})).await;
    let p = &p["presence"]["presence"];
    assert_eq!(p.as_object().map(serde_json::Map::len), Some(4), "{p}");
    assert_eq!(
        users(p),
        ["", "ann", "bob", "cat"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
    let stats = sdk.call(json!({"presence_stats": {"channel": room}})).await;
    assert_eq!(stats["presence_stats"]["num_clients"], 4, "{stats}");
    let via_api = api(a.addr, "presence", &json!({"channel": room})).await;
    assert_eq!(users(&via_api["result"]["presence"]), users(p), "{via_api}");
    // A leave on node A reaches node C as a Centrifugo leave push and a
    // seed notice.
    drop(ann);
    let left = sdk
        .until(|m| m["push"]["leave"]["info"]["user"] == json!("ann"))
        .await;
    assert_eq!(left["push"]["channel"], json!(room));
    seed_until(&mut cat, |m| {
        m.kind == SeedType::UserLeft && m.username == "ann"
    })
    .await;
    online_until(&mut cat, &["bob", "cat"], STEP).await;
    // A joins again, then node B dies: bob leaves everywhere within the TTL.
    let (again, online) = seed_join_online(a.addr, room, "ann").await;
    ann = again;
    let mut names: Vec<&str> = online.split(',').collect();
    assert_eq!(
        names.pop(),
        Some("ann"),
        "{online}: those there first come first"
    );
    names.sort_unstable();
    assert_eq!(names, ["bob", "cat"], "{online}");
    b.signal("KILL");
    let killed = Instant::now();
    drop(bob);
    online_until(&mut ann, &["ann", "cat"], ttl + Duration::from_secs(3)).await;
    online_until(&mut cat, &["ann", "cat"], ttl + Duration::from_secs(3)).await;
    let took = killed.elapsed();
    eprintln!("a killed node's members left the others after {took:?} (ttl {ttl:?})");
    sdk.until(|m| m["push"]["leave"]["info"]["user"] == json!("bob"))
        .await;
    let p = sdk.call(json!({"presence": {"channel": room}})).await;
    assert_eq!(
        users(&p["presence"]["presence"]),
        ["", "ann", "cat"].map(str::to_owned).into_iter().collect()
    );
    assert!(metric(c.addr, "hubbub_redis_nodes_gone_total").await >= 1);
    // Redis loses everything: the nodes write their members again, and
    // presence is whole after a full TTL (a periodic read included).
    assert_eq!(redis.command("FLUSHALL"), "+OK");
    tokio::time::sleep(ttl * 2).await;
    // ann, cat and the Centrifugo client, and the hash's version field.
    assert_eq!(redis.command("HLEN hubbub:{town}:presence"), ":4");
    let p = sdk.call(json!({"presence": {"channel": room}})).await;
    assert_eq!(
        users(&p["presence"]["presence"]),
        ["", "ann", "cat"].map(str::to_owned).into_iter().collect()
    );
    assert_alive(std::slice::from_mut(&mut a));
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_a_node_without_members_sees_and_acts_on_the_whole_cluster() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let [a, b, c] = three_nodes_with(&redis, &["--presence-ttl", "2s"]);
    let mut ann = seed_join(c.addr, "town", "ann").await;
    let mut sdk = Sdk::connect(b.addr).await;
    let reply = sdk.call(json!({"subscribe": {"channel": "news"}})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    // Node A has nobody in either channel; its API answers for all nodes.
    let p = api(a.addr, "presence", &json!({"channel": "town"})).await;
    assert_eq!(
        users(&p["result"]["presence"]),
        BTreeSet::from(["ann".to_owned()]),
        "{p}"
    );
    let s = api(a.addr, "presence_stats", &json!({"channel": "news"})).await;
    assert_eq!(s["result"]["num_clients"], 1, "{s}");
    let ch = api(a.addr, "channels", &json!({})).await;
    assert_eq!(ch["result"]["channels"]["town"]["num_clients"], 1, "{ch}");
    assert_eq!(ch["result"]["channels"]["news"]["num_clients"], 1, "{ch}");
    let only = api(a.addr, "channels", &json!({"pattern": "n*"})).await;
    assert_eq!(
        only["result"]["channels"]
            .as_object()
            .map(serde_json::Map::len),
        Some(1),
        "{only}"
    );
    // `info` lists every live node (their entries come with their beats).
    let deadline = Instant::now() + STEP;
    loop {
        let info = api(a.addr, "info", &json!({})).await;
        let nodes = info["result"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let clients: u64 = nodes.iter().filter_map(|n| n["num_clients"].as_u64()).sum();
        if nodes.len() == 3 && clients == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "info: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A batch on node A widens each of its commands the same way.
    let mut bob = seed_join(c.addr, "lobby", "bob").await;
    let r = api(
        a.addr,
        "batch",
        &json!({"commands": [
            {"presence": {"channel": "town"}},
            {"presence_stats": {"channel": "news"}},
            {"disconnect": {"user": "bob"}},
            {"history": {"channel": ""}}
        ]}),
    )
    .await;
    let replies = r["result"]["replies"].clone();
    assert_eq!(
        users(&replies[0]["presence"]["presence"]),
        BTreeSet::from(["ann".to_owned()]),
        "{r}"
    );
    assert_eq!(replies[1]["presence_stats"]["num_clients"], 1, "{r}");
    assert!(replies[2].get("disconnect").is_some(), "{r}");
    assert!(replies[3].get("error").is_some(), "{r}");
    // Disconnecting a user on node A ends its connection on node C, in a
    // batch as alone.
    let r = api(a.addr, "disconnect", &json!({"user": "ann"})).await;
    assert!(r.get("error").is_none(), "{r}");
    for (name, ws) in [("bob", &mut bob), ("ann", &mut ann)] {
        within(STEP, &format!("{name}'s connection to end"), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
    // Its leave is written once node C has seen the connection end.
    let deadline = Instant::now() + STEP;
    loop {
        let p = api(b.addr, "presence", &json!({"channel": "town"})).await;
        if users(&p["result"]["presence"]).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "ann is still present: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((a, b, c));
}

/// Node 4242 is alive (its liveness ends far in the future) and gets a
/// member, zed, in town, written straight into Redis with the version
/// moved, without telling anyone on pub/sub.
fn zed_joins_town_behind_pub_sub(redis: &Redis) {
    assert_eq!(
        redis.command("ZADD hubbub:0:nodes 99999999999999 4242"),
        ":1"
    );
    let zed = r#""\x01\x00\x00\x00\x03zed\xff\xff\xff\xff\xff\xff\xff\xff""#;
    assert_eq!(
        redis.command(&format!("HSET hubbub:{{town}}:presence 4242:77 {zed}")),
        ":1"
    );
    redis.command("HINCRBY hubbub:{town}:presence v 1");
}

/// Presence changes whose pub/sub message never came (written straight
/// into Redis here) reach every node by the periodic read: the hash's
/// version moved, so each node reads it again within the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_pub_sub_lost_are_healed_by_the_periodic_read() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let ttl = Duration::from_secs(2);
    let [a, _b, c] = three_nodes_with(&redis, &["--presence-ttl", "2s"]);
    let (_ann, _) = seed_join_online(a.addr, "town", "ann").await;
    let (mut cat, online) = seed_join_online(c.addr, "town", "cat").await;
    assert_eq!(online, "ann,cat");
    zed_joins_town_behind_pub_sub(&redis);
    online_until(&mut cat, &["ann", "cat", "zed"], ttl * 2).await;
    // And leaves the same way.
    assert_eq!(redis.command("HDEL hubbub:{town}:presence 4242:77"), ":1");
    redis.command("HINCRBY hubbub:{town}:presence v 1");
    online_until(&mut cat, &["ann", "cat"], ttl * 2).await;
    drop((a, c));
}

/// A channel whose members did not change is not read again: the read a
/// node makes when it starts following the channel notes the hash's
/// version, and the changes after it (heard on pub/sub) move it. Before,
/// every node read every channel it had just followed whole once more
/// within a TTL, so a join storm of 95,000 clients over five nodes cost a
/// second read of every member on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_members_did_not_change_is_not_read_again() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let ttl = Duration::from_secs(2);
    let [a, _b, c] = three_nodes_with(&redis, &["--presence-ttl", "2s"]);
    let snapshots = "hubbub_redis_snapshots_total";
    let (_ann, _) = seed_join_online(a.addr, "town", "ann").await;
    let (mut cat, online) = seed_join_online(c.addr, "town", "cat").await;
    assert_eq!(online, "ann,cat");
    let (read_a, read_c) = (
        metric(a.addr, snapshots).await,
        metric(c.addr, snapshots).await,
    );
    // Each node read town once, when its first member joined there.
    assert_eq!((read_a, read_c), (1, 1));
    // Two TTLs: every channel's version was looked at twice by each node.
    tokio::time::sleep(ttl * 2 + Duration::from_millis(500)).await;
    assert_eq!(
        metric(a.addr, snapshots).await,
        read_a,
        "node a read town again"
    );
    assert_eq!(
        metric(c.addr, snapshots).await,
        read_c,
        "node c read town again"
    );
    // A change pub/sub did not carry is still read (the version moved).
    zed_joins_town_behind_pub_sub(&redis);
    online_until(&mut cat, &["ann", "cat", "zed"], ttl * 2).await;
    assert_eq!(metric(c.addr, snapshots).await, read_c + 1);
    drop((a, c));
}

/// Reads `ws` until `want` says stop, skipping the relay's readiness
/// probes; returns the data frames read (text or binary, as sent).
async fn relay_until(ws: &mut Ws, mut want: impl FnMut(&Message) -> bool) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        let m = common::next(ws).await;
        if matches!(&m, Message::Text(t) if t.as_str().starts_with("ready ")) {
            continue;
        }
        let stop = want(&m);
        got.push(m);
        if stop {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_frames_reach_every_relay_client_on_every_node() {
    let _turn = SERIAL.lock().await;
    let redis = Redis::start(false);
    let nodes = three_nodes(&redis);
    let mut relays = Vec::new();
    for n in &nodes {
        let url = format!("ws://{}/ws", n.addr);
        let (ws, _) = within(STEP, "relay connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        relays.push(ws);
    }
    // A node hears the others once it has subscribed in Redis: each client
    // probes until every other node's client has heard it.
    for from in 0..relays.len() {
        let mut heard = BTreeSet::new();
        let deadline = Instant::now() + STEP;
        while heard.len() < relays.len() - 1 {
            assert!(Instant::now() < deadline, "node {from} never heard");
            send_text(&mut relays[from], &format!("ready {from}")).await;
            for (to, ws) in relays.iter_mut().enumerate() {
                if to == from || heard.contains(&to) {
                    continue;
                }
                let wait = Duration::from_millis(200);
                while let Ok(Some(Ok(m))) = tokio::time::timeout(wait, ws.next()).await {
                    if matches!(&m, Message::Text(t) if t.as_str() == format!("ready {from}")) {
                        heard.insert(to);
                        break;
                    }
                }
            }
        }
    }
    // From each node a text and a binary frame.
    let mut sent = Vec::new();
    for (i, ws) in relays.iter_mut().enumerate() {
        let text = Message::text(format!("hello from node {i} ✓"));
        let binary = Message::binary(vec![0xff, i as u8, 0x00, b'b']);
        for m in [text, binary] {
            within(STEP, "send", ws.send(m.clone())).await.unwrap();
            sent.push(m);
        }
    }
    for (i, ws) in relays.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < sent.len() {
            got.extend(relay_until(ws, |_| true).await);
        }
        for m in &sent {
            let times = got.iter().filter(|g| *g == m).count();
            assert_eq!(times, 1, "node {i}: {m:?} once, as sent (opcode and bytes)");
        }
    }
    // Nothing else follows: each client's next frames are the end markers.
    for (i, ws) in relays.iter_mut().enumerate() {
        send_text(ws, &format!("end {i}")).await;
    }
    for (i, ws) in relays.iter_mut().enumerate() {
        let mut ends = 0;
        let got = relay_until(ws, |m| {
            ends += usize::from(matches!(m, Message::Text(t) if t.as_str().starts_with("end ")));
            ends == 3
        })
        .await;
        assert_eq!(got.len(), 3, "node {i}: only the end markers, got {got:?}");
    }
}
