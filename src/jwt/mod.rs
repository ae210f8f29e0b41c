//! End users' JSON Web Tokens: a tenant's `jwt` policy (validated once, with the config), the
//! verification of a presented token (with the `jsonwebtoken` crate) into an [`Identity`],
//! and the SQL that makes that identity the transaction's role and claims.
//!
//! The model is PostgREST's: the tenant's login role is an *authenticator* that owns no data
//! and may only switch into end-user roles; each request runs in a gateway-owned transaction
//! that starts `SET LOCAL ROLE <role claim>` and `set_config('request.jwt.claims', …, true)`,
//! so row-level security policies decide what the user sees. Everything is transaction-local:
//! the commit (or rollback) removes it before the connection serves anyone else, and
//! statements that change the session are followed by the gateway's session reset as for any
//! other request (`pg::sql` classifies them).
//!
//! Refused, each with its reason in the `unauthorized` body: `alg: none`, an algorithm the
//! tenant does not list (so an HS256 token "signed" with an RS256 public key is refused before
//! any key is looked at; HS256 keys come only from `secret_file`, never from a JWKS), a bad
//! signature, `exp`/`nbf` outside the leeway, the wrong `iss` or `aud`, a role claim outside
//! `allowed_roles`.

pub mod jwks;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use self::jwks::KeyCache;

/// The `jwt` table of a tenant, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// HS256's shared secret, read from a file (never inline, never from a JWKS).
    pub secret_file: Option<PathBuf>,
    pub algorithms: Option<Vec<String>>,
    pub role_claim: Option<String>,
    pub allowed_roles: Vec<String>,
    pub anonymous_role: Option<String>,
    pub leeway_s: Option<u64>,
    /// How often a `jwks_url` is fetched again (default 300 s).
    pub jwks_refresh_s: Option<u64>,
    /// The shortest pause between two fetches caused by unknown `kid`s (default 5000 ms), so
    /// tokens with made-up key ids cannot turn the gateway into a JWKS load generator.
    pub jwks_cooldown_ms: Option<u64>,
}

/// Where the verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// Read once with the config (and again on reload).
    Keys(Arc<jwks::KeySet>),
    /// Fetched by the gateway, cached, refreshed on a timer and on an unknown `kid`.
    Url(http::Uri),
}

/// A tenant's validated `jwt` policy.
#[derive(Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub keys: Option<KeySource>,
    /// The HS256 secret, when `secret_file` is set.
    secret: Option<Arc<[u8]>>,
    pub algorithms: Vec<Algorithm>,
    pub role_claim: String,
    pub allowed_roles: Vec<String>,
    pub anonymous_role: Option<String>,
    pub leeway_s: u64,
    pub jwks_refresh: Duration,
    pub jwks_cooldown: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("JwtConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("allowed_roles", &self.allowed_roles)
            .field("anonymous_role", &self.anonymous_role)
            .finish_non_exhaustive()
    }
}

impl PartialEq for JwtConfig {
    /// Configs compare by what they say, not by the keys they loaded (a reload keeps the
    /// key cache only when the policy is unchanged).
    fn eq(&self, other: &JwtConfig) -> bool {
        let source = |c: &JwtConfig| match &c.keys {
            Some(KeySource::Url(url)) => Some(url.to_string()),
            _ => None,
        };
        self.issuer == other.issuer
            && self.audience == other.audience
            && self.algorithms == other.algorithms
            && source(self) == source(other)
            && self.jwks_refresh == other.jwks_refresh
            && self.jwks_cooldown == other.jwks_cooldown
    }
}

