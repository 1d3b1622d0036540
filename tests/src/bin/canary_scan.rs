//! Run after the whole test suite: fails if any canary key stored by any test appears in any
//! captured answer, log line, audit entry or database file under the artifacts folder.

use std::process::ExitCode;

fn main() -> ExitCode {
    let root = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(stockpulse_tests::artifacts_dir);
    let (canaries, files, leaks) = stockpulse_tests::canary::scan(&root);
    if canaries == 0 {
        eprintln!("canary scan: no canaries recorded under {} — the tests did not run?", root.display());
        return ExitCode::FAILURE;
    }
    if leaks.is_empty() {
        println!("canary scan: {canaries} canary keys, {files} files under {}: no leak", root.display());
        ExitCode::SUCCESS
    } else {
        for leak in &leaks {
            eprintln!("canary scan: LEAK of {} in {}", leak.canary, leak.file.display());
        }
        eprintln!("canary scan: {} leaks", leaks.len());
        ExitCode::FAILURE
    }
}
