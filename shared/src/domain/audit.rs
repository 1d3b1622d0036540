//! Audit entries and their per-workspace hash chain (DESIGN.md §6).
//!
//! Each entry's hash is SHA-256 over its canonical JSON, which includes its sequence number and
//! the previous entry's hash; the store keeps the chain head beside the entries, so an edited,
//! removed, reordered or truncated entry is detected by `verify_chain`. Entries never hold key
//! material: only the fingerprint.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::access::{Caller, RequestMeta, Role};
use super::environment::Environment;

/// The hash that precedes a workspace's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(value: &str) -> Option<Outcome> {
        [Outcome::Success, Outcome::Failure, Outcome::Denied].into_iter().find(|o| o.as_str() == value)
    }
}

/// Audit actions, as stored and filtered.
pub mod action {
    pub const KEY_CREATE: &str = "key.create";
    pub const KEY_UPDATE: &str = "key.update";
    pub const KEY_DELETE: &str = "key.delete";
    pub const KEY_TEST: &str = "key.test";
    pub const KEY_TEST_CANDIDATE: &str = "key.test_candidate";
    /// A proxied call the provider refused with 401/403 marked the key invalid.
    pub const KEY_INVALIDATED: &str = "key.invalidated";
    pub const KEY_REVOKE: &str = "key.revoke";
    pub const QUOTA_UPDATE: &str = "quota.update";
    /// 80 % or 100 % of a quota was reached.
    pub const QUOTA_THRESHOLD: &str = "quota.threshold";
    pub const CACHE_PURGE: &str = "cache.purge";
    /// A rotation's new material stored as the pending version.
    pub const KEY_ROTATE_STAGE: &str = "key.rotate.stage";
    /// The provider accepted the pending version (the failed case discards it instead).
    pub const KEY_ROTATE_TEST: &str = "key.rotate.test";
    /// The pending version became current; the old current is kept as previous.
    pub const KEY_ROTATE_PROMOTE: &str = "key.rotate.promote";
    /// The pending version was removed (test failed, or abandoned and rolled back by the job).
    pub const KEY_ROTATE_DISCARD: &str = "key.rotate.discard";
    pub const KEY_ROLLBACK: &str = "key.rollback";
    /// The scheduled job removed a previous version whose grace had passed.
    pub const KEY_PREVIOUS_DESTROY: &str = "key.previous.destroy";
    /// The scheduled job sent a reminder (rotation due, expiry).
    pub const KEY_REMINDER: &str = "key.reminder";
    /// The material a vault keeps outside the store (Secrets Manager) of a revoked key was
    /// released (its deletion scheduled with the recovery window).
    pub const KEY_RELEASE: &str = "key.release";
    /// A proxied call (recorded when refused: a non-admin calling an admin-only provider).
    pub const PROXY_CALL: &str = "proxy.call";
    pub const ALL: [&str; 19] = [
        KEY_CREATE,
        KEY_UPDATE,
        KEY_DELETE,
        KEY_TEST,
        KEY_TEST_CANDIDATE,
        KEY_INVALIDATED,
        KEY_REVOKE,
        QUOTA_UPDATE,
        QUOTA_THRESHOLD,
        CACHE_PURGE,
        KEY_ROTATE_STAGE,
        KEY_ROTATE_TEST,
        KEY_ROTATE_PROMOTE,
        KEY_ROTATE_DISCARD,
        KEY_ROLLBACK,
        KEY_PREVIOUS_DESTROY,
        KEY_REMINDER,
        KEY_RELEASE,
        PROXY_CALL,
    ];

    /// Actions that edit a key record (each bumps its `version` by one).
    pub const RECORD_EDITS: [&str; 9] = [
        KEY_UPDATE,
        KEY_REVOKE,
        KEY_ROTATE_STAGE,
        KEY_ROTATE_TEST,
        KEY_ROTATE_PROMOTE,
        KEY_ROTATE_DISCARD,
        KEY_ROLLBACK,
        KEY_PREVIOUS_DESTROY,
        KEY_RELEASE,
    ];
}

/// An entry before the store gives it a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDraft {
    pub id: String,
    pub time: DateTime<Utc>,
    pub workspace: String,
    pub actor_sub: String,
    pub actor_email: String,
    pub role: Role,
    pub action: String,
    pub provider: Option<String>,
    pub environment: Option<Environment>,
    pub key_id: Option<String>,
    pub outcome: Outcome,
    pub source_ip: String,
    pub user_agent: String,
    pub request_id: String,
    pub fingerprint: Option<String>,
    /// Short machine-readable detail (`test: invalid`, `fields: label`); never key material.
    pub detail: Option<String>,
}

impl AuditDraft {
    pub fn new(caller: &Caller, meta: &RequestMeta, action: &str, outcome: Outcome) -> AuditDraft {
        AuditDraft {
            id: uuid::Uuid::now_v7().to_string(),
            time: Utc::now(),
            workspace: caller.workspace.clone(),
            actor_sub: caller.sub.clone(),
            actor_email: caller.email.clone(),
            role: caller.role,
            action: action.to_owned(),
            provider: None,
            environment: None,
            key_id: None,
            outcome,
            source_ip: meta.source_ip.clone(),
            user_agent: meta.user_agent.clone(),
            request_id: meta.request_id.clone(),
            fingerprint: None,
            detail: None,
        }
    }

    pub fn target(mut self, provider: &str, environment: Environment, key_id: Option<&str>) -> Self {
        self.provider = Some(provider.to_owned());
        self.environment = Some(environment);
        self.key_id = key_id.map(str::to_owned);
        self
    }

