//! A rotation interrupted after each of its steps — the process dies right before its next write
//! commits — is resumed by a retry with the same `Idempotency-Key` (it finishes) or, when nobody
//! retries, by the scheduled job (it rolls back). Either way the key ends fully rotated or fully
//! as before, the stored state is consistent, the audit chain verifies, and the proxy of a
//! healthy process keeps working throughout.
//!
//! The crashing process is a second app on the same SQLite file and master key whose key store
//! fails its Nth `update`: writes 1, 2 and 3 of a rotation are stage, test and promote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use serde_json::json;
use stockpulse_shared::adapters::embedded::{LocalVault, SqliteStore};
use stockpulse_shared::app::{App, Stores};
use stockpulse_shared::config::Config;
use stockpulse_shared::domain::access::{Caller, RequestMeta, Role};
use stockpulse_shared::domain::audit::{AuditDraft, AuditEntry};
use stockpulse_shared::domain::consistency::WorkspaceSnapshot;
use stockpulse_shared::domain::environment::Environment;
use stockpulse_shared::domain::keys::{KeyRecord, KeyStatus, TestResult};
use stockpulse_shared::domain::secret::KeyMaterial;
use stockpulse_shared::ports::{KeyStore, ManualClock, MaterialChange, Page, SealedMaterial, StoreError};
use stockpulse_shared::services::rotation::RotateKey;
use stockpulse_tests::{ServerOptions, TestServer, canary, fresh_data_dir};

use super::rotation::{provider_knowing, proxied_marker, rotate};

/// A key store whose `crash_at`-th update fails as if the process had died before it committed.
struct CrashingStore {
    inner: Arc<dyn KeyStore>,
    updates: AtomicUsize,
    crash_at: usize,
}

