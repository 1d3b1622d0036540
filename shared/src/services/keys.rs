//! Key management: create, read, list, edit, delete and test keys of the caller's workspace.
//!
//! Every mutation is checked against the catalog, sealed by the vault, and stored together with
//! its audit entry. Plaintext exists only inside `Credentials` values for the length of a call.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::domain::access::{Caller, RequestMeta, Role};
use crate::domain::audit::{AuditDraft, Outcome, action};
use crate::domain::catalog::{Catalog, Provider, TestOutcome};
use crate::domain::environment::Environment;
use crate::domain::keys::{Actor, IfMatch, KeyRecord, KeyStatus, Revocation, TestResult};
use crate::domain::masking::mask;
use crate::domain::notifications::NotificationKind;
use crate::domain::rotation::RotationPolicy;
use crate::domain::secret::{Credentials, KeyMaterial};
use crate::domain::validation::{FormatWarning, check_credentials, check_label};
use crate::ports::{AuditLog, Binding, Clock, KeyStore, KeyVault, MaterialChange, NotificationStore, Page, ResponseCache, UpstreamClient};

use super::connection_test::run_test;
use super::proxy::KeyCache;
use super::upstreams::Upstreams;
use super::{ServiceError, cursor};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Catalog id (`openai`, `alpaca`, ...).
    pub provider: String,
    #[serde(default = "default_environment")]
    pub environment: Environment,
    #[serde(default)]
    pub label: String,
    /// Field id → value, as the catalog lists the provider's fields.
    #[schema(value_type = BTreeMap<String, String>)]
    pub credentials: BTreeMap<String, KeyMaterial>,
    /// When to rotate and when the key expires at the provider (none by default).
    #[serde(default)]
    pub rotation_policy: Option<RotationPolicy>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default)]
    pub label: Option<String>,
    /// Moves the key to the other environment slot (409 if that slot is taken).
    #[serde(default)]
    pub environment: Option<Environment>,
    /// Fields to replace; `null` removes an optional field. Unnamed fields keep their value.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, Option<String>>>)]
    pub credentials: Option<BTreeMap<String, Option<KeyMaterial>>>,
    /// Replaces the rotation policy (send `{}` to clear it).
    #[serde(default)]
    pub rotation_policy: Option<RotationPolicy>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCandidate {
    pub provider: String,
    #[serde(default = "default_environment")]
    pub environment: Environment,
    #[schema(value_type = BTreeMap<String, String>)]
    pub credentials: BTreeMap<String, KeyMaterial>,
}

fn default_environment() -> Environment {
    Environment::Production
}

/// A saved key and the soft format warnings of its credentials.
pub struct Saved {
    pub record: KeyRecord,
    pub warnings: Vec<FormatWarning>,
}

