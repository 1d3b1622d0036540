//! The Secrets Manager vault's staging labels follow a rotation against moto: a pending version is
//! staged `AWSPENDING`, promotion and rollback move `AWSCURRENT` / `AWSPREVIOUS`, labelling twice
//! changes nothing, and every version still opens by its reference.

use std::collections::BTreeMap;

use stockpulse_shared::domain::secret::Credentials;
use stockpulse_shared::ports::{Binding, KeyVault, SealedMaterial, VaultError, VersionLabels};
use stockpulse_tests::{aws, canary, moto};

/// A raw client on the same moto server, to read the labels as Secrets Manager keeps them.
async fn raw_client() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&moto::sdk_config(&moto::shared_url()).await)
}

/// (secret name, version id) of a reference.
fn parts(sealed: &SealedMaterial) -> (String, String) {
    let text = String::from_utf8(sealed.blob.clone()).unwrap();
    let (name, version) = text.split_once('\n').unwrap();
    (name.to_owned(), version.to_owned())
}

fn version_id(sealed: &SealedMaterial) -> String {
    parts(sealed).1
}

/// The secret's labelled versions: version id → sorted labels. Unlabelled versions are left out
/// (Secrets Manager does not list them; moto lists them with no labels).
async fn labels(client: &aws_sdk_secretsmanager::Client, name: &str) -> BTreeMap<String, Vec<String>> {
    let described = client.describe_secret().secret_id(name).send().await.expect("describe the secret");
    described
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, stages)| !stages.is_empty())
        .map(|(version, mut stages)| {
            stages.sort();
            (version, stages)
        })
        .collect()
}

/// The versions that carry `label`.
fn holders(labels: &BTreeMap<String, Vec<String>>, label: &str) -> Vec<String> {
    labels.iter().filter(|(_, stages)| stages.iter().any(|s| s == label)).map(|(version, _)| version.clone()).collect()
}

fn credentials(value: &str) -> Credentials {
    Credentials::from_pairs(&[("api_key", value)])
}

fn binding<'a>(workspace: &'a str, key_id: &'a str, version: u32) -> Binding<'a> {
    Binding { workspace, key_id, version }
}

async fn assert_opens(vault: &dyn KeyVault, binding: Binding<'_>, sealed: &SealedMaterial, value: &str) {
    let opened = vault.open(binding, sealed).await.expect("open the version by its reference");
    assert!(opened.get("api_key").map(|v| v.expose()) == Some(value), "version {} opens to its own value", binding.version);
}

#[tokio::test]
async fn rotation_labels_follow_the_record_on_secrets_manager() {
    let vault = aws::secrets_manager_vault().await;
    assert!(vault.has_labels());
    let client = raw_client().await;
    let (ws, key) = ("ws-sm-labels-1", "key-rotated");

    let value1 = canary("sk-proj-");
    let v1 = vault.seal(binding(ws, key, 1), &credentials(&value1)).await.expect("seal v1");
    let name = parts(&v1).0;
    let labelled = labels(&client, &name).await;
    assert_eq!(holders(&labelled, "AWSCURRENT"), vec![version_id(&v1)], "{labelled:?}");

    // A rotation stages the new version as pending; the current one stays current.
    let value2 = canary("sk-proj-");
    let v2 = vault.seal_pending(binding(ws, key, 2), &credentials(&value2)).await.expect("seal_pending v2");
    assert_eq!(parts(&v2).0, name, "the pending version is a version of the same secret");
    let labelled = labels(&client, &name).await;
    assert_eq!(holders(&labelled, "AWSCURRENT"), vec![version_id(&v1)], "{labelled:?}");
    assert_eq!(holders(&labelled, "AWSPENDING"), vec![version_id(&v2)], "{labelled:?}");

    // Promotion: v2 current, v1 previous, nothing pending.
    let promoted = VersionLabels { current: &v2, pending: None, previous: Some(&v1) };
    vault.label_versions(ws, key, &promoted).await.expect("label the promotion");
    let after_promotion = labels(&client, &name).await;
    let expected: BTreeMap<String, Vec<String>> =
        [(version_id(&v1), vec!["AWSPREVIOUS".to_owned()]), (version_id(&v2), vec!["AWSCURRENT".to_owned()])].into();
    assert_eq!(after_promotion, expected);

    // Idempotent: a second call changes nothing.
    vault.label_versions(ws, key, &promoted).await.expect("label the promotion again");
    assert_eq!(labels(&client, &name).await, after_promotion);

    // Rollback: v1 current again, v2 keeps no label (not even the AWSPREVIOUS Secrets Manager
    // puts on the version AWSCURRENT leaves).
    let rolled_back = VersionLabels { current: &v1, pending: None, previous: None };
    vault.label_versions(ws, key, &rolled_back).await.expect("label the rollback");
    let after_rollback = labels(&client, &name).await;
    let expected: BTreeMap<String, Vec<String>> = [(version_id(&v1), vec!["AWSCURRENT".to_owned()])].into();
    assert_eq!(after_rollback, expected);
    vault.label_versions(ws, key, &rolled_back).await.expect("label the rollback again");
    assert_eq!(labels(&client, &name).await, after_rollback);

    // A rotation abandoned after its vault write left a pending version 3; the next attempt at
    // version 3 (other credentials) takes AWSPENDING from it.
    let abandoned_value = canary("sk-proj-");
    let abandoned = vault.seal_pending(binding(ws, key, 3), &credentials(&abandoned_value)).await.expect("seal_pending v3'");
    assert_eq!(holders(&labels(&client, &name).await, "AWSPENDING"), vec![version_id(&abandoned)]);
    let value3 = canary("sk-proj-");
    let v3 = vault.seal_pending(binding(ws, key, 3), &credentials(&value3)).await.expect("seal_pending v3");
    assert_ne!(version_id(&v3), version_id(&abandoned), "a new attempt writes a new version");
    let labelled = labels(&client, &name).await;
    let expected: BTreeMap<String, Vec<String>> =
        [(version_id(&v1), vec!["AWSCURRENT".to_owned()]), (version_id(&v3), vec!["AWSPENDING".to_owned()])].into();
    assert_eq!(labelled, expected, "the abandoned version is unlabelled");
    // The record's view of that state is already in place: nothing to do.
    let staged = VersionLabels { current: &v1, pending: Some(&v3), previous: None };
    vault.label_versions(ws, key, &staged).await.expect("label the staged rotation");
    assert_eq!(labels(&client, &name).await, expected);

    // Every version still opens by its reference, to its own value.
    assert_opens(vault.as_ref(), binding(ws, key, 1), &v1, &value1).await;
    assert_opens(vault.as_ref(), binding(ws, key, 2), &v2, &value2).await;
    assert_opens(vault.as_ref(), binding(ws, key, 3), &abandoned, &abandoned_value).await;
    assert_opens(vault.as_ref(), binding(ws, key, 3), &v3, &value3).await;

    // Promoting v3 from there: v3 current, v1 previous, v2 and the abandoned one unlabelled.
    let promoted = VersionLabels { current: &v3, pending: None, previous: Some(&v1) };
    vault.label_versions(ws, key, &promoted).await.expect("label the second promotion");
    let expected: BTreeMap<String, Vec<String>> =
        [(version_id(&v1), vec!["AWSPREVIOUS".to_owned()]), (version_id(&v3), vec!["AWSCURRENT".to_owned()])].into();
    assert_eq!(labels(&client, &name).await, expected);
}

