//! Configuration, read once at start into a typed struct. Nothing reads the environment later.
//! The same variable names are used by the Lambdas, the local gateway and the tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::adapters::upstream::UpstreamLimits;
use crate::domain::catalog::catalog;
use crate::services::proxy::ProxyLimits;
use crate::services::scheduler::SchedulerSettings;
use crate::services::upstreams::Upstreams;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Where key records, audit and material live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data directory.
    Embedded,
    /// DynamoDB (one table), configured through the AWS SDK's usual environment.
    Aws,
}

/// Who seals key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultKind {
    /// AES-256-GCM with the local master key.
    Local,
    /// KMS envelope encryption (`GenerateDataKey` + AES-256-GCM).
    Kms,
    /// One Secrets Manager secret per key record.
    SecretsManager,
}

pub struct Config {
    /// `STOCKPULSE_BACKEND`: `embedded` (default) or `aws`.
    pub backend: Backend,
    /// `STOCKPULSE_VAULT`: `local` (default with the embedded backend) or `kms` (default on AWS).
    pub vault: VaultKind,
    /// `STOCKPULSE_TABLE`: the DynamoDB table (default `stockpulse`).
    pub table: String,
    /// `STOCKPULSE_CREATE_TABLE`: create the table if it is missing (local use and tests; the
    /// deployment's template creates it in production).
    pub create_table: bool,
    /// `STOCKPULSE_KMS_KEY_ID`: the KMS key (id, ARN or alias) of the KMS vault; with the
    /// Secrets Manager vault, the key its secrets are encrypted with (optional).
    pub kms_key_id: Option<String>,
    /// `STOCKPULSE_SECRET_PREFIX`: name prefix of the Secrets Manager vault's secrets
    /// (default `stockpulse/`; secrets are `<prefix><workspace>/<key id>`).
    pub secret_prefix: String,
    /// `STOCKPULSE_SECRET_RECOVERY_DAYS`: recovery window of deleted secrets, 7 to 30 (default 30).
    pub secret_recovery_days: i64,
    /// `STOCKPULSE_DATA_DIR`: SQLite file and master key file of the embedded backend.
    pub data_dir: PathBuf,
    /// `STOCKPULSE_MASTER_KEY`: base64 or hex of 32 bytes; else `<data dir>/master.key`.
    pub master_key: Option<Zeroizing<String>>,
    /// `STOCKPULSE_UPSTREAM_<PROVIDER>[_<ENVIRONMENT>]`: operator overrides of base URLs.
    pub upstreams: Upstreams,
    /// `STOCKPULSE_UPSTREAM_CONNECT_TIMEOUT_MS`, `STOCKPULSE_UPSTREAM_TIMEOUT_MS`.
    pub upstream_limits: UpstreamLimits,
    /// `STOCKPULSE_PROXY_MAX_REQUEST_BYTES`, `STOCKPULSE_PROXY_MAX_RESPONSE_BYTES` (default 6 MiB
    /// each, the Lambda payload limit).
    pub proxy_limits: ProxyLimits,
    /// `STOCKPULSE_KEY_CACHE_SECONDS`: how long the proxy keeps a decrypted key in memory (0 to
    /// 60, default 60).
    pub key_cache_ttl: Duration,
    /// `STOCKPULSE_LOG_FORMAT`: `json` (default on Lambda) or `text`.
    pub log_format: LogFormat,
    /// `STOCKPULSE_VERIFY_EVERY_HOURS` (default 24), `STOCKPULSE_SCHEDULER_TESTS_PER_RUN` (25),
    /// `STOCKPULSE_SCHEDULER_RECORDS_PER_RUN` (500): what one run of the scheduled job does.
    pub scheduler: SchedulerSettings,
    /// `STOCKPULSE_SCHEDULER_INTERVAL_SECONDS`: how often the local gateway runs the scheduled
    /// job (default 3600; 0 = never, only `POST /api/jobs/run`). Lambda runs it on EventBridge.
    pub scheduler_interval: Option<Duration>,
    /// `STOCKPULSE_EVENT_BUS` (AWS backend): publish every new notification to this EventBridge
    /// bus (name or ARN); unset = notifications stay in the store only.
    pub event_bus: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads the process environment once.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let get = |name: &str| vars.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let millis = |name: &str, default: u64| -> Result<Duration, ConfigError> {
            match get(name) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| ConfigError(format!("{name} must be a positive number of milliseconds"))),
            }
        };
        let bytes = |name: &str, default: usize| -> Result<usize, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ConfigError(format!("{name} must be a positive number of bytes"))),
            }
        };
        let on_lambda = get("AWS_LAMBDA_FUNCTION_NAME").is_some();
        let log_format = match get("STOCKPULSE_LOG_FORMAT") {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            None if on_lambda => LogFormat::Json,
            None => LogFormat::Text,
            Some(other) => return Err(ConfigError(format!("STOCKPULSE_LOG_FORMAT must be json or text, not `{other}`"))),
        };
        let default_dir = if on_lambda { "/tmp/stockpulse" } else { "./data" };
        let upstreams = Upstreams::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())), |id| catalog().provider(id).is_some())
            .map_err(|e| ConfigError(e.to_string()))?;
        let backend = match get("STOCKPULSE_BACKEND") {
            None | Some("embedded") => Backend::Embedded,
            Some("aws") => Backend::Aws,
            Some(other) => return Err(ConfigError(format!("STOCKPULSE_BACKEND must be embedded or aws, not `{other}`"))),
        };
        let vault = match (get("STOCKPULSE_VAULT"), backend) {
            (None, Backend::Embedded) | (Some("local"), _) => VaultKind::Local,
            (None, Backend::Aws) | (Some("kms"), _) => VaultKind::Kms,
            (Some("secretsmanager"), _) => VaultKind::SecretsManager,
            (Some(other), _) => return Err(ConfigError(format!("STOCKPULSE_VAULT must be local, kms or secretsmanager, not `{other}`"))),
        };
        let kms_key_id = get("STOCKPULSE_KMS_KEY_ID").map(str::to_owned);
        if vault == VaultKind::Kms && kms_key_id.is_none() {
            return Err(ConfigError("the kms vault needs STOCKPULSE_KMS_KEY_ID (a KMS key id, ARN or alias)".into()));
        }
        let secret_recovery_days = match get("STOCKPULSE_SECRET_RECOVERY_DAYS") {
            None => 30,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|d| (7..=30).contains(d))
                .ok_or_else(|| ConfigError("STOCKPULSE_SECRET_RECOVERY_DAYS must be a number of days from 7 to 30".into()))?,
        };
        let count = |name: &str, default: u64, max: u64| -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| ConfigError(format!("{name} must be a number from 0 to {max}"))),
            }
        };
        let defaults = SchedulerSettings::default();
        let scheduler = SchedulerSettings {
            verify_every: chrono::Duration::hours(count("STOCKPULSE_VERIFY_EVERY_HOURS", 24, 24 * 365)?.max(1) as i64),
            tests_per_run: count("STOCKPULSE_SCHEDULER_TESTS_PER_RUN", defaults.tests_per_run as u64, 1000)? as usize,
            records_per_run: count("STOCKPULSE_SCHEDULER_RECORDS_PER_RUN", defaults.records_per_run as u64, 100_000)?.max(1) as usize,
            lease: defaults.lease,
        };
        let scheduler_interval = match count("STOCKPULSE_SCHEDULER_INTERVAL_SECONDS", 3600, 7 * 24 * 3600)? {
            0 => None,
            seconds => Some(Duration::from_secs(seconds)),
        };
        Ok(Config {
            event_bus: get("STOCKPULSE_EVENT_BUS").map(str::to_owned),
            scheduler,
            scheduler_interval,
            backend,
            secret_prefix: get("STOCKPULSE_SECRET_PREFIX").unwrap_or("stockpulse/").to_owned(),
            secret_recovery_days,
            vault,
            table: get("STOCKPULSE_TABLE").unwrap_or("stockpulse").to_owned(),
            create_table: matches!(get("STOCKPULSE_CREATE_TABLE"), Some("1" | "true")),
            kms_key_id,
            data_dir: PathBuf::from(get("STOCKPULSE_DATA_DIR").unwrap_or(default_dir)),
            master_key: get("STOCKPULSE_MASTER_KEY").map(|v| Zeroizing::new(v.to_owned())),
            upstreams,
            upstream_limits: UpstreamLimits {
                connect_timeout: millis("STOCKPULSE_UPSTREAM_CONNECT_TIMEOUT_MS", 5_000)?,
                total_timeout: millis("STOCKPULSE_UPSTREAM_TIMEOUT_MS", 30_000)?,
                ..UpstreamLimits::default()
            },
            proxy_limits: ProxyLimits {
                max_request_bytes: bytes("STOCKPULSE_PROXY_MAX_REQUEST_BYTES", ProxyLimits::default().max_request_bytes)?,
                max_response_bytes: bytes("STOCKPULSE_PROXY_MAX_RESPONSE_BYTES", ProxyLimits::default().max_response_bytes)?,
            },
            key_cache_ttl: match get("STOCKPULSE_KEY_CACHE_SECONDS") {
                None => Duration::from_secs(60),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s <= 60)
                    .map(Duration::from_secs)
                    .ok_or_else(|| ConfigError("STOCKPULSE_KEY_CACHE_SECONDS must be a number of seconds from 0 to 60".into()))?,
            },
            log_format,
        })
    }
}
