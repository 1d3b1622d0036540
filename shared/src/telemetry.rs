//! Logging setup: `tracing` with JSON lines on Lambda, text locally. Key material cannot reach a
//! log line through the type system (`KeyMaterial` has no Debug/Display); a test scans every log
//! line of the test run for the canary keys it stored.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Library internals that would log what they carry stay quiet whatever `RUST_LOG` asks: at debug
/// level the HTTP crates log outgoing request lines (a provider URL can carry a key in its query);
/// at trace level the AWS SDK's orchestrator logs whole request bodies (a Secrets Manager
/// `PutSecretValue` carries the plaintext credential) and the Lambda runtime logs every raw event
/// (the body of `POST /api/keys` is the credential).
pub const QUIET_INTERNALS: [&str; 10] = [
    "lambda_runtime=info",
    "reqwest=warn",
    "hyper=warn",
    "hyper_util=warn",
    "h2=warn",
    "rustls=warn",
    "aws_smithy_runtime=warn",
    "aws_smithy_runtime_api=warn",
    "aws_smithy_http=warn",
    "aws_smithy_http_client=warn",
];

/// The log filter: `RUST_LOG` (default `info`) with the HTTP internals kept quiet.
pub fn filter(default: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    for directive in QUIET_INTERNALS {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let filter = filter("info");
    // Logs go to stderr: stdout stays free for what a command prints (the consistency report).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
