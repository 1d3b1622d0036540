//! Fault injection at the ports: decorators for every port the flows use (key store, audit log,
//! meter store, response cache, notifications, job leases, vault, provider HTTP client), all
//! sharing one `FaultPlan` that numbers their calls in the order they are made. So "the Nth call
//! of any port" is well defined: a test runs a flow once with no fault to learn its calls, then
//! again with a fault at call 1, 2, ... n.
//!
//! A plan counts only while armed (`arm` .. `disarm`), so the checks a test makes around a flow
//! do not move the numbering. Pure methods that do no I/O (`KeyVault::fingerprint`,
//! `holds_outside_material`, `has_labels`) are passed through uncounted, and so are the calls of
//! `BACKGROUND`: no flow makes them, a timer does, at any moment (they would make the numbering
//! depend on timing).
//!
//! The faults:
//! - `Fail`: the port's "unavailable" error (`StoreError::Unavailable`, `VaultError::Unavailable`,
//!   `LeaseError::Store(Unavailable)`), for the provider client `UpstreamError::Connect`;
//! - `Delay(d)`: the call waits `d`, then goes through;
//! - `Throttle`: what the AWS adapters turn throttling into once the SDK's retries are spent. The
//!   store and vault error types do not tell throttling apart: it is `Unavailable` with the
//!   message the adapters write (`ThrottlingException`). For the provider client throttling is
//!   an answer, not an error: an HTTP 429 with `Retry-After: 1`, as providers send it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use stockpulse_shared::app::Stores;
use stockpulse_shared::domain::audit::{AuditDraft, AuditEntry};
use stockpulse_shared::domain::consistency::WorkspaceSnapshot;
use stockpulse_shared::domain::environment::Environment;
use stockpulse_shared::domain::keys::{KeyRecord, KeyStatus, TestResult};
use stockpulse_shared::domain::metering::{Counters, Limits, MeterKey, UsageDay, UsageRecord};
use stockpulse_shared::domain::notifications::Notification;
use stockpulse_shared::domain::response_cache::CachedAnswer;
use stockpulse_shared::domain::secret::{Credentials, KeyMaterial};
use stockpulse_shared::ports::{
    Admission, AuditFilter, AuditLog, Binding, ChunkSource, JobLeases, KeyStore, KeyVault, LeaseError, MaterialChange, MeterStore,
    NotificationStore, Page, ResponseCache, SealedMaterial, StoreError, UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse,
    UpstreamStream, VaultError, Verdict, VersionLabels,
};

/// Calls only background timers make, never a flow: passed through uncounted. The gateway's usage
/// flusher writes the outcomes the proxy learnt after its writes every 2 s (`flush_usage`).
pub const BACKGROUND: [(&str, &str); 1] = [("MeterStore", "record_usage")];

/// What happens to the call a plan aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The port's "unavailable" error.
    Fail,
    /// Waits, then goes through.
    Delay(Duration),
    /// The throttling error the adapters produce (see the module comment).
    Throttle,
}

/// One call of a port method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortCall {
    pub port: &'static str,
    pub method: &'static str,
}

impl std::fmt::Display for PortCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}", self.port, self.method)
    }
}

#[derive(Default)]
struct State {
    armed: bool,
    calls: Vec<PortCall>,
    fault: Option<(usize, Fault)>,
    injected: Option<(usize, PortCall, Fault)>,
}

/// The calls of every wrapped port of one app, numbered from 1 in the order they are made, and
/// the one call (if any) that gets a fault.
#[derive(Default)]
pub struct FaultPlan {
    state: Mutex<State>,
}

impl FaultPlan {
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }

    /// Starts counting from call 1, with `fault` = (N, what) at the Nth call, or no fault.
    pub fn arm(&self, fault: Option<(usize, Fault)>) {
        *self.lock() = State { armed: true, calls: Vec::new(), fault, injected: None };
    }

    /// Stops counting (calls go through untouched); returns the calls seen since `arm`.
    pub fn disarm(&self) -> Vec<PortCall> {
        let mut state = self.lock();
        state.armed = false;
        state.fault = None;
        state.calls.clone()
    }

    /// The call that got the fault since the last `arm`: (its number, which, what).
    pub fn injected(&self) -> Option<(usize, PortCall, Fault)> {
        self.lock().injected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call; waits if it is delayed; returns the fault to answer with, if any.
    async fn enter(&self, port: &'static str, method: &'static str) -> Option<Fault> {
        let fault = {
            let mut state = self.lock();
            if !state.armed || BACKGROUND.contains(&(port, method)) {
                return None;
            }
            let call = PortCall { port, method };
            state.calls.push(call);
            let n = state.calls.len();
            match state.fault {
                Some((at, fault)) if at == n => {
                    state.injected = Some((n, call, fault));
                    Some(fault)
                }
                _ => None,
            }
        };
        match fault {
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                None
            }
            other => other,
        }
    }
}

