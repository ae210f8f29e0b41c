//! What a handler knows of the request it serves ([`RequestContext`]): the tenant its key (or
//! end user's token) resolves to, admitted under its rate limits; its body, read within the
//! size, time and memory limits; the request id; and the JSON decoding of request bodies.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;

use super::error::ApiError;
use super::head::Headers;
use super::memory::{MEMORY_WAIT, MemoryLease};
use super::{App, Generation, batch, cors, end_user, neon, query};
use crate::auth::Principal;

pub use crate::tenant::Tenant;

/// What the per-request log line reports.
#[derive(Debug, Default)]
pub struct RequestLog {
    /// The tenant the request ran as: its index in the request's generation (the line shows
    /// its id).
    pub tenant: Option<usize>,
    /// The transaction's id, shortened (never logged in full).
    pub transaction: Option<String>,
    pub queue_wait: Option<Duration>,
    pub exec: Option<Duration>,
    pub rows: u64,
}

/// Everything a handler needs about the request it serves.
pub struct RequestContext<'r> {
    pub app: &'r App,
    pub generation: &'r Generation,
    pub headers: &'r Headers,
    pub peer: IpAddr,
    pub max_response_bytes: usize,
    pub log: RequestLog,
    /// What this request holds of the gateway's memory budget: its body, then its response.
    pub memory: Option<MemoryLease>,
    /// An end user's token, verified before routing (see [`end_user`]).
    pub end_user: end_user::EndUser,
    /// Set by a route that runs end users' statements as their role and claims
    /// (`end_user::begin_for`, `end_user::check_sql`); other routes refuse their tokens rather
    /// than run them as the tenant's login role.
    pub accepts_end_users: bool,
}

impl RequestContext<'_> {
    /// A connection from `tenant`'s pool (or its queue); the time spent waiting for it goes
    /// to the request log.
    pub async fn checkout(&mut self, tenant: &Tenant) -> Result<crate::pool::Checkout, ApiError> {
        let waited = std::time::Instant::now();
        let conn = tenant.pool.checkout_from(waited).await?;
        self.log.queue_wait = Some(conn.checked_out_at().saturating_duration_since(waited));
        Ok(conn)
    }

    /// The tenant whose key the request carries, admitted under its rate limit; admin keys
    /// are not tenants.
    pub fn tenant(&mut self) -> Result<Tenant, ApiError> {
        let (principal, end_user) = match &self.end_user {
            end_user::EndUser::NotApplicable => (self.principal()?, None),
            end_user::EndUser::Verified { .. } if !self.accepts_end_users => {
                return Err(ApiError::Forbidden(
                    "this route does not take end users' tokens: use /v1/query, /v1/batch or \
                     /v1/transactions"
                        .into(),
                ));
            }
            end_user::EndUser::Verified { tenant, identity } => {
                (Principal::Tenant(*tenant), Some(identity.clone()))
            }
            end_user::EndUser::Refused(reason) => {
                self.app.metrics.auth_failures.inc();
                return Err(ApiError::Unauthorized(reason.clone()));
            }
        };
        match principal {
            Principal::Tenant(index) => {
                let config = self.generation.config.tenants[index].clone();
                cors::check_origin(self.headers, &config)?;
                self.log.tenant = Some(index);
                // In cluster mode, this replica's share of the rate (crate::admission).
                let replicas = self.generation.pools.tenant(index).cluster_members();
                if let Err(retry_after) = self.generation.rates[index].check_among(replicas) {
                    let label = crate::metrics::TenantLabel {
                        tenant: config.id.clone(),
                    };
                    self.app.metrics.rate_limited.get_or_create(&label).inc();
                    return Err(ApiError::RateLimited {
                        retry_after,
                        reason: "the tenant's request rate limit is exceeded; retry after Retry-After",
                    });
                }
                if let (Some(rates), Some(subject)) = (
                    &self.generation.subject_rates[index],
                    end_user.as_ref().and_then(|e| e.subject.as_deref()),
                ) && let Err(retry_after) = rates.check(subject)
                {
                    let label = crate::metrics::TenantLabel {
                        tenant: config.id.clone(),
                    };
                    self.app.metrics.rate_limited.get_or_create(&label).inc();
                    return Err(ApiError::RateLimited {
                        retry_after,
                        reason: "the end user's request rate limit (rate_per_second_per_subject) \
                                 is exceeded; retry after Retry-After",
                    });
                }
                Ok(Tenant {
                    index,
                    config,
                    pool: self.generation.pools.tenant(index).clone(),
                    end_user,
                })
            }
            Principal::Admin => Err(ApiError::Forbidden(
                "an admin key cannot run SQL; use a tenant's key".into(),
            )),
        }
    }

    /// Who the key belongs to. An address with too many failed attempts gets 429 whatever
    /// key it sends, so guessing cannot go on.
    pub(crate) fn principal(&self) -> Result<Principal, ApiError> {
        let blocked = |retry_after| ApiError::RateLimited {
            retry_after,
            reason: "too many failed authentications from this address; retry after Retry-After",
        };
        let failures = &self.generation.auth_failures;
        if let Some(wait) = failures.blocked_for(self.peer) {
            return Err(blocked(wait));
        }
        let header = self.headers.get(&http::header::AUTHORIZATION);
        self.generation.keys.authenticate(header).map_err(|error| {
            self.app.metrics.auth_failures.inc();
            match failures.record_failure(self.peer) {
                Some(wait) => blocked(wait),
                None => ApiError::Unauthorized(error.to_string()),
            }
        })
    }
}

