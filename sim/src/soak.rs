//! Soak runs of the simulation from the command line.
//!
//! - `hubbub-sim` with no subcommand: one seed, or `--runs K` seeds in a
//!   row, each printed with its parameters, result, trace hash and speed.
//! - `hubbub-sim soak --preset P --inputs N --seed S`: runs seed after seed
//!   of a preset ([`crate::preset`]; `all` picks one per seed, mostly chat
//!   and subscription traffic) until `N` hub inputs were handled, one line
//!   per run, and after each the command that resumes from the next seed.
//!
//! The binary may read the clock (for a random seed and for speed); the
//! world never does.
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::cluster::{Cluster, RuleChecks};
use crate::invariants::Checks;
use crate::preset::Preset;
use crate::rng::mix64;
use crate::scenario::{self, Overrides, SimParams};

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Seed of the simulation, hex (`0x…`) or decimal (random when omitted).
    #[arg(long)]
    pub seed: Option<String>,
    /// Simulated clients (derived from the seed when omitted).
    #[arg(long)]
    pub clients: Option<u32>,
    /// Rooms (derived from the seed when omitted).
    #[arg(long)]
    pub rooms: Option<u32>,
    /// Hub inputs in the safety phase (derived from the seed when omitted).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Runs in a row; after the first, each seed is derived from the previous one.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
}

/// Parses `0x…` hex or decimal.
///
/// # Errors
/// A message for the user.
pub fn parse_seed(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    parsed.map_err(|e| format!("bad --seed {s:?}: {e}"))
}

fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    mix64(nanos as u64 ^ u64::from(std::process::id()))
}

#[must_use]
pub fn main(args: &SoakArgs) -> ExitCode {
    let first = match args.seed.as_deref().map(parse_seed).transpose() {
        Ok(seed) => seed.unwrap_or_else(random_seed),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let overrides = Overrides {
        clients: args.clients,
        rooms: args.rooms,
        steps: args.steps,
    };
    let mut seed = first;
    let mut failures = 0u32;
    for run in 0..args.runs.max(1) {
        if run > 0 {
            seed = mix64(seed);
        }
        let params = SimParams::derive(seed, overrides);
        println!("{params}");
        let started = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| scenario::run(&params)));
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        match outcome {
            Ok(Ok(report)) => {
                println!("{report}");
                println!(
                    "  {:.2}s: {:.0} events/s, {:.0} hub inputs/s",
                    secs,
                    report.counters.events as f64 / secs,
                    report.counters.hub_inputs as f64 / secs
                );
            }
            Ok(Err(failure)) => {
                failures += 1;
                println!("FAILED: {failure}");
            }
            Err(_) => {
                failures += 1;
                println!(
                    "FAILED: the simulation panicked (see above)\nreproduce: {}",
                    params.reproduce_command()
                );
            }
        }
        println!();
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{failures} of {} runs failed", args.runs.max(1));
        ExitCode::FAILURE
    }
}

/// `hubbub-sim soak`: a long run across seeds.
#[derive(clap::Args, Debug)]
pub struct LongArgs {
    /// chat-heavy, churn-heavy, slow-consumer-heavy, mixed, sharded,
    /// restart-heavy, partition-heavy, or all (a preset per seed, mostly chat).
    #[arg(long, default_value = "all")]
    pub preset: String,
    /// Hub inputs to handle in all (`1e9`, `1_000_000_000`).
    #[arg(long, default_value = "1e9")]
    pub inputs: String,
    /// First seed, hex or decimal (random when omitted); each next run's
    /// seed is derived from the previous one.
    #[arg(long)]
    pub seed: Option<String>,
    /// Hub inputs per single-hub run.
    #[arg(long, default_value_t = 1_000_000)]
    pub steps: u64,
    /// Client actions per cluster run.
    #[arg(long, default_value_t = 20_000)]
    pub actions: u32,
    /// Chains of seeds run side by side, one thread each (use the cores):
    /// chain j starts at seed + j and handles its share of `--inputs`, so
    /// it is the same as `--seed S+j --inputs share` run alone.
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
}

