//! DynamoDB single-table implementation of `KeyStore` and `AuditLog` (and, in `dynamo_metering`,
//! of `MeterStore`, `ResponseCache` and `NotificationStore`).
//!
//! One table, string partition key `pk` and sort key `sk`, on-demand capacity, TTL attribute
//! `expires_at` (epoch seconds; minute windows and cache entries). Items and the access pattern
//! each serves:
//!
//! | item | pk | sk | serves |
//! |---|---|---|---|
//! | key record | `WS#<workspace>` | `KEY#<key id>` | get by id; list a workspace's keys (Query `KEY#` range, id order); `status`, `key_version` and `last_used_at` are top-level attributes for the admission's condition and update |
//! | slot | `WS#<workspace>` | `SLOT#<provider>#<environment>` | one key per provider + environment (conditional put); find a workspace's key for a provider |
//! | key material | `WS#<workspace>` | `MAT#<key id>#<version, 10 digits>` | the sealed material of one version (KMS vault) |
//! | quota policy | `WS#<workspace>` | `POLICY#<provider>#<environment>` | the workspace's limits (one number attribute per limit, absent = none); GetItem on the proxy's path; written with its audit entry |
//! | audit entry | `AUDIT#<workspace>` | `SEQ#<seq, 20 digits>` | the chain in order (Query ascending) and the audit list (Query descending, filters) |
//! | audit head | `AUDIT#<workspace>` | `HEAD` | newest seq and hash; the conditional update on it serialises appends |
//! | usage by day | `USAGE#<workspace>` | `DAY#<yyyy-mm-dd>#<provider>#<environment>` | usage counters added with `ADD` (`requests` is also the day's request counter; `lat_00`..`lat_12` latency buckets; `provider_limits` map + `provider_limits_at`); a workspace's date range is one Query (day first in the key), a provider is a filter |
//! | minute window | `QUOTA#<workspace>#<provider>#<environment>` | `MIN#<epoch minute, 12 digits>` | the per-minute request counter; `expires_at` 5 minutes after the window |
//! | month | `QUOTA#<workspace>#<provider>#<environment>` | `MONTH#<yyyy-mm>` | the month's `requests` and LLM `tokens` counters |
//! | cache entry | `CACHE#<workspace>#<provider>` | `<cache key: sha-256 hex>` | GetItem by key; purge = Query of the partition + BatchWriteItem deletes; `expires_at` TTL (checked on read too) |
//! | notification | `NOTIFY#<workspace>` | `N#<id, UUIDv7>` | a workspace's notifications, newest first (Query descending); `mark_read` by id |
//! | dedupe marker | `NOTIFY#<workspace>` | `DEDUPE#<dedupe key>` | put with `attribute_not_exists` in the notification's transaction: one notification per dedupe key |
//! | system | `SYSTEM` | `<name>` | blobs the backend keeps for itself (the KMS-wrapped fingerprint key) |
//! | rotation due (sparse GSI `gsi1`, planned) | `gsi1pk = DUE` | `gsi1sk = <due time>#<workspace>#<key id>` | the scheduler's Query of keys due for rotation or re-verification, without a Scan |
//!
//! Partition heat: a workspace's usage days share one partition (so that a date range is one
//! Query), while its counters are split per provider + environment; each counter item takes at
//! most ~1,000 writes/s (transactional writes cost twice), far above provider rate limits.
//!
//! Every mutation and its audit entry (plus the head update) go in one `TransactWriteItems`;
//! optimistic locking is a condition on `version`; listing is a Query with a cursor, never a
//! Scan. Sees sealed material only, never plaintext.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    Put, ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, Update,
};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::domain::access::Role;
use crate::domain::audit::{AuditDraft, AuditEntry, GENESIS_HASH, Outcome};
use crate::domain::consistency::WorkspaceSnapshot;
use crate::domain::environment::Environment;
use crate::domain::keys::{KeyRecord, KeyStatus, TestResult};
use crate::ports::{AuditFilter, AuditLog, KeyStore, MaterialChange, Page, SealedMaterial, StoreError, parse_scan_position, scan_position};

use super::describe;

pub(super) type Item = HashMap<String, AttributeValue>;

