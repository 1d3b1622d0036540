//! Bad input gets a clear 4xx in the envelope and changes nothing.

use serde_json::{Value, json};
use stockpulse_tests::{Answer, ServerOptions, TestServer, canary};

use crate::{all_keys, audit_count, create_openai, openai_key};

/// Sends `body` as raw bytes with a JSON content type.
async fn raw(server: &TestServer, method: reqwest::Method, path: &str, token: &str, body: Vec<u8>) -> Answer {
    server.client.send(server.client.request(method, path, Some(token)).header("content-type", "application/json").body(body)).await
}

fn assert_envelope(answer: &Answer, status: u16, code: &str) {
    assert_eq!((answer.status, answer.code()), (status, code), "{}", answer.text);
    let error = &answer.json["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer.text);
    assert_eq!(error["request_id"].as_str(), answer.header("x-stockpulse-request-id"), "{}", answer.text);
}

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let token = server.token("admin", "ws-bad-1").await;
    let existing = create_openai(&server, &token).await;
    let id = existing.json["id"].as_str().unwrap().to_owned();
    let before_keys = all_keys(&server, &token).await;
    let before_audit = audit_count(&server, &token).await;
    let key = openai_key();
    let post = reqwest::Method::POST;

    let cases: Vec<(&str, Answer, u16, &str, Option<&str>)> = vec![
        (
            "invalid JSON",
            raw(&server, post.clone(), "/api/keys", &token, b"{\"provider\": \"openai\",".to_vec()).await,
            400,
            "invalid_json",
            None,
        ),
        (
            "trailing garbage",
            raw(&server, post.clone(), "/api/keys", &token, br#"{"provider": "groq", "credentials": {"api_key": "gsk_x"}} {}"#.to_vec())
                .await,
            400,
            "invalid_json",
            None,
        ),
        ("empty body", raw(&server, post.clone(), "/api/keys", &token, Vec::new()).await, 400, "empty_body", None),
        (
            "unknown provider",
            server.client.post_json("/api/keys", Some(&token), &json!({"provider": "nosuch", "credentials": {"api_key": key}})).await,
            422,
            "unknown_provider",
            Some("provider"),
        ),
        (
            "unknown top-level field",
            server
                .client
                .post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": key}, "workspace": "other"}))
                .await,
            400,
            "unknown_field",
            Some("workspace"),
        ),
        (
            "unknown credential field",
            server
                .client
                .post_json("/api/keys", Some(&token), &json!({"provider": "mistral", "credentials": {"api_key": key, "password": key}}))
                .await,
            422,
            "unknown_credential_field",
            Some("credentials.password"),
        ),
        (
            "credentials of the wrong type",
            server.client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": key})).await,
            400,
            "invalid_value",
            Some("credentials"),
        ),
        (
            "credential value of the wrong type",
            server.client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": 12345}})).await,
            400,
            "invalid_value",
            Some("credentials.api_key"),
        ),
        (
            "label of the wrong type",
            server
                .client
                .post_json("/api/keys", Some(&token), &json!({"provider": "openai", "label": ["x"], "credentials": {"api_key": key}}))
                .await,
            400,
            "invalid_value",
            Some("label"),
        ),
        (
            "unknown environment",
            server
                .client
                .post_json("/api/keys", Some(&token), &json!({"provider": "groq", "environment": key, "credentials": {"api_key": key}}))
                .await,
            400,
            "invalid_value",
            Some("environment"),
        ),
        (
            "missing credentials",
            server.client.post_json("/api/keys", Some(&token), &json!({"provider": "openai"})).await,
            400,
            "missing_field",
            Some("credentials"),
        ),
        (
            "empty credential",
            server.client.post_json("/api/keys", Some(&token), &json!({"provider": "groq", "credentials": {"api_key": ""}})).await,
            422,
            "empty_credential",
            Some("credentials.api_key"),
        ),
        (
            "whitespace in a credential",
            server
                .client
                .post_json("/api/keys", Some(&token), &json!({"provider": "groq", "credentials": {"api_key": format!("{key} \n")}}))
                .await,
            422,
            "credential_has_whitespace",
            Some("credentials.api_key"),
        ),
        (
            "credential over 4 KiB",
            server
                .client
                .post_json(
                    "/api/keys",
                    Some(&token),
                    &json!({"provider": "groq", "credentials": {"api_key": format!("{key}{}", "x".repeat(4096))}}),
                )
                .await,
            422,
            "credential_too_long",
            Some("credentials.api_key"),
        ),
        (
            "missing required field",
            server
                .client
                .post_json("/api/keys", Some(&token), &json!({"provider": "alpaca", "credentials": {"key_id": canary("PK")}}))
                .await,
            422,
            "missing_credential",
            Some("credentials.secret_key"),
        ),
        (
            "body over 64 KiB",
            server
                .client
                .post_json(
                    "/api/keys",
                    Some(&token),
                    &json!({"provider": "openai", "label": "x".repeat(70 * 1024), "credentials": {"api_key": key}}),
                )
                .await,
            413,
            "body_too_large",
            None,
        ),
        (
            "body over the gateway limit",
            raw(&server, post.clone(), "/api/keys", &token, vec![b' '; 7 * 1024 * 1024]).await,
            413,
            "body_too_large",
            None,
        ),
        (
            "not JSON at all",
            server
                .client
                .send(server.client.request(post.clone(), "/api/keys", Some(&token)).header("content-type", "text/plain").body(key.clone()))
                .await,
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "label too long",
            server.client.patch_json(&format!("/api/keys/{id}"), Some(&token), None, &json!({"label": "x".repeat(101)})).await,
            422,
            "label_too_long",
            Some("label"),
        ),
        (
            "unknown query parameter",
            server.client.get("/api/keys?workspace=other", Some(&token)).await,
            400,
            "unknown_parameter",
            Some("workspace"),
        ),
        ("unknown route", server.client.get("/api/secrets", Some(&token)).await, 404, "route_not_found", None),
        ("unknown route without token", server.client.get("/api/nothing/here", None).await, 404, "route_not_found", None),
        (
            "wrong method",
            server.client.send(server.client.request(reqwest::Method::PUT, "/api/keys", Some(&token))).await,
            405,
            "method_not_allowed",
            None,
        ),
        ("unknown key id", server.client.get("/api/keys/does-not-exist", Some(&token)).await, 404, "key_not_found", None),
    ];
    for (what, answer, status, code, field) in &cases {
        assert_eq!((answer.status, answer.code()), (*status, *code), "{what}: {}", answer.text);
        assert_envelope(answer, *status, code);
        if let Some(field) = field {
            assert_eq!(answer.json["error"]["field"].as_str(), Some(*field), "{what}: {}", answer.text);
        }
        assert!(!answer.text.contains(&key), "{what} echoed the key: {}", answer.text);
    }
    let wrong_method = &cases.iter().find(|c| c.0 == "wrong method").unwrap().1;
    assert_eq!(wrong_method.header("allow"), Some("GET, POST"));

    assert_eq!(all_keys(&server, &token).await, before_keys, "no key changed");
    assert_eq!(audit_count(&server, &token).await, before_audit, "no audit entry was written");
}

#[tokio::test]
async fn arbitrary_json_shapes_never_cause_a_server_error() {
    // Nothing may reach a real provider: OpenAI points at a closed loopback port.
    let server = TestServer::start_with(ServerOptions::default().upstream("openai", "http://127.0.0.1:9")).await;
    let token = server.token("admin", "ws-bad-2").await;
    let id = create_openai(&server, &token).await.json["id"].as_str().unwrap().to_owned();
    let shapes: Vec<Value> = vec![
        json!(null),
        json!(1),
        json!("text"),
        json!([]),
        json!([{"provider": "openai"}]),
        json!({"provider": null}),
        json!({"provider": 1, "credentials": {}}),
        json!({"provider": "openai", "credentials": {}}),
        json!({"provider": "openai", "credentials": {"api_key": null}}),
        json!({"provider": "openai", "credentials": {"api_key": {"nested": true}}}),
        json!({"provider": "openai", "environment": null, "credentials": {"api_key": "k"}}),
        json!({"provider": "\u{0000}", "credentials": {"api_key": "k"}}),
        json!({"provider": "openai", "label": "\u{0007}", "credentials": {"api_key": "sk-valid-looking-key"}}),
        json!({"label": 5}),
        json!({"environment": "moon"}),
        json!({"credentials": []}),
        json!({"credentials": {"api_key": 1}}),
    ];
    for body in &shapes {
        for (method, path) in [
            (reqwest::Method::POST, "/api/keys".to_owned()),
            (reqwest::Method::POST, "/api/keys/test".to_owned()),
            (reqwest::Method::PATCH, format!("/api/keys/{id}")),
        ] {
            let answer = server.client.send(server.client.request(method.clone(), &path, Some(&token)).json(body)).await;
            assert!((400..500).contains(&answer.status), "{method} {path} {body}: {} {}", answer.status, answer.text);
            assert!(answer.json["error"]["code"].is_string(), "{}", answer.text);
        }
    }
}
