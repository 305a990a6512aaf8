//! After the upgrade, every way a connection ends has its close code:
//! 1009 too big (also when fragmented), 1007 invalid UTF-8 (also when
//! fragmented), 1003 binary on a JSON connection, 1002 broken framing,
//! 1008 evicted slow consumer, 1001 server shutdown; a client's own close
//! is echoed exactly once.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hubbub::ServerConfig;
use hubbub_core::SeedType;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_closed_with_1009() {
    let mut server = TestServer::start(config()).await;
    let mut ws = connect(&server, "/ws").await;
    let at_limit = "a".repeat(512);
    send_text(&mut ws, &at_limit).await;
    assert_eq!(next_text(&mut ws).await, at_limit);
    send_text(&mut ws, &"a".repeat(513)).await;
    assert_eq!(
        close_of(&mut ws).await,
        (1009, "message too big".to_owned())
    );

    // The same on a JSON connection, and the room hears that the sender left.
    let mut alice = join(&server, "r", "alice").await;
    let mut bob = join(&server, "r", "bob").await;
    ws_send(&mut bob, Message::binary(Bytes::from(vec![b'x'; 4000]))).await;
    assert_eq!(close_of(&mut bob).await.0, 1009);
    let left = seed_until(&mut alice, |m| m.kind == SeedType::UserLeft).await;
    assert_eq!(left.content, "bob left the room");
    server.stop().await;
}

