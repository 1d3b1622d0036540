//! Run after the whole test suite: fails if any canary key stored by any test appears in any
//! captured answer, log line, audit entry, database file or moto dump (`moto/`: DynamoDB items,
//! Secrets Manager secrets, KMS, ... of every moto server of the run) under the artifacts folder,
//! or if a moto server could not be dumped.

use std::process::ExitCode;

fn main() -> ExitCode {
    let root = std::env::args().nth(1).map(std::path::PathBuf::from).unwrap_or_else(stockpulse_tests::artifacts_dir);
    let (canaries, files, leaks) = stockpulse_tests::canary::scan(&root);
    if canaries == 0 {
        eprintln!("canary scan: no canaries recorded under {} — the tests did not run?", root.display());
        return ExitCode::FAILURE;
    }
    let failed = stockpulse_tests::canary::failed_dumps(&root);
    for file in &failed {
        let why = std::fs::read_to_string(file).unwrap_or_default();
        eprintln!("canary scan: a moto server was not dumped ({}): {}", file.display(), why.trim());
    }
    if leaks.is_empty() && failed.is_empty() {
        println!("canary scan: {canaries} canary keys, {files} files under {}: no leak", root.display());
        ExitCode::SUCCESS
    } else {
        for leak in &leaks {
            eprintln!("canary scan: LEAK of {} in {}", leak.canary, leak.file.display());
        }
        eprintln!("canary scan: {} leaks, {} moto servers not dumped", leaks.len(), failed.len());
        ExitCode::FAILURE
    }
}
