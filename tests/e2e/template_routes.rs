//! `template.yaml` declares exactly the routes of the route table
//! (`stockpulse_shared::http::routes::ROUTES`): same function, method, path and public/protected
//! access, one Lambda per function name, the Rust runtime settings, and no dev-only route.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;
use stockpulse_shared::http::routes::{Access, EVENT_FUNCTIONS, ROUTES, functions};

const TEMPLATE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");

/// One route of the HTTP API: (function binary, METHOD, path, is public).
type RouteKey = (String, String, String, bool);

fn template() -> Value {
    let text = std::fs::read_to_string(TEMPLATE_PATH).unwrap_or_else(|e| panic!("cannot read {TEMPLATE_PATH}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{TEMPLATE_PATH} is not plain YAML: {e}"))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(*key)).and_then(Value::as_str)
}

fn resources(template: &Value) -> &serde_yaml::Mapping {
    template.get("Resources").and_then(Value::as_mapping).expect("template.yaml has no Resources mapping")
}

/// Every resource of a type: (logical id, resource).
fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template)
        .iter()
        .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
        .map(|(id, r)| (id.as_str().unwrap_or("?").to_owned(), r))
        .collect()
}

fn resource<'a>(template: &'a Value, id: &str) -> Option<&'a Value> {
    resources(template).get(id)
}

/// Every `AWS::Serverless::Function` resource: (logical id, resource).
fn serverless_functions(template: &Value) -> Vec<(String, &Value)> {
    of_type(template, "AWS::Serverless::Function")
}

fn binary_of(id: &str, function: &Value) -> String {
    str_at(function, &["Metadata", "BuildProperties", "Binary"])
        .unwrap_or_else(|| panic!("{id}: no Metadata.BuildProperties.Binary (the cargo-lambda binary it runs)"))
        .to_owned()
}

/// `{Ref: X}` → X.
fn ref_of(value: Option<&Value>) -> Option<&str> {
    value.and_then(|v| v.get("Ref")).and_then(Value::as_str)
}

/// The function binary a route's `Target: {Fn::Sub: integrations/${X}}` reaches, checking each
/// hop (an AWS_PROXY integration of payload 2.0 on the same API, invoking a function's ARN).
fn route_target(template: &Value, at: &str, route: &Value, problems: &mut Vec<String>) -> Option<String> {
    let target = str_at(route, &["Properties", "Target", "Fn::Sub"]);
    let Some(integration_id) = target.and_then(|t| t.strip_prefix("integrations/${")).and_then(|t| t.strip_suffix('}')) else {
        problems.push(format!("{at}: Target is not {{Fn::Sub: integrations/${{<Integration>}}}}: {target:?}"));
        return None;
    };
    let Some(integration) = resource(template, integration_id) else {
        problems.push(format!("{at}: its integration {integration_id} does not exist"));
        return None;
    };
    let props = integration.get("Properties");
    let field = |name: &str| props.and_then(|p| p.get(name));
    if integration.get("Type").and_then(Value::as_str) != Some("AWS::ApiGatewayV2::Integration")
        || field("IntegrationType").and_then(Value::as_str) != Some("AWS_PROXY")
        || field("PayloadFormatVersion").and_then(Value::as_str) != Some("2.0")
        || ref_of(field("ApiId")) != Some("HttpApi")
    {
        problems.push(format!("{integration_id}: must be an AWS_PROXY ApiGatewayV2 integration of payload 2.0 on HttpApi"));
    }
    let function_id = field("IntegrationUri").and_then(|u| u.get("Fn::GetAtt")).and_then(Value::as_sequence).and_then(|s| {
        match (s.first().and_then(Value::as_str), s.get(1).and_then(Value::as_str)) {
            (Some(id), Some("Arn")) => Some(id),
            _ => None,
        }
    });
    let Some(function) = function_id.and_then(|id| resource(template, id)) else {
        problems.push(format!("{integration_id}: IntegrationUri is not {{Fn::GetAtt: [<Function>, Arn]}} of a resource here"));
        return None;
    };
    Some(binary_of(function_id.unwrap_or("?"), function))
}

