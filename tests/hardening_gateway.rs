//! Hardening of the gateway as a whole (issue 11): what one request can do to the process and
//! to everyone else — a panic in a handler, memory held for bodies and responses, requests that
//! never end, sessions that survive into another request.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

/// A bug that panics inside a handler costs that request only: the client gets `internal`
/// (500) with a request id, the keep-alive connection and the pool stay usable, and the
/// gateway goes on serving. (Before, the client got an empty reply and the panic message,
/// quoting the SQL, went to stderr.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_handler_is_answered_internal_and_the_gateway_keeps_serving() {
    let (gateway, key, _db) = gateway_for("", "pool_size = 1").await;
    let c = &gateway.client;
    let auth = format!("Bearer {key}");
    for _ in 0..3 {
        let reply = c
            .request(
                Method::POST,
                "/v1/query",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("x-sluice-fault", "panic"),
                ],
                r#"{"sql":"select 'a secret literal'"}"#,
            )
            .await;
        assert_status(&reply, StatusCode::INTERNAL_SERVER_ERROR, "internal");
        assert!(reply.headers.contains_key("x-request-id"));
        assert!(
            !reply.text.contains("secret"),
            "the error must not echo the request: {}",
            reply.text
        );
        // Same client (same keep-alive connection), same single pooled connection.
        let ok = c.query(&key, "select 1 as n", json!([])).await;
        assert_eq!(ok.rows(), vec![json!({"n": 1})]);
    }
}
