//! Replays the committed cargo-fuzz corpus (fuzz/corpus/<target>/*) through
//! the same target bodies the fuzzer runs, so every `cargo test` exercises
//! them on stable Rust. Crashes the fuzzer finds are added to the corpus
//! (fuzz/corpus/<target>/regression-*) and so become regression tests here.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is committed: {e}", dir.display()))
        .map(|e| e.expect("readable corpus entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "the {target} corpus is empty");
    for path in &entries {
        let data = std::fs::read(path).expect("readable corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "fuzz target {target} fails on {}",
            path.display()
        );
    }
    eprintln!("{target}: replayed {} inputs", entries.len());
}

#[test]
fn decode_corpus() {
    replay("decode", hubbub_sim::fuzz_targets::decode);
}

#[test]
fn handshake_corpus() {
    replay("handshake", hubbub_sim::fuzz_targets::handshake);
}

#[test]
fn hub_ops_corpus() {
    let started = std::time::Instant::now();
    replay("hub_ops", hubbub_sim::fuzz_targets::hub_ops);
    let secs = started.elapsed().as_secs_f64();
    // The replay speed (no sanitizers, no coverage): `cargo test --release
    // -p hubbub-sim --test fuzz_corpus -- --nocapture hub_ops`.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/hub_ops");
    let mut inputs = 0u64;
    let mut steps = 0u64;
    for entry in std::fs::read_dir(&dir).expect("corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("readable");
        inputs += 1;
        steps += hubbub_sim::fuzz_targets::hub_ops_steps(&data);
    }
    assert!(steps > inputs, "the corpus drives the hub: {steps} steps");
    eprintln!(
        "hub_ops: {inputs} inputs, {steps} hub inputs in {secs:.2}s: {:.0} executions/s",
        inputs as f64 / secs
    );
}

#[test]
fn centrifuge_decode_corpus() {
    replay(
        "centrifuge_decode",
        hubbub_sim::fuzz_targets::centrifuge_decode,
    );
}

#[test]
fn api_decode_corpus() {
    replay("api_decode", hubbub_sim::fuzz_targets::api_decode);
}

#[test]
fn token_corpus() {
    replay("token", hubbub_sim::fuzz_targets::token);
}
