//! A channel's window of publications on virtual time: bounded by size and
//! age, read by `history` and by recovery.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hubbub_core::{
    ChannelOptions, Config, ConnId, Frame, Hub, Input, Namespaces, Output, Route, Timestamp,
};
use serde_json::{json, Value};

fn hub(size: u32, ttl: Duration) -> Hub {
    Hub::new(Config {
        namespaces: Namespaces {
            default: Arc::new(ChannelOptions {
                history_size: size,
                history_ttl: ttl,
                ..ChannelOptions::default()
            }),
            ..Namespaces::default()
        },
        ..Config::default()
    })
}

/// Sends `frame` from `conn` at `t` ms; returns what `conn` was sent.
fn send(hub: &mut Hub, t: u64, conn: u64, frame: &str) -> Vec<Value> {
    let now = Timestamp::from_millis(t);
    hub.handle_input(
        now,
        Input::Message {
            conn: ConnId(conn),
            frame: Frame::text(frame.to_owned()),
        },
    );
    std::iter::from_fn(|| hub.poll_output())
        .filter_map(|o| match o {
            Output::Send { conn: c, frame, .. } if c == ConnId(conn) => {
                Some(serde_json::from_slice(&frame.payload).unwrap())
            }
            _ => None,
        })
        .collect()
}

fn history_offsets(hub: &mut Hub, t: u64) -> Vec<u64> {
    let replies = send(
        hub,
        t,
        1,
        r#"{"id":99,"history":{"channel":"c","limit":-1}}"#,
    );
    let reply = replies.iter().find(|m| m["id"] == 99).unwrap();
    reply["history"]["publications"]
        .as_array()
        .map(|p| p.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

fn open(hub: &mut Hub, conn: u64) {
    hub.handle_input(
        Timestamp::ZERO,
        Input::Open {
            conn: ConnId(conn),
            route: Route::Centrifuge,
        },
    );
    send(
        hub,
        0,
        conn,
        "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}",
    );
}

#[test]
fn the_window_keeps_the_latest_size_and_forgets_by_age() {
    let mut hub = hub(3, Duration::from_secs(10));
    open(&mut hub, 1);
    for (i, t) in [0u64, 1_000, 2_000, 3_000, 4_000].iter().enumerate() {
        send(
            &mut hub,
            *t,
            1,
            &format!(
                r#"{{"id":{},"publish":{{"channel":"c","data":{i}}}}}"#,
                10 + i
            ),
        );
    }
    assert_eq!(history_offsets(&mut hub, 5_000), [3, 4, 5], "the latest 3");
    // 12.5 s: offset 3 (published at 2 s) is older than 10 s.
    assert_eq!(history_offsets(&mut hub, 12_500), [4, 5]);
    assert_eq!(history_offsets(&mut hub, 60_000), Vec::<u64>::new());
}

#[test]
fn recovery_needs_the_whole_gap_in_the_window() {
    let mut hub = hub(2, Duration::from_secs(3_600));
    open(&mut hub, 1);
    let epoch = {
        let r = send(
            &mut hub,
            0,
            1,
            r#"{"id":3,"history":{"channel":"c","limit":0}}"#,
        );
        r[0]["history"]["epoch"].as_str().unwrap().to_owned()
    };
    for i in 0..3 {
        send(
            &mut hub,
            1,
            1,
            &format!(
                r#"{{"id":{},"publish":{{"channel":"c","data":{i}}}}}"#,
                20 + i
            ),
        );
    }
    hub.handle_input(
        Timestamp::from_millis(2),
        Input::Open {
            conn: ConnId(2),
            route: Route::Centrifuge,
        },
    );
    send(&mut hub, 2, 2, r#"{"id":1,"connect":{}}"#);
    let subscribe = |from: u64| {
        format!(
            r#"{{"id":{},"subscribe":{{"channel":"c","recover":true,"offset":{from},"epoch":"{epoch}"}}}}"#,
            5 + from
        )
    };
    let r = send(&mut hub, 3, 2, &subscribe(0));
    let reply = &r.iter().find(|m| m["id"] == 5).unwrap()["subscribe"];
    assert_eq!(
        reply["recovered"],
        Value::Null,
        "offset 1 left the window of 2"
    );
    assert_eq!(reply["offset"], 3);
    send(&mut hub, 3, 2, r#"{"id":30,"unsubscribe":{"channel":"c"}}"#);
    let r = send(&mut hub, 4, 2, &subscribe(1));
    let reply = &r.iter().find(|m| m["id"] == 6).unwrap()["subscribe"];
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["offset"], 1);
    assert_eq!(
        reply["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["data"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );
}

/// With a store (SQLite's place): a client subscribes, leaves and another
/// subscribes while the stream is still being read. The room they find is
/// the stream's (its epoch and offsets), not one made up in between.
#[test]
fn a_leave_and_a_join_waiting_for_the_stream_find_the_streams_room() {
    let mut hub = Hub::with_external_store(Config {
        namespaces: Namespaces {
            default: Arc::new(ChannelOptions {
                history_size: 10,
                history_ttl: Duration::from_secs(3600),
                ..ChannelOptions::default()
            }),
            ..Namespaces::default()
        },
        ..Config::default()
    });
    let mut store = hubbub_core::MemoryStore::new(10);
    open(&mut hub, 1);
    let pending: Vec<_> = std::iter::from_fn(|| hub.poll_store()).collect();
    assert_eq!(pending.len(), 1, "the stream is being read");
    hub.handle_input(
        Timestamp::ZERO,
        Input::Disconnect {
            conn: ConnId(1),
            reason: hubbub_core::CloseReason::PeerClosed,
        },
    );
    hub.handle_input(
        Timestamp::ZERO,
        Input::Open {
            conn: ConnId(2),
            route: Route::Centrifuge,
        },
    );
    send(
        &mut hub,
        0,
        2,
        "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\",\"positioned\":true}}",
    );
    let mut replies = Vec::new();
    for request in pending {
        let answer = store.execute(request);
        hub.handle_store(Timestamp::ZERO, answer);
        while let Some(out) = hub.poll_output() {
            if let Output::Send { conn, frame, .. } = out {
                if conn == ConnId(2) {
                    replies.push(serde_json::from_slice::<Value>(&frame.payload).unwrap());
                }
            }
        }
    }
    let (_, epoch) = store.position("c").unwrap();
    let reply = replies.iter().find(|m| m["id"] == 2).unwrap();
    assert_eq!(
        reply["subscribe"]["epoch"],
        format!("{epoch:016x}"),
        "{reply}"
    );
    // Its publication goes through the stream, at offset 1.
    send(
        &mut hub,
        0,
        2,
        r#"{"id":3,"publish":{"channel":"c","data":1}}"#,
    );
    let append: Vec<_> = std::iter::from_fn(|| hub.poll_store()).collect();
    assert_eq!(append.len(), 1, "appended to the stream: {append:?}");
    let answer = store.execute(append.into_iter().next().unwrap());
    hub.handle_store(Timestamp::ZERO, answer);
    let pushes: Vec<Value> = std::iter::from_fn(|| hub.poll_output())
        .filter_map(|o| match o {
            Output::Send { frame, .. } => Some(serde_json::from_slice(&frame.payload).unwrap()),
            _ => None,
        })
        .collect();
    assert!(
        pushes.iter().any(|m| m["push"]["pub"]["offset"] == 1),
        "{pushes:?}"
    );
}
