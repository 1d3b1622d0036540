//! The proxy: `/proxy/{provider}/{path}` with the workspace's key injected (DESIGN.md §4).
//!
//! One request: check the path and query → resolve the key (decrypted keys are kept in memory
//! for at most 60 s) → look in the response cache → ONE conditional write that checks the key is
//! still current, counts the request against the limits and records usage → forward to the
//! catalog's fixed base URL → redact the answer → turn provider errors into the envelope → store
//! the answer in the cache where a rule allows. What is learnt only from the answer (status
//! class, latency, tokens) rides along with the next write (`pending_usage`).

mod headers;
pub mod key_cache;
mod pending_usage;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::domain::access::{Caller, RequestMeta, Role};
use crate::domain::audit::{AuditDraft, Outcome, action};
use crate::domain::catalog::{Catalog, InjectionKind, Provider, TestOutcome};
use crate::domain::environment::Environment;
use crate::domain::keys::{KeyStatus, TestResult};
use crate::domain::llm_usage::{self, SseUsageReader, TokenUsage};
use crate::domain::metering::{Counters, LimitKind, Limits, MeterKey, UsageCounts, UsageRecord, Windows, thresholds_reached};
use crate::domain::notifications::{Notification, NotificationKind};
use crate::domain::proxy_path::{self, PathRefusal};
use crate::domain::redaction::{StreamRedactor, redact};
use crate::domain::response_cache::{CacheRequest, CachedAnswer, MAX_CACHED_BODY_BYTES, MAX_REQUESTED_TTL_SECONDS, cache_key, catalog_ttl};
use crate::domain::secret::Credentials;
use crate::ports::{
    Admission, Binding, KeyStore, KeyVault, MeterStore, NotificationStore, ResponseCache, StoreError, UpstreamClient, UpstreamError,
    UpstreamRequest, Verdict,
};

use super::connection_test::interpret;
use super::upstreams::Upstreams;
pub use key_cache::{KeyCache, ResolvedKey};
use pending_usage::PendingUsage;

pub const ENVIRONMENT_HEADER: &str = "x-stockpulse-environment";
pub const CACHE_HEADER: &str = "x-stockpulse-cache";
pub const CACHE_TTL_HEADER: &str = "x-stockpulse-cache-ttl";
pub const QUOTA_REMAINING_HEADER: &str = "x-stockpulse-quota-remaining";
pub const QUOTA_LIMIT_HEADER: &str = "x-stockpulse-quota-limit";
/// How long a workspace's quota policy is trusted in memory (a change made through another
/// process takes effect within this time; through this process, at once).
const POLICY_TTL: Duration = Duration::from_secs(5);
const MAX_PROVIDER_MESSAGE_CHARS: usize = 500;
/// Earlier outcomes one admission write carries at most (the rest wait for the next write).
const MAX_CARRIED_RECORDS: usize = 24;

#[derive(Debug, Clone, Copy)]
pub struct ProxyLimits {
    /// Largest request body forwarded (the Lambda payload limit by default).
    pub max_request_bytes: usize,
    /// Largest answer body passed back (streams are not limited, they are passed on as they come).
    pub max_response_bytes: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits { max_request_bytes: 6 * 1024 * 1024, max_response_bytes: 6 * 1024 * 1024 }
    }
}

/// One proxied request as the HTTP layer hands it over.
pub struct ProxyCall<'a> {
    pub caller: &'a Caller,
    pub meta: &'a RequestMeta,
    pub provider: &'a str,
    /// The raw path below `/proxy/{provider}` (still percent-encoded), `""` for none.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: Method,
    pub headers: &'a HeaderMap,
    pub body: Vec<u8>,
}

pub enum AnswerBody {
    Full(Vec<u8>),
    /// Chunks as they arrive (server-sent events), already redacted.
    Stream(tokio::sync::mpsc::Receiver<Vec<u8>>),
}

pub struct ProxyAnswer {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: AnswerBody,
}

