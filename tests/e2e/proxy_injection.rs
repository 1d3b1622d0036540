//! Every catalog provider, in both environments, receives its key exactly the way its
//! `[[provider.auth]]` entries say (header or query parameter, through the template, once), its
//! static headers with the catalog's values, the path below its base URL and the client's
//! harmless headers and query, and nothing else of the client's credentials: not our JWT, not a
//! cookie, not a key the client sent itself under any name a provider reads keys from.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use stockpulse_shared::domain::catalog::{InjectionKind, Provider, catalog};
use stockpulse_shared::domain::environment::Environment;
use stockpulse_tests::{ServerOptions, TestServer, canary};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const WORKSPACE: &str = "ws-proxy-injection";

/// One provider environment with its own fake provider.
struct Case {
    provider: &'static Provider,
    environment: Environment,
    upstream: MockServer,
    /// The path of the catalog's base URL (`/v1`, `/stable`, `` for none); the override keeps it.
    base_path: String,
    /// Every credential field of the provider, each a unique canary.
    stored: BTreeMap<String, String>,
}

/// The path component of a catalog base URL, without a trailing slash.
fn base_path(base_url: &str) -> String {
    let url = reqwest::Url::parse(base_url).expect("catalog base URLs parse");
    url.path().trim_end_matches('/').to_owned()
}

/// A canary that starts with the field's first known prefix, so the key looks like the real thing.
fn field_canary(provider: &Provider, field: &str) -> String {
    let prefix = provider.field(field).and_then(|f| f.format.prefixes.first()).map(String::as_str).unwrap_or("");
    canary(prefix)
}

/// What the client sends along, to be stopped at the proxy: every one a canary.
struct ClientCredentials {
    cookie: String,
    /// Header name → value: every header any catalog provider reads a key from (except
    /// `Authorization`, which carries our JWT), plus the usual generic key headers.
    headers: BTreeMap<String, String>,
}

impl ClientCredentials {
    fn new() -> ClientCredentials {
        let mut header_names: BTreeSet<String> = catalog()
            .providers
            .iter()
            .flat_map(|p| p.auth.iter())
            .filter(|i| i.kind == InjectionKind::Header)
            .map(|i| i.name.to_ascii_lowercase())
            .collect();
        header_names.extend(["x-api-key", "x-goog-api-key", "api-key", "apikey", "x-auth-token", "proxy-authorization"].map(str::to_owned));
        header_names.remove("authorization");
        let headers = header_names.into_iter().map(|name| (name, canary("client-"))).collect();
        ClientCredentials { cookie: canary("client-session-"), headers }
    }

    fn values(&self) -> Vec<&str> {
        let mut out = vec![self.cookie.as_str()];
        out.extend(self.headers.values().map(String::as_str));
        out
    }
}

/// The client's own values for every query parameter any catalog provider reads a key from
/// (several providers accept a key in the query besides the way the catalog injects it), and the
/// usual spellings, as named and in upper case.
fn client_query(_provider: &Provider) -> Vec<(String, String)> {
    let mut names: BTreeSet<String> =
        catalog().providers.iter().flat_map(|p| p.auth.iter()).filter(|i| i.kind == InjectionKind::Query).map(|i| i.name.clone()).collect();
    names.extend(["apikey", "api_key", "api_token", "access_token"].map(str::to_owned));
    let mut query = Vec::new();
    for name in names {
        query.push((name.clone(), canary("client-")));
        query.push((name.to_ascii_uppercase(), canary("client-")));
    }
    query
}

