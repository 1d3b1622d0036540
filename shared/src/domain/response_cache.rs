//! The proxy's response cache: which requests may be answered from it, and the key an answer is
//! stored under. The key covers the workspace, so one tenant can never read another's answers.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::catalog::Provider;
use super::environment::Environment;

/// Answers larger than this are not cached (DynamoDB items stop at 400 KB).
pub const MAX_CACHED_BODY_BYTES: usize = 256 * 1024;
/// The longest TTL a request may ask for with `X-StockPulse-Cache-TTL`.
pub const MAX_REQUESTED_TTL_SECONDS: u32 = 24 * 3600;

/// A stored answer (already redacted). Headers are the ones the proxy passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stored_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The parts of a request that decide which answer it gets.
pub struct CacheRequest<'a> {
    pub workspace: &'a str,
    pub environment: Environment,
    pub provider: &'a str,
    pub method: &'a str,
    /// Normalized path, relative to the provider's base URL.
    pub path: &'a str,
    /// Query pairs without the provider's key parameter, in any order (they are sorted here).
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

/// SHA-256 over every part, each length-prefixed so that no two different requests share an
/// encoding. Hex.
pub fn cache_key(request: &CacheRequest<'_>) -> String {
    let mut query: Vec<&(String, String)> = request.query.iter().collect();
    query.sort();
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    part(b"stockpulse-cache-v1");
    part(request.workspace.as_bytes());
    part(request.environment.as_str().as_bytes());
    part(request.provider.as_bytes());
    part(request.method.as_bytes());
    part(request.path.as_bytes());
    part(&(query.len() as u64).to_be_bytes());
    for (name, value) in query {
        part(name.as_bytes());
        part(value.as_bytes());
    }
    part(request.body);
    hex::encode(hasher.finalize())
}

/// The catalog's TTL for a request, if one of the provider's rules covers it: the method
/// matches and the path is the rule's prefix or lies below it.
pub fn catalog_ttl(provider: &Provider, method: &str, path: &str) -> Option<u32> {
    provider
        .cache
        .iter()
        .filter(|rule| rule.method.eq_ignore_ascii_case(method))
        .filter(|rule| {
            let prefix = rule.path_prefix.trim_end_matches('/');
            path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        })
        .map(|rule| rule.ttl_seconds)
        .max_by_key(|ttl| *ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::catalog;

    fn req<'a>(workspace: &'a str, query: &'a [(String, String)]) -> CacheRequest<'a> {
        CacheRequest { workspace, environment: Environment::Production, provider: "fmp", method: "GET", path: "/quote", query, body: b"" }
    }

    #[test]
    fn keys_cover_the_workspace_and_ignore_query_order() {
        let a = [("symbol".to_owned(), "AAPL".to_owned()), ("x".to_owned(), "1".to_owned())];
        let b = [("x".to_owned(), "1".to_owned()), ("symbol".to_owned(), "AAPL".to_owned())];
        assert_eq!(cache_key(&req("ws-a", &a)), cache_key(&req("ws-a", &b)));
        assert_ne!(cache_key(&req("ws-a", &a)), cache_key(&req("ws-b", &a)));
        // Length prefixes: moving a character between parts changes the key.
        let c = [("symbolA".to_owned(), "APL".to_owned())];
        let d = [("symbol".to_owned(), "AAPL".to_owned())];
        assert_ne!(cache_key(&req("ws-a", &c)), cache_key(&req("ws-a", &d)));
    }

    #[test]
    fn catalog_rules_match_by_method_and_path_prefix() {
        let fmp = catalog().provider("fmp").unwrap();
        assert_eq!(catalog_ttl(fmp, "GET", "/quote"), Some(30));
        assert_eq!(catalog_ttl(fmp, "GET", "/quote/AAPL"), Some(30));
        assert_eq!(catalog_ttl(fmp, "GET", "/quotes"), None);
        assert_eq!(catalog_ttl(fmp, "POST", "/quote"), None);
        assert_eq!(catalog_ttl(catalog().provider("openai").unwrap(), "POST", "/chat/completions"), None);
    }
}
