//! Wiring: builds the services from configuration, once, at start.

use std::sync::Arc;

use crate::adapters::aws::{DynamoStore, KmsVault, SecretsManagerVault};
use crate::adapters::embedded::{LocalVault, SqliteStore};
use crate::adapters::upstream::ReqwestUpstream;
use crate::config::{Backend, Config, VaultKind};
use crate::domain::catalog::{Catalog, catalog};
use crate::ports::{AuditLog, KeyStore, KeyVault, VaultError};
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
    /// The backend the configuration names; AWS clients come from the environment's SDK config.
    pub async fn from_config(config: &Config) -> Result<App, StartupError> {
        match config.backend {
            Backend::Embedded => App::embedded(config),
            Backend::Aws => App::aws(config, &crate::adapters::aws::sdk_config().await).await,
        }
    }

    /// DynamoDB for records and audit; the KMS vault (or the local one, for trying it out).
    pub async fn aws(config: &Config, sdk: &aws_config::SdkConfig) -> Result<App, StartupError> {
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), config.table.clone());
        if config.create_table {
            store.create_table_if_missing().await.map_err(|e| StartupError(e.to_string()))?;
        }
        let vault: Arc<dyn KeyVault> = match config.vault {
            VaultKind::Local => Arc::new(
                LocalVault::load(config.master_key.as_deref().map(String::as_str), &config.data_dir)
                    .map_err(|e| StartupError(e.to_string()))?,
            ),
            VaultKind::Kms => {
                let key_id = config.kms_key_id.clone().ok_or_else(|| StartupError("STOCKPULSE_KMS_KEY_ID is not set".into()))?;
                let kms = aws_sdk_kms::Client::new(sdk);
                let wrapped = store
                    .system_blob("fingerprint-key", || KmsVault::new_wrapped_fingerprint_key(&kms, &key_id))
                    .await
                    .map_err(|e: VaultError| StartupError(e.to_string()))?;
                let fingerprint_key =
                    KmsVault::unwrap_fingerprint_key(&kms, &key_id, &wrapped).await.map_err(|e| StartupError(e.to_string()))?;
                Arc::new(KmsVault::new(kms, key_id, fingerprint_key))
            }
            VaultKind::SecretsManager => {
                let client = aws_sdk_secretsmanager::Client::new(sdk);
                let fingerprint_key =
                    SecretsManagerVault::load_fingerprint_key(&client, &config.secret_prefix, config.kms_key_id.as_deref())
                        .await
                        .map_err(|e| StartupError(e.to_string()))?;
                Arc::new(SecretsManagerVault::new(
                    client,
                    config.secret_prefix.clone(),
                    config.kms_key_id.clone(),
                    config.secret_recovery_days,
                    fingerprint_key,
                ))
            }
        };
        tracing::info!(table = %config.table, vault = ?config.vault, "AWS backend ready");
        let store = Arc::new(store);
        App::assemble(config, store.clone(), store, vault)
    }

    fn assemble(config: &Config, keys: Arc<dyn KeyStore>, audit: Arc<dyn AuditLog>, vault: Arc<dyn KeyVault>) -> Result<App, StartupError> {
        let upstream = ReqwestUpstream::new(config.upstream_limits).map_err(|e| StartupError(e.to_string()))?;
        Ok(App {
            catalog: catalog(),
            keys: KeyService {
                catalog: catalog(),
                store: keys,
                audit: audit.clone(),
                vault,
                upstream: Arc::new(upstream),
                upstreams: config.upstreams.clone(),
            },
            audit: AuditService::new(audit),
        })
    }

    /// The consistency check of one workspace (see `domain::consistency`).
    pub async fn check_consistency(
        &self,
        workspace: &str,
    ) -> Result<crate::domain::consistency::ConsistencyReport, crate::ports::StoreError> {
        crate::services::consistency::check_workspace(self.keys.store.as_ref(), self.keys.audit.as_ref(), workspace).await
    }

    /// The embedded backend: SQLite in the data directory and the local master key vault.
    pub fn embedded(config: &Config) -> Result<App, StartupError> {
        let store = Arc::new(SqliteStore::open(&config.data_dir.join("stockpulse.db")).map_err(|e| StartupError(e.to_string()))?);
        let vault = LocalVault::load(config.master_key.as_deref().map(String::as_str), &config.data_dir)
            .map_err(|e| StartupError(e.to_string()))?;
        tracing::info!(master_key_id = %vault.key_id(), data_dir = %config.data_dir.display(), "embedded backend ready");
        App::assemble(config, store.clone(), store, Arc::new(vault))
    }
}
