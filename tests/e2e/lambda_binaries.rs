//! The built function binaries as real Lambda processes: every `target/<profile>/<function>` runs
//! against the Lambda Runtime API emulator (`stockpulse_tests::lambda_runtime`), warm across many
//! invocations, with the environment `template.yaml` gives it, on DynamoDB and KMS (and once on
//! the Secrets Manager vault) in a private moto server. Users sign in through the `token-claims`
//! trigger, and the HTTP functions get API Gateway v2 events that carry the claims the Cognito
//! JWT authorizer passes for their access tokens. This proves the entry points
//! (`stockpulse_functions::run` through lambda_http, `run_scheduler` and `run_token_claims`
//! through lambda_runtime), not only the library they call.
//!
//! Least privilege: each function runs as an IAM user of its own that holds exactly the actions
//! its role's policies in `template.yaml` grant, and moto enforces IAM. moto checks actions only:
//! not resources, and it has no request context to evaluate conditions with (a statement with a
//! condition would deny everything), so the users get the template's actions on every resource,
//! without conditions. Where IAM authorises more than the call's own action (each item of a
//! DynamoDB transaction, the tags and the KMS key behind a Secrets Manager call), moto does not
//! look: every AWS call therefore also goes through a recorder on loopback, and after the flow
//! each call must be allowed by the function's template policy the way IAM would see it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;
use stockpulse_shared::http::routes::{EVENT_FUNCTIONS, ROUTES, RouteMatch, functions, match_route};
use stockpulse_tests::lambda_runtime::{InvocationError, LambdaProcess};
use stockpulse_tests::moto::MotoServer;
use stockpulse_tests::{artifacts_dir, aws, canary, fresh_data_dir, read_workspace_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

// ------------------------------------------------------------------------------------------------
// What template.yaml gives each function
// ------------------------------------------------------------------------------------------------

/// One statement of a function's policies.
#[derive(Debug, Clone)]
struct Statement {
    allow: bool,
    /// Action patterns as written (`dynamodb:GetItem`, `kms:*`).
    actions: Vec<String>,
}

/// A function as `template.yaml` deploys it.
#[derive(Debug, Clone)]
struct FunctionTemplate {
    binary: String,
    /// `Globals.Function.Environment.Variables` and the function's own, resolved.
    environment: BTreeMap<String, String>,
    memory_size: Option<String>,
    /// The statements of its role's inline policies (and of SAM `Policies`, if any).
    statements: Vec<Statement>,
    /// The `Input` of its `ScheduleV2` event: what EventBridge Scheduler sends the function.
    schedule_input: Option<String>,
}

/// `template.yaml` with its parameters, conditions and intrinsics resolved the way CloudFormation
/// would for this test's stack. What the stack creates (the table, the KMS key) the test has
/// created itself and names in `created`; anything else a function's settings refer to fails
/// loudly rather than being guessed.
struct Template {
    root: Yaml,
    parameters: BTreeMap<String, String>,
    /// `Ref` / `Fn::GetAtt` (`Name.Attribute`) of resources → what the test made.
    created: BTreeMap<String, String>,
}

fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The one `Fn::…`/`Ref` key of an intrinsic function, and its argument.
fn intrinsic(value: &Yaml) -> Option<(&str, &Yaml)> {
    let mapping = value.as_mapping().filter(|m| m.len() == 1)?;
    let (name, argument) = mapping.iter().next()?;
    name.as_str().filter(|n| *n == "Ref" || *n == "Condition" || n.starts_with("Fn::")).map(|n| (n, argument))
}

impl Template {
    fn load(parameters: &[(&str, &str)], created: &[(&str, String)]) -> Template {
        let root: Yaml =
            serde_yaml::from_str(&read_workspace_file("template.yaml")).unwrap_or_else(|e| panic!("template.yaml is not plain YAML: {e}"));
        let mut values: BTreeMap<String, String> = root
            .get("Parameters")
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(name, p)| Some((name.as_str()?.to_owned(), p.get("Default").and_then(scalar).unwrap_or_default())))
            .collect();
        for (name, value) in parameters {
            assert!(values.contains_key(*name), "template.yaml has no parameter {name}");
            values.insert(name.to_string(), value.to_string());
        }
        Template { root, parameters: values, created: created.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
    }

    fn reference(&self, name: &str, at: &str) -> Option<String> {
        let pseudo = match name {
            "AWS::NoValue" => return None,
            "AWS::Region" => "us-east-1",
            "AWS::AccountId" => "123456789012",
            "AWS::Partition" => "aws",
            "AWS::URLSuffix" => "amazonaws.com",
            "AWS::StackName" => "stockpulse-keys",
            _ => "",
        };
        if !pseudo.is_empty() {
            return Some(pseudo.to_owned());
        }
        let value = self.parameters.get(name).or_else(|| self.created.get(name));
        Some(value.unwrap_or_else(|| panic!("{at} refers to {name}, which this test does not stand up: teach the test what it is")).clone())
    }

    /// The string `value` stands for; `None` for `AWS::NoValue`.
    fn string(&self, value: &Yaml, at: &str) -> Option<String> {
        if let Some(text) = scalar(value) {
            return Some(text);
        }
        let (function, argument) = intrinsic(value).unwrap_or_else(|| panic!("{at}: {value:?} is not a string"));
        let list = |n: usize| -> Vec<&Yaml> {
            let items: Vec<&Yaml> = argument.as_sequence().map(|s| s.iter().collect()).unwrap_or_default();
            assert_eq!(items.len(), n, "{at}: {function} takes {n} arguments");
            items
        };
        match function {
            "Ref" => self.reference(argument.as_str().expect("Ref names a string"), at),
            "Fn::GetAtt" => {
                let name = match argument {
                    Yaml::Sequence(parts) => parts.iter().filter_map(Yaml::as_str).collect::<Vec<_>>().join("."),
                    other => other.as_str().unwrap_or_default().to_owned(),
                };
                self.reference(&name, at)
            }
            "Fn::If" => {
                let branches = list(3);
                let chosen =
                    if self.condition(branches[0].as_str().expect("Fn::If names a condition")) { branches[1] } else { branches[2] };
                self.string(chosen, at)
            }
            "Fn::Join" => {
                let parts = list(2);
                let items = parts[1].as_sequence().map(|s| s.iter().filter_map(|i| self.string(i, at)).collect::<Vec<_>>());
                Some(items.unwrap_or_default().join(parts[0].as_str().unwrap_or_default()))
            }
            "Fn::Sub" => {
                let (text, variables) = match argument {
                    Yaml::Sequence(parts) => (parts[0].as_str().unwrap_or_default(), parts.get(1)),
                    other => (other.as_str().unwrap_or_default(), None),
                };
                let mut out = String::new();
                let mut rest = text;
                while let Some(start) = rest.find("${") {
                    out.push_str(&rest[..start]);
                    let end = start + rest[start..].find('}').unwrap_or_else(|| panic!("{at}: unclosed ${{ in {text}"));
                    let name = &rest[start + 2..end];
                    if let Some(literal) = name.strip_prefix('!') {
                        out.push_str(&format!("${{{literal}}}"));
                    } else if let Some(value) = variables.and_then(|v| v.get(name)) {
                        out.push_str(&self.string(value, at).unwrap_or_default());
                    } else {
                        out.push_str(&self.reference(name, at).unwrap_or_default());
                    }
                    rest = &rest[end + 1..];
                }
                out.push_str(rest);
                Some(out)
            }
            other => panic!("{at}: {other} is not supported by this test"),
        }
    }

    fn condition(&self, name: &str) -> bool {
        let condition = self.root.get("Conditions").and_then(|c| c.get(name)).unwrap_or_else(|| panic!("no condition {name}"));
        self.holds(condition, name)
    }

    fn holds(&self, value: &Yaml, at: &str) -> bool {
        let (function, argument) = intrinsic(value).unwrap_or_else(|| panic!("condition {at}: {value:?} is not a condition function"));
        let items: Vec<&Yaml> = argument.as_sequence().map(|s| s.iter().collect()).unwrap_or_default();
        match function {
            "Condition" => self.condition(argument.as_str().unwrap_or_default()),
            "Fn::Equals" => self.string(items[0], at) == self.string(items[1], at),
            "Fn::Not" => !self.holds(items[0], at),
            "Fn::And" => items.iter().all(|c| self.holds(c, at)),
            "Fn::Or" => items.iter().any(|c| self.holds(c, at)),
            other => panic!("condition {at}: {other} is not supported by this test"),
        }
    }

    /// `value` with `Fn::If` chosen; `None` for `AWS::NoValue` (a policy or statement left out).
    fn chosen<'a>(&self, value: &'a Yaml) -> Option<&'a Yaml> {
        match intrinsic(value) {
            Some(("Fn::If", Yaml::Sequence(branches))) if branches.len() == 3 => {
                let holds = self.condition(branches[0].as_str().expect("Fn::If names a condition"));
                self.chosen(if holds { &branches[1] } else { &branches[2] })
            }
            Some(("Ref", name)) if name.as_str() == Some("AWS::NoValue") => None,
            _ => Some(value),
        }
    }

    fn resource(&self, id: &str) -> &Yaml {
        self.root.get("Resources").and_then(|r| r.get(id)).unwrap_or_else(|| panic!("template.yaml has no resource {id}"))
    }

    /// The statements of inline policies: a role's `{PolicyName, PolicyDocument}` items or SAM's
    /// inline documents. Managed policies named by a string are Lambda's own needs (its logs); a
    /// SAM policy template would grant actions this test cannot see, so it is refused, not guessed.
    fn statements(&self, policies: Option<&Yaml>, at: &str) -> Vec<Statement> {
        let items: Vec<&Yaml> = match policies.and_then(|p| self.chosen(p)) {
            None => Vec::new(),
            Some(Yaml::Sequence(items)) => items.iter().filter_map(|i| self.chosen(i)).collect(),
            Some(single) => vec![single],
        };
        let mut out = Vec::new();
        for item in items.into_iter().filter(|i| !i.is_string()) {
            let document = item.get("PolicyDocument").and_then(|d| self.chosen(d)).unwrap_or(item);
            let statements = document
                .get("Statement")
                .unwrap_or_else(|| panic!("{at}: {item:?} is not an inline policy; this test reads the actions of inline policies only"));
            let statements: Vec<&Yaml> = match self.chosen(statements) {
                Some(Yaml::Sequence(list)) => list.iter().filter_map(|s| self.chosen(s)).collect(),
                Some(single) => vec![single],
                None => Vec::new(),
            };
            for statement in statements {
                assert!(statement.get("NotAction").is_none(), "{at}: NotAction is not supported by this test");
                let effect =
                    statement.get("Effect").and_then(|e| self.string(e, at)).unwrap_or_else(|| panic!("{at}: a statement without Effect"));
                let actions = match statement.get("Action") {
                    Some(Yaml::Sequence(list)) => list.iter().filter_map(|a| self.string(a, at)).collect(),
                    Some(single) => self.string(single, at).into_iter().collect(),
                    None => panic!("{at}: a statement without Action"),
                };
                out.push(Statement { allow: effect == "Allow", actions });
            }
        }
        out
    }

    /// The `AWS::Serverless::Function` whose `Metadata.BuildProperties.Binary` is `binary`.
    fn function(&self, binary: &str) -> FunctionTemplate {
        let resources = self.root.get("Resources").and_then(Yaml::as_mapping).expect("template.yaml has no Resources mapping");
        let (id, resource) = resources
            .iter()
            .find(|(_, r)| {
                r.get("Type").and_then(Yaml::as_str) == Some("AWS::Serverless::Function")
                    && r.get("Metadata").and_then(|m| m.get("BuildProperties")).and_then(|b| b.get("Binary")).and_then(Yaml::as_str)
                        == Some(binary)
            })
            .unwrap_or_else(|| panic!("template.yaml has no AWS::Serverless::Function with Metadata.BuildProperties.Binary {binary}"));
        let id = id.as_str().unwrap_or("?");
        let globals = self.root.get("Globals").and_then(|g| g.get("Function"));
        let properties = resource.get("Properties");
        let mut environment = BTreeMap::new();
        for node in [globals, properties].into_iter().flatten() {
            let variables = node.get("Environment").and_then(|e| e.get("Variables")).and_then(Yaml::as_mapping);
            for (name, value) in variables.into_iter().flatten() {
                let name = name.as_str().expect("variable names are strings");
                match self.string(value, &format!("{id}: environment variable {name}")) {
                    Some(value) => environment.insert(name.to_owned(), value),
                    None => environment.remove(name),
                };
            }
        }
        let memory_size =
            properties.and_then(|p| p.get("MemorySize")).or_else(|| globals.and_then(|g| g.get("MemorySize"))).and_then(scalar);
        let mut statements = self.statements(properties.and_then(|p| p.get("Policies")), &format!("{id}.Properties.Policies"));
        if let Some(role) = properties.and_then(|p| p.get("Role")) {
            let role_id = match intrinsic(role) {
                Some(("Fn::GetAtt", Yaml::Sequence(parts))) => parts[0].as_str().unwrap_or_default().to_owned(),
                _ => panic!("{id}.Properties.Role: only Fn::GetAtt [<role in this template>, Arn] is supported by this test"),
            };
            let role_policies = self.resource(&role_id).get("Properties").and_then(|p| p.get("Policies"));
            statements.extend(self.statements(role_policies, &format!("{role_id}.Properties.Policies")));
        }
        let schedule_input = properties
            .and_then(|p| p.get("Events"))
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flat_map(|events| events.values())
            .find(|event| event.get("Type").and_then(Yaml::as_str) == Some("ScheduleV2"))
            .map(|event| event.get("Properties").and_then(|p| p.get("Input")).and_then(scalar).unwrap_or_default());
        FunctionTemplate { binary: binary.to_owned(), environment, memory_size, statements, schedule_input }
    }
}

