//! Verification of Huawei Cloud SDK AK/SK request signatures (`SDK-HMAC-SHA256`).
//!
//! Reproduces, byte for byte, what `huaweicloudsdkcore` 3.1.219
//! (`huaweicloudsdkcore/signer/signer.py`, class `Signer`) signs:
//!
//! ```text
//! Authorization: SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<h1;h2;...>, Signature=<hex>
//!
//! CanonicalRequest = METHOD (upper-cased)            "\n"
//!                    CanonicalURI                    "\n"
//!                    CanonicalQueryString            "\n"
//!                    "h1:v1\n" "h2:v2\n" ...         "\n"
//!                    "h1;h2;..."                     "\n"
//!                    HexSHA256(body) | EMPTY_HASH | value of X-Sdk-Content-Sha256
//! StringToSign     = "SDK-HMAC-SHA256\n" X-Sdk-Date "\n" HexSHA256(CanonicalRequest)
//! Signature        = Hex(HMAC-SHA256(SK, StringToSign))
//! ```
//!
//! The module is pure: no I/O, no clock, no HTTP framework types. A caller
//! typically does:
//!
//! 1. [`parse_authorization`] on the `Authorization` header, then
//!    [`SdkAuthorization::require_signed`] for `host` and `x-sdk-date`;
//! 2. [`parse_sdk_date`] on `X-Sdk-Date` and a clock-skew check with
//!    [`within_skew`];
//! 3. look up the secret key for `access_key`;
//! 4. [`payload_sha256_hex`], [`canonical_request`], [`string_to_sign`] and
//!    finally [`verify`] (constant-time).
//!
//! Only `SDK-HMAC-SHA256` is accepted; the SDK's other schemes (`SDK-HMAC-SM3`,
//! the derived `V11-HMAC-SHA256`, `SDK-ECDSA-P256-SHA256`, `SDK-SM2-SM3`) are
//! rejected with [`SignatureError::UnsupportedAlgorithm`].
//!
//! Secrets are only ever borrowed (`&[u8]`) and are never formatted, logged
//! or stored by this module.

use std::borrow::Cow;
use std::fmt::Write as _;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm accepted.
pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
/// Lower-cased name of the date header (`X-Sdk-Date`).
pub const HEADER_SDK_DATE: &str = "x-sdk-date";
/// Lower-cased name of the host header, which the SDK always signs.
pub const HEADER_HOST: &str = "host";
/// Lower-cased name of the payload-hash override header (`X-Sdk-Content-Sha256`).
pub const HEADER_CONTENT_SHA256: &str = "x-sdk-content-sha256";
/// Value of `X-Sdk-Content-Sha256` the SDK sends for non-JSON/BSON bodies.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Hex SHA-256 of the empty string (the SDK's hash for an empty body).
pub const EMPTY_PAYLOAD_SHA256_HEX: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Longest `Authorization` value accepted (bytes).
pub const MAX_AUTHORIZATION_LEN: usize = 8192;
/// Longest access key accepted (bytes).
pub const MAX_ACCESS_KEY_LEN: usize = 128;
/// Most signed headers accepted.
pub const MAX_SIGNED_HEADERS: usize = 64;
/// Longest signed header name accepted (bytes).
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Most query parameters accepted when canonicalising a query string.
pub const MAX_QUERY_PARAMS: usize = 1024;

/// Other algorithm names the SDK can emit; recognised only to reject them clearly.
const OTHER_SDK_ALGORITHMS: [&str; 4] = [
    "SDK-HMAC-SM3",
    "V11-HMAC-SHA256",
    "SDK-ECDSA-P256-SHA256",
    "SDK-SM2-SM3",
];

/// Why a signature could not be checked. Messages never contain secrets, and
/// only echo request data that has been validated to be short and printable.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The `Authorization` header is not a well-formed `SDK-HMAC-SHA256` value.
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(&'static str),
    /// The `Authorization` header uses another (or an unknown) scheme.
    #[error("unsupported signing algorithm {0}: only SDK-HMAC-SHA256 is accepted")]
    UnsupportedAlgorithm(&'static str),
    /// A header listed in `SignedHeaders` is absent from the request.
    #[error("signed header `{0}` is missing from the request")]
    MissingSignedHeader(String),
    /// A header that must be unique occurs more than once in the request.
    #[error("header `{0}` occurs more than once in the request")]
    DuplicateHeader(String),
    /// A header the verifier requires to be signed is not in `SignedHeaders`.
    #[error("header `{0}` must be listed in SignedHeaders")]
    HeaderNotSigned(String),
    /// The method, path or query cannot be canonicalised.
    #[error("cannot canonicalise request: {0}")]
    MalformedRequest(&'static str),
    /// `X-Sdk-Date` is not a valid `YYYYMMDDTHHMMSSZ` timestamp (>= 1970).
    #[error("invalid X-Sdk-Date: {0}")]
    BadDate(&'static str),
    /// `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD` was sent but is not allowed.
    #[error("unsigned payloads (X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD) are not accepted")]
    UnsignedPayloadNotAllowed,
    /// `X-Sdk-Content-Sha256` carries a hash that does not match the body.
    #[error("X-Sdk-Content-Sha256 does not match the request body")]
    PayloadHashMismatch,
}

/// A parsed `SDK-HMAC-SHA256` `Authorization` header, borrowing from the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdkAuthorization<'a> {
    /// The access key (AK); not secret.
    pub access_key: &'a str,
    /// Lower-case header names, strictly ascending, as the SDK emits them.
    pub signed_headers: Vec<&'a str>,
    /// The decoded 32-byte HMAC-SHA256 signature.
    pub signature: [u8; 32],
}

impl SdkAuthorization<'_> {
    /// Whether `name` (compared ASCII case-insensitively) is a signed header.
    pub fn signs(&self, name: &str) -> bool {
        self.signed_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Fails with [`SignatureError::HeaderNotSigned`] for the first of `names`
    /// that is not signed (callers should require at least `host` and
    /// `x-sdk-date`, which the SDK always signs).
    pub fn require_signed(&self, names: &[&str]) -> Result<(), SignatureError> {
        match names.iter().find(|n| !self.signs(n)) {
            Some(missing) => Err(SignatureError::HeaderNotSigned(
                missing.to_ascii_lowercase(),
            )),
            None => Ok(()),
        }
    }
}

/// Parses `SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex`.
///
/// Strict: exactly one space after the algorithm, the three parameters once
/// each (any order, optional spaces around the commas), a printable-ASCII
/// access key, signed header names that are lower-case HTTP tokens without `_`
/// (the SDK never signs those) in strictly ascending order, and a signature of
/// exactly 64 lower-case hex digits. Work is linear in the (capped) input size.
pub fn parse_authorization(value: &str) -> Result<SdkAuthorization<'_>, SignatureError> {
    use SignatureError::MalformedAuthorization as Malformed;

    if value.is_empty() {
        return Err(Malformed("empty value"));
    }
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(Malformed("value too long"));
    }
    let (algorithm, params) = match value.split_once(' ') {
        Some((algorithm, params)) => (algorithm, Some(params)),
        None => (value, None),
    };
    if algorithm.is_empty() {
        return Err(Malformed("missing algorithm"));
    }
    if algorithm != ALGORITHM {
        return Err(SignatureError::UnsupportedAlgorithm(
            OTHER_SDK_ALGORITHMS
                .iter()
                .find(|known| **known == algorithm)
                .copied()
                .unwrap_or("(unrecognised)"),
        ));
    }
    let params = match params {
        Some(p) if !p.trim_matches(' ').is_empty() => p,
        _ => return Err(Malformed("missing parameters")),
    };
    if params.starts_with(' ') {
        return Err(Malformed("more than one space after the algorithm"));
    }

    let mut access = None;
    let mut signed = None;
    let mut signature = None;
    for (index, part) in params.split(',').enumerate() {
        if index >= 3 {
            return Err(Malformed("too many parameters"));
        }
        let part = part.trim_matches(' ');
        let (name, val) = part
            .split_once('=')
            .ok_or(Malformed("parameter without '='"))?;
        let slot = match name {
            "Access" => &mut access,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(Malformed("unknown parameter")),
        };
        if slot.replace(val).is_some() {
            return Err(Malformed("duplicate parameter"));
        }
    }
    let access_key = access.ok_or(Malformed("missing Access"))?;
    let signed = signed.ok_or(Malformed("missing SignedHeaders"))?;
    let signature = signature.ok_or(Malformed("missing Signature"))?;

    if access_key.is_empty() || access_key.len() > MAX_ACCESS_KEY_LEN {
        return Err(Malformed("Access has a bad length"));
    }
    if !access_key
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b',' && b != b'=' && b != b'"')
    {
        return Err(Malformed("Access contains invalid characters"));
    }

    let signed_headers = parse_signed_headers(signed)?;

    if signature.len() != 64 {
        return Err(Malformed("Signature must be 64 hex digits"));
    }
    if !signature
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Malformed("Signature must be lower-case hex"));
    }
    let mut sig = [0u8; 32];
    hex::decode_to_slice(signature, &mut sig)
        .map_err(|_| Malformed("Signature must be lower-case hex"))?;

    Ok(SdkAuthorization {
        access_key,
        signed_headers,
        signature: sig,
    })
}

