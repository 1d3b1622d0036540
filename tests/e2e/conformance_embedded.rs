//! The port conformance suites against the embedded adapters (SQLite store, local vault).

use std::sync::Arc;

use stockpulse_shared::adapters::embedded::{LocalVault, SqliteStore};
use stockpulse_shared::ports::KeyVault;
use stockpulse_tests::conformance::{ProxyStores, Stores};
use stockpulse_tests::fresh_data_dir;

async fn sqlite() -> Stores {
    let store = Arc::new(SqliteStore::open(&fresh_data_dir().join("stockpulse.db")).expect("sqlite"));
    Stores { keys: store.clone(), audit: store }
}

async fn sqlite_proxy() -> ProxyStores {
    let store = Arc::new(SqliteStore::open(&fresh_data_dir().join("stockpulse.db")).expect("sqlite"));
    ProxyStores {
        keys: store.clone(),
        audit: store.clone(),
        meter: store.clone(),
        cache: store.clone(),
        notifications: store.clone(),
        leases: store,
    }
}

async fn local_vault() -> Arc<dyn KeyVault> {
    Arc::new(LocalVault::load(None, &fresh_data_dir()).expect("vault"))
}

mod sqlite_store {
    stockpulse_tests::key_store_conformance!(super::sqlite());
}

mod sqlite_meter_store {
    stockpulse_tests::meter_store_conformance!(super::sqlite_proxy());
}

mod sqlite_response_cache {
    stockpulse_tests::response_cache_conformance!(super::sqlite_proxy());
}

mod sqlite_notification_store {
    stockpulse_tests::notification_store_conformance!(super::sqlite_proxy());
}

mod sqlite_job_leases {
    stockpulse_tests::job_leases_conformance!(super::sqlite_proxy());
}

mod local_vault {
    stockpulse_tests::key_vault_conformance!(super::local_vault());
}
