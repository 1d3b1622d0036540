//! Lambda `scheduler`: the scheduled job, started by an EventBridge schedule (not an HTTP route;
//! `POST /api/jobs/run` is the `jobs-run` function).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    stockpulse_functions::run_scheduler().await
}
