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
    task: tokio::task::JoinHandle<()>,
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
        let (b, m, c) = (budget.clone(), mode.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let allowed = b.fetch_sub(1, Ordering::SeqCst) > 0;
                let mode = if allowed { PASS } else { m.load(Ordering::SeqCst) };
                let target = target.clone();
                tokio::spawn(async move {
                    match mode {
                        PASS => {
                            if let Ok(mut outbound) = TcpStream::connect(&target).await {
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
        FaultProxy { url, budget, mode, seen, task }
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

    pub fn connections(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
