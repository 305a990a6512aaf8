//! Hand-written scenarios in the world, each about one rule, plus tests that
//! the oracle really rejects a hub that misbehaves (its outputs are mutated
//! on the way to the oracle; the core itself is untouched).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hubbub_core::{
    CloseCode, CloseReason, Config, ConnId, Frame, Hub, Input, Name, Output, Route, Timestamp,
};
use hubbub_sim::client::Link;
use hubbub_sim::invariants::{Invariant, Oracle, Violation};
use hubbub_sim::world::{World, WorldSettings};

fn config() -> Config {
    Config {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(250),
        max_message_bytes: 16,
        send_queue: 4,
        max_connections: 8,
        idle_streams: 0,
        ..Config::default()
    }
}

fn world() -> World {
    world_with_latency(1, 20)
}

fn world_with_latency(min_ms: u64, max_ms: u64) -> World {
    World::new(&WorldSettings {
        seed: 1,
        config: config(),
        latency_min_ms: min_ms,
        latency_max_ms: max_ms,
    })
}

fn room(user: &str) -> Route {
    Route::Room {
        room: Name::new("lobby").unwrap(),
        username: Name::new(user).unwrap(),
        history: 0,
    }
}

fn ms(t: u64) -> Timestamp {
    Timestamp::from_millis(t)
}

/// Liveness and shutdown, as every scenario ends.
fn finish(mut w: World) -> World {
    w.settle().unwrap_or_else(|v| panic!("{v}"));
    w.finish().unwrap_or_else(|v| panic!("{v}"));
    w
}

#[test]
fn each_bad_message_closes_with_its_code_and_the_room_is_told() {
    let cases = [
        (Frame::text("x".repeat(17)), CloseCode::MESSAGE_TOO_BIG),
        (Frame::text(vec![b'a', 0xff]), CloseCode::INVALID_PAYLOAD),
        (Frame::binary(vec![1, 2]), CloseCode::UNSUPPORTED_DATA),
    ];
    for (frame, code) in cases {
        let mut w = world();
        let bad = w.open(room("bad"), Link::FAST);
        let good = w.open(room("good"), Link::FAST);
        w.run_until(ms(50)).unwrap();
        w.send(bad, frame);
        w.run_until(ms(90)).unwrap();
        assert_eq!(w.client(bad).observed.close, Some(code));
        assert!(!w.is_open(bad));
        assert_eq!(w.client(good).observed.left, 1);
        assert_eq!(
            w.client(good).observed.last_presence.as_deref(),
            Some("good")
        );
        finish(w);
    }
}

#[test]
fn garbled_frames_close_with_protocol_error() {
    let mut w = world();
    let c = w.open(Route::Relay, Link::FAST);
    w.run_until(ms(30)).unwrap();
    w.send_garbled(c);
    w.run_until(ms(80)).unwrap();
    assert_eq!(w.client(c).observed.close, Some(CloseCode::PROTOCOL_ERROR));
    finish(w);
}

#[test]
fn a_silent_client_is_timed_out_and_a_live_one_is_not() {
    let mut w = world();
    let silent = w.open(room("silent"), Link::FAST);
    let live = w.open(room("live"), Link::FAST);
    w.run_until(ms(30)).unwrap();
    w.set_answers_pings(silent, false);
    // Deadline: open (≤ 20ms) + 250ms; the oracle checks the window itself.
    w.run_until(ms(200)).unwrap();
    assert!(w.is_open(silent), "closed before its pong deadline");
    w.run_until(ms(400)).unwrap();
    assert!(!w.is_open(silent));
    assert_eq!(
        w.client(silent).observed.close,
        Some(CloseCode::POLICY_VIOLATION)
    );
    w.run_until(ms(5_000)).unwrap();
    assert!(w.is_open(live));
    assert!(w.client(live).observed.pings >= 45);
    finish(w);
}

#[test]
fn a_vanished_client_is_timed_out_and_its_departure_announced() {
    let mut w = world();
    let gone = w.open(room("gone"), Link::FAST);
    let stays = w.open(room("stays"), Link::FAST);
    w.run_until(ms(30)).unwrap();
    w.vanish(gone);
    w.run_until(ms(400)).unwrap();
    assert!(!w.is_open(gone));
    assert_eq!(w.client(stays).observed.left, 1);
    assert_eq!(w.hub().stats().closes_for(CloseReason::HeartbeatTimeout), 1);
    finish(w);
}

