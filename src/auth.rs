//! Credentials to tenant: API keys are stored only as SHA-256 digests (`sha256:<hex>` in the
//! config) and a presented key is hashed and looked up, then confirmed with a constant-time
//! comparison.
//!
//! Why a hash-map lookup is safe here: the map is keyed by SHA-256 of the key with a randomly
//! seeded hasher, so the lookup's timing depends on a digest the client cannot steer toward a
//! stored one without a SHA-256 preimage; the final equality check is constant-time. Scanning
//! every stored digest instead would make authentication cost grow with the number of tenants.

use std::fmt;

use base64::Engine;
use rand::Rng;
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The SHA-256 digest of an API key; the only form in which keys are stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of_key(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<KeyHash, String> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            "must look like \"sha256:<64 hex digits>\" (run `sluice key`)".to_owned()
        })?;
        if hex.len() != 64 {
            return Err(format!(
                "must have 64 hex digits after \"sha256:\", found {}",
                hex.len()
            ));
        }
        let mut digest = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let byte = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok());
            digest[i] = byte.ok_or_else(|| format!("\"{hex}\" is not hexadecimal"))?;
        }
        Ok(KeyHash(digest))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell keys apart in a debug dump, not enough to matter.
        write!(f, "sha256:{:02x}{:02x}…", self.0[0], self.0[1])
    }
}

/// A new random API key: 256 bits, URL-safe, with a prefix secret scanners can recognise.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "sluice_sk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Who a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// A tenant, by its index in the config's tenant list.
    Tenant(usize),
    Admin,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("the Authorization header must be `Bearer <key>`")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
}

/// Every key of the current config.
#[derive(Debug, Default)]
pub struct KeyStore {
    /// Keyed by SHA-256 digests, which a client cannot choose: Fx-hashing them is safe.
    keys: FxHashMap<KeyHash, Principal>,
}

impl KeyStore {
    pub fn new(entries: impl IntoIterator<Item = (KeyHash, Principal)>) -> KeyStore {
        KeyStore {
            keys: entries.into_iter().collect(),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let key = strip_bearer(header).ok_or(AuthError::Malformed)?;
        let key = std::str::from_utf8(key).map_err(|_| AuthError::Malformed)?;
        let presented = KeyHash::of_key(key);
        let (stored, principal) = self
            .keys
            .get_key_value(&presented)
            .ok_or(AuthError::Unknown)?;
        if bool::from(stored.0.ct_eq(&presented.0)) {
            Ok(*principal)
        } else {
            Err(AuthError::Unknown)
        }
    }
}

/// The credential of an `Authorization: Bearer …` header, if it is text.
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    std::str::from_utf8(strip_bearer(header)?).ok()
}

/// Whether a bearer credential is a JWT (`header.payload.signature`) rather than an API key
/// (API keys have no dots: `sluice key` makes them URL-safe base64).
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.bytes().filter(|c| *c == b'.').count() == 2
}

fn strip_bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty() && rest.first() == Some(&b' ')).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_their_config_form() {
        let hash = KeyHash::of_key("secret");
        assert_eq!(
            hash.to_string(),
            "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
        assert_eq!(KeyHash::parse(&hash.to_string()).unwrap(), hash);
        assert!(KeyHash::parse("md5:abc").is_err());
        assert!(KeyHash::parse("sha256:abc").is_err());
        assert!(KeyHash::parse(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }

    #[test]
    fn authenticates_bearer_keys() {
        let key = generate_key();
        assert!(key.starts_with("sluice_sk_") && key.len() > 50);
        let store = KeyStore::new([(KeyHash::of_key(&key), Principal::Tenant(3))]);
        let header = format!("Bearer {key}");
        assert_eq!(
            store.authenticate(Some(header.as_bytes())),
            Ok(Principal::Tenant(3))
        );
        assert_eq!(
            store.authenticate(Some(format!("bearer  {key} ").as_bytes())),
            Ok(Principal::Tenant(3))
        );
        assert_eq!(store.authenticate(None), Err(AuthError::Missing));
        assert_eq!(
            store.authenticate(Some(b"Basic abc")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            store.authenticate(Some(b"Bearer ")),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            store.authenticate(Some(b"Bearer nope")),
            Err(AuthError::Unknown)
        );
    }
}
