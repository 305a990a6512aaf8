//! cargo-fuzz target: see `hubbub_sim::fuzz_targets::api_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hubbub_sim::fuzz_targets::api_decode(data));
