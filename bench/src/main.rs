//! `stockpulse-bench`: the same request through our local gateway, LiteLLM and Portkey, and
//! straight to the upstream, at fixed rates and at saturation, one target at a time on this
//! machine; writes `results.json`, `results.md` and `latency.svg`. `scripts/bench` installs the
//! tools and builds the binaries first; see BENCHMARKS.md.

mod chart;
mod load;
mod process;
mod report;
mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::process::Command;

use load::{Rate, run_oha};
use process::{Managed, PeakRss, clock_ticks, machine_jiffies, sample_tree};
use report::{Machine, Phase, Report, Settings, TargetReport};
use targets::{Programs, Running, TargetKind, UpstreamKeys};

#[derive(Parser, Debug)]
#[command(name = "stockpulse-bench", about = "Proxy overhead side by side: direct, StockPulse Keys, LiteLLM, Portkey")]
struct Args {
    /// Where results.json, results.md and latency.svg go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Scratch space: logs of every process, the gateway's data, LiteLLM's config.
    #[arg(long, default_value = "target/bench-work")]
    work: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds of load before the measurements of each target (not recorded).
    #[arg(long, default_value_t = 5)]
    warmup_seconds: u64,
    /// Requests per second, or `max` for saturation.
    #[arg(long, value_delimiter = ',', default_value = "500,2000,max")]
    rates: Vec<Rate>,
    #[arg(long, value_delimiter = ',', value_enum, default_value = "direct,floor,stockpulse,litellm,portkey")]
    targets: Vec<TargetKind>,
    /// Connections the load generator keeps open.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    #[arg(long)]
    oha: PathBuf,
    #[arg(long)]
    fake_upstream: PathBuf,
    /// The `bare-proxy` binary (the floor target).
    #[arg(long)]
    floor: Option<PathBuf>,
    /// The `stockpulse-local` binary (an optimised build).
    #[arg(long)]
    gateway: PathBuf,
    /// LiteLLM's `litellm` command (from its virtualenv).
    #[arg(long)]
    litellm: Option<PathBuf>,
    /// Worker processes of LiteLLM (one per core by default, like our gateway's threads).
    #[arg(long, default_value_t = 2)]
    litellm_workers: u32,
    /// Portkey's `build/start-server.js`.
    #[arg(long)]
    portkey: Option<PathBuf>,
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// Extra `name=version` lines for the report (the script passes what it installed).
    #[arg(long = "tool", value_parser = parse_tool)]
    tools: Vec<(String, String)>,
    /// What the Lambda benchmark test wrote (start-up, warm handler times, AWS calls).
    #[arg(long)]
    lambda_results: Option<PathBuf>,
    /// `scripts/build-lambdas`' output folder (`<function>/bootstrap.zip`).
    #[arg(long)]
    lambda_zips: Option<PathBuf>,
}

fn parse_tool(value: &str) -> Result<(String, String), String> {
    value.split_once('=').map(|(n, v)| (n.to_owned(), v.to_owned())).ok_or_else(|| "expected NAME=VERSION".into())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stockpulse-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn description(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Direct => "the fake upstream called directly (the baseline).",
        TargetKind::Floor => {
            "the least a proxy can do: axum on tokio taking the request, one pooled reqwest client forwarding its body upstream \
             with a bearer key, the answer passed back; no checks, no storage, no log. What it adds over direct is the price of \
             the extra hop itself on this machine."
        }
        TargetKind::Stockpulse => {
            "our local gateway on embedded storage: token check, the workspace's key from the vault (in memory after the first request), \
             rate limit + quota + usage in one SQLite transaction per request, key injected, answer redacted and its token usage priced."
        }
        TargetKind::Litellm => {
            "LiteLLM's proxy, OpenAI pass-through to the fake upstream, the client authenticated with its master key, the request priced \
             from its local cost map (no spend database, see BENCHMARKS.md)."
        }
        TargetKind::Portkey => "Portkey's open-source gateway on Node.js, provider openai with the fake upstream as custom host.",
    }
}

async fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work).map_err(|e| format!("{}: {e}", args.work.display()))?;
    let work = std::fs::canonicalize(&args.work).map_err(|e| e.to_string())?;
    let mut targets_in_order = args.targets.clone();
    targets_in_order.sort();
    targets_in_order.dedup();
    if targets_in_order.first() != Some(&TargetKind::Direct) {
        return Err("the targets must include direct: every overhead is measured against it".into());
    }

    let keys = UpstreamKeys::new();
    let (upstream, upstream_process) = start_upstream(&args.fake_upstream, &keys, &work).await?;
    let programs = Programs {
        floor: args.floor.clone(),
        gateway: args.gateway.clone(),
        litellm: args.litellm.clone(),
        litellm_workers: args.litellm_workers,
        node: args.node.clone(),
        portkey: args.portkey.clone(),
    };
    let ticks = clock_ticks();
    let mut reports = Vec::new();
    for kind in targets_in_order {
        eprintln!("==> {}", kind.name());
        let running = targets::start(kind, &programs, &upstream, &keys, &work).await?;
        let measured = measure(&args, &running, &upstream, upstream_process.pid(), ticks).await;
        if let Some(process) = running.process {
            process.stop().await;
        }
        reports.push(measured?);
    }
    upstream_process.stop().await;

    report::add_overheads(&mut reports);
    let mut tools: BTreeMap<String, String> = args.tools.iter().cloned().collect();
    tools.insert("oha".into(), version_of(&args.oha).await);
    let mut report = Report {
        generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: "scripts/bench".into(),
        machine: machine(),
        settings: Settings {
            seconds: args.seconds,
            warmup_seconds: args.warmup_seconds,
            connections: args.connections,
            rates: args.rates.clone(),
            request: format!(
                "POST /v1/chat/completions ({} B JSON body; the upstream answers 200 at once with a 271 B chat completion)",
                targets::CHAT_BODY.len()
            ),
        },
        tools,
        targets: reports,
        goals: Vec::new(),
        lambda: lambda_report(&args)?,
    };
    report.goals = report::judge_goals(&report);
    if let Some(goal) = report.lambda.as_ref().and_then(report::lambda_goal) {
        report.goals.push(goal);
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("results.json"), json + "\n").map_err(|e| e.to_string())?;
    let markdown = report::markdown(&report);
    std::fs::write(args.out.join("results.md"), &markdown).map_err(|e| e.to_string())?;
    chart::write_svg(&report, &args.out.join("latency.svg"))?;
    println!("{markdown}");
    println!("written: {}/results.json, results.md, latency.svg", args.out.display());
    Ok(())
}

