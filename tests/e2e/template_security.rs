//! Security properties of `template.yaml` that `cfn-lint` does not check:
//!
//! - A7: nobody signs themselves up or picks a workspace: admin-created users only, no external
//!   identity provider, `custom:workspace` immutable and not writable by the app client;
//! - D6: the API access log has no path, query or header field (a proxied path or query may carry
//!   a customer's data), yet names the request id, route key, status and `sub`;
//! - D7: the table is encrypted with the project key, has point-in-time recovery and deletion
//!   protection; the project key rotates at least yearly;
//! - D8: no Lambda Function URL anywhere (it would bypass the JWT authorizer).
//!
//! Each check returns its problems, each naming the resource. Every test runs its check on the
//! real template (no problem) and on deliberately broken in-memory copies (each one reported), so
//! the tests show that the checks can fail.

use serde_yaml::{Mapping, Value};

const TEMPLATE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");

fn template() -> Value {
    let text = std::fs::read_to_string(TEMPLATE_PATH).unwrap_or_else(|e| panic!("cannot read {TEMPLATE_PATH}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{TEMPLATE_PATH} is not plain YAML: {e}"))
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    template
        .get("Resources")
        .and_then(Value::as_mapping)
        .expect("Resources")
        .iter()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
        .map(|(id, r)| (id.as_str().unwrap_or("?").to_owned(), r))
        .collect()
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn resource_mut<'a>(template: &'a mut Value, id: &str) -> &'a mut Value {
    template.get_mut("Resources").and_then(|r| r.get_mut(id)).unwrap_or_else(|| panic!("template.yaml has no resource {id}"))
}

fn at_mut<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(value, |v, key| v.get_mut(*key).unwrap_or_else(|| panic!("missing {key} in {path:?}")))
}

fn remove(value: &mut Value, path: &[&str]) {
    let (last, parent) = path.split_last().expect("a path");
    let removed = at_mut(value, parent).as_mapping_mut().expect("a mapping").remove(*last);
    assert!(removed.is_some(), "nothing to remove at {path:?}");
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("YAML")
}

/// Breaks a copy of the template in memory.
type Mutation = Box<dyn FnOnce(&mut Value)>;

