//! Seed 000: `GET /ws` is an anonymous relay. Every message goes verbatim to
//! every relay connection, the sender included, with its opcode kept.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_client_gets_exactly_its_own_messages_back() {
    let mut server = TestServer::start(config()).await;
    let mut ws = connect(&server, "/ws").await;
    let sent = [
        Message::text("hello"),
        Message::binary(Bytes::from_static(&[0, 1, 2, 255])),
        Message::text("{\"not\":\"parsed\"}"),
        Message::binary(Bytes::from_static(b"")),
        Message::text("é ✓"),
    ];
    for m in &sent {
        ws.send(m.clone()).await.unwrap();
    }
    // No greeting, nothing else: the first messages are exactly ours, in order.
    for m in &sent {
        assert_eq!(&next(&mut ws).await, m);
    }
    ws.send(Message::text("last")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("last"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_relay_connection_gets_every_message_and_rooms_do_not() {
    let mut server = TestServer::start(config()).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut ws = connect(&server, "/ws").await;
        // Once our own message comes back, the hub has registered us.
        let ready = format!("ready {i}");
        send_text(&mut ws, &ready).await;
        assert_eq!(next_text(&mut ws).await, ready);
        clients.push(ws);
    }
    let mut roomie = join(&server, "lobby", "ann").await;

    let text = Message::text("from 0");
    let binary = Message::binary(Bytes::from(vec![0xde, 0xad, 0xbe, 0xef]));
    clients[0].send(text.clone()).await.unwrap();
    clients[0].send(binary.clone()).await.unwrap();
    for (i, ws) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 2 {
            let m = next(ws).await;
            // Earlier clients also saw later clients' ready messages.
            if matches!(&m, Message::Text(t) if t.starts_with("ready")) {
                continue;
            }
            got.push(m);
        }
        assert_eq!(got, [text.clone(), binary.clone()], "client {i}");
    }
    // Another sender, same rule.
    clients[2].send(Message::text("from 2")).await.unwrap();
    for ws in &mut clients {
        assert_eq!(next(ws).await, Message::text("from 2"));
    }
    // The room member got none of it: its next message is its own chat.
    send_text(&mut roomie, "mine").await;
    let m = next_seed(&mut roomie).await;
    assert_eq!((m.content.as_str(), m.username.as_str()), ("mine", "ann"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_handshake_are_not_lost() {
    let mut server = TestServer::start(config()).await;
    let mut early = client_frame(true, OP_TEXT, b"early bird");
    early.extend(client_frame(true, OP_BINARY, b"\x01\x02"));
    let mut raw = RawWs::connect_with_early_bytes(server.addr, "/ws", &early).await;
    let first = raw.read_frame().await.unwrap();
    assert_eq!(
        (first.opcode, first.payload.as_slice()),
        (OP_TEXT, &b"early bird"[..])
    );
    let second = raw.read_frame().await.unwrap();
    assert_eq!(
        (second.opcode, second.payload.as_slice()),
        (OP_BINARY, &b"\x01\x02"[..])
    );
    raw.send_close(1000, "").await;
    assert_eq!(raw.read_until_close().await.0.close_code(), 1000);
    server.stop().await;
}
