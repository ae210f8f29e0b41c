//! Issue 15: end users' JWTs. A token picks the Postgres role and claims of its request, and
//! row-level security decides what each user sees; refused tokens say why; keys rotate
//! without a restart; nothing one user sets survives into the next user's request.

mod common;
mod end_users;

use std::time::{Duration, Instant};

use common::*;
use end_users::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

async fn as_user(client: &Client, token: &str, sql: &str) -> Reply {
    client
        .post(
            "/v1/query",
            token,
            &json!({ "sql": sql, "rowMode": "array" }),
        )
        .await
}

async fn anonymous(client: &Client, sql: &str) -> Reply {
    client
        .request(
            Method::POST,
            "/v1/query",
            &[("content-type", "application/json")],
            json!({ "sql": sql, "rowMode": "array" }).to_string(),
        )
        .await
}

fn owners(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut owners: Vec<String> = reply
        .rows()
        .iter()
        .map(|row| row[0].as_str().unwrap().to_owned())
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

/// Before: the only credential was a tenant API key, and every request ran as the tenant's
/// login role, so row-level security could not tell users apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_separates_two_users_and_the_anonymous_role() {
    let (gateway, _key, db, rsa, _jwks) = end_user_gateway("").await;
    let c = &gateway.client;
    let alice = app_user(&rsa, "alice");
    let bob = app_user(&rsa, "bob");

    let select = "select owner, body from notes order by id";
    assert_eq!(owners(&as_user(c, &alice, select).await), ["alice"]);
    assert_eq!(owners(&as_user(c, &bob, select).await), ["bob"]);
    assert_eq!(owners(&anonymous(c, select).await), ["public"]);

    // Writes: the owner column defaults to the claim; bob cannot touch alice's rows.
    let insert = as_user(
        c,
        &alice,
        "insert into notes (body) values ('alice 2') returning owner",
    )
    .await;
    assert_eq!(insert.rows(), [json!(["alice"])], "{}", insert.text);
    let update = as_user(
        c,
        &bob,
        "update notes set body = 'mine' where owner = 'alice'",
    )
    .await;
    assert_eq!(update.json()["rowCount"], 0, "{}", update.text);
    let forged = as_user(
        c,
        &bob,
        "insert into notes (owner, body) values ('alice', 'forged')",
    )
    .await;
    assert_status(&forged, StatusCode::BAD_REQUEST, "database");
    assert!(
        forged.text.contains("row-level security"),
        "{}",
        forged.text
    );
    let anon_write = anonymous(c, "delete from notes").await;
    assert!(
        anon_write.text.contains("permission denied"),
        "{}",
        anon_write.text
    );

    // The role and claims, as policies see them.
    let who = as_user(
        c,
        &alice,
        "select current_user::text, current_setting('request.jwt.claim.sub', true), \
         current_setting('request.jwt.claims', true)::jsonb ->> 'aud'",
    )
    .await;
    assert_eq!(
        who.rows(),
        [json!(["app_user", "alice", AUDIENCE])],
        "{}",
        who.text
    );

    // A batch, and an interactive transaction (claims fixed at begin).
    let batch = c
        .post(
            "/v1/batch",
            &bob,
            &json!({ "rowMode": "array", "statements": [
                { "sql": "insert into notes (body) values ('bob 2')" },
                { "sql": "select count(*)::int from notes" },
            ]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    assert_eq!(
        batch.json()["results"][1]["rows"],
        json!([[2]]),
        "{}",
        batch.text
    );
    let id = begin(c, &alice, json!({})).await;
    let inside = c
        .post(
            &format!("/v1/transactions/{id}/query"),
            &alice,
            &json!({ "sql": "select owner from notes", "rowMode": "array" }),
        )
        .await;
    assert_eq!(owners(&inside), ["alice"]);
    // Bound to alice: bob's token (same tenant) does not find it.
    let foreign = c
        .post(
            &format!("/v1/transactions/{id}/query"),
            &bob,
            &json!({ "sql": "select owner from notes" }),
        )
        .await;
    assert_status(&foreign, StatusCode::NOT_FOUND, "transaction_not_found");
    let commit = c
        .post(&format!("/v1/transactions/{id}/commit"), &alice, &json!({}))
        .await;
    assert_eq!(commit.status, 200, "{}", commit.text);

    // The tenant's API key still works, as the authenticator: it owns no data.
    let direct = direct(&db).await;
    let rows = direct
        .query("select count(*) from notes", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 5);
    gateway.stop().await;
}

/// `POST /sql` (Neon's protocol) takes an end user's token as `/v1` does: the Neon driver
/// sends it in `Authorization` next to a connection string naming the database. Before, the
/// route refused end users' tokens (403) even though every other tenant route took them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_neon_sql_route_runs_end_users_under_their_role_and_claims() {
    let (gateway, _key, db, rsa, _jwks) = end_user_gateway("").await;
    let c = &gateway.client;
    let alice = app_user(&rsa, "alice");
    let bob = app_user(&rsa, "bob");
    let connection = format!("postgresql://app_user@gateway.example/{db}");
    let sql = |token: &str, body: Value| {
        let token = token.to_owned();
        let connection = connection.clone();
        async move {
            let headers = [
                ("neon-connection-string", connection.as_str()),
                ("neon-array-mode", "true"),
            ];
            c.post_with("/sql", &token, &headers, &body).await
        }
    };
    let select = json!({ "query": "select distinct owner from notes", "params": [] });
    for (token, owner) in [(&alice, "alice"), (&bob, "bob")] {
        let reply = sql(token, select.clone()).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json()["rows"], json!([[owner]]), "{}", reply.text);
    }
    // A batch: one transaction, under the user's role and claims.
    let batch = sql(
        &bob,
        json!({ "queries": [
            { "query": "insert into notes (body) values ('bob via sql')", "params": [] },
            { "query": "select current_user::text, current_setting('request.jwt.claim.sub', true)", "params": [] },
        ]}),
    )
    .await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    assert_eq!(
        batch.json()["results"][1]["rows"],
        json!([["app_user", "bob"]]),
        "{}",
        batch.text
    );
    // The escape hatches are closed here too.
    let escape = sql(&alice, json!({ "query": "reset role", "params": [] })).await;
    assert_eq!(escape.status, 403, "{}", escape.text);
    // And the database check still applies to a token.
    let wrong = c
        .request(
            Method::POST,
            "/sql",
            &[
                ("authorization", format!("Bearer {alice}").as_str()),
                ("neon-connection-string", "postgresql://app_user@h/otherdb"),
                ("content-type", "application/json"),
            ],
            select.to_string(),
        )
        .await;
    assert_eq!(wrong.status, 403, "{}", wrong.text);
    gateway.stop().await;
}

/// A server-side misconfiguration: `allowed_roles` names a role the authenticator was not
/// granted, or one that does not exist. Before, the pipelined `SET LOCAL ROLE` failing was
/// read as the gateway's own statement failing: `500 internal` with the reason only in the log,
/// and the connection closed. Now every route answers Postgres's error (`database`, with its
/// SQLSTATE), and the connection — rolled back — serves the next request, clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_authenticator_cannot_set_is_a_database_error_not_internal() {
    let rsa = rs256("r1");
    let jwks = JwksServer::start(&[&rsa.jwk]).await;
    let db = rls_database().await;
    ungranted_role().await;
    let (_key, hash) = key("acme");
    let tenant = format!(
        r#"pool_size = 1
        user = "authenticator"
        password = "{AUTHENTICATOR_PASSWORD}"
        jwt = {{ issuer = "{ISSUER}", audience = "{AUDIENCE}", jwks_url = "{}", algorithms = ["RS256"], allowed_roles = ["app_user", "ungranted_user", "no_such_role"] }}"#,
        jwks.url
    );
    let gateway = Gateway::start(&config(&db, &hash, &tenant, "")).await;
    let c = &gateway.client;
    let alice = app_user(&rsa, "alice");
    let whoami = "select pg_backend_pid(), current_user::text, \
                  coalesce(current_setting('request.jwt.claim.sub', true), ''), \
                  (select count(*) from notes)::int";
    let backend = as_user(c, &alice, whoami).await.rows()[0][0].clone();
    let connection = format!("postgresql://app_user@gateway.example/{db}");

    for (role, reason) in [
        ("ungranted_user", "permission denied to set role"),
        ("no_such_role", "does not exist"),
    ] {
        let token = mint(&rsa, &claims("mallory", role));
        let replies = [
            ("/v1/query", as_user(c, &token, "select 1").await),
            (
                "/v1/batch statements",
                c.post(
                    "/v1/batch",
                    &token,
                    &json!({ "statements": [{ "sql": "select 1" }, { "sql": "select 2" }] }),
                )
                .await,
            ),
            (
                "/v1/batch script",
                c.post(
                    "/v1/batch",
                    &token,
                    &json!({ "script": "select 1; select 2" }),
                )
                .await,
            ),
            (
                "/v1/query NDJSON",
                c.post_with(
                    "/v1/query",
                    &token,
                    &[("accept", "application/x-ndjson")],
                    &json!({ "sql": "select 1" }),
                )
                .await,
            ),
            (
                "/sql",
                c.post_with(
                    "/sql",
                    &token,
                    &[("neon-connection-string", connection.as_str())],
                    &json!({ "query": "select 1", "params": [] }),
                )
                .await,
            ),
        ];
        for (route, reply) in replies {
            assert_eq!(reply.status, 400, "{role} on {route}: {}", reply.text);
            let body = reply.json();
            // `/sql` answers Neon's flat body; the others sluice's `{"error": …}`.
            let error = if route == "/sql" {
                &body
            } else {
                &body["error"]
            };
            assert_eq!(
                error["kind"], "database",
                "{role} on {route}: {}",
                reply.text
            );
            assert!(
                error["message"].as_str().unwrap().contains(reason),
                "{role} on {route}: {}",
                reply.text
            );
            let code = error["code"].as_str().unwrap();
            assert!(
                ["42501", "42704", "22023"].contains(&code),
                "{role} on {route}: {}",
                reply.text
            );
            assert!(
                error.get("statementIndex").is_none_or(Value::is_null),
                "the role is no statement's: {}",
                reply.text
            );
            // The one connection was rolled back and kept: the next user gets it clean.
            let after = as_user(c, &alice, whoami).await;
            assert_eq!(
                after.rows(),
                [json!([backend, "app_user", "alice", 1])],
                "after {role} on {route}: {}",
                after.text
            );
        }
    }
    gateway.stop().await;

    // `/v1/transactions` (which `pool_size = 1` does not allow): the begin is refused the
    // same way, and the transaction begun next on the rolled-back connection is the user's.
    let tenant = tenant.replace("pool_size = 1", "pool_size = 2");
    let gateway = Gateway::start(&config(&db, &hash, &tenant, "")).await;
    let c = &gateway.client;
    for (role, reason) in [
        ("ungranted_user", "permission denied to set role"),
        ("no_such_role", "does not exist"),
    ] {
        let token = mint(&rsa, &claims("mallory", role));
        let reply = c.post("/v1/transactions", &token, &json!({})).await;
        assert_status(&reply, StatusCode::BAD_REQUEST, "database");
        assert!(reply.text.contains(reason), "{role}: {}", reply.text);
        let id = begin(c, &alice, json!({})).await;
        let inside = c
            .post(
                &format!("/v1/transactions/{id}/query"),
                &alice,
                &json!({ "sql": whoami, "rowMode": "array" }),
            )
            .await;
        let row = inside.rows()[0].as_array().unwrap()[1..].to_vec();
        assert_eq!(
            row,
            [json!("app_user"), json!("alice"), json!(1)],
            "{}",
            inside.text
        );
        let rollback = c
            .post(
                &format!("/v1/transactions/{id}/rollback"),
                &alice,
                &json!({}),
            )
            .await;
        assert_eq!(rollback.status, 200, "{}", rollback.text);
    }
    gateway.stop().await;
}

