//! The things a benchmark sends the same request through: the upstream itself, a bare
//! pass-through proxy (the floor of any proxy hop), our local gateway, LiteLLM's proxy and
//! Portkey's gateway. Each is started the way its users run it,
//! pointed at the one fake upstream, and checked with one request before it is measured.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use crate::process::Managed;

pub const CHAT_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say ok."}]}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The fake upstream, called directly: the baseline.
    Direct,
    /// `bare-proxy` (this repository): axum + one reqwest client forwarding the body with a
    /// bearer key, nothing else. The floor of what any proxy hop costs on the machine.
    Floor,
    /// Our local gateway (`stockpulse-local`, embedded backend): token check, key from the vault,
    /// quota + rate limit + usage in one SQLite write, key injected, answer redacted.
    Stockpulse,
    /// LiteLLM's proxy (PyPI `litellm[proxy]`), OpenAI pass-through with its master key.
    Litellm,
    /// Portkey's open-source gateway (npm `@portkey-ai/gateway`), OpenAI provider, custom host.
    Portkey,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Floor => "floor",
            TargetKind::Stockpulse => "stockpulse",
            TargetKind::Litellm => "litellm",
            TargetKind::Portkey => "portkey",
        }
    }
}

/// One request, as the load generator sends it.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RequestSpec {
    /// The benchmark's chat completion to `url` with `Authorization: Bearer <bearer>`.
    fn chat(url: String, bearer: &str) -> RequestSpec {
        RequestSpec {
            url,
            headers: vec![("content-type".into(), "application/json".into()), ("authorization".into(), format!("Bearer {bearer}"))],
            body: CHAT_BODY.into(),
        }
    }
}

/// Keys the upstream counts per target (so the check can tell who forwarded what). Unique per
/// run; only names are ever written out.
pub struct UpstreamKeys {
    pub direct: String,
    pub floor: String,
    pub stockpulse: String,
    pub litellm: String,
    pub portkey: String,
}

impl UpstreamKeys {
    pub fn new() -> UpstreamKeys {
        let unique = || uuid::Uuid::new_v4().simple().to_string();
        UpstreamKeys {
            direct: format!("sk-bench-direct-{}", unique()),
            floor: format!("sk-bench-floor-{}", unique()),
            stockpulse: format!("sk-proj-benchcanary{}", unique()),
            litellm: format!("sk-bench-litellm-{}", unique()),
            portkey: format!("sk-bench-portkey-{}", unique()),
        }
    }

    pub fn for_target(&self, kind: TargetKind) -> &str {
        match kind {
            TargetKind::Direct => &self.direct,
            TargetKind::Floor => &self.floor,
            TargetKind::Stockpulse => &self.stockpulse,
            TargetKind::Litellm => &self.litellm,
            TargetKind::Portkey => &self.portkey,
        }
    }
}

/// Where the programs under test are.
pub struct Programs {
    pub floor: Option<PathBuf>,
    pub gateway: PathBuf,
    pub litellm: Option<PathBuf>,
    pub litellm_workers: u32,
    pub node: PathBuf,
    pub portkey: Option<PathBuf>,
}

pub struct Running {
    pub kind: TargetKind,
    pub process: Option<Managed>,
    pub request: RequestSpec,
    pub version: String,
}

pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Waits until `url` answers at all (any status), or the process has died, or `limit` passed.
async fn wait_until_up(process: &mut Managed, url: &str, limit: Duration) -> Result<(), String> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!("{} exited ({status}) while starting:\n{}", process.name, process.log_tail()));
        }
        if client.get(url).timeout(Duration::from_secs(2)).send().await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!("{} did not answer at {url} within {limit:?}:\n{}", process.name, process.log_tail()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn start(kind: TargetKind, programs: &Programs, upstream: &str, keys: &UpstreamKeys, work: &Path) -> Result<Running, String> {
    match kind {
        TargetKind::Direct => Ok(Running {
            kind,
            process: None,
            request: RequestSpec::chat(format!("{upstream}/v1/chat/completions"), &keys.direct),
            version: "fake-openai (this repository)".into(),
        }),
        TargetKind::Floor => start_floor(programs, upstream, keys, work).await,
        TargetKind::Stockpulse => start_stockpulse(programs, upstream, keys, work).await,
        TargetKind::Litellm => start_litellm(programs, upstream, keys, work).await,
        TargetKind::Portkey => start_portkey(programs, upstream, keys, work).await,
    }
}

async fn start_stockpulse(programs: &Programs, upstream: &str, keys: &UpstreamKeys, work: &Path) -> Result<Running, String> {
    let port = free_port()?;
    let data = work.join("stockpulse-data");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let mut command = Command::new(&programs.gateway);
    command
        .arg("--dev")
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        // The web UI is not part of the benchmark; the placeholder keeps the start independent of a frontend build.
        .arg("--static-dir")
        .arg(work)
        .env("STOCKPULSE_UPSTREAM_OPENAI", format!("{upstream}/v1"))
        .env_remove("RUST_LOG");
    let mut process = Managed::spawn("stockpulse", command, work)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&mut process, &format!("{base}/api/providers"), Duration::from_secs(60)).await?;

    // Set up as a workspace admin would: sign in, store the key, set generous limits so that the
    // quota check runs on every request without refusing any.
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{base}/api/dev/login"))
        .json(&json!({"email": "bench@example.com", "role": "admin", "workspace": "bench"}))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("dev login: {e}"))?
        .json()
        .await
        .map_err(|e| format!("dev login: {e}"))?;
    let token = login["token"].as_str().ok_or("dev login: no token")?.to_owned();
    let created = client
        .post(format!("{base}/api/keys"))
        .bearer_auth(&token)
        .json(&json!({"provider": "openai", "environment": "production", "label": "benchmark",
                      "credentials": {"api_key": keys.stockpulse}}))
        .send()
        .await
        .map_err(|e| format!("storing the key: {e}"))?;
    if !created.status().is_success() {
        return Err(format!("storing the key: HTTP {}", created.status()));
    }
    let quota = client
        .put(format!("{base}/api/quotas/openai"))
        .bearer_auth(&token)
        .json(&json!({"environment": "production", "limits": {
            "requests_per_minute": 100_000_000u64, "requests_per_day": 1_000_000_000u64,
            "requests_per_month": 10_000_000_000u64, "llm_tokens_per_month": 1_000_000_000_000u64}}))
        .send()
        .await
        .map_err(|e| format!("setting the quota: {e}"))?;
    if !quota.status().is_success() {
        return Err(format!("setting the quota: HTTP {}", quota.status()));
    }
    let version = command_version(&programs.gateway, "--version").await;
    Ok(Running {
        kind: TargetKind::Stockpulse,
        process: Some(process),
        request: RequestSpec::chat(format!("{base}/proxy/openai/chat/completions"), &token),
        version,
    })
}

async fn start_floor(programs: &Programs, upstream: &str, keys: &UpstreamKeys, work: &Path) -> Result<Running, String> {
    let bare = programs.floor.as_ref().ok_or("the bare proxy is not built (--floor)")?;
    let port = free_port()?;
    let mut command = Command::new(bare);
    command.arg("--upstream").arg(upstream).arg("--port").arg(port.to_string()).env("BARE_PROXY_KEY", &keys.floor);
    let mut process = Managed::spawn("floor", command, work)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&mut process, &format!("{base}/v1/models"), Duration::from_secs(30)).await?;
    Ok(Running {
        kind: TargetKind::Floor,
        process: Some(process),
        // The client's bearer is not checked; the proxy sends its own key upstream.
        request: RequestSpec::chat(format!("{base}/v1/chat/completions"), "unchecked"),
        version: "bare-proxy (this repository)".into(),
    })
}