/// A Query's filter: conditions joined with AND, and their placeholders.
#[derive(Default)]
pub(super) struct QueryFilter {
    pub(super) conditions: Vec<&'static str>,
    pub(super) names: Vec<(&'static str, &'static str)>,
    pub(super) values: Vec<(&'static str, AttributeValue)>,
}

/// Appends that lose a race for the chain head try again this many times.
const MAX_ATTEMPTS: usize = 12;

#[derive(Clone)]
pub struct DynamoStore {
    pub(super) client: Client,
    pub(super) table: String,
    /// Per-workspace queue for audit appends of this process (see `commit`).
    append_locks: std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>,
}

/// What a failed condition on one transaction item means.
#[derive(Clone, Copy)]
pub(super) enum OnConflict {
    /// The key item's version condition: the record changed or is gone.
    KeyVersion,
    /// The slot item already exists.
    SlotTaken,
    /// An item that must still belong to this key (the old slot).
    Stale,
    /// A marker item that must not exist yet (a notification's dedupe key). Reported as
    /// `StoreError::SlotTaken`, which the caller reads as "already there".
    Duplicate,
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn ts(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The sparse index of key records across workspaces (only key items carry its attributes):
/// what the scheduled job walks instead of scanning the table.
pub const KEYS_INDEX: &str = "keys-by-workspace";
const KIND: &str = "kind";
const KIND_SK: &str = "kind_sk";

/// The index sort key: ids never contain `#`, so the last `#` separates it from the workspace.
fn kind_sk(workspace: &str, id: &str) -> String {
    format!("{workspace}#{id}")
}

pub(super) fn ws_pk(workspace: &str) -> String {
    format!("WS#{workspace}")
}

fn audit_pk(workspace: &str) -> String {
    format!("AUDIT#{workspace}")
}

pub(super) fn key_sk(id: &str) -> String {
    format!("KEY#{id}")
}

fn slot_sk(provider: &str, environment: Environment) -> String {
    format!("SLOT#{provider}#{}", environment.as_str())
}

fn material_sk(id: &str, version: u32) -> String {
    format!("MAT#{id}#{version:010}")
}

fn seq_sk(seq: u64) -> String {
    format!("SEQ#{seq:020}")
}

pub(super) fn key(pk: String, sk: String) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(super) fn unavailable<E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static>(
    e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> StoreError {
    StoreError::Unavailable(format!("DynamoDB: {}", describe(&e)))
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str).ok_or_else(|| corrupt(format!("item lacks `{name}`")))
}

pub(super) fn get_opt_s(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

pub(super) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).ok_or_else(|| corrupt(format!("item lacks number `{name}`")))
}

pub(super) fn build<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<T, StoreError> {
    result.map_err(|e| StoreError::Unavailable(format!("DynamoDB request could not be built: {e}")))
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore { client, table: table.into(), append_locks: Default::default() }
    }

    /// Creates the table (on-demand, TTL on `expires_at`) if it does not exist yet. Production
    /// stacks get it from the template; the local gateway and the tests call this.
    pub async fn create_table_if_missing(&self) -> Result<(), StoreError> {
        let exists = self.client.describe_table().table_name(&self.table).send().await;
        if exists.is_ok() {
            return Ok(());
        }
        let attribute = |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build();
        let schema = |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(build(attribute("pk"))?)
            .attribute_definitions(build(attribute("sk"))?)
            .attribute_definitions(build(attribute(KIND))?)
            .attribute_definitions(build(attribute(KIND_SK))?)
            .key_schema(build(schema("pk", KeyType::Hash))?)
            .key_schema(build(schema("sk", KeyType::Range))?)
            .global_secondary_indexes(build(
                GlobalSecondaryIndex::builder()
                    .index_name(KEYS_INDEX)
                    .key_schema(build(schema(KIND, KeyType::Hash))?)
                    .key_schema(build(schema(KIND_SK, KeyType::Range))?)
                    .projection(Projection::builder().projection_type(ProjectionType::All).build())
                    .build(),
            )?)
            .send()
            .await;
        if let Err(e) = created {
            // Someone else created it in the meantime: fine.
            if !e.as_service_error().is_some_and(|se| se.is_resource_in_use_exception()) {
                return Err(unavailable(e));
            }
        }
        let ttl = build(TimeToLiveSpecification::builder().attribute_name("expires_at").enabled(true).build())?;
        let _ = self.client.update_time_to_live().table_name(&self.table).time_to_live_specification(ttl).send().await;
        Ok(())
    }

