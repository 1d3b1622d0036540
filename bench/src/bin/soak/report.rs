//! `soak.json` (everything, for tools) and `soak.md` (the verdict, the load per kind and a table
//! of the samples over time, for people).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::leak_scan::{CANARY_PREFIX, Finding};
use crate::tally::{Example, KindCounts, Snapshot};
use crate::verdict::MemoryVerdict;
use crate::workload::Pace;

/// The gateway and the load at one moment, `seconds` after the load started.
#[derive(Debug, Clone)]
pub struct Sample {
    pub seconds: f64,
    pub rss_kib: u64,
    pub rss_anon_kib: u64,
    pub threads: u64,
    pub fds: u64,
    pub data_bytes: u64,
    pub wal_bytes: u64,
    pub tally: Snapshot,
}

pub struct Run {
    pub started_at: String,
    pub command: String,
    pub gateway_version: String,
    pub machine: String,
    pub duration_seconds: f64,
    pub sample_seconds: f64,
    pub pace: Pace,
    pub samples: Vec<Sample>,
    /// After the load stopped and every request in flight finished.
    pub totals: Snapshot,
    pub examples: Vec<Example>,
    pub proxy_not_sent: u64,
    pub memory: MemoryVerdict,
    /// `GET /api/audit/verify` of each workspace after the load.
    pub final_verify: BTreeMap<String, serde_json::Value>,
    pub upstream: Option<serde_json::Value>,
    /// Set when the gateway died during the run.
    pub gateway_exit: Option<String>,
    /// Files of the gateway's log and data folder (and the fake's log) searched for stored key values.
    pub files_scanned: usize,
    /// Those that held one in plain text (must be none).
    pub plaintext_keys: Vec<Finding>,
}

impl Run {
    pub fn errors(&self) -> u64 {
        self.totals.errors()
    }

    fn chain_ok(&self) -> bool {
        !self.final_verify.is_empty() && self.final_verify.values().all(|v| v.get("ok").and_then(|ok| ok.as_bool()) == Some(true))
    }

    pub fn passed(&self) -> bool {
        self.errors() == 0 && self.memory.flat && self.gateway_exit.is_none() && self.chain_ok() && self.plaintext_keys.is_empty()
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn by_kind(snapshot: &Snapshot) -> serde_json::Map<String, serde_json::Value> {
    snapshot
        .kinds
        .iter()
        .map(|(kind, counts)| {
            let mean_ms = if counts.done == 0 { 0.0 } else { counts.micros_total as f64 / counts.done as f64 / 1000.0 };
            let value = json!({
                "requests": counts.done, "cache_hits": counts.cache_hits, "errors": counts.errors(),
                "transport": counts.transport, "server_error": counts.server_error,
                "unexpected_status": counts.unexpected_status, "unexpected_body": counts.unexpected_body,
                "mean_ms": round3(mean_ms), "max_ms": round3(counts.micros_max as f64 / 1000.0),
            });
            (kind.name().to_owned(), value)
        })
        .collect()
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// Proxied requests and their mean time between two samples.
fn window(previous: Option<&Sample>, sample: &Sample) -> (u64, f64, u64) {
    let (done_before, micros_before, api_before) =
        previous.map(|p| (p.tally.proxy_done(), p.tally.proxy_micros(), p.tally.api_done())).unwrap_or_default();
    let done = sample.tally.proxy_done().saturating_sub(done_before);
    let micros = sample.tally.proxy_micros().saturating_sub(micros_before);
    let mean_ms = if done == 0 { 0.0 } else { micros as f64 / done as f64 / 1000.0 };
    (done, mean_ms, sample.tally.api_done().saturating_sub(api_before))
}

fn json_report(run: &Run) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = run
        .samples
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (proxy, proxy_mean_ms, api) = window(i.checked_sub(1).and_then(|p| run.samples.get(p)), s);
            json!({
                "seconds": round3(s.seconds), "rss_kib": s.rss_kib, "rss_anon_kib": s.rss_anon_kib, "threads": s.threads,
                "open_fds": s.fds, "data_dir_bytes": s.data_bytes, "wal_bytes": s.wal_bytes,
                "proxy_requests_in_window": proxy, "proxy_mean_ms_in_window": round3(proxy_mean_ms),
                "api_requests_in_window": api, "errors_so_far": s.tally.errors(),
            })
        })
        .collect();
    json!({
        "started_at": run.started_at,
        "command": run.command,
        "gateway_version": run.gateway_version,
        "machine": run.machine,
        "duration_seconds": run.duration_seconds,
        "sample_seconds": run.sample_seconds,
        "pace": {
            "proxy_rate_per_second": run.pace.proxy_rate, "max_in_flight": run.pace.max_in_flight,
            "key_step_pause_ms": run.pace.key_step_pause.as_millis() as u64, "read_pause_ms": run.pace.read_pause.as_millis() as u64,
        },
        "passed": run.passed(),
        "errors": run.errors(),
        "proxy_requests": run.totals.proxy_done(),
        "api_requests": run.totals.api_done(),
        "proxy_not_sent": run.proxy_not_sent,
        "memory": run.memory,
        "gateway_exit": run.gateway_exit,
        "final_audit_verify": run.final_verify,
        "upstream_requests": run.upstream,
        "plaintext_key_scan": {"prefix": CANARY_PREFIX, "files_scanned": run.files_scanned, "findings": run.plaintext_keys},
        "by_kind": by_kind(&run.totals),
        "error_examples": run.examples,
        "samples": samples,
    })
}

