//! One handler per operation. Each takes the parsed request context and returns a response or an
//! `ApiError`; `dispatch` has already matched the route and checked the caller's role.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::app::App;
use crate::domain::access::{Caller, RequestMeta};
use crate::domain::audit::{AuditEntry, ChainReport, action};
use crate::domain::catalog::{Category, Provider};
use crate::domain::keys::{KeyRecord, TestResult, parse_if_match};
use crate::ports::AuditFilter;
use crate::services::keys::{CreateKey, RevokeKey, TestCandidate, UpdateKey};

use super::envelope::{ApiError, ErrorEnvelope, empty_response, json_response};

/// Largest JSON body the API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What a handler gets: the verified caller (for routes that need one), the request's metadata,
/// path parameters, query pairs, headers and the raw body (zeroized when dropped).
pub struct Ctx {
    pub caller: Option<Caller>,
    pub meta: RequestMeta,
    pub params: Vec<(&'static str, String)>,
    pub query: Vec<(String, String)>,
    pub headers: http::HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

impl Ctx {
    pub(super) fn caller(&self) -> &Caller {
        // `dispatch` only calls handlers of authenticated routes with a caller.
        self.caller.as_ref().expect("dispatch checked the caller")
    }

    pub(super) fn param(&self, name: &str) -> &str {
        self.params.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    /// Refuses query parameters the route does not know, then returns the value of each known one.
    pub(super) fn query_params(&self, known: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
        let mut out = BTreeMap::new();
        for (name, value) in &self.query {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    format!(
                        "unknown query parameter; this route takes: {}",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                )
                .field(name.chars().take(40).collect::<String>()));
            }
            if out.insert(name.clone(), value.clone()).is_some() {
                return Err(
                    ApiError::new(StatusCode::BAD_REQUEST, "repeated_parameter", "a query parameter is given twice").field(name.clone())
                );
            }
        }
        Ok(out)
    }

    pub(super) fn limit(q: &BTreeMap<String, String>) -> Result<Option<usize>, ApiError> {
        q.get("limit")
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_limit", "limit must be a number between 1 and 200").field("limit")
                })
            })
            .transpose()
    }

    pub(super) fn if_match(&self) -> Result<Option<crate::domain::keys::IfMatch>, ApiError> {
        match self.headers.get(header::IF_MATCH) {
            None => Ok(None),
            Some(value) => value.to_str().ok().and_then(parse_if_match).map(Some).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_if_match", "If-Match must be an ETag this API gave out (like \"3\") or *")
                    .field("If-Match")
            }),
        }
    }

    /// Parses the JSON body: 413 over the limit, 415 for another media type, 400 for bad JSON or
    /// a body of the wrong shape. Messages never echo values (they could be keys).
    pub(super) fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        let content_type = self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if media != "application/json" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty_body", "this request needs a JSON body"));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&self.body);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(body_error)?;
        deserializer.end().map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()),
            )
        })?;
        Ok(value)
    }
}

pub fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024))
}

fn body_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner();
    if !inner.is_data() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON (line {}, column {})", inner.line(), inner.column()),
        );
    }
    let text = inner.to_string();
    let expected = text.split_once("expected ").map(|(_, rest)| rest.rsplit_once(" at line").map_or(rest, |(e, _)| e).to_owned());
    let shown_path: String = path.chars().take(80).collect();
    let (code, message) = if text.starts_with("unknown field") {
        ("unknown_field", format!("`{shown_path}` is not a field here; expected {}", expected.unwrap_or_default()))
    } else if let Some(rest) = text.strip_prefix("missing field ") {
        let name = rest.split('`').nth(1).unwrap_or("");
        let full = if path == "." { name.to_owned() } else { format!("{path}.{name}") };
        return ApiError::new(StatusCode::BAD_REQUEST, "missing_field", format!("`{full}` is required")).field(full);
    } else {
        (
            "invalid_value",
            format!("`{shown_path}` has the wrong type or value; expected {}", expected.unwrap_or_else(|| "another value".into())),
        )
    };
    let error = ApiError::new(StatusCode::BAD_REQUEST, code, message);
    if path == "." { error } else { error.field(shown_path) }
}