#[test]
fn a_stalled_reader_is_evicted_without_costing_the_others_anything() {
    let mut w = world();
    let slow = w.open(room("slow"), Link::FAST);
    let talkers: Vec<ConnId> = (0..3)
        .map(|i| w.open(room(&format!("t{i}")), Link::FAST))
        .collect();
    w.run_until(ms(30)).unwrap();
    w.stall(slow);
    // Rounds further apart than the latency, so the talkers' own 4-frame
    // queues never see more than 3 chats in one burst.
    for n in 0..6 {
        for &t in &talkers {
            w.send(t, Frame::text(format!("{t}:{n}")));
        }
        w.run_until(ms(55 + 25 * n)).unwrap();
    }
    assert!(!w.is_open(slow));
    assert_eq!(w.hub().stats().closes_for(CloseReason::SlowConsumer), 1);
    // Every talker read all 18 chats (the oracle checked order and content).
    let w = finish(w);
    for &t in &talkers {
        assert_eq!(w.client(t).observed.chats, 18);
    }
}

#[test]
fn presence_snapshots_are_conflated_for_a_reader_that_lags() {
    // Fixed latency: joins reach the hub in the order they were made.
    let mut w = world_with_latency(5, 5);
    let lagging = w.open(room("lagging"), Link::FAST);
    w.run_until(ms(30)).unwrap();
    w.stall(lagging);
    let others: Vec<ConnId> = (0..3)
        .map(|i| w.open(room(&format!("o{i}")), Link::FAST))
        .collect();
    w.run_until(ms(60)).unwrap();
    w.resume(lagging).unwrap();
    w.run_until(ms(90)).unwrap();
    let seen = &w.client(lagging).observed;
    // One snapshot of its own join, then one (conflated) for three joins.
    assert_eq!(seen.presence_snapshots, 2);
    assert_eq!(seen.joined, 4);
    assert_eq!(seen.last_presence.as_deref(), Some("lagging,o0,o1,o2"));
    assert!(w.counters().conflated >= 2);
    drop(others);
    finish(w);
}

#[test]
fn relay_echoes_verbatim_to_every_relay_connection() {
    let mut w = world();
    let a = w.open(Route::Relay, Link::FAST);
    let b = w.open(Route::Relay, Link::FAST);
    let lobby = w.open(room("x"), Link::FAST);
    w.run_until(ms(30)).unwrap();
    w.send(a, Frame::binary(vec![0, 0xff, 7]));
    w.send(b, Frame::text("é"));
    w.run_until(ms(90)).unwrap();
    assert_eq!(w.client(a).observed.relay_frames, 2);
    assert_eq!(w.client(b).observed.relay_frames, 2);
    assert_eq!(w.client(lobby).observed.chats, 0);
    finish(w);
}

#[test]
fn a_full_server_refuses_with_1013() {
    let mut w = world();
    let conns: Vec<ConnId> = (0..9)
        .map(|i| w.open(room(&format!("u{i}")), Link::FAST))
        .collect();
    w.run_until(ms(60)).unwrap();
    let refused: Vec<&ConnId> = conns
        .iter()
        .filter(|&&c| w.client(c).observed.close == Some(CloseCode::TRY_AGAIN_LATER))
        .collect();
    assert_eq!(refused.len(), 1);
    finish(w);
}

// ---- the oracle has teeth -------------------------------------------------

/// Drives a real hub by hand, letting `tamper` rewrite each call's outputs
/// before the oracle judges them.
struct Rig {
    hub: Hub,
    oracle: Oracle,
    next: u64,
}

impl Rig {
    fn new() -> Self {
        Self {
            hub: Hub::new(config()),
            oracle: Oracle::new(&config()),
            next: 1,
        }
    }

    fn open(&mut self, user: &str) -> ConnId {
        let conn = ConnId(self.next);
        self.next += 1;
        self.oracle
            .register(conn, Some(Name::new("lobby").unwrap()), user);
        self.call(
            0,
            Input::Open {
                conn,
                route: room(user),
            },
            |_| {},
        )
        .unwrap();
        conn
    }

