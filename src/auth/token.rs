//! Built-in tokens: `rc1.<base64url(claims JSON)>.<base64url(HMAC-SHA256)>`.
//!
//! Verification is one HMAC over a few hundred bytes and one small JSON parse: about a
//! microsecond. The signing key is derived from the root key, so every replica that
//! shares the root key accepts the same tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::{Error, Identity, Result, Role, TenantId};
use crate::keys::{RootKey, LABEL_TOKEN};

const PREFIX: &str = "rc1.";
/// The seeds' upper bound on `X-Auth-Token`.
pub const MAX_TOKEN_CHARS: usize = 100_000;

#[derive(Serialize, Deserialize)]
struct Claims {
    tid: String,
    uid: String,
    un: String,
    role: Role,
    iat: u64,
    exp: u64,
}

#[derive(Clone)]
pub struct TokenCodec {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCodec(<redacted>)")
    }
}

impl TokenCodec {
    pub fn new(root: &RootKey) -> Self {
        #[allow(clippy::expect_used)] // HMAC takes keys of any length
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&root.derive(LABEL_TOKEN))
            .expect("HMAC takes any key length");
        TokenCodec { mac }
    }

    /// Issue a token for `identity`, valid from `now` until `identity.expires_at`.
    pub fn issue(&self, identity: &Identity, now: u64) -> Result<String> {
        let claims = Claims {
            tid: identity.tenant_id.as_str().to_owned(),
            uid: identity.user_id.clone(),
            un: identity.user_name.clone(),
            role: identity.role,
            iat: now,
            exp: identity.expires_at,
        };
        let json = serde_json::to_vec(&claims)
            .map_err(|e| Error::Internal(format!("encode token claims: {e}")))?;
        let mut token = String::with_capacity(PREFIX.len() + json.len() * 4 / 3 + 48);
        token.push_str(PREFIX);
        B64URL.encode_string(json, &mut token);
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        token.push('.');
        B64URL.encode_string(mac.finalize().into_bytes(), &mut token);
        Ok(token)
    }

    /// Verify a token at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(Error::InvalidToken("longer than 100000 characters"));
        }
        let (signed, tag_b64) = token
            .rsplit_once('.')
            .ok_or(Error::InvalidToken("not a repocrypt token"))?;
        let payload_b64 = signed
            .strip_prefix(PREFIX)
            .ok_or(Error::InvalidToken("not a repocrypt token"))?;
        let mut tag = [0u8; 32];
        match B64URL.decode_slice(tag_b64, &mut tag) {
            Ok(32) => {}
            _ => return Err(Error::InvalidToken("malformed signature")),
        }
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| Error::InvalidToken("signature does not verify"))?;
        // Signed by us from here on: a failure below is a bug or a key reuse, not an attack.
        let json = B64URL
            .decode(payload_b64)
            .map_err(|_| Error::InvalidToken("malformed claims"))?;
        let claims: Claims =
            serde_json::from_slice(&json).map_err(|_| Error::InvalidToken("malformed claims"))?;
        if claims.exp <= now {
            return Err(Error::TokenExpired);
        }
        Ok(Identity {
            tenant_id: TenantId::parse(claims.tid)
                .map_err(|_| Error::InvalidToken("malformed claims"))?,
            user_id: claims.uid,
            user_name: claims.un,
            role: claims.role,
            expires_at: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(seed: u8) -> TokenCodec {
        TokenCodec::new(&RootKey::from_bytes([seed; 32]))
    }

    fn identity(exp: u64) -> Identity {
        Identity {
            tenant_id: TenantId::parse("t1").expect("tenant"),
            user_id: "u1".into(),
            user_name: "Alice".into(),
            role: Role::Admin,
            expires_at: exp,
        }
    }

    #[test]
    fn round_trip() {
        let c = codec(1);
        let t = c.issue(&identity(2000), 1000).expect("issue");
        assert_eq!(c.verify(&t, 1500).expect("verify"), identity(2000));
    }

    #[test]
    fn expired() {
        let c = codec(1);
        let t = c.issue(&identity(2000), 1000).expect("issue");
        assert!(matches!(c.verify(&t, 2000), Err(Error::TokenExpired)));
    }

    #[test]
    fn forged_tampered_and_garbled_are_refused() {
        let c = codec(1);
        let t = c.issue(&identity(2000), 1000).expect("issue");
        // another key
        assert!(matches!(
            codec(2).verify(&t, 1500),
            Err(Error::InvalidToken(_))
        ));
        // every single-character change in the claims or the signature
        for i in PREFIX.len()..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).expect("ascii");
            if s != t {
                assert!(c.verify(&s, 1500).is_err(), "tampered at {i} accepted");
            }
        }
        for g in [
            "",
            ".",
            "rc1.",
            "rc1..",
            "rc1.a.b",
            "Bearer x",
            "rc1.!!!.???",
            "ü.ü.ü",
        ] {
            assert!(
                matches!(c.verify(g, 1500), Err(Error::InvalidToken(_))),
                "{g}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_CHARS + 1);
        assert!(matches!(c.verify(&huge, 1500), Err(Error::InvalidToken(_))));
    }
}