/// IAM's matching of an action against a pattern: case-insensitive, `*` and `?` wildcards.
fn action_matches(pattern: &str, action: &str) -> bool {
    stockpulse_tests::wildcard_matches(pattern, action, true)
}

impl FunctionTemplate {
    /// An explicit deny wins over any allow, as in IAM.
    fn allows(&self, action: &str) -> bool {
        let names = |s: &Statement| s.actions.iter().any(|p| action_matches(p, action));
        self.statements.iter().any(|s| s.allow && names(s)) && !self.statements.iter().any(|s| !s.allow && names(s))
    }
}

// ------------------------------------------------------------------------------------------------
// IAM in moto
// ------------------------------------------------------------------------------------------------

/// moto authorises a DynamoDB transaction as one action named after the call; IAM authorises each
/// of its items as the operation the item performs
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html>).
/// So the moto spelling is granted when the template grants any of the item actions, and
/// `missing_permissions` holds every recorded item to the template. Every other action moto
/// checks is spelled as in IAM (`<signing name>:<operation>`).
const TRANSACTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "dynamodb:TransactWriteItems",
        &[
            ("Put", "dynamodb:PutItem"),
            ("Update", "dynamodb:UpdateItem"),
            ("Delete", "dynamodb:DeleteItem"),
            ("ConditionCheck", "dynamodb:ConditionCheckItem"),
        ],
    ),
    ("dynamodb:TransactGetItems", &[("Get", "dynamodb:GetItem")]),
];

