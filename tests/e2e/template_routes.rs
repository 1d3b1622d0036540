//! `template.yaml` declares exactly the routes of the route table
//! (`stockpulse_shared::http::routes::ROUTES`): same function, method, path and public/protected
//! access, one Lambda per function name, the Rust runtime settings, and no dev-only route.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;
use stockpulse_shared::http::routes::{Access, EVENT_FUNCTIONS, ROUTES, functions};

const TEMPLATE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");

/// One `HttpApi` event: (function binary, METHOD, path, is public).
type RouteKey = (String, String, String, bool);

fn template() -> Value {
    let text = std::fs::read_to_string(TEMPLATE_PATH).unwrap_or_else(|e| panic!("cannot read {TEMPLATE_PATH}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{TEMPLATE_PATH} is not plain YAML: {e}"))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(*key)).and_then(Value::as_str)
}

/// Every `AWS::Serverless::Function` resource: (logical id, resource).
fn serverless_functions(template: &Value) -> Vec<(String, &Value)> {
    let resources = template.get("Resources").and_then(Value::as_mapping).expect("template.yaml has no Resources mapping");
    resources
        .iter()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some("AWS::Serverless::Function"))
        .map(|(id, r)| (id.as_str().unwrap_or("?").to_owned(), r))
        .collect()
}

fn binary_of(id: &str, function: &Value) -> String {
    str_at(function, &["Metadata", "BuildProperties", "Binary"])
        .unwrap_or_else(|| panic!("{id}: no Metadata.BuildProperties.Binary (the cargo-lambda binary it runs)"))
        .to_owned()
}

/// Every `HttpApi` event of every function, in template order (duplicates kept).
fn template_routes(template: &Value) -> Vec<RouteKey> {
    http_api_events(template).into_iter().map(|e| e.route).collect()
}

struct HttpApiEvent {
    /// `FunctionLogicalId.Events.EventName`, for messages.
    at: String,
    route: RouteKey,
    /// `ApiId: {Ref: <this>}`.
    api_ref: Option<String>,
}

fn http_api_events(template: &Value) -> Vec<HttpApiEvent> {
    let mut out = Vec::new();
    for (id, function) in serverless_functions(template) {
        let binary = binary_of(&id, function);
        let Some(events) = function.get("Properties").and_then(|p| p.get("Events")).and_then(Value::as_mapping) else { continue };
        for (name, event) in events {
            if event.get("Type").and_then(Value::as_str) != Some("HttpApi") {
                continue;
            }
            let name = name.as_str().unwrap_or("?");
            let props = event.get("Properties").unwrap_or_else(|| panic!("{id}.Events.{name}: no Properties"));
            let method = str_at(props, &["Method"]).unwrap_or_else(|| panic!("{id}.Events.{name}: no Method")).to_uppercase();
            let path = str_at(props, &["Path"]).unwrap_or_else(|| panic!("{id}.Events.{name}: no Path")).to_owned();
            let public = str_at(props, &["Auth", "Authorizer"]) == Some("NONE");
            out.push(HttpApiEvent {
                at: format!("{id}.Events.{name}"),
                route: (binary.clone(), method, path, public),
                api_ref: str_at(props, &["ApiId", "Ref"]).map(str::to_owned),
            });
        }
    }
    out
}

fn table_routes() -> BTreeSet<RouteKey> {
    ROUTES
        .iter()
        .filter_map(|r| r.function.map(|f| (f.to_owned(), r.method.to_uppercase(), r.path.to_owned(), r.access == Access::Public)))
        .collect()
}

fn describe(routes: &BTreeSet<&RouteKey>) -> String {
    routes
        .iter()
        .map(|(function, method, path, public)| format!("\n    {method} {path} -> {function} ({})", if *public { "public" } else { "JWT" }))
        .collect()
}

