//! The IAM of `template.yaml` is least privilege: no wildcard action anywhere; no `*` resource in
//! a role's policy; resource policies grant `*` only where AWS means "this resource" by it (a KMS
//! key policy) and never to an anonymous principal; every use of the project key is narrowed by an
//! encryption context or by the service calling on the role's behalf; and only the functions
//! that must open or seal key material may.
//!
//! What each function's actions suffice for is shown elsewhere: tests/e2e/lambda_binaries.rs runs
//! every binary with exactly its template actions on a moto server that enforces IAM.

use std::collections::BTreeSet;

use serde_yaml::Value;

const TEMPLATE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");

fn template() -> Value {
    let text = std::fs::read_to_string(TEMPLATE_PATH).unwrap_or_else(|e| panic!("cannot read {TEMPLATE_PATH}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{TEMPLATE_PATH} is not plain YAML: {e}"))
}

fn resources(template: &Value) -> Vec<(String, &Value)> {
    template
        .get("Resources")
        .and_then(Value::as_mapping)
        .expect("Resources")
        .iter()
        .map(|(id, r)| (id.as_str().unwrap_or("?").to_owned(), r))
        .collect()
}

fn kind(resource: &Value) -> &str {
    resource.get("Type").and_then(Value::as_str).unwrap_or("")
}

/// A value, or both branches of an `Fn::If` (so every statement any deployment can get is seen).
fn branches(value: &Value) -> Vec<&Value> {
    match value.get("Fn::If").and_then(Value::as_sequence) {
        Some(parts) if parts.len() == 3 => parts[1..].iter().flat_map(branches).collect(),
        _ if value.get("Ref").and_then(Value::as_str) == Some("AWS::NoValue") => Vec::new(),
        _ => vec![value],
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items.iter().flat_map(|i| strings(Some(i))).collect(),
        Some(other) => vec![serde_yaml::to_string(other).unwrap_or_default().trim().to_owned()],
        None => Vec::new(),
    }
}

/// One statement with where it was found.
struct Statement<'a> {
    at: String,
    /// The role's logical id for identity policies; `None` for resource policies.
    role: Option<String>,
    body: &'a Value,
}

impl Statement<'_> {
    fn actions(&self) -> Vec<String> {
        strings(self.body.get("Action"))
    }

    fn resources(&self) -> Vec<String> {
        strings(self.body.get("Resource"))
    }

    fn allows(&self) -> bool {
        self.body.get("Effect").and_then(Value::as_str) == Some("Allow")
    }

    fn condition_keys(&self) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        if let Some(operators) = self.body.get("Condition").and_then(Value::as_mapping) {
            for (_, condition) in operators {
                for (key, _) in condition.as_mapping().into_iter().flatten() {
                    keys.insert(key.as_str().unwrap_or("?").to_owned());
                }
            }
        }
        keys
    }
}

fn statements_of<'a>(document: &'a Value, at: &str, role: Option<&str>, out: &mut Vec<Statement<'a>>) {
    let list =
        document.get("Statement").and_then(Value::as_sequence).unwrap_or_else(|| panic!("{at}: a policy document without Statement"));
    for (i, statement) in list.iter().enumerate() {
        for body in branches(statement) {
            let sid = body.get("Sid").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| format!("#{i}"));
            out.push(Statement { at: format!("{at}.{sid}"), role: role.map(str::to_owned), body });
        }
    }
}