fn parse_signed_headers(list: &str) -> Result<Vec<&str>, SignatureError> {
    use SignatureError::MalformedAuthorization as Malformed;

    if list.is_empty() {
        return Err(Malformed("SignedHeaders is empty"));
    }
    let mut out: Vec<&str> = Vec::new();
    for name in list.split(';') {
        if out.len() >= MAX_SIGNED_HEADERS {
            return Err(Malformed("too many SignedHeaders"));
        }
        if !is_signed_header_name(name) {
            return Err(Malformed(
                "SignedHeaders entry is not a lower-case header name without '_'",
            ));
        }
        if out.last().is_some_and(|prev| *prev >= name) {
            return Err(Malformed("SignedHeaders not strictly ascending"));
        }
        out.push(name);
    }
    Ok(out)
}

/// Lower-case RFC 9110 token, without `_` (the SDK skips such headers).
fn is_signed_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^`|~".contains(&b))
}

/// Formats an `Authorization` value exactly as the SDK does.
pub fn format_authorization(
    access_key: &str,
    signed_headers: &[&str],
    signature: &[u8; 32],
) -> String {
    format!(
        "{ALGORITHM} Access={access_key}, SignedHeaders={}, Signature={}",
        signed_headers.join(";"),
        hex::encode(signature)
    )
}

/// The payload hash the SDK puts in the last line of the canonical request.
///
/// * empty body: [`EMPTY_PAYLOAD_SHA256_HEX`], whatever the headers say;
/// * no (or an empty) `X-Sdk-Content-Sha256`: hex SHA-256 of `body`;
/// * `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD` (what the SDK sends when
///   `Content-Type` is present and starts with neither `application/json` nor
///   `application/bson`): the literal `UNSIGNED-PAYLOAD` if
///   `allow_unsigned_payload`, else [`SignatureError::UnsignedPayloadNotAllowed`].
///   The body is then *not* authenticated;
/// * any other `X-Sdk-Content-Sha256` value: the SDK signs it verbatim, so it
///   is returned verbatim, but only if it equals the body's SHA-256 (hex,
///   case-insensitive); otherwise [`SignatureError::PayloadHashMismatch`].
///
/// Whenever the header decides the result it must itself be signed.
pub fn payload_sha256_hex(
    body: &[u8],
    headers: &[(&str, &str)],
    signed_headers: &[&str],
    allow_unsigned_payload: bool,
) -> Result<String, SignatureError> {
    if body.is_empty() {
        return Ok(EMPTY_PAYLOAD_SHA256_HEX.to_owned());
    }
    let declared = match unique_header(headers, HEADER_CONTENT_SHA256)? {
        Some(v) => py_strip(v),
        None => "",
    };
    if declared.is_empty() {
        return Ok(hex::encode(Sha256::digest(body)));
    }
    if !signed_headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case(HEADER_CONTENT_SHA256))
    {
        return Err(SignatureError::HeaderNotSigned(
            HEADER_CONTENT_SHA256.to_owned(),
        ));
    }
    if declared == UNSIGNED_PAYLOAD {
        return if allow_unsigned_payload {
            Ok(UNSIGNED_PAYLOAD.to_owned())
        } else {
            Err(SignatureError::UnsignedPayloadNotAllowed)
        };
    }
    let actual = hex::encode(Sha256::digest(body));
    if declared.eq_ignore_ascii_case(&actual) {
        Ok(declared.to_owned())
    } else {
        Err(SignatureError::PayloadHashMismatch)
    }
}

/// Builds the SDK's canonical request from what arrived on the wire.
///
/// * `method`: upper-cased (ASCII) as the SDK does;
/// * `path`: the raw request path (no query), e.g. from `Uri::path()`;
/// * `raw_query`: the raw query string without `?`, if any;
/// * `headers`: every request header as received (name, value); values must be
///   the header bytes as UTF-8 (the SDK signs the Unicode value and sends its
///   UTF-8 encoding). Names match case-insensitively; values are stripped of
///   Python `str.strip()` whitespace;
/// * `signed_headers`: from [`SdkAuthorization::signed_headers`];
/// * `payload_sha256_hex`: from [`payload_sha256_hex`].
///
/// A signed header missing from `headers` is [`SignatureError::MissingSignedHeader`];
/// one present more than once is [`SignatureError::DuplicateHeader`].
pub fn canonical_request(
    method: &str,
    path: &str,
    raw_query: Option<&str>,
    headers: &[(&str, &str)],
    signed_headers: &[&str],
    payload_sha256_hex: &str,
) -> Result<String, SignatureError> {
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(SignatureError::MalformedRequest(
            "method is not an HTTP token",
        ));
    }
    if signed_headers.is_empty() {
        return Err(SignatureError::MalformedRequest("no signed headers"));
    }
    let uri = canonical_uri(path)?;
    let query = canonical_query(raw_query.unwrap_or(""))?;

    let mut out = String::with_capacity(
        method.len() + uri.len() + query.len() + payload_sha256_hex.len() + 256,
    );
    out.push_str(&method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(&uri);
    out.push('\n');
    out.push_str(&query);
    out.push('\n');
    for name in signed_headers {
        if !is_signed_header_name(name) {
            return Err(SignatureError::MalformedRequest(
                "invalid signed header name",
            ));
        }
        let value = unique_header(headers, name)?
            .ok_or_else(|| SignatureError::MissingSignedHeader((*name).to_owned()))?;
        out.push_str(name);
        out.push(':');
        out.push_str(py_strip(value));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_sha256_hex);
    Ok(out)
}

/// `SDK-HMAC-SHA256\n<X-Sdk-Date>\n<hex sha256(canonical_request)>`.
///
/// `sdk_date` must be the header value already validated by [`parse_sdk_date`]
/// (the SDK re-formats the parsed date, which is the identity for valid values).
pub fn string_to_sign(sdk_date: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{sdk_date}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// HMAC-SHA256(secret_key, string_to_sign). The SDK keys the HMAC with the
/// UTF-8 bytes of the SK string.
pub fn sign(secret_key: &[u8], string_to_sign: &str) -> [u8; 32] {
    // Pre-process the key into one block as HMAC (RFC 2104) does: keys longer
    // than the block are hashed, shorter ones zero-padded. Handing a full
    // block to `KeyInit::new` is infallible, so no `new_from_slice` error path.
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    let hashed;
    let key: &[u8] = if secret_key.len() > block.len() {
        hashed = Sha256::digest(secret_key);
        hashed.as_slice()
    } else {
        secret_key
    };
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    let mut mac = <HmacSha256 as KeyInit>::new(&block);
    // Best-effort scrub of the key copy (no zeroize crate; may be optimised out).
    block.iter_mut().for_each(|b| *b = 0);
    mac.update(string_to_sign.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Recomputes the signature and compares it with `auth.signature` in constant time.
pub fn verify(secret_key: &[u8], auth: &SdkAuthorization<'_>, string_to_sign: &str) -> bool {
    let expected = sign(secret_key, string_to_sign);
    expected.ct_eq(&auth.signature).into()
}

/// Parses `X-Sdk-Date` (`%Y%m%dT%H%M%SZ`, UTC, exactly 16 bytes) into Unix
/// seconds. Years before 1970 and out-of-range fields are rejected.
pub fn parse_sdk_date(value: &str) -> Result<u64, SignatureError> {
    use SignatureError::BadDate;

    let bytes: [u8; 16] = value
        .as_bytes()
        .try_into()
        .map_err(|_| BadDate("expected YYYYMMDDTHHMMSSZ"))?;
    let [y0, y1, y2, y3, mo0, mo1, d0, d1, b'T', h0, h1, mi0, mi1, s0, s1, b'Z'] = bytes else {
        return Err(BadDate("expected YYYYMMDDTHHMMSSZ"));
    };
    let num = |digits: &[u8]| -> Result<u32, SignatureError> {
        digits.iter().try_fold(0u32, |acc, d| {
            if d.is_ascii_digit() {
                Ok(acc * 10 + u32::from(d - b'0'))
            } else {
                Err(BadDate("expected YYYYMMDDTHHMMSSZ"))
            }
        })
    };
    let year = num(&[y0, y1, y2, y3])?;
    let month = num(&[mo0, mo1])?;
    let day = num(&[d0, d1])?;
    let hour = num(&[h0, h1])?;
    let minute = num(&[mi0, mi1])?;
    let second = num(&[s0, s1])?;

    if year < 1970 {
        return Err(BadDate("year before 1970"));
    }
    if !(1..=12).contains(&month) {
        return Err(BadDate("month out of range"));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(BadDate("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(BadDate("time of day out of range"));
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + u64::from(hour * 3600 + minute * 60 + second);
    Ok(secs)
}

/// Whether `signed_at` lies within `max_skew_secs` of `now` (either direction).
pub fn within_skew(signed_at: u64, now: u64, max_skew_secs: u64) -> bool {
    signed_at.abs_diff(now) <= max_skew_secs
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 for a valid proleptic-Gregorian date with year >= 1970
/// (H. Hinnant's `days_from_civil`, restricted to non-negative eras).
fn days_from_civil(year: u32, month: u32, day: u32) -> u64 {
    let y = u64::from(if month <= 2 { year - 1 } else { year });
    let m = u64::from(month);
    let d = u64::from(day);
    // All operands are small and non-negative: year <= 9999, month 1..=12, day 1..=31.
    let era = y / 400;
    // Year of era, [0, 399].
    let yoe = y - era * 400;
    // Month counted from March = 0, so the leap day ends the year.
    let mp = (m + 9) % 12;
    // Day of year, [0, 365].
    let doy = (153 * mp + 2) / 5 + d - 1;
    // Day of era, [0, 146096].
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // 719_468 = days from 0000-03-01 to 1970-01-01; year >= 1970 keeps this >= 0.
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The only occurrence of header `name` (ASCII case-insensitive), if any.
fn unique_header<'h>(
    headers: &[(&str, &'h str)],
    name: &str,
) -> Result<Option<&'h str>, SignatureError> {
    let mut found = None;
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(name) && found.replace(*v).is_some() {
            return Err(SignatureError::DuplicateHeader(name.to_ascii_lowercase()));
        }
    }
    Ok(found)
}

/// Python's `str.isspace()`: Unicode `White_Space` plus U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` without arguments.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// The SDK's canonical URI: `quote(seg, safe='~')` of every `/`-separated
/// segment of `unquote(path)`, plus a trailing `/` if there is none.
fn canonical_uri(path: &str) -> Result<String, SignatureError> {
    if !path.starts_with('/') {
        return Err(SignatureError::MalformedRequest("path must start with '/'"));
    }
    let decoded = py_unquote(path);
    let mut out = String::with_capacity(decoded.len() * 3 + 1);
    for (i, segment) in decoded.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        py_quote_into(segment, &mut out);
    }
    // `quote` never emits '/', so this is the SDK's `if url_path[-1] != '/'`.
    if !out.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

