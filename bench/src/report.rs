//! What a run found, as JSON (everything) and Markdown (the tables and the goals of issue 9).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::load::{LoadResult, Rate};

#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub command: String,
    pub machine: Machine,
    pub settings: Settings,
    pub tools: BTreeMap<String, String>,
    pub targets: Vec<TargetReport>,
    pub goals: Vec<Goal>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub seconds: u64,
    pub warmup_seconds: u64,
    pub connections: u32,
    pub rates: Vec<Rate>,
    pub request: String,
}

#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Peak resident memory of the target's process tree over the whole run (MiB).
    pub peak_rss_mib: Option<f64>,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub rate: Rate,
    pub load: LoadResult,
    /// Latency above the direct call's at the same rate and percentile (ms).
    pub added_p50_ms: Option<f64>,
    pub added_p90_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    /// CPU time of the target's process tree during the measurement (seconds).
    pub cpu_seconds: Option<f64>,
    pub upstream_cpu_seconds: f64,
    /// Share of both cores busy during the measurement (load generator and upstream included).
    pub machine_busy_percent: f64,
    pub peak_rss_mib: Option<f64>,
    /// Requests the upstream received with this target's key during the measurement.
    pub upstream_requests: u64,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

impl Report {
    pub fn target(&self, name: &str) -> Option<&TargetReport> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn phase(&self, name: &str, rate: Rate) -> Option<&Phase> {
        self.target(name)?.phases.iter().find(|p| p.rate == rate)
    }
}

/// Fills in latency added over the direct call, per rate.
pub fn add_overheads(targets: &mut [TargetReport]) {
    let direct: Vec<(Rate, LoadResult)> =
        targets.iter().filter(|t| t.name == "direct").flat_map(|t| t.phases.iter().map(|p| (p.rate, p.load.clone()))).collect();
    for target in targets.iter_mut() {
        for phase in &mut target.phases {
            if let Some((_, base)) = direct.iter().find(|(rate, _)| *rate == phase.rate) {
                phase.added_p50_ms = Some(phase.load.p50_ms - base.p50_ms);
                phase.added_p90_ms = Some(phase.load.p90_ms - base.p90_ms);
                phase.added_p99_ms = Some(phase.load.p99_ms - base.p99_ms);
            }
        }
    }
}

/// Below this an added latency is indistinguishable from none (oha's clock and the noise of a
/// shared machine): ratios divide by at least this.
const RESOLUTION_MS: f64 = 0.001;

/// Issue 9's goals, judged from the run.
pub fn judge_goals(report: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    let at = Rate::PerSecond(2000);
    let ours = report.phase("stockpulse", at);
    let added = |p: Option<&Phase>, f: fn(&Phase) -> Option<f64>| p.and_then(f);
    let budget = |goal: &str, value: Option<f64>, limit: f64| Goal {
        goal: goal.into(),
        measured: value.map(|v| format!("{v:.3} ms")).unwrap_or_else(|| "not measured".into()),
        met: value.map(|v| v <= limit),
    };
    goals.push(budget("added latency p50 ≤ 0.3 ms at 2,000 req/s", added(ours, |p| p.added_p50_ms), 0.3));
    goals.push(budget("added latency p99 ≤ 1 ms at 2,000 req/s", added(ours, |p| p.added_p99_ms), 1.0));
    let ours_ok = ours.is_some_and(|p| p.load.errors == 0);
    goals.push(Goal {
        goal: "no errors at 2,000 req/s".into(),
        measured: ours
            .map(|p| format!("{} errors of {} requests", p.load.errors, p.load.requests))
            .unwrap_or_else(|| "not measured".into()),
        met: ours.map(|_| ours_ok),
    });
    for (other, factor) in [("litellm", 20.0), ("portkey", 5.0)] {
        let theirs = report.phase(other, at);
        for (label, pick) in [("p50", (|p: &Phase| p.added_p50_ms) as fn(&Phase) -> Option<f64>), ("p99", |p: &Phase| p.added_p99_ms)] {
            let ratio = match (added(ours, pick), added(theirs, pick)) {
                (Some(ours), Some(theirs)) => Some(theirs / ours.max(RESOLUTION_MS)),
                _ => None,
            };
            goals.push(Goal {
                goal: format!("added latency {label} at 2,000 req/s ≥ {factor}× lower than {other}"),
                measured: match (ratio, added(ours, pick), added(theirs, pick)) {
                    (Some(r), Some(o), Some(t)) => format!("{r:.0}× ({other} {t:.3} ms, ours {o:.3} ms)"),
                    _ => "not measured".into(),
                },
                met: ratio.map(|r| r >= factor),
            });
        }
    }
    let ours_max = report.phase("stockpulse", Rate::Max);
    let direct_max = report.phase("direct", Rate::Max);
    goals.push(Goal {
        goal: "saturation throughput as high as 2 cores allow (shared with the upstream and the load generator)".into(),
        measured: match (ours_max, direct_max) {
            (Some(o), Some(d)) => format!(
                "{:.0} req/s ({:.0} % of the direct call's {:.0} req/s; machine {:.0} % busy)",
                o.load.throughput,
                100.0 * o.load.throughput / d.load.throughput.max(1.0),
                d.load.throughput,
                o.machine_busy_percent
            ),
            (Some(o), None) => format!("{:.0} req/s", o.load.throughput),
            _ => "not measured".into(),
        },
        met: None,
    });
    goals
}

