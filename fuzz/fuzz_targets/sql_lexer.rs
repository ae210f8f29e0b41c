//! SQL text → the lexer (`SqlAnalysis::of`); statement spans stay on character boundaries.
//! The checks live in `sluice::fuzzing::sql_lexer`, so `tests/fuzz_seeds.rs` runs the same ones.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::sql_lexer(data));
