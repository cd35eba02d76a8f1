//! Thin handlers of the key broker's operations: the SDK's two list operations, the
//! repositories that depend on a key (`domain::keys`), and the platform's register, release
//! and shred (`domain::broker` holds the rules).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use serde::Deserialize;
use utoipa::IntoParams;

use super::context::RequestId;
use super::error::{ErrorBody, WebError};
use super::extract::Caller;
use super::handlers::{actor, body_bytes, path_tenant, require_json, ApiResult, JsonBody};
use super::limits::check_json_depth;
use super::views::{CmkView, DataKeyView, RegisteredView, RepoView};
use super::AppState;
use crate::domain::{parse_registration, CmkText, Error, Page, RepoId, RepoQuery, TenantId};

/// Paging of the list operations.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Index of the first item, 0 to 2147483647 (default 0).
    #[param(minimum = 0, maximum = 2147483647)]
    offset: Option<i64>,
    /// How many items, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Query of ListTenantEncryptedRepositories.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RepoListQuery {
    /// Index of the first repository, 0 to 2147483647 (default 0).
    #[param(minimum = 0, maximum = 2147483647)]
    offset: Option<i64>,
    /// How many repositories, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `repoName` (default) or `ownerName`.
    #[param(pattern = "^(repoName|ownerName)$")]
    order_by: Option<String>,
    /// `asc` or `desc` (default).
    #[param(pattern = "^(asc|desc)$")]
    sort: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, WebError> {
    q.map(|Query(q)| q)
        .map_err(|e| WebError::InvalidQuery(e.body_text()))
}

/// The tenant and repository id of a repository's path.
fn repo_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, RepoId), Error> {
    let Path((tenant, repo)) = path.map_err(|e| {
        Error::invalid(
            "tenant_id",
            format!("invalid path parameter: {}", e.body_text()),
        )
    })?;
    Ok((tenant, RepoId::parse(&repo)?))
}

/// Query the list of the tenant's keys in KMS.
#[utoipa::path(
    get,
    path = "/v4/tenants/{tenant_id}/repo-encryption/cmks",
    operation_id = "ListTenantCmks",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID."), PageQuery),
    responses(
        (status = 202, description = "The tenant's keys in KMS, in every state, ordered by key id", body = [CmkView]),
        (status = 400, description = "offset or limit out of range, or a malformed query string", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant's keys", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "KMS or database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn list_cmks(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let tenant = path_tenant(path)?;
    caller.authorize_read(&tenant)?;
    let q = query(q)?;
    let page = Page::new(q.offset, q.limit)?;
    let keys = state.service.list_cmks(&caller.tenant_id, page).await?;
    let views: Vec<CmkView> = keys.into_iter().map(CmkView::from).collect();
    Ok((StatusCode::ACCEPTED, JsonBody(views)))
}

/// The tenant and key id of a key's path.
fn key_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), Error> {
    let Path((tenant, key_id)) = path.map_err(|e| {
        Error::invalid(
            "key_id",
            format!("invalid path parameter: {}", e.body_text()),
        )
    })?;
    CmkText::parse("key_id", &key_id)?;
    Ok((tenant, key_id))
}

/// Query the tenant's repositories that depend on a key: encrypted, their data key wrapped
/// by it and not destroyed. What disabling the key, or deleting it, would cut off.
#[utoipa::path(
    get,
    path = "/v4/tenants/{tenant_id}/repo-encryption/cmks/{key_id}/repositories",
    operation_id = "ListTenantCmkRepositories",
    tag = "Tenant",
    params(
        ("tenant_id" = String, Path, description = "Tenant ID."),
        ("key_id" = String, Path, min_length = 1, max_length = 1000, description = "The key's id in KMS (on AWS also its ARN or alias)."),
        PageQuery,
    ),
    responses(
        (status = 202, description = "A page of the repositories that depend on the key, by repository id (empty for a key the tenant does not have)", body = [RepoView],
            headers(("X-Total-Count" = u64, description = "How many repositories depend on the key in all"))),
        (status = 400, description = "key_id, offset or limit out of range, or a malformed query string", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant's repositories", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database (or, for a key named by alias or ARN, KMS) unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn list_cmk_repositories(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let (tenant, key_id) = key_path(path)?;
    caller.authorize_repositories(&tenant)?;
    let tenant = TenantId::parse(tenant)?;
    let q = query(q)?;
    let page = Page::new(q.offset, q.limit)?;
    let impact = state.service.key_impact(&tenant, &key_id, page).await?;
    let views: Vec<RepoView> = impact
        .repositories
        .iter()
        .map(|r| RepoView::from(&r.fields))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        [(TOTAL_COUNT, HeaderValue::from(impact.total))],
        JsonBody(views),
    ))
}

/// The header of ListTenantCmkRepositories that tells how many repositories there are in
/// all.
const TOTAL_COUNT: HeaderName = HeaderName::from_static("x-total-count");

