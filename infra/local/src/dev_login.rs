//! `POST /api/dev/login` (dev mode only): a signed token for any email, role and workspace, so
//! the product can be tried with no identity provider. Without `--dev` the route does not exist.

use http::StatusCode;
use lambda_http::Body;
use serde::{Deserialize, Serialize};
use stockpulse_shared::domain::access::Role;
use stockpulse_shared::http::envelope::{ApiError, error_response, json_response};

use crate::Gateway;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevLogin {
    email: String,
    role: String,
    workspace: String,
}

#[derive(Serialize)]
struct DevToken {
    token: String,
    expires_at: u64,
    token_type: &'static str,
}

pub fn handle(gateway: &Gateway, headers: &http::HeaderMap, body: &[u8], request_id: &str) -> http::Response<Body> {
    match login(gateway, headers, body) {
        Ok(token) => json_response(StatusCode::OK, &token, request_id),
        Err(e) => error_response(&e, request_id),
    }
}

fn login(gateway: &Gateway, headers: &http::HeaderMap, body: &[u8]) -> Result<DevToken, ApiError> {
    let json = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send JSON with Content-Type: application/json",
        ));
    }
    let input: DevLogin = serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "send {\"email\": \"...\", \"role\": \"admin|member|viewer\", \"workspace\": \"...\"}",
        )
    })?;
    let email = input.email.trim();
    if email.len() > 254 || !email.contains('@') || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email", "email must look like name@example.com").field("email")
        );
    }
    let role = Role::parse(&input.role).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_role", "role must be admin, member or viewer").field("role")
    })?;
    let workspace = input.workspace.trim();
    if workspace.is_empty() || workspace.len() > 64 || !workspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_workspace", "workspace must be 1-64 letters, digits, - or _")
            .field("workspace"));
    }
    // The same email always gets the same subject, so audit entries line up across sign-ins.
    let sub = format!("dev-{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, email.to_ascii_lowercase().as_bytes()));
    let (token, expires_at) = gateway.tokens.mint(&sub, email, role, workspace).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "dev_login_unavailable", "dev sign-in is off while tokens come from an external issuer")
    })?;
    tracing::info!(email, role = role.as_str(), workspace, "dev sign-in");
    Ok(DevToken { token, expires_at, token_type: "Bearer" })
}
