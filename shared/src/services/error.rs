//! The service layer's one error type. The HTTP layer maps it to the envelope in one place.

use crate::domain::validation::FieldError;
use crate::ports::{StoreError, VaultError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Malformed request (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String, field: Option<String> },
    /// Well-formed but semantically invalid (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String, field: Option<String> },
    /// The caller's role does not allow it (403).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// Nothing with that id in the caller's workspace (404).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request conflicts with the current state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// `If-Match` names a version that is no longer current (412).
    #[error("{message}")]
    PreconditionFailed { code: &'static str, message: String },
    /// A backend is down or misconfigured (503).
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// A fault on our side the caller cannot fix (500, generic message, details only in the log).
    #[error("{message}")]
    Internal { code: &'static str, message: String },
}

impl ServiceError {
    pub fn key_not_found() -> ServiceError {
        ServiceError::NotFound { code: "key_not_found", message: "no key with this id in your workspace".into() }
    }
}

impl From<FieldError> for ServiceError {
    fn from(e: FieldError) -> Self {
        ServiceError::Unprocessable { code: e.code, message: e.message, field: Some(e.field) }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SlotTaken => ServiceError::Conflict {
                code: "key_exists",
                message: "your workspace already has a key for this provider and environment; edit or rotate it instead".into(),
            },
            StoreError::VersionMismatch => ServiceError::PreconditionFailed {
                code: "version_mismatch",
                message: "the key was changed since you read it; reload it and apply your change again".into(),
            },
            StoreError::NotFound => ServiceError::key_not_found(),
            StoreError::Unavailable(detail) => {
                tracing::error!(error = %detail, "store unavailable");
                ServiceError::Unavailable { code: "store_unavailable", message: "the key store is unavailable; try again shortly".into() }
            }
            StoreError::Corrupt(detail) => {
                tracing::error!(error = %detail, "store holds unreadable data");
                ServiceError::Internal {
                    code: "store_corrupt",
                    message: "stored data could not be read; an operator has to look at it".into(),
                }
            }
        }
    }
}

impl From<VaultError> for ServiceError {
    fn from(e: VaultError) -> Self {
        tracing::error!(error = %e, "vault error");
        match e {
            VaultError::WrongMasterKey { .. } => ServiceError::Unavailable { code: "wrong_master_key", message: e.to_string() },
            VaultError::NotBound | VaultError::Corrupt(_) => ServiceError::Internal {
                code: "key_material_unreadable",
                message: "the stored key material cannot be decrypted for this record; save the key again".into(),
            },
            VaultError::Unavailable(_) => {
                ServiceError::Unavailable { code: "vault_unavailable", message: "the key vault is unavailable; try again shortly".into() }
            }
        }
    }
}
