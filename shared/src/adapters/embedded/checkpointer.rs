//! WAL checkpoints off the request path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages: that
//! request waits while the WAL and the database file are copied and synced, and so does every
//! request queued behind the connection (milliseconds, the proxy's p99). The store turns the
//! automatic checkpoint off and this thread, on a connection of its own, runs a passive
//! checkpoint a few times a second instead; in WAL mode it runs beside the writer without
//! blocking it, and once it has caught up the next write starts the WAL file over.

use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use rusqlite::Connection;

use crate::ports::StoreError;

const EVERY: Duration = Duration::from_millis(250);

/// Checkpoints the database at `path` until `owner` is gone.
pub(super) fn start<T: Send + Sync + 'static>(path: &Path, owner: Weak<T>) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EVERY);
                if owner.strong_count() == 0 {
                    return;
                }
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries");
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
    Ok(())
}
