//! Test harness for the cross-component tests: a real local gateway on loopback (in process, so
//! its log lines are captured), an HTTP client that records every answer, canary keys, and
//! helpers to make tokens of every kind. Everything a test produces lands under the artifacts
//! folder, which the canary scan reads after the whole run.

pub mod aws;
pub mod canary;
pub mod conformance;
pub mod fault_proxy;
pub mod lambda_runtime;
pub mod moto;
pub mod port_faults;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use stockpulse_local::Gateway;
use stockpulse_local::auth::{LOCAL_AUDIENCE, LOCAL_ISSUER, TokenVerifier};
use stockpulse_shared::adapters::embedded::{LocalVault, SqliteStore};
use stockpulse_shared::app::{App, Stores};
use stockpulse_shared::config::Config;
use stockpulse_shared::ports::{Clock, KeyVault, ManualClock, SystemClock};

pub use canary::canary;

/// Where tests leave what the canary scan reads: `STOCKPULSE_TEST_ARTIFACTS`, or
/// `target/test-artifacts` of the workspace.
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("STOCKPULSE_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-artifacts")))
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Sends every log line of this test process, at debug level, to a JSON-lines file in the
/// artifacts folder.
pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = artifacts_dir().join("logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let file = std::fs::File::create(dir.join(format!("tests-{}.jsonl", std::process::id()))).expect("log file");
        let _ = tracing_subscriber::fmt()
            .json()
            .with_writer(Mutex::new(file))
            .with_env_filter(stockpulse_shared::telemetry::filter("debug"))
            .try_init();
    });
}

/// A running gateway on 127.0.0.1 with its own data folder (kept for the canary scan).
pub struct TestServer {
    pub url: String,
    /// The same app the gateway serves, for checks that go around the API.
    pub app: Arc<Gateway>,
    pub data_dir: PathBuf,
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default, Clone)]
pub struct ServerOptions {
    /// Extra configuration variables (`STOCKPULSE_UPSTREAM_OPENAI`, `STOCKPULSE_MASTER_KEY`, ...).
    pub vars: BTreeMap<String, String>,
    /// Reuse this data folder (restart scenarios); else a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Dev mode off: `/api/dev/login` does not exist.
    pub no_dev: bool,
    /// Verify RS256 tokens from this JWKS URL, issuer and audience instead of local HS256 ones.
    pub jwks: Option<(String, String, String)>,
    /// With `jwks`: the scope every token must carry (the deployment's `stockpulse-keys/api`).
    pub jwt_scope: Option<String>,
    /// Run on the AWS backend (DynamoDB + KMS vault) against this moto server.
    pub aws: Option<AwsBackend>,
    /// The app's clock (tests move it instead of sleeping); the system clock if not given.
    pub clock: Option<Arc<ManualClock>>,
    /// Wrap every port of the app (stores, vault, provider client) so that this plan can fail,
    /// delay or throttle any one call (see `port_faults`).
    pub port_faults: Option<Arc<port_faults::FaultPlan>>,
}

/// Where the AWS backend of a test server lives.
#[derive(Clone, Debug)]
pub struct AwsBackend {
    pub moto_url: String,
    pub table: String,
    pub kms_key_id: String,
    /// Talk to moto through this URL instead (a `FaultProxy`).
    pub via: Option<String>,
    /// Seal with Secrets Manager (under this name prefix) instead of the KMS envelope vault.
    pub secrets_prefix: Option<String>,
}

impl AwsBackend {
    /// A fresh table and KMS key on the shared moto server.
    pub async fn fresh() -> AwsBackend {
        let moto_url = moto::shared_url();
        let kms_key_id = aws::kms_key(&moto_url).await;
        AwsBackend {
            table: format!("stockpulse-e2e-{}", uuid::Uuid::new_v4().simple()),
            kms_key_id,
            moto_url,
            via: None,
            secrets_prefix: None,
        }
    }

    /// Where the server's AWS clients connect.
    pub fn endpoint(&self) -> &str {
        self.via.as_deref().unwrap_or(&self.moto_url)
    }
}

