//! Rotation: the versions a key holds (current, pending, previous with its grace deadline), the
//! per-key rotation policy, and the dates the scheduled job acts on. Pure: the service decides
//! with these, the store keeps them inside the key record.
//!
//! A rotation is staged → tested → promoted (or discarded), one persisted step at a time, after
//! Secrets Manager's model: the new material is stored as pending beside the current one, tested
//! against the provider, and only then made current; the old current stays as `previous` until
//! its grace deadline so that a rollback is instant.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys::{Actor, KeyRecord, KeyStatus, TestResult};
use super::validation::FormatWarning;

/// How long the previous version stays usable for a rollback unless the rotation says otherwise.
pub const DEFAULT_GRACE_HOURS: u32 = 24;
/// The longest grace a rotation may ask for (30 days).
pub const MAX_GRACE_HOURS: u32 = 720;
/// A pending rotation older than this was abandoned (its caller crashed or gave up): the
/// scheduled job rolls it back.
pub const PENDING_LIMIT_MINUTES: i64 = 15;
/// The longest rotation period and reminder lead a policy may set.
pub const MAX_POLICY_DAYS: u32 = 3650;

/// When a key should be rotated and when it expires at the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicy {
    /// Rotate this many days after the current material took effect.
    #[serde(default)]
    pub rotate_every_days: Option<u32>,
    /// Remind this many days before the rotation is due or the key expires (default 7).
    #[serde(default)]
    pub notify_before_days: Option<u32>,
    /// When the provider itself stops accepting the key (keys issued with an expiry).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

pub const DEFAULT_NOTIFY_BEFORE_DAYS: u32 = 7;

impl RotationPolicy {
    /// Checks the values; `Err((field, message))` names the first bad one.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), (&'static str, String)> {
        if let Some(days) = self.rotate_every_days
            && !(1..=MAX_POLICY_DAYS).contains(&days)
        {
            return Err(("rotation_policy.rotate_every_days", format!("rotate_every_days must be 1 to {MAX_POLICY_DAYS}")));
        }
        if let Some(days) = self.notify_before_days
            && days > MAX_POLICY_DAYS
        {
            return Err(("rotation_policy.notify_before_days", format!("notify_before_days must be 0 to {MAX_POLICY_DAYS}")));
        }
        if let Some(at) = self.expires_at
            && at <= now
        {
            return Err(("rotation_policy.expires_at", "expires_at must be in the future".into()));
        }
        Ok(())
    }

    fn notify_before(&self) -> Duration {
        Duration::days(i64::from(self.notify_before_days.unwrap_or(DEFAULT_NOTIFY_BEFORE_DAYS)))
    }
}

/// The step a rotation has persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationStep {
    /// The new material is stored beside the current one; not tested yet.
    Staged,
    /// The provider accepted the new material; promotion is next.
    Tested,
}

/// A rotation in progress: the new material waits as a pending version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PendingRotation {
    pub id: String,
    pub step: RotationStep,
    /// The material version the new credentials are stored under.
    pub key_version: u32,
    pub masked: BTreeMap<String, String>,
    pub fingerprint: String,
    pub warnings: Vec<FormatWarning>,
    /// How long the version it replaces stays available for a rollback.
    pub grace_hours: u32,
    /// The caller's `Idempotency-Key`: a retry with it resumes this rotation.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub started_by: Actor,
    pub started_at: DateTime<Utc>,
    /// The passed test (step `tested`).
    pub test: Option<TestResult>,
}