pub struct KeyService {
    pub catalog: &'static Catalog,
    pub store: Arc<dyn KeyStore>,
    pub audit: Arc<dyn AuditLog>,
    pub vault: Arc<dyn KeyVault>,
    pub upstream: Arc<dyn UpstreamClient>,
    pub upstreams: Upstreams,
    /// The proxy's cached answers, purged when a key goes away or changes.
    pub cache: Arc<dyn ResponseCache>,
    /// The proxy's decrypted keys of this process, evicted on the same occasions.
    pub key_cache: Arc<KeyCache>,
    pub notifications: Arc<dyn NotificationStore>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKey {
    /// Why the key is revoked (shown in the key record and the audit trail).
    pub reason: String,
}

/// The longest revocation reason accepted.
pub const MAX_REASON_CHARS: usize = 500;

fn check_policy(policy: &RotationPolicy, now: chrono::DateTime<chrono::Utc>) -> Result<(), ServiceError> {
    policy.check(now).map_err(|(field, message)| ServiceError::Unprocessable {
        code: "invalid_rotation_policy",
        message,
        field: Some(field.into()),
    })
}

/// A store error of an edit as the caller sees it: a lost race is `412` when the caller named a
/// version with If-Match, else a `409 concurrent_update` (no precondition was asked for).
pub(super) fn edit_conflict(e: crate::ports::StoreError, if_match: Option<IfMatch>) -> ServiceError {
    match (e, if_match) {
        (crate::ports::StoreError::VersionMismatch, None) => ServiceError::Conflict {
            code: "concurrent_update",
            message: "the key was changed by someone else at the same time; reload it and try again".into(),
        },
        (e, _) => e.into(),
    }
}

/// The answer while a rotation is pending and the caller is not the one resuming it.
pub(super) fn rotation_in_progress(pending: &crate::domain::rotation::PendingRotation) -> ServiceError {
    ServiceError::Conflict {
        code: "rotation_in_progress",
        message: format!(
            "a rotation started by {} at {} is in progress; retry it with its Idempotency-Key, or wait: a rotation pending for {} minutes is rolled back",
            pending.started_by.email,
            pending.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            crate::domain::rotation::PENDING_LIMIT_MINUTES
        ),
    }
}

fn credentials_from(map: BTreeMap<String, KeyMaterial>) -> Credentials {
    map.into_iter().collect()
}

impl KeyService {
    pub(super) fn provider(&self, id: &str) -> Result<&'static Provider, ServiceError> {
        self.catalog.provider(id).ok_or_else(|| ServiceError::Unprocessable {
            code: "unknown_provider",
            message: format!("`{id}` is not a provider in the catalog; GET /api/providers lists them"),
            field: Some("provider".into()),
        })
    }

    /// Admin-only providers refuse everyone but admins; the refusal is audited.
    pub(super) async fn require_provider_access(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        provider: &Provider,
        environment: Environment,
        key_id: Option<&str>,
        action_name: &str,
    ) -> Result<(), ServiceError> {
        if !provider.admin_only || caller.role == Role::Admin {
            return Ok(());
        }
        let draft = AuditDraft::new(caller, meta, action_name, Outcome::Denied)
            .target(&provider.id, environment, key_id)
            .detail("admin-only provider");
        self.audit.append(draft).await?;
        Err(ServiceError::Forbidden {
            code: "admin_only_provider",
            message: format!("{} keys can only be managed by workspace admins", provider.name),
        })
    }

    pub(super) fn masks(&self, provider: &Provider, credentials: &Credentials) -> BTreeMap<String, String> {
        credentials
            .fields()
            .map(|(field, value)| {
                let prefixes = provider.field(field).map(|f| f.format.prefixes.as_slice()).unwrap_or(&[]);
                (field.to_owned(), mask(value.expose(), prefixes))
            })
            .collect()
    }

    pub(super) fn fingerprint(&self, provider: &Provider, credentials: &Credentials) -> String {
        credentials.get(&provider.primary_field().id).map(|v| self.vault.fingerprint(v)).unwrap_or_default()
    }

    pub async fn create(&self, caller: &Caller, meta: &RequestMeta, input: CreateKey) -> Result<Saved, ServiceError> {
        let provider = self.provider(&input.provider)?;
        self.require_provider_access(caller, meta, provider, input.environment, None, action::KEY_CREATE).await?;
        let label = check_label(&input.label)?;
        let credentials = credentials_from(input.credentials);
        let warnings = check_credentials(provider, &credentials)?;
        let now = self.clock.now();
        let policy = input.rotation_policy.unwrap_or_default();
        check_policy(&policy, now)?;
        if self.store.find_slot(&caller.workspace, &provider.id, input.environment).await?.is_some() {
            return Err(crate::ports::StoreError::SlotTaken.into());
        }
        let actor = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let record = KeyRecord {
            id: uuid::Uuid::now_v7().to_string(),
            workspace: caller.workspace.clone(),
            provider: provider.id.clone(),
            environment: input.environment,
            label: if label.is_empty() { format!("{} {}", provider.name, input.environment.as_str()) } else { label },
            masked: self.masks(provider, &credentials),
            fingerprint: self.fingerprint(provider, &credentials),
            status: KeyStatus::Active,
            key_version: 1,
            version: 1,
            warnings: warnings.clone(),
            created_by: actor.clone(),
            created_at: now,
            updated_by: actor,
            updated_at: now,
            last_used_at: None,
            last_verified_at: None,
            last_test: None,
            revocation: None,
            policy,
            pending: None,
            previous: None,
            last_rotation: None,
            rotated_at: None,
            highest_key_version: 1,
            rotation_due_at: None,
        };
        let binding = Binding { workspace: &record.workspace, key_id: &record.id, version: 1 };
        let sealed = self.vault.seal(binding, &credentials).await?;
        let draft = AuditDraft::new(caller, meta, action::KEY_CREATE, Outcome::Success)
            .target(&provider.id, record.environment, Some(&record.id))
            .fingerprint(&record.fingerprint)
            .detail(format!("fields: {}", record.masked.keys().cloned().collect::<Vec<_>>().join(",")));
        if let Err(e) = self.store.insert(&record, &sealed, draft).await {
            // The record was not stored: leave no secret behind in a vault that keeps its own.
            self.release(&record.workspace, &record.id).await;
            return Err(e.into());
        }
        tracing::info!(key_id = %record.id, provider = %provider.id, environment = record.environment.as_str(), workspace = %caller.workspace, "key created");
        Ok(Saved { record, warnings })
    }

