//! What the load did: requests, errors and time per kind of request, counted from every task at
//! once, and the first few unexpected answers as examples. An example keeps the status and the
//! envelope's error code only, never a body: an answer could quote a request, and the soak's
//! requests carry keys.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One kind of request the soak sends; each has one expected status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `POST /proxy/openai/chat/completions`, no caching asked for: always reaches the upstream.
    ProxyChat,
    /// The same with `X-StockPulse-Cache-TTL` over a small set of prompts: mostly cache hits.
    ProxyChatTtl,
    /// `GET /proxy/openai/models`: the catalog's own cache rule applies.
    ProxyModels,
    /// `GET /proxy/openai/models` with `X-StockPulse-Cache-TTL`.
    ProxyModelsTtl,
    /// `GET /proxy/openai/models` with `Cache-Control: no-cache`: skips the cached answer and refreshes it.
    ProxyModelsRefresh,
    KeyCreate,
    KeyList,
    KeyGet,
    KeyPatch,
    KeyTest,
    KeyRotate,
    KeyRollback,
    KeyRevoke,
    KeyDelete,
    AuditList,
    AuditVerify,
    Usage,
    QuotaPut,
    QuotaGet,
    Notifications,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::ProxyChat,
        Kind::ProxyChatTtl,
        Kind::ProxyModels,
        Kind::ProxyModelsTtl,
        Kind::ProxyModelsRefresh,
        Kind::KeyCreate,
        Kind::KeyList,
        Kind::KeyGet,
        Kind::KeyPatch,
        Kind::KeyTest,
        Kind::KeyRotate,
        Kind::KeyRollback,
        Kind::KeyRevoke,
        Kind::KeyDelete,
        Kind::AuditList,
        Kind::AuditVerify,
        Kind::Usage,
        Kind::QuotaPut,
        Kind::QuotaGet,
        Kind::Notifications,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::ProxyChat => "proxy_chat",
            Kind::ProxyChatTtl => "proxy_chat_ttl",
            Kind::ProxyModels => "proxy_models",
            Kind::ProxyModelsTtl => "proxy_models_ttl",
            Kind::ProxyModelsRefresh => "proxy_models_refresh",
            Kind::KeyCreate => "key_create",
            Kind::KeyList => "key_list",
            Kind::KeyGet => "key_get",
            Kind::KeyPatch => "key_patch",
            Kind::KeyTest => "key_test",
            Kind::KeyRotate => "key_rotate",
            Kind::KeyRollback => "key_rollback",
            Kind::KeyRevoke => "key_revoke",
            Kind::KeyDelete => "key_delete",
            Kind::AuditList => "audit_list",
            Kind::AuditVerify => "audit_verify",
            Kind::Usage => "usage",
            Kind::QuotaPut => "quota_put",
            Kind::QuotaGet => "quota_get",
            Kind::Notifications => "notifications",
        }
    }

    pub fn is_proxy(self) -> bool {
        matches!(self, Kind::ProxyChat | Kind::ProxyChatTtl | Kind::ProxyModels | Kind::ProxyModelsTtl | Kind::ProxyModelsRefresh)
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Why an answer counts as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// No answer: connect, timeout, or the body broke off.
    Transport,
    /// Any 5xx.
    ServerError,
    /// A status other than the one this step expects (a 4xx where a 2xx was due, a 200 for a 201...).
    UnexpectedStatus,
    /// The expected status, but the answer says something is wrong (a test that is not `valid`,
    /// an audit chain that does not verify, a proxied answer without its cache header).
    UnexpectedBody,
}

/// Judges a status against the one the step expects: `None` when it is that one.
pub fn judge_status(status: u16, expected: u16) -> Option<FailureClass> {
    if status == expected {
        None
    } else if status >= 500 {
        Some(FailureClass::ServerError)
    } else {
        Some(FailureClass::UnexpectedStatus)
    }
}

/// The `error.code` of the API's envelope, if the body is one and the code looks like a code
/// (lower-case snake case, short): anything else is not kept, so that no free text is.
pub fn envelope_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = value.get("error")?.get("code")?.as_str()?;
    let looks_like_a_code =
        !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    looks_like_a_code.then(|| code.to_owned())
}

#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub kind: Kind,
    pub at_seconds: f64,
    pub class: FailureClass,
    pub status: Option<u16>,
    pub code: Option<String>,
    /// What was wrong, in the soak's own words (never text from the answer).
    pub what: String,
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    cache_hits: AtomicU64,
    transport: AtomicU64,
    server_error: AtomicU64,
    unexpected_status: AtomicU64,
    unexpected_body: AtomicU64,
    micros_total: AtomicU64,
    micros_max: AtomicU64,
}

/// Counts of one kind at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct KindCounts {
    pub done: u64,
    pub cache_hits: u64,
    pub transport: u64,
    pub server_error: u64,
    pub unexpected_status: u64,
    pub unexpected_body: u64,
    pub micros_total: u64,
    pub micros_max: u64,
}

impl KindCounts {
    pub fn errors(&self) -> u64 {
        self.transport + self.server_error + self.unexpected_status + self.unexpected_body
    }
}

/// Every kind's counts at one moment, in `Kind::ALL` order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub kinds: Vec<(Kind, KindCounts)>,
}

impl Snapshot {
    fn sum(&self, filter: impl Fn(Kind) -> bool, value: impl Fn(&KindCounts) -> u64) -> u64 {
        self.kinds.iter().filter(|(k, _)| filter(*k)).map(|(_, c)| value(c)).sum()
    }

