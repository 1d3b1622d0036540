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
        let operation = &doc.json["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(operation.is_object(), "{} {} is not documented", route.method, route.path);
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