impl RawJwt {
    pub fn validate(self, key: &str, base: &Path) -> Result<JwtConfig, String> {
        let RawJwt {
            issuer,
            audience,
            jwks_file,
            jwks_url,
            secret_file,
            algorithms,
            role_claim,
            allowed_roles,
            anonymous_role,
            leeway_s,
            jwks_refresh_s,
            jwks_cooldown_ms,
        } = self;
        if issuer.is_empty() || audience.is_empty() {
            return Err(format!("{key}: issuer and audience must not be empty"));
        }
        let algorithms = algorithms
            .unwrap_or_else(|| vec!["RS256".into()])
            .iter()
            .map(|name| match name.as_str() {
                "RS256" => Ok(Algorithm::RS256),
                "ES256" => Ok(Algorithm::ES256),
                "EdDSA" => Ok(Algorithm::EdDSA),
                "HS256" => Ok(Algorithm::HS256),
                other => Err(format!(
                    "{key}.algorithms: \"{other}\" is not one of RS256, ES256, EdDSA, HS256"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if algorithms.is_empty() {
            return Err(format!("{key}.algorithms: list at least one"));
        }
        let wants_hs256 = algorithms.contains(&Algorithm::HS256);
        let wants_public = algorithms.iter().any(|a| *a != Algorithm::HS256);
        let secret = match (secret_file, wants_hs256) {
            (Some(path), true) => {
                let bytes = std::fs::read(base.join(&path))
                    .map_err(|e| format!("{key}.secret_file {}: {e}", path.display()))?;
                let secret = bytes.trim_ascii();
                if secret.len() < 32 {
                    return Err(format!(
                        "{key}.secret_file: the HS256 secret must be at least 32 bytes"
                    ));
                }
                Some(Arc::from(secret))
            }
            (None, true) => {
                return Err(format!(
                    "{key}: HS256 needs secret_file (its key never comes from a JWKS)"
                ));
            }
            (Some(_), false) => {
                return Err(format!(
                    "{key}.secret_file: only used with HS256 in algorithms"
                ));
            }
            (None, false) => None,
        };
        let keys = match (jwks_file, jwks_url) {
            (Some(_), Some(_)) => {
                return Err(format!("{key}: set jwks_file or jwks_url, not both"));
            }
            (Some(path), None) => {
                let text = std::fs::read(base.join(&path))
                    .map_err(|e| format!("{key}.jwks_file {}: {e}", path.display()))?;
                let set = jwks::KeySet::parse(&text)
                    .map_err(|e| format!("{key}.jwks_file {}: {e}", path.display()))?;
                Some(KeySource::Keys(Arc::new(set)))
            }
            (None, Some(url)) => Some(KeySource::Url(
                jwks::check_url(&url).map_err(|e| format!("{key}.jwks_url: {e}"))?,
            )),
            (None, None) => None,
        };
        if wants_public && keys.is_none() {
            return Err(format!(
                "{key}: RS256, ES256 and EdDSA need jwks_file or jwks_url"
            ));
        }
        let role_claim = role_claim.unwrap_or_else(|| "role".into());
        if allowed_roles.is_empty() {
            return Err(format!("{key}.allowed_roles: list at least one role"));
        }
        for role in allowed_roles.iter().chain(&anonymous_role) {
            if role.is_empty() || role.len() > 63 || role.contains('\0') {
                return Err(format!("{key}: \"{role}\" is not a Postgres role name"));
            }
        }
        let jwks_refresh = Duration::from_secs(jwks_refresh_s.unwrap_or(300).max(1));
        let jwks_cooldown = Duration::from_millis(jwks_cooldown_ms.unwrap_or(5_000).max(100));
        Ok(JwtConfig {
            issuer,
            audience,
            keys,
            secret,
            algorithms,
            role_claim,
            allowed_roles,
            anonymous_role,
            leeway_s: leeway_s.unwrap_or(30),
            jwks_refresh,
            jwks_cooldown,
        })
    }
}

/// Who an end-user request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: String,
    /// The verified claims as JSON (`{}`-like for an anonymous request).
    pub claims: String,
    /// The `sub` claim; `None` when anonymous or absent.
    pub subject: Option<String>,
}

impl Identity {
    pub fn anonymous(role: &str) -> Identity {
        Identity {
            role: role.to_owned(),
            claims: serde_json::json!({ "role": role }).to_string(),
            subject: None,
        }
    }

    /// The SQL that opens a request's transaction as this identity: `begin` (the route's
    /// `BEGIN …`), then the role and claims, all transaction-local — one message, answered in
    /// the same round trip as the statements pipelined behind it. Names are quoted and
    /// values are literals (`standard_conforming_strings` is fixed on by the gateway), and
    /// every function is schema-qualified so a role's `search_path` cannot intercept them.
    pub fn begin_sql(&self, begin: &str) -> String {
        let mut sql = String::with_capacity(begin.len() + self.claims.len() + 160);
        sql.push_str(begin);
        // The claims first, as the authenticator: end-user roles may have no EXECUTE on
        // set_config (so they cannot rewrite their claims).
        sql.push_str("; SELECT pg_catalog.set_config('request.jwt.claims', ");
        push_literal(&mut sql, &self.claims);
        sql.push_str(", true), pg_catalog.set_config('request.jwt.claim.sub', ");
        push_literal(&mut sql, self.subject.as_deref().unwrap_or(""));
        sql.push_str(", true); SET LOCAL ROLE ");
        push_identifier(&mut sql, &self.role);
        sql
    }
}

fn push_identifier(sql: &mut String, name: &str) {
    sql.push('"');
    sql.push_str(&name.replace('"', "\"\""));
    sql.push('"');
}

fn push_literal(sql: &mut String, value: &str) {
    sql.push('\'');
    // NUL cannot reach Postgres; claims are serde_json output, which escapes it.
    sql.push_str(&value.replace('\0', "").replace('\'', "''"));
    sql.push('\'');
}

/// Why a token was refused (the text goes to the client: it names the problem, never a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

fn refuse(reason: impl Into<String>) -> TokenError {
    TokenError(reason.into())
}

/// A token's header and payload read without verification, only to route it to a tenant and
/// to name what is wrong with it.
pub struct Unverified {
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub issuer: Option<String>,
}

impl Unverified {
    pub fn peek(token: &str) -> Result<Unverified, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse(
                "malformed token: a JWT has three dot-separated parts",
            ));
        };
        let decode = |part: &str| -> Option<Map<String, Value>> {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .ok()?;
            serde_json::from_slice(&bytes).ok()
        };
        let header = decode(header).ok_or_else(|| refuse("malformed token header"))?;
        let payload = decode(payload).ok_or_else(|| refuse("malformed token payload"))?;
        let text = |map: &Map<String, Value>, name: &str| {
            map.get(name).and_then(Value::as_str).map(str::to_owned)
        };
        Ok(Unverified {
            alg: text(&header, "alg"),
            kid: text(&header, "kid"),
            issuer: text(&payload, "iss"),
        })
    }
}

