//! AES-256-GCM of a credential set, bound to its record: the in-process half of every vault that
//! encrypts itself (the local vault with its master key, the KMS vault with a data key). The
//! associated data is the binding, so a sealed value opens only for the record it was made for.
//! Output layout: `nonce (12) | ciphertext+tag`.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::domain::secret::Credentials;
use crate::ports::{Binding, VaultError};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Shortest sealed value: a nonce and a tag around an empty plaintext.
pub const MIN_SEALED_LEN: usize = NONCE_LEN + TAG_LEN;

pub fn seal(key: &[u8], binding: &Binding<'_>, credentials: &Credentials) -> Result<Vec<u8>, VaultError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| VaultError::Unavailable("the encryption key is not 32 bytes".into()))?;
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let plaintext = credentials.to_plaintext();
    let aad = binding.aad();
    let ciphertext = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: &plaintext, aad: &aad })
        .map_err(|_| VaultError::Unavailable("encryption failed".into()))?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// `NotBound` when the key or the binding is not the one it was sealed with (or it was altered).
pub fn open(key: &[u8], binding: &Binding<'_>, sealed: &[u8]) -> Result<Credentials, VaultError> {
    if sealed.len() < MIN_SEALED_LEN {
        return Err(VaultError::Corrupt("sealed material is too short".into()));
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| VaultError::NotBound)?;
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let aad = binding.aad();
    let plaintext =
        Zeroizing::new(cipher.decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: &aad }).map_err(|_| VaultError::NotBound)?);
    Credentials::from_plaintext(&plaintext).ok_or_else(|| VaultError::Corrupt("decrypted material is not a credential set".into()))
}
