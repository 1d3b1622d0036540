//! Revocation: immediate, even for requests already racing through a warm proxy; the record
//! stays with who, when and why; the material is gone, the slot free, the cache purged, the
//! workspace notified, and every step audited.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use stockpulse_tests::{ServerOptions, TestServer, canary};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::create;

const AFTER_REVOKE: &str = "x-test-after-revoke";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_that_starts_after_the_revoke_commits_reaches_the_provider() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        // A little latency keeps requests in flight while the revocation commits.
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(15)).set_body_json(json!({"choices": []})))
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&upstream)
        .await;
    let server = TestServer::start_with(ServerOptions::default().upstream("openai", &upstream.uri())).await;
    let ws = format!("ws-revoke-{}", uuid::Uuid::new_v4().simple());
    let member = server.token("member", &ws).await;
    let key = canary("sk-proj-");
    let created = create(&server, &member, json!({"provider": "openai", "label": "team", "credentials": {"api_key": key}})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    // Warm the proxy's key cache and the response cache.
    assert_eq!(server.client.get("/proxy/openai/models", Some(&member)).await.header("x-stockpulse-cache"), Some("MISS"));

    let revoked = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let (client, member, revoked) = (server.client.clone(), member.clone(), revoked.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i % 50)).await;
            // Read before sending: a request marked here started after the revoke had committed.
            let after = revoked.load(Ordering::SeqCst);
            let mut request = client.request(reqwest::Method::POST, "/proxy/openai/chat/completions", Some(&member)).json(&json!({"n": i}));
            if after {
                request = request.header(AFTER_REVOKE, "1");
            }
            (after, client.send(request).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let revoke =
        server.client.post_json(&format!("/api/keys/{id}/revoke"), Some(&member), &json!({"reason": "pasted into a public issue"})).await;
    revoked.store(true, Ordering::SeqCst);
    assert_eq!(revoke.status, 200, "{}", revoke.text);
    // However the race fell, some requests surely start after the revoke: 20 more, now.
    for i in 100..120u64 {
        let (client, member) = (server.client.clone(), member.clone());
        tasks.push(tokio::spawn(async move {
            let request = client
                .request(reqwest::Method::POST, "/proxy/openai/chat/completions", Some(&member))
                .header(AFTER_REVOKE, "1")
                .json(&json!({"n": i}));
            (true, client.send(request).await)
        }));
    }

    let mut before_ok = 0;
    let mut after_count = 0;
    for task in tasks {
        let (after, answer) = task.await.unwrap();
        if after {
            after_count += 1;
            assert_eq!((answer.status, answer.code()), (404, "no_key"), "a request after the revoke: {}", answer.text);
        } else if answer.status == 200 {
            before_ok += 1;
        }
    }
    let received = upstream.received_requests().await.unwrap();
    assert!(received.iter().all(|r| !r.headers.contains_key(AFTER_REVOKE)), "a request that started after the revoke reached the provider");
    println!("revocation race: {before_ok} requests passed before the revoke, {after_count} started after it and were all refused");
    assert!(after_count >= 20);

    // The record stays, with who, when and why; the cached answers are gone; the slot is free.
    let record = server.client.get(&format!("/api/keys/{id}"), Some(&member)).await;
    assert_eq!(record.json["status"], "revoked");
    assert_eq!(record.json["revocation"]["reason"], "pasted into a public issue");
    assert!(record.json["revocation"]["by"]["email"].is_string() && record.json["revocation"]["at"].is_string(), "{}", record.text);
    assert!(!record.text.contains(&key));
    let cached = server.client.get("/proxy/openai/models", Some(&member)).await;
    assert_eq!(cached.code(), "no_key", "no cached answer is served for a revoked key: {}", cached.text);
    let again = server.client.post_json(&format!("/api/keys/{id}/revoke"), Some(&member), &json!({"reason": "twice"})).await;
    assert_eq!((again.status, again.code()), (409, "key_revoked"));
    let edit = server.client.patch_json(&format!("/api/keys/{id}"), Some(&member), None, &json!({"label": "x"})).await;
    assert_eq!(edit.status, 409, "a revoked key cannot be edited: {}", edit.text);
    create(&server, &member, json!({"provider": "openai", "credentials": {"api_key": canary("sk-proj-")}})).await;

    let notifications = server.client.get("/api/notifications", Some(&member)).await;
    assert!(notifications.json["items"].as_array().unwrap().iter().any(|n| n["kind"] == "key_revoked" && n["key_id"] == id.as_str()));
    let audit = server.client.get("/api/audit?action=key.revoke", Some(&member)).await;
    assert_eq!(audit.json["items"].as_array().unwrap().len(), 1, "{}", audit.text);
    assert_eq!(server.client.get("/api/audit/verify", Some(&member)).await.json["ok"], true);
    let report = server.app_consistency(&ws).await;
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn revocation_checks_who_asks_and_why() {
    let server = TestServer::start().await;
    let ws = format!("ws-revoke-rules-{}", uuid::Uuid::new_v4().simple());
    let admin = server.token("admin", &ws).await;
    let member = server.token("member", &ws).await;
    let viewer = server.token("viewer", &ws).await;
    let alpaca =
        create(&server, &admin, json!({"provider": "alpaca", "credentials": {"key_id": canary("PK"), "secret_key": canary("")}})).await;
    let groq = create(&server, &member, json!({"provider": "groq", "credentials": {"api_key": canary("gsk_")}})).await;
    let at = |answer: &stockpulse_tests::Answer| format!("/api/keys/{}/revoke", answer.json["id"].as_str().unwrap());
    let reason = json!({"reason": "rotating staff"});

    let by_viewer = server.client.post_json(&at(&groq), Some(&viewer), &reason).await;
    assert_eq!(by_viewer.status, 403);
    let admin_only = server.client.post_json(&at(&alpaca), Some(&member), &reason).await;
    assert_eq!((admin_only.status, admin_only.code()), (403, "admin_only_provider"));
    for bad in [json!({"reason": ""}), json!({"reason": "   "}), json!({"reason": "a\nb"}), json!({"reason": "x".repeat(501)})] {
        let answer = server.client.post_json(&at(&groq), Some(&member), &bad).await;
        assert_eq!((answer.status, answer.code()), (422, "invalid_reason"), "{bad}");
    }
    let no_body = server.client.post_json(&at(&groq), Some(&member), &json!({})).await;
    assert_eq!(no_body.status, 400, "{}", no_body.text);
    let stale = server
        .client
        .send(server.client.request(reqwest::Method::POST, &at(&groq), Some(&member)).header("if-match", "\"7\"").json(&reason))
        .await;
    assert_eq!(stale.status, 412);
    let other = server.token("admin", "ws-revoke-someone-else").await;
    assert_eq!(server.client.post_json(&at(&groq), Some(&other), &reason).await.status, 404);
    let ok = server.client.post_json(&at(&alpaca), Some(&admin), &reason).await;
    assert_eq!((ok.status, ok.json["status"].clone()), (200, json!("revoked")), "{}", ok.text);
    assert_eq!(ok.header("etag"), Some("\"2\""));
}
