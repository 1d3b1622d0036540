//! Runs the consistency check of `domain::consistency` against a store: the tests call it after
//! every injected fault, operators through `stockpulse-local --check-workspace <id>`.

use crate::domain::audit::ChainVerifier;
use crate::domain::consistency::{ConsistencyReport, check};
use crate::ports::{AuditLog, KeyStore, StoreError};

const BATCH: usize = 500;

pub async fn check_workspace(keys: &dyn KeyStore, audit: &dyn AuditLog, workspace: &str) -> Result<ConsistencyReport, StoreError> {
    let snapshot = keys.snapshot(workspace).await?;
    let mut entries = Vec::new();
    let mut verifier = ChainVerifier::new();
    loop {
        let batch = audit.chain_slice(workspace, entries.last().map_or(0, |e: &crate::domain::audit::AuditEntry| e.seq), BATCH).await?;
        batch.iter().for_each(|e| verifier.feed(e));
        let full = batch.len() == BATCH;
        entries.extend(batch);
        if !full {
            break;
        }
    }
    let chain = verifier.finish(audit.chain_head(workspace).await?);
    Ok(check(workspace, &snapshot, &entries, &chain))
}
