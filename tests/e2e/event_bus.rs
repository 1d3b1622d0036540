//! On AWS, every new notification is also an EventBridge event (source `stockpulse.keys`), which
//! operators route with rules: here a rule on a bus of its own sends them to an SQS queue in moto,
//! and the queue receives the revocation's event, once, with no key material in it.

use serde_json::{Value, json};
use stockpulse_tests::{AwsBackend, ServerOptions, TestServer, canary, moto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_published_to_the_configured_event_bus() {
    let backend = AwsBackend::fresh().await;
    let sdk = moto::sdk_config(&backend.moto_url).await;
    let (events, sqs) = (aws_sdk_eventbridge::Client::new(&sdk), aws_sdk_sqs::Client::new(&sdk));
    let name = format!("stockpulse-events-{}", uuid::Uuid::new_v4().simple());
    events.create_event_bus().name(&name).send().await.expect("event bus");
    let queue_url = sqs.create_queue().queue_name(&name).send().await.expect("queue").queue_url.expect("queue url");
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes");
    let queue_arn = attributes.attributes.unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
    events
        .put_rule()
        .name("stockpulse-notifications")
        .event_bus_name(&name)
        .event_pattern(json!({"source": ["stockpulse.keys"]}).to_string())
        .send()
        .await
        .expect("rule");
    events
        .put_targets()
        .rule("stockpulse-notifications")
        .event_bus_name(&name)
        .targets(aws_sdk_eventbridge::types::Target::builder().id("queue").arn(&queue_arn).build().unwrap())
        .send()
        .await
        .expect("target");

    let server =
        TestServer::start_with(ServerOptions { aws: Some(backend), ..Default::default() }.var("STOCKPULSE_EVENT_BUS", &name)).await;
    let ws = format!("ws-events-{}", uuid::Uuid::new_v4().simple());
    let admin = server.token("admin", &ws).await;
    let key = canary("sk-proj-");
    let created = super::create(&server, &admin, json!({"provider": "openai", "credentials": {"api_key": key}})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    let revoked = server.client.post_json(&format!("/api/keys/{id}/revoke"), Some(&admin), &json!({"reason": "left the team"})).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);

    let mut received: Vec<Value> = Vec::new();
    for _ in 0..10 {
        let out = sqs.receive_message().queue_url(&queue_url).max_number_of_messages(10).wait_time_seconds(1).send().await.unwrap();
        for message in out.messages.unwrap_or_default() {
            let body = message.body.unwrap_or_default();
            assert!(!body.contains(&key), "an event carries the key");
            received.push(serde_json::from_str(&body).unwrap());
        }
        if !received.is_empty() {
            break;
        }
    }
    assert_eq!(received.len(), 1, "{received:?}");
    let event = &received[0];
    assert_eq!((event["source"].as_str(), event["detail-type"].as_str()), (Some("stockpulse.keys"), Some("key_revoked")), "{event}");
    assert_eq!((event["detail"]["workspace"].as_str(), event["detail"]["key_id"].as_str()), (Some(ws.as_str()), Some(id.as_str())));
    assert!(event["detail"]["message"].as_str().unwrap().contains("left the team"));
    let listed = server.client.get("/api/notifications", Some(&admin)).await;
    assert_eq!(listed.json["items"][0]["id"], event["detail"]["id"], "the event is the stored notification");
    server.stop().await;
}
