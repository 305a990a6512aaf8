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
    replay("hub_ops", hubbub_sim::fuzz_targets::hub_ops);
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
