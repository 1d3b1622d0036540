//! DynamoDB implementation of `MeterStore`, `ResponseCache` and `NotificationStore`, in the single
//! table of `dynamo_store` (whose module doc lists every item and the access pattern it serves).
//!
//! The proxy's admission is one `TransactWriteItems`:
//!
//! 1. an Update of the key item (`SET last_used_at`), conditional on the key still existing, not
//!    being revoked and still having the material version the request uses;
//! 2. when the request is counted, `ADD requests 1` on the meter's minute item, on the usage day
//!    item (whose `requests` is the day counter) and on the month item, each conditional on being
//!    below its limit where one is set (the month item also on `tokens`);
//! 3. the usage records, merged first so that no item appears twice (DynamoDB refuses that):
//!    `ADD` of every count on the usage day item, `ADD tokens` on the month item of their meter,
//!    and `SET` of the newest provider rate-limit headers among them.
//!
//! Provider limits: a condition cannot guard a part of an update, and a failed one would cancel
//! the admission, so an admission sets the headers it carries unconditionally (they come from the
//! answers this process just saw, in order; another process's are as fresh). `record_usage`,
//! which may flush older observations, sets them with a conditional update of their own that
//! keeps a newer value already stored.
//!
//! A transaction returns no values, so the counters after it come from one consistent
//! `BatchGetItem` of the meter's minute, day and month items (3 small items, 3 RCU). An
//! admission therefore costs one write call (transactional: 2 WCU per KB of each item touched —
//! the key item (its size: ~1–2 KB), plus the minute, day and month items when counted, plus one
//! per other meter-day or month its usage touches) and one read call. A refused admission
//! (`Limited`) costs the cancelled write and one read to tell which limit was reached;
//! `KeyChanged` reads nothing.
//!
//! Transactions that lose a `TransactionConflict` (another transaction on one of the same items
//! at the same moment) are retried with jittered exponential backoff, a bounded number of times;
//! condition failures are answers (`KeyChanged`, `Limited`), never retried.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, KeysAndAttributes, ReturnValue, TransactWriteItem, Update, WriteRequest};
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::audit::{AuditDraft, AuditEntry};
use crate::domain::environment::Environment;
use crate::domain::metering::{Counters, LATENCY_BUCKETS, LimitKind, Limits, MeterKey, UsageCounts, UsageDay, UsageRecord, Windows};
use crate::domain::notifications::{Notification, NotificationKind};
use crate::domain::response_cache::CachedAnswer;
use crate::ports::{Admission, MeterStore, NotificationStore, Page, ResponseCache, StoreError, Verdict};

use super::dynamo_store::{
    DynamoStore, Item, OnConflict, QueryFilter, build, corrupt, get_n, get_opt_s, get_s, key, key_sk, n, s, ts, unavailable, ws_pk,
};

/// Transactions that lose to a concurrent one on the same items try again this many times.
const TRANSACT_ATTEMPTS: u32 = 10;
/// Seconds a minute window's item lives after the window ends (then `expires_at` removes it).
const MINUTE_ITEM_GRACE_SECONDS: i64 = 300;
/// DynamoDB's limit of items per transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;
/// DynamoDB's limit of requests per `BatchWriteItem`.
const MAX_BATCH_WRITE: usize = 25;

const CONDITION_FAILED: &str = "ConditionalCheckFailed";
const TRANSACTION_CONFLICT: &str = "TransactionConflict";

fn usage_pk(workspace: &str) -> String {
    format!("USAGE#{workspace}")
}

/// Day first: a date range of a workspace is one key range, whatever the provider.
fn day_sk(day: NaiveDate, provider: &str, environment: Environment) -> String {
    format!("DAY#{}#{provider}#{}", day.format("%Y-%m-%d"), environment.as_str())
}

fn quota_pk(meter: &MeterKey) -> String {
    format!("QUOTA#{}#{}#{}", meter.workspace, meter.provider, meter.environment.as_str())
}

fn minute_sk(minute: i64) -> String {
    format!("MIN#{minute:012}")
}

fn month_sk(day: NaiveDate) -> String {
    format!("MONTH#{}", day.format("%Y-%m"))
}

