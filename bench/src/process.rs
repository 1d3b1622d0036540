//! Processes under test: started in a process group of their own with their output in a log
//! file, measured through `/proc` (the whole process tree: LiteLLM's workers are children), and
//! stopped with their whole group.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Managed {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Managed {
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Managed, String> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        command.stdin(Stdio::null()).stdout(file).stderr(err).process_group(0).kill_on_drop(true);
        let child = command.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Managed { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM to the group, then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        let pid = self.pid();
        if pid != 0 {
            let _ = std::process::Command::new("kill").args(["-TERM", "--", &format!("-{pid}")]).status();
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
                let _ = self.child.wait().await;
            }
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Stat {
    parent: u32,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    rss_pages: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers of proc(5) minus 3: ppid is 4, utime 14, stime 15, rss 24.
    Some(Stat {
        parent: fields.get(1)?.parse().ok()?,
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

/// CPU time and resident memory of a process and all its descendants, right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeSample {
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub processes: usize,
}

pub fn sample_tree(root: u32) -> TreeSample {
    let mut stats: HashMap<u32, Stat> = HashMap::new();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(stat) = read_stat(pid)
            {
                children.entry(stat.parent).or_default().push(pid);
                stats.insert(pid, stat);
            }
        }
    }
    let mut sample = TreeSample::default();
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        if let Some(stat) = stats.get(&pid) {
            sample.cpu_ticks += stat.cpu_ticks;
            sample.rss_bytes += stat.rss_pages * 4096;
            sample.processes += 1;
            frontier.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    sample
}

/// Busy and total jiffies of the whole machine (`/proc/stat`, first line).
pub fn machine_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = text.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle.min(total), total)
}

/// Samples a process tree every 100 ms until stopped; keeps the peak resident memory.
pub struct PeakRss {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakRss {
    pub fn start(root: u32) -> PeakRss {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(sample_tree(root).rss_bytes);
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            peak.max(sample_tree(root).rss_bytes)
        });
        PeakRss { stop, task }
    }

    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}