#[tokio::test]
async fn a_reference_of_another_key_is_not_bound() {
    let vault = aws::secrets_manager_vault().await;
    let client = raw_client().await;
    let ws = "ws-sm-labels-2";
    let mine = vault.seal(binding(ws, "key-mine", 1), &credentials(&canary("sk-proj-"))).await.expect("seal mine");
    let pending = vault.seal_pending(binding(ws, "key-mine", 2), &credentials(&canary("sk-proj-"))).await.expect("seal_pending mine");
    let theirs = vault.seal(binding(ws, "key-theirs", 1), &credentials(&canary("sk-proj-"))).await.expect("seal theirs");
    let (my_name, their_name) = (parts(&mine).0, parts(&theirs).0);
    let (mine_before, theirs_before) = (labels(&client, &my_name).await, labels(&client, &their_name).await);

    for labels_of in [
        VersionLabels { current: &theirs, pending: None, previous: None },
        VersionLabels { current: &mine, pending: Some(&theirs), previous: None },
        VersionLabels { current: &pending, pending: None, previous: Some(&theirs) },
    ] {
        let refused = vault.label_versions(ws, "key-mine", &labels_of).await;
        assert_eq!(refused, Err(VaultError::NotBound));
    }
    assert_eq!(labels(&client, &my_name).await, mine_before, "a refused call labels nothing");
    assert_eq!(labels(&client, &their_name).await, theirs_before);
}

#[tokio::test]
async fn a_pending_version_needs_the_key_secret() {
    let vault = aws::secrets_manager_vault().await;
    let client = raw_client().await;
    let ws = "ws-sm-labels-3";
    // Another key of the vault shows its name prefix.
    let other = vault.seal(binding(ws, "key-other", 1), &credentials(&canary("sk-proj-"))).await.expect("seal another key");
    let prefix = parts(&other).0.strip_suffix(&format!("{ws}/key-other")).expect("secret name ends with workspace/key").to_owned();

    let refused = vault.seal_pending(binding(ws, "key-unsealed", 2), &credentials(&canary("sk-proj-"))).await;
    match refused {
        Err(e) => assert_eq!(e, VaultError::Unavailable("the key's secret is missing".into())),
        Ok(_) => panic!("seal_pending created a secret"),
    }
    // Nothing was created (CreateSecret would have labelled the version AWSCURRENT).
    let described = client.describe_secret().secret_id(format!("{prefix}{ws}/key-unsealed")).send().await;
    assert!(
        described.as_ref().is_err_and(|e| e.as_service_error().is_some_and(|se| se.is_resource_not_found_exception())),
        "no secret for the key: {described:?}"
    );
}
