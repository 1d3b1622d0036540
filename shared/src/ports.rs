//! Ports: the traits the services need from the outside world. Adapters implement them
//! (`adapters::embedded` locally, AWS adapters in production); one conformance suite runs against
//! every implementation.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::audit::{AuditDraft, AuditEntry};
use crate::domain::environment::Environment;
use crate::domain::keys::{KeyRecord, KeyStatus, TestResult};
use crate::domain::metering::{Counters, LimitKind, Limits, MeterKey, UsageDay, UsageRecord};
use crate::domain::notifications::Notification;
use crate::domain::response_cache::CachedAnswer;
use crate::domain::secret::{Credentials, KeyMaterial};

/// What a ciphertext is bound to. Opening it under any other binding fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    pub workspace: &'a str,
    pub key_id: &'a str,
    pub version: u32,
}

impl Binding<'_> {
    /// Associated data for AEAD: unambiguous because each part is length-prefixed.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [self.workspace.as_bytes(), self.key_id.as_bytes(), &self.version.to_be_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// Encrypted key material as the vault produced it; opaque to everything but that vault.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedMaterial {
    /// Which vault scheme wrote it (`local-aes256gcm`, ...).
    pub scheme: String,
    pub blob: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error(
        "the key material was sealed with master key {sealed_with}, but this server's master key is {current}; start it with the master key the data was written with"
    )]
    WrongMasterKey { sealed_with: String, current: String },
    #[error("the key material does not belong to this record or was altered; it cannot be decrypted")]
    NotBound,
    #[error("the stored key material is not in a format this vault reads ({0})")]
    Corrupt(String),
    #[error("the key vault is unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait KeyVault: Send + Sync {
    async fn seal(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError>;
    async fn open(&self, binding: Binding<'_>, sealed: &SealedMaterial) -> Result<Credentials, VaultError>;
    /// Keyed fingerprint (HMAC-SHA-256, hex) of a credential value: identifies a key in records
    /// and audit entries without revealing it, and cannot be brute-forced without the server key.
    fn fingerprint(&self, value: &KeyMaterial) -> String;
    /// Destroys what the vault keeps outside the store for a key (Secrets Manager secrets), once
    /// its record is gone. Vaults whose material lives in the store keep nothing: no-op.
    async fn forget(&self, _workspace: &str, _key_id: &str) -> Result<(), VaultError> {
        Ok(())
    }
    /// Undoes `forget` while the vault still can (Secrets Manager: a secret scheduled for deletion
    /// is restored): a delete that released the material and then could not remove the record puts
    /// it back. Vaults that keep nothing outside the store: no-op.
    async fn restore(&self, _workspace: &str, _key_id: &str) -> Result<(), VaultError> {
        Ok(())
    }
    /// Seals a rotation's pending version. Vaults with staging labels (Secrets Manager) stage it
    /// as pending; the others seal it like any version.
    async fn seal_pending(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        self.seal(binding, credentials).await
    }
    /// Whether the vault keeps material outside the store (`forget` does something).
    fn holds_outside_material(&self) -> bool {
        false
    }
    /// Whether the vault keeps labels of its own (`label_versions` does something).
    fn has_labels(&self) -> bool {
        false
    }
    /// Makes the vault's own labels match the record (Secrets Manager `AWSCURRENT`, `AWSPENDING`,
    /// `AWSPREVIOUS`); versions not named lose their labels. Idempotent, so a rotation step
    /// interrupted before it can be run again. Vaults without labels: no-op.
    async fn label_versions(&self, _workspace: &str, _key_id: &str, _labels: &VersionLabels<'_>) -> Result<(), VaultError> {
        Ok(())
    }
}

/// The material each role points at, for `KeyVault::label_versions`.
#[derive(Clone, Copy)]
pub struct VersionLabels<'a> {
    pub current: &'a SealedMaterial,
    pub pending: Option<&'a SealedMaterial>,
    pub previous: Option<&'a SealedMaterial>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The workspace already has a key for this provider and environment.
    #[error("a key for this provider and environment already exists")]
    SlotTaken,
    /// The record changed since the caller read it (optimistic lock).
    #[error("the record was changed by someone else")]
    VersionMismatch,
    #[error("not found")]
    NotFound,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
}

impl From<StoreError> for VaultError {
    /// A vault that keeps something in the store (the AWS fingerprint key) sees store outages.
    fn from(e: StoreError) -> Self {
        VaultError::Unavailable(e.to_string())
    }
}

