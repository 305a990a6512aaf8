//! Heartbeat: a client that never answers pings is dropped after about
//! `--pong-timeout`; a client that keeps reading (and so answers pings)
//! stays connected.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use hubbub::ServerConfig;
use hubbub_core::SeedType;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_pong_timeout_and_a_reading_one_stays() {
    let ping_interval = Duration::from_millis(100);
    let pong_timeout = Duration::from_millis(300);
    let mut server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            ping_interval,
            pong_timeout,
            ..hubbub_core::Config::default()
        },
        ..config()
    })
    .await;
    let mut watcher = join(&server, "hb", "watcher").await;
    let mut silent = RawWs::connect(server.addr, "/ws/hb?username=silent").await;
    let joined_at = Instant::now();
    seed_until(&mut watcher, |m| {
        m.kind == SeedType::UserJoined && m.username == "silent"
    })
    .await;

    // The watcher reads (and so answers pings) the whole time.
    let left = seed_until(&mut watcher, |m| m.kind == SeedType::UserLeft).await;
    let after = joined_at.elapsed();
    assert_eq!(left.content, "silent left the room");
    assert!(
        after >= pong_timeout - Duration::from_millis(50) && after < pong_timeout * 5,
        "dropped after {after:?}, pong timeout {pong_timeout:?}"
    );
    assert_eq!(next_seed(&mut watcher).await.content, "watcher");

    // What the silent client was sent: pings, then a 1008 close.
    let (close, before) = silent.read_until_close().await;
    assert_eq!(close.close_code(), 1008);
    assert_eq!(&close.payload[2..], b"heartbeat timeout: no pong");
    let pings = before.iter().filter(|f| f.opcode == OP_PING).count();
    assert!(pings >= 1, "{before:?}");

    // The watcher stays across many ping intervals: keep reading for ten
    // pong timeouts; nothing but pings arrive, and then it still chats.
    let quiet_until = tokio::time::Instant::now() + pong_timeout * 10;
    let mut pings_seen = 0;
    while let Ok(m) = tokio::time::timeout_at(quiet_until, watcher.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings_seen += 1,
            other => panic!("unexpected while idle: {other:?}"),
        }
    }
    assert!(
        pings_seen >= 5,
        "only {pings_seen} pings in {:?}",
        pong_timeout * 10
    );
    send_text(&mut watcher, "still here").await;
    let m = next_seed(&mut watcher).await;
    assert_eq!((m.kind, m.content.as_str()), (SeedType::Chat, "still here"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_pings_by_hand_stays() {
    let mut server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            ping_interval: Duration::from_millis(100),
            pong_timeout: Duration::from_millis(300),
            ..hubbub_core::Config::default()
        },
        ..config()
    })
    .await;
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    let mut answered = 0;
    while answered < 10 {
        let f = raw.read_frame().await.expect("still connected");
        assert_eq!(f.opcode, OP_PING, "{f:?}");
        raw.send_frame(true, OP_PONG, &f.payload).await;
        answered += 1;
    }
    raw.send_frame(true, OP_TEXT, b"alive").await;
    loop {
        let f = raw.read_frame().await.expect("still connected");
        if f.opcode == OP_TEXT {
            assert_eq!(f.payload, b"alive");
            break;
        }
        assert_eq!(f.opcode, OP_PING);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_pongs_do_not_keep_a_client_that_never_reads() {
    let pong_timeout = Duration::from_millis(400);
    let mut server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            ping_interval: Duration::from_millis(100),
            pong_timeout,
            ..hubbub_core::Config::default()
        },
        ..config()
    })
    .await;
    let mut raw = RawWs::connect(server.addr, "/ws/hall?username=mute").await;
    // Pongs it makes up (empty, or a guess), never reading a ping.
    let started = tokio::time::Instant::now();
    while started.elapsed() < pong_timeout * 3 {
        raw.send_frame(true, OP_PONG, b"").await;
        raw.send_frame(true, OP_PONG, &[0; 8]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (close, _) = raw.read_until_close().await;
    assert_eq!(close.close_code(), 1008);
    assert_eq!(&close.payload[2..], b"heartbeat timeout: no pong");
    server.stop().await;
}
