//! Test connection: sends the catalog's test request with the key injected and reads the answer
//! the way the catalog says (some providers answer HTTP 200 with an error in the body).

use std::time::Instant;

use chrono::Utc;
use http::{HeaderName, HeaderValue};

use crate::domain::catalog::{AnswerRule, InjectionKind, Provider, TestOutcome};
use crate::domain::environment::Environment;
use crate::domain::keys::TestResult;
use crate::domain::redaction::redact;
use crate::domain::secret::Credentials;
use crate::ports::{UpstreamClient, UpstreamError, UpstreamRequest};

use super::upstreams::Upstreams;

const MAX_MESSAGE_CHARS: usize = 300;

/// Builds the request that `credentials` would be sent with; `None` if a header value is not a
/// legal header (validation refuses such values first, so this is a second line of defence).
pub fn build_test_request(
    provider: &Provider,
    environment: Environment,
    upstreams: &Upstreams,
    credentials: &Credentials,
) -> Option<UpstreamRequest> {
    let base = upstreams.base_url(provider, environment);
    let mut url = url::Url::parse(&format!("{base}{}", provider.test.path)).ok()?;
    let mut headers = vec![(http::header::ACCEPT, HeaderValue::from_static("application/json"))];
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in &provider.test.query {
            query.append_pair(name, value);
        }
        for injection in provider.auth.iter().filter(|i| i.kind == InjectionKind::Query) {
            if let Some(value) = credentials.get(&injection.field) {
                query.append_pair(&injection.name, &injection.fill(value.expose()));
            }
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    for header in &provider.static_headers {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        headers.retain(|(n, _)| n != name);
        headers.push((name, HeaderValue::from_str(&header.value).ok()?));
    }
    for injection in provider.auth.iter().filter(|i| i.kind == InjectionKind::Header) {
        if let Some(value) = credentials.get(&injection.field) {
            let name = HeaderName::from_bytes(injection.name.as_bytes()).ok()?;
            let mut value = HeaderValue::from_str(&injection.fill(value.expose())).ok()?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
    }
    let method = http::Method::from_bytes(provider.test.method.as_bytes()).ok()?;
    let body = (method == http::Method::POST).then(Vec::new);
    Some(UpstreamRequest { method, url, headers, body })
}

/// Reads a provider's answer: the first matching catalog rule decides, else the status code.
pub fn interpret(provider: &Provider, status: u16, body: &[u8]) -> (TestOutcome, Option<String>) {
    let body_text = String::from_utf8_lossy(body);
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let outcome =
        provider.test.rules.iter().find(|rule| rule_matches(rule, status, &body_text, json.as_ref())).map(|rule| rule.outcome).unwrap_or(
            match status {
                200..=299 => TestOutcome::Valid,
                401 | 403 => TestOutcome::Invalid,
                429 => TestOutcome::RateLimited,
                500..=599 => TestOutcome::UpstreamError,
                _ => TestOutcome::Unexpected,
            },
        );
    let message = json.as_ref().and_then(|j| provider_message(provider, j)).or_else(|| {
        let trimmed = body_text.trim();
        (outcome != TestOutcome::Valid && !trimmed.is_empty() && !trimmed.starts_with('<')).then(|| trimmed.to_owned())
    });
    (outcome, message)
}

fn rule_matches(rule: &AnswerRule, status: u16, body: &str, json: Option<&serde_json::Value>) -> bool {
    if !rule.applies_to_status(status) {
        return false;
    }
    if let Some(pointer) = &rule.json_pointer {
        let Some(found) = json.and_then(|j| j.pointer(pointer)) else { return false };
        if let Some(expected) = &rule.equals {
            let matches = match found {
                serde_json::Value::String(s) => s == expected,
                other => &other.to_string() == expected,
            };
            if !matches {
                return false;
            }
        }
    }
    if let Some(needle) = &rule.body_contains
        && !body.contains(needle.as_str())
    {
        return false;
    }
    true
}

fn provider_message(provider: &Provider, json: &serde_json::Value) -> Option<String> {
    provider.test.message_pointers.iter().find_map(|pointer| match json.pointer(pointer)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Null => None,
        other if !other.is_object() && !other.is_array() => Some(other.to_string()),
        _ => None,
    })
}

fn summary(outcome: TestOutcome, provider: &Provider, upstream_status: Option<u16>) -> String {
    let name = &provider.name;
    let status = upstream_status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    match outcome {
        TestOutcome::Valid => format!("{name} accepted the key{status}"),
        TestOutcome::Invalid => format!("{name} refused the key{status}: check that it is complete, active and for this environment"),
        TestOutcome::Forbidden => format!("{name} knows the key but it lacks permission or plan for the test request{status}"),
        TestOutcome::RateLimited => format!("{name} is rate limiting this key or its quota is spent{status}; try again later"),
        TestOutcome::Unreachable => format!("{name} could not be reached"),
        TestOutcome::UpstreamError => format!("{name} answered with a server error{status}; try again later"),
        TestOutcome::Unexpected => format!("{name} gave an answer that does not say whether the key works{status}"),
    }
}

/// Runs the test and returns its result with every key value redacted from the message.
pub async fn run_test(
    client: &dyn UpstreamClient,
    upstreams: &Upstreams,
    provider: &Provider,
    environment: Environment,
    credentials: &Credentials,
) -> TestResult {
    let started = Instant::now();
    let Some(request) = build_test_request(provider, environment, upstreams, credentials) else {
        return TestResult {
            ok: false,
            status: TestOutcome::Unexpected,
            message: "the key cannot be placed on a request (it contains characters no HTTP header allows)".into(),
            latency_ms: 0,
            upstream_status: None,
            tested_at: Utc::now(),
        };
    };
    let answer = client.send(request).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let (outcome, upstream_status, detail) = match answer {
        Ok(response) => {
            let (outcome, message) = interpret(provider, response.status, &response.body);
            (outcome, Some(response.status), message)
        }
        Err(UpstreamError::Timeout) => (TestOutcome::Unreachable, None, Some("no answer before the timeout".to_owned())),
        Err(e) => (TestOutcome::Unreachable, None, Some(e.to_string())),
    };
    let mut message = summary(outcome, provider, upstream_status);
    if let Some(detail) = detail.filter(|_| outcome != TestOutcome::Valid) {
        let detail: String = detail.chars().take(MAX_MESSAGE_CHARS).collect();
        message = format!("{message}. {}: {detail}", if upstream_status.is_some() { provider.name.as_str() } else { "Detail" });
    }
    TestResult {
        ok: outcome == TestOutcome::Valid,
        status: outcome,
        message: redact(&message, credentials),
        latency_ms,
        upstream_status,
        tested_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::catalog;

    fn creds(pairs: &[(&str, &str)]) -> Credentials {
        Credentials::from_pairs(pairs)
    }

    fn answer(status: u16, body: &str) -> (u16, &[u8]) {
        (status, body.as_bytes())
    }

    fn read(provider: &Provider, (status, body): (u16, &[u8])) -> (TestOutcome, Option<String>) {
        interpret(provider, status, body)
    }

    #[test]
    fn injection_follows_the_catalog() {
        let c = catalog();
        let up = Upstreams::default();
        let req = build_test_request(c.provider("alphavantage").unwrap(), Environment::Production, &up, &creds(&[("api_key", "AVKEY123")]))
            .unwrap();
        assert!(req.url.as_str().starts_with("https://www.alphavantage.co/query?"));
        assert!(req.url.query_pairs().any(|(k, v)| k == "apikey" && v == "AVKEY123"));

        let req = build_test_request(
            c.provider("alpaca").unwrap(),
            Environment::Development,
            &up,
            &creds(&[("key_id", "PKID"), ("secret_key", "SECRET")]),
        )
        .unwrap();
        assert!(req.url.as_str().starts_with("https://paper-api.alpaca.markets/v2/account"));
        let header = |n: &str| req.headers.iter().find(|(k, _)| k.as_str() == n).map(|(_, v)| v.to_str().unwrap().to_owned());
        assert_eq!(header("apca-api-key-id").as_deref(), Some("PKID"));
        assert_eq!(header("apca-api-secret-key").as_deref(), Some("SECRET"));

        let req =
            build_test_request(c.provider("anthropic").unwrap(), Environment::Production, &up, &creds(&[("api_key", "sk-ant-x")])).unwrap();
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"x-api-key") && names.contains(&"anthropic-version"), "{names:?}");

        let req = build_test_request(
            c.provider("openai").unwrap(),
            Environment::Production,
            &up,
            &creds(&[("api_key", "sk-x"), ("organization_id", "org-1")]),
        )
        .unwrap();
        assert!(req.headers.iter().any(|(k, v)| k.as_str() == "openai-organization" && v == "org-1"));
        assert!(req.headers.iter().any(|(k, v)| k == http::header::AUTHORIZATION && v == "Bearer sk-x"));
    }

    #[test]
    fn alpha_vantage_200_with_error_body_is_invalid() {
        let p = catalog().provider("alphavantage").unwrap();
        let (outcome, message) = read(p, answer(200, r#"{"Error Message":"the parameter apikey is invalid or missing."}"#));
        assert_eq!(outcome, TestOutcome::Invalid);
        assert!(message.unwrap().contains("apikey is invalid"));
        let (outcome, _) = read(p, answer(200, r#"{"Information":"Thank you... our standard API rate limit is 25 requests per day."}"#));
        assert_eq!(outcome, TestOutcome::RateLimited);
        assert_eq!(read(p, answer(200, r#"{"Global Quote":{"01. symbol":"IBM"}}"#)).0, TestOutcome::Valid);
    }

    #[test]
    fn status_codes_decide_without_a_rule() {
        let p = catalog().provider("openai").unwrap();
        assert_eq!(read(p, answer(200, r#"{"object":"list","data":[]}"#)).0, TestOutcome::Valid);
        assert_eq!(read(p, answer(401, r#"{"error":{"message":"Incorrect API key"}}"#)).0, TestOutcome::Invalid);
        assert_eq!(read(p, answer(429, "{}")).0, TestOutcome::RateLimited);
        assert_eq!(read(p, answer(503, "")).0, TestOutcome::UpstreamError);
        let gemini = catalog().provider("gemini").unwrap();
        assert_eq!(
            read(gemini, answer(400, r#"{"error":{"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#)).0,
            TestOutcome::Invalid
        );
    }
}