    pub async fn get(&self, caller: &Caller, id: &str) -> Result<KeyRecord, ServiceError> {
        self.store.get(&caller.workspace, id).await?.ok_or_else(ServiceError::key_not_found)
    }

    pub async fn list(&self, caller: &Caller, cursor_value: Option<&str>, limit: Option<usize>) -> Result<Page<KeyRecord>, ServiceError> {
        let limit = cursor::limit(limit)?;
        let after = cursor_value.map(|c| cursor::decode("keys", c)).transpose()?;
        let page = self.store.list(&caller.workspace, after.as_deref(), limit).await?;
        Ok(Page { next: page.next.map(|p| cursor::encode("keys", &p)), items: page.items })
    }

    pub(super) fn check_if_match(record: &KeyRecord, if_match: Option<IfMatch>) -> Result<(), ServiceError> {
        match if_match {
            Some(IfMatch::Version(v)) if v != record.version => Err(ServiceError::PreconditionFailed {
                code: "version_mismatch",
                message: format!(
                    "If-Match names version {v} but the key is at version {}; reload it and apply your change again",
                    record.version
                ),
            }),
            _ => Ok(()),
        }
    }

    pub async fn update(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        id: &str,
        if_match: Option<IfMatch>,
        input: UpdateKey,
    ) -> Result<Saved, ServiceError> {
        let current = self.get(caller, id).await?;
        let provider = self.provider(&current.provider)?;
        self.require_provider_access(caller, meta, provider, current.environment, Some(id), action::KEY_UPDATE).await?;
        if input.label.is_none() && input.environment.is_none() && input.credentials.is_none() && input.rotation_policy.is_none() {
            return Err(ServiceError::BadRequest {
                code: "empty_update",
                message: "send at least one of label, environment, credentials or rotation_policy".into(),
                field: None,
            });
        }
        Self::check_if_match(&current, if_match)?;
        if current.status == KeyStatus::Revoked {
            return Err(ServiceError::Conflict { code: "key_revoked", message: "a revoked key cannot be edited; add a new key".into() });
        }
        let now = self.clock.now();
        let mut record = current.clone();
        let mut changed = Vec::new();
        if let Some(policy) = input.rotation_policy {
            check_policy(&policy, now)?;
            record.policy = policy;
            changed.push("rotation_policy");
        }
        if let Some(label) = &input.label {
            let label = check_label(label)?;
            if label.is_empty() {
                return Err(ServiceError::Unprocessable {
                    code: "empty_label",
                    message: "label cannot be empty".into(),
                    field: Some("label".into()),
                });
            }
            record.label = label;
            changed.push("label");
        }
        if let Some(environment) = input.environment.filter(|e| *e != current.environment) {
            if self.store.find_slot(&caller.workspace, &provider.id, environment).await?.is_some() {
                return Err(crate::ports::StoreError::SlotTaken.into());
            }
            record.environment = environment;
            changed.push("environment");
        }
        let mut warnings = record.warnings.clone();
        let mut sealed = None;
        if let Some(edits) = input.credentials {
            if let Some(pending) = &current.pending {
                return Err(rotation_in_progress(pending));
            }
            let binding = Binding { workspace: &current.workspace, key_id: &current.id, version: current.key_version };
            let material = self.store.material(&caller.workspace, id, current.key_version).await?.ok_or_else(|| {
                ServiceError::Internal { code: "key_material_missing", message: "the key's material is missing; save the key again".into() }
            })?;
            let mut credentials = self.vault.open(binding, &material).await?;
            for (field, value) in edits {
                match value {
                    Some(value) => credentials.insert(field, value),
                    None => credentials.remove(&field),
                }
            }
            warnings = check_credentials(provider, &credentials)?;
            record.key_version = current.next_key_version();
            record.highest_key_version = record.key_version;
            record.rotated_at = Some(now);
            // New credentials replace every stored version: nothing is left to roll back to.
            record.previous = None;
            record.masked = self.masks(provider, &credentials);
            record.fingerprint = self.fingerprint(provider, &credentials);
            record.warnings = warnings.clone();
            // New material has not been verified yet.
            record.last_test = None;
            record.last_verified_at = None;
            if record.status == KeyStatus::Invalid {
                record.status = KeyStatus::Active;
            }
            let binding = Binding { workspace: &record.workspace, key_id: &record.id, version: record.key_version };
            sealed = Some(self.vault.seal(binding, &credentials).await?);
            changed.push("credentials");
        }
        record.version = current.version + 1;
        record.updated_at = now;
        record.updated_by = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let draft = AuditDraft::new(caller, meta, action::KEY_UPDATE, Outcome::Success)
            .target(&provider.id, record.environment, Some(id))
            .fingerprint(&record.fingerprint)
            .detail(format!("changed: {}", changed.join(",")));
        let material = sealed.as_ref().map_or(MaterialChange::Keep, MaterialChange::Replace);
        self.store.update(&record, current.version, material, draft).await.map_err(|e| edit_conflict(e, if_match))?;
        if sealed.is_some() || record.environment != current.environment {
            self.forget_in_proxy(&current.workspace, id, &provider.id).await;
        }
        if sealed.is_some() {
            // New credentials replaced every version: the vault's labels follow.
            self.sync_labels(&record).await;
        }
        Ok(Saved { record, warnings })
    }

