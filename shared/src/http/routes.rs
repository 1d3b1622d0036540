//! The route table, declared once: the local gateway, the Lambda functions, the tests and the
//! check of `template.yaml` all derive from it.

use crate::domain::access::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ProvidersList,
    KeysList,
    KeysGet,
    KeysCreate,
    KeysUpdate,
    KeysDelete,
    KeysTestCandidate,
    KeysTest,
    KeysRevoke,
    KeysRotate,
    KeysRollback,
    JobsRun,
    AuditList,
    AuditVerify,
    OpenApi,
    DevLogin,
    Proxy,
    QuotasGet,
    QuotasPut,
    UsageGet,
    NotificationsList,
    NotificationsRead,
    CachePurge,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// A verified token with at least this role.
    AtLeast(Role),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// An HTTP method, or `ANY` (the proxy forwards every method).
    pub method: &'static str,
    /// Path template; `{name}` matches one non-empty segment, a last `{name+}` the rest of the
    /// path (one or more segments, raw).
    pub path: &'static str,
    pub operation: Operation,
    pub access: Access,
    /// The Lambda function that serves it; `None` for routes that only exist locally.
    pub function: Option<&'static str>,
    /// Exists only when the local gateway runs in dev mode.
    pub dev_only: bool,
}

const fn route(method: &'static str, path: &'static str, operation: Operation, access: Access, function: &'static str) -> Route {
    Route { method, path, operation, access, function: Some(function), dev_only: false }
}

use Access::{AtLeast, Public};
use Operation::*;
use Role::{Admin, Member, Viewer};

/// Lambda functions started by an event other than an HTTP request (the EventBridge schedule, the
/// Cognito pre-token-generation trigger): they serve no route, so `functions()` does not list them.
pub const EVENT_FUNCTIONS: &[&str] = &["scheduler", "token-claims"];

pub const ROUTES: &[Route] = &[
    route("GET", "/api/providers", ProvidersList, AtLeast(Viewer), "providers-list"),
    route("GET", "/api/keys", KeysList, AtLeast(Viewer), "keys-list"),
    route("POST", "/api/keys", KeysCreate, AtLeast(Member), "keys-create"),
    route("POST", "/api/keys/test", KeysTestCandidate, AtLeast(Member), "keys-test"),
    route("GET", "/api/keys/{id}", KeysGet, AtLeast(Viewer), "keys-get"),
    route("PATCH", "/api/keys/{id}", KeysUpdate, AtLeast(Member), "keys-update"),
    route("DELETE", "/api/keys/{id}", KeysDelete, AtLeast(Admin), "keys-delete"),
    route("POST", "/api/keys/{id}/test", KeysTest, AtLeast(Member), "keys-test"),
    route("POST", "/api/keys/{id}/revoke", KeysRevoke, AtLeast(Member), "keys-revoke"),
    route("POST", "/api/keys/{id}/rotate", KeysRotate, AtLeast(Member), "keys-rotate"),
    route("POST", "/api/keys/{id}/rollback", KeysRollback, AtLeast(Member), "keys-rotate"),
    route("POST", "/api/jobs/run", JobsRun, AtLeast(Admin), "jobs-run"),
    route("GET", "/api/audit", AuditList, AtLeast(Viewer), "audit-list"),
    route("GET", "/api/audit/verify", AuditVerify, AtLeast(Viewer), "audit-verify"),
    route("GET", "/api/openapi.json", OpenApi, Public, "openapi"),
    route("ANY", "/proxy/{provider}/{path+}", Proxy, AtLeast(Viewer), "proxy"),
    route("GET", "/api/quotas/{provider}", QuotasGet, AtLeast(Viewer), "quotas"),
    route("PUT", "/api/quotas/{provider}", QuotasPut, AtLeast(Admin), "quotas"),
    route("GET", "/api/usage", UsageGet, AtLeast(Viewer), "usage"),
    route("GET", "/api/notifications", NotificationsList, AtLeast(Viewer), "notifications"),
    route("POST", "/api/notifications/{id}/read", NotificationsRead, AtLeast(Viewer), "notifications"),
    route("DELETE", "/api/cache/{provider}", CachePurge, AtLeast(Admin), "cache-purge"),
    Route { method: "POST", path: "/api/dev/login", operation: DevLogin, access: Public, function: None, dev_only: true },
];

