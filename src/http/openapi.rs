//! The OpenAPI 3 document: the API operations of `routes::ROUTES`, each described by its
//! handler's annotation.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Type};
use utoipa::{Modify, OpenApi};

use super::broker;
use super::error::ErrorBody;
use super::handlers;
use super::routes::{Access, ROUTES};
use super::views::{
    CmkView, DataKeyView, EncryptionTypeOut, GrantView, KeyStateCode, PermitPublicOut,
    RegisteredView, RepoView, RewrapFailureView, RewrapJobView, RewrapStateView, SettingView,
    TenantSettingView,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "repocrypt: CodeArts Repo V4 tenant repository encryption",
        description = "Per-tenant repository encryption settings, KMS grants and tenant settings; the tenant's keys and encrypted repositories; and the platform's key broker (register, release, shred)."
    ),
    components(schemas(
        SettingView,
        GrantView,
        TenantSettingView,
        ErrorBody,
        handlers::UpdateSettingBody,
        EncryptionTypeOut,
        PermitPublicOut,
        KeyStateCode,
        CmkView,
        RepoView,
        RegisteredView,
        DataKeyView,
        RewrapJobView,
        RewrapFailureView,
        RewrapStateView,
        broker::RegisterBody
    )),
    modifiers(&Paths, &Security, &RequestIdHeader),
    tags((name = "Tenant", description = "V4 tenant operations"))
)]
pub struct ApiDoc;

/// The API operations of the route table, as their handlers' annotations describe them.
struct Paths;

impl Modify for Paths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for route in &ROUTES {
            if let Access::Api(doc) = route.access {
                let (path, methods, operation) = doc();
                openapi.paths.add_path_operation(path, methods, operation);
            }
        }
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "X-Auth-Token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-Token",
                "Token from `repocrypt token issue` (1 to 100,000 characters). Takes precedence over a signature.",
            ))),
        );
        components.add_security_scheme(
            "SDK-HMAC-SHA256",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "Huawei Cloud SDK AK/SK signature: `SDK-HMAC-SHA256 Access=AK, SignedHeaders=…, Signature=…` \
                 with a signed `X-Sdk-Date` (credentials from `repocrypt credential create`).",
            ))),
        );
    }
}

/// Every response carries `X-Request-Id`.
struct RequestIdHeader;

impl Modify for RequestIdHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let header = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some(
                "The caller's X-Request-Id when it sent a usable one, else a generated id.",
            ))
            .build();
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for response in op.responses.responses.values_mut() {
                    if let RefOr::T(r) = response {
                        r.headers.insert("X-Request-Id".into(), header.clone());
                    }
                }
            }
        }
    }
}

/// The document as JSON text.
pub fn document() -> String {
    let Ok(mut doc) = serde_json::to_value(ApiDoc::openapi()) else {
        return "{}".to_owned();
    };
    // utoipa's Header has no `required`; every response carries X-Request-Id, so say so
    // (and let contract tests check it).
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        let ops = paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut());
        for op in ops {
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else {
                continue;
            };
            for response in responses.values_mut() {
                if let Some(h) = response.pointer_mut("/headers/X-Request-Id") {
                    h["required"] = serde_json::Value::Bool(true);
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_owned())
}