/// Parses `1e9`, `1.5e8`, `1_000_000` or `42`.
///
/// # Errors
/// A message for the user.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.replace('_', "");
    if let Some((m, e)) = t.split_once(['e', 'E']) {
        let bad = |why: &dyn std::fmt::Display| format!("bad count {s:?}: {why}");
        let (whole, fraction) = m.split_once('.').unwrap_or((m, ""));
        let e: u32 = e.parse().map_err(|e| bad(&e))?;
        // `1.5e8` is 15 × 10⁷: the fraction's digits join the mantissa.
        let digits = u32::try_from(fraction.len()).map_err(|e| bad(&e))?;
        let Some(e) = e.checked_sub(digits) else {
            return Err(bad(&"not a whole number"));
        };
        let m: u64 = format!("{whole}{fraction}").parse().map_err(|e| bad(&e))?;
        return 10u64
            .checked_pow(e)
            .and_then(|p| p.checked_mul(m))
            .ok_or_else(|| format!("count {s:?} is too large"));
    }
    t.parse().map_err(|e| format!("bad count {s:?}: {e}"))
}

/// What one run of a soak did.
struct RunOutcome {
    inputs: u64,
    /// Chat lines (seed, relay) or publications (cluster) accepted.
    chats: u64,
    heartbeats: u64,
}

/// Runs `seed` of `preset`; a failure prints itself and its reproduction.
fn soak_one(
    preset: Preset,
    seed: u64,
    args: &LongArgs,
    checks: &Checks,
    rules: &mut RuleChecks,
    broker_rules: &mut BrokerRuleChecks,
) -> Result<RunOutcome, ()> {
    if preset.is_broker() {
        let params = crate::broker::BrokerParams::derive(seed, true);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            crate::broker::BrokerWorld::new(params.clone()).run()
        }));
        return match outcome {
            Ok(Ok(report)) => {
                for (rule, n) in &report.examined {
                    *broker_rules.0.entry(*rule).or_default() += n;
                }
                Ok(RunOutcome {
                    inputs: report.hub_inputs,
                    chats: report.publications + report.relay_frames,
                    heartbeats: 0,
                })
            }
            Ok(Err(breach)) => {
                println!("FAILED: {breach}\n  {params:?}");
                println!(
                    "reproduce: hubbub-sim soak --preset {preset} --inputs 1 --seed {seed:#018x}"
                );
                Err(())
            }
            Err(_) => {
                println!(
                    "FAILED: the broker simulation panicked (see above)\nreproduce: hubbub-sim soak --preset {preset} --inputs 1 --seed {seed:#018x}"
                );
                Err(())
            }
        };
    }
    if preset.is_cluster() {
        let params = preset.cluster_params(seed, Some(args.actions));
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| Cluster::new(params.clone()).run()));
        return match outcome {
            Ok(Ok(report)) => {
                rules.add(&report.checks);
                Ok(RunOutcome {
                    inputs: report.hub_inputs,
                    chats: report.publications as u64,
                    heartbeats: 0,
                })
            }
            Ok(Err(breach)) => {
                println!("FAILED: {breach}\n  {params:?}");
                println!(
                    "reproduce: hubbub-sim soak --preset {preset} --inputs 1 --seed {seed:#018x} --actions {}",
                    args.actions
                );
                Err(())
            }
            Err(_) => {
                println!(
                    "FAILED: the cluster simulation panicked (see above)\nreproduce: hubbub-sim soak --preset {preset} --inputs 1 --seed {seed:#018x} --actions {}",
                    args.actions
                );
                Err(())
            }
        };
    }
    let overrides = Overrides {
        steps: Some(args.steps),
        ..Overrides::default()
    };
    let params = preset.sim_params(seed, overrides);
    let reproduce = format!(
        "hubbub-sim soak --preset {preset} --inputs 1 --seed {seed:#018x} --steps {}",
        args.steps
    );
    match panic::catch_unwind(AssertUnwindSafe(|| scenario::run(&params))) {
        Ok(Ok(report)) => {
            checks.add(&report.checks);
            Ok(RunOutcome {
                inputs: report.counters.hub_inputs,
                chats: report.stats.messages_in,
                heartbeats: report.counters.hub_timeouts,
            })
        }
        Ok(Err(failure)) => {
            println!("FAILED: {failure}\nreproduce: {reproduce}");
            Err(())
        }
        Err(_) => {
            println!("FAILED: the simulation panicked (see above)\nreproduce: {reproduce}");
            Err(())
        }
    }
}

