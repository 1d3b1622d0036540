//! Property tests through the real local gateway on the embedded store: no JSON body, however
//! wrong, makes a route answer with a server error, and the audit chain verifies after any
//! sequence of appends and is reported broken, at the right entry, after any single edit,
//! removal or swap of rows in the SQLite file.
//!
//! Each property starts one server and runs its cases against it, every case in workspaces of
//! its own. Failure persistence is off: a case that finds a bug becomes a named regression test,
//! and runs of this suite leave no files in the source tree.

use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::types::Value as SqlValue;
use serde_json::{Value, json};
use stockpulse_shared::domain::access::Role;
use stockpulse_shared::domain::audit::{AuditDraft, Outcome, action};
use stockpulse_shared::domain::catalog::catalog;
use stockpulse_shared::domain::environment::Environment;
use stockpulse_shared::http::routes::{Operation, ROUTES, Route};
use stockpulse_tests::{Answer, ServerOptions, TestServer, canary};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::create;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// The server runs on this runtime; each case blocks on it (proptest's runner is synchronous).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

/// A name no other case uses, so that cases never see each other's keys or chains.
fn fresh_workspace(kind: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("ws-prop-{kind}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---- arbitrary JSON bodies ----

/// Field names of the request bodies, so that arbitrary objects often look almost right.
const FIELD_NAMES: &[&str] = &[
    "provider",
    "environment",
    "label",
    "credentials",
    "api_key",
    "secret_key",
    "key_id",
    "organization_id",
    "rotation_policy",
    "rotate_every_days",
    "notify_before_days",
    "expires_at",
    "reason",
    "grace_hours",
    "limits",
    "requests_per_minute",
    "requests_per_day",
    "requests_per_month",
    "llm_tokens_per_month",
    "email",
    "role",
    "workspace",
    "id",
    "version",
];

const WORDS: &[&str] = &[
    "openai",
    "groq",
    "alpaca",
    "production",
    "development",
    "admin",
    "viewer",
    "2030-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "+262143-12-31T23:59:59Z",
    "",
    " ",
    "null",
];

/// JSON text `serde_json::Value` cannot hold (numbers beyond f64, lone surrogates) travels as this
/// marker followed by the text in hex, and is spliced into the body's text.
const RAW_TOKEN: &str = "\u{1}raw-json:";

fn raw_token(text: &str) -> Value {
    Value::from(format!("{RAW_TOKEN}{}", text.bytes().map(|b| format!("{b:02x}")).collect::<String>()))
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(FIELD_NAMES).prop_map(str::to_owned), 1 => any::<String>()]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    const EDGES: &[u64] = &[0, 1, 24, 720, 721, u32::MAX as u64, u32::MAX as u64 + 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX];
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(EDGES).prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        "-?[1-9][0-9]{19,40}(e[0-9]{3})?".prop_map(|digits| raw_token(&digits)),
        prop::sample::select(&[r#""\ud800""#, r#""\udfff x""#, r#""\u0000""#, "-0", "1e-400", "1E+2", "0.1e999"][..]).prop_map(raw_token),
        prop::sample::select(WORDS).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6).prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// One change to a valid body. `at` picks any node of the body (the root included).
#[derive(Debug, Clone)]
enum Mutation {
    Replace {
        at: Index,
        with: Value,
    },
    Remove {
        at: Index,
    },
    AddField {
        at: Index,
        name: String,
        value: Value,
    },
    /// Buries the node under `depth` arrays or objects (serde_json stops at 128).
    Nest {
        at: Index,
        depth: usize,
        in_arrays: bool,
    },
    /// A string of `bytes` bytes in place of the node (the body limit is 64 KiB).
    Pad {
        at: Index,
        bytes: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), json_value()).prop_map(|(at, with)| Mutation::Replace { at, with }),
        2 => any::<Index>().prop_map(|at| Mutation::Remove { at }),
        2 => (any::<Index>(), field_name(), json_value()).prop_map(|(at, name, value)| Mutation::AddField { at, name, value }),
        1 => (any::<Index>(), 1usize..200, any::<bool>()).prop_map(|(at, depth, in_arrays)| Mutation::Nest { at, depth, in_arrays }),
        1 => (any::<Index>(), prop_oneof![0usize..300, 60_000usize..70_000]).prop_map(|(at, bytes)| Mutation::Pad { at, bytes }),
    ]
}

#[derive(Debug, Clone)]
enum BodyRecipe {
    Arbitrary(Value),
    /// The route's valid body with these changes (none: the valid body itself).
    Mutated(Vec<Mutation>),
    /// The mutated body's text cut short.
    Truncated(Vec<Mutation>, Index),
}

fn body_recipe() -> impl Strategy<Value = BodyRecipe> {
    prop_oneof![
        2 => json_value().prop_map(BodyRecipe::Arbitrary),
        3 => prop::collection::vec(mutation(), 0..4).prop_map(BodyRecipe::Mutated),
        1 => (prop::collection::vec(mutation(), 0..2), any::<Index>()).prop_map(|(m, cut)| BodyRecipe::Truncated(m, cut)),
    ]
}

/// The routes that take a JSON body.
fn json_routes() -> Vec<&'static Route> {
    ROUTES.iter().filter(|r| matches!(r.method, "POST" | "PUT" | "PATCH")).collect()
}

