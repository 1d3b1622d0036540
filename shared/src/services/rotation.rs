//! Rotation and rollback of stored keys: staged → tested → promoted (or discarded), each step a
//! conditional write with its audit entry, so that a crash between steps leaves a state the next
//! call (same `Idempotency-Key`) resumes, or the scheduled job rolls back. See `domain::rotation`.

use std::collections::BTreeMap;

use chrono::Duration;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::domain::access::{Caller, RequestMeta};
use crate::domain::audit::{AuditDraft, Outcome, action};
use crate::domain::catalog::Provider;
use crate::domain::keys::{Actor, IfMatch, KeyRecord, KeyStatus, TestResult};
use crate::domain::notifications::{Notification, NotificationKind};
use crate::domain::rotation::{
    DEFAULT_GRACE_HOURS, LastRotation, MAX_GRACE_HOURS, PendingRotation, PreviousVersion, RotationKind, RotationOutcome, RotationStep,
    check_idempotency_key,
};
use crate::domain::secret::{Credentials, KeyMaterial};
use crate::domain::validation::check_credentials;
use crate::ports::{Binding, MaterialChange, StoreError, VersionLabels};

use super::ServiceError;
use super::connection_test::run_test;
use super::keys::{KeyService, edit_conflict, rotation_in_progress};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The new values of the fields the provider issued anew; unnamed fields keep their value,
    /// `null` removes an optional field.
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub credentials: BTreeMap<String, Option<KeyMaterial>>,
    /// Hours the replaced version stays available for a rollback (0 to 720, default 24).
    #[serde(default)]
    pub grace_hours: Option<u32>,
}

/// The `Idempotency-Key` header, checked.
pub fn idempotency_key(value: Option<&str>) -> Result<Option<String>, ServiceError> {
    match value {
        None => Ok(None),
        Some(v) if check_idempotency_key(v) => Ok(Some(v.to_owned())),
        Some(_) => Err(ServiceError::BadRequest {
            code: "invalid_idempotency_key",
            message: "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
            field: Some("Idempotency-Key".into()),
        }),
    }
}

fn test_failed(test: Option<&TestResult>) -> ServiceError {
    let (outcome, message) = test.map_or(("unknown", "no test result was kept"), |t| (t.status.as_str(), t.message.as_str()));
    ServiceError::Unprocessable {
        code: "rotation_test_failed",
        message: format!("the new credentials failed the provider's test ({outcome}: {message}); the current key is unchanged"),
        field: Some("credentials".into()),
    }
}

/// Steps after the first: the caller's If-Match was checked when the rotation began, so a lost
/// race here is always a conflict.
fn lost_race(e: StoreError) -> ServiceError {
    edit_conflict(e, None)
}

