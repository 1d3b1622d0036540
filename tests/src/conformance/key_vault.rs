//! The `KeyVault` contract.

use std::sync::Arc;

use base64::Engine;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512, Sha512_256};
use stockpulse_shared::domain::secret::{Credentials, KeyMaterial};
use stockpulse_shared::ports::{Binding, KeyVault, VaultError};

use crate::canary;

/// Runs every check of the suite as its own `#[tokio::test]` against the vault `$make` builds.
#[macro_export]
macro_rules! key_vault_conformance {
    ($make:expr) => {
        $crate::key_vault_conformance!(@tests $make;
            seal_then_open_round_trips_every_field,
            ciphertext_does_not_contain_the_plaintext,
            opening_under_another_binding_fails,
            altered_ciphertext_fails,
            fingerprints_are_stable_and_distinct,
            fingerprints_are_no_plain_digest_of_the_key,
        );

        /// Two vaults built alike but each with its own secret.
        #[tokio::test]
        async fn fingerprints_depend_on_the_vaults_own_secret() {
            let (vault, other) = ($make.await, $make.await);
            $crate::conformance::key_vault::fingerprints_depend_on_the_vaults_own_secret(vault, other).await;
        }
    };
    (@tests $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let vault = $make.await;
                $crate::conformance::key_vault::$name(vault).await;
            }
        )+
    };
}

fn binding<'a>(ws: &'a str, key: &'a str, version: u32) -> Binding<'a> {
    Binding { workspace: ws, key_id: key, version }
}

fn two_fields() -> (Credentials, String, String) {
    let (a, b) = (canary("PK"), canary("secret-"));
    (Credentials::from_pairs(&[("key_id", &a), ("secret_key", &b)]), a, b)
}

pub async fn seal_then_open_round_trips_every_field(vault: Arc<dyn KeyVault>) {
    let ws = super::workspace("vault-rt");
    let (credentials, a, b) = two_fields();
    let sealed = vault.seal(binding(&ws, "k1", 1), &credentials).await.unwrap();
    let opened = vault.open(binding(&ws, "k1", 1), &sealed).await.unwrap();
    assert_eq!(opened.get("key_id").unwrap().expose(), a);
    assert_eq!(opened.get("secret_key").unwrap().expose(), b);
    assert_eq!(opened.fields().count(), 2);
}

pub async fn ciphertext_does_not_contain_the_plaintext(vault: Arc<dyn KeyVault>) {
    let ws = super::workspace("vault-ct");
    let (credentials, a, b) = two_fields();
    let sealed = vault.seal(binding(&ws, "k1", 1), &credentials).await.unwrap();
    for secret in [a, b] {
        let body = secret.split_once("CANARY").unwrap().1.to_owned();
        assert!(!sealed.blob.windows(body.len()).any(|w| w == body.as_bytes()), "the sealed blob holds a plaintext value");
    }
}

pub async fn opening_under_another_binding_fails(vault: Arc<dyn KeyVault>) {
    let ws = super::workspace("vault-bind");
    let other_ws = super::workspace("vault-bind-other");
    let (credentials, _, _) = two_fields();
    let sealed = vault.seal(binding(&ws, "k1", 1), &credentials).await.unwrap();
    for wrong in [binding(&other_ws, "k1", 1), binding(&ws, "k2", 1), binding(&ws, "k1", 2)] {
        let err = vault.open(wrong, &sealed).await.err().expect("must not open under another binding");
        assert_eq!(err, VaultError::NotBound, "{wrong:?}");
    }
}

pub async fn altered_ciphertext_fails(vault: Arc<dyn KeyVault>) {
    let ws = super::workspace("vault-alter");
    let (credentials, _, _) = two_fields();
    let mut sealed = vault.seal(binding(&ws, "k1", 1), &credentials).await.unwrap();
    let last = sealed.blob.len() - 1;
    sealed.blob[last] ^= 0x01;
    assert!(vault.open(binding(&ws, "k1", 1), &sealed).await.is_err());
}

