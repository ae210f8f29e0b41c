//! The fuzz targets' committed seeds (`fuzz/seeds/<target>/`), run through the same checks the
//! fuzzers run (`sluice::fuzzing`) on stable Rust, so `cargo test` alone keeps every seed —
//! and every crash a fuzzer found, which is kept as a seed — passing. Fuzzing itself needs
//! nightly: `scripts/fuzz`.

use std::path::Path;

fn run_seeds(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "{} holds no seeds", dir.display());
    let failing: Vec<String> = entries
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a seed file");
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failing.is_empty(),
        "seeds failing their target's checks: {failing:#?}"
    );
}

#[test]
fn sql_lexer_seeds_pass() {
    run_seeds("sql_lexer", sluice::fuzzing::sql_lexer);
}

#[test]
fn params_seeds_pass() {
    run_seeds("params", sluice::fuzzing::params);
}

#[test]
fn request_decode_seeds_pass() {
    run_seeds("request_decode", sluice::fuzzing::request_decode);
}

#[test]
fn server_messages_seeds_pass() {
    run_seeds("server_messages", sluice::fuzzing::server_messages);
}

#[test]
fn config_seeds_pass() {
    run_seeds("config", sluice::fuzzing::config);
}

#[test]
fn http1_head_seeds_pass() {
    run_seeds("http1_head", sluice::fuzzing::http1_head);
}