#[async_trait]
impl KeyStore for CrashingStore {
    async fn insert(&self, record: &KeyRecord, sealed: &SealedMaterial, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        self.inner.insert(record, sealed, audit).await
    }
    async fn get(&self, workspace: &str, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(workspace, id).await
    }
    async fn list(&self, workspace: &str, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        self.inner.list(workspace, after, limit).await
    }
    async fn find_slot(&self, workspace: &str, provider: &str, environment: Environment) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find_slot(workspace, provider, environment).await
    }
    async fn update(
        &self,
        record: &KeyRecord,
        expected_version: u64,
        material: MaterialChange<'_>,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        if self.updates.fetch_add(1, Ordering::SeqCst) + 1 == self.crash_at {
            return Err(StoreError::Unavailable("injected crash".into()));
        }
        self.inner.update(record, expected_version, material, audit).await
    }
    async fn delete(&self, workspace: &str, id: &str, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        self.inner.delete(workspace, id, expected_version, audit).await
    }
    async fn revoke(&self, record: &KeyRecord, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        self.inner.revoke(record, expected_version, audit).await
    }
    async fn material(&self, workspace: &str, id: &str, key_version: u32) -> Result<Option<SealedMaterial>, StoreError> {
        self.inner.material(workspace, id, key_version).await
    }
    async fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn snapshot(&self, workspace: &str) -> Result<WorkspaceSnapshot, StoreError> {
        self.inner.snapshot(workspace).await
    }
    async fn record_test(
        &self,
        workspace: &str,
        id: &str,
        result: &TestResult,
        status: KeyStatus,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        self.inner.record_test(workspace, id, result, status, audit).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Resume {
    /// The client retries with the same Idempotency-Key: the rotation finishes.
    Retry,
    /// Nobody retries; the scheduled job finds the rotation pending too long and rolls it back.
    Scheduler,
}

async fn crash_then_resume(crash_at: usize, resume: Resume) {
    let (one, two) = (canary("sk-proj-"), canary("sk-proj-"));
    let upstream = provider_knowing(&[(&one, "one"), (&two, "two")]).await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let data_dir = fresh_data_dir();
    let options = ServerOptions { data_dir: Some(data_dir.clone()), clock: Some(clock.clone()), ..Default::default() }
        .upstream("openai", &upstream.uri());
    let server = TestServer::start_with(options.clone()).await;
    let ws = format!("ws-crash-{crash_at}-{}", uuid::Uuid::new_v4().simple());
    let member = server.token("member", &ws).await;
    let created = super::create(&server, &member, json!({"provider": "openai", "credentials": {"api_key": one}})).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert_eq!(proxied_marker(&server, &member).await, "one");

    // The process that crashes: same database file and master key, its store fails one write.
    let mut vars: BTreeMap<String, String> = options.vars.clone();
    vars.insert("STOCKPULSE_DATA_DIR".into(), data_dir.display().to_string());
    let config = Config::from_vars(&vars).unwrap();
    let store = Arc::new(SqliteStore::open(&data_dir.join("stockpulse.db")).unwrap());
    let mut stores = Stores::of(store.clone());
    stores.keys = Arc::new(CrashingStore { inner: store, updates: AtomicUsize::new(0), crash_at });
    let vault = Arc::new(LocalVault::load(None, &data_dir).unwrap());
    let crashing = App::from_parts(&config, stores, vault, clock.clone()).unwrap();
    let caller = Caller { sub: "crash-member".into(), email: "member@crash.example.com".into(), role: Role::Member, workspace: ws.clone() };
    let meta = RequestMeta { source_ip: "127.0.0.1".into(), user_agent: "crash-test".into(), request_id: "crash".into() };
    let idempotency = format!("rotation-crash-{crash_at}");
    let input = RotateKey { credentials: BTreeMap::from([("api_key".to_owned(), Some(KeyMaterial::new(two.clone())))]), grace_hours: None };
    let crashed = crashing.keys.rotate(&caller, &meta, &id, None, Some(idempotency.clone()), input).await;
    assert!(crashed.is_err(), "the injected crash stops the rotation at write {crash_at}");
    drop(crashing);

    // Between the crash and the resume the healthy process still serves with the current key.
    assert_eq!(proxied_marker(&server, &member).await, "one", "crash at write {crash_at}");
    let between = server.client.get(&format!("/api/keys/{id}"), Some(&member)).await;
    assert_eq!(between.json["key_version"], 1);
    assert_eq!(between.json["pending"].is_null(), crash_at == 1, "a pending rotation is persisted after the stage write: {}", between.text);
    let report = server.app_consistency(&ws).await;
    assert!(report.ok, "consistent between the steps (crash at write {crash_at}): {:?}", report.problems);

    let expected_marker = match resume {
        Resume::Retry => {
            let resumed = rotate(&server, &member, &id, Some(&idempotency), json!({"credentials": {"api_key": two}})).await;
            assert_eq!((resumed.status, resumed.json["key_version"].clone()), (200, json!(2)), "{}", resumed.text);
            assert_eq!(resumed.json["previous"]["key_version"], 1);
            "two"
        }
        Resume::Scheduler => {
            // Not yet: a rotation may be pending for a while.
            let admin = server.token("admin", &ws).await;
            let early = server.client.post_json("/api/jobs/run", Some(&admin), &json!({})).await;
            assert_eq!(early.json["rotations_rolled_back"], 0, "{}", early.text);
            clock.advance(chrono::Duration::minutes(16));
            let run = server.client.post_json("/api/jobs/run", Some(&admin), &json!({})).await;
            assert_eq!(run.json["rotations_rolled_back"], u64::from(crash_at > 1), "{}", run.text);
            let after = server.client.get(&format!("/api/keys/{id}"), Some(&member)).await;
            assert_eq!((after.json["key_version"].clone(), after.json["pending"].clone()), (json!(1), json!(null)), "{}", after.text);
            if crash_at > 1 {
                assert_eq!(after.json["last_rotation"]["outcome"], "abandoned");
                let retry = rotate(&server, &member, &id, Some(&idempotency), json!({"credentials": {"api_key": two}})).await;
                assert_eq!((retry.status, retry.code()), (409, "rotation_abandoned"), "{}", retry.text);
            }
            "one"
        }
    };
    assert_eq!(proxied_marker(&server, &member).await, expected_marker, "crash at write {crash_at}, {resume:?}");
    let report = server.app_consistency(&ws).await;
    assert!(report.ok, "crash at write {crash_at}, {resume:?}: {:?}", report.problems);
    let verify = server.client.get("/api/audit/verify", Some(&member)).await;
    assert_eq!(verify.json["ok"], true, "{}", verify.text);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_interrupted_after_any_step_is_finished_by_its_retry() {
    for crash_at in 1..=3 {
        crash_then_resume(crash_at, Resume::Retry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_interrupted_after_any_step_is_rolled_back_by_the_scheduled_job() {
    for crash_at in 1..=3 {
        crash_then_resume(crash_at, Resume::Scheduler).await;
    }
}
