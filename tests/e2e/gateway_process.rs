//! The real `stockpulse-local` binary: prints its URL when ready, serves the API and the UI,
//! creates its secrets 0600, keeps its data across restarts, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use stockpulse_tests::{Client, artifacts_dir, canary, fresh_data_dir, workspace_root};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn binary() -> PathBuf {
    let path = std::env::var_os("STOCKPULSE_LOCAL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/stockpulse-local"));
    assert!(path.exists(), "{} is missing: build it first (cargo build -p stockpulse-local), as the test command does", path.display());
    path
}

pub struct Running {
    child: Child,
    pub url: String,
    lines: mpsc::Receiver<String>,
}

/// Starts the binary and waits for its "running at" line; every output line also goes to a log
/// file in the artifacts folder (the canary scan reads it).
pub fn start(data_dir: &std::path::Path, dev: bool, envs: &[(&str, String)]) -> Running {
    start_with_args(data_dir, dev, &[], envs)
}

/// `start` with extra command-line arguments.
pub fn start_with_args(data_dir: &std::path::Path, dev: bool, args: &[&str], envs: &[(&str, String)]) -> Running {
    let mut command = Command::new(binary());
    command.current_dir(workspace_root()).args(["--addr", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
    if dev {
        command.arg("--dev");
    }
    command.args(args);
    command.env_remove("STOCKPULSE_DEV").env("STOCKPULSE_LOG_FORMAT", "json").env("RUST_LOG", "trace");
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start stockpulse-local");
    let (sender, lines) = mpsc::channel();
    let log_dir = artifacts_dir().join("logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    for stream in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
        let sender = sender.clone();
        let mut log = std::fs::File::create(log_dir.join(format!("process-{}.log", uuid::Uuid::new_v4().simple()))).unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                let _ = sender.send(line);
            }
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let url = loop {
        let line =
            lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).expect("the gateway printed its URL in time");
        if line.contains("StockPulse Keys is running at") {
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            break value["url"].as_str().expect("url field").trim_end_matches('/').to_owned();
        }
    };
    Running { child, url, lines }
}

pub fn terminate(mut running: Running) -> Vec<String> {
    let status = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = running.child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "did not stop within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    std::thread::sleep(Duration::from_millis(100));
    running.lines.try_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_keeps_its_data_and_stops_cleanly() {
    let upstream = MockServer::start().await;
    let key = canary("sk-proj-");
    Mock::given(method("GET"))
        .and(path("/models"))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&upstream)
        .await;
    let data_dir = fresh_data_dir();
    let envs = [("STOCKPULSE_UPSTREAM_OPENAI", upstream.uri())];

    let running = start(&data_dir, true, &envs);
    let client = Client::new(&running.url);
    let login =
        client.post_json("/api/dev/login", None, &json!({"email": "ops@example.com", "role": "admin", "workspace": "ws-process"})).await;
    assert_eq!(login.status, 200, "{}", login.text);
    let token = login.json["token"].as_str().unwrap().to_owned();
    let created = client.post_json("/api/keys", Some(&token), &json!({"provider": "openai", "credentials": {"api_key": key}})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let tested = client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!(tested.json["status"], "valid", "{}", tested.text);

    let page = client.get("/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("StockPulse Keys"));
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'self'"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let deep_link = client.get("/keys/some/page", None).await;
    assert_eq!(deep_link.status, 200, "the UI's own paths fall back to index.html");
    assert_eq!(client.get("/api/unknown", None).await.code(), "route_not_found", "API errors are not rewritten to the UI");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for secret in ["master.key", "jwt.secret", "stockpulse.db", "stockpulse.db-wal", "stockpulse.db-shm"] {
            let mode = std::fs::metadata(data_dir.join(secret)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{secret} is {mode:o}");
        }
    }
    let lines = terminate(running);
    assert!(lines.iter().any(|l| l.contains("shut down cleanly")), "{lines:?}");

    // Restarted without dev mode on the same data: dev sign-in no longer exists, and the token it
    // gave out before ends with it, although the secret that signed it is still in the folder.
    let running = start(&data_dir, false, &envs);
    let client = Client::new(&running.url);
    let login =
        client.post_json("/api/dev/login", None, &json!({"email": "ops@example.com", "role": "admin", "workspace": "ws-process"})).await;
    assert_eq!(login.status, 404);
    let refused = client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!((refused.status, refused.code()), (401, "no_sign_in"), "{}", refused.text);
    let lines = terminate(running);
    assert!(lines.iter().any(|l| l.contains("no sign-in")), "the gateway warns that it has no sign-in: {lines:?}");

    // Back in dev mode: the key is still there and still opens.
    let running = start(&data_dir, true, &envs);
    let client = Client::new(&running.url);
    let login =
        client.post_json("/api/dev/login", None, &json!({"email": "ops@example.com", "role": "admin", "workspace": "ws-process"})).await;
    let token = login.json["token"].as_str().unwrap().to_owned();
    let tested = client.post_json(&format!("/api/keys/{id}/test"), Some(&token), &json!({})).await;
    assert_eq!(tested.json["status"], "valid", "{}", tested.text);
    terminate(running);
}
