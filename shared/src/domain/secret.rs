//! Key material in memory.
//!
//! `KeyMaterial` deliberately has no `Debug`, `Display`, `Serialize` or `Clone`: the compiler
//! refuses to log it, print it, put it in a JSON answer or copy it around. It is zeroized on drop.
//! The only way to read it is `expose()`, which callers use to encrypt, inject or redact it.

use std::collections::BTreeMap;

use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

/// The compiler refuses to print it:
///
/// ```compile_fail
/// let key = stockpulse_shared::domain::secret::KeyMaterial::new("sk-secret".into());
/// println!("{key:?}");
/// ```
///
/// ```compile_fail
/// let key = stockpulse_shared::domain::secret::KeyMaterial::new("sk-secret".into());
/// println!("{key}");
/// ```
///
/// or to put it in JSON:
///
/// ```compile_fail
/// let key = stockpulse_shared::domain::secret::KeyMaterial::new("sk-secret".into());
/// serde_json::to_string(&key).unwrap();
/// ```
///
/// or to copy it:
///
/// ```compile_fail
/// let key = stockpulse_shared::domain::secret::KeyMaterial::new("sk-secret".into());
/// let copy = key.clone();
/// ```
pub struct KeyMaterial(Zeroizing<String>);

impl KeyMaterial {
    pub fn new(value: String) -> Self {
        KeyMaterial(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for KeyMaterial {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(KeyMaterial::new)
    }
}

/// The credential fields of one key version (`api_key`, `secret_key`, `organization_id`, ...).
#[derive(Default)]
pub struct Credentials(BTreeMap<String, KeyMaterial>);

impl Credentials {
    pub fn new() -> Self {
        Credentials(BTreeMap::new())
    }

    pub fn insert(&mut self, field: impl Into<String>, value: KeyMaterial) {
        self.0.insert(field.into(), value);
    }

    pub fn remove(&mut self, field: &str) {
        self.0.remove(field);
    }

    pub fn get(&self, field: &str) -> Option<&KeyMaterial> {
        self.0.get(field)
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &KeyMaterial)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The plaintext the vault seals: a JSON object of field → value, zeroized on drop.
    pub fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        // Sized for the worst case (every byte escaped as `\u00XX`, quotes, `:` and `,` per field,
        // the braces), so the buffer never grows: growing would leave a plain copy behind.
        let capacity = 2 + self.0.iter().map(|(field, value)| 6 * (field.len() + value.len()) + 6).sum::<usize>();
        let mut out = Zeroizing::new(Vec::with_capacity(capacity));
        out.push(b'{');
        for (i, (field, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // serde_json writes into our zeroized buffer; no intermediate String of the secret.
            serde_json::to_writer(&mut *out, field).expect("writing JSON to memory cannot fail");
            out.push(b':');
            serde_json::to_writer(&mut *out, value.expose()).expect("writing JSON to memory cannot fail");
        }
        out.push(b'}');
        out
    }

    /// Reverse of [`Credentials::to_plaintext`]; `None` if the bytes are not such an object.
    pub fn from_plaintext(plaintext: &[u8]) -> Option<Credentials> {
        let mut map: BTreeMap<String, String> = serde_json::from_slice(plaintext).ok()?;
        let credentials =
            Credentials(std::mem::take(&mut map).into_iter().map(|(field, value)| (field, KeyMaterial::new(value))).collect());
        Some(credentials)
    }

    /// Every secret value, for redacting answers and errors.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(|v| v.expose()).filter(|v| !v.is_empty())
    }
}

impl FromIterator<(String, KeyMaterial)> for Credentials {
    fn from_iter<I: IntoIterator<Item = (String, KeyMaterial)>>(iter: I) -> Self {
        Credentials(iter.into_iter().collect())
    }
}

impl Credentials {
    /// Convenience for tests and fixtures: `[("api_key", "sk-...")]`.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Credentials {
        pairs.iter().map(|(field, value)| ((*field).to_owned(), KeyMaterial::new((*value).to_owned()))).collect()
    }
}

impl Zeroize for Credentials {
    fn zeroize(&mut self) {
        // Dropping each `KeyMaterial` zeroizes it.
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_round_trips_with_escapes() {
        let mut c = Credentials::new();
        c.insert("api_key", KeyMaterial::new("sk-\"quoted\"\\".into()));
        c.insert("organization_id", KeyMaterial::new("org-1".into()));
        let back = Credentials::from_plaintext(&c.to_plaintext()).unwrap();
        assert_eq!(back.get("api_key").unwrap().expose(), "sk-\"quoted\"\\");
        assert_eq!(back.get("organization_id").unwrap().expose(), "org-1");
    }
}
