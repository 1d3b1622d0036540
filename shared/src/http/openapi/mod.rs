//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they use.

use std::sync::LazyLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers;

mod completion;

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
        handlers::keys_revoke,
        super::rotation_handlers::keys_rotate,
        super::rotation_handlers::keys_rollback,
        super::rotation_handlers::jobs_run,
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
    modifiers(&BearerAuth, &ProxyPaths),
    tags((name = "providers"), (name = "keys"), (name = "audit"), (name = "quotas"), (name = "usage"), (name = "notifications"), (name = "cache"), (name = "jobs"), (name = "proxy"), (name = "meta"))
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

/// The proxy takes every method on one path, which `#[utoipa::path]` cannot say: its operations
/// are added here, one per method, sharing one description.
struct ProxyPaths;

/// Where the proxy's operations appear (OpenAPI has no greedy `{path+}`).
pub const PROXY_DOC_PATH: &str = "/proxy/{provider}/{path}";

impl Modify for ProxyPaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
        let error = || {
            ResponseBuilder::new()
                .description("the error envelope, with `provider`, `upstream_status` and `provider_message` when the provider failed")
                .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorEnvelope"))).build())
                .build()
        };
        let parameter = |name: &str, place: ParameterIn, description: &str, required: Required| {
            ParameterBuilder::new().name(name).parameter_in(place).required(required).description(Some(description)).build()
        };
        for (method, name) in [
            (HttpMethod::Get, "get"),
            (HttpMethod::Post, "post"),
            (HttpMethod::Put, "put"),
            (HttpMethod::Patch, "patch"),
            (HttpMethod::Delete, "delete"),
        ] {
            let id = format!("proxy_{name}");
            let operation = OperationBuilder::new()
                .tag("proxy")
                .operation_id(Some(id))
                .summary(Some("Call a provider with the workspace's key injected"))
                .description(Some(
                    "Forwards to the catalog's base URL for the provider and environment with the stored key injected as the catalog says. \
                     The answer is the provider's, redacted, with X-StockPulse-Request-Id, X-StockPulse-Cache (HIT|MISS|BYPASS) and \
                     X-StockPulse-Quota-Remaining; failures use the error envelope. Any method is accepted.",
                ))
                .parameter(parameter("provider", ParameterIn::Path, "catalog id (`openai`, `fmp`, ...)", Required::True))
                .parameter(parameter(
                    "path",
                    ParameterIn::Path,
                    "the provider's path below its base URL (one or more segments)",
                    Required::True,
                ))
                .parameter(parameter(
                    "X-StockPulse-Environment",
                    ParameterIn::Header,
                    "`production` (default) or `development`",
                    Required::False,
                ))
                .parameter(parameter(
                    "X-StockPulse-Cache-TTL",
                    ParameterIn::Header,
                    "seconds (0–86400) to cache this answer; 0 = never",
                    Required::False,
                ))
                .response("200", ResponseBuilder::new().description("the provider's answer, passed through").build())
                .response("400", error())
                .response("401", error())
                .response("403", error())
                .response("404", error())
                .response("429", error())
                .response("502", error())
                .response("504", error())
                .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
                .build();
            openapi.paths.add_path_operation(PROXY_DOC_PATH, vec![method], operation);
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut document = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    completion::complete(&mut document);
    serde_json::to_string(&document).expect("the OpenAPI document serializes")
});

pub fn document_json() -> &'static str {
    &DOCUMENT
}
