//! The OpenAPI 3.1 document is generated from the code and covers every route of the table.

use stockpulse_shared::http::routes::ROUTES;
use stockpulse_tests::TestServer;

use crate::KEY_RECORD_FIELDS;

#[tokio::test]
async fn the_document_is_public_3_1_and_lists_every_route() {
    let server = TestServer::start().await;
    let doc = server.client.get("/api/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["openapi"], "3.1.0");
    for route in ROUTES.iter().filter(|r| !r.dev_only) {
        // OpenAPI has neither `ANY` nor greedy parameters: such a route is documented per method.
        let (path, methods) = match route.method {
            "ANY" => (route.path.replace("+}", "}"), vec!["get", "post", "put", "patch", "delete"]),
            method => (route.path.to_owned(), vec![method]),
        };
        for method in methods {
            let operation = &doc.json["paths"][&path][method.to_ascii_lowercase()];
            assert!(operation.is_object(), "{method} {path} is not documented");
        }
    }
    let record = &doc.json["components"]["schemas"]["KeyRecord"]["properties"];
    for field in KEY_RECORD_FIELDS {
        assert!(record.get(field).is_some(), "KeyRecord lacks {field}");
    }
    for forbidden in ["credentials", "api_key", "secret", "plaintext", "workspace"] {
        assert!(record.get(forbidden).is_none(), "KeyRecord exposes {forbidden}");
    }
    assert!(doc.json["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc.json["components"]["schemas"]["ErrorEnvelope"].is_object());
}

/// What the dispatcher and the request parsing answer on any route is in every operation, and a
/// key body is described per provider with exactly the catalog's credential fields.
#[tokio::test]
async fn every_operation_lists_the_shared_answers_and_key_bodies_follow_the_catalog() {
    let server = TestServer::start().await;
    let doc = server.client.get("/api/openapi.json", None).await.json;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation["operationId"] == "openapi" {
                continue;
            }
            let responses = &operation["responses"];
            let mut expected = vec!["400", "503"];
            if operation["security"].as_array().is_some_and(|s| !s.is_empty()) {
                expected.extend(["401", "403"]);
            }
            if operation.get("requestBody").is_some() {
                expected.extend(["413", "415"]);
            }
            if path.contains('{') {
                expected.push("404");
            }
            for status in expected {
                assert_eq!(
                    responses[status]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorEnvelope",
                    "{method} {path} does not document {status}"
                );
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                assert!(parameter["schema"].is_object(), "{method} {path}: parameter {} has no schema", parameter["name"]);
            }
        }
    }
    let catalog = stockpulse_shared::domain::catalog::catalog();
    for body in ["CreateKey", "TestCandidate"] {
        let alternatives = doc["components"]["schemas"][body]["oneOf"].as_array().unwrap_or_else(|| panic!("{body} is not per provider"));
        assert_eq!(alternatives.len(), catalog.providers.len(), "{body}");
        for (alternative, provider) in alternatives.iter().zip(&catalog.providers) {
            assert_eq!(alternative["properties"]["provider"]["const"], provider.id.as_str());
            let credentials = &alternative["properties"]["credentials"];
            assert_eq!(credentials["additionalProperties"], false, "{body} {}", provider.id);
            let fields: Vec<&str> = credentials["properties"].as_object().unwrap().keys().map(String::as_str).collect();
            let mut catalog_fields: Vec<&str> = provider.fields.iter().map(|f| f.id.as_str()).collect();
            catalog_fields.sort_unstable();
            assert_eq!(fields, catalog_fields, "{body} {}", provider.id);
            let required: Vec<&str> = credentials["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let catalog_required: Vec<&str> = provider.fields.iter().filter(|f| f.required).map(|f| f.id.as_str()).collect();
            assert_eq!(required, catalog_required, "{body} {}", provider.id);
        }
    }
}
