//! JSON answers and the error envelope:
//! `{"error": {"code", "message", "field"?, "request_id"}}`.

use http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::services::ServiceError;

pub const REQUEST_ID_HEADER: &str = "x-stockpulse-request-id";
pub const JSON: &str = "application/json; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// `Allow` for 405.
    pub allow: Option<String>,
    /// Details of a proxied request that failed upstream or was refused by a limit.
    pub proxy: Option<Box<ProxyErrorDetails>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyErrorDetails {
    pub provider: Option<String>,
    pub upstream_status: Option<u16>,
    pub provider_message: Option<String>,
    pub limit: Option<&'static str>,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, allow: None, proxy: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn unauthenticated(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let (status, code, message, field) = match e {
            ServiceError::BadRequest { code, message, field } => (StatusCode::BAD_REQUEST, code, message, field),
            ServiceError::Unprocessable { code, message, field } => (StatusCode::UNPROCESSABLE_ENTITY, code, message, field),
            ServiceError::Forbidden { code, message } => (StatusCode::FORBIDDEN, code, message, None),
            ServiceError::NotFound { code, message } => (StatusCode::NOT_FOUND, code, message, None),
            ServiceError::Conflict { code, message } => (StatusCode::CONFLICT, code, message, None),
            ServiceError::PreconditionFailed { code, message } => (StatusCode::PRECONDITION_FAILED, code, message, None),
            ServiceError::Unavailable { code, message } => (StatusCode::SERVICE_UNAVAILABLE, code, message, None),
            ServiceError::Internal { code, message } => (StatusCode::INTERNAL_SERVER_ERROR, code, message, None),
        };
        ApiError { status, code, message, field, allow: None, proxy: None }
    }
}

/// The envelope as documented in the OpenAPI document.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable snake_case code to branch on.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
    /// The request field at fault, when there is one (`credentials.api_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub request_id: String,
    /// Proxy errors: the provider called (or that would have been).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Proxy errors: the provider's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Proxy errors: the provider's own message, with key values redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message: Option<String>,
    /// 429 from a workspace limit: which one (`requests_per_minute`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

pub fn error_response(error: &ApiError, request_id: &str) -> Response<Body> {
    let body = ErrorEnvelope {
        error: ErrorBody {
            code: error.code.to_owned(),
            message: error.message.clone(),
            field: error.field.clone(),
            request_id: request_id.to_owned(),
            provider: error.proxy.as_ref().and_then(|p| p.provider.clone()),
            upstream_status: error.proxy.as_ref().and_then(|p| p.upstream_status),
            provider_message: error.proxy.as_ref().and_then(|p| p.provider_message.clone()),
            limit: error.proxy.as_ref().and_then(|p| p.limit.map(str::to_owned)),
        },
    };
    let mut response = json_response(error.status, &body, request_id);
    if let Some(allow) = error.allow.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    if let Some(details) = &error.proxy {
        for (name, value) in &details.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        if let Some(seconds) = details.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
    }
    if error.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T, request_id: &str) -> Response<Body> {
    // Our own answer types always serialize; a failure would be a bug, answered as a plain 500.
    let (status, text) = match serde_json::to_string(body) {
        Ok(text) => (status, text),
        Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":{"code":"internal","message":"the answer could not be encoded"}}"#.to_owned())
        }
    };
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    response
}

pub fn empty_response(status: StatusCode, request_id: &str) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}
