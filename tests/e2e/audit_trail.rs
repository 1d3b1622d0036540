//! The audit trail: an entry for every operation, filters and pages, a verifiable hash chain
//! that reports an edited row, and fail-closed writes.

use serde_json::json;
use stockpulse_tests::{ServerOptions, TestServer, canary};

use crate::{all_keys, create_openai, openai_key};

#[tokio::test]
async fn every_operation_writes_one_complete_entry() {
    let upstream = crate::provider_listing_no_models().await;
    let server = TestServer::start_with(ServerOptions::default().upstream("openai", &upstream.uri())).await;
    let admin = server.token("admin", "ws-audit-1").await;
    let key = openai_key();
    let created = server.client.post_json("/api/keys", Some(&admin), &json!({"provider": "openai", "credentials": {"api_key": key}})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    let fingerprint = created.json["fingerprint"].as_str().unwrap().to_owned();
    let request_id = created.header("x-stockpulse-request-id").unwrap().to_owned();
    server.client.patch_json(&format!("/api/keys/{id}"), Some(&admin), None, &json!({"label": "x"})).await;
    server.client.post_json(&format!("/api/keys/{id}/test"), Some(&admin), &json!({})).await;
    server.client.post_json("/api/keys/test", Some(&admin), &json!({"provider": "openai", "credentials": {"api_key": openai_key()}})).await;
    server.client.delete(&format!("/api/keys/{id}"), Some(&admin), None).await;

    let audit = server.client.get("/api/audit", Some(&admin)).await;
    assert_eq!(audit.status, 200);
    let items = audit.json["items"].as_array().unwrap();
    let actions: Vec<&str> = items.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["key.delete", "key.test_candidate", "key.test", "key.update", "key.create"], "newest first");
    let create = &items[4];
    assert_eq!(create["actor_email"], "admin@ws-audit-1.example.com");
    assert_eq!(create["role"], "admin");
    assert_eq!(create["workspace"], "ws-audit-1");
    assert_eq!(create["provider"], "openai");
    assert_eq!(create["environment"], "production");
    assert_eq!(create["key_id"], id.as_str());
    assert_eq!(create["outcome"], "success");
    assert_eq!(create["fingerprint"], fingerprint.as_str());
    assert_eq!(create["request_id"], request_id.as_str());
    assert_eq!(create["source_ip"], "127.0.0.1");
    assert!(create["user_agent"].is_string());
    assert_eq!(create["seq"], 1);
    assert_eq!(items[0]["prev_hash"], items[1]["hash"]);
    assert!(!audit.text.contains(&key));
    let verify = server.client.get("/api/audit/verify", Some(&admin)).await;
    assert_eq!(verify.json, json!({"ok": true, "checked": 5, "first_bad": null, "problem": null}));
}

#[tokio::test]
async fn filters_and_pages() {
    let server = TestServer::start().await;
    let admin = server.token("admin", "ws-audit-2").await;
    let member = server.token("member", "ws-audit-2").await;
    let start = chrono::Utc::now();
    create_openai(&server, &admin).await;
    for p in ["groq", "mistral"] {
        server.client.post_json("/api/keys", Some(&member), &json!({"provider": p, "credentials": {"api_key": canary("k")}})).await;
    }
    let by_actor = server.client.get("/api/audit?actor=member@ws-audit-2.example.com", Some(&admin)).await;
    assert_eq!(by_actor.json["items"].as_array().unwrap().len(), 2, "{}", by_actor.text);
    let by_provider = server.client.get("/api/audit?provider=groq&action=key.create", Some(&admin)).await;
    assert_eq!(by_provider.json["items"].as_array().unwrap().len(), 1);
    let from = start.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let in_range = server.client.get(&format!("/api/audit?from={}", percent(&from)), Some(&admin)).await;
    assert_eq!(in_range.json["items"].as_array().unwrap().len(), 3, "{}", in_range.text);
    let before = server.client.get(&format!("/api/audit?to={}", percent(&from)), Some(&admin)).await;
    assert_eq!(before.json["items"].as_array().unwrap().len(), 0);
    let page1 = server.client.get("/api/audit?limit=2", Some(&admin)).await;
    assert_eq!(page1.json["items"].as_array().unwrap().len(), 2);
    let cursor = page1.json["next_cursor"].as_str().unwrap();
    let page2 = server.client.get(&format!("/api/audit?limit=2&cursor={cursor}"), Some(&admin)).await;
    assert_eq!(page2.json["items"].as_array().unwrap().len(), 1);
    assert!(page2.json["next_cursor"].is_null());
    let bad = server.client.get("/api/audit?from=yesterday", Some(&admin)).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_time"));
    let bad = server.client.get("/api/audit?action=key.explode", Some(&admin)).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_action"));
    let keys_cursor = server.client.get("/api/keys?limit=1", Some(&admin)).await.json["next_cursor"].as_str().unwrap().to_owned();
    let bad = server.client.get(&format!("/api/audit?cursor={keys_cursor}"), Some(&admin)).await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_cursor"), "a keys cursor is no audit cursor");
}

