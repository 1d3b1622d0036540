//! An escape corpus against the proxy: every attempt to leave the provider's base URL, to reach
//! another host or to smuggle a header is refused (our 400 envelope, or hyper's own 4xx for a
//! malformed request) or goes nowhere but the fake provider, below its prefix. A second fake
//! server stands for the attacker and must receive nothing; redirects are never followed and
//! the key never shows up in an answer.
//!
//! Requests are written byte for byte on a raw TCP connection: HTTP clients normalize `..` and
//! refuse most of these request lines before they leave.

use std::io::Write;

use serde_json::json;
use stockpulse_tests::canary::spellings;
use stockpulse_tests::{ServerOptions, TestServer, artifacts_dir, canary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const WORKSPACE: &str = "ws-proxy-escapes";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Our envelope with this status and code; nothing goes upstream.
    Refused(u16, &'static str),
    /// Refused before or by our code: any 4xx, or the connection closed without an answer;
    /// nothing goes upstream.
    Malformed,
    /// Forwarded to the fake provider (200), below its prefix, on its own host.
    Provider,
    /// Either refused (4xx, nothing upstream) or forwarded to the fake provider below its prefix.
    Contained,
    /// The provider's redirect comes back as the `upstream_redirect` envelope and is not followed.
    Redirect,
    /// Not a proxied request at all: nothing goes upstream, and no server error.
    NotProxied,
}

struct Attempt {
    label: String,
    bytes: Vec<u8>,
    expect: Expect,
}

struct RawAnswer {
    /// 0 when the connection closed without an answer.
    status: u16,
    text: String,
}

impl RawAnswer {
    fn code(&self) -> Option<&str> {
        let start = self.text.find("\"code\":\"")? + "\"code\":\"".len();
        let len = self.text[start..].find('"')?;
        Some(&self.text[start..start + len])
    }
}

/// Writes `bytes` on a fresh connection and reads the answer until the server closes it.
async fn send_raw(addr: &str, bytes: &[u8]) -> RawAnswer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the gateway");
    // The server may answer and close before it read everything (oversized headers): a failed
    // write is not the test's concern, the answer is.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the gateway neither answered nor closed the connection");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1.1 ").or_else(|| line.strip_prefix("HTTP/1.0 ")))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    RawAnswer { status, text }
}

