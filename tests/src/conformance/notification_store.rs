//! The `NotificationStore` contract: deduplicated notifications with their audit entries, listed
//! newest first, marked read once.

use chrono::{DateTime, Duration, Utc};
use stockpulse_shared::domain::audit::{ChainVerifier, action};
use stockpulse_shared::domain::environment::Environment;
use stockpulse_shared::domain::notifications::{Notification, NotificationKind};
use stockpulse_shared::ports::StoreError;

use super::key_store::draft;
use super::{ProxyStores, workspace};

/// Runs every check of the suite as its own `#[tokio::test]`, against the `ProxyStores` that
/// `$make` (an async expression) builds.
#[macro_export]
macro_rules! notification_store_conformance {
    ($make:expr) => {
        $crate::notification_store_conformance!(@tests $make;
            notify_and_list_newest_first_in_pages,
            unread_only_lists_unread,
            a_dedupe_key_notifies_once,
            the_audit_entry_is_in_the_chain,
            mark_read_sets_read_at_once,
            mark_read_of_unknown_or_foreign_ids_is_not_found,
        );
    };
    (@tests $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let stores = $make.await;
                $crate::conformance::notification_store::$name(&stores).await;
            }
        )+
    };
}

/// Whole seconds, so that every store keeps the instants exactly.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("a valid instant")
}

fn notification(ws: &str, dedupe_key: &str) -> Notification {
    Notification {
        id: uuid::Uuid::now_v7().to_string(),
        workspace: ws.to_owned(),
        kind: NotificationKind::QuotaWarning,
        provider: "fmp".into(),
        environment: Environment::Production,
        key_id: Some("key-1".into()),
        message: "80 % of the daily quota of fmp (production) is used".into(),
        created_at: now(),
        read_at: None,
        dedupe_key: dedupe_key.to_owned(),
    }
}

/// Stores `count` notifications, oldest first; returns their ids in that order.
async fn notify_many(stores: &ProxyStores, ws: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let item = notification(ws, &format!("quota:fmp:production:requests_per_day:day-{n}:80"));
        assert_eq!(stores.notifications.notify(&item, None).await.unwrap(), Some(item.clone()));
        ids.push(item.id);
    }
    ids
}

/// Every id of the workspace's list, page by page (`limit` per page), and the number of pages.
async fn list_all(stores: &ProxyStores, ws: &str, unread_only: bool, limit: usize) -> (Vec<String>, usize) {
    let (mut seen, mut pages, mut before) = (Vec::new(), 0, None::<String>);
    loop {
        let page = stores.notifications.notifications(ws, unread_only, before.as_deref(), limit).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= limit);
        seen.extend(page.items.iter().map(|n| n.id.clone()));
        match page.next {
            Some(next) => before = Some(next),
            None => return (seen, pages),
        }
    }
}

pub async fn notify_and_list_newest_first_in_pages(stores: &ProxyStores) {
    let ws = workspace("notify-list");
    let ids = notify_many(stores, &ws, 5).await;
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let (seen, pages) = list_all(stores, &ws, false, 2).await;
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);
    let whole = stores.notifications.notifications(&ws, false, None, 10).await.unwrap();
    assert_eq!(whole.next, None);
    assert_eq!(whole.items[0].id, ids[4]);
    assert_eq!(whole.items[0].dedupe_key, "quota:fmp:production:requests_per_day:day-4:80", "every field comes back");
    assert_eq!(whole.items[0].workspace, ws);
    let after_second = stores.notifications.notifications(&ws, false, Some(&ids[3]), 10).await.unwrap();
    assert_eq!(after_second.items.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), newest_first[2..]);
    assert!(stores.notifications.notifications(&workspace("notify-empty"), false, None, 10).await.unwrap().items.is_empty());
}

pub async fn unread_only_lists_unread(stores: &ProxyStores) {
    let ws = workspace("notify-unread");
    let ids = notify_many(stores, &ws, 5).await;
    for id in [&ids[1], &ids[3]] {
        stores.notifications.mark_read(&ws, id, now()).await.unwrap();
    }
    let (unread, _) = list_all(stores, &ws, true, 2).await;
    assert_eq!(unread, [ids[4].clone(), ids[2].clone(), ids[0].clone()]);
    let (all, _) = list_all(stores, &ws, false, 2).await;
    assert_eq!(all.len(), 5);
}

