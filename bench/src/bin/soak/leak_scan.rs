//! After the run: did any key value the soak stored end up in plain text where it must not be?
//! Every value the soak stores starts with `CANARY_PREFIX` (`workload::canary_key`) and nothing
//! else writes that prefix, so one search per file finds them all: in the gateway's log and in
//! its data folder (the SQLite database and WAL hold keys only sealed; the masked form shows the
//! catalog's prefix `sk-proj-`, never the soak's).

use std::path::{Path, PathBuf};

use serde::Serialize;

pub const CANARY_PREFIX: &str = "sk-proj-soak-";

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub file: String,
    pub occurrences: u64,
}

pub fn occurrences(haystack: &[u8], needle: &[u8]) -> u64 {
    if needle.is_empty() {
        return 0;
    }
    haystack.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

fn files_below(path: &Path, found: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            files_below(&entry.path(), found);
        }
    } else if path.is_file() {
        found.push(path.to_path_buf());
    }
}

/// Files under `paths` (files or folders) that contain the prefix, with how often. A file that
/// cannot be read is reported as a finding too, so that nothing passes unread.
pub fn scan(paths: &[&Path]) -> (usize, Vec<Finding>) {
    let mut files = Vec::new();
    for path in paths {
        files_below(path, &mut files);
    }
    let findings = files
        .iter()
        .filter_map(|file| {
            let occurrences = match std::fs::read(file) {
                Ok(bytes) => occurrences(&bytes, CANARY_PREFIX.as_bytes()),
                Err(_) => u64::MAX,
            };
            (occurrences > 0).then(|| Finding { file: file.display().to_string(), occurrences })
        })
        .collect();
    (files.len(), findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_occurrence_and_finds_them_in_nested_files() {
        assert_eq!(occurrences(b"a sk-proj-soak-1 b sk-proj-soak-2", CANARY_PREFIX.as_bytes()), 2);
        assert_eq!(occurrences(b"sk-proj-********abcd", CANARY_PREFIX.as_bytes()), 0);
        let folder = std::env::temp_dir().join(format!("soak-leak-scan-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(folder.join("inner")).unwrap();
        std::fs::write(folder.join("clean.log"), "nothing here").unwrap();
        std::fs::write(folder.join("inner/leaky.db"), format!("xx{CANARY_PREFIX}abc")).unwrap();
        let (scanned, findings) = scan(&[&folder]);
        assert_eq!(scanned, 2);
        assert_eq!(findings.len(), 1);
        assert!(findings[0].file.ends_with("leaky.db"));
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