/// Every route of the template, in template order (duplicates kept), and what is wrong with any.
fn template_routes(template: &Value) -> (Vec<RouteKey>, Vec<String>) {
    let mut routes = Vec::new();
    let mut problems = Vec::new();
    for (id, route) in of_type(template, "AWS::ApiGatewayV2::Route") {
        let props = route.get("Properties");
        let field = |name: &str| props.and_then(|p| p.get(name));
        let Some((method, path)) = field("RouteKey").and_then(Value::as_str).and_then(|k| k.split_once(' ')) else {
            problems.push(format!("{id}: RouteKey is not `METHOD /path`"));
            continue;
        };
        if ref_of(field("ApiId")) != Some("HttpApi") {
            problems.push(format!("{id}: not on {{Ref: HttpApi}}"));
        }
        let public = match field("AuthorizationType").and_then(Value::as_str) {
            Some("NONE") => true,
            Some("JWT") => {
                if ref_of(field("AuthorizerId")) != Some("CognitoAuthorizer") {
                    problems.push(format!("{id}: a JWT route must use {{Ref: CognitoAuthorizer}}"));
                }
                // Without a scope an ID token would pass; access tokens carry the API's scope.
                let scopes: Vec<&str> =
                    field("AuthorizationScopes").and_then(Value::as_sequence).into_iter().flatten().filter_map(Value::as_str).collect();
                if scopes != [api_scope(template).as_str()] {
                    problems.push(format!(
                        "{id}: a JWT route must require the API scope {} (or ID tokens pass): {scopes:?}",
                        api_scope(template)
                    ));
                }
                false
            }
            other => {
                problems.push(format!("{id}: AuthorizationType {other:?} is neither JWT nor NONE"));
                continue;
            }
        };
        if let Some(binary) = route_target(template, &id, route, &mut problems) {
            routes.push((binary, method.to_uppercase(), path.to_owned(), public));
        }
    }
    (routes, problems)
}

