//! Verifying SDK-HMAC-SHA256 signed requests against the credential store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::credentials::Credentials;
use super::sdk_signature::{
    canonical_request, parse_authorization, parse_sdk_date, payload_sha256_hex, string_to_sign,
    verify, within_skew, HEADER_HOST, HEADER_SDK_DATE,
};
use crate::clock::Clock;
use crate::domain::{Error, Identity, Result};

pub const HEADER_SDK_NONCE: &str = "x-sdk-nonce";
/// Most nonces remembered at once (per replica).
const NONCE_CAPACITY: usize = 1_000_000;
/// Longest `X-Sdk-Nonce` accepted (bytes), so the replay table stays small.
pub const MAX_NONCE_LEN: usize = 128;

/// A request as it arrived, for signature verification.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Raw path, as on the wire.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    pub headers: Vec<(&'a str, &'a str)>,
    pub authorization: &'a str,
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

pub struct SignatureVerifier {
    credentials: Arc<Credentials>,
    clock: Arc<dyn Clock>,
    max_skew: u64,
    /// (access key, nonce) -> Unix second after which it may be forgotten.
    nonces: Mutex<HashMap<(String, String), u64>>,
}

fn malformed(e: impl std::fmt::Display) -> Error {
    Error::SignatureMalformed(e.to_string())
}

impl SignatureVerifier {
    pub fn new(credentials: Arc<Credentials>, clock: Arc<dyn Clock>, max_skew: Duration) -> Self {
        SignatureVerifier {
            credentials,
            clock,
            max_skew: max_skew.as_secs(),
            nonces: Mutex::new(HashMap::new()),
        }
    }

    pub async fn verify(&self, req: &SignedRequest<'_>) -> Result<Identity> {
        let auth = parse_authorization(req.authorization).map_err(malformed)?;
        auth.require_signed(&[HEADER_HOST, HEADER_SDK_DATE])
            .map_err(malformed)?;
        let date = req
            .header(HEADER_SDK_DATE)
            .ok_or_else(|| Error::SignatureStale("X-Sdk-Date is missing".into()))?;
        let signed_at = parse_sdk_date(date).map_err(|e| Error::SignatureStale(e.to_string()))?;
        let now = self.clock.unix_seconds();
        if !within_skew(signed_at, now, self.max_skew) {
            return Err(Error::SignatureStale(format!(
                "X-Sdk-Date {date} is more than {} seconds from the server's clock",
                self.max_skew
            )));
        }
        let (identity, secret) = self
            .credentials
            .resolve(auth.access_key)
            .await?
            .ok_or(Error::UnknownAccessKey)?;
        let payload = payload_sha256_hex(req.body, &req.headers, &auth.signed_headers, false)
            .map_err(|e| match e {
                super::sdk_signature::SignatureError::PayloadHashMismatch => {
                    Error::SignatureMismatch
                }
                other => malformed(other),
            })?;
        let canonical = canonical_request(
            req.method,
            req.path,
            req.query,
            &req.headers,
            &auth.signed_headers,
            &payload,
        )
        .map_err(malformed)?;
        if !verify(&secret, &auth, &string_to_sign(date, &canonical)) {
            return Err(Error::SignatureMismatch);
        }
        if let Some(nonce) = req.header(HEADER_SDK_NONCE) {
            if !auth.signs(HEADER_SDK_NONCE) {
                return Err(malformed("X-Sdk-Nonce is sent but not signed"));
            }
            if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
                return Err(malformed(format!(
                    "X-Sdk-Nonce must be 1 to {MAX_NONCE_LEN} bytes"
                )));
            }
            self.remember_nonce(auth.access_key, nonce, now)?;
        }
        Ok(identity)
    }

    /// Refuse a nonce seen within the replay window; remember it until the window ends.
    fn remember_nonce(&self, access_key: &str, nonce: &str, now: u64) -> Result<()> {
        let mut nonces = self
            .nonces
            .lock()
            .map_err(|_| Error::Internal("nonce cache poisoned".into()))?;
        let key = (access_key.to_owned(), nonce.to_owned());
        if nonces.get(&key).is_some_and(|until| *until >= now) {
            return Err(Error::NonceReplayed);
        }
        if nonces.len() >= NONCE_CAPACITY {
            nonces.retain(|_, until| *until >= now);
        }
        if nonces.len() >= NONCE_CAPACITY {
            // Full of live nonces: refuse rather than forget one (which would allow a replay).
            return Err(Error::SignatureStale(
                "too many signed requests with nonces in the replay window; retry shortly".into(),
            ));
        }
        // Dates up to max_skew in the future are accepted, so remember for twice the window.
        nonces.insert(key, now + 2 * self.max_skew);
        Ok(())
    }
}
