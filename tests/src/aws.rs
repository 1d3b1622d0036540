//! Builders of the AWS adapters against moto, for the conformance suites and end-to-end tests.

use std::sync::Arc;

use stockpulse_shared::adapters::aws::{DynamoStore, KmsVault, SecretsManagerVault};
use stockpulse_shared::ports::KeyVault;

use crate::conformance::Stores;
use crate::moto;

/// The table all suites of one test process share (checks isolate themselves by workspace).
pub fn shared_table() -> String {
    format!("stockpulse-test-{}", std::process::id())
}

/// A DynamoDB store on the shared moto server, its table created if missing.
pub async fn dynamo_store(url: &str, table: &str) -> DynamoStore {
    let config = moto::sdk_config(url).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table);
    store.create_table_if_missing().await.expect("create the test table in moto");
    store
}

pub async fn dynamo_stores() -> Stores {
    let store = Arc::new(dynamo_store(&moto::shared_url(), &shared_table()).await);
    Stores { keys: store.clone(), audit: store }
}

/// A fresh symmetric KMS key in moto; returns its id.
pub async fn kms_key(url: &str) -> String {
    let client = aws_sdk_kms::Client::new(&moto::sdk_config(url).await);
    let key = client.create_key().description("stockpulse test key").send().await.expect("create a KMS key in moto");
    key.key_metadata.expect("key metadata").key_id
}

/// A KMS envelope vault with its own KMS key and fingerprint key.
pub async fn kms_vault() -> Arc<dyn KeyVault> {
    let url = moto::shared_url();
    let client = aws_sdk_kms::Client::new(&moto::sdk_config(&url).await);
    let key_id = kms_key(&url).await;
    let wrapped = KmsVault::new_wrapped_fingerprint_key(&client, &key_id).await.expect("fingerprint key");
    let fingerprint_key = KmsVault::unwrap_fingerprint_key(&client, &key_id, &wrapped).await.expect("unwrap fingerprint key");
    Arc::new(KmsVault::new(client, key_id, fingerprint_key))
}

/// A Secrets Manager vault under a name prefix of its own.
pub async fn secrets_manager_vault() -> Arc<dyn KeyVault> {
    let url = moto::shared_url();
    let client = aws_sdk_secretsmanager::Client::new(&moto::sdk_config(&url).await);
    let prefix = format!("stockpulse-test-{}/", uuid::Uuid::new_v4().simple());
    let fingerprint_key = SecretsManagerVault::load_fingerprint_key(&client, &prefix, None).await.expect("fingerprint key");
    Arc::new(SecretsManagerVault::new(client, prefix, None, 7, fingerprint_key))
}