fn query_string(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// Checks one received request against the catalog; returns the problems found.
fn check_request(
    case: &Case,
    request: &wiremock::Request,
    jwt: &str,
    client: &ClientCredentials,
    query_sent: &[(String, String)],
) -> Vec<String> {
    let provider = case.provider;
    let mut problems = Vec::new();
    let mut fail = |what: String| problems.push(what);

    let expected_path = format!("{}/some/path", case.base_path);
    if request.url.path() != expected_path {
        fail(format!("path {} instead of {expected_path}", request.url.path()));
    }
    let query: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
    if query.iter().filter(|(k, v)| k == "x" && v == "1").count() != 1 {
        fail(format!("x=1 did not arrive exactly once (query names: {:?})", query.iter().map(|(k, _)| k).collect::<Vec<_>>()));
    }

    // Every documented injection, exactly once, exactly as its template says.
    let mut expected_names: BTreeSet<String> = BTreeSet::from(["x".to_owned()]);
    for injection in &provider.auth {
        let value = injection.template.replace("{value}", &case.stored[&injection.field]);
        match injection.kind {
            InjectionKind::Header => {
                let sent: Vec<&[u8]> = request.headers.get_all(injection.name.as_str()).iter().map(|v| v.as_bytes()).collect();
                if sent != [value.as_bytes()] {
                    fail(format!("header {} arrived {} time(s), not once with the template's value", injection.name, sent.len()));
                }
            }
            InjectionKind::Query => {
                expected_names.insert(injection.name.clone());
                let sent: Vec<&String> = query.iter().filter(|(k, _)| k.eq_ignore_ascii_case(&injection.name)).map(|(_, v)| v).collect();
                if sent != [&value] {
                    fail(format!("query parameter {} arrived {} time(s), not once with the template's value", injection.name, sent.len()));
                }
            }
        }
    }
    let names: BTreeSet<String> = query.iter().map(|(k, _)| k.clone()).collect();
    if names != expected_names {
        fail(format!("query parameters {names:?}, expected exactly {expected_names:?}"));
    }

    // Static headers: present once, with the catalog's value (the client's own value is dropped).
    for header in &provider.static_headers {
        let sent: Vec<&[u8]> = request.headers.get_all(header.name.as_str()).iter().map(|v| v.as_bytes()).collect();
        if sent != [header.value.as_bytes()] {
            fail(format!("static header {} arrived as {:?}, expected once {:?}", header.name, sent.len(), header.value));
        }
    }

    // Each stored credential appears exactly as often as injections use it, nowhere else.
    let url = request.url.as_str();
    let all_headers: Vec<(String, String)> =
        request.headers.iter().map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    for (field, value) in &case.stored {
        let uses = provider.auth.iter().filter(|i| &i.field == field).count();
        let seen = all_headers.iter().filter(|(_, v)| v.contains(value.as_str())).count()
            + query.iter().filter(|(k, v)| k.contains(value.as_str()) || v.contains(value.as_str())).count();
        if seen != uses {
            fail(format!("field {field} appears {seen} time(s), the catalog injects it {uses} time(s)"));
        }
    }

    // None of the client's credentials, under any name.
    if url.contains(jwt) || all_headers.iter().any(|(_, v)| v.contains(jwt)) {
        fail("our JWT reached the provider".to_owned());
    }
    for value in client.values().into_iter().chain(query_sent.iter().map(|(_, v)| v.as_str())) {
        if url.contains(value) {
            fail(format!("a client credential reached the provider in the URL: {}", redacted_url(request)));
        }
        if let Some((name, _)) = all_headers.iter().find(|(_, v)| v.contains(value)) {
            fail(format!("a client credential reached the provider in header {name}"));
        }
    }
    for dropped in ["cookie", "proxy-authorization", "x-forwarded-host", "forwarded"] {
        if request.headers.contains_key(dropped) {
            fail(format!("header {dropped} reached the provider"));
        }
    }
    if let Some((name, _)) = all_headers.iter().find(|(n, _)| n.starts_with("x-stockpulse-")) {
        fail(format!("our own header {name} reached the provider"));
    }
    let authorizations = request.headers.get_all("authorization").iter().count();
    let injected_authorizations =
        provider.auth.iter().filter(|i| i.kind == InjectionKind::Header && i.name.eq_ignore_ascii_case("authorization")).count();
    if authorizations != injected_authorizations {
        fail(format!("{authorizations} Authorization header(s) arrived, the catalog injects {injected_authorizations}"));
    }

    // The harmless header made it.
    let custom: Vec<&[u8]> = request.headers.get_all("x-custom").iter().map(|v| v.as_bytes()).collect();
    if custom != [b"1".as_slice()] {
        fail(format!("X-Custom arrived {} time(s), expected once with 1", custom.len()));
    }
    problems
}

/// The received URL for a failure message, with every query value replaced.
fn redacted_url(request: &wiremock::Request) -> String {
    let names: Vec<String> = request.url.query_pairs().map(|(k, _)| format!("{k}=…")).collect();
    format!("{}?{}", request.url.path(), names.join("&"))
}

#[tokio::test]
async fn every_provider_gets_its_key_the_documented_way_and_nothing_of_the_clients() {
    let mut cases = Vec::new();
    let mut options = ServerOptions::default();
    for provider in &catalog().providers {
        for environment in Environment::ALL {
            let upstream = MockServer::start().await;
            Mock::given(any())
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "provider": provider.id})))
                .mount(&upstream)
                .await;
            let base_path = base_path(&provider.environment(environment).base_url);
            options = options.var(
                &format!("STOCKPULSE_UPSTREAM_{}_{}", provider.id.to_ascii_uppercase(), environment.as_str().to_ascii_uppercase()),
                &format!("{}{base_path}", upstream.uri()),
            );
            let stored = provider.fields.iter().map(|f| (f.id.clone(), field_canary(provider, &f.id))).collect();
            cases.push(Case { provider, environment, upstream, base_path, stored });
        }
    }
    let server = TestServer::start_with(options).await;
    let admin = server.token("admin", WORKSPACE).await;
    let client = ClientCredentials::new();

    for case in &cases {
        let body = json!({
            "provider": case.provider.id,
            "environment": case.environment.as_str(),
            "label": "injection check",
            "credentials": case.stored,
        });
        let created = server.client.post_json("/api/keys", Some(&admin), &body).await;
        assert_eq!(created.status, 201, "{} {}: {}", case.provider.id, case.environment.as_str(), created.text);
    }

    let mut failures = Vec::new();
    for case in &cases {
        let label = format!("{} ({})", case.provider.id, case.environment.as_str());
        let client_query = client_query(case.provider);
        let mut query = vec![("x".to_owned(), "1".to_owned())];
        query.extend(client_query.iter().cloned());
        let mut request = server
            .client
            .request(reqwest::Method::GET, &format!("/proxy/{}/some/path?{}", case.provider.id, query_string(&query)), Some(&admin))
            .header("cookie", format!("session={}", client.cookie))
            .header("x-custom", "1")
            .header("x-forwarded-host", "127.0.0.1:9")
            .header("forwarded", "host=127.0.0.1:9");
        for (name, value) in &client.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        // The client's own values of the provider's static headers never win over the catalog's.
        for header in &case.provider.static_headers {
            request = request.header(header.name.as_str(), "client-chosen");
        }
        if case.environment == Environment::Development {
            request = request.header("x-stockpulse-environment", "development");
        }
        let answer = server.client.send(request).await;
        if answer.status != 200 {
            failures.push(format!("{label}: the proxied answer is {} {}", answer.status, answer.text));
        }
        for header in ["x-stockpulse-request-id", "x-stockpulse-cache"] {
            if answer.header(header).is_none() {
                failures.push(format!("{label}: the answer has no {header}"));
            }
        }
        if answer.status == 200 && answer.json != json!({"ok": true, "provider": case.provider.id}) {
            failures.push(format!("{label}: the provider's body did not come back unchanged: {}", answer.text));
        }
        for value in case.stored.values() {
            if answer.text.contains(value.as_str())
                || answer.headers.values().any(|v| v.as_bytes().windows(value.len()).any(|w| w == value.as_bytes()))
            {
                failures.push(format!("{label}: a stored credential is in the answer"));
            }
        }

        let received = case.upstream.received_requests().await.unwrap_or_default();
        if received.len() != 1 {
            failures.push(format!("{label}: the fake provider received {} requests, expected 1", received.len()));
        }
        for request in &received {
            failures.extend(check_request(case, request, &admin, &client, &client_query).into_iter().map(|p| format!("{label}: {p}")));
        }
    }
    let providers: BTreeSet<&str> = cases.iter().map(|c| c.provider.id.as_str()).collect();
    assert_eq!(providers.len(), catalog().providers.len());
    assert!(failures.is_empty(), "{} problem(s) over {} provider environments:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The proxied key wins over the client's, whatever the client sends in the same place.
#[tokio::test]
async fn a_query_key_provider_never_sees_the_clients_key_even_in_odd_spellings() {
    let upstream = MockServer::start().await;
    Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_json(json!({"Global Quote": {}}))).mount(&upstream).await;
    let server = TestServer::start_with(ServerOptions::default().upstream("alphavantage", &upstream.uri())).await;
    let admin = server.token("admin", "ws-proxy-injection-av").await;
    let ours = canary("AV");
    let created =
        server.client.post_json("/api/keys", Some(&admin), &json!({"provider": "alphavantage", "credentials": {"api_key": ours}})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let theirs = [canary("client-"), canary("client-"), canary("client-"), canary("client-")];
    let query = format!(
        "function=GLOBAL_QUOTE&apikey={}&ApiKey={}&apikey={}&symbol=IBM&APIKEY={}&apikey=",
        theirs[0], theirs[1], theirs[2], theirs[3]
    );
    let answer = server.client.get(&format!("/proxy/alphavantage/query?{query}"), Some(&admin)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let received = upstream.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let pairs: Vec<(String, String)> = received[0].url.query_pairs().into_owned().collect();
    let expected: Vec<(String, String)> =
        [("function", "GLOBAL_QUOTE"), ("symbol", "IBM"), ("apikey", ours.as_str())].map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
    assert_eq!(pairs.len(), 3, "query names: {:?}", pairs.iter().map(|(k, _)| k).collect::<Vec<_>>());
    for pair in &expected {
        assert!(pairs.contains(pair), "{} is missing", pair.0);
    }
    for value in &theirs {
        assert!(!received[0].url.as_str().contains(value.as_str()), "a client key reached the provider");
    }
}