    pub async fn delete(&self, caller: &Caller, meta: &RequestMeta, id: &str, if_match: Option<IfMatch>) -> Result<(), ServiceError> {
        let current = self.get(caller, id).await?;
        let provider = self.provider(&current.provider)?;
        self.require_provider_access(caller, meta, provider, current.environment, Some(id), action::KEY_DELETE).await?;
        Self::check_if_match(&current, if_match)?;
        let draft = AuditDraft::new(caller, meta, action::KEY_DELETE, Outcome::Success)
            .target(&provider.id, current.environment, Some(id))
            .fingerprint(&current.fingerprint);
        // Material the vault keeps outside the store (Secrets Manager) is released first: released
        // after the record is gone, a failed release would leave the secret behind with nothing
        // pointing at it, for ever. If it cannot be released, nothing changed; if the store then
        // does not delete the record, the material is put back (unless another call deleted it).
        let outside = self.vault.holds_outside_material();
        if outside {
            self.vault.forget(&current.workspace, id).await?;
        }
        if let Err(e) = self.store.delete(&caller.workspace, id, current.version, draft).await {
            if outside
                && !matches!(self.store.get(&caller.workspace, id).await, Ok(None))
                && let Err(restore) = self.vault.restore(&current.workspace, id).await
            {
                tracing::error!(key_id = %id, workspace = %caller.workspace, error = %restore, "the key was not deleted, and its released material could not be restored");
            }
            return Err(e.into());
        }
        self.forget_in_proxy(&current.workspace, id, &provider.id).await;
        tracing::info!(key_id = %id, provider = %provider.id, workspace = %caller.workspace, "key deleted");
        Ok(())
    }

