//! The large simulation: 10,000 clients in 120 rooms for over a million hub
//! inputs, every invariant on. Seed 0x89 switches on the relay, storms,
//! send_queue 8 (so slow consumers are really evicted) and ten of the eleven
//! client behaviours.
use std::time::Instant;

use hubbub_sim::scenario::{self, Overrides, SimParams};

#[test]
fn ten_thousand_clients_a_million_inputs() {
    let params = SimParams::derive(
        0x89,
        Overrides {
            clients: Some(10_000),
            rooms: Some(120),
            steps: Some(1_000_000),
        },
    );
    println!("{params}");
    let started = Instant::now();
    let report = scenario::run(&params).unwrap_or_else(|failure| panic!("{failure}"));
    let secs = started.elapsed().as_secs_f64();
    println!("{report}");
    println!(
        "{secs:.1}s, {:.0} events/s",
        report.counters.events as f64 / secs
    );
    assert!(report.counters.hub_inputs >= 1_000_000);
    assert!(report.connections >= 10_000);
    let stats = &report.stats;
    for reason in [
        hubbub_core::CloseReason::PeerClosed,
        hubbub_core::CloseReason::HeartbeatTimeout,
        hubbub_core::CloseReason::SlowConsumer,
        hubbub_core::CloseReason::MessageTooBig,
        hubbub_core::CloseReason::InvalidUtf8,
        hubbub_core::CloseReason::BinaryNotAccepted,
    ] {
        assert!(stats.closes_for(reason) > 0, "no {reason} closes: {report}");
    }
}
