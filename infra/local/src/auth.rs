//! Token verification for the local gateway, standing in for API Gateway's JWT authorizer.
//!
//! Locally issued tokens are HS256 with a secret generated on first run (`<data dir>/jwt.secret`,
//! mode 0600). With `STOCKPULSE_JWKS_URL` set, tokens are RS256 from that issuer instead (for
//! example a Cognito user pool), checked the way API Gateway's JWT authorizer checks them: issuer,
//! audience (`aud`, or `client_id` when there is no `aud`, as in Cognito access tokens) and, with
//! `STOCKPULSE_JWT_SCOPE`, a scope the token must carry (ID tokens carry none). Claims are
//! flattened to strings the way API Gateway passes them to a Lambda, then placed in the same
//! request context.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde_json::{Map, Value};
use stockpulse_shared::adapters::embedded::secret_file::{SecretFileError, load_or_create};
use stockpulse_shared::domain::access::Role;
use stockpulse_shared::http::caller::{CLAIM_GROUPS, CLAIM_WORKSPACE};

pub const LOCAL_ISSUER: &str = "stockpulse-local";
pub const LOCAL_AUDIENCE: &str = "stockpulse-keys";
/// Dev tokens last a working day.
pub const DEV_TOKEN_SECONDS: u64 = 12 * 3600;
/// Clock skew allowed on `exp`.
const LEEWAY_SECONDS: u64 = 30;
/// Verified tokens remembered at most; the memory is emptied when full.
const MAX_REMEMBERED: usize = 4096;

enum Keys {
    Local { encoding: EncodingKey, decoding: DecodingKey },
    Jwks { set: JwkSet },
}

pub struct TokenVerifier {
    keys: Keys,
    issuer: String,
    audience: String,
    /// Like a route's `AuthorizationScopes` in the template: the token's `scope` must include it.
    required_scope: Option<String>,
    /// Tokens that passed, by their exact text: their claims and `exp`. A client sends the same
    /// token with every request; checking its signature and decoding it again each time was a
    /// measurable part of the proxy's overhead (BENCHMARKS.md). API Gateway's JWT authorizer
    /// caches the same way. Refusals are never remembered.
    verified: Mutex<HashMap<String, Remembered>>,
}

/// A verified token's flattened claims and its `exp`.
type Remembered = (HashMap<String, String>, u64);

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("token secret: {0}")]
    Secret(#[from] SecretFileError),
    #[error("cannot load the JWKS from {url}: {reason}")]
    Jwks { url: String, reason: String },
    #[error("STOCKPULSE_JWKS_URL needs STOCKPULSE_JWT_ISSUER and STOCKPULSE_JWT_AUDIENCE")]
    MissingIssuer,
}

/// Why a token was refused; shown to the caller (it says nothing about the server's keys).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired; sign in again")]
    Expired,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token uses an algorithm this server does not accept")]
    WrongAlgorithm,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's key id is unknown")]
    UnknownKey,
    #[error("the token lacks the scope {0} (send the access token, not the ID token)")]
    MissingScope(String),
}

impl TokenVerifier {
    /// The HS256 verifier with the secret from `<data dir>/jwt.secret`, created on first run.
    pub fn local(data_dir: &Path) -> Result<TokenVerifier, AuthSetupError> {
        let secret = load_or_create(&data_dir.join("jwt.secret"))?;
        Ok(TokenVerifier {
            keys: Keys::Local { encoding: EncodingKey::from_secret(&*secret), decoding: DecodingKey::from_secret(&*secret) },
            issuer: LOCAL_ISSUER.to_owned(),
            audience: LOCAL_AUDIENCE.to_owned(),
            required_scope: None,
            verified: Mutex::default(),
        })
    }

    /// RS256 tokens of an external issuer, keys fetched once from its JWKS URL.
    pub async fn jwks(url: &str, issuer: &str, audience: &str) -> Result<TokenVerifier, AuthSetupError> {
        let fail = |reason: String| AuthSetupError::Jwks { url: url.to_owned(), reason };
        let set: JwkSet = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?
            .error_for_status()
            .map_err(|e| fail(e.without_url().to_string()))?
            .json()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        Ok(TokenVerifier {
            keys: Keys::Jwks { set },
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            required_scope: None,
            verified: Mutex::default(),
        })
    }

    /// Refuses tokens whose `scope` lacks `scope` (the deployment's routes require
    /// `stockpulse-keys/api`).
    pub fn with_required_scope(mut self, scope: Option<String>) -> TokenVerifier {
        self.required_scope = scope.filter(|s| !s.trim().is_empty());
        self
    }

    pub fn can_mint(&self) -> bool {
        matches!(self.keys, Keys::Local { .. })
    }