/// Every Lambda function name, in route-table order, without repeats.
pub fn functions() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for name in ROUTES.iter().filter_map(|r| r.function) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Found {
        route: &'static Route,
        params: Vec<(&'static str, String)>,
    },
    /// The path exists but not with this method; lists the methods it has.
    MethodNotAllowed(Vec<&'static str>),
    NotFound,
}

fn match_template(template: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with("+}") => {
                let rest: Vec<&str> = std::iter::once(ps).chain(p.by_ref()).collect();
                let rest = rest.join("/");
                if rest.is_empty() || t.next().is_some() {
                    return None;
                }
                params.push((&ts[1..ts.len() - 2], rest));
                return Some(params);
            }
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') => {
                if ps.is_empty() {
                    return None;
                }
                params.push((&ts[1..ts.len() - 1], ps.to_owned()));
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Finds the route for `method` and `path` among `routes`; literal segments win over parameters
/// (`POST /api/keys/test` is the candidate test, not a key called `test`).
pub fn match_route(routes: impl IntoIterator<Item = &'static Route>, method: &str, path: &str) -> RouteMatch {
    let mut best: Option<(&'static Route, Vec<(&'static str, String)>)> = None;
    let mut methods = Vec::new();
    for route in routes {
        let Some(params) = match_template(route.path, path) else { continue };
        if route.method != method && route.method != "ANY" {
            if !methods.contains(&route.method) {
                methods.push(route.method);
            }
            continue;
        }
        if best.as_ref().is_none_or(|(_, p)| params.len() < p.len()) {
            best = Some((route, params));
        }
    }
    match best {
        Some((route, params)) => RouteMatch::Found { route, params },
        None if !methods.is_empty() => RouteMatch::MethodNotAllowed(methods),
        None => RouteMatch::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_segments_win_and_params_are_captured() {
        let RouteMatch::Found { route, params } = match_route(ROUTES, "POST", "/api/keys/test") else { panic!() };
        assert_eq!(route.operation, Operation::KeysTestCandidate);
        assert!(params.is_empty());
        let RouteMatch::Found { route, params } = match_route(ROUTES, "POST", "/api/keys/abc/test") else { panic!() };
        assert_eq!((route.operation, params), (Operation::KeysTest, vec![("id", "abc".to_owned())]));
        assert_eq!(match_route(ROUTES, "PUT", "/api/keys/abc"), RouteMatch::MethodNotAllowed(vec!["GET", "PATCH", "DELETE"]));
        assert_eq!(match_route(ROUTES, "GET", "/api/keys/"), RouteMatch::NotFound);
        assert_eq!(match_route(ROUTES, "GET", "/api/nope"), RouteMatch::NotFound);
        let RouteMatch::Found { route, params } = match_route(ROUTES, "PATCH", "/proxy/openai/v1/models/x") else { panic!() };
        assert_eq!(route.operation, Operation::Proxy);
        assert_eq!(params, vec![("provider", "openai".to_owned()), ("path", "v1/models/x".to_owned())]);
        assert_eq!(match_route(ROUTES, "GET", "/proxy/openai"), RouteMatch::NotFound);
        assert_eq!(match_route(ROUTES, "GET", "/proxy/openai/"), RouteMatch::NotFound);
    }

    #[test]
    fn every_route_is_unique_and_functions_are_listed_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(!(a.method == b.method && a.path == b.path), "duplicate route {} {}", a.method, a.path);
            }
        }
        assert_eq!(
            functions(),
            [
                "providers-list",
                "keys-list",
                "keys-create",
                "keys-test",
                "keys-get",
                "keys-update",
                "keys-delete",
                "keys-revoke",
                "keys-rotate",
                "jobs-run",
                "audit-list",
                "audit-verify",
                "openapi",
                "proxy",
                "quotas",
                "usage",
                "notifications",
                "cache-purge"
            ]
        );
    }
}
