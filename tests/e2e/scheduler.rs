//! The scheduled job: runs started together do the work once (one holds the lease, the others
//! do nothing); keys are re-verified when due and never faster than the provider allows; a key
//! the provider refuses is marked invalid and notified; rotation-due and expiry reminders go
//! out once each; statuses `rotation_due` and `expired` show; every action is audited.

use std::sync::Arc;

use serde_json::{Value, json};
use stockpulse_shared::ports::ManualClock;
use stockpulse_shared::services::scheduler::{RunReport, Scope};
use stockpulse_tests::{ServerOptions, TestServer, canary};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn notifications_of(server: &TestServer, token: &str, kind: &str) -> Vec<Value> {
    let answer = server.client.get("/api/notifications?limit=200", Some(token)).await;
    answer.json["items"].as_array().unwrap().iter().filter(|n| n["kind"] == kind).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_started_together_verify_each_key_once_and_remind_once() {
    let refused = canary("gsk_");
    let upstream = MockServer::start().await;
    // Groq refuses its key; every other test request is accepted.
    Mock::given(method("GET"))
        .and(path("/models"))
        .and(header("authorization", format!("Bearer {refused}").as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "Invalid API Key"}})))
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/models"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&upstream)
        .await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let options = ServerOptions { clock: Some(clock.clone()), ..Default::default() }
        .upstream("openai", &upstream.uri())
        .upstream("groq", &upstream.uri())
        .upstream("mistral", &upstream.uri());
    let server = TestServer::start_with(options).await;
    let ws = format!("ws-scheduler-{}", uuid::Uuid::new_v4().simple());
    let admin = server.token("admin", &ws).await;
    let expires = (chrono::Utc::now() + chrono::Duration::hours(60)).to_rfc3339();
    let policy = json!({"rotate_every_days": 1, "notify_before_days": 0});
    let keys = [
        json!({"provider": "openai", "credentials": {"api_key": canary("sk-proj-")}, "rotation_policy": {"rotate_every_days": 1, "notify_before_days": 1, "expires_at": expires}}),
        json!({"provider": "groq", "credentials": {"api_key": refused}, "rotation_policy": policy}),
        json!({"provider": "mistral", "credentials": {"api_key": canary("m")}, "rotation_policy": policy}),
    ];
    let mut ids = Vec::new();
    for body in keys {
        ids.push(super::create(&server, &admin, body).await.json["id"].as_str().unwrap().to_owned());
    }
    let openai = server.client.get(&format!("/api/keys/{}", ids[0]), Some(&admin)).await;
    assert!(openai.json["rotation_due_at"].is_string() && openai.json["status"] == "active", "{}", openai.text);

    // Nothing is due yet but the OpenAI key's rotation reminder (a day ahead of its due date).
    let first = server.client.post_json("/api/jobs/run", Some(&admin), &json!({})).await;
    assert_eq!((first.json["verified"].clone(), first.json["reminders_sent"].clone()), (json!(0), json!(1)), "{}", first.text);
    assert_eq!(upstream.received_requests().await.unwrap().len(), 0);

    // Two days later everything is due. Three runs start together: two by admins, one on the
    // process's own schedule (all workspaces).
    clock.advance(chrono::Duration::days(2));
    let http_run = |server: &TestServer| {
        let (client, admin) = (server.client.clone(), admin.clone());
        async move { client.post_json("/api/jobs/run", Some(&admin), &json!({})).await.json }
    };
    let app = server.app.clone();
    let (a, b, c) = tokio::join!(http_run(&server), http_run(&server), async move {
        serde_json::to_value(app.app.scheduler().run(Scope::All).await.unwrap()).unwrap()
    });
    let reports: Vec<RunReport> = [a, b, c].into_iter().map(|v| serde_json::from_value(v).unwrap()).collect::<Vec<_>>();
    let worked: Vec<&RunReport> = reports.iter().filter(|r| r.skipped.is_none()).collect();
    assert_eq!(worked.len(), 1, "exactly one run holds the lease: {reports:#?}");
    assert_eq!(reports.iter().map(|r| r.verified).sum::<usize>(), 3, "{reports:#?}");
    assert_eq!((worked[0].marked_invalid, worked[0].reminders_sent), (1, 3), "{reports:#?}");
    let tests = upstream.received_requests().await.unwrap().len();
    assert_eq!(tests, 3, "each key verified once");
    assert_eq!(notifications_of(&server, &admin, "rotation_due").await.len(), 3);
    assert_eq!(notifications_of(&server, &admin, "key_expiring").await.len(), 1);
    assert_eq!(notifications_of(&server, &admin, "key_invalid").await.len(), 1);

    // Later runs repeat nothing: the keys were just verified and each reminder was sent.
    for _ in 0..2 {
        let again = server.client.post_json("/api/jobs/run", Some(&admin), &json!({})).await;
        assert_eq!((again.json["verified"].clone(), again.json["reminders_sent"].clone()), (json!(0), json!(0)), "{}", again.text);
    }
    assert_eq!(upstream.received_requests().await.unwrap().len(), 3);

    // The statuses show what is due; after the expiry the key shows `expired` and one more
    // reminder goes out.
    let listed = server.client.get("/api/keys", Some(&admin)).await;
    let status_of = |id: &str| listed.json["items"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap()["status"].clone();
    assert_eq!(
        (status_of(&ids[0]), status_of(&ids[1]), status_of(&ids[2])),
        (json!("rotation_due"), json!("invalid"), json!("rotation_due"))
    );
    clock.advance(chrono::Duration::days(2));
    let expired_run = server.client.post_json("/api/jobs/run", Some(&admin), &json!({})).await;
    assert_eq!(expired_run.json["reminders_sent"], 1, "{}", expired_run.text);
    assert_eq!(server.client.get(&format!("/api/keys/{}", ids[0]), Some(&admin)).await.json["status"], "expired");
    assert_eq!(notifications_of(&server, &admin, "key_expired").await.len(), 1);

    // Every action is audited and the chain verifies.
    let audit = server.client.get("/api/audit?action=key.reminder&limit=200", Some(&admin)).await;
    assert_eq!(audit.json["items"].as_array().unwrap().len(), 5, "3 rotation due, expiring, expired: {}", audit.text);
    let tests = server.client.get("/api/audit?action=key.test&limit=200", Some(&admin)).await;
    assert!(tests.json["items"].as_array().unwrap().iter().all(|e| e["actor_sub"] == "system:scheduler"), "{}", tests.text);
    assert!(tests.json["items"].as_array().unwrap().len() >= 3);
    assert_eq!(server.client.get("/api/audit/verify", Some(&admin)).await.json["ok"], true);
    assert!(server.app_consistency(&ws).await.ok);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_gateway_runs_the_job_on_its_interval_and_admins_alone_trigger_it() {
    let server = TestServer::start_with(ServerOptions::default().var("STOCKPULSE_SCHEDULER_INTERVAL_SECONDS", "1")).await;
    let ws = format!("ws-scheduler-interval-{}", uuid::Uuid::new_v4().simple());
    let member = server.token("member", &ws).await;
    let denied = server.client.post_json("/api/jobs/run", Some(&member), &json!({})).await;
    assert_eq!((denied.status, denied.code()), (403, "insufficient_role"));
    let bad = server.client.post_json("/api/jobs/run?now=1", Some(&server.token("admin", &ws).await), &json!({})).await;
    assert_eq!((bad.status, bad.code()), (400, "unknown_parameter"));
    // Nobody calls the trigger: the interval's run sends the expiry reminder by itself.
    let expires = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    super::create(
        &server,
        &member,
        json!({"provider": "openai", "credentials": {"api_key": canary("sk-proj-")}, "rotation_policy": {"expires_at": expires}}),
    )
    .await;
    let mut reminded = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        reminded = notifications_of(&server, &member, "key_expiring").await;
        if !reminded.is_empty() {
            break;
        }
    }
    assert_eq!(reminded.len(), 1, "the gateway's interval ran the job");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_does_bounded_work_and_the_next_one_continues_where_it_stopped() {
    let upstream = crate::provider_listing_no_models().await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let options = ServerOptions { clock: Some(clock.clone()), ..Default::default() }
        .upstream("openai", &upstream.uri())
        .upstream("groq", &upstream.uri())
        .upstream("mistral", &upstream.uri())
        .var("STOCKPULSE_SCHEDULER_RECORDS_PER_RUN", "2")
        .var("STOCKPULSE_SCHEDULER_TESTS_PER_RUN", "1");
    let server = TestServer::start_with(options).await;
    let expires = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let mut admins = Vec::new();
    // Five keys in three workspaces; each expires soon, so each earns one reminder.
    for (ws, provider, key) in [
        ("a", "openai", canary("sk-proj-")),
        ("a", "groq", canary("gsk_")),
        ("b", "openai", canary("sk-proj-")),
        ("b", "mistral", canary("m")),
        ("c", "openai", canary("sk-proj-")),
    ] {
        let ws = format!("ws-bounded-{ws}");
        let admin = server.token("admin", &ws).await;
        super::create(
            &server,
            &admin,
            json!({"provider": provider, "credentials": {"api_key": key}, "rotation_policy": {"expires_at": expires}}),
        )
        .await;
        admins.push(admin);
    }
    clock.advance(chrono::Duration::days(1) + chrono::Duration::hours(3));
    let scheduler = server.app.app.scheduler();
    let mut seen = Vec::new();
    let (mut reminders, mut verified) = (0, 0);
    for _ in 0..4 {
        let report = scheduler.run(Scope::All).await.unwrap();
        assert!(report.skipped.is_none() && report.errors.is_empty(), "{report:#?}");
        assert!(report.records_seen <= 2 && report.verified <= 1, "bounded: {report:#?}");
        seen.push((report.records_seen, report.complete));
        reminders += report.reminders_sent;
        verified += report.verified;
    }
    assert_eq!(seen, [(2, false), (2, false), (1, true), (2, false)], "the walk continues, ends, and starts over");
    assert_eq!(reminders, 5, "one reminder per key, whatever the number of runs");
    assert_eq!(verified, 4, "one test per run at most");
    assert_eq!(upstream.received_requests().await.unwrap().len(), 4);
    server.stop().await;
}

/// An admin's `POST /api/jobs/run` works on the admin's own workspace only: another workspace's
/// key, equally due (verification, rotation and expiry reminders), keeps its record,
/// notifications and audit trail untouched until that workspace's own admin runs the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_run_leaves_other_workspaces_alone() {
    let upstream = crate::provider_listing_no_models().await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let server =
        TestServer::start_with(ServerOptions { clock: Some(clock.clone()), ..Default::default() }.upstream("openai", &upstream.uri()))
            .await;
    let run = uuid::Uuid::new_v4().simple();
    let expires = (chrono::Utc::now() + chrono::Duration::hours(30)).to_rfc3339();
    let policy = json!({"rotate_every_days": 1, "notify_before_days": 0, "expires_at": expires});
    let mut workspaces = Vec::new();
    for name in ["a", "b"] {
        let admin = server.token("admin", &format!("ws-job-scope-{name}-{run}")).await;
        let key = canary("sk-proj-");
        let created =
            super::create(&server, &admin, json!({"provider": "openai", "credentials": {"api_key": key}, "rotation_policy": policy})).await;
        workspaces.push((admin, key, created.json["id"].as_str().unwrap().to_owned()));
    }
    let [(admin_a, key_a, id_a), (admin_b, key_b, id_b)] = <[_; 2]>::try_from(workspaces).ok().unwrap();
    // Two days on, every piece of work is due in both workspaces.
    clock.advance(chrono::Duration::days(2));
    let state = |admin: String, id: String| {
        let client = server.client.clone();
        async move {
            let key = client.get(&format!("/api/keys/{id}"), Some(&admin)).await.json;
            let notifications = client.get("/api/notifications?limit=200", Some(&admin)).await.json["items"].clone();
            let audit = client.get("/api/audit?limit=200", Some(&admin)).await.json["items"].clone();
            (key, notifications, audit)
        }
    };
    let b_before = state(admin_b.clone(), id_b.clone()).await;
    assert_eq!((b_before.1.as_array().unwrap().len(), b_before.0["last_verified_at"].clone()), (0, Value::Null), "{b_before:?}");
    let a_before = state(admin_a.clone(), id_a.clone()).await;

    let report = server.client.post_json("/api/jobs/run", Some(&admin_a), &json!({})).await;
    assert_eq!(report.status, 200, "{}", report.text);
    assert_eq!(
        (report.json["records_seen"].clone(), report.json["verified"].clone(), report.json["reminders_sent"].clone()),
        (json!(1), json!(1), json!(2)),
        "A's key alone: verified, rotation due and expired: {}",
        report.text
    );
    let received = upstream.received_requests().await.unwrap();
    assert_eq!(received.len(), 1, "one provider test, of A's key");
    assert_eq!(received[0].headers.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {key_a}"));
    let a_after = state(admin_a.clone(), id_a.clone()).await;
    assert_ne!(a_after, a_before, "A's run did A's work");
    assert_eq!(a_after.1.as_array().unwrap().len(), 2, "{:?}", a_after.1);
    assert!(a_after.0["last_verified_at"].is_string(), "{}", a_after.0);
    assert_eq!(state(admin_b.clone(), id_b.clone()).await, b_before, "A's run left B's key, notifications and audit alone");

    // B's own admin runs it: now B's key is processed, and A's stays as A's run left it.
    let report = server.client.post_json("/api/jobs/run", Some(&admin_b), &json!({})).await;
    assert_eq!(
        (report.json["records_seen"].clone(), report.json["verified"].clone(), report.json["reminders_sent"].clone()),
        (json!(1), json!(1), json!(2)),
        "{}",
        report.text
    );
    let received = upstream.received_requests().await.unwrap();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].headers.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {key_b}"));
    let b_after = state(admin_b.clone(), id_b.clone()).await;
    assert_eq!(b_after.1.as_array().unwrap().len(), 2, "{:?}", b_after.1);
    assert!(b_after.0["last_verified_at"].is_string(), "{}", b_after.0);
    assert_eq!(state(admin_a, id_a).await, a_after, "B's run left A alone");
    server.stop().await;
}