/// A page of results and the opaque position after its last item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Key records and their sealed material. Every mutation commits together with its audit entry
/// (and the audit chain head), or not at all.
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn insert(&self, record: &KeyRecord, sealed: &SealedMaterial, audit: AuditDraft) -> Result<AuditEntry, StoreError>;
    async fn get(&self, workspace: &str, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Records in id order (ids are time-ordered), after the position `after` if given.
    async fn list(&self, workspace: &str, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError>;
    async fn find_slot(&self, workspace: &str, provider: &str, environment: Environment) -> Result<Option<KeyRecord>, StoreError>;
    /// Replaces the record if its stored `version` is still `expected_version`, and changes the
    /// stored material versions as `material` says, in the same transaction.
    async fn update(
        &self,
        record: &KeyRecord,
        expected_version: u64,
        material: MaterialChange<'_>,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError>;
    async fn delete(&self, workspace: &str, id: &str, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError>;
    /// Replaces the record (now `revoked`) if its stored `version` is still `expected_version`,
    /// removes the material of every version and frees its provider + environment slot, in one
    /// transaction with the audit entry. The record stays for the audit trail.
    async fn revoke(&self, record: &KeyRecord, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError>;
    async fn material(&self, workspace: &str, id: &str, key_version: u32) -> Result<Option<SealedMaterial>, StoreError>;
    /// Records of every workspace, in (workspace, id) order, after the position `after` if given:
    /// the scheduled job's walk. Reads key records only (an index of them on DynamoDB).
    async fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError>;
    /// Everything the store holds for a workspace (records, slots, materials), for the
    /// consistency check. Reads the whole workspace: an operator's and a test's tool.
    async fn snapshot(&self, workspace: &str) -> Result<crate::domain::consistency::WorkspaceSnapshot, StoreError>;
    /// Stores a test result (does not change `version`: observations never conflict with edits).
    async fn record_test(
        &self,
        workspace: &str,
        id: &str,
        result: &TestResult,
        status: KeyStatus,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError>;
}

/// The opaque position of `KeyStore::scan` after a record.
pub fn scan_position(workspace: &str, id: &str) -> String {
    serde_json::json!([workspace, id]).to_string()
}

/// The (workspace, id) a `scan_position` names.
pub fn parse_scan_position(position: &str) -> Result<(String, String), StoreError> {
    serde_json::from_str(position).map_err(|_| StoreError::Corrupt(format!("`{position}` is not a scan position")))
}

/// How an update changes the stored material versions of a key.
#[derive(Clone, Copy)]
pub enum MaterialChange<'a> {
    /// The stored versions stay as they are.
    Keep,
    /// `sealed` is stored as the record's `key_version` and every other version is removed (an
    /// edit of the credentials).
    Replace(&'a SealedMaterial),
    /// `sealed` is stored as version `version` beside the others (a rotation's pending version).
    Stage { version: u32, sealed: &'a SealedMaterial },
    /// Only these versions are kept (a promoted rotation keeps current + previous; a discarded
    /// pending or an expired previous version is removed).
    Retain(&'a [u32]),
}

impl MaterialChange<'_> {
    /// The version to write, if any.
    pub fn written(&self, key_version: u32) -> Option<(u32, &SealedMaterial)> {
        match *self {
            MaterialChange::Replace(sealed) => Some((key_version, sealed)),
            MaterialChange::Stage { version, sealed } => Some((version, sealed)),
            MaterialChange::Keep | MaterialChange::Retain(_) => None,
        }
    }

    /// The versions that survive the change (`key_version` = the record's new one); `None` = all.
    pub fn retained(&self, key_version: u32) -> Option<Vec<u32>> {
        match self {
            MaterialChange::Keep | MaterialChange::Stage { .. } => None,
            MaterialChange::Replace(_) => Some(vec![key_version]),
            MaterialChange::Retain(versions) => Some(versions.to_vec()),
        }
    }
}

/// Where time comes from: the system clock in production, a movable one in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved (tests move it instead of sleeping).
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock(std::sync::Mutex::new(start))
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The exclusive right to run a job for a while: two runs of the scheduled job never work at
/// the same time, and a crashed run's lease simply expires.
#[async_trait]
pub trait JobLeases: Send + Sync {
    /// Takes the lease `job` for `holder` until `until` if it is free or expired at `now`;
    /// returns the position the last run saved, or `Err(LeaseHeld)` while another holder has it.
    async fn acquire(&self, job: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<Option<String>, LeaseError>;
    /// Saves the position to continue from next time and frees the lease, if `holder` still
    /// holds it (a run that outlived its lease saves nothing).
    async fn release(&self, job: &str, holder: &str, position: Option<&str>) -> Result<bool, StoreError>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("another run holds the lease until {until}")]
    Held { until: DateTime<Utc> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Filters of `GET /api/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub provider: Option<String>,
    /// Matches the actor's sub or email.
    pub actor: Option<String>,
    pub key_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends an entry that goes with no mutation (a candidate test, a denied attempt).
    async fn append(&self, audit: AuditDraft) -> Result<AuditEntry, StoreError>;
    /// Newest first, before the position `before` if given.
    async fn list(&self, workspace: &str, filter: &AuditFilter, before: Option<&str>, limit: usize)
    -> Result<Page<AuditEntry>, StoreError>;
    /// Entries in ascending `seq` starting after `after_seq`, for verification.
    async fn chain_slice(&self, workspace: &str, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// The (seq, hash) of the newest entry as recorded by the store.
    async fn chain_head(&self, workspace: &str) -> Result<Option<(u64, String)>, StoreError>;
}

/// One outgoing request to a provider. No `Debug`: its URL or headers carry key material.
pub struct UpstreamRequest {
    pub method: http::Method,
    pub url: url::Url,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// At most the client's body limit; longer answers are cut.
    pub body: Vec<u8>,
}

/// Why no answer came. Messages never contain the URL (it may carry a key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("could not connect to the provider: {0}")]
    Connect(String),
    #[error("the request to the provider failed: {0}")]
    Other(String),
}

/// The rest of an answer's body, chunk by chunk, as the provider sends it.
#[async_trait]
pub trait ChunkSource: Send {
    /// The next chunk; `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, UpstreamError>;
}

/// An answer whose status and headers have arrived and whose body is still coming.
pub struct UpstreamStream {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Box<dyn ChunkSource>,
}

#[async_trait]
pub trait UpstreamClient: Send + Sync {
    /// Sends the request and reads the whole answer (up to the client's body limit).
    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError>;
    /// Sends the request and returns as soon as the answer's head arrived (the proxy streams).
    async fn open(&self, request: UpstreamRequest) -> Result<UpstreamStream, UpstreamError>;
}

/// One proxied request's write: everything the proxy decides and records per request goes to
/// the store in this one conditional, all-or-nothing write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub meter: MeterKey,
    /// The key the request will use: the write fails with `Verdict::KeyChanged` unless this key
    /// still exists, is not revoked, and its material version is still `key_version`. It also
    /// sets the key's `last_used_at` to `now`.
    pub key_id: String,
    pub key_version: u32,
    pub now: DateTime<Utc>,
    pub limits: Limits,
    /// Counted against the request limits: the minute, day and month counters go up by one,
    /// each only while below its limit, and no counter moves if any is at its limit. Answers
    /// served from the cache are not counted (they cost the provider nothing).
    pub counted: bool,
    /// Usage added in the same write: this request's part, and the outcomes of earlier requests
    /// this process still holds (known only after their answers). Token counts also go to the
    /// month's token counter of their meter.
    pub usage: Vec<UsageRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written. The meter's counters after the write (tokens include those just added).
    Admitted(Counters),
    /// Nothing written: a limit is reached. The counters as they are.
    Limited { limit: LimitKind, counters: Counters },
    /// Nothing written: the key was deleted, revoked or given new material since it was read.
    KeyChanged,
}

/// Rate limits, quotas and usage: the proxy's per-request write and what analytics read.
#[async_trait]
pub trait MeterStore: Send + Sync {
    /// One atomic conditional write: no read decides, so concurrent requests cannot overshoot.
    async fn admit(&self, admission: &Admission) -> Result<Verdict, StoreError>;
    /// Adds usage outside a request (a process flushing the outcomes it holds before it stops).
    async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError>;
    /// Usage days of a workspace from `from` to `to` inclusive, optionally of one provider, in
    /// (provider, environment, day) order. Reads aggregates, never raw rows.
    async fn usage(&self, workspace: &str, provider: Option<&str>, from: NaiveDate, to: NaiveDate) -> Result<Vec<UsageDay>, StoreError>;
    /// The meter's counters in the windows of `now` (zero where nothing was counted).
    async fn counters(&self, meter: &MeterKey, now: DateTime<Utc>) -> Result<Counters, StoreError>;
    /// The workspace's own limits for a provider's environment; `None` = the catalog defaults.
    async fn policy(&self, meter: &MeterKey) -> Result<Option<Limits>, StoreError>;
    /// Replaces the limits, together with its audit entry.
    async fn put_policy(&self, meter: &MeterKey, limits: &Limits, audit: AuditDraft) -> Result<AuditEntry, StoreError>;
}

/// The proxy's response cache. Entries are found by the key `domain::response_cache::cache_key`
/// computes (which covers the workspace and the key version) and grouped by workspace + provider
/// for purges.
#[async_trait]
pub trait ResponseCache: Send + Sync {
    /// The entry, if stored and not expired at `now`.
    async fn get(&self, workspace: &str, provider: &str, key: &str, now: DateTime<Utc>) -> Result<Option<CachedAnswer>, StoreError>;
    async fn put(&self, workspace: &str, provider: &str, key: &str, answer: &CachedAnswer) -> Result<(), StoreError>;
    /// Removes every entry of the workspace's provider (all environments); returns how many.
    async fn purge(&self, workspace: &str, provider: &str) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Stores the notification with its audit entry (if given) in one transaction, unless the
    /// workspace already has one with the same `dedupe_key`: then nothing is written (`None`).
    async fn notify(&self, notification: &Notification, audit: Option<AuditDraft>) -> Result<Option<Notification>, StoreError>;
    /// Newest first, before the position `before` if given.
    async fn notifications(
        &self,
        workspace: &str,
        unread_only: bool,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Notification>, StoreError>;
    /// Sets `read_at` (kept if already set); `NotFound` for an id not in the workspace.
    async fn mark_read(&self, workspace: &str, id: &str, at: DateTime<Utc>) -> Result<Notification, StoreError>;
}
