//! cargo-fuzz target: see `hubbub_sim::fuzz_targets::token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hubbub_sim::fuzz_targets::token(data));