impl ServerOptions {
    pub fn upstream(mut self, provider: &str, url: &str) -> Self {
        self.vars.insert(format!("STOCKPULSE_UPSTREAM_{}", provider.to_ascii_uppercase()), url.to_owned());
        self
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }
}

pub fn fresh_data_dir() -> PathBuf {
    let dir = artifacts_dir().join("data").join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(ServerOptions::default()).await
    }

    /// Builds the app the way `stockpulse-local` does and serves it on a free loopback port.
    pub async fn start_with(options: ServerOptions) -> TestServer {
        init_logging();
        let data_dir = options.data_dir.clone().unwrap_or_else(fresh_data_dir);
        let mut vars = options.vars.clone();
        vars.insert("STOCKPULSE_DATA_DIR".into(), data_dir.display().to_string());
        if let Some(aws) = &options.aws {
            vars.insert("STOCKPULSE_BACKEND".into(), "aws".into());
            vars.insert("STOCKPULSE_TABLE".into(), aws.table.clone());
            vars.insert("STOCKPULSE_KMS_KEY_ID".into(), aws.kms_key_id.clone());
            vars.insert("STOCKPULSE_CREATE_TABLE".into(), "1".into());
            if let Some(prefix) = &aws.secrets_prefix {
                vars.insert("STOCKPULSE_VAULT".into(), "secretsmanager".into());
                vars.insert("STOCKPULSE_SECRET_PREFIX".into(), prefix.clone());
                vars.insert("STOCKPULSE_SECRET_RECOVERY_DAYS".into(), "7".into());
            }
        }
        let config = Config::from_vars(&vars).expect("test configuration");
        let clock: Arc<dyn Clock> = match &options.clock {
            Some(clock) => clock.clone(),
            None => Arc::new(SystemClock),
        };
        let app = match (&options.aws, &options.port_faults) {
            (None, None) => App::embedded(&config, clock).expect("app"),
            (Some(aws), None) => App::aws(&config, &moto::sdk_config(aws.endpoint()).await, clock).await.expect("app on the AWS backend"),
            (backend, Some(plan)) => {
                let (stores, vault): (Stores, Arc<dyn KeyVault>) = match backend {
                    None => {
                        let store = SqliteStore::open(&config.data_dir.join("stockpulse.db")).expect("SQLite store");
                        let vault =
                            LocalVault::load(config.master_key.as_deref().map(String::as_str), &config.data_dir).expect("local vault");
                        (Stores::of(Arc::new(store)), Arc::new(vault))
                    }
                    Some(aws) => App::aws_parts(&config, &moto::sdk_config(aws.endpoint()).await).await.expect("AWS backend"),
                };
                let upstream = App::upstream_client(&config).expect("provider client");
                App::from_parts_with_upstream(
                    &config,
                    port_faults::wrap_stores(stores, plan),
                    port_faults::wrap_vault(vault, plan),
                    clock,
                    port_faults::wrap_upstream(upstream, plan),
                )
                .expect("app with port faults")
            }
        };
        let tokens = match &options.jwks {
            Some((url, issuer, audience)) => {
                TokenVerifier::jwks(url, issuer, audience).await.expect("JWKS verifier").with_required_scope(options.jwt_scope.clone())
            }
            None => TokenVerifier::local(&data_dir).expect("token verifier"),
        };
        let gateway = Arc::new(Gateway {
            app,
            tokens,
            dev: !options.no_dev,
            static_dir: workspace_root().join("frontend/placeholder"),
            // Tests run the job through `POST /api/jobs/run` unless they ask for the interval.
            scheduler_every: options.vars.get("STOCKPULSE_SCHEDULER_INTERVAL_SECONDS").and(config.scheduler_interval),
            connect_extra: Vec::new(),
        });
        let shared = gateway.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            stockpulse_local::serve(listener, gateway, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        TestServer { url: url.clone(), app: shared, data_dir, client: Client::new(&url), stop: Some(stop), task: Some(task) }
    }

    /// Stops the server and waits until it has closed its database.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// A dev token through `POST /api/dev/login`.
    pub async fn token(&self, role: &str, workspace: &str) -> String {
        let email = format!("{role}@{workspace}.example.com");
        let answer = self.client.post_json("/api/dev/login", None, &json!({"email": email, "role": role, "workspace": workspace})).await;
        assert_eq!(answer.status, 200, "dev login: {}", answer.text);
        answer.json["token"].as_str().expect("token").to_owned()
    }

    /// The HS256 secret of this server's data folder, to forge tokens of every kind.
    pub fn jwt_secret(&self) -> Vec<u8> {
        use base64::Engine;
        let text = std::fs::read_to_string(self.data_dir.join("jwt.secret")).expect("jwt.secret");
        base64::engine::general_purpose::STANDARD.decode(text.trim()).expect("secret is base64")
    }

    /// Signs arbitrary claims with this server's secret (for expired, wrong-issuer... tokens).
    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(&self.jwt_secret())).expect("sign")
    }

    /// Standard claims for `role` in `workspace`, valid for an hour.
    pub fn claims(role: &str, workspace: &str) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({
            "sub": format!("forged-{role}"), "email": format!("{role}@{workspace}.example.com"),
            "cognito:groups": [role], "custom:workspace": workspace,
            "iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "iat": now, "exp": now + 3600,
        })
    }

    /// The consistency check of a workspace, straight on the server's stores.
    pub async fn app_consistency(&self, workspace: &str) -> stockpulse_shared::domain::consistency::ConsistencyReport {
        self.app.app.check_consistency(workspace).await.expect("the consistency check runs")
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("stockpulse.db")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One HTTP answer, decoded.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of an envelope answer.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// An HTTP client that writes every answer (status, headers, body) to the artifacts folder.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

fn http_log() -> &'static Mutex<std::fs::File> {
    static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = artifacts_dir().join("http");
        std::fs::create_dir_all(&dir).expect("http dir");
        Mutex::new(std::fs::File::create(dir.join(format!("answers-{}.log", std::process::id()))).expect("http log"))
    })
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn request(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut builder = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        builder
    }

    /// Sends and records the answer.
    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Answer {
        let response = builder.send().await.expect("request reached the server");
        record_answer(response).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(self.request(reqwest::Method::GET, path, token)).await
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.send(self.request(reqwest::Method::POST, path, token).json(body)).await
    }

    pub async fn put_json(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        self.send(self.request(reqwest::Method::PUT, path, token).json(body)).await
    }

    pub async fn patch_json(&self, path: &str, token: Option<&str>, if_match: Option<&str>, body: &Value) -> Answer {
        let mut builder = self.request(reqwest::Method::PATCH, path, token).json(body);
        if let Some(etag) = if_match {
            builder = builder.header("if-match", etag);
        }
        self.send(builder).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>, if_match: Option<&str>) -> Answer {
        let mut builder = self.request(reqwest::Method::DELETE, path, token);
        if let Some(etag) = if_match {
            builder = builder.header("if-match", etag);
        }
        self.send(builder).await
    }
}

pub async fn record_answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let url_path = response.url().path().to_owned();
    let text = response.text().await.expect("body");
    {
        let mut log = http_log().lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(log, "{status} {url_path}");
        for (name, value) in &headers {
            let _ = writeln!(log, "{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        }
        let _ = writeln!(log, "\n{text}\n");
    }
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, headers, text, json }
}

/// Reads `path` of the workspace root as text.
pub fn read_workspace_file(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(workspace_root().join(path)).expect("workspace file")
}

/// Wildcard matching as IAM and CloudFront do it: `*` any run of characters, `?` one.
pub fn wildcard_matches(pattern: &str, text: &str, ignore_case: bool) -> bool {
    fn go(p: &[u8], s: &[u8], ignore_case: bool) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s, ignore_case) || (!s.is_empty() && go(p, &s[1..], ignore_case)),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..], ignore_case),
            (Some(a), Some(b)) if a == b || (ignore_case && a.eq_ignore_ascii_case(b)) => go(&p[1..], &s[1..], ignore_case),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes(), ignore_case)
}
