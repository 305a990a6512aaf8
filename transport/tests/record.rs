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
