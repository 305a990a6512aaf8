//! Scenario tests for every rule of the hub, driven through its public
//! handle/poll interface on virtual time.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use hubbub_core::{
    CloseCode, CloseReason, Config, ConfigError, ConnId, Frame, Hub, Input, MessageKind, Name,
    Output, Route, SeedMessage, SeedType, Timestamp,
};

fn ms(t: u64) -> Timestamp {
    Timestamp::from_millis(t)
}

fn room(room: &str, user: &str) -> Route {
    Route::Room {
        room: Name::new(room).unwrap(),
        username: Name::new(user).unwrap(),
        history: 0,
    }
}

fn drain(hub: &mut Hub) -> Vec<Output> {
    std::iter::from_fn(|| hub.poll_output()).collect()
}

/// The seed messages `conn` was sent, in order.
fn seed_for(outputs: &[Output], conn: ConnId) -> Vec<SeedMessage> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, frame, .. } if *c == conn => {
                assert_eq!(frame.kind, MessageKind::Text);
                Some(serde_json::from_slice(&frame.payload).unwrap())
            }
            _ => None,
        })
        .collect()
}

fn closes(outputs: &[Output]) -> Vec<(ConnId, CloseReason)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

fn summary(msgs: &[SeedMessage]) -> Vec<(SeedType, String)> {
    msgs.iter().map(|m| (m.kind, m.content.clone())).collect()
}

fn open(hub: &mut Hub, now: u64, conn: u64, route: Route) -> Vec<Output> {
    hub.handle_input(
        ms(now),
        Input::Open {
            conn: ConnId(conn),
            route,
        },
    );
    drain(hub)
}

fn say(hub: &mut Hub, now: u64, conn: u64, text: &str) -> Vec<Output> {
    hub.handle_input(
        ms(now),
        Input::Message {
            conn: ConnId(conn),
            frame: Frame::text(text.to_owned()),
        },
    );
    drain(hub)
}

#[test]
fn relay_echoes_to_everyone_verbatim_keeping_the_opcode() {
    let mut hub = Hub::new(Config::default());
    assert!(
        open(&mut hub, 0, 1, Route::Relay).is_empty(),
        "no greeting on a relay connection"
    );
    open(&mut hub, 0, 2, Route::Relay);
    open(&mut hub, 0, 3, room("r", "x")); // not a relay member
    let out = say(&mut hub, 1, 1, "hello");
    let to: Vec<_> = out
        .iter()
        .map(|o| (o.conn(), o.payload().cloned()))
        .collect();
    assert_eq!(
        to,
        vec![
            (ConnId(1), Some(Bytes::from("hello"))),
            (ConnId(2), Some(Bytes::from("hello")))
        ]
    );
    hub.handle_input(
        ms(2),
        Input::Message {
            conn: ConnId(2),
            frame: Frame::binary(vec![0xff, 0, 1]),
        },
    );
    let out = drain(&mut hub);
    assert_eq!(out.len(), 2);
    for o in &out {
        let Output::Send { frame, .. } = o else {
            panic!("{o:?}")
        };
        assert_eq!(*frame, Frame::binary(vec![0xff, 0, 1]));
    }
}

#[test]
fn a_join_sends_the_list_in_join_order_then_the_notice() {
    let mut hub = Hub::new(Config::default());
    let out = open(&mut hub, 0, 1, room("room1", "Eren"));
    assert_eq!(
        summary(&seed_for(&out, ConnId(1))),
        vec![
            (SeedType::OnlineUsers, "Eren".into()),
            (SeedType::UserJoined, "Eren joined the room".into())
        ]
    );
    let out = open(&mut hub, 0, 2, room("room1", "Mikasa"));
    for c in [1, 2] {
        let msgs = seed_for(&out, ConnId(c));
        assert_eq!(
            summary(&msgs),
            vec![
                (SeedType::OnlineUsers, "Eren,Mikasa".into()),
                (SeedType::UserJoined, "Mikasa joined the room".into())
            ]
        );
        assert_eq!(msgs[0].room, "room1");
        assert_eq!(
            msgs[0].username, "",
            "online_users has no username, as in the seed"
        );
        assert_eq!(msgs[1].username, "Mikasa");
    }
    // Exact bytes of the seed's Go encoding.
    let Output::Send { frame, .. } = &out[0] else {
        panic!()
    };
    assert_eq!(
        frame.payload,
        Bytes::from(
            r#"{"type":"online_users","content":"Eren,Mikasa","room":"room1","username":""}"#
        )
    );
}

