//! Removing key values from text that leaves the server (provider messages, errors).
//!
//! A key can come back from a provider in several spellings: raw, percent-encoded (when it was
//! sent in a query) or base64. Every spelling is replaced, longest first.

use base64::Engine;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::secret::Credentials;

pub const REDACTED: &str = "[REDACTED]";

/// Replaces every spelling of every credential value in `text`.
pub fn redact(text: &str, credentials: &Credentials) -> String {
    Redactor::new(credentials).text(text)
}

/// Replaces every spelling of every credential value in bytes (bodies need not be UTF-8).
pub fn redact_bytes(bytes: &[u8], credentials: &Credentials) -> Vec<u8> {
    Redactor::new(credentials).bytes(bytes)
}

/// The spellings of one set of credentials, computed once (the proxy keeps one with each
/// decrypted key) and shared by every redaction of that key's answers. Cheap to clone.
#[derive(Clone)]
pub struct Redactor {
    /// Every spelling, longest first. Zeroized on drop: these are key values.
    spellings: std::sync::Arc<[zeroize::Zeroizing<Vec<u8>>]>,
}

impl Redactor {
    pub fn new(credentials: &Credentials) -> Redactor {
        let mut spellings: Vec<zeroize::Zeroizing<Vec<u8>>> =
            credentials.secret_values().flat_map(spellings).filter(|s| s.len() >= 4).collect();
        spellings.sort_by_key(|s| std::cmp::Reverse(s.len()));
        spellings.dedup();
        Redactor { spellings: spellings.into() }
    }

    pub fn bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for spelling in self.spellings.iter() {
            out = replace(&out, spelling, REDACTED.as_bytes());
        }
        out
    }

    pub fn text(&self, text: &str) -> String {
        // Replacing whole ASCII-or-UTF-8 spellings with ASCII keeps valid UTF-8 valid.
        String::from_utf8(self.bytes(text.as_bytes())).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// A redactor for a body that arrives in chunks.
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor { redactor: self.clone(), held: Vec::new() }
    }

    fn longest(&self) -> usize {
        self.spellings.first().map(|s| s.len()).unwrap_or(0)
    }
}

/// Longest unfinished line `push_lines` holds before it falls back to `push`.
const MAX_HELD_LINE: usize = 64 * 1024;

/// Redacts a body that arrives in chunks: a key split across two chunks is still found, because
/// the last `longest spelling - 1` bytes of each chunk are held back until the next one.
pub struct StreamRedactor {
    redactor: Redactor,
    held: Vec<u8>,
}

impl StreamRedactor {
    pub fn new(credentials: &Credentials) -> StreamRedactor {
        Redactor::new(credentials).stream()
    }

    /// For line-based streams (server-sent events): everything up to the last line break is
    /// redacted and sent at once, so every complete event reaches the client without waiting for
    /// the next one; only an unfinished line is held back (and a very long one is cut the usual
    /// way, so memory stays bounded).
    pub fn push_lines(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        match self.held.iter().rposition(|b| *b == b'\n') {
            Some(end) => {
                let rest = self.held.split_off(end + 1);
                let complete = std::mem::replace(&mut self.held, rest);
                self.redactor.bytes(&complete)
            }
            None if self.held.len() > MAX_HELD_LINE => self.push(&[]),
            None => Vec::new(),
        }
    }

    /// The redacted bytes that are safe to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        let held = std::mem::take(&mut self.held);
        let replaced = self.redactor.bytes(&held);
        let keep = self.redactor.longest().saturating_sub(1).min(replaced.len());
        let (ready, tail) = replaced.split_at(replaced.len() - keep);
        self.held = tail.to_vec();
        ready.to_vec()
    }

    /// Whatever was held back, at the end of the body.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.held);
        self.redactor.bytes(&rest)
    }
}

fn replace(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return haystack.to_vec();
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Each spelling is written into a zeroizing buffer sized for it up front: a growing `String`
/// (it leaves its old block behind) or a dropped duplicate (raw and percent-encoded are equal for
/// an alphanumeric key) would leave a plain copy of the key in freed memory.
fn spellings(value: &str) -> Vec<zeroize::Zeroizing<Vec<u8>>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut percent = zeroize::Zeroizing::new(Vec::with_capacity(3 * value.len()));
    for part in utf8_percent_encode(value, NON_ALPHANUMERIC) {
        percent.extend_from_slice(part.as_bytes());
    }
    let mut encoded = zeroize::Zeroizing::new(vec![0u8; base64::encoded_len(value.len(), true).expect("a key's length")]);
    let written = b64.encode_slice(value, &mut encoded[..]).expect("sized for it");
    encoded.truncate(written);
    let mut list = vec![zeroize::Zeroizing::new(value.as_bytes().to_vec()), percent, encoded];
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    list.dedup();
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::secret::KeyMaterial;

    #[test]
    fn every_spelling_is_redacted() {
        let mut c = Credentials::new();
        c.insert("api_key", KeyMaterial::new("sk-canary/redact+1=".into()));
        let encoded = utf8_percent_encode("sk-canary/redact+1=", NON_ALPHANUMERIC).to_string();
        let b64 = base64::engine::general_purpose::STANDARD.encode("sk-canary/redact+1=");
        let text = format!("raw sk-canary/redact+1= url {encoded} b64 {b64}");
        let out = redact(&text, &c);
        assert!(!out.contains("canary"), "{out}");
        assert!(!out.contains(&encoded) && !out.contains(&b64), "{out}");
        assert_eq!(out.matches(REDACTED).count(), 3);
    }

    #[test]
    fn keys_split_across_chunks_are_redacted() {
        let mut c = Credentials::new();
        c.insert("api_key", KeyMaterial::new("sk-canary-split-123456".into()));
        let body = b"{\"error\":\"bad key sk-canary-split-123456 and again sk-canary-split-123456\"}".to_vec();
        for size in 1..body.len() {
            let mut r = StreamRedactor::new(&c);
            let mut out = Vec::new();
            for chunk in body.chunks(size) {
                out.extend(r.push(chunk));
            }
            out.extend(r.finish());
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("canary"), "chunk size {size}: {text}");
            assert_eq!(text.matches(REDACTED).count(), 2);
        }
        assert_eq!(redact_bytes(b"nothing here", &c), b"nothing here");
    }

    #[test]
    fn event_streams_pass_each_complete_line_at_once() {
        let mut c = Credentials::new();
        c.insert("api_key", KeyMaterial::new("sk-canary-lines-123456".into()));
        let mut r = StreamRedactor::new(&c);
        assert_eq!(r.push_lines(b"data: {\"a\":1}\n\n"), b"data: {\"a\":1}\n\n");
        assert_eq!(r.push_lines(b"data: echo sk-canary-li"), b"");
        assert_eq!(r.push_lines(b"nes-123456\n\ndata: x"), b"data: echo [REDACTED]\n\n");
        assert_eq!(r.finish(), b"data: x");
    }
}