    /// A small blob the backend keeps for itself under `name` (the wrapped fingerprint key),
    /// created by `create` the first time; every later call, from any process, gets the same one.
    pub async fn system_blob<F, Fut, E>(&self, name: &str, create: F) -> Result<Vec<u8>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, E>>,
        E: From<StoreError>,
    {
        let read = |item: Item| -> Result<Vec<u8>, StoreError> {
            item.get("blob")
                .and_then(|v| v.as_b().ok())
                .map(|b| b.as_ref().to_vec())
                .ok_or_else(|| corrupt(format!("system item {name} lacks `blob`")))
        };
        if let Some(item) = self.get_item("SYSTEM".into(), name.to_owned()).await? {
            return Ok(read(item)?);
        }
        let blob = create().await?;
        let mut item = key("SYSTEM".into(), name.to_owned());
        item.insert("blob".into(), AttributeValue::B(Blob::new(blob.clone())));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(blob),
            // Another process created it first: use theirs.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                let item = self
                    .get_item("SYSTEM".into(), name.to_owned())
                    .await?
                    .ok_or_else(|| corrupt(format!("system item {name} vanished")))?;
                Ok(read(item)?)
            }
            Err(e) => Err(unavailable(e).into()),
        }
    }

    pub(super) async fn get_item(&self, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }

    /// Every item of a partition whose sort key is in `[from, to]`, in order, over as many pages
    /// as it takes; with `limit`, at most that many; with `filter`, only the items it matches.
    pub(super) async fn query_range(
        &self,
        pk: String,
        from: String,
        to: String,
        forward: bool,
        limit: Option<usize>,
        filter: Option<&QueryFilter>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":from", s(from.clone()))
                .expression_attribute_values(":to", s(to.clone()))
                .scan_index_forward(forward)
                .set_exclusive_start_key(start.take());
            if let Some(limit) = limit {
                // A filter is applied after the page is read: read ahead so that sparse matches
                // do not take one round trip each.
                let remaining = limit - items.len();
                let page = if filter.is_some() { remaining * 4 } else { remaining };
                query = query.limit(page.min(1000) as i32);
            }
            if let Some(filter) = filter.filter(|f| !f.conditions.is_empty()) {
                query = query.filter_expression(filter.conditions.join(" AND "));
                for (placeholder, name) in &filter.names {
                    query = query.expression_attribute_names(*placeholder, *name);
                }
                for (placeholder, value) in &filter.values {
                    query = query.expression_attribute_values(*placeholder, value.clone());
                }
            }
            let out = query.send().await.map_err(unavailable)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if limit.is_none_or(|l| items.len() < l) => start = Some(k),
                _ => {
                    if let Some(limit) = limit {
                        items.truncate(limit);
                    }
                    return Ok(items);
                }
            }
        }
    }

    fn key_item(record: &KeyRecord) -> Result<Item, StoreError> {
        let doc = serde_json::to_string(record).map_err(corrupt)?;
        let mut item = key(ws_pk(&record.workspace), key_sk(&record.id));
        item.insert("provider".into(), s(record.provider.clone()));
        item.insert("environment".into(), s(record.environment.as_str()));
        item.insert("version".into(), n(record.version));
        item.insert("key_version".into(), n(record.key_version));
        // Read by the proxy's admission condition (a revoked key admits nothing).
        item.insert("status".into(), s(record.status.as_str()));
        // Set by every admission (`dynamo_metering`); rewrites of the record leave it alone
        // (`key_rewrite`), so only a new record takes it from the record.
        if let Some(used) = &record.last_used_at {
            item.insert("last_used_at".into(), s(ts(used)));
        }
        item.insert(KIND.into(), s("key"));
        item.insert(KIND_SK.into(), s(kind_sk(&record.workspace, &record.id)));
        item.insert("doc".into(), s(doc));
        Ok(item)
    }

    /// Rewrites an existing key item as an Update that sets every attribute of `key_item` but
    /// `last_used_at`: admissions set that one concurrently, and a rewrite based on a read from
    /// before them must not take it back.
    fn key_rewrite(&self, record: &KeyRecord, condition: &str, values: &[(&str, AttributeValue)]) -> Result<TransactWriteItem, StoreError> {
        let mut item = Self::key_item(record)?;
        let (Some(pk), Some(sk)) = (item.remove("pk"), item.remove("sk")) else { return Err(corrupt("a key item without its key")) };
        item.remove("last_used_at");
        let mut update = Update::builder().table_name(&self.table).key("pk", pk).key("sk", sk).condition_expression(condition);
        let mut sets = Vec::new();
        for (i, (name, value)) in item.into_iter().enumerate() {
            sets.push(format!("#k{i} = :k{i}"));
            update = update.expression_attribute_names(format!("#k{i}"), name).expression_attribute_values(format!(":k{i}"), value);
        }
        for (name, value) in values {
            update = update.expression_attribute_values(*name, value.clone());
        }
        let update = update.update_expression(format!("SET {}", sets.join(", ")));
        Ok(TransactWriteItem::builder().update(build(update.build())?).build())
    }

    fn record_from(workspace: &str, item: &Item) -> Result<KeyRecord, StoreError> {
        let mut record: KeyRecord = serde_json::from_str(get_s(item, "doc")?).map_err(corrupt)?;
        record.workspace = workspace.to_owned();
        // Admissions update `last_used_at` on the item without rewriting `doc`.
        if let Some(used) = get_opt_s(item, "last_used_at") {
            let used = DateTime::parse_from_rfc3339(&used).map_err(corrupt)?.with_timezone(&Utc);
            record.last_used_at = record.last_used_at.max(Some(used));
        }
        Ok(record)
    }

    pub(super) fn put(
        &self,
        item: Item,
        condition: Option<&str>,
        values: &[(&str, AttributeValue)],
    ) -> Result<TransactWriteItem, StoreError> {
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        if let Some(condition) = condition {
            put = put.condition_expression(condition);
        }
        for (name, value) in values {
            put = put.expression_attribute_values(*name, value.clone());
        }
        Ok(TransactWriteItem::builder().put(build(put.build())?).build())
    }

    fn delete_item(
        &self,
        pk: String,
        sk: String,
        condition: Option<&str>,
        values: &[(&str, AttributeValue)],
    ) -> Result<TransactWriteItem, StoreError> {
        let mut delete = Delete::builder().table_name(&self.table).set_key(Some(key(pk, sk)));
        if let Some(condition) = condition {
            delete = delete.condition_expression(condition);
        }
        for (name, value) in values {
            delete = delete.expression_attribute_values(*name, value.clone());
        }
        Ok(TransactWriteItem::builder().delete(build(delete.build())?).build())
    }

    fn audit_item(entry: &AuditEntry) -> Item {
        let mut item = key(audit_pk(&entry.workspace), seq_sk(entry.seq));
        let mut put = |name: &str, value: AttributeValue| {
            item.insert(name.to_owned(), value);
        };
        put("seq", n(entry.seq));
        put("id", s(entry.id.clone()));
        put("time", s(ts(&entry.time)));
        put("workspace", s(entry.workspace.clone()));
        put("actor_sub", s(entry.actor_sub.clone()));
        put("actor_email", s(entry.actor_email.clone()));
        put("role", s(entry.role.as_str()));
        put("action", s(entry.action.clone()));
        put("outcome", s(entry.outcome.as_str()));
        put("source_ip", s(entry.source_ip.clone()));
        put("user_agent", s(entry.user_agent.clone()));
        put("request_id", s(entry.request_id.clone()));
        put("prev_hash", s(entry.prev_hash.clone()));
        put("hash", s(entry.hash.clone()));
        for (name, value) in [
            ("provider", entry.provider.clone()),
            ("environment", entry.environment.map(|e| e.as_str().to_owned())),
            ("key_id", entry.key_id.clone()),
            ("fingerprint", entry.fingerprint.clone()),
            ("detail", entry.detail.clone()),
        ] {
            if let Some(value) = value {
                put(name, s(value));
            }
        }
        item
    }

    fn audit_from(item: &Item) -> Result<AuditEntry, StoreError> {
        let role = get_s(item, "role")?;
        let outcome = get_s(item, "outcome")?;
        Ok(AuditEntry {
            seq: get_n(item, "seq")?,
            id: get_s(item, "id")?.to_owned(),
            time: DateTime::parse_from_rfc3339(get_s(item, "time")?).map_err(corrupt)?.with_timezone(&Utc),
            workspace: get_s(item, "workspace")?.to_owned(),
            actor_sub: get_s(item, "actor_sub")?.to_owned(),
            actor_email: get_s(item, "actor_email")?.to_owned(),
            role: Role::parse(role).ok_or_else(|| corrupt(format!("role `{role}`")))?,
            action: get_s(item, "action")?.to_owned(),
            provider: get_opt_s(item, "provider"),
            environment: match get_opt_s(item, "environment") {
                None => None,
                Some(e) => Some(Environment::parse(&e).ok_or_else(|| corrupt(format!("environment `{e}`")))?),
            },
            key_id: get_opt_s(item, "key_id"),
            outcome: Outcome::parse(outcome).ok_or_else(|| corrupt(format!("outcome `{outcome}`")))?,
            source_ip: get_s(item, "source_ip")?.to_owned(),
            user_agent: get_s(item, "user_agent")?.to_owned(),
            request_id: get_s(item, "request_id")?.to_owned(),
            fingerprint: get_opt_s(item, "fingerprint"),
            detail: get_opt_s(item, "detail"),
            prev_hash: get_s(item, "prev_hash")?.to_owned(),
            hash: get_s(item, "hash")?.to_owned(),
        })
    }

    async fn head(&self, workspace: &str) -> Result<Option<(u64, String)>, StoreError> {
        match self.get_item(audit_pk(workspace), "HEAD".into()).await? {
            None => Ok(None),
            Some(item) => Ok(Some((get_n(&item, "seq")?, get_s(&item, "hash")?.to_owned()))),
        }
    }

    /// Writes `mutation` and the audit entry for it in one transaction. The entry is chained
    /// after the current head; losing the head to a concurrent append retries with the new head.
    ///
    /// Appends of one process to one workspace queue on a local lock first, so tasks of a process
    /// never race each other for the head through DynamoDB (every lost race costs a round trip
    /// and a backoff). Across processes the conditional head update decides.
    pub(super) async fn commit(
        &self,
        mutation: Vec<(TransactWriteItem, OnConflict)>,
        audit: AuditDraft,
        key_ref: Option<(&str, &str)>,
    ) -> Result<AuditEntry, StoreError> {
        let workspace = audit.workspace.clone();
        let lock = {
            let mut locks = self.append_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(workspace.clone()).or_default().clone()
        };
        let _queued = lock.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let head = self.head(&workspace).await?;
            let (seq, prev) = head.clone().map(|(seq, hash)| (seq + 1, hash)).unwrap_or((1, GENESIS_HASH.to_owned()));
            let entry = audit.clone().chain(seq, &prev);
            let mut items: Vec<TransactWriteItem> = mutation.iter().map(|(item, _)| item.clone()).collect();
            items.push(self.put(Self::audit_item(&entry), Some("attribute_not_exists(pk)"), &[])?);
            let mut head_item = key(audit_pk(&workspace), "HEAD".into());
            head_item.insert("seq".into(), n(entry.seq));
            head_item.insert("hash".into(), s(entry.hash.clone()));
            items.push(match head {
                None => self.put(head_item, Some("attribute_not_exists(pk)"), &[])?,
                Some((seq, _)) => self.put(head_item, Some("seq = :prev"), &[(":prev", n(seq))])?,
            });
            match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
                Ok(_) => return Ok(entry),
                Err(SdkError::ServiceError(service))
                    if matches!(service.err(), TransactWriteItemsError::TransactionCanceledException(_)) =>
                {
                    let TransactWriteItemsError::TransactionCanceledException(cancelled) = service.err() else { unreachable!() };
                    let codes: Vec<&str> = cancelled.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                    let failed = |i: usize| codes.get(i).is_some_and(|c| *c == "ConditionalCheckFailed");
                    if let Some((_, on_conflict)) = mutation.iter().enumerate().find(|(i, _)| failed(*i)).map(|(_, m)| m) {
                        return Err(match on_conflict {
                            OnConflict::SlotTaken | OnConflict::Duplicate => StoreError::SlotTaken,
                            OnConflict::KeyVersion | OnConflict::Stale => match key_ref {
                                Some((ws, id)) if self.get_item(ws_pk(ws), key_sk(id)).await?.is_none() => StoreError::NotFound,
                                _ => StoreError::VersionMismatch,
                            },
                        });
                    }
                    // Lost the chain head (or a transaction conflict): back off and retry.
                    let pause = 5 * (1 << attempt.min(6)) + rand_jitter();
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable("DynamoDB: the audit chain stayed contended; try again".into()))
    }

    /// Deletes the slot `record` holds, on condition that it still names this key.
    fn release_slot(&self, record: &KeyRecord) -> Result<(TransactWriteItem, OnConflict), StoreError> {
        let slot = slot_sk(&record.provider, record.environment);
        let delete = self.delete_item(ws_pk(&record.workspace), slot, Some("key_id = :id"), &[(":id", s(record.id.clone()))])?;
        Ok((delete, OnConflict::Stale))
    }

    async fn material_items(&self, workspace: &str, id: &str) -> Result<Vec<Item>, StoreError> {
        self.query_range(ws_pk(workspace), format!("MAT#{id}#"), format!("MAT#{id}#~"), true, None, None).await
    }
}

