//! Credential checks against the catalog.
//!
//! Hard errors are only for what cannot be a key at all (empty, whitespace or control
//! characters inside, over 4 KiB, a missing required field, a field the provider does not have).
//! Everything else the catalog knows about a format is a warning: providers change formats.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::catalog::{CredentialField, Provider};
use super::secret::Credentials;

pub const MAX_CREDENTIAL_BYTES: usize = 4096;
pub const MAX_LABEL_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FormatWarning {
    /// `credentials.<field id>`.
    pub field: String,
    pub code: String,
    pub message: String,
}

/// A value that cannot be stored; `field` names it as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

/// Checks a full set of credentials (create, or the merged result of an edit).
pub fn check_credentials(provider: &Provider, credentials: &Credentials) -> Result<Vec<FormatWarning>, FieldError> {
    for (field_id, _) in credentials.fields() {
        if provider.field(field_id).is_none() {
            let known: Vec<&str> = provider.fields.iter().map(|f| f.id.as_str()).collect();
            return Err(FieldError {
                field: format!("credentials.{field_id}"),
                code: "unknown_credential_field",
                message: format!("{} has no credential field `{field_id}`; its fields are: {}", provider.name, known.join(", ")),
            });
        }
    }
    let mut warnings = Vec::new();
    for field in &provider.fields {
        match credentials.get(&field.id) {
            None if field.required => {
                return Err(FieldError {
                    field: format!("credentials.{}", field.id),
                    code: "missing_credential",
                    message: format!("{} needs `{}` ({})", provider.name, field.id, field.label),
                });
            }
            None => {}
            Some(value) => {
                check_hard(field, value.expose())?;
                warnings.extend(check_soft(field, value.expose()));
            }
        }
    }
    Ok(warnings)
}

fn check_hard(field: &CredentialField, value: &str) -> Result<(), FieldError> {
    let name = format!("credentials.{}", field.id);
    let fail = |code, message: String| Err(FieldError { field: name.clone(), code, message });
    if value.is_empty() {
        return fail("empty_credential", format!("{} is empty", field.label));
    }
    if value.len() > MAX_CREDENTIAL_BYTES {
        return fail(
            "credential_too_long",
            format!("{} is {} bytes; no provider key is longer than {MAX_CREDENTIAL_BYTES}", field.label, value.len()),
        );
    }
    if value.chars().any(char::is_whitespace) {
        return fail(
            "credential_has_whitespace",
            format!("{} contains whitespace (a space, tab or line break); paste the key without it", field.label),
        );
    }
    if value.chars().any(char::is_control) {
        return fail("credential_has_control_characters", format!("{} contains control characters", field.label));
    }
    Ok(())
}

fn check_soft(field: &CredentialField, value: &str) -> Vec<FormatWarning> {
    let rules = &field.format;
    let hint = rules.hint.as_deref().map(|h| format!(" {h}")).unwrap_or_default();
    let warn = |code: &str, what: String| FormatWarning {
        field: format!("credentials.{}", field.id),
        code: code.to_owned(),
        message: format!("{what}; saved anyway, since providers change key formats.{hint}"),
    };
    let mut out = Vec::new();
    let length = value.chars().count();
    if !rules.prefixes.is_empty() && !rules.prefixes.iter().any(|p| value.starts_with(p.as_str())) {
        out.push(warn("unexpected_prefix", format!("{} usually starts with {}", field.label, rules.prefixes.join(" or "))));
    }
    if let Some(min) = rules.min_length.filter(|min| length < *min) {
        out.push(warn("unexpectedly_short", format!("{} is {length} characters; expected at least {min}", field.label)));
    }
    if let Some(max) = rules.max_length.filter(|max| length > *max) {
        out.push(warn("unexpectedly_long", format!("{} is {length} characters; expected at most {max}", field.label)));
    }
    if let Some(pattern) = &rules.pattern {
        // Patterns were compiled once by the catalog check; an invalid one cannot reach here.
        if let Ok(re) = regex::Regex::new(pattern)
            && !re.is_match(value)
        {
            out.push(warn("unexpected_format", format!("{} does not look like a usual {} value", field.label, field.label)));
        }
    }
    out
}

/// Labels are free text for people: trimmed, 1..=100 characters, no control characters.
pub fn check_label(label: &str) -> Result<String, FieldError> {
    let trimmed = label.trim();
    let fail = |code, message: &str| Err(FieldError { field: "label".into(), code, message: message.into() });
    if trimmed.chars().count() > MAX_LABEL_CHARS {
        return fail("label_too_long", "label is longer than 100 characters");
    }
    if trimmed.chars().any(char::is_control) {
        return fail("label_has_control_characters", "label contains control characters");
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::catalog;

    fn creds(pairs: &[(&str, &str)]) -> Credentials {
        Credentials::from_pairs(pairs)
    }

    #[test]
    fn hard_errors_name_the_field() {
        let openai = catalog().provider("openai").unwrap();
        let err = check_credentials(openai, &creds(&[("api_key", "")])).unwrap_err();
        assert_eq!((err.field.as_str(), err.code), ("credentials.api_key", "empty_credential"));
        let err = check_credentials(openai, &creds(&[("api_key", "sk-a b")])).unwrap_err();
        assert_eq!(err.code, "credential_has_whitespace");
        let err = check_credentials(openai, &creds(&[("api_key", &"x".repeat(4097))])).unwrap_err();
        assert_eq!(err.code, "credential_too_long");
        let err = check_credentials(openai, &creds(&[])).unwrap_err();
        assert_eq!(err.code, "missing_credential");
        let err = check_credentials(openai, &creds(&[("api_key", "sk-abc"), ("password", "x")])).unwrap_err();
        assert_eq!((err.field.as_str(), err.code), ("credentials.password", "unknown_credential_field"));
    }

    #[test]
    fn soft_mismatch_is_a_warning_not_an_error() {
        let anthropic = catalog().provider("anthropic").unwrap();
        let warnings = check_credentials(anthropic, &creds(&[("api_key", "not-an-anthropic-key-1234")])).unwrap();
        assert!(warnings.iter().any(|w| w.code == "unexpected_prefix"), "{warnings:?}");
        let good = format!("sk-ant-api03-{}AA", "A1_-".repeat(23).chars().take(93).collect::<String>());
        assert_eq!(check_credentials(anthropic, &creds(&[("api_key", &good)])).unwrap(), vec![]);
    }

    #[test]
    fn gemini_accepts_both_key_generations_without_warning() {
        let gemini = catalog().provider("gemini").unwrap();
        let classic = format!("AIza{}", "B".repeat(35));
        assert_eq!(check_credentials(gemini, &creds(&[("api_key", &classic)])).unwrap(), vec![]);
        let auth_key = format!("AQ.{}", "Ab3_-x".repeat(10));
        assert_eq!(check_credentials(gemini, &creds(&[("api_key", &auth_key)])).unwrap(), vec![]);
    }

    #[test]
    fn labels_are_trimmed_and_bounded() {
        assert_eq!(check_label("  team key ").unwrap(), "team key");
        assert_eq!(check_label(&"x".repeat(101)).unwrap_err().code, "label_too_long");
        assert_eq!(check_label("a\u{7}").unwrap_err().code, "label_has_control_characters");
    }
}
