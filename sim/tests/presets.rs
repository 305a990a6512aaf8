//! The scenario presets (`hubbub_sim::preset`): each keeps every rule, has
//! the character its name promises, and together they put every invariant
//! to the test. An invariant no preset ever examines proves nothing, so
//! this fails if one count stays at zero.

use hubbub_core::CloseReason;
use hubbub_sim::broker::{BrokerParams, BrokerWorld, Rule as BrokerRule};
use hubbub_sim::cluster::{Cluster, Rule, RuleChecks};
use hubbub_sim::invariants::{Checks, Invariant};
use hubbub_sim::preset::Preset;
use hubbub_sim::scenario::{self, Overrides};

const SEEDS: [u64; 3] = [1, 0x5eed, 0xdead_beef];

/// Runs `preset` over the seeds; returns (hub inputs, chat lines,
/// evictions of slow consumers) and adds the counts of examined checks.
fn world(preset: Preset, checks: &Checks) -> (u64, u64, u64) {
    let overrides = Overrides {
        steps: Some(15_000),
        ..Overrides::default()
    };
    let (mut inputs, mut chats, mut evicted) = (0, 0, 0);
    for seed in SEEDS {
        let params = preset.sim_params(seed, overrides);
        let report = scenario::run(&params).unwrap_or_else(|f| panic!("{preset}: {f}"));
        checks.add(&report.checks);
        inputs += report.counters.hub_inputs;
        chats += report.stats.messages_in;
        evicted += report.stats.closes_for(CloseReason::SlowConsumer);
    }
    (inputs, chats, evicted)
}

fn cluster(preset: Preset, rules: &mut RuleChecks) -> u64 {
    let mut crashes = 0;
    for seed in SEEDS {
        let params = preset.cluster_params(seed, Some(400));
        let described = format!("{params:?}");
        let report = Cluster::new(params)
            .run()
            .unwrap_or_else(|b| panic!("{preset}: {b}\n  {described}"));
        assert!(report.hub_inputs > 0);
        rules.add(&report.checks);
        crashes += report.crashes;
    }
    crashes
}

#[test]
fn presets_exercise_every_invariant() {
    let checks = Checks::default();
    let mut by_preset = Vec::new();
    for preset in Preset::ALL
        .into_iter()
        .filter(|p| !p.is_cluster() && !p.is_broker())
    {
        let before = checks.clone();
        world(preset, &checks);
        let added = Invariant::ALL
            .into_iter()
            .filter(|i| checks.get(*i) > before.get(*i))
            .count();
        by_preset.push((preset, added));
    }
    for (preset, added) in &by_preset {
        assert!(*added > 10, "{preset} examines only {added} invariants");
    }
    let never = checks.never();
    assert!(
        never.is_empty(),
        "no preset ever examined {never:?}: {checks}"
    );
    let mut rules = RuleChecks::default();
    let mut crashes = 0;
    for preset in Preset::ALL.into_iter().filter(|p| p.is_cluster()) {
        crashes += cluster(preset, &mut rules);
    }
    let never = rules.never();
    assert!(
        never.is_empty(),
        "no preset ever examined {never:?}: {rules}"
    );
    assert!(crashes > 0, "restart-heavy restarts the server");
    // partition-heavy: nodes over the broker model; every broker rule is
    // examined.
    let mut examined = std::collections::BTreeMap::new();
    for seed in SEEDS {
        let mut params = BrokerParams::derive(seed, true);
        params.steps = 600;
        let report = BrokerWorld::new(params)
            .run()
            .unwrap_or_else(|b| panic!("partition-heavy: {b}"));
        assert!(report.partitions > 0 && report.refused > 0, "{report:?}");
        for (rule, n) in report.examined {
            *examined.entry(rule).or_insert(0u64) += n;
        }
    }
    for rule in BrokerRule::ALL {
        assert!(
            examined.get(&rule).is_some_and(|n| *n > 0),
            "partition-heavy never examined {rule:?}: {examined:?}"
        );
    }
    // Every invariant is also counted where it is expected to be busiest.
    assert!(rules.get(Rule::RecoveryExact) > 0 && rules.get(Rule::DurableAck) > 0);
    assert!(checks.get(Invariant::HeartbeatTooEarly) > 0);
}

#[test]
fn presets_have_their_character() {
    let checks = Checks::default();
    let (inputs, chats, chat_evicted) = world(Preset::ChatHeavy, &checks);
    assert!(
        chats * 10 > inputs * 8,
        "chat-heavy: {chats} chat lines of {inputs} hub inputs"
    );
    let churn = Checks::default();
    let (_, _, churn_evicted) = world(Preset::ChurnHeavy, &churn);
    let slow = Checks::default();
    let (_, _, slow_evicted) = world(Preset::SlowConsumerHeavy, &slow);
    // Churn: far more closes than chat-heavy; slow consumers: more
    // evictions than either.
    assert!(churn.get(Invariant::CloseOnce) > 10 * checks.get(Invariant::CloseOnce).max(1));
    assert!(
        slow_evicted > churn_evicted && slow_evicted > chat_evicted,
        "evictions: slow {slow_evicted}, churn {churn_evicted}, chat {chat_evicted}"
    );
}

#[test]
fn the_mix_is_mostly_chat_and_subscriptions_and_a_function_of_the_seed() {
    let picks: Vec<Preset> = (0..1_000u64).map(Preset::for_seed).collect();
    let chatty = picks
        .iter()
        .filter(|p| matches!(p, Preset::ChatHeavy | Preset::Sharded))
        .count();
    assert!(chatty > 500, "{chatty} of 1000");
    for p in Preset::ALL {
        assert!(picks.contains(&p), "{p} is never picked");
        assert_eq!(Preset::parse(p.name()), Ok(p));
    }
    assert!(Preset::parse("partition-light").is_err());
    assert_eq!(Preset::for_seed(42), Preset::for_seed(42));
}
