//! Lambda `keys-rotate`: see the route table in `stockpulse_shared::http::routes`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    stockpulse_functions::run("keys-rotate").await
}
