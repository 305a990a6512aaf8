//! The store engine in the cluster world (issue 9, durable history):
//! seeded runs with a slow, failing store and a server that crashes keep
//! every rule; a seed replays exactly; bugs planted in the store are
//! caught by the rule that names them; the model answers as `MemoryStore`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use hubbub_core::bus::Stored;
use hubbub_core::{ChannelName, ClientId, MemoryStore, StoreRequest, StreamLimits, Timestamp};
use hubbub_sim::cluster::{Breach, Cluster, ClusterParams, Report, Rule, StoreFault};
use hubbub_sim::rng::SimRng;
use hubbub_sim::store_model::{StoreModel, StoreParams};

fn run(params: ClusterParams) -> Result<Report, Breach> {
    Cluster::new(params).run()
}

fn check(params: ClusterParams, totals: &mut Report) {
    let described = format!("{params:?}");
    match run(params) {
        Ok(report) => {
            totals.crashes += report.crashes;
            totals.store.failures += report.store.failures;
            totals.store.slow_commits += report.store.slow_commits;
            totals.store.durable_unanswered += report.store.durable_unanswered;
            totals.store.lost += report.store.lost;
            totals.store.opens += report.store.opens;
            totals.durable_acks += report.durable_acks;
            totals.recovered_publications += report.recovered_publications;
            totals.failed_publishes += report.failed_publishes;
            totals.recoveries += report.recoveries;
        }
        Err(breach) => panic!("{breach}\n  {described}"),
    }
}

fn empty_report() -> Report {
    Report {
        hash: 0,
        crashes: 0,
        store: hubbub_sim::store_model::StoreCounts::default(),
        durable_acks: 0,
        recovered_publications: 0,
        failed_publishes: 0,
        bus_messages: 0,
        max_in_flight: 0,
        deliveries: 0,
        publications: 0,
        recoveries: 0,
        refused_recoveries: 0,
        presence_deferred: 0,
        hub_inputs: 0,
        checks: hubbub_sim::cluster::RuleChecks::default(),
    }
}

#[test]
fn restart_heavy_runs_keep_every_rule() {
    let mut totals = empty_report();
    for shards in [1u16, 2, 3] {
        for seed in 0..25u64 {
            check(
                ClusterParams::restart_heavy(seed * 31 + u64::from(shards), shards),
                &mut totals,
            );
        }
    }
    let t = &totals;
    assert!(t.crashes > 100, "crashes: {}", t.crashes);
    assert!(
        t.store.failures > 100,
        "store failures: {}",
        t.store.failures
    );
    assert!(
        t.failed_publishes > 50,
        "refused publishes: {}",
        t.failed_publishes
    );
    assert!(
        t.store.slow_commits > 100,
        "slow commits: {}",
        t.store.slow_commits
    );
    assert!(
        t.store.durable_unanswered > 100,
        "durable, unanswered: {}",
        t.store.durable_unanswered
    );
    assert!(t.store.lost > 100, "lost in crashes: {}", t.store.lost);
    assert!(t.durable_acks > 1_000, "acks checked: {}", t.durable_acks);
    assert!(t.recoveries > 300, "recoveries: {}", t.recoveries);
    assert!(
        t.recovered_publications > 1_000,
        "publications recovered from the store: {}",
        t.recovered_publications
    );
}

#[test]
fn an_instant_reliable_store_is_possible() {
    let mut totals = empty_report();
    for shards in [1u16, 2, 3] {
        for seed in 0..5u64 {
            check(
                ClusterParams {
                    store_latency_max_ms: 0,
                    slow_commit_permille: 0,
                    store_fail_permille: 0,
                    crash_every_ms: 0,
                    ..ClusterParams::derive(seed + 1000 * u64::from(shards), shards)
                },
                &mut totals,
            );
        }
    }
    assert_eq!(
        totals.crashes + totals.store.failures + totals.store.slow_commits,
        0
    );
    assert!(totals.durable_acks > 100);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(ClusterParams::restart_heavy(4242, 3)).unwrap();
    let b = run(ClusterParams::restart_heavy(4242, 3)).unwrap();
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.store, b.store);
    assert!(a.crashes > 0);
    let c = run(ClusterParams::restart_heavy(4243, 3)).unwrap();
    assert_ne!(a.hash, c.hash);
}

