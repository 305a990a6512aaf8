//! cargo-fuzz target: see `hubbub_sim::fuzz_targets::centrifuge_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hubbub_sim::fuzz_targets::centrifuge_decode(data));