fn rand_jitter() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 16)
}

#[async_trait]
impl KeyStore for DynamoStore {
    async fn insert(&self, record: &KeyRecord, sealed: &SealedMaterial, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let ws = &record.workspace;
        let mut slot = key(ws_pk(ws), slot_sk(&record.provider, record.environment));
        slot.insert("key_id".into(), s(record.id.clone()));
        let mut material = key(ws_pk(ws), material_sk(&record.id, record.key_version));
        material.insert("scheme".into(), s(sealed.scheme.clone()));
        material.insert("blob".into(), AttributeValue::B(Blob::new(sealed.blob.clone())));
        let mutation = vec![
            (self.put(slot, Some("attribute_not_exists(pk)"), &[])?, OnConflict::SlotTaken),
            (self.put(Self::key_item(record)?, Some("attribute_not_exists(pk)"), &[])?, OnConflict::Stale),
            (self.put(material, None, &[])?, OnConflict::Stale),
        ];
        self.commit(mutation, audit, None).await
    }

    async fn get(&self, workspace: &str, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.get_item(ws_pk(workspace), key_sk(id)).await?.map(|item| Self::record_from(workspace, &item)).transpose()
    }

    async fn list(&self, workspace: &str, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        // `~` sorts after every id character, so `KEY#<after>~` starts right after `after`.
        let from = after.map(|a| format!("KEY#{a}~")).unwrap_or_else(|| "KEY#".to_owned());
        let items = self.query_range(ws_pk(workspace), from, "KEY#~".into(), true, Some(limit + 1), None).await?;
        let mut records = items.iter().map(|i| Self::record_from(workspace, i)).collect::<Result<Vec<_>, _>>()?;
        let next = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok(Page { items: records, next })
    }