/// A key record as the API shows it (status and `rotation_due_at` at the app's clock), with its
/// `ETag`.
pub(super) fn key_response(app: &App, status: StatusCode, record: KeyRecord, request_id: &str) -> Response<Body> {
    let record = record.presented(app.keys.clock.now());
    let mut response = json_response(status, &record, request_id);
    if let Ok(etag) = HeaderValue::from_str(&record.etag()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

// ---- providers ----

#[derive(Serialize, ToSchema)]
pub struct CategoryGroup {
    pub id: Category,
    pub label: String,
    pub providers: Vec<Provider>,
}

#[derive(Serialize, ToSchema)]
pub struct ProvidersAnswer {
    pub categories: Vec<CategoryGroup>,
}

/// The provider catalog, grouped by category.
#[utoipa::path(get, path = "/api/providers", tag = "providers", operation_id = "providers_list",
    params(("category" = Option<Category>, Query, description = "Only this category")),
    responses((status = 200, body = ProvidersAnswer), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn providers_list(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let q = ctx.query_params(&["category"])?;
    let only = match q.get("category") {
        None => None,
        Some(c) => Some(Category::parse(c).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_category", "category must be one of financial_data, llm, trading, other")
                .field("category")
        })?),
    };
    let categories = Category::ALL
        .into_iter()
        .filter(|c| only.is_none_or(|o| o == *c))
        .map(|c| CategoryGroup {
            id: c,
            label: c.label().to_owned(),
            providers: app.catalog.providers.iter().filter(|p| p.category == c).cloned().collect(),
        })
        .collect();
    Ok(json_response(StatusCode::OK, &ProvidersAnswer { categories }, &ctx.meta.request_id))
}

// ---- keys ----

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub items: Vec<KeyRecord>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The workspace's keys (masked), oldest first.
#[utoipa::path(get, path = "/api/keys", tag = "keys", operation_id = "keys_list",
    params(("limit" = Option<usize>, Query, description = "1..=200, default 50"), ("cursor" = Option<String>, Query, description = "From `next_cursor`")),
    responses((status = 200, body = KeyList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_list(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let q = ctx.query_params(&["limit", "cursor"])?;
    let page = app.keys.list(ctx.caller(), q.get("cursor").map(String::as_str), Ctx::limit(&q)?).await?;
    let now = app.keys.clock.now();
    let items = page.items.into_iter().map(|r| r.presented(now)).collect();
    Ok(json_response(StatusCode::OK, &KeyList { items, next_cursor: page.next }, &ctx.meta.request_id))
}

/// One key (masked). The `ETag` header is what `If-Match` takes.
#[utoipa::path(get, path = "/api/keys/{id}", tag = "keys", operation_id = "keys_get",
    params(("id" = String, Path)),
    responses((status = 200, body = KeyRecord), (status = 404, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_get(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let record = app.keys.get(ctx.caller(), ctx.param("id")).await?;
    Ok(key_response(app, StatusCode::OK, record, &ctx.meta.request_id))
}

/// Stores a key, encrypted. The answer never contains a credential value; soft format mismatches
/// come back as `warnings`.
#[utoipa::path(post, path = "/api/keys", tag = "keys", operation_id = "keys_create", request_body = CreateKey,
    responses((status = 201, body = KeyRecord), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_create(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let input: CreateKey = ctx.json()?;
    let saved = app.keys.create(ctx.caller(), &ctx.meta, input).await?;
    let location = format!("/api/keys/{}", saved.record.id);
    let mut response = key_response(app, StatusCode::CREATED, saved.record, &ctx.meta.request_id);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Edits label, environment or credentials. With `If-Match`, a stale version answers 412.
#[utoipa::path(patch, path = "/api/keys/{id}", tag = "keys", operation_id = "keys_update", request_body = UpdateKey,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "ETag from a previous answer")),
    responses((status = 200, body = KeyRecord), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_update(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let if_match = ctx.if_match()?;
    let input: UpdateKey = ctx.json()?;
    let saved = app.keys.update(ctx.caller(), &ctx.meta, ctx.param("id"), if_match, input).await?;
    Ok(key_response(app, StatusCode::OK, saved.record, &ctx.meta.request_id))
}

/// Deletes a key and destroys its material; the audit trail keeps its fingerprint.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys", operation_id = "keys_delete",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "ETag from a previous answer")),
    responses((status = 204), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_delete(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let if_match = ctx.if_match()?;
    app.keys.delete(ctx.caller(), &ctx.meta, ctx.param("id"), if_match).await?;
    Ok(empty_response(StatusCode::NO_CONTENT, &ctx.meta.request_id))
}

/// Revokes a key at once: the proxy refuses it from the next request, its material is destroyed,
/// the record stays (status `revoked`, with who, when and why) and the slot is free for a new key.
#[utoipa::path(post, path = "/api/keys/{id}/revoke", tag = "keys", operation_id = "keys_revoke", request_body = RevokeKey,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "ETag from a previous answer")),
    responses((status = 200, body = KeyRecord), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_revoke(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let if_match = ctx.if_match()?;
    let input: RevokeKey = ctx.json()?;
    let record = app.keys.revoke(ctx.caller(), &ctx.meta, ctx.param("id"), if_match, input).await?;
    Ok(key_response(app, StatusCode::OK, record, &ctx.meta.request_id))
}

/// Tests credentials before saving them: the provider's test request with the key injected.
#[utoipa::path(post, path = "/api/keys/test", tag = "keys", operation_id = "keys_test_candidate", request_body = TestCandidate,
    responses((status = 200, body = TestResult), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_test_candidate(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let input: TestCandidate = ctx.json()?;
    let result = app.keys.test_candidate(ctx.caller(), &ctx.meta, input).await?;
    Ok(json_response(StatusCode::OK, &result, &ctx.meta.request_id))
}

/// Tests a stored key; its `last_verified_at` and `last_test` are updated.
#[utoipa::path(post, path = "/api/keys/{id}/test", tag = "keys", operation_id = "keys_test",
    params(("id" = String, Path)),
    responses((status = 200, body = TestResult), (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope, description = "the key is revoked: it has no material to test")),
    security(("bearer" = [])))]
pub async fn keys_test(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let result = app.keys.test_stored(ctx.caller(), &ctx.meta, ctx.param("id")).await?;
    Ok(json_response(StatusCode::OK, &result, &ctx.meta.request_id))
}

// ---- audit ----

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

fn time_param(q: &BTreeMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    q.get(name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_time", format!("{name} must be an RFC 3339 time like 2026-11-25T08:00:00Z"))
                    .field(name.to_owned())
            })
        })
        .transpose()
}

/// The workspace's audit trail, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "audit", operation_id = "audit_list",
    params(("action" = Option<String>, Query), ("provider" = Option<String>, Query), ("actor" = Option<String>, Query, description = "sub or email"),
        ("key_id" = Option<String>, Query), ("from" = Option<String>, Query, description = "RFC 3339, inclusive"), ("to" = Option<String>, Query, description = "RFC 3339, exclusive"),
        ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn audit_list(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let q = ctx.query_params(&["action", "provider", "actor", "key_id", "from", "to", "limit", "cursor"])?;
    if let Some(a) = q.get("action")
        && !action::ALL.contains(&a.as_str())
    {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_action", format!("action must be one of {}", action::ALL.join(", ")))
            .field("action"));
    }
    let filter = AuditFilter {
        action: q.get("action").cloned(),
        provider: q.get("provider").cloned(),
        actor: q.get("actor").cloned(),
        key_id: q.get("key_id").cloned(),
        from: time_param(&q, "from")?,
        to: time_param(&q, "to")?,
    };
    let page = app.audit.list(ctx.caller(), &filter, q.get("cursor").map(String::as_str), Ctx::limit(&q)?).await?;
    Ok(json_response(StatusCode::OK, &AuditList { items: page.items, next_cursor: page.next }, &ctx.meta.request_id))
}

/// Walks the workspace's hash chain and reports the first entry that does not verify.
#[utoipa::path(get, path = "/api/audit/verify", tag = "audit", operation_id = "audit_verify",
    responses((status = 200, body = ChainReport), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn audit_verify(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let report = app.audit.verify(ctx.caller()).await?;
    Ok(json_response(StatusCode::OK, &report, &ctx.meta.request_id))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", operation_id = "openapi", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi(_app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let mut response = json_response(StatusCode::OK, &(), &ctx.meta.request_id);
    *response.body_mut() = Body::Text(super::openapi::document_json().to_owned());
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    Ok(response)
}
