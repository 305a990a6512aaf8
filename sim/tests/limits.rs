//! Rate and connection limits on the virtual clock, against the real hub:
//!
//! - a Centrifugo client over `command_rate` gets 111 for what is over, and
//!   3013 once it keeps flooding; its neighbour in the channel is untouched;
//! - a seed client flooding lines has the excess dropped and is closed
//!   (1008); the room hears exactly the lines that were allowed;
//! - a user over `user_connection_limit` is refused (3504 / 1008), and gets
//!   a slot back when one of its connections closes;
//! - `user_publish_rate` is shared by a user's connections;
//! - a join/leave storm sends a bounded number of `online_users`, and the
//!   last one every member reads is exact.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use hubbub_core::{
    CloseReason, Config, ConnId, Frame, Hub, Input, Name, Output, Rate, Route, SeedMessage,
    SeedType, Timestamp,
};
use serde_json::Value;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn config() -> Config {
    Config {
        ping_interval: Duration::from_secs(3_600),
        pong_timeout: Duration::from_secs(7_200),
        connect_timeout: Duration::from_secs(3_600),
        send_queue: 1 << 20,
        command_rate: Some(Rate::new(10, 20)),
        user_publish_rate: None,
        user_connection_limit: 0,
        presence_rate: None,
        ..Config::default()
    }
}

/// The hub and everything it said, per connection.
struct Bench {
    hub: Hub,
    sent: BTreeMap<ConnId, Vec<String>>,
    closed: BTreeMap<ConnId, (u16, CloseReason)>,
}

impl Bench {
    fn new(config: Config) -> Self {
        Self {
            hub: Hub::new(config),
            sent: BTreeMap::new(),
            closed: BTreeMap::new(),
        }
    }

    fn input(&mut self, now: u64, input: Input) {
        self.hub.handle_input(at(now), input);
        self.drain();
    }

    fn tick(&mut self, now: u64) {
        while let Some(due) = self.hub.poll_timeout() {
            if due > at(now) {
                break;
            }
            self.hub.handle_timeout(due);
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, frame, .. } => self
                    .sent
                    .entry(conn)
                    .or_default()
                    .push(String::from_utf8(frame.payload.to_vec()).unwrap()),
                Output::Close { conn, reason } => {
                    let codec_code = self.code_for(conn, reason);
                    self.closed.insert(conn, (codec_code, reason));
                }
                Output::Ping { .. } => {}
            }
        }
    }

    fn code_for(&self, conn: ConnId, reason: CloseReason) -> u16 {
        // Connections 100+ speak Centrifugo in these tests.
        if conn.0 >= 100 {
            reason.code_for(hubbub_core::Codec::Centrifuge).0
        } else {
            reason.code().0
        }
    }

    fn text(&mut self, now: u64, conn: ConnId, text: &str) {
        self.input(
            now,
            Input::Message {
                conn,
                frame: Frame::text(text.as_bytes().to_vec()),
            },
        );
    }

    fn seed(&mut self, now: u64, conn: ConnId, room: &str, user: &str) {
        self.input(
            now,
            Input::Open {
                conn,
                route: Route::Room {
                    room: Name::new(room).unwrap(),
                    username: Name::new(user).unwrap(),
                    history: 0,
                },
            },
        );
    }

    fn centrifuge(&mut self, now: u64, conn: ConnId, channel: &str) {
        self.input(
            now,
            Input::Open {
                conn,
                route: Route::Centrifuge,
            },
        );
        self.text(now, conn, r#"{"id":1,"connect":{}}"#);
        self.text(
            now,
            conn,
            &format!(r#"{{"id":2,"subscribe":{{"channel":"{channel}"}}}}"#),
        );
    }

    fn replies(&self, conn: ConnId) -> Vec<Value> {
        self.sent
            .get(&conn)
            .into_iter()
            .flatten()
            .flat_map(|f| f.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()))
            .collect()
    }

    fn seed_messages(&self, conn: ConnId) -> Vec<SeedMessage> {
        self.sent
            .get(&conn)
            .into_iter()
            .flatten()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect()
    }
}