/// A role end users get that the authenticator cannot take (cluster-wide, so created once).
async fn ungranted_role() {
    direct("postgres")
        .await
        .batch_execute(
            "do $$ begin
               if not exists (select from pg_roles where rolname = 'ungranted_user') then
                 create role ungranted_user nologin;
               end if;
             exception when duplicate_object or unique_violation then null;
             end $$",
        )
        .await
        .unwrap();
}

/// `sluice check` finds the misconfiguration above before deploying: each end-user role is
/// tried as the tenant's login role. Before, it said nothing about `jwt` at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_check_names_end_user_roles_the_login_role_cannot_take() {
    let db = rls_database().await;
    ungranted_role().await;
    let (_key, hash) = key("acme");
    let dir = std::env::temp_dir().join(format!("sluice-check-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    let check = |allowed: &str| {
        let tenant = format!(
            r#"user = "authenticator"
            password = "{AUTHENTICATOR_PASSWORD}"
            jwt = {{ issuer = "{ISSUER}", audience = "{AUDIENCE}", jwks_url = "http://127.0.0.1:9/jwks", algorithms = ["RS256"], allowed_roles = [{allowed}], anonymous_role = "web_anon" }}"#
        );
        std::fs::write(&path, config(&db, &hash, &tenant, "")).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, stdout) = check(r#""app_user", "ungranted_user", "no_such_role""#);
    assert!(!ok, "{stdout}");
    for expected in [
        "end-user role \"app_user\"  OK",
        "end-user role \"web_anon\"  OK",
        "end-user role \"ungranted_user\"  PROBLEM: the login role cannot SET it: permission denied to set role",
        "end-user role \"no_such_role\"  PROBLEM: the login role cannot SET it: role \"no_such_role\" does not exist",
    ] {
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
    let (ok, stdout) = check(r#""app_user""#);
    assert!(ok, "{stdout}");
    assert!(!stdout.contains("PROBLEM"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// NDJSON streaming for end users. Before, `Accept: application/x-ndjson` with a token was
/// refused (400): the stream had no gateway-owned transaction to hold the role and claims.
/// Now it runs in one (BEGIN with role and claims, the statement, COMMIT before the last
/// line): each user streams only their rows, a streamed write commits, errors are Postgres's,
/// and the (only) connection goes back clean for the next user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_users_stream_ndjson_under_their_role_and_claims() {
    let (gateway, key, _db, rsa, _jwks) = end_user_gateway("pool_size = 1").await;
    let c = &gateway.client;
    let alice = app_user(&rsa, "alice");
    let bob = app_user(&rsa, "bob");
    let stream = |token: &str, sql: &str| {
        let token = token.to_owned();
        let body = json!({ "sql": sql, "rowMode": "array" });
        async move {
            c.post_with(
                "/v1/query",
                &token,
                &[("accept", "application/x-ndjson")],
                &body,
            )
            .await
        }
    };
    let lines = |reply: &Reply| -> Vec<Value> {
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply
            .text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let who = "select owner, current_user::text, current_setting('request.jwt.claim.sub', true), \
               pg_backend_pid() from notes";
    let pid = as_user(c, &alice, "select pg_backend_pid()").await.rows()[0][0].clone();

    // A streamed write commits: alice's new row is there for her next request.
    let insert = lines(
        &stream(
            &alice,
            "insert into notes (body) values ('streamed') returning owner",
        )
        .await,
    );
    assert_eq!(insert[1], json!(["alice"]), "{insert:?}");
    assert_eq!(insert.last().unwrap()["command"], "INSERT", "{insert:?}");
    for (token, owner, count) in [(&alice, "alice", 2), (&bob, "bob", 1)] {
        let got = lines(&stream(token, who).await);
        assert!(got[0]["fields"].is_array(), "{got:?}");
        let rows = &got[1..got.len() - 1];
        assert_eq!(rows.len(), count, "{got:?}");
        for row in rows {
            assert_eq!(row, &json!([owner, "app_user", owner, pid]), "{got:?}");
        }
        assert_eq!(got.last().unwrap()["rowCount"], count, "{got:?}");
    }
    // An error before the first row is an ordinary `database` answer; the escape hatches stay
    // closed.
    let failed = stream(&alice, "select 1/0").await;
    assert_status(&failed, StatusCode::BAD_REQUEST, "database");
    let escape = stream(&alice, "reset role").await;
    assert_status(&escape, StatusCode::FORBIDDEN, "forbidden");
    // The connection is back in the pool, clean: the API key's request runs as the
    // authenticator with no claims left over.
    let after = as_user(
        c,
        &key,
        "select current_user::text, coalesce(current_setting('request.jwt.claims', true), ''), \
         pg_backend_pid()",
    )
    .await;
    assert_eq!(
        after.rows(),
        [json!(["authenticator", "", pid])],
        "{}",
        after.text
    );
    gateway.stop().await;
}

/// Each refused token is `unauthorized` and names its problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_say_why() {
    let (gateway, _key, _db, rsa, _jwks) = end_user_gateway("").await;
    let c = &gateway.client;
    let with = |change: fn(&mut Value)| {
        let mut claims = claims("alice", "app_user");
        change(&mut claims);
        claims
    };
    let hs256_with_public_key = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("r1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims("alice", "app_user"),
        &jsonwebtoken::EncodingKey::from_secret(RS256_PUBLIC.as_bytes()),
    )
    .unwrap();
    let cases = [
        (
            mint(&rsa, &with(|c: &mut Value| c["role"] = json!("postgres"))),
            "role \"postgres\" is not in the tenant's jwt.allowed_roles",
        ),
        (
            mint(&rsa, &with(|c: &mut Value| c["exp"] = json!(now() - 3600))),
            "expired",
        ),
        (
            mint(
                &rsa,
                &with(|c: &mut Value| c["aud"] = json!("someone-else")),
            ),
            "wrong audience",
        ),
        (
            mint(
                &rsa,
                &with(|c: &mut Value| c["iss"] = json!("https://evil.test")),
            ),
            "no tenant accepts tokens from issuer \"https://evil.test\"",
        ),
        (
            unsigned(&claims("alice", "app_user")),
            "alg \"none\" is refused",
        ),
        (hs256_with_public_key, "HS256 is not accepted"),
        (
            mint(&es256("r1"), &claims("alice", "app_user")),
            "the algorithm does not match the key",
        ),
        (forged_signature(&rsa), "invalid signature"),
    ];
    for (token, reason) in cases {
        let reply = as_user(c, &token, "select 1").await;
        assert_status(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            reply.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(reason),
            "{reason}: {}",
            reply.text
        );
    }
    gateway.stop().await;
}

/// Alice's header and claims under the signature of Bob's token.
fn forged_signature(rsa: &Signer) -> String {
    let alice = mint(rsa, &claims("alice", "app_user"));
    let bob = mint(rsa, &claims("bob", "app_user"));
    let (signed, _) = alice.rsplit_once('.').unwrap();
    let (_, signature) = bob.rsplit_once('.').unwrap();
    format!("{signed}.{signature}")
}

/// The identity provider rotates its keys: a token signed with a new key is accepted once the
/// gateway has fetched the set again (an unknown `kid` triggers it), with no restart, and the
/// retired key's tokens are refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_a_restart() {
    let old = rs256("old");
    let new = es256("new");
    let jwks = JwksServer::start(&[&old.jwk]).await;
    let db = rls_database().await;
    let (_key, hash) = key("acme");
    let gateway = Gateway::start(&config(&db, &hash, &jwt_tenant(&jwks.url, ""), "")).await;
    let c = &gateway.client;
    let select = "select owner from notes";
    let old_token = mint(&old, &claims("alice", "app_user"));
    let new_token = mint(&new, &claims("bob", "app_user"));
    assert_eq!(owners(&as_user(c, &old_token, select).await), ["alice"]);
    let refused = as_user(c, &new_token, select).await;
    assert_status(&refused, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        refused.text.contains("no key with kid \\\"new\\\""),
        "{}",
        refused.text
    );

    jwks.set(&[&new.jwk]);
    // The unknown kid refetches at most once per cooldown (200 ms here): poll until it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = as_user(c, &new_token, select).await;
        if reply.status == 200 {
            assert_eq!(owners(&reply), ["bob"]);
            break;
        }
        assert!(Instant::now() < deadline, "never accepted: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retired = as_user(c, &old_token, select).await;
    assert_status(&retired, StatusCode::UNAUTHORIZED, "unauthorized");
    // Made-up kids do not turn into a stream of fetches.
    let before = jwks.fetches();
    for i in 0..20 {
        let forged = mint(&es256(&format!("made-up-{i}")), &claims("bob", "app_user"));
        as_user(c, &forged, select).await;
    }
    assert!(
        jwks.fetches() - before <= 3,
        "{} fetches",
        jwks.fetches() - before
    );
    gateway.stop().await;
}

/// Issue 15 asks for the JWKS to be refreshed on a timer too. Before, the set was fetched
/// again only when a token arrived (stale keys, or an unknown `kid`): after a rotation the
/// first token signed with the new key paid for the fetch, and with the set unchanged for
/// longer than the interval nothing was fetched at all. Now a background task fetches every
/// `jwks_refresh_s`, with no token sent, and no faster than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_set_is_refreshed_on_a_timer_without_any_token() {
    let old = rs256("old");
    let new = es256("new");
    let jwks = JwksServer::start(&[&old.jwk]).await;
    let db = rls_database().await;
    let (_key, hash) = key("acme");
    // A long cooldown: a token's unknown kid may not fetch, so only the timer can.
    let tenant = jwt_tenant(&jwks.url, ", jwks_refresh_s = 1")
        .replace("jwks_cooldown_ms = 200", "jwks_cooldown_ms = 600000");
    let gateway = Gateway::start(&config(&db, &hash, &tenant, "")).await;
    let c = &gateway.client;
    let select = "select owner from notes";
    assert_eq!(
        owners(&as_user(c, &mint(&old, &claims("alice", "app_user")), select).await),
        ["alice"]
    );

    jwks.set(&[&old.jwk, &new.jwk]);
    let before = jwks.fetches();
    let wait_for = |count: usize| {
        let jwks = &jwks;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while jwks.fetches() < count {
                assert!(Instant::now() < deadline, "{} fetches", jwks.fetches());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Instant::now()
        }
    };
    let first = wait_for(before + 1).await;
    let second = wait_for(before + 2).await;
    assert!(
        second - first >= Duration::from_millis(800),
        "two background fetches {:?} apart with jwks_refresh_s = 1",
        second - first
    );
    // The new key was fetched before any token needed it: accepted on the first try.
    let reply = as_user(c, &mint(&new, &claims("bob", "app_user")), select).await;
    assert_eq!(owners(&reply), ["bob"]);
    gateway.stop().await;
}

/// The timer belongs to the tenant's key cache: a reload that points the tenant at another
/// JWKS starts a timer for the new set and stops the old one (no fetches from a config that
/// is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stops_the_old_key_sets_timer() {
    let rsa = rs256("r1");
    let (first, second) = (
        JwksServer::start(&[&rsa.jwk]).await,
        JwksServer::start(&[&rsa.jwk]).await,
    );
    let db = rls_database().await;
    let (_key, hash) = key("acme");
    let toml = |url: &str| config(&db, &hash, &jwt_tenant(url, ", jwks_refresh_s = 1"), "");
    let dir = std::env::temp_dir().join(format!("sluice-jwks-reload-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, toml(&first.url)).unwrap();
    let gateway = Gateway::start_file(&path).await;
    let wait_for = |jwks: &JwksServer, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let fetches = jwks.fetches.clone();
        async move {
            while fetches.load(std::sync::atomic::Ordering::SeqCst) < count {
                assert!(Instant::now() < deadline, "never reached {count} fetches");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(&first, 1).await;

    std::fs::write(&path, toml(&second.url)).unwrap();
    gateway.reload.as_ref().unwrap().send(()).await.unwrap();
    wait_for(&second, 1).await;
    let old = first.fetches();
    wait_for(&second, 3).await;
    assert_eq!(
        first.fetches(),
        old,
        "the old set is still fetched after the reload"
    );
    gateway.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user tries to leave state behind on the (only) connection — `reset role`, `set role`,
/// session-level `set_config` of the claims — and the next user's
/// request on that connection still runs as its own role with its own claims and sees only
/// its own rows. `reset role` inside the request only falls back to the authenticator, which
/// owns nothing and inherits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_user_leaves_no_role_or_claims_behind_for_the_next_user() {
    let (gateway, key, db, rsa, _jwks) = end_user_gateway("pool_size = 1").await;
    let c = &gateway.client;
    let alice = app_user(&rsa, "alice");
    let bob = app_user(&rsa, "bob");
    let pid = |reply: &Reply| reply.rows()[0][0].as_i64().unwrap();
    let first = pid(&as_user(c, &bob, "select pg_backend_pid()").await);

    // The session hygiene must hold even where the DBA did not take set_config from end
    // users (see the README): give it back to app_user for the escapes.
    let admin = direct(&db).await;
    let set_config = "function pg_catalog.set_config(text, text, boolean)";
    admin
        .batch_execute(&format!("grant execute on {set_config} to app_user"))
        .await
        .unwrap();
    let escapes = [
        "reset role",
        "set role postgres",
        "set role authenticator",
        "select set_config('request.jwt.claims', '{\"sub\":\"bob\"}', false)",
        "select set_config('request.jwt.claim.sub', 'bob', false)",
        "set session request.jwt.claims = '{\"sub\":\"bob\"}'",
        "select set_config('role', 'web_anon', false)",
    ];
    for escape in escapes {
        as_user(c, &alice, escape).await;
        let seen = as_user(
            c,
            &bob,
            "select owner, current_user::text, current_setting('request.jwt.claim.sub', true), \
             pg_backend_pid() from notes",
        )
        .await;
        assert_eq!(owners(&seen), ["bob"], "after {escape}");
        for row in seen.rows() {
            assert_eq!(row[1], "app_user", "after {escape}: {}", seen.text);
            assert_eq!(row[2], "bob", "after {escape}: {}", seen.text);
            assert_eq!(row[3].as_i64().unwrap(), first, "one connection throughout");
        }
    }
    admin
        .batch_execute(&format!("revoke execute on {set_config} from app_user"))
        .await
        .unwrap();
    // Within her own request, alice cannot become bob either: SET, RESET and DO are
    // refused, and set_config is not hers to call, directly or through SQL a function runs.
    let forgeries = [
        (
            r#"set local request.jwt.claims = '{"sub":"bob"}'"#,
            "forbidden",
        ),
        ("reset role", "forbidden"),
        ("do $$ begin perform 1; end $$", "forbidden"),
        (
            r#"select set_config('request.jwt.claims', '{"sub":"bob"}', true)"#,
            "permission denied",
        ),
        (
            r#"select query_to_xml('select set_config(''request.jwt.claims'', ''{"sub":"bob"}'', true)', true, false, '')"#,
            "permission denied",
        ),
        (
            r#"select query_to_xml('set local request.jwt.claims = ''{"sub":"bob"}''', true, false, '')"#,
            "",
        ),
    ];
    for (forgery, refusal) in forgeries {
        let reply = c
            .post(
                "/v1/batch",
                &alice,
                &json!({ "rowMode": "array", "statements": [
                    { "sql": forgery },
                    { "sql": "select owner from notes" },
                ]}),
            )
            .await;
        if reply.status == 200 {
            let rows = &reply.json()["results"][1]["rows"];
            assert_eq!(rows, &json!([["alice"]]), "{forgery}: {}", reply.text);
        } else {
            assert!(reply.text.contains(refusal), "{forgery}: {}", reply.text);
        }
    }
    // And the tenant's API key afterwards: the authenticator, with no claims.
    let by_key = as_user(
        c,
        &key,
        "select current_user::text, coalesce(current_setting('request.jwt.claims', true), '')",
    )
    .await;
    assert_eq!(
        by_key.rows(),
        [json!(["authenticator", ""])],
        "{}",
        by_key.text
    );
    gateway.stop().await;
}

/// `rate_per_second_per_subject`: one user over their rate gets 429 with Retry-After; another
/// user of the same tenant does not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subject_has_its_own_rate_limit() {
    let (gateway, _key, _db, rsa, _jwks) =
        end_user_gateway("rate_per_second_per_subject = 1").await;
    let c = &gateway.client;
    let alice = app_user(&rsa, "alice");
    let bob = app_user(&rsa, "bob");
    assert_eq!(as_user(c, &alice, "select 1").await.status, 200);
    let limited = as_user(c, &alice, "select 1").await;
    assert_status(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.retry_after().is_some(), "{:?}", limited.headers);
    assert!(
        limited.text.contains("rate_per_second_per_subject"),
        "{}",
        limited.text
    );
    assert_eq!(as_user(c, &bob, "select 1").await.status, 200);
    gateway.stop().await;
}

/// What JWT auth adds per request: the same one-row query, sequentially, with the tenant's API
/// key and with a token (RS256 verification, then role and claims pipelined in front of the
/// statement). Run: `cargo test --test jwt -- --ignored --nocapture added_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn added_latency_of_jwt_auth() {
    let rsa = rs256("r1");
    let es = es256("e1");
    let jwks = JwksServer::start(&[&rsa.jwk, &es.jwk]).await;
    let db = rls_database().await;
    let (key, hash) = key("acme");
    // One connection, so its backend's CPU time is the statements' and nothing else's.
    let tenant = format!(
        "pool_size = 1\nrate_per_second = 100000\nburst = 100000\n{}",
        jwt_tenant(&jwks.url, "")
    );
    let gateway = Gateway::start(&config(&db, &hash, &tenant, "")).await;
    let c = &gateway.client;
    let rs_token = app_user(&rsa, "alice");
    let es_token = mint(&es, &claims("alice", "app_user"));
    let sql = "select pg_backend_pid()";
    const N: u32 = 2000;
    let backend: i32 = c.query(&key, sql, json!([])).await.json()["rows"][0]["pg_backend_pid"]
        .as_i64()
        .unwrap() as i32;
    println!("(wall-clock is noisy on a shared machine; CPU times are the numbers to read)");
    // The API key's batch of one statement is the fair comparison for the transaction part:
    // an end user's query runs as BEGIN, role and claims, the statement, COMMIT.
    let batch = json!({ "statements": [{ "sql": sql }] });
    let query = json!({ "sql": sql });
    for (name, credential, path, body) in [
        ("api key, /v1/query", &key, "/v1/query", &query),
        ("api key, /v1/batch", &key, "/v1/batch", &batch),
        ("RS256, /v1/query", &rs_token, "/v1/query", &query),
        ("ES256, /v1/query", &es_token, "/v1/query", &query),
    ] {
        for _ in 0..50 {
            assert_eq!(c.post(path, credential, body).await.status, 200);
        }
        let (wall, process, postgres) = (Instant::now(), process_cpu(), backend_cpu(backend));
        for _ in 0..N {
            c.post(path, credential, body).await;
        }
        println!(
            "{name}: per request {:?} wall, {:?} CPU in this process (gateway + client), {:?} CPU in the Postgres backend",
            wall.elapsed() / N,
            (process_cpu() - process) / N,
            (backend_cpu(backend) - postgres) / N,
        );
    }
    // Verification alone, in this process (no HTTP, no Postgres).
    let jwks_file =
        std::env::temp_dir().join(format!("sluice-jwks-{}.json", rand::random::<u64>()));
    std::fs::write(
        &jwks_file,
        json!({ "keys": [&rsa.jwk, &es.jwk] }).to_string(),
    )
    .unwrap();
    let policy = sluice::jwt::RawJwt {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: Some(jwks_file.clone()),
        jwks_url: None,
        secret_file: None,
        algorithms: Some(vec!["RS256".into(), "ES256".into()]),
        role_claim: None,
        allowed_roles: vec!["app_user".into()],
        anonymous_role: None,
        leeway_s: None,
        jwks_refresh_s: None,
        jwks_cooldown_ms: None,
    }
    .validate("jwt", std::path::Path::new("."))
    .unwrap();
    let _ = std::fs::remove_file(&jwks_file);
    let cache = sluice::jwt::KeyCache::default();
    for (name, token) in [("RS256", &rs_token), ("ES256", &es_token)] {
        let started = process_cpu();
        for _ in 0..N {
            policy.verify(token, &cache).await.unwrap();
        }
        println!(
            "{name} verification alone: {:?} CPU per token",
            (process_cpu() - started) / N
        );
    }
    gateway.stop().await;
}

/// CPU time of this process so far (user + system).
fn process_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time of a Postgres backend so far, from /proc (user + system, in clock ticks).
fn backend_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}
