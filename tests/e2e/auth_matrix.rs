//! Every route × every kind of caller answers as the route table says.

use base64::Engine;
use serde_json::json;
use stockpulse_shared::domain::access::Role;
use stockpulse_shared::http::routes::{Access, Operation, ROUTES, Route};
use stockpulse_tests::{Answer, ServerOptions, TestServer, canary};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{create, create_openai};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    NoToken,
    Malformed,
    AlgNone,
    BadSignature,
    Expired,
    WrongIssuer,
    WrongAudience,
    Viewer,
    Member,
    Admin,
    OtherWorkspaceAdmin,
}

const IDENTITIES: [Identity; 11] = [
    Identity::NoToken,
    Identity::Malformed,
    Identity::AlgNone,
    Identity::BadSignature,
    Identity::Expired,
    Identity::WrongIssuer,
    Identity::WrongAudience,
    Identity::Viewer,
    Identity::Member,
    Identity::Admin,
    Identity::OtherWorkspaceAdmin,
];

const WORKSPACE: &str = "ws-matrix";

fn token_for(server: &TestServer, identity: Identity) -> Option<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = |role: &str, ws: &str| TestServer::claims(role, ws);
    Some(match identity {
        Identity::NoToken => return None,
        Identity::Malformed => "not.a.jwt".to_owned(),
        Identity::AlgNone => {
            format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims("admin", WORKSPACE).to_string()))
        }
        Identity::BadSignature => {
            let token = server.sign(&claims("admin", WORKSPACE));
            let (head, _) = token.rsplit_once('.').unwrap();
            format!("{head}.{}", b64.encode([7u8; 32]))
        }
        Identity::Expired => {
            let mut c = claims("admin", WORKSPACE);
            c["exp"] = json!(jsonwebtoken::get_current_timestamp() - 3600);
            server.sign(&c)
        }
        Identity::WrongIssuer => {
            let mut c = claims("admin", WORKSPACE);
            c["iss"] = json!("https://evil.example.com");
            server.sign(&c)
        }
        Identity::WrongAudience => {
            let mut c = claims("admin", WORKSPACE);
            c["aud"] = json!("another-app");
            server.sign(&c)
        }
        Identity::Viewer => server.sign(&claims("viewer", WORKSPACE)),
        Identity::Member => server.sign(&claims("member", WORKSPACE)),
        Identity::Admin => server.sign(&claims("admin", WORKSPACE)),
        Identity::OtherWorkspaceAdmin => server.sign(&claims("admin", "ws-matrix-other")),
    })
}

/// What the matrix workspace holds for the routes that name a resource.
struct Fixture {
    /// A fresh key of the matrix workspace (`{id}` of the key routes), made anew for every row.
    key_id: String,
    /// A notification of the matrix workspace (`{id}` of the notification routes).
    notification_id: String,
}

/// The provider the matrix uses for `{provider}`: its base URL points at a fake provider.
const PROVIDER: &str = "openai";

