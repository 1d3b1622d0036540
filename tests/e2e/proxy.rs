//! The proxy end to end through the local gateway, against fake providers that are real HTTP
//! servers on loopback: key injection and normalization, redaction of keys the provider echoes,
//! the cache, limits under concurrency (embedded and AWS), quota notifications, a refused key,
//! compressed and "200 with an error body" answers, streaming with token counts, and deletion
//! taking effect on a warm key.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use stockpulse_tests::{AwsBackend, ServerOptions, TestServer, canary};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::create;

async fn server_for(provider: &str, upstream: &str) -> TestServer {
    TestServer::start_with(ServerOptions::default().upstream(provider, upstream)).await
}

fn workspace() -> String {
    format!("ws-proxy-{}", uuid::Uuid::new_v4().simple())
}

async fn openai_key(server: &TestServer, token: &str) -> String {
    let key = canary("sk-proj-");
    create(server, token, json!({"provider": "openai", "credentials": {"api_key": key}})).await;
    key
}

async fn usage(server: &TestServer, token: &str, provider: &str) -> Value {
    server.app.app.proxy.flush_usage().await.expect("flush");
    let answer = server.client.get(&format!("/api/usage?provider={provider}"), Some(token)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json
}

#[tokio::test]
async fn a_proxied_call_carries_the_key_and_comes_back_with_our_headers() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-ratelimit-remaining-requests", "4999")
                .insert_header("set-cookie", "tracking=1")
                .set_body_json(json!({"object": "list", "data": [{"id": "gpt-4o-mini"}]})),
        )
        .mount(&upstream)
        .await;
    let server = server_for("openai", &upstream.uri()).await;
    let token = server.token("member", &workspace()).await;
    let key = openai_key(&server, &token).await;

    let answer = server.client.get("/proxy/openai/models", Some(&token)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json["data"][0]["id"], "gpt-4o-mini");
    assert!(answer.header("x-stockpulse-request-id").is_some());
    assert_eq!(answer.header("x-stockpulse-cache"), Some("MISS"), "the catalog caches /models");
    assert!(answer.header("x-stockpulse-quota-remaining").is_some());
    assert!(answer.header("set-cookie").is_none(), "outbound Set-Cookie is dropped");
    assert_eq!(answer.header("cache-control"), Some("private, no-store"));

    let received = upstream.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let auth = received[0].headers.get("authorization").unwrap().to_str().unwrap();
    assert_eq!(auth, format!("Bearer {key}"), "our key, not the caller's token");

    // The key record shows its last use; usage shows the request and the provider's limit headers.
    let keys = super::all_keys(&server, &token).await;
    assert!(keys[0]["last_used_at"].is_string(), "{}", keys[0]);
    let report = usage(&server, &token, "openai").await;
    let total = &report["totals"][0];
    assert_eq!(total["requests"], 1, "{report}");
    assert_eq!(report["days"][0]["provider_limits"]["x-ratelimit-remaining-requests"], "4999", "{report}");
    assert!(report["days"][0]["latency_p50_ms"].is_u64(), "{report}");
}

