//! `POST /sql`: Neon's SQL-over-HTTP protocol, so `@neondatabase/serverless`'s `neon()` and the
//! ORMs built on it (`drizzle-orm/neon-http`, Prisma's `PrismaNeonHttp`) work against sluice with
//! only their endpoint changed. It is a second face on the same machinery as `/v1/query` and
//! `/v1/batch`: the same authentication (the connection string's password is the tenant's API
//! key), rate limit, pool checkout and queue, statement checks, pipelined batch in one
//! transaction, hygiene and cancel-on-disconnect. Only the shapes differ: Neon's headers and body
//! in ([`request`]), Neon's results and error bodies out ([`response`]).

pub mod request;
pub mod response;

use std::borrow::Cow;

use http::{HeaderValue, Response, StatusCode};

use self::request::{ConnectionString, Options, Payload, QueryData, Request};
use super::batch::{Isolation, StatementRequest, begin_sql, check_statements};
use super::body::Body;
use super::error::ApiError;
use super::head::Headers;
use super::query::{Limits, check_statement, pipeline_as_end_user, run_one};
use super::{RequestBody, RequestContext, Tenant};

pub use self::response::error_response;

/// Called before anything reads the credentials: when a request to `/sql` has no
/// `Authorization` header, the password of its `Neon-Connection-String` becomes its bearer key.
/// `/sql` is then authenticated by the very path every other route takes (key hashing, the
/// failed-authentication limiter, and whatever else that path learns), not by a copy of it.
pub fn adopt_connection_string_key(headers: &mut Headers) {
    if headers.contains(&http::header::AUTHORIZATION) {
        return;
    }
    let Ok(Some(ConnectionString {
        password: Some(password),
        ..
    })) = ConnectionString::of(headers)
    else {
        return;
    };
    if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {password}")) {
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
}

pub async fn handle<B: RequestBody>(
    ctx: &mut RequestContext<'_>,
    incoming: B,
) -> Result<Response<Body>, ApiError> {
    let options = Options::of(ctx.headers)?;
    let connection = ConnectionString::of(ctx.headers)?;
    // Authenticate (and admit) before reading the body, as every route does. An end user's
    // token works here as on `/v1`: each statement runs inside a gateway-owned transaction that
    // sets the role and claims.
    ctx.accepts_end_users = true;
    let tenant = ctx.tenant()?;
    if let Some(connection) = &connection {
        check_connection_string(ctx, &tenant, connection)?;
    }
    let body = super::read_body(ctx, incoming).await?;
    let payload: Payload = super::parse_json(&body)?;
    match payload.into_request()? {
        Request::Single(query) => single(ctx, &tenant, options, &query).await,
        Request::Batch(queries) => batch(ctx, &tenant, options, &queries).await,
    }
}

/// The connection string must name the tenant whose key its password is, and the tenant's
/// database. With an `Authorization` header of its own the client's user name is not a tenant's
/// (Neon's JWT clients put a role there) and is not checked.
fn check_connection_string(
    ctx: &RequestContext<'_>,
    tenant: &Tenant,
    connection: &ConnectionString,
) -> Result<(), ApiError> {
    let id = &tenant.config.id;
    let by_password = connection.password.as_ref().is_some_and(|password| {
        ctx.headers
            .get(&http::header::AUTHORIZATION)
            .is_some_and(|value| value == format!("Bearer {password}").as_bytes())
    });
    if by_password && connection.user != *id {
        return Err(ApiError::Forbidden(format!(
            "the connection string's user is \"{}\" but its password is the API key of tenant \
             \"{id}\": write postgresql://{id}:<api key>@<host>/<database>",
            connection.user
        )));
    }
    let upstream = &ctx.generation.config.upstreams[tenant.config.upstream];
    let expected = tenant
        .config
        .database
        .as_deref()
        .unwrap_or(&upstream.database);
    match &connection.database {
        Some(database) if database != expected => Err(ApiError::Forbidden(format!(
            "the connection string names database \"{database}\"; tenant \"{id}\" uses database \
             \"{expected}\""
        ))),
        _ => Ok(()),
    }
}

/// One statement, as `/v1/query` runs it.
async fn single(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    options: Options,
    query: &QueryData<'_>,
) -> Result<Response<Body>, ApiError> {
    let prepared = check_statement(&query.query, &query.params, None, Limits::of(ctx, tenant))
        .map_err(neon_words)?;
    let array_modes = [query.array_mode.unwrap_or(options.array_mode)];
    if let Some(identity) = &tenant.end_user {
        super::end_user::check_sql(tenant, prepared.sql)?;
        // Boxed, as /v1/query's: an end user's request pays one allocation so that every
        // other request's future does not carry its transaction's state.
        return Box::pin(single_as_end_user(
            ctx,
            tenant,
            options,
            &prepared,
            &array_modes,
            identity,
        ))
        .await;
    }
    let mut conn = ctx.checkout(tenant).await?;
    let mut out = Vec::with_capacity(256);
    let mut writer = options.writer(&mut out, &array_modes, ctx.max_response_bytes);
    let result = run_one(ctx, &mut conn, &prepared, tenant, &mut writer).await;
    drop(conn);
    result?;
    Ok(Body::json_bytes(StatusCode::OK, out))
}