fn policy_sk(meter: &MeterKey) -> String {
    format!("POLICY#{}#{}", meter.provider, meter.environment.as_str())
}

fn cache_pk(workspace: &str, provider: &str) -> String {
    format!("CACHE#{workspace}#{provider}")
}

fn notify_pk(workspace: &str) -> String {
    format!("NOTIFY#{workspace}")
}

fn notification_sk(id: &str) -> String {
    format!("N#{id}")
}

fn dedupe_sk(dedupe_key: &str) -> String {
    format!("DEDUPE#{dedupe_key}")
}

fn latency_attribute(bucket: usize) -> String {
    format!("lat_{bucket:02}")
}

/// The additive counters of a usage day item, by attribute name.
fn count_fields(counts: &UsageCounts) -> [(&'static str, u64); 10] {
    [
        ("requests", counts.requests),
        ("cache_hits", counts.cache_hits),
        ("rate_limited", counts.rate_limited),
        ("auth_errors", counts.auth_errors),
        ("client_errors", counts.client_errors),
        ("server_errors", counts.server_errors),
        ("network_errors", counts.network_errors),
        ("input_tokens", counts.input_tokens),
        ("output_tokens", counts.output_tokens),
        ("cost_micro_usd", counts.cost_micro_usd),
    ]
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, StoreError> {
    Ok(DateTime::parse_from_rfc3339(value).map_err(corrupt)?.with_timezone(&Utc))
}

/// A number attribute that may be absent; present but unreadable is corrupt.
fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(_) => get_n(item, name).map(Some),
    }
}

/// Full jitter: a random pause up to `5 ms × 2^attempt` (capped at 320 ms).
async fn backoff(attempt: u32) {
    let cap = 5u128 << attempt.min(6);
    let pause = uuid::Uuid::new_v4().as_u128() % cap + 1;
    tokio::time::sleep(Duration::from_millis(pause as u64)).await;
}

/// Expression placeholders, so that no attribute name can collide with a reserved word.
#[derive(Default)]
struct Placeholders {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Placeholders {
    fn name(&mut self, attribute: &str) -> String {
        if let Some((placeholder, _)) = self.names.iter().find(|(_, a)| *a == attribute) {
            return placeholder.clone();
        }
        let placeholder = format!("#a{}", self.names.len());
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }
}

/// One item's part of a transaction: numbers to ADD, values to SET, and counters that must be
/// below a limit (or absent) for the transaction to go through.
#[derive(Default)]
struct Change {
    pk: String,
    sk: String,
    add: BTreeMap<String, u64>,
    set: BTreeMap<String, AttributeValue>,
    below: Vec<(&'static str, u64)>,
    /// The newest non-empty provider limits merged into this item, with when they were seen.
    provider_limits: Option<(DateTime<Utc>, BTreeMap<String, String>)>,
    /// The limit this item's conditions guard (for a refusal the counters cannot explain).
    guards: Option<LimitKind>,
}

impl Change {
    fn add(&mut self, attribute: &str, amount: u64) {
        if amount > 0 {
            *self.add.entry(attribute.to_owned()).or_default() += amount;
        }
    }

    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.provider_limits.is_none() && self.below.is_empty()
    }