    async fn scan(&self, after: Option<&str>, limit: usize) -> Result<Page<KeyRecord>, StoreError> {
        let start = after.map(parse_scan_position).transpose()?.map(|(ws, id)| {
            let mut start = key(ws_pk(&ws), key_sk(&id));
            start.insert(KIND.into(), s("key"));
            start.insert(KIND_SK.into(), s(kind_sk(&ws, &id)));
            start
        });
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(KEYS_INDEX)
            .key_condition_expression("#kind = :kind")
            .expression_attribute_names("#kind", KIND)
            .expression_attribute_values(":kind", s("key"))
            .set_exclusive_start_key(start)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(unavailable)?;
        let mut items = Vec::new();
        for item in out.items.unwrap_or_default() {
            let workspace = get_s(&item, "pk")?.strip_prefix("WS#").ok_or_else(|| corrupt("a key item outside a workspace"))?.to_owned();
            items.push(Self::record_from(&workspace, &item)?);
        }
        let next = out.last_evaluated_key.and(items.last().map(|r: &KeyRecord| scan_position(&r.workspace, &r.id)));
        Ok(Page { items, next })
    }

    async fn find_slot(&self, workspace: &str, provider: &str, environment: Environment) -> Result<Option<KeyRecord>, StoreError> {
        let Some(slot) = self.get_item(ws_pk(workspace), slot_sk(provider, environment)).await? else { return Ok(None) };
        let id = get_s(&slot, "key_id")?.to_owned();
        self.get(workspace, &id).await
    }

