//! What workspaces see and set around the proxy: quotas (read by all, changed by admins, audited),
//! usage analytics, notifications and cache purges.

use std::sync::Arc;

use chrono::{Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::access::{Caller, RequestMeta};
use crate::domain::audit::{AuditDraft, Outcome, action};
use crate::domain::catalog::{Catalog, Provider};
use crate::domain::environment::Environment;
use crate::domain::metering::{Counters, LimitKind, Limits, MeterKey, UsageCounts, UsageDay, latency_quantile};
use crate::domain::notifications::Notification;
use crate::ports::{AuditLog, MeterStore, NotificationStore, Page, ResponseCache};

use super::proxy::ProxyService;
use super::{ServiceError, cursor};

/// The longest range one usage query may cover.
pub const MAX_USAGE_DAYS: i64 = 366;

#[derive(Serialize, ToSchema)]
pub struct QuotaView {
    pub provider: String,
    pub environments: Vec<EnvironmentQuota>,
}

#[derive(Serialize, ToSchema)]
pub struct EnvironmentQuota {
    pub environment: Environment,
    /// The limits in force.
    pub limits: Limits,
    /// The catalog's defaults (the provider's published free-tier limits).
    pub defaults: Limits,
    /// The workspace set its own limits (else the defaults apply).
    pub custom: bool,
    /// Use in the current windows (UTC).
    pub used: Counters,
    /// Per limit: percent used (0–100+), for quota bars.
    pub percent_used: Vec<PercentUsed>,
}

#[derive(Serialize, ToSchema)]
pub struct PercentUsed {
    pub limit: LimitKind,
    pub percent: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutQuota {
    pub environment: Environment,
    /// The new limits; a missing or `null` field means no limit on that window.
    pub limits: Limits,
}

#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    #[schema(value_type = String)]
    pub from: NaiveDate,
    #[schema(value_type = String)]
    pub to: NaiveDate,
    pub days: Vec<UsageDayView>,
    /// Sums over the range per provider and environment.
    pub totals: Vec<UsageTotal>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageDayView {
    #[serde(flatten)]
    pub day: UsageDay,
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
    /// Cache hits over all answered requests, 0–1.
    pub cache_hit_rate: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageTotal {
    pub provider: String,
    pub environment: Environment,
    #[serde(flatten)]
    pub counts: UsageCounts,
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
    pub cache_hit_rate: Option<f64>,
}

pub struct MeteringService {
    pub catalog: &'static Catalog,
    pub proxy: Arc<ProxyService>,
    pub meter: Arc<dyn MeterStore>,
    pub cache: Arc<dyn ResponseCache>,
    pub notifications: Arc<dyn NotificationStore>,
    pub audit: Arc<dyn AuditLog>,
}

impl MeteringService {
    fn provider(&self, id: &str) -> Result<&'static Provider, ServiceError> {
        self.catalog.provider(id).ok_or_else(|| ServiceError::NotFound {
            code: "unknown_provider",
            message: "no such provider; GET /api/providers lists them".into(),
        })
    }

    pub async fn quotas(&self, caller: &Caller, provider: &str) -> Result<QuotaView, ServiceError> {
        let provider = self.provider(provider)?;
        let now = Utc::now();
        let mut environments = Vec::new();
        for environment in Environment::ALL {
            let meter = MeterKey { workspace: caller.workspace.clone(), provider: provider.id.clone(), environment };
            let policy = self.meter.policy(&meter).await?;
            let defaults = Limits::defaults(provider);
            let limits = policy.unwrap_or(defaults);
            let used = self.meter.counters(&meter, now).await?;
            let percent_used = LimitKind::ALL
                .into_iter()
                .filter_map(|kind| limits.get(kind).map(|limit| PercentUsed { limit: kind, percent: percent(used.get(kind), limit) }))
                .collect();
            environments.push(EnvironmentQuota { environment, limits, defaults, custom: policy.is_some(), used, percent_used });
        }
        Ok(QuotaView { provider: provider.id.clone(), environments })
    }

    pub async fn put_quota(&self, caller: &Caller, meta: &RequestMeta, provider: &str, input: PutQuota) -> Result<QuotaView, ServiceError> {
        let provider = self.provider(provider)?;
        for kind in LimitKind::ALL {
            if input.limits.get(kind).is_some_and(|l| l > 1_000_000_000_000) {
                return Err(ServiceError::Unprocessable {
                    code: "limit_too_large",
                    message: format!("{} must be at most 10^12; leave it out for no limit", kind.as_str()),
                    field: Some(format!("limits.{}", kind.as_str())),
                });
            }
        }
        let meter = MeterKey { workspace: caller.workspace.clone(), provider: provider.id.clone(), environment: input.environment };
        let detail = LimitKind::ALL
            .into_iter()
            .map(|k| format!("{}={}", k.as_str(), input.limits.get(k).map(|v| v.to_string()).unwrap_or_else(|| "none".into())))
            .collect::<Vec<_>>()
            .join(" ");
        let audit = AuditDraft::new(caller, meta, action::QUOTA_UPDATE, Outcome::Success)
            .target(&provider.id, input.environment, None)
            .detail(detail);
        self.meter.put_policy(&meter, &input.limits, audit).await?;
        self.proxy.forget_policy(&meter);
        self.quotas(caller, &provider.id).await
    }

    pub async fn usage(
        &self,
        caller: &Caller,
        provider: Option<&str>,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> Result<UsageReport, ServiceError> {
        // A filter value, not a resource in the path: an unknown one is a bad request.
        if let Some(p) = provider
            && self.catalog.provider(p).is_none()
        {
            return Err(ServiceError::BadRequest {
                code: "unknown_provider",
                message: "`provider` is not a provider in the catalog; GET /api/providers lists them".into(),
                field: Some("provider".into()),
            });
        }
        let to = to.unwrap_or_else(|| Utc::now().date_naive());
        let from = from.unwrap_or(to - Duration::days(29));
        if from > to || (to - from).num_days() >= MAX_USAGE_DAYS {
            return Err(ServiceError::BadRequest {
                code: "invalid_range",
                message: format!("`from` must not be after `to`, and a range covers at most {MAX_USAGE_DAYS} days"),
                field: Some("from".into()),
            });
        }
        let days = self.meter.usage(&caller.workspace, provider, from, to).await?;
        let mut totals: Vec<UsageTotal> = Vec::new();
        for day in &days {
            match totals.iter_mut().find(|t| t.provider == day.provider && t.environment == day.environment) {
                Some(total) => total.counts.add(&day.counts),
                None => totals.push(UsageTotal {
                    provider: day.provider.clone(),
                    environment: day.environment,
                    counts: day.counts.clone(),
                    latency_p50_ms: None,
                    latency_p95_ms: None,
                    cache_hit_rate: None,
                }),
            }
        }
        for total in &mut totals {
            total.latency_p50_ms = latency_quantile(&total.counts.latency_ms_buckets, 0.5);
            total.latency_p95_ms = latency_quantile(&total.counts.latency_ms_buckets, 0.95);
            total.cache_hit_rate = hit_rate(&total.counts);
        }
        let days = days
            .into_iter()
            .map(|day| UsageDayView {
                latency_p50_ms: latency_quantile(&day.counts.latency_ms_buckets, 0.5),
                latency_p95_ms: latency_quantile(&day.counts.latency_ms_buckets, 0.95),
                cache_hit_rate: hit_rate(&day.counts),
                day,
            })
            .collect();
        Ok(UsageReport { from, to, days, totals })
    }

    pub async fn notifications(
        &self,
        caller: &Caller,
        unread_only: bool,
        cursor_value: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<Notification>, ServiceError> {
        let limit = cursor::limit(limit)?;
        let before = cursor_value.map(|c| cursor::decode("notifications", c)).transpose()?;
        let page = self.notifications.notifications(&caller.workspace, unread_only, before.as_deref(), limit).await?;
        Ok(Page { next: page.next.map(|n| cursor::encode("notifications", &n)), items: page.items })
    }

    pub async fn mark_read(&self, caller: &Caller, id: &str) -> Result<Notification, ServiceError> {
        self.notifications.mark_read(&caller.workspace, id, Utc::now()).await.map_err(|e| match e {
            crate::ports::StoreError::NotFound => {
                ServiceError::NotFound { code: "notification_not_found", message: "no such notification in this workspace".into() }
            }
            other => other.into(),
        })
    }

    /// Removes the workspace's cached answers of a provider; audited.
    pub async fn purge_cache(&self, caller: &Caller, meta: &RequestMeta, provider: &str) -> Result<u64, ServiceError> {
        let provider = self.provider(provider)?;
        let removed = self.cache.purge(&caller.workspace, &provider.id).await?;
        let mut audit = AuditDraft::new(caller, meta, action::CACHE_PURGE, Outcome::Success).detail(format!("entries: {removed}"));
        audit.provider = Some(provider.id.clone());
        self.audit.append(audit).await?;
        Ok(removed)
    }
}

fn percent(used: u64, limit: u64) -> u64 {
    used.saturating_mul(100).checked_div(limit).unwrap_or(100)
}

fn hit_rate(counts: &UsageCounts) -> Option<f64> {
    let answered = counts.requests + counts.cache_hits;
    (answered > 0).then(|| counts.cache_hits as f64 / answered as f64)
}
