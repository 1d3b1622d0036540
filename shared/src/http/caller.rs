//! The caller of a request, read from the API Gateway v2 JWT authorizer context.
//!
//! On AWS, API Gateway verified the token and placed its claims there; the local gateway verifies
//! tokens itself and places the same claims in the same place. Handlers cannot tell the difference.

use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};

use crate::domain::access::{Caller, RequestMeta, Role};

use super::envelope::ApiError;

pub const CLAIM_WORKSPACE: &str = "custom:workspace";
pub const CLAIM_GROUPS: &str = "cognito:groups";

fn context(req: &Request) -> Option<&ApiGatewayV2httpRequestContext> {
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => Some(ctx),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Request id, source IP and user agent, from the context (or headers when there is none).
pub fn request_meta(req: &Request) -> RequestMeta {
    let ctx = context(req);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    RequestMeta {
        request_id: ctx.and_then(|c| c.request_id.clone()).unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        source_ip: ctx.and_then(|c| c.http.source_ip.clone()).unwrap_or_default(),
        user_agent: ctx.and_then(|c| c.http.user_agent.clone()).or_else(|| header("user-agent")).unwrap_or_default(),
    }
}

/// The verified caller; 401 without claims, 403 when the claims give no role or workspace.
pub fn caller(req: &Request) -> Result<Caller, ApiError> {
    let claims = context(req)
        .and_then(|c| c.authorizer.as_ref())
        .and_then(|a| a.jwt.as_ref())
        .map(|jwt| &jwt.claims)
        .filter(|claims| claims.get("sub").is_some_and(|s| !s.is_empty()))
        .ok_or_else(|| ApiError::unauthenticated("sign in: this request carries no verified token"))?;
    let get = |name: &str| claims.get(name).map(String::as_str).unwrap_or("").trim();
    let workspace = get(CLAIM_WORKSPACE);
    if workspace.is_empty() {
        return Err(ApiError::new(http::StatusCode::FORBIDDEN, "no_workspace", "the token names no workspace (claim custom:workspace)"));
    }
    let role = Role::from_groups(get(CLAIM_GROUPS)).ok_or_else(|| {
        ApiError::new(http::StatusCode::FORBIDDEN, "no_role", "the token's groups (cognito:groups) include none of admin, member, viewer")
    })?;
    Ok(Caller { sub: get("sub").to_owned(), email: get("email").to_owned(), role, workspace: workspace.to_owned() })
}
