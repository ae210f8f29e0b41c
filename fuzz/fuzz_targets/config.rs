//! Text as a config file, a Postgres URL and environment lines → a validated `Config`.
//! The checks live in `sluice::fuzzing::config`, so `tests/fuzz_seeds.rs` runs the same ones.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::config(data));
