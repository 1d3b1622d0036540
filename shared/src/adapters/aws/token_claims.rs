//! The Cognito pre-token-generation trigger (event version V2_0): copies the user's workspace and
//! email into the ACCESS token.
//!
//! API Gateway's JWT authorizer accepts only access tokens here (every route requires the scope
//! `stockpulse-keys/api`, which ID tokens lack), and Cognito's access tokens carry `sub` and
//! `cognito:groups` but none of the user's attributes. The handlers read `custom:workspace` and
//! `email` from the verified claims (`http::caller`), so this trigger puts them there. Only the
//! access token is touched; the workspace attribute is immutable and set by an administrator.

use serde_json::{Map, Value, json};

use crate::http::caller::CLAIM_WORKSPACE;

const CLAIM_EMAIL: &str = "email";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenClaimsError {
    #[error("not a Cognito pre-token-generation event: {0}")]
    NotATokenEvent(&'static str),
}

/// The event with `response.claimsAndScopeOverrideDetails` set: Cognito answers the trigger by
/// the same event, response filled in. A user without a workspace gets no workspace claim (the
/// API then answers 403 `no_workspace`), rather than failing the sign-in with an opaque error.
pub fn add_access_token_claims(mut event: Value) -> Result<Value, TokenClaimsError> {
    let source = event.get("triggerSource").and_then(Value::as_str).ok_or(TokenClaimsError::NotATokenEvent("no triggerSource"))?;
    if !source.starts_with("TokenGeneration_") {
        return Err(TokenClaimsError::NotATokenEvent("the triggerSource is not TokenGeneration_*"));
    }
    if event.get("version").and_then(Value::as_str).is_some_and(|v| v != "2" && v != "3") {
        // V1 events cannot change access tokens: the pool must use LambdaVersion V2_0.
        return Err(TokenClaimsError::NotATokenEvent("the event version is not 2 (configure LambdaVersion V2_0)"));
    }
    let attributes = event
        .pointer("/request/userAttributes")
        .and_then(Value::as_object)
        .ok_or(TokenClaimsError::NotATokenEvent("no request.userAttributes"))?;
    let mut claims = Map::new();
    for name in [CLAIM_WORKSPACE, CLAIM_EMAIL] {
        if let Some(value) = attributes.get(name).and_then(Value::as_str).map(str::trim).filter(|v| !v.is_empty()) {
            claims.insert(name.to_owned(), Value::String(value.to_owned()));
        }
    }
    if !claims.contains_key(CLAIM_WORKSPACE) {
        let user = attributes.get("sub").and_then(Value::as_str).unwrap_or("?");
        tracing::warn!(user, "this user has no custom:workspace: their tokens name no workspace and the API will refuse them");
    }
    let details = json!({ "accessTokenGeneration": { "claimsToAddOrOverride": claims } });
    let response = event.as_object_mut().expect("checked above: the event is an object").entry("response").or_insert_with(|| json!({}));
    if !response.is_object() {
        *response = json!({});
    }
    response.as_object_mut().expect("just made an object").insert("claimsAndScopeOverrideDetails".to_owned(), details);
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape Cognito sends (from the developer guide's V2 example), trimmed.
    fn event(attributes: Value) -> Value {
        json!({
            "version": "2",
            "triggerSource": "TokenGeneration_HostedAuth",
            "region": "eu-west-1",
            "userPoolId": "eu-west-1_abc",
            "userName": "5f1c",
            "callerContext": { "awsSdkVersion": "aws-sdk-unknown-unknown", "clientId": "client123" },
            "request": {
                "userAttributes": attributes,
                "groupConfiguration": { "groupsToOverride": ["member"], "iamRolesToOverride": [], "preferredRole": null },
                "scopes": ["openid", "email", "stockpulse-keys/api"]
            },
            "response": { "claimsAndScopeOverrideDetails": null }
        })
    }

    #[test]
    fn the_workspace_and_email_go_into_the_access_token_only() {
        let input = event(json!({
            "sub": "5f1c", "email": "ana@example.com", "email_verified": "true", "custom:workspace": "acme"
        }));
        let out = add_access_token_claims(input.clone()).unwrap();
        let details = &out["response"]["claimsAndScopeOverrideDetails"];
        assert_eq!(
            details["accessTokenGeneration"]["claimsToAddOrOverride"],
            json!({"custom:workspace": "acme", "email": "ana@example.com"})
        );
        // Groups stay as Cognito set them; the ID token is left alone.
        assert!(details.get("groupOverrideDetails").is_none());
        assert!(details.get("idTokenGeneration").is_none());
        // The rest of the event comes back unchanged.
        assert_eq!(out["request"], input["request"]);
        assert_eq!(out["callerContext"], input["callerContext"]);
    }

    #[test]
    fn a_user_without_a_workspace_gets_no_workspace_claim() {
        let out = add_access_token_claims(event(json!({"sub": "u", "email": "x@example.com", "custom:workspace": "  "}))).unwrap();
        assert_eq!(
            out["response"]["claimsAndScopeOverrideDetails"]["accessTokenGeneration"]["claimsToAddOrOverride"],
            json!({"email": "x@example.com"})
        );
    }

    #[test]
    fn other_events_are_refused() {
        assert!(add_access_token_claims(json!({"triggerSource": "PreSignUp_SignUp", "request": {"userAttributes": {}}})).is_err());
        assert!(
            add_access_token_claims(
                json!({"version": "1", "triggerSource": "TokenGeneration_HostedAuth", "request": {"userAttributes": {}}})
            )
            .is_err()
        );
        assert!(add_access_token_claims(json!("nonsense")).is_err());
        assert!(add_access_token_claims(json!({"triggerSource": "TokenGeneration_Authentication"})).is_err());
    }
}
