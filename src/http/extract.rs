//! Extractors: the authenticated caller. Never logs the credential itself.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;
use super::AppState;
use crate::domain::{Error, Identity};

pub const AUTH_TOKEN_HEADER: &str = "x-auth-token";

/// The authenticated caller of a `/v4` operation.
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(AUTH_TOKEN_HEADER).iter();
        let value = values.next().ok_or(Error::MissingToken)?;
        if values.next().is_some() {
            return Err(Error::InvalidToken("more than one X-Auth-Token header").into());
        }
        let token = value
            .to_str()
            .map_err(|_| Error::InvalidToken("not visible ASCII"))?
            .trim();
        if token.is_empty() {
            return Err(Error::MissingToken.into());
        }
        Ok(Caller(state.auth.authenticate_token(token).await?))
    }
}