    pub fn fingerprint(mut self, fingerprint: &str) -> Self {
        self.fingerprint = Some(fingerprint.to_owned());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Places the draft after `prev_hash` at position `seq` and computes its hash.
    pub fn chain(self, seq: u64, prev_hash: &str) -> AuditEntry {
        let mut entry = AuditEntry {
            seq,
            id: self.id,
            time: self.time,
            workspace: self.workspace,
            actor_sub: self.actor_sub,
            actor_email: self.actor_email,
            role: self.role,
            action: self.action,
            provider: self.provider,
            environment: self.environment,
            key_id: self.key_id,
            outcome: self.outcome,
            source_ip: self.source_ip,
            user_agent: self.user_agent,
            request_id: self.request_id,
            fingerprint: self.fingerprint,
            detail: self.detail,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Position in the workspace's chain, from 1.
    pub seq: u64,
    pub id: String,
    pub time: DateTime<Utc>,
    pub workspace: String,
    pub actor_sub: String,
    pub actor_email: String,
    pub role: Role,
    pub action: String,
    pub provider: Option<String>,
    pub environment: Option<Environment>,
    pub key_id: Option<String>,
    pub outcome: Outcome,
    pub source_ip: String,
    pub user_agent: String,
    pub request_id: String,
    pub fingerprint: Option<String>,
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// SHA-256 over the canonical JSON of every field but `hash` (field order is fixed by the
    /// struct; times use RFC 3339 with nanoseconds so a round trip through storage is exact).
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::json!([
            self.seq,
            self.id,
            self.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            self.workspace,
            self.actor_sub,
            self.actor_email,
            self.role.as_str(),
            self.action,
            self.provider,
            self.environment.map(|e| e.as_str()),
            self.key_id,
            self.outcome.as_str(),
            self.source_ip,
            self.user_agent,
            self.request_id,
            self.fingerprint,
            self.detail,
            self.prev_hash,
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// What `GET /api/audit/verify` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainReport {
    pub ok: bool,
    /// Entries checked.
    pub checked: u64,
    /// Sequence number of the first entry that does not verify, if any.
    pub first_bad: Option<u64>,
    /// Why it does not verify.
    pub problem: Option<String>,
}

/// Incremental verifier: feed entries in ascending `seq`, then finish with the stored head.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    checked: u64,
    last_seq: u64,
    last_hash: Option<String>,
    failure: Option<(u64, String)>,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_broken(&self) -> bool {
        self.failure.is_some()
    }

    pub fn feed(&mut self, entry: &AuditEntry) {
        if self.failure.is_some() {
            return;
        }
        self.checked += 1;
        let expected_prev = self.last_hash.as_deref().unwrap_or(GENESIS_HASH);
        let problem = if entry.seq != self.last_seq + 1 {
            Some(format!("expected entry {} but found {} (an entry is missing)", self.last_seq + 1, entry.seq))
        } else if entry.prev_hash != expected_prev {
            Some("its link to the previous entry does not match (an entry before it was changed or removed)".to_owned())
        } else if entry.compute_hash() != entry.hash {
            Some("its content does not match its hash (the entry was edited)".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            self.failure = Some((self.last_seq + 1, problem));
            return;
        }
        self.last_seq = entry.seq;
        self.last_hash = Some(entry.hash.clone());
    }

    /// The sequence number of the last entry fed that linked correctly (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// `head` is the (seq, hash) the store recorded for the newest entry.
    pub fn finish(self, head: Option<(u64, String)>) -> ChainReport {
        let failure = self.failure.or_else(|| match head {
            None if self.last_seq == 0 => None,
            None => Some((self.last_seq, "entries exist but the chain head is missing".to_owned())),
            Some((seq, hash)) if seq != self.last_seq || Some(&hash) != self.last_hash.as_ref() => Some((
                self.last_seq + 1,
                format!("the chain head names entry {seq}, but the entries end at {} (entries were removed)", self.last_seq),
            )),
            Some(_) => None,
        });
        ChainReport {
            ok: failure.is_none(),
            checked: self.checked,
            first_bad: failure.as_ref().map(|(seq, _)| *seq),
            problem: failure.map(|(_, p)| p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: u64) -> Vec<AuditEntry> {
        let caller = Caller { sub: "u1".into(), email: "a@example.com".into(), role: Role::Admin, workspace: "w1".into() };
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let e = AuditDraft::new(&caller, &RequestMeta::default(), action::KEY_CREATE, Outcome::Success).chain(seq, &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(entries: &[AuditEntry], head: Option<(u64, String)>) -> ChainReport {
        let mut v = ChainVerifier::new();
        entries.iter().for_each(|e| v.feed(e));
        v.finish(head)
    }

    #[test]
    fn intact_chain_verifies() {
        let entries = chain_of(5);
        let head = Some((5, entries[4].hash.clone()));
        assert_eq!(verify(&entries, head), ChainReport { ok: true, checked: 5, first_bad: None, problem: None });
    }

    #[test]
    fn any_single_edit_is_found_at_its_position() {
        for victim in 0..5 {
            let mut entries = chain_of(5);
            let head = Some((5, entries[4].hash.clone()));
            entries[victim].actor_email = "mallory@example.com".into();
            let report = verify(&entries, head);
            assert!(!report.ok);
            assert_eq!(report.first_bad, Some(victim as u64 + 1));
        }
    }

    #[test]
    fn removal_in_the_middle_and_at_the_end_are_found() {
        let mut entries = chain_of(5);
        let head = Some((5, entries[4].hash.clone()));
        entries.remove(2);
        assert_eq!(verify(&entries, head.clone()).first_bad, Some(3));
        let mut entries = chain_of(5);
        entries.pop();
        assert_eq!(verify(&entries, head).first_bad, Some(5));
    }
}
