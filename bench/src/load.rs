//! The load generator: oha (crates.io), one run per measurement, its JSON summary read back.
//!
//! At a fixed rate oha runs with `--latency-correction`: a request's latency counts from when it
//! was due, not from when a free connection sent it, so a target that falls behind shows its
//! queueing instead of hiding it (coordinated omission).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::targets::RequestSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    PerSecond(u32),
    /// As fast as the target answers (closed loop).
    Max,
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::PerSecond(n) => s.serialize_u32(*n),
            Rate::Max => s.serialize_str("max"),
        }
    }
}

impl Rate {
    pub fn label(self) -> String {
        match self {
            Rate::PerSecond(n) => format!("{n}/s"),
            Rate::Max => "saturation".into(),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        match s.trim() {
            "max" | "saturation" => Ok(Rate::Max),
            n => n.parse().map(Rate::PerSecond).map_err(|_| format!("`{s}` is not a rate (a number of requests per second, or max)")),
        }
    }
}

/// What one oha run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub seconds: f64,
    pub requests: u64,
    /// Answers with a 2xx status.
    pub successes: u64,
    /// Other statuses, plus connection and timeout errors.
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// Successful answers per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Deserialize)]
struct OhaSummary {
    total: f64,
    slowest: Option<f64>,
}

#[derive(Deserialize)]
struct OhaOutput {
    summary: OhaSummary,
    #[serde(rename = "latencyPercentiles")]
    latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution")]
    status_codes: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution")]
    errors: BTreeMap<String, u64>,
}

/// Reads oha's `--output-format json` summary.
pub fn parse_oha(json: &str) -> Result<LoadResult, String> {
    let out: OhaOutput = serde_json::from_str(json).map_err(|e| format!("oha's JSON: {e}"))?;
    let ms = |key: &str| out.latency_percentiles.get(key).copied().flatten().map(|s| s * 1000.0).unwrap_or(f64::NAN);
    let successes: u64 = out.status_codes.iter().filter(|(code, _)| code.starts_with('2')).map(|(_, n)| n).sum();
    let mut error_kinds: BTreeMap<String, u64> =
        out.status_codes.iter().filter(|(code, _)| !code.starts_with('2')).map(|(code, n)| (format!("HTTP {code}"), *n)).collect();
    error_kinds.extend(out.errors.iter().map(|(kind, n)| (kind.clone(), *n)));
    let errors = error_kinds.values().sum();
    Ok(LoadResult {
        seconds: out.summary.total,
        requests: successes + errors,
        successes,
        errors,
        error_kinds,
        throughput: if out.summary.total > 0.0 { successes as f64 / out.summary.total } else { 0.0 },
        p50_ms: ms("p50"),
        p90_ms: ms("p90"),
        p99_ms: ms("p99"),
        max_ms: out.summary.slowest.map(|s| s * 1000.0).unwrap_or(f64::NAN),
    })
}

pub async fn run_oha(oha: &Path, request: &RequestSpec, rate: Rate, seconds: u64, connections: u32) -> Result<LoadResult, String> {
    let mut command = Command::new(oha);
    command
        .arg("--no-tui")
        .args(["--output-format", "json"])
        .args(["-z", &format!("{seconds}s")])
        // Requests still open at the deadline finish and count (not "aborted due to deadline").
        .arg("-w")
        .args(["-c", &connections.to_string()])
        .args(["-t", "10s"])
        .args(["-m", "POST"])
        .args(["-d", &request.body]);
    if let Rate::PerSecond(n) = rate {
        command.args(["-q", &n.to_string()]).arg("--latency-correction");
    }
    for (name, value) in &request.headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    command.arg(&request.url);
    let output = command.output().await.map_err(|e| format!("cannot run oha ({}): {e}", oha.display()))?;
    if !output.status.success() {
        return Err(format!("oha failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr)));
    }
    parse_oha(&String::from_utf8_lossy(&output.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_summary_is_read_in_milliseconds_with_errors_counted() {
        let json = r#"{"summary":{"successRate":0.99,"total":30.0,"slowest":0.012,"fastest":0.0001,"average":0.0004,
            "requestsPerSec":2000.0,"totalData":1,"sizePerRequest":1,"sizePerSec":1.0},
            "latencyPercentiles":{"p10":0.0001,"p50":0.00025,"p90":0.0005,"p99":0.002,"p99.9":0.005},
            "statusCodeDistribution":{"200":59900,"429":50},
            "errorDistribution":{"connection closed":50}}"#;
        let result = parse_oha(json).unwrap();
        assert_eq!(result.successes, 59_900);
        assert_eq!(result.errors, 100);
        assert_eq!(result.requests, 60_000);
        assert!((result.p50_ms - 0.25).abs() < 1e-9 && (result.p99_ms - 2.0).abs() < 1e-9 && (result.max_ms - 12.0).abs() < 1e-9);
        assert!((result.throughput - 59_900.0 / 30.0).abs() < 1e-6);
        assert_eq!(result.error_kinds["HTTP 429"], 50);
    }

    #[test]
    fn rates_parse_and_refuse_words() {
        assert_eq!("2000".parse::<Rate>().unwrap(), Rate::PerSecond(2000));
        assert_eq!("max".parse::<Rate>().unwrap(), Rate::Max);
        assert!("fast".parse::<Rate>().is_err());
    }
}
