//! `stockpulse-local`: the whole product in one process on embedded storage.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use stockpulse_local::auth::TokenVerifier;
use stockpulse_local::{Gateway, serve};
use stockpulse_shared::app::App;
use stockpulse_shared::config::Config;

#[derive(Parser, Debug)]
#[command(name = "stockpulse-local", version, about = "StockPulse Keys: API and web UI in one local process on embedded storage")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "STOCKPULSE_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Folder for the SQLite database, the master key and the token secret.
    #[arg(long, env = "STOCKPULSE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Storage backend: `embedded` (SQLite + local master key) or `aws` (DynamoDB + KMS, configured
    /// by the usual AWS environment, e.g. AWS_ENDPOINT_URL for an emulator).
    #[arg(long, env = "STOCKPULSE_BACKEND", value_parser = ["embedded", "aws"], default_value = "embedded")]
    backend: String,
    /// Instead of serving: run the consistency check of this workspace, print it as JSON and
    /// exit 0 if it holds, 1 if not.
    #[arg(long, value_name = "WORKSPACE")]
    check_workspace: Option<String>,
    /// Dev mode: enables POST /api/dev/login.
    #[arg(long, env = "STOCKPULSE_DEV")]
    dev: bool,
    /// Folder of the web UI; defaults to frontend/dist, or the placeholder page if it is not built.
    #[arg(long, env = "STOCKPULSE_STATIC_DIR")]
    static_dir: Option<PathBuf>,
    /// Origins the web UI may call besides its own, space-separated (the Cognito domain of the
    /// sign-in, e.g. `https://example.auth.eu-west-1.amazoncognito.com`).
    #[arg(long, env = "STOCKPULSE_UI_CONNECT_SRC", value_delimiter = ' ', value_parser = parse_origin)]
    ui_connect_src: Vec<String>,
    /// Verify RS256 tokens from this JWKS instead of issuing local ones.
    #[arg(long, env = "STOCKPULSE_JWKS_URL", requires_all = ["jwt_issuer", "jwt_audience"])]
    jwks_url: Option<String>,
    #[arg(long, env = "STOCKPULSE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The app client id (matched against `aud`, or `client_id` in Cognito access tokens).
    #[arg(long, env = "STOCKPULSE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// A scope every token must carry, as the deployment's routes require (`stockpulse-keys/api`).
    #[arg(long, env = "STOCKPULSE_JWT_SCOPE", requires = "jwks_url")]
    jwt_scope: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Flags win over their environment variables; everything else comes from the environment.
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    vars.insert("STOCKPULSE_BACKEND".into(), args.backend.clone());
    vars.insert("STOCKPULSE_DATA_DIR".into(), args.data_dir.display().to_string());
    let config = match Config::from_vars(&vars) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("stockpulse-local: {e}");
            return ExitCode::from(2);
        }
    };
    stockpulse_shared::telemetry::init(config.log_format);
    match run(args, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stockpulse-local stopped");
            eprintln!("stockpulse-local: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let app = App::from_config(&config).await?;
    if let Some(workspace) = &args.check_workspace {
        let report = app.check_consistency(workspace).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return if report.ok { Ok(()) } else { Err(format!("workspace {workspace} is not consistent").into()) };
    }
    let tokens = match (&args.jwks_url, &args.jwt_issuer, &args.jwt_audience) {
        (Some(url), Some(issuer), Some(audience)) => {
            TokenVerifier::jwks(url, issuer, audience).await?.with_required_scope(args.jwt_scope.clone())
        }
        _ => TokenVerifier::local(&config.data_dir)?,
    };
    let static_dir = args.static_dir.unwrap_or_else(|| {
        let built = PathBuf::from("frontend/dist");
        if built.join("index.html").exists() { built } else { PathBuf::from("frontend/placeholder") }
    });
    let listener = tokio::net::TcpListener::bind(args.addr).await.map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let addr = listener.local_addr()?;
    let gateway = Arc::new(Gateway {
        app,
        tokens,
        dev: args.dev,
        static_dir: static_dir.clone(),
        scheduler_every: config.scheduler_interval,
        connect_extra: args.ui_connect_src.clone(),
    });
    tracing::info!(
        url = %format!("http://{addr}/"),
        dev = args.dev,
        static_dir = %static_dir.display(),
        data_dir = %config.data_dir.display(),
        "StockPulse Keys is running at http://{addr}/"
    );
    if gateway.has_no_sign_in() {
        tracing::warn!("no sign-in: dev mode is off and no JWKS issuer is set, so every protected route answers 401 (no_sign_in)");
    }
    serve(listener, gateway, shutdown_signal()).await?;
    tracing::info!("stockpulse-local shut down cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received; finishing open requests");
}

/// An origin for `connect-src`: `https://host[:port]`, or `http://` on loopback only.
fn parse_origin(value: &str) -> Result<String, String> {
    let url = url::Url::parse(value).map_err(|e| format!("`{value}` is not a URL: {e}"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let origin = url.origin().ascii_serialization();
    match url.scheme() {
        "https" => Ok(origin),
        "http" if loopback => Ok(origin),
        _ => Err(format!("`{value}` must be an https origin (http only on loopback)")),
    }
}