    pub fn proxy_done(&self) -> u64 {
        self.sum(Kind::is_proxy, |c| c.done)
    }

    pub fn api_done(&self) -> u64 {
        self.sum(|k| !k.is_proxy(), |c| c.done)
    }

    pub fn errors(&self) -> u64 {
        self.sum(|_| true, KindCounts::errors)
    }

    pub fn proxy_micros(&self) -> u64 {
        self.sum(Kind::is_proxy, |c| c.micros_total)
    }

    #[cfg(test)]
    pub fn get(&self, kind: Kind) -> KindCounts {
        self.kinds.iter().find(|(k, _)| *k == kind).map(|(_, c)| *c).unwrap_or_default()
    }
}

/// How many examples are kept: enough to see a pattern, few enough to read.
const MAX_EXAMPLES: usize = 20;

pub struct Tally {
    started: Instant,
    counters: Vec<Counters>,
    examples: Mutex<Vec<Example>>,
}

impl Tally {
    pub fn new(started: Instant) -> Tally {
        Tally { started, counters: Kind::ALL.iter().map(|_| Counters::default()).collect(), examples: Mutex::new(Vec::new()) }
    }

    fn of(&self, kind: Kind) -> &Counters {
        &self.counters[kind.index()]
    }

    /// One request sent, whatever came of it.
    pub fn done(&self, kind: Kind, took: Duration) {
        let counters = self.of(kind);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        counters.done.fetch_add(1, Ordering::Relaxed);
        counters.micros_total.fetch_add(micros, Ordering::Relaxed);
        counters.micros_max.fetch_max(micros, Ordering::Relaxed);
    }

    pub fn cache_hit(&self, kind: Kind) {
        self.of(kind).cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failure(&self, kind: Kind, class: FailureClass, status: Option<u16>, code: Option<String>, what: impl Into<String>) {
        let counters = self.of(kind);
        let counter = match class {
            FailureClass::Transport => &counters.transport,
            FailureClass::ServerError => &counters.server_error,
            FailureClass::UnexpectedStatus => &counters.unexpected_status,
            FailureClass::UnexpectedBody => &counters.unexpected_body,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means another task panicked while pushing; the list is still usable.
        let mut examples = self.examples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if examples.len() < MAX_EXAMPLES {
            let at_seconds = self.started.elapsed().as_secs_f64();
            examples.push(Example { kind, at_seconds, class, status, code, what: what.into() });
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let kinds = Kind::ALL
            .iter()
            .map(|kind| {
                let c = self.of(*kind);
                let counts = KindCounts {
                    done: c.done.load(Ordering::Relaxed),
                    cache_hits: c.cache_hits.load(Ordering::Relaxed),
                    transport: c.transport.load(Ordering::Relaxed),
                    server_error: c.server_error.load(Ordering::Relaxed),
                    unexpected_status: c.unexpected_status.load(Ordering::Relaxed),
                    unexpected_body: c.unexpected_body.load(Ordering::Relaxed),
                    micros_total: c.micros_total.load(Ordering::Relaxed),
                    micros_max: c.micros_max.load(Ordering::Relaxed),
                };
                (*kind, counts)
            })
            .collect();
        Snapshot { kinds }
    }

    pub fn examples(&self) -> Vec<Example> {
        self.examples.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_status_is_no_failure_and_others_are_classed() {
        assert_eq!(judge_status(201, 201), None);
        assert_eq!(judge_status(200, 201), Some(FailureClass::UnexpectedStatus));
        assert_eq!(judge_status(409, 201), Some(FailureClass::UnexpectedStatus));
        assert_eq!(judge_status(503, 200), Some(FailureClass::ServerError));
        assert_eq!(judge_status(502, 200), Some(FailureClass::ServerError));
    }

    #[test]
    fn only_code_shaped_envelope_codes_are_kept() {
        assert_eq!(envelope_code(br#"{"error":{"code":"version_mismatch","message":"m"}}"#).as_deref(), Some("version_mismatch"));
        assert_eq!(envelope_code(br#"{"error":{"code":"sk-proj-something secret"}}"#), None);
        assert_eq!(envelope_code(b"not json"), None);
        assert_eq!(envelope_code(br#"{"ok":true}"#), None);
    }

    #[test]
    fn failures_are_counted_per_class_and_examples_are_capped() {
        let tally = Tally::new(Instant::now());
        for _ in 0..(MAX_EXAMPLES + 5) {
            tally.done(Kind::KeyPatch, Duration::from_millis(2));
            tally.failure(Kind::KeyPatch, FailureClass::UnexpectedStatus, Some(412), Some("version_mismatch".into()), "status");
        }
        tally.done(Kind::ProxyChat, Duration::from_millis(1));
        tally.failure(Kind::ProxyChat, FailureClass::Transport, None, None, "timeout");
        let snapshot = tally.snapshot();
        assert_eq!(snapshot.get(Kind::KeyPatch).unexpected_status, (MAX_EXAMPLES + 5) as u64);
        assert_eq!(snapshot.get(Kind::KeyPatch).micros_max, 2000);
        assert_eq!(snapshot.errors(), (MAX_EXAMPLES + 6) as u64);
        assert_eq!(snapshot.proxy_done(), 1);
        assert_eq!(snapshot.api_done(), (MAX_EXAMPLES + 5) as u64);
        assert_eq!(tally.examples().len(), MAX_EXAMPLES);
    }
}