/// A refused or failed proxied request, for the error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Boxed: failures travel through every `?` of the proxy path and most carry few details.
    pub details: Box<FailureDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureDetails {
    pub field: Option<String>,
    pub provider: Option<String>,
    pub upstream_status: Option<u16>,
    /// The provider's own message, with every key value redacted.
    pub provider_message: Option<String>,
    pub limit: Option<LimitKind>,
    pub retry_after: Option<u64>,
    /// Headers the answer still carries (`X-StockPulse-Quota-Remaining`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ProxyFailure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ProxyFailure {
        ProxyFailure { status, code, message: message.into(), details: Box::default() }
    }

    fn provider(mut self, provider: &str) -> ProxyFailure {
        self.details.provider = Some(provider.to_owned());
        self
    }
}

impl From<StoreError> for ProxyFailure {
    fn from(e: StoreError) -> ProxyFailure {
        tracing::error!(error = %e, "store failed on the proxy path");
        ProxyFailure::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the key store is unavailable; try again shortly")
    }
}

/// How the cache takes part in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheMode {
    /// Not cacheable, or `Cache-Control: no-store`.
    Off,
    /// `Cache-Control: no-cache`: skip the read, store the fresh answer.
    Refresh(u32),
    Use(u32),
}

pub struct ProxyService {
    pub catalog: &'static Catalog,
    pub keys: Arc<dyn KeyStore>,
    pub vault: Arc<dyn KeyVault>,
    pub meter: Arc<dyn MeterStore>,
    pub cache: Arc<dyn ResponseCache>,
    pub notifications: Arc<dyn NotificationStore>,
    pub upstream: Arc<dyn UpstreamClient>,
    pub upstreams: Upstreams,
    pub key_cache: Arc<KeyCache>,
    pub limits: ProxyLimits,
    pending: Arc<PendingUsage>,
    policies: Mutex<HashMap<MeterKey, (Limits, Instant)>>,
    /// Dedupe keys this process already notified (the store's dedupe makes it exact across
    /// processes; this only saves the write).
    notified: Mutex<HashSet<String>>,
}

struct Forward<'a> {
    provider: &'static Provider,
    environment: Environment,
    key: Arc<ResolvedKey>,
    meter: MeterKey,
    path: String,
    query: Vec<(String, String)>,
    call: &'a ProxyCall<'a>,
}

