//! Thin handlers of the rewrap operations (`domain::rewrap` holds the rules).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Extension;

use super::context::RequestId;
use super::error::ErrorBody;
use super::extract::Caller;
use super::handlers::{actor, path_tenant, ApiResult, JsonBody};
use super::views::RewrapJobView;
use super::AppState;
use crate::domain::{Error, TenantId};

/// Rewrap the data keys of the tenant's repositories under its current CMK (tenant admin).
#[utoipa::path(
    post,
    path = "/v4/tenants/{tenant_id}/repo-encryption/rewrap",
    operation_id = "CreateTenantRewrapJob",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID.")),
    responses(
        (status = 202, description = "A job started now: it rewraps, in the background, every data key of the tenant's encrypted repositories that its current CMK does not wrap", body = RewrapJobView),
        (status = 200, description = "A job of the tenant was running already: that job (one at a time)", body = RewrapJobView),
        (status = 400, description = "The tenant's setting cannot be rewrapped under: no grant, not KMS, no key, or the key not found or not enabled", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not an admin of this tenant", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "KMS or database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn create_rewrap(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<impl IntoResponse> {
    // Any body is ignored, as on POST kms-grant.
    let tenant = path_tenant(path)?;
    caller.authorize_write(&tenant)?;
    let (job, created) = state
        .service
        .start_rewrap(&actor(&caller, &request_id), &caller.tenant_id)
        .await?;
    // Run here unless a runner has it (a second POST while it runs changes nothing).
    state.service.spawn_rewrap(job.clone());
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, JsonBody(RewrapJobView::from(&job))))
}

/// A rewrap job's progress (any role of the tenant).
#[utoipa::path(
    get,
    path = "/v4/tenants/{tenant_id}/repo-encryption/rewrap/{job_id}",
    operation_id = "ShowTenantRewrapJob",
    tag = "Tenant",
    params(
        ("tenant_id" = String, Path, description = "Tenant ID."),
        ("job_id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "Rewrap job ID (a UUID), as CreateTenantRewrapJob answered it."),
    ),
    responses(
        (status = 200, description = "The job: its state, and how many repositories it has rewrapped and could not", body = RewrapJobView),
        (status = 400, description = "job_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant's job, or a service principal", body = ErrorBody),
        (status = 404, description = "No such job in this tenant", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn show_rewrap(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<JsonBody<RewrapJobView>> {
    let Path((tenant, job_id)) = path.map_err(|e| {
        Error::invalid(
            "tenant_id",
            format!("invalid path parameter: {}", e.body_text()),
        )
    })?;
    caller.authorize_read(&tenant)?;
    let tenant = TenantId::parse(tenant)?;
    let job = state.service.show_rewrap(&tenant, &job_id).await?;
    Ok(JsonBody(RewrapJobView::from(&job)))
}