/// A request body as the server hands it over: hyper's, or hyper's wrapped by the connection
/// (which watches for its end).
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where
    B: http_body::Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin + 'static
{
}

/// How much of a refused (too large) body is still read and dropped, and for how long, so the
/// client — still sending — receives the 413 instead of a connection reset. Beyond these, the
/// connection is simply closed.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the request body within `max_body_bytes` (checked while reading, so an oversized
/// body is refused without being buffered), the body read timeout and the gateway's memory
/// budget: the declared length is reserved before reading (a chunked body's bytes as they
/// come), waiting up to [`MEMORY_WAIT`] for others to release.
///
/// A body that is already whole (the fast path's always, hyper's when it came with the
/// headers) and fits the budget now is taken at once. Anything else — a body still arriving,
/// one declared too large, a budget that is short — is read by [`read_body_slowly`], boxed:
/// its timers, waits and drain are a kilobyte and a half of state that every request's
/// future would otherwise carry and move (issue 17).
pub(super) async fn read_body<B: RequestBody>(
    ctx: &mut RequestContext<'_>,
    mut incoming: B,
) -> Result<Bytes, ApiError> {
    let limit = ctx.generation.config.server.max_body_bytes;
    let declared = ctx
        .headers
        .get_str(&http::header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok());
    let mut first = None;
    if declared.is_none_or(|length| length <= limit as u64) {
        let lease = ctx
            .memory
            .as_mut()
            .expect("the lease lives until the response");
        let reserved = declared.unwrap_or(0) as usize;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut incoming).poll_frame(&mut cx) {
            std::task::Poll::Ready(None) => {
                if lease.try_grow(reserved) {
                    return Ok(Bytes::new());
                }
            }
            std::task::Poll::Ready(Some(Err(error))) => return Err(unreadable(error)),
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if incoming.is_end_stream() {
                        if data.len() > limit {
                            return Err(ApiError::PayloadTooLarge { limit });
                        }
                        if lease.try_grow(reserved.max(data.len())) {
                            return Ok(data);
                        }
                    }
                    first = Some(data);
                }
            }
            std::task::Poll::Pending => {}
        }
    }
    Box::pin(read_body_slowly(ctx, incoming, declared, first)).await
}

