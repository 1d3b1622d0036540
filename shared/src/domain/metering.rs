//! Rate limits, quotas and usage counters: the pure rules the proxy's one conditional write
//! follows (which windows a moment falls in, what is refused, when a threshold is crossed) and
//! the shapes stores keep.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::catalog::Provider;
use super::environment::Environment;

/// The limits of one workspace + provider + environment. `None` = no limit on that window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub requests_per_day: Option<u64>,
    #[serde(default)]
    pub requests_per_month: Option<u64>,
    /// LLM input + output tokens per calendar month (UTC).
    #[serde(default)]
    pub llm_tokens_per_month: Option<u64>,
}

impl Limits {
    /// The catalog's defaults: the provider's published free-tier limits, so that a workspace
    /// never burns a quota faster than the provider allows.
    pub fn defaults(provider: &Provider) -> Limits {
        let r = &provider.rate_limits;
        let per_minute = match (r.requests_per_minute, r.requests_per_second) {
            (Some(m), _) => Some(u64::from(m)),
            (None, Some(s)) => Some(u64::from(s) * 60),
            (None, None) => None,
        };
        Limits { requests_per_minute: per_minute, requests_per_day: r.requests_per_day.map(u64::from), ..Limits::default() }
    }

    pub fn get(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::RequestsPerMinute => self.requests_per_minute,
            LimitKind::RequestsPerDay => self.requests_per_day,
            LimitKind::RequestsPerMonth => self.requests_per_month,
            LimitKind::LlmTokensPerMonth => self.llm_tokens_per_month,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    RequestsPerMinute,
    RequestsPerDay,
    RequestsPerMonth,
    LlmTokensPerMonth,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] =
        [LimitKind::RequestsPerMinute, LimitKind::RequestsPerDay, LimitKind::RequestsPerMonth, LimitKind::LlmTokensPerMonth];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::RequestsPerDay => "requests_per_day",
            LimitKind::RequestsPerMonth => "requests_per_month",
            LimitKind::LlmTokensPerMonth => "llm_tokens_per_month",
        }
    }

    /// Quotas (day, month) notify at 80 % and 100 %; the per-minute rate limit does not, it
    /// resets too fast for a notification to help anyone.
    pub fn is_quota(self) -> bool {
        self != LimitKind::RequestsPerMinute
    }
}

/// What is metered: one workspace's use of one provider in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterKey {
    pub workspace: String,
    pub provider: String,
    pub environment: Environment,
}

/// The UTC windows a moment falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub day: NaiveDate,
    /// First day of the month.
    pub month: NaiveDate,
}

impl Windows {
    pub fn of(now: DateTime<Utc>) -> Windows {
        let day = now.date_naive();
        Windows { minute: now.timestamp().div_euclid(60), day, month: day.with_day(1).unwrap_or(day) }
    }

    /// `2026-11` — the month's id in stores.
    pub fn month_id(&self) -> String {
        self.month.format("%Y-%m").to_string()
    }

    /// `2026-11-25` — the day's id in stores.
    pub fn day_id(&self) -> String {
        self.day.format("%Y-%m-%d").to_string()
    }

    /// When the window of `kind` that contains this moment ends.
    pub fn window_end(&self, kind: LimitKind) -> DateTime<Utc> {
        let midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
        match kind {
            LimitKind::RequestsPerMinute => Utc.timestamp_opt((self.minute + 1) * 60, 0).single().unwrap_or_default(),
            LimitKind::RequestsPerDay => midnight(self.day + Duration::days(1)),
            LimitKind::RequestsPerMonth | LimitKind::LlmTokensPerMonth => {
                let next = if self.month.month() == 12 {
                    NaiveDate::from_ymd_opt(self.month.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(self.month.year(), self.month.month() + 1, 1)
                };
                midnight(next.unwrap_or(self.month))
            }
        }
    }

    /// Whole seconds (at least 1) until the window of `kind` resets: the `Retry-After` of a 429.
    pub fn retry_after(&self, kind: LimitKind, now: DateTime<Utc>) -> u64 {
        let left = self.window_end(kind) - now;
        let secs = left.num_seconds() + i64::from(left.subsec_nanos() > 0 || now.nanosecond() > 0);
        secs.max(1) as u64
    }
}

/// The counters of one meter in the windows of one moment, after an admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counters {
    pub requests_this_minute: u64,
    pub requests_today: u64,
    pub requests_this_month: u64,
    pub llm_tokens_this_month: u64,
}