    async fn update(
        &self,
        record: &KeyRecord,
        expected_version: u64,
        material: MaterialChange<'_>,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        let ws = &record.workspace;
        let current_item = self.get_item(ws_pk(ws), key_sk(&record.id)).await?.ok_or(StoreError::NotFound)?;
        let current = Self::record_from(ws, &current_item)?;
        if current.version != expected_version {
            return Err(StoreError::VersionMismatch);
        }
        let mut mutation = vec![(
            self.key_rewrite(record, "attribute_exists(pk) AND version = :expected", &[(":expected", n(expected_version))])?,
            OnConflict::KeyVersion,
        )];
        if current.environment != record.environment || current.provider != record.provider {
            mutation.push(self.release_slot(&current)?);
            let mut slot = key(ws_pk(ws), slot_sk(&record.provider, record.environment));
            slot.insert("key_id".into(), s(record.id.clone()));
            mutation.push((self.put(slot, Some("attribute_not_exists(pk)"), &[])?, OnConflict::SlotTaken));
        }
        if let Some(keep) = material.retained(record.key_version) {
            for old in self.material_items(ws, &record.id).await? {
                let sk = get_s(&old, "sk")?.to_owned();
                if !keep.iter().any(|v| material_sk(&record.id, *v) == sk) {
                    mutation.push((self.delete_item(ws_pk(ws), sk, None, &[])?, OnConflict::Stale));
                }
            }
        }
        if let Some((version, sealed)) = material.written(record.key_version) {
            let mut item = key(ws_pk(ws), material_sk(&record.id, version));
            item.insert("scheme".into(), s(sealed.scheme.clone()));
            item.insert("blob".into(), AttributeValue::B(Blob::new(sealed.blob.clone())));
            mutation.push((self.put(item, None, &[])?, OnConflict::Stale));
        }
        self.commit(mutation, audit, Some((ws, &record.id))).await
    }

