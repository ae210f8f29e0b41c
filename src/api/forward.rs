//! Cluster mode: a call on an interactive transaction (`/v1/transactions/{id}/…`) that lands
//! on a replica other than the one that began it is forwarded to that owner.
//!
//! - The owner is named by the id (`crate::cluster::transaction_owner`); its address is the
//!   `advertise` it publishes through its control session (`crate::cluster::Peers`, read from
//!   Postgres by this replica's control loop). An address never comes from the request, so a
//!   crafted id cannot point the gateway anywhere but at a live member.
//! - Authentication between replicas is the client's own: its `Authorization` (and
//!   `sluice-tenant`, `Origin`) headers go along and the owner checks them as for any request,
//!   after this replica has checked them too. No cluster secret exists, so someone who reaches
//!   a replica's internal address can do exactly what they could through the load balancer.
//! - The hop is marked with `sluice-forwarded-by`: a marked request is never forwarded again
//!   (no loops, whatever the views of membership say). A client setting it only gets its own
//!   call refused as unknown.
//! - The owner's answer comes back as it is: status, `Content-Type`, `Retry-After`, body
//!   (streamed, so NDJSON stays a stream). An owner no longer in the cluster, or not
//!   reachable, answers `transaction_not_found` naming why; one that goes away after the
//!   request was sent answers `connection_lost` (the call may or may not have taken effect).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::body::Body;
use super::error::ApiError;
use super::{RequestContext, Tenant};
use crate::transactions::short;

/// The header marking a forwarded call; its value is the forwarding replica's id.
pub const FORWARDED: HeaderName = HeaderName::from_static("sluice-forwarded-by");
/// How long the owner may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The request headers that travel with a forwarded call.
const PASSED: [HeaderName; 6] = [
    http::header::AUTHORIZATION,
    http::header::CONTENT_TYPE,
    http::header::ACCEPT,
    http::header::ORIGIN,
    HeaderName::from_static("sluice-tenant"),
    super::request::X_REQUEST_ID,
];
/// How much longer than the transaction's lifetime the owner may take to answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);
/// Chunks of a streamed answer in flight between the owner and the client.
const STREAM_CHUNKS: usize = 16;

/// The owner's answer to this call, if another replica owns transaction `id`; `None` when
/// this replica is the one to answer (outside cluster mode, its own, or already forwarded).
pub async fn to_owner(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    id: &str,
    action: &str,
    body: &[u8],
) -> Result<Option<Response<Body>>, ApiError> {
    let (Some(me), Some(owner)) = (
        tenant.pool.replica_id(),
        crate::cluster::transaction_owner(id),
    ) else {
        return Ok(None);
    };
    // Only an id as the gateway makes them travels (base64url, a dot, hex): nothing in it can
    // change the forwarded request's meaning.
    let well_formed = id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if owner == me || !well_formed || ctx.headers.contains(&FORWARDED) {
        return Ok(None);
    }
    let owner_name = format!("{owner:016x}");
    let address = match tenant.pool.peer(owner) {
        None => {
            return Err(ApiError::TransactionOwnerGone {
                reason: "owner_gone",
                message: format!(
                    "the replica that began this transaction ({owner_name}) is no longer in the \
                     cluster: its transactions were rolled back when it ended"
                ),
            });
        }
        Some(None) => {
            return Err(ApiError::TransactionOwnerGone {
                reason: "owner_unreachable",
                message: format!(
                    "the replica that began this transaction ({owner_name}) publishes no \
                     cluster.advertise address: call it directly"
                ),
            });
        }
        Some(Some(address)) => address,
    };
    let unreachable = |why: String| ApiError::TransactionOwnerGone {
        reason: "owner_unreachable",
        message: format!(
            "the replica that began this transaction ({owner_name}) cannot be reached at its \
             advertised address ({why}); the transaction ends with its idle timeout"
        ),
    };
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(address.as_str()),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(unreachable(error.to_string())),
        Err(_) => {
            return Err(unreachable(format!(
                "no connection within {} ms",
                CONNECT_TIMEOUT.as_millis()
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // Ends when the answer has been read, or when this call is dropped (the client left): the
    // owner then sees its client go and cancels the statement, as for a direct call.
    tokio::spawn(connection);

    let mut request = Request::post(format!("/v1/transactions/{id}/{action}"))
        .header(http::header::HOST, address.as_str())
        .header(FORWARDED, format!("{me:016x}"));
    for name in &PASSED {
        for value in ctx.headers.get_all(name) {
            request = request.header(name, value);
        }
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| ApiError::Internal {
            reason: format!("building the forwarded request: {e}"),
        })?;
    tracing::debug!(transaction = %short(id), owner = %owner_name, %address, "forwarding a transaction call to its owner");
    // No call outlives the transaction's lifetime on the owner: past it (plus a margin), an
    // owner that has not answered is frozen or cut off.
    let patience = tenant.config.transaction_max + ANSWER_MARGIN;
    let answer = match tokio::time::timeout(patience, sender.send_request(request)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            return Err(ApiError::ConnectionLost {
                reason: format!("the owner replica {owner_name} at {address}: {error}"),
            });
        }
        Err(_) => {
            return Err(ApiError::ConnectionLost {
                reason: format!(
                    "the owner replica {owner_name} at {address} did not answer within {} ms",
                    patience.as_millis()
                ),
            });
        }
    };
    let (parts, mut incoming) = answer.into_parts();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(STREAM_CHUNKS);
    tokio::spawn(async move {
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else {
                // Cut short: the client sees a truncated body, as from the owner directly.
                return;
            };
            if let Ok(data) = frame.into_data()
                && tx.send(data).await.is_err()
            {
                return;
            }
        }
    });
    ctx.app
        .metrics
        .transaction_calls_forwarded
        .get_or_create(&crate::metrics::TenantLabel {
            tenant: tenant.config.id.clone(),
        })
        .inc();
    let mut response = Response::new(Body::Stream {
        head: None,
        rest: rx,
    });
    *response.status_mut() = parts.status;
    for name in [
        http::header::CONTENT_TYPE,
        http::header::RETRY_AFTER,
        http::header::CACHE_CONTROL,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Ok(Some(response))
}
