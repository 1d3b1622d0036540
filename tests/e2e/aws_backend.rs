//! The whole API on the AWS adapters (DynamoDB + KMS envelope vault) against moto: the real
//! binary with `--backend aws`, no plaintext in any raw item, and ciphertexts bound to their
//! record by the KMS encryption context.

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use stockpulse_shared::http::routes::{Operation, ROUTES};
use stockpulse_tests::{AwsBackend, Client, ServerOptions, TestServer, artifacts_dir, canary, fresh_data_dir, moto};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::gateway_process::{start_with_args, terminate};

/// Every item of the table, as text (a test may Scan; the product never does).
async fn raw_items(backend: &AwsBackend) -> String {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config(&backend.moto_url).await);
    let mut text = String::new();
    let mut start = None;
    loop {
        let out = client.scan().table_name(&backend.table).set_exclusive_start_key(start.take()).send().await.expect("scan");
        for item in out.items.unwrap_or_default() {
            for (name, value) in item {
                let rendered = match value {
                    AttributeValue::B(b) => String::from_utf8_lossy(b.as_ref()).into_owned(),
                    other => format!("{other:?}"),
                };
                text.push_str(&format!("{name}={rendered}\n"));
            }
        }
        match out.last_evaluated_key {
            Some(k) => start = Some(k),
            None => return text,
        }
    }
}

