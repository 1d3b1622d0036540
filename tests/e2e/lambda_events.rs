//! Each Lambda function's handler, fed an API Gateway v2 HTTP event with JWT-authorizer claims
//! (a JSON fixture parsed by lambda_http), answers the way the local gateway does.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};
use stockpulse_shared::app::App;
use stockpulse_shared::config::Config;
use stockpulse_shared::http::handle_function;
use stockpulse_shared::http::routes::{Operation, ROUTES, Route, functions};
use stockpulse_tests::{Answer, ServerOptions, TestServer, canary, read_workspace_file};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::create;

struct LambdaAnswer {
    status: u16,
    headers: http::HeaderMap,
    json: Value,
}

/// The route's path with its parameters filled in: `id`, the openai provider, `models` below it.
fn concrete_path(route: &Route, id: &str) -> String {
    route.path.replace("{id}", id).replace("{provider}", "openai").replace("{path+}", "models")
}

/// The method a request of the route uses (`ANY` routes get GET).
fn concrete_method(route: &Route) -> &'static str {
    if route.method == "ANY" { "GET" } else { route.method }
}

/// The fixture with this request's method, path, body and caller filled in.
fn event(route: &Route, id: &str, body: Option<&Value>, claims: Option<&BTreeMap<String, String>>) -> String {
    let mut event: Value = serde_json::from_str(&read_workspace_file("tests/fixtures/apigw-v2-http-event.json")).unwrap();
    let path = concrete_path(route, id);
    let route_key = format!("{} {}", route.method, route.path);
    event["routeKey"] = json!(route_key);
    event["rawPath"] = json!(path);
    event["requestContext"]["routeKey"] = json!(route_key);
    event["requestContext"]["http"]["method"] = json!(concrete_method(route));
    event["requestContext"]["http"]["path"] = json!(path);
    event["requestContext"]["requestId"] = json!(uuid::Uuid::new_v4().to_string());
    let mut parameters = serde_json::Map::new();
    if route.path.contains("{id}") {
        parameters.insert("id".into(), json!(id));
    }
    if route.path.contains("{provider}") {
        parameters.insert("provider".into(), json!("openai"));
    }
    if route.path.contains("{path+}") {
        parameters.insert("path".into(), json!("models"));
    }
    if parameters.is_empty() {
        event.as_object_mut().unwrap().remove("pathParameters");
    } else {
        event["pathParameters"] = Value::Object(parameters);
    }
    match claims {
        Some(claims) => event["requestContext"]["authorizer"]["jwt"]["claims"] = json!(claims),
        None => {
            event["requestContext"].as_object_mut().unwrap().remove("authorizer");
        }
    }
    if let Some(body) = body {
        event["body"] = json!(body.to_string());
    }
    event.to_string()
}

async fn invoke(app: &App, function: &str, event: &str) -> LambdaAnswer {
    let request = lambda_http::request::from_str(event).expect("lambda_http parses the event");
    let response = handle_function(app, function, request).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = match response.into_body() {
        lambda_http::Body::Text(t) => t,
        lambda_http::Body::Binary(b) => String::from_utf8(b).unwrap(),
        _ => String::new(),
    };
    LambdaAnswer { status, headers, json: serde_json::from_str(&text).unwrap_or(Value::Null) }
}

/// The same request through the local gateway.
async fn through_gateway(server: &TestServer, route: &Route, id: &str, body: Option<&Value>, token: &str) -> Answer {
    let path = concrete_path(route, id);
    let method = reqwest::Method::from_bytes(concrete_method(route).as_bytes()).unwrap();
    let mut builder = server.client.request(method, &path, Some(token));
    if let Some(body) = body {
        builder = builder.json(body);
    }
    server.client.send(builder).await
}

/// Claims as API Gateway would pass them for this dev token.
fn claims_of(token: &str) -> BTreeMap<String, String> {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Map<String, Value> =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    stockpulse_local::auth::flatten(claims).into_iter().collect()
}

/// A body for the routes that take one; `variant` keeps the Lambda's and the gateway's creates apart.
fn body_for(route: &Route, variant: usize) -> Option<Value> {
    match route.operation {
        Operation::KeysCreate => Some(json!({"provider": (["groq", "mistral"][variant]), "credentials": {"api_key": canary("k")}})),
        Operation::KeysUpdate => Some(json!({"label": "edited through a lambda event"})),
        Operation::KeysTestCandidate => Some(json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})),
        Operation::QuotasPut => Some(json!({"environment": "development", "limits": {"requests_per_minute": 100 + variant}})),
        Operation::KeysRevoke => Some(json!({"reason": "revoked through a lambda event"})),
        Operation::KeysRotate => Some(json!({"credentials": {"api_key": canary("sk-")}, "grace_hours": 1})),
        _ => None,
    }
}