/// Every policy statement of the template: roles' inline policies, SAM `Policies`, managed and
/// inline policy resources, and the resource policies (key, bucket, topic).
fn all_statements(template: &Value) -> Vec<Statement<'_>> {
    let mut out = Vec::new();
    for (id, resource) in resources(template) {
        let props = resource.get("Properties");
        match kind(resource) {
            "AWS::IAM::Role" => {
                for policy in props.and_then(|p| p.get("Policies")).and_then(Value::as_sequence).into_iter().flatten() {
                    for policy in branches(policy) {
                        let name = policy.get("PolicyName").and_then(Value::as_str).unwrap_or("?");
                        statements_of(policy.get("PolicyDocument").expect("PolicyDocument"), &format!("{id}.{name}"), Some(&id), &mut out);
                    }
                }
            }
            "AWS::IAM::Policy" | "AWS::IAM::ManagedPolicy" => {
                statements_of(props.and_then(|p| p.get("PolicyDocument")).expect("PolicyDocument"), &id, Some(&id), &mut out)
            }
            "AWS::Serverless::Function" => {
                for policy in props.and_then(|p| p.get("Policies")).and_then(Value::as_sequence).into_iter().flatten() {
                    statements_of(policy, &id, Some(&id), &mut out);
                }
            }
            "AWS::KMS::Key" => statements_of(props.and_then(|p| p.get("KeyPolicy")).expect("KeyPolicy"), &id, None, &mut out),
            "AWS::S3::BucketPolicy" | "AWS::SNS::TopicPolicy" | "AWS::SQS::QueuePolicy" => {
                statements_of(props.and_then(|p| p.get("PolicyDocument")).expect("PolicyDocument"), &id, None, &mut out)
            }
            _ => {}
        }
    }
    out
}

#[test]
fn no_policy_grants_a_wildcard_action() {
    let template = template();
    let statements = all_statements(&template);
    assert!(statements.len() > 40, "the IAM test found only {} statements: is it reading the template?", statements.len());
    let wild: Vec<String> = statements
        .iter()
        .filter(|s| s.allows())
        .flat_map(|s| s.actions().into_iter().filter(|a| a.contains('*')).map(move |a| format!("{}: {a}", s.at)))
        .collect();
    assert!(wild.is_empty(), "wildcard actions (name each action instead): {wild:#?}");
    let inverted: Vec<&str> = statements
        .iter()
        .filter(|s| s.allows() && (s.body.get("NotAction").is_some() || s.body.get("NotResource").is_some()))
        .map(|s| s.at.as_str())
        .collect();
    assert!(inverted.is_empty(), "Allow with NotAction/NotResource grants everything else: {inverted:?}");
}

#[test]
fn roles_name_their_resources_and_resource_policies_use_star_only_for_themselves() {
    let template = template();
    let mut problems = Vec::new();
    for statement in all_statements(&template).iter().filter(|s| s.allows()) {
        let resources = statement.resources();
        if resources.is_empty() {
            problems.push(format!("{}: an Allow without Resource", statement.at));
        }
        match &statement.role {
            // Identity policies: `*` (or a bare partition/service wildcard) would reach other
            // stacks' resources. None of our actions needs it; any prefix wildcard must sit below
            // a name of this stack (a log group's streams, this stage's secrets).
            Some(_) => {
                for resource in &resources {
                    let bare = resource == "*" || resource.ends_with(":*:*") || resource.ends_with(":secret:*");
                    if bare {
                        problems.push(format!("{}: resource `{resource}` is a wildcard over the account", statement.at));
                    }
                }
            }
            // Resource policies: `*` is allowed only in a key policy, where it means this key.
            None => {
                let in_key_policy = statement.at.starts_with("KeysKey.");
                if resources.iter().any(|r| r == "*") && !in_key_policy {
                    problems.push(format!("{}: Resource `*` outside a key policy", statement.at));
                }
                let principal = statement.body.get("Principal");
                let anonymous = principal.and_then(Value::as_str) == Some("*")
                    || principal.and_then(|p| p.get("AWS")).and_then(Value::as_str) == Some("*");
                if anonymous {
                    problems.push(format!("{}: allows any principal", statement.at));
                }
            }
        }
    }
    // SAM-made roles attach AWSLambdaBasicExecutionRole (logs on every resource): every role is ours.
    for (id, resource) in resources(&template) {
        let props = resource.get("Properties");
        if kind(resource) == "AWS::IAM::Role" && props.and_then(|p| p.get("ManagedPolicyArns")).is_some() {
            problems.push(format!("{id}: managed policies are not least privilege; write the statements"));
        }
        if kind(resource) == "AWS::Serverless::Function" && props.and_then(|p| p.get("Role")).is_none() {
            problems.push(format!("{id}: without Role, SAM makes one with AWSLambdaBasicExecutionRole (logs on `*`)"));
        }
    }
    assert!(problems.is_empty(), "IAM problems in template.yaml:\n  {}", problems.join("\n  "));
}

