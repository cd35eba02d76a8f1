//! Thin handlers: authenticate, authorize, parse into domain types, call the service.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};

use super::context::RequestId;
use super::error::{ErrorBody, WebError};
use super::extract::Caller;
use super::limits::check_json_depth;
use super::views::{GrantView, SettingView, TenantSettingView};
use super::AppState;
use crate::domain::{
    parse_setting_patch, Actor, Error, FieldKind, Identity, BODY_FIELDS, MAX_LEN, MIN_LEN,
};

pub(super) type ApiResult<T> = Result<T, WebError>;

/// `Content-Type` of a JSON answer: a static header value, which costs no allocation (one
/// made from a `&str` copies it for each answer).
pub(super) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON answer serialized into a buffer sized for the API's answers (a few hundred
/// bytes), where `Json` starts at 128 bytes and grows twice.
pub struct JsonBody<T>(pub T);

impl<T: serde::Serialize> IntoResponse for JsonBody<T> {
    fn into_response(self) -> axum::response::Response {
        let mut body = Vec::with_capacity(512);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => ([(header::CONTENT_TYPE, APPLICATION_JSON)], body).into_response(),
            Err(e) => {
                WebError::from(Error::Internal(format!("encode the answer: {e}"))).into_response()
            }
        }
    }
}

/// Body of UpdateTenantRepoEncryptionSetting, as the OpenAPI document describes it: built
/// from the fields the parser reads ([`BODY_FIELDS`]), so the two cannot differ.
pub struct UpdateSettingBody;

impl utoipa::PartialSchema for UpdateSettingBody {
    fn schema() -> RefOr<Schema> {
        let nullable = |t| SchemaType::from_iter([t, Type::Null]);
        let mut body = ObjectBuilder::new()
            .schema_type(Type::Object)
            // (The line break is the one the derived schema had from a doc comment.)
            .description(Some(
                "Body of UpdateTenantRepoEncryptionSetting. Every field is optional: an absent (or\n\
                 null) field keeps its stored value.",
            ))
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for field in &BODY_FIELDS {
            let property = match field.kind {
                FieldKind::Text(_) => ObjectBuilder::new()
                    .schema_type(nullable(Type::String))
                    .min_length(Some(MIN_LEN))
                    .max_length(Some(MAX_LEN)),
                #[allow(deprecated)] // `examples` is not the `example` clients read
                FieldKind::EncryptionType(_) => ObjectBuilder::new()
                    .schema_type(nullable(Type::String))
                    .pattern(Some("^([Kk][Mm][Ss]|[Nn][Oo][Rr][Mm][Aa][Ll])$"))
                    .example(Some("KMS".into())),
                FieldKind::Boolean(_) => ObjectBuilder::new().schema_type(nullable(Type::Boolean)),
            };
            body = body.property(field.name, property.description(Some(field.description)));
        }
        body.into()
    }
}

impl ToSchema for UpdateSettingBody {}

/// Query of ShowProjectTenantSettings.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantSettingQuery {
    /// 32-character id of a project; the settings of the tenant that owns it are returned.
    #[param(min_length = 32, max_length = 32, pattern = "^[0-9A-Za-z]{32}$")]
    project_id: Option<String>,
}

pub(super) fn actor(caller: &Identity, request_id: &RequestId) -> Actor {
    Actor {
        actor: caller.user_id.clone(),
        request_id: Some(request_id.as_str().to_owned()),
    }
}

/// The tenant in the path, which must be the caller's own.
pub(super) fn path_tenant(path: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    path.map(|Path(t)| t).map_err(|e| {
        Error::invalid(
            "tenant_id",
            format!("invalid path parameter: {}", e.body_text()),
        )
    })
}

pub(super) fn require_json(headers: &HeaderMap) -> Result<(), WebError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
    {
        Ok(())
    } else {
        Err(WebError::UnsupportedMediaType)
    }
}