fn unreadable(error: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("could not read the request body: {error}"))
}

/// [`read_body`] for a body that is not whole yet, too large, or short of memory; `first` is
/// a piece [`read_body`] already took.
async fn read_body_slowly<B: RequestBody>(
    ctx: &mut RequestContext<'_>,
    mut incoming: B,
    declared: Option<u64>,
    first: Option<Bytes>,
) -> Result<Bytes, ApiError> {
    let server = &ctx.generation.config.server;
    let limit = server.max_body_bytes;
    let too_large = |incoming| async move {
        drain(incoming, declared).await;
        Err(ApiError::PayloadTooLarge { limit })
    };
    if declared.is_some_and(|length| length > limit as u64) {
        return too_large(incoming).await;
    }
    let overloaded = |_| ApiError::Overloaded {
        retry_after: Duration::from_secs(1),
    };
    let lease = ctx
        .memory
        .as_mut()
        .expect("the lease lives until the response");
    let reserved = declared.unwrap_or(0) as usize;
    lease
        .grow(reserved, MEMORY_WAIT)
        .await
        .map_err(overloaded)?;
    // A body that arrives in one piece (most do: a small JSON body comes with its headers)
    // is kept as hyper handed it over; only a second piece starts a buffer of its own.
    let mut body = Bytes::new();
    let mut more: Option<bytes::BytesMut> = None;
    let mut taken = first;
    // The body read timeout counts from the first wait for the body: one that came with the
    // headers is read without a timer.
    let read = crate::deadline::within(server.body_read_timeout, async {
        loop {
            let data = match taken.take() {
                Some(data) => data,
                None => match incoming.frame().await {
                    None => break,
                    Some(frame) => match frame.map_err(unreadable)?.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                },
            };
            let len = more.as_ref().map_or(body.len(), |m| m.len());
            if len + data.len() > limit {
                return Ok(false);
            }
            let beyond = (len + data.len()).saturating_sub(reserved.max(len));
            if beyond > 0 {
                lease.grow(beyond, MEMORY_WAIT).await.map_err(overloaded)?;
            }
            match &mut more {
                Some(more) => more.extend_from_slice(&data),
                None if body.is_empty() => body = data,
                None => {
                    let capacity = declared.map_or(len + data.len(), |l| l as usize);
                    let mut buffer = bytes::BytesMut::with_capacity(capacity);
                    buffer.extend_from_slice(&body);
                    buffer.extend_from_slice(&data);
                    body = Bytes::new();
                    more = Some(buffer);
                }
            }
        }
        Ok(true)
    })
    .await;
    match read {
        Err(_) => Err(ApiError::BadRequest(format!(
            "the request body did not arrive within {} s",
            server.body_read_timeout.as_secs()
        ))),
        Ok(Err(error)) => Err(error),
        Ok(Ok(false)) => too_large(incoming).await,
        Ok(Ok(true)) => Ok(more.map_or(body, bytes::BytesMut::freeze)),
    }
}

/// Reads and drops what is left of a refused body, within bounds (see [`DRAIN_BYTES`]).
async fn drain<B: RequestBody>(mut incoming: B, declared: Option<u64>) {
    if declared.is_some_and(|length| length > DRAIN_BYTES as u64) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut drained = 0usize;
        while let Some(Ok(frame)) = incoming.frame().await {
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > DRAIN_BYTES {
                return;
            }
        }
    })
    .await;
}

