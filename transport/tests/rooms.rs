//! Seeds 001 and 002: JSON rooms on `/ws/{room}?username=NAME` and
//! `/ws?username=NAME` (room `default`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hubbub_core::{SeedMessage, SeedType};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn seed(kind: SeedType, content: &str, room: &str, username: &str) -> SeedMessage {
    SeedMessage {
        kind,
        content: content.to_owned(),
        room: room.to_owned(),
        username: username.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_announces_presence_then_the_join() {
    let mut server = TestServer::start(config()).await;
    let mut alice = connect(&server, "/ws/room1?username=alice").await;
    let first = next_seed(&mut alice).await;
    assert_eq!(
        (first.kind, first.content.as_str(), first.room.as_str()),
        (SeedType::OnlineUsers, "alice", "room1")
    );
    assert_eq!(
        next_seed(&mut alice).await,
        seed(
            SeedType::UserJoined,
            "alice joined the room",
            "room1",
            "alice"
        )
    );

    let mut bob = connect(&server, "/ws/room1?username=bob").await;
    for ws in [&mut alice, &mut bob] {
        let presence = next_seed(ws).await;
        assert_eq!(
            (presence.kind, presence.content.as_str()),
            (SeedType::OnlineUsers, "alice,bob")
        );
        assert_eq!(
            next_seed(ws).await,
            seed(SeedType::UserJoined, "bob joined the room", "room1", "bob")
        );
    }
    // The wire format is the seed's, field for field and in order.
    send_text(&mut bob, "hi \"all\"").await;
    assert_eq!(
        next_text(&mut alice).await,
        r#"{"type":"chat","content":"hi \"all\"","room":"room1","username":"bob"}"#
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_every_member_including_the_sender_and_no_other_room() {
    let mut server = TestServer::start(config()).await;
    let mut alice = join(&server, "room1", "alice").await;
    let mut bob = join(&server, "room1", "bob").await;
    let mut carol = join(&server, "room2", "carol").await;
    // alice also saw bob's join.
    seed_until(&mut alice, |m| {
        m.kind == SeedType::UserJoined && m.username == "bob"
    })
    .await;

    send_text(&mut alice, "hello room1").await;
    let want = seed(SeedType::Chat, "hello room1", "room1", "alice");
    assert_eq!(next_seed(&mut alice).await, want);
    assert_eq!(next_seed(&mut bob).await, want);

    // carol got nothing from room1: her next message is her own.
    send_text(&mut carol, "hello room2").await;
    assert_eq!(
        next_seed(&mut carol).await,
        seed(SeedType::Chat, "hello room2", "room2", "carol")
    );
    // And room1 got nothing from room2.
    send_text(&mut bob, "still here").await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(
            next_seed(ws).await,
            seed(SeedType::Chat, "still here", "room1", "bob")
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_is_announced_to_the_others() {
    let mut server = TestServer::start(config()).await;
    let mut alice = join(&server, "r", "alice").await;
    let mut bob = join(&server, "r", "bob").await;
    let mut carol = join(&server, "r", "carol").await;
    bob.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // bob's close is answered with exactly one close frame, then the stream ends.
    assert_eq!(close_of(&mut bob).await, (1000, "bye".to_owned()));
    assert!(within(STEP, "bob's stream ends", bob.next())
        .await
        .is_none());
    for ws in [&mut alice, &mut carol] {
        let left = seed_until(ws, |m| m.kind == SeedType::UserLeft).await;
        assert_eq!(
            left,
            seed(SeedType::UserLeft, "bob left the room", "r", "bob")
        );
        let presence = next_seed(ws).await;
        assert_eq!(
            (presence.kind, presence.content.as_str()),
            (SeedType::OnlineUsers, "alice,carol")
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_connection_is_announced_too() {
    let mut server = TestServer::start(config()).await;
    let mut alice = join(&server, "r", "alice").await;
    let raw = RawWs::connect(server.addr, "/ws/r?username=ghost").await;
    seed_until(&mut alice, |m| {
        m.kind == SeedType::UserJoined && m.username == "ghost"
    })
    .await;
    drop(raw); // TCP closed without a close frame
    let left = seed_until(&mut alice, |m| m.kind == SeedType::UserLeft).await;
    assert_eq!(left.content, "ghost left the room");
    assert_eq!(next_seed(&mut alice).await.content, "alice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_with_a_username_joins_the_default_room() {
    let mut server = TestServer::start(config()).await;
    let mut ann = connect(&server, "/ws?username=ann").await;
    let presence = next_seed(&mut ann).await;
    assert_eq!(
        (
            presence.kind,
            presence.content.as_str(),
            presence.room.as_str()
        ),
        (SeedType::OnlineUsers, "ann", "default")
    );
    assert_eq!(
        next_seed(&mut ann).await,
        seed(
            SeedType::UserJoined,
            "ann joined the room",
            "default",
            "ann"
        )
    );
    // The same room as /ws/default.
    let mut ben = join(&server, "default", "ben").await;
    send_text(&mut ben, "hey").await;
    let got = seed_until(&mut ann, |m| m.kind == SeedType::Chat).await;
    assert_eq!(got, seed(SeedType::Chat, "hey", "default", "ben"));
    assert_eq!(next_seed(&mut ben).await, got);
    // Percent-encoded names are decoded.
    let mut jo = connect(&server, "/ws/caf%C3%A9?username=J%C3%B6rg+M").await;
    let presence = next_seed(&mut jo).await;
    assert_eq!(
        (presence.room.as_str(), presence.content.as_str()),
        ("café", "Jörg M")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_in_one_room_each_receive_all_two_hundred_messages() {
    const N: usize = 200;
    let mut server = TestServer::start(config()).await;
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        clients.push(connect(&server, &format!("/ws/big?username=u{i}")).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                // Wait until everyone is in (snapshots may be conflated; the
                // last one is always delivered).
                loop {
                    let m = next_seed(&mut ws).await;
                    if m.kind == SeedType::OnlineUsers && m.content.split(',').count() == N {
                        break;
                    }
                }
                barrier.wait().await;
                ws.send(Message::text(format!("message from u{i}")))
                    .await
                    .unwrap();
                let mut chats = Vec::with_capacity(N);
                while chats.len() < N {
                    let m = next_seed(&mut ws).await;
                    match m.kind {
                        SeedType::Chat => {
                            assert_eq!(m.content, format!("message from {}", m.username));
                            chats.push(m.username);
                        }
                        SeedType::UserJoined => {}
                        other => panic!("client {i}: unexpected {other:?}: {m:?}"),
                    }
                }
                chats.sort();
                chats.dedup();
                assert_eq!(chats.len(), N, "client {i} got duplicates");
                ws
            })
        })
        .collect();
    let mut done = Vec::with_capacity(N);
    for task in tasks {
        done.push(
            within(Duration::from_secs(60), "client finishes", task)
                .await
                .unwrap(),
        );
    }
    drop(done);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_joining_one_room_at_once_are_not_evicted() {
    const N: usize = 1000;
    let mut server = TestServer::start(config()).await;
    let url = server.url("/ws/crowd?username=");
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let url = format!("{url}u{i}");
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                // Everyone sees the room fill up, and nobody leaves.
                loop {
                    let m = next_seed(&mut ws).await;
                    assert_ne!(m.kind, SeedType::UserLeft, "u{i}: {m:?}");
                    if m.kind == SeedType::OnlineUsers && m.content.split(',').count() == N {
                        return ws;
                    }
                }
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(N);
    for task in tasks {
        clients.push(
            within(Duration::from_secs(60), "room fills", task)
                .await
                .unwrap(),
        );
    }
    // Still all connected: one more message reaches the first joiner's peers.
    send_text(&mut clients[N - 1], "all here").await;
    let got = seed_until(&mut clients[0], |m| m.kind == SeedType::Chat).await;
    assert_eq!(got.content, "all here");
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn history_n_sends_the_last_lines_before_the_join_notices() {
    let server = TestServer::start(config()).await;
    let mut eren = join(&server, "past", "Eren").await;
    for line in ["one", "two", "three"] {
        send_text(&mut eren, line).await;
        let echo = next_seed(&mut eren).await;
        assert_eq!(echo.content, line);
    }
    let mut mikasa = connect(&server, "/ws/past?username=Mikasa&history=2").await;
    let got: Vec<(SeedType, String, String)> = {
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = next_seed(&mut mikasa).await;
            got.push((m.kind, m.content, m.username));
        }
        got
    };
    assert_eq!(
        got,
        vec![
            (SeedType::Chat, "two".into(), "Eren".into()),
            (SeedType::Chat, "three".into(), "Eren".into()),
            (SeedType::OnlineUsers, "Eren,Mikasa".into(), String::new()),
            (
                SeedType::UserJoined,
                "Mikasa joined the room".into(),
                "Mikasa".into()
            ),
        ]
    );
    // More than 100 is refused before the upgrade, with a JSON error.
    let refused = get(server.addr, "/ws/past?username=X&history=101", &[]).await;
    assert_eq!(refused.status, 400);
    assert!(refused
        .body
        .contains("history must be a whole number from 0 to 100"));
}
