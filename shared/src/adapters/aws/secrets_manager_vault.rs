//! Secrets Manager vault (the alternative to the KMS envelope vault).
//!
//! One secret per key record, named `<prefix><workspace>/<key id>` so that IAM policies can scope
//! a workspace by name prefix, tagged with workspace and key id, encrypted with the configured
//! KMS key (or Secrets Manager's default). Each stored version of the credentials is a secret
//! version: `PutSecretValue` with an idempotency token derived from the binding stages it as
//! `AWSCURRENT` (Secrets Manager moves the one before to `AWSPREVIOUS`). A rotation's new version
//! is staged `AWSPENDING` instead (`seal_pending`), and `label_versions` then moves the staging
//! labels to follow the key record (promotion, rollback, expiry of the previous version), the way
//! a Secrets Manager rotation function would. The sealed "material" kept in the store is only a reference
//! (secret name + version id); the secret's value names its binding, so a reference moved to
//! another record is refused. Deleting a key schedules its secret's deletion with the configured
//! recovery window.

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::types::Tag;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::domain::fingerprint::keyed_fingerprint;
use crate::domain::secret::{Credentials, KeyMaterial};
use crate::ports::{Binding, KeyVault, SealedMaterial, VaultError, VersionLabels};

pub const SCHEME: &str = "secretsmanager";

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";
/// `label_versions` makes at most one change per round (three are enough from any state Secrets
/// Manager allows); the rest is room for a concurrent labelling of the same key.
const MAX_LABEL_ROUNDS: usize = 8;

pub struct SecretsManagerVault {
    client: Client,
    prefix: String,
    kms_key_id: Option<String>,
    recovery_days: i64,
    fingerprint_key: Zeroizing<[u8; 32]>,
}

fn unavailable<E: std::error::Error + aws_sdk_secretsmanager::error::ProvideErrorMetadata + 'static>(
    e: SdkError<E, aws_sdk_secretsmanager::config::http::HttpResponse>,
) -> VaultError {
    let what = match &e {
        SdkError::TimeoutError(_) => "the request timed out".to_owned(),
        SdkError::DispatchFailure(_) => "Secrets Manager could not be reached".to_owned(),
        SdkError::ServiceError(se) => {
            let meta = aws_sdk_secretsmanager::error::ProvideErrorMetadata::meta(se.err());
            format!("Secrets Manager refused the request: {}", meta.code().unwrap_or("no code"))
        }
        _ => "the request failed".to_owned(),
    };
    VaultError::Unavailable(what)
}

/// The secret's value: the binding it belongs to and the credential fields, left as JSON text
/// for `Credentials::from_plaintext` (which unescapes them without an unwiped copy).
#[derive(Deserialize)]
struct Stored<'a> {
    workspace: String,
    key_id: String,
    version: u32,
    #[serde(borrow)]
    credentials: &'a serde_json::value::RawValue,
}

/// The (secret name, version id) a sealed reference names.
fn reference(sealed: &SealedMaterial) -> Result<(&str, &str), VaultError> {
    if sealed.scheme != SCHEME {
        return Err(VaultError::Corrupt(format!("scheme `{}` is not {SCHEME}", sealed.scheme)));
    }
    let reference = std::str::from_utf8(&sealed.blob).map_err(|_| VaultError::Corrupt("secret reference".into()))?;
    reference.split_once('\n').ok_or_else(|| VaultError::Corrupt("secret reference".into()))
}

/// The secret's value: the binding it belongs to and the credential fields, written straight
/// into a zeroized buffer.
fn secret_value(binding: &Binding<'_>, credentials: &Credentials) -> Result<Zeroizing<String>, VaultError> {
    let mut value = Zeroizing::new(Vec::new());
    value.extend_from_slice(b"{\"workspace\":");
    serde_json::to_writer(&mut *value, binding.workspace).map_err(|e| VaultError::Corrupt(e.to_string()))?;
    value.extend_from_slice(b",\"key_id\":");
    serde_json::to_writer(&mut *value, binding.key_id).map_err(|e| VaultError::Corrupt(e.to_string()))?;
    value.extend_from_slice(format!(",\"version\":{},\"credentials\":", binding.version).as_bytes());
    value.extend_from_slice(&credentials.to_plaintext());
    value.push(b'}');
    Ok(Zeroizing::new(String::from_utf8(value.to_vec()).map_err(|e| VaultError::Corrupt(e.to_string()))?))
}

/// One `UpdateSecretVersionStage` call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelMove {
    label: &'static str,
    remove_from: Option<String>,
    move_to: Option<String>,
}

