//! Key material is bound to its record and to the master key: a ciphertext moved to another
//! record does not decrypt, and a wrong master key is a clear error, not garbage.

use serde_json::json;
use stockpulse_tests::{ServerOptions, TestServer, canary, fresh_data_dir};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::create;

async fn ok_upstream() -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []}))).mount(&upstream).await;
    upstream
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_record_fails_to_decrypt() {
    let upstream = ok_upstream().await;
    let server =
        TestServer::start_with(ServerOptions::default().upstream("openai", &upstream.uri()).upstream("groq", &upstream.uri())).await;
    let token = server.token("admin", "ws-vault-1").await;
    let a = create(&server, &token, json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await;
    let b = create(&server, &token, json!({"provider": "groq", "credentials": {"api_key": canary("gsk_")}})).await;
    let (a, b) = (a.json["id"].as_str().unwrap().to_owned(), b.json["id"].as_str().unwrap().to_owned());

    let db = rusqlite::Connection::open(server.sqlite_path()).unwrap();
    db.execute("UPDATE key_material SET blob = (SELECT blob FROM key_material WHERE key_id = ?1) WHERE key_id = ?2", [&a, &b]).unwrap();

    let moved = server.client.post_json(&format!("/api/keys/{b}/test"), Some(&token), &json!({})).await;
    assert_eq!((moved.status, moved.code()), (500, "key_material_unreadable"), "{}", moved.text);
    assert!(moved.json["error"]["message"].as_str().unwrap().contains("cannot be decrypted"));
    let original = server.client.post_json(&format!("/api/keys/{a}/test"), Some(&token), &json!({})).await;
    assert_eq!(original.json["status"], "valid", "the original record still opens: {}", original.text);
}

#[tokio::test]
async fn a_wrong_master_key_is_a_clear_error() {
    let upstream = ok_upstream().await;
    let data_dir = fresh_data_dir();
    let first = TestServer::start_with(
        ServerOptions { data_dir: Some(data_dir.clone()), ..Default::default() }
            .var("STOCKPULSE_MASTER_KEY", &"11".repeat(32))
            .upstream("openai", &upstream.uri()),
    )
    .await;
    let token = first.token("admin", "ws-vault-2").await;
    let created = create(&first, &token, json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    first.stop().await;

    let second = TestServer::start_with(
        ServerOptions { data_dir: Some(data_dir.clone()), ..Default::default() }
            .var("STOCKPULSE_MASTER_KEY", &"22".repeat(32))
            .upstream("openai", &upstream.uri()),
    )
    .await;
    let token = second.token("admin", "ws-vault-2").await;
    let tested = second.client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!((tested.status, tested.code()), (503, "wrong_master_key"), "{}", tested.text);
    assert!(tested.json["error"]["message"].as_str().unwrap().contains("master key"), "{}", tested.text);
    let edited = second
        .client
        .patch_json(&format!("/api/keys/{id}"), Some(&token), None, &json!({"credentials": {"organization_id": "org-x"}}))
        .await;
    assert_eq!(edited.code(), "wrong_master_key", "{}", edited.text);
    // Metadata stays readable: nothing about it needs the master key.
    assert_eq!(second.client.get(&format!("/api/keys/{id}"), Some(&token)).await.status, 200);
    second.stop().await;

    let third = TestServer::start_with(
        ServerOptions { data_dir: Some(data_dir), ..Default::default() }
            .var("STOCKPULSE_MASTER_KEY", &"11".repeat(32))
            .upstream("openai", &upstream.uri()),
    )
    .await;
    let token = third.token("admin", "ws-vault-2").await;
    let tested = third.client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!(tested.json["status"], "valid", "the right key opens it again: {}", tested.text);
}

#[tokio::test]
async fn the_database_file_holds_no_plaintext_key() {
    let server = TestServer::start().await;
    let token = server.token("admin", "ws-vault-3").await;
    let key = canary("sk-proj-");
    create(&server, &token, json!({"provider": "openai", "credentials": {"api_key": key}})).await;
    let db = rusqlite::Connection::open(server.sqlite_path()).unwrap();
    db.execute_batch("PRAGMA wal_checkpoint(FULL);").unwrap();
    for file in ["stockpulse.db", "stockpulse.db-wal"] {
        if let Ok(bytes) = std::fs::read(server.data_dir.join(file)) {
            assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "{file} holds the key in plaintext");
        }
    }
}