fn error_code(reply: &Value) -> Option<u64> {
    reply.get("error").and_then(|e| e["code"].as_u64())
}

#[test]
fn a_centrifugo_flood_gets_111_then_3013_and_the_neighbour_is_untouched() {
    let mut b = Bench::new(config());
    let (flooder, neighbour) = (ConnId(100), ConnId(101));
    b.centrifuge(0, flooder, "room");
    b.centrifuge(0, neighbour, "room");
    // 200 publishes in one second: 10/s with a burst of 20.
    for i in 0..200u64 {
        b.text(
            i * 5,
            flooder,
            &format!(
                r#"{{"id":{},"publish":{{"channel":"room","data":{{"n":{i}}}}}}}"#,
                10 + i
            ),
        );
        if b.closed.contains_key(&flooder) {
            break;
        }
    }
    let replies = b.replies(flooder);
    let limited = replies
        .iter()
        .filter(|r| error_code(r) == Some(111))
        .count();
    let accepted: Vec<&Value> = replies
        .iter()
        .filter(|r| r.get("publish").is_some())
        .collect();
    assert!(limited > 0, "some publishes were refused with 111");
    assert!(
        (18..=25).contains(&accepted.len()),
        "about one burst accepted: {}",
        accepted.len()
    );
    assert_eq!(
        b.closed.get(&flooder),
        Some(&(3013, CloseReason::TooManyRequests))
    );
    assert!(!b.closed.contains_key(&neighbour));
    // The neighbour saw exactly the accepted publications, and can still publish.
    let pushes = b
        .replies(neighbour)
        .iter()
        .filter(|r| r.get("push").is_some())
        .count();
    assert_eq!(pushes, accepted.len());
    b.text(
        2_000,
        neighbour,
        r#"{"id":3,"publish":{"channel":"room","data":{"hi":1}}}"#,
    );
    assert!(b
        .replies(neighbour)
        .iter()
        .any(|r| r["id"] == 3 && r.get("publish").is_some()));
    assert_eq!(b.hub.stats().closes_for(CloseReason::TooManyRequests), 1);
    assert!(b.hub.stats().commands_limited >= limited as u64);
}

#[test]
fn a_client_at_the_rate_is_never_refused() {
    let mut b = Bench::new(config());
    let c = ConnId(100);
    b.centrifuge(0, c, "room");
    // 10/s for a minute, exactly the rate.
    for i in 0..600u64 {
        b.text(
            1_000 + i * 100,
            c,
            &format!(
                r#"{{"id":{},"publish":{{"channel":"room","data":{{}}}}}}"#,
                10 + i
            ),
        );
    }
    assert!(!b.closed.contains_key(&c));
    assert!(b.replies(c).iter().all(|r| error_code(r).is_none()));
}

#[test]
fn a_seed_flood_is_dropped_then_closed_with_1008() {
    let mut b = Bench::new(config());
    let (flooder, listener) = (ConnId(1), ConnId(2));
    b.seed(0, flooder, "lobby", "mallory");
    b.seed(0, listener, "lobby", "ann");
    for i in 0..500u64 {
        b.text(i, flooder, &format!("line {i}"));
    }
    assert_eq!(
        b.closed.get(&flooder),
        Some(&(1008, CloseReason::TooManyRequests))
    );
    let heard: Vec<String> = b
        .seed_messages(listener)
        .into_iter()
        .filter(|m| m.kind == SeedType::Chat)
        .map(|m| m.content)
        .collect();
    // The burst went through, in order; the rest was dropped.
    assert!((20..=26).contains(&heard.len()), "{} lines", heard.len());
    for (i, line) in heard.iter().enumerate() {
        assert_eq!(line, &format!("line {i}"));
    }
    assert!(!b.closed.contains_key(&listener));
}

