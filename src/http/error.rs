//! The one place where errors become HTTP responses: the domain's [`Error`]s and the HTTP
//! layer's own, together a [`WebError`].

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::Error;

/// Every error body: `{"error_code": "...", "error_msg": "..."}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable error code (see the README's error-code reference).
    pub error_code: String,
    /// What went wrong and what to do about it.
    pub error_msg: String,
}

/// Everything a request can fail with: the domain's errors, and the HTTP layer's own
/// (no route, wrong method, wrong media type, too slow, too many, a malformed query
/// string), which the service never sees.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Domain(#[from] Error),
    #[error("no such resource")]
    RouteNotFound,
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("the request did not complete within {}: send it whole and promptly, then retry", humantime::format_duration(*.limit))]
    RequestTimeout { limit: std::time::Duration },
    #[error("too many requests for this {scope}: retry in {retry_after} s")]
    RateLimited {
        scope: RateScope,
        /// Whole seconds until a request would be admitted.
        retry_after: u64,
    },
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    /// Wrong as HTTP, refused at the edge (`http::server`) before any route: the message
    /// names what is wrong.
    #[error("malformed HTTP request: {0}")]
    MalformedRequest(&'static str),
}

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    Tenant,
    Credential,
}

impl std::fmt::Display for RateScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RateScope::Tenant => "tenant",
            RateScope::Credential => "credential",
        })
    }
}

impl WebError {
    /// HTTP status and `error_code`: the domain's by [`status_of`] and [`Error::code`],
    /// the HTTP layer's here.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use WebError::*;
        match self {
            Domain(e) => (status_of(e), e.code()),
            RouteNotFound => (StatusCode::NOT_FOUND, "RC.404000"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "RC.405000"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "RC.415001"),
            RequestTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "RC.408001"),
            RateLimited {
                scope: RateScope::Tenant,
                ..
            } => (StatusCode::TOO_MANY_REQUESTS, "RC.429001"),
            RateLimited {
                scope: RateScope::Credential,
                ..
            } => (StatusCode::TOO_MANY_REQUESTS, "RC.429002"),
            InvalidQuery(_) => (StatusCode::BAD_REQUEST, "RC.400005"),
            MalformedRequest(_) => (StatusCode::BAD_REQUEST, "RC.400015"),
        }
    }
}