/// The SDK's canonical query string, rebuilt from the wire form: pairs split
/// on `&` (empty pieces skipped) and the first `=` (a missing `=` means an
/// empty value), each side `unquote`d, sorted as Python sorts `(key, value)`
/// string tuples (code point order), re-encoded with `quote(s, safe='~')` and
/// joined as `k=v` with `&`.
fn canonical_query(raw: &str) -> Result<String, SignatureError> {
    let mut pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() >= MAX_QUERY_PARAMS {
            return Err(SignatureError::MalformedRequest(
                "too many query parameters",
            ));
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((py_unquote(k), py_unquote(v)));
    }
    pairs.sort_unstable();
    let mut out = String::with_capacity(raw.len() * 3);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        py_quote_into(k, &mut out);
        out.push('=');
        py_quote_into(v, &mut out);
    }
    Ok(out)
}

/// `urllib.parse.unquote(s)` (UTF-8, errors="replace"): maximal runs of ASCII
/// characters are percent-decoded to bytes and decoded lossily (invalid UTF-8
/// becomes U+FFFD per maximal subpart, as in Python); non-ASCII characters
/// pass through untouched; malformed `%` escapes stay literal.
fn py_unquote(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut run: Vec<u8> = Vec::new();
    for c in s.chars() {
        match u8::try_from(c) {
            Ok(b) if b.is_ascii() => run.push(b),
            _ => {
                flush_ascii_run(&mut run, &mut out);
                out.push(c);
            }
        }
    }
    flush_ascii_run(&mut run, &mut out);
    Cow::Owned(out)
}