fn verdict_word(ok: bool) -> &'static str {
    if ok { "**pass**" } else { "**FAIL**" }
}

fn markdown(run: &Run) -> String {
    let mut md = String::new();
    let m = &run.memory;
    let first = run.samples.first();
    let last = run.samples.last();
    let warm = run.samples.iter().find(|s| s.seconds >= m.warmup_ends_at_seconds);
    let rss = |s: Option<&Sample>| s.map(|s| format!("{:.1}", s.rss_kib as f64 / 1024.0)).unwrap_or_else(|| "-".into());
    let fds = |s: Option<&Sample>| s.map(|s| s.fds.to_string()).unwrap_or_else(|| "-".into());
    let data = |s: Option<&Sample>| s.map(|s| format!("{:.1}", mib(s.data_bytes))).unwrap_or_else(|| "-".into());
    let proxy_rate = if run.duration_seconds > 0.0 { run.totals.proxy_done() as f64 / run.duration_seconds } else { 0.0 };
    let bytes_per_request_at_limit = m.limits.max_slope_mib_per_minute * 1024.0 * 1024.0 / (run.pace.proxy_rate * 60.0);

    let _ = writeln!(md, "# Soak: mixed API and proxy load on loopback\n");
    let _ = writeln!(
        md,
        "`{}`, started {}, {:.0} s of load. Gateway `{}` (profile `benchmark`, embedded backend: SQLite + local vault, `--dev`), fake OpenAI upstream, load driver `soak`; all on {}.\n",
        run.command, run.started_at, run.duration_seconds, run.gateway_version, run.machine
    );

    let _ = writeln!(md, "## Verdict: {}\n", if run.passed() { "pass" } else { "FAIL" });
    let _ = writeln!(md, "| check | result | goal | verdict |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| errors | {} of {} requests | 0 | {} |",
        run.errors(),
        run.totals.proxy_done() + run.totals.api_done(),
        verdict_word(run.errors() == 0)
    );
    let _ = writeln!(
        md,
        "| memory growth, median of last third − median of second third | {} MiB | ≤ {:.1} MiB | {} |",
        m.growth_mib.map(|g| format!("{g:+.2}")).unwrap_or_else(|| "-".into()),
        m.limits.max_growth_mib,
        verdict_word(m.growth_mib.is_some_and(|g| g <= m.limits.max_growth_mib))
    );
    let _ = writeln!(
        md,
        "| memory slope after warm-up (least squares, {} samples; ± standard error) | {} MiB/min | ≤ {:.2} MiB/min | {} |",
        m.samples_after_warmup,
        m.slope_mib_per_minute
            .map(|s| format!("{s:+.3} ± {:.3}", m.slope_standard_error.unwrap_or(f64::NAN)))
            .unwrap_or_else(|| "-".into()),
        m.limits.max_slope_mib_per_minute,
        verdict_word(m.slope_mib_per_minute.is_some_and(|s| s <= m.limits.max_slope_mib_per_minute))
    );
    let chain = run
        .final_verify
        .iter()
        .map(|(w, v)| format!("{w}: ok={} checked={}", v.get("ok").unwrap_or(&json!(null)), v.get("checked").unwrap_or(&json!(null))))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(md, "| audit chains after the load | {chain} | ok | {} |", verdict_word(run.chain_ok()));
    let found: u64 = run.plaintext_keys.iter().map(|f| f.occurrences).sum();
    let _ = writeln!(
        md,
        "| stored key values in plain text (`{CANARY_PREFIX}…`) in the gateway's log and data folder | {found} in {} of {} files | 0 | {} |",
        run.plaintext_keys.len(),
        run.files_scanned,
        verdict_word(run.plaintext_keys.is_empty())
    );
    let alive = if run.gateway_exit.is_some() { "no (below)" } else { "yes" };
    let _ = writeln!(md, "| gateway alive to the end | {alive} | yes | {} |\n", verdict_word(run.gateway_exit.is_none()));
    if let Some(exit) = &run.gateway_exit {
        let _ = writeln!(md, "```\n{exit}\n```\n");
    }

    let _ = writeln!(
        md,
        "Resident set (MiB): {} at the start (set up, no load), {} after warm-up ({:.0} s), {} at the end; medians {} (second third) and {} (last third). Slope over the last third alone (not judged): {} MiB/min. Open fds: {} → {} → {}. Data folder (MiB): {} → {} → {}.\n",
        rss(first),
        rss(warm),
        m.warmup_ends_at_seconds,
        rss(last),
        m.second_third_median_mib.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
        m.last_third_median_mib.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
        m.last_third_slope_mib_per_minute.map(|v| format!("{v:+.3}")).unwrap_or_else(|| "-".into()),
        fds(first),
        fds(warm),
        fds(last),
        data(first),
        data(warm),
        data(last)
    );
    let _ = writeln!(
        md,
        "How \"flat\" is judged: the first third of the run is warm-up (pools, SQLite page caches, allocator arenas and the key cache fill) and is not judged. \
Flat means both: the median resident set of the last third is at most {:.1} MiB above the median of the second third (medians, so one sample taken during a burst does not decide), \
and a least-squares line through every sample after warm-up rises at most {:.2} MiB per minute. At the {:.0} proxied requests/s asked for, {:.2} MiB/min is {:.0} bytes per proxied request: \
a leak of any per-request allocation that is not tiny (a header map, a request id, a cache entry) would exceed it. The slope's standard error above says how far noise alone moves it in this run.\n",
        m.limits.max_growth_mib,
        m.limits.max_slope_mib_per_minute,
        run.pace.proxy_rate,
        m.limits.max_slope_mib_per_minute,
        bytes_per_request_at_limit
    );

    let _ = writeln!(md, "## Load\n");
    let _ = writeln!(
        md,
        "Two workspaces, each with an admin and a member. The proxy at a steady {:.0} req/s asked ({proxy_rate:.1} achieved over the run, {} ticks not sent because {} requests were still in flight), \
spread over both workspaces; out of every 20: 8 chat completions, 5 chat completions with `X-StockPulse-Cache-TTL: 30` over 16 prompts, 3 model lists under the catalog's cache rule, 2 with `X-StockPulse-Cache-TTL: 10`, 2 with `Cache-Control: no-cache`. \
Per workspace at the same time, a key's whole life again and again in the `development` slot ({} ms between steps): create, list, get, PATCH label with `If-Match`, test, rotate (idempotency key), roll back, revoke, delete (admin); \
and the read side ({} ms apart): audit list, audit verify, usage, quota PUT (admin), quota GET, notifications. The scheduled job runs every 60 s. Key values are fresh canaries (`sk-proj-soak-<uuid>`), never printed.\n",
        run.pace.proxy_rate,
        run.proxy_not_sent,
        run.pace.max_in_flight,
        run.pace.key_step_pause.as_millis(),
        run.pace.read_pause.as_millis()
    );

    let _ = writeln!(
        md,
        "| kind | requests | cache hits | errors | transport | 5xx | unexpected status | unexpected body | mean ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (kind, c) in &run.totals.kinds {
        row(&mut md, kind.name(), c);
    }
    let mut proxy = KindCounts::default();
    let mut api = KindCounts::default();
    for (kind, c) in &run.totals.kinds {
        add(if kind.is_proxy() { &mut proxy } else { &mut api }, c);
    }
    row(&mut md, "**all proxy**", &proxy);
    row(&mut md, "**all API**", &api);
    md.push('\n');

    if let Some(upstream) = &run.upstream {
        let _ = writeln!(
            md,
            "Requests that reached the fake upstream (the rest were answered from the cache): `{upstream}`; key tests and rotations use keys of their own (`other_keys`).\n"
        );
    }

    if !run.examples.is_empty() {
        let _ = writeln!(md, "## First errors\n\n| at s | kind | class | status | code | what |\n|---:|---|---|---:|---|---|");
        for e in &run.examples {
            let _ = writeln!(
                md,
                "| {:.1} | {} | {:?} | {} | {} | {} |",
                e.at_seconds,
                e.kind.name(),
                e.class,
                e.status.map(|s| s.to_string()).unwrap_or_default(),
                e.code.as_deref().unwrap_or(""),
                e.what
            );
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Samples\n");
    let _ = writeln!(
        md,
        "Every {:.0} s; the gateway's `/proc/<pid>/status` (VmRSS, RssAnon, threads), `/proc/<pid>/fd` and its data folder. Windows are since the previous sample.\n",
        run.sample_seconds
    );
    let _ = writeln!(
        md,
        "| s | RSS MiB | anon MiB | threads | fds | data MiB | WAL MiB | proxy req | proxy req/s | proxy mean ms | API req | errors so far |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, s) in run.samples.iter().enumerate() {
        let previous = i.checked_sub(1).and_then(|p| run.samples.get(p));
        let (proxy, mean_ms, api) = window(previous, s);
        let span = previous.map(|p| s.seconds - p.seconds).filter(|d| *d > 0.0);
        let rate = span.map(|d| format!("{:.1}", proxy as f64 / d)).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "| {:.0} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} | {proxy} | {rate} | {mean_ms:.2} | {api} | {} |",
            s.seconds,
            s.rss_kib as f64 / 1024.0,
            s.rss_anon_kib as f64 / 1024.0,
            s.threads,
            s.fds,
            mib(s.data_bytes),
            mib(s.wal_bytes),
            s.tally.errors()
        );
    }
    md
}

fn add(total: &mut KindCounts, c: &KindCounts) {
    total.done += c.done;
    total.cache_hits += c.cache_hits;
    total.transport += c.transport;
    total.server_error += c.server_error;
    total.unexpected_status += c.unexpected_status;
    total.unexpected_body += c.unexpected_body;
    total.micros_total += c.micros_total;
    total.micros_max = total.micros_max.max(c.micros_max);
}

fn row(md: &mut String, name: &str, c: &KindCounts) {
    let mean = if c.done == 0 { 0.0 } else { c.micros_total as f64 / c.done as f64 / 1000.0 };
    let _ = writeln!(
        md,
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {mean:.2} | {:.1} |",
        c.done,
        c.cache_hits,
        c.errors(),
        c.transport,
        c.server_error,
        c.unexpected_status,
        c.unexpected_body,
        c.micros_max as f64 / 1000.0
    );
}

pub fn write(out: &Path, run: &Run) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(&json_report(run)).map_err(|e| e.to_string())?;
    let json_path = out.join("soak.json");
    std::fs::write(&json_path, json + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;
    let md_path = out.join("soak.md");
    std::fs::write(&md_path, markdown(run)).map_err(|e| format!("{}: {e}", md_path.display()))?;
    Ok(())
}
