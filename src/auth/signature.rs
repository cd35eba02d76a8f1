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
/// Most nonces one access key may have remembered at once: a tenth of the whole, so one
/// credential sending distinct nonces cannot fill the table for every other.
const NONCE_QUOTA_PER_KEY: usize = NONCE_CAPACITY / 10;
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
    nonces: Mutex<Nonces>,
}

/// The nonces seen within the replay window.
#[derive(Default)]
struct Nonces {
    /// (access key, nonce) -> Unix second after which it may be forgotten.
    until: HashMap<(String, String), u64>,
    /// How many of `until` each access key holds.
    per_key: HashMap<String, usize>,
    /// When expired nonces were last dropped (a full scan: at most once a second).
    purged_at: u64,
}

impl Nonces {
    /// Refuse a nonce seen before; remember a new one until `until`, within `quota` per
    /// access key and `capacity` in all.
    fn remember(
        &mut self,
        access_key: &str,
        nonce: &str,
        now: u64,
        until: u64,
        quota: usize,
        capacity: usize,
    ) -> Result<()> {
        let key = (access_key.to_owned(), nonce.to_owned());
        if self.until.get(&key).is_some_and(|until| *until >= now) {
            return Err(Error::NonceReplayed);
        }
        let held = |n: &Nonces| n.per_key.get(access_key).copied().unwrap_or(0);
        if self.until.len() >= capacity || held(self) >= quota {
            self.purge(now);
        }
        // Full of live nonces: refuse rather than forget one (which would allow a replay).
        if held(self) >= quota {
            return Err(Error::SignatureStale(
                "this access key has too many signed requests with nonces in the replay \
                     window; retry shortly"
                    .into(),
            ));
        }
        if self.until.len() >= capacity {
            return Err(Error::SignatureStale(
                "too many signed requests with nonces in the replay window; retry shortly".into(),
            ));
        }
        self.until.insert(key, until);
        *self.per_key.entry(access_key.to_owned()).or_default() += 1;
        Ok(())
    }

    /// Drop expired nonces, unless that was done this second already.
    fn purge(&mut self, now: u64) {
        if self.purged_at == now {
            return;
        }
        self.purged_at = now;
        self.until.retain(|_, until| *until >= now);
        self.per_key.clear();
        for (access_key, _) in self.until.keys() {
            *self.per_key.entry(access_key.clone()).or_default() += 1;
        }
    }
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
            nonces: Mutex::new(Nonces::default()),
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
        // Dates up to max_skew in the future are accepted, so remember for twice the window.
        let until = now + 2 * self.max_skew;
        nonces.remember(
            access_key,
            nonce,
            now,
            until,
            NONCE_QUOTA_PER_KEY,
            NONCE_CAPACITY,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_access_key_cannot_fill_the_nonce_memory_for_the_others() {
        let mut n = Nonces::default();
        let remember = |n: &mut Nonces, ak: &str, nonce: &str, now: u64| {
            n.remember(ak, nonce, now, now + 10, 3, 5)
        };
        for i in 0..3 {
            assert!(remember(&mut n, "ak1", &i.to_string(), 100).is_ok());
        }
        assert!(matches!(
            remember(&mut n, "ak1", "x", 100),
            Err(Error::SignatureStale(m)) if m.contains("this access key")
        ));
        assert!(matches!(
            remember(&mut n, "ak1", "0", 100),
            Err(Error::NonceReplayed)
        ));
        // Others still have room, up to the whole capacity.
        assert!(remember(&mut n, "ak2", "0", 100).is_ok());
        assert!(remember(&mut n, "ak3", "0", 100).is_ok());
        assert!(matches!(
            remember(&mut n, "ak4", "0", 100),
            Err(Error::SignatureStale(m)) if m.contains("too many")
        ));
        // Once the window has passed, the key's nonces are forgotten and it may go on.
        assert!(remember(&mut n, "ak1", "x", 111).is_ok());
        assert_eq!(n.per_key.get("ak1"), Some(&1));
        assert_eq!(n.until.len(), 1);
    }
}
