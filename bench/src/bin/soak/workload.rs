//! The mixed load, all at once until told to stop:
//!
//! - the proxy at a steady rate (not saturation: the soak looks for leaks and errors, not for the
//!   highest throughput), spread over every workspace and over five kinds of request that take
//!   the proxy's different paths (no cache, opted-in cache, the catalog's cache rule, refresh);
//! - per workspace, one key going through its whole life again and again in the `development`
//!   slot (the proxy uses `production`): create, list, get, PATCH with `If-Match`, test, rotate,
//!   roll back, revoke, delete;
//! - per workspace, the read side and the admin's quota edits: audit list, audit verification,
//!   usage, quota PUT and GET, notifications.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::call::{Answer, send};
use crate::leak_scan::CANARY_PREFIX;
use crate::tally::{FailureClass, Kind, Tally};

/// A workspace and the tokens of its admin and of one member.
pub struct Session {
    pub workspace: String,
    pub admin: String,
    pub member: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Proxied requests per second, all workspaces together.
    pub proxy_rate: f64,
    /// Proxied requests in flight at most; a tick that finds them all busy sends nothing and is
    /// counted as not sent (the gateway fell behind the rate).
    pub max_in_flight: usize,
    /// Pause between two steps of a key's life.
    pub key_step_pause: Duration,
    /// Pause between two read-side requests.
    pub read_pause: Duration,
}

pub struct Load {
    pub client: reqwest::Client,
    pub base: String,
    pub sessions: Vec<Session>,
    pub tally: Arc<Tally>,
    pub pace: Pace,
}

/// Limits high enough never to refuse a request of the soak, so that the quota check runs on
/// every request (one conditional write) without a 429. The admin's PUTs vary them a little,
/// downwards: the API refuses limits above 10^12 (`limit_too_large`).
pub fn generous_limits(variation: u64) -> serde_json::Value {
    json!({
        "requests_per_minute": 100_000_000u64 - variation,
        "requests_per_day": 1_000_000_000u64 - variation,
        "requests_per_month": 10_000_000_000u64 - variation,
        "llm_tokens_per_month": 1_000_000_000_000u64 - variation,
    })
}

/// A fresh canary-like key value: unique per call, so that a value found in a log or an answer
/// names the moment it was stored. Never printed.
pub fn canary_key() -> String {
    format!("{CANARY_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// Waits `pause`, or less if the stop comes first; `None` once stopped, so steps can use `?`.
async fn pause(stop: &mut watch::Receiver<bool>, pause: Duration) -> Option<()> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        _ = stop.changed() => None,
        _ = tokio::time::sleep(pause) => Some(()),
    }
}

/// Runs the load until `stop` turns true; answers how many proxied requests were not sent
/// because `max_in_flight` were still waiting.
pub async fn run(load: Arc<Load>, stop: watch::Receiver<bool>) -> u64 {
    let mut tasks = Vec::new();
    for index in 0..load.sessions.len() {
        tasks.push(tokio::spawn(key_lives(load.clone(), index, stop.clone())));
        tasks.push(tokio::spawn(reads(load.clone(), index, stop.clone())));
    }
    let not_sent = drive_proxy(load.clone(), stop).await;
    for task in tasks {
        // A task that panicked has already printed why; the counts it made are kept.
        let _ = task.await;
    }
    not_sent
}

async fn drive_proxy(load: Arc<Load>, mut stop: watch::Receiver<bool>) -> u64 {
    let rate = load.pace.proxy_rate.max(0.1);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let slots = Arc::new(Semaphore::new(load.pace.max_in_flight));
    let mut not_sent = 0;
    let mut sequence: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        if *stop.borrow() {
            break;
        }
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let load = load.clone();
                tokio::spawn(async move {
                    proxy_request(&load, sequence).await;
                    drop(permit);
                });
            }
            Err(_) => not_sent += 1,
        }
        sequence += 1;
    }
    // Let the requests in flight finish, so that each one is counted with its outcome.
    let all = u32::try_from(load.pace.max_in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(40), slots.acquire_many(all)).await;
    not_sent
}

/// The kind of the `sequence`-th proxied request of a workspace: out of every 20, 8 plain chat
/// completions, 5 with an opted-in cache, 3 model lists under the catalog's rule, 2 with a TTL
/// header and 2 forced refreshes.
pub fn proxy_kind(sequence: u64) -> Kind {
    match sequence % 20 {
        0..=7 => Kind::ProxyChat,
        8..=12 => Kind::ProxyChatTtl,
        13..=15 => Kind::ProxyModels,
        16..=17 => Kind::ProxyModelsTtl,
        _ => Kind::ProxyModelsRefresh,
    }
}

