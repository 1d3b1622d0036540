//! KMS envelope vault (the default on AWS).
//!
//! Each seal asks KMS for a fresh AES-256 data key (`GenerateDataKey`) under the configured KMS
//! key, with the encryption context `{workspace, key_id, version}`; the material is encrypted in
//! the process with AES-256-GCM (AAD = the same binding) and the data key's KMS ciphertext is
//! stored beside it. Opening calls `Decrypt` with the same context, so a ciphertext moved to
//! another record is refused by KMS itself, and by GCM as a second line. Plaintext data keys and
//! material live only in zeroized buffers.
//!
//! Blob layout: `0x02 | wrapped key length (u16 BE) | wrapped key | nonce (12) | ciphertext+tag`.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroizing;

use crate::adapters::sealing;
use crate::domain::fingerprint::keyed_fingerprint;
use crate::domain::secret::{Credentials, KeyMaterial};
use crate::ports::{Binding, KeyVault, SealedMaterial, VaultError};

pub const SCHEME: &str = "kms-envelope-aes256gcm";
const FORMAT: u8 = 2;

pub struct KmsVault {
    client: Client,
    key_id: String,
    fingerprint_key: Zeroizing<[u8; 32]>,
}

fn context(binding: &Binding<'_>) -> HashMap<String, String> {
    HashMap::from([
        ("workspace".to_owned(), binding.workspace.to_owned()),
        ("key_id".to_owned(), binding.key_id.to_owned()),
        ("version".to_owned(), binding.version.to_string()),
    ])
}

fn unavailable<E: std::error::Error + 'static>(e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>) -> VaultError {
    use aws_sdk_kms::error::SdkError as E2;
    let what = match &e {
        E2::TimeoutError(_) => "the request timed out".to_owned(),
        E2::DispatchFailure(_) => "KMS could not be reached".to_owned(),
        E2::ServiceError(se) => format!("KMS refused the request: {}", se.err()),
        _ => "the request failed".to_owned(),
    };
    VaultError::Unavailable(what)
}

impl KmsVault {
    /// `fingerprint_key` is the HMAC key for fingerprints (see `unwrap_fingerprint_key`).
    pub fn new(client: Client, key_id: impl Into<String>, fingerprint_key: Zeroizing<[u8; 32]>) -> KmsVault {
        KmsVault { client, key_id: key_id.into(), fingerprint_key }
    }

    /// A new fingerprint key wrapped by KMS (`{purpose: fingerprint}` context): store the
    /// returned ciphertext once, unwrap it at every start.
    pub async fn new_wrapped_fingerprint_key(client: &Client, key_id: &str) -> Result<Vec<u8>, VaultError> {
        let out = client
            .generate_data_key_without_plaintext()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context("purpose", "fingerprint")
            .send()
            .await
            .map_err(unavailable)?;
        out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| VaultError::Unavailable("KMS returned no ciphertext".into()))
    }

    /// Unwraps a fingerprint key made by `new_wrapped_fingerprint_key` (one KMS call per start).
    pub async fn unwrap_fingerprint_key(client: &Client, key_id: &str, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let out = client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .encryption_context("purpose", "fingerprint")
            .send()
            .await
            .map_err(unavailable)?;
        let plaintext = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        let key: [u8; 32] = plaintext.as_slice().try_into().map_err(|_| VaultError::Corrupt("fingerprint key is not 32 bytes".into()))?;
        Ok(Zeroizing::new(key))
    }
}

#[async_trait]
impl KeyVault for KmsVault {
    async fn seal(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context(&binding)))
            .send()
            .await
            .map_err(unavailable)?;
        let data_key = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        let wrapped = out.ciphertext_blob.map(Blob::into_inner).unwrap_or_default();
        if data_key.len() != 32 || wrapped.is_empty() || wrapped.len() > u16::MAX as usize {
            return Err(VaultError::Unavailable("KMS returned an unusable data key".into()));
        }
        let sealed = sealing::seal(&data_key, &binding, credentials)?;
        let mut blob = Vec::with_capacity(3 + wrapped.len() + sealed.len());
        blob.push(FORMAT);
        blob.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
        blob.extend_from_slice(&wrapped);
        blob.extend_from_slice(&sealed);
        Ok(SealedMaterial { scheme: SCHEME.to_owned(), blob })
    }

    async fn open(&self, binding: Binding<'_>, sealed: &SealedMaterial) -> Result<Credentials, VaultError> {
        if sealed.scheme != SCHEME {
            return Err(VaultError::Corrupt(format!("scheme `{}` is not {SCHEME}", sealed.scheme)));
        }
        let blob = &sealed.blob;
        let corrupt = || VaultError::Corrupt("unknown blob format".into());
        if blob.len() < 3 || blob[0] != FORMAT {
            return Err(corrupt());
        }
        let wrapped_len = u16::from_be_bytes([blob[1], blob[2]]) as usize;
        let rest = blob.get(3..).ok_or_else(corrupt)?;
        if rest.len() < wrapped_len + sealing::MIN_SEALED_LEN {
            return Err(corrupt());
        }
        let (wrapped, sealed) = rest.split_at(wrapped_len);
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context(Some(context(&binding)))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                // KMS refuses a data key whose context is not this record's.
                Some(se) if se.is_invalid_ciphertext_exception() => VaultError::NotBound,
                _ => unavailable(e),
            })?;
        let data_key = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        sealing::open(&data_key, &binding, sealed)
    }

    fn fingerprint(&self, value: &KeyMaterial) -> String {
        keyed_fingerprint(&self.fingerprint_key, value)
    }
}