/// Each planted bug is caught, by the rule that names it, for nearly every
/// position tried.
#[test]
fn bugs_planted_in_the_store_are_caught() {
    let base = ClusterParams {
        clients: 30,
        actions: 1_500,
        channels: 2,
        seed_percent: 20,
        store_fail_permille: 0,
        ..ClusterParams::restart_heavy(7, 3)
    };
    for (fault, rules) in [
        (
            StoreFault::AckBeforeDurable(40),
            &[Rule::DurableAck, Rule::OffsetsOnce][..],
        ),
        (StoreFault::ReuseOffsetAfterCrash, &[Rule::OffsetsOnce][..]),
    ] {
        let mut caught = 0;
        for shift in 0..10u64 {
            let (fault, seed) = match fault {
                StoreFault::AckBeforeDurable(n) => {
                    (StoreFault::AckBeforeDurable(n + shift * 13), base.seed)
                }
                // No position to move: another run instead.
                other => (other, base.seed + shift),
            };
            let result = run(ClusterParams {
                store_fault: fault,
                seed,
                ..base.clone()
            });
            if let Err(breach) = result {
                assert!(rules.contains(&breach.rule), "{fault:?}: {breach}");
                println!(
                    "{fault:?} (seed {seed}): after {} actions, {} events: {breach}",
                    breach.actions, breach.events
                );
                caught += 1;
            }
        }
        assert!(caught >= 9, "{fault:?} caught {caught} times of 10");
    }
}

/// An engine whose opened tail has a hole (a publication missing in the
/// middle) cannot make the hub report a partial recovery as recovered: the
/// home keeps only the contiguous run ending at the top, so a recovery
/// across the hole says `recovered: false`. (Before the core cut the tail,
/// recovery-exact caught this fault in 7 of these 10 runs.)
#[test]
fn a_tail_with_a_hole_is_never_recovered_across() {
    let base = ClusterParams {
        clients: 30,
        actions: 1_500,
        channels: 2,
        seed_percent: 20,
        store_fail_permille: 0,
        ..ClusterParams::restart_heavy(7, 3)
    };
    let (mut refused_with_hole, mut refused_without) = (0, 0);
    for shift in 0..10u64 {
        for (fault, refused) in [
            (StoreFault::PartialTail(2 + shift), &mut refused_with_hole),
            (StoreFault::None, &mut refused_without),
        ] {
            let params = ClusterParams {
                store_fault: fault,
                ..base.clone()
            };
            let described = format!("{params:?}");
            match run(params) {
                Ok(report) => *refused += report.refused_recoveries,
                Err(breach) => panic!("{breach}\n  {described}"),
            }
        }
    }
    assert!(
        refused_with_hole > refused_without,
        "recoveries across the holes were refused: {refused_with_hole} vs {refused_without} without holes"
    );
}

/// The model's engine answers exactly as the reference engine does.
#[test]
fn the_model_answers_as_memory_store_does() {
    let limits = StreamLimits {
        size: 5,
        ttl: Duration::from_millis(300),
    };
    let mut rng = SimRng::new(11);
    let mut reference = MemoryStore::new(1_000);
    let mut model = StoreModel::new(
        StoreParams {
            latency_max_ms: 0,
            slow_permille: 0,
            fail_permille: 0,
            fault: StoreFault::None,
        },
        1,
        11,
    );
    let mut opened = std::collections::BTreeSet::new();
    for i in 0..2_000u64 {
        let channel = ChannelName::new(&format!("c{}", rng.below(4)));
        let now = Timestamp::from_millis(i * 7);
        let request = if !opened.contains(&channel) || rng.below(5) == 0 {
            opened.insert(channel.clone());
            StoreRequest::Open {
                channel,
                new_epoch: rng.next_u64(),
                limits,
                now,
            }
        } else {
            StoreRequest::Append {
                channel,
                token: i,
                publication: Stored {
                    offset: 0,
                    at: now,
                    data: Bytes::from(format!("{{\"text\":\"t{i}\"}}")),
                    text: None,
                    user: None,
                    client: ClientId(1),
                    infos: None,
                },
                limits,
            }
        };
        assert_eq!(model.execute(request.clone()), reference.execute(request));
    }
}
