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
