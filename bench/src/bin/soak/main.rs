//! `soak`: minutes of mixed API and proxy load on loopback against the local gateway, watching
//! its errors (goal 0) and its memory (goal flat). `scripts/soak` builds the binaries and runs
//! this; it writes `soak.json` and `soak.md`, and exits non-zero when there was an error, the
//! memory grew beyond the limits, an audit chain did not verify or the gateway died.

mod call;
mod leak_scan;
// Shared with `stockpulse-bench` (process groups, logs); the soak uses only part of it.
mod probe;
#[allow(dead_code)]
#[path = "../../process.rs"]
mod process;
mod report;
mod stand_up;
mod tally;
mod verdict;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::watch;

use report::{Run, Sample};
use stand_up::{Programs, World, stand_up};
use tally::Tally;
use verdict::{Limits, Point, judge_memory};
use workload::{Load, Pace};

#[derive(Parser, Debug)]
#[command(name = "soak", about = "Mixed API and proxy load on loopback; reports errors and the gateway's memory over time")]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seconds between two samples of the gateway.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Proxied requests per second (both workspaces together): a steady rate well below
    /// saturation (about 3,900 req/s on 2 cores, BENCHMARKS.md), so that the API traffic beside
    /// it is served and latency stays meaningful.
    #[arg(long, default_value_t = 200.0)]
    proxy_rate: f64,
    /// Proxied requests in flight at most. At 200 req/s and ~2 ms each about one is; the cap
    /// only matters when the machine stalls, and then keeps the driver from opening ever more
    /// connections (each one a socket and buffers in the gateway) to catch up.
    #[arg(long, default_value_t = 32)]
    max_in_flight: usize,
    /// Milliseconds between two steps of a key's life (per workspace).
    #[arg(long, default_value_t = 300)]
    key_step_ms: u64,
    /// Milliseconds between two read-side requests (per workspace).
    #[arg(long, default_value_t = 500)]
    read_ms: u64,
    /// Most the median resident set of the last third may exceed that of the second third.
    #[arg(long, default_value_t = 2.0)]
    max_growth_mib: f64,
    /// Most the resident set may rise per minute after warm-up (least-squares slope).
    #[arg(long, default_value_t = 0.5)]
    max_slope_mib_per_minute: f64,
    /// The `stockpulse-local` binary (an optimised build).
    #[arg(long)]
    gateway: PathBuf,
    /// The `fake-openai` binary.
    #[arg(long)]
    fake_upstream: PathBuf,
    /// Scratch space: the gateway's data folder and the logs of both processes.
    #[arg(long, default_value = "target/soak-work")]
    work: PathBuf,
    /// Where soak.json and soak.md go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The command line to print in the report (the script passes its own).
    #[arg(long, default_value = "scripts/soak")]
    command: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match soak(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn sample(world: &mut World, seconds: f64, tally: &Tally) -> Result<Sample, String> {
    if let Ok(Some(status)) = world.gateway.child.try_wait() {
        return Err(format!("the gateway exited ({status}) at {seconds:.0} s:\n{}", world.gateway.log_tail()));
    }
    let pid = world.gateway.pid();
    let status = probe::process_status(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status at {seconds:.0} s"))?;
    Ok(Sample {
        seconds,
        rss_kib: status.rss_kib,
        rss_anon_kib: status.rss_anon_kib,
        threads: status.threads,
        fds: probe::open_fds(pid).unwrap_or(0),
        data_bytes: probe::folder_bytes(&world.data_dir),
        wal_bytes: probe::file_bytes(&world.data_dir.join("stockpulse.db-wal")),
        tally: tally.snapshot(),
    })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, Linux {}", kernel.trim())
}

async fn soak(args: &Args) -> Result<bool, String> {
    std::fs::create_dir_all(&args.work).map_err(|e| format!("{}: {e}", args.work.display()))?;
    let programs = Programs { gateway: &args.gateway, fake_upstream: &args.fake_upstream };
    eprintln!("soak: starting the fake upstream and the gateway in {}", args.work.display());
    let mut world = stand_up(&programs, &args.work).await?;
    let gateway_version = stand_up::gateway_version(&args.gateway).await;
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let pace = Pace {
        proxy_rate: args.proxy_rate,
        max_in_flight: args.max_in_flight.max(1),
        key_step_pause: Duration::from_millis(args.key_step_ms),
        read_pause: Duration::from_millis(args.read_ms),
    };
    let started = Instant::now();
    let tally = Arc::new(Tally::new(started));
    // The load's own connections: enough idle ones kept for the rate, so that a steady load
    // does not open and close sockets (which would show as fd churn in the gateway).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(pace.max_in_flight + 8)
        .build()
        .map_err(|e| e.to_string())?;
    let sessions = std::mem::take(&mut world.sessions);
    let load = Arc::new(Load { client, base: world.base.clone(), sessions, tally: tally.clone(), pace });

    let mut samples = vec![sample(&mut world, 0.0, &tally)?];
    let (stop, stopped) = watch::channel(false);
    let driver = tokio::spawn(workload::run(load.clone(), stopped));
    eprintln!("soak: {} s of load, a sample every {} s", args.seconds, args.sample_seconds);

    let duration = Duration::from_secs(args.seconds);
    let every = Duration::from_secs(args.sample_seconds.max(1));
    let mut gateway_exit = None;
    let mut next = every;
    while next <= duration {
        tokio::time::sleep_until((started + next).into()).await;
        match sample(&mut world, next.as_secs_f64(), &tally) {
            Ok(s) => {
                eprintln!(
                    "soak: {:>4} s  RSS {:>6.1} MiB  fds {:>4}  proxy {:>7}  API {:>6}  errors {}",
                    next.as_secs(),
                    s.rss_kib as f64 / 1024.0,
                    s.fds,
                    s.tally.proxy_done(),
                    s.tally.api_done(),
                    s.tally.errors()
                );
                samples.push(s);
            }
            Err(e) => {
                gateway_exit = Some(e);
                break;
            }
        }
        next += every;
    }
    // Stop and let every request in flight finish, so that the totals count each outcome.
    let _ = stop.send(true);
    let proxy_not_sent = driver.await.unwrap_or(0);
    let duration_seconds = if gateway_exit.is_some() { started.elapsed().as_secs_f64() } else { duration.as_secs_f64() };

    let mut final_verify = BTreeMap::new();
    for session in &load.sessions {
        let verified = load.client.get(format!("{}/api/audit/verify", world.base)).bearer_auth(&session.member).send().await;
        if let Ok(response) = verified
            && let Ok(body) = response.json::<serde_json::Value>().await
        {
            final_verify.insert(session.workspace.clone(), body);
        }
    }
    let upstream = stand_up::upstream_stats(&world.fake_url).await;
    let logs = [world.gateway.log.clone(), world.fake.log.clone()];
    world.gateway.stop().await;
    world.fake.stop().await;
    // After the stop, so that the log is complete and the WAL is what the gateway left.
    let (files_scanned, plaintext_keys) = leak_scan::scan(&[&logs[0], &logs[1], &world.data_dir]);

    let points: Vec<Point> = samples.iter().map(|s| Point { seconds: s.seconds, rss_kib: s.rss_kib }).collect();
    let limits = Limits { max_growth_mib: args.max_growth_mib, max_slope_mib_per_minute: args.max_slope_mib_per_minute };
    let memory = judge_memory(&points, duration_seconds, limits);
    let run = Run {
        started_at,
        command: args.command.clone(),
        gateway_version,
        machine: machine(),
        duration_seconds,
        sample_seconds: every.as_secs_f64(),
        pace,
        samples,
        totals: tally.snapshot(),
        examples: tally.examples(),
        proxy_not_sent,
        memory,
        final_verify,
        upstream,
        gateway_exit,
        files_scanned,
        plaintext_keys,
    };
    report::write(&args.out, &run)?;
    eprintln!(
        "soak: {} — {} errors in {} proxied and {} API requests; memory {} ({}); wrote {}/soak.{{json,md}}",
        if run.passed() { "PASS" } else { "FAIL" },
        run.errors(),
        run.totals.proxy_done(),
        run.totals.api_done(),
        if run.memory.flat { "flat" } else { "NOT flat" },
        run.memory.reason,
        args.out.display()
    );
    if let Some(exit) = &run.gateway_exit {
        eprintln!("soak: {exit}");
    }
    Ok(run.passed())
}
