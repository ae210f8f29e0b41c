//! What a Neon client sends to `POST /sql`: the body (one query, or a batch of them), the
//! `Neon-*` headers that choose the output and the batch's transaction, and the
//! `Neon-Connection-String` that carries the credentials. Parsing only; nothing here touches a
//! connection.

use std::borrow::Cow;

use http::HeaderName;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::batch::Isolation;
use crate::api::error::ApiError;
use crate::api::head::Headers;

pub const CONNECTION_STRING: HeaderName = HeaderName::from_static("neon-connection-string");
pub const RAW_TEXT_OUTPUT: HeaderName = HeaderName::from_static("neon-raw-text-output");
pub const ARRAY_MODE: HeaderName = HeaderName::from_static("neon-array-mode");
pub const ISOLATION_LEVEL: HeaderName = HeaderName::from_static("neon-batch-isolation-level");
pub const READ_ONLY: HeaderName = HeaderName::from_static("neon-batch-read-only");
pub const DEFERRABLE: HeaderName = HeaderName::from_static("neon-batch-deferrable");

/// The body: `{"query", "params", "arrayMode"}`, or `{"queries": [those]}`. Unknown fields are
/// ignored, as Neon ignores them, so a newer driver sending something more still works.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<'a> {
    #[serde(borrow, default)]
    pub query: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<Vec<&'a RawValue>>,
    pub array_mode: Option<bool>,
    #[serde(borrow, default)]
    pub queries: Option<Vec<QueryData<'a>>>,
}

/// One query of a batch.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryData<'a> {
    #[serde(borrow)]
    pub query: Cow<'a, str>,
    #[serde(borrow, default)]
    pub params: Vec<&'a RawValue>,
    pub array_mode: Option<bool>,
}

/// The body, told apart.
pub enum Request<'a> {
    Single(QueryData<'a>),
    Batch(Vec<QueryData<'a>>),
}

impl<'a> Payload<'a> {
    pub fn into_request(self) -> Result<Request<'a>, ApiError> {
        match (self.query, self.queries) {
            (Some(query), None) => Ok(Request::Single(QueryData {
                query,
                params: self.params.unwrap_or_default(),
                array_mode: self.array_mode,
            })),
            (None, Some(queries)) if self.params.is_none() => Ok(Request::Batch(queries)),
            (None, Some(_)) => Err(ApiError::BadRequest(
                "`params` belongs inside each of `queries`".into(),
            )),
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "send either `query` (one statement) or `queries` (a batch), not both".into(),
            )),
            (None, None) => Err(ApiError::BadRequest(
                "send `query` (with `params`) or `queries`: [{\"query\", \"params\"}, …]".into(),
            )),
        }
    }
}

/// The `Neon-*` options, read as Neon reads them: a switch is on only when its header is
/// exactly `true`; an isolation level that is not one of the four names is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `Neon-Raw-Text-Output: true`: every value as Postgres's text output (a JSON string).
    pub raw_text: bool,
    /// `Neon-Array-Mode: true`: rows as arrays unless a query says otherwise (`arrayMode`).
    pub array_mode: bool,
    pub isolation: Option<Isolation>,
    pub read_only: bool,
    pub deferrable: bool,
}

impl Options {
    pub fn of(headers: &Headers) -> Result<Options, ApiError> {
        let on = |name: &HeaderName| headers.get(name).is_some_and(|v| v == b"true");
        let isolation = match headers.get(&ISOLATION_LEVEL) {
            None => None,
            Some(b"Serializable") => Some(Isolation::Serializable),
            Some(b"RepeatableRead") => Some(Isolation::RepeatableRead),
            Some(b"ReadCommitted") => Some(Isolation::ReadCommitted),
            Some(b"ReadUncommitted") => Some(Isolation::ReadUncommitted),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "invalid isolation level: Neon-Batch-Isolation-Level must be Serializable, \
                     RepeatableRead, ReadCommitted or ReadUncommitted"
                        .into(),
                ));
            }
        };
        Ok(Options {
            raw_text: on(&RAW_TEXT_OUTPUT),
            array_mode: on(&ARRAY_MODE),
            isolation,
            read_only: on(&READ_ONLY),
            deferrable: on(&DEFERRABLE),
        })
    }
}

