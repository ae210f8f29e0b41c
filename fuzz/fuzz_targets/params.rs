//! A JSON value → a parameter (`pg::params::encode`) for unknown, scalar, JSON and array placeholders.
//! The checks live in `sluice::fuzzing::params`, so `tests/fuzz_seeds.rs` runs the same ones.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::params(data));
