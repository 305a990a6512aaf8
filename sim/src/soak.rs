//! Soak runs of the simulation from the command line (`hubbub-sim` with no
//! subcommand): one seed, or `--runs K` seeds in a row, each printed with its
//! parameters, result, trace hash and speed. The binary may read the clock
//! (for a random seed and for events/second); the world never does.
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn seeds_parse_as_hex_or_decimal() {
        assert_eq!(parse_seed("0x10"), Ok(16));
        assert_eq!(parse_seed("0xdead_beef"), Ok(0xdead_beef));
        assert_eq!(parse_seed("42"), Ok(42));
        assert!(parse_seed("0xzz").is_err());
    }
}
