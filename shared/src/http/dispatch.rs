//! From request to response: match the route, check the caller's role, run the handler, and turn
//! every error into the envelope. The Lambda functions and the local gateway both enter here.

use std::time::Instant;

use http::StatusCode;
use lambda_http::{Body, Request, Response};
use zeroize::Zeroizing;

use crate::app::App;

use super::caller::{caller, request_meta};
use super::envelope::{ApiError, error_response};
use super::handlers::{self, Ctx, MAX_BODY_BYTES};
use super::proxy_handlers::{self, Reply};
use super::rotation_handlers;
use super::routes::{Access, Operation, ROUTES, Route, RouteMatch, match_route};

/// Serves every route of the table that exists outside dev mode, with whole bodies.
pub async fn route_request(app: &App, req: Request) -> Response<Body> {
    route_request_streaming(app, req).await.collect().await
}

/// Serves every route of the table that exists outside dev mode; proxied event streams stay
/// streams (the local gateway passes them on chunk by chunk).
pub async fn route_request_streaming(app: &App, req: Request) -> Reply {
    serve(app, ROUTES.iter().filter(|r| !r.dev_only), req).await
}

/// Serves the routes of one Lambda function; any other path answers 404 like the gateway would.
/// Behind API Gateway's HTTP API an answer is one payload, so streams are collected here.
pub async fn handle_function(app: &App, function: &str, req: Request) -> Response<Body> {
    serve(app, ROUTES.iter().filter(|r| r.function == Some(function)), req).await.collect().await
}

async fn serve(app: &App, routes: impl Iterator<Item = &'static Route>, req: Request) -> Reply {
    let started = Instant::now();
    let meta = request_meta(&req);
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let (route_path, result) = match match_route(routes, &method, &path) {
        RouteMatch::Found { route, params } => (route.path, run(app, route, params, req, meta.clone()).await),
        RouteMatch::MethodNotAllowed(methods) => (
            "-",
            Err(ApiError {
                allow: Some(methods.join(", ")),
                ..ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("this path takes {}", methods.join(", ")))
            }),
        ),
        RouteMatch::NotFound => {
            ("-", Err(ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such API route; GET /api/openapi.json lists them")))
        }
    };
    let response = result.unwrap_or_else(|e| Reply::Full(error_response(&e, &meta.request_id)));
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The route template, never the raw path or query: nothing a client sent is echoed here.
    if status >= 500 {
        tracing::error!(method, route = route_path, status, elapsed_ms, request_id = %meta.request_id, "request failed");
    } else {
        tracing::info!(method, route = route_path, status, elapsed_ms, request_id = %meta.request_id, "request");
    }
    response
}

async fn run(
    app: &App,
    route: &'static Route,
    params: Vec<(&'static str, String)>,
    req: Request,
    meta: crate::domain::access::RequestMeta,
) -> Result<Reply, ApiError> {
    let who = match route.access {
        Access::Public => None,
        Access::AtLeast(role) => {
            let who = caller(&req)?;
            if who.role < role {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "insufficient_role",
                    format!("this needs the {} role or higher; you are {}", role.as_str(), who.role.as_str()),
                ));
            }
            Some(who)
        }
    };
    if route.operation == Operation::Proxy {
        let who = who.ok_or_else(|| ApiError::unauthenticated("sign in to use the proxy"))?;
        let provider = params.iter().find(|(n, _)| *n == "provider").map(|(_, v)| v.clone()).unwrap_or_default();
        let (parts, body) = req.into_parts();
        let request = http::Request::from_parts(parts, body_bytes(body));
        return proxy_handlers::proxy(app, &who, &meta, &provider, request).await;
    }
    let query = req.uri().query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let (parts, body) = req.into_parts();
    let body = Zeroizing::new(body_bytes(body));
    if body.len() > MAX_BODY_BYTES {
        return Err(handlers::too_large());
    }
    let ctx = Ctx { caller: who, meta, params, query, headers: parts.headers, body };
    let response = match route.operation {
        Operation::ProvidersList => handlers::providers_list(app, ctx).await,
        Operation::KeysList => handlers::keys_list(app, ctx).await,
        Operation::KeysGet => handlers::keys_get(app, ctx).await,
        Operation::KeysCreate => handlers::keys_create(app, ctx).await,
        Operation::KeysUpdate => handlers::keys_update(app, ctx).await,
        Operation::KeysDelete => handlers::keys_delete(app, ctx).await,
        Operation::KeysTestCandidate => handlers::keys_test_candidate(app, ctx).await,
        Operation::KeysTest => handlers::keys_test(app, ctx).await,
        Operation::KeysRevoke => handlers::keys_revoke(app, ctx).await,
        Operation::KeysRotate => rotation_handlers::keys_rotate(app, ctx).await,
        Operation::KeysRollback => rotation_handlers::keys_rollback(app, ctx).await,
        Operation::JobsRun => rotation_handlers::jobs_run(app, ctx).await,
        Operation::AuditList => handlers::audit_list(app, ctx).await,
        Operation::AuditVerify => handlers::audit_verify(app, ctx).await,
        Operation::OpenApi => handlers::openapi(app, ctx).await,
        // Served by the local gateway itself (it owns the signing secret); never reaches here.
        Operation::DevLogin => Err(ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "dev sign-in exists only in dev mode")),
        Operation::QuotasGet => proxy_handlers::quotas_get(app, ctx).await,
        Operation::QuotasPut => proxy_handlers::quotas_put(app, ctx).await,
        Operation::UsageGet => proxy_handlers::usage_get(app, ctx).await,
        Operation::NotificationsList => proxy_handlers::notifications_list(app, ctx).await,
        Operation::NotificationsRead => proxy_handlers::notifications_read(app, ctx).await,
        Operation::CachePurge => proxy_handlers::cache_purge(app, ctx).await,
        Operation::Proxy => unreachable!("handled above"),
    };
    response.map(Reply::Full)
}

fn body_bytes(body: Body) -> Vec<u8> {
    match body {
        Body::Empty => Vec::new(),
        Body::Text(text) => text.into_bytes(),
        Body::Binary(bytes) => bytes,
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}
