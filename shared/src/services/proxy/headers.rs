//! Which headers cross the proxy, in each direction.
//!
//! Inbound, the client's credentials and anything that names hosts or framing are dropped: the
//! provider gets only the key the catalog injects. Outbound, cookies, framing and headers that
//! would bind our origin to the provider's policies (HSTS, CORS, Alt-Svc) are dropped, every value
//! is redacted, and caching by browsers or shared caches is forbidden (answers are per tenant).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::domain::catalog::{InjectionKind, Provider, catalog};
use crate::domain::redaction::Redactor;

/// Framing and connection headers: each hop sets its own, in both directions.
const HOP_BY_HOP: &[&str] =
    &["content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Never forwarded upstream, whatever the provider (besides `HOP_BY_HOP`).
const INBOUND_DROPPED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "expect",
    // The HTTP client asks for the encodings it can decode, so bodies can be redacted.
    "accept-encoding",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "origin",
    "referer",
];

const INBOUND_DROPPED_PREFIXES: &[&str] = &["x-stockpulse-", "x-amz", "x-amzn-", "cloudfront-", "cf-", "sec-"];

/// Never passed back to the client (besides `HOP_BY_HOP`).
const OUTBOUND_DROPPED: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "alt-svc",
    "strict-transport-security",
    "public-key-pins",
    "location",
    "content-location",
    "refresh",
    "www-authenticate",
    "proxy-authenticate",
    "cache-control",
    "expires",
    "pragma",
    "age",
    "etag",
    "last-modified",
    "vary",
    "server-timing",
    "report-to",
    "nel",
];

const OUTBOUND_DROPPED_PREFIXES: &[&str] = &["access-control-", "x-stockpulse-"];

/// Every header any catalog provider reads a key from: a client's own credentials never reach
/// any provider, whichever one it calls.
static KEY_HEADERS: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let mut names: BTreeSet<String> = catalog()
        .providers
        .iter()
        .flat_map(|p| p.auth.iter())
        .filter(|i| i.kind == InjectionKind::Header)
        .map(|i| i.name.to_ascii_lowercase())
        .collect();
    names.extend(["x-api-key", "api-key", "apikey", "x-goog-api-key", "x-auth-token"].map(str::to_owned));
    names
});

/// Every query parameter any catalog provider reads a key from, and the usual spellings of one:
/// dropped from every proxied query, whichever provider it goes to (several providers accept a
/// key in the query besides the way the catalog injects it).
static KEY_QUERY_PARAMETERS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut names: BTreeSet<String> = catalog()
        .providers
        .iter()
        .flat_map(|p| p.auth.iter())
        .filter(|i| i.kind == InjectionKind::Query)
        .map(|i| i.name.to_ascii_lowercase())
        .collect();
    names.extend(["apikey", "api_key", "api_token", "access_token"].map(str::to_owned));
    names.into_iter().collect()
});

pub fn key_query_parameters() -> Vec<&'static str> {
    KEY_QUERY_PARAMETERS.iter().map(String::as_str).collect()
}

/// The client's headers that may go to `provider`.
pub fn forwardable(provider: &Provider, inbound: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let connection_listed: BTreeSet<String> = inbound
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    let ours: BTreeSet<String> = provider.static_headers.iter().map(|h| h.name.to_ascii_lowercase()).collect();
    inbound
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !HOP_BY_HOP.contains(&name)
                && !INBOUND_DROPPED.contains(&name)
                && !INBOUND_DROPPED_PREFIXES.iter().any(|p| name.starts_with(p))
                && !KEY_HEADERS.contains(name)
                && !ours.contains(name)
                && !connection_listed.contains(name)
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// The provider's headers that may go to the client, each value redacted.
pub fn returnable(outbound: &HeaderMap, redactor: &Redactor) -> Vec<(HeaderName, HeaderValue)> {
    outbound
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !HOP_BY_HOP.contains(&name)
                && !OUTBOUND_DROPPED.contains(&name)
                && !OUTBOUND_DROPPED_PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .filter_map(|(name, value)| {
            let redacted = redactor.bytes(value.as_bytes());
            HeaderValue::from_bytes(&redacted).ok().map(|v| (name.clone(), v))
        })
        .collect()
}

/// The provider's own rate-limit headers (`x-ratelimit-remaining-requests`,
/// `anthropic-ratelimit-tokens-remaining`, `retry-after`, ...), kept in usage.
pub fn provider_limits(outbound: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    outbound
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name.contains("ratelimit") || name.contains("rate-limit") || name == "retry-after" || name.starts_with("x-quota")
        })
        .filter_map(|(name, value)| value.to_str().ok().map(|v| (name.as_str().to_owned(), v.chars().take(200).collect())))
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::{Credentials, KeyMaterial};

    #[test]
    fn client_credentials_and_framing_never_go_upstream() {
        let mut inbound = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer client-token"),
            ("cookie", "session=1"),
            ("x-api-key", "client-key"),
            ("apca-api-key-id", "client-alpaca"),
            ("x-goog-api-key", "client-gemini"),
            ("anthropic-version", "1999-01-01"),
            ("x-stockpulse-environment", "production"),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("content-type", "application/json"),
            ("anthropic-beta", "tools-2024"),
            ("accept", "application/json"),
        ] {
            inbound.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let anthropic = catalog().provider("anthropic").unwrap();
        let kept: Vec<String> = forwardable(anthropic, &inbound).into_iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(kept, ["content-type", "anthropic-beta", "accept"]);
    }

    #[test]
    fn answers_lose_cookies_and_keys() {
        let mut c = Credentials::new();
        c.insert("api_key", KeyMaterial::new("sk-canary-header-0001".into()));
        let mut outbound = HeaderMap::new();
        outbound.insert("set-cookie", HeaderValue::from_static("a=b"));
        outbound.insert("x-echo", HeaderValue::from_static("key=sk-canary-header-0001"));
        outbound.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("99"));
        outbound.insert("content-type", HeaderValue::from_static("application/json"));
        let back = returnable(&outbound, &Redactor::new(&c));
        assert!(back.iter().all(|(n, _)| n != "set-cookie"));
        let echo = back.iter().find(|(n, _)| n == "x-echo").unwrap();
        assert_eq!(echo.1, "key=[REDACTED]");
        assert_eq!(provider_limits(&outbound).get("x-ratelimit-remaining-requests").map(String::as_str), Some("99"));
    }
}
