//! A TCP proxy in front of moto that can cut the AWS backend off at any moment: it lets a given
//! number of connections through, then refuses the rest, or answers them with throttling errors,
//! until it is healed. moto (run one request at a time) closes every connection after one answer,
//! so connections counted here are AWS API calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PASS: u8 = 0;
const REFUSE: u8 = 1;
const THROTTLE: u8 = 2;

pub struct FaultProxy {
    pub url: String,
    /// Connections still let through before the fault starts.
    budget: Arc<AtomicI64>,
    /// What happens to connections past the budget.
    mode: Arc<AtomicU8>,
    /// Connections seen so far.
    seen: Arc<AtomicUsize>,
    /// The AWS operations forwarded (`DynamoDB_20120810.GetItem (1 items)`, `TrentService.Decrypt`).
    calls: Arc<std::sync::Mutex<Vec<AwsCall>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One AWS API call seen by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCall {
    /// `X-Amz-Target`: service prefix and operation, e.g. `DynamoDB_20120810.TransactWriteItems`.
    pub target: String,
    /// Items in a `TransactWriteItems` (0 for other operations).
    pub transact_items: usize,
}

/// Reads the request head (and the body, for its item count) so the call can be recorded, and
/// returns the bytes read so far to be forwarded unchanged.
async fn read_request(inbound: &mut TcpStream) -> (Vec<u8>, Option<AwsCall>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_secs(5), inbound.read(&mut chunk)).await else {
            return (buffer, None);
        };
        if n == 0 {
            return (buffer, None);
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
        let length: usize = header("content-length:").and_then(|v| v.parse().ok()).unwrap_or(0);
        if buffer.len() < end + 4 + length {
            continue;
        }
        let original_head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let target = original_head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("x-amz-target")).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        let body: serde_json::Value = serde_json::from_slice(&buffer[end + 4..end + 4 + length]).unwrap_or_default();
        let transact_items = body["TransactItems"].as_array().map_or(0, Vec::len);
        return (buffer, Some(AwsCall { target, transact_items }));
    }
}

const THROTTLED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-ErrorType: ThrottlingException\r\nConnection: close\r\nContent-Length: 113\r\n\r\n{\"__type\":\"com.amazonaws.dynamodb.v20120810#ThrottlingException\",\"message\":\"Rate of requests exceeds the limit\"}";

impl FaultProxy {
    /// Starts healthy, forwarding to `target` (`http://127.0.0.1:<port>`).
    pub async fn start(target: &str) -> FaultProxy {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let budget = Arc::new(AtomicI64::new(i64::MAX));
        let mode = Arc::new(AtomicU8::new(PASS));
        let seen = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (b, m, c, log) = (budget.clone(), mode.clone(), seen.clone(), calls.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let allowed = b.fetch_sub(1, Ordering::SeqCst) > 0;
                let mode = if allowed { PASS } else { m.load(Ordering::SeqCst) };
                let target = target.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    match mode {
                        PASS => {
                            let (head, call) = read_request(&mut inbound).await;
                            if let Some(call) = call {
                                log.lock().unwrap().push(call);
                            }
                            if let Ok(mut outbound) = TcpStream::connect(&target).await
                                && outbound.write_all(&head).await.is_ok()
                            {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        }
                        THROTTLE => {
                            let mut buffer = [0u8; 16 * 1024];
                            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), inbound.read(&mut buffer)).await;
                            let _ = inbound.write_all(THROTTLED).await;
                            let _ = inbound.shutdown().await;
                        }
                        _ => drop(inbound),
                    }
                });
            }
        });
        FaultProxy { url, budget, mode, seen, calls, task }
    }

    /// Lets `calls` more connections through, then refuses every other one.
    pub fn fail_after(&self, calls: i64) {
        self.mode.store(REFUSE, Ordering::SeqCst);
        self.budget.store(calls, Ordering::SeqCst);
    }

    /// Lets `calls` more connections through, then answers every other one with throttling.
    pub fn throttle_after(&self, calls: i64) {
        self.mode.store(THROTTLE, Ordering::SeqCst);
        self.budget.store(calls, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.budget.store(i64::MAX, Ordering::SeqCst);
        self.mode.store(PASS, Ordering::SeqCst);
    }

    /// The calls forwarded since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<AwsCall> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    pub fn connections(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