impl KeyService {
    /// Rotates a key to new credentials: stores them as the pending version, tests them with the
    /// provider's test request, and promotes them only if the test passes. The replaced version
    /// stays as `previous` for `grace_hours`. A retry with the same `Idempotency-Key` resumes an
    /// interrupted rotation or answers what the finished one answered.
    pub async fn rotate(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        id: &str,
        if_match: Option<IfMatch>,
        idempotency: Option<String>,
        input: RotateKey,
    ) -> Result<KeyRecord, ServiceError> {
        let current = self.get(caller, id).await?;
        let provider = self.provider(&current.provider)?;
        self.require_provider_access(caller, meta, provider, current.environment, Some(id), action::KEY_ROTATE_STAGE).await?;
        if current.status == KeyStatus::Revoked {
            return Err(ServiceError::Conflict { code: "key_revoked", message: "a revoked key cannot be rotated; add a new key".into() });
        }
        if let Some(key) = idempotency.as_deref() {
            if let Some(last) =
                current.last_rotation.as_ref().filter(|l| l.kind == RotationKind::Rotate && l.idempotency_key.as_deref() == Some(key))
            {
                return self.replay(&current, last).await;
            }
            if current.pending.as_ref().is_some_and(|p| p.idempotency_key.as_deref() == Some(key)) {
                return self.continue_rotation(caller, meta, provider, current).await;
            }
        }
        if let Some(pending) = &current.pending {
            return Err(rotation_in_progress(pending));
        }
        Self::check_if_match(&current, if_match)?;
        let grace_hours = input.grace_hours.unwrap_or(DEFAULT_GRACE_HOURS);
        if grace_hours > MAX_GRACE_HOURS {
            return Err(ServiceError::Unprocessable {
                code: "invalid_grace",
                message: format!("grace_hours must be 0 to {MAX_GRACE_HOURS}"),
                field: Some("grace_hours".into()),
            });
        }
        if input.credentials.is_empty() {
            return Err(ServiceError::Unprocessable {
                code: "no_credentials",
                message: "send the new credentials: at least the field the provider issued anew".into(),
                field: Some("credentials".into()),
            });
        }
        let credentials = self.edited_credentials(&current, input.credentials).await?;
        let warnings = check_credentials(provider, &credentials)?;
        let fingerprint = self.fingerprint(provider, &credentials);
        let masked = self.masks(provider, &credentials);
        if fingerprint == current.fingerprint {
            return Err(ServiceError::Unprocessable {
                code: "same_credentials",
                message: "these are the credentials in use; rotate to the new key the provider issued".into(),
                field: Some("credentials".into()),
            });
        }
        let now = self.clock.now();
        let version = current.next_key_version();
        let binding = Binding { workspace: &current.workspace, key_id: &current.id, version };
        let sealed = self.vault.seal_pending(binding, &credentials).await?;
        drop(credentials);
        let actor = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let mut record = current.clone();
        let rotation_id = uuid::Uuid::now_v7().to_string();
        record.pending = Some(PendingRotation {
            id: rotation_id.clone(),
            step: RotationStep::Staged,
            key_version: version,
            masked,
            fingerprint,
            warnings,
            grace_hours,
            idempotency_key: idempotency,
            started_by: actor.clone(),
            started_at: now,
            test: None,
        });
        record.highest_key_version = version;
        record.version = current.version + 1;
        record.updated_at = now;
        record.updated_by = actor;
        let draft = AuditDraft::new(caller, meta, action::KEY_ROTATE_STAGE, Outcome::Success)
            .target(&provider.id, record.environment, Some(id))
            .fingerprint(&record.pending.as_ref().map(|p| p.fingerprint.clone()).unwrap_or_default())
            .detail(format!("rotation {rotation_id}: version {version} staged"));
        self.store.update(&record, current.version, MaterialChange::Stage { version, sealed: &sealed }, draft).await.map_err(lost_race)?;
        self.sync_labels(&record).await;
        self.continue_rotation(caller, meta, provider, record).await
    }

    /// The current credentials with the edits applied.
    async fn edited_credentials(
        &self,
        current: &KeyRecord,
        edits: BTreeMap<String, Option<KeyMaterial>>,
    ) -> Result<Credentials, ServiceError> {
        let mut credentials = self.open_version(current, current.key_version).await?;
        for (field, value) in edits {
            match value {
                Some(value) => credentials.insert(field, value),
                None => credentials.remove(&field),
            }
        }
        Ok(credentials)
    }

    pub(super) async fn open_version(&self, record: &KeyRecord, version: u32) -> Result<Credentials, ServiceError> {
        let material = self.store.material(&record.workspace, &record.id, version).await?.ok_or_else(|| ServiceError::Internal {
            code: "key_material_missing",
            message: format!("the material of version {version} is missing; save the key again"),
        })?;
        Ok(self.vault.open(Binding { workspace: &record.workspace, key_id: &record.id, version }, &material).await?)
    }

