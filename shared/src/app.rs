//! Wiring: builds the services from configuration, once, at start.

use std::sync::Arc;

use crate::adapters::aws::event_bus::PublishingNotifications;
use crate::adapters::aws::{DynamoStore, KmsVault, SecretsManagerVault};
use crate::adapters::embedded::{LocalVault, SqliteStore};
use crate::adapters::upstream::ReqwestUpstream;
use crate::config::{Backend, Config, VaultKind};
use crate::domain::catalog::{Catalog, catalog};
use crate::ports::{AuditLog, Clock, KeyStore, KeyVault, MeterStore, NotificationStore, ResponseCache, SystemClock, VaultError};
use crate::services::audit::AuditService;
use crate::services::keys::KeyService;
use crate::services::metering::MeteringService;
use crate::services::proxy::{KeyCache, ProxyService};
use crate::services::scheduler::{Scheduler, SchedulerSettings};

/// Everything a handler needs. Built once per process (Lambda init or gateway start).
pub struct App {
    pub catalog: &'static Catalog,
    pub keys: KeyService,
    pub audit: AuditService,
    pub proxy: Arc<ProxyService>,
    pub metering: MeteringService,
    pub leases: Arc<dyn crate::ports::JobLeases>,
    pub scheduler_settings: SchedulerSettings,
}

/// The storage ports one backend provides (one object may implement several: their writes
/// share transactions).
#[derive(Clone)]
pub struct Stores {
    pub keys: Arc<dyn KeyStore>,
    pub audit: Arc<dyn AuditLog>,
    pub meter: Arc<dyn MeterStore>,
    pub cache: Arc<dyn ResponseCache>,
    pub notifications: Arc<dyn NotificationStore>,
    pub leases: Arc<dyn crate::ports::JobLeases>,
}

impl Stores {
    pub fn of<T: KeyStore + AuditLog + MeterStore + ResponseCache + NotificationStore + crate::ports::JobLeases + 'static>(
        store: Arc<T>,
    ) -> Stores {
        Stores {
            keys: store.clone(),
            audit: store.clone(),
            meter: store.clone(),
            cache: store.clone(),
            notifications: store.clone(),
            leases: store,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start: {0}")]
pub struct StartupError(pub String);

impl App {
    /// The backend the configuration names; AWS clients come from the environment's SDK config.
    pub async fn from_config(config: &Config) -> Result<App, StartupError> {
        match config.backend {
            Backend::Embedded => App::embedded(config, Arc::new(SystemClock)),
            Backend::Aws => App::aws(config, &crate::adapters::aws::sdk_config().await, Arc::new(SystemClock)).await,
        }
    }

    /// DynamoDB for records and audit; the KMS vault (or the local one, for trying it out).
    pub async fn aws(config: &Config, sdk: &aws_config::SdkConfig, clock: Arc<dyn Clock>) -> Result<App, StartupError> {
        let (stores, vault) = App::aws_parts(config, sdk).await?;
        App::from_parts(config, stores, vault, clock)
    }

    /// The stores and vault `App::aws` is built from (tests wrap them to inject faults).
    pub async fn aws_parts(config: &Config, sdk: &aws_config::SdkConfig) -> Result<(Stores, Arc<dyn KeyVault>), StartupError> {
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
        let mut stores = Stores::of(Arc::new(store));
        if let Some(bus) = &config.event_bus {
            let events = aws_sdk_eventbridge::Client::new(sdk);
            stores.notifications = Arc::new(PublishingNotifications::new(stores.notifications, events, bus.clone()));
        }
        Ok((stores, vault))
    }

    /// The app over given stores and vault (tests wrap a port to inject faults).
    pub fn from_parts(config: &Config, stores: Stores, vault: Arc<dyn KeyVault>, clock: Arc<dyn Clock>) -> Result<App, StartupError> {
        App::from_parts_with_upstream(config, stores, vault, clock, App::upstream_client(config)?)
    }

    /// The HTTP client for providers that `from_parts` uses.
    pub fn upstream_client(config: &Config) -> Result<Arc<dyn crate::ports::UpstreamClient>, StartupError> {
        Ok(Arc::new(ReqwestUpstream::new(config.upstream_limits).map_err(|e| StartupError(e.to_string()))?))
    }

    /// `from_parts` with a given HTTP client for providers (tests wrap it to inject faults).
    pub fn from_parts_with_upstream(
        config: &Config,
        stores: Stores,
        vault: Arc<dyn KeyVault>,
        clock: Arc<dyn Clock>,
        upstream: Arc<dyn crate::ports::UpstreamClient>,
    ) -> Result<App, StartupError> {
        let key_cache = Arc::new(KeyCache::new(config.key_cache_ttl));
        let proxy = Arc::new(ProxyService::new(
            catalog(),
            stores.keys.clone(),
            stores.audit.clone(),
            vault.clone(),
            stores.meter.clone(),
            stores.cache.clone(),
            stores.notifications.clone(),
            upstream.clone(),
            config.upstreams.clone(),
            key_cache.clone(),
            config.proxy_limits,
        ));
        Ok(App {
            catalog: catalog(),
            keys: KeyService {
                catalog: catalog(),
                store: stores.keys.clone(),
                audit: stores.audit.clone(),
                vault,
                upstream,
                upstreams: config.upstreams.clone(),
                cache: stores.cache.clone(),
                key_cache,
                notifications: stores.notifications.clone(),
                clock: clock.clone(),
            },
            audit: AuditService::new(stores.audit.clone()),
            metering: MeteringService {
                catalog: catalog(),
                proxy: proxy.clone(),
                meter: stores.meter,
                cache: stores.cache,
                notifications: stores.notifications,
                audit: stores.audit,
            },
            proxy,
            leases: stores.leases,
            scheduler_settings: config.scheduler,
        })
    }

    /// The scheduled job over this app's stores (see `services::scheduler`).
    pub fn scheduler(&self) -> Scheduler<'_> {
        Scheduler { keys: &self.keys, leases: self.leases.clone(), settings: self.scheduler_settings }
    }

    /// The consistency check of one workspace (see `domain::consistency`).
    pub async fn check_consistency(
        &self,
        workspace: &str,
    ) -> Result<crate::domain::consistency::ConsistencyReport, crate::ports::StoreError> {
        crate::services::consistency::check_workspace(self.keys.store.as_ref(), self.keys.audit.as_ref(), workspace).await
    }

    /// The embedded backend: SQLite in the data directory and the local master key vault.
    pub fn embedded(config: &Config, clock: Arc<dyn Clock>) -> Result<App, StartupError> {
        let store = Arc::new(SqliteStore::open(&config.data_dir.join("stockpulse.db")).map_err(|e| StartupError(e.to_string()))?);
        let vault = LocalVault::load(config.master_key.as_deref().map(String::as_str), &config.data_dir)
            .map_err(|e| StartupError(e.to_string()))?;
        tracing::info!(master_key_id = %vault.key_id(), data_dir = %config.data_dir.display(), "embedded backend ready");
        App::from_parts(config, Stores::of(store), Arc::new(vault), clock)
    }
}