/// `<identifier>/<scope>` of the user pool's one resource server, as Cognito writes it into tokens.
fn api_scope(template: &Value) -> String {
    let servers = of_type(template, "AWS::Cognito::UserPoolResourceServer");
    let [(_, server)] = servers.as_slice() else { panic!("template.yaml must declare one Cognito resource server (the API's scope)") };
    let identifier = str_at(server, &["Properties", "Identifier"]).expect("resource server Identifier");
    let scopes = server.get("Properties").and_then(|p| p.get("Scopes")).and_then(Value::as_sequence).expect("resource server Scopes");
    let [scope] = scopes.as_slice() else { panic!("the resource server has one scope") };
    format!("{identifier}/{}", str_at(scope, &["ScopeName"]).expect("ScopeName"))
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

    let (declared, problems) = template_routes(&template);
    assert!(problems.is_empty(), "template.yaml routes are wrong:\n  {}", problems.join("\n  "));
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
fn the_api_verifies_cognito_access_tokens_and_may_invoke_only_its_functions() {
    let template = template();
    let authorizers = of_type(&template, "AWS::ApiGatewayV2::Authorizer");
    let [(id, authorizer)] = authorizers.as_slice() else { panic!("template.yaml must have exactly one ApiGatewayV2 authorizer") };
    assert_eq!(id, "CognitoAuthorizer");
    let props = authorizer.get("Properties").expect("authorizer properties");
    assert_eq!(str_at(props, &["AuthorizerType"]), Some("JWT"));
    assert_eq!(ref_of(props.get("ApiId")), Some("HttpApi"));
    let issuer = str_at(props, &["JwtConfiguration", "Issuer", "Fn::Sub"]).unwrap_or_default();
    assert!(issuer.starts_with("https://cognito-idp.") && issuer.ends_with("/${UserPool}"), "the issuer must be the user pool: {issuer}");
    let audience = props.get("JwtConfiguration").and_then(|j| j.get("Audience")).and_then(Value::as_sequence).cloned().unwrap_or_default();
    assert_eq!(audience.len(), 1, "one audience: the web app's client");
    assert_eq!(ref_of(audience.first()), Some("UserPoolClient"));
    // The web app's client may ask for the API scope (and so get access tokens that pass), and the
    // web app asks for it (frontend/src/pkce.ts DEFAULT_SCOPES, and scripts/deploy's config.json).
    let client = resource(&template, "UserPoolClient").expect("UserPoolClient");
    let allowed: Vec<&str> = client
        .get("Properties")
        .and_then(|p| p.get("AllowedOAuthScopes"))
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(allowed.contains(&api_scope(&template).as_str()), "the app client must allow {}: {allowed:?}", api_scope(&template));
    let frontend = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../frontend/src/pkce.ts")).expect("pkce.ts");
    assert!(frontend.contains(&format!("'{}'", api_scope(&template))), "the web app must ask for {} by default", api_scope(&template));

    let stages = of_type(&template, "AWS::ApiGatewayV2::Stage");
    assert!(
        stages.iter().any(|(_, s)| str_at(s, &["Properties", "StageName"]) == Some("$default")),
        "the API needs the $default stage, so that paths reach the functions as in the route table"
    );

    // Each HTTP function may be invoked by this API only, and every invocation permission names it.
    let permissions = of_type(&template, "AWS::Lambda::Permission");
    let mut names = functions();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let (function_id, _) = serverless_functions(&template)
            .into_iter()
            .find(|(id, f)| binary_of(id, f) == name)
            .unwrap_or_else(|| panic!("no function for {name}"));
        let invokers: Vec<&Value> = permissions
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| ref_of(p.get("Properties").and_then(|p| p.get("FunctionName"))) == Some(&function_id))
            .collect();
        assert!(!invokers.is_empty(), "{function_id} has no AWS::Lambda::Permission for API Gateway");
        for permission in invokers {
            let props = permission.get("Properties").unwrap();
            assert_eq!(str_at(props, &["Principal"]), Some("apigateway.amazonaws.com"), "{function_id}: only API Gateway invokes it");
            let source = str_at(props, &["SourceArn", "Fn::Sub"]).unwrap_or_default();
            assert!(source.contains(":${HttpApi}/"), "{function_id}: the permission must be limited to this API (SourceArn): {source}");
        }
    }
}

#[test]
fn template_has_one_rust_arm64_function_per_function_name() {
    let template = template();
    let globals = template.get("Globals").and_then(|g| g.get("Function"));
    let mut names = functions();
    names.extend_from_slice(EVENT_FUNCTIONS);
    let mut count: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut roles = BTreeSet::new();

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
        // JSON logs into a log group of its own with a retention (Lambda's default group never expires).
        if str_at(function, &["Properties", "LoggingConfig", "LogFormat"]) != Some("JSON") {
            problems.push(format!("{id}: LoggingConfig.LogFormat is not JSON"));
        }
        match ref_of(props.and_then(|p| p.get("LoggingConfig")).and_then(|l| l.get("LogGroup"))).and_then(|g| resource(&template, g)) {
            Some(group)
                if group.get("Type").and_then(Value::as_str) == Some("AWS::Logs::LogGroup")
                    && group.get("Properties").and_then(|p| p.get("RetentionInDays")).is_some() => {}
            _ => problems.push(format!("{id}: LoggingConfig.LogGroup is not {{Ref: <a log group of the template with RetentionInDays>}}")),
        }
        // Its own role: least privilege is per function, so no two functions share one.
        let role = props
            .and_then(|p| p.get("Role"))
            .and_then(|r| r.get("Fn::GetAtt"))
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(Value::as_str);
        match role {
            Some(role) if resource(&template, role).and_then(|r| r.get("Type")).and_then(Value::as_str) == Some("AWS::IAM::Role") => {
                if !roles.insert(role.to_owned()) {
                    problems.push(format!("{id}: its role {role} is shared with another function"));
                }
            }
            _ => problems.push(format!("{id}: Role is not {{Fn::GetAtt: [<an AWS::IAM::Role of the template>, Arn]}}")),
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
        .0
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
