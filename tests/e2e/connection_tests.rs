//! Test connection against fake providers (real HTTP servers on loopback): valid → ok, invalid →
//! `invalid`, server down → `unreachable`, 429 → `rate_limited`, for providers that inject the
//! key differently (bearer header, custom header + version header, query parameter, two headers)
//! and one that answers HTTP 200 with an error body.

use serde_json::{Value, json};
use stockpulse_tests::{ServerOptions, TestServer, canary};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

struct Fake {
    provider: &'static str,
    environment: &'static str,
    /// Path the catalog's test request goes to (relative to the overridden base URL).
    test_path: &'static str,
    good: Value,
    bad: Value,
    /// The matchers a request with the good credentials satisfies.
    accepts: fn(MockBuilder, &Value) -> MockBuilder,
    ok_answer: ResponseTemplate,
    /// What the provider answers a bad key (status and body as the real provider does).
    refusal: fn(&Value) -> ResponseTemplate,
}

fn openai() -> Fake {
    Fake {
        provider: "openai",
        environment: "production",
        test_path: "/models",
        good: json!({"api_key": canary("sk-proj-"), "organization_id": canary("org-")}),
        bad: json!({"api_key": canary("sk-proj-")}),
        accepts: |m, c| {
            m.and(header("authorization", format!("Bearer {}", c["api_key"].as_str().unwrap()).as_str()))
                .and(header("openai-organization", c["organization_id"].as_str().unwrap()))
        },
        ok_answer: ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [{"id": "gpt-x", "object": "model"}]})),
        // OpenAI echoes (part of) the key it refused; the echo must never reach our caller.
        refusal: |c| {
            ResponseTemplate::new(401).set_body_json(json!({"error": {"message": format!("Incorrect API key provided: {}.", c["api_key"].as_str().unwrap()), "type": "invalid_request_error", "code": "invalid_api_key"}}))
        },
    }
}

fn anthropic() -> Fake {
    Fake {
        provider: "anthropic",
        environment: "production",
        test_path: "/v1/models",
        good: json!({"api_key": canary("sk-ant-api03-")}),
        bad: json!({"api_key": canary("sk-ant-api03-")}),
        accepts: |m, c| m.and(header("x-api-key", c["api_key"].as_str().unwrap())).and(header("anthropic-version", "2023-06-01")),
        ok_answer: ResponseTemplate::new(200).set_body_json(json!({"data": [{"id": "claude-x", "type": "model"}], "has_more": false})),
        refusal: |_| {
            ResponseTemplate::new(401)
                .set_body_json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}))
        },
    }
}

fn alpha_vantage() -> Fake {
    Fake {
        provider: "alphavantage",
        environment: "production",
        test_path: "/query",
        good: json!({"api_key": canary("AV")}),
        bad: json!({"api_key": canary("AV")}),
        accepts: |m, c| m.and(query_param("apikey", c["api_key"].as_str().unwrap())).and(query_param("function", "GLOBAL_QUOTE")),
        ok_answer: ResponseTemplate::new(200).set_body_json(json!({"Global Quote": {"01. symbol": "IBM", "05. price": "190.0"}})),
        // Alpha Vantage refuses a key with HTTP 200 and an error body.
        refusal: |_| {
            ResponseTemplate::new(200).set_body_json(json!({"Error Message": "the parameter apikey is invalid or missing. Please claim your free API key on (https://www.alphavantage.co/support/#api-key)."}))
        },
    }
}

fn alpaca() -> Fake {
    Fake {
        provider: "alpaca",
        environment: "development",
        test_path: "/v2/account",
        good: json!({"key_id": canary("PK"), "secret_key": canary("")}),
        bad: json!({"key_id": canary("PK"), "secret_key": canary("")}),
        accepts: |m, c| {
            m.and(header("apca-api-key-id", c["key_id"].as_str().unwrap()))
                .and(header("apca-api-secret-key", c["secret_key"].as_str().unwrap()))
        },
        ok_answer: ResponseTemplate::new(200).set_body_json(json!({"id": "acct-1", "status": "ACTIVE", "currency": "USD"})),
        refusal: |_| ResponseTemplate::new(401).set_body_json(json!({"code": 40110000, "message": "request is not authorized"})),
    }
}

async fn provider_server(fake: &Fake) -> MockServer {
    let upstream = MockServer::start().await;
    (fake.accepts)(Mock::given(method("GET")).and(path(fake.test_path)), &fake.good)
        .respond_with(fake.ok_answer.clone())
        .with_priority(1)
        .mount(&upstream)
        .await;
    Mock::given(method("GET")).and(path(fake.test_path)).respond_with((fake.refusal)(&fake.bad)).with_priority(10).mount(&upstream).await;
    upstream
}

