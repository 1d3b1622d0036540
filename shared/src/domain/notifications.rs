//! Notifications: what a workspace's members should know about without looking (a quota nearly
//! spent, a key the provider refused). Listed by `GET /api/notifications`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::environment::Environment;
use super::keys::KeyRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// 80 % of a quota is used.
    QuotaWarning,
    /// A quota is spent; requests are refused until its window resets.
    QuotaReached,
    /// The provider refused the key on a proxied call.
    KeyInvalid,
    /// A member revoked a key.
    KeyRevoked,
    /// A rotation promoted new material.
    KeyRotated,
    /// A rotation's new material failed its test, or a pending rotation was abandoned.
    RotationFailed,
    /// The previous version was restored.
    KeyRolledBack,
    /// The rotation policy says the key is (nearly) due for rotation.
    RotationDue,
    /// The key expires at the provider soon.
    KeyExpiring,
    /// The key's expiry date has passed.
    KeyExpired,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 10] = [
        NotificationKind::QuotaWarning,
        NotificationKind::QuotaReached,
        NotificationKind::KeyInvalid,
        NotificationKind::KeyRevoked,
        NotificationKind::KeyRotated,
        NotificationKind::RotationFailed,
        NotificationKind::KeyRolledBack,
        NotificationKind::RotationDue,
        NotificationKind::KeyExpiring,
        NotificationKind::KeyExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::QuotaWarning => "quota_warning",
            NotificationKind::QuotaReached => "quota_reached",
            NotificationKind::KeyInvalid => "key_invalid",
            NotificationKind::KeyRevoked => "key_revoked",
            NotificationKind::KeyRotated => "key_rotated",
            NotificationKind::RotationFailed => "rotation_failed",
            NotificationKind::KeyRolledBack => "key_rolled_back",
            NotificationKind::RotationDue => "rotation_due",
            NotificationKind::KeyExpiring => "key_expiring",
            NotificationKind::KeyExpired => "key_expired",
        }
    }

    pub fn parse(value: &str) -> Option<NotificationKind> {
        NotificationKind::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// Time-ordered id (UUIDv7).
    pub id: String,
    #[serde(skip)]
    pub workspace: String,
    pub kind: NotificationKind,
    pub provider: String,
    pub environment: Environment,
    pub key_id: Option<String>,
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
    /// At most one notification per workspace carries a given dedupe key (`quota:fmp:production:
    /// requests_per_day:2026-11-25:80`), so a retried or concurrent writer cannot notify twice.
    #[serde(skip)]
    pub dedupe_key: String,
}

impl Notification {
    /// A new notification about a key, for the key's workspace.
    pub fn about(record: &KeyRecord, kind: NotificationKind, message: String, dedupe_key: String, now: DateTime<Utc>) -> Notification {
        Notification {
            id: uuid::Uuid::now_v7().to_string(),
            workspace: record.workspace.clone(),
            kind,
            provider: record.provider.clone(),
            environment: record.environment,
            key_id: Some(record.id.clone()),
            message,
            created_at: now,
            read_at: None,
            dedupe_key,
        }
    }
}
