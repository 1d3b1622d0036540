//! The local gateway: serves every route of the shared route table by calling the same handler
//! functions the Lambdas call, plus the web UI's static files, in one process on embedded storage.
//!
//! It plays API Gateway's part: verifies bearer tokens (see `auth`), puts the claims into an API
//! Gateway v2 request context, and hands the request to `stockpulse_shared::http::route_request`.

pub mod auth;
mod dev_login;
mod static_files;

pub use static_files::content_security_policy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription, ApiGatewayV2httpRequestContext,
    ApiGatewayV2httpRequestContextHttpDescription,
};
use lambda_http::request::RequestContext;
use lambda_http::{Body as LambdaBody, RequestExt};
use stockpulse_shared::app::App;
use stockpulse_shared::http::Reply;
use stockpulse_shared::http::envelope::{ApiError, error_response};
use stockpulse_shared::http::routes::{Access, Operation, ROUTES, RouteMatch, match_route};

use auth::{TokenError, TokenVerifier};

/// Bodies above this never reach a handler (the proxy's limit, the Lambda payload limit).
pub const MAX_GATEWAY_BODY: usize = 6 * 1024 * 1024;

pub struct Gateway {
    pub app: App,
    pub tokens: TokenVerifier,
    /// Dev mode: `POST /api/dev/login` exists.
    pub dev: bool,
    /// Folder of the web UI (`frontend/dist`, or the placeholder).
    pub static_dir: PathBuf,
    /// How often this process runs the scheduled job (the Lambda deployment uses EventBridge);
    /// `None`: only when an admin calls `POST /api/jobs/run`.
    pub scheduler_every: Option<std::time::Duration>,
    /// Origins the web UI may call besides its own (`connect-src`): the Cognito domain.
    pub connect_extra: Vec<String>,
}

impl Gateway {
    /// Locally issued tokens come only from dev sign-in: with dev mode off (and no external
    /// issuer) there is no way to sign in, and the tokens dev mode gave out end with it (their
    /// secret file stays in the data folder).
    pub fn has_no_sign_in(&self) -> bool {
        self.tokens.can_mint() && !self.dev
    }
}

/// The axum router: `/api/*` through the shared handlers, everything else static files.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/api", axum::routing::any(api))
        .route("/api/{*rest}", axum::routing::any(api))
        .route("/proxy/{*rest}", axum::routing::any(api))
        .fallback_service(static_files::service(&gateway.static_dir))
        .layer(axum::middleware::from_fn_with_state(
            static_files::content_security_policy(&gateway.connect_extra),
            static_files::security_headers,
        ))
        .with_state(gateway)
}

async fn api(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    let request_id = uuid::Uuid::now_v7().to_string();
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, MAX_GATEWAY_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let error =
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the body is larger than the gateway accepts (6 MiB)");
            return to_axum(error_response(&error, &request_id));
        }
    };
    let path = parts.uri.path().to_owned();
    let method = parts.method.as_str().to_owned();
    let matched = match_route(ROUTES.iter().filter(|r| gateway.dev || !r.dev_only), &method, &path);

    let user_agent = parts.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut http_description = ApiGatewayV2httpRequestContextHttpDescription::default();
    http_description.method = parts.method.clone();
    http_description.path = Some(path.clone());
    http_description.protocol = Some(format!("{:?}", parts.version));
    http_description.source_ip = peer.map(|p| p.ip().to_string());
    http_description.user_agent = user_agent;
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.request_id = Some(request_id.clone());
    context.http = http_description;
    context.time_epoch = chrono::Utc::now().timestamp_millis();

    // Like API Gateway: protected routes need a valid token before any handler runs.
    if let RouteMatch::Found { route, .. } = &matched {
        if route.operation == Operation::DevLogin {
            return to_axum(dev_login::handle(&gateway, &parts.headers, &bytes, &request_id));
        }
        if let Access::AtLeast(_) = route.access {
            if gateway.has_no_sign_in() {
                let error = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "no_sign_in",
                    "this gateway has no sign-in: start it with --dev, or set STOCKPULSE_JWKS_URL for tokens of an external issuer",
                );
                return to_axum(error_response(&error, &request_id));
            }
            let token = bearer(&parts.headers);
            let claims = match token.map(|t| gateway.tokens.verify(t)) {
                None => {
                    return to_axum(error_response(&ApiError::unauthenticated("sign in: send Authorization: Bearer <token>"), &request_id));
                }
                // API Gateway too answers 403 to a valid token without the route's scope.
                Some(Err(e @ TokenError::MissingScope(_))) => {
                    return to_axum(error_response(
                        &ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", e.to_string()),
                        &request_id,
                    ));
                }
                Some(Err(e)) => {
                    let error = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string());
                    return to_axum(error_response(&error, &request_id));
                }
                Some(Ok(claims)) => claims,
            };
            let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
            jwt.claims = claims;
            let mut authorizer = ApiGatewayRequestAuthorizer::default();
            authorizer.jwt = Some(jwt);
            context.authorizer = Some(authorizer);
        }
    }

    // The request's own parts go on as they are (no copy of the headers): only the body and the
    // API Gateway context change.
    let body = if bytes.is_empty() { LambdaBody::Empty } else { LambdaBody::Binary(bytes.to_vec()) };
    let request = http::Request::from_parts(parts, body).with_request_context(RequestContext::ApiGatewayV2(context));
    match stockpulse_shared::http::route_request_streaming(&gateway.app, request).await {
        Reply::Full(response) => to_axum(response),
        Reply::Stream(response) => {
            let (parts, receiver) = response.into_parts();
            // Each chunk goes to the client as soon as the provider sent it.
            let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|chunk| (Ok::<_, std::io::Error>(chunk), receiver))
            });
            Response::from_parts(parts, AxumBody::from_stream(chunks)).into_response()
        }
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

fn to_axum(response: http::Response<LambdaBody>) -> Response {
    let (parts, body) = response.into_parts();
    let body = match body {
        LambdaBody::Empty => AxumBody::empty(),
        LambdaBody::Text(text) => AxumBody::from(text),
        LambdaBody::Binary(bytes) => AxumBody::from(bytes),
        #[allow(unreachable_patterns)]
        _ => AxumBody::empty(),
    };
    Response::from_parts(parts, body).into_response()
}

/// How often usage the proxy learnt after its writes (status classes, latency, tokens) is
/// written out when no request carries it along.
const USAGE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `gateway` on `listener` until `shutdown` completes, then drains open requests and
/// writes out the usage still held in memory.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flusher = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            let mut ticks = tokio::time::interval(USAGE_FLUSH_INTERVAL);
            loop {
                ticks.tick().await;
                if let Err(e) = gateway.app.proxy.flush_usage().await {
                    tracing::warn!(error = %e, "usage flush failed; kept for the next one");
                }
            }
        }
    });
    let scheduler = gateway.scheduler_every.map(|every| {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            // The first run comes one period after start, like the next hourly EventBridge event.
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = gateway.app.scheduler().run(stockpulse_shared::services::scheduler::Scope::All).await {
                    tracing::warn!(error = %e, "scheduled job failed; the next run tries again");
                }
            }
        })
    });
    let served = axum::serve(listener, router(gateway.clone()).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    flusher.abort();
    if let Some(scheduler) = scheduler {
        scheduler.abort();
    }
    if let Err(e) = gateway.app.proxy.flush_usage().await {
        tracing::error!(error = %e, "usage still held in memory could not be written at shutdown");
    }
    served
}
