//! Which browser origins may call the gateway: each tenant's `cors` policy, validated once, and
//! the union of all of them that answers preflights.
//!
//! Why a union for preflights: a preflight (`OPTIONS` with `Access-Control-Request-Method`)
//! carries no credentials, so it cannot name its tenant. It is answered for an origin that
//! *some* tenant allows; the real request then carries its key or token, and
//! `RequestContext::tenant` checks the origin against *that* tenant's policy (403 otherwise).
//! A preflight reveals only that some tenant allows an origin, which the page already knows.
//! The HTTP side (headers, status codes) is in `api::cors`.

use std::collections::HashSet;

use serde::Deserialize;

/// The `cors` table of a tenant, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub origins: Vec<String>,
    pub max_age_s: Option<u64>,
}

/// Browsers cap the preflight cache themselves (Chromium at 2 hours); 10 minutes by default.
pub const DEFAULT_MAX_AGE_S: u64 = 600;

/// A tenant's validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// `*`: any origin (only for tenants without API keys).
    pub any: bool,
    /// Exact origins, lower-cased (`scheme://host[:port]`).
    pub origins: HashSet<String>,
    pub max_age_s: u64,
}

impl RawCors {
    /// `jwt_only`: the tenant has no API keys, so `*` cannot expose a server secret's
    /// responses to every web page.
    pub fn validate(self, key: &str, jwt_only: bool) -> Result<CorsPolicy, String> {
        let RawCors { origins, max_age_s } = self;
        if origins.is_empty() {
            return Err(format!(
                "{key}.origins: list at least one origin (\"https://app.example\")"
            ));
        }
        let mut policy = CorsPolicy {
            any: false,
            origins: HashSet::new(),
            max_age_s: max_age_s.unwrap_or(DEFAULT_MAX_AGE_S),
        };
        for (i, origin) in origins.iter().enumerate() {
            if origin == "*" {
                if !jwt_only {
                    return Err(format!(
                        "{key}.origins[{i}]: \"*\" is allowed only for a tenant that uses JWT auth \
                         alone (no api_keys): an API key in a web page is a leaked key"
                    ));
                }
                policy.any = true;
                continue;
            }
            if !is_origin(origin) {
                return Err(format!(
                    "{key}.origins[{i}]: \"{origin}\" is not an origin; write scheme://host[:port] \
                     with no path or trailing slash"
                ));
            }
            policy.origins.insert(origin.to_ascii_lowercase());
        }
        Ok(policy)
    }
}

impl CorsPolicy {
    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.contains(&origin.to_ascii_lowercase())
    }
}

/// `scheme://host[:port]`, as browsers serialise the `Origin` header.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.')
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-:[]_".contains(&c))
}

/// Every tenant's policy together: what a preflight is answered against.
#[derive(Debug, Default)]
pub struct CorsUnion {
    any: bool,
    origins: HashSet<String>,
    /// The smallest `max_age_s` of the policies, so no tenant's is exceeded.
    max_age_s: u64,
}

impl CorsUnion {
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a CorsPolicy>) -> CorsUnion {
        let mut union = CorsUnion {
            max_age_s: u64::MAX,
            ..CorsUnion::default()
        };
        for policy in policies {
            union.any |= policy.any;
            union.origins.extend(policy.origins.iter().cloned());
            union.max_age_s = union.max_age_s.min(policy.max_age_s);
        }
        if union.max_age_s == u64::MAX {
            union.max_age_s = 0;
        }
        union
    }

    /// Whether some tenant allows `origin`.
    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.contains(&origin.to_ascii_lowercase())
    }

    pub fn max_age_s(&self) -> u64 {
        self.max_age_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(origins: &[&str]) -> RawCors {
        RawCors {
            origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            max_age_s: None,
        }
    }

    #[test]
    fn star_only_without_api_keys_and_origins_are_exact() {
        assert!(raw(&["*"]).validate("cors", false).is_err());
        assert!(
            raw(&["*"])
                .validate("cors", true)
                .unwrap()
                .allows("https://x.example")
        );
        assert!(raw(&["https://a.example/"]).validate("cors", true).is_err());
        assert!(raw(&["a.example"]).validate("cors", true).is_err());
        assert!(raw(&[]).validate("cors", true).is_err());
        let policy = raw(&["https://App.example", "http://127.0.0.1:5173"])
            .validate("cors", false)
            .unwrap();
        assert!(policy.allows("https://app.example"));
        assert!(policy.allows("http://127.0.0.1:5173"));
        assert!(!policy.allows("http://127.0.0.1:5174"));
        assert!(!policy.allows("https://app.example.evil"));
        let union = CorsUnion::new([&policy]);
        assert!(union.allows("https://app.example") && !union.allows("null"));
        assert_eq!(union.max_age_s(), DEFAULT_MAX_AGE_S);
    }
}