/// Writes the table's raw items to the artifacts folder, which the canary scan reads.
async fn keep_raw_items(backend: &AwsBackend) -> String {
    let raw = raw_items(backend).await;
    std::fs::create_dir_all(artifacts_dir().join("aws")).unwrap();
    std::fs::write(artifacts_dir().join("aws").join(format!("{}.items.txt", backend.table)), &raw).unwrap();
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_every_route_on_dynamodb_and_kms() {
    let upstream = MockServer::start().await;
    let key = canary("sk-proj-");
    let rotated = canary("sk-proj-");
    let third = canary("sk-proj-");
    for accepted in [&key, &rotated, &third] {
        Mock::given(method("GET"))
            .and(path("/models"))
            .and(header("authorization", format!("Bearer {accepted}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
            .mount(&upstream)
            .await;
    }
    let backend = AwsBackend::fresh().await;
    let envs = [
        ("AWS_ENDPOINT_URL", backend.moto_url.clone()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("STOCKPULSE_TABLE", backend.table.clone()),
        ("STOCKPULSE_KMS_KEY_ID", backend.kms_key_id.clone()),
        ("STOCKPULSE_CREATE_TABLE", "1".to_owned()),
        ("STOCKPULSE_UPSTREAM_OPENAI", upstream.uri()),
    ];
    let running = start_with_args(&fresh_data_dir(), true, &["--backend", "aws"], &envs);
    let client = Client::new(&running.url);
    let login =
        client.post_json("/api/dev/login", None, &json!({"email": "ops@example.com", "role": "admin", "workspace": "ws-aws-flow"})).await;
    let token = login.json["token"].as_str().unwrap().to_owned();
    let mut served = Vec::new();

    served.push(Operation::ProvidersList);
    assert_eq!(client.get("/api/providers", Some(&token)).await.status, 200);
    served.push(Operation::KeysCreate);
    let created =
        client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "label": "team", "credentials": {"api_key": key}})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    served.push(Operation::KeysList);
    let list = client.get("/api/keys", Some(&token)).await;
    assert_eq!(list.json["items"].as_array().unwrap().len(), 1, "{}", list.text);
    served.push(Operation::KeysGet);
    assert_eq!(client.get(&format!("/api/keys/{id}"), Some(&token)).await.json["label"], "team");
    served.push(Operation::KeysTest);
    let tested = client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!(tested.json["status"], "valid", "{}", tested.text);
    served.push(Operation::KeysTestCandidate);
    let candidate =
        client.post_json("/api/keys/test", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": rotated}})).await;
    assert_eq!(candidate.json["status"], "valid", "{}", candidate.text);
    served.push(Operation::KeysUpdate);
    let updated = client
        .patch_json(
            &format!("/api/keys/{id}"),
            Some(&token),
            Some("\"1\""),
            &json!({"label": "rotated", "credentials": {"api_key": rotated}}),
        )
        .await;
    assert_eq!((updated.status, updated.json["key_version"].clone()), (200, json!(2)), "{}", updated.text);
    let stale = client.patch_json(&format!("/api/keys/{id}"), Some(&token), Some("\"1\""), &json!({"label": "late"})).await;
    assert_eq!(stale.status, 412);
    let tested = client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!(tested.json["status"], "valid", "the new material opens: {}", tested.text);
    let duplicate =
        client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await;
    assert_eq!(duplicate.status, 409);
    // The proxy and what surrounds it, on DynamoDB: cache, limits, notifications, usage.
    served.push(Operation::Proxy);
    let proxied = client.get("/proxy/openai/models", Some(&token)).await;
    assert_eq!((proxied.status, proxied.header("x-stockpulse-cache")), (200, Some("MISS")), "{}", proxied.text);
    assert_eq!(client.get("/proxy/openai/models", Some(&token)).await.header("x-stockpulse-cache"), Some("HIT"));
    served.push(Operation::QuotasPut);
    let put =
        client.put_json("/api/quotas/openai", Some(&token), &json!({"environment": "production", "limits": {"requests_per_day": 2}})).await;
    assert_eq!(put.status, 200, "{}", put.text);
    let refreshed =
        client.send(client.request(reqwest::Method::GET, "/proxy/openai/models", Some(&token)).header("cache-control", "no-cache")).await;
    assert_eq!(refreshed.header("x-stockpulse-quota-remaining"), Some("0"), "{}", refreshed.text);
    let refused =
        client.send(client.request(reqwest::Method::GET, "/proxy/openai/models", Some(&token)).header("cache-control", "no-cache")).await;
    assert_eq!((refused.status, refused.code()), (429, "quota_exceeded"), "{}", refused.text);
    served.push(Operation::QuotasGet);
    let quotas = client.get("/api/quotas/openai", Some(&token)).await;
    assert_eq!(quotas.json["environments"][0]["used"]["requests_today"], 2, "{}", quotas.text);
    served.push(Operation::NotificationsList);
    let notifications = client.get("/api/notifications", Some(&token)).await;
    let items = notifications.json["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "80 % and 100 % of 2 requests a day: {}", notifications.text);
    served.push(Operation::NotificationsRead);
    let read = client.post_json(&format!("/api/notifications/{}/read", items[0]["id"].as_str().unwrap()), Some(&token), &json!({})).await;
    assert!(read.json["read_at"].is_string(), "{}", read.text);
    served.push(Operation::UsageGet);
    let usage = client.get("/api/usage?provider=openai", Some(&token)).await;
    assert_eq!(
        (usage.json["totals"][0]["requests"].clone(), usage.json["totals"][0]["cache_hits"].clone()),
        (json!(2), json!(1)),
        "{}",
        usage.text
    );
    served.push(Operation::CachePurge);
    let purged = client.delete("/api/cache/openai", Some(&token), None).await;
    assert_eq!(purged.json["removed"], 1, "{}", purged.text);
    served.push(Operation::AuditList);
    let audit = client.get("/api/audit?action=key.update", Some(&token)).await;
    assert_eq!(audit.json["items"].as_array().unwrap().len(), 1, "{}", audit.text);
    served.push(Operation::KeysRotate);
    let rotate = client
        .send(
            client
                .request(reqwest::Method::POST, &format!("/api/keys/{id}/rotate"), Some(&token))
                .header("idempotency-key", "aws-flow-rotation")
                .json(&json!({"credentials": {"api_key": third}})),
        )
        .await;
    assert_eq!((rotate.status, rotate.json["key_version"].clone()), (200, json!(3)), "{}", rotate.text);
    assert_eq!(rotate.json["previous"]["key_version"], 2);
    served.push(Operation::KeysRollback);
    let rolled = client.post_json(&format!("/api/keys/{id}/rollback"), Some(&token), &json!({})).await;
    assert_eq!((rolled.status, rolled.json["key_version"].clone()), (200, json!(2)), "{}", rolled.text);
    served.push(Operation::JobsRun);
    let run = client.post_json("/api/jobs/run", Some(&token), &json!({})).await;
    assert_eq!((run.status, run.json["records_seen"].clone()), (200, json!(1)), "{}", run.text);
    served.push(Operation::KeysRevoke);
    let revoked = client.post_json(&format!("/api/keys/{id}/revoke"), Some(&token), &json!({"reason": "end of the flow"})).await;
    assert_eq!((revoked.status, revoked.json["status"].clone()), (200, json!("revoked")), "{}", revoked.text);
    assert_eq!(client.get("/proxy/openai/models", Some(&token)).await.code(), "no_key", "a revoked key is never used again");
    served.push(Operation::KeysDelete);
    assert_eq!(client.delete(&format!("/api/keys/{id}"), Some(&token), Some("\"7\"")).await.status, 204);
    assert_eq!(client.get(&format!("/api/keys/{id}"), Some(&token)).await.status, 404);
    served.push(Operation::AuditVerify);
    let verify = client.get("/api/audit/verify", Some(&token)).await;
    assert_eq!(verify.json["ok"], true, "{}", verify.text);
    assert_eq!(
        verify.json["checked"], 15,
        "create, test, candidate test, update, test, quota update, two quota thresholds, cache purge, rotation stage, test and \
         promote, rollback, revoke, delete: {}",
        verify.text
    );
    served.push(Operation::OpenApi);
    assert_eq!(client.get("/api/openapi.json", None).await.status, 200);
    for route in ROUTES.iter().filter(|r| !r.dev_only) {
        assert!(served.contains(&route.operation), "{} {} was not exercised on the AWS backend", route.method, route.path);
    }
    terminate(running);

    let raw = keep_raw_items(&backend).await;
    assert!(raw.contains("AUDIT#ws-aws-flow"), "the scan sees the table");
    for secret in [&key, &rotated, &third] {
        assert!(!raw.contains(secret.as_str()), "a raw DynamoDB item holds a key in plaintext");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ciphertext_copied_onto_another_record_fails_to_decrypt() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []}))).mount(&upstream).await;
    let backend = AwsBackend::fresh().await;
    let server = TestServer::start_with(
        ServerOptions { aws: Some(backend.clone()), ..Default::default() }
            .upstream("openai", &upstream.uri())
            .upstream("groq", &upstream.uri()),
    )
    .await;
    let token = server.token("admin", "ws-aws-moved").await;
    let a =
        server.client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await;
    let b =
        server.client.post_json("/api/keys", Some(&token), &json!({"provider": "groq", "credentials": {"api_key": canary("gsk_")}})).await;
    let (a, b) = (a.json["id"].as_str().unwrap().to_owned(), b.json["id"].as_str().unwrap().to_owned());

    let dynamo = aws_sdk_dynamodb::Client::new(&moto::sdk_config(&backend.moto_url).await);
    let pk = AttributeValue::S("WS#ws-aws-moved".into());
    let material_of = |id: &str| AttributeValue::S(format!("MAT#{id}#{:010}", 1));
    let source =
        dynamo.get_item().table_name(&backend.table).key("pk", pk.clone()).key("sk", material_of(&a)).send().await.unwrap().item.unwrap();
    let mut moved = source.clone();
    moved.insert("sk".into(), material_of(&b));
    dynamo.put_item().table_name(&backend.table).set_item(Some(moved)).send().await.unwrap();

    let answer = server.client.post_json(&format!("/api/keys/{b}/test"), Some(&token), &json!({})).await;
    assert_eq!((answer.status, answer.code()), (500, "key_material_unreadable"), "{}", answer.text);
    let original = server.client.post_json(&format!("/api/keys/{a}/test"), Some(&token), &json!({})).await;
    assert_eq!(original.json["status"], "valid", "{}", original.text);

    // Keep the raw items for the canary scan of the run (moto's own state dump leaves item
    // contents out, so the table is read item by item instead).
    keep_raw_items(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_manager_vault_keeps_one_tagged_secret_per_key_and_deletes_it_with_the_key() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []}))).mount(&upstream).await;
    let mut backend = AwsBackend::fresh().await;
    let prefix = format!("stockpulse-e2e-{}/", uuid::Uuid::new_v4().simple());
    backend.secrets_prefix = Some(prefix.clone());
    let server =
        TestServer::start_with(ServerOptions { aws: Some(backend.clone()), ..Default::default() }.upstream("openai", &upstream.uri()))
            .await;
    let token = server.token("admin", "ws-aws-sm").await;
    let key = canary("sk-proj-");
    let created = server.client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": key}})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert_eq!(server.client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await.json["status"], "valid");
    let replaced = server
        .client
        .patch_json(&format!("/api/keys/{id}"), Some(&token), None, &json!({"credentials": {"api_key": canary("sk-proj-")}}))
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_eq!(server.client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await.json["status"], "valid");

    let secrets = aws_sdk_secretsmanager::Client::new(&moto::sdk_config(&backend.moto_url).await);
    let name = format!("{prefix}ws-aws-sm/{id}");
    let described = secrets.describe_secret().secret_id(&name).send().await.expect("one secret per key, named by workspace and key");
    let tags: Vec<(String, String)> =
        described.tags().iter().map(|t| (t.key().unwrap_or("").to_owned(), t.value().unwrap_or("").to_owned())).collect();
    assert!(tags.contains(&("stockpulse:workspace".to_owned(), "ws-aws-sm".to_owned())), "{tags:?}");
    let stages: Vec<Vec<String>> = described.version_ids_to_stages().map(|m| m.values().cloned().collect()).unwrap_or_default();
    // An edit of the credentials replaces every version: the old one loses its labels (Secrets
    // Manager removes unlabelled versions), nothing is left to roll back to.
    let labelled: Vec<&Vec<String>> = stages.iter().filter(|s| !s.is_empty()).collect();
    assert_eq!(labelled, [&vec!["AWSCURRENT".to_owned()]], "{stages:?}");
    assert_eq!(stages.len(), 2, "both versions were written: {stages:?}");
    // The table holds only a reference, never the value.
    assert!(!raw_items(&backend).await.contains(&key));

    assert_eq!(server.client.delete(&format!("/api/keys/{id}"), Some(&token), None).await.status, 204);
    let deleted = secrets.describe_secret().secret_id(&name).send().await.expect("still described during its recovery window");
    assert!(deleted.deleted_date().is_some(), "deleting the key schedules its secret's deletion");
    let report = server.app_consistency("ws-aws-sm").await;
    assert!(report.ok, "{report:?}");
}