#[test]
fn a_user_over_its_connection_limit_is_refused_until_one_closes() {
    let mut b = Bench::new(Config {
        user_connection_limit: 2,
        ..config()
    });
    b.seed(0, ConnId(1), "lobby", "bob");
    b.seed(0, ConnId(2), "other", "bob");
    b.seed(0, ConnId(3), "lobby", "bob");
    assert_eq!(
        b.closed.get(&ConnId(3)),
        Some(&(1008, CloseReason::ConnectionLimit))
    );
    assert!(!b.closed.contains_key(&ConnId(1)));
    // Another user is not affected.
    b.seed(0, ConnId(4), "lobby", "ann");
    assert!(!b.closed.contains_key(&ConnId(4)));
    // The refused connection left no trace in presence.
    let last = b
        .seed_messages(ConnId(4))
        .into_iter()
        .rfind(|m| m.kind == SeedType::OnlineUsers)
        .unwrap();
    assert_eq!(last.content, "bob,ann");
    b.input(
        1,
        Input::Disconnect {
            conn: ConnId(2),
            reason: CloseReason::PeerClosed,
        },
    );
    b.seed(2, ConnId(5), "lobby", "bob");
    assert!(!b.closed.contains_key(&ConnId(5)));
}

#[test]
fn a_user_limit_closes_centrifugo_with_3504() {
    use hubbub_core::auth::{TokenError, TokenVerifier, Tokens};
    struct Fake;
    impl TokenVerifier for Fake {
        fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError> {
            token
                .strip_prefix("ok.")
                .map(|c| c.as_bytes().to_vec())
                .ok_or(TokenError::Invalid)
        }
    }
    let mut b = Bench::new(Config {
        user_connection_limit: 1,
        tokens: Tokens::new(Fake),
        ..config()
    });
    for conn in [ConnId(100), ConnId(101)] {
        b.input(
            0,
            Input::Open {
                conn,
                route: Route::Centrifuge,
            },
        );
        b.text(
            0,
            conn,
            r#"{"id":1,"connect":{"token":"ok.{\"sub\":\"carol\"}"}}"#,
        );
    }
    assert!(b
        .replies(ConnId(100))
        .iter()
        .any(|r| r.get("connect").is_some()));
    assert_eq!(
        b.closed.get(&ConnId(101)),
        Some(&(3504, CloseReason::ConnectionLimit))
    );
}

#[test]
fn a_users_publish_budget_is_shared_by_its_connections() {
    let mut b = Bench::new(Config {
        command_rate: None,
        user_publish_rate: Some(Rate::new(5, 10)),
        ..config()
    });
    let (one, two, listener) = (ConnId(1), ConnId(2), ConnId(3));
    b.seed(0, one, "lobby", "dave");
    b.seed(0, two, "lobby", "dave");
    b.seed(0, listener, "lobby", "ann");
    for i in 0..20 {
        b.text(10, one, &format!("a{i}"));
        b.text(10, two, &format!("b{i}"));
    }
    let heard = b
        .seed_messages(listener)
        .into_iter()
        .filter(|m| m.kind == SeedType::Chat)
        .count();
    assert_eq!(heard, 10, "one burst for the user, not one per connection");
    assert_eq!(b.hub.stats().publishes_limited, 30);
    // Nobody is closed for it: the budget refills.
    assert!(b.closed.is_empty());
    b.text(2_010, one, "later");
    assert!(b
        .seed_messages(listener)
        .iter()
        .any(|m| m.kind == SeedType::Chat && m.content == "later"));
}