    fn into_update(self, table: &str) -> Result<TransactWriteItem, StoreError> {
        let mut p = Placeholders::default();
        let mut sets: Vec<String> = Vec::new();
        for (attribute, value) in self.set {
            sets.push(format!("{} = {}", p.name(&attribute), p.value(value)));
        }
        if let Some((at, limits)) = self.provider_limits {
            let map = limits.into_iter().map(|(k, v)| (k, s(v))).collect();
            sets.push(format!("{} = {}", p.name("provider_limits"), p.value(AttributeValue::M(map))));
            sets.push(format!("{} = {}", p.name("provider_limits_at"), p.value(s(ts(&at)))));
        }
        let adds: Vec<String> =
            self.add.into_iter().map(|(attribute, amount)| format!("{} {}", p.name(&attribute), p.value(n(amount)))).collect();
        let mut expression = Vec::new();
        if !sets.is_empty() {
            expression.push(format!("SET {}", sets.join(", ")));
        }
        if !adds.is_empty() {
            expression.push(format!("ADD {}", adds.join(", ")));
        }
        let conditions: Vec<String> = self
            .below
            .iter()
            .map(|(attribute, limit)| {
                let name = p.name(attribute);
                match limit {
                    // Nothing is below zero, not even a counter that does not exist yet.
                    0 => format!("(attribute_exists({name}) AND attribute_not_exists({name}))"),
                    _ => format!("(attribute_not_exists({name}) OR {name} < {})", p.value(n(limit))),
                }
            })
            .collect();
        let mut update = Update::builder().table_name(table).set_key(Some(key(self.pk, self.sk))).update_expression(expression.join(" "));
        if !conditions.is_empty() {
            update = update.condition_expression(conditions.join(" AND "));
        }
        let update = update.set_expression_attribute_names(Some(p.names)).set_expression_attribute_values(Some(p.values));
        Ok(TransactWriteItem::builder().update(build(update.build())?).build())
    }
}

/// The changes of one write, one per item (merged: an item may appear once per transaction).
#[derive(Default)]
struct Changes {
    changes: Vec<Change>,
    index: HashMap<(String, String), usize>,
}

impl Changes {
    fn item(&mut self, pk: String, sk: String) -> &mut Change {
        let next = self.changes.len();
        let at = *self.index.entry((pk.clone(), sk.clone())).or_insert(next);
        if at == next {
            self.changes.push(Change { pk, sk, ..Change::default() });
        }
        &mut self.changes[at]
    }

    fn day(&mut self, meter: &MeterKey, day: NaiveDate) -> &mut Change {
        let change = self.item(usage_pk(&meter.workspace), day_sk(day, &meter.provider, meter.environment));
        // What `usage` reads back (and filters on): the item's own identity.
        change.set.insert("provider".into(), s(meter.provider.clone()));
        change.set.insert("environment".into(), s(meter.environment.as_str()));
        change.set.insert("day".into(), s(day.format("%Y-%m-%d").to_string()));
        change
    }

    fn month(&mut self, meter: &MeterKey, day: NaiveDate) -> &mut Change {
        self.item(quota_pk(meter), month_sk(day))
    }

    /// The counted request's own increments, each below its limit.
    fn count_request(&mut self, meter: &MeterKey, limits: &Limits, now: DateTime<Utc>) {
        let windows = Windows::of(now);
        // Counted with or without a per-minute limit: `Counters` reports the minute too.
        let minute = self.item(quota_pk(meter), minute_sk(windows.minute));
        minute.add("requests", 1);
        minute.set.insert("expires_at".into(), n((windows.minute + 1) * 60 + MINUTE_ITEM_GRACE_SECONDS));
        if let Some(limit) = limits.requests_per_minute {
            minute.below.push(("requests", limit));
            minute.guards = Some(LimitKind::RequestsPerMinute);
        }
        let day = self.day(meter, windows.day);
        day.add("requests", 1);
        if let Some(limit) = limits.requests_per_day {
            day.below.push(("requests", limit));
            day.guards = Some(LimitKind::RequestsPerDay);
        }
        let month = self.month(meter, windows.day);
        month.add("requests", 1);
        if let Some(limit) = limits.requests_per_month {
            month.below.push(("requests", limit));
            month.guards = Some(LimitKind::RequestsPerMonth);
        }
        if let Some(limit) = limits.llm_tokens_per_month {
            month.below.push(("tokens", limit));
            month.guards.get_or_insert(LimitKind::LlmTokensPerMonth);
        }
    }