/// `postgres[ql]://<user>[:<password>]@<host>[:<port>]/<database>[?…]`, the parts sluice
/// uses: the user names the tenant, the password is its API key, the database must be the
/// tenant's. The host, port and query parameters (`sslmode`, `application_name`, …) mean
/// nothing to a gateway already reached, and are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub user: String,
    pub password: Option<String>,
    pub database: Option<String>,
}

impl ConnectionString {
    pub fn parse(text: &str) -> Result<ConnectionString, String> {
        let rest = text
            .strip_prefix("postgresql://")
            .or_else(|| text.strip_prefix("postgres://"))
            .ok_or("must start with postgresql:// (or postgres://)")?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, _host) = authority
            .rsplit_once('@')
            .ok_or("has no user: postgresql://<tenant>:<api key>@<host>/<database>")?;
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        let decode = |part: &str| crate::config::percent_decode(part);
        let user = decode(user)?;
        if user.is_empty() {
            return Err("has no user: postgresql://<tenant>:<api key>@<host>/<database>".into());
        }
        let password = password.map(decode).transpose()?;
        let database = decode(path.split('/').next().unwrap_or_default())?;
        Ok(ConnectionString {
            user,
            password: password.filter(|p| !p.is_empty()),
            database: (!database.is_empty()).then_some(database),
        })
    }

    /// The `Neon-Connection-String` header, if sent; `Err` when it is not a connection string.
    pub fn of(headers: &Headers) -> Result<Option<ConnectionString>, ApiError> {
        if !headers.contains(&CONNECTION_STRING) {
            return Ok(None);
        }
        let text = headers.get_str(&CONNECTION_STRING).ok_or_else(|| {
            ApiError::BadRequest("Neon-Connection-String is not ASCII text".into())
        })?;
        ConnectionString::parse(text)
            .map(Some)
            .map_err(|reason| ApiError::BadRequest(format!("Neon-Connection-String {reason}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn connection_strings_give_user_password_and_database() {
        let parsed = ConnectionString::parse(
            "postgresql://acme:sluice_sk_a%2Fb@gw.example:443/app?sslmode=require&application_name=x",
        )
        .unwrap();
        assert_eq!(parsed.user, "acme");
        assert_eq!(parsed.password.as_deref(), Some("sluice_sk_a/b"));
        assert_eq!(parsed.database.as_deref(), Some("app"));

        let bare = ConnectionString::parse("postgres://acme@host").unwrap();
        assert_eq!((bare.password, bare.database), (None, None));
        // A password may hold an unescaped `@`: the host follows the last one.
        let at = ConnectionString::parse("postgres://u:p@ss@host/db").unwrap();
        assert_eq!(at.password.as_deref(), Some("p@ss"));

        for bad in [
            "mysql://u:p@h/d",
            "postgresql://host/db",
            "postgresql://:key@host/db",
            "postgresql://u:%zz@host/db",
            "postgresql://u:%ff@host/db",
        ] {
            assert!(ConnectionString::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn switches_are_on_only_when_exactly_true() {
        let mut headers = HeaderMap::new();
        headers.insert(RAW_TEXT_OUTPUT, HeaderValue::from_static("true"));
        headers.insert(ARRAY_MODE, HeaderValue::from_static("True"));
        headers.insert(READ_ONLY, HeaderValue::from_static("1"));
        headers.insert(DEFERRABLE, HeaderValue::from_static("true"));
        headers.insert(ISOLATION_LEVEL, HeaderValue::from_static("RepeatableRead"));
        let options = Options::of(&Headers::from(headers.clone())).unwrap();
        assert_eq!(
            options,
            Options {
                raw_text: true,
                array_mode: false,
                isolation: Some(Isolation::RepeatableRead),
                read_only: false,
                deferrable: true,
            }
        );
        headers.insert(ISOLATION_LEVEL, HeaderValue::from_static("serializable"));
        assert!(Options::of(&Headers::from(headers.clone())).is_err());
    }
}
