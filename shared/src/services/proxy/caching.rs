//! How the response cache takes part in a request: its mode from the catalog and the request's
//! headers, answers served from it, answers stored in it.

use chrono::Utc;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::domain::catalog::Provider;
use crate::domain::response_cache::{CachedAnswer, MAX_REQUESTED_TTL_SECONDS, catalog_ttl};

use super::{AnswerBody, CACHE_HEADER, CACHE_TTL_HEADER, Forward, ProxyAnswer, ProxyCall, ProxyFailure, ProxyService};

/// How the cache takes part in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheMode {
    /// Not cacheable, or `Cache-Control: no-store`.
    Off,
    /// `Cache-Control: no-cache`: skip the read, store the fresh answer.
    Refresh(u32),
    Use(u32),
}

pub(super) fn cache_status(value: &'static str) -> (HeaderName, HeaderValue) {
    (HeaderName::from_static(CACHE_HEADER), HeaderValue::from_static(value))
}

pub(super) fn cached_answer(hit: CachedAnswer, ours: Vec<(HeaderName, HeaderValue)>) -> ProxyAnswer {
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

pub(super) fn cache_mode(provider: &Provider, call: &ProxyCall<'_>, path: &str) -> Result<CacheMode, ProxyFailure> {
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

impl ProxyService {
    pub(super) async fn store_in_cache(
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
}
