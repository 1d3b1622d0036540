//! SQLite implementation of `MeterStore`, `ResponseCache` and `NotificationStore` for
//! `SqliteStore`. It shares the store's connection, so an admission checks the key row and counts
//! the request in one transaction.
//!
//! # Contract
//!
//! - `admit` is all or nothing, and durable when it answers. Admissions waiting together share
//!   one write transaction (`BEGIN IMMEDIATE`) and one commit, each in a savepoint of its own, in
//!   arrival order (group commit, see `admission_writer`):
//!   1. Key check: the key row (workspace, key id) must exist, its record's `key_version` must
//!      equal the admission's and its status must not be `revoked` (read from the row's columns:
//!      `key_version`, and `environment`, which holds the meter's environment only while the key
//!      is not revoked); otherwise nothing is written and the verdict is `KeyChanged`. The row's `last_used_at` becomes `now` (never moves back).
//!   2. A counted admission adds one request to the meter's minute, day and month windows, each
//!      only while below its limit, and only while the month's tokens are below the token limit.
//!      Limits are checked in `LimitKind::ALL` order; the first one reached rolls everything back
//!      (usage records included) and the verdict is `Limited` with the counters as they are.
//!      Uncounted admissions (cache hits) are never limited and move no counter.
//!   3. Every usage record is added field by field to its (workspace, provider, environment, day)
//!      row, latency buckets element-wise; the latest non-empty `provider_limits` (by
//!      `observed_at`) are kept; input + output tokens go to the month token counter of the
//!      record's meter (the month containing the record's day).
//!   4. `Admitted` carries the admission meter's counters in the windows of `now` after the write.
//!
//!   Minute windows of the meter older than the current one are deleted by its counted admissions.
//! - `record_usage` is step 3 alone, in one transaction.
//! - `usage` lists days in (provider, environment id, day) order, range inclusive.
//! - `counters` reads zeros where nothing was counted.
//! - `put_policy` replaces the meter's limits together with its audit entry.
//! - The response cache is keyed (workspace, provider, key); `get` ignores entries with
//!   `expires_at <= now`; `put` replaces (and drops expired entries of that workspace+provider);
//!   `purge` deletes every entry of workspace+provider and returns how many.
//! - A notification is stored with its audit entry unless the workspace already has one with the
//!   same dedupe key (or id): then nothing is written and `notify` returns `None`. Lists are newest
//!   first (UUIDv7 ids are time-ordered) and page by id; `mark_read` keeps an earlier `read_at`.
//!
//! # Tables
//!
//! - `meter_minutes` (workspace, provider, environment, minute since the epoch) → requests.
//! - `usage_days` (workspace, provider, environment, day `YYYY-MM-DD`) → every `UsageCounts` field
//!   (latency buckets as JSON), provider limits (JSON) and when they were seen. Its `requests`
//!   column is also the day's request counter.
//! - `meter_months` (workspace, provider, environment, month `YYYY-MM`) → requests, tokens.
//! - `quota_policies` (workspace, provider, environment) → limits (JSON).
//! - `response_cache` (workspace, provider, key) → status, headers (JSON), body (BLOB), times.
//! - `notifications` (workspace, id), UNIQUE (workspace, dedupe_key).
//!
//! Times are stored as `ts()` text (fixed-width RFC 3339, nanoseconds, `Z`), so text order is
//! time order. These ports never see key material.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rusqlite::types::ToSql;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::sqlite_store::{SqliteStore, append_in, column_exists, corrupt, parse_ts, ts, unavailable};
use crate::domain::audit::{AuditDraft, AuditEntry};
use crate::domain::environment::Environment;
use crate::domain::metering::{Counters, LimitKind, Limits, MeterKey, UsageCounts, UsageDay, UsageRecord, Windows};
use crate::domain::notifications::{Notification, NotificationKind};
use crate::domain::response_cache::CachedAnswer;
use crate::ports::{Admission, MeterStore, NotificationStore, Page, ResponseCache, StoreError, Verdict};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meter_minutes (
    workspace   TEXT NOT NULL,
    provider    TEXT NOT NULL,
    environment TEXT NOT NULL,
    minute      INTEGER NOT NULL,
    requests    INTEGER NOT NULL,
    PRIMARY KEY (workspace, provider, environment, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_days (
    workspace          TEXT NOT NULL,
    provider           TEXT NOT NULL,
    environment        TEXT NOT NULL,
    day                TEXT NOT NULL,
    requests           INTEGER NOT NULL DEFAULT 0,
    cache_hits         INTEGER NOT NULL DEFAULT 0,
    rate_limited       INTEGER NOT NULL DEFAULT 0,
    auth_errors        INTEGER NOT NULL DEFAULT 0,
    client_errors      INTEGER NOT NULL DEFAULT 0,
    server_errors      INTEGER NOT NULL DEFAULT 0,
    network_errors     INTEGER NOT NULL DEFAULT 0,
    latency_ms_buckets TEXT NOT NULL DEFAULT '[]',
    input_tokens       INTEGER NOT NULL DEFAULT 0,
    output_tokens      INTEGER NOT NULL DEFAULT 0,
    cost_micro_usd     INTEGER NOT NULL DEFAULT 0,
    provider_limits    TEXT NOT NULL DEFAULT '{}',
    provider_limits_at TEXT,
    PRIMARY KEY (workspace, provider, environment, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meter_months (
    workspace   TEXT NOT NULL,
    provider    TEXT NOT NULL,
    environment TEXT NOT NULL,
    month       TEXT NOT NULL,
    requests    INTEGER NOT NULL DEFAULT 0,
    tokens      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, provider, environment, month)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota_policies (
    workspace   TEXT NOT NULL,
    provider    TEXT NOT NULL,
    environment TEXT NOT NULL,
    limits      TEXT NOT NULL,
    PRIMARY KEY (workspace, provider, environment)
) WITHOUT ROWID;
-- A rowid table: bodies of up to 256 KiB are far above what WITHOUT ROWID stores well.
CREATE TABLE IF NOT EXISTS response_cache (
    workspace  TEXT NOT NULL,
    provider   TEXT NOT NULL,
    key        TEXT NOT NULL,
    status     INTEGER NOT NULL,
    headers    TEXT NOT NULL,
    body       BLOB NOT NULL,
    stored_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (workspace, provider, key)
);
CREATE TABLE IF NOT EXISTS notifications (
    workspace   TEXT NOT NULL,
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    provider    TEXT NOT NULL,
    environment TEXT NOT NULL,
    key_id      TEXT,
    message     TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    read_at     TEXT,
    dedupe_key  TEXT NOT NULL,
    PRIMARY KEY (workspace, id),
    UNIQUE (workspace, dedupe_key)
) WITHOUT ROWID;
"#;

/// Brings a data file up to this module's schema; files written before it keep their data.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    add_last_used_column(conn)?;
    conn.execute_batch(SCHEMA).map_err(unavailable)
}

/// `keys` of older data files lacks `last_used_at`; one code path (no column in the CREATE) means
/// fresh files take the same route as old ones.
fn add_last_used_column(conn: &Connection) -> Result<(), StoreError> {
    if !column_exists(conn, "keys", "last_used_at")? {
        conn.execute_batch("ALTER TABLE keys ADD COLUMN last_used_at TEXT").map_err(unavailable)?;
    }
    Ok(())
}

/// Every write here takes the write lock up front: reads inside it then decide nothing another
/// writer could change, even a second process on the same file.
fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)
}

/// The windows of a usage record's day (its minute is meaningless).
fn windows_of_day(day: NaiveDate) -> Windows {
    Windows::of(day.and_time(NaiveTime::MIN).and_utc())
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(corrupt)
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(corrupt)
}

fn environment_from(text: &str) -> Result<Environment, StoreError> {
    Environment::parse(text).ok_or_else(|| corrupt(format!("environment `{text}`")))
}

/// The first three parameters of every meter statement.
fn meter_params<'a>(meter: &'a MeterKey, rest: &[&'a dyn ToSql]) -> Vec<&'a dyn ToSql> {
    // Literals, not `as_str()`: the parameter list borrows them, so they must outlive this call.
    let environment: &'static &'static str = match meter.environment {
        Environment::Production => &"production",
        Environment::Development => &"development",
    };
    let mut all: Vec<&dyn ToSql> = vec![&meter.workspace, &meter.provider, environment];
    all.extend_from_slice(rest);
    all
}

// ---- admission -------------------------------------------------------------------------------

/// Admits a batch in ONE write transaction (group commit, see `admission_writer`): each
/// admission runs in a savepoint of its own and is all or nothing; one commit makes them durable.
/// A failed commit turns every admitted verdict into the error (nothing was written).
pub(super) fn admit_batch(conn: &mut Connection, admissions: &[&Admission]) -> Vec<Result<Verdict, StoreError>> {
    if let [alone] = admissions {
        return vec![admit_alone(conn, alone)];
    }
    let mut tx = match write_tx(conn) {
        Ok(tx) => tx,
        Err(e) => return admissions.iter().map(|_| Err(StoreError::Unavailable(e.to_string()))).collect(),
    };
    let verdicts: Vec<Result<Verdict, StoreError>> = admissions.iter().map(|admission| admit_one(&mut tx, admission)).collect();
    match tx.commit() {
        Ok(()) => verdicts,
        Err(e) => verdicts
            .into_iter()
            .map(|verdict| match verdict {
                Ok(Verdict::Admitted(_)) => Err(StoreError::Unavailable(e.to_string())),
                other => other,
            })
            .collect(),
    }
}

/// An admission with no company (the common case below saturation): its transaction is its
/// savepoint, which saves two statements per request.
fn admit_alone(conn: &mut Connection, admission: &Admission) -> Result<Verdict, StoreError> {
    let windows = Windows::of(admission.now);
    let tx = write_tx(conn)?;
    match write_admission(&tx, admission, &windows) {
        Ok(Written::Admitted(counters)) => {
            tx.commit().map_err(unavailable)?;
            Ok(Verdict::Admitted(counters))
        }
        Ok(Written::Limited(limit)) => {
            tx.rollback().map_err(unavailable)?;
            Ok(Verdict::Limited { limit, counters: read_counters(conn, &admission.meter, &windows)? })
        }
        Ok(Written::KeyChanged) => {
            tx.rollback().map_err(unavailable)?;
            Ok(Verdict::KeyChanged)
        }
        // Dropping the transaction rolls it back.
        Err(e) => Err(e),
    }
}

fn admit_one(tx: &mut Transaction<'_>, admission: &Admission) -> Result<Verdict, StoreError> {
    let windows = Windows::of(admission.now);
    let mut savepoint = tx.savepoint().map_err(unavailable)?;
    match write_admission(&savepoint, admission, &windows) {
        Ok(Written::Admitted(counters)) => {
            savepoint.commit().map_err(unavailable)?;
            Ok(Verdict::Admitted(counters))
        }
        Ok(Written::Limited(limit)) => {
            savepoint.rollback().map_err(unavailable)?;
            let counters = read_counters(&savepoint, &admission.meter, &windows)?;
            Ok(Verdict::Limited { limit, counters })
        }
        Ok(Written::KeyChanged) => {
            savepoint.rollback().map_err(unavailable)?;
            Ok(Verdict::KeyChanged)
        }
        Err(e) => {
            let _ = savepoint.rollback();
            Err(e)
        }
    }
}

/// What one admission's writes came to; anything but `Admitted` is rolled back by the caller.
enum Written {
    Admitted(Counters),
    /// The counters are read after the rollback.
    Limited(LimitKind),
    KeyChanged,
}

fn write_admission(conn: &Connection, admission: &Admission, windows: &Windows) -> Result<Written, StoreError> {
    if !touch_key(conn, admission)? {
        return Ok(Written::KeyChanged);
    }
    if admission.counted {
        drop_old_minutes(conn, &admission.meter, windows.minute)?;
        if let Some(limit) = count_request(conn, &admission.meter, windows, &admission.limits)? {
            return Ok(Written::Limited(limit));
        }
    }
    apply_usage(conn, &admission.usage)?;
    Ok(Written::Admitted(read_counters(conn, &admission.meter, windows)?))
}

/// The key check as a conditional write. `last_used_at` only moves forward, because concurrent
/// admissions may commit out of order.
fn touch_key(conn: &Connection, admission: &Admission) -> Result<bool, StoreError> {
    let touched = conn
        .prepare_cached(
            "UPDATE keys SET last_used_at = MAX(COALESCE(last_used_at, ''), ?3)
             WHERE workspace = ?1 AND id = ?2 AND key_version = ?4 AND environment = ?5",
        )
        .and_then(|mut s| {
            s.execute(params![
                admission.meter.workspace,
                admission.key_id,
                ts(&admission.now),
                admission.key_version,
                admission.meter.environment.as_str()
            ])
        })
        .map_err(unavailable)?;
    Ok(touched == 1)
}

fn drop_old_minutes(conn: &Connection, meter: &MeterKey, minute: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM meter_minutes WHERE workspace = ?1 AND provider = ?2 AND environment = ?3 AND minute < ?4")
        .and_then(|mut s| s.execute(meter_params(meter, &[&minute]).as_slice()))
        .map_err(unavailable)?;
    Ok(())
}

/// Counts one request in every window, in `LimitKind::ALL` order; the limit that refused it, if
/// any (the caller rolls back the windows already counted).
fn count_request(conn: &Connection, meter: &MeterKey, windows: &Windows, limits: &Limits) -> Result<Option<LimitKind>, StoreError> {
    if !bump(conn, BUMP_MINUTE, meter, &windows.minute, limits.requests_per_minute)? {
        return Ok(Some(LimitKind::RequestsPerMinute));
    }
    if !bump(conn, BUMP_DAY, meter, &windows.day_id(), limits.requests_per_day)? {
        return Ok(Some(LimitKind::RequestsPerDay));
    }
    let month = windows.month_id();
    if !bump_month(conn, meter, &month, limits)? {
        return month_refusal(conn, meter, &month, limits).map(Some);
    }
    Ok(None)
}

// The SELECT's WHERE refuses a first request against a limit of 0; the DO UPDATE's WHERE refuses
// one at the limit. Either way no row changes, and that is the refusal.
const BUMP_MINUTE: &str = "INSERT INTO meter_minutes (workspace, provider, environment, minute, requests)
     SELECT ?1, ?2, ?3, ?4, 1 WHERE ?5 IS NULL OR ?5 > 0
     ON CONFLICT (workspace, provider, environment, minute) DO UPDATE SET requests = requests + 1
     WHERE ?5 IS NULL OR requests < ?5";
// The day's counter is the usage day's `requests`.
const BUMP_DAY: &str = "INSERT INTO usage_days (workspace, provider, environment, day, requests)
     SELECT ?1, ?2, ?3, ?4, 1 WHERE ?5 IS NULL OR ?5 > 0
     ON CONFLICT (workspace, provider, environment, day) DO UPDATE SET requests = requests + 1
     WHERE ?5 IS NULL OR requests < ?5";

/// One conditional upsert of a window counter; false = its limit is reached.
fn bump(conn: &Connection, sql: &str, meter: &MeterKey, window: &dyn ToSql, limit: Option<u64>) -> Result<bool, StoreError> {
    let changed =
        conn.prepare_cached(sql).and_then(|mut s| s.execute(meter_params(meter, &[window, &limit]).as_slice())).map_err(unavailable)?;
    Ok(changed == 1)
}

fn bump_month(conn: &Connection, meter: &MeterKey, month: &str, limits: &Limits) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO meter_months (workspace, provider, environment, month, requests, tokens)
             SELECT ?1, ?2, ?3, ?4, 1, 0 WHERE (?5 IS NULL OR ?5 > 0) AND (?6 IS NULL OR ?6 > 0)
             ON CONFLICT (workspace, provider, environment, month) DO UPDATE SET requests = requests + 1
             WHERE (?5 IS NULL OR requests < ?5) AND (?6 IS NULL OR tokens < ?6)",
        )
        .and_then(|mut s| s.execute(meter_params(meter, &[&month, &limits.requests_per_month, &limits.llm_tokens_per_month]).as_slice()))
        .map_err(unavailable)?;
    Ok(changed == 1)
}

