//! Issue 15, item 1: CORS. Before, a browser's preflight got 405 with no `Access-Control-*`
//! header, so no page could call the gateway.

mod common;
mod end_users;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

const APP: &str = "http://app.test:5173";
const OTHER_APP: &str = "http://other.test";

async fn preflight(client: &Client, path: &str, origin: &str) -> Reply {
    client
        .request(
            Method::OPTIONS,
            path,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type, neon-connection-string",
                ),
            ],
            bytes::Bytes::new(),
        )
        .await
}

fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Two tenants: `acme` allows APP, `beta` allows OTHER_APP.
async fn two_tenants() -> (Gateway, String, String) {
    let db = database("").await;
    let (acme, acme_hash) = key("acme");
    let (beta, beta_hash) = key("beta");
    let toml = config(
        &db,
        &acme_hash,
        &format!("cors = {{ origins = [\"{APP}\"], max_age_s = 120 }}"),
        "",
    ) + &format!(
        "[[tenants]]\nid = \"beta\"\napi_keys = [\"{beta_hash}\"]\npool_size = 2\n\
         cors = {{ origins = [\"{OTHER_APP}\"] }}\n"
    );
    (Gateway::start(&toml).await, acme, beta)
}

/// Preflights are answered before routing, for every route (`/sql` included, whoever adds
/// it), with the methods and headers the SDK and Neon's driver send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_for_every_route_from_an_allowed_origin() {
    let (gateway, _, _) = two_tenants().await;
    let c = &gateway.client;
    for path in [
        "/v1/query",
        "/v1/batch",
        "/v1/transactions",
        "/v1/transactions/x/query",
        "/sql",
    ] {
        let reply = preflight(c, path, APP).await;
        assert_eq!(reply.status, 204, "{path}: {}", reply.text);
        assert_eq!(header(&reply, "access-control-allow-origin"), Some(APP));
        let allowed = header(&reply, "access-control-allow-headers").unwrap();
        for name in [
            "authorization",
            "content-type",
            "neon-connection-string",
            "neon-raw-text-output",
            "neon-array-mode",
            "neon-batch-isolation-level",
            "neon-batch-read-only",
            "neon-batch-deferrable",
        ] {
            assert!(allowed.contains(name), "{name} in {allowed}");
        }
        assert!(
            header(&reply, "access-control-allow-methods")
                .unwrap()
                .contains("POST")
        );
        // The smaller of the tenants' max ages (acme 120, beta the default 600).
        assert_eq!(header(&reply, "access-control-max-age"), Some("120"));
        assert!(header(&reply, "vary").unwrap().contains("origin"));
    }
    // The other tenant's origin too: a preflight cannot tell tenants apart.
    assert_eq!(preflight(c, "/v1/query", OTHER_APP).await.status, 204);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_origin_gets_a_clear_403() {
    let (gateway, acme, beta) = two_tenants().await;
    let c = &gateway.client;
    let reply = preflight(c, "/v1/query", "http://evil.test").await;
    assert_status(&reply, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        reply
            .text
            .contains("origin http://evil.test is not allowed"),
        "{}",
        reply.text
    );
    assert_eq!(header(&reply, "access-control-allow-origin"), None);

    // The real request from an origin only the *other* tenant allows: refused by its own
    // tenant, readable by the page (the union allows the origin).
    let cross = c
        .request(
            Method::POST,
            "/v1/query",
            &[
                ("origin", OTHER_APP),
                ("authorization", &format!("Bearer {acme}")),
                ("content-type", "application/json"),
            ],
            json!({ "sql": "select 1" }).to_string(),
        )
        .await;
    assert_status(&cross, StatusCode::FORBIDDEN, "forbidden");
    assert!(cross.text.contains("cors.origins"), "{}", cross.text);
    assert_eq!(
        header(&cross, "access-control-allow-origin"),
        Some(OTHER_APP)
    );
    // Its own tenant's origin: allowed, with the headers a page may read exposed.
    let own = c
        .request(
            Method::POST,
            "/v1/query",
            &[
                ("origin", OTHER_APP),
                ("authorization", &format!("Bearer {beta}")),
                ("content-type", "application/json"),
            ],
            json!({ "sql": "select 1" }).to_string(),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(header(&own, "access-control-allow-origin"), Some(OTHER_APP));
    let exposed = header(&own, "access-control-expose-headers").unwrap();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("retry-after"),
        "{exposed}"
    );
    // Servers send no Origin: nothing changes for them.
    let server = c.query(&acme, "select 1", json!([])).await;
    assert_eq!(server.status, 200);
    assert_eq!(header(&server, "access-control-allow-origin"), None);
    // OPTIONS without a preflight's headers is still just a method the route does not take.
    let bare = c
        .request(Method::OPTIONS, "/v1/query", &[], bytes::Bytes::new())
        .await;
    assert_eq!(bare.status, 405);
    gateway.stop().await;
}

/// `*` would hand every web page an API key's responses: only a JWT-only tenant may use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_is_refused_for_a_tenant_with_api_keys() {
    let db = database("").await;
    let (_, hash) = key("acme");
    let error = Gateway::try_start(&config(&db, &hash, "cors = { origins = [\"*\"] }", ""))
        .await
        .err()
        .expect("refused");
    assert!(
        error.contains("only for a tenant that uses JWT auth alone"),
        "{error}"
    );
    let error = Gateway::try_start(&config(
        &db,
        &hash,
        "cors = { origins = [\"https://a.test/\"] }",
        "",
    ))
    .await
    .err()
    .expect("refused");
    assert!(error.contains("is not an origin"), "{error}");
}

/// A JWT-only tenant may allow every origin: an anonymous page anywhere reads what
/// `anonymous_role` may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_serves_any_origin_for_a_jwt_only_tenant() {
    let rsa = end_users::rs256("r1");
    let jwks_file =
        std::env::temp_dir().join(format!("sluice-cors-{}.json", rand::random::<u64>()));
    std::fs::write(&jwks_file, json!({ "keys": [&rsa.jwk] }).to_string()).unwrap();
    let db = end_users::rls_database().await;
    let jwt = end_users::jwt_tenant("https://unused.example/jwks", "").replace(
        "jwks_url = \"https://unused.example/jwks\"",
        &format!("jwks_file = {:?}", jwks_file.display().to_string()),
    );
    let (_, hash) = key("acme");
    let toml = config(
        &db,
        &hash,
        &format!("{jwt}\ncors = {{ origins = [\"*\"] }}"),
        "",
    )
    .replace(&format!("api_keys = [\"{hash}\"]"), "api_keys = []");
    let gateway = Gateway::start(&toml).await;
    let c = &gateway.client;
    let origin = "https://anywhere.example";
    assert_eq!(preflight(c, "/v1/query", origin).await.status, 204);
    let reply = c
        .request(
            Method::POST,
            "/v1/query",
            &[("origin", origin), ("content-type", "application/json")],
            json!({ "sql": "select owner from notes", "rowMode": "array" }).to_string(),
        )
        .await;
    assert_eq!(reply.rows(), [json!(["public"])], "{}", reply.text);
    assert_eq!(header(&reply, "access-control-allow-origin"), Some(origin));
    let _ = std::fs::remove_file(&jwks_file);
    gateway.stop().await;
}