pub async fn a_dedupe_key_notifies_once(stores: &ProxyStores) {
    let ws = workspace("notify-dedupe");
    let key = "quota:fmp:production:requests_per_day:2026-11-25:80";
    let first = notification(&ws, key);
    let audit = || Some(draft(&ws, action::QUOTA_THRESHOLD, "fmp", None));
    assert_eq!(stores.notifications.notify(&first, audit()).await.unwrap(), Some(first.clone()));
    let mut again = notification(&ws, key);
    again.message = "a concurrent writer's copy".into();
    assert_eq!(stores.notifications.notify(&again, audit()).await.unwrap(), None);
    let listed = stores.notifications.notifications(&ws, false, None, 10).await.unwrap().items;
    assert_eq!(listed, [first]);
    assert_eq!(stores.audit.chain_slice(&ws, 0, 10).await.unwrap().len(), 1, "the refused duplicate wrote no audit entry");
    // Dedupe keys are per workspace.
    let elsewhere = notification(&workspace("notify-dedupe-b"), key);
    assert!(stores.notifications.notify(&elsewhere, None).await.unwrap().is_some());
}

pub async fn the_audit_entry_is_in_the_chain(stores: &ProxyStores) {
    let ws = workspace("notify-audit");
    stores.audit.append(draft(&ws, action::KEY_TEST_CANDIDATE, "fmp", None)).await.unwrap();
    let item = notification(&ws, "key_invalid:fmp:production:key-1");
    let audit = draft(&ws, action::QUOTA_THRESHOLD, "fmp", Some("key-1")).detail("percent: 80");
    stores.notifications.notify(&item, Some(audit)).await.unwrap().expect("stored");
    stores.notifications.notify(&notification(&ws, "without-audit"), None).await.unwrap().expect("stored");
    let chain = stores.audit.chain_slice(&ws, 0, 10).await.unwrap();
    assert_eq!(chain.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), [action::KEY_TEST_CANDIDATE, action::QUOTA_THRESHOLD]);
    assert_eq!(chain[1].detail.as_deref(), Some("percent: 80"));
    let mut verifier = ChainVerifier::new();
    chain.iter().for_each(|e| verifier.feed(e));
    let report = verifier.finish(stores.audit.chain_head(&ws).await.unwrap());
    assert!(report.ok, "{report:?}");
}

pub async fn mark_read_sets_read_at_once(stores: &ProxyStores) {
    let ws = workspace("notify-read");
    let item = notification(&ws, "read-me");
    stores.notifications.notify(&item, None).await.unwrap();
    let first_read = now() + Duration::seconds(5);
    let read = stores.notifications.mark_read(&ws, &item.id, first_read).await.unwrap();
    assert_eq!(read, Notification { read_at: Some(first_read), ..item.clone() });
    let again = stores.notifications.mark_read(&ws, &item.id, first_read + Duration::seconds(60)).await.unwrap();
    assert_eq!(again.read_at, Some(first_read), "the first read is kept");
    let listed = stores.notifications.notifications(&ws, false, None, 10).await.unwrap().items;
    assert_eq!(listed, [read]);
}

pub async fn mark_read_of_unknown_or_foreign_ids_is_not_found(stores: &ProxyStores) {
    let ours = workspace("notify-foreign-a");
    let theirs = workspace("notify-foreign-b");
    let item = notification(&theirs, "theirs");
    stores.notifications.notify(&item, None).await.unwrap();
    assert_eq!(stores.notifications.mark_read(&ours, &item.id, now()).await.unwrap_err(), StoreError::NotFound);
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(stores.notifications.mark_read(&theirs, &unknown, now()).await.unwrap_err(), StoreError::NotFound);
    let listed = stores.notifications.notifications(&theirs, true, None, 10).await.unwrap().items;
    assert_eq!(listed, [item], "still unread in its own workspace");
    assert!(stores.notifications.notifications(&ours, false, None, 10).await.unwrap().items.is_empty());
}