/// The template's statements as moto can enforce them: every resource, no conditions.
fn moto_policy(function: &FunctionTemplate) -> Option<Value> {
    let mut statements: Vec<Value> = function
        .statements
        .iter()
        .filter(|s| !s.actions.is_empty())
        .map(|s| json!({"Effect": if s.allow { "Allow" } else { "Deny" }, "Action": s.actions, "Resource": "*"}))
        .collect();
    let transactions: Vec<&str> =
        TRANSACTIONS.iter().filter(|(_, items)| items.iter().any(|(_, action)| function.allows(action))).map(|(call, _)| *call).collect();
    if !transactions.is_empty() {
        statements.push(json!({"Effect": "Allow", "Action": transactions, "Resource": "*"}));
    }
    (!statements.is_empty()).then(|| json!({"Version": "2012-10-17", "Statement": statements}))
}

/// One call of moto's IAM query API. Before IAM is enforced moto accepts any signature; the
/// credential scope only tells it which service is meant.
async fn iam(moto: &str, parameters: &[(&str, &str)]) -> String {
    let form: Vec<String> = [("Version", "2010-05-08")]
        .iter()
        .chain(parameters)
        .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, NON_ALPHANUMERIC)))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{moto}/"))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=harness/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0")
        .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
        .body(form.join("&"))
        .send()
        .await
        .expect("moto answers IAM calls");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "IAM {}: {status} {text}", parameters[0].1);
    text
}

fn xml_text(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag}>")).unwrap_or_else(|| panic!("no <{tag}> in {xml}")) + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>")).unwrap_or_else(|| panic!("no </{tag}> in {xml}"));
    xml[start..end].to_owned()
}

/// An IAM user holding exactly the function's template actions; its access key id and secret.
async fn iam_user(moto: &str, function: &FunctionTemplate) -> (String, String) {
    let user = format!("lambda-{}", function.binary);
    iam(moto, &[("Action", "CreateUser"), ("UserName", &user)]).await;
    if let Some(policy) = moto_policy(function) {
        iam(moto, &[("Action", "PutUserPolicy"), ("UserName", &user), ("PolicyName", "template"), ("PolicyDocument", &policy.to_string())])
            .await;
    }
    let key = iam(moto, &[("Action", "CreateAccessKey"), ("UserName", &user)]).await;
    (xml_text(&key, "AccessKeyId"), xml_text(&key, "SecretAccessKey"))
}

/// From now on moto refuses every request not signed by one of its IAM users with the right
/// permission. Global to the moto server: only a private one may be switched. Checked with a
/// user that holds no permission, so that a moto that stopped enforcing fails the test instead
/// of letting everything through.
async fn enforce_iam(moto: &str) {
    iam(moto, &[("Action", "CreateUser"), ("UserName", "nobody")]).await;
    let key = iam(moto, &[("Action", "CreateAccessKey"), ("UserName", "nobody")]).await;
    let response = reqwest::Client::new().post(format!("{moto}/moto-api/reset-auth")).body("0").send().await.expect("moto reset-auth");
    assert!(response.status().is_success(), "moto reset-auth: {}", response.status());
    let nobody =
        aws_sdk_dynamodb::config::Credentials::new(xml_text(&key, "AccessKeyId"), xml_text(&key, "SecretAccessKey"), None, None, "moto");
    let config = stockpulse_tests::moto::sdk_config(moto)
        .await
        .into_builder()
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(nobody))
        .build();
    let refused = aws_sdk_dynamodb::Client::new(&config).list_tables().send().await.expect_err("moto refuses a user without permissions");
    // moto answers a refused JSON-protocol call with the query protocol's XML error document,
    // which the SDK cannot read: the functions see an unreadable error (and answer 503).
    let raw = refused.raw_response().expect("moto answered");
    let body = String::from_utf8_lossy(raw.body().bytes().unwrap_or_default()).into_owned();
    assert!(raw.status().as_u16() == 403 && body.contains("not authorized to perform: dynamodb:ListTables"), "moto enforces IAM: {body}");
}

// ------------------------------------------------------------------------------------------------
// The AWS calls the functions make
// ------------------------------------------------------------------------------------------------

/// One AWS API call, as sent.
#[derive(Debug, Clone)]
struct AwsCall {
    access_key: String,
    /// `<signing name>:<operation>`, the way moto and IAM name it.
    action: String,
    /// The kind of each item of a transaction (`Put`, `Update`, ...).
    items: Vec<String>,
    /// The secret a Secrets Manager call names (`Name` or `SecretId`).
    secret: Option<String>,
    /// `CreateSecret` with tags.
    tagged: bool,
    /// `CreateSecret` with a customer managed KMS key.
    customer_key: bool,
}

impl AwsCall {
    /// What IAM authorises for the call, with why, where moto checks the call's own action only:
    /// - each item of a DynamoDB transaction, as the operation it performs (`TRANSACTIONS`);
    /// - tags given to `CreateSecret` need `secretsmanager:TagResource`;
    /// - Secrets Manager uses a secret's customer managed key as the caller: `kms:GenerateDataKey`
    ///   to store a value, `kms:Decrypt` to read one
    ///   (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/security-encryption.html>).
    ///
    /// `secrets_with_key` collects the secrets created with a customer managed key so far.
    fn iam_actions(&self, secrets_with_key: &mut BTreeSet<String>) -> Vec<(String, String)> {
        if let Some((_, kinds)) = TRANSACTIONS.iter().find(|(call, _)| *call == self.action) {
            return self
                .items
                .iter()
                .map(|item| {
                    let action = kinds.iter().find(|(kind, _)| kind == item).map(|(_, a)| *a).unwrap_or("an unknown transaction item");
                    (action.to_owned(), format!("a {item} item of {}", self.action))
                })
                .collect();
        }
        let mut needs = vec![(self.action.clone(), self.action.clone())];
        let secret = self.secret.clone().unwrap_or_default();
        let with_key = |action: &str| (action.to_owned(), format!("{} of a secret under a customer managed key", self.action));
        match self.action.as_str() {
            "secretsmanager:CreateSecret" => {
                if self.tagged {
                    needs.push(("secretsmanager:TagResource".to_owned(), "the tags of secretsmanager:CreateSecret".to_owned()));
                }
                if self.customer_key {
                    secrets_with_key.insert(secret);
                    needs.push(with_key("kms:GenerateDataKey"));
                }
            }
            "secretsmanager:PutSecretValue" if secrets_with_key.contains(&secret) => needs.push(with_key("kms:GenerateDataKey")),
            "secretsmanager:GetSecretValue" if secrets_with_key.contains(&secret) => needs.push(with_key("kms:Decrypt")),
            _ => {}
        }
        needs
    }
}

/// A TCP relay in front of moto that records every request it forwards, bytes unchanged (so
/// signatures still verify). Requests are read one after the other on each connection, so a
/// kept-alive connection is recorded as well as a fresh one.
struct AwsCallRecorder {
    url: String,
    calls: Arc<Mutex<Vec<AwsCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsCallRecorder {
    async fn start(moto: &str) -> AwsCallRecorder {
        let target = moto.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the recorder");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(relay(inbound, target.clone(), recorded.clone()));
            }
        });
        AwsCallRecorder { url, calls, task }
    }

    fn calls(&self) -> Vec<AwsCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for AwsCallRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What each function needs IAM to allow, with why, from the calls recorded.
