//! Canary keys: every credential a test stores is unique and registered, so one scan after the
//! whole run can prove that none of them leaked into an answer, a log line, an audit entry, a
//! database file or moto's state (`<artifacts>/moto/`, dumped by `tests/moto_dump.py`).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::artifacts_dir;

/// A fresh canary value that looks like a key of the given shape: `prefix` + unique body.
/// It is recorded in the run's canary list before it is returned.
pub fn canary(prefix: &str) -> String {
    let body = uuid::Uuid::new_v4().simple().to_string();
    let value = format!("{prefix}CANARY{body}");
    record(&value);
    value
}

fn record(value: &str) {
    let dir = artifacts_dir().join("canaries");
    std::fs::create_dir_all(&dir).expect("canary dir");
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{}.txt", std::process::id()))).expect("canary file");
    writeln!(file, "{value}").expect("write canary");
}

/// Every canary recorded under `root`.
pub fn recorded(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("canaries")) {
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                out.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The spellings a canary could leak in.
pub fn spellings(value: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut list = vec![value.to_owned(), utf8_percent_encode(value, NON_ALPHANUMERIC).to_string(), b64.encode(value)];
    // The unique body alone, in case a prefix was stripped or the value was cut.
    // (Not when the body is too short to be unique: an empty one would match every file.)
    if let Some((_, body)) = value.split_once("CANARY")
        && body.len() >= 16
    {
        list.push(body.to_owned());
    }
    list.sort();
    list.dedup();
    list
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub canary: String,
    pub file: PathBuf,
}

/// Scans every file under `root` (except the canary list itself) for every spelling of every
/// canary, byte for byte (SQLite pages, WAL files and logs alike), in one pass per file.
pub fn scan(root: &Path) -> (usize, usize, Vec<Leak>) {
    let canaries = recorded(root);
    let mut owner = Vec::new();
    let mut patterns = Vec::new();
    for (index, canary) in canaries.iter().enumerate() {
        for spelling in spellings(canary) {
            owner.push(index);
            patterns.push(spelling);
        }
    }
    let mut files = Vec::new();
    collect_files(root, &mut files);
    files.retain(|f| !f.starts_with(root.join("canaries")));
    let mut leaks = Vec::new();
    if patterns.is_empty() {
        return (0, files.len(), leaks);
    }
    let automaton = aho_corasick::AhoCorasick::new(&patterns).expect("canary patterns build an automaton");
    for file in &files {
        let Ok(bytes) = std::fs::read(file) else { continue };
        let mut hit: Vec<usize> = automaton.find_overlapping_iter(&bytes).map(|m| owner[m.pattern().as_usize()]).collect();
        hit.sort_unstable();
        hit.dedup();
        leaks.extend(hit.into_iter().map(|i| Leak { canary: canaries[i].clone(), file: file.clone() }));
    }
    (canaries.len(), files.len(), leaks)
}

/// Dumps of moto servers that could not be made (`moto/*.dump-failed.txt`, left by
/// `moto::MotoServer::stop`): what those servers held was not scanned.
pub fn failed_dumps(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect_files(&root.join("moto"), &mut files);
    files.retain(|f| f.to_string_lossy().ends_with(".dump-failed.txt"));
    files.sort();
    files
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_a_planted_canary_in_every_spelling() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("canaries")).unwrap();
        std::fs::write(root.path().join("canaries/1.txt"), "sk-CANARYabc123def456\n").unwrap();
        std::fs::write(root.path().join("clean.log"), "nothing here").unwrap();
        assert_eq!(scan(root.path()).2, vec![]);
        for (i, spelling) in spellings("sk-CANARYabc123def456").into_iter().enumerate() {
            let sub = root.path().join(format!("deep/{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join("x.bin"), [b"\x00\x01".as_slice(), spelling.as_bytes(), b"\xff"].concat()).unwrap();
        }
        let (canaries, _, leaks) = scan(root.path());
        assert_eq!(canaries, 1);
        assert_eq!(leaks.len(), spellings("sk-CANARYabc123def456").len());
    }
}
