//! The request's one write (key still current, limits, usage) and the quota notifications its
//! counters call for.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue, StatusCode};

use crate::domain::audit::{AuditDraft, Outcome, action};
use crate::domain::metering::{Counters, LimitKind, Limits, MeterKey, UsageCounts, UsageRecord, Windows, thresholds_reached};
use crate::domain::notifications::{Notification, NotificationKind};
use crate::ports::{Admission, Verdict};

use super::{Forward, MAX_CARRIED_RECORDS, ProxyFailure, ProxyService, QUOTA_LIMIT_HEADER, QUOTA_REMAINING_HEADER};

pub(super) fn quota_headers(counters: &Counters, limits: &Limits) -> Vec<(HeaderName, HeaderValue)> {
    match counters.remaining(limits) {
        Some((left, kind)) => vec![
            (HeaderName::from_static(QUOTA_REMAINING_HEADER), HeaderValue::from(left)),
            (HeaderName::from_static(QUOTA_LIMIT_HEADER), HeaderValue::from_static(kind.as_str())),
        ],
        None => vec![(HeaderName::from_static(QUOTA_REMAINING_HEADER), HeaderValue::from_static("unlimited"))],
    }
}

impl ProxyService {
    /// The request's one write. A key that changed since it was cached is reloaded once. Returns
    /// the meter's counters after the write and the limits it was checked against.
    pub(super) async fn admit(&self, forward: &mut Forward<'_>, counted: bool) -> Result<(Counters, Limits), ProxyFailure> {
        let limits = self.limits_for(&forward.meter).await?;
        for attempt in 0..2 {
            let now = Utc::now();
            // Outcomes of earlier requests ride along; on any failure they go back to wait.
            let held = self.pending.take_some(MAX_CARRIED_RECORDS);
            let mut usage = held.clone();
            if !counted {
                usage.push(self.usage_record(&forward.meter, now, UsageCounts { cache_hits: 1, ..UsageCounts::default() }));
            }
            let admission = Admission {
                meter: forward.meter.clone(),
                key_id: forward.key.record.id.clone(),
                key_version: forward.key.record.key_version,
                now,
                limits,
                counted,
                usage,
            };
            let verdict = self.meter.admit(&admission).await;
            if !matches!(verdict, Ok(Verdict::Admitted(_))) {
                self.pending.restore(held);
            }
            match verdict {
                Ok(Verdict::Admitted(counters)) => {
                    self.notify_thresholds(forward, &limits, &counters, now).await;
                    return Ok((counters, limits));
                }
                Ok(Verdict::Limited { limit, counters }) => {
                    self.pending.add(self.usage_record(&forward.meter, now, UsageCounts { rate_limited: 1, ..UsageCounts::default() }));
                    self.notify_thresholds(forward, &limits, &counters, now).await;
                    let retry_after = Windows::of(now).retry_after(limit, now);
                    let mut failure = ProxyFailure::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "quota_exceeded",
                        format!(
                            "this workspace reached its {} limit of {} for {} ({}); try again in {retry_after} s",
                            limit.as_str(),
                            limits.get(limit).unwrap_or_default(),
                            forward.provider.name,
                            forward.environment.as_str()
                        ),
                    )
                    .provider(&forward.provider.id);
                    failure.details.limit = Some(limit);
                    failure.details.retry_after = Some(retry_after);
                    failure.details.headers = quota_headers(&counters, &limits);
                    return Err(failure);
                }
                Ok(Verdict::KeyChanged) if attempt == 0 => {
                    self.key_cache.evict_key(&forward.meter.workspace, &forward.key.record.id);
                    forward.key = self.resolve(&forward.meter.workspace, forward.provider, forward.environment, true).await?;
                }
                Ok(Verdict::KeyChanged) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ProxyFailure::new(StatusCode::CONFLICT, "key_changed", "the key changed during the request; try again")
            .provider(&forward.provider.id))
    }

    pub(super) fn usage_record(&self, meter: &MeterKey, now: DateTime<Utc>, counts: UsageCounts) -> UsageRecord {
        UsageRecord { meter: meter.clone(), day: now.date_naive(), counts, provider_limits: BTreeMap::new(), observed_at: now }
    }

    /// 80 % and 100 % of a quota: one notification (with its audit entry) per threshold and window.
    pub(super) async fn notify_thresholds(&self, forward: &Forward<'_>, limits: &Limits, counters: &Counters, now: DateTime<Utc>) {
        let windows = Windows::of(now);
        for kind in LimitKind::ALL {
            for crossing in thresholds_reached(kind, limits.get(kind), counters.get(kind)) {
                let window = match kind {
                    LimitKind::RequestsPerDay => windows.day_id(),
                    _ => windows.month_id(),
                };
                let meter = &forward.meter;
                let dedupe_key =
                    format!("quota:{}:{}:{}:{window}:{}", meter.provider, meter.environment.as_str(), kind.as_str(), crossing.percent);
                if !self.notified.lock().unwrap_or_else(|p| p.into_inner()).insert(dedupe_key.clone()) {
                    continue;
                }
                let (notification_kind, what) = if crossing.percent >= 100 {
                    (NotificationKind::QuotaReached, "reached".to_owned())
                } else {
                    (NotificationKind::QuotaWarning, format!("is {}% used", crossing.percent))
                };
                let message = format!(
                    "{} ({}): the {} quota of {} {what} ({window}).",
                    forward.provider.name,
                    meter.environment.as_str(),
                    kind.as_str(),
                    crossing.limit
                );
                let notification = Notification {
                    id: uuid::Uuid::now_v7().to_string(),
                    workspace: meter.workspace.clone(),
                    kind: notification_kind,
                    provider: meter.provider.clone(),
                    environment: meter.environment,
                    key_id: Some(forward.key.record.id.clone()),
                    message,
                    created_at: now,
                    read_at: None,
                    dedupe_key: dedupe_key.clone(),
                };
                let audit = AuditDraft::new(forward.call.caller, forward.call.meta, action::QUOTA_THRESHOLD, Outcome::Success)
                    .target(&meter.provider, meter.environment, Some(&forward.key.record.id))
                    .detail(format!("{} {}% of {} ({window})", kind.as_str(), crossing.percent, crossing.limit));
                if let Err(e) = self.notifications.notify(&notification, Some(audit)).await {
                    tracing::warn!(error = %e, "quota notification failed; will retry on a later request");
                    self.notified.lock().unwrap_or_else(|p| p.into_inner()).remove(&dedupe_key);
                }
            }
        }
        let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
        if notified.len() > 10_000 {
            notified.clear();
        }
    }
}