impl Counters {
    pub fn get(&self, kind: LimitKind) -> u64 {
        match kind {
            LimitKind::RequestsPerMinute => self.requests_this_minute,
            LimitKind::RequestsPerDay => self.requests_today,
            LimitKind::RequestsPerMonth => self.requests_this_month,
            LimitKind::LlmTokensPerMonth => self.llm_tokens_this_month,
        }
    }

    /// The limit a request would break, checked before counting it (tokens are counted after
    /// the answer, so a month whose tokens reached the quota refuses further requests).
    pub fn breaks(&self, limits: &Limits) -> Option<LimitKind> {
        LimitKind::ALL.into_iter().find(|k| limits.get(*k).is_some_and(|limit| self.get(*k) >= limit))
    }

    /// What is left in the tightest limited window: `(remaining, which)`.
    pub fn remaining(&self, limits: &Limits) -> Option<(u64, LimitKind)> {
        LimitKind::ALL.into_iter().filter_map(|k| limits.get(k).map(|l| (l.saturating_sub(self.get(k)), k))).min_by_key(|(left, _)| *left)
    }
}

/// A threshold (80 % or 100 %) of a quota that a counter has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    pub kind: LimitKind,
    pub percent: u8,
    pub limit: u64,
}

/// The thresholds a counter of `kind` at `count` has reached. Callers notify once per threshold
/// and window (the notification's dedupe key makes that hold across processes).
pub fn thresholds_reached(kind: LimitKind, limit: Option<u64>, count: u64) -> Vec<Crossing> {
    let Some(limit) = limit.filter(|l| *l > 0 && kind.is_quota()) else { return Vec::new() };
    [80u8, 100]
        .into_iter()
        .filter(|percent| count >= (limit * u64::from(*percent)).div_ceil(100))
        .map(|percent| Crossing { kind, percent, limit })
        .collect()
}

/// Upper bounds (milliseconds) of the latency buckets; one more bucket holds everything slower.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

pub fn latency_bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The upper bound of the bucket holding the `q`-quantile (0 < q ≤ 1); `None` with no samples.
/// The slowest bucket reports its lower bound (it has no upper one).
pub fn latency_quantile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]));
        }
    }
    None
}

/// Additive usage counters of one meter and day. Stores add these field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageCounts {
    /// Requests forwarded to the provider (these count against the request limits).
    pub requests: u64,
    /// Requests answered from the cache.
    pub cache_hits: u64,
    /// Requests refused by this workspace's own limits (429 without calling the provider).
    pub rate_limited: u64,
    /// Answers by class: the provider refused the key (401/403).
    pub auth_errors: u64,
    /// Other 4xx answers of the provider (including its own 429).
    pub client_errors: u64,
    /// 5xx answers of the provider and "200 with an error body" answers.
    pub server_errors: u64,
    /// No answer: timeouts, refused connections.
    pub network_errors: u64,
    /// Latency histogram of forwarded requests (see `LATENCY_BOUNDS_MS`); always
    /// `LATENCY_BUCKETS` long, or empty when nothing was measured.
    pub latency_ms_buckets: Vec<u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Estimated cost in millionths of a US dollar, where the catalog has prices.
    pub cost_micro_usd: u64,
}

impl UsageCounts {
    pub fn add(&mut self, other: &UsageCounts) {
        self.requests += other.requests;
        self.cache_hits += other.cache_hits;
        self.rate_limited += other.rate_limited;
        self.auth_errors += other.auth_errors;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.network_errors += other.network_errors;
        if !other.latency_ms_buckets.is_empty() {
            self.latency_ms_buckets.resize(LATENCY_BUCKETS, 0);
            for (mine, theirs) in self.latency_ms_buckets.iter_mut().zip(&other.latency_ms_buckets) {
                *mine += theirs;
            }
        }
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_micro_usd += other.cost_micro_usd;
    }