fn percent(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn editing_one_audit_row_in_the_sqlite_file_is_reported_by_verify() {
    let server = TestServer::start().await;
    let admin = server.token("admin", "ws-audit-3").await;
    for p in ["openai", "groq", "mistral", "finnhub"] {
        server.client.post_json("/api/keys", Some(&admin), &json!({"provider": p, "credentials": {"api_key": canary("k")}})).await;
    }
    assert_eq!(server.client.get("/api/audit/verify", Some(&admin)).await.json["ok"], true);

    let db = rusqlite::Connection::open(server.sqlite_path()).unwrap();
    db.execute("UPDATE audit SET actor_email = 'someone-else@example.com' WHERE workspace = 'ws-audit-3' AND seq = 3", []).unwrap();
    let report = server.client.get("/api/audit/verify", Some(&admin)).await;
    assert_eq!(report.json["ok"], false, "{}", report.text);
    assert_eq!(report.json["first_bad"], 3);
    assert!(report.json["problem"].as_str().unwrap().contains("edited"));

    // Removing the newest row is found too (the chain head remembers it).
    db.execute("UPDATE audit SET actor_email = 'admin@ws-audit-3.example.com' WHERE workspace = 'ws-audit-3' AND seq = 3", []).unwrap();
    assert_eq!(server.client.get("/api/audit/verify", Some(&admin)).await.json["ok"], true, "restored");
    db.execute("DELETE FROM audit WHERE workspace = 'ws-audit-3' AND seq = 4", []).unwrap();
    let report = server.client.get("/api/audit/verify", Some(&admin)).await;
    assert_eq!((report.json["ok"].clone(), report.json["first_bad"].clone()), (json!(false), json!(4)), "{}", report.text);

    // A row edited into something unreadable is reported, not a server error.
    db.execute("UPDATE audit SET role = 'superuser' WHERE workspace = 'ws-audit-3' AND seq = 2", []).unwrap();
    let report = server.client.get("/api/audit/verify", Some(&admin)).await;
    assert_eq!(report.status, 200, "{}", report.text);
    assert_eq!(report.json["ok"], false);
}

#[tokio::test]
async fn a_row_edited_into_another_type_is_named_by_verify() {
    // Found by the audit property (`properties.rs`): an unreadable row was reported as the first
    // entry of its batch (entry 1), and a BLOB in `time`, `role`, `outcome` or `environment`
    // made verify answer 503 instead of reporting the tampering.
    let server = TestServer::start().await;
    let admin = server.token("admin", "ws-audit-5").await;
    for p in ["openai", "groq", "mistral"] {
        server.client.post_json("/api/keys", Some(&admin), &json!({"provider": p, "credentials": {"api_key": canary("k")}})).await;
    }
    let db = rusqlite::Connection::open(server.sqlite_path()).unwrap();
    let verify = || async { server.client.get("/api/audit/verify", Some(&admin)).await };

    db.execute("UPDATE audit SET prev_hash = X'D9' WHERE workspace = 'ws-audit-5' AND seq = 2", []).unwrap();
    let report = verify().await;
    assert_eq!(
        (report.status, report.json["ok"].clone(), report.json["first_bad"].clone()),
        (200, json!(false), json!(2)),
        "{}",
        report.text
    );

    db.execute(
        "UPDATE audit SET prev_hash = (SELECT hash FROM audit WHERE workspace = 'ws-audit-5' AND seq = 1)
         WHERE workspace = 'ws-audit-5' AND seq = 2",
        [],
    )
    .unwrap();
    assert_eq!(verify().await.json["ok"], true, "restored");
    db.execute("UPDATE audit SET time = X'00' WHERE workspace = 'ws-audit-5' AND seq = 3", []).unwrap();
    let report = verify().await;
    assert_eq!(
        (report.status, report.json["ok"].clone(), report.json["first_bad"].clone()),
        (200, json!(false), json!(3)),
        "{}",
        report.text
    );
}

#[tokio::test]
async fn a_mutation_whose_audit_entry_cannot_be_written_does_not_happen() {
    let server = TestServer::start().await;
    let admin = server.token("admin", "ws-audit-4").await;
    let existing = create_openai(&server, &admin).await;
    let id = existing.json["id"].as_str().unwrap().to_owned();
    let db = rusqlite::Connection::open(server.sqlite_path()).unwrap();
    db.execute_batch("CREATE TRIGGER audit_sink_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit sink down'); END;").unwrap();

    let create =
        server.client.post_json("/api/keys", Some(&admin), &json!({"provider": "groq", "credentials": {"api_key": canary("gsk_")}})).await;
    assert_eq!((create.status, create.code()), (503, "store_unavailable"), "{}", create.text);
    let update = server.client.patch_json(&format!("/api/keys/{id}"), Some(&admin), None, &json!({"label": "unaudited"})).await;
    assert_eq!(update.status, 503, "{}", update.text);
    let delete = server.client.delete(&format!("/api/keys/{id}"), Some(&admin), None).await;
    assert_eq!(delete.status, 503, "{}", delete.text);

    db.execute_batch("DROP TRIGGER audit_sink_down;").unwrap();
    let keys = all_keys(&server, &admin).await;
    assert_eq!(keys.len(), 1, "no groq key was created and the openai key was not deleted");
    assert_eq!(keys[0]["label"], "team key", "the update did not happen");
    assert_eq!(
        server.client.get("/api/audit/verify", Some(&admin)).await.json,
        json!({"ok": true, "checked": 1, "first_bad": null, "problem": null})
    );
}

/// The web UI's action filter offers exactly the actions the API accepts: one it does not know
/// answers 400 `invalid_action`, and one missing cannot be filtered on.
#[test]
fn the_web_uis_action_filter_offers_exactly_the_actions_the_api_accepts() {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../frontend/src/components/AuditView.tsx")).expect("AuditView.tsx");
    let start = source.find("const ACTIONS = [").expect("the ACTIONS list") + "const ACTIONS = [".len();
    let list = &source[start..start + source[start..].find("];").expect("the end of the ACTIONS list")];
    let offered: std::collections::BTreeSet<&str> = list.split('\'').skip(1).step_by(2).collect();
    let accepted: std::collections::BTreeSet<&str> = stockpulse_shared::domain::audit::action::ALL.into_iter().collect();
    assert_eq!(offered, accepted);
}