/// `hubbub-sim soak`.
#[must_use]
pub fn long_main(args: &LongArgs) -> ExitCode {
    let parsed = (|| {
        let preset = match args.preset.as_str() {
            "all" => None,
            name => Some(Preset::parse(name)?),
        };
        let inputs = parse_count(&args.inputs)?;
        let seed = args.seed.as_deref().map(parse_seed).transpose()?;
        if args.jobs == 0 {
            return Err("--jobs must be at least 1".to_owned());
        }
        Ok::<_, String>((preset, inputs, seed.unwrap_or_else(random_seed)))
    })();
    let (preset, target, seed) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let jobs = u64::from(args.jobs);
    println!(
        "soak: preset {}, {target} hub inputs from seed {seed:#018x}{}",
        args.preset,
        if jobs > 1 {
            format!(
                " in {jobs} chains (seeds {seed:#x} to {:#x}), one thread each",
                seed.wrapping_add(jobs - 1)
            )
        } else {
            String::new()
        }
    );
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let chains: Vec<Chain> = if jobs == 1 {
        vec![soak_chain(&Job {
            label: String::new(),
            preset,
            target,
            seed,
            args,
            stop: &stop,
        })]
    } else {
        thread::scope(|scope| {
            let handles: Vec<_> = (0..jobs)
                .map(|j| {
                    // Chain j is what `--seed S+j --inputs share` runs alone,
                    // so a chain resumes (or reproduces) by itself.
                    let job = Job {
                        label: format!("[chain {j}] "),
                        preset,
                        target: target / jobs + u64::from(j < target % jobs),
                        seed: seed.wrapping_add(j),
                        args,
                        stop: &stop,
                    };
                    scope.spawn(move || soak_chain(&job))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Chain::failed()))
                .collect()
        })
    };
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mut total = Chain::default();
    for chain in &chains {
        total.add(chain);
    }
    let Chain {
        runs,
        inputs,
        chats,
        heartbeats,
        ..
    } = total;
    if !chains.iter().all(|c| c.ok) {
        println!("after {runs} runs and {inputs} hub inputs in {secs:.0}s");
        return ExitCode::FAILURE;
    }
    println!(
        "soak ok: {runs} runs, {inputs} hub inputs ({chats} chat lines and publications, {heartbeats} heartbeat calls), 0 violations, {secs:.0}s, {:.0} inputs/s",
        inputs as f64 / secs
    );
    println!("invariants examined (single hub): {}", total.checks);
    println!("rules examined (cluster): {}", total.rules);
    println!("rules examined (broker): {}", total.broker_rules);
    ExitCode::SUCCESS
}

/// One chain of seeds in a soak.
struct Job<'a> {
    /// Prefixes each line the chain prints (empty for a single chain).
    label: String,
    preset: Option<Preset>,
    target: u64,
    seed: u64,
    args: &'a LongArgs,
    /// Set by the first chain that fails, so the others stop after their run.
    stop: &'a AtomicBool,
}

/// What a chain did.
#[derive(Default)]
struct Chain {
    ok: bool,
    runs: u64,
    inputs: u64,
    chats: u64,
    heartbeats: u64,
    checks: Checks,
    rules: RuleChecks,
    broker_rules: BrokerRuleChecks,
}

