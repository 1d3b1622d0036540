//! Removing key values from text that leaves the server (provider messages, errors).
//!
//! A key can come back from a provider in several spellings: raw, percent-encoded (when it was
//! sent in a query) or base64. Every spelling is replaced, longest first.

use base64::Engine;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::secret::Credentials;

pub const REDACTED: &str = "[REDACTED]";

/// Replaces every spelling of every credential value in `text`.
pub fn redact(text: &str, credentials: &Credentials) -> String {
    let mut out = text.to_owned();
    for value in credentials.secret_values() {
        for spelling in spellings(value) {
            if spelling.len() >= 4 && out.contains(spelling.as_str()) {
                out = out.replace(spelling.as_str(), REDACTED);
            }
        }
    }
    out
}

fn spellings(value: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut list = vec![value.to_owned(), utf8_percent_encode(value, NON_ALPHANUMERIC).to_string(), b64.encode(value)];
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    list.dedup();
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::KeyMaterial;

    #[test]
    fn every_spelling_is_redacted() {
        let mut c = Credentials::new();
        c.insert("api_key", KeyMaterial::new("sk-canary/redact+1=".into()));
        let encoded = utf8_percent_encode("sk-canary/redact+1=", NON_ALPHANUMERIC).to_string();
        let b64 = base64::engine::general_purpose::STANDARD.encode("sk-canary/redact+1=");
        let text = format!("raw sk-canary/redact+1= url {encoded} b64 {b64}");
        let out = redact(&text, &c);
        assert!(!out.contains("canary"), "{out}");
        assert!(!out.contains(&encoded) && !out.contains(&b64), "{out}");
        assert_eq!(out.matches(REDACTED).count(), 3);
    }
}