    fn call(
        &mut self,
        now: u64,
        input: Input,
        tamper: impl FnOnce(&mut Vec<Output>),
    ) -> Result<(), Violation> {
        let now = ms(now);
        self.oracle.before_input(now, &input);
        self.hub.handle_input(now, input);
        let mut outs: Vec<Output> = std::iter::from_fn(|| self.hub.poll_output()).collect();
        tamper(&mut outs);
        for out in &outs {
            self.oracle.on_output(now, out)?;
        }
        self.oracle.after_call(now, &self.hub)
    }
}

fn caught(result: Result<(), Violation>) -> Invariant {
    result.expect_err("the oracle must object").invariant
}

#[test]
fn oracle_rejects_a_lost_send() {
    let mut rig = Rig::new();
    let a = rig.open("a");
    rig.open("b");
    let chat = Input::Message {
        conn: a,
        frame: Frame::text("hi"),
    };
    let r = rig.call(1, chat, |outs| {
        outs.pop();
    });
    assert_eq!(caught(r), Invariant::FanOut);
}

#[test]
fn oracle_rejects_a_duplicated_send() {
    let mut rig = Rig::new();
    let a = rig.open("a");
    let chat = Input::Message {
        conn: a,
        frame: Frame::text("hi"),
    };
    let r = rig.call(1, chat, |outs| outs.push(outs[0].clone()));
    assert_eq!(caught(r), Invariant::FanOut);
}

#[test]
fn oracle_rejects_output_after_close() {
    let mut rig = Rig::new();
    let a = rig.open("a");
    let b = rig.open("b");
    let bye = Input::Disconnect {
        conn: a,
        reason: CloseReason::PeerClosed,
    };
    let r = rig.call(1, bye, |outs| {
        outs.push(Output::Ping { conn: a });
        let _ = b;
    });
    assert_eq!(caught(r), Invariant::OutputAfterClose);
}

#[test]
fn oracle_rejects_a_wrong_close_reason() {
    let mut rig = Rig::new();
    let a = rig.open("a");
    let big = Input::Message {
        conn: a,
        frame: Frame::text("x".repeat(17)),
    };
    let r = rig.call(1, big, |outs| {
        for out in outs.iter_mut() {
            if let Output::Close { reason, .. } = out {
                *reason = CloseReason::InvalidUtf8;
            }
        }
    });
    assert_eq!(caught(r), Invariant::CloseReason);
}

#[test]
fn oracle_rejects_a_missing_close_and_an_unexpected_one() {
    let mut rig = Rig::new();
    let a = rig.open("a");
    let b = rig.open("b");
    let full = Input::QueueFull { conn: a };
    assert_eq!(
        caught(rig.call(1, full, Vec::clear)),
        Invariant::MissingClose
    );

    let mut rig = Rig::new();
    let a = rig.open("a");
    rig.open("b");
    let pong = Input::Pong { conn: a };
    let r = rig.call(1, pong, |outs| {
        outs.push(Output::Close {
            conn: b,
            reason: CloseReason::HeartbeatTimeout,
        });
    });
    assert_eq!(caught(r), Invariant::UnexpectedClose);
}

#[test]
fn oracle_rejects_a_heartbeat_close_outside_its_window() {
    let mut rig = Rig::new();
    let a = rig.open("a");
    // A heartbeat run at 100ms that closes `a` (deadline 250ms): too early.
    let now = ms(100);
    rig.oracle.mark_impaired(a);
    rig.oracle.before_timeout();
    rig.hub.handle_timeout(now);
    let r = rig.oracle.on_output(
        now,
        &Output::Close {
            conn: a,
            reason: CloseReason::HeartbeatTimeout,
        },
    );
    assert_eq!(caught(r), Invariant::HeartbeatTooEarly);
    // And the clock alone catches a hub that never closes it.
    let mut rig = Rig::new();
    rig.open("a");
    assert!(rig.oracle.check_clock(ms(350)).is_ok());
    assert_eq!(
        caught(rig.oracle.check_clock(ms(351))),
        Invariant::HeartbeatTooLate
    );
}
