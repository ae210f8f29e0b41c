//! The profile-guided build's training mix (`scripts/pgo-train.py`, run by `scripts/build-pgo`)
//! still gets the answers it expects from every route. A mix that drifted from the API would
//! train the release profile on error paths and leave the real routes laid out as cold code,
//! and the build would not say so.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pgo_training_mix_gets_the_answers_it_expects() {
    let (gateway, key, db) = gateway_for(
        "",
        "pool_size = 4\nrate_per_second = 1000000\nburst = 1000000",
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pgo-train.py");
    let (url, trainer_key) = (gateway.url(), key.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &url, &trainer_key, "no-admin-key", "800"])
            .env("PGO_TENANT", "acme")
            .env("PGO_DATABASE", &db)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (scripts/test needs it)");
    assert!(
        output.status.success(),
        "pgo-train.py: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("800 requests"));
    still_serves(&gateway.client, &key).await;
    gateway.stop().await;
}
