//! AWS adapters: DynamoDB single table for every storage port, KMS envelope vault (default) and
//! Secrets Manager vault. Clients are built once at init from one `SdkConfig`; `AWS_ENDPOINT_URL`
//! points them at an emulator in tests. The SDK's standard retry (with backoff) handles
//! throttling; what is left after retries becomes `Unavailable`.

pub mod dynamo_jobs;
pub mod dynamo_metering;
pub mod dynamo_store;
pub mod event_bus;
pub mod kms_vault;
pub mod secrets_manager_vault;
pub mod token_claims;

pub use dynamo_store::DynamoStore;
pub use kms_vault::KmsVault;
pub use secrets_manager_vault::SecretsManagerVault;

/// The shared SDK configuration from the environment (region, credentials, `AWS_ENDPOINT_URL`).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A short, log-safe description of an SDK error (never request contents).
pub(crate) fn describe<E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static>(
    error: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> String {
    use aws_sdk_dynamodb::error::SdkError;
    match error {
        SdkError::ConstructionFailure(_) => "the request could not be built".to_owned(),
        SdkError::TimeoutError(_) => "the request timed out".to_owned(),
        SdkError::DispatchFailure(_) => "the service could not be reached".to_owned(),
        SdkError::ResponseError(_) => "the service sent an answer that could not be read".to_owned(),
        SdkError::ServiceError(e) => {
            let meta = aws_sdk_dynamodb::error::ProvideErrorMetadata::meta(e.err());
            format!("the service refused the request: {} ({})", meta.code().unwrap_or("no code"), meta.message().unwrap_or("no message"))
        }
        _ => "the request failed".to_owned(),
    }
}