/// The first change that brings the secret's labels closer to `wanted` (label, version id it
/// belongs on or `None` for none), in the order of `wanted`; `None` when they already match.
/// `stages` is DescribeSecret's `VersionIdsToStages`. A label found on several versions (real
/// Secrets Manager never allows it; moto can end up so) is removed from the extra ones first.
fn next_label_move(stages: &std::collections::HashMap<String, Vec<String>>, wanted: &[(&'static str, Option<&str>)]) -> Option<LabelMove> {
    for &(label, target) in wanted {
        let mut holders: Vec<&str> =
            stages.iter().filter(|(_, labels)| labels.iter().any(|l| l == label)).map(|(version, _)| version.as_str()).collect();
        holders.sort_unstable();
        let held_by_target = target.is_some_and(|t| holders.contains(&t));
        let stray = holders.iter().find(|&&v| Some(v) != target);
        match (stray, target) {
            (None, Some(_)) if held_by_target => continue,
            (None, None) => continue,
            (None, Some(t)) => return Some(LabelMove { label, remove_from: None, move_to: Some(t.to_owned()) }),
            (Some(stray), _) => {
                let move_to = target.filter(|_| !held_by_target).map(str::to_owned);
                return Some(LabelMove { label, remove_from: Some((*stray).to_owned()), move_to });
            }
        }
    }
    None
}

impl SecretsManagerVault {
    pub fn new(
        client: Client,
        prefix: impl Into<String>,
        kms_key_id: Option<String>,
        recovery_days: i64,
        fingerprint_key: Zeroizing<[u8; 32]>,
    ) -> Self {
        SecretsManagerVault { client, prefix: prefix.into(), kms_key_id, recovery_days, fingerprint_key }
    }

    fn secret_name(&self, binding: &Binding<'_>) -> String {
        format!("{}{}/{}", self.prefix, binding.workspace, binding.key_id)
    }

    /// The fingerprint HMAC key, kept as the secret `<prefix>system/fingerprint-key` (created on
    /// first use; every process then reads the same one).
    pub async fn load_fingerprint_key(client: &Client, prefix: &str, kms_key_id: Option<&str>) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        use base64::Engine;
        let name = format!("{prefix}system/fingerprint-key");
        let decode = |text: &str| -> Result<Zeroizing<[u8; 32]>, VaultError> {
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| VaultError::Corrupt("fingerprint key".into()))?,
            );
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| VaultError::Corrupt("fingerprint key".into()))?;
            Ok(Zeroizing::new(key))
        };
        match client.get_secret_value().secret_id(&name).send().await {
            Ok(out) => return decode(out.secret_string().unwrap_or_default()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => {}
            Err(e) => return Err(unavailable(e)),
        }
        let mut key = Zeroizing::new([0u8; 32]);
        aes_gcm::aead::rand_core::RngCore::fill_bytes(&mut aes_gcm::aead::OsRng, &mut *key);
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*key));
        let created = client
            .create_secret()
            .name(&name)
            .secret_string(encoded.as_str())
            .set_kms_key_id(kms_key_id.map(str::to_owned))
            .description("StockPulse Keys: HMAC key of key fingerprints")
            .send()
            .await;
        match created {
            Ok(_) => Ok(key),
            // Another process created it first: use theirs.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_exists_exception()) => {
                let out = client.get_secret_value().secret_id(&name).send().await.map_err(unavailable)?;
                decode(out.secret_string().unwrap_or_default())
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl KeyVault for SecretsManagerVault {
    async fn seal(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        let name = self.secret_name(&binding);
        let text = secret_value(&binding, credentials)?;
        // Idempotent per binding: a retried seal of the same version writes the same version.
        let token = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}|{}|{}", binding.workspace, binding.key_id, binding.version).as_bytes(),
        )
        .to_string();
        let put = self
            .client
            .put_secret_value()
            .secret_id(&name)
            .client_request_token(&token)
            .secret_string(text.as_str())
            .version_stages("AWSCURRENT")
            .send()
            .await;
        let version_id = match put {
            Ok(out) => out.version_id,
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => {
                let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
                let created = self
                    .client
                    .create_secret()
                    .name(&name)
                    .client_request_token(&token)
                    .secret_string(text.as_str())
                    .set_kms_key_id(self.kms_key_id.clone())
                    .description("StockPulse Keys: credentials of one stored key")
                    .tags(tag("stockpulse:workspace", binding.workspace))
                    .tags(tag("stockpulse:key-id", binding.key_id))
                    .tags(tag("managed-by", "stockpulse-keys"))
                    .send()
                    .await
                    .map_err(unavailable)?;
                created.version_id
            }
            Err(e) => return Err(unavailable(e)),
        };
        let version_id = version_id.ok_or_else(|| VaultError::Unavailable("Secrets Manager returned no version id".into()))?;
        Ok(SealedMaterial { scheme: SCHEME.to_owned(), blob: format!("{name}\n{version_id}").into_bytes() })
    }

    async fn open(&self, binding: Binding<'_>, sealed: &SealedMaterial) -> Result<Credentials, VaultError> {
        let (name, version_id) = reference(sealed)?;
        if name != self.secret_name(&binding) {
            return Err(VaultError::NotBound);
        }
        let out =
            self.client.get_secret_value().secret_id(name).version_id(version_id).send().await.map_err(|e| match e.as_service_error() {
                Some(se)
                    if se.is_resource_not_found_exception() || se.is_invalid_parameter_exception() || se.is_invalid_request_exception() =>
                {
                    VaultError::NotBound
                }
                _ => unavailable(e),
            })?;
        let text = Zeroizing::new(out.secret_string.unwrap_or_default());
        let not_credentials = || VaultError::Corrupt("the secret's value is not a credential set".into());
        let stored: Stored = serde_json::from_str(&text).map_err(|_| not_credentials())?;
        if stored.workspace != binding.workspace || stored.key_id != binding.key_id || stored.version != binding.version {
            return Err(VaultError::NotBound);
        }
        Credentials::from_plaintext(stored.credentials.get().as_bytes()).ok_or_else(not_credentials)
    }

    /// Like `seal`, but staged `AWSPENDING` (Secrets Manager moves the label off a pending
    /// version an abandoned attempt left; that one is then unlabelled, deprecated, and removed by
    /// Secrets Manager in time). The idempotency token is random: a new attempt at the same key
    /// version carries other credentials, and a token reused with another value is refused.
    /// Within one call the SDK's retries reuse the token.
    async fn seal_pending(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        let name = self.secret_name(&binding);
        let text = secret_value(&binding, credentials)?;
        let token = uuid::Uuid::new_v4().to_string();
        let put = self
            .client
            .put_secret_value()
            .secret_id(&name)
            .client_request_token(&token)
            .secret_string(text.as_str())
            .version_stages(PENDING)
            .send()
            .await;
        let version_id = match put {
            Ok(out) => out.version_id,
            // A key being rotated has its secret. Creating it here would label the new version
            // AWSCURRENT (CreateSecret always does), which is not a pending version.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => {
                return Err(VaultError::Unavailable("the key's secret is missing".into()));
            }
            Err(e) => return Err(unavailable(e)),
        };
        let version_id = version_id.ok_or_else(|| VaultError::Unavailable("Secrets Manager returned no version id".into()))?;
        Ok(SealedMaterial { scheme: SCHEME.to_owned(), blob: format!("{name}\n{version_id}").into_bytes() })
    }

    fn holds_outside_material(&self) -> bool {
        true
    }

    fn has_labels(&self) -> bool {
        true
    }

    /// Moves the staging labels one `UpdateSecretVersionStage` at a time, re-reading them
    /// (`DescribeSecret`) before each: `AWSCURRENT` first, because moving it makes Secrets
    /// Manager put `AWSPREVIOUS` on the version it left; then `AWSPENDING` and `AWSPREVIOUS`.
    /// Labels already in place cost one `DescribeSecret` and nothing else.
    async fn label_versions(&self, workspace: &str, key_id: &str, labels: &VersionLabels<'_>) -> Result<(), VaultError> {
        let name = self.secret_name(&Binding { workspace, key_id, version: 0 });
        let version_of = |sealed: &SealedMaterial| -> Result<String, VaultError> {
            let (secret, version_id) = reference(sealed)?;
            if secret != name {
                return Err(VaultError::NotBound);
            }
            Ok(version_id.to_owned())
        };
        let current = version_of(labels.current)?;
        let pending = labels.pending.map(version_of).transpose()?;
        let previous = labels.previous.map(version_of).transpose()?;
        let wanted = [(CURRENT, Some(current.as_str())), (PENDING, pending.as_deref()), (PREVIOUS, previous.as_deref())];
        let mut failed: Option<LabelMove> = None;
        for _ in 0..MAX_LABEL_ROUNDS {
            let described = self.client.describe_secret().secret_id(&name).send().await.map_err(|e| {
                if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) {
                    VaultError::Unavailable("the key's secret is missing".into())
                } else {
                    unavailable(e)
                }
            })?;
            let Some(change) = next_label_move(described.version_ids_to_stages().unwrap_or(&Default::default()), &wanted) else {
                return Ok(());
            };
            let updated = self
                .client
                .update_secret_version_stage()
                .secret_id(&name)
                .version_stage(change.label)
                .set_remove_from_version_id(change.remove_from.clone())
                .set_move_to_version_id(change.move_to.clone())
                .send()
                .await;
            match updated {
                Ok(_) => failed = None,
                // The labels moved under us (another labelling of this key): read them again.
                // The same change refused twice over fresh labels is no race.
                Err(e) if e.as_service_error().is_some_and(|se| se.is_invalid_parameter_exception()) => {
                    if failed.as_ref() == Some(&change) {
                        // The reference names a version this secret does not have (any more).
                        return Err(if change.move_to.is_some() { VaultError::NotBound } else { unavailable(e) });
                    }
                    failed = Some(change);
                }
                Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => {
                    return Err(VaultError::Unavailable("the key's secret is missing".into()));
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(VaultError::Unavailable("the secret's staging labels kept changing; try again".into()))
    }

    fn fingerprint(&self, value: &KeyMaterial) -> String {
        keyed_fingerprint(&self.fingerprint_key, value)
    }

    async fn forget(&self, workspace: &str, key_id: &str) -> Result<(), VaultError> {
        let name = self.secret_name(&Binding { workspace, key_id, version: 0 });
        let deleted = self.client.delete_secret().secret_id(&name).recovery_window_in_days(self.recovery_days).send().await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => Ok(()),
            // Refused because it is scheduled for deletion already: an earlier call released it
            // and the record of that was not written (the scheduled job retries the release).
            Err(e) if e.as_service_error().is_some_and(|se| se.is_invalid_request_exception()) => {
                match self.client.describe_secret().secret_id(&name).send().await {
                    Ok(described) if described.deleted_date.is_some() => Ok(()),
                    _ => Err(unavailable(e)),
                }
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn restore(&self, workspace: &str, key_id: &str) -> Result<(), VaultError> {
        let name = self.secret_name(&Binding { workspace, key_id, version: 0 });
        self.client.restore_secret().secret_id(name).send().await.map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn stages(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs.iter().map(|(v, labels)| (v.to_string(), labels.iter().map(|l| l.to_string()).collect())).collect()
    }

    fn mv(label: &'static str, remove_from: Option<&str>, move_to: Option<&str>) -> Option<LabelMove> {
        Some(LabelMove { label, remove_from: remove_from.map(str::to_owned), move_to: move_to.map(str::to_owned) })
    }

    #[test]
    fn labels_in_place_need_no_change() {
        let s = stages(&[("v1", &[PREVIOUS]), ("v2", &[CURRENT]), ("v0", &[])]);
        assert_eq!(next_label_move(&s, &[(CURRENT, Some("v2")), (PENDING, None), (PREVIOUS, Some("v1"))]), None);
    }

    #[test]
    fn current_moves_first_then_pending_and_previous() {
        let wanted = [(CURRENT, Some("v2")), (PENDING, None), (PREVIOUS, Some("v1"))];
        let s = stages(&[("v1", &[CURRENT]), ("v2", &[PENDING]), ("v0", &[PREVIOUS])]);
        assert_eq!(next_label_move(&s, &wanted), mv(CURRENT, Some("v1"), Some("v2")));
        // What Secrets Manager makes of it: AWSPREVIOUS follows the version AWSCURRENT left.
        let s = stages(&[("v1", &[PREVIOUS]), ("v2", &[PENDING, CURRENT]), ("v0", &[])]);
        assert_eq!(next_label_move(&s, &wanted), mv(PENDING, Some("v2"), None));
    }

    #[test]
    fn a_label_with_no_holder_is_attached_and_one_wanted_nowhere_is_removed() {
        let s = stages(&[("v1", &[CURRENT]), ("v2", &[])]);
        assert_eq!(next_label_move(&s, &[(CURRENT, Some("v1")), (PENDING, Some("v2"))]), mv(PENDING, None, Some("v2")));
        let s = stages(&[("v1", &[CURRENT]), ("v2", &[PREVIOUS])]);
        assert_eq!(next_label_move(&s, &[(CURRENT, Some("v1")), (PREVIOUS, None)]), mv(PREVIOUS, Some("v2"), None));
    }

    #[test]
    fn a_label_on_two_versions_is_removed_from_the_wrong_one() {
        let s = stages(&[("v1", &[CURRENT]), ("v2", &[CURRENT])]);
        assert_eq!(next_label_move(&s, &[(CURRENT, Some("v2"))]), mv(CURRENT, Some("v1"), None));
    }

    #[test]
    fn references_are_checked() {
        let sealed = SealedMaterial { scheme: SCHEME.into(), blob: b"p/ws/key\nabc".to_vec() };
        assert_eq!(reference(&sealed).unwrap(), ("p/ws/key", "abc"));
        let other = SealedMaterial { scheme: "local-aes256gcm".into(), blob: sealed.blob.clone() };
        assert!(matches!(reference(&other), Err(VaultError::Corrupt(_))));
    }
}
