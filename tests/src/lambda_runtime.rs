//! The AWS Lambda Runtime API (<https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>)
//! on loopback, so that the built function binaries run as real Lambda processes: one process per
//! function, started once and invoked many times, like a warm Lambda.
//!
//! Each `LambdaProcess` serves its own Runtime API (a function finds it through
//! `AWS_LAMBDA_RUNTIME_API`, one per sandbox as on AWS) and starts the binary with the environment
//! Lambda gives a `provided.al2023` function plus the caller's variables. Every line the function
//! prints goes to a log file in the artifacts folder, which the canary scan reads.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::artifacts_dir;

/// How long an invocation (or init) may take before the test gives up on the function. Far above
/// what any handler needs; it only turns a hung function into a readable failure.
pub const INVOCATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Lambda's own payload limit, for invocation responses (the proxy can answer that much).
const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024 + 1024;

/// Log lines kept in memory for failure messages.
const TAIL_LINES: usize = 20;

/// Why an invocation produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationError {
    /// The handler failed: what the runtime posted to `/invocation/{id}/error`.
    Function { error_type: String, message: String },
    /// Init failed: what the runtime posted to `/init/error`.
    Init { error_type: String, message: String },
    /// The process ended (init failures of our binaries end here: `main` returns the error).
    Exited { status: String, log_tail: String },
}

impl std::fmt::Display for InvocationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvocationError::Function { error_type, message } => write!(f, "function error {error_type}: {message}"),
            InvocationError::Init { error_type, message } => write!(f, "init error {error_type}: {message}"),
            InvocationError::Exited { status, log_tail } => write!(f, "the process exited ({status}); its last lines:\n{log_tail}"),
        }
    }
}

impl std::error::Error for InvocationError {}

/// What the runtime told us, or what became of the process.
#[derive(Debug, Clone, Default)]
struct Lifecycle {
    /// The runtime asked for its first event: init is done.
    polled: bool,
    /// When it first asked (the end of init, for `init_duration`).
    first_poll: Option<Instant>,
    init_error: Option<InvocationError>,
    exited: Option<String>,
}

/// What the runtime posted, and how long after it was handed the event (the handler's time as
/// Lambda bills it, without the Runtime API's own hops).
struct Outcome {
    result: Result<Value, InvocationError>,
    handler_time: Option<Duration>,
}

type Reply = oneshot::Sender<Outcome>;

struct Invocation {
    event: Value,
    reply: Reply,
}

/// The Runtime API of one function.
struct RuntimeApi {
    function_arn: String,
    /// Invocations not yet handed to the runtime; `/next` long-polls on it.
    queued: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    /// Handed to the runtime, not answered yet: who waits, and since when.
    in_flight: Mutex<HashMap<String, (Reply, Instant)>>,
    lifecycle: watch::Sender<Lifecycle>,
    log: Arc<ProcessLog>,
}

/// The function's output: a file for the canary scan and a tail for failure messages.
struct ProcessLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    tail: Mutex<VecDeque<String>>,
}

