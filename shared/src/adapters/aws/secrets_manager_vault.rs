//! Secrets Manager vault (the alternative to the KMS envelope vault).
//!
//! One secret per key record, named `<prefix><workspace>/<key id>` so that IAM policies can scope
//! a workspace by name prefix, tagged with workspace and key id, encrypted with the configured
//! KMS key (or Secrets Manager's default). Each stored version of the credentials is a secret
//! version: `PutSecretValue` with an idempotency token derived from the binding stages it as
//! `AWSCURRENT` (Secrets Manager moves the one before to `AWSPREVIOUS`); the rotation work uses
//! `AWSPENDING` on the same secrets. The sealed "material" kept in the store is only a reference
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
use crate::ports::{Binding, KeyVault, SealedMaterial, VaultError};

pub const SCHEME: &str = "secretsmanager";

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

/// The secret's value: the binding it belongs to and the credential fields.
#[derive(Deserialize)]
struct Stored {
    workspace: String,
    key_id: String,
    version: u32,
    credentials: std::collections::BTreeMap<String, String>,
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
        // The value, written straight into a zeroized buffer.
        let mut value = Zeroizing::new(Vec::new());
        value.extend_from_slice(b"{\"workspace\":");
        serde_json::to_writer(&mut *value, binding.workspace).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        value.extend_from_slice(b",\"key_id\":");
        serde_json::to_writer(&mut *value, binding.key_id).map_err(|e| VaultError::Corrupt(e.to_string()))?;
        value.extend_from_slice(format!(",\"version\":{},\"credentials\":", binding.version).as_bytes());
        value.extend_from_slice(&credentials.to_plaintext());
        value.push(b'}');
        let text = Zeroizing::new(String::from_utf8(value.to_vec()).map_err(|e| VaultError::Corrupt(e.to_string()))?);
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
        if sealed.scheme != SCHEME {
            return Err(VaultError::Corrupt(format!("scheme `{}` is not {SCHEME}", sealed.scheme)));
        }
        let reference = std::str::from_utf8(&sealed.blob).map_err(|_| VaultError::Corrupt("secret reference".into()))?;
        let (name, version_id) = reference.split_once('\n').ok_or_else(|| VaultError::Corrupt("secret reference".into()))?;
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
        let mut stored: Stored =
            serde_json::from_str(&text).map_err(|_| VaultError::Corrupt("the secret's value is not a credential set".into()))?;
        if stored.workspace != binding.workspace || stored.key_id != binding.key_id || stored.version != binding.version {
            return Err(VaultError::NotBound);
        }
        let credentials =
            std::mem::take(&mut stored.credentials).into_iter().map(|(field, value)| (field, KeyMaterial::new(value))).collect();
        Ok(credentials)
    }

    fn fingerprint(&self, value: &KeyMaterial) -> String {
        keyed_fingerprint(&self.fingerprint_key, value)
    }

    async fn forget(&self, workspace: &str, key_id: &str) -> Result<(), VaultError> {
        let name = self.secret_name(&Binding { workspace, key_id, version: 0 });
        let deleted = self.client.delete_secret().secret_id(name).recovery_window_in_days(self.recovery_days).send().await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception()) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }
}
