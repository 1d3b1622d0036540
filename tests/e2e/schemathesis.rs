//! schemathesis (PyPI; `scripts/test` installs it into `.venv`) against the real `stockpulse-local`
//! binary's own `/api/openapi.json`, signed in as a workspace admin, with every provider pointed
//! at a fake on loopback. It generates requests for every documented operation (schema examples,
//! boundary values, fuzzing, and stateful sequences that follow a created key's id into the other
//! key operations) and fails on any 5xx, on any answer the document does not describe (an
//! undocumented status, content type or header, or a body that violates the response schema),
//! on an operation that answers without the token, and on a key that is not there after its
//! creation or still there after its deletion.
//!
//! Bounded by the number of examples per operation (about a minute on a quiet machine). The seed
//! is printed; `st run ... --seed <seed>` replays a failure.

use std::path::Path;
use std::process::Command;

use serde_json::json;
use stockpulse_shared::domain::catalog::catalog;
use stockpulse_tests::{Client, artifacts_dir, fresh_data_dir, workspace_root};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::gateway_process::{start, terminate};
use crate::openai_key;

/// Examples per operation and phase; enough for the stateful phase to reach created keys.
const MAX_EXAMPLES: &str = "40";

/// Every check that compares an answer with the document, and the stateful ones: a request
/// without the token is refused (`ignored_auth`), a created key can be read back
/// (`ensure_resource_availability`) and a deleted one cannot (`use_after_free`).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,\
                      response_schema_conformance,ignored_auth,ensure_resource_availability,use_after_free";

fn schemathesis() -> std::path::PathBuf {
    let path = workspace_root().join(".venv/bin/st");
    assert!(path.exists(), "schemathesis is not installed in .venv: run scripts/test once (it installs tests/requirements.txt)");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_the_document_says_with_no_server_error() {
    let st = schemathesis();
    // One fake answers every provider: tests and proxied calls reach it and nothing else.
    let provider = MockServer::start().await;
    Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [], "ok": true}))).mount(&provider).await;
    let envs: Vec<(String, String)> =
        catalog().providers.iter().map(|p| (format!("STOCKPULSE_UPSTREAM_{}", p.id.to_ascii_uppercase()), provider.uri())).collect();
    let envs: Vec<(&str, String)> = envs.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
    let running = start(&fresh_data_dir(), true, &envs);
    let client = Client::new(&running.url);
    let login =
        client.post_json("/api/dev/login", None, &json!({"email": "fuzz@example.com", "role": "admin", "workspace": "ws-fuzz"})).await;
    assert_eq!(login.status, 200, "{}", login.text);
    let token = login.json["token"].as_str().unwrap().to_owned();
    // A stored canary key: every list, get and audit answer schemathesis receives carries its
    // record, and the canary scan reads schemathesis's reports (every request and answer).
    let created = client
        .post_json("/api/keys", Some(&token), &json!({"provider": "openai", "label": "fuzzed", "credentials": {"api_key": openai_key()}}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);

    let report_dir = artifacts_dir().join("schemathesis").join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&report_dir).unwrap();
    let schema_url = format!("{}/api/openapi.json", running.url);
    let authorization = format!("Authorization: Bearer {token}");
    let output = {
        let (st, report_dir) = (st.clone(), report_dir.clone());
        tokio::task::spawn_blocking(move || run(&st, &schema_url, &authorization, &report_dir)).await.unwrap()
    };
    let lines = terminate(running);
    assert!(
        !lines.iter().any(|l| l.contains("\"level\":\"ERROR\"") || l.contains("panicked")),
        "the gateway logged an error or a panic during the run (see the process log in the artifacts)"
    );
    let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    std::fs::write(report_dir.join("output.txt"), &text).unwrap();
    assert!(text.contains("Stateful"), "schemathesis did not run its phases:\n{text}");
    assert!(output.status.success(), "schemathesis found answers that break the document (report in {}):\n{text}", report_dir.display());
}

fn run(st: &Path, schema_url: &str, authorization: &str, report_dir: &Path) -> std::process::Output {
    Command::new(st)
        .current_dir(report_dir)
        .env("NO_COLOR", "1")
        .args(["--no-color", "run", schema_url, "--checks", CHECKS, "--max-examples", MAX_EXAMPLES, "--workers", "2"])
        .args(["--header", authorization, "--request-timeout", "30", "--continue-on-failure", "--generation-database", "none"])
        .args(["--report", "junit,ndjson", "--report-dir"])
        .arg(report_dir)
        .output()
        .expect("run schemathesis")
}
