//! The API key record: everything about a stored key except its material.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::catalog::TestOutcome;
use super::environment::Environment;
use super::rotation::{LastRotation, PendingRotation, PreviousVersion, RotationPolicy};
use super::validation::FormatWarning;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable; not known to be refused by the provider.
    Active,
    /// Stored but not yet usable (a staged version waiting for its test).
    Pending,
    /// The provider refused it at the last test or call.
    Invalid,
    /// Revoked by a workspace member; its material is destroyed.
    Revoked,
    /// Shown, never stored: usable, but its rotation policy says it is due for rotation.
    RotationDue,
    /// Shown, never stored: its `expires_at` has passed (the provider no longer accepts it).
    Expired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Pending => "pending",
            KeyStatus::Invalid => "invalid",
            KeyStatus::Revoked => "revoked",
            KeyStatus::RotationDue => "rotation_due",
            KeyStatus::Expired => "expired",
        }
    }

    pub fn parse(value: &str) -> Option<KeyStatus> {
        [KeyStatus::Active, KeyStatus::Pending, KeyStatus::Invalid, KeyStatus::Revoked, KeyStatus::RotationDue, KeyStatus::Expired]
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}

/// Who did something, as the token said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    pub sub: String,
    pub email: String,
}

/// The result of a test-connection call, as stored on the key and answered by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    pub ok: bool,
    pub status: TestOutcome,
    /// What happened, with the provider's own message where it gave one (key values redacted).
    pub message: String,
    pub latency_ms: u64,
    /// The provider's HTTP status, when it answered.
    pub upstream_status: Option<u16>,
    pub tested_at: DateTime<Utc>,
}

/// Metadata of one stored key. Never holds key material: `masked` is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyRecord {
    pub id: String,
    #[serde(skip)]
    pub workspace: String,
    pub provider: String,
    pub environment: Environment,
    pub label: String,
    /// Field id → masked value.
    pub masked: BTreeMap<String, String>,
    /// HMAC of the primary credential: tells two keys apart without revealing either.
    pub fingerprint: String,
    pub status: KeyStatus,
    /// Version of the stored material (bumped when credentials change).
    pub key_version: u32,
    /// Optimistic-lock version of the record; the ETag is derived from it.
    pub version: u64,
    /// Soft format warnings recorded when the credentials were saved.
    pub warnings: Vec<FormatWarning>,
    pub created_by: Actor,
    pub created_at: DateTime<Utc>,
    pub updated_by: Actor,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_verified_at: Option<DateTime<Utc>>,
    pub last_test: Option<TestResult>,
    /// Who revoked the key, when and why (`status` is then `revoked`, the material destroyed and
    /// the provider + environment slot free for a new key).
    #[serde(default)]
    pub revocation: Option<Revocation>,
    /// When to rotate and when the key expires at the provider.
    #[serde(default)]
    pub policy: RotationPolicy,
    /// A rotation in progress (new material stored as a pending version).
    #[serde(default)]
    pub pending: Option<PendingRotation>,
    /// The version the last rotation replaced, kept for a rollback until its grace ends.
    #[serde(default)]
    pub previous: Option<PreviousVersion>,
    #[serde(default)]
    pub last_rotation: Option<LastRotation>,
    /// When the current material took effect by a rotation or an edit (`created_at` if never).
    #[serde(default)]
    pub rotated_at: Option<DateTime<Utc>>,
    /// The highest material version this key ever had (numbers are never reused).
    #[serde(default)]
    pub highest_key_version: u32,
    /// When the policy wants the key rotated (filled in when the record is shown).
    #[serde(default, skip_deserializing)]
    pub rotation_due_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    pub by: Actor,
    pub at: DateTime<Utc>,
    pub reason: String,
    /// When the material the vault keeps outside the store (Secrets Manager) was released; `None`
    /// while the scheduled job still has to retry it. Vaults that keep nothing outside set it at
    /// the revocation itself.
    #[serde(default)]
    pub material_released_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// Strong ETag of the editable state (label, environment, credentials); observations such as
    /// `last_test` do not change it, so a background test never makes a user's edit fail.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }
}

/// Parses an `If-Match` value into the record version it names. `*` matches any version.
pub fn parse_if_match(value: &str) -> Option<IfMatch> {
    let value = value.trim();
    if value == "*" {
        return Some(IfMatch::Any);
    }
    let value = value.strip_prefix("W/").unwrap_or(value);
    value.strip_prefix('"')?.strip_suffix('"')?.parse().ok().map(IfMatch::Version)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Version(u64),
}
