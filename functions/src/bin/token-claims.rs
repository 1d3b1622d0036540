//! Lambda `token-claims`: the Cognito pre-token-generation trigger (V2_0) that puts the user's
//! workspace and email into access tokens (not an HTTP route).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    stockpulse_functions::run_token_claims().await
}
