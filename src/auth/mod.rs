//! Identity: who is calling. Built-in tokens and AK/SK request signatures; the
//! [`Authenticator`] trait is where an external IAM (Keystone v3 token validation) plugs in.

pub mod credentials;
pub mod sdk_signature;
pub mod signature;
pub mod token;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::domain::{Identity, Result};
use signature::{SignatureVerifier, SignedRequest};
use token::TokenCodec;

/// Turns a credential into an identity.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// An `X-Auth-Token`.
    async fn authenticate_token(&self, token: &str) -> Result<Identity>;
    /// A request signed with an access key / secret key (`Authorization: SDK-HMAC-SHA256 …`).
    async fn authenticate_signature(&self, request: &SignedRequest<'_>) -> Result<Identity>;
}

/// The built-in identity provider: tokens from `repocrypt token issue`, credentials from
/// `repocrypt credential create`.
pub struct LocalAuth {
    codec: TokenCodec,
    signatures: SignatureVerifier,
    clock: Arc<dyn Clock>,
}

impl LocalAuth {
    pub fn new(codec: TokenCodec, signatures: SignatureVerifier, clock: Arc<dyn Clock>) -> Self {
        LocalAuth {
            codec,
            signatures,
            clock,
        }
    }
}

#[async_trait]
impl Authenticator for LocalAuth {
    async fn authenticate_token(&self, token: &str) -> Result<Identity> {
        let outcome = self.codec.verify(token, self.clock.unix_seconds());
        trace_outcome("token", &outcome);
        outcome
    }

    async fn authenticate_signature(&self, request: &SignedRequest<'_>) -> Result<Identity> {
        let outcome = self.signatures.verify(request).await;
        trace_outcome("signature", &outcome);
        outcome
    }
}

/// At trace level, who a credential turned out to be, or why it was refused: never the
/// credential itself (`tests/secrets.rs` checks).
fn trace_outcome(method: &'static str, outcome: &Result<Identity>) {
    match outcome {
        Ok(id) => tracing::trace!(
            method,
            tenant_id = %id.tenant_id,
            user_id = %id.user_id,
            role = ?id.role,
            "caller authenticated"
        ),
        Err(e) => tracing::trace!(method, error_code = e.code(), reason = %e, "caller refused"),
    }
}
