//! Stands the soak's world up on loopback: the fake OpenAI upstream, the gateway in dev mode on a
//! fresh data folder with OpenAI pointed at the fake, and two workspaces each with an admin, a
//! member, a production OpenAI key for the proxy and quota limits that never refuse.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use crate::process::Managed;
use crate::workload::{Session, canary_key, generous_limits};

/// How often the gateway's scheduled job runs during the soak: a few times in a short run, so
/// that its work (re-verification, reminders, expired versions) is part of the load too.
const SCHEDULER_SECONDS: &str = "60";

pub struct World {
    pub fake: Managed,
    pub fake_url: String,
    pub gateway: Managed,
    pub base: String,
    pub data_dir: PathBuf,
    pub sessions: Vec<Session>,
}

pub struct Programs<'a> {
    pub gateway: &'a Path,
    pub fake_upstream: &'a Path,
}

pub const WORKSPACES: [&str; 2] = ["soak-a", "soak-b"];

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// The fake prints `listening http://127.0.0.1:<port>` first; waits for that line in its log.
async fn fake_url(fake: &mut Managed) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(&fake.log).unwrap_or_default();
        if let Some(url) = log.lines().find_map(|line| line.strip_prefix("listening ")) {
            return Ok(url.trim().to_owned());
        }
        if let Ok(Some(status)) = fake.child.try_wait() {
            return Err(format!("fake-openai exited ({status}):\n{}", fake.log_tail()));
        }
        if started.elapsed() > Duration::from_secs(15) {
            return Err(format!("fake-openai did not say where it listens:\n{}", fake.log_tail()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_up(gateway: &mut Managed, url: &str) -> Result<(), String> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = gateway.child.try_wait() {
            return Err(format!("the gateway exited ({status}) while starting:\n{}", gateway.log_tail()));
        }
        if client.get(url).timeout(Duration::from_secs(2)).send().await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("the gateway did not answer at {url} within 60 s:\n{}", gateway.log_tail()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fails with the status and the envelope's code, never the body (it could quote a request).
async fn expect(response: Result<reqwest::Response, reqwest::Error>, expected: u16, what: &str) -> Result<reqwest::Response, String> {
    let response = response.map_err(|e| format!("{what}: {}", if e.is_timeout() { "timeout" } else { "no answer" }))?;
    let status = response.status().as_u16();
    if status == expected {
        return Ok(response);
    }
    let code = response.bytes().await.ok().and_then(|b| crate::tally::envelope_code(&b)).unwrap_or_default();
    Err(format!("{what}: HTTP {status} {code} (expected {expected})"))
}

async fn sign_in(client: &reqwest::Client, base: &str, email: &str, role: &str, workspace: &str) -> Result<String, String> {
    let what = format!("dev sign-in of {email}");
    let response =
        client.post(format!("{base}/api/dev/login")).json(&json!({"email": email, "role": role, "workspace": workspace})).send().await;
    let body: serde_json::Value = expect(response, 200, &what).await?.json().await.map_err(|_| format!("{what}: not JSON"))?;
    body.get("token").and_then(|t| t.as_str()).map(str::to_owned).ok_or_else(|| format!("{what}: no token"))
}

pub async fn stand_up(programs: &Programs<'_>, work: &Path) -> Result<World, String> {
    // The production key of each workspace is the one the proxy injects; the fake counts its
    // requests per workspace under the workspace's name.
    let proxy_keys: Vec<(&str, String)> = WORKSPACES.iter().map(|w| (*w, canary_key())).collect();
    let named: Vec<String> = proxy_keys.iter().map(|(w, key)| format!("{w}={key}")).collect();
    let mut command = Command::new(programs.fake_upstream);
    // From the environment, so that no key shows in the process list.
    command.env("FAKE_OPENAI_KEYS", named.join(","));
    let mut fake = Managed::spawn("fake-openai", command, work)?;
    let fake_url = fake_url(&mut fake).await?;

    let data_dir = work.join("data");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let port = free_port()?;
    let mut command = Command::new(programs.gateway);
    // Whatever the calling shell set for a gateway of its own (backend, master key, issuer...)
    // must not change this one: only the settings below apply.
    for (name, _) in std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("STOCKPULSE_")) {
        command.env_remove(name);
    }
    command
        .arg("--dev")
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data_dir)
        // The web UI is not part of the soak; an empty folder keeps the start independent of a frontend build.
        .arg("--static-dir")
        .arg(work)
        .env("STOCKPULSE_UPSTREAM_OPENAI", format!("{fake_url}/v1"))
        .env("STOCKPULSE_SCHEDULER_INTERVAL_SECONDS", SCHEDULER_SECONDS)
        .env_remove("RUST_LOG");
    let mut gateway = Managed::spawn("gateway", command, work)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&mut gateway, &format!("{base}/api/providers")).await?;

    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string())?;
    let mut sessions = Vec::new();
    for (workspace, key) in &proxy_keys {
        let admin = sign_in(&client, &base, &format!("admin@{workspace}.example.com"), "admin", workspace).await?;
        let member = sign_in(&client, &base, &format!("member@{workspace}.example.com"), "member", workspace).await?;
        let key_body =
            json!({"provider": "openai", "environment": "production", "label": "soak proxy key", "credentials": {"api_key": key}});
        expect(client.post(format!("{base}/api/keys")).bearer_auth(&admin).json(&key_body).send().await, 201, "storing the proxy key")
            .await?;
        let quota = json!({"environment": "production", "limits": generous_limits(0)});
        expect(client.put(format!("{base}/api/quotas/openai")).bearer_auth(&admin).json(&quota).send().await, 200, "setting the quota")
            .await?;
        sessions.push(Session { workspace: (*workspace).to_owned(), admin, member });
    }
    Ok(World { fake, fake_url, gateway, base, data_dir, sessions })
}

/// The fake upstream's request counts per workspace key (`GET /__bench/stats`): what reached
/// the provider, as opposed to what the cache answered.
pub async fn upstream_stats(fake_url: &str) -> Option<serde_json::Value> {
    reqwest::get(format!("{fake_url}/__bench/stats")).await.ok()?.json().await.ok()
}

/// The gateway's `--version` line, for the report.
pub async fn gateway_version(gateway: &Path) -> String {
    match Command::new(gateway).arg("--version").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => "unknown".to_owned(),
    }
}