/// An end user's statement: pipelined behind `BEGIN`, the role and the claims, followed by
/// `COMMIT`, in one round trip (as `/v1/query` runs it); the result is a lone statement's.
async fn single_as_end_user(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    options: Options,
    prepared: &crate::api::query::PreparedRequest<'_>,
    array_modes: &[bool],
    identity: &crate::jwt::Identity,
) -> Result<Response<Body>, ApiError> {
    let begin = identity.begin_sql("BEGIN");
    let mut out = Vec::with_capacity(256);
    let mut writer = options.writer(&mut out, array_modes, ctx.max_response_bytes);
    pipeline_as_end_user(ctx, tenant, prepared, &begin, &mut writer).await?;
    Ok(Body::json_bytes(StatusCode::OK, out))
}

/// A batch: one transaction with the `Neon-Batch-*` modes, pipelined as `/v1/batch` runs it.
async fn batch(
    ctx: &mut RequestContext<'_>,
    tenant: &Tenant,
    options: Options,
    queries: &[QueryData<'_>],
) -> Result<Response<Body>, ApiError> {
    if queries.is_empty() {
        // Neon answers an empty transaction with no results; there is nothing to run.
        return Ok(Body::json_bytes(
            StatusCode::OK,
            b"{\"results\":[]}".to_vec(),
        ));
    }
    let requests = statement_requests(queries);
    let checked = check_statements(&requests, None, Limits::of(ctx, tenant)).map_err(neon_words)?;
    for statement in &checked.statements {
        super::end_user::check_sql(tenant, statement.sql)?;
    }
    let array_modes: Vec<bool> = queries
        .iter()
        .map(|query| query.array_mode.unwrap_or(options.array_mode))
        .collect();
    let begin = super::end_user::begin_for(
        tenant.end_user.as_ref(),
        &begin_sql(
            options.isolation,
            options.read_only.then_some(true),
            options.deferrable.then_some(true),
        ),
    );
    let mut conn = ctx.checkout(tenant).await?;
    let mut out = Vec::with_capacity(256);
    let mut writer = options.writer(&mut out, &array_modes, ctx.max_response_bytes);
    let result = checked
        .run(ctx, &mut conn, Some(&begin), tenant, &mut writer)
        .await;
    drop(conn);
    result?;
    let mut response = Body::json_bytes(StatusCode::OK, out);
    // Neon echoes the modes it applied.
    let headers = response.headers_mut();
    if options.read_only {
        headers.insert(request::READ_ONLY, HeaderValue::from_static("true"));
    }
    if options.deferrable {
        headers.insert(request::DEFERRABLE, HeaderValue::from_static("true"));
    }
    if let Some(isolation) = options.isolation {
        headers.insert(
            request::ISOLATION_LEVEL,
            HeaderValue::from_static(match isolation {
                Isolation::Serializable => "Serializable",
                Isolation::RepeatableRead => "RepeatableRead",
                Isolation::ReadCommitted => "ReadCommitted",
                Isolation::ReadUncommitted => "ReadUncommitted",
            }),
        );
    }
    Ok(response)
}

/// The queries as `/v1/batch` statements, for its checks.
fn statement_requests<'a>(queries: &'a [QueryData<'_>]) -> Vec<StatementRequest<'a>> {
    queries
        .iter()
        .map(|query| StatementRequest {
            sql: Cow::Borrowed(query.query.as_ref()),
            params: query.params.clone(),
        })
        .collect()
}

/// The shared checks name `/v1/*`'s fields; a Neon client sent `query` and `queries`.
fn neon_words(error: ApiError) -> ApiError {
    match error {
        ApiError::BadRequest(message) => ApiError::BadRequest(
            message
                .replacen("statements[", "queries[", 1)
                .replace("`sql`", "`query`"),
        ),
        other => other,
    }
}

/// Decodes and checks a `/sql` body as the route does before it uses a connection (the
/// default limits standing in for a tenant's), for fuzzing the decoder.
#[doc(hidden)]
pub fn decode(body: &[u8], limits: Limits) -> Result<(), ApiError> {
    let payload: Payload = super::parse_json(body)?;
    match payload.into_request()? {
        Request::Single(query) => {
            check_statement(&query.query, &query.params, None, limits).map(drop)
        }
        Request::Batch(queries) if queries.is_empty() => Ok(()),
        Request::Batch(queries) => {
            let requests = statement_requests(&queries);
            check_statements(&requests, None, limits).map(drop)
        }
    }
}