#[test]
fn chat_reaches_every_member_including_the_sender_and_no_other_room() {
    let mut hub = Hub::new(Config::default());
    open(&mut hub, 0, 1, room("a", "ann"));
    open(&mut hub, 0, 2, room("a", "bob"));
    open(&mut hub, 0, 3, room("b", "cat"));
    open(&mut hub, 0, 4, Route::Relay);
    let out = say(&mut hub, 1, 2, "hi \"all\"");
    let recipients: Vec<_> = out.iter().map(Output::conn).collect();
    assert_eq!(recipients, vec![ConnId(1), ConnId(2)]);
    let msg = &seed_for(&out, ConnId(1))[0];
    assert_eq!(
        (
            msg.kind,
            msg.content.as_str(),
            msg.room.as_str(),
            msg.username.as_str()
        ),
        (SeedType::Chat, "hi \"all\"", "a", "bob")
    );
    // One encoding shared by all recipients.
    let payloads: Vec<_> = out.iter().map(|o| o.payload().unwrap().as_ptr()).collect();
    assert_eq!(payloads[0], payloads[1]);
    assert_eq!(hub.room_chat_seq("a"), Some(1));
}

#[test]
fn every_departure_cause_tells_the_others() {
    for reason in [
        CloseReason::PeerClosed,
        CloseReason::WriteTimeout,
        CloseReason::ProtocolError,
        CloseReason::SlowConsumer,
    ] {
        let mut hub = Hub::new(Config::default());
        open(&mut hub, 0, 1, room("r", "ann"));
        open(&mut hub, 0, 2, room("r", "bob"));
        open(&mut hub, 0, 3, room("r", "cat"));
        if reason == CloseReason::SlowConsumer {
            hub.handle_input(ms(5), Input::QueueFull { conn: ConnId(2) });
        } else {
            hub.handle_input(
                ms(5),
                Input::Disconnect {
                    conn: ConnId(2),
                    reason,
                },
            );
        }
        let out = drain(&mut hub);
        assert_eq!(
            out[0],
            Output::Close {
                conn: ConnId(2),
                reason
            },
            "close comes first"
        );
        assert!(
            out[1..].iter().all(|o| o.conn() != ConnId(2)),
            "nothing after the close"
        );
        for c in [1, 3] {
            assert_eq!(
                summary(&seed_for(&out, ConnId(c))),
                vec![
                    (SeedType::UserLeft, "bob left the room".into()),
                    (SeedType::OnlineUsers, "ann,cat".into())
                ],
                "{reason:?}"
            );
        }
        assert_eq!(
            hub.room_members("r").collect::<Vec<_>>(),
            vec![ConnId(1), ConnId(3)]
        );
    }
    assert_eq!(CloseReason::SlowConsumer.code(), CloseCode(1008));
}

#[test]
fn bad_messages_close_with_the_right_code_and_do_not_reach_anyone() {
    let config = Config {
        max_message_bytes: 10,
        ..Config::default()
    };
    let cases: [(Route, Frame, u16); 5] = [
        (room("r", "x"), Frame::text("12345678901"), 1009),
        (
            room("r", "x"),
            Frame::text(Bytes::from_static(b"\xc3\x28")),
            1007,
        ),
        (room("r", "x"), Frame::binary("hi"), 1003),
        (Route::Relay, Frame::binary(vec![0u8; 11]), 1009),
        (Route::Relay, Frame::text(Bytes::from_static(b"\xff")), 1007),
    ];
    for (route, frame, code) in cases {
        let mut hub = Hub::new(config.clone());
        open(&mut hub, 0, 1, route.clone());
        open(&mut hub, 0, 2, route.clone());
        hub.handle_input(
            ms(1),
            Input::Message {
                conn: ConnId(1),
                frame,
            },
        );
        let out = drain(&mut hub);
        let Output::Close { conn, reason } = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!((conn, reason.code().0), (ConnId(1), code));
        let Route::Room { .. } = route else {
            assert_eq!(out.len(), 1, "relay: nothing but the close");
            continue;
        };
        assert_eq!(
            summary(&seed_for(&out, ConnId(2))).first().map(|m| m.0),
            Some(SeedType::UserLeft),
            "no chat reached the other member"
        );
    }
    // Exactly at the limit is fine.
    let mut hub = Hub::new(config);
    open(&mut hub, 0, 1, Route::Relay);
    assert_eq!(say(&mut hub, 1, 1, "1234567890").len(), 1);
}