/// A body each route accepts, credentials as fresh canaries.
fn valid_body(operation: Operation, workspace: &str) -> Value {
    match operation {
        Operation::KeysCreate => json!({
            "provider": "groq", "environment": "development", "label": "property",
            "credentials": {"api_key": canary("gsk_")},
            "rotation_policy": {"rotate_every_days": 30, "notify_before_days": 7},
        }),
        Operation::KeysTestCandidate => {
            json!({"provider": "openai", "environment": "production", "credentials": {"api_key": canary("sk-proj-")}})
        }
        Operation::KeysUpdate => json!({
            "label": "renamed", "environment": "development",
            "credentials": {"api_key": canary("sk-proj-"), "organization_id": null},
            "rotation_policy": {"rotate_every_days": 90, "expires_at": "2099-01-01T00:00:00Z"},
        }),
        Operation::KeysRevoke => json!({"reason": "property test"}),
        Operation::KeysRotate => json!({"credentials": {"api_key": canary("sk-proj-")}, "grace_hours": 24}),
        Operation::QuotasPut => json!({
            "environment": "production",
            "limits": {"requests_per_minute": 60, "requests_per_day": 1000, "requests_per_month": 10000, "llm_tokens_per_month": 100000},
        }),
        Operation::DevLogin => json!({"email": format!("admin@{workspace}.example.com"), "role": "admin", "workspace": workspace}),
        _ => json!({}),
    }
}