#[test]
fn template_declares_exactly_the_routes_of_the_route_table() {
    let template = template();

    // "Not public" in the template only means "needs a token" if the API has a default authorizer.
    let api = template.get("Resources").and_then(|r| r.get("HttpApi")).expect("template.yaml has no HttpApi resource");
    assert_eq!(api.get("Type").and_then(Value::as_str), Some("AWS::Serverless::HttpApi"), "HttpApi must be an AWS::Serverless::HttpApi");
    let default_authorizer = str_at(api, &["Properties", "Auth", "DefaultAuthorizer"]).expect("HttpApi has no Auth.DefaultAuthorizer");
    assert_ne!(default_authorizer, "NONE", "HttpApi's default authorizer must not be NONE");
    assert!(
        api.get("Properties")
            .and_then(|p| p.get("Auth"))
            .and_then(|a| a.get("Authorizers"))
            .and_then(|a| a.get(default_authorizer))
            .is_some(),
        "HttpApi's default authorizer {default_authorizer} is not declared under Auth.Authorizers"
    );

    // An event without `ApiId: {Ref: HttpApi}` would land on SAM's implicit API, which has no
    // authorizer: every route must be on the one API declared above.
    let elsewhere: Vec<String> =
        http_api_events(&template).into_iter().filter(|e| e.api_ref.as_deref() != Some("HttpApi")).map(|e| e.at).collect();
    assert!(elsewhere.is_empty(), "these events are not on {{ApiId: {{Ref: HttpApi}}}} (the API with the JWT authorizer): {elsewhere:?}");

    let declared = template_routes(&template);
    let mut seen = BTreeSet::new();
    let duplicates: Vec<String> = declared
        .iter()
        .filter(|(_, method, path, _)| !seen.insert((method.clone(), path.clone())))
        .map(|(function, method, path, _)| format!("{method} {path} (again in {function})"))
        .collect();
    assert!(duplicates.is_empty(), "template.yaml declares these routes more than once: {duplicates:?}");

    let declared: BTreeSet<RouteKey> = declared.into_iter().collect();
    let expected = table_routes();
    let missing: BTreeSet<&RouteKey> = expected.difference(&declared).collect();
    let extra: BTreeSet<&RouteKey> = declared.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "template.yaml and the route table (shared/src/http/routes.rs) disagree.\n  \
         In the route table but not in template.yaml:{}\n  \
         In template.yaml but not in the route table:{}\n",
        if missing.is_empty() { " none".to_owned() } else { describe(&missing) },
        if extra.is_empty() { " none".to_owned() } else { describe(&extra) },
    );
}

#[test]
fn template_has_one_rust_arm64_function_per_function_name() {
    let template = template();
    let globals = template.get("Globals").and_then(|g| g.get("Function"));
    let mut names = functions();
    names.extend_from_slice(EVENT_FUNCTIONS);
    let mut count: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();

    for (id, function) in serverless_functions(&template) {
        let props = function.get("Properties");
        // A function's own property wins over Globals.Function.
        let setting = |key: &str| props.and_then(|p| p.get(key)).or_else(|| globals.and_then(|g| g.get(key)));

        let runtime = setting("Runtime").and_then(Value::as_str);
        if runtime != Some("provided.al2023") {
            problems.push(format!("{id}: Runtime is {runtime:?}, not provided.al2023"));
        }
        let architectures: Option<Vec<&str>> =
            setting("Architectures").and_then(Value::as_sequence).map(|s| s.iter().filter_map(Value::as_str).collect());
        if architectures.as_deref() != Some(&["arm64"][..]) {
            problems.push(format!("{id}: Architectures is {architectures:?}, not [arm64]"));
        }
        let handler = setting("Handler").and_then(Value::as_str);
        if handler != Some("bootstrap") {
            problems.push(format!("{id}: Handler is {handler:?}, not bootstrap"));
        }
        let build_method = str_at(function, &["Metadata", "BuildMethod"]);
        if build_method != Some("rust-cargolambda") {
            problems.push(format!("{id}: Metadata.BuildMethod is {build_method:?}, not rust-cargolambda"));
        }
        let binary = binary_of(&id, function);
        if !names.contains(&binary.as_str()) {
            problems.push(format!("{id}: Binary {binary} is not a function of the route table ({names:?})"));
        }
        count.entry(binary).or_default().push(id);
    }

    for name in &names {
        match count.get(*name).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!("no AWS::Serverless::Function has Binary {name}")),
            Some([_]) => {}
            Some(ids) => problems.push(format!("{} functions have Binary {name}: {ids:?}", ids.len())),
        }
    }
    assert!(problems.is_empty(), "template.yaml functions are wrong:\n  {}", problems.join("\n  "));
}

#[test]
fn template_has_no_dev_only_route() {
    let template = template();
    let local_only: BTreeSet<&str> =
        ROUTES.iter().filter(|r| r.dev_only || r.function.is_none()).map(|r| r.path).chain(["/api/dev/login"]).collect();
    let leaked: Vec<String> = template_routes(&template)
        .into_iter()
        .filter(|(_, _, path, _)| local_only.contains(path.as_str()) || path.starts_with("/api/dev/"))
        .map(|(function, method, path, _)| format!("{method} {path} -> {function}"))
        .collect();
    assert!(leaked.is_empty(), "template.yaml exposes routes that exist only in the local gateway's dev mode: {leaked:?}");
}

/// Short tags (`!Ref`, `!Sub`, `!GetAtt`) would parse as tagged values that the checks above
/// cannot read; the template uses the long forms only.
#[test]
fn template_uses_only_long_form_intrinsics() {
    fn find_tags(value: &Value, at: &str, out: &mut Vec<String>) {
        match value {
            Value::Tagged(tagged) => out.push(format!("{at}: {}", tagged.tag)),
            Value::Mapping(map) => {
                for (k, v) in map {
                    find_tags(v, &format!("{at}.{}", k.as_str().unwrap_or("?")), out);
                }
            }
            Value::Sequence(seq) => {
                for (i, v) in seq.iter().enumerate() {
                    find_tags(v, &format!("{at}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut tags = Vec::new();
    find_tags(&template(), "", &mut tags);
    assert!(tags.is_empty(), "template.yaml uses YAML short tags; write Ref:/Fn::Sub:/Fn::GetAtt: instead: {tags:?}");
}
