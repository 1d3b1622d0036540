//! WAL checkpoints off the request path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages: that
//! request waits while the WAL and the database file are copied and synced, and so does every
//! request queued behind the connection (milliseconds, the proxy's p99). The store turns the
//! automatic checkpoint off and this thread, on a connection of its own, runs a passive
//! checkpoint a few times a second instead; in WAL mode it runs beside the writer without
//! blocking it.
//!
//! A passive checkpoint alone never catches up under steady writes: frames committed while it
//! copies are left for the next one, the log is never fully copied at a moment when no write is
//! under way, so it never starts over, and the WAL file grows without end (measured: 650 MB in
//! 30 s of proxying at 2,000 req/s, every commit slower as the file and its index grew). So after
//! each passive pass the thread finishes on the store's own connection: holding it, no write of
//! this process runs, the few frames left are copied, and the next write starts the WAL from its
//! beginning. Writers wait for that short pass (at most one sync of the database file), not for
//! the bulk copy, which the first pass did beside them.

use std::path::Path;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use rusqlite::Connection;

use crate::ports::StoreError;

const EVERY: Duration = Duration::from_millis(250);

/// What `PRAGMA wal_checkpoint` reports: frames in the log, frames copied to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Progress {
    pub log: i64,
    pub copied: i64,
}

impl Progress {
    /// Everything in the log is in the database: the next write starts the log over.
    pub fn caught_up(self) -> bool {
        self.copied >= self.log
    }
}

pub(super) fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<Progress> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok(Progress { log: r.get(1)?, copied: r.get(2)? }))
}

/// One round: the bulk copy beside the writers, then the rest with the store's connection held.
/// The second pass runs even when the first caught up: a write already under way when the first
/// finished would keep the log from starting over. With nothing left to copy it syncs nothing.
pub(super) fn checkpoint_round(own: &Connection, shared: &Mutex<Connection>) -> rusqlite::Result<Progress> {
    let progress = passive_checkpoint(own)?;
    if progress.log <= 0 {
        return Ok(progress);
    }
    let shared = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    passive_checkpoint(&shared)
}

/// Checkpoints the database at `path` until the store's connection `shared` is gone (the store
/// and its admission writer both hold it).
pub(super) fn start(path: &Path, shared: Weak<Mutex<Connection>>) -> Result<(), StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EVERY);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                match checkpoint_round(&conn, &shared) {
                    // Another process reading an older snapshot holds the rest back.
                    Ok(progress) if !progress.caught_up() => {
                        tracing::debug!(log = progress.log, copied = progress.copied, "WAL checkpoint left frames for the next round")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; the next one retries"),
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A writer that never pauses long enough for a passive pass to catch up: every round still
    /// ends with the whole log copied, and the log starts over (each round finds only the frames
    /// written since the one before, not all of them).
    #[test]
    fn every_round_catches_up_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "synchronous", "NORMAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.busy_timeout(Duration::from_secs(5)).unwrap();
        writer.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)").unwrap();
        let shared = Arc::new(Mutex::new(writer));
        let own = Connection::open(&path).unwrap();
        own.busy_timeout(Duration::from_secs(5)).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let writing = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut commits = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let conn = shared.lock().unwrap();
                    conn.execute("INSERT OR REPLACE INTO t (id, v) VALUES (?1, zeroblob(3000))", [commits % 64]).unwrap();
                    drop(conn);
                    commits += 1;
                }
                commits
            })
        };
        let mut rounds = Vec::new();
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(30));
            rounds.push(checkpoint_round(&own, &shared).unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        let commits = writing.join().unwrap();
        assert!(commits > 0);
        assert!(rounds.iter().all(|p| p.caught_up()), "every round ends with the log copied: {rounds:?}");
        // Without a restart the log only grows from round to round.
        assert!(rounds.windows(2).any(|w| w[1].log < w[0].log), "the log never started over: {rounds:?}");
    }
}
