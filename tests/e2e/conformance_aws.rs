//! The port conformance suites against the AWS adapters, on moto server.

mod dynamo_store {
    stockpulse_tests::key_store_conformance!(stockpulse_tests::aws::dynamo_stores());
}

mod kms_vault {
    stockpulse_tests::key_vault_conformance!(stockpulse_tests::aws::kms_vault());
}

mod secrets_manager_vault {
    stockpulse_tests::key_vault_conformance!(stockpulse_tests::aws::secrets_manager_vault());
}
