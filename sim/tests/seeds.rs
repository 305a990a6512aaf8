//! A fixed list of seeds with a few hundred clients each, the determinism
//! check, and the `hubbub-sim` binary end to end.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Instant;

use hubbub_sim::scenario::{self, Overrides, SimParams};

/// Small seeds, arbitrary ones, and a few picked for what they switch on
/// (0x31, 0x76, 0x89, 0xf1: relay, storms, send_queue ≤ 8, nearly every
/// behaviour; 0x2 and 0x9: a full server).
const SEEDS: [u64; 20] = [
    0x1,
    0x2,
    0x3,
    0x4,
    0x9,
    0x31,
    0x76,
    0x89,
    0xf1,
    0x2a,
    0x3c,
    0x55,
    0x64,
    0x99,
    0xab,
    0xc0,
    0xdead_beef,
    0x5eed_0001,
    0x0123_4567_89ab_cdef,
    0xffff_ffff_ffff_fff0,
];

fn run(params: &SimParams) -> scenario::Report {
    scenario::run(params).unwrap_or_else(|failure| panic!("{failure}"))
}

#[test]
fn fixed_seeds_with_hundreds_of_clients() {
    for seed in SEEDS {
        let params = SimParams::derive(
            seed,
            Overrides {
                clients: Some(300),
                rooms: None,
                steps: Some(20_000),
            },
        );
        let started = Instant::now();
        let report = run(&params);
        println!(
            "{:#x}: {} hub inputs, {} events in {:?}",
            seed,
            report.counters.hub_inputs,
            report.counters.events,
            started.elapsed()
        );
        assert!(report.counters.hub_inputs >= 20_000);
    }
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let params = SimParams::derive(
        0x76,
        Overrides {
            clients: Some(200),
            rooms: Some(5),
            steps: Some(20_000),
        },
    );
    let first = run(&params);
    let second = run(&params);
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.counters.events, second.counters.events);
    let other = SimParams::derive(
        0x77,
        Overrides {
            clients: Some(200),
            rooms: Some(5),
            steps: Some(20_000),
        },
    );
    assert_ne!(run(&other).trace_hash, first.trace_hash);
}

#[test]
fn explicit_parameters_replay_the_derived_run() {
    // The reproduce command spells out clients, rooms and steps; giving
    // them must not shift any other derived value.
    let derived = SimParams::derive(0xabc, Overrides::default());
    let explicit = SimParams::derive(
        0xabc,
        Overrides {
            clients: Some(derived.clients),
            rooms: Some(derived.rooms),
            steps: Some(derived.steps),
        },
    );
    assert_eq!(derived, explicit);
    assert!(derived
        .reproduce_command()
        .starts_with("cargo run --release -p hubbub-sim -- --seed 0x0000000000000abc --clients "));
}

#[test]
fn the_binary_runs_seeds_and_reports_speed() {
    let out = Command::new(env!("CARGO_BIN_EXE_hubbub-sim"))
        .args([
            "--seed",
            "0x2a",
            "--clients",
            "40",
            "--steps",
            "3000",
            "--runs",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("events/s").count(), 2, "{stdout}");
    assert!(
        stdout.contains("seed 0x000000000000002a: 40 clients"),
        "{stdout}"
    );
    assert!(stdout.contains("trace 0x"), "{stdout}");
}