fn store_error(fault: Fault, call: &str) -> StoreError {
    match fault {
        Fault::Throttle => StoreError::Unavailable(format!(
            "DynamoDB: the service refused the request: ThrottlingException (Rate of requests exceeds the limit) [injected at {call}]"
        )),
        _ => StoreError::Unavailable(format!("the service could not be reached [injected at {call}]")),
    }
}

fn vault_error(fault: Fault, call: &str) -> VaultError {
    match fault {
        Fault::Throttle => {
            VaultError::Unavailable(format!("KMS refused the request: ThrottlingException: Rate exceeded [injected at {call}]"))
        }
        _ => VaultError::Unavailable(format!("KMS could not be reached [injected at {call}]")),
    }
}

fn lease_error(fault: Fault, call: &str) -> LeaseError {
    LeaseError::Store(store_error(fault, call))
}

/// A port with faults: `P` is the port's trait object (`Faulty<dyn KeyStore>`, ...).
pub struct Faulty<P: ?Sized> {
    inner: Arc<P>,
    plan: Arc<FaultPlan>,
}

impl<P: ?Sized> Faulty<P> {
    pub fn new(inner: Arc<P>, plan: Arc<FaultPlan>) -> Arc<Faulty<P>> {
        Arc::new(Faulty { inner, plan })
    }
}

/// Counts the call; returns the port's error from the enclosing method if it is the faulty one.
macro_rules! gate {
    ($self:ident, $port:literal, $method:literal, $error:path) => {
        if let Some(fault) = $self.plan.enter($port, $method).await {
            return Err($error(fault, concat!($port, "::", $method)));
        }
    };
}

/// Every storage port of `stores` and the vault, wrapped with `plan`.
pub fn wrap_stores(stores: Stores, plan: &Arc<FaultPlan>) -> Stores {
    Stores {
        keys: Faulty::new(stores.keys, plan.clone()),
        audit: Faulty::new(stores.audit, plan.clone()),
        meter: Faulty::new(stores.meter, plan.clone()),
        cache: Faulty::new(stores.cache, plan.clone()),
        notifications: Faulty::new(stores.notifications, plan.clone()),
        leases: Faulty::new(stores.leases, plan.clone()),
    }
}

pub fn wrap_vault(vault: Arc<dyn KeyVault>, plan: &Arc<FaultPlan>) -> Arc<dyn KeyVault> {
    Faulty::new(vault, plan.clone())
}

pub fn wrap_upstream(upstream: Arc<dyn UpstreamClient>, plan: &Arc<FaultPlan>) -> Arc<dyn UpstreamClient> {
    Faulty::new(upstream, plan.clone())
}

#[async_trait]
impl KeyStore for Faulty<dyn KeyStore> {
    async fn insert(&self, record: &KeyRecord, sealed: &SealedMaterial, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        gate!(self, "KeyStore", "insert", store_error);
        self.inner.insert(record, sealed, audit).await
    }
    async fn get(&self, workspace: &str, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        gate!(self, "KeyStore", "get", store_error);
        self.inner.get(workspace, id).await
    }
    async fn list(&self, workspace: &str, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        gate!(self, "KeyStore", "list", store_error);
        self.inner.list(workspace, after, limit).await
    }
    async fn find_slot(&self, workspace: &str, provider: &str, environment: Environment) -> Result<Option<KeyRecord>, StoreError> {
        gate!(self, "KeyStore", "find_slot", store_error);
        self.inner.find_slot(workspace, provider, environment).await
    }
    async fn update(
        &self,
        record: &KeyRecord,
        expected_version: u64,
        material: MaterialChange<'_>,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        gate!(self, "KeyStore", "update", store_error);
        self.inner.update(record, expected_version, material, audit).await
    }
    async fn delete(&self, workspace: &str, id: &str, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        gate!(self, "KeyStore", "delete", store_error);
        self.inner.delete(workspace, id, expected_version, audit).await
    }
    async fn revoke(&self, record: &KeyRecord, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        gate!(self, "KeyStore", "revoke", store_error);
        self.inner.revoke(record, expected_version, audit).await
    }
    async fn material(&self, workspace: &str, id: &str, key_version: u32) -> Result<Option<SealedMaterial>, StoreError> {
        gate!(self, "KeyStore", "material", store_error);
        self.inner.material(workspace, id, key_version).await
    }
    async fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        gate!(self, "KeyStore", "scan", store_error);
        self.inner.scan(after, limit).await
    }
    async fn snapshot(&self, workspace: &str) -> Result<WorkspaceSnapshot, StoreError> {
        gate!(self, "KeyStore", "snapshot", store_error);
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
        gate!(self, "KeyStore", "record_test", store_error);
        self.inner.record_test(workspace, id, result, status, audit).await
    }
}

