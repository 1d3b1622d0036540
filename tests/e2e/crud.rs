//! Key CRUD through the gateway: create, read, list with cursors, edit, delete.

use serde_json::json;
use stockpulse_tests::{TestServer, canary};

use crate::{KEY_RECORD_FIELDS, all_keys, create, create_openai, openai_key};

#[tokio::test]
async fn create_answers_a_masked_record_and_never_the_key() {
    let server = TestServer::start().await;
    let token = server.token("member", "ws-crud-1").await;
    // Long enough (like real project keys) that the prefix fits in the quarter a mask may show.
    let key = canary("sk-proj-T3BlbkFJxxxxxxxxxxxxxxxxxxxxxxxx");
    let org = canary("org-");
    let answer = server
        .client
        .post_json("/api/keys", Some(&token), &json!({"provider": "openai", "environment": "production", "label": " team key ", "credentials": {"api_key": key, "organization_id": org}}))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    for field in KEY_RECORD_FIELDS {
        assert!(answer.json.get(field).is_some(), "record lacks {field}: {}", answer.text);
    }
    assert!(!answer.text.contains(&key) && !answer.text.contains(&org));
    assert_eq!(answer.json["label"], "team key");
    assert_eq!(answer.json["status"], "active");
    let masked = answer.json["masked"]["api_key"].as_str().unwrap();
    assert_eq!(masked, format!("sk-proj-********{}", &key[key.len() - 4..]));
    let masked_org = answer.json["masked"]["organization_id"].as_str().unwrap();
    assert!(masked_org.contains("********") && masked_org.chars().count() - 8 <= org.len() / 4, "{masked_org}");
    let id = answer.json["id"].as_str().unwrap();
    assert_eq!(answer.header("location"), Some(format!("/api/keys/{id}").as_str()));
    assert_eq!(answer.header("etag"), Some("\"1\""));
    assert_eq!(answer.header("content-type"), Some("application/json; charset=utf-8"));

    let got = server.client.get(&format!("/api/keys/{id}"), Some(&token)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json, answer.json);
    assert_eq!(got.header("etag"), Some("\"1\""));
}

#[tokio::test]
async fn one_key_per_provider_and_environment() {
    let server = TestServer::start().await;
    let token = server.token("member", "ws-crud-2").await;
    create_openai(&server, &token).await;
    let again =
        server.client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": openai_key()}})).await;
    assert_eq!((again.status, again.code()), (409, "key_exists"), "{}", again.text);
    // The other environment is a different slot.
    create(&server, &token, json!({"provider": "openai", "environment": "development", "credentials": {"api_key": openai_key()}})).await;
    assert_eq!(all_keys(&server, &token).await.len(), 2);
}