/// The request a route gets in the matrix.
async fn call(server: &TestServer, route: &Route, fixture: &Fixture, token: Option<&str>) -> Answer {
    let c = &server.client;
    let id = if route.path.starts_with("/api/notifications/") { &fixture.notification_id } else { &fixture.key_id };
    let at = |template: &str| template.replace("{id}", id).replace("{provider}", PROVIDER);
    match route.operation {
        Operation::ProvidersList
        | Operation::KeysList
        | Operation::KeysGet
        | Operation::AuditList
        | Operation::AuditVerify
        | Operation::OpenApi
        | Operation::QuotasGet
        | Operation::UsageGet
        | Operation::NotificationsList => c.get(&at(route.path), token).await,
        Operation::KeysCreate => {
            c.post_json(route.path, token, &json!({"provider": "mistral", "credentials": {"api_key": canary("m")}})).await
        }
        Operation::KeysUpdate => c.patch_json(&at(route.path), token, None, &json!({"label": "changed by the matrix"})).await,
        Operation::KeysDelete | Operation::CachePurge => c.delete(&at(route.path), token, None).await,
        Operation::KeysTestCandidate => {
            c.post_json(route.path, token, &json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await
        }
        Operation::KeysTest | Operation::NotificationsRead => c.post_json(&at(route.path), token, &json!({})).await,
        Operation::KeysRevoke => c.post_json(&at(route.path), token, &json!({"reason": "revoked by the matrix"})).await,
        Operation::KeysRotate => c.post_json(&at(route.path), token, &json!({"credentials": {"api_key": canary("sk-")}})).await,
        Operation::KeysRollback | Operation::JobsRun => c.post_json(&at(route.path), token, &json!({})).await,
        Operation::QuotasPut => {
            let body = json!({"environment": "production", "limits": {"requests_per_minute": 1000}});
            c.put_json(&at(route.path), token, &body).await
        }
        // `ANY`: the matrix proxies a GET to the fake provider's `/models`.
        Operation::Proxy => c.get(&format!("/proxy/{PROVIDER}/models"), token).await,
        Operation::DevLogin => unreachable!("dev-only routes are tested on their own"),
    }
}

fn role_of(identity: Identity) -> Option<Role> {
    match identity {
        Identity::Viewer => Some(Role::Viewer),
        Identity::Member => Some(Role::Member),
        Identity::Admin | Identity::OtherWorkspaceAdmin => Some(Role::Admin),
        _ => None,
    }
}

fn success(route: &Route) -> u16 {
    match route.operation {
        Operation::KeysCreate => 201,
        Operation::KeysDelete => 204,
        // The fixture key is fresh: nothing to roll back to. Access is what the matrix checks.
        Operation::KeysRollback => 409,
        _ => 200,
    }
}

/// What the route table says the answer must be.
fn expected(route: &Route, identity: Identity) -> u16 {
    let Access::AtLeast(required) = route.access else { return success(route) };
    let Some(role) = role_of(identity) else { return 401 };
    if role < required {
        return 403;
    }
    // Another workspace's admin reaches nothing of the matrix workspace: not its keys or
    // notifications by id, and not its provider key through the proxy (that workspace has none).
    if identity == Identity::OtherWorkspaceAdmin && (route.path.contains("{id}") || route.operation == Operation::Proxy) {
        return 404;
    }
    success(route)
}

/// Drives a quota of the matrix workspace over 80 % so that it has a notification, and returns
/// its id. The key it used is removed again (the matrix creates a Mistral key of its own).
async fn quota_notification(server: &TestServer, admin: &str) -> String {
    let c = &server.client;
    let key = create(server, admin, json!({"provider": "mistral", "credentials": {"api_key": canary("")}})).await;
    let quota = json!({"environment": "production", "limits": {"requests_per_day": 1}});
    let put = c.put_json("/api/quotas/mistral", Some(admin), &quota).await;
    assert_eq!(put.status, 200, "{}", put.text);
    let proxied = c.get("/proxy/mistral/models", Some(admin)).await;
    assert_eq!(proxied.status, 200, "{}", proxied.text);
    let list = c.get("/api/notifications", Some(admin)).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let items = list.json["items"].as_array().unwrap();
    let notification = items
        .iter()
        .find(|n| n["provider"] == "mistral" && (n["kind"] == "quota_warning" || n["kind"] == "quota_reached"))
        .unwrap_or_else(|| panic!("no quota notification after reaching the daily quota: {}", list.text));
    let deleted = c.delete(&format!("/api/keys/{}", key.json["id"].as_str().unwrap()), Some(admin), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    notification["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_route_table_says() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": []})))
        .mount(&upstream)
        .await;
    let server =
        TestServer::start_with(ServerOptions::default().upstream(PROVIDER, &upstream.uri()).upstream("mistral", &upstream.uri())).await;
    let admin = token_for(&server, Identity::Admin).unwrap();
    let notification_id = quota_notification(&server, &admin).await;
    let mut rows = 0;
    let mut failures = Vec::new();
    for route in ROUTES.iter().filter(|r| !r.dev_only) {
        for identity in IDENTITIES {
            let key = create_openai(&server, &admin).await;
            let id = key.json["id"].as_str().unwrap().to_owned();
            let fixture = Fixture { key_id: id.clone(), notification_id: notification_id.clone() };
            let token = token_for(&server, identity);
            let answer = call(&server, route, &fixture, token.as_deref()).await;
            let want = expected(route, identity);
            rows += 1;
            if answer.status != want {
                failures
                    .push(format!("{} {} as {identity:?}: want {want}, got {} {}", route.method, route.path, answer.status, answer.text));
            }
            if answer.status >= 400 {
                assert!(answer.json["error"]["code"].is_string(), "not an envelope: {}", answer.text);
            }
            if identity == Identity::OtherWorkspaceAdmin && route.operation == Operation::Proxy && answer.code() != "no_key" {
                failures.push(format!("the proxy as {identity:?}: want no_key, got {}", answer.text));
            }
            if want == 401 {
                assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
            }
            // Leave the workspace as it was for the next row.
            let _ = server.client.delete(&format!("/api/keys/{id}"), Some(&admin), None).await;
            let keys = server.client.get("/api/keys?limit=200", Some(&admin)).await;
            for record in keys.json["items"].as_array().unwrap() {
                let _ = server.client.delete(&format!("/api/keys/{}", record["id"].as_str().unwrap()), Some(&admin), None).await;
            }
        }
    }
    assert!(failures.is_empty(), "{} of {rows} rows disagree with the route table:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(rows, ROUTES.iter().filter(|r| !r.dev_only).count() * IDENTITIES.len());
}

