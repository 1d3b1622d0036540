//! Wiring: builds the services from configuration, once, at start.

use std::sync::Arc;

use crate::adapters::embedded::{LocalVault, SqliteStore};
use crate::adapters::upstream::ReqwestUpstream;
use crate::config::Config;
use crate::domain::catalog::{Catalog, catalog};
use crate::services::audit::AuditService;
use crate::services::keys::KeyService;

/// Everything a handler needs. Built once per process (Lambda init or gateway start).
pub struct App {
    pub catalog: &'static Catalog,
    pub keys: KeyService,
    pub audit: AuditService,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start: {0}")]
pub struct StartupError(pub String);

impl App {
    /// The embedded backend: SQLite in the data directory and the local master key vault.
    pub fn embedded(config: &Config) -> Result<App, StartupError> {
        let store = Arc::new(SqliteStore::open(&config.data_dir.join("stockpulse.db")).map_err(|e| StartupError(e.to_string()))?);
        let vault = LocalVault::load(config.master_key.as_deref().map(String::as_str), &config.data_dir)
            .map_err(|e| StartupError(e.to_string()))?;
        tracing::info!(master_key_id = %vault.key_id(), data_dir = %config.data_dir.display(), "embedded backend ready");
        let upstream = ReqwestUpstream::new(config.upstream_limits).map_err(|e| StartupError(e.to_string()))?;
        Ok(App {
            catalog: catalog(),
            keys: KeyService {
                catalog: catalog(),
                store: store.clone(),
                audit: store.clone(),
                vault: Arc::new(vault),
                upstream: Arc::new(upstream),
                upstreams: config.upstreams.clone(),
            },
            audit: AuditService::new(store),
        })
    }
}
