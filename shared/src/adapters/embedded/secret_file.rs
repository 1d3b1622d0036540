//! Small local secrets (the master key, the local token-signing secret): 32 random bytes as base64
//! in a file created with mode 0600 on first use and read back on every start after.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{OsRng, rand_core::RngCore};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

pub const SECRET_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{path} is not base64 of {SECRET_LEN} bytes: delete it only if nothing was ever protected with it")]
    Malformed { path: String },
    #[error("cannot read or create {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Decodes 32 bytes given as base64 or as 64 hex digits.
pub fn decode_secret(text: &str) -> Option<Zeroizing<[u8; SECRET_LEN]>> {
    let text = text.trim();
    let bytes = Zeroizing::new(if text.len() == 2 * SECRET_LEN { hex::decode(text).ok()? } else { STANDARD.decode(text).ok()? });
    let array: [u8; SECRET_LEN] = bytes.as_slice().try_into().ok()?;
    Some(Zeroizing::new(array))
}

/// Reads the secret at `path`, creating it (0600, parents included) if it does not exist yet.
/// Two processes starting together agree on one secret: the loser of `create_new` reads the
/// winner's file.
pub fn load_or_create(path: &Path) -> Result<Zeroizing<[u8; SECRET_LEN]>, SecretFileError> {
    let io = |source| SecretFileError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => decode_secret(&Zeroizing::new(text)).ok_or_else(|| SecretFileError::Malformed { path: path.display().to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
            OsRng.fill_bytes(&mut *secret);
            let encoded = Zeroizing::new(STANDARD.encode(*secret));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(encoded.as_bytes()).and_then(|_| file.write_all(b"\n")).and_then(|_| file.sync_all()).map_err(io)?;
                    Ok(secret)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Give the other process a moment to finish writing its file.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    load_or_create(path)
                }
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_reused_and_refused_when_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/secret");
        let a = load_or_create(&path).unwrap();
        assert_eq!(*a, *load_or_create(&path).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(load_or_create(&path), Err(SecretFileError::Malformed { .. })));
    }

    #[test]
    fn hex_and_base64_are_both_accepted() {
        assert_eq!(*decode_secret(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        assert_eq!(*decode_secret(&STANDARD.encode([0xab; 32])).unwrap(), [0xab; 32]);
        assert!(decode_secret("nope").is_none());
    }
}
