//! The `ResponseCache` contract: answers stored per workspace + provider + key, with expiry.

use chrono::{DateTime, Duration, Utc};
use stockpulse_shared::domain::response_cache::CachedAnswer;

use super::{ProxyStores, workspace};

/// Runs every check of the suite as its own `#[tokio::test]`, against the `ProxyStores` that
/// `$make` (an async expression) builds.
#[macro_export]
macro_rules! response_cache_conformance {
    ($make:expr) => {
        $crate::response_cache_conformance!(@tests $make;
            put_get_round_trip,
            expired_entries_are_not_answered,
            other_workspaces_and_providers_do_not_share_entries,
            put_replaces,
            purge_removes_only_that_workspace_and_provider,
        );
    };
    (@tests $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let stores = $make.await;
                $crate::conformance::response_cache::$name(&stores).await;
            }
        )+
    };
}

/// Whole seconds, so that every store keeps the instants exactly.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("a valid instant")
}

fn answer(body: &[u8], stored_at: DateTime<Utc>, ttl_seconds: i64) -> CachedAnswer {
    CachedAnswer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into()), ("x-upstream-id".into(), "a1".into())],
        body: body.to_vec(),
        stored_at,
        expires_at: stored_at + Duration::seconds(ttl_seconds),
    }
}

pub async fn put_get_round_trip(stores: &ProxyStores) {
    let ws = workspace("cache-roundtrip");
    let t = now();
    let mut stored = answer(b"{\"price\": 1.5}", t, 30);
    stored.status = 203;
    stored.body.extend_from_slice(&[0, 0xff, 0xfe]);
    stores.cache.put(&ws, "fmp", "k1", &stored).await.unwrap();
    assert_eq!(stores.cache.get(&ws, "fmp", "k1", t + Duration::seconds(10)).await.unwrap(), Some(stored));
    assert_eq!(stores.cache.get(&ws, "fmp", "k2", t).await.unwrap(), None);
    let empty = CachedAnswer { headers: vec![], body: vec![], ..answer(b"", t, 30) };
    stores.cache.put(&ws, "fmp", "empty", &empty).await.unwrap();
    assert_eq!(stores.cache.get(&ws, "fmp", "empty", t).await.unwrap(), Some(empty), "an empty answer is still an answer");
}

pub async fn expired_entries_are_not_answered(stores: &ProxyStores) {
    let ws = workspace("cache-expiry");
    let t = now();
    stores.cache.put(&ws, "fmp", "k", &answer(b"old", t, 30)).await.unwrap();
    assert!(stores.cache.get(&ws, "fmp", "k", t + Duration::seconds(29)).await.unwrap().is_some());
    assert_eq!(stores.cache.get(&ws, "fmp", "k", t + Duration::seconds(30)).await.unwrap(), None, "expires_at itself is expired");
    assert_eq!(stores.cache.get(&ws, "fmp", "k", t + Duration::seconds(3600)).await.unwrap(), None);
}

pub async fn other_workspaces_and_providers_do_not_share_entries(stores: &ProxyStores) {
    let ours = workspace("cache-iso-a");
    let theirs = workspace("cache-iso-b");
    let t = now();
    stores.cache.put(&ours, "fmp", "same-key", &answer(b"ours", t, 60)).await.unwrap();
    assert_eq!(stores.cache.get(&theirs, "fmp", "same-key", t).await.unwrap(), None);
    assert_eq!(stores.cache.get(&ours, "finnhub", "same-key", t).await.unwrap(), None);
    stores.cache.put(&theirs, "fmp", "same-key", &answer(b"theirs", t, 60)).await.unwrap();
    assert_eq!(stores.cache.get(&ours, "fmp", "same-key", t).await.unwrap().unwrap().body, b"ours");
    assert_eq!(stores.cache.get(&theirs, "fmp", "same-key", t).await.unwrap().unwrap().body, b"theirs");
}

pub async fn put_replaces(stores: &ProxyStores) {
    let ws = workspace("cache-replace");
    let t = now();
    stores.cache.put(&ws, "fmp", "k", &answer(b"first", t, 60)).await.unwrap();
    let second = answer(b"second", t + Duration::seconds(5), 10);
    stores.cache.put(&ws, "fmp", "k", &second).await.unwrap();
    assert_eq!(stores.cache.get(&ws, "fmp", "k", t + Duration::seconds(6)).await.unwrap(), Some(second));
    assert_eq!(stores.cache.get(&ws, "fmp", "k", t + Duration::seconds(20)).await.unwrap(), None, "the new expiry applies");
}

pub async fn purge_removes_only_that_workspace_and_provider(stores: &ProxyStores) {
    let ours = workspace("cache-purge-a");
    let theirs = workspace("cache-purge-b");
    let t = now();
    for key in ["k1", "k2", "k3"] {
        stores.cache.put(&ours, "fmp", key, &answer(b"x", t, 600)).await.unwrap();
    }
    stores.cache.put(&ours, "finnhub", "k1", &answer(b"other provider", t, 600)).await.unwrap();
    stores.cache.put(&theirs, "fmp", "k1", &answer(b"other workspace", t, 600)).await.unwrap();
    assert_eq!(stores.cache.purge(&ours, "fmp").await.unwrap(), 3);
    for key in ["k1", "k2", "k3"] {
        assert_eq!(stores.cache.get(&ours, "fmp", key, t).await.unwrap(), None);
    }
    assert!(stores.cache.get(&ours, "finnhub", "k1", t).await.unwrap().is_some());
    assert!(stores.cache.get(&theirs, "fmp", "k1", t).await.unwrap().is_some());
    assert_eq!(stores.cache.purge(&ours, "fmp").await.unwrap(), 0);
}
