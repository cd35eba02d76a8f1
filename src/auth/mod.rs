//! Identity: who is calling. Built-in tokens now; the [`Authenticator`] trait is where an
//! external IAM (Keystone v3 token validation) plugs in.

pub mod token;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::domain::{Identity, Result};
use token::TokenCodec;

/// Turns an `X-Auth-Token` into an identity.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate_token(&self, token: &str) -> Result<Identity>;
}

/// The built-in token issuer's verifier.
pub struct LocalTokens {
    codec: TokenCodec,
    clock: Arc<dyn Clock>,
}

impl LocalTokens {
    pub fn new(codec: TokenCodec, clock: Arc<dyn Clock>) -> Self {
        LocalTokens { codec, clock }
    }
}

#[async_trait]
impl Authenticator for LocalTokens {
    async fn authenticate_token(&self, token: &str) -> Result<Identity> {
        self.codec.verify(token, self.clock.unix_seconds())
    }
}
