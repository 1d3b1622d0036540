//! Rotation: staged → tested → promoted, a failed test that promotes nothing, rollback within the
//! grace period, the previous version destroyed by the scheduled job once the grace has passed
//! (the clock is moved, never slept on) — on the embedded store and on DynamoDB with the Secrets
//! Manager vault, whose staging labels are read straight from moto.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use stockpulse_shared::ports::ManualClock;
use stockpulse_tests::{Answer, AwsBackend, ServerOptions, TestServer, canary, moto};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A fake OpenAI that knows `keys` (each answers `/models` with its own marker) and refuses
/// every other key with 401, as OpenAI does.
pub async fn provider_knowing(keys: &[(&str, &str)]) -> MockServer {
    let upstream = MockServer::start().await;
    for (key, marker) in keys {
        Mock::given(method("GET"))
            .and(path("/models"))
            .and(header("authorization", format!("Bearer {key}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [{"id": marker}]})))
            .mount(&upstream)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        ))
        .mount(&upstream)
        .await;
    upstream
}

/// Which key the proxy used, by the marker the fake provider answered with.
pub async fn proxied_marker(server: &TestServer, token: &str) -> String {
    let answer = server
        .client
        .send(server.client.request(reqwest::Method::GET, "/proxy/openai/models", Some(token)).header("cache-control", "no-cache"))
        .await;
    assert_eq!(answer.status, 200, "proxy: {}", answer.text);
    answer.json["data"][0]["id"].as_str().unwrap_or_default().to_owned()
}

pub async fn rotate(server: &TestServer, token: &str, id: &str, idempotency: Option<&str>, body: Value) -> Answer {
    let mut request = server.client.request(reqwest::Method::POST, &format!("/api/keys/{id}/rotate"), Some(token)).json(&body);
    if let Some(key) = idempotency {
        request = request.header("idempotency-key", key);
    }
    server.client.send(request).await
}

pub async fn rollback(server: &TestServer, token: &str, id: &str, idempotency: Option<&str>) -> Answer {
    let mut request = server.client.request(reqwest::Method::POST, &format!("/api/keys/{id}/rollback"), Some(token)).json(&json!({}));
    if let Some(key) = idempotency {
        request = request.header("idempotency-key", key);
    }
    server.client.send(request).await
}

/// What the vault's labels look like, for the backend that has them.
type Labels = BTreeMap<String, Vec<String>>;

/// Reads the staging labels of a key's secret in moto (Secrets Manager vault only): version id →
/// labels, unlabelled versions left out.
async fn secret_labels(moto_url: &str, name: &str) -> Labels {
    let client = aws_sdk_secretsmanager::Client::new(&moto::sdk_config(moto_url).await);
    let described = client.describe_secret().secret_id(name).send().await.expect("describe secret");
    described.version_ids_to_stages.unwrap_or_default().into_iter().filter(|(_, stages)| !stages.is_empty()).collect()
}

fn holder<'a>(labels: &'a Labels, label: &str) -> Vec<&'a str> {
    labels.iter().filter(|(_, stages)| stages.iter().any(|s| s == label)).map(|(v, _)| v.as_str()).collect()
}

/// Checks the labels name the expected number of versions for (current, pending, previous),
/// and that the current version is a different one after every change of `key_version`.
async fn check_labels(backend: Option<&AwsBackend>, ws: &str, id: &str, pending: bool, previous: bool) -> Option<Labels> {
    let backend = backend?;
    let prefix = backend.secrets_prefix.as_deref()?;
    let labels = secret_labels(&backend.moto_url, &format!("{prefix}{ws}/{id}")).await;
    assert_eq!(holder(&labels, "AWSCURRENT").len(), 1, "one current version: {labels:?}");
    assert_eq!(holder(&labels, "AWSPENDING").len(), usize::from(pending), "pending: {labels:?}");
    assert_eq!(holder(&labels, "AWSPREVIOUS").len(), usize::from(previous), "previous: {labels:?}");
    Some(labels)
}

