//! Bytes from a broken or hostile Postgres → the message decoder and the row → JSON encoder.
//! The checks live in `sluice::fuzzing::server_messages`, so `tests/fuzz_seeds.rs` runs the same ones.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::server_messages(data));