#[tokio::test]
async fn every_function_answers_its_events_like_the_local_gateway() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []}))).mount(&upstream).await;
    let options = ServerOptions::default().upstream("openai", &upstream.uri());
    let server = TestServer::start_with(options.clone()).await;
    let token = server.token("admin", "ws-lambda").await;
    let claims = claims_of(&token);

    // The Lambda side: its own App on the same data folder, built the way a Lambda main does.
    let mut vars = options.vars.clone();
    vars.insert("STOCKPULSE_DATA_DIR".into(), server.data_dir.display().to_string());
    vars.insert("AWS_LAMBDA_FUNCTION_NAME".into(), "keys-get".into());
    let lambda_app = App::embedded(&Config::from_vars(&vars).unwrap(), std::sync::Arc::new(stockpulse_shared::ports::SystemClock)).unwrap();

    let mut covered = Vec::new();
    for route in ROUTES.iter().filter(|r| r.function.is_some()) {
        let function = route.function.unwrap();
        if route.operation == Operation::Proxy {
            // The proxy uses the workspace's production OpenAI key.
            create(&server, &token, json!({"provider": "openai", "credentials": {"api_key": canary("sk-")}})).await;
        }
        // Each side acts on its own key where the route changes or removes one.
        let key_for_lambda =
            create(&server, &token, json!({"provider": "openai", "environment": "development", "credentials": {"api_key": canary("sk-")}}))
                .await;
        let lambda_id = key_for_lambda.json["id"].as_str().unwrap().to_owned();
        let lambda = invoke(&lambda_app, function, &event(route, &lambda_id, body_for(route, 0).as_ref(), Some(&claims))).await;
        let gateway_id = if matches!(route.operation, Operation::KeysDelete | Operation::KeysUpdate | Operation::KeysRevoke) {
            server.client.delete(&format!("/api/keys/{lambda_id}"), Some(&token), None).await;
            let again = create(
                &server,
                &token,
                json!({"provider": "openai", "environment": "development", "credentials": {"api_key": canary("sk-")}}),
            )
            .await;
            again.json["id"].as_str().unwrap().to_owned()
        } else {
            lambda_id.clone()
        };
        let gateway = through_gateway(&server, route, &gateway_id, body_for(route, 1).as_ref(), &token).await;

        assert_eq!(
            lambda.status, gateway.status,
            "{} {} via {function}: lambda {} vs gateway {}",
            route.method, route.path, lambda.json, gateway.text
        );
        assert_eq!(lambda.headers.get("content-type").is_some(), gateway.header("content-type").is_some());
        assert!(lambda.headers.get("x-stockpulse-request-id").is_some());
        match route.operation {
            // Reads of the same state answer the same document.
            Operation::ProvidersList | Operation::KeysList | Operation::AuditVerify | Operation::OpenApi => {
                let mut lambda_json = lambda.json.clone();
                let mut gateway_json = gateway.json.clone();
                if route.operation == Operation::AuditVerify {
                    // The gateway's call comes after the Lambda's, one entry later at most.
                    lambda_json["checked"] = json!(0);
                    gateway_json["checked"] = json!(0);
                }
                assert_eq!(lambda_json, gateway_json, "{} {}", route.method, route.path);
            }
            Operation::KeysGet => assert_eq!(lambda.json, gateway.json),
            Operation::AuditList => {
                let items = lambda.json["items"].as_array().unwrap();
                assert!(items.iter().all(|e| e["workspace"] == "ws-lambda"));
                assert!(
                    items.iter().any(|e| e["source_ip"] == "203.0.113.7" && e["user_agent"] == "stockpulse-fixture/1.0"),
                    "entries written through Lambda events carry the event's source IP and user agent: {}",
                    lambda.json
                );
                assert_eq!(gateway.json["items"][0]["seq"], items[0]["seq"]);
            }
            Operation::KeysCreate | Operation::KeysUpdate => {
                let fields = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
                assert_eq!(fields(&lambda.json), fields(&gateway.json));
                assert!(lambda.headers.get("etag").is_some());
            }
            Operation::KeysTest | Operation::KeysTestCandidate => {
                assert_eq!((lambda.json["ok"].clone(), lambda.json["status"].clone()), (json!(true), json!("valid")));
                assert_eq!(lambda.json["status"], gateway.json["status"]);
            }
            Operation::KeysDelete => assert_eq!(lambda.status, 204),
            Operation::KeysRevoke => {
                assert_eq!((lambda.status, lambda.json["status"].clone()), (200, json!("revoked")), "{}", lambda.json);
                assert_eq!(lambda.json["revocation"]["reason"], "revoked through a lambda event");
            }
            Operation::Proxy => {
                assert_eq!(lambda.status, 200, "{}", lambda.json);
                assert_eq!(lambda.json, gateway.json);
                assert!(lambda.headers.get("x-stockpulse-cache").is_some());
            }
            Operation::QuotasGet | Operation::QuotasPut | Operation::UsageGet | Operation::NotificationsList | Operation::CachePurge => {
                assert_eq!(lambda.status, 200, "{} {}: {}", route.method, route.path, lambda.json);
            }
            Operation::KeysRotate => {
                assert_eq!((lambda.status, lambda.json["status"].clone()), (200, json!("active")), "{}", lambda.json);
                assert_eq!(lambda.json["key_version"], 2);
                assert_eq!(gateway.json["key_version"], 3, "{}", gateway.text);
                assert_eq!(gateway.json["previous"]["key_version"], 2);
            }
            // A fresh key has nothing to roll back to: both sides say so alike.
            Operation::KeysRollback => assert_eq!(lambda.json["error"]["code"], "no_previous_version"),
            Operation::JobsRun => assert!(lambda.json["skipped"].is_null() && gateway.json["skipped"].is_null(), "{}", lambda.json),
            // The id is a key's, not a notification's: both sides say so alike.
            Operation::NotificationsRead => assert_eq!(lambda.status, 404),
            Operation::DevLogin => unreachable!(),
        }
        covered.push(function);
        for record in server.client.get("/api/keys?limit=200", Some(&token)).await.json["items"].as_array().unwrap() {
            server.client.delete(&format!("/api/keys/{}", record["id"].as_str().unwrap()), Some(&token), None).await;
        }
    }
    covered.dedup();
    let mut all = functions();
    all.sort();
    covered.sort();
    covered.dedup();
    assert_eq!(covered, all, "every function got an event");
}