/// Which of the month's two limits refused the request (the request limit comes first in order).
fn month_refusal(conn: &Connection, meter: &MeterKey, month: &str, limits: &Limits) -> Result<LimitKind, StoreError> {
    let requests: Option<u64> = conn
        .query_row(
            "SELECT requests FROM meter_months WHERE workspace = ?1 AND provider = ?2 AND environment = ?3 AND month = ?4",
            meter_params(meter, &[&month]).as_slice(),
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    let at_request_limit = limits.requests_per_month.is_some_and(|limit| requests.unwrap_or(0) >= limit);
    Ok(if at_request_limit { LimitKind::RequestsPerMonth } else { LimitKind::LlmTokensPerMonth })
}

fn read_counters(conn: &Connection, meter: &MeterKey, windows: &Windows) -> Result<Counters, StoreError> {
    let (day, month) = (windows.day_id(), windows.month_id());
    let (minute, today, this_month, tokens): (Option<u64>, Option<u64>, Option<u64>, Option<u64>) = conn
        .prepare_cached(
            "SELECT
                (SELECT requests FROM meter_minutes WHERE workspace = ?1 AND provider = ?2 AND environment = ?3 AND minute = ?4),
                (SELECT requests FROM usage_days WHERE workspace = ?1 AND provider = ?2 AND environment = ?3 AND day = ?5),
                (SELECT requests FROM meter_months WHERE workspace = ?1 AND provider = ?2 AND environment = ?3 AND month = ?6),
                (SELECT tokens FROM meter_months WHERE workspace = ?1 AND provider = ?2 AND environment = ?3 AND month = ?6)",
        )
        .and_then(|mut s| {
            s.query_row(meter_params(meter, &[&windows.minute, &day, &month]).as_slice(), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
        })
        .map_err(unavailable)?;
    Ok(Counters {
        requests_this_minute: minute.unwrap_or(0),
        requests_today: today.unwrap_or(0),
        requests_this_month: this_month.unwrap_or(0),
        llm_tokens_this_month: tokens.unwrap_or(0),
    })
}

// ---- usage -----------------------------------------------------------------------------------

fn apply_usage(conn: &Connection, usage: &[UsageRecord]) -> Result<(), StoreError> {
    usage.iter().try_for_each(|record| apply_record(conn, record))
}

/// Adds one record to its day (read and rewritten under the write lock, so nothing is lost) and
/// its tokens to its month.
fn apply_record(conn: &Connection, record: &UsageRecord) -> Result<(), StoreError> {
    let windows = windows_of_day(record.day);
    let mut day = load_usage_day(conn, &record.meter, &windows.day_id())?.unwrap_or_else(|| empty_day(record));
    day.counts.add(&record.counts);
    let newer = day.provider_limits_at.is_none_or(|seen| record.observed_at > seen);
    if !record.provider_limits.is_empty() && newer {
        day.provider_limits = record.provider_limits.clone();
        day.provider_limits_at = Some(record.observed_at);
    }
    store_usage_day(conn, &record.meter.workspace, &day)?;
    add_tokens(conn, &record.meter, &windows.month_id(), record.counts.tokens())
}

fn empty_day(record: &UsageRecord) -> UsageDay {
    UsageDay {
        provider: record.meter.provider.clone(),
        environment: record.meter.environment,
        day: record.day,
        counts: UsageCounts::default(),
        provider_limits: BTreeMap::new(),
        provider_limits_at: None,
    }
}

const USAGE_COLUMNS: &str = "provider, environment, day, requests, cache_hits, rate_limited, auth_errors, client_errors,
     server_errors, network_errors, latency_ms_buckets, input_tokens, output_tokens, cost_micro_usd, provider_limits, provider_limits_at";

fn load_usage_day(conn: &Connection, meter: &MeterKey, day: &str) -> Result<Option<UsageDay>, StoreError> {
    let sql = format!("SELECT {USAGE_COLUMNS} FROM usage_days WHERE workspace = ?1 AND provider = ?2 AND environment = ?3 AND day = ?4");
    let row = conn
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row(meter_params(meter, &[&day]).as_slice(), UsageRow::read).optional())
        .map_err(unavailable)?;
    row.map(UsageRow::into_day).transpose()
}

fn store_usage_day(conn: &Connection, workspace: &str, day: &UsageDay) -> Result<(), StoreError> {
    let c = &day.counts;
    let (latency, provider_limits) = (json(&c.latency_ms_buckets)?, json(&day.provider_limits)?);
    let sql = format!(
        "INSERT OR REPLACE INTO usage_days (workspace, {USAGE_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.execute(params![
                workspace,
                day.provider,
                day.environment.as_str(),
                windows_of_day(day.day).day_id(),
                c.requests,
                c.cache_hits,
                c.rate_limited,
                c.auth_errors,
                c.client_errors,
                c.server_errors,
                c.network_errors,
                latency,
                c.input_tokens,
                c.output_tokens,
                c.cost_micro_usd,
                provider_limits,
                day.provider_limits_at.as_ref().map(ts),
            ])
        })
        .map_err(unavailable)?;
    Ok(())
}