impl ProcessLog {
    fn create(function: &str) -> ProcessLog {
        let dir = artifacts_dir().join("logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let path = dir.join(format!("lambda-{function}-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ProcessLog { path, file: Mutex::new(file), tail: Mutex::new(VecDeque::new()) }
    }

    fn line(&self, line: &str) {
        let _ = writeln!(self.file.lock().unwrap_or_else(|p| p.into_inner()), "{line}");
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }

    fn tail(&self) -> String {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A function binary running against its own Runtime API on 127.0.0.1.
pub struct LambdaProcess {
    name: String,
    /// Just before the process was spawned (for `init_duration`).
    spawned_at: Instant,
    api: Arc<RuntimeApi>,
    queue: mpsc::UnboundedSender<Invocation>,
    lifecycle: watch::Receiver<Lifecycle>,
    kill: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

/// Where `cargo build --workspace --bins` put the function binaries: the profile folder of this
/// test executable (`target/<profile>/deps/e2e-…` → `target/<profile>`), so a custom target folder
/// or profile finds the binaries built with it.
/// `STOCKPULSE_LAMBDA_BINARIES` names another folder (the benchmark runs optimised builds).
pub fn binaries_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STOCKPULSE_LAMBDA_BINARIES") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| crate::workspace_root().join("target/debug"))
}

fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// An X-Ray trace header in the format Lambda sends (`Root=1-<epoch hex>-<96 bits>`).
fn trace_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("Root=1-{:08x}-{};Parent={};Sampled=0", now_millis() / 1000, &random[..24], &random[16..32])
}

impl LambdaProcess {
    /// Starts the Runtime API and `binaries_dir()/<binary>` with Lambda's environment; `env`
    /// adds variables or overrides Lambda's (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, ...). The process
    /// sees nothing of the test's own environment but `PATH`, as in a Lambda sandbox.
    pub async fn start<K: AsRef<OsStr>, V: AsRef<OsStr>>(binary: &str, env: &[(K, V)]) -> LambdaProcess {
        let path = binaries_dir().join(binary);
        assert!(
            path.exists(),
            "{} is missing: build the function binaries first (cargo build --workspace --bins), as scripts/test does",
            path.display()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the Runtime API");
        let address = listener.local_addr().expect("Runtime API address");
        let (queue, queued) = mpsc::unbounded_channel();
        let (lifecycle, watcher) = watch::channel(Lifecycle::default());
        let log = Arc::new(ProcessLog::create(binary));
        let api = Arc::new(RuntimeApi {
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{binary}"),
            queued: tokio::sync::Mutex::new(queued),
            in_flight: Mutex::new(HashMap::new()),
            lifecycle,
            log: log.clone(),
        });
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(invocation_response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(invocation_error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
            .with_state(api.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });

        let mut command = tokio::process::Command::new(&path);
        // Lambda runs a function in its read-only /var/task: nothing it writes belongs in the
        // workspace.
        command.env_clear().current_dir(std::env::temp_dir());
        let defaults = [
            ("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())),
            ("AWS_LAMBDA_RUNTIME_API", address.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", binary.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{binary}")),
            ("AWS_LAMBDA_LOG_STREAM_NAME", format!("2026/01/01/[$LATEST]{}", uuid::Uuid::new_v4().simple())),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
            ("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
            ("_HANDLER", "bootstrap".to_owned()),
            ("LAMBDA_TASK_ROOT", "/var/task".to_owned()),
            ("LAMBDA_RUNTIME_DIR", "/var/runtime".to_owned()),
            ("TZ", ":UTC".to_owned()),
            ("LANG", "en_US.UTF-8".to_owned()),
        ];
        command.envs(defaults.iter().map(|(k, v)| (*k, v.as_str())));
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let spawned_at = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let readers =
            [pipe_lines(child.stdout.take().expect("stdout"), log.clone()), pipe_lines(child.stderr.take().expect("stderr"), log)];

        let (kill, killed) = oneshot::channel::<()>();
        let watcher_api = api.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            // The last lines must be in the tail before anyone reads why the process ended.
            for reader in readers {
                let _ = reader.await;
            }
            let status = status.map(describe_exit).unwrap_or_else(|e| format!("unknown: {e}"));
            watcher_api.log.line(&format!("[lambda emulator] process exited: {status}"));
            watcher_api.lifecycle.send_modify(|l| l.exited = Some(status));
        });
        LambdaProcess { name: binary.to_owned(), spawned_at, api, queue, lifecycle: watcher, kill: Some(kill), server }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file every output line of the function goes to.
    pub fn log_path(&self) -> &Path {
        &self.api.log.path
    }

    /// The function's last output lines.
    pub fn log_tail(&self) -> String {
        self.api.log.tail()
    }

    /// Waits until init is done (the runtime polls for its first event); the error if init
    /// failed or the process ended first.
    pub async fn ready(&self) -> Result<(), InvocationError> {
        let mut lifecycle = self.lifecycle.clone();
        let waited =
            tokio::time::timeout(INVOCATION_TIMEOUT, lifecycle.wait_for(|l| l.polled || l.init_error.is_some() || l.exited.is_some()))
                .await;
        let Ok(Ok(state)) = waited else {
            panic!("{} did not finish its init within {INVOCATION_TIMEOUT:?}; its last lines:\n{}", self.name, self.log_tail());
        };
        match (&state.init_error, &state.exited) {
            (Some(error), _) => Err(error.clone()),
            (None, Some(_)) if !state.polled => Err(self.exited(&state)),
            _ => Ok(()),
        }
    }

    /// From spawning the process to its first poll for an event (its init, as a cold start
    /// pays it less the download of the code); `None` before it has polled.
    pub fn init_duration(&self) -> Option<Duration> {
        self.lifecycle.borrow().first_poll.map(|polled| polled.duration_since(self.spawned_at))
    }

    /// Invokes the function with `event` and waits for what its runtime posts back.
    pub async fn invoke(&self, event: Value) -> Result<Value, InvocationError> {
        self.invoke_timed(event).await.0
    }

    /// `invoke`, with the handler's time: from handing the event to the runtime to its answer.
    pub async fn invoke_timed(&self, event: Value) -> (Result<Value, InvocationError>, Option<Duration>) {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Invocation { event, reply }).expect("the Runtime API outlives its process handle");
        let mut lifecycle = self.lifecycle.clone();
        let failed = lifecycle.wait_for(|l| l.init_error.is_some() || l.exited.is_some());
        let outcome = tokio::time::timeout(INVOCATION_TIMEOUT, async {
            tokio::select! {
                biased;
                answer = answer => answer
                    .map(|o| (o.result, o.handler_time))
                    .unwrap_or_else(|_| (Err(self.exited(&self.lifecycle.borrow())), None)),
                state = failed => {
                    let state = state.map(|s| s.clone()).unwrap_or_default();
                    (Err(state.init_error.clone().unwrap_or_else(|| self.exited(&state))), None)
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| {
            panic!("{} did not answer an invocation within {INVOCATION_TIMEOUT:?}; its last lines:\n{}", self.name, self.log_tail())
        })
    }

    fn exited(&self, state: &Lifecycle) -> InvocationError {
        InvocationError::Exited { status: state.exited.clone().unwrap_or_else(|| "still running".into()), log_tail: self.log_tail() }
    }
}

impl Drop for LambdaProcess {
    fn drop(&mut self) {
        // If the runtime is already gone, the watcher task is dropped instead, and with it the
        // child (`kill_on_drop`).
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.server.abort();
    }
}

fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    format!("exit code {}", status.code().unwrap_or(-1))
}

fn pipe_lines(stream: impl AsyncRead + Unpin + Send + 'static, log: Arc<ProcessLog>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.line(&line);
        }
    })
}

async fn next_invocation(State(api): State<Arc<RuntimeApi>>) -> Response {
    api.lifecycle.send_if_modified(|l| {
        let first = !std::mem::replace(&mut l.polled, true);
        if first {
            l.first_poll = Some(Instant::now());
        }
        first
    });
    // One runtime polls at a time; the lock is the long poll.
    let Some(invocation) = api.queued.lock().await.recv().await else {
        return StatusCode::GONE.into_response();
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    api.log.line(&format!("START RequestId: {request_id} Version: $LATEST"));
    api.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(request_id.clone(), (invocation.reply, Instant::now()));
    let deadline = now_millis() + INVOCATION_TIMEOUT.as_millis();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", &api.function_arn)
        .header("Lambda-Runtime-Trace-Id", trace_id())
        .body(Body::from(invocation.event.to_string()))
        .expect("invocation response")
}

/// Hands the outcome to the waiting `invoke`; an id that is not in flight is refused as Lambda
/// does (the runtime answered twice, or made the id up).
fn finish(api: &RuntimeApi, request_id: &str, outcome: Result<Value, InvocationError>) -> Response {
    let Some((reply, handed_at)) = api.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(request_id) else {
        return (StatusCode::BAD_REQUEST, "unknown or finished request id").into_response();
    };
    api.log.line(&format!("END RequestId: {request_id}"));
    let _ = reply.send(Outcome { result: outcome, handler_time: Some(handed_at.elapsed()) });
    StatusCode::ACCEPTED.into_response()
}

async fn invocation_response(State(api): State<Arc<RuntimeApi>>, UrlPath(request_id): UrlPath<String>, body: Bytes) -> Response {
    // Handlers answer JSON; anything else is kept as a string so the test can show it.
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    finish(&api, &request_id, Ok(value))
}

/// The runtime's `{"errorType", "errorMessage"}` document (the type also comes as a header).
fn error_document(headers: &HeaderMap, body: &Bytes) -> (String, String) {
    let document: Value = serde_json::from_slice(body).unwrap_or_default();
    let error_type = document["errorType"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| headers.get("lambda-runtime-function-error-type").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_else(|| "Unknown".into());
    let message = document["errorMessage"].as_str().map(str::to_owned).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, message)
}

async fn invocation_error(
    State(api): State<Arc<RuntimeApi>>,
    UrlPath(request_id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (error_type, message) = error_document(&headers, &body);
    finish(&api, &request_id, Err(InvocationError::Function { error_type, message }))
}

async fn init_error(State(api): State<Arc<RuntimeApi>>, headers: HeaderMap, body: Bytes) -> Response {
    let (error_type, message) = error_document(&headers, &body);
    api.log.line(&format!("[lambda emulator] init error {error_type}: {message}"));
    api.lifecycle.send_modify(|l| l.init_error = Some(InvocationError::Init { error_type, message }));
    StatusCode::ACCEPTED.into_response()
}
