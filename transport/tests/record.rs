//! `--record-inputs`: the real binary records what its hub received while
//! clients chat, join and leave (seed rooms, the relay, Centrifugo), shuts
//! down, and the recording replayed in the simulator
//! (`hubbub_sim::replay`) breaks no rule and gives the same outputs,
//! compared by the hash the server wrote into the recording's trailer.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::process::Process;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hubbub-record-{name}-{}", std::process::id()))
}

async fn open(server: &Process, path: &str) -> Ws {
    let url = format!("ws://{}{path}", server.addr);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    .unwrap()
    .unwrap();
    ws
}

/// Reads (answering pings) until a text frame containing `needle`.
async fn read_until(ws: &mut Ws, needle: &str) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().contains(needle) => return,
                Some(Ok(_)) => {}
                other => panic!("waiting for {needle:?}: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no frame with {needle:?}"));
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Some load: seed members chatting in two rooms, relay clients, a
/// Centrifugo client subscribing and publishing, joins and leaves, and
/// heartbeats (pings every 100 ms) while it goes on.
async fn chat(server: &Process) {
    let mut seeds = Vec::new();
    for (room, user) in [("a", "ann"), ("a", "bob"), ("b", "cat"), ("a", "dan")] {
        let mut ws = open(server, &format!("/ws/{room}?username={user}")).await;
        read_until(&mut ws, &format!("\"username\":\"{user}\"")).await;
        seeds.push(ws);
    }
    let mut relay = vec![open(server, "/ws").await, open(server, "/ws").await];
    let mut centrifuge = open(server, "/connection/websocket").await;
    send(
        &mut centrifuge,
        r#"{"id":1,"connect":{"name":"t"}}
{"id":2,"subscribe":{"channel":"a","join_leave":true}}"#,
    )
    .await;
    read_until(&mut centrifuge, r#""id":2"#).await;
    for round in 0..20 {
        for (i, ws) in seeds.iter_mut().enumerate() {
            send(ws, &format!("line {round} from {i} \"quoted\" é")).await;
        }
        send(&mut relay[round % 2], &format!("relay {round}")).await;
        send(
            &mut centrifuge,
            &format!(
                r#"{{"id":{},"publish":{{"channel":"a","data":{{"n":{round}}}}}}}"#,
                3 + round
            ),
        )
        .await;
        if round == 10 {
            // A member leaves and another comes.
            let mut gone = seeds.remove(1);
            gone.close(None).await.unwrap();
            let mut ws = open(server, "/ws/b?username=eve").await;
            read_until(&mut ws, "\"username\":\"eve\"").await;
            seeds.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    // Everyone reads what was sent (and answers pings meanwhile).
    read_until(&mut seeds[0], "line 19 from 2").await;
    read_until(&mut centrifuge, r#""id":22"#).await;
    read_until(&mut relay[0], "relay 19").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for ws in &mut seeds {
        let _ = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
    }
    drop(seeds);
    drop(relay);
    drop(centrifuge);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_recorded_server_replays_to_the_same_outputs() {
    let path = temp("replay");
    let file = path.to_str().unwrap();
    let mut server = Process::start(&[
        "--shards",
        "1",
        "--record-inputs",
        file,
        "--ping-interval",
        "100ms",
        "--pong-timeout",
        "1s",
    ]);
    chat(&server).await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(15)), Some(0));

    let data = std::fs::read(&path).unwrap();
    let replayed = hubbub_sim::replay::replay(&data).unwrap();
    assert_eq!(replayed.violation, None);
    assert_eq!(replayed.stopped, None);
    let (records, dropped, hash) = replayed
        .trailer
        .expect("a clean shutdown writes the trailer");
    assert_eq!(dropped, 0);
    assert_eq!(records, replayed.records);
    assert!(records > 100, "only {records} inputs recorded");
    assert!(replayed.outputs > 300, "only {} outputs", replayed.outputs);
    assert_eq!(
        hash, replayed.outputs_hash,
        "the replay's outputs are the server's"
    );
    assert!(replayed.same_outputs());

    // A damaged recording is not the server's any more: one changed byte
    // in a chat line changes the replay's outputs.
    let at = data
        .windows(6)
        .position(|w| w == b"line 3")
        .expect("contents are recorded");
    let mut damaged = data;
    damaged[at + 5] = b'4';
    let other = hubbub_sim::replay::replay(&damaged).unwrap();
    assert_ne!(other.outputs_hash, hash);
    assert!(!other.same_outputs());
    let _ = std::fs::remove_file(&path);
}

/// A raw `POST /api/{method}` with the test key; the status line's code.
async fn api(addr: std::net::SocketAddr, method: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: t\r\nX-API-Key: k3y\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// With the SQLite store (the default engine) and the server API: the
/// store's answers and the API requests are recorded too, and the replay
/// (a hub with an external store, fed the recorded answers) gives the
/// server's outputs and API replies.
#[tokio::test]
async fn a_recorded_sqlite_server_with_api_calls_replays_to_the_same_outputs() {
    let path = temp("sqlite");
    let dir = temp("sqlite-data");
    let _ = std::fs::remove_dir_all(&dir);
    let file = path.to_str().unwrap();
    let mut server = Process::start(&[
        "--shards",
        "1",
        "--store",
        "sqlite",
        "--data-dir",
        dir.to_str().unwrap(),
        "--api-key",
        "k3y",
        "--record-inputs",
        file,
        "--ping-interval",
        "100ms",
        "--pong-timeout",
        "1s",
    ]);
    let mut watcher = open(&server, "/connection/websocket").await;
    send(
        &mut watcher,
        r#"{"id":1,"connect":{"name":"w"}}
{"id":2,"subscribe":{"channel":"a"}}"#,
    )
    .await;
    read_until(&mut watcher, r#""id":2"#).await;
    let api_calls = tokio::spawn({
        let addr = server.addr;
        async move {
            let mut codes = Vec::new();
            for n in 0..10 {
                codes.push(
                    api(
                        addr,
                        "publish",
                        &format!(r#"{{"channel":"a","data":{{"api":{n}}}}}"#),
                    )
                    .await,
                );
                codes.push(api(addr, "presence", r#"{"channel":"a"}"#).await);
                codes.push(api(addr, "history", r#"{"channel":"a","limit":3}"#).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            codes.push(api(addr, "info", "{}").await);
            codes
        }
    });
    chat(&server).await;
    let codes = api_calls.await.unwrap();
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    read_until(&mut watcher, r#"{"api":9}"#).await;
    drop(watcher);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(15)), Some(0));

    let data = std::fs::read(&path).unwrap();
    let replayed = hubbub_sim::replay::replay(&data).unwrap();
    assert_eq!(replayed.violation, None);
    assert_eq!(replayed.stopped, None);
    let (records, dropped, hash) = replayed.trailer.expect("trailer");
    assert_eq!(dropped, 0);
    assert_eq!(records, replayed.records);
    assert_eq!(
        hash, replayed.outputs_hash,
        "the replay's outputs and API replies are the server's"
    );
    // Store answers and API requests are in the recording.
    let (mut reader, header) = hubbub_core::record::Reader::new(&data).unwrap();
    assert_eq!(header.engine, hubbub_core::record::Engine::External);
    let (mut stores, mut apis) = (0, 0);
    while let Ok(Some(record)) = reader.next_record() {
        match record {
            hubbub_core::record::Record::Store { .. } => stores += 1,
            hubbub_core::record::Record::Api { .. } => apis += 1,
            _ => {}
        }
    }
    assert_eq!(apis, 31);
    assert!(stores > 60, "only {stores} store events");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn redaction_hides_contents_and_the_cap_stops_the_file() {
    let path = temp("redact");
    let file = path.to_str().unwrap();
    let mut server = Process::start(&[
        "--shards",
        "1",
        "--record-inputs",
        file,
        "--record-inputs-redact",
        "--record-inputs-max-bytes",
        "4096",
    ]);
    chat(&server).await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(15)), Some(0));
    let data = std::fs::read(&path).unwrap();
    assert!(data.len() <= 4096, "{} bytes", data.len());
    assert!(!data.windows(4).any(|w| w == b"line"), "contents redacted");
    let replayed = hubbub_sim::replay::replay(&data).unwrap();
    assert!(replayed.redacted);
    let (_, dropped, _) = replayed.trailer.expect("trailer");
    assert!(dropped > 0, "the cap dropped inputs");
    assert!(!replayed.complete());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn recording_is_refused_with_several_shards() {
    let out = std::process::Command::new(common::process::BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--store",
            "memory",
        ])
        .args(["--record-inputs", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--record-inputs needs --shards 1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_redis_node_with_members_on_another_node_replays_to_the_same_outputs() {
    let redis = common::redis::Redis::start(false);
    let path = temp("redis");
    let file = path.to_str().unwrap();
    let url = redis.url();
    let base = [
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--presence-ttl",
        "1s",
    ];
    let other = Process::start(&base);
    let mut args = base.to_vec();
    args.extend([
        "--shards",
        "1",
        "--record-inputs",
        file,
        "--ping-interval",
        "100ms",
        "--pong-timeout",
        "1s",
    ]);
    let mut server = Process::start(&args);
    // Members on the other node, in the same rooms: their joins, leaves
    // and lists reach the recorded node as store events.
    let mut zed = open(&other, "/ws/a?username=zed").await;
    read_until(&mut zed, r#""username":"zed""#).await;
    let mut watcher = open(&other, "/connection/websocket").await;
    send(
        &mut watcher,
        r#"{"id":1,"connect":{"name":"w"}}
{"id":2,"subscribe":{"channel":"a","join_leave":true}}"#,
    )
    .await;
    read_until(&mut watcher, r#""id":2"#).await;
    let other_addr = other.addr;
    let leaver = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(zed);
        let url = format!("ws://{other_addr}/ws/b?username=yan");
        let (mut yan, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        read_until(&mut yan, r#""username":"yan""#).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        yan
    });
    chat(&server).await;
    let yan = leaver.await.unwrap();
    drop((yan, watcher));
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(15)), Some(0));
    drop(other);

    let data = std::fs::read(&path).unwrap();
    let replayed = hubbub_sim::replay::replay(&data).unwrap();
    assert_eq!(replayed.violation, None);
    assert_eq!(replayed.stopped, None);
    let (records, dropped, hash) = replayed.trailer.expect("trailer");
    assert_eq!((dropped, records), (0, replayed.records));
    assert_eq!(
        hash, replayed.outputs_hash,
        "the replay's outputs are the server's"
    );
    let (mut reader, header) = hubbub_core::record::Reader::new(&data).unwrap();
    assert_eq!(header.engine, hubbub_core::record::Engine::Delivering);
    let mut remote = 0;
    while let Ok(Some(record)) = reader.next_record() {
        if let hubbub_core::record::Record::Store { event, .. } = record {
            if matches!(
                event,
                hubbub_core::StoreEvent::RemoteJoined { .. }
                    | hubbub_core::StoreEvent::RemoteLeft { .. }
                    | hubbub_core::StoreEvent::RemoteMembers { .. }
            ) {
                remote += 1;
            }
        }
    }
    assert!(
        remote >= 3,
        "only {remote} events about the other node's members"
    );
    let _ = std::fs::remove_file(&path);
}