fn add_tokens(conn: &Connection, meter: &MeterKey, month: &str, tokens: u64) -> Result<(), StoreError> {
    if tokens == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO meter_months (workspace, provider, environment, month, requests, tokens) VALUES (?1, ?2, ?3, ?4, 0, ?5)
         ON CONFLICT (workspace, provider, environment, month) DO UPDATE SET tokens = tokens + excluded.tokens",
    )
    .and_then(|mut s| s.execute(meter_params(meter, &[&month, &tokens]).as_slice()))
    .map_err(unavailable)?;
    Ok(())
}

/// A `usage_days` row as SQLite gives it; decoding that can fail on bad data happens after.
struct UsageRow {
    provider: String,
    environment: String,
    day: String,
    counts: [u64; 10],
    latency: String,
    provider_limits: String,
    provider_limits_at: Option<String>,
}

impl UsageRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageRow> {
        Ok(UsageRow {
            provider: r.get("provider")?,
            environment: r.get("environment")?,
            day: r.get("day")?,
            counts: [
                r.get("requests")?,
                r.get("cache_hits")?,
                r.get("rate_limited")?,
                r.get("auth_errors")?,
                r.get("client_errors")?,
                r.get("server_errors")?,
                r.get("network_errors")?,
                r.get("input_tokens")?,
                r.get("output_tokens")?,
                r.get("cost_micro_usd")?,
            ],
            latency: r.get("latency_ms_buckets")?,
            provider_limits: r.get("provider_limits")?,
            provider_limits_at: r.get("provider_limits_at")?,
        })
    }

    fn into_day(self) -> Result<UsageDay, StoreError> {
        let [
            requests,
            cache_hits,
            rate_limited,
            auth_errors,
            client_errors,
            server_errors,
            network_errors,
            input_tokens,
            output_tokens,
            cost_micro_usd,
        ] = self.counts;
        Ok(UsageDay {
            provider: self.provider,
            environment: environment_from(&self.environment)?,
            day: NaiveDate::parse_from_str(&self.day, "%Y-%m-%d").map_err(corrupt)?,
            counts: UsageCounts {
                requests,
                cache_hits,
                rate_limited,
                auth_errors,
                client_errors,
                server_errors,
                network_errors,
                latency_ms_buckets: from_json(&self.latency)?,
                input_tokens,
                output_tokens,
                cost_micro_usd,
            },
            provider_limits: from_json(&self.provider_limits)?,
            provider_limits_at: self.provider_limits_at.as_deref().map(parse_ts).transpose()?,
        })
    }
}

