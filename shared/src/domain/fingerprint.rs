//! Key fingerprints: HMAC-SHA-256 of a credential value under a server-side key, never a plain
//! hash (a plain hash of a short key can be brute-forced). Every vault uses this with its own
//! fingerprint key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::secret::KeyMaterial;

/// 128 bits of HMAC-SHA-256, hex: plenty to tell keys apart, short enough to read.
pub fn keyed_fingerprint(key: &[u8; 32], value: &KeyMaterial) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value.expose().as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}
