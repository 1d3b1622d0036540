//! Reading the audit trail and verifying its hash chain.

use std::sync::Arc;

use crate::domain::access::Caller;
use crate::domain::audit::{AuditEntry, ChainReport, ChainVerifier};
use crate::ports::{AuditFilter, AuditLog, Page, StoreError};

use super::{ServiceError, cursor};

const VERIFY_BATCH: usize = 500;
/// How many times a verification follows a head that moved on while it walked.
const MAX_CATCH_UPS: u32 = 5;

pub struct AuditService {
    log: Arc<dyn AuditLog>,
}

impl AuditService {
    pub fn new(log: Arc<dyn AuditLog>) -> Self {
        AuditService { log }
    }

    pub async fn list(
        &self,
        caller: &Caller,
        filter: &AuditFilter,
        cursor_value: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page<AuditEntry>, ServiceError> {
        let limit = cursor::limit(limit)?;
        let before = cursor_value.map(|c| cursor::decode("audit", c)).transpose()?;
        if let Some(b) = &before
            && b.parse::<u64>().is_err()
        {
            return Err(cursor::decode("audit", "").unwrap_err());
        }
        let page = self.log.list(&caller.workspace, filter, before.as_deref(), limit).await?;
        Ok(Page { next: page.next.map(|p| cursor::encode("audit", &p)), items: page.items })
    }

    /// Walks the workspace's whole chain in batches, then compares its end with the head the
    /// store records. Entries appended while the walk ran move the head past its end (an entry
    /// and the head are written together): the walk then goes on to the new head, a few times at
    /// most, so a busy workspace is not reported as tampered with.
    pub async fn verify(&self, caller: &Caller) -> Result<ChainReport, ServiceError> {
        let mut verifier = ChainVerifier::new();
        let mut after = 0;
        let mut batch_size = VERIFY_BATCH;
        let mut catch_ups = 0;
        loop {
            let batch = match self.log.chain_slice(&caller.workspace, after, batch_size).await {
                Ok(batch) => batch,
                // One row of the batch cannot be read: go on one row at a time, so that the report
                // names that row (or a break before it), not the first row of the batch.
                Err(StoreError::Corrupt(_)) if batch_size > 1 => {
                    batch_size = 1;
                    continue;
                }
                // A row edited into something unreadable is tampering too, not an outage.
                Err(StoreError::Corrupt(detail)) => {
                    return Ok(ChainReport {
                        ok: false,
                        checked: after,
                        first_bad: Some(after + 1),
                        problem: Some(format!("an entry after {after} cannot be read ({detail})")),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(last) = batch.last() {
                after = last.seq;
            }
            let full = batch.len() == batch_size;
            for entry in &batch {
                verifier.feed(entry);
            }
            if !verifier.is_broken() && full {
                continue;
            }
            let head = self.log.chain_head(&caller.workspace).await?;
            let moved_on = head.as_ref().is_some_and(|(seq, _)| *seq > verifier.last_seq());
            // A head ahead of entries that are not there (a walk on found nothing) is not a busy
            // workspace: entries were removed.
            let found_nothing_new = catch_ups > 0 && batch.is_empty();
            if verifier.is_broken() || !moved_on || found_nothing_new || catch_ups == MAX_CATCH_UPS {
                return Ok(verifier.finish(head));
            }
            catch_ups += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::adapters::embedded::SqliteStore;
    use crate::domain::access::{RequestMeta, Role};
    use crate::domain::audit::{AuditDraft, Outcome, action};

    /// The store, with `appends_before_head` entries appended by another request each time just
    /// before the head is read: what a busy workspace does to a verification.
    struct Busy {
        store: SqliteStore,
        appends_before_head: u32,
        head_reads: AtomicU32,
    }

    fn caller() -> Caller {
        Caller { sub: "u1".into(), email: "a@example.com".into(), role: Role::Admin, workspace: "w1".into() }
    }

    fn draft() -> AuditDraft {
        AuditDraft::new(&caller(), &RequestMeta::default(), action::KEY_UPDATE, Outcome::Success)
    }

    #[async_trait]
    impl AuditLog for Busy {
        async fn append(&self, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
            self.store.append(audit).await
        }
        async fn list(
            &self,
            workspace: &str,
            filter: &AuditFilter,
            before: Option<&str>,
            limit: usize,
        ) -> Result<Page<AuditEntry>, StoreError> {
            self.store.list(workspace, filter, before, limit).await
        }
        async fn chain_slice(&self, workspace: &str, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
            self.store.chain_slice(workspace, after_seq, limit).await
        }
        async fn chain_head(&self, workspace: &str) -> Result<Option<(u64, String)>, StoreError> {
            if self.head_reads.fetch_add(1, Ordering::SeqCst) < self.appends_before_head {
                self.store.append(draft()).await?;
            }
            self.store.chain_head(workspace).await
        }
    }

    async fn busy(appends_before_head: u32) -> (tempfile::TempDir, Arc<Busy>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
        for _ in 0..3 {
            store.append(draft()).await.unwrap();
        }
        (dir, Arc::new(Busy { store, appends_before_head, head_reads: AtomicU32::new(0) }))
    }

    #[tokio::test]
    async fn entries_appended_during_a_verification_are_followed_not_reported() {
        let (_dir, log) = busy(2).await;
        let report = AuditService::new(log.clone()).verify(&caller()).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.checked, 5, "the walk went on to the entries appended while it ran");
    }

    #[tokio::test]
    async fn a_head_ahead_of_removed_entries_is_reported_after_one_look() {
        let (dir, log) = busy(0).await;
        let editor = rusqlite::Connection::open(dir.path().join("audit.db")).unwrap();
        assert_eq!(editor.execute("DELETE FROM audit WHERE seq = 3", []).unwrap(), 1);
        let report = AuditService::new(log.clone()).verify(&caller()).await.unwrap();
        assert_eq!((report.ok, report.first_bad), (false, Some(3)), "{report:?}");
        assert_eq!(log.head_reads.load(Ordering::SeqCst), 2, "one walk on, which found nothing");
    }

    #[tokio::test]
    async fn a_head_that_keeps_moving_is_followed_a_bounded_number_of_times() {
        let (_dir, log) = busy(u32::MAX).await;
        let report = AuditService::new(log.clone()).verify(&caller()).await.unwrap();
        assert_eq!(log.head_reads.load(Ordering::SeqCst), MAX_CATCH_UPS + 1);
        assert!(!report.ok, "a head still ahead after every catch-up is reported: {report:?}");
    }
}
