//! Bodies of the cargo-fuzz targets in `fuzz/`, kept here so that a stable
//! `cargo test` (sim/tests/fuzz_corpus.rs) replays the committed corpus
//! through exactly the code the fuzzer runs.
//!
//! Each function takes arbitrary bytes and panics only when it finds a bug.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arbitrary::Unstructured;
use bytes::Bytes;
use hubbub_core::route::{is_websocket_path, MAX_NAME_BYTES};
use hubbub_core::{
    encode_seed, route, ClientMessage, CloseReason, Codec, Config, ConnId, Frame, Hub, Input,
    MessageKind, Name, Output, Route, SeedMessage, SeedType, Timestamp,
};

/// Client message decoding for every codec: never panics, enforces the size
/// limit and UTF-8, and what it accepts survives the seed JSON round trip.
pub fn decode(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let codec = if selector & 1 == 0 {
        Codec::Relay
    } else {
        Codec::SeedJson
    };
    let kind = if selector & 2 == 0 {
        MessageKind::Text
    } else {
        MessageKind::Binary
    };
    let max = usize::from(selector >> 2) * 4; // 0..=252: exercises the limit edges
    let payload = Bytes::copy_from_slice(payload);
    let result = codec.decode(kind, payload.clone(), max);
    let is_utf8 = std::str::from_utf8(&payload).is_ok();
    match result {
        Err(CloseReason::MessageTooBig) => assert!(payload.len() > max),
        Err(CloseReason::InvalidUtf8) => assert!(kind == MessageKind::Text && !is_utf8),
        Err(CloseReason::BinaryNotAccepted) => {
            assert!(codec == Codec::SeedJson && kind == MessageKind::Binary);
        }
        Err(other) => panic!("decode gave an unexpected reason {other:?}"),
        Ok(ClientMessage::Relay(frame)) => {
            assert_eq!(codec, Codec::Relay);
            assert_eq!(frame, Frame { kind, payload });
        }
        Ok(ClientMessage::Chat(text)) => {
            assert!(codec == Codec::SeedJson && kind == MessageKind::Text && text.len() <= max);
            let text = std::str::from_utf8(&text).expect("decode accepted invalid UTF-8");
            let frame = encode_seed(SeedType::Chat, text, "room", "user");
            let back: SeedMessage =
                serde_json::from_slice(&frame.payload).expect("encoded seed JSON must parse");
            assert_eq!(back.content, text, "content survives the JSON round trip");
        }
    }
}

/// Handshake validation of a request target (`/path?query`): never panics,
/// accepts only valid names, answers every refusal with 400 or 404.
pub fn handshake(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    match route(path, query) {
        Ok(route) => {
            assert!(
                is_websocket_path(path),
                "{path:?} routed but is not a ws path"
            );
            if let Route::Room { room, username } = route {
                for name in [room.as_str(), username.as_str()] {
                    assert!(!name.is_empty() && name.len() <= MAX_NAME_BYTES);
                    assert!(!name.chars().any(char::is_control));
                    assert_eq!(Name::new(name).as_ref().map(Name::as_str), Ok(name));
                }
            }
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 404));
            assert!(!e.message().is_empty());
            let nested = path.get(4..).is_some_and(|room| room.contains('/'));
            assert_eq!(e.status() == 404, !is_websocket_path(path) || nested);
        }
    }
}

/// What one connection has been told, as the checker sees it.
#[derive(Default)]
struct Observed {
    closed: bool,
    online_users: Option<String>,
}

