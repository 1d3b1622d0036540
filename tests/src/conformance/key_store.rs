//! The `KeyStore` + `AuditLog` contract.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use stockpulse_shared::domain::access::{Caller, RequestMeta, Role};
use stockpulse_shared::domain::audit::{AuditDraft, ChainVerifier, Outcome, action};
use stockpulse_shared::domain::catalog::TestOutcome;
use stockpulse_shared::domain::environment::Environment;
use stockpulse_shared::domain::keys::{Actor, KeyRecord, KeyStatus, Revocation, TestResult};
use stockpulse_shared::ports::{AuditFilter, MaterialChange, SealedMaterial, StoreError};

use super::{Stores, workspace};

/// Runs every check of the suite as its own `#[tokio::test]`, against the `Stores` that
/// `$make` (an async expression) builds.
#[macro_export]
macro_rules! key_store_conformance {
    ($make:expr) => {
        $crate::key_store_conformance!(@tests $make;
            insert_get_and_material_round_trip,
            one_key_per_slot,
            updates_are_conditional_on_the_version,
            new_material_replaces_every_other_version,
            moving_into_a_taken_slot_is_refused,
            delete_is_conditional_and_removes_material,
            revoke_keeps_the_record_destroys_all_material_and_frees_the_slot,
            test_results_do_not_change_the_version,
            workspaces_are_isolated,
            list_pages_in_id_order,
            audit_chain_links_every_mutation,
            audit_list_filters_and_pages_newest_first,
            concurrent_updates_with_one_version_exactly_one_wins,
            concurrent_appends_keep_the_chain_whole,
            snapshot_shows_the_whole_workspace_and_it_checks_clean,
            scan_walks_every_workspace_in_order,
            staged_material_sits_beside_the_current_version_until_retained_away,
            replacing_material_keeps_only_the_record_version,
        );
    };
    (@tests $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let stores = $make.await;
                $crate::conformance::key_store::$name(&stores).await;
            }
        )+
    };
}

fn caller(ws: &str) -> Caller {
    Caller { sub: "sub-1".into(), email: "ana@example.com".into(), role: Role::Admin, workspace: ws.to_owned() }
}

pub(crate) fn draft(ws: &str, act: &str, provider: &str, key_id: Option<&str>) -> AuditDraft {
    AuditDraft::new(
        &caller(ws),
        &RequestMeta { request_id: "req-1".into(), source_ip: "127.0.0.1".into(), user_agent: "conformance".into() },
        act,
        Outcome::Success,
    )
    .target(provider, Environment::Production, key_id)
    .fingerprint("00112233445566778899aabbccddeeff")
}

/// A record as the key service would build it.
pub fn record(ws: &str, provider: &str, environment: Environment) -> KeyRecord {
    let now = Utc::now();
    let actor = Actor { sub: "sub-1".into(), email: "ana@example.com".into() };
    KeyRecord {
        id: uuid::Uuid::now_v7().to_string(),
        workspace: ws.to_owned(),
        provider: provider.to_owned(),
        environment,
        label: format!("{provider} key"),
        masked: BTreeMap::from([("api_key".to_owned(), "sk-********abcd".to_owned())]),
        fingerprint: "00112233445566778899aabbccddeeff".into(),
        status: KeyStatus::Active,
        key_version: 1,
        version: 1,
        warnings: vec![],
        created_by: actor.clone(),
        created_at: now,
        updated_by: actor,
        updated_at: now,
        last_used_at: None,
        last_verified_at: None,
        last_test: None,
        revocation: None,
        policy: Default::default(),
        pending: None,
        previous: None,
        last_rotation: None,
        rotated_at: None,
        highest_key_version: 1,
        rotation_due_at: None,
    }
}

pub(crate) fn sealed(tag: u8) -> SealedMaterial {
    SealedMaterial { scheme: "test-scheme".into(), blob: vec![tag; 48] }
}

async fn insert(stores: &Stores, r: &KeyRecord) {
    stores.keys.insert(r, &sealed(1), draft(&r.workspace, action::KEY_CREATE, &r.provider, Some(&r.id))).await.expect("insert");
}

