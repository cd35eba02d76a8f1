//! The client's side of AK/SK: `X-Sdk-Date` and an `SDK-HMAC-SHA256` signature made the way
//! the official SDK makes it (content-type, host, x-sdk-date and any extra headers signed).
#![allow(dead_code)]

use std::time::{Duration, UNIX_EPOCH};

use repocrypt::auth::sdk_signature::{
    canonical_request, format_authorization, payload_sha256_hex, sign, string_to_sign,
};

/// `YYYYMMDDTHHMMSSZ`, the `X-Sdk-Date` format, of a Unix time.
pub fn sdk_date(unix: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// An AK/SK pair (from `credential create` or the app's credential store).
#[derive(Clone, Debug)]
pub struct Cred {
    pub ak: String,
    pub sk: String,
}

/// Signs requests as `ak` with `secret` (the credential's own, or a wrong one), for `host`
/// at `date` (an [`sdk_date`]).
pub struct Signer<'a> {
    pub ak: &'a str,
    pub secret: &'a [u8],
    pub host: &'a str,
    pub date: &'a str,
}

/// A signed request's headers (`authorization` last) and its `Signature=` value.
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub signature: [u8; 32],
}

impl Signer<'_> {
    /// The headers of `method uri` with `body`, signed like the SDK: host, content-type,
    /// x-sdk-date and `extra` (lower-case names) are signed.
    pub fn sign(&self, method: &str, uri: &str, body: &[u8], extra: &[(&str, &str)]) -> Signed {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("host", self.host),
            ("x-sdk-date", self.date),
        ];
        headers.extend_from_slice(extra);
        let mut names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let payload = payload_sha256_hex(body, &headers, &names, false).expect("payload hash");
        let canonical = canonical_request(method, path, query, &headers, &names, &payload)
            .expect("canonical request");
        let signature = sign(self.secret, &string_to_sign(self.date, &canonical));
        let mut out: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        out.push((
            "authorization".into(),
            format_authorization(self.ak, &names, &signature),
        ));
        Signed {
            headers: out,
            signature,
        }
    }
}
