//! Regression benchmarks for the hot paths of the core:
//! `cargo bench -p hubbub-core`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hubbub_core::{
    CloseReason, Codec, Config, ConnId, Frame, Hub, Input, MessageKind, Name, Route, Timestamp,
};

fn room(room: &str, user: &str) -> Route {
    Route::Room {
        room: Name::new(room).unwrap(),
        username: Name::new(user).unwrap(),
        history: 0,
    }
}

/// The defaults without rate limits: every iteration runs at the same
/// instant, so a budget would be spent after a few hundred and the rest
/// would measure a refused message instead of the path under test.
fn unlimited() -> Config {
    Config {
        command_rate: None,
        user_publish_rate: None,
        presence_rate: None,
        ..Config::default()
    }
}

fn drain(hub: &mut Hub) -> usize {
    let mut n = 0;
    while let Some(o) = hub.poll_output() {
        black_box(o);
        n += 1;
    }
    n
}

fn hub_with_room(members: u64) -> Hub {
    let mut hub = Hub::new(Config {
        max_connections: 1_000_000,
        ..unlimited()
    });
    for c in 0..members {
        hub.handle_input(
            Timestamp::ZERO,
            Input::Open {
                conn: ConnId(c),
                route: room("big", &format!("user{c}")),
            },
        );
        drain(&mut hub);
    }
    hub
}

fn broadcast(c: &mut Criterion) {
    let mut g = c.benchmark_group("broadcast");
    for members in [10u64, 1_000] {
        let mut hub = hub_with_room(members);
        let line = || Input::Message {
            conn: ConnId(0),
            frame: Frame::text("a typical chat line of some forty bytes"),
        };
        // Every line must reach every member, or this measures a refusal.
        for _ in 0..10_000 {
            hub.handle_input(Timestamp::ZERO, line());
            assert_eq!(
                drain(&mut hub) as u64,
                members,
                "a line did not reach the room"
            );
        }
        g.throughput(Throughput::Elements(members));
        g.bench_function(format!("room_of_{members}"), |b| {
            b.iter(|| {
                hub.handle_input(Timestamp::ZERO, line());
                drain(&mut hub)
            });
        });
    }
    let mut hub = Hub::new(unlimited());
    for c in 0..1_000 {
        hub.handle_input(
            Timestamp::ZERO,
            Input::Open {
                conn: ConnId(c),
                route: Route::Relay,
            },
        );
    }
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("relay_of_1000", |b| {
        b.iter(|| {
            hub.handle_input(
                Timestamp::ZERO,
                Input::Message {
                    conn: ConnId(0),
                    frame: Frame::binary(vec![7u8; 40]),
                },
            );
            drain(&mut hub)
        });
    });
    g.finish();
}

fn churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("churn");
    // One member joins and leaves a room of 100: presence to everyone, twice.
    let mut hub = hub_with_room(100);
    let mut next = 1_000_000u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("join_leave_room_of_100", |b| {
        b.iter(|| {
            let conn = ConnId(next);
            next += 1;
            hub.handle_input(
                Timestamp::ZERO,
                Input::Open {
                    conn,
                    route: room("big", "visitor"),
                },
            );
            hub.handle_input(
                Timestamp::ZERO,
                Input::Disconnect {
                    conn,
                    reason: CloseReason::PeerClosed,
                },
            );
            drain(&mut hub)
        });
    });
    // Many small rooms: open/close in 1,000 rooms of 2.
    g.bench_function("open_close_1000_pairs", |b| {
        b.iter_batched(
            || Hub::new(unlimited()),
            |mut hub| {
                for c in 0..2_000u64 {
                    hub.handle_input(
                        Timestamp::ZERO,
                        Input::Open {
                            conn: ConnId(c),
                            route: room(&format!("r{}", c / 2), "u"),
                        },
                    );
                }
                for c in 0..2_000u64 {
                    hub.handle_input(
                        Timestamp::ZERO,
                        Input::Disconnect {
                            conn: ConnId(c),
                            reason: CloseReason::PeerClosed,
                        },
                    );
                }
                drain(&mut hub)
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn heartbeat(c: &mut Criterion) {
    let mut hub = Hub::new(Config {
        max_connections: 1_000_000,
        ..unlimited()
    });
    for c in 0..10_000 {
        hub.handle_input(
            Timestamp::ZERO,
            Input::Open {
                conn: ConnId(c),
                route: Route::Relay,
            },
        );
    }
    let mut now = 0u64;
    c.bench_function("heartbeat_10000_conns_one_interval", |b| {
        b.iter(|| {
            now += 54_000;
            for c in 0..10_000 {
                hub.handle_input(Timestamp::from_millis(now), Input::Pong { conn: ConnId(c) });
            }
            hub.handle_timeout(Timestamp::from_millis(now + 1));
            drain(&mut hub)
        });
    });
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let line = Bytes::from_static("a typical chat line with \"quotes\" and ünïcode".as_bytes());
    g.bench_function("decode_seed_text", |b| {
        b.iter(|| Codec::SeedJson.decode(MessageKind::Text, black_box(line.clone()), 512));
    });
    g.bench_function("encode_seed_chat", |b| {
        b.iter(|| {
            hubbub_core::encode_seed(
                hubbub_core::SeedType::Chat,
                black_box("a typical chat line with \"quotes\" and ünïcode"),
                "room1",
                "Eren",
            )
        });
    });
    let target = "/ws/caf%C3%A9?username=J%C3%B6rg+M&x=1";
    g.bench_function("route_handshake", |b| {
        b.iter(|| hubbub_core::route(black_box("/ws/caf%C3%A9"), black_box(Some(&target[13..]))));
    });
    g.finish();
}

criterion_group!(benches, broadcast, churn, heartbeat, codec);
criterion_main!(benches);
