//! Shared start-up of the Lambda binaries: configuration, logging and adapters are built once at
//! init, then every invocation runs the function's handler from `stockpulse-shared`.

use lambda_http::{Error, Request, service_fn};
use stockpulse_shared::app::App;
use stockpulse_shared::config::Config;
use stockpulse_shared::http::handle_function;

/// Runs the Lambda function `name` (one of `stockpulse_shared::http::routes::functions()`).
pub async fn run(name: &'static str) -> Result<(), Error> {
    let config = Config::from_env()?;
    stockpulse_shared::telemetry::init(config.log_format);
    let app = App::from_config(&config).await?;
    let app = &app;
    lambda_http::run(service_fn(move |request: Request| async move { Ok::<_, Error>(handle_function(app, name, request).await) })).await
}