/// Query the list of the tenant's encrypted repositories.
#[utoipa::path(
    get,
    path = "/v4/tenants/{tenant_id}/repo-encryption/repositories",
    operation_id = "ListTenantEncryptedRepositories",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID."), RepoListQuery),
    responses(
        (status = 202, description = "The tenant's encrypted repositories whose data key is not destroyed", body = [RepoView]),
        (status = 400, description = "A query parameter out of range, or a malformed query string", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Another tenant's repositories", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 429, description = "Too many requests from this tenant or credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn list_repositories(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    q: Result<Query<RepoListQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let tenant = path_tenant(path)?;
    caller.authorize_repositories(&tenant)?;
    let tenant = TenantId::parse(tenant)?;
    let q = query(q)?;
    let query = RepoQuery::new(
        Page::new(q.offset, q.limit)?,
        q.order_by.as_deref(),
        q.sort.as_deref(),
    )?;
    let repos = state
        .service
        .list_encrypted_repositories(&tenant, &query)
        .await?;
    let views: Vec<RepoView> = repos.iter().map(|r| RepoView::from(&r.fields)).collect();
    Ok((StatusCode::ACCEPTED, JsonBody(views)))
}

/// Body of a registration, as the OpenAPI document describes it: built from what the
/// parser accepts (`domain::registration_schema`).
pub struct RegisterBody;

impl utoipa::PartialSchema for RegisterBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        serde_json::from_value(crate::domain::registration_schema()).unwrap_or_else(|_| {
            utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(
                utoipa::openapi::schema::Object::new(),
            ))
        })
    }
}

impl utoipa::ToSchema for RegisterBody {}

/// Register a repository at its creation (platform service principals only).
#[utoipa::path(
    post,
    path = "/v4/tenants/{tenant_id}/repo-encryption/repositories",
    operation_id = "RegisterTenantRepository",
    tag = "Tenant",
    params(("tenant_id" = String, Path, description = "Tenant ID.")),
    request_body(content = RegisterBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered now; an encrypted repository's data key is in the answer", body = RegisteredView),
        (status = 200, description = "Registered before with the same fields: the same answer again", body = RegisteredView),
        (status = 400, description = "Invalid body, or the tenant's setting cannot encrypt (no grant, not KMS, key not enabled)", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not a service principal, or the tenant stopped the release of its keys", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 409, description = "The repository id is registered with other fields", body = ErrorBody),
        (status = 410, description = "The repository was registered and its data key destroyed", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 429, description = "Too many requests from this credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "KMS or database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn register_repository(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(caller): Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let tenant = path_tenant(path)?;
    caller.authorize_service(&tenant)?;
    let tenant = TenantId::parse(tenant)?;
    require_json(&headers)?;
    let body = body_bytes(body, state.limits.max_body_bytes)?;
    check_json_depth(&body, state.limits.json_max_depth)?;
    let registration = parse_registration(&body)?;
    let registered = state
        .service
        .register_repository(&actor(&caller, &request_id), &tenant, registration)
        .await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, JsonBody(RegisteredView::from(&registered))))
}

/// Release a repository's data key to a storage node (platform service principals only).
#[utoipa::path(
    get,
    path = "/v4/tenants/{tenant_id}/repo-encryption/repositories/{repo_id}/data-key",
    operation_id = "ShowTenantRepositoryDataKey",
    tag = "Tenant",
    params(
        ("tenant_id" = String, Path, description = "Tenant ID."),
        ("repo_id" = i32, Path, minimum = 1, maximum = 2147483647, description = "Repository ID."),
    ),
    responses(
        (status = 200, description = "The data key, and how long it may be kept", body = DataKeyView),
        (status = 400, description = "repo_id is not 1 to 2147483647", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not a service principal; or the tenant's CMK is not enabled or its KMS grant is withdrawn", body = ErrorBody),
        (status = 404, description = "No such repository in this tenant", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 409, description = "The repository is not encrypted, or its wrapped key does not unwrap", body = ErrorBody),
        (status = 410, description = "The data key was destroyed, or its CMK deleted", body = ErrorBody),
        (status = 429, description = "Too many requests from this credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "KMS or database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn show_data_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let (tenant, repo_id) = repo_path(path)?;
    caller.authorize_service(&tenant)?;
    let tenant = TenantId::parse(tenant)?;
    let released = state.service.release_data_key(&tenant, repo_id).await?;
    Ok(JsonBody(DataKeyView::from(&released)))
}

/// Destroy a repository's data key (crypto-shredding; platform service principals only).
#[utoipa::path(
    delete,
    path = "/v4/tenants/{tenant_id}/repo-encryption/repositories/{repo_id}/data-key",
    operation_id = "DeleteTenantRepositoryDataKey",
    tag = "Tenant",
    params(
        ("tenant_id" = String, Path, description = "Tenant ID."),
        ("repo_id" = i32, Path, minimum = 1, maximum = 2147483647, description = "Repository ID."),
    ),
    responses(
        (status = 204, description = "Destroyed (now or before): the repository's data can never be decrypted again"),
        (status = 400, description = "repo_id is not 1 to 2147483647", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not a service principal", body = ErrorBody),
        (status = 404, description = "No such repository in this tenant", body = ErrorBody),
        (status = 408, description = "The request was not completed within the server's request timeout", body = ErrorBody),
        (status = 409, description = "The repository is not encrypted", body = ErrorBody),
        (status = 429, description = "Too many requests from this credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn delete_data_key(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    Caller(caller): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (tenant, repo_id) = repo_path(path)?;
    caller.authorize_service(&tenant)?;
    let tenant = TenantId::parse(tenant)?;
    state
        .service
        .shred_repository(&actor(&caller, &request_id), &tenant, repo_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
