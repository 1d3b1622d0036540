//! One request of the soak: send it, read the whole answer, time it, and count it as done or as
//! an error of its kind.

use std::time::Instant;

use reqwest::header::HeaderMap;

use crate::tally::{FailureClass, Kind, Tally, envelope_code, judge_status};

/// An answer with the status the step expected.
pub struct Answer {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What kind of transport failure it was, in words that name no URL (reqwest's own message
/// includes the URL).
fn transport_failure(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "answer broke off"
    } else {
        "request failed"
    }
}

/// Sends `request`; `Some` only when the answer has the `expected` status and was read whole.
pub async fn send(tally: &Tally, kind: Kind, request: reqwest::RequestBuilder, expected: u16) -> Option<Answer> {
    let started = Instant::now();
    let outcome = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok::<_, reqwest::Error>((status, headers, body))
    }
    .await;
    tally.done(kind, started.elapsed());
    match outcome {
        Err(error) => {
            tally.failure(kind, FailureClass::Transport, None, None, transport_failure(&error));
            None
        }
        Ok((status, headers, body)) => match judge_status(status, expected) {
            None => Some(Answer { headers, body }),
            Some(class) => {
                tally.failure(kind, class, Some(status), envelope_code(&body), format!("expected {expected}"));
                None
            }
        },
    }
}
