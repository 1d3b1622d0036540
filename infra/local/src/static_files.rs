//! The web UI's static files, with the SPA fallback to `index.html` and security headers on
//! every answer of the gateway.

use std::path::Path;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tower_http::services::{ServeDir, ServeFile};

pub fn service(dir: &Path) -> ServeDir<ServeFile> {
    ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")))
}

/// The Content-Security-Policy of every answer. `connect_extra`: origins the page may call besides
/// its own (the Cognito domain whose token endpoint the sign-in calls).
pub fn content_security_policy(connect_extra: &[String]) -> HeaderValue {
    let connect = std::iter::once("'self'").chain(connect_extra.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
    let policy = format!(
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// The UI talks only to its own origin (and the sign-in's token endpoint) and is never framed.
pub async fn security_headers(State(csp): State<HeaderValue>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut http::HeaderMap, name: &'static str, value: &'static str| {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    };
    headers.entry("content-security-policy").or_insert(csp);
    set(headers, "x-frame-options", "DENY");
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "no-referrer");
    response
}
