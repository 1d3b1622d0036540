//! The AWS emulator for tests: moto server on loopback.
//!
//! `scripts/test` installs moto into the project virtualenv (`.venv`), starts one server
//! (`tests/moto_server.py`: one request at a time, see there why) and exports its URL as
//! `STOCKPULSE_TEST_MOTO_URL`. Run without it (`cargo test` by hand), the harness starts a server
//! of its own, watched so that it stops when the test process does.
//!
//! The canary scan reads moto's whole state: `scripts/test` dumps the shared server after the
//! tests (`tests/moto_dump.py`), and a private server dumps itself when it stops (`stop`, and so
//! on drop), into `<artifacts>/moto/`. A server that cannot be dumped leaves a `*.dump-failed.txt`
//! there, which fails the scan. (The fallback shared server of a `cargo test` run by hand lives as
//! long as the test process and is not dumped: the scan belongs to `scripts/test`.)

use std::net::TcpStream;
use std::path::{Path, PathBuf};
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

    /// Writes the server's whole state to `dir/<label>-<service>.json` (`tests/moto_dump.py`:
    /// DynamoDB items, Secrets Manager secrets and versions, KMS, SQS, ..., with only the
    /// Secrets Manager vault's credential values redacted, see there). Blocks until done.
    pub fn dump(&self, dir: &Path, label: &str) -> Result<(), String> {
        dump(&self.url, dir, label)
    }

    /// Stops the server (for outage tests); `start_on(self.port)` brings it back, empty. A
    /// running server is first dumped into the artifacts folder for the canary scan.
    pub fn stop(&mut self) {
        if self.child.is_some() && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            let dir = artifacts_dir().join("moto");
            let label = format!("private-{}-{}", self.port, uuid::Uuid::new_v4().simple());
            if let Err(e) = self.dump(&dir, &label) {
                // No panic here (this runs on drop, maybe while unwinding): the scan fails.
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(dir.join(format!("{label}.dump-failed.txt")), format!("moto at {}: {e}\n", self.url));
            }
        }
        self.halt();
    }

    /// Stops the server without dumping it.
    fn halt(&mut self) {
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

/// Runs `tests/moto_dump.py` against the moto server at `url`.
pub fn dump(url: &str, dir: &Path, label: &str) -> Result<(), String> {
    let out = Command::new(python())
        .arg(workspace_root().join("tests/moto_dump.py"))
        .arg(url)
        .arg(dir)
        .arg(label)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run tests/moto_dump.py: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("tests/moto_dump.py {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aws_sdk_dynamodb::primitives::Blob;
    use aws_sdk_dynamodb::types::{AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    use stockpulse_shared::adapters::aws::SecretsManagerVault;
    use stockpulse_shared::domain::secret::{Credentials, KeyMaterial};
    use stockpulse_shared::ports::{Binding, KeyVault};

    use super::*;

    /// The dump + scan pipeline on a private server: a canary planted in a DynamoDB item (as a
    /// string and inside a binary), in a secret that is not the vault's (scheduled for deletion),
    /// and in a secret of the vault's value shape but without its tags is reported, naming the
    /// dump file; the vault's own credentials (two versions) are not.
    #[test]
    fn the_moto_dump_shows_every_planted_canary_but_the_vault_credentials() {
        let root = tempfile::tempdir().unwrap();
        let planted = |what: &str| format!("sk-{what}-CANARY{}", uuid::Uuid::new_v4().simple());
        let (in_item, in_binary, in_secret, in_untagged) = (planted("item"), planted("binary"), planted("secret"), planted("untagged"));
        let (in_vault_1, in_vault_2) = (planted("vault1"), planted("vault2"));
        // Recorded for this scan only: the run's own list does not know them.
        std::fs::create_dir_all(root.path().join("canaries")).unwrap();
        let list = [&in_item, &in_binary, &in_secret, &in_untagged, &in_vault_1, &in_vault_2].map(|c| format!("{c}\n")).concat();
        std::fs::write(root.path().join("canaries/1.txt"), list).unwrap();

        let mut server = MotoServer::start();
        let prefix = format!("stockpulse-dump-check-{}/", uuid::Uuid::new_v4().simple());
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let config = sdk_config(&server.url).await;
            let dynamo = aws_sdk_dynamodb::Client::new(&config);
            dynamo
                .create_table()
                .table_name("dump-check")
                .attribute_definitions(
                    AttributeDefinition::builder().attribute_name("pk").attribute_type(ScalarAttributeType::S).build().unwrap(),
                )
                .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().unwrap())
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await
                .unwrap();
            let blob = [b"\x00\xff".as_slice(), in_binary.as_bytes(), b"\x80"].concat();
            dynamo
                .put_item()
                .table_name("dump-check")
                .item("pk", AttributeValue::S("item".into()))
                .item("note", AttributeValue::S(format!("leaked: {in_item}")))
                .item("blob", AttributeValue::B(Blob::new(blob)))
                .send()
                .await
                .unwrap();

            let secrets = aws_sdk_secretsmanager::Client::new(&config);
            let other = format!("{prefix}other");
            secrets.create_secret().name(&other).secret_string(format!("token={in_secret}")).send().await.unwrap();
            secrets.delete_secret().secret_id(&other).recovery_window_in_days(7).send().await.unwrap();
            let untagged =
                serde_json::json!({"workspace": "ws-1", "key_id": "key-2", "version": 1, "credentials": {"api_key": in_untagged}});
            secrets.create_secret().name(format!("{prefix}ws-1/key-2")).secret_string(untagged.to_string()).send().await.unwrap();

            let fingerprint_key = SecretsManagerVault::load_fingerprint_key(&secrets, &prefix, None).await.unwrap();
            let vault = SecretsManagerVault::new(secrets, prefix.clone(), None, 7, fingerprint_key);
            for (version, value) in [(1, &in_vault_1), (2, &in_vault_2)] {
                let credentials: Credentials = [("api_key".to_owned(), KeyMaterial::new(value.clone()))].into_iter().collect();
                vault.seal(Binding { workspace: "ws-1", key_id: "key-1", version }, &credentials).await.unwrap();
            }
        });
        server.dump(&root.path().join("moto"), "check").unwrap();
        server.halt();

        let (_, _, leaks) = crate::canary::scan(root.path());
        let found: BTreeSet<(String, String)> =
            leaks.into_iter().map(|l| (l.canary, l.file.file_name().unwrap().to_string_lossy().into_owned())).collect();
        let expected: BTreeSet<(String, String)> = [
            (in_item, "check-dynamodb.json"),
            (in_binary, "check-dynamodb.json"),
            (in_secret, "check-secretsmanager.json"),
            (in_untagged, "check-secretsmanager.json"),
        ]
        .into_iter()
        .map(|(c, f)| (c, f.to_owned()))
        .collect();
        assert_eq!(found, expected);
        // Not vacuous: the vault's secret and both its versions are in the dump, redacted.
        let secrets = std::fs::read_to_string(root.path().join("moto/check-secretsmanager.json")).unwrap();
        assert!(secrets.contains(&format!("{prefix}ws-1/key-1")), "{secrets}");
        assert_eq!(secrets.matches("REDACTED(vault credential").count(), 2, "{secrets}");
    }
}
