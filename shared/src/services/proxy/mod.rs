//! The proxy: `/proxy/{provider}/{path}` with the workspace's key injected (DESIGN.md §4).
//!
//! One request: check the path and query → resolve the key (decrypted keys are kept in memory
//! for at most 60 s) → look in the response cache → ONE conditional write that checks the key is
//! still current, counts the request against the limits and records usage → forward to the
//! catalog's fixed base URL → redact the answer → turn provider errors into the envelope → store
//! the answer in the cache where a rule allows. What is learnt only from the answer (status
//! class, latency, tokens) rides along with the next write (`pending_usage`).

mod admission;
mod caching;
mod failure;
mod headers;
pub mod key_cache;
mod pending_usage;
mod streaming;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::domain::access::{Caller, RequestMeta, Role};
use crate::domain::audit::{AuditDraft, Outcome, action};
use crate::domain::catalog::{Catalog, InjectionKind, Provider, TestOutcome};
use crate::domain::environment::Environment;
use crate::domain::keys::{KeyStatus, TestResult};
use crate::domain::llm_usage::{self, SseUsageReader, TokenUsage};
use crate::domain::metering::{Limits, MeterKey, UsageCounts, UsageRecord};
use crate::domain::notifications::{Notification, NotificationKind};
use crate::domain::proxy_path::{self, PathRefusal};
use crate::domain::redaction::Redactor;
use crate::domain::response_cache::{CacheRequest, MAX_CACHED_BODY_BYTES, cache_key};
use crate::ports::{
    AuditLog, Binding, KeyStore, KeyVault, MeterStore, NotificationStore, ResponseCache, StoreError, UpstreamClient, UpstreamError,
    UpstreamRequest,
};

use super::upstreams::Upstreams;
use admission::quota_headers;
use caching::{CacheMode, cache_mode, cache_status, cached_answer};
pub use failure::{FailureDetails, ProxyFailure};
use failure::{Judgement, describe_failure, judge};
pub use key_cache::{KeyCache, ResolvedKey};
use pending_usage::PendingUsage;
use streaming::Streamer;

pub const ENVIRONMENT_HEADER: &str = "x-stockpulse-environment";
pub const CACHE_HEADER: &str = "x-stockpulse-cache";
pub const CACHE_TTL_HEADER: &str = "x-stockpulse-cache-ttl";
pub const QUOTA_REMAINING_HEADER: &str = "x-stockpulse-quota-remaining";
pub const QUOTA_LIMIT_HEADER: &str = "x-stockpulse-quota-limit";
/// How long a workspace's quota policy is trusted in memory (a change made through another
/// process takes effect within this time; through this process, at once).
const POLICY_TTL: Duration = Duration::from_secs(5);
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

pub struct ProxyService {
    pub catalog: &'static Catalog,
    pub keys: Arc<dyn KeyStore>,
    pub audit: Arc<dyn AuditLog>,
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
        audit: Arc<dyn AuditLog>,
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
            audit,
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
        if provider.admin_only && call.caller.role < Role::Admin {
            // Audited like the refusals of key management: fail closed if the entry cannot be
            // written (the caller is refused either way).
            let draft = AuditDraft::new(call.caller, call.meta, action::PROXY_CALL, Outcome::Denied)
                .target(&provider.id, environment, None)
                .detail("admin-only provider");
            self.audit.append(draft).await?;
            return Err(ProxyFailure::new(
                StatusCode::FORBIDDEN,
                "admin_only_provider",
                format!("only admins may use {} keys", provider.name),
            )
            .provider(&provider.id));
        }
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

        // Hashing a body of up to 6 MiB is only worth it when the answer may be cached.
        let cache_id = (cache_mode != CacheMode::Off).then(|| {
            cache_key(&CacheRequest {
                workspace: &call.caller.workspace,
                key_id: &forward.key.record.id,
                key_version: forward.key.record.key_version,
                environment,
                provider: &provider.id,
                method: call.method.as_str(),
                path: &forward.path,
                query: &forward.query,
                body: &call.body,
            })
        });
        let hit = match (cache_mode, &cache_id) {
            (CacheMode::Use(_), Some(id)) => {
                self.cache.get(&call.caller.workspace, &provider.id, id, Utc::now()).await.unwrap_or_else(|e| {
                    // A cache that cannot be read is a miss, not a failed request.
                    tracing::warn!(error = %e, "response cache read failed");
                    None
                })
            }
            _ => None,
        };
        let (counters, limits) = self.admit(&mut forward, hit.is_none()).await?;
        let mut quota_headers = quota_headers(&counters, &limits);
        if let Some(hit) = hit {
            quota_headers.push(cache_status("HIT"));
            return Ok(cached_answer(hit, quota_headers));
        }
        quota_headers.push(cache_status(match cache_mode {
            CacheMode::Use(_) => "MISS",
            _ => "BYPASS",
        }));
        self.forward(&forward, cache_mode, cache_id.as_deref(), quota_headers).await
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
        let redactor = Redactor::new(&credentials);
        let key = Arc::new(ResolvedKey { record, credentials, redactor });
        self.key_cache.insert(key.clone());
        Ok(key)
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
                    pairs.append_pair(&injection.name, &injection.fill(value.expose()));
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
                let mut value = HeaderValue::from_str(&injection.fill(value.expose())).map_err(|_| {
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
        cache_id: Option<&str>,
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
        let mut passed_headers = headers::returnable(&answer.headers, &forward.key.redactor);
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
                redactor: forward.key.redactor.stream(),
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
        let body = forward.key.redactor.bytes(&raw);
        drop(raw);
        let tokens =
            if provider.category == crate::domain::catalog::Category::Llm { llm_usage::from_body(&body) } else { TokenUsage::default() };
        let verdict = judge(provider, answer.status, &body, &forward.key.redactor);
        match verdict {
            Judgement::Pass => {
                self.record_outcome(forward, started, UsageCounts::default(), provider_limits, Some(&tokens));
                passed_headers.append(&mut our_headers);
                passed_headers.push((http::header::CACHE_CONTROL, HeaderValue::from_static("private, no-store")));
                if let (CacheMode::Use(ttl) | CacheMode::Refresh(ttl), Some(cache_id)) = (cache_mode, cache_id)
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
