//! With an issuer's JWKS configured (a Cognito user pool, say), the gateway verifies RS256
//! tokens against it: issuer, audience, expiry and key id are all checked, and HS256 tokens
//! (algorithm confusion) are refused. With the deployment's scope required, Cognito access tokens
//! (audience in `client_id`, the scope in `scope`) pass and ID tokens do not, as behind API
//! Gateway's JWT authorizer.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use stockpulse_tests::{ServerOptions, TestServer, read_workspace_file};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_test";
const AUDIENCE: &str = "spa-client-id";

fn claims(workspace: &str) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"sub": "cognito-user-1", "email": "ana@example.com", "cognito:groups": ["member"], "custom:workspace": workspace,
           "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, "token_use": "id"})
}

fn rs256(claims: &Value, kid: &str) -> String {
    let key = EncodingKey::from_rsa_pem(read_workspace_file("tests/fixtures/jwks-test-rsa.pem").as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

async fn issuer() -> MockServer {
    let issuer = MockServer::start().await;
    let jwks: Value = serde_json::from_str(&read_workspace_file("tests/fixtures/jwks-test.json")).unwrap();
    Mock::given(method("GET"))
        .and(path("/.well-known/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(jwks))
        .mount(&issuer)
        .await;
    issuer
}

#[tokio::test]
async fn rs256_tokens_from_the_configured_issuer_are_accepted_and_nothing_else() {
    let issuer = issuer().await;
    let server = TestServer::start_with(ServerOptions {
        jwks: Some((format!("{}/.well-known/jwks.json", issuer.uri()), ISSUER.to_owned(), AUDIENCE.to_owned())),
        ..Default::default()
    })
    .await;

    let good = rs256(&claims("ws-jwks"), "test-key-1");
    let answer = server.client.get("/api/keys", Some(&good)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    let mut expired = claims("ws-jwks");
    expired["exp"] = json!(jsonwebtoken::get_current_timestamp() - 600);
    let mut other_issuer = claims("ws-jwks");
    other_issuer["iss"] = json!("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_other");
    let mut other_audience = claims("ws-jwks");
    other_audience["aud"] = json!("another-client");
    // Algorithm confusion: HS256 signed with the public key's bytes must not pass.
    let confused =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("ws-jwks"), &EncodingKey::from_secret(b"public key bytes")).unwrap();
    for (what, token) in [
        ("expired", rs256(&expired, "test-key-1")),
        ("other issuer", rs256(&other_issuer, "test-key-1")),
        ("other audience", rs256(&other_audience, "test-key-1")),
        ("unknown key id", rs256(&claims("ws-jwks"), "rotated-away")),
        ("HS256", confused),
    ] {
        let answer = server.client.get("/api/keys", Some(&token)).await;
        assert_eq!((answer.status, answer.code()), (401, "invalid_token"), "{what}: {}", answer.text);
    }

    let login = server.client.post_json("/api/dev/login", None, &json!({"email": "a@b.c", "role": "admin", "workspace": "w"})).await;
    assert_eq!((login.status, login.code()), (404, "dev_login_unavailable"), "no local tokens while an issuer is configured");
}

/// A Cognito access token as the pre-token-generation trigger (token-claims) completes it.
fn access_token_claims(workspace: Option<&str>, client_id: &str, scope: &str) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({"sub": "cognito-user-2", "cognito:groups": ["admin"], "iss": ISSUER, "client_id": client_id,
                            "token_use": "access", "scope": scope, "username": "cognito-user-2", "iat": now, "exp": now + 600,
                            "email": "bo@example.com"});
    if let Some(workspace) = workspace {
        claims["custom:workspace"] = json!(workspace);
    }
    claims
}

#[tokio::test]
async fn with_the_api_scope_required_access_tokens_pass_and_id_tokens_do_not() {
    let issuer = issuer().await;
    let server = TestServer::start_with(ServerOptions {
        jwks: Some((format!("{}/.well-known/jwks.json", issuer.uri()), ISSUER.to_owned(), AUDIENCE.to_owned())),
        jwt_scope: Some("stockpulse-keys/api".to_owned()),
        ..Default::default()
    })
    .await;
    let scopes = "openid email stockpulse-keys/api";

    let access = rs256(&access_token_claims(Some("ws-scope"), AUDIENCE, scopes), "test-key-1");
    let answer = server.client.get("/api/keys", Some(&access)).await;
    assert_eq!(answer.status, 200, "an access token of the app client with the API scope: {}", answer.text);

    let id_token = rs256(&claims("ws-scope"), "test-key-1");
    let answer = server.client.get("/api/keys", Some(&id_token)).await;
    assert_eq!((answer.status, answer.code()), (403, "insufficient_scope"), "an ID token has no scope: {}", answer.text);

    let without_scope = rs256(&access_token_claims(Some("ws-scope"), AUDIENCE, "openid email"), "test-key-1");
    let answer = server.client.get("/api/keys", Some(&without_scope)).await;
    assert_eq!((answer.status, answer.code()), (403, "insufficient_scope"), "{}", answer.text);

    let other_client = rs256(&access_token_claims(Some("ws-scope"), "another-client", scopes), "test-key-1");
    let answer = server.client.get("/api/keys", Some(&other_client)).await;
    assert_eq!((answer.status, answer.code()), (401, "invalid_token"), "client_id of another app: {}", answer.text);

    // A user the trigger found no workspace for: verified, but the API refuses them.
    let no_workspace = rs256(&access_token_claims(None, AUDIENCE, scopes), "test-key-1");
    let answer = server.client.get("/api/keys", Some(&no_workspace)).await;
    assert_eq!((answer.status, answer.code()), (403, "no_workspace"), "{}", answer.text);
}

/// Verified tokens that name no role or no workspace are refused with 403 on every kind of route
/// (a read, a write, a key's own route, the job trigger, the proxy), before anything happens:
/// the key and its audit trail stay as they were and the provider sees nothing.
#[tokio::test]
async fn verified_tokens_without_a_role_or_a_workspace_are_refused_and_change_nothing() {
    let issuer = issuer().await;
    let provider = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&provider)
        .await;
    let server = TestServer::start_with(
        ServerOptions {
            jwks: Some((format!("{}/.well-known/jwks.json", issuer.uri()), ISSUER.to_owned(), AUDIENCE.to_owned())),
            jwt_scope: Some("stockpulse-keys/api".to_owned()),
            ..Default::default()
        }
        .upstream("openai", &provider.uri()),
    )
    .await;
    let scopes = "openid email stockpulse-keys/api";
    let ws = format!("ws-no-role-{}", uuid::Uuid::new_v4().simple());
    let admin = rs256(&access_token_claims(Some(&ws), AUDIENCE, scopes), "test-key-1");
    let created = crate::create_openai(&server, &admin).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    let before = server.client.get(&format!("/api/keys/{id}"), Some(&admin)).await;
    let audit_before = crate::audit_count(&server, &admin).await;

    let with_groups = |groups: Value| {
        let mut claims = access_token_claims(Some(&ws), AUDIENCE, scopes);
        claims["cognito:groups"] = groups;
        rs256(&claims, "test-key-1")
    };
    let mut without_groups = access_token_claims(Some(&ws), AUDIENCE, scopes);
    without_groups.as_object_mut().unwrap().remove("cognito:groups");
    let mut blank_workspace = access_token_claims(Some("  "), AUDIENCE, scopes);
    blank_workspace["cognito:groups"] = json!(["admin"]);
    let refused = [
        ("groups that name no role", with_groups(json!(["staff", "admins"])), "no_role"),
        ("no groups at all", with_groups(json!([])), "no_role"),
        ("no groups claim", rs256(&without_groups, "test-key-1"), "no_role"),
        ("no workspace", rs256(&access_token_claims(None, AUDIENCE, scopes), "test-key-1"), "no_workspace"),
        ("a blank workspace", rs256(&blank_workspace, "test-key-1"), "no_workspace"),
    ];
    let other_key = json!({"provider": "openai", "environment": "development", "credentials": {"api_key": crate::openai_key()}});
    for (what, token, code) in &refused {
        let calls = [
            ("GET /api/keys", server.client.get("/api/keys", Some(token)).await),
            ("POST /api/keys", server.client.post_json("/api/keys", Some(token), &other_key).await),
            (
                "PATCH /api/keys/{id}",
                server
                    .client
                    .patch_json(&format!("/api/keys/{id}"), Some(token), before.header("etag"), &json!({"label": "taken over"}))
                    .await,
            ),
            ("DELETE /api/keys/{id}", server.client.delete(&format!("/api/keys/{id}"), Some(token), before.header("etag")).await),
            ("POST /api/jobs/run", server.client.post_json("/api/jobs/run", Some(token), &json!({})).await),
            ("GET /proxy/openai/models", server.client.get("/proxy/openai/models", Some(token)).await),
        ];
        for (route, answer) in calls {
            assert_eq!((answer.status, answer.code()), (403, *code), "{what}, {route}: {}", answer.text);
        }
    }

    let after = server.client.get(&format!("/api/keys/{id}"), Some(&admin)).await;
    assert_eq!(after.json, before.json, "the key is unchanged");
    assert_eq!(crate::all_keys(&server, &admin).await.len(), 1, "no key was added");
    assert_eq!(crate::audit_count(&server, &admin).await, audit_before, "nothing was audited as done");
    assert!(provider.received_requests().await.unwrap().is_empty(), "the provider saw nothing");
    // The same calls with a role and a workspace do get through (the refusals above are not the
    // routes' own failures).
    let proxied = server.client.get("/proxy/openai/models", Some(&admin)).await;
    assert_eq!(proxied.status, 200, "{}", proxied.text);
}
