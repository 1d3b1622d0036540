//! Optimistic concurrency: of many simultaneous edits with the same If-Match, exactly one wins.

use serde_json::json;
use stockpulse_tests::TestServer;

use crate::create_openai;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_patches_with_the_same_if_match_exactly_one_wins() {
    let server = TestServer::start().await;
    let token = server.token("member", "ws-race").await;
    let created = create_openai(&server, &token).await;
    let path = format!("/api/keys/{}", created.json["id"].as_str().unwrap());
    let etag = created.header("etag").unwrap().to_owned();

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, path, token, etag, barrier) = (server.client.clone(), path.clone(), token.clone(), etag.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let answer = client.patch_json(&path, Some(&token), Some(&etag), &json!({"label": format!("writer {i}")})).await;
            (i, answer)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        match answer.status {
            200 => winners.push(i),
            412 => assert_eq!(answer.code(), "version_mismatch"),
            other => panic!("unexpected {other}: {}", answer.text),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let now = server.client.get(&path, Some(&token)).await;
    assert_eq!(now.json["version"], 2);
    assert_eq!(now.json["label"], format!("writer {}", winners[0]));
    let updates = server.client.get("/api/audit?action=key.update", Some(&token)).await;
    assert_eq!(updates.json["items"].as_array().unwrap().len(), 1, "one update, one audit entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_slot_store_exactly_one_key() {
    let server = TestServer::start().await;
    let token = server.token("member", "ws-race-2").await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, token) = (server.client.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post_json(
                    "/api/keys",
                    Some(&token),
                    &json!({"provider": "groq", "credentials": {"api_key": stockpulse_tests::canary("gsk_")}}),
                )
                .await
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap().status);
    }
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
}