/// Parses a JSON body into a request type; serde's message names the field and the problem.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// Decodes and checks a request body as the route at `path` does before it uses a connection
/// (the default limits standing in for a tenant's); `Err` is the client's error message. For
/// fuzzing the request decoder: whatever the bytes, it must answer, never panic.
#[doc(hidden)]
pub fn decode_request(path: &str, body: &[u8]) -> Result<(), String> {
    use crate::config::defaults;
    let limits = query::Limits {
        max_sql_bytes: defaults::MAX_SQL_BYTES,
        statement_timeout_ms: defaults::STATEMENT_TIMEOUT_MS,
        session_reset: crate::config::SessionReset::default(),
    };
    let message = |error: ApiError| format!("{}: {}", error.kind(), error.message());
    let checked = match path {
        "/v1/query" | "/v1/transactions/id/query" => parse_json::<query::QueryRequest>(body)
            .and_then(|request| request.check(limits).map(drop)),
        "/v1/batch" | "/v1/transactions/id/batch" => parse_json::<batch::BatchRequest>(body)
            .and_then(|request| match (&request.statements, &request.script) {
                (Some(statements), _) => {
                    batch::check_statements(statements, request.timeout_ms, limits).map(drop)
                }
                (None, Some(script)) => batch::check_script(
                    script,
                    request.transaction.unwrap_or(true),
                    limits.max_sql_bytes,
                )
                .map(drop),
                (None, None) => Ok(()),
            }),
        "/sql" => neon::decode(body, limits),
        _ => Ok(()),
    };
    checked.map_err(message)
}

/// The request id's header, made once: a name given as a string is parsed, and this
/// non-standard one allocated, on every insert.
pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The client's `x-request-id` when it is reasonable, else a new random one.
pub(super) fn request_id(headers: &Headers) -> HeaderValue {
    if let Some(value) = headers.get(&X_REQUEST_ID)
        && !value.is_empty()
        && value.len() <= 128
        && value.iter().all(|c| c.is_ascii_graphic())
        && let Ok(value) = HeaderValue::from_bytes(value)
    {
        return value;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(new_request_id()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&hex).expect("hex is a valid header value")
}

/// 16 bytes that no other request id of this process has: a random half drawn once per thread,
/// and the thread's sequence number scrambled by a bijection (so ids look random but never
/// repeat within a thread). Threads and processes differ in their random half, with a chance
/// of 2^-64 per pair that two share one. Ids are labels, not secrets: this costs a few dozen
/// instructions where a fresh 16 bytes from the CSPRNG cost hundreds per request.
fn new_request_id() -> [u8; 16] {
    thread_local! {
        static STATE: std::cell::Cell<(u64, u64, u64)> = std::cell::Cell::new({
            let [half, salt]: [u64; 2] = rand::random();
            (half, salt, 0)
        });
    }
    let (half, salt, sequence) = STATE.with(|state| {
        let (half, salt, sequence) = state.get();
        state.set((half, salt, sequence.wrapping_add(1)));
        (half, salt, sequence)
    });
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&half.to_be_bytes());
    id[8..].copy_from_slice(&scramble(sequence ^ salt).to_be_bytes());
    id
}

/// SplitMix64's finaliser: a bijection on u64 whose outputs for consecutive inputs look
/// unrelated.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_ids_are_32_hex_digits_and_never_repeat() {
        let ids = |n: usize| -> Vec<HeaderValue> {
            (0..n).map(|_| request_id(&Headers::default())).collect()
        };
        let mut seen = std::collections::HashSet::new();
        for id in ids(100_000) {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
            assert!(seen.insert(id), "an id repeated on one thread");
        }
        // Another thread has its own random half: none of its ids is one of these.
        let other = std::thread::spawn(move || ids(10_000)).join().unwrap();
        assert!(other.into_iter().all(|id| !seen.contains(&id)));
    }

    #[test]
    fn a_reasonable_client_id_is_echoed_and_an_unreasonable_one_replaced() {
        let with = |value: &[u8]| {
            let mut headers = http::HeaderMap::new();
            headers.insert(X_REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
            request_id(&Headers::from(headers))
        };
        assert_eq!(with(b"trace-42"), "trace-42");
        for unreasonable in [&b""[..], b"has space", &[b'x'; 129]] {
            let id = with(unreasonable);
            assert_ne!(id.as_bytes(), unreasonable);
            assert_eq!(id.len(), 32);
        }
    }
}
