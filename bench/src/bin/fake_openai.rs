//! The benchmarks' upstream: an OpenAI-compatible server on loopback that answers at once with a
//! small fixed JSON body, so that whatever latency a benchmark sees above a direct call is the
//! gateway's own.
//!
//! `POST /v1/chat/completions` and `GET /v1/models` need `Authorization: Bearer <key>` (401
//! otherwise, like OpenAI), so a gateway that forgets to inject its key fails loudly. Each key
//! given in `FAKE_OPENAI_KEYS` (`NAME=VALUE,...`) is counted under NAME; `GET /__bench/stats` returns the counts
//! by name, never a key. The first line on stdout is `listening http://127.0.0.1:<port>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;

const CHAT_ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764028800,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;
const MODELS_ANSWER: &str = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"}]}"#;
const UNAUTHORIZED: &str =
    r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

#[derive(Parser)]
#[command(name = "fake-openai", about = "A fixed-answer OpenAI-compatible upstream for benchmarks (loopback only)")]
struct Args {
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Keys to count under a name: NAME=VALUE, comma-separated. From the environment, so that
    /// no key shows in the process list.
    #[arg(long = "key", env = "FAKE_OPENAI_KEYS", value_delimiter = ',', value_parser = parse_key)]
    keys: Vec<(String, String)>,
    /// Tokio worker threads (the machine's cores by default).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_key(value: &str) -> Result<(String, String), String> {
    value.split_once('=').map(|(n, v)| (n.to_owned(), v.to_owned())).ok_or_else(|| "expected NAME=VALUE".to_owned())
}

struct Counters {
    /// (bearer value, its name, requests seen with it)
    known: Vec<(String, String, AtomicU64)>,
    other_keys: AtomicU64,
    unauthenticated: AtomicU64,
}

impl Counters {
    /// Counts the request's key; false when it carries none.
    fn count(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|v| !v.trim().is_empty());
        let Some(bearer) = bearer else {
            self.unauthenticated.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match self.known.iter().find(|(value, _, _)| value == bearer) {
            Some((_, _, count)) => count.fetch_add(1, Ordering::Relaxed),
            None => self.other_keys.fetch_add(1, Ordering::Relaxed),
        };
        true
    }
}

fn json(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn chat(State(counters): State<Arc<Counters>>, headers: HeaderMap) -> Response {
    if counters.count(&headers) { json(StatusCode::OK, CHAT_ANSWER) } else { json(StatusCode::UNAUTHORIZED, UNAUTHORIZED) }
}

async fn models(State(counters): State<Arc<Counters>>, headers: HeaderMap) -> Response {
    if counters.count(&headers) { json(StatusCode::OK, MODELS_ANSWER) } else { json(StatusCode::UNAUTHORIZED, UNAUTHORIZED) }
}

async fn stats(State(counters): State<Arc<Counters>>) -> Response {
    let by_key: BTreeMap<&str, u64> = counters.known.iter().map(|(_, name, n)| (name.as_str(), n.load(Ordering::Relaxed))).collect();
    let body = serde_json::json!({
        "by_key": by_key,
        "other_keys": counters.other_keys.load(Ordering::Relaxed),
        "unauthenticated": counters.unauthenticated.load(Ordering::Relaxed),
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fake-openai: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-openai: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let counters = Arc::new(Counters {
        known: args.keys.into_iter().map(|(name, value)| (value, name, AtomicU64::new(0))).collect(),
        other_keys: AtomicU64::new(0),
        unauthenticated: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/__bench/stats", get(stats))
        .with_state(counters);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    println!("listening http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
