//! Identity: who is calling. Built-in tokens and AK/SK request signatures ([`LocalAuth`]),
//! or tokens validated by an external IAM, OpenStack Keystone v3 ([`keystone::KeystoneAuth`]),
//! behind one [`Authenticator`] trait.

pub mod credentials;
pub mod keystone;
pub mod sdk_signature;
pub mod signature;
pub mod token;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::domain::ports::CacheStats;
use crate::domain::{Identity, Result};
use signature::{SignatureVerifier, SignedRequest};
use token::TokenCodec;

/// Turns a credential into an identity.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// An `X-Auth-Token`. (The identity is shared with the provider's cache: a request
    /// with a known token copies none of its strings.)
    async fn authenticate_token(&self, token: &str) -> Result<Arc<Identity>>;
    /// A request signed with an access key / secret key (`Authorization: SDK-HMAC-SHA256 …`).
    async fn authenticate_signature(&self, request: &SignedRequest<'_>) -> Result<Arc<Identity>>;
    /// Whatever the identity provider depends on answers, for `/readyz`.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
    /// Its caches' counters, for `/metrics`.
    fn cache_stats(&self) -> Vec<CacheStats> {
        Vec::new()
    }
}

/// The built-in identity provider: tokens from `repocrypt token issue`, credentials from
/// `repocrypt credential create`.
pub struct LocalAuth {
    codec: TokenCodec,
    signatures: SignatureVerifier,
    clock: Arc<dyn Clock>,
    verified: VerifiedTokens,
}

impl LocalAuth {
    pub fn new(codec: TokenCodec, signatures: SignatureVerifier, clock: Arc<dyn Clock>) -> Self {
        LocalAuth {
            codec,
            signatures,
            clock,
            verified: VerifiedTokens::new(VERIFIED_TOKENS),
        }
    }
}

/// Tokens remembered after their signature verified.
const VERIFIED_TOKENS: usize = 8192;

/// Tokens whose signature verified, with their identity, so that a client sending the same
/// token on every request pays the HMAC, base64 and JSON of [`TokenCodec::verify`] once.
/// Exact: a token is signed, so its identity cannot change, and its expiry is checked on
/// every use. Only verified tokens enter, so forged ones cannot fill it; it is bounded
/// (least recently used first out), about 400 bytes an entry.
struct VerifiedTokens {
    shards: crate::shards::Shards<lru::LruCache<String, Arc<Identity>>>,
}

impl VerifiedTokens {
    fn new(capacity: usize) -> Self {
        let per_shard = crate::shards::per_shard(capacity);
        VerifiedTokens {
            shards: crate::shards::Shards::new(|| lru::LruCache::new(per_shard)),
        }
    }

    /// A hit takes its shard shared (see `crate::shards`): every request of a client
    /// reusing its token looks up the same entry.
    fn get(&self, token: &str) -> Option<Arc<Identity>> {
        let index = self.shards.index(token);
        self.shards
            .peek(index, token, |_, found| {
                let identity = found.cloned();
                let used = identity.is_some();
                (identity, used)
            })
            .flatten()
    }

    fn put(&self, token: &str, identity: &Arc<Identity>) {
        if let Some(mut shard) = self.shards.write(self.shards.index(token)) {
            shard.put(token.to_owned(), identity.clone());
        }
    }
}

#[async_trait]
impl Authenticator for LocalAuth {
    async fn authenticate_token(&self, token: &str) -> Result<Arc<Identity>> {
        let now = self.clock.unix_seconds();
        let outcome = match self.verified.get(token) {
            Some(identity) if identity.expires_at <= now => Err(crate::domain::Error::TokenExpired),
            Some(identity) => Ok(identity),
            None => {
                let outcome = self.codec.verify(token, now).map(Arc::new);
                if let Ok(identity) = &outcome {
                    self.verified.put(token, identity);
                }
                outcome
            }
        };
        trace_outcome("token", &outcome);
        outcome
    }

    async fn authenticate_signature(&self, request: &SignedRequest<'_>) -> Result<Arc<Identity>> {
        verify_signature(&self.signatures, request).await
    }
}

/// An AK/SK signature, by repocrypt's own credentials (in both IAM modes), traced.
async fn verify_signature(
    signatures: &SignatureVerifier,
    request: &SignedRequest<'_>,
) -> Result<Arc<Identity>> {
    let outcome = signatures.verify(request).await.map(Arc::new);
    trace_outcome("signature", &outcome);
    outcome
}

/// At trace level, who a credential turned out to be, or why it was refused: never the
/// credential itself (`tests/process/secrets.rs` checks).
fn trace_outcome(method: &'static str, outcome: &Result<Arc<Identity>>) {
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
