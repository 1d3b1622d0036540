//! Opaque pagination cursors: base64url of a tagged position, so a cursor of one list cannot be
//! used on another and clients do not build them by hand.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::ServiceError;

pub fn encode(list: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{list}:{position}"))
}

pub fn decode(list: &str, cursor: &str) -> Result<String, ServiceError> {
    let invalid = || ServiceError::BadRequest {
        code: "invalid_cursor",
        message: "the cursor is not one this list gave out; start again without it".into(),
        field: Some("cursor".into()),
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (tag, position) = text.split_once(':').ok_or_else(invalid)?;
    if tag != list || position.is_empty() {
        return Err(invalid());
    }
    Ok(position.to_owned())
}

/// Page sizes: 50 unless asked, 1..=200.
pub fn limit(requested: Option<usize>) -> Result<usize, ServiceError> {
    match requested {
        None => Ok(50),
        Some(n @ 1..=200) => Ok(n),
        Some(_) => Err(ServiceError::BadRequest {
            code: "invalid_limit",
            message: "limit must be between 1 and 200".into(),
            field: Some("limit".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let c = encode("keys", "0190-abc");
        assert_eq!(decode("keys", &c).unwrap(), "0190-abc");
        assert!(decode("audit", &c).is_err());
        assert!(decode("keys", "%%%").is_err());
        assert!(decode("keys", &URL_SAFE_NO_PAD.encode("keys:")).is_err());
    }
}