    /// Signs a dev token (HS256 mode only).
    pub fn mint(&self, sub: &str, email: &str, role: Role, workspace: &str) -> Option<(String, u64)> {
        let Keys::Local { encoding, .. } = &self.keys else { return None };
        let now = jsonwebtoken::get_current_timestamp();
        let exp = now + DEV_TOKEN_SECONDS;
        let claims = serde_json::json!({
            "sub": sub,
            "email": email,
            CLAIM_GROUPS: [role.as_str()],
            CLAIM_WORKSPACE: workspace,
            "iss": self.issuer,
            "aud": self.audience,
            "token_use": "access",
            "iat": now,
            "exp": exp,
        });
        encode(&Header::new(Algorithm::HS256), &claims, encoding).ok().map(|t| (t, exp))
    }

    /// Verifies a bearer token and returns its claims flattened as API Gateway does.
    pub fn verify(&self, token: &str) -> Result<HashMap<String, String>, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((claims, exp)) = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(token) {
            if now <= exp.saturating_add(LEEWAY_SECONDS) {
                return Ok(claims.clone());
            }
            return Err(TokenError::Expired);
        }
        let (claims, exp) = self.verify_signed(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_REMEMBERED {
            verified.clear();
        }
        verified.insert(token.to_owned(), (claims.clone(), exp));
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<(HashMap<String, String>, u64), TokenError> {
        let header = decode_header(token).map_err(|e| classify(e.kind()))?;
        let (key, algorithm) = match &self.keys {
            Keys::Local { decoding, .. } => (decoding.clone(), Algorithm::HS256),
            Keys::Jwks { set } => {
                let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
                let jwk = set.find(kid).ok_or(TokenError::UnknownKey)?;
                (DecodingKey::from_jwk(jwk).map_err(|_| TokenError::UnknownKey)?, Algorithm::RS256)
            }
        };
        if header.alg != algorithm {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        // The audience is checked below, API Gateway's way.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        let data = decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| classify(e.kind()))?;
        if !self.audience_matches(&data.claims) {
            return Err(TokenError::WrongAudience);
        }
        if let Some(scope) = &self.required_scope {
            let scopes = data.claims.get("scope").and_then(Value::as_str).unwrap_or("");
            if !scopes.split_whitespace().any(|s| s == scope) {
                return Err(TokenError::MissingScope(scope.clone()));
            }
        }
        // `exp` is required above, and validated as a number.
        let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((flatten(data.claims), exp))
    }

    /// API Gateway's rule: `aud` when the token has one, else `client_id` (Cognito access tokens).
    fn audience_matches(&self, claims: &Map<String, Value>) -> bool {
        match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(self.audience.as_str())),
            Some(_) => false,
            None => claims.get("client_id").and_then(Value::as_str) == Some(self.audience.as_str()),
        }
    }
}

fn classify(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            TokenError::WrongAlgorithm
        }
        _ => TokenError::Malformed,
    }
}

/// API Gateway's flattening: strings stay, arrays become `[a b]`, everything else its JSON text.
pub fn flatten(claims: Map<String, Value>) -> HashMap<String, String> {
    claims
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(s) => s,
                Value::Array(items) => format!(
                    "[{}]",
                    items.iter().map(|i| i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string())).collect::<Vec<_>>().join(" ")
                ),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn minted_tokens_verify_and_flatten_like_api_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let verifier = TokenVerifier::local(dir.path()).unwrap();
        let (token, _) = verifier.mint("u1", "a@example.com", Role::Member, "w1").unwrap();
        let claims = verifier.verify(&token).unwrap();
        assert_eq!(claims["cognito:groups"], "[member]");
        assert_eq!(claims["custom:workspace"], "w1");
        assert_eq!(claims["email"], "a@example.com");
        // The same secret is reused after a restart.
        assert!(TokenVerifier::local(dir.path()).unwrap().verify(&token).is_ok());
        // Another data dir, another secret.
        let other = TokenVerifier::local(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let dir = tempfile::tempdir().unwrap();
        let verifier = TokenVerifier::local(dir.path()).unwrap();
        let (token, _) = verifier.mint("u1", "a@example.com", Role::Member, "w1").unwrap();
        assert!(verifier.verify(&token).is_ok());
        // The remembered expiry passes (as if the clock had moved on): the token is refused.
        verifier.verified.lock().unwrap().get_mut(&token).unwrap().1 = jsonwebtoken::get_current_timestamp() - LEEWAY_SECONDS - 1;
        assert_eq!(verifier.verify(&token), Err(TokenError::Expired));
        // A tampered copy is not the remembered text: its signature is checked.
        let tampered = format!("{token}x");
        assert_eq!(verifier.verify(&tampered), Err(TokenError::BadSignature));
    }

    #[test]
    fn alg_none_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let verifier = TokenVerifier::local(dir.path()).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(r#"{"sub":"u","exp":9999999999}"#));
        assert!(verifier.verify(&none).is_err());
        assert!(verifier.verify(&none).is_err(), "a refusal is not remembered as a pass");
        assert_eq!(verifier.verify("not-a-token"), Err(TokenError::Malformed));
    }
}