fn flush_ascii_run(run: &mut Vec<u8>, out: &mut String) {
    if run.is_empty() {
        return;
    }
    let mut bytes = Vec::with_capacity(run.len());
    let mut iter = run.iter().copied();
    while let Some(b) = iter.next() {
        if b == b'%' {
            let mut ahead = iter.clone();
            if let (Some(h), Some(l)) = (
                ahead.next().and_then(hex_value),
                ahead.next().and_then(hex_value),
            ) {
                bytes.push((h << 4) | l);
                iter = ahead;
                continue;
            }
        }
        bytes.push(b);
    }
    out.push_str(&String::from_utf8_lossy(&bytes));
    run.clear();
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `urllib.parse.quote(s, safe='~')`: UTF-8 bytes outside
/// `A-Z a-z 0-9 _ . - ~` become `%XX` (upper-case hex).
fn py_quote_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use vectors::{AK, PY_WHITESPACE, QUERY_VECTORS, SDK_DATE, SK, URI_VECTORS, VECTORS};

    struct Vector {
        name: &'static str,
        method: &'static str,
        path: &'static str,
        query: Option<&'static str>,
        alt_query: Option<&'static str>,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
        canonical_request: &'static str,
        string_to_sign: &'static str,
        authorization: &'static str,
    }

    /// Everything a verifier computes for one request; `Err` on any failure.
    struct Req<'a> {
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: Vec<(&'a str, &'a str)>,
        body: &'a [u8],
        date: &'a str,
    }

    impl<'a> Req<'a> {
        fn of(v: &'a Vector) -> Self {
            Req {
                method: v.method,
                path: v.path,
                query: v.query,
                headers: v.headers.to_vec(),
                body: v.body.as_bytes(),
                date: SDK_DATE,
            }
        }

        fn verify(&self, secret: &[u8], authorization: &str) -> Result<bool, SignatureError> {
            let auth = parse_authorization(authorization)?;
            auth.require_signed(&[HEADER_HOST, HEADER_SDK_DATE])?;
            parse_sdk_date(self.date)?;
            let payload = payload_sha256_hex(self.body, &self.headers, &auth.signed_headers, true)?;
            let canonical = canonical_request(
                self.method,
                self.path,
                self.query,
                &self.headers,
                &auth.signed_headers,
                &payload,
            )?;
            Ok(verify(
                secret,
                &auth,
                &string_to_sign(self.date, &canonical),
            ))
        }
    }

    fn change_last_byte(s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        let last = b.last_mut().unwrap();
        *last = if *last == b'q' { b'r' } else { b'q' };
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn sdk_vectors_reproduce_byte_for_byte() {
        assert!(VECTORS.len() >= 8);
        for v in VECTORS {
            let auth = parse_authorization(v.authorization).unwrap();
            assert_eq!(auth.access_key, AK, "{}", v.name);
            let payload =
                payload_sha256_hex(v.body.as_bytes(), v.headers, &auth.signed_headers, true)
                    .unwrap();
            let canonical = canonical_request(
                v.method,
                v.path,
                v.query,
                v.headers,
                &auth.signed_headers,
                &payload,
            )
            .unwrap();
            assert_eq!(canonical, v.canonical_request, "{}", v.name);
            let sts = string_to_sign(SDK_DATE, &canonical);
            assert_eq!(sts, v.string_to_sign, "{}", v.name);
            assert!(verify(SK.as_bytes(), &auth, &sts), "{}", v.name);
            let sig = sign(SK.as_bytes(), &sts);
            assert_eq!(
                format_authorization(AK, &auth.signed_headers, &sig),
                v.authorization,
                "{}",
                v.name
            );
            assert!(Req::of(v).verify(SK.as_bytes(), v.authorization).unwrap());
        }
    }

    #[test]
    fn reordered_and_re_encoded_query_canonicalises_identically() {
        let mut checked = 0;
        for v in VECTORS {
            let (Some(q), Some(alt)) = (v.query, v.alt_query) else {
                continue;
            };
            assert_ne!(q, alt);
            assert_eq!(canonical_query(alt).unwrap(), q, "{}", v.name);
            let mut r = Req::of(v);
            r.query = Some(alt);
            assert!(
                r.verify(SK.as_bytes(), v.authorization).unwrap(),
                "{}",
                v.name
            );
            checked += 1;
        }
        assert!(checked >= 3);
    }

    #[test]
    fn trailing_slash_is_not_significant() {
        for v in VECTORS {
            let mut r = Req::of(v);
            let toggled = match v.path.strip_suffix('/') {
                Some(p) => p.to_owned(),
                None => format!("{}/", v.path),
            };
            r.path = &toggled;
            assert!(
                r.verify(SK.as_bytes(), v.authorization).unwrap(),
                "{}",
                v.name
            );
        }
    }

    #[test]
    fn tampering_with_any_signed_part_fails() {
        let sk = SK.as_bytes();
        for v in VECTORS {
            let name = v.name;
            let auth = parse_authorization(v.authorization).unwrap();
            let unsigned_body = v
                .headers
                .iter()
                .any(|(_, val)| val.trim() == UNSIGNED_PAYLOAD);

            // body
            let body = if v.body.is_empty() {
                "x".to_owned()
            } else {
                change_last_byte(v.body)
            };
            let mut r = Req::of(v);
            r.body = body.as_bytes();
            if unsigned_body {
                // The SDK does not sign such bodies; only accepted when allowed.
                assert!(r.verify(sk, v.authorization).unwrap(), "{name}");
                assert!(matches!(
                    payload_sha256_hex(r.body, &r.headers, &auth.signed_headers, false),
                    Err(SignatureError::UnsignedPayloadNotAllowed)
                ));
            } else {
                assert!(!r.verify(sk, v.authorization).unwrap(), "{name}: body");
            }

            // path
            let path = change_last_byte(v.path);
            let mut r = Req::of(v);
            r.path = &path;
            assert!(!r.verify(sk, v.authorization).unwrap(), "{name}: path");

            // query (changed, added, removed)
            let query = match v.query {
                Some(q) => change_last_byte(q),
                None => "a=1".to_owned(),
            };
            let mut r = Req::of(v);
            r.query = Some(&query);
            assert!(!r.verify(sk, v.authorization).unwrap(), "{name}: query");
            if v.query.is_some() {
                let mut r = Req::of(v);
                r.query = None;
                assert!(!r.verify(sk, v.authorization).unwrap(), "{name}: no query");
            }

            // every signed header value
            for signed in &auth.signed_headers {
                let mut r = Req::of(v);
                let changed: Vec<String> = r
                    .headers
                    .iter()
                    .map(|(n, val)| {
                        if n.eq_ignore_ascii_case(signed) {
                            format!("{}x", val.trim())
                        } else {
                            (*val).to_owned()
                        }
                    })
                    .collect();
                r.headers = r
                    .headers
                    .iter()
                    .zip(&changed)
                    .map(|((n, _), val)| (*n, val.as_str()))
                    .collect();
                if *signed == HEADER_CONTENT_SHA256 {
                    // A non-"UNSIGNED-PAYLOAD" value must match the body.
                    assert!(r.verify(sk, v.authorization).is_err(), "{name}: {signed}");
                } else {
                    assert!(!r.verify(sk, v.authorization).unwrap(), "{name}: {signed}");
                }
            }

            // method
            let mut r = Req::of(v);
            r.method = if v.method.eq_ignore_ascii_case("GET") {
                "HEAD"
            } else {
                "GET"
            };
            assert!(!r.verify(sk, v.authorization).unwrap(), "{name}: method");

            // date
            let mut r = Req::of(v);
            r.date = "20240315T093013Z";
            assert!(!r.verify(sk, v.authorization).unwrap(), "{name}: date");

            // secret
            let mut secret = SK.as_bytes().to_vec();
            secret[0] ^= 1;
            assert!(
                !Req::of(v).verify(&secret, v.authorization).unwrap(),
                "{name}: sk"
            );

            // signature
            let mut forged = auth.clone();
            forged.signature[31] ^= 0x80;
            let canonical = canonical_request(
                v.method,
                v.path,
                v.query,
                v.headers,
                &auth.signed_headers,
                &payload_sha256_hex(v.body.as_bytes(), v.headers, &auth.signed_headers, true)
                    .unwrap(),
            )
            .unwrap();
            let sts = string_to_sign(SDK_DATE, &canonical);
            assert!(verify(sk, &auth, &sts));
            assert!(!verify(sk, &forged, &sts), "{name}: signature");

            // dropping a header from SignedHeaders changes the signature too
            let fewer: Vec<&str> = auth
                .signed_headers
                .iter()
                .copied()
                .filter(|h| *h != "user-agent" && *h != "content-type")
                .collect();
            if fewer.len() < auth.signed_headers.len() {
                let hdr = format_authorization(AK, &fewer, &auth.signature);
                assert!(!Req::of(v).verify(sk, &hdr).unwrap(), "{name}: signed list");
            }
        }
    }

    #[test]
    fn missing_and_duplicate_signed_headers_are_errors() {
        let v = &VECTORS[0];
        let auth = parse_authorization(v.authorization).unwrap();
        let without_host: Vec<(&str, &str)> = v
            .headers
            .iter()
            .copied()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
            .collect();
        let err = canonical_request(
            v.method,
            v.path,
            None,
            &without_host,
            &auth.signed_headers,
            EMPTY_PAYLOAD_SHA256_HEX,
        )
        .unwrap_err();
        assert!(matches!(&err, SignatureError::MissingSignedHeader(h) if h == "host"));
        assert_eq!(
            err.to_string(),
            "signed header `host` is missing from the request"
        );

        let mut dup = v.headers.to_vec();
        dup.push(("HOST", "evil.example.com"));
        let err = canonical_request(
            v.method,
            v.path,
            None,
            &dup,
            &auth.signed_headers,
            EMPTY_PAYLOAD_SHA256_HEX,
        )
        .unwrap_err();
        assert!(matches!(&err, SignatureError::DuplicateHeader(h) if h == "host"));

        // Header names match case-insensitively; unsigned duplicates are fine.
        let mut lower: Vec<(&str, &str)> = v.headers.to_vec();
        lower.iter_mut().for_each(|(n, _)| {
            if n.eq_ignore_ascii_case("host") {
                *n = "hOsT";
            }
        });
        lower.push(("X-Other", "1"));
        lower.push(("x-other", "2"));
        let c = canonical_request(
            v.method,
            v.path,
            None,
            &lower,
            &auth.signed_headers,
            EMPTY_PAYLOAD_SHA256_HEX,
        )
        .unwrap();
        assert_eq!(c, v.canonical_request);

        assert!(matches!(
            auth.require_signed(&["host", "X-Sdk-Date", "x-missing"]),
            Err(SignatureError::HeaderNotSigned(h)) if h == "x-missing"
        ));
        assert!(canonical_request("GET", "/", None, &[], &[], "x").is_err());
        assert!(canonical_request("G T", "/", None, &[], &["host"], "x").is_err());
        assert!(canonical_request("", "/", None, &[], &["host"], "x").is_err());
        assert!(canonical_request("GET", "", None, &[("host", "h")], &["host"], "x").is_err());
        assert!(canonical_request("GET", "*", None, &[("host", "h")], &["host"], "x").is_err());
        assert!(
            canonical_request("GET", "/", None, &[("Host", "h")], &["Host"], "x").is_err(),
            "signed header names must be lower-case"
        );
    }

    #[test]
    fn uri_vectors_match_sdk() {
        for (raw, expected) in URI_VECTORS {
            assert_eq!(canonical_uri(raw).unwrap(), *expected, "{raw:?}");
        }
    }

    #[test]
    fn query_vectors_match_sdk() {
        for (raw, expected) in QUERY_VECTORS {
            assert_eq!(canonical_query(raw).unwrap(), *expected, "{raw:?}");
        }
        assert_eq!(canonical_query("").unwrap(), "");
        let many = "a=1&".repeat(MAX_QUERY_PARAMS + 1);
        assert!(canonical_query(&many).is_err());
        let ok = "a=1&".repeat(MAX_QUERY_PARAMS);
        assert!(canonical_query(&ok).is_ok());
    }

    #[test]
    fn strip_matches_python_isspace() {
        for cp in 0..=0x10FFFFu32 {
            if let Some(c) = char::from_u32(cp) {
                assert_eq!(py_isspace(c), PY_WHITESPACE.contains(&cp), "U+{cp:04X}");
            }
        }
        assert_eq!(py_strip("\u{1c} \t a b \u{3000}\u{a0}"), "a b");
    }

    #[test]
    fn payload_hash_rules() {
        let signed = ["host", "x-sdk-content-sha256", "x-sdk-date"];
        let body = b"{\"a\":1}";
        let digest = hex::encode(Sha256::digest(body));
        let unsigned = [("X-Sdk-Content-Sha256", " UNSIGNED-PAYLOAD ")];
        // Empty body: the empty hash, whatever the header says.
        assert_eq!(
            payload_sha256_hex(b"", &unsigned, &signed, false).unwrap(),
            EMPTY_PAYLOAD_SHA256_HEX
        );
        assert_eq!(
            payload_sha256_hex(body, &[], &signed, false).unwrap(),
            digest
        );
        assert_eq!(
            payload_sha256_hex(body, &unsigned, &signed, true).unwrap(),
            UNSIGNED_PAYLOAD
        );
        assert!(matches!(
            payload_sha256_hex(body, &unsigned, &signed, false),
            Err(SignatureError::UnsignedPayloadNotAllowed)
        ));
        assert!(matches!(
            payload_sha256_hex(body, &unsigned, &["host"], true),
            Err(SignatureError::HeaderNotSigned(_))
        ));
        let upper = digest.to_ascii_uppercase();
        assert_eq!(
            payload_sha256_hex(body, &[("x-sdk-content-sha256", &upper)], &signed, false).unwrap(),
            upper
        );
        assert!(matches!(
            payload_sha256_hex(
                body,
                &[("x-sdk-content-sha256", EMPTY_PAYLOAD_SHA256_HEX)],
                &signed,
                true
            ),
            Err(SignatureError::PayloadHashMismatch)
        ));
        assert!(matches!(
            payload_sha256_hex(
                body,
                &[("x-sdk-content-sha256", "a"), ("X-SDK-CONTENT-SHA256", "b")],
                &signed,
                true
            ),
            Err(SignatureError::DuplicateHeader(_))
        ));
        // Blank header: falls back to hashing the body, like the SDK.
        assert_eq!(
            payload_sha256_hex(body, &[("x-sdk-content-sha256", "  ")], &signed, false).unwrap(),
            digest
        );
    }

    #[test]
    fn parse_authorization_accepts_sdk_format_only() {
        let sig = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let ok =
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host;x-sdk-date, Signature={sig}");
        let a = parse_authorization(&ok).unwrap();
        assert_eq!(a.access_key, "AK1");
        assert_eq!(a.signed_headers, ["host", "x-sdk-date"]);
        assert_eq!(hex::encode(a.signature), sig);
        // Parameter order and spacing around commas do not matter.
        let reordered =
            format!("SDK-HMAC-SHA256 Signature={sig},SignedHeaders=host;x-sdk-date ,  Access=AK1");
        assert_eq!(parse_authorization(&reordered).unwrap(), a);

        let unsupported = [
            (
                "SDK-HMAC-SM3 Access=a, SignedHeaders=host, Signature=00",
                "SDK-HMAC-SM3",
            ),
            (
                "V11-HMAC-SHA256 Credential=a/20240315/r/s, SignedHeaders=host, Signature=00",
                "V11-HMAC-SHA256",
            ),
            ("SDK-ECDSA-P256-SHA256 Access=a", "SDK-ECDSA-P256-SHA256"),
            ("SDK-SM2-SM3", "SDK-SM2-SM3"),
            ("Basic dXNlcjpwYXNz", "(unrecognised)"),
            ("sdk-hmac-sha256 Access=AK1", "(unrecognised)"),
            ("SDK-HMAC-SHA256\tAccess=AK1", "(unrecognised)"),
        ];
        for (value, name) in unsupported {
            match parse_authorization(value) {
                Err(SignatureError::UnsupportedAlgorithm(n)) => assert_eq!(n, name, "{value}"),
                other => panic!("{value}: {other:?}"),
            }
        }
        let err = parse_authorization("SDK-HMAC-SM3 x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported signing algorithm SDK-HMAC-SM3: only SDK-HMAC-SHA256 is accepted"
        );

        let h = "SignedHeaders=host;x-sdk-date";
        let malformed = [
            String::new(),
            " ".into(),
            " SDK-HMAC-SHA256 Access=AK1".into(),
            "SDK-HMAC-SHA256".into(),
            "SDK-HMAC-SHA256 ".into(),
            "SDK-HMAC-SHA256    ".into(),
            format!("SDK-HMAC-SHA256  Access=AK1, {h}, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}"),
            format!("SDK-HMAC-SHA256 Access=AK1, Signature={sig}"),
            format!("SDK-HMAC-SHA256 {h}, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, Signature={sig}, Extra=1"),
            format!("SDK-HMAC-SHA256 Access=AK1, Access=AK2, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, {h}"),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, Foo={sig}"),
            format!("SDK-HMAC-SHA256 access=AK1, {h}, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1; {h}; Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, Signature"),
            format!("SDK-HMAC-SHA256 Access=, {h}, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=A K, {h}, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=A=K, {h}, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=\u{e9}, {h}, Signature={sig}"),
            format!(
                "SDK-HMAC-SHA256 Access={}, {h}, Signature={sig}",
                "A".repeat(129)
            ),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, Signature={}", &sig[1..]),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, Signature={sig}0"),
            format!(
                "SDK-HMAC-SHA256 Access=AK1, {h}, Signature={}",
                sig.to_uppercase()
            ),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, Signature={}g", &sig[1..]),
            format!(
                "SDK-HMAC-SHA256 Access=AK1, {h}, Signature={}\u{e9}",
                &sig[2..]
            ),
            format!("SDK-HMAC-SHA256 Access=AK1, {h}, Signature="),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=x-sdk-date;host, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host;host, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=Host, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=x_trace, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host;, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=;host, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=ho st, Signature={sig}"),
            format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host:x, Signature={sig}"),
            format!(
                "SDK-HMAC-SHA256 Access=AK1, SignedHeaders={}, Signature={sig}",
                "h".repeat(129)
            ),
            format!(
                "SDK-HMAC-SHA256 Access=AK1, SignedHeaders={}, Signature={sig}",
                (0..65)
                    .map(|i| format!("h{i:03}"))
                    .collect::<Vec<_>>()
                    .join(";")
            ),
            format!("SDK-HMAC-SHA256 Access=AK1\0, {h}, Signature={sig}"),
            format!(
                "SDK-HMAC-SHA256 Access=AK1, {h}, Signature={sig}{}",
                " ".repeat(9000)
            ),
            format!("SDK-HMAC-SHA256 {}", ",".repeat(100_000)),
            format!("SDK-HMAC-SHA256 {}", "a".repeat(1 << 20)),
        ];
        for value in &malformed {
            match parse_authorization(value) {
                Err(SignatureError::MalformedAuthorization(_)) => {}
                other => panic!("{:?}: {other:?}", value.get(..80).unwrap_or(value)),
            }
        }
        // 64 signed headers is the limit.
        let sixty_four = (0..64)
            .map(|i| format!("h{i:03}"))
            .collect::<Vec<_>>()
            .join(";");
        let v = format!("SDK-HMAC-SHA256 Access=AK1, SignedHeaders={sixty_four}, Signature={sig}");
        assert_eq!(parse_authorization(&v).unwrap().signed_headers.len(), 64);
    }

    /// Deterministic xorshift generator for the no-panic checks.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn arbitrary_inputs_never_panic() {
        let pieces = [
            "SDK-HMAC-SHA256",
            " ",
            ",",
            ", ",
            "=",
            ";",
            "Access",
            "SignedHeaders",
            "Signature",
            "host",
            "x-sdk-date",
            "AK",
            "0123456789abcdef",
            "ff",
            "%",
            "%4",
            "%C3",
            "%A9",
            "%zz",
            "%FF",
            "/",
            "&",
            "?",
            "\u{e9}",
            "\u{1F600}",
            "\0",
            "\t",
            "\n",
            "+",
            "~",
            "a",
            "Z",
            "_",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let n = (rng.next() % 24) as usize;
            let s: String = (0..n).map(|_| rng.pick(&pieces)).collect();
            let _ = parse_authorization(&s);
            let _ = parse_authorization(&format!("SDK-HMAC-SHA256 {s}"));
            let _ = parse_sdk_date(&s);
            let _ = canonical_uri(&s);
            let _ = canonical_uri(&format!("/{s}"));
            let _ = canonical_query(&s);
            let _ = canonical_request(&s, &s, Some(&s), &[(&s, &s)], &[&s], &s);
            let _ = payload_sha256_hex(s.as_bytes(), &[("x-sdk-content-sha256", &s)], &[&s], true);
        }
        // Every single-byte corruption of a real header is handled.
        let v = VECTORS[0].authorization;
        for i in 0..v.len() {
            for c in [b' ', b',', b'=', b';', b'A', b'0', b'g', 0u8, 0xFF] {
                let mut b = v.as_bytes().to_vec();
                b[i] = c;
                let s = String::from_utf8_lossy(&b);
                if let Ok(a) = parse_authorization(&s) {
                    let _ = a.require_signed(&["host"]);
                }
            }
        }
    }

    #[test]
    fn sdk_date_parsing() {
        let known = [
            ("19700101T000000Z", 0),
            ("19991231T235959Z", 946_684_799),
            ("20000229T235959Z", 951_868_799),
            ("20240101T000000Z", 1_704_067_200),
            ("20240315T093012Z", 1_710_495_012),
            ("20991231T235959Z", 4_102_444_799),
            ("21000301T000000Z", 4_107_542_400),
            ("99991231T235959Z", 253_402_300_799),
        ];
        for (s, secs) in known {
            assert_eq!(parse_sdk_date(s).unwrap(), secs, "{s}");
        }
        // Every day of 1970..2100 is accepted and consecutive.
        let mut expected = 0u64;
        for year in 1970..2100u32 {
            for month in 1..=12u32 {
                for day in 1..=days_in_month(year, month) {
                    let s = format!("{year:04}{month:02}{day:02}T000000Z");
                    assert_eq!(parse_sdk_date(&s).unwrap(), expected, "{s}");
                    expected += 86_400;
                }
            }
        }
        let bad = [
            "",
            "20240315T093012",
            "20240315T093012ZZ",
            "20240315t093012Z",
            "20240315T093012z",
            "2024-03-15T09:30:12Z",
            "20240315 093012Z",
            "+0240315T093012Z",
            "2024031aT093012Z",
            "20240315T09301\u{e9}",
            "19691231T235959Z",
            "00000101T000000Z",
            "20240015T093012Z",
            "20241315T093012Z",
            "20240100T093012Z",
            "20240132T093012Z",
            "20240431T093012Z",
            "20230229T000000Z",
            "21000229T000000Z",
            "20240315T243012Z",
            "20240315T096012Z",
            "20240315T093060Z",
            "20240315T093061Z",
            "\u{ff10}\u{ff10}\u{ff10}\u{ff10}",
        ];
        for s in bad {
            assert!(
                matches!(parse_sdk_date(s), Err(SignatureError::BadDate(_))),
                "{s:?}"
            );
        }
        assert!(parse_sdk_date("20240229T120000Z").is_ok());
        assert!(within_skew(100, 1000, 900));
        assert!(within_skew(1900, 1000, 900));
        assert!(!within_skew(99, 1000, 900));
        assert!(!within_skew(1901, 1000, 900));
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // Test case 2 (short key) and test case 6 (131-byte key, hashed first).
        let tc2 = sign(b"Jefe", "what do ya want for nothing?");
        assert_eq!(
            hex::encode(tc2),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key = [0xaa_u8; 131];
        let tc6 = sign(
            &key,
            "Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(tc6),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // A 64-byte key is used as-is.
        let key64 = [0x0b_u8; 64];
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&key64).unwrap();
        mac.update(b"m");
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(sign(&key64, "m"), want);
    }

    #[test]
    fn errors_do_not_leak_inputs() {
        let secret = "S3cr3t-Never-Printed";
        let value = format!("SDK-HMAC-SHA256 Access={secret}, SignedHeaders=host, Signature=zz");
        let err = parse_authorization(&value).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(secret));
    }

    // BEGIN GENERATED VECTORS (tests/sdk/gen_signature_vectors.py, huaweicloudsdkcore 3.1.219)
    #[rustfmt::skip]
    mod vectors {
        use super::Vector;
        pub const AK: &str = "HPUAEXAMPLEAK0000001";
        pub const SK: &str = "ExampleSecretKey0123456789abcdefghijklmn";
        pub const SDK_DATE: &str = "20240315T093012Z";
        pub const VECTORS: &[Vector] = &[
            Vector {
                name: "get_setting_no_query",
                method: "GET",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting",
                query: None,
                alt_query: None,
                headers: &[
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "",
                canonical_request: "GET\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\n\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n703379960405bdfc8e608e20342e19aff084b47790facd11f921e9695aedc85f",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=e1447ff519d36a9c7a8f315081df56b3fb2db38c3d903c3be5ae7b5f16e8d48f",
            },
            Vector {
                name: "get_with_project_id",
                method: "GET",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting",
                query: Some("project_id=0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                alt_query: Some("project_id=0%611b2c3d4e5f60718293%614b5c6d7e8f9"),
                headers: &[
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "",
                canonical_request: "GET\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\nproject_id=0a1b2c3d4e5f60718293a4b5c6d7e8f9\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\nfd161d3bfd01f5607b402c61e4a46db4cf0d0aba3c32dad3e8bbc3096b1ab481",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=b2af4bd3aafda09b3efbcd5a773ca77525f25b047a15747f4630406927152e97",
            },
            Vector {
                name: "get_query_sorted_repeated_encoded",
                method: "GET",
                path: "/v4/repositories",
                query: Some("Alpha=A~B%2AC%27%28d%29%21&_under=x%20y&empty=&filter=a%3Db%26c%3Dd&flag=true&name=my%20repo%2F%CE%B1%2B%CE%B2&tag=v1&tag=v10&tag=v2&zeta=last"),
                alt_query: Some("zet%61=l%61st&t%61g=v2&t%61g=v10&t%61g=v1&n%61me=my%20repo%2f%ce%b1%2b%ce%b2&fl%61g=true&filter=%61%3db%26c%3dd&empty&_under=x%20y&Alph%61=A%7eB*C%27%28d%29!"),
                headers: &[
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "",
                canonical_request: "GET\n/v4/repositories/\nAlpha=A~B%2AC%27%28d%29%21&_under=x%20y&empty=&filter=a%3Db%26c%3Dd&flag=true&name=my%20repo%2F%CE%B1%2B%CE%B2&tag=v1&tag=v10&tag=v2&zeta=last\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n34dab9477addcb3bc5bb950d55fb431f31598fad7922d2dbac9473e462b0bc1c",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=97eb50481515d337d95455c8cc7057571d2ea15615cc35ce7f80da98c38060d2",
            },
            Vector {
                name: "put_json_body",
                method: "PUT",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting",
                query: None,
                alt_query: None,
                headers: &[
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "{\"enabled\": true, \"algorithm\": \"AES-256-GCM\", \"key_id\": \"kms-key-1\"}",
                canonical_request: "PUT\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\n\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\ne057ca7c445c02a471914418294ee31ea5810dc85a483aa2ae83edfe9cf7e29f",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\nc46635a2a619c039b300cd08fcaf508364a41e42fce3b6edba6f6fd7b87ce085",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=8dea79e68e0353b93917cd91f39e7f073d5546dc72141ce2b6f46a2df093445f",
            },
            Vector {
                name: "post_empty_body_json",
                method: "POST",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/rotate",
                query: None,
                alt_query: None,
                headers: &[
                    ("Content-Type", "application/json"),
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "",
                canonical_request: "POST\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/rotate/\n\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n09b5d54d22b22b963c5b21d0c8a4082252b5e679b233417c9b68035001d545f7",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=24a1bf856a862840710fb27f259d12019c046cba7ea148f9175997d781ee7a1b",
            },
            Vector {
                name: "put_trailing_slash_path",
                method: "PUT",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/",
                query: None,
                alt_query: None,
                headers: &[
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "{\"enabled\": false}",
                canonical_request: "PUT\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\n\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\nb86c8ad9a72841ba209d28dccc2e16b35e92522d6d46717658aebb2d1070a705",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\nf272215333d8fd79188e211c932acdb72d9410c2ca1d5544dc9a0de76b6feb28",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=198c36a62b0f7a68fe3ffef322ad6a4eab0c25eb171c578037e9d3a87dc7ace7",
            },
            Vector {
                name: "header_surrounding_spaces",
                method: "GET",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting",
                query: None,
                alt_query: None,
                headers: &[
                    ("X-Request-Id", "  req-42\t "),
                    ("X_Not_Signed", "underscore headers are skipped"),
                    ("X-Repo-Label", "\u{a0}\u{3a9}mega repo\u{3000}"),
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "",
                canonical_request: "GET\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\n\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-repo-label:\u{3a9}mega repo\nx-request-id:req-42\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-repo-label;x-request-id;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n759d039bb2565ddb3af3ba0202faa2f3628e929d8af3085a0bed606e47ece2ea",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-repo-label;x-request-id;x-sdk-date, Signature=94c1ac5cf0d97c82830fe67f990e7acd6815e7f56fdba27256b4e75a26aff170",
            },
            Vector {
                name: "path_param_needing_encoding",
                method: "DELETE",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repos/grp%2Fsub%20repo~%C3%A9/keys",
                query: None,
                alt_query: None,
                headers: &[
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "",
                canonical_request: "DELETE\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repos/grp/sub%20repo~%C3%A9/keys/\n\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n85b45140ac00f679ed09f9cc4ad45f4ae705ce6ade73477a94bcacaccfad2fc5",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=9ab17c6d6a110868c1c3fe1e8564313d829df17b3fc656acc02c164b1a0728da",
            },
            Vector {
                name: "unsigned_payload_text_plain",
                method: "POST",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting",
                query: None,
                alt_query: None,
                headers: &[
                    ("Content-Type", "text/plain"),
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Content-Sha256", "UNSIGNED-PAYLOAD"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "not hashed by the signer",
                canonical_request: "POST\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\n\ncontent-type:text/plain\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-content-sha256:UNSIGNED-PAYLOAD\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-content-sha256;x-sdk-date\nUNSIGNED-PAYLOAD",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n9705056d3953d7f2f5087cca0144dae0a0f1d8c472fea0f1121c03ade8242471",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-content-sha256;x-sdk-date, Signature=bcb7f94b1ecd1f3f7c0be25c071ee4f21cb63b27a4e857a63ddf25156578d9e6",
            },
            Vector {
                name: "post_utf8_json_body_and_query",
                method: "POST",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting",
                query: Some("dry_run=false&limit=10"),
                alt_query: Some("limit=10&dry_run=f%61lse"),
                headers: &[
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("Content-Type", "application/json"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "{\"description\": \"Schl\\u00fcssel f\\u00fcr \\u03a9\", \"enabled\": true}",
                canonical_request: "POST\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\ndry_run=false&limit=10\ncontent-type:application/json\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\nd7201080a41d2cd49bdecf982d637455390c20a10589b09dd10628cb6c250c01",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n15f19f4fb7c184d7f2bf5aee02af55ead712d65b6a84b501509d89368c779ca6",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=e993122e6257aa333c0bfbc9b288ff042a2233e13aec995e6c9c1749abaebb60",
            },
            Vector {
                name: "lowercase_method_json_charset",
                method: "patch",
                path: "/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting",
                query: None,
                alt_query: None,
                headers: &[
                    ("Content-Type", "application/json;charset=UTF-8"),
                    ("User-Agent", "huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                    ("X-Project-Id", "0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                    ("X-Sdk-Date", "20240315T093012Z"),
                    ("Host", "codearts-repo.example.com"),
                ],
                body: "{\"enabled\":true}",
                canonical_request: "PATCH\n/v4/tenants/9f8e7d6c5b4a39281706f5e4d3c2b1a0/repo-encryption/setting/\n\ncontent-type:application/json;charset=UTF-8\nhost:codearts-repo.example.com\nuser-agent:huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0\nx-project-id:0a1b2c3d4e5f60718293a4b5c6d7e8f9\nx-sdk-date:20240315T093012Z\n\ncontent-type;host;user-agent;x-project-id;x-sdk-date\n26b3426b2593763c96d0890b4a77a0bbf66d13fc512b0c6b138a23c290f30a2a",
                string_to_sign: "SDK-HMAC-SHA256\n20240315T093012Z\n41bc17e42f0457b3d09ab3bbf491cff849c28a0e04125de7bbb588ddb489f592",
                authorization: "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, Signature=053c35c568df1ebecd2fe67991c49b8e86c6caef5ee12b8b9ed9c7b8aabfd11f",
            },
        ];
        /// Wire path -> canonical URI, computed by Signer._process_canonical_uri.
        pub const URI_VECTORS: &[(&str, &str)] = &[
            ("/", "/"),
            ("/v4", "/v4/"),
            ("/v4/", "/v4/"),
            ("//double//slash", "//double//slash/"),
            ("/a%2Fb/c", "/a/b/c/"),
            ("/caf%C3%A9/%e2%82%ac", "/caf%C3%A9/%E2%82%AC/"),
            ("/bad%zz/%4/%", "/bad%25zz/%254/%25/"),
            ("/inv%FF%C3/x%C3%28", "/inv%EF%BF%BD%EF%BF%BD/x%EF%BF%BD%28/"),
            ("/raw-\u{e9}/\u{fc}%C3%A9", "/raw-%C3%A9/%C3%BC%C3%A9/"),
            ("/%C3\u{e9}%A9", "/%EF%BF%BD%C3%A9%EF%BF%BD/"),
            ("/sp ace/+plus/~tilde/*star/", "/sp%20ace/%2Bplus/~tilde/%2Astar/"),
            ("/%7E%41%2e%2D%5F", "/~A.-_/"),
            ("/%ED%A0%80/%C0%80/%F4%90%80%80", "/%EF%BF%BD%EF%BF%BD%EF%BF%BD/%EF%BF%BD%EF%BF%BD/%EF%BF%BD%EF%BF%BD%EF%BF%BD%EF%BF%BD/"),
            ("/%F0%9F%98/%E0%80%80/%F0%9F%98%80", "/%EF%BF%BD/%EF%BF%BD%EF%BF%BD%EF%BF%BD/%F0%9F%98%80/"),
            ("/q?x=1#frag", "/q%3Fx%3D1%23frag/"),
            ("/%00%0A%7F", "/%00%0A%7F/"),
        ];
        /// Wire query -> canonical query: split on '&' and the first '=', unquote(),
        /// then Signer._process_canonical_query_string.
        pub const QUERY_VECTORS: &[(&str, &str)] = &[
            ("b=2&a=1&a=0&c=", "a=0&a=1&b=2&c="),
            ("x", "x="),
            ("=v", "=v"),
            ("a=%zz&a=%C3", "a=%25zz&a=%EF%BF%BD"),
            ("k=a=b", "k=a%3Db"),
            ("q=%2B+plus", "q=%2B%2Bplus"),
            ("z=%E2%82%AC&y=\u{e9}", "y=%C3%A9&z=%E2%82%AC"),
            ("&&a=1&", "a=1"),
            ("A=1&a=1&_=1&~=1&%7E=0", "A=1&_=1&a=1&~=0&~=1"),
            ("k=%ff", "k=%EF%BF%BD"),
            ("sp=a%20b&sp=a b", "sp=a%20b&sp=a%20b"),
            ("k=%F0%9F%98%80&k=%F0%9F%98", "k=%EF%BF%BD&k=%F0%9F%98%80"),
            ("%61%62=%63", "ab=c"),
            ("k=v%", "k=v%25"),
        ];
        /// Code points for which Python's str.isspace() is true (what str.strip() removes).
        pub const PY_WHITESPACE: &[u32] = &[0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000];
    }
    // END GENERATED VECTORS
}