    /// Runs the steps after `staged`: test (unless passed already), then promote or discard.
    async fn continue_rotation(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        provider: &Provider,
        mut record: KeyRecord,
    ) -> Result<KeyRecord, ServiceError> {
        let Some(pending) = record.pending.clone() else { return Ok(record) };
        if pending.step == RotationStep::Staged {
            let credentials = self.open_version(&record, pending.key_version).await?;
            let mut test = run_test(self.upstream.as_ref(), &self.upstreams, provider, record.environment, &credentials).await;
            drop(credentials);
            test.tested_at = self.clock.now();
            if !test.ok {
                self.discard(caller, meta, provider, &record, RotationOutcome::TestFailed, Some(test.clone())).await?;
                return Err(test_failed(Some(&test)));
            }
            let expected = record.version;
            let now = self.clock.now();
            if let Some(p) = record.pending.as_mut() {
                p.step = RotationStep::Tested;
                p.test = Some(test.clone());
            }
            record.version += 1;
            record.updated_at = now;
            let draft = AuditDraft::new(caller, meta, action::KEY_ROTATE_TEST, Outcome::Success)
                .target(&provider.id, record.environment, Some(&record.id))
                .fingerprint(&pending.fingerprint)
                .detail(format!("rotation {}: test {}", pending.id, test.status.as_str()));
            self.store.update(&record, expected, MaterialChange::Keep, draft).await.map_err(lost_race)?;
        }
        self.promote(caller, meta, provider, record).await
    }

    async fn promote(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        provider: &Provider,
        current: KeyRecord,
    ) -> Result<KeyRecord, ServiceError> {
        let Some(pending) = current.pending.clone() else { return Ok(current) };
        let now = self.clock.now();
        let actor = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let mut record = current.clone();
        record.previous = Some(PreviousVersion {
            key_version: current.key_version,
            masked: current.masked.clone(),
            fingerprint: current.fingerprint.clone(),
            since: current.current_since(),
            replaced_at: now,
            grace_until: now + Duration::hours(i64::from(pending.grace_hours)),
        });
        record.key_version = pending.key_version;
        record.masked = pending.masked.clone();
        record.fingerprint = pending.fingerprint.clone();
        record.warnings = pending.warnings.clone();
        record.status = KeyStatus::Active;
        record.rotated_at = Some(now);
        record.last_verified_at = pending.test.as_ref().map(|t| t.tested_at);
        record.last_test = pending.test.clone();
        record.last_rotation = Some(LastRotation {
            id: pending.id.clone(),
            kind: RotationKind::Rotate,
            outcome: RotationOutcome::Promoted,
            test: pending.test.clone(),
            by: pending.started_by.clone(),
            at: now,
            idempotency_key: pending.idempotency_key.clone(),
        });
        record.pending = None;
        record.version = current.version + 1;
        record.updated_at = now;
        record.updated_by = actor;
        let draft = AuditDraft::new(caller, meta, action::KEY_ROTATE_PROMOTE, Outcome::Success)
            .target(&provider.id, record.environment, Some(&record.id))
            .fingerprint(&record.fingerprint)
            .detail(format!(
                "rotation {}: version {} current, version {} previous for {} h",
                pending.id, pending.key_version, current.key_version, pending.grace_hours
            ));
        let keep = [record.key_version, current.key_version];
        self.store.update(&record, current.version, MaterialChange::Retain(&keep), draft).await.map_err(lost_race)?;
        self.forget_in_proxy(&record.workspace, &record.id, &provider.id).await;
        self.sync_labels(&record).await;
        let message = format!(
            "{} rotated the {} {} key \"{}\"; the previous key stays available for a rollback for {} h",
            pending.started_by.email,
            provider.name,
            record.environment.as_str(),
            record.label,
            pending.grace_hours
        );
        self.tell(&record, NotificationKind::KeyRotated, message, format!("key_rotated:{}:{}", record.id, pending.id)).await;
        tracing::info!(key_id = %record.id, provider = %provider.id, rotation = %pending.id, "key rotated");
        Ok(record)
    }