async fn ws_send(ws: &mut Ws, m: Message) {
    within(STEP, "send", ws.send(m)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_reassembled_and_the_limit_applies_to_the_whole() {
    let mut server = TestServer::start(config()).await;
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    let part = vec![b'p'; 100];
    // 5 x 100 = 500 bytes, with a ping between fragments: one message back.
    raw.send_frame(false, OP_TEXT, &part).await;
    raw.send_frame(false, OP_CONT, &part).await;
    raw.send_frame(true, OP_PING, b"mid").await;
    for _ in 0..2 {
        raw.send_frame(false, OP_CONT, &part).await;
    }
    raw.send_frame(true, OP_CONT, &part).await;
    let pong = raw.read_frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"mid"[..])
    );
    let whole = raw.read_frame().await.unwrap();
    assert_eq!(
        (whole.fin, whole.opcode, whole.payload.len()),
        (true, OP_TEXT, 500)
    );

    // 6 x 100 = 600 bytes: every fragment is small, the message is not.
    raw.send_frame(false, OP_BINARY, &part).await;
    for _ in 0..5 {
        raw.send_frame(false, OP_CONT, &part).await;
    }
    let (close, before) = raw.read_until_close().await;
    assert_eq!(close.close_code(), 1009);
    assert!(before.is_empty(), "nothing was relayed: {before:?}");
    assert!(raw.at_eof().await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_closed_with_1007_whole_or_fragmented() {
    let mut server = TestServer::start(config()).await;

    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(true, OP_TEXT, b"h\xff").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1007);

    // Fragmented, invalid in the last fragment.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(false, OP_TEXT, b"ab").await;
    raw.send_frame(true, OP_CONT, b"\xffa").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1007);

    // Fails fast: no need to wait for the final fragment.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(false, OP_TEXT, b"ab").await;
    raw.send_frame(false, OP_CONT, b"\xc3\x28").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1007);

    // A character split across fragments is fine.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    let e = "é".as_bytes();
    raw.send_frame(false, OP_TEXT, &e[..1]).await;
    raw.send_frame(true, OP_CONT, &e[1..]).await;
    assert_eq!(raw.read_frame().await.unwrap().payload, e);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_on_a_json_connection_is_closed_with_1003() {
    let mut server = TestServer::start(config()).await;
    let mut alice = join(&server, "r", "alice").await;
    let mut bob = join(&server, "r", "bob").await;
    ws_send(&mut bob, Message::binary(Bytes::from_static(b"\x00\x01"))).await;
    let (code, reason) = close_of(&mut bob).await;
    assert_eq!(code, 1003);
    assert!(reason.contains("binary"), "{reason}");
    let left = seed_until(&mut alice, |m| m.kind == SeedType::UserLeft).await;
    assert_eq!(left.content, "bob left the room");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_framing_is_closed_with_1002() {
    let mut server = TestServer::start(config()).await;
    // A continuation with nothing to continue.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(true, OP_CONT, b"x").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1002);
    // A new message inside a fragmented one.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(false, OP_TEXT, b"a").await;
    raw.send_frame(true, OP_TEXT, b"b").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1002);
    // A reserved opcode.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(true, 0x3, b"").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1002);
    // Reserved bits set.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(true, 0x40 | OP_TEXT, b"x").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1002);
    // A fragmented control frame.
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(false, OP_PING, b"x").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1002);
    // Close frames with a forbidden code or a one-byte payload: still
    // exactly one close frame comes back, with 1002.
    for payload in [&b"\x03\xe7"[..], b"\x03\xec", b"\x03"] {
        let mut raw = RawWs::connect(server.addr, "/ws").await;
        raw.send_frame(true, OP_CLOSE, payload).await;
        let mut frames = Vec::new();
        while let Some(f) = raw.read_frame().await {
            frames.push(f);
        }
        assert_eq!(frames.len(), 1, "{payload:?}: {frames:?}");
        assert_eq!(frames[0].close_code(), 1002, "{payload:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_exactly_once() {
    let mut server = TestServer::start(config()).await;
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(true, OP_TEXT, b"before").await;
    raw.send_close(1000, "bye").await;
    let mut frames = Vec::new();
    while let Some(f) = raw.read_frame().await {
        frames.push(f);
    }
    let closes: Vec<_> = frames.iter().filter(|f| f.opcode == OP_CLOSE).collect();
    assert_eq!(closes.len(), 1, "{frames:?}");
    assert_eq!(closes[0].payload, b"\x03\xe8bye");
    assert_eq!(frames.last().map(|f| f.opcode), Some(OP_CLOSE));
    server.stop().await;
}

/// Sends `count` chat messages from `sender`, at most `window` unanswered at
/// a time (its own echoes pace it, so the hub never sees a burst bigger than
/// a healthy client's queue).
async fn send_window(sender: &mut Ws, first: usize, count: usize, window: usize) {
    let mut next_id = first;
    let end = first + count;
    while next_id < end {
        let batch_end = (next_id + window).min(end);
        for i in next_id..batch_end {
            sender.feed(Message::text(chat_line(i))).await.unwrap();
        }
        within(STEP, "flush", sender.flush()).await.unwrap();
        let want = chat_line(batch_end - 1);
        seed_until(sender, |m| m.kind == SeedType::Chat && m.content == want).await;
        next_id = batch_end;
    }
}

fn chat_line(i: usize) -> String {
    format!("{i:06} {}", "x".repeat(400))
}

/// What a room member saw while others flooded the room.
struct Seen {
    chats: Vec<String>,
    /// The `online_users` that followed `who`'s `user_left`.
    presence_after_left: Option<String>,
}

/// Reads everything a room member gets until the chat line "done". Sets
/// `left` as soon as `who` is announced as leaving.
fn collect_chats(
    mut ws: Ws,
    who: &'static str,
    left: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Seen, Ws)> {
    tokio::spawn(async move {
        let mut seen = Seen {
            chats: Vec::new(),
            presence_after_left: None,
        };
        let mut after_left = false;
        loop {
            let m = next_seed(&mut ws).await;
            match m.kind {
                SeedType::Chat if m.content == "done" => return (seen, ws),
                SeedType::Chat => seen.chats.push(m.content),
                SeedType::UserLeft if m.username == who => {
                    assert_eq!(m.content, format!("{who} left the room"));
                    after_left = true;
                    left.store(true, Ordering::Release);
                }
                SeedType::OnlineUsers if after_left => {
                    seen.presence_after_left.get_or_insert(m.content);
                }
                _ => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_evicted_with_1008_and_the_others_get_everything() {
    let mut server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            send_queue: 16,
            // The sender floods on purpose: no rate limits here.
            command_rate: None,
            user_publish_rate: None,
            ..hubbub_core::Config::default()
        },
        ..config()
    })
    .await;
    let fast = join(&server, "flood", "fast").await;
    let mut slow = RawWs::connect_small_rcvbuf(server.addr, "/ws/flood?username=slow").await;
    let mut sender = join(&server, "flood", "sender").await;
    let left = Arc::new(AtomicBool::new(false));
    let reader = collect_chats(fast, "slow", left.clone());

    // Flood until the room hears that slow was evicted, then a little more.
    let mut sent = 0;
    within(Duration::from_secs(60), "slow consumer evicted", async {
        while !left.load(Ordering::Acquire) {
            assert!(sent < 200_000, "never evicted");
            send_window(&mut sender, sent, 200, 8).await;
            sent += 200;
        }
    })
    .await;
    send_window(&mut sender, sent, 50, 8).await;
    sent += 50;
    send_text(&mut sender, "done").await;

    let (seen, _fast) = within(Duration::from_secs(30), "fast reader", reader)
        .await
        .unwrap();
    let chats = seen.chats;
    assert_eq!(seen.presence_after_left.as_deref(), Some("fast,sender"));
    let want: Vec<String> = (0..sent).map(chat_line).collect();
    assert_eq!(chats.len(), want.len());
    assert!(chats == want, "fast client missed or reordered messages");

    // The slow client finds, after what it had been sent, a 1008 close.
    let (close, before) = within(
        Duration::from_secs(30),
        "slow reads its backlog",
        slow.read_until_close(),
    )
    .await;
    assert_eq!(close.close_code(), 1008);
    assert_eq!(&close.payload[2..], b"slow consumer: send queue full");
    assert!(!before.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_stalls_past_the_write_timeout_drops_the_client() {
    let mut server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            send_queue: 1_000_000,
            // The sender floods on purpose: no rate limits here.
            command_rate: None,
            user_publish_rate: None,
            ..hubbub_core::Config::default()
        },
        write_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let watcher = join(&server, "stall", "watcher").await;
    let mut stuck = RawWs::connect_small_rcvbuf(server.addr, "/ws/stall?username=stuck").await;
    let mut sender = join(&server, "stall", "sender").await;
    let left = Arc::new(AtomicBool::new(false));
    let reader = collect_chats(watcher, "stuck", left.clone());
    let mut sent = 0;
    within(Duration::from_secs(60), "stalled client dropped", async {
        while !left.load(Ordering::Acquire) {
            assert!(sent < 200_000, "never dropped");
            send_window(&mut sender, sent, 200, 8).await;
            sent += 200;
        }
    })
    .await;
    send_text(&mut sender, "done").await;
    let (seen, _watcher) = within(Duration::from_secs(30), "watcher", reader)
        .await
        .unwrap();
    assert_eq!(seen.chats.len(), sent);
    assert_eq!(seen.presence_after_left.as_deref(), Some("watcher,sender"));
    // The socket was dropped: no close frame could be written.
    let mut closes = 0;
    while let Some(f) = stuck.read_frame().await {
        closes += usize::from(f.opcode == OP_CLOSE);
    }
    assert_eq!(closes, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_closes_everyone_with_1001() {
    let mut server = TestServer::start(config()).await;
    let mut relay = connect(&server, "/ws").await;
    let mut alice = join(&server, "r", "alice").await;
    let mut bob = join(&server, "r", "bob").await;
    let mut raw = RawWs::connect(server.addr, "/ws?username=raw").await;
    send_text(&mut relay, "hi").await;
    assert_eq!(next_text(&mut relay).await, "hi");
    let addr = server.addr;
    let stopping = tokio::spawn(async move { server.stop().await });
    for ws in [&mut relay, &mut alice, &mut bob] {
        assert_eq!(
            close_of(ws).await,
            (1001, "server shutting down".to_owned())
        );
        assert!(within(STEP, "stream ends", ws.next()).await.is_none());
    }
    let (close, _) = raw.read_until_close().await;
    assert_eq!(close.close_code(), 1001);
    raw.send_close(1001, "").await;
    assert!(raw.at_eof().await);
    within(Duration::from_secs(10), "serve returns", stopping)
        .await
        .unwrap();
    // No longer listening.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