/// The version a promoted rotation replaced, usable for a rollback until `grace_until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreviousVersion {
    pub key_version: u32,
    pub masked: BTreeMap<String, String>,
    pub fingerprint: String,
    /// When this version took effect (restored as `rotated_at` by a rollback).
    pub since: DateTime<Utc>,
    pub replaced_at: DateTime<Utc>,
    pub grace_until: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationKind {
    Rotate,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationOutcome {
    /// The new material is current.
    Promoted,
    /// The provider refused the new material; the current one never changed.
    TestFailed,
    /// The previous version is current again.
    RolledBack,
    /// The rotation was left pending too long and was discarded by the scheduled job.
    Abandoned,
}

/// How the last rotation or rollback ended: shown on the key, and what a retried call with the
/// same `Idempotency-Key` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LastRotation {
    pub id: String,
    pub kind: RotationKind,
    pub outcome: RotationOutcome,
    /// The test of the new material (rotations that reached it).
    pub test: Option<TestResult>,
    pub by: Actor,
    pub at: DateTime<Utc>,
    /// The `Idempotency-Key` of the call: a retry with it answers the same.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Checks an `Idempotency-Key` header value: 1 to 128 visible ASCII characters.
pub fn check_idempotency_key(value: &str) -> bool {
    (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

impl KeyRecord {
    /// The version number for new material: above every number this key ever used, so that a
    /// (key, version) pair always names the same material (the proxy caches by it).
    pub fn next_key_version(&self) -> u32 {
        let pending = self.pending.as_ref().map_or(0, |p| p.key_version);
        let previous = self.previous.as_ref().map_or(0, |p| p.key_version);
        self.highest_key_version.max(self.key_version).max(pending).max(previous) + 1
    }

    /// When the current material took effect.
    pub fn current_since(&self) -> DateTime<Utc> {
        self.rotated_at.unwrap_or(self.created_at)
    }

    /// When the policy wants the key rotated, if it has a period.
    pub fn rotation_due(&self) -> Option<DateTime<Utc>> {
        self.policy.rotate_every_days.map(|days| self.current_since() + Duration::days(i64::from(days)))
    }

    /// The material versions the store should hold for this record.
    pub fn held_versions(&self) -> Vec<u32> {
        let mut versions = vec![self.key_version];
        versions.extend(self.pending.as_ref().map(|p| p.key_version));
        versions.extend(self.previous.as_ref().map(|p| p.key_version));
        versions
    }

    /// The record as the API shows it at `now`: `rotation_due_at` filled in, and the status
    /// `expired` or `rotation_due` where that applies to a usable key.
    pub fn presented(mut self, now: DateTime<Utc>) -> KeyRecord {
        self.rotation_due_at = self.rotation_due();
        if matches!(self.status, KeyStatus::Active) {
            if self.policy.expires_at.is_some_and(|at| at <= now) {
                self.status = KeyStatus::Expired;
            } else if self.rotation_due_at.is_some_and(|at| at <= now) {
                self.status = KeyStatus::RotationDue;
            }
        }
        self
    }
}

/// A reminder the scheduled job sends once (its dedupe key makes "once" hold across runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    pub kind: ReminderKind,
    pub dedupe_key: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReminderKind {
    RotationDue,
    ExpiresSoon,
    Expired,
}

/// The reminders due for a key at `now`: rotation due (from `notify_before_days` ahead), expiry
/// ahead and expiry reached. Each is tied to the material version or expiry date it is about,
/// so a rotation or a new expiry date earns new reminders and nothing else repeats one.
pub fn reminders(record: &KeyRecord, now: DateTime<Utc>) -> Vec<Reminder> {
    if matches!(record.status, KeyStatus::Revoked) {
        return Vec::new();
    }
    let lead = record.policy.notify_before();
    let mut out = Vec::new();
    if let Some(due) = record.rotation_due()
        && now >= due - lead
    {
        out.push(Reminder {
            kind: ReminderKind::RotationDue,
            dedupe_key: format!("rotation_due:{}:{}", record.id, record.key_version),
            at: due,
        });
    }
    if let Some(expires) = record.policy.expires_at {
        let stamp = expires.timestamp();
        if now >= expires {
            out.push(Reminder { kind: ReminderKind::Expired, dedupe_key: format!("key_expired:{}:{stamp}", record.id), at: expires });
        } else if now >= expires - lead {
            out.push(Reminder { kind: ReminderKind::ExpiresSoon, dedupe_key: format!("key_expiring:{}:{stamp}", record.id), at: expires });
        }
    }
    out
}

/// When the scheduled job should next verify a key: `every` after its last verification (its
/// creation if never), moved by up to a tenth of `every` by a hash of its id so that keys added
/// together do not all come due in the same run, and never sooner than the provider's minimum
/// interval after the last verification.
pub fn verification_due(record: &KeyRecord, every: Duration, provider_min: Duration) -> DateTime<Utc> {
    let last = record.last_verified_at.unwrap_or(record.created_at);
    let spread_seconds = (every.num_seconds() / 10).max(1);
    let hash = record.id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let offset = Duration::seconds((hash % spread_seconds as u64) as i64);
    last + (every + offset).max(provider_min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::environment::Environment;

    fn record(now: DateTime<Utc>) -> KeyRecord {
        let actor = Actor { sub: "s".into(), email: "e@example.com".into() };
        KeyRecord {
            id: "0192-key".into(),
            workspace: "w".into(),
            provider: "openai".into(),
            environment: Environment::Production,
            label: "l".into(),
            masked: BTreeMap::new(),
            fingerprint: "f".into(),
            status: KeyStatus::Active,
            key_version: 3,
            version: 1,
            warnings: vec![],
            created_by: actor.clone(),
            created_at: now,
            updated_by: actor,
            updated_at: now,
            last_used_at: None,
            last_verified_at: None,
            last_test: None,
            revocation: None,
            policy: RotationPolicy::default(),
            pending: None,
            previous: None,
            last_rotation: None,
            rotated_at: None,
            highest_key_version: 5,
            rotation_due_at: None,
        }
    }

    #[test]
    fn new_versions_never_reuse_a_number() {
        let now = Utc::now();
        let mut r = record(now);
        assert_eq!(r.next_key_version(), 6);
        r.highest_key_version = 0;
        assert_eq!(r.next_key_version(), 4);
        r.previous = Some(PreviousVersion {
            key_version: 9,
            masked: BTreeMap::new(),
            fingerprint: "p".into(),
            since: now,
            replaced_at: now,
            grace_until: now,
        });
        assert_eq!(r.next_key_version(), 10);
    }

    #[test]
    fn status_shows_rotation_due_then_expired() {
        let now = Utc::now();
        let mut r = record(now);
        r.policy = RotationPolicy { rotate_every_days: Some(30), notify_before_days: Some(5), expires_at: Some(now + Duration::days(60)) };
        assert_eq!(r.clone().presented(now).status, KeyStatus::Active);
        assert_eq!(r.clone().presented(now).rotation_due_at, Some(now + Duration::days(30)));
        assert!(reminders(&r, now).is_empty());
        let at_25 = now + Duration::days(25);
        assert_eq!(reminders(&r, at_25).iter().map(|x| x.kind).collect::<Vec<_>>(), vec![ReminderKind::RotationDue]);
        assert_eq!(r.clone().presented(now + Duration::days(31)).status, KeyStatus::RotationDue);
        let at_56 = now + Duration::days(56);
        assert_eq!(
            reminders(&r, at_56).iter().map(|x| x.kind).collect::<Vec<_>>(),
            vec![ReminderKind::RotationDue, ReminderKind::ExpiresSoon]
        );
        assert_eq!(r.clone().presented(now + Duration::days(61)).status, KeyStatus::Expired);
        assert_eq!(reminders(&r, now + Duration::days(61))[1].kind, ReminderKind::Expired);
        // A rotation earns a new rotation reminder; the old one's key is not reused.
        let before = reminders(&r, at_25)[0].dedupe_key.clone();
        r.key_version = 4;
        r.rotated_at = Some(at_25);
        assert!(reminders(&r, at_25).is_empty());
        assert_ne!(reminders(&r, at_25 + Duration::days(26))[0].dedupe_key, before);
        r.status = KeyStatus::Revoked;
        assert!(reminders(&r, now + Duration::days(100)).is_empty());
        assert_eq!(r.presented(now + Duration::days(100)).status, KeyStatus::Revoked);
    }

    #[test]
    fn verification_is_spread_and_never_faster_than_the_provider_allows() {
        let now = Utc::now();
        let r = record(now);
        let due = verification_due(&r, Duration::hours(24), Duration::minutes(1));
        assert!(due >= now + Duration::hours(24) && due < now + Duration::hours(24) + Duration::minutes(145));
        let mut other = record(now);
        other.id = "0193-other".into();
        assert_ne!(verification_due(&other, Duration::hours(24), Duration::minutes(1)), due);
        assert_eq!(verification_due(&r, Duration::minutes(1), Duration::hours(2)), now + Duration::hours(2));
    }

    #[test]
    fn policy_values_are_checked() {
        let now = Utc::now();
        assert!(RotationPolicy { rotate_every_days: Some(0), ..Default::default() }.check(now).is_err());
        assert!(RotationPolicy { notify_before_days: Some(4000), ..Default::default() }.check(now).is_err());
        assert!(RotationPolicy { expires_at: Some(now - Duration::seconds(1)), ..Default::default() }.check(now).is_err());
        assert!(
            RotationPolicy { rotate_every_days: Some(90), notify_before_days: Some(0), expires_at: Some(now + Duration::days(1)) }
                .check(now)
                .is_ok()
        );
        assert!(check_idempotency_key("retry-1") && !check_idempotency_key("") && !check_idempotency_key("a b"));
    }
}
