//! Handlers of the proxy and of what surrounds it: quotas, usage, notifications, cache purges.

use chrono::NaiveDate;
use http::{HeaderValue, StatusCode};
use lambda_http::{Body, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::domain::access::{Caller, RequestMeta};
use crate::domain::notifications::Notification;
use crate::services::metering::{PutQuota, QuotaView, UsageReport};
use crate::services::proxy::{AnswerBody, ProxyCall, ProxyFailure};

use super::envelope::{ApiError, ErrorEnvelope, ProxyErrorDetails, REQUEST_ID_HEADER, json_response};
use super::handlers::Ctx;

/// A response whose body is complete, or still streaming from a provider.
pub enum Reply {
    Full(Response<Body>),
    Stream(http::Response<tokio::sync::mpsc::Receiver<Vec<u8>>>),
}

impl Reply {
    pub fn status(&self) -> StatusCode {
        match self {
            Reply::Full(r) => r.status(),
            Reply::Stream(r) => r.status(),
        }
    }

    /// The whole body (a Lambda behind an HTTP API answers with one buffered payload).
    pub async fn collect(self) -> Response<Body> {
        match self {
            Reply::Full(response) => response,
            Reply::Stream(response) => {
                let (parts, mut receiver) = response.into_parts();
                let mut body = Vec::new();
                while let Some(chunk) = receiver.recv().await {
                    body.extend_from_slice(&chunk);
                }
                Response::from_parts(parts, Body::Binary(body))
            }
        }
    }
}

impl From<ProxyFailure> for ApiError {
    fn from(f: ProxyFailure) -> ApiError {
        let mut error = ApiError::new(f.status, f.code, f.message);
        let d = *f.details;
        error.field = d.field;
        error.proxy = Some(Box::new(ProxyErrorDetails {
            provider: d.provider,
            upstream_status: d.upstream_status,
            provider_message: d.provider_message,
            limit: d.limit.map(|l| l.as_str()),
            retry_after: d.retry_after,
            headers: d.headers,
        }));
        error
    }
}

/// `/proxy/{provider}/{path+}`: the raw path and query are taken from the request itself, never
/// decoded, so what the proxy checks is what it sends.
pub async fn proxy(
    app: &App,
    caller: &Caller,
    meta: &RequestMeta,
    provider: &str,
    request: http::Request<Vec<u8>>,
) -> Result<Reply, ApiError> {
    let (parts, body) = request.into_parts();
    let raw_path = parts.uri.path();
    let prefix = format!("/proxy/{provider}");
    let below = raw_path.strip_prefix(&prefix).unwrap_or("");
    let call = ProxyCall {
        caller,
        meta,
        provider,
        path: below,
        query: parts.uri.query(),
        method: parts.method.clone(),
        headers: &parts.headers,
        body,
    };
    let answer = app.proxy.handle(call).await?;
    let mut builder = http::Response::builder().status(answer.status);
    for (name, value) in answer.headers {
        builder = builder.header(name, value);
    }
    builder = builder.header(REQUEST_ID_HEADER, HeaderValue::from_str(&meta.request_id).unwrap_or(HeaderValue::from_static("-")));
    builder = builder.header("x-content-type-options", "nosniff");
    let failed = || ApiError::new(StatusCode::BAD_GATEWAY, "upstream_answer_unusable", "the provider's answer could not be passed on");
    Ok(match answer.body {
        AnswerBody::Full(bytes) => Reply::Full(builder.body(Body::Binary(bytes)).map_err(|_| failed())?),
        AnswerBody::Stream(receiver) => Reply::Stream(builder.body(receiver).map_err(|_| failed())?),
    })
}

/// Limits and current use of a provider, per environment.
#[utoipa::path(get, path = "/api/quotas/{provider}", tag = "quotas", operation_id = "quotas_get",
    params(("provider" = String, Path)),
    responses((status = 200, body = QuotaView), (status = 404, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn quotas_get(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let view = app.metering.quotas(ctx.caller(), ctx.param("provider")).await?;
    Ok(json_response(StatusCode::OK, &view, &ctx.meta.request_id))
}

/// Replaces a provider environment's limits (admins; audited). Takes effect on this process at
/// once and on every other within seconds.
#[utoipa::path(put, path = "/api/quotas/{provider}", tag = "quotas", operation_id = "quotas_put",
    params(("provider" = String, Path)), request_body = PutQuota,
    responses((status = 200, body = QuotaView), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn quotas_put(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let input: PutQuota = ctx.json()?;
    let view = app.metering.put_quota(ctx.caller(), &ctx.meta, ctx.param("provider"), input).await?;
    Ok(json_response(StatusCode::OK, &view, &ctx.meta.request_id))
}

fn date_param(q: &std::collections::BTreeMap<String, String>, name: &str) -> Result<Option<NaiveDate>, ApiError> {
    q.get(name)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_date", format!("{name} must be a date like 2026-11-25"))
                    .field(name.to_owned())
            })
        })
        .transpose()
}

/// Usage per provider, environment and day (UTC), with totals; the last 30 days by default.
#[utoipa::path(get, path = "/api/usage", tag = "usage", operation_id = "usage_get",
    params(("provider" = Option<String>, Query), ("from" = Option<String>, Query, description = "YYYY-MM-DD, inclusive"), ("to" = Option<String>, Query, description = "YYYY-MM-DD, inclusive")),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn usage_get(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let q = ctx.query_params(&["provider", "from", "to"])?;
    let report =
        app.metering.usage(ctx.caller(), q.get("provider").map(String::as_str), date_param(&q, "from")?, date_param(&q, "to")?).await?;
    Ok(json_response(StatusCode::OK, &report, &ctx.meta.request_id))
}

#[derive(Serialize, ToSchema)]
pub struct NotificationList {
    pub items: Vec<Notification>,
    pub next_cursor: Option<String>,
}

/// The workspace's notifications, newest first.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications", operation_id = "notifications_list",
    params(("unread" = Option<bool>, Query), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = NotificationList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn notifications_list(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let q = ctx.query_params(&["unread", "limit", "cursor"])?;
    let unread = match q.get("unread").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_unread", "unread must be true or false").field("unread")),
    };
    let page = app.metering.notifications(ctx.caller(), unread, q.get("cursor").map(String::as_str), Ctx::limit(&q)?).await?;
    Ok(json_response(StatusCode::OK, &NotificationList { items: page.items, next_cursor: page.next }, &ctx.meta.request_id))
}

/// Marks a notification read (for the whole workspace).
#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications", operation_id = "notifications_read",
    params(("id" = String, Path)),
    responses((status = 200, body = Notification), (status = 404, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn notifications_read(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let notification = app.metering.mark_read(ctx.caller(), ctx.param("id")).await?;
    Ok(json_response(StatusCode::OK, &notification, &ctx.meta.request_id))
}

#[derive(Serialize, ToSchema)]
pub struct CachePurged {
    pub provider: String,
    pub removed: u64,
}

/// Removes the workspace's cached answers of a provider (admins; audited).
#[utoipa::path(delete, path = "/api/cache/{provider}", tag = "cache", operation_id = "cache_purge",
    params(("provider" = String, Path)),
    responses((status = 200, body = CachePurged), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn cache_purge(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let removed = app.metering.purge_cache(ctx.caller(), &ctx.meta, ctx.param("provider")).await?;
    Ok(json_response(StatusCode::OK, &CachePurged { provider: ctx.param("provider").to_owned(), removed }, &ctx.meta.request_id))
}