/// Prompts of the cached chat requests: few, so that most of them hit.
const CACHED_PROMPTS: u64 = 16;

async fn proxy_request(load: &Load, sequence: u64) {
    let sessions = load.sessions.len() as u64;
    let session = &load.sessions[(sequence % sessions) as usize];
    let kind = proxy_kind(sequence / sessions);
    let chat_url = format!("{}/proxy/openai/chat/completions", load.base);
    let models_url = format!("{}/proxy/openai/models", load.base);
    let chat = |content: String| json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]});
    let request = match kind {
        Kind::ProxyChatTtl => load
            .client
            .post(&chat_url)
            .header("x-stockpulse-cache-ttl", "30")
            .json(&chat(format!("soak prompt {}", sequence % CACHED_PROMPTS))),
        Kind::ProxyModels => load.client.get(&models_url),
        Kind::ProxyModelsTtl => load.client.get(&models_url).header("x-stockpulse-cache-ttl", "10"),
        Kind::ProxyModelsRefresh => load.client.get(&models_url).header("cache-control", "no-cache"),
        _ => load.client.post(&chat_url).json(&chat("soak".to_owned())),
    };
    let Some(answer) = send(&load.tally, kind, request.bearer_auth(&session.member), 200).await else { return };
    let expected_body: &[u8] = if kind == Kind::ProxyChat || kind == Kind::ProxyChatTtl { b"\"choices\"" } else { b"\"data\"" };
    if !answer.body.windows(expected_body.len()).any(|w| w == expected_body) {
        load.tally.failure(kind, FailureClass::UnexpectedBody, Some(200), None, "not the upstream's answer");
        return;
    }
    match answer.headers.get("x-stockpulse-cache").and_then(|v| v.to_str().ok()) {
        Some("HIT") => load.tally.cache_hit(kind),
        Some(_) => {}
        None => load.tally.failure(kind, FailureClass::UnexpectedBody, Some(200), None, "no X-StockPulse-Cache header"),
    }
}

/// A string field of a JSON answer, or a counted failure of the step.
fn field(tally: &Tally, kind: Kind, answer: &Answer, name: &str) -> Option<String> {
    let value = answer.json().and_then(|v| v.get(name).and_then(|f| f.as_str()).map(str::to_owned));
    if value.is_none() {
        tally.failure(kind, FailureClass::UnexpectedBody, None, None, format!("no \"{name}\" in the answer"));
    }
    value
}

async fn key_lives(load: Arc<Load>, index: usize, mut stop: watch::Receiver<bool>) {
    let session = &load.sessions[index];
    let mut cycle: u64 = 0;
    while pause(&mut stop, load.pace.key_step_pause).await.is_some() {
        cycle += 1;
        let url = format!("{}/api/keys", load.base);
        let body = json!({"provider": "openai", "environment": "development", "label": format!("soak {} #{cycle}", session.workspace),
                          "credentials": {"api_key": canary_key()}});
        let Some(created) = send(&load.tally, Kind::KeyCreate, load.client.post(&url).bearer_auth(&session.member).json(&body), 201).await
        else {
            continue;
        };
        let Some(id) = field(&load.tally, Kind::KeyCreate, &created, "id") else { continue };
        if key_life(&load, session, &id, cycle, &mut stop).await.is_none() && !*stop.borrow() {
            // A step failed (and was counted): free the slot so the next cycle starts clean.
            let _ = load.client.delete(format!("{url}/{id}")).bearer_auth(&session.admin).send().await;
        }
    }
}