/// The whole hub driven by an arbitrary sequence of inputs, with the hub's
/// promises checked after each: no output after a close and exactly one
/// close per connection; presence lists equal the live members in join
/// order; one join notice per join and one leave notice per departure to
/// each member present; every accepted chat reaches exactly its room.
pub fn hub_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let config = Config {
        ping_interval: Duration::from_millis(5),
        pong_timeout: Duration::from_millis(12),
        max_message_bytes: 16,
        send_queue: 4,
        max_connections: 12,
        ..Config::default()
    };
    let mut hub = Hub::new(config);
    let mut now = 0u64;
    let mut routes: BTreeMap<ConnId, Route> = BTreeMap::new();
    let mut seen: BTreeMap<ConnId, Observed> = BTreeMap::new();
    let mut next_conn = 1u64;
    let rooms = ["a", "b", "c"];
    let users = ["ann", "bob", "cat", "ann"];

    for _ in 0..256 {
        let Ok(op) = u.int_in_range(0u8..=8) else {
            break;
        };
        let pick_conn = |u: &mut Unstructured<'_>| -> ConnId {
            ConnId(u.int_in_range(1..=next_conn.max(1)).unwrap_or(1))
        };
        let members_before = room_snapshot(&hub, &rooms);
        let input = match op {
            0 | 1 => {
                let conn = ConnId(next_conn);
                next_conn += 1;
                let route = if op == 0 {
                    Route::Relay
                } else {
                    let room = *u.choose(&rooms).unwrap_or(&"a");
                    let user = *u.choose(&users).unwrap_or(&"ann");
                    Route::Room {
                        room: Name::new(room).expect("valid"),
                        username: Name::new(user).expect("valid"),
                    }
                };
                routes.insert(conn, route.clone());
                seen.entry(conn).or_default();
                Input::Open { conn, route }
            }
            2 | 3 => {
                let conn = pick_conn(&mut u);
                let len = u.int_in_range(0..=20).unwrap_or(0);
                let bytes: Vec<u8> = (0..len)
                    .map(|_| u.arbitrary::<u8>().unwrap_or(b'x'))
                    .collect();
                let frame = if op == 2 {
                    Frame::text(bytes)
                } else {
                    Frame::binary(bytes)
                };
                Input::Message { conn, frame }
            }
            4 => Input::Pong {
                conn: pick_conn(&mut u),
            },
            5 => Input::QueueFull {
                conn: pick_conn(&mut u),
            },
            6 => Input::Disconnect {
                conn: pick_conn(&mut u),
                reason: CloseReason::PeerClosed,
            },
            7 => {
                now += u.int_in_range(0..=15).unwrap_or(1);
                Input::Pong { conn: ConnId(0) } // only time passes (unknown conn: a no-op)
            }
            _ => Input::Shutdown,
        };
        let chat = match &input {
            Input::Message { conn, frame } if hub.is_open(*conn) => Some((*conn, frame.clone())),
            _ => None,
        };
        hub.handle_input(Timestamp::from_millis(now), input);
        hub.handle_timeout(Timestamp::from_millis(now));
        let outputs: Vec<Output> = std::iter::from_fn(|| hub.poll_output()).collect();
        check_step(
            &hub,
            &routes,
            &mut seen,
            &outputs,
            &members_before,
            chat.as_ref(),
        );
    }
}

fn room_snapshot(hub: &Hub, rooms: &[&str]) -> BTreeMap<String, Vec<ConnId>> {
    rooms
        .iter()
        .map(|r| ((*r).to_owned(), hub.room_members(r).collect()))
        .collect()
}

fn username(routes: &BTreeMap<ConnId, Route>, conn: ConnId) -> &str {
    match routes.get(&conn) {
        Some(Route::Room { username, .. }) => username.as_str(),
        _ => "",
    }
}