async fn candidate(server: &TestServer, token: &str, fake: &Fake, credentials: &Value) -> Value {
    let answer = server
        .client
        .post_json(
            "/api/keys/test",
            Some(token),
            &json!({"provider": fake.provider, "environment": fake.environment, "credentials": credentials}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    for value in credentials.as_object().unwrap().values() {
        assert!(!answer.text.contains(value.as_str().unwrap()), "the answer contains a key: {}", answer.text);
    }
    answer.json
}

/// A loopback port with nothing listening.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

async fn check_all_outcomes(fake: Fake) {
    let upstream = provider_server(&fake).await;
    let server = TestServer::start_with(ServerOptions::default().upstream(fake.provider, &upstream.uri())).await;
    let token = server.token("admin", &format!("ws-conn-{}", fake.provider)).await;

    let valid = candidate(&server, &token, &fake, &fake.good).await;
    assert_eq!((valid["ok"].clone(), valid["status"].clone()), (json!(true), json!("valid")), "{}: {valid}", fake.provider);
    assert!(valid["latency_ms"].is_u64());

    let invalid = candidate(&server, &token, &fake, &fake.bad).await;
    assert_eq!((invalid["ok"].clone(), invalid["status"].clone()), (json!(false), json!("invalid")), "{}: {invalid}", fake.provider);
    assert!(!invalid["message"].as_str().unwrap().is_empty());

    // The stored key: its test result is kept on the record, and a refusal marks it invalid.
    let created = server
        .client
        .post_json(
            "/api/keys",
            Some(&token),
            &json!({"provider": fake.provider, "environment": fake.environment, "credentials": fake.good}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let tested = server.client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!(tested.json["status"], "valid", "{}", tested.text);
    let record = server.client.get(&format!("/api/keys/{id}"), Some(&token)).await;
    assert_eq!(record.json["last_test"]["status"], "valid");
    assert!(record.json["last_verified_at"].is_string());
    assert_eq!(record.json["status"], "active");
    assert_eq!(record.header("etag"), Some("\"1\""), "a test does not change the ETag");

    let patched = server.client.patch_json(&format!("/api/keys/{id}"), Some(&token), None, &json!({"credentials": fake.bad})).await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let tested = server.client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!(tested.json["status"], "invalid", "{}", tested.text);
    let record = server.client.get(&format!("/api/keys/{id}"), Some(&token)).await;
    assert_eq!(record.json["status"], "invalid");
    let audit = server.client.get(&format!("/api/audit?key_id={id}&action=key.test"), Some(&token)).await;
    let outcomes: Vec<&str> = audit.json["items"].as_array().unwrap().iter().map(|e| e["detail"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["test: invalid", "test: valid"]);

    // Throttled.
    let throttled = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": {"message": "Rate limit reached"}, "message": "Rate limit reached"})),
        )
        .mount(&throttled)
        .await;
    let server_429 = TestServer::start_with(ServerOptions::default().upstream(fake.provider, &throttled.uri())).await;
    let token_429 = server_429.token("admin", "ws-conn-429").await;
    let limited = candidate(&server_429, &token_429, &fake, &fake.good).await;
    assert_eq!(limited["status"], "rate_limited", "{}: {limited}", fake.provider);

    // Down.
    let server_down = TestServer::start_with(ServerOptions::default().upstream(fake.provider, &closed_port_url())).await;
    let token_down = server_down.token("admin", "ws-conn-down").await;
    let down = candidate(&server_down, &token_down, &fake, &fake.good).await;
    assert_eq!((down["ok"].clone(), down["status"].clone()), (json!(false), json!("unreachable")), "{}: {down}", fake.provider);
    assert!(down["upstream_status"].is_null());
}

#[tokio::test]
async fn openai_bearer_and_organization_header() {
    check_all_outcomes(openai()).await;
}

#[tokio::test]
async fn anthropic_api_key_and_version_headers() {
    check_all_outcomes(anthropic()).await;
}

#[tokio::test]
async fn alpha_vantage_query_key_and_200_error_body() {
    check_all_outcomes(alpha_vantage()).await;
}

#[tokio::test]
async fn alpaca_paper_with_two_headers() {
    check_all_outcomes(alpaca()).await;
}

#[tokio::test]
async fn alpha_vantage_throttle_in_a_200_body_is_rate_limited() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/query"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"Information": "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day."}),
        ))
        .mount(&upstream)
        .await;
    let server = TestServer::start_with(ServerOptions::default().upstream("alphavantage", &upstream.uri())).await;
    let token = server.token("member", "ws-conn-av").await;
    let answer = candidate(&server, &token, &alpha_vantage(), &json!({"api_key": canary("AV")})).await;
    assert_eq!(answer["status"], "rate_limited", "{answer}");
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", format!("{}/steal", elsewhere.uri()).as_str()))
        .mount(&upstream)
        .await;
    let server = TestServer::start_with(ServerOptions::default().upstream("openai", &upstream.uri())).await;
    let token = server.token("member", "ws-conn-redirect").await;
    let answer = candidate(&server, &token, &openai(), &json!({"api_key": canary("sk-")})).await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["upstream_status"], 302);
    elsewhere.verify().await;
}