#[tokio::test]
async fn another_workspace_sees_none_of_our_keys_or_audit() {
    let server = TestServer::start().await;
    let ours = server.token("admin", "ws-iso-a").await;
    let theirs = server.token("admin", "ws-iso-b").await;
    let key = create_openai(&server, &ours).await;
    let id = key.json["id"].as_str().unwrap();
    assert_eq!(server.client.get("/api/keys", Some(&theirs)).await.json["items"], json!([]));
    let their_audit = server.client.get("/api/audit", Some(&theirs)).await;
    assert!(their_audit.json["items"].as_array().unwrap().iter().all(|e| e["workspace"] == "ws-iso-b"), "{}", their_audit.text);
    let their_audit_on_key = server.client.get(&format!("/api/audit?key_id={id}"), Some(&theirs)).await;
    assert_eq!(their_audit_on_key.json["items"], json!([]));
    for answer in [
        server.client.get(&format!("/api/keys/{id}"), Some(&theirs)).await,
        server.client.patch_json(&format!("/api/keys/{id}"), Some(&theirs), None, &json!({"label": "mine now"})).await,
        server.client.delete(&format!("/api/keys/{id}"), Some(&theirs), None).await,
        server.client.post_json(&format!("/api/keys/{id}/test"), Some(&theirs), &json!({})).await,
    ] {
        assert_eq!((answer.status, answer.code()), (404, "key_not_found"), "{}", answer.text);
    }
    // Their own key for the same provider is a separate slot.
    create_openai(&server, &theirs).await;
    assert_eq!(server.client.get(&format!("/api/keys/{id}"), Some(&ours)).await.json["label"], "team key");
}