/// The real template passes `check`; each broken copy (what is broken, the resource the
/// problem must name, the mutation) is reported, so the check is shown to be able to fail.
fn check_and_break(check: fn(&Value) -> Vec<String>, breaks: Vec<(&str, &str, Mutation)>) {
    let problems = check(&template());
    assert!(problems.is_empty(), "template.yaml: {problems:#?}");
    for (what, names, mutate) in breaks {
        let mut broken = template();
        mutate(&mut broken);
        let problems = check(&broken);
        assert!(
            problems.iter().any(|p| p.contains(names)),
            "the check misses a broken template ({what}): expected a problem naming {names}, got {problems:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A7

fn sign_up_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let pools = of_type(template, "AWS::Cognito::UserPool");
    if pools.is_empty() {
        problems.push("template.yaml has no AWS::Cognito::UserPool".to_owned());
    }
    for (id, pool) in &pools {
        let props = pool.get("Properties");
        if props.and_then(|p| at(p, &["AdminCreateUserConfig", "AllowAdminCreateUserOnly"])) != Some(&Value::Bool(true)) {
            problems.push(format!("{id}: AdminCreateUserConfig.AllowAdminCreateUserOnly must be true (no self sign-up)"));
        }
        let workspace = props
            .and_then(|p| p.get("Schema"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .find(|a| a.get("Name").and_then(Value::as_str) == Some("workspace"));
        match workspace {
            None => problems.push(format!("{id}: Schema has no custom attribute `workspace`")),
            // Cognito's default for Mutable is true: it must be spelled out.
            Some(attribute) if attribute.get("Mutable") != Some(&Value::Bool(false)) => {
                problems.push(format!("{id}: the custom attribute `workspace` must be `Mutable: false`"))
            }
            Some(_) => {}
        }
    }
    let clients = of_type(template, "AWS::Cognito::UserPoolClient");
    if clients.is_empty() {
        problems.push("template.yaml has no AWS::Cognito::UserPoolClient".to_owned());
    }
    for (id, client) in &clients {
        let props = client.get("Properties");
        // Without WriteAttributes an app client may write every writable attribute.
        match props.and_then(|p| p.get("WriteAttributes")).and_then(Value::as_sequence) {
            None => problems.push(format!("{id}: WriteAttributes must be listed (without it the client writes every attribute)")),
            Some(list) => {
                for attribute in list {
                    let name = attribute.as_str().unwrap_or("?");
                    if name.starts_with("custom:") || name == "?" {
                        problems.push(format!("{id}: WriteAttributes lets users write {name}"));
                    }
                }
            }
        }
        // A federated identity provider creates users on their first sign-in: a sign-up path.
        let providers: Vec<&str> = props
            .and_then(|p| p.get("SupportedIdentityProviders"))
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|p| p.as_str().unwrap_or("?"))
            .collect();
        if providers != ["COGNITO"] {
            problems.push(format!("{id}: SupportedIdentityProviders must be [COGNITO] only, not {providers:?}"));
        }
    }
    for (id, _) in of_type(template, "AWS::Cognito::UserPoolIdentityProvider") {
        problems.push(format!("{id}: an external identity provider signs users up"));
    }
    problems
}

#[test]
fn users_cannot_sign_themselves_up_or_change_their_workspace() {
    check_and_break(
        sign_up_problems,
        vec![
            (
                "self sign-up allowed",
                "UserPool",
                Box::new(|t| {
                    *at_mut(resource_mut(t, "UserPool"), &["Properties", "AdminCreateUserConfig", "AllowAdminCreateUserOnly"]) =
                        Value::Bool(false)
                }),
            ),
            (
                "AdminCreateUserConfig removed",
                "UserPool",
                Box::new(|t| remove(resource_mut(t, "UserPool"), &["Properties", "AdminCreateUserConfig"])),
            ),
            (
                "workspace mutable",
                "UserPool",
                Box::new(|t| {
                    let schema = at_mut(resource_mut(t, "UserPool"), &["Properties", "Schema"]).as_sequence_mut().unwrap();
                    let workspace = schema.iter_mut().find(|a| a.get("Name").and_then(Value::as_str) == Some("workspace")).unwrap();
                    workspace.as_mapping_mut().unwrap().insert("Mutable".into(), Value::Bool(true));
                }),
            ),
            (
                "workspace Mutable left to its default",
                "UserPool",
                Box::new(|t| {
                    let schema = at_mut(resource_mut(t, "UserPool"), &["Properties", "Schema"]).as_sequence_mut().unwrap();
                    let workspace = schema.iter_mut().find(|a| a.get("Name").and_then(Value::as_str) == Some("workspace")).unwrap();
                    workspace.as_mapping_mut().unwrap().remove("Mutable");
                }),
            ),
            (
                "the app client writes custom:workspace",
                "UserPoolClient",
                Box::new(|t| {
                    at_mut(resource_mut(t, "UserPoolClient"), &["Properties", "WriteAttributes"])
                        .as_sequence_mut()
                        .unwrap()
                        .push("custom:workspace".into())
                }),
            ),
            (
                "WriteAttributes left to its default",
                "UserPoolClient",
                Box::new(|t| remove(resource_mut(t, "UserPoolClient"), &["Properties", "WriteAttributes"])),
            ),
            (
                "a federated identity provider",
                "UserPoolClient",
                Box::new(|t| {
                    at_mut(resource_mut(t, "UserPoolClient"), &["Properties", "SupportedIdentityProviders"])
                        .as_sequence_mut()
                        .unwrap()
                        .push("Google".into())
                }),
            ),
            (
                "an identity provider resource",
                "GoogleSignIn",
                Box::new(|t| {
                    t["Resources"].as_mapping_mut().unwrap().insert(
                        "GoogleSignIn".into(),
                        yaml("{Type: AWS::Cognito::UserPoolIdentityProvider, Properties: {ProviderName: Google, ProviderType: Google}}"),
                    );
                }),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// D6

/// `$context` variables an access-log line may hold: ids, the route template, outcome, timing,
/// the source IP and the caller's `sub`. Nothing that holds the path, the query, a header (the
/// user agent and the domain name are headers) or another claim.
const ACCESS_LOG_ALLOWED: &[&str] = &[
    "requestId",
    "extendedRequestId",
    "requestTime",
    "requestTimeEpoch",
    "identity.sourceIp",
    "httpMethod",
    "protocol",
    "routeKey",
    "status",
    "responseLength",
    "responseLatency",
    "integrationLatency",
    "integrationStatus",
    "authorizer.error",
    "authorizer.claims.sub",
];

/// What the access log must name (threat model: request id, route key, status, `sub`).
const ACCESS_LOG_REQUIRED: &[&str] = &["requestId", "routeKey", "status", "authorizer.claims.sub"];

/// Every `$...` reference of an access-log format: `context.routeKey`, `input.params()`, ...
fn log_variables(format: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = format;
    while let Some(start) = rest.find('$') {
        let tail = &rest[start + 1..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')).unwrap_or(tail.len());
        out.push(tail[..end].trim_end_matches('.').to_owned());
        rest = &tail[end..];
    }
    out
}

fn access_log_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut stages: Vec<(String, &Value)> = Vec::new();
    for kind in ["AWS::ApiGatewayV2::Stage", "AWS::ApiGateway::Stage", "AWS::Serverless::HttpApi", "AWS::Serverless::Api"] {
        stages.extend(of_type(template, kind));
    }
    if stages.is_empty() {
        problems.push("template.yaml has no API stage".to_owned());
    }
    for (id, stage) in &stages {
        let Some(format) = stage.get("Properties").and_then(|p| at(p, &["AccessLogSettings", "Format"])) else {
            problems.push(format!("{id}: no AccessLogSettings.Format (calls must be traceable)"));
            continue;
        };
        let Some(format) = format.as_str() else {
            problems.push(format!("{id}: the access-log format is not a plain string: {format:?}"));
            continue;
        };
        if !serde_json::from_str::<serde_json::Value>(format).is_ok_and(|v| v.is_object()) {
            problems.push(format!("{id}: the access-log format is not a JSON object"));
        }
        let variables = log_variables(format);
        for variable in &variables {
            match variable.strip_prefix("context.") {
                Some(name) if ACCESS_LOG_ALLOWED.contains(&name) => {}
                _ => problems.push(format!("{id}: the access log holds ${variable} (path, query, header or unknown field)")),
            }
        }
        for required in ACCESS_LOG_REQUIRED {
            if !variables.iter().any(|v| v.strip_prefix("context.") == Some(*required)) {
                problems.push(format!("{id}: the access log lacks $context.{required}"));
            }
        }
    }
    problems
}

#[test]
fn the_api_access_log_holds_no_path_query_or_header() {
    fn add_field(field: &'static str) -> Mutation {
        Box::new(move |t| {
            let format = at_mut(resource_mut(t, "HttpApiStage"), &["Properties", "AccessLogSettings", "Format"]);
            let text = format.as_str().unwrap().trim_end_matches('}').to_owned();
            *format = Value::String(format!("{text},{field}}}"));
        })
    }
    check_and_break(
        access_log_problems,
        vec![
            ("the path", "HttpApiStage", add_field(r#""path":"$context.path""#)),
            ("the resource path", "HttpApiStage", add_field(r#""resource":"$context.resourcePath""#)),
            ("a header", "HttpApiStage", add_field(r#""ua":"$context.identity.userAgent""#)),
            ("the host", "HttpApiStage", add_field(r#""host":"$context.domainName""#)),
            ("another claim", "HttpApiStage", add_field(r#""email":"$context.authorizer.claims.email""#)),
            ("a REST-style input", "HttpApiStage", add_field(r#""q":"$input.params()""#)),
            (
                "no sub",
                "HttpApiStage",
                Box::new(|t| {
                    let format = at_mut(resource_mut(t, "HttpApiStage"), &["Properties", "AccessLogSettings", "Format"]);
                    *format = Value::String(format.as_str().unwrap().replace(r#","sub":"$context.authorizer.claims.sub""#, ""));
                }),
            ),
            ("no access log", "HttpApiStage", Box::new(|t| remove(resource_mut(t, "HttpApiStage"), &["Properties", "AccessLogSettings"]))),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// D7

/// The logical id a `Ref: X` or `Fn::GetAtt: [X, Arn]` names.
fn named_resource(value: &Value) -> Option<&str> {
    value
        .get("Ref")
        .and_then(Value::as_str)
        .or_else(|| value.get("Fn::GetAtt").and_then(Value::as_sequence).and_then(|s| s.first()).and_then(Value::as_str))
}

fn data_at_rest_problems(template: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    // The project key: the one the functions seal with.
    let project_key = at(template, &["Globals", "Function", "Environment", "Variables", "STOCKPULSE_KMS_KEY_ID"]).and_then(named_resource);
    let keys = of_type(template, "AWS::KMS::Key");
    if project_key.is_none_or(|id| !keys.iter().any(|(k, _)| k == id)) {
        problems.push(format!("Globals: STOCKPULSE_KMS_KEY_ID names no AWS::KMS::Key of the template ({project_key:?})"));
    }
    let project_key = project_key.unwrap_or("?");
    let tables = of_type(template, "AWS::DynamoDB::Table");
    if tables.is_empty() {
        problems.push("template.yaml has no AWS::DynamoDB::Table".to_owned());
    }
    for (id, table) in &tables {
        let props = table.get("Properties").unwrap_or(&Value::Null);
        let sse = props.get("SSESpecification");
        if sse.and_then(|s| s.get("SSEEnabled")) != Some(&Value::Bool(true)) {
            problems.push(format!("{id}: SSESpecification.SSEEnabled must be true"));
        }
        if sse.and_then(|s| s.get("SSEType")).and_then(Value::as_str) != Some("KMS") {
            problems.push(format!("{id}: SSESpecification.SSEType must be KMS"));
        }
        let key = sse.and_then(|s| s.get("KMSMasterKeyId")).and_then(named_resource);
        if key != Some(project_key) {
            problems.push(format!("{id}: SSESpecification.KMSMasterKeyId must be the project key {project_key}, not {key:?}"));
        }
        if at(props, &["PointInTimeRecoverySpecification", "PointInTimeRecoveryEnabled"]) != Some(&Value::Bool(true)) {
            problems.push(format!("{id}: point-in-time recovery must be enabled"));
        }
        if props.get("DeletionProtectionEnabled") != Some(&Value::Bool(true)) {
            problems.push(format!("{id}: DeletionProtectionEnabled must be true"));
        }
        if table.get("DeletionPolicy").and_then(Value::as_str) != Some("Retain") {
            problems.push(format!("{id}: DeletionPolicy must be Retain (a stack deletion keeps the data)"));
        }
    }
    for (id, key) in &keys {
        let props = key.get("Properties").unwrap_or(&Value::Null);
        if props.get("EnableKeyRotation") != Some(&Value::Bool(true)) {
            problems.push(format!("{id}: EnableKeyRotation must be true"));
        }
        // AWS's default period is 365 days; a longer one is not yearly.
        if let Some(days) = props.get("RotationPeriodInDays")
            && days.as_u64().is_none_or(|d| d > 365)
        {
            problems.push(format!("{id}: RotationPeriodInDays must be at most 365, not {days:?}"));
        }
    }
    problems
}

#[test]
fn the_table_is_encrypted_with_the_project_key_recoverable_and_protected_and_the_key_rotates() {
    fn set(id: &'static str, path: &'static [&'static str], value: Value) -> Mutation {
        Box::new(move |t| *at_mut(resource_mut(t, id), path) = value)
    }
    fn drop_at(id: &'static str, path: &'static [&'static str]) -> Mutation {
        Box::new(move |t| remove(resource_mut(t, id), path))
    }
    check_and_break(
        data_at_rest_problems,
        vec![
            ("SSE disabled", "Table", set("Table", &["Properties", "SSESpecification", "SSEEnabled"], Value::Bool(false))),
            ("no SSESpecification", "Table", drop_at("Table", &["Properties", "SSESpecification"])),
            ("the AWS-owned key", "Table", drop_at("Table", &["Properties", "SSESpecification", "KMSMasterKeyId"])),
            (
                "the AWS-managed key",
                "Table",
                set("Table", &["Properties", "SSESpecification", "KMSMasterKeyId"], "alias/aws/dynamodb".into()),
            ),
            (
                "another key of the stack",
                "Table",
                Box::new(|t| {
                    let other = yaml("{Type: AWS::KMS::Key, Properties: {EnableKeyRotation: true}}");
                    t["Resources"].as_mapping_mut().unwrap().insert("OtherKey".into(), other);
                    *at_mut(resource_mut(t, "Table"), &["Properties", "SSESpecification", "KMSMasterKeyId"]) =
                        yaml("{Fn::GetAtt: [OtherKey, Arn]}");
                }),
            ),
            (
                "no point-in-time recovery",
                "Table",
                set("Table", &["Properties", "PointInTimeRecoverySpecification", "PointInTimeRecoveryEnabled"], Value::Bool(false)),
            ),
            ("PITR left to its default", "Table", drop_at("Table", &["Properties", "PointInTimeRecoverySpecification"])),
            ("no deletion protection", "Table", drop_at("Table", &["Properties", "DeletionProtectionEnabled"])),
            (
                "deleted with the stack",
                "Table",
                Box::new(|t| {
                    resource_mut(t, "Table").as_mapping_mut().unwrap().insert("DeletionPolicy".into(), "Delete".into());
                }),
            ),
            ("key rotation off", "KeysKey", set("KeysKey", &["Properties", "EnableKeyRotation"], Value::Bool(false))),
            ("key rotation left to its default", "KeysKey", drop_at("KeysKey", &["Properties", "EnableKeyRotation"])),
            ("rotation every two years", "KeysKey", set("KeysKey", &["Properties", "RotationPeriodInDays"], Value::from(730))),
            (
                "an unrotated second key",
                "SpareKey",
                Box::new(|t| {
                    t["Resources"].as_mapping_mut().unwrap().insert("SpareKey".into(), yaml("{Type: AWS::KMS::Key, Properties: {}}"));
                }),
            ),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// D8

fn function_url_problems(template: &Value) -> Vec<String> {
    fn walk(value: &Value, at: &str, out: &mut Vec<String>) {
        match value {
            Value::Mapping(map) => {
                for (key, child) in map {
                    let key = key.as_str().unwrap_or("?");
                    if key == "FunctionUrlConfig" || key == "FunctionUrlAuthType" {
                        out.push(format!("{at}: has {key}"));
                    }
                    walk(child, &format!("{at}.{key}"), out);
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{at}[{i}]"), out);
                }
            }
            Value::String(s) if s == "AWS::Lambda::Url" || s.eq_ignore_ascii_case("lambda:InvokeFunctionUrl") => {
                out.push(format!("{at}: {s}"))
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    let mut root = Mapping::new();
    for section in ["Globals", "Resources"] {
        if let Some(value) = template.get(section) {
            root.insert(section.into(), value.clone());
        }
    }
    walk(&Value::Mapping(root), "template", &mut problems);
    problems
}

#[test]
fn no_function_url_bypasses_the_authorizer() {
    check_and_break(
        function_url_problems,
        vec![
            (
                "a function with a Function URL",
                "ProvidersListFunction",
                Box::new(|t| {
                    let props = at_mut(resource_mut(t, "ProvidersListFunction"), &["Properties"]).as_mapping_mut().unwrap();
                    props.insert("FunctionUrlConfig".into(), yaml("{AuthType: NONE}"));
                }),
            ),
            (
                "a Function URL for every function",
                "Globals",
                Box::new(|t| {
                    at_mut(t, &["Globals", "Function"])
                        .as_mapping_mut()
                        .unwrap()
                        .insert("FunctionUrlConfig".into(), yaml("{AuthType: NONE}"));
                }),
            ),
            (
                "an AWS::Lambda::Url resource",
                "ProxyUrl",
                Box::new(|t| {
                    let url = yaml(
                        "{Type: AWS::Lambda::Url, Properties: {AuthType: NONE, TargetFunctionArn: {Fn::GetAtt: [ProxyFunction, Arn]}}}",
                    );
                    t["Resources"].as_mapping_mut().unwrap().insert("ProxyUrl".into(), url);
                }),
            ),
            (
                "a permission to invoke a Function URL",
                "ProxyUrlPermission",
                Box::new(|t| {
                    let permission = yaml(
                        "{Type: AWS::Lambda::Permission, Properties: {Action: 'lambda:InvokeFunctionUrl', FunctionName: x, Principal: '*', FunctionUrlAuthType: NONE}}",
                    );
                    t["Resources"].as_mapping_mut().unwrap().insert("ProxyUrlPermission".into(), permission);
                }),
            ),
        ],
    );
}