async fn start_upstream(program: &Path, keys: &UpstreamKeys, work: &Path) -> Result<(String, Managed), String> {
    let port = targets::free_port()?;
    let mut command = Command::new(program);
    command.arg("--port").arg(port.to_string());
    let named: Vec<String> = <TargetKind as clap::ValueEnum>::value_variants()
        .iter()
        .map(|kind| format!("{}={}", kind.name(), keys.for_target(*kind)))
        .collect();
    command.env("FAKE_OPENAI_KEYS", named.join(","));
    let mut process = Managed::spawn("fake-upstream", command, work)?;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!("the fake upstream exited ({status}):\n{}", process.log_tail()));
        }
        if reqwest::get(format!("{url}/__bench/stats")).await.is_ok() {
            return Ok((url, process));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the fake upstream did not start:\n{}", process.log_tail()))
}

async fn measure(args: &Args, running: &Running, upstream: &str, upstream_pid: u32, ticks: f64) -> Result<TargetReport, String> {
    targets::check(running, upstream).await?;
    let pid = running.process.as_ref().map(Managed::pid);
    let lifetime_peak = pid.map(PeakRss::start);
    if args.warmup_seconds > 0 {
        let warm_rate = args.rates.iter().copied().find(|r| matches!(r, Rate::PerSecond(_))).unwrap_or(Rate::Max);
        run_oha(&args.oha, &running.request, warm_rate, args.warmup_seconds, args.connections).await?;
    }
    let mut phases = Vec::new();
    for rate in &args.rates {
        // Let the previous measurement's connections close and the machine settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before_target = pid.map(sample_tree);
        let before_upstream = sample_tree(upstream_pid);
        let before_machine = machine_jiffies();
        let before_count = targets::upstream_count(upstream, running.kind).await?;
        let peak = pid.map(PeakRss::start);
        let load = run_oha(&args.oha, &running.request, *rate, args.seconds, args.connections).await?;
        let peak_rss = match peak {
            Some(p) => Some(p.finish().await),
            None => None,
        };
        let after_machine = machine_jiffies();
        let after_upstream = sample_tree(upstream_pid);
        let after_target = pid.map(sample_tree);
        let after_count = targets::upstream_count(upstream, running.kind).await?;
        let busy = (after_machine.0 - before_machine.0) as f64 / (after_machine.1 - before_machine.1).max(1) as f64 * 100.0;
        eprintln!(
            "    {:>10}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
            rate.label(),
            load.throughput,
            load.p50_ms,
            load.p99_ms,
            load.errors
        );
        phases.push(Phase {
            rate: *rate,
            upstream_requests: after_count - before_count,
            load,
            added_p50_ms: None,
            added_p90_ms: None,
            added_p99_ms: None,
            cpu_seconds: before_target.zip(after_target).map(|(b, a)| a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / ticks),
            upstream_cpu_seconds: after_upstream.cpu_ticks.saturating_sub(before_upstream.cpu_ticks) as f64 / ticks,
            machine_busy_percent: busy,
            peak_rss_mib: peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
        });
    }
    let peak_rss_mib = match lifetime_peak {
        Some(p) => Some(p.finish().await as f64 / (1024.0 * 1024.0)),
        None => None,
    };
    Ok(TargetReport {
        name: running.kind.name().into(),
        version: running.version.clone(),
        description: description(running.kind).into(),
        peak_rss_mib,
        phases,
    })
}

fn lambda_report(args: &Args) -> Result<Option<report::LambdaReport>, String> {
    if args.lambda_results.is_none() && args.lambda_zips.is_none() {
        return Ok(None);
    }
    let emulator = match &args.lambda_results {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut arm64_zip_bytes = BTreeMap::new();
    if let Some(dir) = &args.lambda_zips {
        for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            if let Ok(meta) = std::fs::metadata(entry.path().join("bootstrap.zip")) {
                arm64_zip_bytes.insert(entry.file_name().to_string_lossy().into_owned(), meta.len());
            }
        }
    }
    Ok(Some(report::LambdaReport { arm64_zip_bytes, emulator }))
}

async fn version_of(program: &Path) -> String {
    match Command::new(program).arg("--version").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => "unknown".into(),
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    Machine {
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu_model,
        memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
        kernel,
    }
}