#[tokio::test]
async fn a_function_refuses_events_without_claims_and_paths_of_other_functions() {
    let server = TestServer::start().await;
    let mut vars = BTreeMap::new();
    vars.insert("STOCKPULSE_DATA_DIR".to_owned(), server.data_dir.display().to_string());
    let app = App::embedded(&Config::from_vars(&vars).unwrap(), std::sync::Arc::new(stockpulse_shared::ports::SystemClock)).unwrap();
    let keys_list = ROUTES.iter().find(|r| r.operation == Operation::KeysList).unwrap();
    let no_claims = invoke(&app, "keys-list", &event(keys_list, "", None, None)).await;
    assert_eq!((no_claims.status, no_claims.json["error"]["code"].as_str()), (401, Some("unauthenticated")));
    let mut viewer = BTreeMap::new();
    for (k, v) in [("sub", "s"), ("email", "v@x.io"), ("cognito:groups", "[viewer]"), ("custom:workspace", "ws")] {
        viewer.insert(k.to_owned(), v.to_owned());
    }
    let audit = ROUTES.iter().find(|r| r.operation == Operation::AuditList).unwrap();
    let wrong_function = invoke(&app, "keys-list", &event(audit, "", None, Some(&viewer))).await;
    assert_eq!(wrong_function.status, 404);
    let create = ROUTES.iter().find(|r| r.operation == Operation::KeysCreate).unwrap();
    let viewer_create = invoke(&app, "keys-create", &event(create, "", body_for(create, 0).as_ref(), Some(&viewer))).await;
    assert_eq!((viewer_create.status, viewer_create.json["error"]["code"].as_str()), (403, Some("insufficient_role")));
    let mut no_workspace = viewer.clone();
    no_workspace.remove("custom:workspace");
    let answer = invoke(&app, "keys-list", &event(keys_list, "", None, Some(&no_workspace))).await;
    assert_eq!((answer.status, answer.json["error"]["code"].as_str()), (403, Some("no_workspace")));
}