fn list_usage(
    conn: &Connection,
    workspace: &str,
    provider: Option<&str>,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<UsageDay>, StoreError> {
    let (from, to) = (windows_of_day(from).day_id(), windows_of_day(to).day_id());
    let sql = format!(
        "SELECT {USAGE_COLUMNS} FROM usage_days
         WHERE workspace = ?1 AND (?2 IS NULL OR provider = ?2) AND day >= ?3 AND day <= ?4
         ORDER BY provider, environment, day"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
    let rows = stmt.query_map(params![workspace, provider, from, to], UsageRow::read).map_err(unavailable)?;
    rows.map(|row| row.map_err(unavailable)?.into_day()).collect()
}

// ---- policies --------------------------------------------------------------------------------

fn read_policy(conn: &Connection, meter: &MeterKey) -> Result<Option<Limits>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT limits FROM quota_policies WHERE workspace = ?1 AND provider = ?2 AND environment = ?3",
            meter_params(meter, &[]).as_slice(),
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    text.as_deref().map(from_json).transpose()
}

fn write_policy(conn: &mut Connection, meter: &MeterKey, limits: &Limits, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
    let limits = json(limits)?;
    let tx = write_tx(conn)?;
    tx.execute(
        "INSERT INTO quota_policies (workspace, provider, environment, limits) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (workspace, provider, environment) DO UPDATE SET limits = excluded.limits",
        meter_params(meter, &[&limits]).as_slice(),
    )
    .map_err(unavailable)?;
    let entry = append_in(&tx, audit)?;
    tx.commit().map_err(unavailable)?;
    Ok(entry)
}

#[async_trait]
impl MeterStore for SqliteStore {
    async fn admit(&self, admission: &Admission) -> Result<Verdict, StoreError> {
        // Always through the writer thread. Running an uncontended admission on the request's own
        // tokio worker instead was measured (BENCHMARKS.md): saturation fell from about 7,100 to
        // 4,300 req/s, a worker blocked in SQLite stops serving every other connection it holds.
        self.admissions.admit(admission.clone()).await
    }

    async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError> {
        let usage = usage.to_vec();
        self.run(move |conn| {
            let tx = write_tx(conn)?;
            apply_usage(&tx, &usage)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn usage(&self, workspace: &str, provider: Option<&str>, from: NaiveDate, to: NaiveDate) -> Result<Vec<UsageDay>, StoreError> {
        let (workspace, provider) = (workspace.to_owned(), provider.map(str::to_owned));
        self.run(move |conn| list_usage(conn, &workspace, provider.as_deref(), from, to)).await
    }

    async fn counters(&self, meter: &MeterKey, now: DateTime<Utc>) -> Result<Counters, StoreError> {
        let meter = meter.clone();
        self.run(move |conn| read_counters(conn, &meter, &Windows::of(now))).await
    }

    async fn policy(&self, meter: &MeterKey) -> Result<Option<Limits>, StoreError> {
        let meter = meter.clone();
        self.run(move |conn| read_policy(conn, &meter)).await
    }

    async fn put_policy(&self, meter: &MeterKey, limits: &Limits, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let (meter, limits) = (meter.clone(), *limits);
        self.run(move |conn| write_policy(conn, &meter, &limits, audit)).await
    }
}

// ---- response cache --------------------------------------------------------------------------

fn read_answer(
    conn: &Connection,
    workspace: &str,
    provider: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<CachedAnswer>, StoreError> {
    type Row = (u16, String, Vec<u8>, String, String);
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT status, headers, body, stored_at, expires_at FROM response_cache
             WHERE workspace = ?1 AND provider = ?2 AND key = ?3 AND expires_at > ?4",
        )
        .and_then(|mut s| {
            s.query_row(params![workspace, provider, key, ts(&now)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .optional()
        })
        .map_err(unavailable)?;
    let Some((status, headers, body, stored_at, expires_at)) = row else { return Ok(None) };
    Ok(Some(CachedAnswer {
        status,
        headers: from_json(&headers)?,
        body,
        stored_at: parse_ts(&stored_at)?,
        expires_at: parse_ts(&expires_at)?,
    }))
}

fn write_answer(conn: &mut Connection, workspace: &str, provider: &str, key: &str, answer: &CachedAnswer) -> Result<(), StoreError> {
    let headers = json(&answer.headers)?;
    let tx = write_tx(conn)?;
    // Nothing else removes expired entries; a provider's puts keep its own part of the table small.
    tx.execute(
        "DELETE FROM response_cache WHERE workspace = ?1 AND provider = ?2 AND expires_at <= ?3",
        params![workspace, provider, ts(&answer.stored_at)],
    )
    .map_err(unavailable)?;
    tx.execute(
        "INSERT OR REPLACE INTO response_cache (workspace, provider, key, status, headers, body, stored_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![workspace, provider, key, answer.status, headers, answer.body, ts(&answer.stored_at), ts(&answer.expires_at)],
    )
    .map_err(unavailable)?;
    tx.commit().map_err(unavailable)
}

#[async_trait]
impl ResponseCache for SqliteStore {
    async fn get(&self, workspace: &str, provider: &str, key: &str, now: DateTime<Utc>) -> Result<Option<CachedAnswer>, StoreError> {
        let (workspace, provider, key) = (workspace.to_owned(), provider.to_owned(), key.to_owned());
        self.run(move |conn| read_answer(conn, &workspace, &provider, &key, now)).await
    }

    async fn put(&self, workspace: &str, provider: &str, key: &str, answer: &CachedAnswer) -> Result<(), StoreError> {
        let (workspace, provider, key, answer) = (workspace.to_owned(), provider.to_owned(), key.to_owned(), answer.clone());
        self.run(move |conn| write_answer(conn, &workspace, &provider, &key, &answer)).await
    }

    async fn purge(&self, workspace: &str, provider: &str) -> Result<u64, StoreError> {
        let (workspace, provider) = (workspace.to_owned(), provider.to_owned());
        self.run(move |conn| {
            let removed = conn
                .execute("DELETE FROM response_cache WHERE workspace = ?1 AND provider = ?2", params![workspace, provider])
                .map_err(unavailable)?;
            Ok(removed as u64)
        })
        .await
    }
}

// ---- notifications ---------------------------------------------------------------------------

/// A `notifications` row as SQLite gives it.
struct NotificationRow {
    workspace: String,
    id: String,
    kind: String,
    provider: String,
    environment: String,
    key_id: Option<String>,
    message: String,
    created_at: String,
    read_at: Option<String>,
    dedupe_key: String,
}

impl NotificationRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<NotificationRow> {
        Ok(NotificationRow {
            workspace: r.get("workspace")?,
            id: r.get("id")?,
            kind: r.get("kind")?,
            provider: r.get("provider")?,
            environment: r.get("environment")?,
            key_id: r.get("key_id")?,
            message: r.get("message")?,
            created_at: r.get("created_at")?,
            read_at: r.get("read_at")?,
            dedupe_key: r.get("dedupe_key")?,
        })
    }

    fn into_notification(self) -> Result<Notification, StoreError> {
        Ok(Notification {
            kind: NotificationKind::parse(&self.kind).ok_or_else(|| corrupt(format!("notification kind `{}`", self.kind)))?,
            environment: environment_from(&self.environment)?,
            created_at: parse_ts(&self.created_at)?,
            read_at: self.read_at.as_deref().map(parse_ts).transpose()?,
            id: self.id,
            workspace: self.workspace,
            provider: self.provider,
            key_id: self.key_id,
            message: self.message,
            dedupe_key: self.dedupe_key,
        })
    }
}

fn insert_notification(conn: &mut Connection, n: &Notification, audit: Option<AuditDraft>) -> Result<Option<Notification>, StoreError> {
    let tx = write_tx(conn)?;
    // No conflict target: a retried notification (same id) is a duplicate just like one with the
    // same dedupe key.
    let inserted = tx
        .execute(
            "INSERT INTO notifications (workspace, id, kind, provider, environment, key_id, message, created_at, read_at, dedupe_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
            params![
                n.workspace,
                n.id,
                n.kind.as_str(),
                n.provider,
                n.environment.as_str(),
                n.key_id,
                n.message,
                ts(&n.created_at),
                n.read_at.as_ref().map(ts),
                n.dedupe_key
            ],
        )
        .map_err(unavailable)?;
    if inserted == 0 {
        tx.rollback().map_err(unavailable)?;
        return Ok(None);
    }
    if let Some(draft) = audit {
        append_in(&tx, draft)?;
    }
    tx.commit().map_err(unavailable)?;
    Ok(Some(n.clone()))
}

fn list_notifications(
    conn: &Connection,
    workspace: &str,
    unread_only: bool,
    before: Option<&str>,
    limit: usize,
) -> Result<Page<Notification>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT * FROM notifications WHERE workspace = ?1 AND (?2 IS NULL OR id < ?2) AND (NOT ?3 OR read_at IS NULL)
             ORDER BY id DESC LIMIT ?4",
        )
        .map_err(unavailable)?;
    let rows = stmt.query_map(params![workspace, before, unread_only, limit as i64 + 1], NotificationRow::read).map_err(unavailable)?;
    let mut items = rows.map(|row| row.map_err(unavailable)?.into_notification()).collect::<Result<Vec<_>, _>>()?;
    // One row more than asked says whether another page exists.
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|n| n.id.clone())
    } else {
        None
    };
    Ok(Page { items, next })
}

fn set_read(conn: &Connection, workspace: &str, id: &str, at: DateTime<Utc>) -> Result<Notification, StoreError> {
    let row = conn
        .query_row(
            "UPDATE notifications SET read_at = COALESCE(read_at, ?3) WHERE workspace = ?1 AND id = ?2 RETURNING *",
            params![workspace, id, ts(&at)],
            NotificationRow::read,
        )
        .optional()
        .map_err(unavailable)?;
    row.ok_or(StoreError::NotFound)?.into_notification()
}

#[async_trait]
impl NotificationStore for SqliteStore {
    async fn notify(&self, notification: &Notification, audit: Option<AuditDraft>) -> Result<Option<Notification>, StoreError> {
        let notification = notification.clone();
        self.run(move |conn| insert_notification(conn, &notification, audit)).await
    }

    async fn notifications(
        &self,
        workspace: &str,
        unread_only: bool,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Notification>, StoreError> {
        let (workspace, before) = (workspace.to_owned(), before.map(str::to_owned));
        self.run(move |conn| list_notifications(conn, &workspace, unread_only, before.as_deref(), limit)).await
    }

    async fn mark_read(&self, workspace: &str, id: &str, at: DateTime<Utc>) -> Result<Notification, StoreError> {
        let (workspace, id) = (workspace.to_owned(), id.to_owned());
        self.run(move |conn| set_read(conn, &workspace, &id, at)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::access::{Caller, RequestMeta, Role};
    use crate::domain::audit::Outcome;
    use crate::domain::keys::{Actor, KeyRecord, KeyStatus};
    use crate::ports::{KeyStore, SealedMaterial};

    fn record(workspace: &str) -> KeyRecord {
        let actor = Actor { sub: "sub-1".into(), email: "ana@example.com".into() };
        KeyRecord {
            id: uuid::Uuid::now_v7().to_string(),
            workspace: workspace.into(),
            provider: "openai".into(),
            environment: Environment::Production,
            label: "team key".into(),
            masked: BTreeMap::new(),
            fingerprint: "00".into(),
            status: KeyStatus::Active,
            key_version: 1,
            version: 1,
            warnings: vec![],
            created_by: actor.clone(),
            created_at: Utc::now(),
            updated_by: actor,
            updated_at: Utc::now(),
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

    fn draft(workspace: &str) -> AuditDraft {
        let caller = Caller { sub: "sub-1".into(), email: "ana@example.com".into(), role: Role::Admin, workspace: workspace.into() };
        AuditDraft::new(&caller, &RequestMeta::default(), "key.create", Outcome::Success)
    }

    /// A data file from before `last_used_at` and `key_version` opens, keeps its keys, passes
    /// the key check with the version its records hold (and only that one), and records uses.
    #[tokio::test]
    async fn data_files_without_the_key_columns_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stockpulse.db");
        let key = record("ws-1");
        let store = SqliteStore::open(&path).unwrap();
        store.insert(&key, &SealedMaterial { scheme: "test".into(), blob: vec![1; 16] }, draft("ws-1")).await.unwrap();
        drop(store);
        Connection::open(&path)
            .unwrap()
            .execute_batch("ALTER TABLE keys DROP COLUMN last_used_at; ALTER TABLE keys DROP COLUMN key_version")
            .unwrap();

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(KeyStore::get(&store, "ws-1", &key.id).await.unwrap(), Some(key.clone()));
        let meter = MeterKey { workspace: "ws-1".into(), provider: "openai".into(), environment: Environment::Production };
        let now = Utc::now();
        let admission =
            Admission { meter, key_id: key.id.clone(), key_version: 1, now, limits: Limits::default(), counted: true, usage: vec![] };
        let stale = Admission { key_version: 2, ..admission.clone() };
        assert!(matches!(store.admit(&stale).await.unwrap(), Verdict::KeyChanged));
        assert!(matches!(store.admit(&admission).await.unwrap(), Verdict::Admitted(_)));
        assert_eq!(KeyStore::get(&store, "ws-1", &key.id).await.unwrap().unwrap().last_used_at, Some(now));
        drop(store);
        SqliteStore::open(&path).expect("opening a migrated file again adds nothing");
    }
}
