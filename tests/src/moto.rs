//! The AWS emulator for tests: moto server on loopback.
//!
//! `scripts/test` installs moto into the project virtualenv (`.venv`), starts one server
//! (`tests/moto_server.py`: one request at a time, see there why) and exports its URL as
//! `STOCKPULSE_TEST_MOTO_URL`. Run without it (`cargo test` by hand), the harness starts a server
//! of its own, watched so that it stops when the test process does.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::{artifacts_dir, workspace_root};

/// A moto server this process started (private ones can be stopped and restarted).
pub struct MotoServer {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
}

fn python() -> PathBuf {
    let path = workspace_root().join(".venv/bin/python");
    assert!(
        workspace_root().join(".venv/bin/moto_server").exists(),
        "moto is not installed in {}: run scripts/test once (it installs moto into .venv)",
        workspace_root().join(".venv").display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start listening on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl MotoServer {
    /// Starts a private moto server on a free port.
    pub fn start() -> MotoServer {
        MotoServer::start_on(free_port())
    }

    /// Starts (or restarts) moto on `port`. A shell watchdog stops it if this process dies.
    pub fn start_on(port: u16) -> MotoServer {
        let log = artifacts_dir().join("logs").join(format!("moto-{port}-{}.log", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let script = format!(
            "'{python}' '{script}' 127.0.0.1 {port} >'{log}' 2>&1 & m=$!; trap 'kill $m 2>/dev/null' TERM INT EXIT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done",
            python = python().display(),
            script = workspace_root().join("tests/moto_server.py").display(),
            log = log.display(),
            parent = std::process::id(),
        );
        let child = Command::new("bash").arg("-c").arg(script).stdin(Stdio::null()).spawn().expect("start moto");
        wait_until_listening(port);
        MotoServer { url: format!("http://127.0.0.1:{port}"), port, child: Some(child) }
    }

    /// Stops the server (for outage tests); `start_on(self.port)` brings it back, empty.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The URL of the moto server shared by this test run.
pub fn shared_url() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("STOCKPULSE_TEST_MOTO_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                // Lives as long as the test process (the watchdog ends it after).
                let server = Box::leak(Box::new(MotoServer::start()));
                server.url.clone()
            }
        })
        .clone()
}

/// SDK configuration pointing every client at `url` with dummy credentials.
pub async fn sdk_config(url: &str) -> SdkConfig {
    sdk_config_with_retries(url, 3).await
}

/// `sdk_config` with the standard retry mode limited to `attempts` and millisecond backoffs, so
/// that outage tests fail over quickly.
pub async fn sdk_config_with_retries(url: &str, attempts: u32) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(5))
                .with_max_backoff(Duration::from_millis(50)),
        )
        .timeout_config(
            // moto handles one request at a time: under a full test run, hundreds of queued
            // requests can wait seconds for their turn.
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(20))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .endpoint_url(url)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}
