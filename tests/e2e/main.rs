//! End-to-end tests of the API through the real local gateway on loopback, plus the Lambda
//! handlers fed API Gateway v2 events. Fake providers are real HTTP servers (wiremock) on
//! loopback. Every stored credential is a canary; `canary-scan` checks them after the run.

mod audit_trail;
mod auth_matrix;
mod aws_backend;
mod aws_costs;
mod aws_faults;
mod bad_input;
mod concurrency;
mod conformance_aws;
mod conformance_embedded;
mod connection_tests;
mod crud;
mod event_bus;
mod gateway_process;
mod jwks_tokens;
mod lambda_binaries;
mod lambda_events;
mod openapi;
mod port_faults;
mod properties;
mod proxy;
mod proxy_escapes;
mod proxy_injection;
mod revocation;
mod revocation_release;
mod rotation;
mod rotation_crash;
mod scheduler;
mod schemathesis;
mod secrets_manager_labels;
mod template_iam;
mod template_routes;
mod template_security;
mod template_site;
mod user_docs;
mod vault_integrity;

use serde_json::{Value, json};
use stockpulse_tests::{Answer, TestServer, canary};

/// The fields the issue requires of a key record in any answer (never a credential value).
pub const KEY_RECORD_FIELDS: [&str; 13] = [
    "id",
    "provider",
    "environment",
    "label",
    "masked",
    "status",
    "version",
    "created_at",
    "updated_at",
    "last_used_at",
    "last_verified_at",
    "last_test",
    "warnings",
];

/// A fake provider on loopback whose `GET /models` (OpenAI's test request) answers 200 with an
/// empty list, as a valid key's test does.
pub async fn provider_listing_no_models() -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&upstream)
        .await;
    upstream
}

/// A valid OpenAI key shape with a canary body.
pub fn openai_key() -> String {
    canary("sk-proj-")
}

/// Creates an OpenAI production key in the token's workspace and returns the answer (201).
pub async fn create_openai(server: &TestServer, token: &str) -> Answer {
    create(
        server,
        token,
        json!({"provider": "openai", "environment": "production", "label": "team key", "credentials": {"api_key": openai_key()}}),
    )
    .await
}

pub async fn create(server: &TestServer, token: &str, body: Value) -> Answer {
    let answer = server.client.post_json("/api/keys", Some(token), &body).await;
    assert_eq!(answer.status, 201, "create: {}", answer.text);
    answer
}

/// The number of audit entries the workspace has (through the API).
pub async fn audit_count(server: &TestServer, token: &str) -> u64 {
    let answer = server.client.get("/api/audit/verify", Some(token)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json["checked"].as_u64().unwrap()
}

/// All key records of the workspace, through the API.
pub async fn all_keys(server: &TestServer, token: &str) -> Vec<Value> {
    let answer = server.client.get("/api/keys?limit=200", Some(token)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json["items"].as_array().unwrap().clone()
}
