//! The scheduled job: walks the key records (all workspaces on a schedule, or one workspace when
//! an admin triggers it) and, per key, rolls back rotations left pending, removes previous versions
//! whose grace has passed, sends rotation and expiry reminders once each, and re-verifies keys
//! whose last verification is older than the policy. A lease keeps two runs from working at the
//! same time; a run does bounded work and saves where it stopped for the next one.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::access::{Caller, RequestMeta, Role};
use crate::domain::audit::{AuditDraft, Outcome, action};
use crate::domain::catalog::Provider;
use crate::domain::keys::{KeyRecord, KeyStatus};
use crate::domain::notifications::{Notification, NotificationKind};
use crate::domain::rotation::{PENDING_LIMIT_MINUTES, ReminderKind, RotationOutcome, reminders, verification_due};
use crate::ports::{JobLeases, LeaseError, Page};

use super::ServiceError;
use super::keys::KeyService;

/// The lease every run takes, whatever its scope: a workspace run and a full run never overlap.
pub const JOB: &str = "scheduler";

/// How much one run does and how often keys are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerSettings {
    /// Re-verify a key when its last verification is older than this.
    pub verify_every: Duration,
    /// Records one run looks at.
    pub records_per_run: usize,
    /// Provider tests one run makes.
    pub tests_per_run: usize,
    /// How long a run may hold the lease (a crashed run's lease expires after it).
    pub lease: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings { verify_every: Duration::hours(24), records_per_run: 500, tests_per_run: 25, lease: Duration::minutes(10) }
    }
}

/// Which records a run walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every workspace, continuing where the last full run stopped.
    All,
    /// One workspace from its first key (an admin's `POST /api/jobs/run`).
    Workspace(String),
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    /// Set when another run held the lease: this one did nothing.
    pub skipped: Option<String>,
    pub records_seen: usize,
    pub verified: usize,
    pub marked_invalid: usize,
    pub reminders_sent: usize,
    pub previous_destroyed: usize,
    pub rotations_rolled_back: usize,
    /// Revoked keys whose outside material (Secrets Manager) the revocation could not release.
    pub materials_released: usize,
    /// The run walked to the last record (else the next run continues from where it stopped).
    pub complete: bool,
    /// Keys a step failed on (the next run tries again); messages never carry key material.
    pub errors: Vec<String>,
}

pub struct Scheduler<'a> {
    pub keys: &'a KeyService,
    pub leases: Arc<dyn JobLeases>,
    pub settings: SchedulerSettings,
}

fn system_caller(workspace: &str) -> Caller {
    Caller {
        sub: "system:scheduler".into(),
        email: "scheduler@stockpulse.invalid".into(),
        role: Role::Admin,
        workspace: workspace.to_owned(),
    }
}