    /// Revokes a key at once: the record stays (status `revoked`, with who, when and why), the
    /// material of every version is destroyed and the slot freed in one transaction with the audit
    /// entry; the proxy refuses the key from the very next request (its per-request write checks
    /// the status), the provider's cached answers are purged, outside material (Secrets Manager)
    /// is deleted with its recovery window, and the workspace is notified.
    pub async fn revoke(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        id: &str,
        if_match: Option<IfMatch>,
        input: RevokeKey,
    ) -> Result<KeyRecord, ServiceError> {
        let current = self.get(caller, id).await?;
        let provider = self.provider(&current.provider)?;
        self.require_provider_access(caller, meta, provider, current.environment, Some(id), action::KEY_REVOKE).await?;
        let reason = input.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(ServiceError::Unprocessable {
                code: "invalid_reason",
                message: format!("give a reason of 1 to {MAX_REASON_CHARS} characters, on one line"),
                field: Some("reason".into()),
            });
        }
        Self::check_if_match(&current, if_match)?;
        if current.status == KeyStatus::Revoked {
            return Err(ServiceError::Conflict { code: "key_revoked", message: "the key is already revoked".into() });
        }
        let now = self.clock.now();
        let actor = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let mut record = current.clone();
        record.status = KeyStatus::Revoked;
        // Vaults that keep nothing outside the store have nothing left to release.
        let released = (!self.vault.holds_outside_material()).then_some(now);
        record.revocation = Some(Revocation { by: actor.clone(), at: now, reason: reason.to_owned(), material_released_at: released });
        // Every version's material goes: a rotation in progress and a previous version with it.
        record.pending = None;
        record.previous = None;
        record.version = current.version + 1;
        record.updated_at = now;
        record.updated_by = actor;
        let draft = AuditDraft::new(caller, meta, action::KEY_REVOKE, Outcome::Success)
            .target(&provider.id, record.environment, Some(id))
            .fingerprint(&record.fingerprint)
            .detail(format!("reason: {}", reason.chars().take(200).collect::<String>()));
        self.store.revoke(&record, current.version, draft).await.map_err(|e| edit_conflict(e, if_match))?;
        self.forget_in_proxy(&current.workspace, id, &provider.id).await;
        let record = if released.is_none() {
            match self.release_revoked(caller, meta, &record).await {
                Ok(released) => released,
                Err(e) => {
                    // The revocation stands; the scheduled job retries the release.
                    tracing::warn!(key_id = %id, error = %e, "could not release the revoked key's material yet");
                    record
                }
            }
        } else {
            record
        };
        let message =
            format!("{} revoked the {} {} key \"{}\": {reason}", caller.email, provider.name, record.environment.as_str(), record.label);
        // The revocation has committed and is audited; a lost notification is logged, not fatal.
        self.tell(&record, NotificationKind::KeyRevoked, message, format!("key_revoked:{id}")).await;
        tracing::info!(key_id = %id, provider = %provider.id, workspace = %caller.workspace, "key revoked");
        Ok(record)
    }

    /// Releases what the vault keeps outside the store for a revoked key (Secrets Manager: the
    /// secret's deletion, with its recovery window) and records that it did, with its audit entry.
    /// Called by the revocation, and by the scheduled job until it succeeds.
    pub(super) async fn release_revoked(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        current: &KeyRecord,
    ) -> Result<KeyRecord, ServiceError> {
        self.vault.forget(&current.workspace, &current.id).await?;
        let mut record = current.clone();
        if let Some(revocation) = record.revocation.as_mut() {
            revocation.material_released_at = Some(self.clock.now());
        }
        record.version = current.version + 1;
        let draft = AuditDraft::new(caller, meta, action::KEY_RELEASE, Outcome::Success)
            .target(&record.provider, record.environment, Some(&record.id))
            .fingerprint(&record.fingerprint)
            .detail("outside material released");
        self.store.update(&record, current.version, MaterialChange::Keep, draft).await?;
        Ok(record)
    }

    /// After a key is deleted or given new material: this process forgets its decrypted copy at
    /// once (other processes find out on their next admission write), and the provider's cached
    /// answers of the workspace are purged. The purge is best effort: the key change has committed.
    pub(super) async fn forget_in_proxy(&self, workspace: &str, key_id: &str, provider: &str) {
        self.key_cache.evict_key(workspace, key_id);
        if let Err(e) = self.cache.purge(workspace, provider).await {
            tracing::warn!(key_id, workspace, provider, error = %e, "could not purge the provider's cached answers");
        }
    }

    /// Asks the vault to destroy material it keeps outside the store (Secrets Manager secrets).
    /// Best effort, for material sealed for a record that was never stored; a failure is logged
    /// for an operator, and the consistency of the store does not depend on it.
    pub(super) async fn release(&self, workspace: &str, key_id: &str) {
        if let Err(e) = self.vault.forget(workspace, key_id).await {
            tracing::warn!(key_id, workspace, error = %e, "could not release key material in the vault");
        }
    }

    /// Tests a stored key and records the result on it.
    pub async fn test_stored(&self, caller: &Caller, meta: &RequestMeta, id: &str) -> Result<TestResult, ServiceError> {
        let current = self.get(caller, id).await?;
        let provider = self.provider(&current.provider)?;
        self.require_provider_access(caller, meta, provider, current.environment, Some(id), action::KEY_TEST).await?;
        if current.status == KeyStatus::Revoked {
            return Err(ServiceError::Conflict { code: "key_revoked", message: "a revoked key has no material to test".into() });
        }
        let (result, _) = self.verify(caller, meta, &current, provider, "test").await?;
        Ok(result)
    }

    /// Tests a stored key's current version with the provider's test request and records the
    /// result with its audit entry (`<label>: <outcome>`); a refused key becomes `invalid`. Returns
    /// the result and the status recorded.
    pub(super) async fn verify(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        record: &KeyRecord,
        provider: &Provider,
        label: &str,
    ) -> Result<(TestResult, KeyStatus), ServiceError> {
        let credentials = self.open_version(record, record.key_version).await?;
        let mut result = run_test(self.upstream.as_ref(), &self.upstreams, provider, record.environment, &credentials).await;
        drop(credentials);
        result.tested_at = self.clock.now();
        let status = match result.status {
            TestOutcome::Valid => KeyStatus::Active,
            TestOutcome::Invalid => KeyStatus::Invalid,
            _ => record.status,
        };
        let draft = AuditDraft::new(caller, meta, action::KEY_TEST, if result.ok { Outcome::Success } else { Outcome::Failure })
            .target(&provider.id, record.environment, Some(&record.id))
            .fingerprint(&record.fingerprint)
            .detail(format!("{label}: {}", result.status.as_str()));
        self.store.record_test(&record.workspace, &record.id, &result, status, draft).await?;
        Ok((result, status))
    }

    /// Tests credentials before they are saved; nothing is stored but the audit entry.
    pub async fn test_candidate(&self, caller: &Caller, meta: &RequestMeta, input: TestCandidate) -> Result<TestResult, ServiceError> {
        let provider = self.provider(&input.provider)?;
        self.require_provider_access(caller, meta, provider, input.environment, None, action::KEY_TEST_CANDIDATE).await?;
        let credentials = credentials_from(input.credentials);
        check_credentials(provider, &credentials)?;
        let result = run_test(self.upstream.as_ref(), &self.upstreams, provider, input.environment, &credentials).await;
        let draft = AuditDraft::new(caller, meta, action::KEY_TEST_CANDIDATE, if result.ok { Outcome::Success } else { Outcome::Failure })
            .target(&provider.id, input.environment, None)
            .fingerprint(&self.fingerprint(provider, &credentials))
            .detail(format!("test: {}", result.status.as_str()));
        self.audit.append(draft).await?;
        Ok(result)
    }
}