#[tokio::test]
async fn keys_the_provider_echoes_never_reach_the_client() {
    let upstream = MockServer::start().await;
    let server = server_for("fmp", &upstream.uri()).await;
    let token = server.token("member", &workspace()).await;
    let key = canary("FMP");
    create(&server, &token, json!({"provider": "fmp", "credentials": {"api_key": key}})).await;
    let encoded = percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC).to_string();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key);
    Mock::given(path("/echo"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("x-echo", format!("apikey={key}").as_str())
                .set_body_json(json!({"message": format!("bad request for https://x.test/echo?apikey={key} ({encoded}, {b64})")})),
        )
        .mount(&upstream)
        .await;
    Mock::given(path("/ok"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", format!("<https://x.test/ok?page=2&apikey={key}>; rel=next").as_str())
                .set_body_string(format!("[{{\"url\":\"https://x.test/ok?apikey={encoded}\",\"raw\":\"{key}\"}}]")),
        )
        .mount(&upstream)
        .await;

    for target in ["/proxy/fmp/echo", "/proxy/fmp/ok"] {
        let answer = server.client.get(target, Some(&token)).await;
        let everything = format!("{:?}\n{}", answer.headers, answer.text);
        for spelling in [&key, &encoded, &b64] {
            assert!(!everything.contains(spelling.as_str()), "{target} leaked the key: {everything}");
        }
        assert!(everything.contains("[REDACTED]"), "{target}: {everything}");
    }
    let error = server.client.get("/proxy/fmp/echo", Some(&token)).await;
    assert_eq!(error.status, 400, "a 4xx of the provider keeps its status: {}", error.text);
    assert_eq!(error.code(), "upstream_rejected");
    assert_eq!(error.json["error"]["provider"], "fmp");
    assert_eq!(error.json["error"]["upstream_status"], 400);
    assert!(error.json["error"]["provider_message"].as_str().unwrap().starts_with("bad request for"), "{}", error.text);
    // The key went upstream as the catalog's query parameter.
    let received = upstream.received_requests().await.unwrap();
    assert!(received.iter().all(|r| r.url.query_pairs().any(|(k, v)| k == "apikey" && v == key.as_str())));
}

#[tokio::test]
async fn the_cache_hits_refreshes_stays_in_its_workspace_and_purges() {
    let upstream = MockServer::start().await;
    Mock::given(path("/quote"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"symbol": "AAPL", "price": 190.5}])))
        .mount(&upstream)
        .await;
    let server = server_for("fmp", &upstream.uri()).await;
    let ws_a = workspace();
    let admin_a = server.token("admin", &ws_a).await;
    let admin_b = server.token("admin", &workspace()).await;
    for token in [&admin_a, &admin_b] {
        create(&server, token, json!({"provider": "fmp", "credentials": {"api_key": canary("FMP")}})).await;
    }
    let quote = "/proxy/fmp/quote?symbol=AAPL";
    let cache_of = |a: &stockpulse_tests::Answer| a.header("x-stockpulse-cache").unwrap_or("none").to_owned();

    let first = server.client.get(quote, Some(&admin_a)).await;
    assert_eq!((first.status, cache_of(&first)), (200, "MISS".to_owned()), "{}", first.text);
    let second = server.client.get(quote, Some(&admin_a)).await;
    assert_eq!((second.status, cache_of(&second)), (200, "HIT".to_owned()));
    assert_eq!(second.json, first.json);
    assert_eq!(upstream.received_requests().await.unwrap().len(), 1, "a HIT does not call the provider");

    let refresh =
        server.client.send(server.client.request(reqwest::Method::GET, quote, Some(&admin_a)).header("cache-control", "no-cache")).await;
    assert_eq!(cache_of(&refresh), "BYPASS");
    assert_eq!(upstream.received_requests().await.unwrap().len(), 2, "no-cache refreshes from the provider");
    let no_store =
        server.client.send(server.client.request(reqwest::Method::GET, quote, Some(&admin_a)).header("cache-control", "no-store")).await;
    assert_eq!(cache_of(&no_store), "BYPASS");

    let other = server.client.get(quote, Some(&admin_b)).await;
    assert_eq!(cache_of(&other), "MISS", "another workspace never gets our cached answer");

    let purge = server.client.delete("/api/cache/fmp", Some(&admin_a), None).await;
    assert_eq!(purge.status, 200, "{}", purge.text);
    assert!(purge.json["removed"].as_u64().unwrap() >= 1);
    let after = server.client.get(quote, Some(&admin_a)).await;
    assert_eq!(cache_of(&after), "MISS", "purged");
    let audit = server.client.get("/api/audit?action=cache.purge", Some(&admin_a)).await;
    assert_eq!(audit.json["items"].as_array().unwrap().len(), 1, "{}", audit.text);

    // Usage counts the hit.
    let report = usage(&server, &admin_a, "fmp").await;
    assert_eq!(report["totals"][0]["cache_hits"], 1, "{report}");
}