pub(super) fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, Error> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge { limit }
        } else {
            Error::BadRequestBody(format!("cannot read the request body: {}", e.body_text()))
        }
    })
}

/// Modify the repository encryption configuration of the current tenant.
#[utoipa::path(
    put,
    path = "/v4/tenants/{tenant_id}/repo-encryption/setting",
    operation_id = "UpdateTenantRepoEncryptionSetting",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID.")),
    request_body(content = UpdateSettingBody, content_type = "application/json"),
    responses(
        (status = 200, description = "OK", body = SettingView),
        (status = 400, description = "Invalid body or a KMS rule refused the change", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant, or not a tenant admin", body = ErrorBody),
        (status = 409, description = "Concurrent changes; retry", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "KMS or database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn update_setting(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let tenant = path_tenant(path)?;
    caller.authorize_write(&tenant)?;
    require_json(&headers)?;
    let body = body_bytes(body, state.limits.max_body_bytes)?;
    check_json_depth(&body, state.limits.json_max_depth)?;
    let patch = parse_setting_patch(&body)?;
    let report = state
        .service
        .update_setting(&actor(&caller, &request_id), &caller.tenant_id, patch)
        .await?;
    Ok(JsonBody(SettingView::from(&report)).into_response())
}

/// Obtain the repository encryption configuration of the current tenant.
#[utoipa::path(
    get,
    path = "/v4/tenants/{tenant_id}/repo-encryption/setting",
    operation_id = "ShowTenantRepoEncryptionSetting",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID.")),
    responses(
        (status = 202, description = "The repository encryption configuration of the tenant", body = SettingView),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant's setting", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn show_setting(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let tenant = path_tenant(path)?;
    caller.authorize_read(&tenant)?;
    let report = state.service.show_setting(&caller.tenant_id).await?;
    Ok((StatusCode::ACCEPTED, JsonBody(SettingView::from(&report))).into_response())
}

/// Create the KMS authorization the current tenant delegates to this service.
#[utoipa::path(
    post,
    path = "/v4/tenants/{tenant_id}/repo-encryption/kms-grant",
    operation_id = "CreateTenantKmsGrant",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID.")),
    responses(
        (status = 200, description = "OK", body = GrantView),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant, or not a tenant admin", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "The service cannot reach the tenant's KMS, or the database", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn create_grant(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<JsonBody<GrantView>> {
    // Any body (the SDK sends an empty one with Content-Type: application/json) is ignored.
    let tenant = path_tenant(path)?;
    caller.authorize_write(&tenant)?;
    state
        .service
        .create_grant(&actor(&caller, &request_id), &caller.tenant_id)
        .await?;
    Ok(JsonBody(GrantView::new(&caller.tenant_id, true)))
}

/// Obtain the KMS authorization status of the current tenant.
#[utoipa::path(
    get,
    path = "/v4/tenants/{tenant_id}/repo-encryption/kms-grant",
    operation_id = "ShowTenantKmsGrant",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID.")),
    responses(
        (status = 202, description = "The KMS authorization status of the tenant", body = GrantView),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant's grant", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn show_grant(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let tenant = path_tenant(path)?;
    caller.authorize_read(&tenant)?;
    let assumed = state.service.show_grant(&caller.tenant_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        JsonBody(GrantView::new(&caller.tenant_id, assumed)),
    ))
}

/// Withdraw the KMS authorization the current tenant delegated to this service.
#[utoipa::path(
    delete,
    path = "/v4/tenants/{tenant_id}/repo-encryption/kms-grant",
    operation_id = "DeleteTenantKmsGrant",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID.")),
    responses(
        (status = 204, description = "Withdrawn (now, or there was no grant): no data key of the tenant is released, no KMS setting accepted and no encrypted repository registered until a new POST kms-grant; the data keys are kept"),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant, or not a tenant admin", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn delete_grant(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let tenant = path_tenant(path)?;
    caller.authorize_write(&tenant)?;
    state
        .service
        .delete_grant(&actor(&caller, &request_id), &caller.tenant_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Obtain tenant settings: the caller's own tenant, or the owner of `project_id`.
#[utoipa::path(
    get,
    path = "/v4/tenant/setting",
    operation_id = "ShowProjectTenantSettings",
    tag = "Tenant",
    params(TenantSettingQuery),
    responses(
        (status = 200, description = "OK", body = TenantSettingView),
        (status = 400, description = "project_id is not 32 letters or digits, or the query string is malformed", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not a member of the project nor of its tenant, or a service principal", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn show_tenant_setting(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<TenantSettingQuery>, QueryRejection>,
) -> ApiResult<JsonBody<TenantSettingView>> {
    let Query(query) = query.map_err(|e| WebError::InvalidQuery(e.body_text()))?;
    let view = state
        .service
        .show_tenant_setting(&caller, query.project_id.as_deref())
        .await?;
    Ok(JsonBody(view.into()))
}

/// Liveness: the process answers.
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The last readiness probe, reused for a second so that `/readyz` (unauthenticated)
/// cannot be used to flood the database, the KMS or the IAM.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Probes)>>,
}

/// Whether each dependency answered the last probe.
#[derive(Debug, Clone, Copy)]
struct Probes {
    database: bool,
    kms: bool,
    iam: bool,
}

const READINESS_REUSE: Duration = Duration::from_secs(1);
/// How long each probe may take.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Readiness: the database and the KMS answer (503 naming the one that does not). The IAM
/// is reported too, but an unreachable one leaves the instance ready ("degraded"): tokens
/// already validated and AK/SK signatures still work, and a Keystone down for every replica
/// at once must not take them all out of the load balancer. The local IAM is this process.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let probes = {
        let mut last = state.readiness.last.lock().await;
        match *last {
            Some((at, probes))
                if state.clock.monotonic().saturating_duration_since(at) < READINESS_REUSE =>
            {
                probes
            }
            _ => {
                // A hung dependency is an unreachable one, reported well within the
                // request timeout.
                let probe = |name: &'static str, ping| async move {
                    let outcome = tokio::time::timeout(READINESS_TIMEOUT, ping)
                        .await
                        .unwrap_or_else(|_| {
                            Err(crate::domain::Error::Internal(format!(
                                "no answer within {}",
                                humantime::format_duration(READINESS_TIMEOUT)
                            )))
                        });
                    if let Err(e) = &outcome {
                        tracing::warn!(error = %e, detail = e.internal_detail().unwrap_or(""), "readiness: {name} unreachable");
                    }
                    outcome.is_ok()
                };
                let (database, kms, iam) = tokio::join!(
                    probe("database", state.service.store().ping()),
                    probe("KMS", state.kms.ping()),
                    probe("IAM", state.auth.ping()),
                );
                let probes = Probes { database, kms, iam };
                *last = Some((state.clock.monotonic(), probes));
                probes
            }
        }
    };
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let ready = probes.database && probes.kms;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word_of_all = match (ready, probes.iam) {
        (true, true) => "ready",
        (true, false) => "degraded",
        (false, _) => "unready",
    };
    let body = serde_json::json!({
        "status": word_of_all,
        "database": word(probes.database),
        "kms": word(probes.kms),
        "iam": word(probes.iam),
    });
    (status, Json(body))
}

/// Prometheus metrics, in the text exposition format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut caches = state.service.cache_stats();
    caches.extend(state.auth.cache_stats());
    let text = state
        .metrics
        .render(&caches, &state.rate_limiters.rejected());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, APPLICATION_JSON)],
        state.openapi.clone(),
    )
}

pub async fn not_found() -> WebError {
    WebError::RouteNotFound
}

pub async fn method_not_allowed() -> WebError {
    WebError::MethodNotAllowed
}
