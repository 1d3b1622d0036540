//! Outcomes of proxied requests (status class, latency, tokens) are known only after the answer,
//! when the request's one write is already done. They wait here and ride along with the next
//! admission write of this process (or a flush), so a request still costs one write.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::NaiveDate;

use crate::domain::metering::{MeterKey, UsageRecord};

#[derive(Default)]
pub struct PendingUsage {
    records: Mutex<BTreeMap<(MeterKey, NaiveDate), UsageRecord>>,
}

impl PendingUsage {
    pub fn add(&self, record: UsageRecord) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        match records.get_mut(&(record.meter.clone(), record.day)) {
            Some(held) => {
                held.counts.add(&record.counts);
                if !record.provider_limits.is_empty() && record.observed_at >= held.observed_at {
                    held.provider_limits = record.provider_limits;
                    held.observed_at = record.observed_at;
                }
            }
            None => {
                records.insert((record.meter.clone(), record.day), record);
            }
        }
    }

    pub fn take(&self) -> Vec<UsageRecord> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner())).into_values().collect()
    }

    /// At most `max` records (the rest keep waiting): one DynamoDB transaction holds at most
    /// 100 items, and each record touches up to two.
    pub fn take_some(&self, max: usize) -> Vec<UsageRecord> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<_> = records.keys().take(max).cloned().collect();
        keys.into_iter().filter_map(|k| records.remove(&k)).collect()
    }

    /// Puts records back after a write that did not happen.
    pub fn restore(&self, records: Vec<UsageRecord>) {
        for record in records {
            self.add(record);
        }
    }
}