/// JSON pointers of every node, the root first.
fn pointers(value: &Value) -> Vec<String> {
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match value {
            Value::Object(members) => {
                for (name, child) in members {
                    walk(child, format!("{at}/{}", name.replace('~', "~0").replace('/', "~1")), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

fn apply(body: &mut Value, mutation: &Mutation) {
    let all = pointers(body);
    let pick = |at: &Index| all[at.index(all.len())].clone();
    match mutation {
        Mutation::Replace { at, with } => *body.pointer_mut(&pick(at)).unwrap() = with.clone(),
        Mutation::Remove { at } => {
            let target = pick(at);
            let Some((parent, last)) = target.rsplit_once('/') else { return };
            match body.pointer_mut(parent).unwrap() {
                Value::Object(members) => {
                    members.remove(&last.replace("~1", "/").replace("~0", "~"));
                }
                Value::Array(items) => {
                    items.remove(last.parse::<usize>().unwrap());
                }
                _ => {}
            }
        }
        Mutation::AddField { at, name, value } => {
            if let Value::Object(members) = body.pointer_mut(&pick(at)).unwrap() {
                members.insert(name.clone(), value.clone());
            }
        }
        Mutation::Nest { at, depth, in_arrays } => {
            let node = body.pointer_mut(&pick(at)).unwrap();
            let mut nested = node.take();
            for _ in 0..*depth {
                nested = if *in_arrays { Value::Array(vec![nested]) } else { json!({"label": nested}) };
            }
            *node = nested;
        }
        Mutation::Pad { at, bytes } => *body.pointer_mut(&pick(at)).unwrap() = Value::from("k".repeat(*bytes)),
    }
}

/// Every string under a `credentials` member becomes a canary that starts with it, so that the
/// canary scan covers whatever a case manages to store. Values with a line break (the canary
/// list has one per line; the API refuses whitespace in credentials), values over the 4 KiB a
/// credential may have and raw tokens stay as they are.
fn credentials_as_canaries(value: &mut Value, canaries: &mut Vec<String>) {
    match value {
        Value::Object(members) => {
            for (name, child) in members.iter_mut() {
                if name == "credentials"
                    && let Value::Object(fields) = child
                {
                    for field in fields.values_mut() {
                        if let Value::String(text) = field
                            && !text.contains("CANARY")
                            && !text.starts_with(RAW_TOKEN)
                            && !text.contains(['\n', '\r'])
                            && text.len() <= 4096
                        {
                            *text = canary(text);
                            canaries.push(text.clone());
                        }
                    }
                }
                credentials_as_canaries(child, canaries);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| credentials_as_canaries(item, canaries)),
        _ => {}
    }
}

/// The body's text with the raw-token markers replaced by their text.
fn body_text(value: &Value) -> String {
    let text = value.to_string();
    let marker = format!("\"{}", RAW_TOKEN.replace('\u{1}', "\\u0001"));
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find(&marker) {
        out.push_str(&rest[..start]);
        let after = &rest[start + marker.len()..];
        let end = after.find('"').expect("the marker's string ends");
        let bytes: Vec<u8> = (0..end).step_by(2).map(|i| u8::from_str_radix(&after[i..i + 2], 16).unwrap()).collect();
        out.push_str(&String::from_utf8(bytes).unwrap());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn body_for(recipe: &BodyRecipe, operation: Operation, workspace: &str, canaries: &mut Vec<String>) -> Vec<u8> {
    let (mut value, cut) = match recipe {
        BodyRecipe::Arbitrary(value) => (value.clone(), None),
        BodyRecipe::Mutated(mutations) | BodyRecipe::Truncated(mutations, _) => {
            let mut value = valid_body(operation, workspace);
            canaries.extend(
                pointers(&value).iter().filter_map(|p| value.pointer(p)?.as_str()).filter(|s| s.contains("CANARY")).map(str::to_owned),
            );
            mutations.iter().for_each(|m| apply(&mut value, m));
            (value, if let BodyRecipe::Truncated(_, cut) = recipe { Some(cut) } else { None })
        }
    };
    credentials_as_canaries(&mut value, canaries);
    let mut text = body_text(&value).into_bytes();
    if let Some(cut) = cut {
        text.truncate(cut.index(text.len().max(1)));
    }
    text
}

fn check_answer(answer: &Answer, what: &str, canaries: &[String]) -> Result<(), TestCaseError> {
    prop_assert!(answer.status < 500, "{what}: {} {}", answer.status, answer.text);
    for secret in canaries {
        prop_assert!(!answer.text.contains(secret.as_str()), "{what}: the answer shows a credential: {}", answer.text);
    }
    if answer.status >= 400 {
        let error = &answer.json["error"];
        let code = error["code"].as_str().unwrap_or("");
        prop_assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{what}: no snake_case code: {}",
            answer.text
        );
        prop_assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message: {}", answer.text);
        prop_assert!(error["field"].is_null() || error["field"].is_string(), "{what}: field: {}", answer.text);
        prop_assert_eq!(error["request_id"].as_str(), answer.header("x-stockpulse-request-id"), "{}: {}", what, answer.text);
        prop_assert_eq!(answer.header("content-type"), Some("application/json; charset=utf-8"), "{}", what);
    }
    Ok(())
}

#[test]
fn no_json_body_makes_a_route_answer_with_a_server_error() {
    let runtime = runtime();
    let routes = json_routes();
    let (server, _upstream) = runtime.block_on(async {
        // Every provider answers 200 from loopback: connection tests and rotations succeed, and
        // no case reaches a real provider whatever provider id it names.
        let upstream = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [], "object": "list"})))
            .mount(&upstream)
            .await;
        let options = catalog().providers.iter().fold(ServerOptions::default(), |o, p| o.upstream(&p.id, &upstream.uri()));
        (TestServer::start_with(options).await, upstream)
    });
    // Each case sends one body to every route, in an order of its own (a revoke before a rotate,
    // an update that moves the key before a test...).
    let strategy = (Just((0..routes.len()).collect::<Vec<_>>()).prop_shuffle(), prop::collection::vec(body_recipe(), routes.len()));
    let outcome = runner(256).run(&strategy, |(order, recipes)| {
        runtime.block_on(async {
            let workspace = fresh_workspace("json");
            let token = server.sign(&TestServer::claims("admin", &workspace));
            let id =
                create(&server, &token, json!({"provider": "openai", "credentials": {"api_key": canary("sk-proj-")}})).await.json["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            for &r in &order {
                let route = routes[r];
                let mut canaries = Vec::new();
                let body = body_for(&recipes[r], route.operation, &workspace, &mut canaries);
                let path = route.path.replace("{id}", &id).replace("{provider}", "openai");
                let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
                let request = server.client.request(method, &path, Some(&token)).header("content-type", "application/json").body(body);
                let answer = server.client.send(request).await;
                check_answer(&answer, &format!("{} {}", route.method, route.path), &canaries)?;
            }
            Ok(())
        })
    });
    runtime.block_on(server.stop());
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

// ---- the audit chain ----

/// An audit draft as the store receives it; `workspace` picks one of the case's workspaces.
#[derive(Debug, Clone)]
struct Append {
    workspace: usize,
    action: &'static str,
    outcome: Outcome,
    role: Role,
    actor: (String, String),
    target: Option<(String, Environment, Option<String>)>,
    fingerprint: Option<String>,
    detail: Option<String>,
    request: (String, String, String),
    /// Nanoseconds after 2020-01-01 (audit times come from the clock, never from a client).
    at_nanos: i64,
}

impl Append {
    fn draft(&self, workspace: &str) -> AuditDraft {
        let epoch = DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        AuditDraft {
            id: uuid::Uuid::now_v7().to_string(),
            time: epoch + Duration::nanoseconds(self.at_nanos),
            workspace: workspace.to_owned(),
            actor_sub: self.actor.0.clone(),
            actor_email: self.actor.1.clone(),
            role: self.role,
            action: self.action.to_owned(),
            provider: self.target.as_ref().map(|t| t.0.clone()),
            environment: self.target.as_ref().map(|t| t.1),
            key_id: self.target.as_ref().and_then(|t| t.2.clone()),
            outcome: self.outcome,
            source_ip: self.request.0.clone(),
            user_agent: self.request.1.clone(),
            request_id: self.request.2.clone(),
            fingerprint: self.fingerprint.clone(),
            detail: self.detail.clone(),
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-zA-Z0-9@._:-]{0,24}", 1 => any::<String>()]
}

fn append() -> impl Strategy<Value = Append> {
    let outcomes = vec![Outcome::Success, Outcome::Failure, Outcome::Denied];
    (
        (0usize..3, prop::sample::select(action::ALL.to_vec()), prop::sample::select(outcomes), prop::sample::select(Role::ALL.to_vec())),
        (text(), text()),
        prop::option::of((text(), prop::sample::select(Environment::ALL.to_vec()), prop::option::of(text()))),
        (prop::option::of("[0-9a-f]{64}"), prop::option::of(text())),
        (text(), text(), text()),
        0i64..(200 * 365 * 86_400 * 1_000_000_000),
    )
        .prop_map(|((workspace, action, outcome, role), actor, target, (fingerprint, detail), request, at_nanos)| Append {
            workspace,
            action,
            outcome,
            role,
            actor,
            target,
            fingerprint,
            detail,
            request,
            at_nanos,
        })
}

const AUDIT_COLUMNS: [&str; 19] = [
    "workspace",
    "seq",
    "id",
    "time",
    "actor_sub",
    "actor_email",
    "role",
    "action",
    "provider",
    "environment",
    "key_id",
    "outcome",
    "source_ip",
    "user_agent",
    "request_id",
    "fingerprint",
    "detail",
    "prev_hash",
    "hash",
];
const NULLABLE: [&str; 5] = ["provider", "environment", "key_id", "fingerprint", "detail"];

/// What an edit writes into a column.
#[derive(Debug, Clone)]
enum NewValue {
    /// Another value of the column's own kind (another role, a later time, another hash...):
    /// the row still reads cleanly and only the chain can tell.
    Plausible(u8),
    Text(String),
    Integer(i64),
    Blob(Vec<u8>),
    /// NULL where the column allows it, else the empty text.
    Null,
}

#[derive(Debug, Clone)]
enum Tamper {
    Edit { entry: Index, column: &'static str, value: NewValue },
    Delete { entry: Index },
    Swap { a: Index, b: Index },
}

fn tamper() -> impl Strategy<Value = Tamper> {
    let value = prop_oneof![
        4 => any::<u8>().prop_map(NewValue::Plausible),
        2 => any::<String>().prop_map(NewValue::Text),
        1 => any::<i64>().prop_map(NewValue::Integer),
        1 => prop::collection::vec(any::<u8>(), 0..8).prop_map(NewValue::Blob),
        1 => Just(NewValue::Null),
    ];
    prop_oneof![
        6 => (any::<Index>(), prop::sample::select(AUDIT_COLUMNS.to_vec()), value).prop_map(|(entry, column, value)| Tamper::Edit { entry, column, value }),
        1 => any::<Index>().prop_map(|entry| Tamper::Delete { entry }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Tamper::Swap { a, b }),
    ]
}

fn plausible(column: &str, old: &SqlValue, pick: u8, chain_length: i64) -> SqlValue {
    let old_text = match old {
        SqlValue::Text(t) => Some(t.clone()),
        _ => None,
    };
    let next = |choices: &[&str]| {
        let at = choices.iter().position(|c| Some(*c) == old_text.as_deref()).unwrap_or(0);
        SqlValue::Text(choices[(at + 1 + usize::from(pick) % (choices.len() - 1)) % choices.len()].to_owned())
    };
    match column {
        // A workspace no case uses: the row leaves its chain.
        "workspace" => SqlValue::Text(format!("{}-moved", old_text.unwrap_or_default())),
        // Past the chain's end, so that no row of the workspace has it already.
        "seq" => SqlValue::Integer(chain_length + 1 + i64::from(pick)),
        "time" => {
            let time = DateTime::parse_from_rfc3339(&old_text.unwrap()).unwrap() + Duration::nanoseconds(1 + i64::from(pick));
            SqlValue::Text(time.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::Nanos, true))
        }
        "role" => next(&["viewer", "member", "admin"]),
        "outcome" => next(&["success", "failure", "denied"]),
        "environment" => next(&["production", "development"]),
        "action" => next(&action::ALL),
        "prev_hash" | "hash" | "fingerprint" => {
            let mut hex = old_text.unwrap_or_else(|| "0".repeat(64)).into_bytes();
            let at = usize::from(pick) % hex.len();
            hex[at] = if hex[at] == b'a' { b'b' } else { b'a' };
            SqlValue::Text(String::from_utf8(hex).unwrap())
        }
        _ => SqlValue::Text(format!("{}{}", old_text.unwrap_or_default(), char::from(b'a' + pick % 26))),
    }
}

/// The value an edit of `column` writes, as SQLite will store it (a TEXT column keeps an integer
/// as its text). A row that leaves its workspace or its place gets a workspace or seq no other
/// row has, so that the edit never runs into the primary key.
fn written(column: &str, value: &NewValue, old: &SqlValue, workspace: &str, chain_length: i64) -> SqlValue {
    let new = match value {
        NewValue::Plausible(pick) => plausible(column, old, *pick, chain_length),
        NewValue::Text(t) if column == "seq" => SqlValue::Text(format!("x{t}")),
        NewValue::Text(t) => SqlValue::Text(t.clone()),
        NewValue::Integer(i) if column == "seq" && (1..=chain_length).contains(i) => SqlValue::Integer(i + chain_length),
        NewValue::Integer(i) if column == "seq" => SqlValue::Integer(*i),
        NewValue::Integer(i) => SqlValue::Text(i.to_string()),
        NewValue::Blob(b) => SqlValue::Blob(b.clone()),
        NewValue::Null if NULLABLE.contains(&column) => SqlValue::Null,
        NewValue::Null => SqlValue::Text(String::new()),
    };
    match (column, new) {
        ("workspace", SqlValue::Text(t)) if !matches!(value, NewValue::Plausible(_)) => SqlValue::Text(format!("{t}-moved-{workspace}")),
        ("workspace", SqlValue::Blob(mut b)) => {
            b.extend_from_slice(workspace.as_bytes());
            SqlValue::Blob(b)
        }
        (_, new) => new,
    }
}

/// The report of `GET /api/audit/verify` for `workspace`.
async fn verify(server: &TestServer, workspace: &str) -> Answer {
    let token = server.sign(&TestServer::claims("viewer", workspace));
    server.client.get("/api/audit/verify", Some(&token)).await
}

#[test]
fn the_audit_chain_verifies_after_any_appends_and_names_the_first_entry_an_edit_breaks() {
    let runtime = runtime();
    let server = runtime.block_on(TestServer::start());
    let store = server.app.app.keys.audit.clone();
    let db = rusqlite::Connection::open(server.sqlite_path()).expect("the data file opens");
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();

    let strategy = (prop::collection::vec(append(), 1..40), tamper());
    let outcome = runner(256).run(&strategy, |(appends, tamper)| {
        runtime.block_on(async {
            let workspaces: Vec<String> = (0..3).map(|_| fresh_workspace("audit")).collect();
            for append in &appends {
                store.append(append.draft(&workspaces[append.workspace])).await.expect("the append commits");
            }
            for workspace in &workspaces {
                let report = verify(&server, workspace).await;
                let expected = appends.iter().filter(|a| workspaces[a.workspace] == *workspace).count();
                prop_assert_eq!(
                    &report.json,
                    &json!({"ok": true, "checked": expected, "first_bad": null, "problem": null}),
                    "{}",
                    report.text
                );
            }

            // The victim is one of the stored entries; its workspace's chain must break there.
            let entries: Vec<(String, i64)> = appends
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let ws = &workspaces[a.workspace];
                    (ws.clone(), appends[..=i].iter().filter(|b| workspaces[b.workspace] == *ws).count() as i64)
                })
                .collect();
            let in_chain = |ws: &str| entries.iter().filter(|(w, _)| w == ws).count() as i64;
            let (victim, first_bad) = match &tamper {
                Tamper::Edit { entry, column, value } => {
                    let (ws, seq) = &entries[entry.index(entries.len())];
                    let select = format!("SELECT {column} FROM audit WHERE workspace = ?1 AND seq = ?2");
                    let old: SqlValue = db.query_row(&select, rusqlite::params![ws, seq], |r| r.get(0)).unwrap();
                    let new = written(column, value, &old, ws, in_chain(ws));
                    prop_assume!(new != old, "writing what is there is no edit");
                    let update = format!("UPDATE audit SET {column} = ?1 WHERE workspace = ?2 AND seq = ?3");
                    db.execute(&update, rusqlite::params![new, ws, seq]).unwrap();
                    (ws.clone(), *seq)
                }
                Tamper::Delete { entry } => {
                    let (ws, seq) = &entries[entry.index(entries.len())];
                    db.execute("DELETE FROM audit WHERE workspace = ?1 AND seq = ?2", rusqlite::params![ws, seq]).unwrap();
                    (ws.clone(), *seq)
                }
                Tamper::Swap { a, b } => {
                    let (ws, seq_a) = &entries[a.index(entries.len())];
                    let seq_b = 1 + (b.index(in_chain(ws) as usize) as i64);
                    prop_assume!(*seq_a != seq_b, "a swap needs two entries");
                    // Row by row: SQLite checks the primary key after each row of an UPDATE.
                    let move_seq = "UPDATE audit SET seq = ?3 WHERE workspace = ?1 AND seq = ?2";
                    for (from, to) in [(*seq_a, -1), (seq_b, *seq_a), (-1, seq_b)] {
                        db.execute(move_seq, rusqlite::params![ws, from, to]).unwrap();
                    }
                    (ws.clone(), (*seq_a).min(seq_b))
                }
            };
            let report = verify(&server, &victim).await;
            prop_assert_eq!(report.status, 200, "{:?}: {}", tamper, report.text);
            prop_assert_eq!(&report.json["ok"], &json!(false), "{:?} went unnoticed: {}", tamper, report.text);
            prop_assert_eq!(&report.json["first_bad"], &json!(first_bad), "{:?}: {}", tamper, report.text);
            for other in workspaces.iter().filter(|w| **w != victim) {
                let report = verify(&server, other).await;
                prop_assert_eq!(&report.json["ok"], &json!(true), "{:?} broke another workspace's chain: {}", tamper, report.text);
            }
            Ok(())
        })
    });
    runtime.block_on(server.stop());
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}