#[test]
fn the_project_key_is_used_only_under_an_encryption_context_or_through_a_service() {
    let template = template();
    let mut problems = Vec::new();
    for statement in all_statements(&template).iter().filter(|s| s.allows()) {
        let uses_key = statement.actions().iter().any(|a| {
            matches!(
                a.as_str(),
                "kms:Decrypt"
                    | "kms:Encrypt"
                    | "kms:GenerateDataKey"
                    | "kms:GenerateDataKeyWithoutPlaintext"
                    | "kms:ReEncryptFrom"
                    | "kms:ReEncryptTo"
            )
        });
        if !uses_key {
            continue;
        }
        let keys = statement.condition_keys();
        let narrowed = keys.iter().any(|k| k.starts_with("kms:EncryptionContext") || k == "kms:ViaService" || k == "aws:PrincipalArn");
        if !narrowed {
            problems.push(format!("{}: uses the key with no encryption-context, service or principal condition ({keys:?})", statement.at));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The functions whose role may decrypt (open) or encrypt (seal) key material with the KMS vault,
/// and delete secrets with the Secrets Manager vault. Changing these sets is a security decision:
/// the test makes it a visible one.
#[test]
fn only_the_functions_that_handle_key_material_may_open_or_seal_it() {
    let template = template();
    let functions: Vec<(String, String)> = resources(&template)
        .into_iter()
        .filter(|(_, r)| kind(r) == "AWS::Serverless::Function")
        .map(|(id, r)| {
            let binary = r.get("Metadata").and_then(|m| m.get("BuildProperties")).and_then(|b| b.get("Binary")).and_then(Value::as_str);
            let role = r
                .get("Properties")
                .and_then(|p| p.get("Role"))
                .and_then(|r| r.get("Fn::GetAtt"))
                .and_then(Value::as_sequence)
                .and_then(|s| s.first())
                .and_then(Value::as_str);
            (binary.unwrap_or_else(|| panic!("{id}: no binary")).to_owned(), role.unwrap_or_else(|| panic!("{id}: no role")).to_owned())
        })
        .collect();
    let statements = all_statements(&template);
    let granted = |binary: &str, wanted: &dyn Fn(&Statement) -> bool| -> bool {
        let role = &functions.iter().find(|(b, _)| b == binary).unwrap_or_else(|| panic!("no function {binary}")).1;
        statements.iter().any(|s| s.allows() && s.role.as_deref() == Some(role.as_str()) && wanted(s))
    };
    let key_material = |action: &'static str| {
        move |s: &Statement| s.actions().iter().any(|a| a == action) && s.condition_keys().contains("kms:EncryptionContextKeys")
    };
    let deletes_secrets = |s: &Statement| s.actions().iter().any(|a| a == "secretsmanager:DeleteSecret");
    let walks_every_workspace = |s: &Statement| s.resources().iter().any(|r| r.contains("/index/keys-by-workspace"));

    let open: BTreeSet<&str> = ["proxy", "keys-test", "keys-update", "keys-rotate", "jobs-run", "scheduler"].into();
    let seal: BTreeSet<&str> = ["keys-create", "keys-update", "keys-rotate"].into();
    let delete: BTreeSet<&str> = ["keys-delete", "keys-revoke", "jobs-run", "scheduler"].into();
    let walk: BTreeSet<&str> = ["jobs-run", "scheduler"].into();
    let mut problems = Vec::new();
    for (binary, _) in &functions {
        let checks: [(&str, bool, bool); 4] = [
            ("decrypt key material", open.contains(binary.as_str()), granted(binary, &key_material("kms:Decrypt"))),
            ("encrypt key material", seal.contains(binary.as_str()), granted(binary, &key_material("kms:GenerateDataKey"))),
            ("delete secrets", delete.contains(binary.as_str()), granted(binary, &deletes_secrets)),
            ("query every workspace's keys", walk.contains(binary.as_str()), granted(binary, &walks_every_workspace)),
        ];
        for (what, expected, actual) in checks {
            if expected != actual {
                problems.push(format!("{binary}: may {what} = {actual}, expected {expected}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
