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
    ///
    /// The values are read from the JSON text in place and unescaped here: serde_json would
    /// unescape a value holding `"` or `\` in a scratch buffer that it frees without wiping.
    pub fn from_plaintext(plaintext: &[u8]) -> Option<Credentials> {
        let raw: BTreeMap<String, &serde_json::value::RawValue> = serde_json::from_slice(plaintext).ok()?;
        raw.into_iter().map(|(field, value)| Some((field, KeyMaterial::new(unescape_json_string(value.get())?)))).collect()
    }

    /// Every secret value, for redacting answers and errors.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.0.values().map(|v| v.expose()).filter(|v| !v.is_empty())
    }
}

/// The value of a JSON string literal (`"..."`, already validated by serde_json), written into a
/// buffer sized for it up front so that it never grows; `None` for anything but a string.
fn unescape_json_string(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = Zeroizing::new(Vec::with_capacity(inner.len()));
    let mut bytes = inner.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        let unescaped = match bytes.next()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = hex4(&mut bytes)?;
                let code = if (0xD800..0xDC00).contains(&first) {
                    // A high surrogate must be followed by `\u` and a low one.
                    if bytes.next()? != b'\\' || bytes.next()? != b'u' {
                        return None;
                    }
                    let second = hex4(&mut bytes)?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return None;
                    }
                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else {
                    first
                };
                char::from_u32(code)?
            }
            _ => return None,
        };
        let mut encoded = [0u8; 4];
        out.extend_from_slice(unescaped.encode_utf8(&mut encoded).as_bytes());
        encoded.zeroize();
    }
    // Valid UTF-8 in, whole characters out: the conversion reuses the buffer without a copy.
    String::from_utf8(std::mem::take(&mut *out)).map_err(|e| drop(Zeroizing::new(e.into_bytes()))).ok()
}

fn hex4(bytes: &mut std::str::Bytes<'_>) -> Option<u32> {
    (0..4).try_fold(0u32, |code, _| Some(code * 16 + char::from(bytes.next()?).to_digit(16)?))
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
    fn every_json_escape_reads_back_as_serde_json_reads_it() {
        for literal in
            [r#""plain""#, r#""q\"uote\\back\/slash""#, r#""\b\f\n\r\t""#, r#""\u00e9\u4e2d\ud83d\ude00""#, r#""é中😀""#, r#""""#]
        {
            let expected: String = serde_json::from_str(literal).unwrap();
            assert_eq!(unescape_json_string(literal).as_deref(), Some(expected.as_str()), "{literal}");
        }
        for malformed in [r#""\ud83d""#, r#""\ud83d\u0041""#, r#""\x""#, r#""\u12""#, "17", "null", r#""open"#] {
            assert_eq!(unescape_json_string(malformed), None, "{malformed}");
        }
    }

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
