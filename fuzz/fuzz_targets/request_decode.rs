//! Bytes as the JSON body of every route → decoded and validated as the handlers do; only 4xx.
//! The checks live in `sluice::fuzzing::request_decode`, so `tests/fuzz_seeds.rs` runs the same ones.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::request_decode(data));