    fn usage(&mut self, record: &UsageRecord) {
        if record.counts.is_empty() && record.provider_limits.is_empty() {
            return;
        }
        let day = self.day(&record.meter, record.day);
        for (attribute, amount) in count_fields(&record.counts) {
            day.add(attribute, amount);
        }
        for (bucket, amount) in record.counts.latency_ms_buckets.iter().enumerate() {
            day.add(&latency_attribute(bucket), *amount);
        }
        // The newest among the records of this write (across writes: see the module doc).
        if !record.provider_limits.is_empty() && day.provider_limits.as_ref().is_none_or(|(at, _)| *at <= record.observed_at) {
            day.provider_limits = Some((record.observed_at, record.provider_limits.clone()));
        }
        let tokens = record.counts.tokens();
        if tokens > 0 {
            self.month(&record.meter, record.day).add("tokens", tokens);
        }
    }
}

/// A transaction refused by a failed condition: the cancellation reason code of each item, in
/// order (`ConditionalCheckFailed`, `None`, ...).
struct Refused(Vec<String>);

impl DynamoStore {
    /// Sends one transaction, retrying (bounded, jittered backoff) while it loses to concurrent
    /// transactions. A failed condition comes back as `Err(Refused)`, never retried.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Result<(), Refused>, StoreError> {
        for attempt in 0..TRANSACT_ATTEMPTS {
            let sent = self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await;
            let error = match sent {
                Ok(_) => return Ok(Ok(())),
                Err(e) => e,
            };
            let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = error.as_service_error() else {
                return Err(unavailable(error));
            };
            let codes: Vec<String> = cancelled.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None").to_owned()).collect();
            if codes.iter().any(|c| c == CONDITION_FAILED) {
                return Ok(Err(Refused(codes)));
            }
            if !codes.iter().any(|c| c == TRANSACTION_CONFLICT) {
                return Err(StoreError::Unavailable(format!("DynamoDB: the transaction was cancelled ({})", codes.join(", "))));
            }
            backoff(attempt).await;
        }
        Err(StoreError::Unavailable("DynamoDB: the counters stayed contended; try again".into()))
    }

