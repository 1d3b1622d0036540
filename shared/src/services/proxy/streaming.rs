//! Server-sent event answers, passed on chunk by chunk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use crate::domain::catalog::Provider;
use crate::domain::llm_usage::SseUsageReader;
use crate::domain::metering::{MeterKey, UsageCounts, UsageRecord};
use crate::domain::redaction::StreamRedactor;

use super::pending_usage::PendingUsage;

/// Passes a server-sent event stream on chunk by chunk, redacting and counting tokens, and
/// records the outcome when the stream ends.
pub(super) struct Streamer {
    pub(super) pending: Arc<PendingUsage>,
    pub(super) meter: MeterKey,
    pub(super) provider: &'static Provider,
    pub(super) redactor: StreamRedactor,
    pub(super) usage: SseUsageReader,
    pub(super) started: Instant,
    pub(super) provider_limits: BTreeMap<String, String>,
}

impl Streamer {
    pub(super) async fn run(mut self, mut source: Box<dyn crate::ports::ChunkSource>, sender: tokio::sync::mpsc::Sender<Vec<u8>>) {
        let mut counts = UsageCounts::default();
        loop {
            match source.next_chunk().await {
                Ok(Some(chunk)) => {
                    self.usage.feed(&chunk);
                    let out = self.redactor.push_lines(&chunk);
                    if !out.is_empty() && sender.send(out).await.is_err() {
                        // The client went away; the provider is still billing what it produced.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(provider = %self.provider.id, error = %e, "stream from the provider broke off");
                    counts.network_errors = 1;
                    break;
                }
            }
        }
        let tail = self.redactor.finish();
        if !tail.is_empty() {
            let _ = sender.send(tail).await;
        }
        self.usage.finish();
        let tokens = &self.usage.usage;
        counts.input_tokens = tokens.input_tokens;
        counts.output_tokens = tokens.output_tokens;
        counts.cost_micro_usd = tokens.cost_micro_usd(self.provider);
        counts.record_latency(self.started.elapsed().as_millis() as u64);
        let now = Utc::now();
        self.pending.add(UsageRecord {
            meter: self.meter,
            day: now.date_naive(),
            counts,
            provider_limits: self.provider_limits,
            observed_at: now,
        });
    }
}