    async fn delete(&self, workspace: &str, id: &str, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let current_item = self.get_item(ws_pk(workspace), key_sk(id)).await?.ok_or(StoreError::NotFound)?;
        let current = Self::record_from(workspace, &current_item)?;
        if current.version != expected_version {
            return Err(StoreError::VersionMismatch);
        }
        let mut mutation = vec![(
            self.delete_item(ws_pk(workspace), key_sk(id), Some("version = :expected"), &[(":expected", n(expected_version))])?,
            OnConflict::KeyVersion,
        )];
        // A revoked key gave its slot up already.
        if current.status != KeyStatus::Revoked {
            mutation.push(self.release_slot(&current)?);
        }
        for material in self.material_items(workspace, id).await? {
            mutation.push((self.delete_item(ws_pk(workspace), get_s(&material, "sk")?.to_owned(), None, &[])?, OnConflict::Stale));
        }
        self.commit(mutation, audit, Some((workspace, id))).await
    }

    async fn revoke(&self, record: &KeyRecord, expected_version: u64, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let ws = &record.workspace;
        let current_item = self.get_item(ws_pk(ws), key_sk(&record.id)).await?.ok_or(StoreError::NotFound)?;
        let current = Self::record_from(ws, &current_item)?;
        if current.version != expected_version {
            return Err(StoreError::VersionMismatch);
        }
        let mut mutation = vec![
            (
                self.key_rewrite(record, "attribute_exists(pk) AND version = :expected", &[(":expected", n(expected_version))])?,
                OnConflict::KeyVersion,
            ),
            // The slot goes, so the workspace can add a new key for the provider and environment.
            self.release_slot(&current)?,
        ];
        for material in self.material_items(ws, &record.id).await? {
            mutation.push((self.delete_item(ws_pk(ws), get_s(&material, "sk")?.to_owned(), None, &[])?, OnConflict::Stale));
        }
        self.commit(mutation, audit, Some((ws, &record.id))).await
    }

    async fn material(&self, workspace: &str, id: &str, key_version: u32) -> Result<Option<SealedMaterial>, StoreError> {
        let Some(item) = self.get_item(ws_pk(workspace), material_sk(id, key_version)).await? else { return Ok(None) };
        let blob = item.get("blob").and_then(|v| v.as_b().ok()).ok_or_else(|| corrupt("material lacks `blob`"))?;
        Ok(Some(SealedMaterial { scheme: get_s(&item, "scheme")?.to_owned(), blob: blob.as_ref().to_vec() }))
    }