impl ProxyService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: &'static Catalog,
        keys: Arc<dyn KeyStore>,
        vault: Arc<dyn KeyVault>,
        meter: Arc<dyn MeterStore>,
        cache: Arc<dyn ResponseCache>,
        notifications: Arc<dyn NotificationStore>,
        upstream: Arc<dyn UpstreamClient>,
        upstreams: Upstreams,
        key_cache: Arc<KeyCache>,
        limits: ProxyLimits,
    ) -> ProxyService {
        ProxyService {
            catalog,
            keys,
            vault,
            meter,
            cache,
            notifications,
            upstream,
            upstreams,
            key_cache,
            limits,
            pending: Arc::new(PendingUsage::default()),
            policies: Mutex::new(HashMap::new()),
            notified: Mutex::new(HashSet::new()),
        }
    }

    pub async fn handle(&self, call: ProxyCall<'_>) -> Result<ProxyAnswer, ProxyFailure> {
        let provider = self.catalog.provider(call.provider).ok_or_else(|| {
            ProxyFailure::new(StatusCode::NOT_FOUND, "unknown_provider", "no such provider; GET /api/providers lists them")
        })?;
        if provider.admin_only && call.caller.role < Role::Admin {
            return Err(ProxyFailure::new(
                StatusCode::FORBIDDEN,
                "admin_only_provider",
                format!("only admins may use {} keys", provider.name),
            )
            .provider(&provider.id));
        }
        let environment = match call.headers.get(ENVIRONMENT_HEADER).map(|v| v.to_str().unwrap_or("")) {
            None => Environment::Production,
            Some(value) => Environment::parse(value.trim()).ok_or_else(|| {
                let mut f = ProxyFailure::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_environment",
                    "X-StockPulse-Environment must be production or development",
                );
                f.details.field = Some("X-StockPulse-Environment".into());
                f
            })?,
        };
        let refuse = |r: PathRefusal| {
            let mut f = ProxyFailure::new(StatusCode::BAD_REQUEST, "invalid_proxy_path", r.to_string()).provider(&provider.id);
            f.details.field = Some("path".into());
            f
        };
        let path = proxy_path::normalize_path(call.path).map_err(refuse)?;
        let query = proxy_path::query_pairs(call.query, &headers::key_query_parameters()).map_err(refuse)?;
        if call.body.len() > self.limits.max_request_bytes {
            return Err(ProxyFailure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {} bytes", self.limits.max_request_bytes),
            ));
        }
        let header_bytes: usize = call.headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        if header_bytes > 16 * 1024 {
            return Err(ProxyFailure::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "the request headers are larger than 16 KiB",
            ));
        }
        let cache_mode = cache_mode(provider, &call, &path)?;
        let meter = MeterKey { workspace: call.caller.workspace.clone(), provider: provider.id.clone(), environment };
        let key = self.resolve(&call.caller.workspace, provider, environment, false).await?;
        let mut forward = Forward { provider, environment, key, meter, path, query, call: &call };

        let cache_id = cache_key(&CacheRequest {
            workspace: &call.caller.workspace,
            environment,
            provider: &provider.id,
            method: call.method.as_str(),
            path: &forward.path,
            query: &forward.query,
            body: &call.body,
        });
        let hit = match cache_mode {
            CacheMode::Use(_) => self.cache.get(&call.caller.workspace, &provider.id, &cache_id, Utc::now()).await.unwrap_or_else(|e| {
                // A cache that cannot be read is a miss, not a failed request.
                tracing::warn!(error = %e, "response cache read failed");
                None
            }),
            _ => None,
        };
        let counters = self.admit(&mut forward, hit.is_none()).await?;
        let limits = self.limits_for(&forward.meter).await?;
        let mut quota_headers = quota_headers(&counters, &limits);
        if let Some(hit) = hit {
            quota_headers.push(cache_status("HIT"));
            return Ok(cached_answer(hit, quota_headers));
        }
        quota_headers.push(cache_status(match cache_mode {
            CacheMode::Use(_) => "MISS",
            _ => "BYPASS",
        }));
        self.forward(&forward, cache_mode, &cache_id, quota_headers).await
    }

    /// Writes out the usage this process still holds (at shutdown, or on a timer).
    pub async fn flush_usage(&self) -> Result<(), StoreError> {
        let records = self.pending.take();
        if records.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.meter.record_usage(&records).await {
            self.pending.restore(records);
            return Err(e);
        }
        Ok(())
    }

    /// The effective limits of a meter: the workspace's policy, else the catalog's defaults.
    pub async fn limits_for(&self, meter: &MeterKey) -> Result<Limits, StoreError> {
        if let Some((limits, at)) = self.policies.lock().unwrap_or_else(|p| p.into_inner()).get(meter)
            && at.elapsed() < POLICY_TTL
        {
            return Ok(*limits);
        }
        let limits = match self.meter.policy(meter).await? {
            Some(limits) => limits,
            None => self.catalog.provider(&meter.provider).map(Limits::defaults).unwrap_or_default(),
        };
        self.policies.lock().unwrap_or_else(|p| p.into_inner()).insert(meter.clone(), (limits, Instant::now()));
        Ok(limits)
    }

    /// Forgets a cached policy (after this process changed it).
    pub fn forget_policy(&self, meter: &MeterKey) {
        self.policies.lock().unwrap_or_else(|p| p.into_inner()).remove(meter);
    }

    async fn resolve(
        &self,
        workspace: &str,
        provider: &'static Provider,
        environment: Environment,
        fresh: bool,
    ) -> Result<Arc<ResolvedKey>, ProxyFailure> {
        if !fresh && let Some(key) = self.key_cache.get(workspace, &provider.id, environment) {
            return Ok(key);
        }
        let record = self.keys.find_slot(workspace, &provider.id, environment).await?.ok_or_else(|| {
            ProxyFailure::new(
                StatusCode::NOT_FOUND,
                "no_key",
                format!("this workspace has no {} key for {}; add one first", provider.name, environment.as_str()),
            )
            .provider(&provider.id)
        })?;
        if matches!(record.status, KeyStatus::Revoked | KeyStatus::Pending) {
            return Err(ProxyFailure::new(
                StatusCode::FORBIDDEN,
                "key_not_usable",
                format!("the {} key is {}; it cannot be used", provider.name, record.status.as_str()),
            )
            .provider(&provider.id));
        }
        let sealed = self.keys.material(workspace, &record.id, record.key_version).await?.ok_or_else(|| {
            tracing::error!(key_id = %record.id, "key record without material");
            ProxyFailure::new(StatusCode::SERVICE_UNAVAILABLE, "key_unreadable", "the stored key cannot be read; save it again")
        })?;
        let binding = Binding { workspace, key_id: &record.id, version: record.key_version };
        let credentials = self.vault.open(binding, &sealed).await.map_err(|e| {
            tracing::error!(key_id = %record.id, error = %e, "opening key material failed");
            ProxyFailure::new(StatusCode::SERVICE_UNAVAILABLE, "vault_unavailable", "the key vault is unavailable; try again shortly")
        })?;
        let key = Arc::new(ResolvedKey { record, credentials });
        self.key_cache.insert(key.clone());
        Ok(key)
    }

    /// The request's one write. A key that changed since it was cached is reloaded once.
    async fn admit(&self, forward: &mut Forward<'_>, counted: bool) -> Result<Counters, ProxyFailure> {
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
                    return Ok(counters);
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

    fn usage_record(&self, meter: &MeterKey, now: DateTime<Utc>, counts: UsageCounts) -> UsageRecord {
        UsageRecord { meter: meter.clone(), day: now.date_naive(), counts, provider_limits: BTreeMap::new(), observed_at: now }
    }

    /// 80 % and 100 % of a quota: one notification (with its audit entry) per threshold and window.
    async fn notify_thresholds(&self, forward: &Forward<'_>, limits: &Limits, counters: &Counters, now: DateTime<Utc>) {
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

    fn upstream_request(&self, forward: &Forward<'_>) -> Result<UpstreamRequest, ProxyFailure> {
        let provider = forward.provider;
        let base = self.upstreams.base_url(provider, forward.environment);
        let mut url = proxy_path::join(&base, &forward.path)
            .map_err(|e| ProxyFailure::new(StatusCode::BAD_REQUEST, "invalid_proxy_path", e.to_string()).provider(&provider.id))?;
        let credentials = &forward.key.credentials;
        {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in &forward.query {
                pairs.append_pair(name, value);
            }
            for injection in provider.auth.iter().filter(|i| i.kind == InjectionKind::Query) {
                if let Some(value) = credentials.get(&injection.field) {
                    pairs.append_pair(&injection.name, &injection.template.replace("{value}", value.expose()));
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut headers = headers::forwardable(provider, forward.call.headers);
        let bad_catalog =
            || ProxyFailure::new(StatusCode::BAD_GATEWAY, "provider_misconfigured", "the provider's catalog entry is invalid");
        for header in &provider.static_headers {
            let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| bad_catalog())?;
            headers.push((name, HeaderValue::from_str(&header.value).map_err(|_| bad_catalog())?));
        }
        for injection in provider.auth.iter().filter(|i| i.kind == InjectionKind::Header) {
            if let Some(value) = credentials.get(&injection.field) {
                let name = HeaderName::from_bytes(injection.name.as_bytes()).map_err(|_| bad_catalog())?;
                let mut value = HeaderValue::from_str(&injection.template.replace("{value}", value.expose())).map_err(|_| {
                    ProxyFailure::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "key_not_sendable",
                        "the stored key cannot be sent as a header; edit it",
                    )
                })?;
                value.set_sensitive(true);
                headers.push((name, value));
            }
        }
        let mut body = forward.call.body.clone();
        if provider.category == crate::domain::catalog::Category::Llm
            && let Some(with_usage) = llm_usage::with_stream_usage(&body)
            && provider.id != "anthropic"
            && provider.id != "gemini"
        {
            body = with_usage;
        }
        let has_body = !body.is_empty() || matches!(forward.call.method, Method::POST | Method::PUT | Method::PATCH);
        Ok(UpstreamRequest { method: forward.call.method.clone(), url, headers, body: has_body.then_some(body) })
    }

    async fn forward(
        &self,
        forward: &Forward<'_>,
        cache_mode: CacheMode,
        cache_id: &str,
        mut our_headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<ProxyAnswer, ProxyFailure> {
        let provider = forward.provider;
        let request = self.upstream_request(forward)?;
        let started = Instant::now();
        let opened = self.upstream.open(request).await;
        let mut answer = match opened {
            Ok(answer) => answer,
            Err(e) => {
                let mut counts = UsageCounts { network_errors: 1, ..UsageCounts::default() };
                counts.record_latency(started.elapsed().as_millis() as u64);
                self.pending.add(self.usage_record(&forward.meter, Utc::now(), counts));
                let (status, code) = match e {
                    UpstreamError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
                    _ => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
                };
                let mut failure = ProxyFailure::new(status, code, format!("{}: {e}", provider.name)).provider(&provider.id);
                failure.details.headers = our_headers;
                return Err(failure);
            }
        };
        let credentials = &forward.key.credentials;
        let provider_limits = headers::provider_limits(&answer.headers);
        if answer.headers.contains_key(http::header::CONTENT_ENCODING) {
            // An encoding the client could not decode for us: its body cannot be redacted.
            let mut failure = ProxyFailure::new(
                StatusCode::BAD_GATEWAY,
                "upstream_encoding_unsupported",
                format!("{} answered with a content encoding the proxy cannot read", provider.name),
            )
            .provider(&provider.id);
            failure.details.upstream_status = Some(answer.status);
            return Err(failure);
        }
        let mut passed_headers = headers::returnable(&answer.headers, credentials);
        let is_stream = (200..300).contains(&answer.status)
            && answer
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        if is_stream {
            passed_headers.append(&mut our_headers);
            passed_headers.push((http::header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
            let (sender, receiver) = tokio::sync::mpsc::channel(32);
            let streamer = Streamer {
                pending: self.pending.clone(),
                meter: forward.meter.clone(),
                provider,
                redactor: StreamRedactor::new(credentials),
                usage: SseUsageReader::default(),
                started,
                provider_limits,
            };
            tokio::spawn(streamer.run(answer.body, sender));
            return Ok(ProxyAnswer { status: answer.status, headers: passed_headers, body: AnswerBody::Stream(receiver) });
        }

        let mut raw = Vec::new();
        loop {
            match answer.body.next_chunk().await {
                Ok(Some(chunk)) => {
                    raw.extend_from_slice(&chunk);
                    if raw.len() > self.limits.max_response_bytes {
                        let mut failure = ProxyFailure::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_answer_too_large",
                            format!("{} answered with more than {} bytes", provider.name, self.limits.max_response_bytes),
                        )
                        .provider(&provider.id);
                        failure.details.upstream_status = Some(answer.status);
                        self.record_outcome(
                            forward,
                            started,
                            UsageCounts { server_errors: 1, ..Default::default() },
                            provider_limits,
                            None,
                        );
                        return Err(failure);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.record_outcome(forward, started, UsageCounts { network_errors: 1, ..Default::default() }, provider_limits, None);
                    let status = if e == UpstreamError::Timeout { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
                    return Err(ProxyFailure::new(status, "upstream_interrupted", format!("{}: {e}", provider.name)).provider(&provider.id));
                }
            }
        }
        let body = crate::domain::redaction::redact_bytes(&raw, credentials);
        drop(raw);
        let tokens =
            if provider.category == crate::domain::catalog::Category::Llm { llm_usage::from_body(&body) } else { TokenUsage::default() };
        let verdict = judge(provider, answer.status, &answer.headers, &body, credentials);
        match verdict {
            Judgement::Pass => {
                self.record_outcome(forward, started, UsageCounts::default(), provider_limits, Some(&tokens));
                passed_headers.append(&mut our_headers);
                passed_headers.push((http::header::CACHE_CONTROL, HeaderValue::from_static("private, no-store")));
                if let CacheMode::Use(ttl) | CacheMode::Refresh(ttl) = cache_mode
                    && (200..300).contains(&answer.status)
                    && body.len() <= MAX_CACHED_BODY_BYTES
                {
                    self.store_in_cache(forward, cache_id, ttl, answer.status, &passed_headers, &body).await;
                }
                Ok(ProxyAnswer { status: answer.status, headers: passed_headers, body: AnswerBody::Full(body) })
            }
            Judgement::Fail { status, code, class, key_refused, message } => {
                self.record_outcome(forward, started, class, provider_limits, Some(&tokens));
                if key_refused {
                    self.mark_invalid(forward, answer.status, message.as_deref(), started.elapsed()).await;
                }
                let mut failure = ProxyFailure::new(status, code, describe_failure(provider, code, answer.status)).provider(&provider.id);
                failure.details.upstream_status = Some(answer.status);
                failure.details.provider_message = message;
                if status == StatusCode::TOO_MANY_REQUESTS {
                    failure.details.retry_after =
                        answer.headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse().ok());
                }
                failure.details.headers = our_headers;
                Err(failure)
            }
        }
    }

    fn record_outcome(
        &self,
        forward: &Forward<'_>,
        started: Instant,
        mut counts: UsageCounts,
        provider_limits: BTreeMap<String, String>,
        tokens: Option<&TokenUsage>,
    ) {
        counts.record_latency(started.elapsed().as_millis() as u64);
        if let Some(tokens) = tokens {
            counts.input_tokens = tokens.input_tokens;
            counts.output_tokens = tokens.output_tokens;
            counts.cost_micro_usd = tokens.cost_micro_usd(forward.provider);
        }
        let now = Utc::now();
        self.pending.add(UsageRecord { meter: forward.meter.clone(), day: now.date_naive(), counts, provider_limits, observed_at: now });
    }

    async fn store_in_cache(
        &self,
        forward: &Forward<'_>,
        cache_id: &str,
        ttl: u32,
        status: u16,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) {
        let now = Utc::now();
        let answer = CachedAnswer {
            status,
            headers: headers
                .iter()
                .filter(|(n, _)| !n.as_str().starts_with("x-stockpulse-") && *n != http::header::CACHE_CONTROL)
                .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_owned(), v.to_owned())))
                .collect(),
            body: body.to_vec(),
            stored_at: now,
            expires_at: now + chrono::Duration::seconds(i64::from(ttl)),
        };
        if let Err(e) = self.cache.put(&forward.meter.workspace, &forward.provider.id, cache_id, &answer).await {
            tracing::warn!(error = %e, "response cache write failed");
        }
    }

    /// The provider refused the key: the key is marked invalid (with its audit entry) and the
    /// workspace notified, once per key version and day.
    async fn mark_invalid(&self, forward: &Forward<'_>, upstream_status: u16, message: Option<&str>, latency: Duration) {
        let record = &forward.key.record;
        self.key_cache.evict_key(&record.workspace, &record.id);
        let now = Utc::now();
        let result = TestResult {
            ok: false,
            status: TestOutcome::Invalid,
            message: format!(
                "{} refused the key on a proxied request (HTTP {upstream_status}){}",
                forward.provider.name,
                message.map(|m| format!(": {m}")).unwrap_or_default()
            ),
            latency_ms: latency.as_millis() as u64,
            upstream_status: Some(upstream_status),
            tested_at: now,
        };
        let audit = AuditDraft::new(forward.call.caller, forward.call.meta, action::KEY_INVALIDATED, Outcome::Success)
            .target(&record.provider, record.environment, Some(&record.id))
            .fingerprint(&record.fingerprint)
            .detail(format!("upstream_status: {upstream_status}"));
        if record.status != KeyStatus::Invalid
            && let Err(e) = self.keys.record_test(&record.workspace, &record.id, &result, KeyStatus::Invalid, audit).await
        {
            tracing::warn!(error = %e, "could not mark the key invalid");
            return;
        }
        let dedupe_key = format!("key_invalid:{}:{}:{}", record.id, record.key_version, now.date_naive());
        if !self.notified.lock().unwrap_or_else(|p| p.into_inner()).insert(dedupe_key.clone()) {
            return;
        }
        let notification = Notification {
            id: uuid::Uuid::now_v7().to_string(),
            workspace: record.workspace.clone(),
            kind: NotificationKind::KeyInvalid,
            provider: record.provider.clone(),
            environment: record.environment,
            key_id: Some(record.id.clone()),
            message: result.message.clone(),
            created_at: now,
            read_at: None,
            dedupe_key,
        };
        if let Err(e) = self.notifications.notify(&notification, None).await {
            tracing::warn!(error = %e, "key-invalid notification failed");
        }
    }
}

fn cache_status(value: &'static str) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(CACHE_HEADER), HeaderValue::from_static(value))
}

fn quota_headers(counters: &Counters, limits: &Limits) -> Vec<(HeaderName, HeaderValue)> {
    match counters.remaining(limits) {
        Some((left, kind)) => vec![
            (HeaderName::from_static(QUOTA_REMAINING_HEADER), HeaderValue::from(left)),
            (HeaderName::from_static(QUOTA_LIMIT_HEADER), HeaderValue::from_static(kind.as_str())),
        ],
        None => vec![(HeaderName::from_static(QUOTA_REMAINING_HEADER), HeaderValue::from_static("unlimited"))],
    }
}

fn cached_answer(hit: CachedAnswer, ours: Vec<(HeaderName, HeaderValue)>) -> ProxyAnswer {
    let mut headers: Vec<(HeaderName, HeaderValue)> = hit
        .headers
        .iter()
        .filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
        .collect();
    headers.extend(ours);
    let age = (Utc::now() - hit.stored_at).num_seconds().max(0) as u64;
    headers.push((http::header::AGE, HeaderValue::from(age)));
    headers.push((http::header::CACHE_CONTROL, HeaderValue::from_static("private, no-store")));
    ProxyAnswer { status: hit.status, headers, body: AnswerBody::Full(hit.body) }
}

fn cache_mode(provider: &Provider, call: &ProxyCall<'_>, path: &str) -> Result<CacheMode, ProxyFailure> {
    let requested = match call.headers.get(CACHE_TTL_HEADER) {
        None => None,
        Some(value) => {
            let ttl = value.to_str().ok().and_then(|v| v.trim().parse::<u32>().ok()).filter(|t| *t <= MAX_REQUESTED_TTL_SECONDS);
            let Some(ttl) = ttl else {
                let mut f = ProxyFailure::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cache_ttl",
                    format!("X-StockPulse-Cache-TTL must be a number of seconds from 0 to {MAX_REQUESTED_TTL_SECONDS}"),
                );
                f.details.field = Some("X-StockPulse-Cache-TTL".into());
                return Err(f);
            };
            Some(ttl)
        }
    };
    let ttl = match requested {
        Some(0) => return Ok(CacheMode::Off),
        Some(ttl) => Some(ttl),
        None => catalog_ttl(provider, call.method.as_str(), path),
    };
    let Some(ttl) = ttl else { return Ok(CacheMode::Off) };
    let directives: Vec<String> = call
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    Ok(if directives.iter().any(|d| d == "no-store") {
        CacheMode::Off
    } else if directives.iter().any(|d| d == "no-cache") {
        CacheMode::Refresh(ttl)
    } else {
        CacheMode::Use(ttl)
    })
}

enum Judgement {
    Pass,
    Fail { status: StatusCode, code: &'static str, class: UsageCounts, key_refused: bool, message: Option<String> },
}

/// Reads a provider's answer: 2xx passes unless the catalog says the body is an error ("HTTP
/// 200 with an error body"); anything else becomes an envelope with the provider's message.
fn judge(provider: &Provider, status: u16, headers: &HeaderMap, body: &[u8], credentials: &Credentials) -> Judgement {
    let response = crate::ports::UpstreamResponse { status, headers: headers.clone(), body: body.to_vec() };
    let (outcome, message) = interpret(provider, &response);
    let message = message.map(|m| redact(&m, credentials).chars().take(MAX_PROVIDER_MESSAGE_CHARS).collect::<String>());
    let fail = |status: StatusCode, code: &'static str, class: UsageCounts, key_refused: bool| Judgement::Fail {
        status,
        code,
        class,
        key_refused,
        message: message.clone(),
    };
    let server = UsageCounts { server_errors: 1, ..UsageCounts::default() };
    let client = UsageCounts { client_errors: 1, ..UsageCounts::default() };
    let auth = UsageCounts { auth_errors: 1, ..UsageCounts::default() };
    match (status, outcome) {
        // For a 2xx answer, only a catalog rule gives another outcome than `valid`.
        (200..=299, TestOutcome::Valid) => Judgement::Pass,
        (_, TestOutcome::Invalid) => fail(StatusCode::BAD_GATEWAY, "upstream_key_invalid", auth, true),
        (_, TestOutcome::Forbidden) => fail(StatusCode::BAD_GATEWAY, "upstream_forbidden", auth, false),
        (_, TestOutcome::RateLimited) => fail(StatusCode::TOO_MANY_REQUESTS, "upstream_rate_limited", client, false),
        (300..=399, _) => fail(StatusCode::BAD_GATEWAY, "upstream_redirect", server, false),
        (400..=499, _) => {
            let passed = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            fail(passed, "upstream_rejected", client, false)
        }
        (200..=299, _) => fail(StatusCode::BAD_GATEWAY, "upstream_error_body", server, false),
        _ => fail(StatusCode::BAD_GATEWAY, "upstream_error", server, false),
    }
}

fn describe_failure(provider: &Provider, code: &str, status: u16) -> String {
    let name = &provider.name;
    match code {
        "upstream_key_invalid" => {
            format!("{name} refused the workspace's key (HTTP {status}); the key is marked invalid — replace or re-test it")
        }
        "upstream_forbidden" => format!("{name} knows the key but it lacks permission or plan for this request (HTTP {status})"),
        "upstream_rate_limited" => format!("{name} is rate limiting this key (HTTP {status}); try again later"),
        "upstream_redirect" => format!("{name} answered with a redirect (HTTP {status}); redirects are never followed"),
        "upstream_rejected" => format!("{name} rejected the request (HTTP {status})"),
        "upstream_error_body" => format!("{name} answered HTTP {status} with an error in the body"),
        _ => format!("{name} answered with an error (HTTP {status})"),
    }
}

/// Passes a server-sent event stream on chunk by chunk, redacting and counting tokens, and
/// records the outcome when the stream ends.
struct Streamer {
    pending: Arc<PendingUsage>,
    meter: MeterKey,
    provider: &'static Provider,
    redactor: StreamRedactor,
    usage: SseUsageReader,
    started: Instant,
    provider_limits: BTreeMap<String, String>,
}

impl Streamer {
    async fn run(mut self, mut source: Box<dyn crate::ports::ChunkSource>, sender: tokio::sync::mpsc::Sender<Vec<u8>>) {
        let mut counts = UsageCounts::default();
        loop {
            match source.next_chunk().await {
                Ok(Some(chunk)) => {
                    self.usage.feed(&chunk);
                    let out = self.redactor.push_lines(&chunk);
                    if !out.is_empty() && sender.send(out).await.is_err() {
                        // The client went away; the provider is still billing what it produced.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(provider = %self.provider.id, error = %e, "stream from the provider broke off");
                    counts.network_errors = 1;
                    break;
                }
            }
        }
        let tail = self.redactor.finish();
        if !tail.is_empty() {
            let _ = sender.send(tail).await;
        }
        self.usage.finish();
        let tokens = &self.usage.usage;
        counts.input_tokens = tokens.input_tokens;
        counts.output_tokens = tokens.output_tokens;
        counts.cost_micro_usd = tokens.cost_micro_usd(self.provider);
        counts.record_latency(self.started.elapsed().as_millis() as u64);
        let now = Utc::now();
        self.pending.add(UsageRecord {
            meter: self.meter,
            day: now.date_naive(),
            counts,
            provider_limits: self.provider_limits,
            observed_at: now,
        });
    }
}
