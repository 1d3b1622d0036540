//! The consistency check: what a workspace's stored state must look like whatever failed, and
//! when. Pure: adapters hand over a snapshot, the services add the audit trail.
//!
//! Invariants: every key record has exactly its slot and the material of its current, pending and
//! previous versions and no other (a revoked one has neither); no material or slot belongs to a missing record (no orphan secret);
//! every record's creation and every one of its edits has an audit entry (`version` = 1 + its
//! edit entries: update, revoke, rotation steps, rollback, previous destroyed); no record survives its `key.delete` entry; the audit
//! chain verifies.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use utoipa::ToSchema;

use super::audit::{AuditEntry, ChainReport, action};
use super::environment::Environment;
use super::keys::{KeyRecord, KeyStatus};

/// Everything a store holds for one workspace, as raw as the store keeps it.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceSnapshot {
    pub records: Vec<KeyRecord>,
    /// (provider, environment, key id) of every slot item; stores with a uniqueness constraint
    /// instead of slot items report one per record.
    pub slots: Vec<(String, Environment, String)>,
    /// (key id, key version) of every stored material.
    pub materials: Vec<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ConsistencyReport {
    pub workspace: String,
    pub ok: bool,
    pub records: usize,
    pub materials: usize,
    pub audit_entries: u64,
    /// One line per broken invariant.
    pub problems: Vec<String>,
}