impl Chain {
    /// A chain whose thread panicked outside a run (a run's panic is caught).
    fn failed() -> Self {
        Self::default()
    }

    /// Sums the counts of `other` into `self`.
    fn add(&mut self, other: &Self) {
        self.runs += other.runs;
        self.inputs += other.inputs;
        self.chats += other.chats;
        self.heartbeats += other.heartbeats;
        self.checks.add(&other.checks);
        self.rules.add(&other.rules);
        for (rule, n) in &other.broker_rules.0 {
            *self.broker_rules.0.entry(*rule).or_default() += n;
        }
    }
}

/// Runs seed after seed until the job's share of inputs is handled or a
/// run fails (here or, through `stop`, in another chain).
fn soak_chain(job: &Job<'_>) -> Chain {
    let Job {
        ref label,
        preset,
        target,
        seed,
        args,
        stop,
    } = *job;
    let mut seed = seed;
    let mut chain = Chain::default();
    while chain.inputs < target {
        if stop.load(Ordering::Relaxed) {
            println!("{label}stopped: another chain failed");
            return chain;
        }
        let this = preset.unwrap_or_else(|| Preset::for_seed(seed));
        let run_started = Instant::now();
        let Ok(outcome) = soak_one(
            this,
            seed,
            args,
            &chain.checks,
            &mut chain.rules,
            &mut chain.broker_rules,
        ) else {
            stop.store(true, Ordering::Relaxed);
            println!("{label}FAILED at seed {seed:#018x}");
            return chain;
        };
        chain.runs += 1;
        chain.inputs += outcome.inputs;
        chain.chats += outcome.chats;
        chain.heartbeats += outcome.heartbeats;
        let secs = run_started.elapsed().as_secs_f64().max(1e-9);
        let next = mix64(seed);
        println!(
            "{label}run {} {this} {seed:#018x}: ok, {} inputs, {} chats, {:.0} inputs/s; total {} ({:.1}%)",
            chain.runs,
            outcome.inputs,
            outcome.chats,
            outcome.inputs as f64 / secs,
            chain.inputs,
            100.0 * chain.inputs as f64 / target as f64
        );
        if chain.inputs < target {
            println!(
                "{label}  resume: hubbub-sim soak --preset {} --inputs {} --seed {next:#018x} --steps {} --actions {}",
                args.preset,
                target - chain.inputs,
                args.steps,
                args.actions
            );
        }
        seed = next;
    }
    chain.ok = true;
    chain
}

/// How often each rule of the broker model was examined, all runs together.
#[derive(Default)]
struct BrokerRuleChecks(std::collections::BTreeMap<crate::broker::Rule, u64>);

impl std::fmt::Display for BrokerRuleChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, rule) in crate::broker::Rule::ALL.into_iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            let count = self.0.get(&rule).copied().unwrap_or(0);
            write!(f, "{} {count}", rule.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_count, parse_seed};

    #[test]
    fn counts_parse_with_exponents_and_underscores() {
        assert_eq!(parse_count("1e9"), Ok(1_000_000_000));
        assert_eq!(parse_count("2E3"), Ok(2_000));
        assert_eq!(parse_count("1_000"), Ok(1_000));
        assert_eq!(parse_count("1.5e8"), Ok(150_000_000));
        assert_eq!(parse_count("2.25e2"), Ok(225));
        assert!(parse_count("1.25e1").is_err(), "12.5 is not a count");
        assert!(parse_count("1.e3").is_ok_and(|n| n == 1_000));
        assert!(parse_count("1e30").is_err());
        assert!(parse_count("x").is_err());
    }

    #[test]
    fn seeds_parse_as_hex_or_decimal() {
        assert_eq!(parse_seed("0x10"), Ok(16));
        assert_eq!(parse_seed("0xdead_beef"), Ok(0xdead_beef));
        assert_eq!(parse_seed("42"), Ok(42));
        assert!(parse_seed("0xzz").is_err());
    }
}