#[tokio::test]
async fn soft_format_mismatch_is_saved_with_warnings() {
    let server = TestServer::start().await;
    let token = server.token("member", "ws-crud-3").await;
    let answer = create(&server, &token, json!({"provider": "anthropic", "credentials": {"api_key": canary("not-anthropic-")}})).await;
    let warnings = answer.json["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w["code"] == "unexpected_prefix" && w["field"] == "credentials.api_key"), "{}", answer.text);
}

#[tokio::test]
async fn list_pages_with_an_opaque_cursor() {
    let server = TestServer::start().await;
    let token = server.token("admin", "ws-crud-4").await;
    let providers = ["openai", "mistral", "groq", "finnhub", "fmp"];
    let mut created = Vec::new();
    for p in providers {
        let a = create(&server, &token, json!({"provider": p, "credentials": {"api_key": canary("k")}})).await;
        created.push(a.json["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/api/keys?limit=2".to_owned(),
            Some(c) => format!("/api/keys?limit=2&cursor={c}"),
        };
        let page = server.client.get(&path, Some(&token)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        pages += 1;
        seen.extend(page.json["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every key once, oldest first");
    let bad = server.client.get("/api/keys?cursor=not-a-cursor", Some(&token)).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_cursor"));
    let bad = server.client.get("/api/keys?limit=0", Some(&token)).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_limit"));
}

#[tokio::test]
async fn edit_label_environment_and_credentials() {
    let server = TestServer::start().await;
    let token = server.token("member", "ws-crud-5").await;
    let created = create_openai(&server, &token).await;
    let id = created.json["id"].as_str().unwrap();
    let path = format!("/api/keys/{id}");

    let renamed = server.client.patch_json(&path, Some(&token), Some("\"1\""), &json!({"label": "renamed"})).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(renamed.json["label"], "renamed");
    assert_eq!(renamed.json["version"], 2);
    assert_eq!(renamed.json["key_version"], 1);
    assert_eq!(renamed.header("etag"), Some("\"2\""));
    assert_eq!(renamed.json["fingerprint"], created.json["fingerprint"]);

    let new_key = openai_key();
    let rekeyed = server.client.patch_json(&path, Some(&token), Some("\"2\""), &json!({"credentials": {"api_key": new_key}})).await;
    assert_eq!(rekeyed.status, 200, "{}", rekeyed.text);
    assert_eq!(rekeyed.json["key_version"], 2);
    assert_ne!(rekeyed.json["fingerprint"], created.json["fingerprint"]);
    assert!(rekeyed.json["masked"]["api_key"].as_str().unwrap().ends_with(&new_key[new_key.len() - 4..]));

    let org = canary("org-");
    let with_org = server.client.patch_json(&path, Some(&token), None, &json!({"credentials": {"organization_id": org}})).await;
    assert_eq!(with_org.status, 200, "{}", with_org.text);
    assert!(with_org.json["masked"].get("organization_id").is_some());
    assert_eq!(with_org.json["fingerprint"], rekeyed.json["fingerprint"], "the primary key did not change");
    let without_org = server.client.patch_json(&path, Some(&token), None, &json!({"credentials": {"organization_id": null}})).await;
    assert_eq!(without_org.status, 200, "{}", without_org.text);
    assert!(without_org.json["masked"].get("organization_id").is_none());
    let no_required = server.client.patch_json(&path, Some(&token), None, &json!({"credentials": {"api_key": null}})).await;
    assert_eq!((no_required.status, no_required.code()), (422, "missing_credential"), "{}", no_required.text);

    let moved = server.client.patch_json(&path, Some(&token), None, &json!({"environment": "development"})).await;
    assert_eq!(moved.status, 200, "{}", moved.text);
    assert_eq!(moved.json["environment"], "development");

    let stale = server.client.patch_json(&path, Some(&token), Some("\"1\""), &json!({"label": "late"})).await;
    assert_eq!((stale.status, stale.code()), (412, "version_mismatch"), "{}", stale.text);
    let empty = server.client.patch_json(&path, Some(&token), None, &json!({})).await;
    assert_eq!((empty.status, empty.code()), (400, "empty_update"));
    let bad_etag = server.client.patch_json(&path, Some(&token), Some("v1"), &json!({"label": "x"})).await;
    assert_eq!((bad_etag.status, bad_etag.code()), (400, "invalid_if_match"));
}

#[tokio::test]
async fn delete_removes_the_record_and_its_material() {
    let server = TestServer::start().await;
    let admin = server.token("admin", "ws-crud-6").await;
    let created = create_openai(&server, &admin).await;
    let id = created.json["id"].as_str().unwrap();
    let path = format!("/api/keys/{id}");
    let stale = server.client.delete(&path, Some(&admin), Some("\"7\"")).await;
    assert_eq!(stale.status, 412);
    let gone = server.client.delete(&path, Some(&admin), Some("\"1\"")).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    assert_eq!(server.client.get(&path, Some(&admin)).await.status, 404);
    assert_eq!(server.client.delete(&path, Some(&admin), None).await.status, 404);
    let db = rusqlite::Connection::open(server.sqlite_path()).unwrap();
    let left: i64 = db.query_row("SELECT count(*) FROM key_material WHERE key_id = ?1", [id], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "the sealed material is gone with the record");
    // The slot is free again.
    create_openai(&server, &admin).await;
}

#[tokio::test]
async fn providers_are_grouped_and_filterable() {
    let server = TestServer::start().await;
    let token = server.token("viewer", "ws-crud-7").await;
    let all = server.client.get("/api/providers", Some(&token)).await;
    assert_eq!(all.status, 200);
    let categories: Vec<&str> = all.json["categories"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(categories, ["financial_data", "llm", "trading", "other"]);
    let count: usize = all.json["categories"].as_array().unwrap().iter().map(|c| c["providers"].as_array().unwrap().len()).sum();
    assert!(count >= 16);
    let llm = server.client.get("/api/providers?category=llm", Some(&token)).await;
    let ids: Vec<&str> = llm.json["categories"][0]["providers"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    for id in ["openai", "anthropic", "gemini", "mistral", "groq"] {
        assert!(ids.contains(&id), "{ids:?}");
    }
    assert_eq!(llm.json["categories"].as_array().unwrap().len(), 1);
    let trading = server.client.get("/api/providers?category=trading", Some(&token)).await;
    assert!(trading.json["categories"][0]["providers"].as_array().unwrap().iter().all(|p| p["admin_only"] == true));
    let bad = server.client.get("/api/providers?category=crypto", Some(&token)).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_category"));
}