pub fn check(workspace: &str, snapshot: &WorkspaceSnapshot, audit: &[AuditEntry], chain: &ChainReport) -> ConsistencyReport {
    let mut problems = Vec::new();
    let records: BTreeMap<&str, &KeyRecord> = snapshot.records.iter().map(|r| (r.id.as_str(), r)).collect();
    let materials: BTreeSet<(&str, u32)> = snapshot.materials.iter().map(|(id, v)| (id.as_str(), *v)).collect();

    for record in &snapshot.records {
        let slots: Vec<_> = snapshot.slots.iter().filter(|(_, _, id)| id == &record.id).collect();
        if record.status == KeyStatus::Revoked {
            // A revoked key keeps its record for the audit trail, and nothing else.
            if !slots.is_empty() {
                problems.push(format!("revoked key {} still holds a slot", record.id));
            }
        } else {
            for version in record.held_versions() {
                if !materials.contains(&(record.id.as_str(), version)) {
                    problems.push(format!("key {} has no material for its version {version}", record.id));
                }
            }
            if slots.len() != 1 || slots[0].0 != record.provider || slots[0].1 != record.environment {
                problems.push(format!(
                    "key {} does not hold exactly its {}/{} slot",
                    record.id,
                    record.provider,
                    record.environment.as_str()
                ));
            }
        }
        let created = audit.iter().any(|e| e.action == action::KEY_CREATE && e.key_id.as_deref() == Some(&record.id));
        if !created {
            problems.push(format!("key {} has no key.create audit entry", record.id));
        }
        let updates = audit
            .iter()
            .filter(|e| {
                action::RECORD_EDITS.contains(&e.action.as_str())
                    && e.outcome == super::audit::Outcome::Success
                    && e.key_id.as_deref() == Some(&record.id)
            })
            .count() as u64;
        if record.version != 1 + updates {
            problems.push(format!("key {} is at version {} but the audit trail has {updates} edits of it", record.id, record.version));
        }
    }
    for (id, version) in &snapshot.materials {
        match records.get(id.as_str()) {
            None => problems.push(format!("material of key {id} (version {version}) has no key record")),
            Some(r) if r.status == KeyStatus::Revoked => problems.push(format!("revoked key {id} keeps material of version {version}")),
            Some(r) if !r.held_versions().contains(version) => problems
                .push(format!("key {id} keeps material of version {version}, which is none of its current, pending or previous versions")),
            Some(_) => {}
        }
    }
    for (provider, environment, id) in &snapshot.slots {
        if !records.contains_key(id.as_str()) {
            problems.push(format!("the {provider}/{} slot names key {id}, which does not exist", environment.as_str()));
        }
    }
    for entry in audit.iter().filter(|e| e.action == action::KEY_DELETE && e.outcome == super::audit::Outcome::Success) {
        if let Some(id) = entry.key_id.as_deref()
            && records.contains_key(id)
        {
            problems.push(format!("key {id} still exists after its key.delete audit entry {}", entry.seq));
        }
    }
    if !chain.ok {
        problems.push(format!(
            "the audit chain does not verify at entry {:?}: {}",
            chain.first_bad,
            chain.problem.clone().unwrap_or_default()
        ));
    }
    ConsistencyReport {
        workspace: workspace.to_owned(),
        ok: problems.is_empty(),
        records: snapshot.records.len(),
        materials: snapshot.materials.len(),
        audit_entries: chain.checked,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::access::{Caller, RequestMeta, Role};
    use crate::domain::audit::{AuditDraft, GENESIS_HASH, Outcome};
    use crate::domain::keys::{Actor, KeyStatus};

    fn record(id: &str, version: u64) -> KeyRecord {
        let actor = Actor { sub: "s".into(), email: "e".into() };
        KeyRecord {
            id: id.into(),
            workspace: "w".into(),
            provider: "openai".into(),
            environment: Environment::Production,
            label: "l".into(),
            masked: Default::default(),
            fingerprint: "f".into(),
            status: KeyStatus::Active,
            key_version: 1,
            version,
            warnings: vec![],
            created_by: actor.clone(),
            created_at: chrono::Utc::now(),
            updated_by: actor,
            updated_at: chrono::Utc::now(),
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

    fn trail(actions: &[(&str, &str)]) -> Vec<AuditEntry> {
        let caller = Caller { sub: "s".into(), email: "e".into(), role: Role::Admin, workspace: "w".into() };
        let mut prev = GENESIS_HASH.to_owned();
        actions
            .iter()
            .enumerate()
            .map(|(i, (act, id))| {
                let e = AuditDraft::new(&caller, &RequestMeta::default(), act, Outcome::Success)
                    .target("openai", Environment::Production, Some(id))
                    .chain(i as u64 + 1, &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn ok_chain(n: u64) -> ChainReport {
        ChainReport { ok: true, checked: n, first_bad: None, problem: None }
    }

    fn whole(id: &str, version: u64) -> WorkspaceSnapshot {
        WorkspaceSnapshot {
            records: vec![record(id, version)],
            slots: vec![("openai".into(), Environment::Production, id.into())],
            materials: vec![(id.into(), 1)],
        }
    }

    #[test]
    fn a_whole_workspace_passes() {
        let audit = trail(&[(action::KEY_CREATE, "k1"), (action::KEY_UPDATE, "k1")]);
        let report = check("w", &whole("k1", 2), &audit, &ok_chain(2));
        assert!(report.ok, "{report:?}");
    }

    #[test]
    fn every_kind_of_half_written_state_is_reported() {
        let created = trail(&[(action::KEY_CREATE, "k1")]);
        let mut no_material = whole("k1", 1);
        no_material.materials.clear();
        let mut orphan_material = whole("k1", 1);
        orphan_material.materials.push(("ghost".into(), 1));
        let mut orphan_slot = whole("k1", 1);
        orphan_slot.slots.push(("groq".into(), Environment::Production, "ghost".into()));
        let cases = [
            (no_material, created.clone(), "no material"),
            (orphan_material, created.clone(), "has no key record"),
            (orphan_slot, created.clone(), "does not exist"),
            (whole("k1", 1), vec![], "no key.create audit entry"),
            (whole("k1", 3), created.clone(), "edits of it"),
            (whole("k1", 1), trail(&[(action::KEY_CREATE, "k1"), (action::KEY_DELETE, "k1")]), "still exists"),
        ];
        for (snapshot, audit, expected) in cases {
            let report = check("w", &snapshot, &audit, &ok_chain(audit.len() as u64));
            assert!(!report.ok);
            assert!(report.problems.iter().any(|p| p.contains(expected)), "{expected}: {:?}", report.problems);
        }
        let broken = ChainReport { ok: false, checked: 1, first_bad: Some(1), problem: Some("edited".into()) };
        assert!(!check("w", &whole("k1", 1), &created, &broken).ok);
    }
}
