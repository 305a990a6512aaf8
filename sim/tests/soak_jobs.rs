//! `hubbub-sim soak --jobs N` runs N seed chains side by side; each chain
//! must be exactly the chain `--seed S+j` would run alone, or a soak's
//! figures could not be resumed or reproduced chain by chain.
use std::process::Command;

fn soak(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hubbub-sim"))
        .arg("soak")
        .args(["--preset", "churn-heavy", "--steps", "20000"])
        .args(args)
        .output()
        .expect("hubbub-sim runs");
    assert!(out.status.success(), "soak {args:?} failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The lines that say what a run did, without its speed (which varies).
fn runs(log: &str, prefix: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter(|l| l.starts_with("run ") || l.trim_start().starts_with("resume:"))
        .map(|l| {
            l.split(", ")
                .map(|part| {
                    part.split_once(" inputs/s; ")
                        .map_or(part, |(_, rest)| rest)
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

fn total_inputs(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.starts_with("soak ok: "))
        .expect("a summary line");
    line.split(", ")
        .find_map(|part| part.split_once(" hub inputs").map(|(n, _)| n))
        .and_then(|n| n.parse().ok())
        .expect("a hub input count")
}

#[test]
fn each_chain_of_a_parallel_soak_is_the_soak_of_its_seed_alone() {
    let together = soak(&["--jobs", "2", "--inputs", "80001", "--seed", "0x5eed"]);
    // 80,001 inputs over two chains: the first takes the odd one.
    let first = soak(&["--inputs", "40001", "--seed", "0x5eed"]);
    let second = soak(&["--inputs", "40000", "--seed", "0x5eee"]);

    let chain0 = runs(&together, "[chain 0] ");
    let chain1 = runs(&together, "[chain 1] ");
    assert!(!chain0.is_empty() && !chain1.is_empty(), "{together}");
    assert_eq!(chain0, runs(&first, ""));
    assert_eq!(chain1, runs(&second, ""));
    assert_eq!(
        total_inputs(&together),
        total_inputs(&first) + total_inputs(&second)
    );
    assert!(total_inputs(&together) >= 80_001);
}

#[test]
fn zero_jobs_is_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_hubbub-sim"))
        .args(["soak", "--jobs", "0", "--inputs", "1"])
        .output()
        .expect("hubbub-sim runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jobs"));
}
