//! The floor: the least a Rust HTTP proxy can do on this machine. It takes a request (axum on
//! tokio, like our gateway), forwards its body to the upstream with one pooled reqwest client,
//! adding a bearer key, and passes the answer back, with no checks, no storage and no log.
//! Whatever latency it adds over a direct call is the price of the extra hop itself; whatever
//! our gateway adds above it is our own work.
//!
//! The key comes from `BARE_PROXY_KEY`; the first line on stdout is `listening http://…`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;

#[derive(Parser)]
#[command(name = "bare-proxy", about = "A minimal pass-through proxy: the floor of what a proxy hop costs (loopback only)")]
struct Args {
    /// The upstream's base URL (`http://127.0.0.1:<port>`).
    #[arg(long)]
    upstream: String,
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The key sent upstream as `Authorization: Bearer`. From the environment, so that it does not
    /// show in the process list.
    #[arg(long, env = "BARE_PROXY_KEY", hide_env_values = true)]
    key: String,
}

struct Upstream {
    client: reqwest::Client,
    base: String,
    authorization: HeaderValue,
}

async fn forward(State(upstream): State<Arc<Upstream>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let url = format!("{}{}", upstream.base, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut request = upstream.client.request(method, url).header(header::AUTHORIZATION, upstream.authorization.clone()).body(body);
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, content_type.clone());
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            match answer.bytes().await {
                Ok(bytes) => {
                    let mut response = (status, bytes).into_response();
                    if let Some(content_type) = content_type {
                        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
                    }
                    response
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", args.key)).expect("the key is a valid header value");
    authorization.set_sensitive(true);
    let upstream = Arc::new(Upstream {
        client: reqwest::Client::builder().no_proxy().build().expect("an HTTP client"),
        base: args.upstream.trim_end_matches('/').to_owned(),
        authorization,
    });
    let app = Router::new().fallback(forward).with_state(upstream);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await.expect("a loopback port");
    println!("listening http://{}", listener.local_addr().expect("the bound address"));
    axum::serve(listener, app).await.expect("serving");
}
