//! Helpers for end-user tests (tests/jwt.rs, tests/browser.rs): a loopback JWKS server whose
//! keys the test can rotate, signing keys, token minting, and a database with an
//! authenticator role and a row-level-security table.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "sluice-test";
pub const AUTHENTICATOR_PASSWORD: &str = "authenticator-test-password";

/// A key the test signs with, and its public JWK.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub key: EncodingKey,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub const RS256_PRIVATE: &str = include_str!("../jwt_keys/rs256_private.pem");
pub const RS256_PUBLIC: &str = include_str!("../jwt_keys/rs256_public.pem");

/// The fixed RSA test key.
pub fn rs256(kid: &str) -> Signer {
    Signer {
        kid: kid.into(),
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap(),
        jwk: json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": include_str!("../jwt_keys/rs256_modulus.b64url").trim(), "e": "AQAB",
        }),
    }
}

/// A fresh P-256 key.
pub fn es256(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    Signer {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
        }),
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `sub` as `role`, valid for an hour.
pub fn claims(sub: &str, role: &str) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "role": role, "exp": now() + 3600, "iat": now() })
}

pub fn mint(signer: &Signer, claims: &Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

/// An unsigned token (`alg: none`), as an attacker would write it.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// A JWKS served over plain HTTP on loopback; `set` rotates the keys.
pub struct JwksServer {
    pub url: String,
    keys: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(jwks: &[&Value]) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let keys = Arc::new(Mutex::new(json!({ "keys": jwks })));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, count) = (keys.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let body = served.lock().unwrap().to_string();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        JwksServer {
            url,
            keys,
            fetches,
            task,
        }
    }

    pub fn set(&self, jwks: &[&Value]) {
        *self.keys.lock().unwrap() = json!({ "keys": jwks });
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The README's setup, in a fresh database: an authenticator (NOINHERIT, owns nothing) that
/// may become `app_user` or `web_anon`, and a `notes` table whose policies let each user see
/// and change only their own rows, and anonymous visitors only the public ones. Roles are
/// cluster-wide, so they are created once per test binary's cluster.
pub async fn rls_database() -> String {
    let roles = format!(
        "do $$ begin
           if not exists (select from pg_roles where rolname = 'authenticator') then
             create role authenticator login noinherit password '{AUTHENTICATOR_PASSWORD}';
             create role app_user nologin;
             create role web_anon nologin;
             grant app_user, web_anon to authenticator;
           end if;
         end $$"
    );
    let setup = "
        create table notes (
          id serial primary key,
          owner text not null default current_setting('request.jwt.claims', true)::jsonb ->> 'sub',
          body text not null
        );
        alter table notes enable row level security;
        grant select, insert, update, delete on notes to app_user;
        grant usage on sequence notes_id_seq to app_user;
        grant select on notes to web_anon;
        create policy own_notes on notes to app_user
          using (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')
          with check (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
        create policy public_notes on notes for select to web_anon using (owner = 'public');
        -- End users must not rewrite their claims: set_config is the authenticator's only.
        revoke execute on function pg_catalog.set_config(text, text, boolean) from public;
        grant execute on function pg_catalog.set_config(text, text, boolean) to authenticator;
        insert into notes (owner, body) values ('alice', 'alice 1'), ('bob', 'bob 1'), ('public', 'hello');
    ";
    // Once per binary (and its cluster): tests run in parallel.
    static ROLES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ROLES
        .get_or_init(|| async {
            crate::common::direct("postgres")
                .await
                .batch_execute(&roles)
                .await
                .unwrap();
        })
        .await;
    let db = crate::common::database("").await;
    let client = crate::common::direct(&db).await;
    client.batch_execute(setup).await.unwrap();
    client
        .batch_execute(&format!("grant connect on database {db} to authenticator"))
        .await
        .unwrap();
    db
}

/// Tenant lines: log in as the authenticator, take tokens from `jwks_url`.
pub fn jwt_tenant(jwks_url: &str, extra_jwt: &str) -> String {
    format!(
        r#"user = "authenticator"
        password = "{AUTHENTICATOR_PASSWORD}"
        jwt = {{ issuer = "{ISSUER}", audience = "{AUDIENCE}", jwks_url = "{jwks_url}", algorithms = ["RS256", "ES256"], allowed_roles = ["app_user"], anonymous_role = "web_anon", jwks_cooldown_ms = 200 {extra_jwt} }}"#
    )
}

/// A token for `sub` as `app_user`, signed by `signer`.
pub fn app_user(signer: &Signer, sub: &str) -> String {
    mint(signer, &claims(sub, "app_user"))
}

/// The common start of an end-user test (as `gateway_for` is of others): an RS256 key `r1`
/// served by a JWKS server, the row-level-security database, and a gateway whose tenant
/// `acme` (with `tenant_extra`'s lines) logs in as the authenticator and takes tokens signed
/// by that key. Gateway, tenant key, database, signing key, and the JWKS server (keep it bound
/// while the gateway runs).
pub async fn end_user_gateway(
    tenant_extra: &str,
) -> (crate::common::Gateway, String, String, Signer, JwksServer) {
    let rsa = rs256("r1");
    let jwks = JwksServer::start(&[&rsa.jwk]).await;
    let db = rls_database().await;
    let (key, hash) = crate::common::key("acme");
    let tenant = format!("{tenant_extra}\n{}", jwt_tenant(&jwks.url, ""));
    let toml = crate::common::config(&db, &hash, &tenant, "");
    (
        crate::common::Gateway::start(&toml).await,
        key,
        db,
        rsa,
        jwks,
    )
}