/// 200 concurrent requests against a limit of 50 per minute: exactly 50 reach the provider.
async fn exactly_the_limit_passes(server: &TestServer, upstream: &MockServer) {
    let ws = workspace();
    let admin = server.token("admin", &ws).await;
    openai_key(server, &admin).await;
    let put = server
        .client
        .put_json("/api/quotas/openai", Some(&admin), &json!({"environment": "production", "limits": {"requests_per_minute": 50}}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = server.client.clone();
        let admin = admin.clone();
        // Distinct bodies: nothing is cacheable anyway (POST), this only keeps requests apart.
        tasks.push(tokio::spawn(async move {
            client.post_json("/proxy/openai/chat/completions", Some(&admin), &json!({"model": "gpt-4o-mini", "n": i})).await
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    let mut limited = None;
    for task in tasks {
        let answer = task.await.unwrap();
        *statuses.entry(answer.status).or_insert(0) += 1;
        if answer.status == 429 {
            limited = Some(answer);
        }
    }
    // A request that started in the next minute may pass too; it is the only way to get 51.
    let ok = statuses.get(&200).copied().unwrap_or(0);
    assert!(ok == 50 || (ok > 50 && ok <= 100), "{statuses:?}");
    assert_eq!(ok + statuses.get(&429).copied().unwrap_or(0), 200, "{statuses:?}");
    let limited = limited.expect("some were refused");
    assert_eq!(limited.code(), "quota_exceeded");
    assert_eq!(limited.json["error"]["limit"], "requests_per_minute");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(upstream.received_requests().await.unwrap().len(), ok as usize, "refused requests never reach the provider");
}

async fn completions_upstream() -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(path("/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"model": "gpt-4o-mini", "usage": {"prompt_tokens": 3, "completion_tokens": 4}})),
        )
        .mount(&upstream)
        .await;
    upstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_against_fifty_per_minute_on_the_embedded_store() {
    let upstream = completions_upstream().await;
    let server = server_for("openai", &upstream.uri()).await;
    exactly_the_limit_passes(&server, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_against_fifty_per_minute_on_dynamodb() {
    let upstream = completions_upstream().await;
    let aws = AwsBackend::fresh().await;
    let server =
        TestServer::start_with(ServerOptions { aws: Some(aws), ..ServerOptions::default() }.upstream("openai", &upstream.uri())).await;
    exactly_the_limit_passes(&server, &upstream).await;
}

#[tokio::test]
async fn quotas_notify_at_80_and_100_percent_and_then_refuse() {
    let upstream = completions_upstream().await;
    let server = server_for("openai", &upstream.uri()).await;
    let admin = server.token("admin", &workspace()).await;
    openai_key(&server, &admin).await;
    let viewer_put = server.client.put_json("/api/quotas/openai", Some(&server.token("member", "ws-x").await), &json!({})).await;
    assert_eq!(viewer_put.status, 403);
    let put = server
        .client
        .put_json("/api/quotas/openai", Some(&admin), &json!({"environment": "production", "limits": {"requests_per_day": 5}}))
        .await;
    assert_eq!(put.status, 200, "{}", put.text);
    let production = &put.json["environments"][0];
    assert_eq!((production["custom"].clone(), production["limits"]["requests_per_day"].clone()), (json!(true), json!(5)));
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let answer = server.client.post_json("/proxy/openai/chat/completions", Some(&admin), &json!({"model": "gpt-4o-mini"})).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        remaining.push(answer.header("x-stockpulse-quota-remaining").unwrap().to_owned());
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    let refused = server.client.post_json("/proxy/openai/chat/completions", Some(&admin), &json!({"model": "gpt-4o-mini"})).await;
    assert_eq!((refused.status, refused.code()), (429, "quota_exceeded"), "{}", refused.text);
    assert_eq!(refused.json["error"]["limit"], "requests_per_day");
    assert!(refused.header("retry-after").is_some());

    let notifications = server.client.get("/api/notifications", Some(&admin)).await;
    let kinds: Vec<&str> = notifications.json["items"].as_array().unwrap().iter().map(|n| n["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["quota_reached", "quota_warning"], "{}", notifications.text);
    let id = notifications.json["items"][0]["id"].as_str().unwrap();
    let read = server.client.post_json(&format!("/api/notifications/{id}/read"), Some(&admin), &json!({})).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let unread = server.client.get("/api/notifications?unread=true", Some(&admin)).await;
    assert_eq!(unread.json["items"].as_array().unwrap().len(), 1);
    let audit = server.client.get("/api/audit?action=quota.threshold", Some(&admin)).await;
    assert_eq!(audit.json["items"].as_array().unwrap().len(), 2, "{}", audit.text);
    let audit = server.client.get("/api/audit?action=quota.update", Some(&admin)).await;
    assert_eq!(audit.json["items"].as_array().unwrap().len(), 1, "{}", audit.text);

    let quotas = server.client.get("/api/quotas/openai", Some(&admin)).await;
    assert_eq!(quotas.json["environments"][0]["used"]["requests_today"], 5, "{}", quotas.text);
    let report = usage(&server, &admin, "openai").await;
    let total = &report["totals"][0];
    assert_eq!((total["requests"].clone(), total["rate_limited"].clone()), (json!(5), json!(1)), "{report}");
    assert_eq!((total["input_tokens"].clone(), total["output_tokens"].clone()), (json!(15), json!(20)), "{report}");
    assert!(total["cost_micro_usd"].as_u64().unwrap() > 0, "gpt-4o-mini has a catalog price: {report}");
}

#[tokio::test]
async fn a_key_the_provider_refuses_is_marked_invalid_audited_and_notified() {
    let upstream = MockServer::start().await;
    Mock::given(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})),
        )
        .mount(&upstream)
        .await;
    let server = server_for("anthropic", &upstream.uri()).await;
    let token = server.token("member", &workspace()).await;
    create(&server, &token, json!({"provider": "anthropic", "credentials": {"api_key": canary("sk-ant-api03-")}})).await;
    let answer = server.client.post_json("/proxy/anthropic/v1/messages", Some(&token), &json!({"model": "claude-haiku-4-5"})).await;
    assert_eq!((answer.status, answer.code()), (502, "upstream_key_invalid"), "{}", answer.text);
    assert_eq!(answer.json["error"]["upstream_status"], 401);
    assert_eq!(answer.json["error"]["provider_message"], "invalid x-api-key");
    let keys = super::all_keys(&server, &token).await;
    assert_eq!(keys[0]["status"], "invalid");
    let audit = server.client.get("/api/audit?action=key.invalidated", Some(&token)).await;
    assert_eq!(audit.json["items"].as_array().unwrap().len(), 1, "{}", audit.text);
    let again = server.client.post_json("/proxy/anthropic/v1/messages", Some(&token), &json!({})).await;
    assert_eq!(again.status, 502);
    let notifications = server.client.get("/api/notifications", Some(&token)).await;
    let items = notifications.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "once per key version and day: {}", notifications.text);
    assert_eq!(items[0]["kind"], "key_invalid");
}

#[tokio::test]
async fn errors_in_a_200_body_and_compressed_answers_are_read_correctly() {
    let upstream = MockServer::start().await;
    Mock::given(path("/query"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"Information": "Thank you for using Alpha Vantage! Our standard API rate limit is 25 requests per day."}),
        ))
        .mount(&upstream)
        .await;
    let json_body = serde_json::to_vec(&json!({"Global Quote": {"01. symbol": "IBM"}, "padding": "x".repeat(2000)})).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&json_body).unwrap();
    let compressed = gzip.finish().unwrap();
    Mock::given(path("/zipped"))
        .respond_with(ResponseTemplate::new(200).insert_header("content-encoding", "gzip").set_body_raw(compressed, "application/json"))
        .mount(&upstream)
        .await;
    let server = server_for("alphavantage", &upstream.uri()).await;
    let token = server.token("member", &workspace()).await;
    create(&server, &token, json!({"provider": "alphavantage", "credentials": {"api_key": canary("AV")}})).await;

    let throttled = server.client.get("/proxy/alphavantage/query?function=GLOBAL_QUOTE&symbol=IBM", Some(&token)).await;
    assert_eq!((throttled.status, throttled.code()), (429, "upstream_rate_limited"), "{}", throttled.text);
    assert_eq!(throttled.json["error"]["upstream_status"], 200);
    assert!(throttled.json["error"]["provider_message"].as_str().unwrap().contains("rate limit"));

    let zipped = server.client.get("/proxy/alphavantage/zipped", Some(&token)).await;
    assert_eq!(zipped.status, 200, "{}", zipped.text);
    assert_eq!(zipped.json["Global Quote"]["01. symbol"], "IBM", "decoded once, passed on plain");
    assert!(zipped.header("content-encoding").is_none());
}

#[tokio::test]
async fn deleting_a_key_stops_a_warm_instance_at_the_next_request() {
    let upstream = completions_upstream().await;
    let server = server_for("openai", &upstream.uri()).await;
    let ws = workspace();
    let admin = server.token("admin", &ws).await;
    openai_key(&server, &admin).await;
    let body = json!({"model": "gpt-4o-mini"});
    let call = || server.client.post_json("/proxy/openai/chat/completions", Some(&admin), &body);
    assert_eq!(call().await.status, 200, "warms the key cache");
    let id = super::all_keys(&server, &admin).await[0]["id"].as_str().unwrap().to_owned();

    // Delete behind the gateway's back (as another instance would): straight in the store, so
    // this process's key cache still holds the decrypted key.
    let store = server.app.app.keys.store.clone();
    let record = store.get(&ws, &id).await.unwrap().unwrap();
    let caller = stockpulse_shared::domain::access::Caller {
        sub: "other-instance".into(),
        email: "ops@example.com".into(),
        role: stockpulse_shared::domain::access::Role::Admin,
        workspace: ws.clone(),
    };
    let audit = stockpulse_shared::domain::audit::AuditDraft::new(
        &caller,
        &Default::default(),
        stockpulse_shared::domain::audit::action::KEY_DELETE,
        stockpulse_shared::domain::audit::Outcome::Success,
    );
    store.delete(&ws, &id, record.version, audit).await.unwrap();
    assert!(server.app.app.proxy.key_cache.get(&ws, "openai", stockpulse_shared::domain::environment::Environment::Production).is_some());

    let after = call().await;
    assert_eq!((after.status, after.code()), (404, "no_key"), "{}", after.text);
    assert_eq!(upstream.received_requests().await.unwrap().len(), 1, "the deleted key was never used again");
}

/// A fake provider that streams server-sent events one chunk at a time, sending the next only
/// when the test says so: the client seeing chunk 1 before chunk 2 exists proves streaming
/// without any timing assumption.
async fn streaming_upstream(events: Vec<String>) -> (String, tokio::sync::mpsc::Sender<()>) {
    let (step, steps) = tokio::sync::mpsc::channel::<()>(1);
    let steps = Arc::new(tokio::sync::Mutex::new(Some(steps)));
    let app = axum::Router::new().fallback(move || {
        let steps = steps.clone();
        let events = events.clone();
        async move {
            let steps = steps.lock().await.take().expect("one streamed request per test");
            let chunks = futures_util::stream::unfold((events.into_iter().enumerate(), steps), |(mut events, mut steps)| async move {
                let (index, event) = events.next()?;
                if index > 0 {
                    steps.recv().await?;
                }
                Some((Ok::<_, std::io::Error>(event), (events, steps)))
            });
            axum::response::Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from_stream(chunks))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, step)
}

async fn streamed_tokens(provider: &str, path_below: &str, events: Vec<String>, key: Value, expect: (u64, u64)) {
    let (url, step) = streaming_upstream(events.clone()).await;
    let server = server_for(provider, &url).await;
    let token = server.token("member", &workspace()).await;
    create(&server, &token, json!({"provider": provider, "credentials": key})).await;
    let response = server
        .client
        .request(reqwest::Method::POST, &format!("/proxy/{provider}{path_below}"), Some(&token))
        .json(&json!({"model": "m", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut response = response;
    let mut seen = Vec::new();
    for (i, event) in events.iter().enumerate() {
        // The provider has sent only events 0..=i so far; each must arrive on its own.
        let mut got = String::new();
        while got.len() < event.len() {
            let chunk = response.chunk().await.unwrap().expect("the stream goes on");
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(&got, event, "chunk {i}");
        seen.push(got);
        if i + 1 < events.len() {
            step.send(()).await.unwrap();
        }
    }
    assert!(response.chunk().await.unwrap().is_none());
    let report = usage(&server, &token, provider).await;
    let total = &report["totals"][0];
    assert_eq!((total["input_tokens"].as_u64().unwrap(), total["output_tokens"].as_u64().unwrap()), expect, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_openai_answers_arrive_in_chunks_and_their_tokens_count() {
    let events = [
        r#"{"model":"gpt-4o-mini","choices":[{"delta":{"content":"Hel"}}],"usage":null}"#,
        r#"{"model":"gpt-4o-mini","choices":[{"delta":{"content":"lo"}}],"usage":null}"#,
        r#"{"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2}}"#,
        "[DONE]",
    ]
    .iter()
    .map(|e| format!("data: {e}\n\n"))
    .collect();
    streamed_tokens("openai", "/chat/completions", events, json!({"api_key": canary("sk-proj-")}), (11, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_anthropic_answers_arrive_in_chunks_and_their_tokens_count() {
    let events = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"model":"claude-haiku-4-5","usage":{"input_tokens":21,"output_tokens":1}}}"#,
        ),
        ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#),
        ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ]
    .iter()
    .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
    .collect();
    streamed_tokens("anthropic", "/v1/messages", events, json!({"api_key": canary("sk-ant-api03-")}), (21, 9)).await;
}

#[tokio::test]
async fn body_limits_and_timeouts_are_the_configured_ones() {
    let upstream = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(2_000)).set_body_json(json!({})))
        .mount(&upstream)
        .await;
    Mock::given(path("/big")).respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(4096))).mount(&upstream).await;
    Mock::given(path("/echo")).respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true}))).mount(&upstream).await;
    let server = TestServer::start_with(
        ServerOptions::default()
            .upstream("openai", &upstream.uri())
            .var("STOCKPULSE_PROXY_MAX_REQUEST_BYTES", "1024")
            .var("STOCKPULSE_PROXY_MAX_RESPONSE_BYTES", "2048")
            .var("STOCKPULSE_UPSTREAM_TIMEOUT_MS", "300"),
    )
    .await;
    let token = server.token("member", &workspace()).await;
    openai_key(&server, &token).await;

    let small = server.client.post_json("/proxy/openai/echo", Some(&token), &json!({"text": "x".repeat(900)})).await;
    assert_eq!(small.status, 200, "{}", small.text);
    let large = server.client.post_json("/proxy/openai/echo", Some(&token), &json!({"text": "x".repeat(2000)})).await;
    assert_eq!((large.status, large.code()), (413, "body_too_large"), "{}", large.text);
    let big_answer = server.client.get("/proxy/openai/big", Some(&token)).await;
    assert_eq!((big_answer.status, big_answer.code()), (502, "upstream_answer_too_large"), "{}", big_answer.text);
    let slow = server.client.get("/proxy/openai/slow", Some(&token)).await;
    assert_eq!((slow.status, slow.code()), (504, "upstream_timeout"), "{}", slow.text);
    assert_eq!(
        upstream.received_requests().await.unwrap().iter().filter(|r| r.url.path() == "/echo").count(),
        1,
        "a refused body is never sent"
    );
}

/// The provider's answer headers that `shared/src/services/proxy/headers.rs` promises never to
/// pass back (cookies, HSTS, CORS, Alt-Svc, redirects and content locations, authentication
/// challenges, caching and validators, reporting), with a value each.
const PROVIDER_HEADERS_DROPPED: &[(&str, &str)] = &[
    ("set-cookie", "session=provider; Domain=example.com; Path=/"),
    ("set-cookie2", "legacy=1"),
    ("strict-transport-security", "max-age=63072000; includeSubDomains; preload"),
    ("public-key-pins", "pin-sha256=\"AAAA\"; max-age=5184000"),
    ("alt-svc", "h3=\":443\"; ma=86400"),
    ("access-control-allow-origin", "*"),
    ("access-control-allow-credentials", "true"),
    ("access-control-allow-headers", "authorization"),
    ("access-control-expose-headers", "x-secret"),
    ("location", "https://attacker.example/next"),
    ("content-location", "https://attacker.example/copy"),
    ("refresh", "0; url=https://attacker.example/"),
    ("www-authenticate", "Bearer realm=\"provider\""),
    ("proxy-authenticate", "Basic realm=\"provider\""),
    ("cache-control", "public, max-age=999"),
    ("expires", "Thu, 01 Dec 2099 16:00:00 GMT"),
    ("pragma", "cache"),
    ("age", "12345"),
    ("etag", "\"provider-etag\""),
    ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ("vary", "Origin, Cookie"),
    ("server-timing", "db;dur=53"),
    ("report-to", "{\"group\":\"provider\",\"max_age\":1}"),
    ("nel", "{\"report_to\":\"provider\",\"max_age\":1}"),
    ("x-stockpulse-cache", "HIT-from-the-provider"),
    ("x-stockpulse-quota-remaining", "999999"),
];

fn with_provider_headers(mut template: ResponseTemplate) -> ResponseTemplate {
    for (name, value) in PROVIDER_HEADERS_DROPPED {
        template = template.append_header(*name, *value);
    }
    template.insert_header("x-provider-trace", "trace-1")
}

/// None of the dropped headers reach the client; where we set a header of the same name
/// (`Cache-Control`, `X-StockPulse-*`, and `Age` on a cache hit) none of its values is the
/// provider's. The provider's other headers do pass, and caching is forbidden.
fn assert_provider_headers_dropped(what: &str, answer: &stockpulse_tests::Answer, age_is_ours: bool) {
    for (name, value) in PROVIDER_HEADERS_DROPPED {
        let ours = *name == "cache-control" || name.starts_with("x-stockpulse-") || (*name == "age" && age_is_ours);
        if ours {
            assert!(answer.headers.get_all(*name).iter().all(|v| v != *value), "{what}: the provider's {name} came back");
        } else {
            assert!(answer.headers.get(*name).is_none(), "{what}: the provider's {name} came back: {:?}", answer.headers.get_all(*name));
        }
    }
    assert!(!answer.headers.keys().any(|n| n.as_str().starts_with("access-control-")), "{what}: {:?}", answer.headers);
    let cache_control: Vec<&str> = answer.headers.get_all("cache-control").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(
        cache_control.len() == 1 && cache_control[0].split(',').any(|d| d.trim() == "no-store"),
        "{what}: caching must be forbidden: {cache_control:?}"
    );
}

#[tokio::test]
async fn the_providers_cookies_hsts_cors_redirect_and_caching_headers_never_reach_the_client() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(with_provider_headers(ResponseTemplate::new(200)).set_body_json(json!({"object": "list", "data": []})))
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(
            with_provider_headers(ResponseTemplate::new(200))
                .set_body_raw("data: {\"choices\":[]}\n\ndata: [DONE]\n\n".as_bytes().to_vec(), "text/event-stream"),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/files"))
        .respond_with(with_provider_headers(ResponseTemplate::new(404)).set_body_json(json!({"error": {"message": "no such file"}})))
        .mount(&upstream)
        .await;
    let server = server_for("openai", &upstream.uri()).await;
    let token = server.token("member", &workspace()).await;
    openai_key(&server, &token).await;

    // A plain answer, then the same answer from our cache.
    let first = server.client.get("/proxy/openai/models", Some(&token)).await;
    assert_eq!((first.status, first.header("x-stockpulse-cache")), (200, Some("MISS")), "{}", first.text);
    assert_eq!(first.header("x-provider-trace"), Some("trace-1"), "the provider's other headers pass");
    assert_eq!(first.header("cache-control"), Some("private, no-store"));
    assert_provider_headers_dropped("a plain answer", &first, false);
    let hit = server.client.get("/proxy/openai/models", Some(&token)).await;
    assert_eq!((hit.status, hit.header("x-stockpulse-cache")), (200, Some("HIT")), "{}", hit.text);
    assert_eq!(hit.header("x-provider-trace"), Some("trace-1"));
    assert_eq!(hit.header("cache-control"), Some("private, no-store"));
    assert_provider_headers_dropped("a cached answer", &hit, true);

    // A streamed answer.
    let stream = server
        .client
        .post_json("/proxy/openai/chat/completions", Some(&token), &json!({"model": "gpt-4o-mini", "stream": true, "messages": []}))
        .await;
    assert_eq!(stream.status, 200, "{}", stream.text);
    assert_eq!(stream.header("x-provider-trace"), Some("trace-1"));
    assert_provider_headers_dropped("a streamed answer", &stream, false);

    // A provider error, passed back in our envelope.
    let error = server.client.get("/proxy/openai/files", Some(&token)).await;
    assert_eq!(error.status, 404, "{}", error.text);
    assert_provider_headers_dropped("a provider error", &error, false);
    assert_eq!(upstream.received_requests().await.unwrap().len(), 3, "the cache hit did not reach the provider");
}
