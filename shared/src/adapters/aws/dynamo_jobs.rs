//! DynamoDB implementation of `JobLeases`, in the single table of `dynamo_store`.
//!
//! # Item
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | job lease | `JOB` | `<job name>` | `holder` (S) and `until` (S, `ts()`: fixed-width RFC 3339 with nanoseconds and `Z`, so string order is time order) while held or since it expired, both removed once released; `position` (S, absent = none), which outlives the lease |
//!
//! The item has no TTL: it keeps the position between runs.
//!
//! # Contract
//!
//! - `acquire` is ONE `UpdateItem` (`SET holder, until`) with the condition
//!   `attribute_not_exists(pk) OR attribute_not_exists(#until) OR #until <= :now OR #holder = :holder`
//!   (new, released, expired at `now`, or already ours), returning `ALL_NEW` for the saved
//!   position. A `ConditionalCheckFailed` means another holder has it: a consistent `GetItem`
//!   reads its `until` for `LeaseError::Held`. Should that read find the lease free or expired
//!   at `now` after all (released in between), the update is tried again, a bounded number of
//!   times.
//! - `release` is ONE `UpdateItem` conditioned on `#holder = :holder`: `SET position` (or `REMOVE`
//!   it for None) and `REMOVE holder, until`. A failed condition is `Ok(false)`.
//!
//! Cost: an acquire is one write (~1 WCU), plus one strongly consistent read (1 RCU) when
//! refused; a release is one write.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Utc};

use super::dynamo_store::{DynamoStore, Item, corrupt, get_opt_s, get_s, key, s, ts, unavailable};
use crate::ports::{JobLeases, LeaseError, StoreError};

/// The partition of every job lease.
const JOB_PK: &str = "JOB";
/// An acquire whose refusal the following read cannot confirm (the lease was freed in between)
/// tries again this many times in all.
const ACQUIRE_ATTEMPTS: usize = 5;

fn parse_time(value: &str) -> Result<DateTime<Utc>, StoreError> {
    Ok(DateTime::parse_from_rfc3339(value).map_err(corrupt)?.with_timezone(&Utc))
}

impl DynamoStore {
    /// The conditional take-over; `Ok(None)` = the condition failed (someone else holds it).
    async fn try_acquire(&self, job: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<Option<Item>, StoreError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(JOB_PK.to_owned(), job.to_owned())))
            .update_expression("SET #holder = :holder, #until = :until")
            .condition_expression("attribute_not_exists(pk) OR attribute_not_exists(#until) OR #until <= :now OR #holder = :holder")
            .expression_attribute_names("#holder", "holder")
            .expression_attribute_names("#until", "until")
            .expression_attribute_values(":holder", s(holder))
            .expression_attribute_values(":until", s(ts(&until)))
            .expression_attribute_values(":now", s(ts(&now)))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The lease item as it is now (strongly consistent).
    async fn lease_item(&self, job: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(JOB_PK.to_owned(), job.to_owned())))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item)
    }
}

#[async_trait]
impl JobLeases for DynamoStore {
    async fn acquire(&self, job: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<Option<String>, LeaseError> {
        for _ in 0..ACQUIRE_ATTEMPTS {
            if let Some(item) = self.try_acquire(job, holder, now, until).await? {
                return Ok(get_opt_s(&item, "position"));
            }
            // Refused: report the holder's `until`, unless the lease has been freed since.
            let Some(item) = self.lease_item(job).await? else { continue };
            if item.contains_key("until") {
                let held_until = parse_time(get_s(&item, "until")?)?;
                if held_until > now && get_opt_s(&item, "holder").as_deref() != Some(holder) {
                    return Err(LeaseError::Held { until: held_until });
                }
            }
        }
        Err(LeaseError::Store(StoreError::Unavailable(format!(
            "the lease of `{job}` changed hands {ACQUIRE_ATTEMPTS} times while it was being taken"
        ))))
    }

    async fn release(&self, job: &str, holder: &str, position: Option<&str>) -> Result<bool, StoreError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(JOB_PK.to_owned(), job.to_owned())))
            .condition_expression("#holder = :holder")
            .expression_attribute_names("#holder", "holder")
            .expression_attribute_names("#until", "until")
            .expression_attribute_names("#position", "position")
            .expression_attribute_values(":holder", s(holder));
        let request = match position {
            Some(position) => request
                .update_expression("SET #position = :position REMOVE #holder, #until")
                .expression_attribute_values(":position", s(position)),
            None => request.update_expression("REMOVE #holder, #until, #position"),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }
}
