//! The one place where service errors become HTTP responses.

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

/// An [`Error`] on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// HTTP status of each error.
pub fn status_of(e: &Error) -> StatusCode {
    use Error::*;
    match e {
        BadRequestBody(_)
        | InvalidField { .. }
        | TenantMismatch { .. }
        | InvalidProjectId
        | InvalidQuery(_)
        | MissingCmkKeyId
        | KmsGrantMissing { .. }
        | KeyNotFound { .. }
        | KeyNotEnabled { .. }
        | KeyNameMismatch { .. }
        | DefaultNeedsKms
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
        ForeignTenant | AdminRequired | NotProjectMember => StatusCode::FORBIDDEN,
        ProjectNotFound(_) | RouteNotFound => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Conflict | AlreadyExists(_) => StatusCode::CONFLICT,
        PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        KmsUnavailable(_) | Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What went wrong inside the service (never shown to the caller), for the log line.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let failure = self.0.internal_detail().map(|detail| Failure {
            code: self.0.code(),
            detail: detail.to_owned(),
        });
        let body = ErrorBody {
            error_code: self.0.code().to_owned(),
            error_msg: self.0.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Error::RateLimited { retry_after, .. } = self.0 {
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