    async fn snapshot(&self, workspace: &str) -> Result<WorkspaceSnapshot, StoreError> {
        // One Query of the workspace partition: records, slots and materials live there together.
        let items = self.query_range(ws_pk(workspace), "KEY#".into(), "SLOT$".into(), true, None, None).await?;
        let mut snapshot = WorkspaceSnapshot::default();
        for item in &items {
            let sk = get_s(item, "sk")?;
            if sk.starts_with("KEY#") {
                snapshot.records.push(Self::record_from(workspace, item)?);
            } else if let Some(rest) = sk.strip_prefix("SLOT#") {
                let (provider, environment) = rest.rsplit_once('#').ok_or_else(|| corrupt(format!("slot `{sk}`")))?;
                let environment = Environment::parse(environment).ok_or_else(|| corrupt(format!("slot `{sk}`")))?;
                snapshot.slots.push((provider.to_owned(), environment, get_s(item, "key_id")?.to_owned()));
            } else if let Some(rest) = sk.strip_prefix("MAT#") {
                let (id, version) = rest.rsplit_once('#').ok_or_else(|| corrupt(format!("material `{sk}`")))?;
                snapshot.materials.push((id.to_owned(), version.parse().map_err(|_| corrupt(format!("material `{sk}`")))?));
            }
        }
        Ok(snapshot)
    }

    async fn record_test(
        &self,
        workspace: &str,
        id: &str,
        result: &TestResult,
        status: KeyStatus,
        audit: AuditDraft,
    ) -> Result<AuditEntry, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let item = self.get_item(ws_pk(workspace), key_sk(id)).await?.ok_or(StoreError::NotFound)?;
            let mut record = Self::record_from(workspace, &item)?;
            let observed = record.version;
            record.last_verified_at = Some(result.tested_at);
            record.last_test = Some(result.clone());
            record.status = status;
            let mutation =
                vec![(self.key_rewrite(&record, "attribute_exists(pk) AND version = :v", &[(":v", n(observed))])?, OnConflict::KeyVersion)];
            match self.commit(mutation, audit.clone(), Some((workspace, id))).await {
                // An edit landed between our read and write: read again and re-apply the result.
                Err(StoreError::VersionMismatch) => continue,
                other => return other,
            }
        }
        Err(StoreError::Unavailable("DynamoDB: the key kept changing; try again".into()))
    }
}

#[async_trait]
impl AuditLog for DynamoStore {
    async fn append(&self, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        self.commit(Vec::new(), audit, None).await
    }

    async fn list(
        &self,
        workspace: &str,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let before: Option<u64> = before.map(|b| b.parse().map_err(|_| corrupt("audit cursor"))).transpose()?;
        let to = match before {
            Some(0) | Some(1) => return Ok(Page { items: Vec::new(), next: None }),
            Some(b) => seq_sk(b - 1),
            None => "SEQ#~".to_owned(),
        };
        // Attribute names go through placeholders: `action` and `time` are DynamoDB reserved words.
        let mut query = QueryFilter::default();
        let QueryFilter { conditions, names, values } = &mut query;
        if let Some(a) = &filter.action {
            conditions.push("#action = :action");
            values.push((":action", s(a.clone())));
            names.push(("#action", "action"));
        }
        if let Some(p) = &filter.provider {
            conditions.push("#provider = :provider");
            values.push((":provider", s(p.clone())));
            names.push(("#provider", "provider"));
        }
        if let Some(a) = &filter.actor {
            conditions.push("(#actor_sub = :actor OR #actor_email = :actor)");
            values.push((":actor", s(a.clone())));
            names.extend([("#actor_sub", "actor_sub"), ("#actor_email", "actor_email")]);
        }
        if let Some(k) = &filter.key_id {
            conditions.push("#key_id = :key_id");
            values.push((":key_id", s(k.clone())));
            names.push(("#key_id", "key_id"));
        }
        if let Some(from) = &filter.from {
            conditions.push("#time >= :from_time");
            values.push((":from_time", s(ts(from))));
        }
        if let Some(until) = &filter.to {
            conditions.push("#time < :to_time");
            values.push((":to_time", s(ts(until))));
        }
        if filter.from.is_some() || filter.to.is_some() {
            names.push(("#time", "time"));
        }
        let items = self.query_range(audit_pk(workspace), "SEQ#".into(), to, false, Some(limit + 1), Some(&query)).await?;
        let mut entries = items.iter().map(Self::audit_from).collect::<Result<Vec<_>, _>>()?;
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|e| e.seq.to_string())
        } else {
            None
        };
        Ok(Page { items: entries, next })
    }

    async fn chain_slice(&self, workspace: &str, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let items = self.query_range(audit_pk(workspace), seq_sk(after_seq + 1), "SEQ#~".into(), true, Some(limit), None).await?;
        items.iter().map(Self::audit_from).collect()
    }

    async fn chain_head(&self, workspace: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.head(workspace).await
    }
}
