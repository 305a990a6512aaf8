//! Shards end to end: connections are spread over the shards round robin,
//! so one room spans all of them. Every member, on every shard and in both
//! protocols, sees every message once and in the same order, presence is
//! exact across shards, and the bus between shards was really used.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hubbub::ServerConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SHARDS: usize = 4;

async fn server() -> TestServer {
    TestServer::start(ServerConfig {
        shards: SHARDS,
        ..config()
    })
    .await
}

/// A Centrifugo client that connects and subscribes to `channel` and
/// returns once its subscribe reply came.
async fn sdk(server: &TestServer, channel: &str) -> (Ws, String) {
    let mut ws = connect(server, "/connection/websocket").await;
    let frame = format!(
        "{}\n{}",
        json!({"id": 1, "connect": {}}),
        json!({"id": 2, "subscribe": {"channel": channel, "join_leave": true}})
    );
    ws.send(Message::text(frame)).await.unwrap();
    let mut client = String::new();
    loop {
        for m in sdk_messages(&mut ws).await {
            if m["id"] == 1 {
                client = m["connect"]["client"].as_str().unwrap().to_owned();
            }
            if m["id"] == 2 {
                assert!(m["error"].is_null(), "{m}");
                return (ws, client);
            }
        }
    }
}

/// The messages of the next text frame (pings answered).
async fn sdk_messages(ws: &mut Ws) -> Vec<Value> {
    loop {
        let text = next_text(ws).await;
        let msgs: Vec<Value> = text
            .split('\n')
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if msgs.iter().any(|m| *m == json!({})) {
            ws.send(Message::text("{}")).await.unwrap();
        }
        let msgs: Vec<Value> = msgs.into_iter().filter(|m| *m != json!({})).collect();
        if !msgs.is_empty() {
            return msgs;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_every_shard_and_everyone_sees_one_order() {
    let server = server().await;
    // 8 seed clients and 8 SDK clients: with 4 shards and round robin,
    // every shard holds members of both kinds.
    let mut seeds = Vec::new();
    for i in 0..8 {
        seeds.push(join(&server, "hall", &format!("s{i}")).await);
    }
    let mut sdks = Vec::new();
    for _ in 0..8 {
        sdks.push(sdk(&server, "hall").await);
    }
    // Everyone sends 5 lines, interleaved.
    for round in 0..5 {
        for (i, ws) in seeds.iter_mut().enumerate() {
            send_text(ws, &format!("seed {i} line {round}")).await;
        }
        for (i, (ws, _)) in sdks.iter_mut().enumerate() {
            let publish = json!({"id": 10 + round, "publish": {"channel": "hall", "data": {"text": format!("sdk {i} line {round}")}}});
            ws.send(Message::text(publish.to_string())).await.unwrap();
        }
    }
    let total = 16 * 5;
    // Every seed member reads all 80 chat lines; every SDK member all 80
    // publications, offsets 1..=80 in order. All in one order.
    let mut orders: Vec<Vec<String>> = Vec::new();
    for ws in &mut seeds {
        let mut lines = Vec::new();
        while lines.len() < total {
            let m = next_seed(ws).await;
            if m.kind == hubbub_core::SeedType::Chat {
                lines.push(m.content);
            }
        }
        orders.push(lines);
    }
    for (ws, _) in &mut sdks {
        let mut lines = Vec::new();
        let mut offsets = Vec::new();
        while lines.len() < total {
            for m in sdk_messages(ws).await {
                if let Some(p) = m["push"].get("pub") {
                    lines.push(p["data"]["text"].as_str().unwrap().to_owned());
                    offsets.push(p["offset"].as_u64().unwrap());
                }
            }
        }
        let first = offsets[0];
        let expected: Vec<u64> = (first..first + total as u64).collect();
        assert_eq!(offsets, expected, "offsets rise by one");
        orders.push(lines);
    }
    let distinct: BTreeSet<&Vec<String>> = orders.iter().collect();
    assert_eq!(distinct.len(), 1, "every member saw the same order");
    assert_eq!(
        orders[0].iter().collect::<BTreeSet<_>>().len(),
        total,
        "each line once"
    );

    // Presence is exact across shards: all 16 members.
    let (ws, _) = &mut sdks[0];
    ws.send(Message::text(
        json!({"id": 99, "presence_stats": {"channel": "hall"}}).to_string(),
    ))
    .await
    .unwrap();
    let stats = loop {
        if let Some(m) = sdk_messages(ws).await.into_iter().find(|m| m["id"] == 99) {
            break m;
        }
    };
    assert_eq!(stats["presence_stats"]["num_clients"], 16);
    assert_eq!(
        stats["presence_stats"]["num_users"], 9,
        "8 seed names + anonymous"
    );

    // A seed departure on one shard reaches members on every other one.
    let leaver = seeds.pop().unwrap();
    drop(leaver);
    for ws in &mut seeds {
        let m = seed_until(ws, |m| m.kind == hubbub_core::SeedType::OnlineUsers).await;
        assert_eq!(m.content.split(',').count(), 7, "{}", m.content);
    }

    let metrics = get(server.addr, "/metrics", &[]).await;
    let bus = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("hubbub_bus_messages_total "))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(bus > 0, "messages crossed shards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reaches_every_shard_verbatim() {
    let server = server().await;
    let mut clients = Vec::new();
    for _ in 0..SHARDS * 2 {
        clients.push(connect(&server, "/ws").await);
    }
    // A relay connection joins at the relay's home over the bus, after its
    // handshake: wait until every one of them hears a probe (re-sent until
    // they all have), so none is still joining when the test's frames go.
    let mut ready = vec![false; clients.len()];
    for round in 0.. {
        assert!(round < 100, "relay connections never all joined");
        clients[0]
            .send(Message::text(format!("probe {round}")))
            .await
            .unwrap();
        for (i, ws) in clients.iter_mut().enumerate() {
            while !ready[i] {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(std::time::Duration::from_millis(50), ws.next()).await
                else {
                    break;
                };
                ready[i] = matches!(m, Message::Text(ref t) if t.as_str().starts_with("probe"));
            }
        }
        if ready.iter().all(|r| *r) {
            break;
        }
    }
    clients[1]
        .send(Message::text("over the bus"))
        .await
        .unwrap();
    clients[2]
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    for ws in &mut clients {
        let mut got = Vec::new();
        while got.len() < 2 {
            let m = within(STEP, "relayed frame", ws.next())
                .await
                .unwrap()
                .unwrap();
            if matches!(&m, Message::Text(t) if t.as_str().starts_with("probe")) {
                continue; // a probe sent before everyone was ready
            }
            if let m @ (Message::Text(_) | Message::Binary(_)) = m {
                got.push(m);
            }
        }
        assert!(got.contains(&Message::text("over the bus")));
        assert!(got.contains(&Message::binary(vec![0u8, 159, 146, 150])));
    }
}