fn ms(value: f64) -> String {
    if value.is_nan() {
        "–".into()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn opt_ms(value: Option<f64>) -> String {
    value.map(ms).unwrap_or_else(|| "–".into())
}

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark run {}\n", report.generated_at);
    let m = &report.machine;
    let _ = writeln!(out, "Machine: {} cores ({}), {:.0} GiB, Linux {}.  ", m.cores, m.cpu_model, m.memory_gib, m.kernel);
    let s = &report.settings;
    let _ = writeln!(
        out,
        "Request: {}. {} s per measurement after a {} s warm-up, {} connections; fixed rates with oha's latency correction.  ",
        s.request, s.seconds, s.warmup_seconds, s.connections
    );
    let tools: Vec<String> = report.tools.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "Tools: {}.\n", tools.join(", "));
    for rate in &s.rates {
        let _ = writeln!(out, "## {}\n", rate.label());
        let _ = writeln!(
            out,
            "| target | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | added p50 | added p90 | added p99 | errors | CPU s | machine busy | peak RSS MiB |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for target in &report.targets {
            let Some(p) = target.phases.iter().find(|p| p.rate == *rate) else { continue };
            let l = &p.load;
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} % | {} |",
                target.name,
                l.throughput,
                ms(l.p50_ms),
                ms(l.p90_ms),
                ms(l.p99_ms),
                ms(l.max_ms),
                opt_ms(p.added_p50_ms),
                opt_ms(p.added_p90_ms),
                opt_ms(p.added_p99_ms),
                l.errors,
                p.cpu_seconds.map(|c| format!("{c:.1}")).unwrap_or_else(|| "–".into()),
                p.machine_busy_percent,
                p.peak_rss_mib.map(|r| format!("{r:.0}")).unwrap_or_else(|| "–".into()),
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## Targets\n");
    for target in &report.targets {
        let _ = writeln!(
            out,
            "- **{}** ({}): {} Peak RSS over the run: {}.",
            target.name,
            target.version,
            target.description,
            target.peak_rss_mib.map(|r| format!("{r:.0} MiB")).unwrap_or_else(|| "–".into())
        );
    }
    let errors: Vec<String> = report
        .targets
        .iter()
        .flat_map(|t| {
            t.phases
                .iter()
                .filter(|p| p.load.errors > 0)
                .map(move |p| format!("{} at {}: {:?}", t.name, p.rate.label(), p.load.error_kinds))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nErrors: {}.", errors.join("; "));
    }
    let _ = writeln!(out, "\n## Goals (issue 9)\n");
    let _ = writeln!(out, "| goal | measured | met |");
    let _ = writeln!(out, "|---|---|---|");
    for goal in &report.goals {
        let met = match goal.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(out, "| {} | {} | {} |", goal.goal, goal.measured, met);
    }
    out
}