    /// Removes the pending version and records how the rotation ended. Used when the test fails
    /// and by the scheduled job for rotations left pending too long.
    pub(super) async fn discard(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        provider: &Provider,
        current: &KeyRecord,
        outcome: RotationOutcome,
        test: Option<TestResult>,
    ) -> Result<KeyRecord, ServiceError> {
        let Some(pending) = current.pending.clone() else { return Ok(current.clone()) };
        let now = self.clock.now();
        let mut record = current.clone();
        record.pending = None;
        record.last_rotation = Some(LastRotation {
            id: pending.id.clone(),
            kind: RotationKind::Rotate,
            outcome,
            test: test.clone(),
            by: pending.started_by.clone(),
            at: now,
            idempotency_key: pending.idempotency_key.clone(),
        });
        record.version = current.version + 1;
        record.updated_at = now;
        record.updated_by = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let why = match outcome {
            RotationOutcome::TestFailed => format!("test {}", test.as_ref().map_or("failed", |t| t.status.as_str())),
            _ => format!("pending since {}", pending.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        };
        let draft = AuditDraft::new(caller, meta, action::KEY_ROTATE_DISCARD, Outcome::Success)
            .target(&provider.id, record.environment, Some(&record.id))
            .fingerprint(&pending.fingerprint)
            .detail(format!("rotation {}: version {} discarded ({why})", pending.id, pending.key_version));
        let keep = record.held_versions();
        self.store.update(&record, current.version, MaterialChange::Retain(&keep), draft).await.map_err(lost_race)?;
        self.sync_labels(&record).await;
        let message = match outcome {
            RotationOutcome::TestFailed => format!(
                "The new {} {} key for \"{}\" failed the provider's test ({}); the current key is unchanged",
                provider.name,
                record.environment.as_str(),
                record.label,
                test.as_ref().map_or("no result", |t| t.message.as_str())
            ),
            _ => format!(
                "A rotation of the {} {} key \"{}\" started by {} was left unfinished and was rolled back; the current key is unchanged",
                provider.name,
                record.environment.as_str(),
                record.label,
                pending.started_by.email
            ),
        };
        self.tell(&record, NotificationKind::RotationFailed, message, format!("rotation_failed:{}:{}", record.id, pending.id)).await;
        Ok(record)
    }

    /// Restores the previous version while its grace lasts; the version rolled back from is
    /// removed. A retry with the same `Idempotency-Key` answers the same.
    pub async fn rollback(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        id: &str,
        if_match: Option<IfMatch>,
        idempotency: Option<String>,
    ) -> Result<KeyRecord, ServiceError> {
        let current = self.get(caller, id).await?;
        let provider = self.provider(&current.provider)?;
        self.require_provider_access(caller, meta, provider, current.environment, Some(id), action::KEY_ROLLBACK).await?;
        if current.status == KeyStatus::Revoked {
            return Err(ServiceError::Conflict { code: "key_revoked", message: "a revoked key cannot be rolled back".into() });
        }
        if let Some(key) = idempotency.as_deref()
            && let Some(last) =
                current.last_rotation.as_ref().filter(|l| l.kind == RotationKind::Rollback && l.idempotency_key.as_deref() == Some(key))
        {
            return self.replay(&current, last).await;
        }
        if let Some(pending) = &current.pending {
            return Err(rotation_in_progress(pending));
        }
        Self::check_if_match(&current, if_match)?;
        let now = self.clock.now();
        let Some(previous) = current.previous.clone() else {
            return Err(ServiceError::Conflict {
                code: "no_previous_version",
                message: "there is no previous version to roll back to: none was kept, or its grace period has ended".into(),
            });
        };
        if previous.grace_until <= now {
            return Err(ServiceError::Conflict {
                code: "grace_expired",
                message: format!(
                    "the previous version's grace period ended at {}; rotate to a new key instead",
                    previous.grace_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            });
        }
        let actor = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let mut record = current.clone();
        record.key_version = previous.key_version;
        record.masked = previous.masked.clone();
        record.fingerprint = previous.fingerprint.clone();
        record.rotated_at = Some(previous.since);
        record.status = KeyStatus::Active;
        record.last_test = None;
        record.last_verified_at = None;
        record.previous = None;
        record.last_rotation = Some(LastRotation {
            id: uuid::Uuid::now_v7().to_string(),
            kind: RotationKind::Rollback,
            outcome: RotationOutcome::RolledBack,
            test: None,
            by: actor.clone(),
            at: now,
            idempotency_key: idempotency,
        });
        record.version = current.version + 1;
        record.updated_at = now;
        record.updated_by = actor;
        let draft = AuditDraft::new(caller, meta, action::KEY_ROLLBACK, Outcome::Success)
            .target(&provider.id, record.environment, Some(id))
            .fingerprint(&record.fingerprint)
            .detail(format!("version {} current again, version {} removed", previous.key_version, current.key_version));
        let keep = [previous.key_version];
        self.store.update(&record, current.version, MaterialChange::Retain(&keep), draft).await.map_err(|e| edit_conflict(e, if_match))?;
        self.forget_in_proxy(&record.workspace, id, &provider.id).await;
        self.sync_labels(&record).await;
        let message = format!(
            "{} rolled the {} {} key \"{}\" back to its previous version",
            caller.email,
            provider.name,
            record.environment.as_str(),
            record.label
        );
        let rollback_id = record.last_rotation.as_ref().map(|l| l.id.clone()).unwrap_or_default();
        self.tell(&record, NotificationKind::KeyRolledBack, message, format!("key_rolled_back:{id}:{rollback_id}")).await;
        Ok(record)
    }

    /// The scheduled job's step for a previous version whose grace has passed: removed from the
    /// store (and its vault labels), with its audit entry.
    pub(super) async fn destroy_previous(
        &self,
        caller: &Caller,
        meta: &RequestMeta,
        current: &KeyRecord,
    ) -> Result<KeyRecord, ServiceError> {
        let Some(previous) = current.previous.clone() else { return Ok(current.clone()) };
        let now = self.clock.now();
        let mut record = current.clone();
        record.previous = None;
        record.version = current.version + 1;
        record.updated_at = now;
        record.updated_by = Actor { sub: caller.sub.clone(), email: caller.email.clone() };
        let draft = AuditDraft::new(caller, meta, action::KEY_PREVIOUS_DESTROY, Outcome::Success)
            .target(&record.provider, record.environment, Some(&record.id))
            .fingerprint(&previous.fingerprint)
            .detail(format!("version {} removed; its grace ended", previous.key_version));
        let keep = record.held_versions();
        self.store.update(&record, current.version, MaterialChange::Retain(&keep), draft).await?;
        self.sync_labels(&record).await;
        Ok(record)
    }

    /// Answers a retried call the way the finished one answered.
    async fn replay(&self, current: &KeyRecord, last: &LastRotation) -> Result<KeyRecord, ServiceError> {
        // The call may have stopped between its commit and the vault's labels: finish that.
        self.sync_labels(current).await;
        match last.outcome {
            RotationOutcome::Promoted | RotationOutcome::RolledBack => Ok(current.clone()),
            RotationOutcome::TestFailed => Err(test_failed(last.test.as_ref())),
            RotationOutcome::Abandoned => Err(ServiceError::Conflict {
                code: "rotation_abandoned",
                message: "this rotation was left unfinished and was rolled back; the current key is unchanged, start a new rotation".into(),
            }),
        }
    }

    /// Makes the vault's labels (Secrets Manager) follow the record. Best effort: the store is
    /// the source of truth, and every later step or retry labels again.
    pub(super) async fn sync_labels(&self, record: &KeyRecord) {
        if !self.vault.has_labels() || record.status == KeyStatus::Revoked {
            return;
        }
        let result: Result<(), ServiceError> = async {
            let material = |version: u32| self.store.material(&record.workspace, &record.id, version);
            let current = material(record.key_version).await?;
            let pending = match &record.pending {
                Some(p) => material(p.key_version).await?,
                None => None,
            };
            let previous = match &record.previous {
                Some(p) => material(p.key_version).await?,
                None => None,
            };
            let Some(current) = current else { return Ok(()) };
            let labels = VersionLabels { current: &current, pending: pending.as_ref(), previous: previous.as_ref() };
            self.vault.label_versions(&record.workspace, &record.id, &labels).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(key_id = %record.id, workspace = %record.workspace, error = %e, "could not label the key's versions in the vault");
        }
    }

    /// Notifies the workspace; a lost notification is logged (the change it reports committed).
    pub(super) async fn tell(&self, record: &KeyRecord, kind: NotificationKind, message: String, dedupe_key: String) {
        let notification = Notification::about(record, kind, message, dedupe_key, self.clock.now());
        if let Err(e) = self.notifications.notify(&notification, None).await {
            tracing::warn!(key_id = %record.id, kind = kind.as_str(), error = %e, "notification failed");
        }
    }
}
