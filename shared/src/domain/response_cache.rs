//! The proxy's response cache: which requests may be answered from it, and the key an answer is
//! stored under. The key covers the workspace, so one tenant can never read another's answers,
//! and the stored key's id and material version the answer was fetched with, so an answer of a
//! replaced, rotated or revoked key is never served for the key that follows it — also when the
//! purge that follows a key change failed (it is best effort).

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
    /// The stored key the request is sent with, and its material version.
    pub key_id: &'a str,
    pub key_version: u32,
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
    part(b"stockpulse-cache-v2");
    part(request.workspace.as_bytes());
    part(request.key_id.as_bytes());
    part(&request.key_version.to_be_bytes());
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
        CacheRequest {
            workspace,
            key_id: "key-1",
            key_version: 1,
            environment: Environment::Production,
            provider: "fmp",
            method: "GET",
            path: "/quote",
            query,
            body: b"",
        }
    }

    #[test]
    fn keys_cover_the_stored_key_and_its_material_version() {
        let query = [("symbol".to_owned(), "AAPL".to_owned())];
        let base = cache_key(&req("ws-a", &query));
        assert_ne!(base, cache_key(&CacheRequest { key_version: 2, ..req("ws-a", &query) }), "a rotated key");
        assert_ne!(base, cache_key(&CacheRequest { key_id: "key-2", ..req("ws-a", &query) }), "another key in the slot");
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

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Request {
        workspace: String,
        environment: Environment,
        provider: String,
        method: String,
        path: String,
        query: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Request {
        fn key(&self) -> String {
            cache_key(&CacheRequest {
                workspace: &self.workspace,
                key_id: "key-1",
                key_version: 1,
                environment: self.environment,
                provider: &self.provider,
                method: &self.method,
                path: &self.path,
                query: &self.query,
                body: &self.body,
            })
        }

        /// What must decide the answer: every part, the query as a multiset.
        fn canonical(&self) -> Request {
            let mut query = self.query.clone();
            query.sort();
            Request { query, ..self.clone() }
        }
    }

    /// Tiny alphabets, so that two independent requests are often equal, or equal but for one part.
    fn tiny_request() -> impl Strategy<Value = Request> {
        let text = || "[ab]{0,2}";
        (
            text(),
            prop::sample::select(Environment::ALL.to_vec()),
            text(),
            text(),
            text(),
            prop::collection::vec((text(), text()), 0..3),
            prop::collection::vec(0u8..2, 0..3),
        )
            .prop_map(|(workspace, environment, provider, method, path, query, body)| Request {
                workspace,
                environment,
                provider,
                method,
                path,
                query,
                body,
            })
    }

    /// The same text in provider, method, path and the query's names and values, cut into those
    /// parts at other places: what an encoding without lengths could not tell apart.
    fn resplit(request: &Request, cuts: &[prop::sample::Index]) -> Request {
        let mut parts = vec![request.provider.clone(), request.method.clone(), request.path.clone()];
        parts.extend(request.query.iter().flat_map(|(name, value)| [name.clone(), value.clone()]));
        let text: String = parts.concat();
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
        at.sort();
        let bounds: Vec<usize> = std::iter::once(0).chain(at).chain(std::iter::once(text.len())).collect();
        let parts: Vec<String> = bounds.windows(2).map(|w| text[w[0]..w[1]].to_owned()).collect();
        Request {
            provider: parts[0].clone(),
            method: parts[1].clone(),
            path: parts[2].clone(),
            query: parts[3..].chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect(),
            ..request.clone()
        }
    }

    fn realistic_request() -> impl Strategy<Value = Request> {
        (
            "ws-[a-z0-9]{1,12}|\\PC{0,16}",
            prop::sample::select(Environment::ALL.to_vec()),
            "[a-z]{2,10}",
            prop::sample::select(vec!["GET", "POST", "get", "HEAD"]),
            "(/[a-zA-Z0-9._:-]{1,8}){0,4}",
            prop::collection::vec(("[a-z_]{1,8}", "\\PC{0,8}"), 0..5),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(workspace, environment, provider, method, path, query, body)| Request {
                workspace,
                environment,
                provider,
                method: method.to_owned(),
                path,
                query,
                body,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn requests_of_different_workspaces_never_share_a_key(request in realistic_request(), other in "ws-[a-z0-9]{1,12}|\\PC{0,16}") {
            // The stores also file entries under the workspace; the key alone already separates them.
            prop_assume!(other != request.workspace);
            let elsewhere = Request { workspace: other, ..request.clone() };
            prop_assert_ne!(request.key(), elsewhere.key());
        }

        #[test]
        fn the_same_request_always_gets_the_same_key(
            (request, shuffled) in realistic_request().prop_flat_map(|r| (Just(r.clone()), Just(r.query).prop_shuffle())),
        ) {
            let reordered = Request { query: shuffled, ..request.clone() };
            prop_assert_eq!(request.key(), request.clone().key());
            prop_assert_eq!(request.key(), reordered.key(), "the query's order changed the key");
            prop_assert!(request.key().len() == 64 && request.key().bytes().all(|b| b.is_ascii_hexdigit()));
        }

        #[test]
        fn keys_are_equal_exactly_when_the_requests_are(a in tiny_request(), b in tiny_request()) {
            prop_assert_eq!(a.key() == b.key(), a.canonical() == b.canonical(), "{:?} / {:?}", a, b);
        }

        #[test]
        fn moving_where_one_part_ends_and_the_next_begins_changes_the_key(
            (a, cuts) in tiny_request().prop_flat_map(|a| {
                let parts = 3 + 2 * a.query.len();
                (Just(a), prop::collection::vec(any::<prop::sample::Index>(), parts - 1))
            }),
        ) {
            let b = resplit(&a, &cuts);
            prop_assert_eq!(a.key() == b.key(), a.canonical() == b.canonical(), "{:?} / {:?}", a, b);
        }
    }
}