fn check_step(
    hub: &Hub,
    routes: &BTreeMap<ConnId, Route>,
    seen: &mut BTreeMap<ConnId, Observed>,
    outputs: &[Output],
    members_before: &BTreeMap<String, Vec<ConnId>>,
    chat: Option<&(ConnId, Frame)>,
) {
    let mut joined: BTreeMap<ConnId, Vec<String>> = BTreeMap::new();
    let mut left: BTreeMap<ConnId, Vec<String>> = BTreeMap::new();
    let mut chats: BTreeSet<ConnId> = BTreeSet::new();
    let mut relayed: BTreeSet<ConnId> = BTreeSet::new();
    let mut closed_now: BTreeSet<ConnId> = BTreeSet::new();
    for out in outputs {
        let conn = out.conn();
        let obs = seen.entry(conn).or_default();
        assert!(!obs.closed, "output {out:?} after {conn}'s close");
        match out {
            Output::Close { .. } => {
                obs.closed = true;
                closed_now.insert(conn);
            }
            Output::Ping { .. } => {}
            Output::Send { frame, .. } => match routes.get(&conn) {
                Some(Route::Relay) => {
                    relayed.insert(conn);
                }
                Some(Route::Centrifuge) => {}
                Some(Route::Room { .. }) => {
                    let msg: SeedMessage =
                        serde_json::from_slice(&frame.payload).expect("room frames are seed JSON");
                    match msg.kind {
                        SeedType::OnlineUsers => obs.online_users = Some(msg.content),
                        SeedType::UserJoined => joined.entry(conn).or_default().push(msg.username),
                        SeedType::UserLeft => left.entry(conn).or_default().push(msg.username),
                        SeedType::Chat => assert!(chats.insert(conn), "a chat delivered twice"),
                    }
                }
                None => panic!("output for a connection never opened: {out:?}"),
            },
        }
    }
    // Presence: every live member's last list is the room in join order.
    for members in members_before
        .keys()
        .map(|r| hub.room_members(r).collect::<Vec<_>>())
    {
        let names: Vec<&str> = members.iter().map(|c| username(routes, *c)).collect();
        let expected = names.join(",");
        for conn in &members {
            assert!(hub.is_open(*conn));
            let got = seen.get(conn).and_then(|o| o.online_users.as_deref());
            assert_eq!(
                got,
                Some(expected.as_str()),
                "{conn}'s online_users is stale"
            );
        }
    }
    // Joins and departures: each member present hears of each exactly once.
    for (room, before) in members_before {
        let after: Vec<ConnId> = hub.room_members(room).collect();
        let arrived: Vec<ConnId> = after
            .iter()
            .filter(|c| !before.contains(c))
            .copied()
            .collect();
        let departed: Vec<ConnId> = before
            .iter()
            .filter(|c| !after.contains(c))
            .copied()
            .collect();
        for member in &after {
            let mut want: Vec<String> = arrived
                .iter()
                .filter(|a| *a <= member || before.contains(member))
                .map(|a| username(routes, *a).to_owned())
                .collect();
            want.sort();
            let mut got = joined.get(member).cloned().unwrap_or_default();
            got.sort();
            assert_eq!(got, want, "{member} in {room}: join notices");
            let mut want_left: Vec<String> = departed
                .iter()
                .map(|d| username(routes, *d).to_owned())
                .collect();
            want_left.sort();
            let mut got_left = left.get(member).cloned().unwrap_or_default();
            got_left.sort();
            assert_eq!(got_left, want_left, "{member} in {room}: leave notices");
        }
        for gone in &departed {
            assert!(
                closed_now.contains(gone),
                "{gone} left {room} without a close"
            );
        }
    }
    // Chat: an accepted message reaches exactly the sender's room.
    if let Some((sender, _)) = chat {
        match routes.get(sender) {
            Some(Route::Room { room, .. }) if hub.is_open(*sender) => {
                let members: BTreeSet<ConnId> = hub.room_members(room.as_str()).collect();
                assert_eq!(chats, members, "chat recipients");
            }
            Some(Route::Relay) if hub.is_open(*sender) => {
                let members: BTreeSet<ConnId> = hub.relay_members().collect();
                assert_eq!(relayed, members, "relay recipients");
            }
            _ => assert!(
                chats.is_empty() && relayed.is_empty(),
                "a refused message was delivered"
            ),
        }
    }
}
