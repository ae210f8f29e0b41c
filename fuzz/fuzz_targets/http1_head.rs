//! Bytes from a client on a plain HTTP/1.1 connection → the fast path's recognition of an
//! ordinary request (`server::http1_fast`). The checks live in `sluice::fuzzing::http1_head`, so
//! `tests/fuzz_seeds.rs` runs the same ones.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::http1_head(data));
