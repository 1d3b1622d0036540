//! SQLite implementation of `JobLeases` for `SqliteStore`.
//!
//! # Table
//!
//! `job_leases` (created with the store's schema): one row per job name, `holder` and `until`
//! (`ts()` text: fixed-width RFC 3339, so text order is time order) while the lease is held or
//! since it expired, both NULL once released; `position` is what the last run saved (NULL = none)
//! and outlives the lease.
//!
//! # Contract
//!
//! - `acquire` is ONE conditional upsert in a `BEGIN IMMEDIATE` transaction: the row is created
//!   (no position yet) or taken over when it is free (`until` NULL), expired (`until <= now`) or
//!   already held by the same holder; it then holds `holder` until `until` and the saved position
//!   is returned. Otherwise nothing changes and the current `until` is read in the same
//!   transaction for `LeaseError::Held`.
//! - `release` is one conditional update on `holder`: it saves the position (None clears it) and
//!   frees the lease (`holder`, `until` NULL), and tells whether it did. Once another holder has
//!   taken an expired lease, the late run's release changes nothing. (The port gives `release` no
//!   `now`: a holder whose lease expired but that nobody took over still saves its position.)

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::sqlite_store::{SqliteStore, parse_ts, ts, unavailable};
use crate::ports::{JobLeases, LeaseError, StoreError};

fn acquire_in(
    conn: &mut Connection,
    job: &str,
    holder: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Option<String>, LeaseError> {
    // The write lock up front: the read of a refusal sees the row the refusal saw.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
    // `RETURNING` gives a row only when the insert or the update happened; a refused
    // `DO UPDATE ... WHERE` gives none.
    let taken: Option<Option<String>> = tx
        .prepare_cached(
            "INSERT INTO job_leases (job, holder, until, position) VALUES (?1, ?2, ?4, NULL)
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE job_leases.until IS NULL OR job_leases.until <= ?3 OR job_leases.holder = ?2
             RETURNING position",
        )
        .and_then(|mut s| s.query_row(params![job, holder, ts(&now), ts(&until)], |r| r.get(0)).optional())
        .map_err(unavailable)?;
    if let Some(position) = taken {
        tx.commit().map_err(unavailable)?;
        return Ok(position);
    }
    let held_until: Option<String> =
        tx.query_row("SELECT until FROM job_leases WHERE job = ?1", [job], |r| r.get(0)).optional().map_err(unavailable)?.flatten();
    tx.rollback().map_err(unavailable)?;
    let until = held_until.ok_or_else(|| StoreError::Corrupt(format!("the lease of `{job}` was refused but has no `until`")))?;
    Err(LeaseError::Held { until: parse_ts(&until)? })
}

fn release_in(conn: &Connection, job: &str, holder: &str, position: Option<&str>) -> Result<bool, StoreError> {
    let changed = conn
        .execute(
            "UPDATE job_leases SET holder = NULL, until = NULL, position = ?3 WHERE job = ?1 AND holder = ?2",
            params![job, holder, position],
        )
        .map_err(unavailable)?;
    Ok(changed == 1)
}

#[async_trait]
impl JobLeases for SqliteStore {
    async fn acquire(&self, job: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<Option<String>, LeaseError> {
        let (job, holder) = (job.to_owned(), holder.to_owned());
        // `run` speaks `StoreError`; the lease's own answer travels inside its `Ok`.
        self.run(move |conn| match acquire_in(conn, &job, &holder, now, until) {
            Ok(position) => Ok(Ok(position)),
            Err(LeaseError::Store(e)) => Err(e),
            Err(held) => Ok(Err(held)),
        })
        .await?
    }

    async fn release(&self, job: &str, holder: &str, position: Option<&str>) -> Result<bool, StoreError> {
        let (job, holder, position) = (job.to_owned(), holder.to_owned(), position.map(str::to_owned));
        self.run(move |conn| release_in(conn, &job, &holder, position.as_deref())).await
    }
}