    pub fn record_latency(&mut self, ms: u64) {
        self.latency_ms_buckets.resize(LATENCY_BUCKETS, 0);
        self.latency_ms_buckets[latency_bucket(ms)] += 1;
    }

    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    pub fn is_empty(&self) -> bool {
        *self == UsageCounts::default()
    }
}

/// Usage to add to one meter's day (and its tokens to the month's token quota).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub meter: MeterKey,
    pub day: NaiveDate,
    pub counts: UsageCounts,
    /// The provider's own rate-limit headers from the latest answer (`x-ratelimit-remaining-requests`,
    /// ...), with when they were seen; stores keep the latest. Empty: nothing new.
    pub provider_limits: BTreeMap<String, String>,
    pub observed_at: DateTime<Utc>,
}

/// The stored usage of one meter and day, as `GET /api/usage` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageDay {
    pub provider: String,
    pub environment: Environment,
    /// `YYYY-MM-DD` (UTC).
    #[schema(value_type = String)]
    pub day: NaiveDate,
    #[serde(flatten)]
    pub counts: UsageCounts,
    /// The provider's rate-limit headers from the latest answer of that day.
    pub provider_limits: BTreeMap<String, String>,
    pub provider_limits_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_and_retry_after() {
        let now = at("2026-12-31T23:59:30.250Z");
        let w = Windows::of(now);
        assert_eq!((w.day_id(), w.month_id()), ("2026-12-31".to_owned(), "2026-12".to_owned()));
        assert_eq!(w.retry_after(LimitKind::RequestsPerMinute, now), 30);
        assert_eq!(w.retry_after(LimitKind::RequestsPerDay, now), 30);
        assert_eq!(w.window_end(LimitKind::RequestsPerMonth), at("2027-01-01T00:00:00Z"));
        let exact = at("2026-11-25T10:00:00Z");
        assert_eq!(Windows::of(exact).retry_after(LimitKind::RequestsPerMinute, exact), 60);
    }

    #[test]
    fn limits_counters_and_crossings() {
        let limits = Limits { requests_per_minute: Some(50), requests_per_day: Some(10), ..Limits::default() };
        let mut c = Counters { requests_this_minute: 3, requests_today: 9, ..Counters::default() };
        assert_eq!(c.breaks(&limits), None);
        assert_eq!(c.remaining(&limits), Some((1, LimitKind::RequestsPerDay)));
        c.requests_today = 10;
        assert_eq!(c.breaks(&limits), Some(LimitKind::RequestsPerDay));
        let percents = |count| thresholds_reached(LimitKind::RequestsPerDay, Some(10), count).iter().map(|c| c.percent).collect::<Vec<_>>();
        assert_eq!(percents(7), Vec::<u8>::new());
        assert_eq!(percents(8), [80]);
        assert_eq!(percents(10), [80, 100]);
        assert_eq!(thresholds_reached(LimitKind::RequestsPerDay, Some(7), 6).len(), 1, "80 % of 7 rounds up to 6");
        assert_eq!(thresholds_reached(LimitKind::RequestsPerMinute, Some(10), 10), []);
        assert_eq!(thresholds_reached(LimitKind::RequestsPerDay, None, 8), []);
    }

    #[test]
    fn latency_histogram_quantiles() {
        let mut u = UsageCounts::default();
        for ms in [1, 2, 3, 4, 40, 40, 40, 90, 400, 60_000] {
            u.record_latency(ms);
        }
        assert_eq!(latency_quantile(&u.latency_ms_buckets, 0.5), Some(50));
        assert_eq!(latency_quantile(&u.latency_ms_buckets, 0.95), Some(30_000));
        assert_eq!(latency_quantile(&[], 0.5), None);
        let mut total = UsageCounts::default();
        total.add(&u);
        total.add(&u);
        assert_eq!(total.latency_ms_buckets.iter().sum::<u64>(), 20);
    }
}
