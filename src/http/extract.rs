//! Authentication: the `X-Auth-Token` extractor and the middleware that verifies AK/SK
//! request signatures. Never logs the credential itself.

use std::hash::Hash;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::{RateScope, WebError};
use super::AppState;
use crate::auth::sdk_signature::parse_authorization;
use crate::auth::signature::SignedRequest;
use crate::domain::{Error, Identity};

pub const AUTH_TOKEN_HEADER: &str = "x-auth-token";

/// The authenticated caller of a `/v4` operation.
pub struct Caller(pub Arc<Identity>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let mut values = parts.headers.get_all(AUTH_TOKEN_HEADER).iter();
        let Some(value) = values.next() else {
            // No token: a verified signature (see `verify_signature`) or nothing.
            // (The signature middleware has already taken it from the rate limits.)
            return match parts.extensions.get::<SignedIdentity>() {
                Some(SignedIdentity(identity)) => Ok(Caller(identity.clone())),
                None => Err(Error::MissingToken.into()),
            };
        };
        if values.next().is_some() {
            return Err(Error::InvalidToken("more than one X-Auth-Token header").into());
        }
        if value.len() > state.limits.max_token_bytes {
            return Err(Error::InvalidToken("longer than this server accepts").into());
        }
        let token = value
            .to_str()
            .map_err(|_| Error::InvalidToken("not visible ASCII"))?
            .trim();
        if token.is_empty() {
            return Err(Error::MissingToken.into());
        }
        let identity = state.auth.authenticate_token(token).await?;
        admit(state, &identity, (&identity.tenant_id, &identity.user_id))?;
        Ok(Caller(identity))
    }
}

/// Take a request from the credential's and then the tenant's rate limits. The credential
/// goes first so that one user over their own rate does not also drain the tenant's
/// bucket for the tenant's other users.
fn admit(state: &AppState, identity: &Identity, credential: impl Hash) -> Result<(), WebError> {
    let limits = &state.rate_limiters;
    if let Some(l) = &limits.credential {
        l.check(credential)
            .map_err(|retry_after| WebError::RateLimited {
                scope: RateScope::Credential,
                retry_after,
            })?;
    }
    // A service principal belongs to no tenant: only its credential's limit applies.
    if let Some(l) = limits.tenant.as_ref().filter(|_| !identity.is_service()) {
        l.check(&identity.tenant_id)
            .map_err(|retry_after| WebError::RateLimited {
                scope: RateScope::Tenant,
                retry_after,
            })?;
    }
    Ok(())
}

/// The identity behind a verified request signature.
#[derive(Clone)]
struct SignedIdentity(Arc<Identity>);

/// Verifies `Authorization: SDK-HMAC-SHA256 …` on requests that carry no `X-Auth-Token`
/// (a token takes precedence). The body (at most 64 KiB) is read to check its hash, then
/// handed on unchanged. Called by `context::request_context` for the API's operations;
/// a refusal is the response to send.
pub async fn verify_signature(state: &AppState, req: Request) -> Result<Request, Response> {
    if req.headers().contains_key(AUTH_TOKEN_HEADER) || !req.headers().contains_key(AUTHORIZATION) {
        return Ok(req);
    }
    let too_long = req
        .headers()
        .get_all(AUTHORIZATION)
        .iter()
        .any(|v| v.len() > state.limits.max_token_bytes);
    if too_long {
        return Err(WebError::from(Error::SignatureMalformed(format!(
            "the Authorization header is longer than {} bytes",
            state.limits.max_token_bytes
        )))
        .into_response());
    }
    let limit = state.limits.max_body_bytes;
    let (mut parts, body) = req.into_parts();
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(WebError::from(Error::PayloadTooLarge { limit }).into_response())
        }
        Err(_) => {
            return Err(WebError::from(Error::BadRequestBody(
                "cannot read the request body".into(),
            ))
            .into_response())
        }
    };
    let verified = {
        let mut authorizations = parts.headers.get_all(AUTHORIZATION).iter();
        let authorization = match (authorizations.next(), authorizations.next()) {
            (Some(v), None) => v.to_str().unwrap_or(""),
            _ => "",
        };
        let request = SignedRequest {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: parts
                .headers
                .iter()
                .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
                .collect(),
            authorization,
            body: &bytes,
        };
        let verified = state.auth.authenticate_signature(&request).await;
        verified.map_err(WebError::from).and_then(|identity| {
            // The verified header's access key is the credential the rate limit counts.
            let access_key = parse_authorization(authorization).map_or("", |a| a.access_key);
            admit(state, &identity, access_key).map(|()| identity)
        })
    };
    match verified {
        Ok(identity) => {
            parts.extensions.insert(SignedIdentity(identity));
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        Err(e) => Err(e.into_response()),
    }
}