#[async_trait]
impl AuditLog for Faulty<dyn AuditLog> {
    async fn append(&self, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        gate!(self, "AuditLog", "append", store_error);
        self.inner.append(audit).await
    }
    async fn list(
        &self,
        workspace: &str,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, StoreError> {
        gate!(self, "AuditLog", "list", store_error);
        self.inner.list(workspace, filter, before, limit).await
    }
    async fn chain_slice(&self, workspace: &str, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        gate!(self, "AuditLog", "chain_slice", store_error);
        self.inner.chain_slice(workspace, after_seq, limit).await
    }
    async fn chain_head(&self, workspace: &str) -> Result<Option<(u64, String)>, StoreError> {
        gate!(self, "AuditLog", "chain_head", store_error);
        self.inner.chain_head(workspace).await
    }
}

#[async_trait]
impl MeterStore for Faulty<dyn MeterStore> {
    async fn admit(&self, admission: &Admission) -> Result<Verdict, StoreError> {
        gate!(self, "MeterStore", "admit", store_error);
        self.inner.admit(admission).await
    }
    async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError> {
        gate!(self, "MeterStore", "record_usage", store_error);
        self.inner.record_usage(usage).await
    }
    async fn usage(&self, workspace: &str, provider: Option<&str>, from: NaiveDate, to: NaiveDate) -> Result<Vec<UsageDay>, StoreError> {
        gate!(self, "MeterStore", "usage", store_error);
        self.inner.usage(workspace, provider, from, to).await
    }
    async fn counters(&self, meter: &MeterKey, now: DateTime<Utc>) -> Result<Counters, StoreError> {
        gate!(self, "MeterStore", "counters", store_error);
        self.inner.counters(meter, now).await
    }
    async fn policy(&self, meter: &MeterKey) -> Result<Option<Limits>, StoreError> {
        gate!(self, "MeterStore", "policy", store_error);
        self.inner.policy(meter).await
    }
    async fn put_policy(&self, meter: &MeterKey, limits: &Limits, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        gate!(self, "MeterStore", "put_policy", store_error);
        self.inner.put_policy(meter, limits, audit).await
    }
}

#[async_trait]
impl ResponseCache for Faulty<dyn ResponseCache> {
    async fn get(&self, workspace: &str, provider: &str, key: &str, now: DateTime<Utc>) -> Result<Option<CachedAnswer>, StoreError> {
        gate!(self, "ResponseCache", "get", store_error);
        self.inner.get(workspace, provider, key, now).await
    }
    async fn put(&self, workspace: &str, provider: &str, key: &str, answer: &CachedAnswer) -> Result<(), StoreError> {
        gate!(self, "ResponseCache", "put", store_error);
        self.inner.put(workspace, provider, key, answer).await
    }
    async fn purge(&self, workspace: &str, provider: &str) -> Result<u64, StoreError> {
        gate!(self, "ResponseCache", "purge", store_error);
        self.inner.purge(workspace, provider).await
    }
}

#[async_trait]
impl NotificationStore for Faulty<dyn NotificationStore> {
    async fn notify(&self, notification: &Notification, audit: Option<AuditDraft>) -> Result<Option<Notification>, StoreError> {
        gate!(self, "NotificationStore", "notify", store_error);
        self.inner.notify(notification, audit).await
    }
    async fn notifications(
        &self,
        workspace: &str,
        unread_only: bool,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Notification>, StoreError> {
        gate!(self, "NotificationStore", "notifications", store_error);
        self.inner.notifications(workspace, unread_only, before, limit).await
    }
    async fn mark_read(&self, workspace: &str, id: &str, at: DateTime<Utc>) -> Result<Notification, StoreError> {
        gate!(self, "NotificationStore", "mark_read", store_error);
        self.inner.mark_read(workspace, id, at).await
    }
}

#[async_trait]
impl JobLeases for Faulty<dyn JobLeases> {
    async fn acquire(&self, job: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<Option<String>, LeaseError> {
        gate!(self, "JobLeases", "acquire", lease_error);
        self.inner.acquire(job, holder, now, until).await
    }
    async fn release(&self, job: &str, holder: &str, position: Option<&str>) -> Result<bool, StoreError> {
        gate!(self, "JobLeases", "release", store_error);
        self.inner.release(job, holder, position).await
    }
}

/// Every method is delegated, the provided ones too: a default here would silently replace the
/// real vault's behaviour (Secrets Manager staging, `forget`).
#[async_trait]
impl KeyVault for Faulty<dyn KeyVault> {
    async fn seal(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        gate!(self, "KeyVault", "seal", vault_error);
        self.inner.seal(binding, credentials).await
    }
    async fn open(&self, binding: Binding<'_>, sealed: &SealedMaterial) -> Result<Credentials, VaultError> {
        gate!(self, "KeyVault", "open", vault_error);
        self.inner.open(binding, sealed).await
    }
    fn fingerprint(&self, value: &KeyMaterial) -> String {
        self.inner.fingerprint(value)
    }
    async fn forget(&self, workspace: &str, key_id: &str) -> Result<(), VaultError> {
        gate!(self, "KeyVault", "forget", vault_error);
        self.inner.forget(workspace, key_id).await
    }
    async fn restore(&self, workspace: &str, key_id: &str) -> Result<(), VaultError> {
        gate!(self, "KeyVault", "restore", vault_error);
        self.inner.restore(workspace, key_id).await
    }
    async fn seal_pending(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        gate!(self, "KeyVault", "seal_pending", vault_error);
        self.inner.seal_pending(binding, credentials).await
    }
    fn holds_outside_material(&self) -> bool {
        self.inner.holds_outside_material()
    }
    fn has_labels(&self) -> bool {
        self.inner.has_labels()
    }
    async fn label_versions(&self, workspace: &str, key_id: &str, labels: &VersionLabels<'_>) -> Result<(), VaultError> {
        gate!(self, "KeyVault", "label_versions", vault_error);
        self.inner.label_versions(workspace, key_id, labels).await
    }
}

const THROTTLED_BODY: &[u8] = br#"{"error":{"message":"Rate limit reached for requests","type":"requests","code":"rate_limit_exceeded"}}"#;

fn throttled_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    headers
}

/// The body of an injected 429, in one chunk.
struct OneChunk(Option<Vec<u8>>);

#[async_trait]
impl ChunkSource for OneChunk {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, UpstreamError> {
        Ok(self.0.take())
    }
}

/// The provider client: `Fail` is a refused connection, `Throttle` the provider's 429.
#[async_trait]
impl UpstreamClient for Faulty<dyn UpstreamClient> {
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        match self.plan.enter("UpstreamClient", "send").await {
            Some(Fault::Throttle) => Ok(UpstreamResponse { status: 429, headers: throttled_headers(), body: THROTTLED_BODY.to_vec() }),
            Some(_) => Err(UpstreamError::Connect("connection refused [injected at UpstreamClient::send]".into())),
            None => self.inner.send(request).await,
        }
    }
    async fn open(&self, request: UpstreamRequest) -> Result<UpstreamStream, UpstreamError> {
        match self.plan.enter("UpstreamClient", "open").await {
            Some(Fault::Throttle) => {
                Ok(UpstreamStream { status: 429, headers: throttled_headers(), body: Box::new(OneChunk(Some(THROTTLED_BODY.to_vec()))) })
            }
            Some(_) => Err(UpstreamError::Connect("connection refused [injected at UpstreamClient::open]".into())),
            None => self.inner.open(request).await,
        }
    }
}