pub async fn insert_get_and_material_round_trip(stores: &Stores) {
    let ws = workspace("roundtrip");
    let r = record(&ws, "openai", Environment::Production);
    let entry = stores.keys.insert(&r, &sealed(7), draft(&ws, action::KEY_CREATE, "openai", Some(&r.id))).await.unwrap();
    assert_eq!(entry.seq, 1);
    assert_eq!(stores.keys.get(&ws, &r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(stores.keys.find_slot(&ws, "openai", Environment::Production).await.unwrap(), Some(r.clone()));
    assert_eq!(stores.keys.find_slot(&ws, "openai", Environment::Development).await.unwrap(), None);
    assert!(stores.keys.material(&ws, &r.id, 1).await.unwrap() == Some(sealed(7)));
    assert!(stores.keys.material(&ws, &r.id, 2).await.unwrap().is_none());
    assert_eq!(stores.keys.get(&ws, "missing").await.unwrap(), None);
}

pub async fn one_key_per_slot(stores: &Stores) {
    let ws = workspace("slot");
    insert(stores, &record(&ws, "openai", Environment::Production)).await;
    let again = record(&ws, "openai", Environment::Production);
    let err = stores.keys.insert(&again, &sealed(2), draft(&ws, action::KEY_CREATE, "openai", Some(&again.id))).await.unwrap_err();
    assert_eq!(err, StoreError::SlotTaken);
    assert_eq!(stores.keys.get(&ws, &again.id).await.unwrap(), None, "nothing of the refused insert remains");
    assert!(stores.keys.material(&ws, &again.id, 1).await.unwrap().is_none());
    assert_eq!(stores.audit.chain_head(&ws).await.unwrap().map(|h| h.0), Some(1), "no audit entry for the refused insert");
    insert(stores, &record(&ws, "openai", Environment::Development)).await;
    insert(stores, &record(&workspace("slot-other"), "openai", Environment::Production)).await;
}

pub async fn updates_are_conditional_on_the_version(stores: &Stores) {
    let ws = workspace("update");
    let r = record(&ws, "groq", Environment::Production);
    insert(stores, &r).await;
    let mut next = r.clone();
    next.label = "renamed".into();
    next.version = 2;
    stores.keys.update(&next, 1, MaterialChange::Keep, draft(&ws, action::KEY_UPDATE, "groq", Some(&r.id))).await.unwrap();
    assert_eq!(stores.keys.get(&ws, &r.id).await.unwrap().unwrap().label, "renamed");
    let mut stale = next.clone();
    stale.label = "late".into();
    stale.version = 2;
    let err = stores.keys.update(&stale, 1, MaterialChange::Keep, draft(&ws, action::KEY_UPDATE, "groq", Some(&r.id))).await.unwrap_err();
    assert_eq!(err, StoreError::VersionMismatch);
    assert_eq!(stores.keys.get(&ws, &r.id).await.unwrap().unwrap().label, "renamed");
    let mut ghost = record(&ws, "mistral", Environment::Production);
    ghost.version = 2;
    let err =
        stores.keys.update(&ghost, 1, MaterialChange::Keep, draft(&ws, action::KEY_UPDATE, "mistral", Some(&ghost.id))).await.unwrap_err();
    assert_eq!(err, StoreError::NotFound);
    assert_eq!(stores.audit.chain_head(&ws).await.unwrap().map(|h| h.0), Some(2), "one entry per successful mutation");
}

pub async fn new_material_replaces_every_other_version(stores: &Stores) {
    let ws = workspace("material");
    let r = record(&ws, "openai", Environment::Production);
    insert(stores, &r).await;
    let mut next = r.clone();
    next.key_version = 2;
    next.version = 2;
    stores.keys.update(&next, 1, MaterialChange::Replace(&sealed(9)), draft(&ws, action::KEY_UPDATE, "openai", Some(&r.id))).await.unwrap();
    assert!(stores.keys.material(&ws, &r.id, 2).await.unwrap() == Some(sealed(9)));
    assert!(stores.keys.material(&ws, &r.id, 1).await.unwrap().is_none(), "the old version's material is gone");
}

pub async fn moving_into_a_taken_slot_is_refused(stores: &Stores) {
    let ws = workspace("move");
    let production = record(&ws, "openai", Environment::Production);
    let development = record(&ws, "openai", Environment::Development);
    insert(stores, &production).await;
    insert(stores, &development).await;
    let mut moved = development.clone();
    moved.environment = Environment::Production;
    moved.version = 2;
    let err =
        stores.keys.update(&moved, 1, MaterialChange::Keep, draft(&ws, action::KEY_UPDATE, "openai", Some(&moved.id))).await.unwrap_err();
    assert_eq!(err, StoreError::SlotTaken);
    assert_eq!(stores.keys.get(&ws, &development.id).await.unwrap().unwrap().environment, Environment::Development);
    // Once the slot is free the move goes through, and the old slot is free after it.
    stores.keys.delete(&ws, &production.id, 1, draft(&ws, action::KEY_DELETE, "openai", Some(&production.id))).await.unwrap();
    stores.keys.update(&moved, 1, MaterialChange::Keep, draft(&ws, action::KEY_UPDATE, "openai", Some(&moved.id))).await.unwrap();
    assert_eq!(stores.keys.find_slot(&ws, "openai", Environment::Development).await.unwrap(), None);
    insert(stores, &record(&ws, "openai", Environment::Development)).await;
}

pub async fn delete_is_conditional_and_removes_material(stores: &Stores) {
    let ws = workspace("delete");
    let r = record(&ws, "finnhub", Environment::Production);
    insert(stores, &r).await;
    let err = stores.keys.delete(&ws, &r.id, 5, draft(&ws, action::KEY_DELETE, "finnhub", Some(&r.id))).await.unwrap_err();
    assert_eq!(err, StoreError::VersionMismatch);
    stores.keys.delete(&ws, &r.id, 1, draft(&ws, action::KEY_DELETE, "finnhub", Some(&r.id))).await.unwrap();
    assert_eq!(stores.keys.get(&ws, &r.id).await.unwrap(), None);
    assert!(stores.keys.material(&ws, &r.id, 1).await.unwrap().is_none());
    let err = stores.keys.delete(&ws, &r.id, 1, draft(&ws, action::KEY_DELETE, "finnhub", Some(&r.id))).await.unwrap_err();
    assert_eq!(err, StoreError::NotFound);
    insert(stores, &record(&ws, "finnhub", Environment::Production)).await;
}

pub async fn revoke_keeps_the_record_destroys_all_material_and_frees_the_slot(stores: &Stores) {
    let ws = workspace("revoke");
    let r = record(&ws, "polygon", Environment::Production);
    insert(stores, &r).await;
    let mut rotated = r.clone();
    rotated.version = 2;
    rotated.key_version = 2;
    stores
        .keys
        .update(&rotated, 1, MaterialChange::Replace(&sealed(7)), draft(&ws, action::KEY_UPDATE, "polygon", Some(&r.id)))
        .await
        .unwrap();
    let mut revoked = rotated.clone();
    revoked.version = 3;
    revoked.status = KeyStatus::Revoked;
    revoked.revocation = Some(Revocation {
        by: Actor { sub: "sub-1".into(), email: "ana@example.com".into() },
        at: Utc::now(),
        reason: "leaked in a screenshot".into(),
        material_released_at: None,
    });
    let err = stores.keys.revoke(&revoked, 1, draft(&ws, action::KEY_REVOKE, "polygon", Some(&r.id))).await.unwrap_err();
    assert_eq!(err, StoreError::VersionMismatch, "revocation is conditional on the version");
    assert!(stores.keys.material(&ws, &r.id, 2).await.unwrap().is_some(), "a refused revocation changes nothing");
    stores.keys.revoke(&revoked, 2, draft(&ws, action::KEY_REVOKE, "polygon", Some(&r.id))).await.unwrap();

    let got = stores.keys.get(&ws, &r.id).await.unwrap().expect("the record stays for the audit trail");
    assert_eq!((got.status, got.version), (KeyStatus::Revoked, 3));
    assert_eq!(got.revocation.as_ref().map(|v| v.reason.as_str()), Some("leaked in a screenshot"));
    for version in [1, 2] {
        assert!(stores.keys.material(&ws, &r.id, version).await.unwrap().is_none(), "material of version {version} is destroyed");
    }
    assert_eq!(stores.keys.find_slot(&ws, "polygon", Environment::Production).await.unwrap(), None, "the slot is free");
    let replacement = record(&ws, "polygon", Environment::Production);
    insert(stores, &replacement).await;
    assert_eq!(stores.keys.find_slot(&ws, "polygon", Environment::Production).await.unwrap().map(|k| k.id), Some(replacement.id.clone()));
    let report = stockpulse_shared::services::consistency::check_workspace(stores.keys.as_ref(), stores.audit.as_ref(), &ws).await.unwrap();
    assert!(report.ok, "{report:?}");
    // A revoked record can still be deleted (by an admin), slot or no slot.
    stores.keys.delete(&ws, &r.id, 3, draft(&ws, action::KEY_DELETE, "polygon", Some(&r.id))).await.unwrap();
    assert_eq!(stores.keys.get(&ws, &r.id).await.unwrap(), None);
    assert!(stores.keys.find_slot(&ws, "polygon", Environment::Production).await.unwrap().is_some(), "the replacement keeps its slot");
}

pub async fn test_results_do_not_change_the_version(stores: &Stores) {
    let ws = workspace("test-result");
    let r = record(&ws, "anthropic", Environment::Production);
    insert(stores, &r).await;
    let result = TestResult {
        ok: false,
        status: TestOutcome::Invalid,
        message: "refused".into(),
        latency_ms: 12,
        upstream_status: Some(401),
        tested_at: Utc::now(),
    };
    stores.keys.record_test(&ws, &r.id, &result, KeyStatus::Invalid, draft(&ws, action::KEY_TEST, "anthropic", Some(&r.id))).await.unwrap();
    let got = stores.keys.get(&ws, &r.id).await.unwrap().unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(got.status, KeyStatus::Invalid);
    assert_eq!(got.last_test, Some(result.clone()));
    assert_eq!(got.last_verified_at, Some(result.tested_at));
    let err = stores
        .keys
        .record_test(&ws, "missing", &result, KeyStatus::Invalid, draft(&ws, action::KEY_TEST, "anthropic", None))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::NotFound);
}

pub async fn workspaces_are_isolated(stores: &Stores) {
    let ours = workspace("iso-a");
    let theirs = workspace("iso-b");
    let r = record(&ours, "openai", Environment::Production);
    insert(stores, &r).await;
    assert_eq!(stores.keys.get(&theirs, &r.id).await.unwrap(), None);
    assert!(stores.keys.material(&theirs, &r.id, 1).await.unwrap().is_none());
    assert!(stores.keys.list(&theirs, None, 50).await.unwrap().items.is_empty());
    assert_eq!(
        stores.keys.delete(&theirs, &r.id, 1, draft(&theirs, action::KEY_DELETE, "openai", Some(&r.id))).await.unwrap_err(),
        StoreError::NotFound
    );
    assert!(stores.audit.list(&theirs, &AuditFilter::default(), None, 50).await.unwrap().items.is_empty());
    assert_eq!(stores.audit.chain_head(&theirs).await.unwrap(), None);
}

pub async fn list_pages_in_id_order(stores: &Stores) {
    let ws = workspace("list");
    let mut ids = Vec::new();
    for provider in ["openai", "groq", "mistral", "finnhub", "fmp"] {
        let r = record(&ws, provider, Environment::Production);
        ids.push(r.id.clone());
        insert(stores, &r).await;
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = stores.keys.list(&ws, after.as_deref(), 2).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);
}

pub async fn audit_chain_links_every_mutation(stores: &Stores) {
    let ws = workspace("chain");
    let r = record(&ws, "openai", Environment::Production);
    insert(stores, &r).await;
    let mut next = r.clone();
    next.version = 2;
    stores.keys.update(&next, 1, MaterialChange::Keep, draft(&ws, action::KEY_UPDATE, "openai", Some(&r.id))).await.unwrap();
    stores.audit.append(draft(&ws, action::KEY_TEST_CANDIDATE, "groq", None)).await.unwrap();
    stores.keys.delete(&ws, &r.id, 2, draft(&ws, action::KEY_DELETE, "openai", Some(&r.id))).await.unwrap();
    let entries = stores.audit.chain_slice(&ws, 0, 100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(
        entries.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        [action::KEY_CREATE, action::KEY_UPDATE, action::KEY_TEST_CANDIDATE, action::KEY_DELETE]
    );
    let mut verifier = ChainVerifier::new();
    entries.iter().for_each(|e| verifier.feed(e));
    let report = verifier.finish(stores.audit.chain_head(&ws).await.unwrap());
    assert!(report.ok, "{report:?}");
    assert_eq!(stores.audit.chain_slice(&ws, 2, 1).await.unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    // Stored entries come back exactly as hashed.
    assert!(entries.iter().all(|e| e.compute_hash() == e.hash));
}

pub async fn audit_list_filters_and_pages_newest_first(stores: &Stores) {
    let ws = workspace("audit-list");
    let start = Utc::now();
    for (act, provider) in
        [(action::KEY_CREATE, "openai"), (action::KEY_TEST, "openai"), (action::KEY_CREATE, "groq"), (action::KEY_UPDATE, "groq")]
    {
        stores.audit.append(draft(&ws, act, provider, Some("k"))).await.unwrap();
    }
    let mut other_actor = draft(&ws, action::KEY_DELETE, "groq", None);
    other_actor.actor_email = "bo@example.com".into();
    other_actor.actor_sub = "sub-2".into();
    stores.audit.append(other_actor).await.unwrap();
    let list = |filter: AuditFilter| {
        let audit = stores.audit.clone();
        let ws = ws.clone();
        async move { audit.list(&ws, &filter, None, 50).await.unwrap().items.iter().map(|e| e.seq).collect::<Vec<_>>() }
    };
    assert_eq!(list(AuditFilter::default()).await, [5, 4, 3, 2, 1]);
    assert_eq!(list(AuditFilter { action: Some(action::KEY_CREATE.into()), ..Default::default() }).await, [3, 1]);
    assert_eq!(list(AuditFilter { provider: Some("groq".into()), ..Default::default() }).await, [5, 4, 3]);
    assert_eq!(list(AuditFilter { actor: Some("bo@example.com".into()), ..Default::default() }).await, [5]);
    assert_eq!(list(AuditFilter { actor: Some("sub-2".into()), ..Default::default() }).await, [5]);
    assert_eq!(list(AuditFilter { key_id: Some("k".into()), ..Default::default() }).await, [4, 3, 2, 1]);
    assert_eq!(list(AuditFilter { from: Some(start - Duration::seconds(60)), ..Default::default() }).await.len(), 5);
    assert!(list(AuditFilter { to: Some(start - Duration::seconds(60)), ..Default::default() }).await.is_empty());
    let first = stores.audit.list(&ws, &AuditFilter::default(), None, 2).await.unwrap();
    assert_eq!(first.items.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 4]);
    let second = stores.audit.list(&ws, &AuditFilter::default(), first.next.as_deref(), 2).await.unwrap();
    assert_eq!(second.items.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 2]);
    let third = stores.audit.list(&ws, &AuditFilter::default(), second.next.as_deref(), 2).await.unwrap();
    assert_eq!(third.items.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    assert!(third.next.is_none());
}

pub async fn concurrent_updates_with_one_version_exactly_one_wins(stores: &Stores) {
    let ws = workspace("race");
    let r = record(&ws, "openai", Environment::Production);
    insert(stores, &r).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let keys = stores.keys.clone();
        let mut next = r.clone();
        next.label = format!("writer {i}");
        next.version = 2;
        let ws = ws.clone();
        tasks.push(tokio::spawn(async move {
            keys.update(&next, 1, MaterialChange::Keep, draft(&ws, action::KEY_UPDATE, "openai", Some(&next.id))).await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::VersionMismatch) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(stores.audit.chain_head(&ws).await.unwrap().map(|h| h.0), Some(2), "only the winner wrote an audit entry");
}

pub async fn concurrent_appends_keep_the_chain_whole(stores: &Stores) {
    let ws = workspace("appends");
    let audit = stores.audit.clone();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (audit, ws) = (audit.clone(), ws.clone());
            tokio::spawn(async move { audit.append(draft(&ws, action::KEY_TEST_CANDIDATE, "openai", None)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("every append lands (retrying a lost race is the adapter's job)");
    }
    let entries = audit.chain_slice(&ws, 0, 100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    let mut verifier = ChainVerifier::new();
    entries.iter().for_each(|e| verifier.feed(e));
    let head = audit.chain_head(&ws).await.unwrap();
    let report = verifier.finish(head.clone());
    assert!(
        report.ok,
        "{report:?}, head {head:?}, links {:?}",
        entries.iter().map(|e| (e.seq, &e.prev_hash[..8], &e.hash[..8])).collect::<Vec<_>>()
    );
}

pub async fn snapshot_shows_the_whole_workspace_and_it_checks_clean(stores: &Stores) {
    let ws = workspace("snapshot");
    let kept = record(&ws, "openai", Environment::Production);
    let edited = record(&ws, "groq", Environment::Development);
    let deleted = record(&ws, "mistral", Environment::Production);
    for r in [&kept, &edited, &deleted] {
        insert(stores, r).await;
    }
    let mut next = edited.clone();
    next.version = 2;
    next.key_version = 2;
    stores
        .keys
        .update(&next, 1, MaterialChange::Replace(&sealed(3)), draft(&ws, action::KEY_UPDATE, "groq", Some(&edited.id)))
        .await
        .unwrap();
    stores.keys.delete(&ws, &deleted.id, 1, draft(&ws, action::KEY_DELETE, "mistral", Some(&deleted.id))).await.unwrap();

    let snapshot = stores.keys.snapshot(&ws).await.unwrap();
    let mut ids: Vec<&str> = snapshot.records.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    let mut expected = vec![kept.id.as_str(), edited.id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    let mut materials = snapshot.materials.clone();
    materials.sort();
    let mut expected_materials = vec![(kept.id.clone(), 1), (edited.id.clone(), 2)];
    expected_materials.sort();
    assert_eq!(materials, expected_materials);
    assert_eq!(snapshot.slots.len(), 2);
    let report = stockpulse_shared::services::consistency::check_workspace(stores.keys.as_ref(), stores.audit.as_ref(), &ws).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.records, report.materials, report.audit_entries), (2, 2, 5));
}

pub async fn scan_walks_every_workspace_in_order(stores: &Stores) {
    let workspaces = [workspace("scan-c"), workspace("scan-a"), workspace("scan-b")];
    let mut ours: Vec<KeyRecord> = Vec::new();
    // Round-robin over the workspaces: insertion (id) order is not the scan's order.
    for provider in ["openai", "groq", "mistral"] {
        for ws in &workspaces {
            let r = record(ws, provider, Environment::Production);
            insert(stores, &r).await;
            ours.push(r);
        }
    }
    // A revoked record is still walked; a deleted one is gone.
    let mut revoked = ours[1].clone();
    revoked.version = 2;
    revoked.status = KeyStatus::Revoked;
    revoked.revocation = Some(Revocation {
        by: Actor { sub: "sub-1".into(), email: "ana@example.com".into() },
        at: Utc::now(),
        reason: "scan check".into(),
        material_released_at: None,
    });
    stores.keys.revoke(&revoked, 1, draft(&revoked.workspace, action::KEY_REVOKE, &revoked.provider, Some(&revoked.id))).await.unwrap();
    ours[1] = revoked.clone();
    let deleted = ours.remove(4);
    stores
        .keys
        .delete(&deleted.workspace, &deleted.id, 1, draft(&deleted.workspace, action::KEY_DELETE, &deleted.provider, Some(&deleted.id)))
        .await
        .unwrap();
    let mut expected: Vec<(String, String)> = ours.iter().map(|r| (r.workspace.clone(), r.id.clone())).collect();
    expected.sort();

    // The backend is shared: other checks' records come along, and only ours are compared.
    let mut seen: Vec<KeyRecord> = Vec::new();
    let mut after: Option<String> = None;
    for pages in 1.. {
        assert!(pages < 100_000, "the walk does not end");
        let page = stores.keys.scan(after.as_deref(), 2).await.unwrap();
        assert!(page.items.len() <= 2, "a page holds at most `limit` records");
        seen.extend(page.items.into_iter().filter(|r| workspaces.contains(&r.workspace)));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let walked: Vec<(String, String)> = seen.iter().map(|r| (r.workspace.clone(), r.id.clone())).collect();
    assert_eq!(walked, expected, "each of our records once, in (workspace, id) order");
    assert!(!walked.iter().any(|(_, id)| *id == deleted.id));
    assert_eq!(seen.iter().find(|r| r.id == revoked.id), Some(&revoked), "revoked records are walked, as stored");
    let kept = &ours[0];
    assert_eq!(seen.iter().find(|r| r.id == kept.id), Some(kept));
}

/// An update of `record` (its workspace's next audit entry) that changes the material as `change` says.
async fn change_material(stores: &Stores, record: &KeyRecord, expected: u64, change: MaterialChange<'_>) -> Result<(), StoreError> {
    let audit = draft(&record.workspace, action::KEY_UPDATE, &record.provider, Some(&record.id));
    stores.keys.update(record, expected, change, audit).await.map(drop)
}

pub async fn staged_material_sits_beside_the_current_version_until_retained_away(stores: &Stores) {
    let ws = workspace("stage");
    let r = record(&ws, "openai", Environment::Production);
    insert(stores, &r).await;
    let stored = |version: u32| {
        let (keys, ws, id) = (stores.keys.clone(), ws.clone(), r.id.clone());
        async move { keys.material(&ws, &id, version).await.unwrap() }
    };

    // A rotation stages version 2 beside version 1; the record still uses 1.
    let mut staged = r.clone();
    staged.version = 2;
    staged.highest_key_version = 2;
    change_material(stores, &staged, 1, MaterialChange::Stage { version: 2, sealed: &sealed(2) }).await.unwrap();
    assert!(stored(1).await == Some(sealed(1)), "the current version stays");
    assert!(stored(2).await == Some(sealed(2)), "the staged version is stored");
    assert_eq!(stores.keys.get(&ws, &r.id).await.unwrap().unwrap().key_version, 1);
    // A stale stage is refused and stages nothing.
    let mut stale = staged.clone();
    stale.version = 3;
    let err = change_material(stores, &stale, 1, MaterialChange::Stage { version: 3, sealed: &sealed(3) }).await.unwrap_err();
    assert_eq!(err, StoreError::VersionMismatch);
    assert!(stored(3).await.is_none());

    // Promotion keeps current + previous.
    let mut promoted = staged.clone();
    promoted.version = 3;
    promoted.key_version = 2;
    change_material(stores, &promoted, 2, MaterialChange::Retain(&[2, 1])).await.unwrap();
    assert!(stored(1).await == Some(sealed(1)) && stored(2).await == Some(sealed(2)), "both listed versions stay");
    // The previous version expires: every version not listed goes (listing an absent one is harmless).
    let mut trimmed = promoted.clone();
    trimmed.version = 4;
    change_material(stores, &trimmed, 3, MaterialChange::Retain(&[2, 7])).await.unwrap();
    assert!(stored(1).await.is_none(), "the unlisted version is removed");
    assert!(stored(2).await == Some(sealed(2)));
    assert!(stored(7).await.is_none(), "retaining creates nothing");
    assert_eq!(stores.keys.snapshot(&ws).await.unwrap().materials, vec![(r.id.clone(), 2)]);
    assert_eq!(stores.audit.chain_head(&ws).await.unwrap().map(|h| h.0), Some(4), "one entry per successful update");
}

pub async fn replacing_material_keeps_only_the_record_version(stores: &Stores) {
    let ws = workspace("replace-staged");
    let r = record(&ws, "groq", Environment::Production);
    insert(stores, &r).await;
    let mut staged = r.clone();
    staged.version = 2;
    staged.highest_key_version = 2;
    change_material(stores, &staged, 1, MaterialChange::Stage { version: 2, sealed: &sealed(2) }).await.unwrap();
    // An edit of the credentials while a version is staged: only the record's new version stays.
    let mut edited = staged.clone();
    edited.version = 3;
    edited.key_version = 3;
    edited.highest_key_version = 3;
    change_material(stores, &edited, 2, MaterialChange::Replace(&sealed(9))).await.unwrap();
    assert!(stores.keys.material(&ws, &r.id, 3).await.unwrap() == Some(sealed(9)));
    for version in [1, 2] {
        assert!(stores.keys.material(&ws, &r.id, version).await.unwrap().is_none(), "version {version} is removed");
    }
    assert_eq!(stores.keys.snapshot(&ws).await.unwrap().materials, vec![(r.id.clone(), 3)]);
}
