//! Reading the audit trail and verifying its hash chain.

use std::sync::Arc;

use crate::domain::access::Caller;
use crate::domain::audit::{AuditEntry, ChainReport, ChainVerifier};
use crate::ports::{AuditFilter, AuditLog, Page, StoreError};

use super::{ServiceError, cursor};

const VERIFY_BATCH: usize = 500;

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

    /// Walks the workspace's whole chain in batches.
    pub async fn verify(&self, caller: &Caller) -> Result<ChainReport, ServiceError> {
        let mut verifier = ChainVerifier::new();
        let mut after = 0;
        let mut batch_size = VERIFY_BATCH;
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
            let Some(last) = batch.last() else { break };
            after = last.seq;
            let full = batch.len() == batch_size;
            for entry in &batch {
                verifier.feed(entry);
            }
            if verifier.is_broken() || !full {
                break;
            }
        }
        let head = self.log.chain_head(&caller.workspace).await?;
        Ok(verifier.finish(head))
    }
}
