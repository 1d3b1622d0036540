//! What every operation shares, added to the generated document in one place so that no handler's
//! annotation can forget it: the answers the dispatcher and the request parsing give on any route
//! (401/403 before a handler runs, 400 for an unknown query parameter, 413/415 for a body, 404 for
//! an id, 503 when storage is down), and the value sets of parameters that the code checks
//! (catalog ids, audit actions, page sizes, each provider's credential fields). A client generated from the document, or a fuzzer
//! such as schemathesis, then sees every status the API can answer and only values it accepts.

use serde_json::{Map, Value, json};

use crate::domain::audit::action;
use crate::domain::catalog::catalog;
use crate::domain::response_cache::MAX_REQUESTED_TTL_SECONDS;
use crate::domain::validation::{MAX_CREDENTIAL_BYTES, MAX_LABEL_CHARS};

/// What `validation` refuses in a credential: whitespace and control characters (ECMA-262 syntax,
/// which JSON Schema uses; `\s` there is Unicode white space, like Rust's `char::is_whitespace`).
const NO_WHITESPACE_OR_CONTROL: &str = r"^[^\s\x00-\x1f\x7f-\x9f]+$";
const NO_CONTROL_CHARACTERS: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The operation that serves the document itself: public, takes no input, touches no storage.
const DOCUMENT_OPERATION: &str = "openapi";
/// The usage report checks its `provider` filter against the catalog.
const USAGE_OPERATION: &str = "usage_get";

pub(super) fn complete(document: &mut Value) {
    if let Some(schemas) = document.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for name in ["CreateKey", "TestCandidate"] {
            if let Some(schema) = schemas.get_mut(name) {
                split_by_provider(schema);
            }
        }
        if let Some(label) = schemas.get_mut("UpdateKey").and_then(|s| s.pointer_mut("/properties/label")) {
            *label = json!({"type": ["string", "null"], "maxLength": MAX_LABEL_CHARS, "pattern": NO_CONTROL_CHARACTERS});
        }
    }
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.iter_mut().filter(|(method, _)| METHODS.contains(&method.as_str())).filter_map(|(_, op)| op.as_object_mut()))
    {
        if operation_id(operation) == Some(DOCUMENT_OPERATION) {
            continue;
        }
        constrain_parameters(operation);
        add_shared_answers(operation);
    }
}

fn add_shared_answers(operation: &mut Map<String, Value>) {
    let secured = operation.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    let has_body = operation.contains_key("requestBody");
    let has_path_parameter = parameters(operation).any(|p| p["in"] == "path");
    let mut answers: Vec<(&str, &str)> = vec![
        ("400", "the input is not valid (an unknown query parameter, a malformed header or value); nothing changed"),
        ("503", "storage or the key vault is unavailable; nothing changed, try again shortly"),
    ];
    if secured {
        answers.push(("401", "no valid bearer token"));
        answers.push(("403", "the token names no workspace or role, or the role is too low for this operation"));
    }
    if has_body {
        answers.push(("413", "the body is larger than the API accepts"));
        answers.push(("415", "the body is not sent as application/json"));
    }
    if has_path_parameter {
        answers.push(("404", "no such item in the caller's workspace"));
    }
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    for (status, description) in answers {
        responses.entry(status).or_insert_with(|| error_answer(description));
    }
}

fn error_answer(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    })
}

fn parameters(operation: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    operation.get("parameters").and_then(Value::as_array).into_iter().flatten()
}

/// The value sets the handlers enforce, by parameter name (they mean the same on every route).
fn constrain_parameters(operation: &mut Map<String, Value>) {
    // The audit trail's `provider` filter matches recorded entries and takes any value.
    let provider_is_checked = |place: &str| place == "path" || operation_id(operation) == Some(USAGE_OPERATION);
    let provider_places: Vec<&str> = ["path", "query"].into_iter().filter(|p| provider_is_checked(p)).collect();
    let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else { return };
    for parameter in parameters.iter_mut().filter_map(Value::as_object_mut) {
        let name = parameter.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let place = parameter.get("in").and_then(Value::as_str).unwrap_or_default().to_owned();
        let schema = match (place.as_str(), name.as_str()) {
            (place, "provider") if provider_places.contains(&place) => json!({"type": "string", "enum": provider_ids()}),
            ("path", "path") => json!({"type": "string", "minLength": 1}),
            ("query", "limit") => json!({"type": "integer", "minimum": 1, "maximum": 200}),
            ("query", "action") => json!({"type": "string", "enum": action::ALL}),
            // The forms `parse_if_match` and `idempotency_key` accept.
            ("header", "If-Match") => json!({"type": "string", "pattern": r#"^(\*|(W/)?"[0-9]{1,19}")$"#}),
            ("header", "Idempotency-Key") => json!({"type": "string", "pattern": r"^[\x21-\x7e]{1,128}$"}),
            ("header", "X-StockPulse-Environment") => json!({"type": "string", "enum": ["production", "development"]}),
            ("header", "X-StockPulse-Cache-TTL") => json!({"type": "integer", "minimum": 0, "maximum": MAX_REQUESTED_TTL_SECONDS}),
            _ => continue,
        };
        parameter.insert("schema".into(), schema);
    }
}

fn provider_ids() -> Vec<String> {
    catalog().providers.iter().map(|p| p.id.clone()).collect()
}

fn operation_id(operation: &Map<String, Value>) -> Option<&str> {
    operation.get("operationId").and_then(Value::as_str)
}

/// A body that names a provider and its credentials becomes one alternative per provider, each
/// with exactly that provider's fields (required ones required) and the hard rules on values.
/// The catalog's formats stay out: a value that does not match is saved with a warning.
fn split_by_provider(schema: &mut Value) {
    let alternatives: Vec<Value> = catalog()
        .providers
        .iter()
        .map(|provider| {
            let mut alternative = schema.clone();
            let fields: Map<String, Value> = provider
                .fields
                .iter()
                .map(|field| {
                    let value = json!({
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_CREDENTIAL_BYTES,
                        "pattern": NO_WHITESPACE_OR_CONTROL,
                        "description": format!("{}; at most {MAX_CREDENTIAL_BYTES} bytes of UTF-8", field.label),
                    });
                    (field.id.clone(), value)
                })
                .collect();
            let required: Vec<&str> = provider.fields.iter().filter(|f| f.required).map(|f| f.id.as_str()).collect();
            if let Some(properties) = alternative.get_mut("properties").and_then(Value::as_object_mut) {
                properties.insert("provider".into(), json!({"type": "string", "const": provider.id}));
                properties.insert(
                    "credentials".into(),
                    json!({"type": "object", "properties": fields, "required": required, "additionalProperties": false}),
                );
                if properties.contains_key("label") {
                    properties
                        .insert("label".into(), json!({"type": "string", "maxLength": MAX_LABEL_CHARS, "pattern": NO_CONTROL_CHARACTERS}));
                }
            }
            alternative["title"] = json!(provider.name);
            alternative
        })
        .collect();
    let description = schema.get("description").cloned();
    *schema = json!({"oneOf": alternatives});
    if let Some(description) = description {
        schema["description"] = description;
    }
}