/// The whole rotation story on one server. `backend` is set for the AWS run.
async fn rotation_story(backend: Option<AwsBackend>) {
    let (one, two, bad, three) = (canary("sk-proj-"), canary("sk-proj-"), canary("sk-proj-"), canary("sk-proj-"));
    let upstream = provider_knowing(&[(&one, "one"), (&two, "two"), (&three, "three")]).await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let options =
        ServerOptions { aws: backend.clone(), clock: Some(clock.clone()), ..Default::default() }.upstream("openai", &upstream.uri());
    let server = TestServer::start_with(options).await;
    let ws = format!("ws-rotation-{}", uuid::Uuid::new_v4().simple());
    let member = server.token("member", &ws).await;
    let created = super::create(&server, &member, json!({"provider": "openai", "label": "team", "credentials": {"api_key": one}})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert_eq!(proxied_marker(&server, &member).await, "one");
    check_labels(backend.as_ref(), &ws, &id, false, false).await;

    // Happy path: staged, tested, promoted; the previous version kept for 24 h by default.
    let rotated = rotate(&server, &member, &id, Some("rotation-1"), json!({"credentials": {"api_key": two}})).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!((rotated.json["key_version"].clone(), rotated.json["status"].clone()), (json!(2), json!("active")));
    assert_eq!(rotated.json["previous"]["key_version"], 1);
    assert_eq!(rotated.json["last_rotation"]["outcome"], "promoted");
    assert!(rotated.json["pending"].is_null());
    assert_eq!(rotated.json["last_test"]["status"], "valid");
    let grace_until = chrono::DateTime::parse_from_rfc3339(rotated.json["previous"]["grace_until"].as_str().unwrap()).unwrap();
    assert_eq!((grace_until.with_timezone(&chrono::Utc) - clock_now(&clock)).num_hours(), 24);
    assert!(!rotated.text.contains(&two) && !rotated.text.contains(&one));
    assert_eq!(proxied_marker(&server, &member).await, "two", "the proxy uses the new key at once");
    let promoted_labels = check_labels(backend.as_ref(), &ws, &id, false, true).await;

    // The same Idempotency-Key answers the same, and rotates nothing again.
    let again = rotate(&server, &member, &id, Some("rotation-1"), json!({"credentials": {"api_key": two}})).await;
    assert_eq!(
        (again.status, again.json["key_version"].clone(), again.json["version"].clone()),
        (200, json!(2), rotated.json["version"].clone())
    );

    // The provider refuses the new key: nothing promoted, and the answer says why.
    let refused = rotate(&server, &member, &id, Some("rotation-2"), json!({"credentials": {"api_key": bad}})).await;
    assert_eq!((refused.status, refused.code()), (422, "rotation_test_failed"), "{}", refused.text);
    assert!(refused.json["error"]["message"].as_str().unwrap().contains("Incorrect API key provided"), "{}", refused.text);
    let after = server.client.get(&format!("/api/keys/{id}"), Some(&member)).await;
    assert_eq!((after.json["key_version"].clone(), after.json["last_rotation"]["outcome"].clone()), (json!(2), json!("test_failed")));
    assert!(after.json["pending"].is_null());
    assert_eq!(after.json["previous"]["key_version"], 1, "the previous version is still there for a rollback");
    assert_eq!(proxied_marker(&server, &member).await, "two");
    let retried = rotate(&server, &member, &id, Some("rotation-2"), json!({"credentials": {"api_key": bad}})).await;
    assert_eq!((retried.status, retried.code()), (422, "rotation_test_failed"));
    let failed_labels = check_labels(backend.as_ref(), &ws, &id, false, true).await;
    assert_eq!(failed_labels, promoted_labels, "a failed rotation leaves the labels as they were");

    // Rollback within the grace period: the first key is current again.
    let rolled = rollback(&server, &member, &id, Some("rollback-1")).await;
    assert_eq!((rolled.status, rolled.json["key_version"].clone()), (200, json!(1)), "{}", rolled.text);
    assert!(rolled.json["previous"].is_null());
    assert_eq!(rolled.json["last_rotation"]["outcome"], "rolled_back");
    assert_eq!(proxied_marker(&server, &member).await, "one");
    let repeated = rollback(&server, &member, &id, Some("rollback-1")).await;
    assert_eq!((repeated.status, repeated.json["version"].clone()), (200, rolled.json["version"].clone()));
    let nothing = rollback(&server, &member, &id, None).await;
    assert_eq!((nothing.status, nothing.code()), (409, "no_previous_version"));
    check_labels(backend.as_ref(), &ws, &id, false, false).await;

    // A rotation with a one-hour grace; two hours later the job destroys the previous version.
    let short = rotate(&server, &member, &id, None, json!({"credentials": {"api_key": three}, "grace_hours": 1})).await;
    // Version 3 was the refused key's: numbers are never reused.
    assert_eq!((short.status, short.json["key_version"].clone()), (200, json!(4)), "{}", short.text);
    assert_eq!(proxied_marker(&server, &member).await, "three");
    clock.advance(chrono::Duration::hours(2));
    let admin = server.token("admin", &ws).await;
    let run = server.client.post_json("/api/jobs/run", Some(&admin), &json!({})).await;
    assert_eq!((run.status, run.json["previous_destroyed"].clone()), (200, json!(1)), "{}", run.text);
    let late = rollback(&server, &member, &id, None).await;
    assert_eq!((late.status, late.code()), (409, "no_previous_version"), "{}", late.text);
    check_labels(backend.as_ref(), &ws, &id, false, false).await;
    assert_eq!(proxied_marker(&server, &member).await, "three");

    // Everything is audited, the chain verifies and the stored state is consistent.
    let audit = server.client.get("/api/audit?limit=200", Some(&admin)).await;
    let actions: Vec<&str> = audit.json["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for expected in
        ["key.rotate.stage", "key.rotate.test", "key.rotate.promote", "key.rotate.discard", "key.rollback", "key.previous.destroy"]
    {
        assert!(actions.contains(&expected), "{expected} audited: {actions:?}");
    }
    assert_eq!(actions.iter().filter(|a| **a == "key.rotate.promote").count(), 2);
    let verify = server.client.get("/api/audit/verify", Some(&admin)).await;
    assert_eq!(verify.json["ok"], true, "{}", verify.text);
    let report = server.app_consistency(&ws).await;
    assert!(report.ok, "{:?}", report.problems);
    let notes = server.client.get("/api/notifications", Some(&member)).await;
    let kinds: Vec<&str> = notes.json["items"].as_array().unwrap().iter().map(|n| n["kind"].as_str().unwrap()).collect();
    for expected in ["key_rotated", "rotation_failed", "key_rolled_back"] {
        assert!(kinds.contains(&expected), "{expected} notified: {kinds:?}");
    }
    server.stop().await;
}

fn clock_now(clock: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    use stockpulse_shared::ports::Clock;
    clock.now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rollback_and_grace_on_the_embedded_store() {
    rotation_story(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rollback_and_grace_on_dynamodb_with_secrets_manager_labels() {
    let mut backend = AwsBackend::fresh().await;
    backend.secrets_prefix = Some(format!("stockpulse-rotation-{}/", uuid::Uuid::new_v4().simple()));
    rotation_story(Some(backend)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_refuses_what_it_cannot_do() {
    let (one, two) = (canary("sk-proj-"), canary("sk-proj-"));
    let upstream = provider_knowing(&[(&one, "one"), (&two, "two")]).await;
    let server =
        TestServer::start_with(ServerOptions::default().upstream("openai", &upstream.uri()).upstream("alpaca", &upstream.uri())).await;
    let ws = format!("ws-rotation-refusals-{}", uuid::Uuid::new_v4().simple());
    let (viewer, member) = (server.token("viewer", &ws).await, server.token("member", &ws).await);
    let created = super::create(&server, &member, json!({"provider": "openai", "credentials": {"api_key": one}})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    let before = super::audit_count(&server, &member).await;
    let cases: Vec<(Answer, u16, &str)> = vec![
        (rotate(&server, &viewer, &id, None, json!({"credentials": {"api_key": two}})).await, 403, "insufficient_role"),
        (rotate(&server, &member, &id, None, json!({"credentials": {}})).await, 422, "no_credentials"),
        (rotate(&server, &member, &id, None, json!({"credentials": {"api_key": one}})).await, 422, "same_credentials"),
        (rotate(&server, &member, &id, None, json!({"credentials": {"api_key": two}, "grace_hours": 721})).await, 422, "invalid_grace"),
        (rotate(&server, &member, &id, None, json!({"credentials": {"api_key": two}, "extra": 1})).await, 400, "unknown_field"),
        (rotate(&server, &member, &id, Some("has space"), json!({"credentials": {"api_key": two}})).await, 400, "invalid_idempotency_key"),
        (rotate(&server, &member, "no-such-key", None, json!({"credentials": {"api_key": two}})).await, 404, "key_not_found"),
        (rollback(&server, &member, &id, None).await, 409, "no_previous_version"),
    ];
    let bad_policies = [
        json!({"rotate_every_days": 0}),
        json!({"notify_before_days": 4000}),
        json!({"expires_at": "2020-01-01T00:00:00Z"}),
        json!({"rotate_every": 30}),
    ];
    let mut cases = cases;
    for policy in bad_policies {
        let answer = server.client.patch_json(&format!("/api/keys/{id}"), Some(&member), None, &json!({"rotation_policy": policy})).await;
        let expected = if policy.get("rotate_every").is_some() { (400, "unknown_field") } else { (422, "invalid_rotation_policy") };
        cases.push((answer, expected.0, expected.1));
    }
    for (answer, status, code) in &cases {
        assert_eq!((answer.status, answer.code()), (*status, *code), "{}", answer.text);
        assert!(!answer.text.contains(&one) && !answer.text.contains(&two));
    }
    let stale = server
        .client
        .send(
            server
                .client
                .request(reqwest::Method::POST, &format!("/api/keys/{id}/rotate"), Some(&member))
                .header("if-match", "\"99\"")
                .json(&json!({"credentials": {"api_key": two}})),
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    assert_eq!(super::audit_count(&server, &member).await, before, "refusals change nothing and write nothing");
    // Another workspace cannot see the key, and trading keys are admin-only.
    let stranger = server.token("admin", "ws-rotation-stranger").await;
    assert_eq!(rotate(&server, &stranger, &id, None, json!({"credentials": {"api_key": two}})).await.status, 404);
    let admin = server.token("admin", &ws).await;
    let alpaca = super::create(
        &server,
        &admin,
        json!({"provider": "alpaca", "environment": "development", "credentials": {"key_id": canary("PK"), "secret_key": canary("s")}}),
    )
    .await;
    let alpaca_id = alpaca.json["id"].as_str().unwrap();
    let denied = rotate(&server, &member, alpaca_id, None, json!({"credentials": {"key_id": canary("PK")}})).await;
    assert_eq!((denied.status, denied.code()), (403, "admin_only_provider"), "{}", denied.text);
    server.stop().await;
}