async fn start_litellm(programs: &Programs, upstream: &str, keys: &UpstreamKeys, work: &Path) -> Result<Running, String> {
    let litellm = programs.litellm.as_ref().ok_or("LiteLLM is not installed (--litellm)")?;
    let port = free_port()?;
    let master_key = format!("sk-litellm-master-{}", uuid::Uuid::new_v4().simple());
    // A pass-through of one OpenAI model to the fake upstream; the client authenticates with the
    // master key. Virtual keys and the spend database need PostgreSQL + the Prisma CLI (see
    // BENCHMARKS.md); LiteLLM still prices every request (its cost map is read from the package).
    let config = format!(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: {upstream}/v1\n      api_key: {key}\n\
         general_settings:\n  master_key: {master_key}\n\
         litellm_settings:\n  telemetry: false\n  drop_params: true\n",
        key = keys.litellm
    );
    let config_path = work.join("litellm.yaml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let mut command = Command::new(litellm);
    command
        .arg("--config")
        .arg(&config_path)
        .arg("--host")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--num_workers")
        .arg(programs.litellm_workers.to_string())
        // No download of the model cost map at start (no network beyond loopback here).
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "ERROR")
        .env("NO_DOCS", "True");
    let mut process = Managed::spawn("litellm", command, work)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&mut process, &format!("{base}/health/liveliness"), Duration::from_secs(180)).await?;
    let version = command_version(litellm, "--version").await;
    Ok(Running {
        kind: TargetKind::Litellm,
        process: Some(process),
        request: RequestSpec::chat(format!("{base}/v1/chat/completions"), &master_key),
        version,
    })
}

async fn start_portkey(programs: &Programs, upstream: &str, keys: &UpstreamKeys, work: &Path) -> Result<Running, String> {
    let server = programs.portkey.as_ref().ok_or("Portkey's gateway is not installed (--portkey)")?;
    let port = free_port()?;
    let mut command = Command::new(&programs.node);
    command.arg(server).arg(format!("--port={port}")).arg("--headless");
    let mut process = Managed::spawn("portkey", command, work)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&mut process, &format!("{base}/"), Duration::from_secs(60)).await?;
    let package = server.ancestors().find(|p| p.join("package.json").exists()).map(|p| p.join("package.json"));
    let version = package
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(|v| format!("@portkey-ai/gateway {v}")))
        .unwrap_or_else(|| "@portkey-ai/gateway".into());
    Ok(Running {
        kind: TargetKind::Portkey,
        process: Some(process),
        request: {
            let mut request = RequestSpec::chat(format!("{base}/v1/chat/completions"), &keys.portkey);
            request.headers.push(("x-portkey-provider".into(), "openai".into()));
            request.headers.push(("x-portkey-custom-host".into(), format!("{upstream}/v1")));
            request
        },
        version,
    })
}

async fn command_version(program: &Path, flag: &str) -> String {
    match Command::new(program).arg(flag).output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned(),
        Err(_) => String::new(),
    }
}

/// Sends the request once and checks the upstream saw this target's key.
pub async fn check(running: &Running, upstream: &str) -> Result<(), String> {
    let client = reqwest::Client::new();
    let mut builder = client.post(&running.request.url).body(running.request.body.clone()).timeout(Duration::from_secs(30));
    for (name, value) in &running.request.headers {
        builder = builder.header(name, value);
    }
    let before = upstream_count(upstream, running.kind).await?;
    let answer = builder.send().await.map_err(|e| format!("{}: {e}", running.kind.name()))?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    if !status.is_success() || !body.contains("chat.completion") {
        return Err(format!("{} answered HTTP {status}: {}", running.kind.name(), body.chars().take(300).collect::<String>()));
    }
    let after = upstream_count(upstream, running.kind).await?;
    if after != before + 1 {
        return Err(format!("{}: the upstream saw {} requests with its key, expected 1", running.kind.name(), after - before));
    }
    Ok(())
}

pub async fn upstream_count(upstream: &str, kind: TargetKind) -> Result<u64, String> {
    let stats: serde_json::Value = reqwest::get(format!("{upstream}/__bench/stats"))
        .await
        .map_err(|e| format!("upstream stats: {e}"))?
        .json()
        .await
        .map_err(|e| format!("upstream stats: {e}"))?;
    Ok(stats["by_key"][kind.name()].as_u64().unwrap_or(0))
}
