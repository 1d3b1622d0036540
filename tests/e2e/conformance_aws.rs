//! The port conformance suites against the AWS adapters, on moto server.

use std::sync::Arc;

use stockpulse_tests::conformance::ProxyStores;

/// One DynamoDB store behind every proxy port (their writes share transactions).
async fn dynamo_proxy_stores() -> ProxyStores {
    let store =
        Arc::new(stockpulse_tests::aws::dynamo_store(&stockpulse_tests::moto::shared_url(), &stockpulse_tests::aws::shared_table()).await);
    ProxyStores {
        keys: store.clone(),
        audit: store.clone(),
        meter: store.clone(),
        cache: store.clone(),
        notifications: store.clone(),
        leases: store,
    }
}

mod dynamo_store {
    stockpulse_tests::key_store_conformance!(stockpulse_tests::aws::dynamo_stores());
}

mod dynamo_meter_store {
    stockpulse_tests::meter_store_conformance!(super::dynamo_proxy_stores());
}

mod dynamo_response_cache {
    stockpulse_tests::response_cache_conformance!(super::dynamo_proxy_stores());
}

mod dynamo_notification_store {
    stockpulse_tests::notification_store_conformance!(super::dynamo_proxy_stores());
}

mod dynamo_job_leases {
    stockpulse_tests::job_leases_conformance!(super::dynamo_proxy_stores());
}

mod kms_vault {
    stockpulse_tests::key_vault_conformance!(stockpulse_tests::aws::kms_vault());
}

mod secrets_manager_vault {
    stockpulse_tests::key_vault_conformance!(stockpulse_tests::aws::secrets_manager_vault());
}
