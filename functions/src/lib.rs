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

/// Runs the scheduled job's Lambda: every EventBridge event starts one run over all workspaces
/// (the event's content is not read). A run that finds the lease held does nothing; an error
/// fails the invocation so that EventBridge retries and, at last, the dead-letter queue holds it.
pub async fn run_scheduler() -> Result<(), Error> {
    use lambda_http::lambda_runtime::{self, LambdaEvent};
    use stockpulse_shared::services::scheduler::Scope;
    let config = Config::from_env()?;
    stockpulse_shared::telemetry::init(config.log_format);
    let app = App::from_config(&config).await?;
    let app = &app;
    lambda_runtime::run(lambda_runtime::service_fn(move |_event: LambdaEvent<serde_json::Value>| async move {
        let report = app.scheduler().run(Scope::All).await.map_err(|e| Error::from(e.to_string()))?;
        Ok::<_, Error>(serde_json::to_value(&report)?)
    }))
    .await
}

/// Runs the Cognito pre-token-generation trigger: no storage and no AWS client, only the event.
/// A refused event fails the invocation, and Cognito then refuses the sign-in.
pub async fn run_token_claims() -> Result<(), Error> {
    use lambda_http::lambda_runtime::{self, LambdaEvent};
    use stockpulse_shared::adapters::aws::token_claims::add_access_token_claims;
    stockpulse_shared::telemetry::init(stockpulse_shared::config::LogFormat::Json);
    lambda_runtime::run(lambda_runtime::service_fn(|event: LambdaEvent<serde_json::Value>| async move {
        add_access_token_claims(event.payload).map_err(|e| Error::from(e.to_string()))
    }))
    .await
}
