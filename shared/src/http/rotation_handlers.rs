//! Handlers of rotation, rollback and the scheduled job's trigger.

use http::StatusCode;
use lambda_http::{Body, Response};

use crate::app::App;
use crate::domain::keys::KeyRecord;
use crate::services::rotation::{RotateKey, idempotency_key};
use crate::services::scheduler::{RunReport, Scope};

use super::envelope::{ApiError, ErrorEnvelope, json_response};
use super::handlers::{Ctx, key_response};

fn idempotency(ctx: &Ctx) -> Result<Option<String>, ApiError> {
    let value = match ctx.headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", "Idempotency-Key must be visible ASCII")
                .field("Idempotency-Key")
        })?),
    };
    Ok(idempotency_key(value)?)
}

/// Rotates a key: the new credentials are stored as a pending version, tested with the
/// provider's test request and made current only if the test passes; the replaced version stays
/// available for a rollback during the grace period. A failed test answers 422 and changes
/// nothing. Retrying with the same `Idempotency-Key` resumes an interrupted rotation or answers
/// what the finished one answered.
#[utoipa::path(post, path = "/api/keys/{id}/rotate", tag = "keys", operation_id = "keys_rotate", request_body = RotateKey,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "ETag from a previous answer"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters; a retry with it resumes or repeats")),
    responses((status = 200, body = KeyRecord), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_rotate(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let if_match = ctx.if_match()?;
    let idempotency = idempotency(&ctx)?;
    let input: RotateKey = ctx.json()?;
    let record = app.keys.rotate(ctx.caller(), &ctx.meta, ctx.param("id"), if_match, idempotency, input).await?;
    Ok(key_response(app, StatusCode::OK, record, &ctx.meta.request_id))
}

/// Restores the previous version while its grace period lasts; the version rolled back from is
/// destroyed.
#[utoipa::path(post, path = "/api/keys/{id}/rollback", tag = "keys", operation_id = "keys_rollback",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "ETag from a previous answer"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters; a retry with it answers the same")),
    responses((status = 200, body = KeyRecord), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope), (status = 412, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn keys_rollback(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let if_match = ctx.if_match()?;
    let idempotency = idempotency(&ctx)?;
    if !ctx.body.is_empty() {
        // No fields are defined; `{}` is accepted so that clients may always send JSON.
        let _: serde_json::Map<String, serde_json::Value> = ctx.json().and_then(|m: serde_json::Map<String, serde_json::Value>| {
            if m.is_empty() {
                Ok(m)
            } else {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "unknown_field", "rollback takes no fields; send {} or nothing"))
            }
        })?;
    }
    let record = app.keys.rollback(ctx.caller(), &ctx.meta, ctx.param("id"), if_match, idempotency).await?;
    Ok(key_response(app, StatusCode::OK, record, &ctx.meta.request_id))
}

/// Runs the scheduled job now for the caller's workspace (re-verification, reminders, expired
/// previous versions, abandoned rotations). Another run in progress makes this one answer with
/// `skipped` set and do nothing.
#[utoipa::path(post, path = "/api/jobs/run", tag = "jobs", operation_id = "jobs_run",
    responses((status = 200, body = RunReport), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn jobs_run(app: &App, ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.query_params(&[])?;
    let report = app.scheduler().run(Scope::Workspace(ctx.caller().workspace.clone())).await?;
    Ok(json_response(StatusCode::OK, &report, &ctx.meta.request_id))
}