/// Every step after the key's creation; `None` at the first failure or at the stop.
async fn key_life(load: &Load, session: &Session, id: &str, cycle: u64, stop: &mut watch::Receiver<bool>) -> Option<()> {
    let (tally, client, step) = (&load.tally, &load.client, load.pace.key_step_pause);
    let key_url = format!("{}/api/keys/{id}", load.base);

    pause(stop, step).await?;
    send(tally, Kind::KeyList, client.get(format!("{}/api/keys?limit=50", load.base)).bearer_auth(&session.member), 200).await?;

    pause(stop, step).await?;
    let got = send(tally, Kind::KeyGet, client.get(&key_url).bearer_auth(&session.member), 200).await?;
    let Some(etag) = got.headers.get("etag").cloned() else {
        tally.failure(Kind::KeyGet, FailureClass::UnexpectedBody, Some(200), None, "no ETag");
        return None;
    };

    pause(stop, step).await?;
    let label = json!({"label": format!("soak {} #{cycle} renamed", session.workspace)});
    send(tally, Kind::KeyPatch, client.patch(&key_url).bearer_auth(&session.member).header("if-match", etag).json(&label), 200).await?;

    pause(stop, step).await?;
    let tested = send(tally, Kind::KeyTest, client.post(format!("{key_url}/test")).bearer_auth(&session.member), 200).await?;
    let status = field(tally, Kind::KeyTest, &tested, "status")?;
    if status != "valid" {
        // The status is one of the API's own words (valid, invalid, unreachable...), never key text.
        tally.failure(Kind::KeyTest, FailureClass::UnexpectedBody, Some(200), Some(status), "the test did not find the key valid");
        return None;
    }

    pause(stop, step).await?;
    let rotation = json!({"credentials": {"api_key": canary_key()}, "grace_hours": 1});
    let idempotency = uuid::Uuid::new_v4().to_string();
    let rotate =
        client.post(format!("{key_url}/rotate")).bearer_auth(&session.member).header("idempotency-key", idempotency).json(&rotation);
    send(tally, Kind::KeyRotate, rotate, 200).await?;

    pause(stop, step).await?;
    let idempotency = uuid::Uuid::new_v4().to_string();
    let rollback = client.post(format!("{key_url}/rollback")).bearer_auth(&session.member).header("idempotency-key", idempotency);
    send(tally, Kind::KeyRollback, rollback, 200).await?;

    pause(stop, step).await?;
    let reason = json!({"reason": "soak: end of the key's life"});
    send(tally, Kind::KeyRevoke, client.post(format!("{key_url}/revoke")).bearer_auth(&session.member).json(&reason), 200).await?;

    pause(stop, step).await?;
    send(tally, Kind::KeyDelete, client.delete(&key_url).bearer_auth(&session.admin), 204).await?;
    Some(())
}

/// The read side's kinds, in the order the reads task goes round them.
const READS: [Kind; 6] = [Kind::AuditList, Kind::AuditVerify, Kind::Usage, Kind::QuotaPut, Kind::QuotaGet, Kind::Notifications];

async fn reads(load: Arc<Load>, index: usize, mut stop: watch::Receiver<bool>) {
    let session = &load.sessions[index];
    let (tally, client, base) = (&load.tally, &load.client, &load.base);
    let mut round: u64 = 0;
    while pause(&mut stop, load.pace.read_pause).await.is_some() {
        let kind = READS[(round % READS.len() as u64) as usize];
        round += 1;
        let as_member = |path: &str| client.get(format!("{base}{path}")).bearer_auth(&session.member);
        match kind {
            Kind::AuditVerify => {
                if let Some(answer) = send(tally, kind, as_member("/api/audit/verify"), 200).await
                    && let Some(report) = answer.json()
                    && report.get("ok").and_then(|ok| ok.as_bool()) != Some(true)
                {
                    // Only the report's numbers: where the chain broke tells a race from tampering.
                    let number = |name: &str| report.get(name).and_then(|v| v.as_u64()).map_or("-".to_owned(), |n| n.to_string());
                    let what = format!("the audit chain did not verify (checked {}, first_bad {})", number("checked"), number("first_bad"));
                    tally.failure(kind, FailureClass::UnexpectedBody, Some(200), None, what);
                }
            }
            Kind::QuotaPut => {
                let body = json!({"environment": "production", "limits": generous_limits(round % 7)});
                let request = client.put(format!("{base}/api/quotas/openai")).bearer_auth(&session.admin).json(&body);
                send(tally, kind, request, 200).await;
            }
            Kind::AuditList => _ = send(tally, kind, as_member("/api/audit?limit=50"), 200).await,
            Kind::Usage => _ = send(tally, kind, as_member("/api/usage"), 200).await,
            Kind::QuotaGet => _ = send(tally, kind, as_member("/api/quotas/openai"), 200).await,
            _ => _ = send(tally, kind, as_member("/api/notifications?limit=20"), 200).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_mix_is_the_documented_one() {
        let count = |kind: Kind| (0..20).filter(|s| proxy_kind(*s) == kind).count();
        assert_eq!(
            [Kind::ProxyChat, Kind::ProxyChatTtl, Kind::ProxyModels, Kind::ProxyModelsTtl, Kind::ProxyModelsRefresh].map(count),
            [8, 5, 3, 2, 2]
        );
    }

    #[test]
    fn the_admins_quota_edits_stay_within_what_the_api_accepts() {
        for variation in 0..7 {
            let limits = generous_limits(variation);
            let values: Vec<u64> = limits.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(values.len(), 4);
            assert!(values.iter().all(|v| *v <= 1_000_000_000_000 && *v >= 1_000_000), "{limits}");
        }
    }

    #[test]
    fn canaries_are_unique_and_look_like_openai_project_keys() {
        let (a, b) = (canary_key(), canary_key());
        assert_ne!(a, b);
        assert!(a.starts_with("sk-proj-soak-") && a.len() >= 40);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
