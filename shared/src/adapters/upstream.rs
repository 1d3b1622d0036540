//! `UpstreamClient` over reqwest (rustls): no redirects, connect and total timeouts, a cap on the
//! answer size. Errors are stripped of the URL, which may carry a key in its query.

use std::time::Duration;

use async_trait::async_trait;

use crate::ports::{ChunkSource, UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse, UpstreamStream};

#[derive(Debug, Clone, Copy)]
pub struct UpstreamLimits {
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_response_bytes: usize,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        UpstreamLimits {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_response_bytes: 6 * 1024 * 1024,
        }
    }
}

pub struct ReqwestUpstream {
    client: reqwest::Client,
    limits: UpstreamLimits,
}

impl ReqwestUpstream {
    pub fn new(limits: UpstreamLimits) -> Result<ReqwestUpstream, UpstreamError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.total_timeout)
            .user_agent(concat!("stockpulse-keys/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::Other(e.without_url().to_string()))?;
        Ok(ReqwestUpstream { client, limits })
    }
}

fn classify(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else if e.is_connect() {
        UpstreamError::Connect("connection refused or host unreachable".to_owned())
    } else {
        // `without_url` keeps keys sent as query parameters out of the message.
        UpstreamError::Other(e.without_url().to_string())
    }
}

struct ReqwestChunks(reqwest::Response);

#[async_trait]
impl ChunkSource for ReqwestChunks {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, UpstreamError> {
        Ok(self.0.chunk().await.map_err(classify)?.map(|bytes| bytes.to_vec()))
    }
}

impl ReqwestUpstream {
    async fn start(&self, request: UpstreamRequest) -> Result<reqwest::Response, UpstreamError> {
        let mut builder = self.client.request(request.method, request.url);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        builder.send().await.map_err(classify)
    }
}

#[async_trait]
impl UpstreamClient for ReqwestUpstream {
    async fn open(&self, request: UpstreamRequest) -> Result<UpstreamStream, UpstreamError> {
        let response = self.start(request).await?;
        Ok(UpstreamStream {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: Box::new(ReqwestChunks(response)),
        })
    }

    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let mut response = self.start(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            let room = self.limits.max_response_bytes - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= self.limits.max_response_bytes {
                break;
            }
        }
        Ok(UpstreamResponse { status, headers, body })
    }
}