#[tokio::test]
async fn admin_only_providers_refuse_members_and_the_refusal_is_audited() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/account"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "acct"})))
        .mount(&upstream)
        .await;
    let server = TestServer::start_with(ServerOptions::default().upstream("alpaca", &upstream.uri())).await;
    let admin = server.token("admin", "ws-admin-only").await;
    let member = server.token("member", "ws-admin-only").await;
    let viewer = server.token("viewer", "ws-admin-only").await;
    let alpaca =
        json!({"provider": "alpaca", "environment": "development", "credentials": {"key_id": canary("PK"), "secret_key": canary("")}});

    let refused = server.client.post_json("/api/keys", Some(&member), &alpaca).await;
    assert_eq!((refused.status, refused.code()), (403, "admin_only_provider"), "{}", refused.text);
    let refused = server.client.post_json("/api/keys/test", Some(&member), &alpaca).await;
    assert_eq!((refused.status, refused.code()), (403, "admin_only_provider"), "{}", refused.text);

    let created = create(&server, &admin, alpaca.clone()).await;
    let path = format!("/api/keys/{}", created.json["id"].as_str().unwrap());
    assert_eq!(server.client.get(&path, Some(&viewer)).await.status, 200, "viewers see admin-only keys, masked");
    assert_eq!(server.client.get(&path, Some(&member)).await.status, 200);
    for answer in [
        server.client.patch_json(&path, Some(&member), None, &json!({"label": "mine"})).await,
        server.client.post_json(&format!("{path}/test"), Some(&member), &json!({})).await,
    ] {
        assert_eq!((answer.status, answer.code()), (403, "admin_only_provider"), "{}", answer.text);
    }
    assert_eq!(server.client.post_json(&format!("{path}/test"), Some(&admin), &json!({})).await.json["ok"], true);

    // The proxy refuses them too, before the provider sees anything, and audits the refusal.
    let proxied = |token: &str| {
        server
            .client
            .request(reqwest::Method::GET, "/proxy/alpaca/v2/account", Some(token))
            .header("X-StockPulse-Environment", "development")
    };
    let seen_before = upstream.received_requests().await.unwrap().len();
    for token in [&member, &viewer] {
        let answer = server.client.send(proxied(token)).await;
        assert_eq!((answer.status, answer.code()), (403, "admin_only_provider"), "{}", answer.text);
    }
    assert_eq!(upstream.received_requests().await.unwrap().len(), seen_before, "no refused call reached the provider");
    assert_eq!(server.client.send(proxied(&admin)).await.status, 200, "admins use the key through the proxy");

    let denied = server.client.get("/api/audit?provider=alpaca", Some(&admin)).await;
    let outcomes: Vec<(&str, &str)> =
        denied.json["items"].as_array().unwrap().iter().map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap())).collect();
    for expected in [
        ("key.create", "denied"),
        ("key.test_candidate", "denied"),
        ("key.update", "denied"),
        ("key.test", "denied"),
        ("key.create", "success"),
        ("proxy.call", "denied"),
    ] {
        assert!(outcomes.contains(&expected), "{expected:?} not in {outcomes:?}");
    }
    let proxy_refusals = outcomes.iter().filter(|o| **o == ("proxy.call", "denied")).count();
    assert_eq!(proxy_refusals, 2, "one entry per refused proxied call: {outcomes:?}");
}

#[tokio::test]
async fn dev_login_exists_only_in_dev_mode_and_checks_its_input() {
    let dev = TestServer::start().await;
    let bad = dev.client.post_json("/api/dev/login", None, &json!({"email": "a@b.c", "role": "owner", "workspace": "w"})).await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_role"));
    let bad = dev.client.post_json("/api/dev/login", None, &json!({"email": "a@b.c", "role": "admin", "workspace": "../etc"})).await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_workspace"));
    let bad = dev.client.post_json("/api/dev/login", None, &json!({"email": "a@b.c"})).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_body"));

    let prod = TestServer::start_with(ServerOptions { no_dev: true, ..Default::default() }).await;
    let answer = prod.client.post_json("/api/dev/login", None, &json!({"email": "a@b.c", "role": "admin", "workspace": "w"})).await;
    assert_eq!((answer.status, answer.code()), (404, "route_not_found"), "{}", answer.text);
}