impl Scheduler<'_> {
    pub async fn run(&self, scope: Scope) -> Result<RunReport, ServiceError> {
        let now = self.keys.clock.now();
        let run_id = uuid::Uuid::now_v7().to_string();
        let mut report = RunReport { run_id: run_id.clone(), started_at: now, ..RunReport::default() };
        let saved = match self.leases.acquire(JOB, &run_id, now, now + self.settings.lease).await {
            Ok(position) => position,
            Err(LeaseError::Held { until }) => {
                report.skipped =
                    Some(format!("another run holds the lease until {}", until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                return Ok(report);
            }
            Err(LeaseError::Store(e)) => return Err(e.into()),
        };
        let meta = RequestMeta { source_ip: "internal".into(), user_agent: "stockpulse-scheduler".into(), request_id: run_id.clone() };
        let mut after = match scope {
            Scope::All => saved.clone(),
            Scope::Workspace(_) => None,
        };
        let mut tests_left = self.settings.tests_per_run;
        let walked = async {
            loop {
                let room = self.settings.records_per_run.saturating_sub(report.records_seen);
                if room == 0 {
                    return Ok::<_, ServiceError>(false);
                }
                let page: Page<KeyRecord> = match &scope {
                    Scope::All => self.keys.store.scan(after.as_deref(), room.min(100)).await?,
                    Scope::Workspace(ws) => self.keys.store.list(ws, after.as_deref(), room.min(100)).await?,
                };
                for record in page.items {
                    report.records_seen += 1;
                    self.visit(&record, now, &meta, &mut report, &mut tests_left).await;
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => return Ok(true),
                }
            }
        }
        .await;
        let (position, complete) = match walked {
            Ok(true) => (None, true),
            Ok(false) => (after.clone(), false),
            Err(e) => {
                report.errors.push(format!("the walk stopped: {e}"));
                (after.clone(), false)
            }
        };
        report.complete = complete;
        // A workspace run leaves the full run's position as it was.
        let position = if scope == Scope::All { position } else { saved };
        if !self.leases.release(JOB, &run_id, position.as_deref()).await? {
            tracing::warn!(run = %run_id, "the scheduler run outlived its lease; its position was not saved");
        }
        tracing::info!(run = %run_id, seen = report.records_seen, verified = report.verified, reminders = report.reminders_sent,
            destroyed = report.previous_destroyed, rolled_back = report.rotations_rolled_back, errors = report.errors.len(), "scheduler run");
        Ok(report)
    }

    async fn visit(&self, record: &KeyRecord, now: DateTime<Utc>, meta: &RequestMeta, report: &mut RunReport, tests_left: &mut usize) {
        let caller = system_caller(&record.workspace);
        if record.status == KeyStatus::Revoked {
            if record.revocation.as_ref().is_some_and(|r| r.material_released_at.is_none()) {
                match self.keys.release_revoked(&caller, meta, record).await {
                    Ok(_) => report.materials_released += 1,
                    Err(e) => report.errors.push(format!("key {}: {e}", record.id)),
                }
            }
            return;
        }
        let Some(provider) = self.keys.catalog.provider(&record.provider) else { return };
        let mut record = record.clone();
        let steps = async {
            if record.pending.as_ref().is_some_and(|p| now - p.started_at >= Duration::minutes(PENDING_LIMIT_MINUTES)) {
                record = self.keys.discard(&caller, meta, provider, &record, RotationOutcome::Abandoned, None).await?;
                report.rotations_rolled_back += 1;
            }
            if record.previous.as_ref().is_some_and(|p| p.grace_until <= now) {
                record = self.keys.destroy_previous(&caller, meta, &record).await?;
                report.previous_destroyed += 1;
            }
            report.reminders_sent += self.remind(&record, provider, now, &caller, meta).await?;
            let due = verification_due(&record, self.settings.verify_every, provider.min_verify_interval());
            if record.status == KeyStatus::Active && record.pending.is_none() && due <= now && *tests_left > 0 {
                *tests_left -= 1;
                report.verified += 1;
                if self.verify(&record, provider, &caller, meta).await? {
                    report.marked_invalid += 1;
                }
            }
            Ok::<_, ServiceError>(())
        };
        if let Err(e) = steps.await {
            tracing::warn!(key_id = %record.id, workspace = %record.workspace, error = %e, "scheduler step failed");
            report.errors.push(format!("key {}: {e}", record.id));
        }
    }

    /// Sends the reminders due; the notification's dedupe key makes each go out once, and its
    /// audit entry is written in the same transaction (only when it is new).
    async fn remind(
        &self,
        record: &KeyRecord,
        provider: &Provider,
        now: DateTime<Utc>,
        caller: &Caller,
        meta: &RequestMeta,
    ) -> Result<usize, ServiceError> {
        let mut sent = 0;
        for reminder in reminders(record, now) {
            let when = reminder.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let what = format!("the {} {} key \"{}\"", provider.name, record.environment.as_str(), record.label);
            let (kind, message) = match reminder.kind {
                ReminderKind::RotationDue if reminder.at <= now => {
                    (NotificationKind::RotationDue, format!("Rotate {what}: it was due on {when}"))
                }
                ReminderKind::RotationDue => (NotificationKind::RotationDue, format!("Rotate {what} by {when}, as its policy asks")),
                ReminderKind::ExpiresSoon => {
                    (NotificationKind::KeyExpiring, format!("{what} expires at the provider on {when}; rotate it before"))
                }
                ReminderKind::Expired => (NotificationKind::KeyExpired, format!("{what} expired at the provider on {when}; rotate it")),
            };
            let notification = Notification::about(record, kind, message, reminder.dedupe_key, now);
            let audit = AuditDraft::new(caller, meta, action::KEY_REMINDER, Outcome::Success)
                .target(&record.provider, record.environment, Some(&record.id))
                .detail(format!("reminder: {}", kind.as_str()));
            if self.keys.notifications.notify(&notification, Some(audit)).await?.is_some() {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Tests the key with the provider's test request and records the result; a refused key is
    /// marked invalid and the workspace told. Returns whether it was marked invalid.
    async fn verify(&self, record: &KeyRecord, provider: &Provider, caller: &Caller, meta: &RequestMeta) -> Result<bool, ServiceError> {
        let (result, status) = self.keys.verify(caller, meta, record, provider, "scheduled test").await?;
        if status != KeyStatus::Invalid {
            return Ok(false);
        }
        let message = format!(
            "The scheduled check found the {} {} key \"{}\" refused: {}",
            provider.name,
            record.environment.as_str(),
            record.label,
            result.message
        );
        self.keys
            .tell(record, NotificationKind::KeyInvalid, message, format!("key_invalid:{}:{}:scheduled", record.id, record.key_version))
            .await;
        Ok(true)
    }
}
