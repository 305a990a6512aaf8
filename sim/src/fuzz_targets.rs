//! Bodies of the cargo-fuzz targets in `fuzz/`, kept here so that a stable
//! `cargo test` (sim/tests/fuzz_corpus.rs) replays the committed corpus
//! through exactly the code the fuzzer runs.
//!
//! Each function takes arbitrary bytes and panics only when it finds a bug.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use arbitrary::Unstructured;
use bytes::Bytes;
use hubbub_core::centrifuge::{self, Command, Line};
use hubbub_core::route::{is_websocket_path, MAX_NAME_BYTES};
use hubbub_core::{
    encode_seed, route, ClientMessage, CloseReason, Codec, Config, ConnId, Frame, Hub, Input,
    MessageKind, Name, Output, Route, SeedMessage, SeedType, Timestamp,
};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::centrifuge_check::Checker;

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

/// Centrifugo frame decoding: never panics, and agrees with a plain JSON
/// parse of each line: a line decodes to a command only if it is a JSON
/// object, its id is the object's `id`, and its method is the first
/// non-null method key in Centrifugo's order; the empty object is a pong.
/// (Values are read as raw JSON: a string holding a lone UTF-16 surrogate
/// escape is valid JSON text, which Rust strings cannot hold, and it is
/// passed on as the client wrote it.)
pub fn centrifuge_decode(data: &[u8]) {
    const METHODS: [&str; 12] = [
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "ping",
        "send",
        "rpc",
        "refresh",
        "sub_refresh",
    ];
    let (lines, malformed) = centrifuge::decode_frame(data);
    // The decoder is given text frames, whose UTF-8 the codec checked;
    // on other bytes it must only not panic.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let raw: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    assert!(lines.len() <= raw.len());
    assert_eq!(malformed.is_none(), lines.len() == raw.len());
    for (line, raw) in lines.iter().zip(raw) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let object: BTreeMap<String, &RawValue> =
            serde_json::from_slice(raw).expect("a decoded line is a JSON object");
        let method = METHODS
            .iter()
            .find(|m| object.get(**m).is_some_and(|v| v.get() != "null"));
        let id = object
            .get("id")
            .and_then(|v| v.get().parse::<u64>().ok())
            .unwrap_or(0);
        match line {
            Line::Pong => assert!(method.is_none() && id == 0, "{object:?}"),
            Line::Unknown { id: got } => {
                assert_eq!(u64::from(*got), id);
                assert!(method.is_none() || id == 0 && method != Some(&"send"));
            }
            Line::Command { id: got, command } => {
                assert_eq!(u64::from(*got), id);
                let name = match command {
                    Command::Connect(_) => "connect",
                    Command::Subscribe(_) => "subscribe",
                    Command::Unsubscribe { .. } => "unsubscribe",
                    Command::Publish { .. } => "publish",
                    Command::Presence { .. } => "presence",
                    Command::PresenceStats { .. } => "presence_stats",
                    Command::History(_) => "history",
                    Command::Ping => "ping",
                    Command::Send { .. } => "send",
                    Command::Rpc { .. } => "rpc",
                    Command::Refresh { .. } => "refresh",
                    Command::SubRefresh { .. } => "sub_refresh",
                };
                assert_eq!(method, Some(&name), "{object:?}");
            }
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
            if let Route::Room { room, username, .. } = route {
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
    /// The latest `online_users` message (shared with its other recipients).
    online_users: Option<Rc<SeedMessage>>,
}

/// The whole hub driven by an arbitrary sequence of inputs, with the hub's
/// promises checked after each: no output after a close and exactly one
/// close per connection; presence lists equal the live members in join
/// order; one join notice per join and one leave notice per departure to
/// each member present; every accepted chat reaches exactly its room.
pub fn hub_ops(data: &[u8]) {
    hub_ops_steps(data);
}

/// [`hub_ops`], answering how many hub inputs the data drove (for the
/// corpus replay's speed report).
pub fn hub_ops_steps(data: &[u8]) -> u64 {
    let mut steps = 0;
    let mut u = Unstructured::new(data);
    let config = Config {
        ping_interval: Duration::from_millis(5),
        pong_timeout: Duration::from_millis(12),
        max_message_bytes: 16,
        send_queue: 4,
        max_connections: 12,
        // A tight presence budget: bursts of joins and leaves hold lists
        // back, and the checker judges each held list when it goes out.
        presence_rate: Some(hubbub_core::Rate::new(100, 2)),
        ..Config::default()
    };
    let mut hub = Hub::new(config);
    let mut now = 0u64;
    let mut routes: BTreeMap<ConnId, Route> = BTreeMap::new();
    let mut seen: BTreeMap<ConnId, Observed> = BTreeMap::new();
    let mut next_conn = 1u64;
    let rooms = ["a", "b", "c"];
    let users = ["ann", "bob", "cat", "ann"];

    let mut checker = Checker::new();
    let mut next_id: BTreeMap<ConnId, u32> = BTreeMap::new();
    for _ in 0..256 {
        // `Unstructured` answers every draw from an exhausted input with
        // its range's start instead of an error: without this the rest of
        // the 256 steps would all be op 0 (a relay open, refused once the
        // hub is full), the same tail for every short input.
        if u.is_empty() {
            break;
        }
        let Ok(op) = u.int_in_range(0u8..=11) else {
            break;
        };
        let pick_conn = |u: &mut Unstructured<'_>| -> ConnId {
            ConnId(u.int_in_range(1..=next_conn.max(1)).unwrap_or(1))
        };
        checker.before_step(&hub, &rooms);
        let input = match op {
            9 => {
                let conn = ConnId(next_conn);
                next_conn += 1;
                routes.insert(conn, Route::Centrifuge);
                seen.entry(conn).or_default();
                checker.opened(conn);
                Input::Open {
                    conn,
                    route: Route::Centrifuge,
                }
            }
            10 | 11 => {
                let conn = pick_conn(&mut u);
                let id = next_id.entry(conn).or_insert(0);
                let text = centrifuge_frame(&mut u, id, &rooms);
                if checker.is_tracked(conn) && hub.is_open(conn) {
                    for line in centrifuge::decode_frame(text.as_bytes()).0 {
                        if let Line::Command { id, command } = line {
                            checker.sent(conn, id, &command);
                        }
                    }
                }
                Input::Message {
                    conn,
                    frame: Frame::text(text),
                }
            }
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
                        history: 0,
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
        if let Err(breach) = checker.after_step(&hub, &outputs) {
            panic!("Centrifugo rule broken: {breach}");
        }
        check_step(
            &hub,
            &routes,
            &mut seen,
            &outputs,
            checker.members_around(),
            chat.as_ref(),
            &BTreeSet::new(),
        );
        steps += 1;
    }
    steps
}

/// The checks of [`hub_ops`] for any sequence of one hub's inputs, as a
/// replay needs them (`hubbub-sim replay`): the rooms judged each step are
/// the hub's, plus those the input names. Violations panic, as in the
/// fuzzer; the replay catches them and names the input.
#[derive(Default)]
pub struct HubChecker {
    routes: BTreeMap<ConnId, Route>,
    seen: BTreeMap<ConnId, Observed>,
    checker: Checker,
    rooms: Vec<String>,
    /// Rooms that ever had members on other nodes (a delivering engine).
    remote_rooms: BTreeSet<String>,
    /// The hub's store is outside it: replies and chat deliveries may
    /// wait for the engine's answer, in a later step.
    engine_answers_later: bool,
}

impl HubChecker {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// For a hub on an external engine (SQLite, Redis): a command's one
    /// reply, and a chat line's one delivery, may come in a later step,
    /// when the engine answers.
    #[must_use]
    pub fn for_external_engine() -> Self {
        Self {
            checker: Checker::with_replies_that_may_wait(),
            engine_answers_later: true,
            ..Self::default()
        }
    }

    /// Before the hub handles `input` (`None`: a timeout). Returns what
    /// [`HubChecker::after`] needs to know of it.
    pub fn before(&mut self, hub: &Hub, input: Option<&Input>) -> Option<(ConnId, Frame)> {
        self.rooms.clear();
        self.rooms.extend(hub.rooms().map(str::to_owned));
        self.note_remote_rooms(hub);
        let mut chat = None;
        match input {
            Some(Input::Open { conn, route }) => {
                self.routes.insert(*conn, route.clone());
                self.seen.entry(*conn).or_default();
                match route {
                    Route::Centrifuge => self.checker.opened(*conn),
                    Route::Room { room, .. } => self.rooms.push(room.as_str().to_owned()),
                    Route::Relay => {}
                }
            }
            Some(Input::Message { conn, frame }) if hub.is_open(*conn) => {
                if self.checker.is_tracked(*conn) {
                    for line in centrifuge::decode_frame(&frame.payload).0 {
                        if let Line::Command { id, command } = line {
                            if let Command::Subscribe(sub) = &command {
                                self.rooms.push(sub.channel.clone());
                            }
                            self.checker.sent(*conn, id, &command);
                        }
                    }
                }
                chat = Some((*conn, frame.clone()));
            }
            _ => {}
        }
        self.rooms.sort();
        self.rooms.dedup();
        let rooms: Vec<&str> = self.rooms.iter().map(String::as_str).collect();
        self.checker.before_step(hub, &rooms);
        chat
    }

    /// After the call, with everything it output.
    ///
    /// # Panics
    /// When the hub broke a rule (the message says which).
    pub fn after(&mut self, hub: &Hub, outputs: &[Output], chat: Option<&(ConnId, Frame)>) {
        self.note_remote_rooms(hub);
        if let Err(breach) = self.checker.after_step(hub, outputs) {
            panic!("Centrifugo rule broken: {breach}");
        }
        let chat = if self.engine_answers_later {
            None
        } else {
            chat
        };
        check_step(
            hub,
            &self.routes,
            &mut self.seen,
            outputs,
            self.checker.members_around(),
            chat,
            &self.remote_rooms,
        );
    }

    fn note_remote_rooms(&mut self, hub: &Hub) {
        for room in hub.rooms() {
            if hub.remote_members(room).next().is_some() && !self.remote_rooms.contains(room) {
                self.remote_rooms.insert(room.to_owned());
            }
        }
    }
}

/// A frame of one Centrifugo client: usually one command, sometimes
/// `connect` with a subscribe (as the JS SDK sends them), a pong, or junk.
/// Commands of one frame never touch the same channel twice.
fn centrifuge_frame(u: &mut Unstructured<'_>, next_id: &mut u32, rooms: &[&str]) -> String {
    let mut id = || {
        *next_id += 1;
        *next_id
    };
    let channel = |u: &mut Unstructured<'_>| -> &str {
        match u.int_in_range(0..=7).unwrap_or(0) {
            7 => "nope:x",
            n => rooms[n % rooms.len()],
        }
    };
    let op = u.int_in_range(0u8..=13).unwrap_or(0);
    // An epoch a client could send: empty, made up, or read from a reply
    // earlier (not known here: the fuzzer finds made-up ones refused).
    let epoch = |u: &mut Unstructured<'_>| -> &'static str {
        ["", "0000000000000000", "nonsense"][usize::from(u.int_in_range(0u8..=2).unwrap_or(0))]
    };
    // Written with `format!` (keys in serde_json's sorted order, as the
    // corpus was made with `json!`): every piece is a fixed JSON-safe word.
    let one = |u: &mut Unstructured<'_>, op: u8, id: u32| -> String {
        let ch = channel(u);
        let flag = u.arbitrary::<bool>().unwrap_or(false);
        match op {
            0 => format!(r#"{{"connect":{{"name":"fuzz"}},"id":{id}}}"#),
            1 | 2 => format!(
                r#"{{"id":{id},"subscribe":{{"channel":"{ch}","join_leave":{flag},"recoverable":{}}}}}"#,
                !flag
            ),
            3 => format!(r#"{{"id":{id},"unsubscribe":{{"channel":"{ch}"}}}}"#),
            4 | 5 => format!(
                r#"{{"id":{id},"publish":{{"channel":"{ch}","data":{{"n":{id},"text":"hi"}}}}}}"#
            ),
            6 => format!(r#"{{"id":{id},"presence":{{"channel":"{ch}"}}}}"#),
            7 => format!(r#"{{"id":{id},"presence_stats":{{"channel":"{ch}"}}}}"#),
            8 => {
                // Every shape of history query: limit 0 / n / -1, since a
                // position (the right epoch or a stale one), reverse.
                let limit = [0, 1, 3, -1][usize::from(u.int_in_range(0u8..=3).unwrap_or(0))];
                let since = if u.arbitrary::<bool>().unwrap_or(false) {
                    let offset = u.int_in_range(0u64..=6).unwrap_or(0);
                    let epoch = epoch(u);
                    format!(r#","since":{{"epoch":"{epoch}","offset":{offset}}}"#)
                } else {
                    String::new()
                };
                format!(
                    r#"{{"history":{{"channel":"{ch}","limit":{limit},"reverse":{flag}{since}}},"id":{id}}}"#
                )
            }
            9 => {
                // A subscribe that recovers from a position: maybe the
                // stream's, maybe one it never had.
                let offset = u.int_in_range(0u64..=6).unwrap_or(0);
                let epoch = epoch(u);
                format!(
                    r#"{{"id":{id},"subscribe":{{"channel":"{ch}","epoch":"{epoch}","offset":{offset},"recover":true,"recoverable":true}}}}"#
                )
            }
            _ => format!(r#"{{"id":{id},"rpc":{{"method":"m"}}}}"#),
        }
    };
    match op {
        11 => "{}".to_owned(),
        12 => {
            let len = u.int_in_range(0..=12).unwrap_or(0);
            (0..len)
                .map(|_| u.arbitrary::<char>().unwrap_or('x'))
                .collect()
        }
        13 => {
            let connect = one(u, 0, id());
            let subscribe = one(u, 1, id());
            format!("{connect}\n{subscribe}")
        }
        op => one(u, op, id()),
    }
}

fn username(routes: &BTreeMap<ConnId, Route>, conn: ConnId) -> &str {
    match routes.get(&conn) {
        Some(Route::Room { username, .. }) => username.as_str(),
        _ => "",
    }
}

/// A step's seed messages, parsed once per distinct frame: a broadcast is
/// one shared buffer for all its recipients.
#[derive(Default)]
struct SeedFrames {
    frames: Vec<(Bytes, Rc<SeedMessage>)>,
}

impl SeedFrames {
    fn get(&mut self, payload: &Bytes) -> Rc<SeedMessage> {
        if let Some((_, msg)) = self.frames.iter().find(|(b, _)| b == payload) {
            return Rc::clone(msg);
        }
        let msg: SeedMessage = serde_json::from_slice(payload).expect("room frames are seed JSON");
        let msg = Rc::new(msg);
        self.frames.push((payload.clone(), Rc::clone(&msg)));
        msg
    }
}

fn check_step<'a>(
    hub: &Hub,
    routes: &BTreeMap<ConnId, Route>,
    seen: &mut BTreeMap<ConnId, Observed>,
    outputs: &[Output],
    rooms: impl Iterator<Item = (&'a str, &'a [ConnId], &'a [ConnId])>,
    chat: Option<&(ConnId, Frame)>,
    remote_rooms: &BTreeSet<String>,
) {
    let mut joined: BTreeMap<ConnId, Vec<String>> = BTreeMap::new();
    let mut left: BTreeMap<ConnId, Vec<String>> = BTreeMap::new();
    let mut chats: BTreeSet<ConnId> = BTreeSet::new();
    let mut relayed: BTreeSet<ConnId> = BTreeSet::new();
    let mut closed_now: BTreeSet<ConnId> = BTreeSet::new();
    let mut told_presence: BTreeSet<ConnId> = BTreeSet::new();
    let mut parsed = SeedFrames::default();
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
                    let msg = parsed.get(&frame.payload);
                    match msg.kind {
                        SeedType::OnlineUsers => {
                            obs.online_users = Some(msg);
                            told_presence.insert(conn);
                        }
                        SeedType::UserJoined => {
                            joined.entry(conn).or_default().push(msg.username.clone());
                        }
                        SeedType::UserLeft => {
                            left.entry(conn).or_default().push(msg.username.clone());
                        }
                        SeedType::Chat => assert!(chats.insert(conn), "a chat delivered twice"),
                    }
                }
                None => panic!("output for a connection never opened: {out:?}"),
            },
        }
    }
    let is_seed = |c: &ConnId| matches!(routes.get(c), Some(Route::Room { .. }));
    for (room, before, after) in rooms {
        if remote_rooms.contains(room) {
            // Members on other nodes (a Redis recording) take part in its
            // presence and notices, which this one-node model does not
            // follow: the room's seed presence is not judged.
            continue;
        }
        // A room whose members did not change, and none of whom was told
        // anything, passed these checks the step before: nothing to judge.
        let unchanged = before == after
            && joined.is_empty()
            && left.is_empty()
            && after.iter().all(|c| !told_presence.contains(c));
        if unchanged {
            continue;
        }
        // Presence: every live seed member's last list is the room's named
        // members (the seed ones: Centrifugo clients here are anonymous) in
        // join order.
        let members: Vec<ConnId> = after.iter().copied().filter(|c| is_seed(c)).collect();
        let names: Vec<&str> = members.iter().map(|c| username(routes, *c)).collect();
        let expected = names.join(",");
        // A list held back by `presence_rate` goes out later, exact; it
        // is judged in the step that sends it.
        let held = hub.presence_held(room);
        for conn in members.iter().filter(|_| !held) {
            assert!(hub.is_open(*conn));
            let got = seen
                .get(conn)
                .and_then(|o| o.online_users.as_deref())
                .map(|m| m.content.as_str());
            assert_eq!(
                got,
                Some(expected.as_str()),
                "{conn}'s online_users is stale"
            );
        }
        // Joins and departures: each member present hears of each exactly once.
        let before: Vec<ConnId> = before.iter().copied().filter(|c| is_seed(c)).collect();
        let before = &before;
        let after = &members;
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
        for member in after {
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
                let members: BTreeSet<ConnId> = hub
                    .room_members(room.as_str())
                    .filter(|c| is_seed(c))
                    .collect();
                assert_eq!(chats, members, "chat recipients");
            }
            Some(Route::Relay) if hub.is_open(*sender) => {
                let members: BTreeSet<ConnId> = hub.relay_members().collect();
                assert_eq!(relayed, members, "relay recipients");
            }
            Some(Route::Centrifuge) => {}
            _ => assert!(
                chats.is_empty() && relayed.is_empty(),
                "a refused message was delivered"
            ),
        }
    }
}

/// The server API's request decoder: the first byte picks the method (or
/// an unknown one), the rest is the body. It never panics; an accepted
/// command, run on a one-shard hub, gets exactly one reply, at once, and
/// the reply is a JSON object with `result` or `error`.
pub fn api_decode(data: &[u8]) {
    use hubbub_core::api::{decode, DecodeError, METHODS};
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let method = METHODS.get(usize::from(pick) % (METHODS.len() + 1));
    let decoded = decode(method.copied().unwrap_or("no_such_method"), body);
    let command = match (method, decoded) {
        (None, result) => {
            assert_eq!(result, Err(DecodeError::UnknownMethod));
            return;
        }
        (Some(_), Err(DecodeError::UnknownMethod)) => panic!("a known method refused"),
        (Some(_), Err(DecodeError::BadJson(_))) => return,
        (Some(_), Ok(command)) => command,
    };
    let mut hub = Hub::new(Config::default());
    let now = Timestamp::from_millis(1_000);
    hub.handle_input(
        now,
        Input::Open {
            conn: ConnId(1),
            route: Route::Room {
                room: Name::new("lobby").expect("a valid name"),
                username: Name::new("alice").expect("a valid name"),
                history: 0,
            },
        },
    );
    hub.handle_api(now, hubbub_core::ApiRequest { id: 7, command });
    let reply = hub.poll_api().expect("one shard answers at once");
    assert_eq!(reply.id, 7);
    assert!(hub.poll_api().is_none());
    assert_eq!(hub.api_pending(), 0);
    let value: Value = serde_json::from_slice(&reply.body).expect("the reply is JSON");
    let object = value.as_object().expect("the reply is an object");
    assert!(
        object.len() == 1 && (object.contains_key("result") || object.contains_key("error")),
        "{value}"
    );
}

/// Token claims as the hub reads them, from whatever a verifier let
/// through: [`hubbub_core::auth::parse_claims`] never panics and is
/// deterministic; the hub, handed the bytes as a connection token's and
/// then a subscription token's payload, answers or closes the connection
/// with a code the protocol allows, and never panics; user-limited channel
/// names never admit the anonymous user.
pub fn token(data: &[u8]) {
    use hubbub_core::auth::{parse_claims, user_listed, TokenError, TokenVerifier, Tokens};

    struct Echo(Vec<u8>);
    impl TokenVerifier for Echo {
        fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError> {
            // "bad" stands for a token whose signature does not verify.
            if token == "bad" {
                Err(TokenError::Invalid)
            } else {
                Ok(self.0.clone())
            }
        }
    }

    let parsed = parse_claims(data);
    assert_eq!(parsed, parse_claims(data), "deterministic");
    if let Ok(claims) = &parsed {
        if let Some(info) = &claims.info {
            serde_json::from_slice::<&RawValue>(info).expect("info is JSON");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(!user_listed(text, ""));
    }
    let mut hub = Hub::new(Config {
        tokens: Tokens::new(Echo(data.to_vec())),
        ..Config::default()
    });
    let conn = ConnId(1);
    let now = Timestamp::from_millis(1_700_000_000_000);
    hub.handle_input(
        now,
        Input::Open {
            conn,
            route: Route::Centrifuge,
        },
    );
    let frame = "{\"id\":1,\"connect\":{\"token\":\"t\"}}\n\
                 {\"id\":2,\"subscribe\":{\"channel\":\"$c\",\"token\":\"t\"}}\n\
                 {\"id\":3,\"sub_refresh\":{\"channel\":\"$c\",\"token\":\"t\"}}\n\
                 {\"id\":4,\"refresh\":{\"token\":\"t\"}}";
    hub.handle_input(
        now,
        Input::Message {
            conn,
            frame: Frame::text(frame.to_owned()),
        },
    );
    for t in [now.as_millis() + 1, u64::MAX / 2, u64::MAX] {
        hub.handle_timeout(Timestamp::from_millis(t));
    }
    let mut closed = false;
    while let Some(out) = hub.poll_output() {
        match out {
            Output::Close { reason, .. } => {
                assert!(!closed, "one close per connection");
                closed = true;
                assert!(
                    matches!(
                        reason,
                        CloseReason::InvalidToken
                            | CloseReason::ConnectionExpired
                            | CloseReason::BadRequest
                            | CloseReason::HeartbeatTimeout
                            | CloseReason::Stale
                    ),
                    "{reason:?}"
                );
            }
            Output::Send { frame, .. } => {
                for line in frame.payload.split(|&b| b == b'\n') {
                    serde_json::from_slice::<Value>(line).expect("the hub writes JSON");
                }
                assert!(!closed, "nothing after the close");
            }
            Output::Ping { .. } => {}
        }
    }
}