pub async fn fingerprints_are_stable_and_distinct(vault: Arc<dyn KeyVault>) {
    let a = KeyMaterial::new(canary("fp-"));
    let b = KeyMaterial::new(canary("fp-"));
    assert_eq!(vault.fingerprint(&a), vault.fingerprint(&a));
    assert_ne!(vault.fingerprint(&a), vault.fingerprint(&b));
    assert!(!vault.fingerprint(&a).contains(a.expose()));
}

/// The plain digests a fingerprint must not be (or contain, or be cut from): SHA-2 of every
/// size, and HMAC-SHA-256 under an empty key (the same as under an all-zero key). SHA-1 and MD5
/// are not among the workspace's dependencies and are not checked.
fn plain_digests(value: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let hmac_empty_key = {
        let (inner_pad, outer_pad) = ([0x36u8; 64], [0x5cu8; 64]);
        let inner = Sha256::new().chain_update(inner_pad).chain_update(value).finalize();
        Sha256::new().chain_update(outer_pad).chain_update(inner).finalize().to_vec()
    };
    vec![
        ("SHA-224", Sha224::digest(value).to_vec()),
        ("SHA-256", Sha256::digest(value).to_vec()),
        ("SHA-384", Sha384::digest(value).to_vec()),
        ("SHA-512", Sha512::digest(value).to_vec()),
        ("SHA-512/256", Sha512_256::digest(value).to_vec()),
        ("HMAC-SHA-256 with an empty key", hmac_empty_key),
    ]
}

fn spellings(digest: &[u8]) -> Vec<String> {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut out: Vec<String> = engines.iter().map(|e| e.encode(digest)).collect();
    out.push(hex.to_ascii_uppercase());
    out.push(hex);
    out
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The problems `fingerprint` has as a fingerprint of `value`: empty, or a plain digest of it in
/// whole or in part, in any usual spelling.
pub fn plain_digest_problems(value: &str, fingerprint: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if fingerprint.len() < 16 {
        problems.push(format!("the fingerprint `{fingerprint}` is too short to tell keys apart"));
    }
    let raw = hex_bytes(fingerprint).or_else(|| base64::engine::general_purpose::STANDARD.decode(fingerprint).ok());
    for (name, digest) in plain_digests(value.as_bytes()) {
        for spelling in spellings(&digest) {
            if spelling.contains(fingerprint) || fingerprint.contains(&spelling) {
                problems.push(format!("the fingerprint is (part of) the plain {name} of the key"));
            }
        }
        if let Some(raw) = &raw
            && !raw.is_empty()
            && digest.windows(raw.len()).any(|w| w == raw.as_slice())
        {
            problems.push(format!("the fingerprint's bytes are cut from the plain {name} of the key"));
        }
    }
    problems
}

pub async fn fingerprints_are_no_plain_digest_of_the_key(vault: Arc<dyn KeyVault>) {
    // The check itself finds a plain digest, whole or cut, in each spelling.
    let probe = canary("fp-probe-");
    let sha256 = Sha256::digest(probe.as_bytes());
    for planted in [spellings(&sha256)[0].clone(), spellings(&sha256)[5].clone(), spellings(&sha256)[5][..32].to_owned()] {
        assert!(!plain_digest_problems(&probe, &planted).is_empty(), "the check misses {planted}");
    }
    for value in [canary("fp-"), canary("sk-proj-"), "short".to_owned()] {
        let fingerprint = vault.fingerprint(&KeyMaterial::new(value.clone()));
        let problems = plain_digest_problems(&value, &fingerprint);
        assert!(problems.is_empty(), "{problems:?}");
    }
}

pub async fn fingerprints_depend_on_the_vaults_own_secret(vault: Arc<dyn KeyVault>, other: Arc<dyn KeyVault>) {
    let value = KeyMaterial::new(canary("fp-"));
    assert_eq!(vault.fingerprint(&value), vault.fingerprint(&value));
    assert_ne!(
        vault.fingerprint(&value),
        other.fingerprint(&value),
        "two vaults with their own secrets give one key the same fingerprint: it is not keyed by the vault's secret"
    );
}
