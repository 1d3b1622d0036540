//! What the soak watches in the gateway from outside: its memory and threads
//! (`/proc/<pid>/status`), its open file descriptors (`/proc/<pid>/fd`) and the size of its data
//! folder (SQLite database, WAL and shared-memory index, master key).

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    /// Resident set (`VmRSS`): heap, stacks, mapped files and shared memory that are in RAM.
    pub rss_kib: u64,
    /// The anonymous part of it (`RssAnon`): mostly the heap, where a leak would show.
    pub rss_anon_kib: u64,
    pub threads: u64,
}

/// Reads the fields of `/proc/<pid>/status` the soak reports; `None` if `VmRSS` is missing (the
/// process is gone or a zombie).
pub fn parse_status(text: &str) -> Option<ProcessStatus> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|line| line.starts_with(name) && line[name.len()..].starts_with(':'))?;
        line[name.len() + 1..].split_whitespace().next()?.parse().ok()
    };
    Some(ProcessStatus { rss_kib: field("VmRSS")?, rss_anon_kib: field("RssAnon").unwrap_or(0), threads: field("Threads").unwrap_or(0) })
}

pub fn process_status(pid: u32) -> Option<ProcessStatus> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Open file descriptors: sockets (clients, the upstream pool), the SQLite files, the log.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Bytes of the files in a folder and its subfolders (apparent sizes; a file that vanishes while
/// it is walked, such as a WAL being reset, counts as zero).
pub fn folder_bytes(folder: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(folder) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => folder_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The size of one file, zero if it does not exist (the WAL between checkpoints, for one).
pub fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_exact_name() {
        let text =
            "Name:\tstockpulse-loca\nVmHWM:\t   30000 kB\nVmRSS:\t   24576 kB\nRssAnon:\t   12000 kB\nRssFile:\t   10000 kB\nThreads:\t5\n";
        assert_eq!(parse_status(text), Some(ProcessStatus { rss_kib: 24576, rss_anon_kib: 12000, threads: 5 }));
    }

    #[test]
    fn a_status_without_rss_is_no_sample() {
        assert_eq!(parse_status("Name:\tzombie\nState:\tZ (zombie)\nThreads:\t1\n"), None);
    }

    #[test]
    fn folder_sizes_add_up_files_below() {
        let folder = std::env::temp_dir().join(format!("soak-probe-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(folder.join("inner")).unwrap();
        std::fs::write(folder.join("a"), [0u8; 100]).unwrap();
        std::fs::write(folder.join("inner/b"), [0u8; 23]).unwrap();
        assert_eq!(folder_bytes(&folder), 123);
        assert_eq!(file_bytes(&folder.join("missing")), 0);
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