#[test]
fn a_join_leave_storm_sends_bounded_presence_and_ends_exact() {
    let rate = Rate::new(20, 40);
    let mut b = Bench::new(Config {
        presence_rate: Some(rate),
        ..config()
    });
    let members: Vec<ConnId> = (1..=30).map(ConnId).collect();
    for (i, &m) in members.iter().enumerate() {
        b.seed(0, m, "hall", &format!("m{i}"));
    }
    // One client cycles joins and leaves 2,000 times in two seconds.
    for i in 0..2_000u64 {
        let conn = ConnId(1_000 + i);
        b.seed(i, conn, "hall", "cycler");
        b.input(
            i,
            Input::Disconnect {
                conn,
                reason: CloseReason::PeerClosed,
            },
        );
        b.tick(i);
    }
    b.tick(10_000);
    let expected: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    let expected = expected.join(",");
    for &m in &members {
        let lists: Vec<String> = b
            .seed_messages(m)
            .into_iter()
            .filter(|msg| msg.kind == SeedType::OnlineUsers)
            .map(|msg| msg.content)
            .collect();
        // 4,000 changes; the budget is a burst of 40 then 20/s for ~2 s.
        assert!(
            lists.len() <= 40 + 20 * 3 + 31,
            "{m}: {} online_users",
            lists.len()
        );
        assert_eq!(lists.last(), Some(&expected), "{m}: the last list is exact");
    }
    assert!(b.hub.stats().presence_deferred > 3_000);
    // Without the bound, every change is a list for every member.
    let mut unbounded = Bench::new(config());
    for (i, &m) in members.iter().enumerate() {
        unbounded.seed(0, m, "hall", &format!("m{i}"));
    }
    for i in 0..200u64 {
        unbounded.seed(i, ConnId(1_000 + i), "hall", "cycler");
        unbounded.input(
            i,
            Input::Disconnect {
                conn: ConnId(1_000 + i),
                reason: CloseReason::PeerClosed,
            },
        );
    }
    let lists = unbounded
        .seed_messages(members[0])
        .into_iter()
        .filter(|msg| msg.kind == SeedType::OnlineUsers)
        .count();
    assert!(lists > 400, "{lists}");
}

#[test]
fn a_users_connection_limit_holds_across_shards() {
    use hubbub_core::ShardId;
    let hubs_config = |shard: u16| Config {
        shards: 2,
        shard: ShardId(shard),
        user_connection_limit: 3,
        ..config()
    };
    let mut hubs = [Hub::new(hubs_config(0)), Hub::new(hubs_config(1))];
    let mut closed: BTreeMap<ConnId, CloseReason> = BTreeMap::new();
    // Feeds one input to `shard`, then carries bus messages both ways until quiet.
    fn step(
        hubs: &mut [Hub; 2],
        closed: &mut BTreeMap<ConnId, CloseReason>,
        shard: usize,
        now: u64,
        input: Input,
    ) {
        hubs[shard].handle_input(at(now), input);
        loop {
            let mut moved = false;
            for from in 0..2 {
                while let Some((to, msg)) = hubs[from].poll_bus() {
                    hubs[usize::from(to.0)].handle_bus(at(now), msg);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        for hub in hubs.iter_mut() {
            while let Some(out) = hub.poll_output() {
                if let Output::Close { conn, reason } = out {
                    closed.insert(conn, reason);
                }
            }
        }
    }
    let open = |conn: u64| Input::Open {
        conn: ConnId(conn),
        route: Route::Room {
            room: Name::new("lobby").unwrap(),
            username: Name::new("dana").unwrap(),
            history: 0,
        },
    };
    // Five connections of one user, alternating between the shards: the
    // first three stay, the other two are closed, whichever shard they
    // landed on and whichever shard is the user's home.
    for conn in 1..=5u64 {
        let shard = usize::try_from(conn % 2).unwrap();
        step(&mut hubs, &mut closed, shard, conn, open(conn));
    }
    let refused: Vec<u64> = closed.keys().map(|c| c.0).collect();
    assert_eq!(refused, [4, 5], "{closed:?}");
    assert!(closed.values().all(|r| *r == CloseReason::ConnectionLimit));
    // One of the three leaves: a new one fits again, the next does not.
    step(
        &mut hubs,
        &mut closed,
        0,
        10,
        Input::Disconnect {
            conn: ConnId(2),
            reason: CloseReason::PeerClosed,
        },
    );
    step(&mut hubs, &mut closed, 1, 11, open(7));
    step(&mut hubs, &mut closed, 0, 12, open(8));
    assert!(!closed.contains_key(&ConnId(7)));
    assert_eq!(closed.get(&ConnId(8)), Some(&CloseReason::ConnectionLimit));
}
