//! Conformance suites: one set of test functions per port, run against every adapter, so that
//! adapters cannot drift apart. Each adapter's test module invokes the suite's macro with an
//! expression that builds a fresh adapter (see `tests/e2e/conformance_embedded.rs`).
//!
//! Every check works in workspaces of its own (unique names), so suites can share one backend.

pub mod job_leases;
pub mod key_store;
pub mod key_vault;
pub mod meter_store;
pub mod notification_store;
pub mod response_cache;

use std::sync::Arc;

use stockpulse_shared::ports::{AuditLog, KeyStore};

/// The storage ports one backend provides together (their writes share transactions).
#[derive(Clone)]
pub struct Stores {
    pub keys: Arc<dyn KeyStore>,
    pub audit: Arc<dyn AuditLog>,
}

/// The storage ports the proxy adds, with the key store and audit log they share transactions
/// with: the app's own bundle.
pub use stockpulse_shared::app::Stores as ProxyStores;

/// A workspace name no other check uses.
pub fn workspace(tag: &str) -> String {
    format!("ws-{tag}-{}", uuid::Uuid::new_v4().simple())
}
