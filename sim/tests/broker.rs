//! Several nodes over a modelled broker: seeded runs keep every rule, with
//! partitions and broker restarts frequent or rare, and each bug planted in
//! the broker is caught.
#![allow(clippy::unwrap_used)]

use hubbub_sim::broker::{BrokerFault, BrokerParams, BrokerWorld, Report, Rule};

#[test]
fn seeded_runs_over_several_nodes_keep_every_rule() {
    let mut total = Report::default();
    for heavy in [false, true] {
        for seed in 0..20u64 {
            let params = BrokerParams::derive(seed * 104_729 + u64::from(heavy), heavy);
            let described = format!("{params:?}");
            match BrokerWorld::new(params).run() {
                Ok(r) => {
                    total.publications += r.publications;
                    total.deliveries += r.deliveries;
                    total.refused += r.refused;
                    total.moves += r.moves;
                    total.recovered += r.recovered;
                    total.partitions += r.partitions;
                    total.restarts += r.restarts;
                    total.lost_deliveries += r.lost_deliveries;
                    total.remote_presence_events += r.remote_presence_events;
                    total.hub_inputs += r.hub_inputs;
                    total.relay_frames += r.relay_frames;
                    total.relay_received += r.relay_received;
                }
                Err(breach) => panic!("{breach}\n  {described}"),
            }
        }
    }
    eprintln!("{total:?}");
    // Every fault was exercised, not only the happy path.
    assert!(total.publications > 5_000, "{total:?}");
    assert!(
        total.refused > 50,
        "partitions refused publishes: {total:?}"
    );
    assert!(total.recovered > 200, "{total:?}");
    assert!(total.partitions > 50 && total.restarts > 10, "{total:?}");
    assert!(total.lost_deliveries > 100, "{total:?}");
    assert!(total.remote_presence_events > 500, "{total:?}");
    // Relay frames crossed nodes: more received than sent.
    assert!(
        total.relay_received > 2 * total.relay_frames && total.relay_frames > 1_000,
        "{total:?}"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let params = BrokerParams::derive(7, true);
    let a = BrokerWorld::new(params.clone()).run().unwrap();
    let b = BrokerWorld::new(params).run().unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn bugs_planted_in_the_broker_are_caught() {
    for (fault, rules) in [
        // The acknowledged offset is given again to the next publication.
        (
            BrokerFault::AckWithoutKeeping,
            &[Rule::DurableAck, Rule::OffsetsOnce][..],
        ),
        (
            BrokerFault::ReuseOffsetAfterRestart,
            &[Rule::OffsetsOnce, Rule::Order, Rule::CaughtUp][..],
        ),
        (BrokerFault::ForgetLeave, &[Rule::PresenceConverges][..]),
        // A lost join or leave, a publication no later one reveals, or a
        // relay frame.
        (
            BrokerFault::LoseDeliverySilently,
            &[
                Rule::CaughtUp,
                Rule::Order,
                Rule::PresenceConverges,
                Rule::RelayReaches,
            ][..],
        ),
        (BrokerFault::BroadcastTwice, &[Rule::RelayOnce][..]),
        (BrokerFault::DropBroadcasts, &[Rule::RelayReaches][..]),
    ] {
        let mut caught = None;
        for seed in 0..20u64 {
            let mut params = BrokerParams::derive(seed, true);
            params.fault = Some(fault);
            if let Err(breach) = BrokerWorld::new(params).run() {
                caught = Some((seed, breach));
                break;
            }
        }
        let (seed, breach) = caught.unwrap_or_else(|| panic!("{fault:?} was never caught"));
        assert!(rules.contains(&breach.rule), "{fault:?}: {breach}");
        eprintln!("{fault:?}: caught at seed {seed}: {breach}");
    }
}
