//! A revoked key's Secrets Manager secret is deleted (with its recovery window) by the revocation;
//! when Secrets Manager cannot be reached at that moment, the revocation still stands and the
//! scheduled job releases the secret on its next run — once, audited.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use stockpulse_shared::app::{App, Stores};
use stockpulse_shared::config::Config;
use stockpulse_shared::domain::access::{Caller, RequestMeta, Role};
use stockpulse_shared::domain::secret::{Credentials, KeyMaterial};
use stockpulse_shared::ports::{Binding, KeyVault, SealedMaterial, SystemClock, VaultError, VersionLabels};
use stockpulse_shared::services::keys::{CreateKey, RevokeKey};
use stockpulse_shared::services::scheduler::Scope;
use stockpulse_tests::{aws, canary, moto};

/// The Secrets Manager vault, except that `forget` fails while `down` is set.
struct FlakyForget {
    inner: Arc<dyn KeyVault>,
    down: AtomicBool,
}

#[async_trait]
impl KeyVault for FlakyForget {
    async fn seal(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        self.inner.seal(binding, credentials).await
    }
    async fn open(&self, binding: Binding<'_>, sealed: &SealedMaterial) -> Result<Credentials, VaultError> {
        self.inner.open(binding, sealed).await
    }
    fn fingerprint(&self, value: &KeyMaterial) -> String {
        self.inner.fingerprint(value)
    }
    async fn forget(&self, workspace: &str, key_id: &str) -> Result<(), VaultError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(VaultError::Unavailable("Secrets Manager could not be reached".into()));
        }
        self.inner.forget(workspace, key_id).await
    }
    async fn seal_pending(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        self.inner.seal_pending(binding, credentials).await
    }
    fn holds_outside_material(&self) -> bool {
        self.inner.holds_outside_material()
    }
    fn has_labels(&self) -> bool {
        self.inner.has_labels()
    }
    async fn label_versions(&self, workspace: &str, key_id: &str, labels: &VersionLabels<'_>) -> Result<(), VaultError> {
        self.inner.label_versions(workspace, key_id, labels).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_job_releases_a_secret_the_revocation_could_not() {
    let url = moto::shared_url();
    let table = format!("stockpulse-release-{}", uuid::Uuid::new_v4().simple());
    let store = Arc::new(aws::dynamo_store(&url, &table).await);
    let prefix = format!("stockpulse-release-{}/", uuid::Uuid::new_v4().simple());
    let secrets = aws_sdk_secretsmanager::Client::new(&moto::sdk_config(&url).await);
    let fingerprint_key =
        stockpulse_shared::adapters::aws::SecretsManagerVault::load_fingerprint_key(&secrets, &prefix, None).await.unwrap();
    let inner =
        Arc::new(stockpulse_shared::adapters::aws::SecretsManagerVault::new(secrets.clone(), prefix.clone(), None, 7, fingerprint_key));
    let vault = Arc::new(FlakyForget { inner, down: AtomicBool::new(false) });
    let config = Config::from_vars(&Default::default()).unwrap();
    let app = App::from_parts(&config, Stores::of(store), vault.clone(), Arc::new(SystemClock)).unwrap();

    let ws = format!("ws-release-{}", uuid::Uuid::new_v4().simple());
    let caller = Caller { sub: "admin-1".into(), email: "admin@release.example.com".into(), role: Role::Admin, workspace: ws.clone() };
    let meta = RequestMeta { source_ip: "127.0.0.1".into(), user_agent: "release-test".into(), request_id: "release".into() };
    let create: CreateKey =
        serde_json::from_value(serde_json::json!({"provider": "openai", "credentials": {"api_key": canary("sk-proj-")}})).unwrap();
    let saved = app.keys.create(&caller, &meta, create).await.unwrap();
    let id = saved.record.id.clone();
    let name = format!("{prefix}{ws}/{id}");

    vault.down.store(true, Ordering::SeqCst);
    let revoked = app.keys.revoke(&caller, &meta, &id, None, RevokeKey { reason: "leaked".into() }).await.unwrap();
    assert_eq!(revoked.revocation.as_ref().unwrap().material_released_at, None, "the revocation stands without the release");
    let described = secrets.describe_secret().secret_id(&name).send().await.unwrap();
    assert!(described.deleted_date().is_none(), "the secret could not be deleted yet");

    vault.down.store(false, Ordering::SeqCst);
    let run = app.scheduler().run(Scope::All).await.unwrap();
    assert_eq!((run.materials_released, run.errors.len()), (1, 0), "{run:#?}");
    let described = secrets.describe_secret().secret_id(&name).send().await.unwrap();
    assert!(described.deleted_date().is_some(), "the job scheduled the secret's deletion");
    let record = app.keys.get(&caller, &id).await.unwrap();
    assert!(record.revocation.unwrap().material_released_at.is_some());
    let again = app.scheduler().run(Scope::All).await.unwrap();
    assert_eq!(again.materials_released, 0, "released once");
    let report = app.check_consistency(&ws).await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
}
