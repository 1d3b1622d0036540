//! SQLite (one file, WAL) implementation of `KeyStore` and `AuditLog`.
//!
//! Tables: `keys` (one row per key record, the record as JSON beside the columns that constraints
//! and queries need), `key_material` (sealed material per key version), `audit` (every field a
//! column, so an edit of any of them breaks the hash chain), `audit_heads` (per workspace the
//! newest entry's seq and hash, written in the same transaction as the entry).
//! `keys.last_used_at` is kept beside the record (the proxy's admission sets it, see
//! `sqlite_metering`) and overlaid onto every record read, so record writes never race it.
//! `keys.key_version` repeats the record's, and `keys.environment` holds the key's environment
//! exactly while it is not revoked (see `slot_column`): the admission's key check reads those two
//! columns, never the JSON.
//! Sees sealed material only, never plaintext.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::admission_writer::AdmissionWriter;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::domain::access::Role;
use crate::domain::audit::{AuditDraft, AuditEntry, GENESIS_HASH, Outcome};
use crate::domain::consistency::WorkspaceSnapshot;
use crate::domain::environment::Environment;
use crate::domain::keys::{KeyRecord, KeyStatus, TestResult};
use crate::ports::{AuditFilter, AuditLog, KeyStore, MaterialChange, Page, SealedMaterial, StoreError, parse_scan_position, scan_position};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS keys (
    workspace   TEXT NOT NULL,
    id          TEXT NOT NULL,
    provider    TEXT NOT NULL,
    environment TEXT NOT NULL,
    version     INTEGER NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (workspace, id),
    UNIQUE (workspace, provider, environment)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_material (
    workspace   TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    key_version INTEGER NOT NULL,
    scheme      TEXT NOT NULL,
    blob        BLOB NOT NULL,
    PRIMARY KEY (workspace, key_id, key_version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    workspace   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    id          TEXT NOT NULL,
    time        TEXT NOT NULL,
    actor_sub   TEXT NOT NULL,
    actor_email TEXT NOT NULL,
    role        TEXT NOT NULL,
    action      TEXT NOT NULL,
    provider    TEXT,
    environment TEXT,
    key_id      TEXT,
    outcome     TEXT NOT NULL,
    source_ip   TEXT NOT NULL,
    user_agent  TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT,
    detail      TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (workspace, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_heads (
    workspace TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_leases (
    job      TEXT PRIMARY KEY,
    holder   TEXT,
    until    TEXT,
    position TEXT
) WITHOUT ROWID;
"#;

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// The proxy's per-request writes, group-committed on a thread of their own.
    pub(super) admissions: Arc<AdmissionWriter>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
        }
        make_private(path)?;
        let conn = Connection::open(path).map_err(unavailable)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(unavailable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(unavailable)?;
        // Checkpoints run on their own thread (see `checkpointer`), not inside a request's commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(unavailable)?;
        // When the log starts over, a WAL file grown larger than this (a burst, or an older
        // version of the store) is cut back.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024).map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        add_key_version_column(&conn)?;
        super::sqlite_metering::migrate(&conn)?;
        let conn = Arc::new(Mutex::new(conn));
        let admissions = Arc::new(AdmissionWriter::start(conn.clone())?);
        super::checkpointer::start(path, Arc::downgrade(&conn))?;
        Ok(SqliteStore { conn, admissions })
    }

    /// Runs `work` on the connection off the async threads.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// The database holds sealed keys, audit and usage: readable by its owner only, like the master
/// key beside it. A new file is created 0600 before SQLite opens it (SQLite gives its WAL and
/// shared-memory files the database file's mode); an existing one is narrowed to 0600.
fn make_private(path: &Path) -> Result<(), StoreError> {
    let fail = |e: std::io::Error| StoreError::Unavailable(format!("cannot make {} private: {e}", path.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path).map_err(fail)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)).map_err(fail)?;
                }
            }
            Err(e) => return Err(fail(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = fail;
    Ok(())
}

pub(super) fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(super) fn ts(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Fails unless the key exists at `expected` (the optimistic lock of delete and revoke).
fn expect_version(tx: &Transaction<'_>, workspace: &str, id: &str, expected: u64) -> Result<(), StoreError> {
    let current: Option<u64> = tx
        .query_row("SELECT version FROM keys WHERE workspace = ?1 AND id = ?2", params![workspace, id], |r| r.get(0))
        .optional()
        .map_err(unavailable)?;
    match current {
        None => Err(StoreError::NotFound),
        Some(v) if v != expected => Err(StoreError::VersionMismatch),
        Some(_) => Ok(()),
    }
}

/// The `environment` column of a revoked key: unique per key, never a real environment.
fn revoked_slot(id: &str) -> String {
    format!("revoked:{id}")
}

/// The UNIQUE (workspace, provider, environment) constraint is the slot: a revoked key gives it
/// up by carrying a tombstone in the column (its record keeps the environment).
fn slot_column(record: &KeyRecord) -> String {
    if record.status == KeyStatus::Revoked { revoked_slot(&record.id) } else { record.environment.as_str().to_owned() }
}

/// Data files from before `keys.key_version` get the column, filled from the records, in one
/// transaction (a half-done migration would leave keys that never pass the key check).
fn add_key_version_column(conn: &Connection) -> Result<(), StoreError> {
    if column_exists(conn, "keys", "key_version")? {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE keys ADD COLUMN key_version INTEGER;
         UPDATE keys SET key_version = json_extract(doc, '$.key_version');
         COMMIT;",
    )
    .map_err(unavailable)
}

pub(super) fn column_exists(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    conn.query_row("SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)", params![table, column], |r| r.get(0))
        .map_err(unavailable)
}

fn record_doc(record: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(corrupt)
}

fn record_from(workspace: &str, doc: &str) -> Result<KeyRecord, StoreError> {
    let mut record: KeyRecord = serde_json::from_str(doc).map_err(corrupt)?;
    record.workspace = workspace.to_owned();
    Ok(record)
}

pub(super) fn parse_ts(text: &str) -> Result<DateTime<Utc>, StoreError> {
    Ok(DateTime::parse_from_rfc3339(text).map_err(corrupt)?.with_timezone(&Utc))
}

/// A record as read: the doc with the `last_used_at` column laid over it.
fn record_read(workspace: &str, doc: &str, last_used_at: Option<&str>) -> Result<KeyRecord, StoreError> {
    let mut record = record_from(workspace, doc)?;
    if let Some(used) = last_used_at {
        record.last_used_at = Some(parse_ts(used)?);
    }
    Ok(record)
}

fn doc_and_use(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>)> {
    Ok((row.get(0)?, row.get(1)?))
}

/// Appends `draft` to its workspace's chain inside `tx`.
pub(super) fn append_in(tx: &Transaction<'_>, draft: AuditDraft) -> Result<AuditEntry, StoreError> {
    let head: Option<(u64, String)> = tx
        .query_row("SELECT seq, hash FROM audit_heads WHERE workspace = ?1", [&draft.workspace], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(unavailable)?;
    let (seq, prev) = head.map(|(s, h)| (s + 1, h)).unwrap_or((1, GENESIS_HASH.to_owned()));
    let e = draft.chain(seq, &prev);
    tx.execute(
        "INSERT INTO audit (workspace, seq, id, time, actor_sub, actor_email, role, action, provider, environment, key_id,
                            outcome, source_ip, user_agent, request_id, fingerprint, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        params![
            e.workspace,
            e.seq,
            e.id,
            ts(&e.time),
            e.actor_sub,
            e.actor_email,
            e.role.as_str(),
            e.action,
            e.provider,
            e.environment.map(|v| v.as_str()),
            e.key_id,
            e.outcome.as_str(),
            e.source_ip,
            e.user_agent,
            e.request_id,
            e.fingerprint,
            e.detail,
            e.prev_hash,
            e.hash
        ],
    )
    .map_err(unavailable)?;
    tx.execute(
        "INSERT INTO audit_heads (workspace, seq, hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (workspace) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![e.workspace, e.seq, e.hash],
    )
    .map_err(unavailable)?;
    Ok(e)
}

fn audit_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditEntry, StoreError>> {
    // Every column is read as `Corrupt` on failure: a value edited to another type (a BLOB in
    // `time`) is tampering for `verify` to report, not an unavailable store.
    let build = || -> Result<AuditEntry, StoreError> {
        let time: String = row.get("time").map_err(corrupt)?;
        let role: String = row.get("role").map_err(corrupt)?;
        let outcome: String = row.get("outcome").map_err(corrupt)?;
        let environment: Option<String> = row.get("environment").map_err(corrupt)?;
        Ok(AuditEntry {
            seq: row.get("seq").map_err(corrupt)?,
            id: row.get("id").map_err(corrupt)?,
            time: DateTime::parse_from_rfc3339(&time).map_err(corrupt)?.with_timezone(&Utc),
            workspace: row.get("workspace").map_err(corrupt)?,
            actor_sub: row.get("actor_sub").map_err(corrupt)?,
            actor_email: row.get("actor_email").map_err(corrupt)?,
            role: Role::parse(&role).ok_or_else(|| corrupt(format!("role `{role}`")))?,
            action: row.get("action").map_err(corrupt)?,
            provider: row.get("provider").map_err(corrupt)?,
            environment: match environment {
                None => None,
                Some(e) => Some(Environment::parse(&e).ok_or_else(|| corrupt(format!("environment `{e}`")))?),
            },
            key_id: row.get("key_id").map_err(corrupt)?,
            outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt(format!("outcome `{outcome}`")))?,
            source_ip: row.get("source_ip").map_err(corrupt)?,
            user_agent: row.get("user_agent").map_err(corrupt)?,
            request_id: row.get("request_id").map_err(corrupt)?,
            fingerprint: row.get("fingerprint").map_err(corrupt)?,
            detail: row.get("detail").map_err(corrupt)?,
            prev_hash: row.get("prev_hash").map_err(corrupt)?,
            hash: row.get("hash").map_err(corrupt)?,
        })
    };
    Ok(build())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert(&self, record: &KeyRecord, sealed: &SealedMaterial, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let record = record.clone();
        let sealed = sealed.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let inserted = tx.execute(
                "INSERT INTO keys (workspace, id, provider, environment, version, doc, key_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    record.workspace,
                    record.id,
                    record.provider,
                    slot_column(&record),
                    record.version,
                    record_doc(&record)?,
                    record.key_version
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => return Err(StoreError::SlotTaken),
                other => other.map_err(unavailable)?,
            };
            tx.execute(
                "INSERT INTO key_material (workspace, key_id, key_version, scheme, blob) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![record.workspace, record.id, record.key_version, sealed.scheme, sealed.blob],
            )
            .map_err(unavailable)?;
            let entry = append_in(&tx, audit)?;
            tx.commit().map_err(unavailable)?;
            Ok(entry)
        })
        .await
    }

    async fn get(&self, workspace: &str, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let (workspace, id) = (workspace.to_owned(), id.to_owned());
        self.run(move |conn| {
            let row = conn
                .query_row("SELECT doc, last_used_at FROM keys WHERE workspace = ?1 AND id = ?2", params![workspace, id], doc_and_use)
                .optional()
                .map_err(unavailable)?;
            row.map(|(doc, used)| record_read(&workspace, &doc, used.as_deref())).transpose()
        })
        .await
    }

    async fn list(&self, workspace: &str, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        let (workspace, after) = (workspace.to_owned(), after.unwrap_or("").to_owned());
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT doc, last_used_at FROM keys WHERE workspace = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
                .map_err(unavailable)?;
            let rows: Vec<(String, Option<String>)> = stmt
                .query_map(params![workspace, after, limit as i64 + 1], doc_and_use)
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            let mut items = rows.iter().map(|(d, used)| record_read(&workspace, d, used.as_deref())).collect::<Result<Vec<_>, _>>()?;
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|r| r.id.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        let (after_workspace, after_id) = after.map(parse_scan_position).transpose()?.unwrap_or_default();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT workspace, doc, last_used_at FROM keys WHERE (workspace, id) > (?1, ?2) ORDER BY workspace, id LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows: Vec<(String, String, Option<String>)> = stmt
                .query_map(params![after_workspace, after_id, limit as i64 + 1], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            let mut items = rows.iter().map(|(ws, d, used)| record_read(ws, d, used.as_deref())).collect::<Result<Vec<_>, _>>()?;
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|r| scan_position(&r.workspace, &r.id))
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn find_slot(&self, workspace: &str, provider: &str, environment: Environment) -> Result<Option<KeyRecord>, StoreError> {
        let (workspace, provider) = (workspace.to_owned(), provider.to_owned());
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT doc, last_used_at FROM keys WHERE workspace = ?1 AND provider = ?2 AND environment = ?3",
                    params![workspace, provider, environment.as_str()],
                    doc_and_use,
                )
                .optional()
                .map_err(unavailable)?;
            row.map(|(doc, used)| record_read(&workspace, &doc, used.as_deref())).transpose()
        })
        .await
    }

    async fn update(
        &self,
        record: &KeyRecord,
        expected_version: u64,
        material: MaterialChange<'_>,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        let record = record.clone();
        let written = material.written(record.key_version).map(|(v, sealed)| (v, sealed.clone()));
        let retained = material.retained(record.key_version);
        let kept = move |v: u32| retained.as_ref().is_none_or(|keep| keep.contains(&v));
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let changed = tx.execute(
                "UPDATE keys SET provider = ?3, environment = ?4, version = ?5, doc = ?6, key_version = ?8
                 WHERE workspace = ?1 AND id = ?2 AND version = ?7",
                params![
                    record.workspace,
                    record.id,
                    record.provider,
                    slot_column(&record),
                    record.version,
                    record_doc(&record)?,
                    expected_version,
                    record.key_version
                ],
            );
            let changed = match changed {
                Err(e) if is_unique_violation(&e) => return Err(StoreError::SlotTaken),
                other => other.map_err(unavailable)?,
            };
            if changed == 0 {
                let exists: bool = tx
                    .query_row("SELECT 1 FROM keys WHERE workspace = ?1 AND id = ?2", params![record.workspace, record.id], |_| Ok(true))
                    .optional()
                    .map_err(unavailable)?
                    .unwrap_or(false);
                return Err(if exists { StoreError::VersionMismatch } else { StoreError::NotFound });
            }
            if let Some((version, sealed)) = &written {
                tx.execute(
                    "INSERT INTO key_material (workspace, key_id, key_version, scheme, blob) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![record.workspace, record.id, version, sealed.scheme, sealed.blob],
                )
                .map_err(unavailable)?;
            }
            let stored: Vec<u32> = {
                let mut stmt =
                    tx.prepare_cached("SELECT key_version FROM key_material WHERE workspace = ?1 AND key_id = ?2").map_err(unavailable)?;
                stmt.query_map(params![record.workspace, record.id], |row| row.get(0))
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?
            };
            for version in stored.into_iter().filter(|v| !kept(*v)) {
                tx.execute(
                    "DELETE FROM key_material WHERE workspace = ?1 AND key_id = ?2 AND key_version = ?3",
                    params![record.workspace, record.id, version],
                )
                .map_err(unavailable)?;
            }
            let entry = append_in(&tx, audit)?;
            tx.commit().map_err(unavailable)?;
            Ok(entry)
        })
        .await
    }

    async fn delete(&self, workspace: &str, id: &str, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let (workspace, id) = (workspace.to_owned(), id.to_owned());
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            expect_version(&tx, &workspace, &id, expected_version)?;
            tx.execute("DELETE FROM key_material WHERE workspace = ?1 AND key_id = ?2", params![workspace, id]).map_err(unavailable)?;
            tx.execute("DELETE FROM keys WHERE workspace = ?1 AND id = ?2", params![workspace, id]).map_err(unavailable)?;
            let entry = append_in(&tx, audit)?;
            tx.commit().map_err(unavailable)?;
            Ok(entry)
        })
        .await
    }

    async fn revoke(&self, record: &KeyRecord, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let record = record.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            expect_version(&tx, &record.workspace, &record.id, expected_version)?;
            tx.execute(
                "UPDATE keys SET doc = ?3, version = ?4, environment = ?5, key_version = ?6 WHERE workspace = ?1 AND id = ?2",
                params![record.workspace, record.id, record_doc(&record)?, record.version, revoked_slot(&record.id), record.key_version],
            )
            .map_err(unavailable)?;
            tx.execute("DELETE FROM key_material WHERE workspace = ?1 AND key_id = ?2", params![record.workspace, record.id])
                .map_err(unavailable)?;
            let entry = append_in(&tx, audit)?;
            tx.commit().map_err(unavailable)?;
            Ok(entry)
        })
        .await
    }

    async fn material(&self, workspace: &str, id: &str, key_version: u32) -> Result<Option<SealedMaterial>, StoreError> {
        let (workspace, id) = (workspace.to_owned(), id.to_owned());
        self.run(move |conn| {
            conn.query_row(
                "SELECT scheme, blob FROM key_material WHERE workspace = ?1 AND key_id = ?2 AND key_version = ?3",
                params![workspace, id, key_version],
                |r| Ok(SealedMaterial { scheme: r.get(0)?, blob: r.get(1)? }),
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn snapshot(&self, workspace: &str) -> Result<WorkspaceSnapshot, StoreError> {
        let workspace = workspace.to_owned();
        self.run(move |conn| {
            let mut records = Vec::new();
            let mut stmt =
                conn.prepare_cached("SELECT doc, last_used_at FROM keys WHERE workspace = ?1 ORDER BY id").map_err(unavailable)?;
            let rows: Vec<(String, Option<String>)> =
                stmt.query_map([&workspace], doc_and_use).map_err(unavailable)?.collect::<Result<_, _>>().map_err(unavailable)?;
            for (doc, used) in &rows {
                records.push(record_read(&workspace, doc, used.as_deref())?);
            }
            // The UNIQUE (workspace, provider, environment) constraint is the slot; revoked keys
            // have given theirs up.
            let slots = records
                .iter()
                .filter(|r: &&KeyRecord| r.status != KeyStatus::Revoked)
                .map(|r| (r.provider.clone(), r.environment, r.id.clone()))
                .collect();
            let mut stmt = conn.prepare_cached("SELECT key_id, key_version FROM key_material WHERE workspace = ?1").map_err(unavailable)?;
            let materials = stmt
                .query_map([&workspace], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(unavailable)?
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            Ok(WorkspaceSnapshot { records, slots, materials })
        })
        .await
    }

    async fn record_test(
        &self,
        workspace: &str,
        id: &str,
        result: &TestResult,
        status: KeyStatus,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        let (workspace, id, result) = (workspace.to_owned(), id.to_owned(), result.clone());
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let doc: Option<String> = tx
                .query_row("SELECT doc FROM keys WHERE workspace = ?1 AND id = ?2", params![workspace, id], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            let mut record = record_from(&workspace, &doc.ok_or(StoreError::NotFound)?)?;
            record.last_verified_at = Some(result.tested_at);
            record.last_test = Some(result);
            record.status = status;
            tx.execute("UPDATE keys SET doc = ?3 WHERE workspace = ?1 AND id = ?2", params![workspace, id, record_doc(&record)?])
                .map_err(unavailable)?;
            let entry = append_in(&tx, audit)?;
            tx.commit().map_err(unavailable)?;
            Ok(entry)
        })
        .await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append(&self, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let entry = append_in(&tx, audit)?;
            tx.commit().map_err(unavailable)?;
            Ok(entry)
        })
        .await
    }

    async fn list(
        &self,
        workspace: &str,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let workspace = workspace.to_owned();
        let filter = filter.clone();
        let before: Option<u64> = match before {
            None => None,
            Some(b) => Some(b.parse().map_err(|_| corrupt("audit cursor"))?),
        };
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT * FROM audit WHERE workspace = ?1
                       AND (?2 IS NULL OR seq < ?2)
                       AND (?3 IS NULL OR action = ?3)
                       AND (?4 IS NULL OR provider = ?4)
                       AND (?5 IS NULL OR actor_sub = ?5 OR actor_email = ?5)
                       AND (?6 IS NULL OR key_id = ?6)
                       AND (?7 IS NULL OR time >= ?7)
                       AND (?8 IS NULL OR time < ?8)
                     ORDER BY seq DESC LIMIT ?9",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![
                        workspace,
                        before,
                        filter.action,
                        filter.provider,
                        filter.actor,
                        filter.key_id,
                        filter.from.as_ref().map(ts),
                        filter.to.as_ref().map(ts),
                        limit as i64 + 1
                    ],
                    audit_from_row,
                )
                .map_err(unavailable)?;
            let mut items = Vec::new();
            for row in rows {
                items.push(row.map_err(unavailable)??);
            }
            let next = if items.len() > limit {
                items.truncate(limit);
                items.last().map(|e| e.seq.to_string())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn chain_slice(&self, workspace: &str, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let workspace = workspace.to_owned();
        self.run(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT * FROM audit WHERE workspace = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3").map_err(unavailable)?;
            let rows = stmt.query_map(params![workspace, after_seq, limit as i64], audit_from_row).map_err(unavailable)?;
            let mut items = Vec::new();
            for row in rows {
                items.push(row.map_err(unavailable)??);
            }
            Ok(items)
        })
        .await
    }

    async fn chain_head(&self, workspace: &str) -> Result<Option<(u64, String)>, StoreError> {
        let workspace = workspace.to_owned();
        self.run(move |conn| {
            conn.query_row("SELECT seq, hash FROM audit_heads WHERE workspace = ?1", [workspace], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(unavailable)
        })
        .await
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_database_and_its_log_are_readable_by_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.db");
        let store = SqliteStore::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
        for companion in ["fresh.db-wal", "fresh.db-shm"] {
            assert_eq!(mode(&dir.path().join(companion)), 0o600, "{companion}");
        }
        drop(store);

        // A file an older version left world-readable is narrowed when it is opened.
        let older = dir.path().join("older.db");
        std::fs::write(&older, b"").unwrap();
        std::fs::set_permissions(&older, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = SqliteStore::open(&older).unwrap();
        assert_eq!(mode(&older), 0o600);
    }
}