/// HTTP status of each of the domain's errors.
pub fn status_of(e: &Error) -> StatusCode {
    use Error::*;
    match e {
        BadRequestBody(_)
        | InvalidField { .. }
        | TenantMismatch { .. }
        | InvalidProjectId
        | MissingCmkKeyId
        | KmsGrantMissing { .. }
        | KeyNotFound { .. }
        | KeyNotEnabled { .. }
        | KeyNameMismatch { .. }
        | DefaultNeedsKms
        | EncryptedNeedsKms { .. }
        | RewrapNeedsKms { .. }
        | InvalidArgument(_)
        | KeyInvalidState { .. } => StatusCode::BAD_REQUEST,
        MissingToken
        | InvalidToken(_)
        | TokenExpired
        | SignatureMalformed(_)
        | UnknownAccessKey
        | SignatureStale(_)
        | SignatureMismatch
        | NonceReplayed => StatusCode::UNAUTHORIZED,
        ForeignTenant
        | AdminRequired
        | NotProjectMember
        | ServiceOnly
        | ServiceNotAllowed
        | GrantWithdrawn { .. }
        | KeyRefused { .. }
        | NoMappedRole => StatusCode::FORBIDDEN,
        ProjectNotFound(_) | RepoNotFound { .. } | RewrapJobNotFound { .. } => {
            StatusCode::NOT_FOUND
        }
        Conflict
        | KeyInUse { .. }
        | AlreadyExists(_)
        | RepoNotEncrypted { .. }
        | RepoConflict { .. }
        | DataKeyInvalid { .. }
        | RewrapIncomplete { .. } => StatusCode::CONFLICT,
        DataKeyDestroyed { .. } | CmkGone { .. } => StatusCode::GONE,
        PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        KmsUnavailable(_) | IamUnavailable(_) | Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What went wrong inside the service (never shown to the caller), for the log line.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub detail: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let failure = match &self {
            WebError::Domain(e) => e.internal_detail().map(|detail| Failure {
                code,
                detail: detail.to_owned(),
            }),
            _ => None,
        };
        let body = ErrorBody {
            error_code: code.to_owned(),
            error_msg: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if let WebError::RateLimited { retry_after, .. } = self {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if let Some(f) = failure {
            // The request middleware logs it, with the request id.
            response.extensions_mut().insert(f);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_layers_failures_keep_their_status_code_and_message() {
        let cases = [
            (
                WebError::RouteNotFound,
                404,
                "RC.404000",
                "no such resource",
            ),
            (
                WebError::MethodNotAllowed,
                405,
                "RC.405000",
                "method not allowed on this resource",
            ),
            (
                WebError::UnsupportedMediaType,
                415,
                "RC.415001",
                "Content-Type must be application/json",
            ),
            (
                WebError::RequestTimeout {
                    limit: std::time::Duration::from_secs(10),
                },
                408,
                "RC.408001",
                "the request did not complete within 10s: send it whole and promptly, then retry",
            ),
            (
                WebError::RateLimited {
                    scope: RateScope::Tenant,
                    retry_after: 1,
                },
                429,
                "RC.429001",
                "too many requests for this tenant: retry in 1 s",
            ),
            (
                WebError::RateLimited {
                    scope: RateScope::Credential,
                    retry_after: 2,
                },
                429,
                "RC.429002",
                "too many requests for this credential: retry in 2 s",
            ),
            (
                WebError::InvalidQuery("x".into()),
                400,
                "RC.400005",
                "invalid query string: x",
            ),
            (
                WebError::MalformedRequest("an HTTP/1.1 request needs a Host header"),
                400,
                "RC.400015",
                "malformed HTTP request: an HTTP/1.1 request needs a Host header",
            ),
            (
                WebError::from(Error::Conflict),
                409,
                "RC.409001",
                "the setting was changed concurrently too many times; retry the request",
            ),
        ];
        for (e, status, code, msg) in cases {
            assert_eq!(
                e.status_and_code(),
                (StatusCode::from_u16(status).unwrap(), code)
            );
            assert_eq!(e.to_string(), msg);
        }
    }

    /// One error of each kind a client can see over HTTP. The match has no wildcard: a new
    /// variant does not compile until it is listed here, and so in README's table.
    fn every_api_error() -> Vec<WebError> {
        use Error::*;
        let s = || String::from("x");
        let errors = vec![
            BadRequestBody(s()),
            Error::invalid("f", "r"),
            TenantMismatch { body: s() },
            InvalidProjectId,
            MissingCmkKeyId,
            KmsGrantMissing { tenant: s() },
            KeyNotFound { key_id: s() },
            KeyNotEnabled {
                key_id: s(),
                state: "disabled",
                code: 3,
            },
            KeyNameMismatch {
                given: s(),
                key_id: s(),
                actual: s(),
            },
            DefaultNeedsKms,
            EncryptedNeedsKms { tenant: s() },
            RewrapNeedsKms { tenant: s() },
            MissingToken,
            InvalidToken("x"),
            TokenExpired,
            SignatureMalformed(s()),
            UnknownAccessKey,
            SignatureStale(s()),
            SignatureMismatch,
            NonceReplayed,
            ForeignTenant,
            AdminRequired,
            NotProjectMember,
            ServiceOnly,
            ServiceNotAllowed,
            GrantWithdrawn { tenant: s() },
            KeyRefused {
                key_id: s(),
                state: "disabled",
                code: 3,
            },
            NoMappedRole,
            ProjectNotFound(s()),
            RepoNotFound { repo_id: 1 },
            RewrapJobNotFound { job_id: s() },
            RepoNotEncrypted { repo_id: 1 },
            RepoConflict {
                repo_id: 1,
                field: "repo_name",
            },
            DataKeyInvalid { repo_id: 1 },
            DataKeyDestroyed { repo_id: 1 },
            CmkGone { key_id: s() },
            Conflict,
            KeyInUse {
                key_id: s(),
                repositories: 2,
                op: "disable",
            },
            PayloadTooLarge { limit: 1 },
            KmsUnavailable(s()),
            IamUnavailable(s()),
            Store(s()),
            Internal(s()),
        ];
        for e in &errors {
            // Exhaustive: the compiler asks for every new variant (the CLI's own errors
            // are listed apart in README).
            match e {
                BadRequestBody(_)
                | InvalidField { .. }
                | TenantMismatch { .. }
                | InvalidProjectId
                | MissingCmkKeyId
                | KmsGrantMissing { .. }
                | KeyNotFound { .. }
                | KeyNotEnabled { .. }
                | KeyNameMismatch { .. }
                | DefaultNeedsKms
                | EncryptedNeedsKms { .. }
                | RewrapNeedsKms { .. }
                | MissingToken
                | InvalidToken(_)
                | TokenExpired
                | SignatureMalformed(_)
                | UnknownAccessKey
                | SignatureStale(_)
                | SignatureMismatch
                | NonceReplayed
                | ForeignTenant
                | AdminRequired
                | NotProjectMember
                | ServiceOnly
                | ServiceNotAllowed
                | GrantWithdrawn { .. }
                | KeyRefused { .. }
                | NoMappedRole
                | ProjectNotFound(_)
                | RepoNotFound { .. }
                | RewrapJobNotFound { .. }
                | RepoNotEncrypted { .. }
                | RepoConflict { .. }
                | DataKeyInvalid { .. }
                | DataKeyDestroyed { .. }
                | CmkGone { .. }
                | Conflict
                | KeyInUse { .. }
                | PayloadTooLarge { .. }
                | KmsUnavailable(_)
                | IamUnavailable(_)
                | Store(_)
                | Internal(_) => {}
                InvalidArgument(_)
                | KeyInvalidState { .. }
                | AlreadyExists(_)
                | RewrapIncomplete { .. } => {}
            }
        }
        let mut all: Vec<WebError> = errors.into_iter().map(WebError::from).collect();
        all.extend([
            WebError::RouteNotFound,
            WebError::MethodNotAllowed,
            WebError::UnsupportedMediaType,
            WebError::RequestTimeout {
                limit: std::time::Duration::from_secs(1),
            },
            WebError::RateLimited {
                scope: RateScope::Tenant,
                retry_after: 1,
            },
            WebError::RateLimited {
                scope: RateScope::Credential,
                retry_after: 1,
            },
            WebError::InvalidQuery("x".into()),
            WebError::MalformedRequest("x"),
        ]);
        all
    }

    #[test]
    fn readmes_error_table_lists_every_code_with_its_status() {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("### Error codes")
            .nth(1)
            .and_then(|t| t.split("\n## ").next())
            .expect("README has an Error codes section");
        let rows: Vec<(String, String)> = table
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells.len() > 3 && cells[2].starts_with('`'))
                    .then(|| (cells[1].to_owned(), cells[2].trim_matches('`').to_owned()))
            })
            .collect();
        for e in every_api_error() {
            let (status, code) = e.status_and_code();
            assert!(
                rows.iter().any(|(s, c)| c == code && s == status.as_str()),
                "README's error table lacks `{code}` with status {}",
                status.as_u16()
            );
        }
    }
}
