//! cargo-fuzz target: see `hubbub_sim::fuzz_targets::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hubbub_sim::fuzz_targets::handshake(data));
