//! The domain: pure types and rules. Never imports an AWS crate, reqwest or rusqlite.

pub mod access;
pub mod audit;
pub mod catalog;
pub mod consistency;
pub mod environment;
pub mod fingerprint;
pub mod keys;
pub mod llm_usage;
pub mod masking;
pub mod metering;
pub mod notifications;
pub mod proxy_path;
pub mod redaction;
pub mod response_cache;
pub mod rotation;
pub mod secret;
pub mod validation;