/// `calls[..init_calls]` were made by the functions' inits. Any function may be the first to
/// start after a deployment, and the first one creates what the others then only read (the
/// fingerprint key), so every function needs every init call any of them made.
fn needs(calls: &[AwsCall], init_calls: usize, users: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<(String, String)>> {
    let mut secrets_with_key = BTreeSet::new();
    let per_call: Vec<Vec<(String, String)>> = calls.iter().map(|c| c.iam_actions(&mut secrets_with_key)).collect();
    let init_calls = init_calls.min(calls.len());
    let init_needs: BTreeSet<(String, String)> =
        per_call[..init_calls].iter().flatten().map(|(action, why)| (action.clone(), format!("{why}, at init"))).collect();
    let mut out: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    // A function whose init reaches no AWS service (token-claims) builds no storage at all.
    for binary in calls[..init_calls].iter().filter_map(|c| users.get(&c.access_key)) {
        out.entry(binary.clone()).or_default().extend(init_needs.iter().cloned());
    }
    for (call, needs) in calls.iter().zip(per_call).skip(init_calls) {
        if let Some(binary) = users.get(&call.access_key) {
            out.entry(binary.clone()).or_default().extend(needs);
        }
    }
    out
}

/// What the functions needed that their template policies do not allow, one line each.
fn missing_permissions(
    calls: &[AwsCall],
    init_calls: usize,
    templates: &BTreeMap<String, FunctionTemplate>,
    users: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut missing = BTreeSet::new();
    for (binary, needs) in needs(calls, init_calls, users) {
        for (action, why) in needs.into_iter().filter(|(action, _)| !templates[&binary].allows(action)) {
            missing.insert(format!("{binary} needs {action} ({why})"));
        }
    }
    for call in calls.iter().filter(|c| !users.contains_key(&c.access_key)) {
        missing.insert(format!("{} was signed by no function's user ({})", call.action, call.access_key));
    }
    missing.into_iter().collect()
}

fn report(
    calls: &[AwsCall],
    init_calls: usize,
    templates: &BTreeMap<String, FunctionTemplate>,
    users: &BTreeMap<String, String>,
) -> String {
    match missing_permissions(calls, init_calls, templates, users) {
        missing if missing.is_empty() => "every AWS call so far is allowed by template.yaml".to_owned(),
        missing => format!("not allowed by template.yaml:\n  {}", missing.join("\n  ")),
    }
}

/// The call a complete request in `buffer` makes, and the request's length; `None` until the
/// whole request (head and `Content-Length` body) has arrived.
fn parse_call(buffer: &[u8]) -> Option<(AwsCall, usize)> {
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .find_map(|line| line.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let end = head_end + 4 + length;
    if buffer.len() < end {
        return None;
    }
    let body = &buffer[head_end + 4..end];
    // `Credential=<access key>/<date>/<region>/<service>/aws4_request`
    let scope: Vec<&str> = header("authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split(',').next())
        .unwrap_or("")
        .split('/')
        .collect();
    let access_key = scope.first().copied().unwrap_or("unsigned").to_owned();
    let service = scope.get(3).copied().unwrap_or("unknown");
    let operation = match header("x-amz-target") {
        Some(target) => target.rsplit('.').next().unwrap_or(target).to_owned(),
        None => String::from_utf8_lossy(body)
            .split('&')
            .find_map(|p| p.strip_prefix("Action="))
            .map(str::to_owned)
            .unwrap_or_else(|| head.lines().next().unwrap_or("").to_owned()),
    };
    // Only what decides the permissions is kept: a body may hold key material (PutSecretValue).
    let document: Value = serde_json::from_slice(body).unwrap_or_default();
    let call = AwsCall {
        access_key,
        action: format!("{service}:{operation}"),
        items: document["TransactItems"]
            .as_array()
            .map(|items| items.iter().filter_map(|item| item.as_object()?.keys().next().cloned()).collect())
            .unwrap_or_default(),
        secret: document["SecretId"].as_str().or(document["Name"].as_str()).map(str::to_owned),
        tagged: document["Tags"].as_array().is_some_and(|tags| !tags.is_empty()),
        customer_key: document["KmsKeyId"].as_str().is_some_and(|key| !key.is_empty()),
    };
    Some((call, end))
}

async fn relay(inbound: TcpStream, target: String, calls: Arc<Mutex<Vec<AwsCall>>>) {
    let Ok(outbound) = TcpStream::connect(&target).await else { return };
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_moto, mut to_moto) = outbound.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_moto, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((call, length)) = parse_call(&buffer) {
            calls.lock().unwrap().push(call);
            if to_moto.write_all(&buffer[..length]).await.is_err() {
                return;
            }
            buffer.drain(..length);
        }
        match from_client.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = to_moto.shutdown().await;
    let _ = answers.await;
}

// ------------------------------------------------------------------------------------------------
// API Gateway v2 events and answers
// ------------------------------------------------------------------------------------------------

const WORKSPACE: &str = "ws-lambda-binaries";

/// The scopes of the app client's access tokens; the HTTP API requires the API's own.
const SCOPES: [&str; 3] = ["openid", "email", "stockpulse-keys/api"];

/// A signed-in user: the claims of their Cognito access token, as the JWT authorizer passes them
/// (every value a string, `cognito:groups` flattened to `[admin]`).
#[derive(Debug, Clone)]
struct Caller {
    claims: Value,
}

/// An HTTP request the way API Gateway hands it to a function.
struct ApiRequest {
    method: &'static str,
    path: String,
    caller: Option<Value>,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

impl ApiRequest {
    fn new(method: &'static str, path: impl Into<String>, body: Option<Value>) -> ApiRequest {
        ApiRequest { method, path: path.into(), caller: None, body, headers: Vec::new() }
    }

    fn get(path: impl Into<String>) -> ApiRequest {
        ApiRequest::new("GET", path, None)
    }

    fn post(path: impl Into<String>, body: Value) -> ApiRequest {
        ApiRequest::new("POST", path, Some(body))
    }

    fn by(mut self, caller: &Caller) -> ApiRequest {
        self.caller = Some(caller.claims.clone());
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> ApiRequest {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// The payload format 2.0 event: the fixture with this request's route, path, parameters,
    /// query, headers, body and claims.
    fn event(&self) -> Value {
        let mut event: Value = serde_json::from_str(&read_workspace_file("tests/fixtures/apigw-v2-http-event.json")).unwrap();
        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let RouteMatch::Found { route, params } = match_route(ROUTES.iter().filter(|r| !r.dev_only), self.method, path) else {
            panic!("{} {path} is no route of the HTTP API", self.method);
        };
        let route_key = format!("{} {}", route.method, route.path);
        let now = chrono::Utc::now();
        event["routeKey"] = json!(route_key);
        event["rawPath"] = json!(path);
        event["rawQueryString"] = json!(query);
        if !query.is_empty() {
            let parameters: serde_json::Map<String, Value> =
                query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_owned(), json!(v))).collect();
            event["queryStringParameters"] = Value::Object(parameters);
        }
        let context = &mut event["requestContext"];
        context["routeKey"] = json!(route_key);
        context["http"]["method"] = json!(self.method);
        context["http"]["path"] = json!(path);
        context["requestId"] = json!(uuid::Uuid::new_v4().to_string());
        context["time"] = json!(now.format("%d/%b/%Y:%H:%M:%S +0000").to_string());
        context["timeEpoch"] = json!(now.timestamp_millis());
        match &self.caller {
            Some(claims) => {
                context["authorizer"]["jwt"]["claims"] = claims.clone();
                context["authorizer"]["jwt"]["scopes"] = json!(SCOPES);
            }
            None => {
                context.as_object_mut().unwrap().remove("authorizer");
            }
        }
        if params.is_empty() {
            event.as_object_mut().unwrap().remove("pathParameters");
        } else {
            event["pathParameters"] = params.iter().map(|(name, value)| (name.to_string(), json!(value))).collect();
        }
        for (name, value) in &self.headers {
            event["headers"][name.to_ascii_lowercase()] = json!(value);
        }
        if let Some(body) = &self.body {
            event["body"] = json!(body.to_string());
        }
        event
    }
}

/// A function's answer, decoded from the API Gateway v2 response document.
#[derive(Debug)]
struct LambdaAnswer {
    status: u16,
    headers: BTreeMap<String, String>,
    text: String,
    json: Value,
}

impl LambdaAnswer {
    fn decode(response: &Value) -> LambdaAnswer {
        use base64::Engine;
        let status = response["statusCode"].as_u64().unwrap_or_else(|| panic!("no statusCode in {response}")) as u16;
        let mut headers = BTreeMap::new();
        for (name, value) in response["headers"].as_object().into_iter().flatten() {
            headers.insert(name.to_ascii_lowercase(), value.as_str().unwrap_or_default().to_owned());
        }
        for (name, values) in response["multiValueHeaders"].as_object().into_iter().flatten() {
            let joined = values.as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ");
            headers.entry(name.to_ascii_lowercase()).or_insert(joined);
        }
        let body = response["body"].as_str().unwrap_or_default();
        let text = if response["isBase64Encoded"] == json!(true) {
            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(body).expect("base64 body")).into_owned()
        } else {
            body.to_owned()
        };
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        LambdaAnswer { status, headers, text, json }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

// ------------------------------------------------------------------------------------------------
// The functions, running
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vault {
    Kms,
    SecretsManager,
}

/// A private moto server with IAM enforced, the fake provider, and the function processes.
struct Fleet {
    processes: BTreeMap<String, LambdaProcess>,
    templates: BTreeMap<String, FunctionTemplate>,
    /// Access key id → binary.
    users: BTreeMap<String, String>,
    recorder: AwsCallRecorder,
    /// The calls made before the first invocation: the functions' inits.
    init_calls: usize,
    invoked: Mutex<BTreeSet<String>>,
    canaries: Mutex<Vec<String>>,
    answers: Mutex<std::fs::File>,
    /// The environment each function was started with.
    environments: BTreeMap<String, Vec<(String, String)>>,
    upstream: MockServer,
    // Last: dropped after the processes that talk to it.
    _moto: MotoServer,
}

/// What the fake OpenAI answers `GET /models` with.
fn models() -> Value {
    json!({"object": "list", "data": [{"id": "gpt-lambda-binaries", "object": "model", "owned_by": "stockpulse-tests"}]})
}

impl Fleet {
    /// Starts everything for `binaries` (all from `template.yaml`); the fake provider accepts
    /// exactly the `accepted` keys.
    async fn start(vault: Vault, binaries: &[&str], accepted: &[&str]) -> Fleet {
        stockpulse_tests::init_logging();
        let upstream = MockServer::start().await;
        for key in accepted {
            Mock::given(method("GET"))
                .and(path("/models"))
                .and(header("authorization", format!("Bearer {key}").as_str()))
                .respond_with(ResponseTemplate::new(200).set_body_json(models()))
                .mount(&upstream)
                .await;
        }
        let moto = tokio::task::spawn_blocking(MotoServer::start).await.expect("start moto");
        // What the stack creates before any function runs: the table and the KMS key.
        let table = format!("stockpulse-lambda-{}", uuid::Uuid::new_v4().simple());
        aws::dynamo_store(&moto.url, &table).await;
        let kms_key = aws::kms_key(&moto.url).await;
        let kms_key_arn = format!("arn:aws:kms:us-east-1:123456789012:key/{kms_key}");
        let vault_backend = match vault {
            Vault::Kms => "kms",
            Vault::SecretsManager => "secretsmanager",
        };
        let template = Template::load(
            &[("VaultBackend", vault_backend)],
            &[("Table", table.clone()), ("KeysKey", kms_key.clone()), ("KeysKey.Arn", kms_key_arn)],
        );
        let templates: BTreeMap<String, FunctionTemplate> = binaries.iter().map(|b| (b.to_string(), template.function(b))).collect();
        let mut users = BTreeMap::new();
        let mut credentials = BTreeMap::new();
        for (binary, template) in &templates {
            let (key_id, secret) = iam_user(&moto.url, template).await;
            users.insert(key_id.clone(), binary.clone());
            credentials.insert(binary.clone(), (key_id, secret));
        }
        let recorder = AwsCallRecorder::start(&moto.url).await;
        enforce_iam(&moto.url).await;

        let data_dir = fresh_data_dir();
        // The template's settings, and what differs in this test: AWS is moto (through the
        // recorder) with the function's own IAM user, the provider is the fake one, and logs say
        // everything (the canary scan reads them).
        let environment_of = |binary: &str| -> Vec<(String, String)> {
            let template = &templates[binary];
            let (key_id, secret) = &credentials[binary];
            let mut env = template.environment.clone();
            let memory = template.memory_size.iter().map(|m| ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", m.clone()));
            let settings = [
                ("AWS_ENDPOINT_URL", recorder.url.clone()),
                ("AWS_ACCESS_KEY_ID", key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY", secret.clone()),
                ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
                ("AWS_LAMBDA_LOG_FORMAT", "JSON".to_owned()),
                ("RUST_LOG", "trace".to_owned()),
                ("STOCKPULSE_DATA_DIR", data_dir.display().to_string()),
                ("STOCKPULSE_UPSTREAM_OPENAI", upstream.uri()),
            ];
            for (name, value) in settings.into_iter().chain(memory) {
                env.insert(name.to_owned(), value);
            }
            env.into_iter().collect()
        };

        // The first function to start creates the shared fingerprint key; the others only read
        // it. Which one comes first in production is chance: `needs` asks every function for
        // every init call any of them made.
        let environments: BTreeMap<String, Vec<(String, String)>> = binaries.iter().map(|b| (b.to_string(), environment_of(b))).collect();
        let environment = |binary: &str| &environments[binary];
        let mut processes = BTreeMap::new();
        let first = binaries[0];
        let process = LambdaProcess::start(first, environment(first)).await;
        process
            .ready()
            .await
            .unwrap_or_else(|e| panic!("{first} failed its init\n{}\n{e}", report(&recorder.calls(), usize::MAX, &templates, &users)));
        processes.insert(first.to_owned(), process);
        let mut starting = Vec::new();
        for binary in &binaries[1..] {
            starting.push(LambdaProcess::start(binary, environment(binary)).await);
        }
        for process in starting {
            process.ready().await.unwrap_or_else(|e| {
                panic!("{} failed its init\n{}\n{e}", process.name(), report(&recorder.calls(), usize::MAX, &templates, &users))
            });
            processes.insert(process.name().to_owned(), process);
        }
        let init_calls = recorder.calls().len();

        let http_dir = artifacts_dir().join("http");
        std::fs::create_dir_all(&http_dir).unwrap();
        let answers = std::fs::File::create(http_dir.join(format!("lambda-binaries-{}.log", uuid::Uuid::new_v4().simple()))).unwrap();
        Fleet {
            processes,
            templates,
            users,
            recorder,
            init_calls,
            invoked: Mutex::new(BTreeSet::new()),
            canaries: Mutex::new(Vec::new()),
            answers: Mutex::new(answers),
            environments,
            upstream,
            _moto: moto,
        }
    }

    /// A fresh OpenAI-shaped canary key that no answer may contain.
    fn canary(&self) -> String {
        let key = canary("sk-proj-");
        self.canaries.lock().unwrap().push(key.clone());
        key
    }

    fn process(&self, binary: &str) -> &LambdaProcess {
        self.invoked.lock().unwrap().insert(binary.to_owned());
        self.processes.get(binary).unwrap_or_else(|| panic!("{binary} was not started"))
    }

    /// Signs a user with `role` in the way Cognito does: the claims of its access token, with
    /// what the pre-token-generation trigger (the `token-claims` binary) adds to them.
    async fn sign_in(&self, role: &str) -> Caller {
        let sub = uuid::Uuid::new_v4().to_string();
        let email = format!("{role}@{WORKSPACE}.example.com");
        let trigger = json!({
            "version": "2",
            "triggerSource": "TokenGeneration_HostedAuth",
            "region": "us-east-1",
            "userPoolId": "us-east-1_example",
            "userName": sub,
            "callerContext": {"awsSdkVersion": "aws-sdk-unknown-unknown", "clientId": "exampleclientid"},
            "request": {
                "userAttributes": {"sub": sub, "email": email, "email_verified": "true", "custom:workspace": WORKSPACE},
                "groupConfiguration": {"groupsToOverride": [role], "iamRolesToOverride": [], "preferredRole": null},
                "scopes": SCOPES,
            },
            "response": {"claimsAndScopeOverrideDetails": null},
        });
        let answer = self.process("token-claims").invoke(trigger).await.unwrap_or_else(|e| panic!("token-claims: {e}"));
        let added = answer
            .pointer("/response/claimsAndScopeOverrideDetails/accessTokenGeneration/claimsToAddOrOverride")
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("token-claims added no access token claims: {answer}"));
        let now = chrono::Utc::now().timestamp();
        // What Cognito itself puts in an access token.
        let mut claims = json!({
            "sub": sub,
            "username": sub,
            "cognito:groups": format!("[{role}]"),
            "iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example",
            "client_id": "exampleclientid",
            "origin_jti": uuid::Uuid::new_v4().to_string(),
            "event_id": uuid::Uuid::new_v4().to_string(),
            "token_use": "access",
            "scope": SCOPES.join(" "),
            "auth_time": now.to_string(),
            "iat": now.to_string(),
            "exp": (now + 3600).to_string(),
            "jti": uuid::Uuid::new_v4().to_string(),
            "version": "2",
        });
        for (name, value) in added {
            claims[name] = json!(value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string()));
        }
        Caller { claims }
    }

    /// Sends `request` to the function as an API Gateway event. A 5xx answer fails at once,
    /// with the function's log and whatever the template does not allow it.
    async fn http(&self, binary: &str, request: ApiRequest) -> LambdaAnswer {
        let event = request.event();
        let process = self.process(binary);
        let response = process
            .invoke(event.clone())
            .await
            .unwrap_or_else(|e| panic!("{binary} failed {} {}: {e}\n{}", request.method, request.path, self.permissions_report()));
        let answer = LambdaAnswer::decode(&response);
        {
            let mut log = self.answers.lock().unwrap();
            let _ = writeln!(log, "{binary}: {} {} -> {}", request.method, request.path, answer.status);
            for (name, value) in &answer.headers {
                let _ = writeln!(log, "{name}: {value}");
            }
            let _ = writeln!(log, "\n{}\n", answer.text);
        }
        for key in self.canaries.lock().unwrap().iter() {
            for spelling in stockpulse_tests::canary::spellings(key) {
                assert!(!answer.text.contains(&spelling), "{binary} answered {} {} with a stored key", request.method, request.path);
            }
        }
        assert!(
            answer.status < 500,
            "{binary} answered {} {} with {}: {}\n{}\nits log: {}",
            request.method,
            request.path,
            answer.status,
            answer.text,
            self.permissions_report(),
            process.log_path().display()
        );
        assert_eq!(
            answer.header("x-stockpulse-request-id"),
            event["requestContext"]["requestId"].as_str(),
            "{binary} answers with the request id API Gateway gave the event"
        );
        answer
    }

    fn missing_permissions(&self) -> Vec<String> {
        missing_permissions(&self.recorder.calls(), self.init_calls, &self.templates, &self.users)
    }

    fn permissions_report(&self) -> String {
        report(&self.recorder.calls(), self.init_calls, &self.templates, &self.users)
    }

    /// Every started function got an event, reached AWS only through its own user, and needed
    /// nothing its template policy does not grant.
    fn assert_least_privilege(&self) {
        let invoked = self.invoked.lock().unwrap().clone();
        let started: BTreeSet<String> = self.processes.keys().cloned().collect();
        assert_eq!(invoked, started, "every started function gets an event");
        let callers: BTreeSet<String> = self.recorder.calls().iter().filter_map(|c| self.users.get(&c.access_key).cloned()).collect();
        // token-claims only rewrites Cognito's event: it has no AWS client.
        let storage_users: BTreeSet<String> = started.iter().filter(|b| *b != "token-claims").cloned().collect();
        assert_eq!(callers, storage_users, "every function reached AWS through the recorder, as its own user");
        // What each function needed, for whoever narrows or widens the template next.
        let dir = artifacts_dir().join("iam");
        std::fs::create_dir_all(&dir).unwrap();
        let mut summary = String::new();
        for (binary, needs) in needs(&self.recorder.calls(), self.init_calls, &self.users) {
            summary.push_str(&format!("{binary}:\n"));
            for (action, why) in needs {
                summary.push_str(&format!("  {action} ({why})\n"));
            }
        }
        std::fs::write(dir.join(format!("lambda-binaries-{}.txt", uuid::Uuid::new_v4().simple())), summary).unwrap();
        let missing = self.missing_permissions();
        assert!(missing.is_empty(), "template.yaml does not allow what the functions do:\n  {}", missing.join("\n  "));
    }

    /// The `Authorization` header of the provider's last request.
    async fn last_upstream_key(&self) -> String {
        let received = self.upstream.received_requests().await.expect("wiremock records requests");
        let last = received.last().expect("the provider was called");
        last.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }
}

// ------------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------------

/// Every function the template deploys: the HTTP ones in route-table order, then the scheduler.
fn every_binary() -> Vec<&'static str> {
    functions().into_iter().chain(EVENT_FUNCTIONS.iter().copied()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_binary_serves_its_events_on_dynamodb_and_kms_with_its_template_permissions() {
    let (first, candidate, second) = (canary("sk-proj-"), canary("sk-proj-"), canary("sk-proj-"));
    let fleet = Fleet::start(Vault::Kms, &every_binary(), &[&first, &candidate, &second]).await;
    fleet.canaries.lock().unwrap().extend([first.clone(), candidate.clone(), second.clone()]);
    let (admin, viewer) = (fleet.sign_in("admin").await, fleet.sign_in("viewer").await);
    let not_a_token_event = fleet.process("token-claims").invoke(json!({"triggerSource": "PreSignUp_SignUp"})).await;
    assert!(matches!(not_a_token_event, Err(InvocationError::Function { .. })), "the trigger fails other events: {not_a_token_event:?}");
    assert_eq!(fleet.sign_in("viewer").await.claims["custom:workspace"], WORKSPACE, "and serves the next one");

    // The one public route, and the authorizer's claims as the only source of a caller.
    let openapi = fleet.http("openapi", ApiRequest::get("/api/openapi.json")).await;
    assert_eq!(openapi.status, 200, "{}", openapi.text);
    assert!(openapi.json["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", openapi.text);
    let anonymous = fleet.http("keys-list", ApiRequest::get("/api/keys")).await;
    assert_eq!((anonymous.status, anonymous.code()), (401, "unauthenticated"), "{}", anonymous.text);
    let providers = fleet.http("providers-list", ApiRequest::get("/api/providers").by(&viewer)).await;
    assert_eq!(providers.status, 200, "{}", providers.text);
    assert!(providers.text.contains("\"openai\""), "{}", providers.text);
    let viewer_create = fleet
        .http(
            "keys-create",
            ApiRequest::post("/api/keys", json!({"provider": "openai", "credentials": {"api_key": fleet.canary()}})).by(&viewer),
        )
        .await;
    assert_eq!((viewer_create.status, viewer_create.code()), (403, "insufficient_role"), "{}", viewer_create.text);

    // Key CRUD.
    let created = fleet
        .http(
            "keys-create",
            ApiRequest::post(
                "/api/keys",
                json!({"provider": "openai", "environment": "production", "label": "team key", "credentials": {"api_key": first}}),
            )
            .by(&admin),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("etag"), Some("\"1\""));
    let id = created.json["id"].as_str().unwrap().to_owned();
    let listed = fleet.http("keys-list", ApiRequest::get("/api/keys").by(&viewer)).await;
    let ids: Vec<&str> = listed.json["items"].as_array().unwrap().iter().filter_map(|k| k["id"].as_str()).collect();
    assert_eq!(ids, [id.as_str()], "{}", listed.text);
    let fetched = fleet.http("keys-get", ApiRequest::get(format!("/api/keys/{id}")).by(&viewer)).await;
    assert_eq!((fetched.status, fetched.json["label"].as_str()), (200, Some("team key")), "{}", fetched.text);
    let etag = fetched.header("etag").expect("an ETag").to_owned();
    let renamed = fleet
        .http(
            "keys-update",
            ApiRequest::new("PATCH", format!("/api/keys/{id}"), Some(json!({"label": "renamed in a Lambda"})))
                .by(&admin)
                .header("if-match", &etag),
        )
        .await;
    assert_eq!((renamed.status, renamed.json["label"].as_str()), (200, Some("renamed in a Lambda")), "{}", renamed.text);
    let stale = fleet
        .http(
            "keys-update",
            ApiRequest::new("PATCH", format!("/api/keys/{id}"), Some(json!({"label": "late"}))).by(&admin).header("if-match", &etag),
        )
        .await;
    assert_eq!((stale.status, stale.code()), (412, "version_mismatch"), "{}", stale.text);

    // Connection tests and the proxy against the fake provider.
    let candidate_test = fleet
        .http(
            "keys-test",
            ApiRequest::post("/api/keys/test", json!({"provider": "openai", "credentials": {"api_key": candidate}})).by(&admin),
        )
        .await;
    assert_eq!(
        (candidate_test.json["ok"].clone(), candidate_test.json["status"].clone()),
        (json!(true), json!("valid")),
        "{}",
        candidate_test.text
    );
    assert_eq!(fleet.last_upstream_key().await, format!("Bearer {candidate}"));
    let stored_test = fleet.http("keys-test", ApiRequest::post(format!("/api/keys/{id}/test"), json!({})).by(&admin)).await;
    assert_eq!(stored_test.json["status"], "valid", "{}", stored_test.text);
    let proxied = fleet.http("proxy", ApiRequest::get("/proxy/openai/models").by(&viewer)).await;
    assert_eq!((proxied.status, proxied.json.clone()), (200, models()), "{}", proxied.text);
    assert_eq!(fleet.last_upstream_key().await, format!("Bearer {first}"), "the proxy injected the stored key");

    // Quotas, usage and the cache.
    let quotas = fleet.http("quotas", ApiRequest::get("/api/quotas/openai").by(&viewer)).await;
    assert_eq!(quotas.status, 200, "{}", quotas.text);
    let limits = json!({"environment": "production", "limits": {"requests_per_day": 1000}});
    let quota_put = fleet.http("quotas", ApiRequest::new("PUT", "/api/quotas/openai", Some(limits)).by(&admin)).await;
    assert_eq!(quota_put.status, 200, "{}", quota_put.text);
    let usage = fleet.http("usage", ApiRequest::get("/api/usage?provider=openai").by(&viewer)).await;
    assert_eq!((usage.status, usage.json["totals"][0]["requests"].clone()), (200, json!(1)), "{}", usage.text);
    let purged = fleet.http("cache-purge", ApiRequest::new("DELETE", "/api/cache/openai", None).by(&admin)).await;
    assert_eq!((purged.status, purged.json["removed"].clone()), (200, json!(1)), "{}", purged.text);

    // Rotation and rollback; the warm proxy switches keys on its very next request.
    let rotated = fleet
        .http(
            "keys-rotate",
            ApiRequest::post(format!("/api/keys/{id}/rotate"), json!({"credentials": {"api_key": second}}))
                .by(&admin)
                .header("idempotency-key", "lambda-binaries-rotation"),
        )
        .await;
    assert_eq!((rotated.status, rotated.json["key_version"].clone()), (200, json!(2)), "{}", rotated.text);
    assert_eq!(rotated.json["previous"]["key_version"], 1, "{}", rotated.text);
    let proxied = fleet.http("proxy", ApiRequest::get("/proxy/openai/models").by(&viewer).header("cache-control", "no-cache")).await;
    assert_eq!(proxied.status, 200, "{}", proxied.text);
    assert_eq!(fleet.last_upstream_key().await, format!("Bearer {second}"), "the rotated key is used at once");
    let rolled_back = fleet.http("keys-rotate", ApiRequest::post(format!("/api/keys/{id}/rollback"), json!({})).by(&admin)).await;
    assert_eq!((rolled_back.status, rolled_back.json["key_version"].clone()), (200, json!(1)), "{}", rolled_back.text);
    fleet.http("proxy", ApiRequest::get("/proxy/openai/models").by(&viewer).header("cache-control", "no-cache")).await;
    assert_eq!(fleet.last_upstream_key().await, format!("Bearer {first}"), "the rolled-back key is used at once");

    // The scheduled job: on demand for the workspace, and the scheduler's own event.
    let run = fleet.http("jobs-run", ApiRequest::post("/api/jobs/run", json!({})).by(&admin)).await;
    assert_eq!((run.status, run.json["records_seen"].clone(), run.json["skipped"].clone()), (200, json!(1), Value::Null), "{}", run.text);
    let input = fleet.templates["scheduler"].schedule_input.clone().unwrap_or_default();
    let schedule_event: Value =
        if input.is_empty() { json!({}) } else { serde_json::from_str(&input).expect("the schedule's Input is JSON") };
    let report = fleet
        .process("scheduler")
        .invoke(schedule_event)
        .await
        .unwrap_or_else(|e| panic!("scheduler: {e}\n{}", fleet.permissions_report()));
    assert_eq!(
        (report["skipped"].clone(), report["records_seen"].clone(), report["complete"].clone(), report["errors"].clone()),
        (Value::Null, json!(1), json!(true), json!([])),
        "{report}"
    );

    // Revocation: the warm proxy refuses the key from the next request on.
    let revoked = fleet
        .http("keys-revoke", ApiRequest::post(format!("/api/keys/{id}/revoke"), json!({"reason": "end of the flow"})).by(&admin))
        .await;
    assert_eq!((revoked.status, revoked.json["status"].as_str()), (200, Some("revoked")), "{}", revoked.text);
    let refused = fleet.http("proxy", ApiRequest::get("/proxy/openai/models").by(&viewer).header("cache-control", "no-cache")).await;
    assert_eq!((refused.status, refused.code()), (404, "no_key"), "{}", refused.text);

    let notifications = fleet.http("notifications", ApiRequest::get("/api/notifications").by(&viewer)).await;
    let items = notifications.json["items"].as_array().cloned().unwrap_or_default();
    let kinds: BTreeSet<&str> = items.iter().filter_map(|n| n["kind"].as_str()).collect();
    for kind in ["key_rotated", "key_rolled_back", "key_revoked"] {
        assert!(kinds.contains(kind), "{kind} in {}", notifications.text);
    }
    let read = fleet
        .http(
            "notifications",
            ApiRequest::post(format!("/api/notifications/{}/read", items[0]["id"].as_str().unwrap()), json!({})).by(&viewer),
        )
        .await;
    assert!(read.json["read_at"].is_string(), "{}", read.text);

    let etag = fleet.http("keys-get", ApiRequest::get(format!("/api/keys/{id}")).by(&viewer)).await.header("etag").unwrap().to_owned();
    let deleted =
        fleet.http("keys-delete", ApiRequest::new("DELETE", format!("/api/keys/{id}"), None).by(&admin).header("if-match", &etag)).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    let gone = fleet.http("keys-get", ApiRequest::get(format!("/api/keys/{id}")).by(&viewer)).await;
    assert_eq!(gone.status, 404, "{}", gone.text);

    // The audit trail was written by all of them, from the events' source address.
    let audit = fleet.http("audit-list", ApiRequest::get("/api/audit?limit=200").by(&viewer)).await;
    let entries = audit.json["items"].as_array().cloned().unwrap_or_default();
    let actions: BTreeSet<&str> = entries.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in [
        "key.create",
        "key.update",
        "key.test_candidate",
        "key.test",
        "quota.update",
        "cache.purge",
        "key.rotate.promote",
        "key.rollback",
        "key.revoke",
        "key.delete",
    ] {
        assert!(actions.contains(action), "{action} in {}", audit.text);
    }
    assert!(entries.iter().all(|e| e["source_ip"] == "203.0.113.7"), "{}", audit.text);
    let verify = fleet.http("audit-verify", ApiRequest::get("/api/audit/verify").by(&viewer)).await;
    assert_eq!((verify.json["ok"].clone(), verify.json["checked"].clone()), (json!(true), json!(entries.len())), "{}", verify.text);

    fleet.assert_least_privilege();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_functions_create_rotate_and_revoke_on_the_secrets_manager_vault() {
    let (first, second) = (canary("sk-proj-"), canary("sk-proj-"));
    let binaries = ["keys-create", "keys-get", "keys-rotate", "proxy", "keys-revoke", "keys-delete", "token-claims"];
    let fleet = Fleet::start(Vault::SecretsManager, &binaries, &[&first, &second]).await;
    fleet.canaries.lock().unwrap().extend([first.clone(), second.clone()]);
    let (admin, viewer) = (fleet.sign_in("admin").await, fleet.sign_in("viewer").await);

    let created = fleet
        .http("keys-create", ApiRequest::post("/api/keys", json!({"provider": "openai", "credentials": {"api_key": first}})).by(&admin))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    fleet.http("proxy", ApiRequest::get("/proxy/openai/models").by(&viewer)).await;
    assert_eq!(fleet.last_upstream_key().await, format!("Bearer {first}"));
    let rotated = fleet
        .http("keys-rotate", ApiRequest::post(format!("/api/keys/{id}/rotate"), json!({"credentials": {"api_key": second}})).by(&admin))
        .await;
    assert_eq!((rotated.status, rotated.json["key_version"].clone()), (200, json!(2)), "{}", rotated.text);
    fleet.http("proxy", ApiRequest::get("/proxy/openai/models").by(&viewer).header("cache-control", "no-cache")).await;
    assert_eq!(fleet.last_upstream_key().await, format!("Bearer {second}"));
    let revoked =
        fleet.http("keys-revoke", ApiRequest::post(format!("/api/keys/{id}/revoke"), json!({"reason": "vault check"})).by(&admin)).await;
    assert_eq!((revoked.status, revoked.json["status"].as_str()), (200, Some("revoked")), "{}", revoked.text);
    assert!(revoked.json["revocation"]["material_released_at"].is_string(), "the secret's deletion was scheduled: {}", revoked.text);
    let refused = fleet.http("proxy", ApiRequest::get("/proxy/openai/models").by(&viewer).header("cache-control", "no-cache")).await;
    assert_eq!(refused.code(), "no_key", "{}", refused.text);
    let etag = fleet.http("keys-get", ApiRequest::get(format!("/api/keys/{id}")).by(&viewer)).await.header("etag").unwrap().to_owned();
    let deleted =
        fleet.http("keys-delete", ApiRequest::new("DELETE", format!("/api/keys/{id}"), None).by(&admin).header("if-match", &etag)).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);

    fleet.assert_least_privilege();
}

// ------------------------------------------------------------------------------------------------
// The Lambda half of the benchmark (not a test: `scripts/bench` runs it, BENCHMARKS.md)
// ------------------------------------------------------------------------------------------------

/// Milliseconds, sorted: median, 90th percentile and extremes.
fn spread(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    json!({"samples": values.len(), "min_ms": at(0.0), "median_ms": at(0.5), "p90_ms": at(0.9), "max_ms": at(1.0)})
}

fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Each function binary started alone, five times (spawn → its first poll for an event), then
/// warm invocations timed by the Runtime API (event handed over → answer posted), and the AWS
/// calls of warm proxied requests counted at the network. The functions run with the template's
/// environment and their own IAM users against moto on loopback, so a handler's time includes
/// moto's answers (a Python server, slower than DynamoDB in a region): the counts are the
/// portable figures. Writes `$STOCKPULSE_BENCH_LAMBDA_OUT` (default: the artifacts folder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, run by scripts/bench with optimised function binaries (STOCKPULSE_LAMBDA_BINARIES)"]
async fn benchmark_start_up_and_warm_invocations() {
    const STARTS: usize = 5;
    const WARM: usize = 50;
    let key = canary("sk-proj-");
    let fleet = Fleet::start(Vault::Kms, &every_binary(), &[&key]).await;
    fleet.canaries.lock().unwrap().push(key.clone());
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}})))
        .mount(&fleet.upstream)
        .await;
    let admin = fleet.sign_in("admin").await;
    let created = fleet
        .http(
            "keys-create",
            ApiRequest::post("/api/keys", json!({"provider": "openai", "environment": "production", "credentials": {"api_key": key}}))
                .by(&admin),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_owned();
    let chat = || {
        ApiRequest::post(
            "/proxy/openai/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say ok."}]}),
        )
        .by(&admin)
    };
    // What a warm function is asked; the rest (writes that change state) are measured by start-up only.
    let warm_requests: Vec<(&str, ApiRequest)> = vec![
        ("proxy", chat()),
        ("providers-list", ApiRequest::get("/api/providers").by(&admin)),
        ("keys-list", ApiRequest::get("/api/keys").by(&admin)),
        ("keys-get", ApiRequest::get(format!("/api/keys/{id}")).by(&admin)),
        ("usage", ApiRequest::get("/api/usage").by(&admin)),
        ("quotas", ApiRequest::get("/api/quotas/openai").by(&admin)),
        ("audit-list", ApiRequest::get("/api/audit").by(&admin)),
        ("audit-verify", ApiRequest::get("/api/audit/verify").by(&admin)),
        ("notifications", ApiRequest::get("/api/notifications").by(&admin)),
        ("openapi", ApiRequest::get("/api/openapi.json")),
    ];

    let mut start_up = serde_json::Map::new();
    let mut warm = serde_json::Map::new();
    let mut proxy_calls = serde_json::Map::new();
    for binary in every_binary() {
        // Logs at the deployment's level (the fleet logs everything for the canary scan).
        let environment: Vec<(String, String)> =
            fleet.environments[binary].iter().filter(|(name, _)| name != "RUST_LOG").cloned().collect();
        let mut inits = Vec::new();
        let mut process = None;
        for _ in 0..STARTS {
            let started = LambdaProcess::start(binary, &environment).await;
            started.ready().await.unwrap_or_else(|e| panic!("{binary} failed its init: {e}"));
            inits.push(millis(started.init_duration().expect("polled")));
            process = Some(started);
        }
        start_up.insert(binary.to_owned(), spread(inits));
        let process = process.expect("started");
        let Some((_, request)) = warm_requests.iter().find(|(b, _)| *b == binary) else { continue };
        let mut times = Vec::new();
        let mut first = None;
        for round in 0..=WARM {
            let calls_before = fleet.recorder.calls().len();
            let (result, handler_time) = process.invoke_timed(request.event()).await;
            let answer = LambdaAnswer::decode(&result.unwrap_or_else(|e| panic!("{binary}: {e}")));
            assert!(answer.status < 300, "{binary} answered {}: {}", answer.status, answer.text);
            for spelling in stockpulse_tests::canary::spellings(&key) {
                assert!(!answer.text.contains(&spelling), "{binary} answered with the stored key");
            }
            let time = millis(handler_time.expect("timed by the Runtime API"));
            if round == 0 {
                first = Some(time);
            } else {
                times.push(time);
            }
            if binary == "proxy" {
                let calls: Vec<AwsCall> = fleet.recorder.calls()[calls_before..].to_vec();
                let label = if round == 0 { "first request (key not in memory)" } else { "warm request" };
                if round <= 1 {
                    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
                    for call in &calls {
                        *counted.entry(call.action.clone()).or_default() += 1;
                    }
                    proxy_calls.insert(label.to_owned(), json!(counted));
                }
            }
        }
        let mut measured = spread(times);
        measured["first_ms"] = json!(first);
        measured["request"] = json!(format!("{} {}", request.method, request.path));
        warm.insert(binary.to_owned(), measured);
    }
    let report = json!({
        "binaries": stockpulse_tests::lambda_runtime::binaries_dir().display().to_string(),
        "start_up": start_up,
        "warm_handler": warm,
        "proxy_aws_calls": proxy_calls,
    });
    let out = std::env::var_os("STOCKPULSE_BENCH_LAMBDA_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| artifacts_dir().join("lambda-benchmark.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written: {}", out.display());
}