impl JwtConfig {
    /// Checks `token` against this policy with `key_for` (the tenant's key cache) and returns
    /// who it speaks for.
    pub async fn verify(&self, token: &str, cache: &KeyCache) -> Result<Identity, TokenError> {
        let peeked = Unverified::peek(token)?;
        let alg_name = peeked.alg.as_deref().unwrap_or("");
        if alg_name.eq_ignore_ascii_case("none") || alg_name.is_empty() {
            return Err(refuse("alg \"none\" is refused: tokens must be signed"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refuse(format!("algorithm \"{alg_name}\" is not supported")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(refuse(format!(
                "algorithm {:?} is not accepted by this tenant (jwt.algorithms: {:?})",
                header.alg, self.algorithms
            )));
        }
        let key: Arc<DecodingKey> = if header.alg == Algorithm::HS256 {
            let secret = self
                .secret
                .as_ref()
                .ok_or_else(|| refuse("HS256 is not configured"))?;
            Arc::new(DecodingKey::from_secret(secret))
        } else {
            cache
                .key_for(self, header.kid.as_deref(), header.alg)
                .await?
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| refuse(describe(e.kind(), self)))?;
        let claims = data.claims;
        let role = claims
            .get(&self.role_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                refuse(format!(
                    "the token has no \"{}\" claim naming its role",
                    self.role_claim
                ))
            })?;
        if !self.allowed_roles.iter().any(|r| r == role) {
            return Err(refuse(format!(
                "role \"{role}\" is not in the tenant's jwt.allowed_roles"
            )));
        }
        Ok(Identity {
            role: role.to_owned(),
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            claims: Value::Object(claims.clone()).to_string(),
        })
    }
}

fn describe(kind: &ErrorKind, config: &JwtConfig) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired (exp)".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => format!("wrong issuer (iss): expected \"{}\"", config.issuer),
        ErrorKind::InvalidAudience => {
            format!("wrong audience (aud): expected \"{}\"", config.audience)
        }
        ErrorKind::InvalidSignature => "invalid signature".into(),
        ErrorKind::InvalidAlgorithm => "the algorithm does not match the key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no \"{claim}\" claim"),
        _ => "malformed token".into(),
    }
}

/// The tenant a token or an anonymous request is for. `tenant_header` is the optional
/// `Sluice-Tenant` header; `policies` are the tenants' (index, policy) with a `jwt` table.
pub fn route<'a>(
    policies: impl Iterator<Item = (usize, &'a str, &'a JwtConfig)>,
    tenant_header: Option<&str>,
    issuer: Option<&str>,
) -> Result<usize, TokenError> {
    let mut found = None;
    for (index, id, policy) in policies {
        if tenant_header.is_some_and(|wanted| wanted != id) {
            continue;
        }
        let fits = match issuer {
            Some(issuer) => policy.issuer == issuer,
            None => policy.anonymous_role.is_some(),
        };
        if fits {
            if found.is_some() {
                return Err(refuse(
                    "several tenants accept this token; name one with the Sluice-Tenant header",
                ));
            }
            found = Some(index);
        }
    }
    found.ok_or_else(|| match (issuer, tenant_header) {
        (Some(issuer), _) => refuse(format!("no tenant accepts tokens from issuer \"{issuer}\"")),
        (None, Some(id)) => refuse(format!(
            "tenant \"{id}\" takes no anonymous requests: send `Authorization: Bearer <token>`"
        )),
        (None, None) => refuse("missing credentials: send `Authorization: Bearer <token>`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_sql_quotes_names_and_values() {
        let identity = Identity {
            role: "we\"ird".into(),
            claims: r#"{"sub":"o'brien"}"#.into(),
            subject: Some("o'brien".into()),
        };
        assert_eq!(
            identity.begin_sql("BEGIN"),
            "BEGIN; SELECT pg_catalog.set_config('request.jwt.claims', \
             '{\"sub\":\"o''brien\"}', true), pg_catalog.set_config('request.jwt.claim.sub', \
             'o''brien', true); SET LOCAL ROLE \"we\"\"ird\""
        );
    }

    #[test]
    fn peeks_at_alg_and_issuer_and_refuses_garbage() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"iss":"i"}"#));
        let peeked = Unverified::peek(&token).unwrap();
        assert_eq!(peeked.alg.as_deref(), Some("none"));
        assert_eq!(peeked.issuer.as_deref(), Some("i"));
        assert!(Unverified::peek("a.b").is_err());
        assert!(Unverified::peek("a.b.c.d").is_err());
        assert!(Unverified::peek("!!.??.x").is_err());
    }
}
