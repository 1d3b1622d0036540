//! The AWS backend cut off at every step of a create, an update and a delete: each cut answers
//! 503 in the envelope with a message a person understands, nothing is half-written, and once
//! the backend is back the consistency check holds and the state is the one before or after.

use serde_json::{Value, json};
use stockpulse_tests::fault_proxy::FaultProxy;
use stockpulse_tests::{Answer, AwsBackend, ServerOptions, TestServer, canary};

const WORKSPACE: &str = "ws-aws-faults";

async fn server_behind_proxy() -> (TestServer, FaultProxy, String) {
    let mut backend = AwsBackend::fresh().await;
    let proxy = FaultProxy::start(&backend.moto_url).await;
    backend.via = Some(proxy.url.clone());
    let server = TestServer::start_with(ServerOptions { aws: Some(backend), ..Default::default() }).await;
    let token = server.token("admin", WORKSPACE).await;
    (server, proxy, token)
}

async fn consistent(server: &TestServer) {
    let report = server.app_consistency(WORKSPACE).await;
    assert!(report.ok, "{report:?}");
}

fn assert_outage(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 503, "{what}: {}", answer.text);
    assert!(matches!(answer.code(), "store_unavailable" | "vault_unavailable"), "{what}: {}", answer.text);
    assert!(answer.json["error"]["message"].as_str().unwrap().contains("try again"), "{what}: {}", answer.text);
}

/// Runs `op` with the backend cut after 0, 1, 2, ... calls until it gets through; after every
/// cut the state must be the one before.
async fn cut_at_every_step(
    server: &TestServer,
    proxy: &FaultProxy,
    what: &str,
    throttle: bool,
    op: impl AsyncFn() -> Answer,
    unchanged: impl AsyncFn(&TestServer) -> bool,
) -> usize {
    for calls in 0..40 {
        if throttle {
            proxy.throttle_after(calls);
        } else {
            proxy.fail_after(calls);
        }
        let answer = op().await;
        proxy.heal();
        if answer.status < 300 {
            consistent(server).await;
            return calls as usize;
        }
        assert_outage(&answer, &format!("{what} cut after {calls} calls"));
        consistent(server).await;
        assert!(unchanged(server).await, "{what} cut after {calls} calls changed something");
    }
    panic!("{what} never got through");
}

async fn keys(server: &TestServer, token: &str) -> Vec<Value> {
    server.client.get("/api/keys", Some(token)).await.json["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_at_any_step_of_create_update_delete_leaves_nothing_half_written() {
    let (server, proxy, token) = server_behind_proxy().await;
    let api_key = canary("sk-");

    let calls = cut_at_every_step(
        &server,
        &proxy,
        "create",
        false,
        async || {
            server
                .client
                .post_json(
                    "/api/keys",
                    Some(&token),
                    &json!({"provider": "openai", "label": "before", "credentials": {"api_key": api_key}}),
                )
                .await
        },
        async |s: &TestServer| {
            let token = s.token("viewer", WORKSPACE).await;
            keys(s, &token).await.is_empty()
        },
    )
    .await;
    assert!(calls >= 3, "a create takes several AWS calls (slot check, data key, chain head, transaction): {calls}");
    let id = keys(&server, &token).await[0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/keys/{id}");

    let calls = cut_at_every_step(
        &server,
        &proxy,
        "update",
        false,
        async || {
            server.client.patch_json(&path, Some(&token), None, &json!({"label": "after", "credentials": {"api_key": canary("sk-")}})).await
        },
        async |s: &TestServer| {
            let token = s.token("viewer", WORKSPACE).await;
            let record = s.client.get(&format!("/api/keys/{}", keys(s, &token).await[0]["id"].as_str().unwrap()), Some(&token)).await;
            record.json["label"] == "before" && record.json["version"] == 1 && record.json["key_version"] == 1
        },
    )
    .await;
    assert!(calls >= 3, "{calls}");
    assert_eq!(server.client.get(&path, Some(&token)).await.json["label"], "after");

    cut_at_every_step(
        &server,
        &proxy,
        "delete",
        false,
        async || server.client.delete(&path, Some(&token), None).await,
        async |s: &TestServer| {
            let token = s.token("viewer", WORKSPACE).await;
            keys(s, &token).await.len() == 1
        },
    )
    .await;
    assert!(keys(&server, &token).await.is_empty());
    let verify = server.client.get("/api/audit/verify", Some(&token)).await;
    assert_eq!(
        (verify.json["ok"].clone(), verify.json["checked"].clone()),
        (json!(true), json!(3)),
        "one entry per change that happened: {}",
        verify.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_beyond_the_retries_is_a_503_and_changes_nothing() {
    let (server, proxy, token) = server_behind_proxy().await;
    cut_at_every_step(
        &server,
        &proxy,
        "throttled create",
        true,
        async || {
            server
                .client
                .post_json("/api/keys", Some(&token), &json!({"provider": "groq", "credentials": {"api_key": canary("gsk_")}}))
                .await
        },
        async |s: &TestServer| {
            let token = s.token("viewer", WORKSPACE).await;
            keys(s, &token).await.is_empty()
        },
    )
    .await;
    assert_eq!(keys(&server, &token).await.len(), 1);
}
