//! Issue 11, item 6: the type registry cannot be poisoned across tenants. Two tenants share one
//! database as different roles; one plants its own `=` operator in `public` and puts `public`
//! ahead of `pg_catalog` in its `search_path`, which once made the gateway's type lookup run the
//! tenant's code and store a forged entry that then encoded the *other* tenant's responses.

mod common;

use common::*;
use serde_json::{Value, json};

/// Two tenants on one database, `evil` and `victim`, each logging in as its own role.
struct TwoTenants {
    gateway: Gateway,
    evil: String,
    victim: String,
    db: String,
}

async fn two_tenants(setup: &str) -> TwoTenants {
    let suffix = format!("{}_{:08x}", std::process::id(), rand::random::<u32>());
    let (evil_role, victim_role) = (format!("evil_{suffix}"), format!("victim_{suffix}"));
    let roles = format!(
        "create role {evil_role} login password 'evil-pw'; \
         create role {victim_role} login password 'victim-pw';"
    );
    direct("postgres")
        .await
        .batch_execute(&roles)
        .await
        .unwrap();
    let db = database(&format!(
        "grant create on schema public to {evil_role}; \
         create domain public.label as text; \
         create table public.notes (id int, body public.label[]); \
         insert into public.notes values (1, array['{{\"n\":1, \"injected\": true}}']); \
         grant select on public.notes to {victim_role}; \
         {setup}"
    ))
    .await;
    let (evil, evil_hash) = key("evil");
    let (victim, victim_hash) = key("victim");
    let toml = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"

        [[upstreams]]
        name = "main"
        url = "{url}"
        max_connections = 10

        [[tenants]]
        id = "evil"
        api_keys = ["{evil_hash}"]
        user = "{evil_role}"
        password = "evil-pw"
        pool_size = 2

        [[tenants]]
        id = "victim"
        api_keys = ["{victim_hash}"]
        user = "{victim_role}"
        password = "victim-pw"
        pool_size = 2
        "#,
        url = pg_url(&db),
    );
    TwoTenants {
        gateway: Gateway::start(&toml).await,
        evil,
        victim,
        db,
    }
}

/// The OID of `label[]` (Postgres describes a domain column as its base type, an array of a
/// domain as the domain's array type).
async fn label_array_oid(db: &str) -> i64 {
    direct(db)
        .await
        .query_one("select 'public.label[]'::regtype::oid::int8", &[])
        .await
        .unwrap()
        .get(0)
}

/// In an interactive transaction of the evil tenant: `stmts` run in order, each must succeed.
async fn in_transaction(c: &Client, key: &str, stmts: &[&str]) -> String {
    let begin = c.post("/v1/transactions", key, &json!({})).await;
    assert_eq!(begin.status, 201, "{}", begin.text);
    let id = begin.json()["id"].as_str().unwrap().to_owned();
    for sql in stmts {
        let reply = c
            .post(
                &format!("/v1/transactions/{id}/query"),
                key,
                &json!({ "sql": sql }),
            )
            .await;
        assert_eq!(reply.status, 200, "{sql}: {}", reply.text);
    }
    id
}

/// Bug: a tenant's `public.=` on `oid` (found first through its `search_path`) ran inside the
/// gateway's type lookup; the forged row said the elements of `label[]` were `json`, the
/// registry was shared by every tenant of the database, and the other tenant's text came back
/// as objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_operator_cannot_forge_types_another_tenant_is_encoded_by() {
    let t = two_tenants("").await;
    let c = &t.gateway.client;
    let label_array = label_array_oid(&t.db).await;
    // For `x = label` the forged `=` answers "x is json": the element type of `label[]` (looked
    // up as `e.oid = b.typelem`) becomes json.
    let id = in_transaction(
        c,
        &t.evil,
        &[
            "create function public.evil_eq(oid, oid) returns bool language sql immutable as \
             $$ select case when $2 operator(pg_catalog.=) 'public.label'::pg_catalog.regtype \
             then $1 operator(pg_catalog.=) 114::oid else $1 operator(pg_catalog.=) $2 end $$",
            "create operator public.= (leftarg = oid, rightarg = oid, function = public.evil_eq)",
            "set local search_path = public, pg_catalog",
        ],
    )
    .await;
    let evil_view = c
        .post(
            &format!("/v1/transactions/{id}/query"),
            &t.evil,
            &json!({ "sql": "select array['{\"evil\": 1}']::public.label[] as v" }),
        )
        .await;
    assert_eq!(evil_view.status, 200, "{}", evil_view.text);
    assert_eq!(
        evil_view.json()["rows"],
        json!([{ "v": ["{\"evil\": 1}"] }]),
        "the lookup ignores the tenant's operator even in the tenant's own session"
    );
    let commit = c
        .post(
            &format!("/v1/transactions/{id}/commit"),
            &t.evil,
            &json!({}),
        )
        .await;
    assert_eq!(commit.status, 200, "{}", commit.text);

    let reply = c
        .query(&t.victim, "select body from public.notes", json!([]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let expected = json!({
        "command": "SELECT",
        "rowCount": 1,
        "fields": [{ "name": "body", "oid": label_array, "type": "_label" }],
        "rows": [{ "body": ["{\"n\":1, \"injected\": true}"] }],
    });
    assert_eq!(reply.json(), expected, "{}", reply.text);
    t.gateway.stop().await;
}

/// Bug: the same trick with an operator that raises made every lookup of a new type answer 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_raising_operator_does_not_break_type_lookups() {
    let t = two_tenants("create type public.mood as enum ('ok', 'sad');").await;
    let c = &t.gateway.client;
    let id = in_transaction(
        c,
        &t.evil,
        &[
            "create function public.boom(oid, oid) returns bool language plpgsql immutable as \
             $$ begin raise exception 'boom'; end $$",
            "create operator public.= (leftarg = oid, rightarg = oid, function = public.boom)",
            "set local search_path = public, pg_catalog",
        ],
    )
    .await;
    let reply = c
        .post(
            &format!("/v1/transactions/{id}/query"),
            &t.evil,
            &json!({ "sql": "select 'sad'::public.mood as m" }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["rows"], json!([{ "m": "sad" }]));
    assert_eq!(reply.json()["fields"][0]["type"], "mood");
    t.gateway.stop().await;
}

/// Bug: a failure of the gateway's own catalog query (here: the role may not read `pg_type`)
/// answered 500 `internal`; it is the database refusing, not a bug: 503 `upstream_unavailable`
/// with a Retry-After, and the statement did not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_type_lookup_is_upstream_unavailable_not_internal() {
    let t = two_tenants("revoke select on pg_catalog.pg_type from public;").await;
    let reply = t
        .gateway
        .client
        .query(&t.victim, "select body from public.notes", json!([]))
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.kind(), "upstream_unavailable");
    assert!(reply.retry_after().is_some());
    assert!(!reply.text.contains("pg_type"), "{}", reply.text);
    // Built-in types need no lookup: the tenant is otherwise served.
    let plain = t
        .gateway
        .client
        .query(&t.victim, "select id from public.notes", json!([]))
        .await;
    assert_eq!(plain.rows(), vec![json!({ "id": 1 }) as Value]);
    t.gateway.stop().await;
}
