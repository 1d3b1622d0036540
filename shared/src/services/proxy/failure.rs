//! How a proxied request fails: the failure the HTTP layer turns into the envelope, and how a
//! provider's answer is judged (the catalog's rules, then the status).

use http::{HeaderName, HeaderValue, StatusCode};

use crate::domain::catalog::{Provider, TestOutcome};
use crate::domain::metering::{LimitKind, UsageCounts};
use crate::domain::redaction::Redactor;
use crate::ports::StoreError;
use crate::services::connection_test::interpret;

const MAX_PROVIDER_MESSAGE_CHARS: usize = 500;

/// A refused or failed proxied request, for the error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Boxed: failures travel through every `?` of the proxy path and most carry few details.
    pub details: Box<FailureDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureDetails {
    pub field: Option<String>,
    pub provider: Option<String>,
    pub upstream_status: Option<u16>,
    /// The provider's own message, with every key value redacted.
    pub provider_message: Option<String>,
    pub limit: Option<LimitKind>,
    pub retry_after: Option<u64>,
    /// Headers the answer still carries (`X-StockPulse-Quota-Remaining`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ProxyFailure {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ProxyFailure {
        ProxyFailure { status, code, message: message.into(), details: Box::default() }
    }

    pub(super) fn provider(mut self, provider: &str) -> ProxyFailure {
        self.details.provider = Some(provider.to_owned());
        self
    }
}

impl From<StoreError> for ProxyFailure {
    fn from(e: StoreError) -> ProxyFailure {
        tracing::error!(error = %e, "store failed on the proxy path");
        ProxyFailure::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the key store is unavailable; try again shortly")
    }
}

pub(super) enum Judgement {
    Pass,
    Fail { status: StatusCode, code: &'static str, class: UsageCounts, key_refused: bool, message: Option<String> },
}

/// Reads a provider's answer: 2xx passes unless the catalog says the body is an error ("HTTP
/// 200 with an error body"); anything else becomes an envelope with the provider's message.
pub(super) fn judge(provider: &Provider, status: u16, body: &[u8], redactor: &Redactor) -> Judgement {
    // The common case, decided without reading the body: a 2xx that no catalog rule looks at.
    if (200..300).contains(&status) && !provider.test.rules.iter().any(|rule| rule.applies_to_status(status)) {
        return Judgement::Pass;
    }
    let (outcome, message) = interpret(provider, status, body);
    let message = message.map(|m| redactor.text(&m).chars().take(MAX_PROVIDER_MESSAGE_CHARS).collect::<String>());
    let fail = |status: StatusCode, code: &'static str, class: UsageCounts, key_refused: bool| Judgement::Fail {
        status,
        code,
        class,
        key_refused,
        message: message.clone(),
    };
    let server = UsageCounts { server_errors: 1, ..UsageCounts::default() };
    let client = UsageCounts { client_errors: 1, ..UsageCounts::default() };
    let auth = UsageCounts { auth_errors: 1, ..UsageCounts::default() };
    match (status, outcome) {
        // For a 2xx answer, only a catalog rule gives another outcome than `valid`.
        (200..=299, TestOutcome::Valid) => Judgement::Pass,
        (_, TestOutcome::Invalid) => fail(StatusCode::BAD_GATEWAY, "upstream_key_invalid", auth, true),
        (_, TestOutcome::Forbidden) => fail(StatusCode::BAD_GATEWAY, "upstream_forbidden", auth, false),
        (_, TestOutcome::RateLimited) => fail(StatusCode::TOO_MANY_REQUESTS, "upstream_rate_limited", client, false),
        (300..=399, _) => fail(StatusCode::BAD_GATEWAY, "upstream_redirect", server, false),
        (400..=499, _) => {
            let passed = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            fail(passed, "upstream_rejected", client, false)
        }
        (200..=299, _) => fail(StatusCode::BAD_GATEWAY, "upstream_error_body", server, false),
        _ => fail(StatusCode::BAD_GATEWAY, "upstream_error", server, false),
    }
}

pub(super) fn describe_failure(provider: &Provider, code: &str, status: u16) -> String {
    let name = &provider.name;
    match code {
        "upstream_key_invalid" => {
            format!("{name} refused the workspace's key (HTTP {status}); the key is marked invalid — replace or re-test it")
        }
        "upstream_forbidden" => format!("{name} knows the key but it lacks permission or plan for this request (HTTP {status})"),
        "upstream_rate_limited" => format!("{name} is rate limiting this key (HTTP {status}); try again later"),
        "upstream_redirect" => format!("{name} answered with a redirect (HTTP {status}); redirects are never followed"),
        "upstream_rejected" => format!("{name} rejected the request (HTTP {status})"),
        "upstream_error_body" => format!("{name} answered HTTP {status} with an error in the body"),
        _ => format!("{name} answered with an error (HTTP {status})"),
    }
}