/// Everything the raw answers contained, for the canary scan after the run.
fn record(label: &str, answer: &RawAnswer) {
    let dir = artifacts_dir().join("http");
    std::fs::create_dir_all(&dir).expect("http dir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("raw-escapes-{}.log", std::process::id())))
        .expect("raw answer log");
    let _ = writeln!(file, "== {label}\n{}\n", answer.text);
}

/// Builds attempts with the gateway's address and the caller's token.
struct Corpus {
    gateway: String,
    token: String,
    attempts: Vec<Attempt>,
}

impl Corpus {
    /// A request with a request line, our Host, the bearer token and `extra` header lines
    /// (each ending in CRLF), closed after the answer.
    fn head(&self, request_line: &str, host: &str, extra: &str) -> Vec<u8> {
        format!("{request_line}\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n{extra}\r\n", self.token).into_bytes()
    }

    fn get(&mut self, label: impl Into<String>, target: &str, expect: Expect) {
        let bytes = self.head(&format!("GET {target} HTTP/1.1"), &self.gateway, "");
        self.attempts.push(Attempt { label: label.into(), bytes, expect });
    }

    fn with_headers(&mut self, label: impl Into<String>, target: &str, extra: &str, expect: Expect) {
        let bytes = self.head(&format!("GET {target} HTTP/1.1"), &self.gateway, extra);
        self.attempts.push(Attempt { label: label.into(), bytes, expect });
    }

    fn raw(&mut self, label: impl Into<String>, bytes: Vec<u8>, expect: Expect) {
        self.attempts.push(Attempt { label: label.into(), bytes, expect });
    }
}

#[tokio::test]
async fn no_request_escapes_the_providers_base_url() {
    let attacker = MockServer::start().await;
    Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_string("stolen")).mount(&attacker).await;
    let evil = attacker.address().to_string();

    let provider = MockServer::start().await;
    let provider_host = provider.address().to_string();
    let key = canary("sk-proj-");
    Mock::given(method("GET"))
        .and(path("/v1/redirect-away"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", format!("http://{evil}/steal").as_str()))
        .with_priority(1)
        .mount(&provider)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/redirect-away-307"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", format!("http://{evil}/steal").as_str()))
        .with_priority(1)
        .mount(&provider)
        .await;
    // A redirect to the provider itself that carries the key in its query, and echoes it.
    let same_host = format!("http://{provider_host}/v1/landing?api_key={key}");
    Mock::given(method("GET"))
        .and(path("/v1/redirect-same"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", same_host.as_str())
                .insert_header("x-moved-to", same_host.as_str())
                .set_body_json(json!({"error": {"message": format!("moved to {same_host}")}})),
        )
        .with_priority(1)
        .mount(&provider)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": []})))
        .with_priority(10)
        .mount(&provider)
        .await;

    let server = TestServer::start_with(ServerOptions::default().upstream("openai", &format!("{}/v1", provider.uri()))).await;
    let token = server.token("admin", WORKSPACE).await;
    let created = server
        .client
        .post_json("/api/keys", Some(&token), &json!({"provider": "openai", "label": "escape target", "credentials": {"api_key": key}}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let gateway = server.url.strip_prefix("http://").unwrap().to_owned();

    use Expect::*;
    let bad_path = Refused(400, "invalid_proxy_path");
    let mut c = Corpus { gateway: gateway.clone(), token: token.clone(), attempts: Vec::new() };

    // For comparison: ordinary paths reach the fake provider.
    c.get("fine: /models", "/proxy/openai/models", Provider);
    c.get("fine: /files/file-abc", "/proxy/openai/files/file-abc", Provider);
    c.get("fine: %40 stays encoded", &format!("/proxy/openai/users/%40{evil}"), Provider);

    // Dot segments, plain and encoded.
    c.get("..", "/proxy/openai/..", bad_path);
    c.get("../../x", "/proxy/openai/../../x", bad_path);
    c.get("models/../../../x", "/proxy/openai/models/../../../x", bad_path);
    c.get("./models", "/proxy/openai/./models", bad_path);
    c.get("%2e%2e", "/proxy/openai/%2e%2e/x", bad_path);
    c.get("%2E%2e", "/proxy/openai/%2E%2e/x", bad_path);
    c.get(".%2e", "/proxy/openai/.%2e/x", bad_path);
    c.get("%2e.", "/proxy/openai/%2e./x", bad_path);
    c.get("double encoding %252e%252e", "/proxy/openai/%252e%252e/x", bad_path);
    c.get("%2e%2e;", "/proxy/openai/%2e%2e;/x", bad_path);
    // Servers that strip `;` path parameters before resolving dot segments (Tomcat, Jetty,
    // Spring) read `..;` as `..`: a segment that is `.` or `..` before its first `;` is refused.
    c.get("..; (path parameter)", "/proxy/openai/..;/x", bad_path);
    // Not dot segments: they may pass, but only below the prefix and literally.
    c.get("... is an ordinary segment", "/proxy/openai/.../x", Contained);
    c.get("fullwidth dots stay literal", "/proxy/openai/%EF%BC%8E%EF%BC%8E/x", Contained);
    c.get("../ in the provider segment", "/proxy/../api/keys", Refused(404, "unknown_provider"));
    c.get("%2e%2e as the provider", "/proxy/%2e%2e/openai/models", Refused(404, "unknown_provider"));
    c.get("encoded provider name", "/proxy/open%61i/models", Refused(404, "unknown_provider"));

    // Encoded and raw separators.
    c.get("%2f", "/proxy/openai/models%2f..%2f..%2fx", bad_path);
    c.get("%2F", "/proxy/openai/models%2F..", bad_path);
    c.get("%2F then host", &format!("/proxy/openai/%2F{evil}/x"), bad_path);
    c.get("%5c", "/proxy/openai/models%5c..%5cx", bad_path);
    c.get("%3F starts a query", "/proxy/openai/models%3Fapi_key=x", bad_path);
    c.get("%23 starts a fragment", "/proxy/openai/models%23x", bad_path);
    c.get("raw backslash", "/proxy/openai/models\\..\\x", bad_path);
    c.get("raw backslash then host", &format!("/proxy/openai/\\\\{evil}/x"), bad_path);

    // Another host in the path.
    c.get("//host", &format!("/proxy/openai//{evil}/x"), bad_path);
    c.get("/@host", &format!("/proxy/openai/@{evil}"), bad_path);
    c.get("/x@host/", &format!("/proxy/openai/x@{evil}/"), bad_path);
    c.get("/models;@host", &format!("/proxy/openai/models;@{evil}"), bad_path);
    c.get("%40host%2f", &format!("/proxy/openai/%40{evil}%2fx"), bad_path);
    c.get("http://host in the path", &format!("/proxy/openai/http://{evil}/"), bad_path);
    c.get("https:/host in the path", &format!("/proxy/openai/https:/{evil}"), bad_path);
    c.get("absolute-form, root", &format!("http://{evil}/"), NotProxied);
    c.get("absolute-form, proxy path", &format!("http://{evil}/proxy/openai/files/abs"), Provider);
    c.raw("CONNECT to the attacker", c.head(&format!("CONNECT {evil} HTTP/1.1"), &evil, ""), NotProxied);

    // Controls, CRLF and odd bytes.
    c.get("%00", "/proxy/openai/models%00", bad_path);
    c.get("%0d%0a in the path", &format!("/proxy/openai/models%0d%0aHost:%20{evil}"), bad_path);
    // The request line ends early; what follows would be a Host header naming the attacker.
    c.raw("raw CRLF in the path", c.head(&format!("GET /proxy/openai/models\r\nHost: {evil} HTTP/1.1"), &gateway, ""), Malformed);
    c.get("bad escape %zz", "/proxy/openai/models%zz", bad_path);
    c.get("overlong path", &format!("/proxy/openai/{}", "a".repeat(2100)), bad_path);
    c.raw("non-ASCII in the path", c.head("GET /proxy/openai/caf\u{e9} HTTP/1.1", &gateway, ""), bad_path);
    c.get("%0d%0aHost: in the query", &format!("/proxy/openai/files?x=%0d%0aHost:%20{evil}"), bad_path);
    c.get("a URL in the query is only a value", &format!("/proxy/openai/files/q?url=http://{evil}/steal"), Provider);

    // Header tricks.
    c.with_headers("bare CR in a header value", "/proxy/openai/files/h1", &format!("X-Custom: a\rHost: {evil}\r\n"), Malformed);
    c.with_headers("folded header line", "/proxy/openai/files/h2", &format!("X-Custom: a\r\n Host: {evil}\r\n"), Malformed);
    c.with_headers("LF-only header line", "/proxy/openai/files/h3", &format!("X-Custom: a\nHost: {evil}\r\n"), Contained);
    c.with_headers("encoded CRLF in a header value", "/proxy/openai/files/h4", &format!("X-Custom: a%0d%0aHost:%20{evil}\r\n"), Provider);
    c.with_headers(
        "environment header with %0d%0a",
        "/proxy/openai/files/h5",
        &format!("X-StockPulse-Environment: production%0d%0aHost:%20{evil}\r\n"),
        Refused(400, "invalid_environment"),
    );
    c.with_headers(
        "environment header with a tab",
        "/proxy/openai/files/h6",
        &format!("X-StockPulse-Environment: production\tHost: {evil}\r\n"),
        Refused(400, "invalid_environment"),
    );
    c.with_headers(
        "environment header folded",
        "/proxy/openai/files/h7",
        &format!("X-StockPulse-Environment: production\r\n Host: {evil}\r\n"),
        Malformed,
    );
    c.with_headers(
        "64 KiB header",
        "/proxy/openai/files/h8",
        &format!("X-Big: {}\r\n", "a".repeat(64 * 1024)),
        Refused(431, "headers_too_large"),
    );
    let many: String = (0..300).map(|i| format!("X-Many-{i}: {i}\r\n")).collect();
    c.with_headers("300 headers", "/proxy/openai/files/h9", &many, Malformed);
    c.raw("Host names the attacker", c.head("GET /proxy/openai/files/h10 HTTP/1.1", &evil, ""), Provider);
    c.with_headers(
        "X-Forwarded-Host and Forwarded name the attacker",
        "/proxy/openai/files/h11",
        &format!("X-Forwarded-Host: {evil}\r\nForwarded: host={evil};proto=http\r\nX-Forwarded-Proto: http\r\n"),
        Provider,
    );

    // The provider redirects: never followed, and the key never comes back.
    c.get("302 to the attacker", "/proxy/openai/redirect-away", Redirect);
    c.get("307 to the attacker", "/proxy/openai/redirect-away-307", Redirect);
    c.get("302 to the same host with the key", "/proxy/openai/redirect-same", Redirect);

    let attempts = std::mem::take(&mut c.attempts);
    assert!(attempts.len() >= 30, "the corpus has only {} attempts", attempts.len());
    let key_spellings = spellings(&key);
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for attempt in &attempts {
        let before = provider.received_requests().await.unwrap_or_default().len();
        let answer = send_raw(&gateway, &attempt.bytes).await;
        record(&attempt.label, &answer);
        let received = provider.received_requests().await.unwrap_or_default();
        let new = &received[before.min(received.len())..];
        table.push(format!("{:<52} {:>4}  {}", attempt.label, answer.status, answer.code().unwrap_or("-")));
        let mut fail =
            |what: String| failures.push(format!("{}: {what} (status {}, code {:?})", attempt.label, answer.status, answer.code()));

        if key_spellings.iter().any(|s| answer.text.contains(s.as_str())) {
            fail("the answer contains the key".into());
        }
        if !attacker.received_requests().await.unwrap_or_default().is_empty() {
            fail("the attacker received a request".into());
        }
        let below_prefix = |r: &wiremock::Request| {
            r.url.path().starts_with("/v1/")
                && r.headers.get("host").and_then(|h| h.to_str().ok()) == Some(provider_host.as_str())
                && !r.headers.contains_key("x-forwarded-host")
                && !r.headers.contains_key("forwarded")
        };
        match attempt.expect {
            Refused(status, code) => {
                if (answer.status, answer.code()) != (status, Some(code)) {
                    fail(format!("expected {status} {code}"));
                }
                if !new.is_empty() {
                    fail("a refused request reached the provider".into());
                }
            }
            Malformed => {
                if !(answer.status == 0 || (400..500).contains(&answer.status)) {
                    fail("expected a 4xx or a closed connection".into());
                }
                if !new.is_empty() {
                    fail("a malformed request reached the provider".into());
                }
            }
            Provider => {
                if answer.status != 200 || new.len() != 1 || !below_prefix(&new[0]) {
                    fail(format!("expected one request to the provider below /v1/, got {}", new.len()));
                }
            }
            Contained => {
                let refused = (400..500).contains(&answer.status) && new.is_empty();
                let forwarded = answer.status == 200 && new.len() == 1 && below_prefix(&new[0]);
                if !(refused || forwarded) {
                    fail(format!("neither refused nor kept below the prefix ({} upstream requests)", new.len()));
                }
            }
            Redirect => {
                if (answer.status, answer.code()) != (502, Some("upstream_redirect")) {
                    fail("expected 502 upstream_redirect".into());
                }
                if new.len() != 1 || !below_prefix(&new[0]) {
                    fail(format!("expected exactly the redirecting request upstream, got {}", new.len()));
                }
                if answer.text.to_ascii_lowercase().contains("\r\nlocation:") {
                    fail("the redirect's Location came back to the client".into());
                }
            }
            NotProxied => {
                if answer.status == 0 || answer.status >= 500 || answer.code() == Some("upstream_redirect") {
                    fail("expected an answer that is not a server error".into());
                }
                if !new.is_empty() {
                    fail("a request that is not a proxy route reached the provider".into());
                }
            }
        }
    }
    println!("{:<52} {:>4}  code", "attempt", "status");
    println!("{}", table.join("\n"));

    // Nothing ever reached the attacker; everything the provider saw stayed below its prefix.
    let stolen = attacker.received_requests().await.unwrap_or_default();
    if !stolen.is_empty() {
        failures.push(format!(
            "the attacker received {} request(s): {:?}",
            stolen.len(),
            stolen.iter().map(|r| r.url.path()).collect::<Vec<_>>()
        ));
    }
    for request in provider.received_requests().await.unwrap_or_default() {
        let p = request.url.path().to_owned();
        let segments: Vec<&str> = p.split('/').map(|s| s.split(';').next().unwrap_or("")).collect();
        if !p.starts_with("/v1/")
            || p.contains('@')
            || p.to_ascii_lowercase().contains("%2e")
            || segments.iter().any(|s| *s == "." || *s == "..")
        {
            failures.push(format!("the provider received a request that may leave its prefix: {p}"));
        }
        if p.contains("/landing") {
            failures.push(format!("a redirect was followed: {p}"));
        }
        let authorization: Vec<&[u8]> = request.headers.get_all("authorization").iter().map(|v| v.as_bytes()).collect();
        if authorization != [format!("Bearer {key}").as_bytes()] {
            failures.push(format!("{p}: the request is not authorized by the injected key alone"));
        }
    }
    assert!(failures.is_empty(), "{} problem(s) over {} attempts:\n{}", failures.len(), attempts.len(), failures.join("\n"));
}