    fn key_touch(&self, admission: &Admission) -> Result<TransactWriteItem, StoreError> {
        let meter = &admission.meter;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(ws_pk(&meter.workspace), key_sk(&admission.key_id))))
            .update_expression("SET #last_used_at = :now")
            .condition_expression(
                "attribute_exists(pk) AND #key_version = :key_version AND (attribute_not_exists(#status) OR #status <> :revoked)",
            )
            .expression_attribute_names("#last_used_at", "last_used_at")
            .expression_attribute_names("#key_version", "key_version")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", s(ts(&admission.now)))
            .expression_attribute_values(":key_version", n(admission.key_version))
            .expression_attribute_values(":revoked", s(crate::domain::keys::KeyStatus::Revoked.as_str()));
        Ok(TransactWriteItem::builder().update(build(update.build())?).build())
    }

    /// The meter's counters in the windows of `now`: one consistent `BatchGetItem` of its minute,
    /// day and month items.
    async fn read_counters(&self, meter: &MeterKey, now: DateTime<Utc>) -> Result<Counters, StoreError> {
        let windows = Windows::of(now);
        let minute = (quota_pk(meter), minute_sk(windows.minute));
        let day = (usage_pk(&meter.workspace), day_sk(windows.day, &meter.provider, meter.environment));
        let month = (quota_pk(meter), month_sk(windows.day));
        let mut request = KeysAndAttributes::builder()
            .consistent_read(true)
            .projection_expression("pk, sk, #requests, #tokens")
            .expression_attribute_names("#requests", "requests")
            .expression_attribute_names("#tokens", "tokens");
        for (pk, sk) in [&minute, &day, &month] {
            request = request.keys(key(pk.clone(), sk.clone()));
        }
        let mut pending = Some(HashMap::from([(self.table.clone(), build(request.build())?)]));
        let mut found: Vec<Item> = Vec::new();
        for attempt in 0..TRANSACT_ATTEMPTS {
            let out = self.client.batch_get_item().set_request_items(pending.take()).send().await.map_err(unavailable)?;
            found.extend(out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default());
            match out.unprocessed_keys.filter(|u| !u.is_empty()) {
                None => break,
                Some(unprocessed) if attempt + 1 < TRANSACT_ATTEMPTS => {
                    pending = Some(unprocessed);
                    backoff(attempt).await;
                }
                Some(_) => return Err(StoreError::Unavailable("DynamoDB: the counters could not be read; try again".into())),
            }
        }
        let counter = |(pk, sk): &(String, String), attribute: &str| -> Result<u64, StoreError> {
            let item = found
                .iter()
                .find(|i| i.get("pk").and_then(|v| v.as_s().ok()) == Some(pk) && i.get("sk").and_then(|v| v.as_s().ok()) == Some(sk));
            Ok(match item {
                Some(item) => opt_n(item, attribute)?.unwrap_or(0),
                None => 0,
            })
        };
        Ok(Counters {
            requests_this_minute: counter(&minute, "requests")?,
            requests_today: counter(&day, "requests")?,
            requests_this_month: counter(&month, "requests")?,
            llm_tokens_this_month: counter(&month, "tokens")?,
        })
    }

    fn usage_day_from(item: &Item) -> Result<UsageDay, StoreError> {
        let environment = get_s(item, "environment")?;
        let day = get_s(item, "day")?;
        let number = |name: &str| -> Result<u64, StoreError> { Ok(opt_n(item, name)?.unwrap_or(0)) };
        let mut latency = Vec::new();
        if (0..LATENCY_BUCKETS).any(|b| item.contains_key(&latency_attribute(b))) {
            latency = (0..LATENCY_BUCKETS).map(|b| number(&latency_attribute(b))).collect::<Result<_, _>>()?;
        }
        let provider_limits = match item.get("provider_limits") {
            None => BTreeMap::new(),
            Some(value) => value
                .as_m()
                .map_err(|_| corrupt("usage item `provider_limits` is not a map"))?
                .iter()
                .map(|(k, v)| v.as_s().map(|v| (k.clone(), v.clone())).map_err(|_| corrupt("usage item `provider_limits` value")))
                .collect::<Result<_, _>>()?,
        };
        Ok(UsageDay {
            provider: get_s(item, "provider")?.to_owned(),
            environment: Environment::parse(environment).ok_or_else(|| corrupt(format!("environment `{environment}`")))?,
            day: NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(corrupt)?,
            counts: UsageCounts {
                requests: number("requests")?,
                cache_hits: number("cache_hits")?,
                rate_limited: number("rate_limited")?,
                auth_errors: number("auth_errors")?,
                client_errors: number("client_errors")?,
                server_errors: number("server_errors")?,
                network_errors: number("network_errors")?,
                latency_ms_buckets: latency,
                input_tokens: number("input_tokens")?,
                output_tokens: number("output_tokens")?,
                cost_micro_usd: number("cost_micro_usd")?,
            },
            provider_limits,
            provider_limits_at: get_opt_s(item, "provider_limits_at").map(|at| parse_time(&at)).transpose()?,
        })
    }

    /// Writes usage records outside an admission: the counts in transactions of at most 100
    /// items (each all-or-nothing), then the provider limits of each day item with their own
    /// conditional update, which keeps a newer observation already stored.
    async fn write_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError> {
        let mut changes = Changes::default();
        for record in usage {
            changes.usage(record);
        }
        let mut observed = Vec::new();
        let mut items = Vec::new();
        for mut change in changes.changes {
            if let Some(limits) = change.provider_limits.take() {
                observed.push((change.pk.clone(), change.sk.clone(), change.set.clone(), limits));
            }
            if !change.is_empty() {
                items.push(change.into_update(&self.table)?);
            }
        }
        for chunk in items.chunks(MAX_TRANSACTION_ITEMS) {
            if let Err(Refused(codes)) = self.transact(chunk.to_vec()).await? {
                // Usage items carry no conditions: a refusal here means the table is not ours.
                return Err(StoreError::Unavailable(format!("DynamoDB: usage write refused ({})", codes.join(", "))));
            }
        }
        for (pk, sk, identity, (at, limits)) in observed {
            let mut p = Placeholders::default();
            let mut sets: Vec<String> = identity.into_iter().map(|(a, v)| format!("{} = {}", p.name(&a), p.value(v))).collect();
            let map = limits.into_iter().map(|(k, v)| (k, s(v))).collect();
            sets.push(format!("{} = {}", p.name("provider_limits"), p.value(AttributeValue::M(map))));
            let (at_name, at_value) = (p.name("provider_limits_at"), p.value(s(ts(&at))));
            sets.push(format!("{at_name} = {at_value}"));
            // Fixed-width RFC 3339 (nanoseconds, `Z`): string order is time order.
            let updated = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(pk, sk)))
                .update_expression(format!("SET {}", sets.join(", ")))
                .condition_expression(format!("attribute_not_exists({at_name}) OR {at_name} < {at_value}"))
                .set_expression_attribute_names(Some(p.names))
                .set_expression_attribute_values(Some(p.values))
                .send()
                .await;
            match updated {
                Ok(_) => {}
                Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    fn notification_from(workspace: &str, item: &Item) -> Result<Notification, StoreError> {
        let kind = get_s(item, "kind")?;
        let environment = get_s(item, "environment")?;
        Ok(Notification {
            id: get_s(item, "id")?.to_owned(),
            workspace: workspace.to_owned(),
            kind: NotificationKind::parse(kind).ok_or_else(|| corrupt(format!("notification kind `{kind}`")))?,
            provider: get_s(item, "provider")?.to_owned(),
            environment: Environment::parse(environment).ok_or_else(|| corrupt(format!("environment `{environment}`")))?,
            key_id: get_opt_s(item, "key_id"),
            message: get_s(item, "message")?.to_owned(),
            created_at: parse_time(get_s(item, "created_at")?)?,
            read_at: get_opt_s(item, "read_at").map(|at| parse_time(&at)).transpose()?,
            dedupe_key: get_s(item, "dedupe_key")?.to_owned(),
        })
    }

    /// Deletes the given keys with `BatchWriteItem` (25 at a time), retrying what comes back
    /// unprocessed.
    async fn delete_keys(&self, keys: Vec<Item>) -> Result<(), StoreError> {
        for chunk in keys.chunks(MAX_BATCH_WRITE) {
            let requests = chunk
                .iter()
                .map(|k| {
                    Ok(WriteRequest::builder().delete_request(build(DeleteRequest::builder().set_key(Some(k.clone())).build())?).build())
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut pending = Some(HashMap::from([(self.table.clone(), requests)]));
            let mut attempt = 0;
            while let Some(request) = pending.take() {
                let out = self.client.batch_write_item().set_request_items(Some(request)).send().await.map_err(unavailable)?;
                if let Some(unprocessed) = out.unprocessed_items.filter(|u| u.values().any(|v| !v.is_empty())) {
                    attempt += 1;
                    if attempt >= TRANSACT_ATTEMPTS {
                        return Err(StoreError::Unavailable("DynamoDB: the cache purge was throttled; try again".into()));
                    }
                    backoff(attempt).await;
                    pending = Some(unprocessed);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl MeterStore for DynamoStore {
    async fn admit(&self, admission: &Admission) -> Result<Verdict, StoreError> {
        let meter = &admission.meter;
        let mut changes = Changes::default();
        if admission.counted {
            changes.count_request(meter, &admission.limits, admission.now);
        }
        for record in &admission.usage {
            changes.usage(record);
        }
        changes.changes.retain(|c| !c.is_empty());
        if changes.changes.len() + 1 > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::Unavailable(format!(
                "the admission carries usage for {} meter-days, more than one write holds; flush usage with record_usage",
                changes.changes.len()
            )));
        }
        let guards: Vec<Option<LimitKind>> = changes.changes.iter().map(|c| c.guards).collect();
        let mut items = vec![self.key_touch(admission)?];
        for change in changes.changes {
            items.push(change.into_update(&self.table)?);
        }
        match self.transact(items).await? {
            Ok(()) => Ok(Verdict::Admitted(self.read_counters(meter, admission.now).await?)),
            Err(Refused(codes)) => {
                if codes.first().is_some_and(|c| c == CONDITION_FAILED) {
                    return Ok(Verdict::KeyChanged);
                }
                // Counters never go down within their windows: the read shows the reached limit.
                let counters = self.read_counters(meter, admission.now).await?;
                let refused_by = codes.iter().skip(1).zip(&guards).find(|(c, _)| *c == CONDITION_FAILED).and_then(|(_, g)| *g);
                let limit = counters
                    .breaks(&admission.limits)
                    .or(refused_by)
                    .ok_or_else(|| StoreError::Unavailable("DynamoDB: the admission was refused for no known reason".into()))?;
                Ok(Verdict::Limited { limit, counters })
            }
        }
    }

    async fn record_usage(&self, usage: &[UsageRecord]) -> Result<(), StoreError> {
        self.write_usage(usage).await
    }

    async fn usage(&self, workspace: &str, provider: Option<&str>, from: NaiveDate, to: NaiveDate) -> Result<Vec<UsageDay>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        let mut filter = QueryFilter::default();
        if let Some(provider) = provider {
            filter.conditions.push("#provider = :provider");
            filter.names.push(("#provider", "provider"));
            filter.values.push((":provider", s(provider)));
        }
        let (low, high) = (format!("DAY#{}#", from.format("%Y-%m-%d")), format!("DAY#{}#~", to.format("%Y-%m-%d")));
        let items = self.query_range(usage_pk(workspace), low, high, true, None, Some(&filter)).await?;
        let mut days = items.iter().map(Self::usage_day_from).collect::<Result<Vec<_>, _>>()?;
        // Environments in the order of their ids, as every store sorts them.
        days.sort_by(|a, b| (&a.provider, a.environment.as_str(), a.day).cmp(&(&b.provider, b.environment.as_str(), b.day)));
        Ok(days)
    }

    async fn counters(&self, meter: &MeterKey, now: DateTime<Utc>) -> Result<Counters, StoreError> {
        self.read_counters(meter, now).await
    }

    async fn policy(&self, meter: &MeterKey) -> Result<Option<Limits>, StoreError> {
        let Some(item) = self.get_item(ws_pk(&meter.workspace), policy_sk(meter)).await? else { return Ok(None) };
        Ok(Some(Limits {
            requests_per_minute: opt_n(&item, "requests_per_minute")?,
            requests_per_day: opt_n(&item, "requests_per_day")?,
            requests_per_month: opt_n(&item, "requests_per_month")?,
            llm_tokens_per_month: opt_n(&item, "llm_tokens_per_month")?,
        }))
    }

    async fn put_policy(&self, meter: &MeterKey, limits: &Limits, audit: AuditDraft) -> Result<AuditEntry, StoreError> {
        let mut item = key(ws_pk(&meter.workspace), policy_sk(meter));
        item.insert("provider".into(), s(meter.provider.clone()));
        item.insert("environment".into(), s(meter.environment.as_str()));
        for kind in LimitKind::ALL {
            if let Some(limit) = limits.get(kind) {
                item.insert(kind.as_str().to_owned(), n(limit));
            }
        }
        self.commit(vec![(self.put(item, None, &[])?, OnConflict::Stale)], audit, None).await
    }
}

#[async_trait]
impl ResponseCache for DynamoStore {
    async fn get(&self, workspace: &str, provider: &str, key_hash: &str, now: DateTime<Utc>) -> Result<Option<CachedAnswer>, StoreError> {
        // Eventually consistent (half the read cost): a cache may answer from a copy a moment old.
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(cache_pk(workspace, provider), key_hash.to_owned())))
            .send()
            .await
            .map_err(unavailable)?;
        let Some(item) = out.item else { return Ok(None) };
        // TTL deletion is lazy (up to days late): expiry is checked here, to the nanosecond.
        let expires_at = parse_time(get_s(&item, "expires_at_rfc3339")?)?;
        if expires_at <= now {
            return Ok(None);
        }
        let headers: Vec<(String, String)> = serde_json::from_str(get_s(&item, "headers")?).map_err(corrupt)?;
        let body = item.get("body").and_then(|v| v.as_b().ok()).map(|b| b.as_ref().to_vec()).unwrap_or_default();
        Ok(Some(CachedAnswer {
            status: get_n(&item, "status")?,
            headers,
            body,
            stored_at: parse_time(get_s(&item, "stored_at")?)?,
            expires_at,
        }))
    }

    async fn put(&self, workspace: &str, provider: &str, key_hash: &str, answer: &CachedAnswer) -> Result<(), StoreError> {
        let mut item = key(cache_pk(workspace, provider), key_hash.to_owned());
        item.insert("status".into(), n(answer.status));
        item.insert("headers".into(), s(serde_json::to_string(&answer.headers).map_err(corrupt)?));
        item.insert("body".into(), AttributeValue::B(Blob::new(answer.body.clone())));
        item.insert("stored_at".into(), s(ts(&answer.stored_at)));
        item.insert("expires_at_rfc3339".into(), s(ts(&answer.expires_at)));
        // The TTL attribute (whole seconds, rounded up so the item never goes early).
        let ttl = answer.expires_at.timestamp() + i64::from(answer.expires_at.timestamp_subsec_nanos() > 0);
        item.insert("expires_at".into(), n(ttl));
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(unavailable)?;
        Ok(())
    }

    async fn purge(&self, workspace: &str, provider: &str) -> Result<u64, StoreError> {
        let pk = cache_pk(workspace, provider);
        let mut keys: Vec<Item> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk.clone()))
                .projection_expression("pk, sk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            keys.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        let count = keys.len() as u64;
        self.delete_keys(keys).await?;
        Ok(count)
    }
}

#[async_trait]
impl NotificationStore for DynamoStore {
    async fn notify(&self, notification: &Notification, audit: Option<AuditDraft>) -> Result<Option<Notification>, StoreError> {
        let ws = &notification.workspace;
        let mut item = key(notify_pk(ws), notification_sk(&notification.id));
        item.insert("id".into(), s(notification.id.clone()));
        item.insert("kind".into(), s(notification.kind.as_str()));
        item.insert("provider".into(), s(notification.provider.clone()));
        item.insert("environment".into(), s(notification.environment.as_str()));
        if let Some(key_id) = &notification.key_id {
            item.insert("key_id".into(), s(key_id.clone()));
        }
        item.insert("message".into(), s(notification.message.clone()));
        item.insert("created_at".into(), s(ts(&notification.created_at)));
        if let Some(read_at) = &notification.read_at {
            item.insert("read_at".into(), s(ts(read_at)));
        }
        item.insert("dedupe_key".into(), s(notification.dedupe_key.clone()));
        let mut marker = key(notify_pk(ws), dedupe_sk(&notification.dedupe_key));
        marker.insert("notification_id".into(), s(notification.id.clone()));
        let mutation = vec![
            (self.put(item, Some("attribute_not_exists(pk)"), &[])?, OnConflict::Duplicate),
            (self.put(marker, Some("attribute_not_exists(pk)"), &[])?, OnConflict::Duplicate),
        ];
        match audit {
            Some(audit) => match self.commit(mutation, audit, None).await {
                Ok(_) => Ok(Some(notification.clone())),
                Err(StoreError::SlotTaken) => Ok(None),
                Err(e) => Err(e),
            },
            None => match self.transact(mutation.into_iter().map(|(item, _)| item).collect()).await? {
                Ok(()) => Ok(Some(notification.clone())),
                Err(Refused(_)) => Ok(None),
            },
        }
    }

    async fn notifications(
        &self,
        workspace: &str,
        unread_only: bool,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Notification>, StoreError> {
        if limit == 0 {
            return Ok(Page { items: Vec::new(), next: None });
        }
        let mut filter = QueryFilter::default();
        if unread_only {
            filter.conditions.push("attribute_not_exists(#read_at)");
            filter.names.push(("#read_at", "read_at"));
        }
        // The range is inclusive: the item at `before` itself (the previous page's last) is
        // dropped below, so one more is read.
        let high = before.map(notification_sk).unwrap_or_else(|| "N#~".to_owned());
        let items = self.query_range(notify_pk(workspace), "N#".into(), high.clone(), false, Some(limit + 2), Some(&filter)).await?;
        let mut found = items
            .iter()
            .filter(|i| before.is_none() || i.get("sk").and_then(|v| v.as_s().ok()) != Some(&high))
            .map(|i| Self::notification_from(workspace, i))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|n| n.id.clone())
        } else {
            None
        };
        Ok(Page { items: found, next })
    }

    async fn mark_read(&self, workspace: &str, id: &str, at: DateTime<Utc>) -> Result<Notification, StoreError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(notify_pk(workspace), notification_sk(id))))
            .update_expression("SET #read_at = if_not_exists(#read_at, :at)")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#read_at", "read_at")
            .expression_attribute_values(":at", s(ts(&at)))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(out) => Self::notification_from(workspace, &out.attributes.unwrap_or_default()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Err(StoreError::NotFound),
            Err(e) => Err(unavailable(e)),
        }
    }
}