#[test]
fn heartbeat_pings_every_interval_and_closes_silent_connections() {
    let config = Config {
        ping_interval: Duration::from_millis(54),
        pong_timeout: Duration::from_millis(60),
        ..Config::default()
    };
    let mut hub = Hub::new(config);
    open(&mut hub, 0, 1, room("r", "live"));
    open(&mut hub, 0, 2, room("r", "dead"));
    assert_eq!(hub.poll_timeout(), Some(ms(54)));
    hub.handle_timeout(ms(53)); // early: harmless
    assert!(drain(&mut hub).is_empty());
    hub.handle_timeout(ms(54));
    assert_eq!(
        drain(&mut hub),
        vec![
            Output::Ping { conn: ConnId(1) },
            Output::Ping { conn: ConnId(2) }
        ]
    );
    hub.handle_input(ms(55), Input::Pong { conn: ConnId(1) });
    assert_eq!(hub.poll_timeout(), Some(ms(60)));
    hub.handle_timeout(ms(59));
    assert!(drain(&mut hub).is_empty());
    hub.handle_timeout(ms(60));
    let out = drain(&mut hub);
    assert_eq!(
        closes(&out),
        vec![(ConnId(2), CloseReason::HeartbeatTimeout)]
    );
    assert_eq!(
        summary(&seed_for(&out, ConnId(1))),
        vec![
            (SeedType::UserLeft, "dead left the room".into()),
            (SeedType::OnlineUsers, "live".into())
        ]
    );
    // The live one: next ping at 108, deadline 55+60 = 115 unless it pongs.
    hub.handle_timeout(ms(108));
    assert_eq!(drain(&mut hub), vec![Output::Ping { conn: ConnId(1) }]);
    hub.handle_input(ms(109), Input::Pong { conn: ConnId(1) });
    hub.handle_timeout(ms(115));
    assert!(
        drain(&mut hub).is_empty(),
        "a ponging client is never closed"
    );
    assert!(hub.is_open(ConnId(1)));
    // It goes silent: closed exactly pong_timeout after its last pong.
    hub.handle_timeout(ms(162));
    assert_eq!(drain(&mut hub), vec![Output::Ping { conn: ConnId(1) }]);
    hub.handle_timeout(ms(168));
    assert!(drain(&mut hub).is_empty());
    hub.handle_timeout(ms(169));
    assert_eq!(
        closes(&drain(&mut hub)),
        vec![(ConnId(1), CloseReason::HeartbeatTimeout)]
    );
    assert_eq!(hub.poll_timeout(), None);
    assert_eq!(hub.rooms().count(), 0, "a room exists while it has members");
}

#[test]
fn a_late_timer_still_closes_and_skips_missed_pings() {
    let config = Config {
        ping_interval: Duration::from_millis(10),
        pong_timeout: Duration::from_millis(25),
        ..Config::default()
    };
    let mut hub = Hub::new(config);
    open(&mut hub, 0, 1, Route::Relay);
    hub.handle_input(ms(1), Input::Pong { conn: ConnId(1) });
    hub.handle_timeout(ms(24)); // the driver slept through two ping times
    assert_eq!(
        drain(&mut hub),
        vec![Output::Ping { conn: ConnId(1) }],
        "one ping, not a burst"
    );
    assert_eq!(
        hub.poll_timeout(),
        Some(ms(26)),
        "deadline 1+25 comes before the ping at 30"
    );
    hub.handle_timeout(ms(100));
    assert_eq!(
        closes(&drain(&mut hub)),
        vec![(ConnId(1), CloseReason::HeartbeatTimeout)]
    );
}

#[test]
fn shutdown_closes_everyone_with_1001_and_refuses_new_connections() {
    let mut hub = Hub::new(Config::default());
    open(&mut hub, 0, 1, room("r", "a"));
    open(&mut hub, 0, 2, room("r", "b"));
    open(&mut hub, 0, 3, Route::Relay);
    hub.handle_input(ms(1), Input::Shutdown);
    let out = drain(&mut hub);
    assert_eq!(
        out,
        (1..=3)
            .map(|c| Output::Close {
                conn: ConnId(c),
                reason: CloseReason::ServerShutdown
            })
            .collect::<Vec<_>>(),
        "only closes: no departure notices to people who are also leaving"
    );
    assert_eq!(CloseReason::ServerShutdown.code(), CloseCode::GOING_AWAY);
    assert_eq!(
        closes(&open(&mut hub, 2, 4, Route::Relay)),
        vec![(ConnId(4), CloseReason::ServerShutdown)]
    );
    assert_eq!(hub.connection_count(), 0);
    assert_eq!(hub.poll_timeout(), None);
}

#[test]
fn connections_beyond_the_limit_are_closed_with_1013() {
    let mut hub = Hub::new(Config {
        max_connections: 2,
        ..Config::default()
    });
    open(&mut hub, 0, 1, Route::Relay);
    open(&mut hub, 0, 2, Route::Relay);
    let out = open(&mut hub, 0, 3, room("r", "late"));
    assert_eq!(
        out,
        vec![Output::Close {
            conn: ConnId(3),
            reason: CloseReason::ServerFull
        }]
    );
    assert_eq!(CloseReason::ServerFull.code().0, 1013);
    assert_eq!(hub.rooms().count(), 0);
}

