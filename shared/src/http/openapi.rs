//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they use.

use std::sync::LazyLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers;

#[derive(OpenApi)]
#[openapi(
    info(title = "StockPulse Keys API", description = "Stores third-party API keys encrypted and never returns them. All answers are JSON; errors use one envelope."),
    paths(
        handlers::providers_list,
        handlers::keys_list,
        handlers::keys_get,
        handlers::keys_create,
        handlers::keys_update,
        handlers::keys_delete,
        handlers::keys_test_candidate,
        handlers::keys_test,
        handlers::audit_list,
        handlers::audit_verify,
        handlers::openapi,
        super::proxy_handlers::quotas_get,
        super::proxy_handlers::quotas_put,
        super::proxy_handlers::usage_get,
        super::proxy_handlers::notifications_list,
        super::proxy_handlers::notifications_read,
        super::proxy_handlers::cache_purge,
    ),
    modifiers(&BearerAuth),
    tags((name = "providers"), (name = "keys"), (name = "audit"), (name = "quotas"), (name = "usage"), (name = "notifications"), (name = "cache"), (name = "meta"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
            );
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| ApiDoc::openapi().to_json().expect("the OpenAPI document serializes"));

pub fn document_json() -> &'static str {
    &DOCUMENT
}
