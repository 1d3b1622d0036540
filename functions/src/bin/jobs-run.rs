//! Lambda `jobs-run`: see the route table in `stockpulse_shared::http::routes`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    stockpulse_functions::run("jobs-run").await
}