#[test]
fn inputs_for_unknown_or_closed_connections_are_ignored() {
    let mut hub = Hub::new(Config::default());
    open(&mut hub, 0, 1, room("r", "a"));
    hub.handle_input(
        ms(1),
        Input::Disconnect {
            conn: ConnId(1),
            reason: CloseReason::PeerClosed,
        },
    );
    assert_eq!(drain(&mut hub).len(), 1);
    for input in [
        Input::Disconnect {
            conn: ConnId(1),
            reason: CloseReason::PeerClosed,
        },
        Input::QueueFull { conn: ConnId(1) },
        Input::Pong { conn: ConnId(1) },
        Input::Message {
            conn: ConnId(1),
            frame: Frame::text("x"),
        },
        Input::Message {
            conn: ConnId(99),
            frame: Frame::text("x"),
        },
    ] {
        hub.handle_input(ms(2), input);
        assert!(
            drain(&mut hub).is_empty(),
            "exactly one close per connection, nothing after"
        );
    }
    // A duplicate open of a live id leaves the live connection alone.
    open(&mut hub, 3, 5, room("r", "b"));
    assert!(open(&mut hub, 3, 5, room("q", "c")).is_empty());
    assert_eq!(hub.room_members("r").collect::<Vec<_>>(), vec![ConnId(5)]);
}

#[test]
fn duplicate_usernames_are_separate_members() {
    let mut hub = Hub::new(Config::default());
    open(&mut hub, 0, 1, room("r", "sam"));
    let out = open(&mut hub, 0, 2, room("r", "sam"));
    assert_eq!(seed_for(&out, ConnId(1))[0].content, "sam,sam");
    hub.handle_input(
        ms(1),
        Input::Disconnect {
            conn: ConnId(1),
            reason: CloseReason::PeerClosed,
        },
    );
    let out = drain(&mut hub);
    assert_eq!(seed_for(&out, ConnId(2))[1].content, "sam");
}

#[test]
fn presence_snapshots_are_marked_for_conflation_and_nothing_else_is() {
    let mut hub = Hub::new(Config::default());
    open(&mut hub, 0, 1, room("r", "a"));
    let out = open(&mut hub, 0, 2, room("r", "b"));
    for o in &out {
        let Output::Send {
            frame, presence, ..
        } = o
        else {
            panic!()
        };
        let msg: SeedMessage = serde_json::from_slice(&frame.payload).unwrap();
        assert_eq!(presence.is_some(), msg.kind == SeedType::OnlineUsers);
    }
}

#[test]
fn the_same_inputs_give_byte_identical_outputs() {
    fn run() -> String {
        let config = Config {
            ping_interval: Duration::from_millis(7),
            pong_timeout: Duration::from_millis(20),
            max_message_bytes: 32,
            ..Config::default()
        };
        let mut hub = Hub::new(config);
        let mut log = String::new();
        for i in 0..400u64 {
            let now = ms(i);
            let conn = ConnId(i % 37);
            let input = match i % 7 {
                0 | 3 => Input::Open {
                    conn,
                    route: room(&format!("r{}", i % 5), &format!("u{i}")),
                },
                1 => Input::Message {
                    conn,
                    frame: Frame::text(format!("m{i}")),
                },
                2 => Input::Pong { conn },
                4 => Input::Open {
                    conn,
                    route: Route::Relay,
                },
                5 => Input::QueueFull {
                    conn: ConnId(i % 11),
                },
                _ => Input::Disconnect {
                    conn,
                    reason: CloseReason::PeerClosed,
                },
            };
            hub.handle_input(now, input);
            hub.handle_timeout(now);
            while let Some(o) = hub.poll_output() {
                log.push_str(&format!("{o:?}\n"));
            }
        }
        log
    }
    let a = run();
    assert!(a.len() > 10_000, "the run produced real traffic");
    assert_eq!(a, run());
}

#[test]
fn config_validation_explains_the_problem() {
    assert_eq!(Config::default().validate(), Ok(()));
    let bad = Config {
        ping_interval: Duration::from_secs(60),
        ..Config::default()
    };
    assert_eq!(
        bad.validate(),
        Err(ConfigError::PingIntervalNotBelowPongTimeout)
    );
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("shorter than pong timeout"));
    let zero = Config {
        send_queue: 0,
        ..Config::default()
    };
    assert_eq!(zero.validate(), Err(ConfigError::ZeroLimit));
}
