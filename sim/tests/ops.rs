//! Property tests with shrinking: random sequences of operations on a small
//! world, then healing and liveness; every invariant is checked after every
//! operation's events. On failure proptest prints the minimal sequence.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hubbub_core::{Config, ConnId, Frame, Name, Route, Timestamp};
use hubbub_sim::client::Link;
use hubbub_sim::invariants::Violation;
use hubbub_sim::scenario::{self, Overrides, SimParams};
use hubbub_sim::world::{World, WorldSettings};
use proptest::prelude::*;

/// The world's limits, small so that limits are actually hit.
#[derive(Clone, Debug)]
struct Setup {
    ping_ms: u64,
    latency_max_ms: u64,
    /// Added to `ping + 2 * latency_max` to make the pong timeout.
    margin_ms: u64,
    max_message_bytes: usize,
    send_queue: usize,
    max_connections: usize,
}

#[derive(Clone, Debug)]
enum Payload {
    Text(String),
    Raw { text: bool, bytes: Vec<u8> },
    Oversize,
}

#[derive(Clone, Debug)]
enum Op {
    /// Opens a connection: the relay, or room `room` (of 3) as user `user` (of 4).
    Open {
        relay: bool,
        room: u8,
        user: u8,
    },
    Send {
        who: u8,
        payload: Payload,
    },
    Pong {
        who: u8,
    },
    Advance {
        ms: u16,
    },
    QueueFull {
        who: u8,
    },
    Disconnect {
        who: u8,
    },
    Vanish {
        who: u8,
    },
    Silence {
        who: u8,
    },
    Stall {
        who: u8,
    },
    Resume {
        who: u8,
    },
    SlowRead {
        who: u8,
    },
    Garbled {
        who: u8,
    },
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        20u64..300,
        0u64..20,
        1u64..200,
        1usize..48,
        1usize..6,
        1usize..8,
    )
        .prop_map(
            |(
                ping_ms,
                latency_max_ms,
                margin_ms,
                max_message_bytes,
                send_queue,
                max_connections,
            )| {
                Setup {
                    ping_ms,
                    latency_max_ms,
                    margin_ms,
                    max_message_bytes,
                    send_queue,
                    max_connections,
                }
            },
        )
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        6 => "[a-z\"\\\\é😀\n ]{0,12}".prop_map(Payload::Text),
        2 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(text, bytes)| Payload::Raw { text, bytes }),
        1 => Just(Payload::Oversize),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let who = any::<u8>();
    prop_oneof![
        4 => (any::<bool>(), 0u8..3, 0u8..4).prop_map(|(relay, room, user)| Op::Open { relay, room, user }),
        6 => (who, payload()).prop_map(|(who, payload)| Op::Send { who, payload }),
        1 => who.prop_map(|who| Op::Pong { who }),
        4 => (0u16..1_500).prop_map(|ms| Op::Advance { ms }),
        1 => who.prop_map(|who| Op::QueueFull { who }),
        1 => who.prop_map(|who| Op::Disconnect { who }),
        1 => who.prop_map(|who| Op::Vanish { who }),
        1 => who.prop_map(|who| Op::Silence { who }),
        1 => who.prop_map(|who| Op::Stall { who }),
        1 => who.prop_map(|who| Op::Resume { who }),
        1 => who.prop_map(|who| Op::SlowRead { who }),
        1 => who.prop_map(|who| Op::Garbled { who }),
    ]
}

/// Runs `ops`, then heals every client that is still there and checks
/// liveness and the final shutdown.
fn run_ops(setup: &Setup, ops: &[Op]) -> Result<(), Violation> {
    let config = Config {
        ping_interval: Duration::from_millis(setup.ping_ms),
        pong_timeout: Duration::from_millis(
            setup.ping_ms + 2 * setup.latency_max_ms + setup.margin_ms,
        ),
        max_message_bytes: setup.max_message_bytes,
        send_queue: setup.send_queue,
        max_connections: setup.max_connections,
        idle_streams: 0,
        ..Config::default()
    };
    let mut world = World::new(&WorldSettings {
        seed: 7,
        config,
        latency_min_ms: 0,
        latency_max_ms: setup.latency_max_ms,
    });
    let rooms = ["lobby", "café \"☕\"", "default"];
    let mut conns: Vec<ConnId> = Vec::new();
    for op in ops {
        let pick = |who: u8| (!conns.is_empty()).then(|| conns[usize::from(who) % conns.len()]);
        match *op {
            Op::Open { relay, room, user } => {
                let route = if relay {
                    Route::Relay
                } else {
                    Route::Room {
                        room: Name::new(rooms[usize::from(room)]).unwrap(),
                        username: Name::new(&format!("user {user}")).unwrap(),
                        history: 0,
                    }
                };
                conns.push(world.open(route, Link::FAST));
            }
            Op::Send { who, ref payload } => {
                if let Some(c) = pick(who) {
                    let frame = match payload {
                        Payload::Text(s) => Frame::text(s.clone()),
                        Payload::Raw { text: true, bytes } => Frame::text(bytes.clone()),
                        Payload::Raw { text: false, bytes } => Frame::binary(bytes.clone()),
                        Payload::Oversize => Frame::text("x".repeat(setup.max_message_bytes + 1)),
                    };
                    world.send(c, frame);
                }
            }
            Op::Advance { ms } => {
                let until = world.now().as_millis() + u64::from(ms);
                world.run_until(Timestamp::from_millis(until))?;
            }
            Op::Pong { who } => pick(who).into_iter().for_each(|c| world.pong(c)),
            Op::QueueFull { who } => {
                if let Some(c) = pick(who) {
                    world.report_queue_full(c)?;
                }
            }
            Op::Disconnect { who } => pick(who).into_iter().for_each(|c| world.leave(c)),
            Op::Vanish { who } => pick(who).into_iter().for_each(|c| world.vanish(c)),
            Op::Silence { who } => pick(who)
                .into_iter()
                .for_each(|c| world.set_answers_pings(c, false)),
            Op::Stall { who } => pick(who).into_iter().for_each(|c| world.stall(c)),
            Op::Resume { who } => {
                if let Some(c) = pick(who) {
                    world.resume(c)?;
                }
            }
            Op::SlowRead { who } => pick(who)
                .into_iter()
                .for_each(|c| world.set_read_pace(c, 97, 1)),
            Op::Garbled { who } => pick(who).into_iter().for_each(|c| world.send_garbled(c)),
        }
    }
    for &c in &conns {
        world.set_answers_pings(c, true);
        world.set_read_pace(c, 0, 1);
        world.resume(c)?;
    }
    world.settle()?;
    world.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn operation_sequences_keep_every_invariant(
        setup in setup(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        if let Err(violation) = run_ops(&setup, &ops) {
            prop_assert!(false, "{violation}");
        }
    }

    /// Whole seeded scenarios, shrinking towards fewer clients, rooms and steps.
    #[test]
    fn small_seeded_scenarios_keep_every_invariant(
        seed in any::<u64>(),
        clients in 1u32..40,
        rooms in 1u32..6,
        steps in 50u64..3_000,
    ) {
        let params = SimParams::derive(seed, Overrides {
            clients: Some(clients),
            rooms: Some(rooms),
            steps: Some(steps),
        });
        if let Err(failure) = scenario::run(&params) {
            prop_assert!(false, "{failure}");
        }
    }
}
