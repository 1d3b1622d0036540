//! AES-256-GCM vault with a local master key.
//!
//! The master key comes from `STOCKPULSE_MASTER_KEY` (base64 or hex of 32 bytes) or from
//! `<data dir>/master.key`, created with mode 0600 on first run (`secret_file`). Two subkeys are derived from it
//! (sealing and fingerprints) so neither use weakens the other. A sealed blob records which master
//! key sealed it, so a wrong master key is reported as such instead of as garbage.
//!
//! Blob layout: `0x01 | key id (8 bytes) | nonce (12 bytes) | ciphertext+tag`, AAD = the binding
//! (workspace, key id, version).

use std::path::Path;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::secret_file::{SecretFileError, decode_secret, load_or_create};
use crate::adapters::sealing;
use crate::domain::fingerprint::keyed_fingerprint;
use crate::domain::secret::{Credentials, KeyMaterial};
use crate::ports::{Binding, KeyVault, SealedMaterial, VaultError};

pub const SCHEME: &str = "local-aes256gcm";
const FORMAT_V1: u8 = 1;
const KEY_ID_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("STOCKPULSE_MASTER_KEY must be 32 bytes as base64 (44 characters) or hex (64 characters)")]
    BadEnvValue,
    #[error("master key file: {0}")]
    File(#[from] SecretFileError),
}

pub struct LocalVault {
    seal_key: Zeroizing<[u8; 32]>,
    fingerprint_key: Zeroizing<[u8; 32]>,
    key_id: [u8; KEY_ID_LEN],
}

impl LocalVault {
    pub fn from_master_key(master: &[u8; 32]) -> LocalVault {
        let derive = |label: &[u8]| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master).expect("HMAC takes any key length");
            mac.update(label);
            Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()))
        };
        let digest = Sha256::digest([b"stockpulse/master-key-id/v1".as_slice(), master].concat());
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&digest[..KEY_ID_LEN]);
        LocalVault { seal_key: derive(b"stockpulse/seal/v1"), fingerprint_key: derive(b"stockpulse/fingerprint/v1"), key_id }
    }

    /// The master key from `env_value` if set, else from `<data_dir>/master.key` (created 0600).
    pub fn load(env_value: Option<&str>, data_dir: &Path) -> Result<LocalVault, MasterKeyError> {
        let master = match env_value {
            Some(value) => decode_secret(value).ok_or(MasterKeyError::BadEnvValue)?,
            None => load_or_create(&data_dir.join("master.key"))?,
        };
        Ok(LocalVault::from_master_key(&master))
    }

    /// Public id of the master key (not secret; shown in errors and logs).
    pub fn key_id(&self) -> String {
        hex::encode(self.key_id)
    }
}

#[async_trait]
impl KeyVault for LocalVault {
    async fn seal(&self, binding: Binding<'_>, credentials: &Credentials) -> Result<SealedMaterial, VaultError> {
        let sealed = sealing::seal(&*self.seal_key, &binding, credentials)?;
        let mut blob = Vec::with_capacity(1 + KEY_ID_LEN + sealed.len());
        blob.push(FORMAT_V1);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(&sealed);
        Ok(SealedMaterial { scheme: SCHEME.to_owned(), blob })
    }

    async fn open(&self, binding: Binding<'_>, sealed: &SealedMaterial) -> Result<Credentials, VaultError> {
        if sealed.scheme != SCHEME {
            return Err(VaultError::Corrupt(format!("scheme `{}` is not {SCHEME}", sealed.scheme)));
        }
        let blob = &sealed.blob;
        if blob.len() < 1 + KEY_ID_LEN + sealing::MIN_SEALED_LEN || blob[0] != FORMAT_V1 {
            return Err(VaultError::Corrupt("unknown blob format".into()));
        }
        let key_id = &blob[1..1 + KEY_ID_LEN];
        if key_id != self.key_id {
            return Err(VaultError::WrongMasterKey { sealed_with: hex::encode(key_id), current: self.key_id() });
        }
        sealing::open(&*self.seal_key, &binding, &blob[1 + KEY_ID_LEN..])
    }

    fn fingerprint(&self, value: &KeyMaterial) -> String {
        keyed_fingerprint(&self.fingerprint_key, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn creds(value: &str) -> Credentials {
        let mut c = Credentials::new();
        c.insert("api_key", KeyMaterial::new(value.to_owned()));
        c
    }

    const BINDING: Binding<'static> = Binding { workspace: "w1", key_id: "k1", version: 1 };

    #[tokio::test]
    async fn seal_then_open_round_trips_and_hides_plaintext() {
        let vault = LocalVault::from_master_key(&[7; 32]);
        let sealed = vault.seal(BINDING, &creds("canary-vault-roundtrip-1")).await.unwrap();
        assert!(!sealed.blob.windows(8).any(|w| w == b"canary-v"));
        let opened = vault.open(BINDING, &sealed).await.unwrap();
        assert_eq!(opened.get("api_key").unwrap().expose(), "canary-vault-roundtrip-1");
    }

    #[tokio::test]
    async fn ciphertext_moved_to_another_record_fails_to_decrypt() {
        let vault = LocalVault::from_master_key(&[7; 32]);
        let sealed = vault.seal(BINDING, &creds("canary-vault-moved-2")).await.unwrap();
        for other in [Binding { workspace: "w2", ..BINDING }, Binding { key_id: "k2", ..BINDING }, Binding { version: 2, ..BINDING }] {
            assert_eq!(vault.open(other, &sealed).await.err(), Some(VaultError::NotBound));
        }
    }

    #[tokio::test]
    async fn wrong_master_key_is_a_clear_error() {
        let sealed = LocalVault::from_master_key(&[7; 32]).seal(BINDING, &creds("canary-vault-wrong-3")).await.unwrap();
        let other = LocalVault::from_master_key(&[8; 32]);
        let err = other.open(BINDING, &sealed).await.err().unwrap();
        assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err:?}");
        assert!(err.to_string().contains("master key"));
    }

    #[tokio::test]
    async fn tampered_blob_fails_authentication() {
        let vault = LocalVault::from_master_key(&[7; 32]);
        let mut sealed = vault.seal(BINDING, &creds("canary-vault-tamper-4")).await.unwrap();
        let last = sealed.blob.len() - 1;
        sealed.blob[last] ^= 1;
        assert_eq!(vault.open(BINDING, &sealed).await.err(), Some(VaultError::NotBound));
    }

    #[test]
    fn master_key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalVault::load(None, dir.path()).unwrap();
        let b = LocalVault::load(None, dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn env_master_key_accepts_hex_and_base64_and_refuses_junk() {
        let dir = tempfile::tempdir().unwrap();
        let hex_key = "11".repeat(32);
        let b64 = base64::engine::general_purpose::STANDARD.encode([0x11u8; 32]);
        let a = LocalVault::load(Some(&hex_key), dir.path()).unwrap();
        let b = LocalVault::load(Some(&b64), dir.path()).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert!(matches!(LocalVault::load(Some("short"), dir.path()), Err(MasterKeyError::BadEnvValue)));
        assert!(!dir.path().join("master.key").exists(), "an env key must not create a file");
    }

    #[test]
    fn fingerprints_are_keyed() {
        let value = KeyMaterial::new("canary-vault-fp-5".into());
        let a = LocalVault::from_master_key(&[1; 32]).fingerprint(&value);
        let b = LocalVault::from_master_key(&[2; 32]).fingerprint(&value);
        assert_ne!(a, b);
        assert_ne!(a, hex::encode(&Sha256::digest(b"canary-vault-fp-5")[..16]));
    }
}
