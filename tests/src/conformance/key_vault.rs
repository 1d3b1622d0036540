//! The `KeyVault` contract.

use std::sync::Arc;

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
        );
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
