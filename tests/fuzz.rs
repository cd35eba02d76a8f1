//! Property-based fuzzing of the three parsers that take untrusted input: the PUT body
//! (`parse_setting_patch`), the `X-Auth-Token` codec, and the AK/SK `Authorization` parser
//! with the canonical-request builder and the verifier around them.
//!
//! cargo-fuzz needs a nightly toolchain, so these are proptest properties run by a plain
//! `cargo test`. Every target runs `REPOCRYPT_FUZZ_CASES` cases (default 10,000) from one
//! seed, `REPOCRYPT_FUZZ_SEED` (default: random, printed), so a failure is reproduced with
//! that seed and a longer run is one command:
//!
//! ```text
//! REPOCRYPT_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! The oracles here are written from the documented rules (and, for signatures, checked
//! against vectors produced by the official SDK), not by calling the code under test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// `sdk_date`, shared with the other test binaries (only that: the signing oracle below is
/// this file's own, written from the documented rules).
#[path = "common/sdk.rs"]
mod sdk;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestError, TestRunner};
use serde_json::Value;
use sha2::{Digest, Sha256};

use repocrypt::auth::credentials::Credentials;
use repocrypt::auth::sdk_signature::{
    canonical_request, format_authorization, parse_authorization, SignatureError, ALGORITHM,
    EMPTY_PAYLOAD_SHA256_HEX, MAX_ACCESS_KEY_LEN, MAX_HEADER_NAME_LEN, MAX_SIGNED_HEADERS,
};
use repocrypt::auth::signature::{SignatureVerifier, SignedRequest};
use repocrypt::auth::token::TokenCodec;
use repocrypt::clock::{Clock, ManualClock};
use repocrypt::domain::{
    parse_setting_patch, Actor, EncryptionType, Error, Identity, Role, SettingPatch, TenantId,
    MAX_BODY_BYTES,
};
use repocrypt::http::error::status_of;
use repocrypt::keys::RootKey;
use repocrypt::store::sqlite::SqliteStore;
use repocrypt::store::CredentialStore;
use sdk::sdk_date;

// ---------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------

const DEFAULT_CASES: u32 = 10_000;

fn fuzz_cases() -> u32 {
    match std::env::var("REPOCRYPT_FUZZ_CASES") {
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => panic!("REPOCRYPT_FUZZ_CASES must be a positive integer, got {v:?}"),
        },
        Err(_) => DEFAULT_CASES,
    }
}

/// One seed for the whole binary: `REPOCRYPT_FUZZ_SEED`, else a random one.
fn fuzz_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("REPOCRYPT_FUZZ_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("REPOCRYPT_FUZZ_SEED must be a u64, got {v:?}")),
        Err(_) => rand::random(),
    })
}

/// Run `test` on `REPOCRYPT_FUZZ_CASES` inputs from `strategy`; on failure, shrink and
/// report the smallest failing input with the seed that reproduces it.
fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = fuzz_cases();
    let seed = fuzz_seed();
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        // ChaCha is most of the run time in a debug build; XorShift is plenty for fuzzing.
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    };
    let ran = AtomicU64::new(0);
    let started = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |input| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(input)
    });
    match result {
        Ok(()) => {
            let ran = ran.load(Ordering::Relaxed);
            assert!(
                ran >= u64::from(cases),
                "{name}: only {ran} of {cases} cases ran"
            );
            println!(
                "fuzz {name}: {ran} cases passed in {:.2?} (REPOCRYPT_FUZZ_SEED={seed})",
                started.elapsed()
            );
        }
        Err(TestError::Fail(reason, input)) => panic!(
            "fuzz {name} failed (reproduce with REPOCRYPT_FUZZ_SEED={seed} \
             REPOCRYPT_FUZZ_CASES={cases}): {reason}\nsmallest failing input: {input:#?}"
        ),
        Err(TestError::Abort(reason)) => panic!("fuzz {name} aborted (seed {seed}): {reason}"),
    }
}

/// A small deterministic generator for choices that do not need shrinking (whitespace,
/// escape styles, percent-encoding choices): proptest draws its seed.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next() % n == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = usize::try_from(self.next() % items.len() as u64).unwrap();
        &items[i]
    }
}

/// Code points that often break parsers: delimiters, escapes, Unicode whitespace and
/// byte-order marks, the Kelvin sign (which case-folds to `k`), the last code point.
const SPECIAL_CHARS: [char; 24] = [
    '"',
    '\\',
    '/',
    '%',
    '&',
    '=',
    ';',
    ',',
    '.',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{feff}',
    '\u{2028}',
    '\u{3000}',
    '\u{fffd}',
    '\u{212a}',
    '\u{10ffff}',
    'é',
    'ß',
    'Ω',
    '😀',
    '\u{1c}',
    '\u{0b}',
];

/// Characters biased towards what breaks parsers: printable ASCII, controls, quotes,
/// escapes, whitespace of every kind, astral and special code points. Drawn from one
/// integer (cheap in a debug build, and it shrinks towards ' ').
fn arb_char() -> impl Strategy<Value = char> + Clone {
    any::<u32>().prop_map(char_of)
}

fn char_of(x: u32) -> char {
    let (class, v) = (x % 11, x / 11);
    match class {
        0..=5 => char::from(b' ' + u8::try_from(v % 95).unwrap()),
        6 => char::from(u8::try_from(v % 128).unwrap()),
        7 | 8 => char::from_u32(v % 0x11_0000).unwrap_or('\u{fffd}'),
        _ => SPECIAL_CHARS[usize::try_from(v).unwrap() % SPECIAL_CHARS.len()],
    }
}

/// Long strings of exactly one of `lengths` characters, expanded from a seed (only the
/// length shrinks; a vector of a thousand shrinkable characters is slow to generate).
fn long_text(lengths: &[usize]) -> BoxedStrategy<String> {
    (prop::sample::select(lengths.to_vec()), any::<u64>())
        .prop_map(|(n, seed)| {
            let mut rng = Mix(seed);
            (0..n)
                .map(|_| char_of(u32::try_from(rng.next() >> 32).unwrap()))
                .collect()
        })
        .boxed()
}

fn arb_text(max_chars: usize) -> BoxedStrategy<String> {
    prop::collection::vec(arb_char(), 0..=max_chars)
        .prop_map(String::from_iter)
        .boxed()
}

const DIGITS: &[u8] = b"0123456789";
const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const LOWER_DIGITS_DASH: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
/// Printable ASCII, space included.
const PRINTABLE: &[u8] =
    b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
/// What an access key may contain: visible ASCII except `,`, `=` and `"`.
const ACCESS_KEY_CHARS: &[u8] =
    b"!#$%&'()*+-./0123456789:;<>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
/// What a signed header name may contain.
const HEADER_NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^`|~";

/// Strings over an ASCII alphabet (cheaper than regex strategies in a debug build).
fn from_alphabet(
    alphabet: &'static [u8],
    len: impl Into<prop::collection::SizeRange>,
) -> BoxedStrategy<String> {
    prop::collection::vec(prop::sample::select(alphabet), len)
        .prop_map(|bytes| String::from_utf8(bytes).unwrap())
        .boxed()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------
// 1. Request bodies: parse_setting_patch
// ---------------------------------------------------------------------------------------

const FIELDS: [&str; 5] = [
    "tenant_id",
    "encryption_type",
    "default_encryption_enabled",
    "cmk_key_name",
    "cmk_key_id",
];

/// A JSON document as generated, rendered to text by [`render_json`].
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// Raw number text, possibly out of the range of f64.
    Num(String),
    Str(String),
    Arr(Vec<J>),
    /// Entries in order, duplicates allowed.
    Obj(Vec<(String, J)>),
}

impl J {
    fn has_number(&self) -> bool {
        match self {
            J::Num(_) => true,
            J::Arr(items) => items.iter().any(J::has_number),
            J::Obj(entries) => entries.iter().any(|(_, v)| v.has_number()),
            _ => false,
        }
    }
}

fn arb_number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        prop::sample::select(vec![
            "0",
            "-0",
            "0.0",
            "1e400",
            "-1e400",
            "1E+309",
            "1e-400",
            "4.9e-324",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
        ])
        .prop_map(str::to_owned),
        (
            any::<bool>(),
            from_alphabet(DIGITS, 1..=400),
            prop::option::of(from_alphabet(DIGITS, 1..=30)),
            prop::option::of((
                prop::sample::select(vec!["e", "E", "e+", "E-"]),
                from_alphabet(DIGITS, 1..=5)
            )),
        )
            .prop_map(|(negative, int, frac, exp)| {
                let int = int.trim_start_matches('0');
                let mut n = format!(
                    "{}{}",
                    if negative { "-" } else { "" },
                    if int.is_empty() { "0" } else { int }
                );
                if let Some(f) = frac {
                    n.push('.');
                    n.push_str(&f);
                }
                if let Some((e, digits)) = exp {
                    n.push_str(e);
                    n.push_str(&digits);
                }
                n
            }),
    ]
    .boxed()
}

/// Keys: mostly the real field names, some near misses, some anything.
fn arb_key() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "Tenant_id", "encryption_type ", "cmk_key_ID", "", "cmk_key_id\0", "\u{ff43}mk_key_id",
            "id", "key_state", "region",
        ])
        .prop_map(str::to_owned),
        1 => arb_text(20),
    ]
    .boxed()
}

fn arb_json() -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        arb_number().prop_map(J::Num),
        arb_text(24).prop_map(J::Str),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((arb_key(), inner), 0..6).prop_map(J::Obj),
        ]
    })
    .boxed()
}

/// A string of exactly `n` characters for `n` near the 1..=1000 limits.
fn boundary_string() -> BoxedStrategy<String> {
    long_text(&[0, 1, 2, 999, 1000, 1001])
}

fn text_value() -> BoxedStrategy<J> {
    prop_oneof![
        6 => arb_text(40).prop_map(J::Str),
        2 => boundary_string().prop_map(J::Str),
        1 => Just(J::Null),
        2 => arb_json(),
    ]
    .boxed()
}

fn encryption_type_value() -> BoxedStrategy<J> {
    prop_oneof![
        4 => prop::sample::select(vec!["KMS", "kms", "Kms", "kMs", "normal", "Normal", "NORMAL", "nOrMaL"])
            .prop_map(|s| J::Str(s.to_owned())),
        2 => prop::sample::select(vec![
            "", " kms", "kms ", "KMS\0", "\u{212a}MS", "normal\n", "aes", "null", "AES256",
            "KMSKMS", "norma", "\u{130}",
        ])
        .prop_map(|s| J::Str(s.to_owned())),
        1 => arb_text(12).prop_map(J::Str),
        1 => Just(J::Null),
        1 => arb_json(),
    ]
    .boxed()
}

fn bool_value() -> BoxedStrategy<J> {
    prop_oneof![
        4 => any::<bool>().prop_map(J::Bool),
        1 => prop::sample::select(vec!["true", "false", "True", "1", ""]).prop_map(|s| J::Str(s.to_owned())),
        1 => prop::sample::select(vec!["0", "1", "-0"]).prop_map(|s| J::Num(s.to_owned())),
        1 => Just(J::Null),
        1 => arb_json(),
    ]
    .boxed()
}

/// One `"key": value` entry of a PUT body: a real field with a plausible value, or not.
fn body_entry() -> BoxedStrategy<(String, J)> {
    let field =
        |name: &'static str, value: BoxedStrategy<J>| value.prop_map(move |v| (name.to_owned(), v));
    prop_oneof![
        2 => field("tenant_id", text_value()),
        3 => field("encryption_type", encryption_type_value()),
        3 => field("default_encryption_enabled", bool_value()),
        2 => field("cmk_key_name", text_value()),
        3 => field("cmk_key_id", text_value()),
        1 => (arb_key(), arb_json()),
    ]
    .boxed()
}

/// Whole bodies: mostly objects of near-valid entries (duplicates included), some
/// arbitrary JSON.
fn arb_body_model() -> BoxedStrategy<J> {
    prop_oneof![
        8 => prop::collection::vec(body_entry(), 0..8).prop_map(J::Obj),
        1 => prop::collection::vec((arb_key(), arb_json()), 0..6).prop_map(J::Obj),
        1 => arb_json(),
    ]
    .boxed()
}

fn json_ws(rng: &mut Mix, out: &mut String) {
    const WS: [&str; 9] = ["", "", "", "", " ", "\n", "\t", "\r\n", "  "];
    let ws: &&str = rng.pick(&WS);
    out.push_str(ws);
}

fn hex_escape(unit: u16, rng: &mut Mix, out: &mut String) {
    if rng.one_in(2) {
        out.push_str(&format!("\\u{unit:04x}"));
    } else {
        out.push_str(&format!("\\u{unit:04X}"));
    }
}

/// A JSON string literal for `s`, each character written raw or escaped at random.
fn render_str(s: &str, rng: &mut Mix, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '\r' => Some("\\r"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '/' => Some("\\/"),
            _ => None,
        };
        let must_escape = c == '"' || c == '\\' || u32::from(c) < 0x20;
        if !must_escape && rng.next() % 4 != 0 {
            out.push(c);
        } else if let (Some(esc), true) = (short, rng.one_in(2)) {
            out.push_str(esc);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                hex_escape(*unit, rng, out);
            }
        }
    }
    out.push('"');
}

fn render_json(j: &J, rng: &mut Mix, out: &mut String) {
    json_ws(rng, out);
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) => render_str(s, rng, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_json(item, rng, out);
            }
            json_ws(rng, out);
            out.push(']');
        }
        J::Obj(entries) => {
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_ws(rng, out);
                render_str(key, rng, out);
                json_ws(rng, out);
                out.push(':');
                render_json(value, rng, out);
            }
            json_ws(rng, out);
            out.push('}');
        }
    }
    json_ws(rng, out);
}

fn render(j: &J, style: u64) -> String {
    let mut out = String::new();
    render_json(j, &mut Mix(style), &mut out);
    out
}

/// What the documented rules say a parsed body must produce.
#[derive(Debug)]
enum Expect {
    Patch(SettingPatch),
    NotAnObject,
    /// A field given twice: refused while parsing, before any other rule.
    Repeated,
    UnknownField,
    /// Rejected, naming one of these fields.
    Invalid(Vec<&'static str>),
}

fn text_rule(value: &J) -> Option<String> {
    match value {
        J::Str(s) if (1..=1000).contains(&s.chars().count()) => Some(s.clone()),
        _ => None,
    }
}

/// The rules of the README ("The API") for a body: an object of known fields; a
/// field given twice is refused; null is absent; strings are 1 to
/// 1000 characters; `encryption_type` is KMS or normal in any ASCII case;
/// `default_encryption_enabled` is a boolean.
fn expected_patch(body: &J) -> Expect {
    let J::Obj(entries) = body else {
        return Expect::NotAnObject;
    };
    let mut seen = std::collections::BTreeSet::new();
    if !entries.iter().all(|(k, _)| seen.insert(k.as_str())) {
        return Expect::Repeated;
    }
    if entries.iter().any(|(k, _)| !FIELDS.contains(&k.as_str())) {
        return Expect::UnknownField;
    }
    let mut last: BTreeMap<&str, &J> = BTreeMap::new();
    for (k, v) in entries {
        last.insert(k.as_str(), v);
    }
    let mut patch = SettingPatch::default();
    let mut invalid = Vec::new();
    for (&key, &value) in &last {
        if matches!(value, J::Null) {
            continue;
        }
        let field = FIELDS.iter().copied().find(|f| *f == key).unwrap();
        let ok = match field {
            "tenant_id" => text_rule(value).map(|s| patch.tenant_id = Some(s)),
            "cmk_key_name" => text_rule(value).map(|s| patch.cmk_key_name = Some(s)),
            "cmk_key_id" => text_rule(value).map(|s| patch.cmk_key_id = Some(s)),
            "encryption_type" => match value {
                J::Str(s) if s.eq_ignore_ascii_case("kms") => {
                    patch.encryption_type = Some(EncryptionType::Kms);
                    Some(())
                }
                J::Str(s) if s.eq_ignore_ascii_case("normal") => {
                    patch.encryption_type = Some(EncryptionType::Normal);
                    Some(())
                }
                _ => None,
            },
            "default_encryption_enabled" => match value {
                J::Bool(b) => {
                    patch.default_encryption_enabled = Some(*b);
                    Some(())
                }
                _ => None,
            },
            _ => unreachable!(),
        };
        if ok.is_none() {
            invalid.push(field);
        }
    }
    if invalid.is_empty() {
        Expect::Patch(patch)
    } else {
        Expect::Invalid(invalid)
    }
}

/// Every refusal of a body is a clear 4xx: one of the body errors, a short message.
fn check_body_error(e: &Error) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            e,
            Error::BadRequestBody(_) | Error::InvalidField { .. } | Error::PayloadTooLarge { .. }
        ),
        "unexpected error kind {e:?}"
    );
    let status = status_of(e);
    prop_assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
        "status {status} for {e:?}"
    );
    let msg = e.to_string();
    prop_assert!(!msg.is_empty());
    prop_assert!(
        msg.chars().count() <= 300,
        "error message is not short: {msg:?}"
    );
    if let Error::InvalidField { field, .. } = e {
        prop_assert!(FIELDS.contains(field));
        prop_assert!(msg.contains(field), "{msg:?} does not name {field}");
    }
    Ok(())
}

/// An accepted body, re-checked independently: it is a JSON object of known fields and
/// every field of the patch is what the body says, within the field's rules.
fn check_accepted_body(body: &[u8], patch: &SettingPatch) -> Result<(), TestCaseError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("accepted a body that is not JSON: {e}")))?;
    let Some(map) = value.as_object() else {
        return Err(TestCaseError::fail("accepted a body that is not an object"));
    };
    for key in map.keys() {
        prop_assert!(
            FIELDS.contains(&key.as_str()),
            "accepted unknown field {key:?}"
        );
    }
    let text = |name: &str, got: &Option<String>| -> Result<(), TestCaseError> {
        match (map.get(name).filter(|v| !v.is_null()), got) {
            (None, None) => Ok(()),
            (Some(Value::String(s)), Some(g)) => {
                prop_assert_eq!(s, g);
                let n = g.chars().count();
                prop_assert!((1..=1000).contains(&n), "{name} of {n} characters accepted");
                Ok(())
            }
            (sent, got) => Err(TestCaseError::fail(format!(
                "{name}: body has {sent:?}, patch has {got:?}"
            ))),
        }
    };
    text("tenant_id", &patch.tenant_id)?;
    text("cmk_key_name", &patch.cmk_key_name)?;
    text("cmk_key_id", &patch.cmk_key_id)?;
    match (
        map.get("encryption_type").filter(|v| !v.is_null()),
        patch.encryption_type,
    ) {
        (None, None) => {}
        (Some(Value::String(s)), Some(t)) => prop_assert!(
            s.eq_ignore_ascii_case(t.as_str()),
            "encryption_type {s:?} became {t:?}"
        ),
        (sent, got) => {
            return Err(TestCaseError::fail(format!(
                "encryption_type: body has {sent:?}, patch has {got:?}"
            )))
        }
    }
    match (
        map.get("default_encryption_enabled")
            .filter(|v| !v.is_null()),
        patch.default_encryption_enabled,
    ) {
        (None, None) => {}
        (Some(Value::Bool(b)), Some(g)) => prop_assert_eq!(*b, g),
        (sent, got) => {
            return Err(TestCaseError::fail(format!(
                "default_encryption_enabled: body has {sent:?}, patch has {got:?}"
            )))
        }
    }
    Ok(())
}

/// A byte-level edit of an input.
#[derive(Debug, Clone)]
enum ByteEdit {
    Replace(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
    Duplicate(Index, Index),
}

fn arb_byte_edit() -> BoxedStrategy<ByteEdit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Replace(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<Index>().prop_map(ByteEdit::Delete),
        any::<Index>().prop_map(ByteEdit::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| ByteEdit::Duplicate(a, b)),
    ]
    .boxed()
}

fn apply_byte_edits(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match edit {
            ByteEdit::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            _ if len == 0 => {}
            ByteEdit::Replace(i, b) => bytes[i.index(len)] = *b,
            ByteEdit::Delete(i) => {
                bytes.remove(i.index(len));
            }
            ByteEdit::Truncate(i) => bytes.truncate(i.index(len)),
            ByteEdit::Duplicate(a, b) => {
                let (a, b) = (a.index(len), b.index(len));
                let span = bytes[a.min(b)..=a.max(b)].to_vec();
                bytes.splice(a..a, span);
            }
        }
    }
    bytes
}

const JSON_ALPHABET: &[u8] =
    b"{}[]\":,. truefalsnul0123456789-+eE\\/ubfnrt\t\n\r_ckmyidKMS\x00\xc3\xa9\xff";

/// Bytes that are anything at all, or JSON-ish, or a body with a few byte-level edits, or
/// deeply nested.
fn arb_body_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..300),
        2 => prop::collection::vec(prop::sample::select(JSON_ALPHABET), 0..300),
        5 => (arb_body_model(), any::<u64>(), prop::collection::vec(arb_byte_edit(), 1..5))
            .prop_map(|(j, style, edits)| apply_byte_edits(render(&j, style).into_bytes(), &edits)),
        1 => (0usize..4000, prop::sample::select(vec!["[", "{\"cmk_key_id\":", "[{\"a\":"]), any::<bool>())
            .prop_map(|(depth, open, close)| {
                let mut s = open.repeat(depth);
                if close {
                    let closer = if open == "[" { "]" } else if open == "[{\"a\":" { "}]" } else { "}" };
                    s.push_str(&closer.repeat(depth));
                }
                s.into_bytes()
            }),
    ]
    .boxed()
}

#[test]
fn body_json_documents() {
    fuzz(
        "body/json-documents",
        (arb_body_model(), any::<u64>()),
        |(model, style)| {
            let text = render(&model, style);
            let got = parse_setting_patch(text.as_bytes());
            if let Err(e) = &got {
                check_body_error(e)?;
            }
            // The renderer writes valid JSON; only a number out of f64's range may make
            // serde_json refuse it, and then the body is refused as not JSON.
            if let Err(e) = serde_json::from_str::<Value>(&text) {
                prop_assert!(
                    model.has_number(),
                    "renderer wrote invalid JSON ({e}): {text}"
                );
                // Fields are read in order, so a repeat before the bad number is named first.
                let repeated = matches!(expected_patch(&model), Expect::Repeated);
                prop_assert!(
                    matches!(&got, Err(Error::BadRequestBody(m))
                        if m.contains("not valid JSON") || (repeated && m.contains("repeats the field"))),
                    "{got:?}"
                );
                return Ok(());
            }
            match expected_patch(&model) {
                Expect::Patch(p) => {
                    prop_assert_eq!(got.as_ref().ok(), Some(&p), "body {}", text);
                    check_accepted_body(text.as_bytes(), &p)?;
                }
                Expect::NotAnObject => prop_assert!(
                    matches!(&got, Err(Error::BadRequestBody(m)) if m.contains("must be a JSON object")),
                    "{got:?}"
                ),
                Expect::Repeated => prop_assert!(
                    matches!(&got, Err(Error::BadRequestBody(m)) if m.contains("repeats the field")),
                    "{got:?}"
                ),
                Expect::UnknownField => prop_assert!(
                    matches!(&got, Err(Error::BadRequestBody(m)) if m.contains("unknown field")),
                    "{got:?}"
                ),
                Expect::Invalid(fields) => prop_assert!(
                    matches!(&got, Err(Error::InvalidField { field, .. }) if fields.contains(field)),
                    "expected an error naming one of {fields:?}, got {got:?} for {text}"
                ),
            }
            Ok(())
        },
    );
}

#[test]
fn body_bytes() {
    fuzz("body/bytes", arb_body_bytes(), |bytes| {
        match parse_setting_patch(&bytes) {
            Ok(patch) => check_accepted_body(&bytes, &patch)?,
            Err(e) => check_body_error(&e)?,
        }
        Ok(())
    });
}

#[test]
fn body_size_limit_is_exact() {
    let body = br#"{"encryption_type":"normal"}"#;
    for extra in [0usize, 1] {
        let mut padded = body.to_vec();
        padded.resize(MAX_BODY_BYTES + extra, b' ');
        let got = parse_setting_patch(&padded);
        if extra == 0 {
            assert_eq!(got.unwrap().encryption_type, Some(EncryptionType::Normal));
        } else {
            assert!(matches!(got, Err(Error::PayloadTooLarge { .. })), "{got:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Tokens: TokenCodec
// ---------------------------------------------------------------------------------------

fn codec() -> TokenCodec {
    TokenCodec::new(&RootKey::from_bytes([0x5a; 32]))
}

/// A tenant id (no control characters); up to the 1000-character limit if `long`.
fn arb_tenant(long: bool) -> BoxedStrategy<TenantId> {
    let no_controls = |s: String| {
        let s: String = s
            .chars()
            .map(|c| if c.is_control() { 't' } else { c })
            .collect();
        TenantId::parse(s).unwrap()
    };
    let short = prop::collection::vec(arb_char(), 1..40).prop_map(String::from_iter);
    if long {
        prop_oneof![9 => short, 1 => long_text(&[999, 1000])]
            .prop_map(no_controls)
            .boxed()
    } else {
        short.prop_map(no_controls).boxed()
    }
}

/// An identity and the time it is issued at, strictly before it expires.
fn arb_identity(long: bool) -> BoxedStrategy<(Identity, u64)> {
    let times = prop_oneof![
        (0u64..4_000_000_000, 1u64..1_000_000).prop_map(|(now, ttl)| (now, now + ttl)),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| {
            let (lo, hi) = (a.min(b), a.max(b));
            if lo == hi {
                (lo.saturating_sub(1), hi.max(1))
            } else {
                (lo, hi)
            }
        }),
    ];
    (
        arb_tenant(long),
        arb_text(40),
        arb_text(40),
        any::<bool>(),
        times,
    )
        .prop_map(|(tenant_id, user_id, user_name, admin, (now, exp))| {
            (
                Identity {
                    tenant_id,
                    user_id,
                    user_name,
                    role: if admin { Role::Admin } else { Role::Member },
                    expires_at: exp,
                },
                now,
            )
        })
        .boxed()
}

fn check_token_refused(codec: &TokenCodec, token: &str, now: u64) -> Result<(), TestCaseError> {
    let got = codec.verify(token, now);
    prop_assert!(
        matches!(got, Err(Error::InvalidToken(_))),
        "{token:?} was not refused as invalid: {got:?}"
    );
    if let Err(e) = got {
        prop_assert_eq!(status_of(&e), StatusCode::UNAUTHORIZED);
    }
    Ok(())
}

/// Strings that are anything, token-shaped, or real claims under a forged tag.
fn arb_token_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => arb_text(200),
        3 => (
            prop::sample::select(vec!["rc1.", "rc1.", "rc2.", "RC1.", ".", ""]),
            from_alphabet(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_=+/-", 0..=160),
            prop::collection::vec(from_alphabet(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_=-", 0..=60), 0..=3),
        )
            .prop_map(|(prefix, claims, tags)| {
                let mut t = format!("{prefix}{claims}");
                for tag in tags {
                    t.push('.');
                    t.push_str(&tag);
                }
                t
            }),
        2 => (arb_identity(false), any::<[u8; 32]>(), any::<bool>()).prop_map(|((id, now), tag, pad)| {
            let claims = serde_json::json!({
                "tid": id.tenant_id.as_str(), "uid": id.user_id, "un": id.user_name,
                "role": if id.role == Role::Admin { "admin" } else { "member" },
                "iat": now, "exp": id.expires_at,
            });
            let mut t = format!("rc1.{}.{}", B64URL.encode(claims.to_string()), B64URL.encode(tag));
            if pad {
                t.push('=');
            }
            t
        }),
    ]
    .boxed()
}

#[test]
fn token_arbitrary_strings_never_verify() {
    let codec = codec();
    fuzz(
        "token/arbitrary",
        (arb_token_text(), any::<u64>()),
        |(text, now)| check_token_refused(&codec, &text, now),
    );
}

#[test]
fn token_round_trip() {
    let codec = codec();
    let other = TokenCodec::new(&RootKey::from_bytes([0xa5; 32]));
    fuzz("token/round-trip", arb_identity(true), |(identity, now)| {
        let token = codec.issue(&identity, now).unwrap();
        prop_assert!(token.starts_with("rc1."), "{token}");
        prop_assert_eq!(token.matches('.').count(), 2);
        prop_assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "not URL-safe: {token}"
        );
        prop_assert_eq!(codec.verify(&token, now).ok(), Some(identity.clone()));
        prop_assert_eq!(
            codec.verify(&token, identity.expires_at - 1).ok(),
            Some(identity.clone())
        );
        let expired = codec.verify(&token, identity.expires_at);
        prop_assert!(matches!(expired, Err(Error::TokenExpired)), "{expired:?}");
        check_token_refused(&other, &token, now)
    });
}

#[derive(Debug, Clone)]
enum TokenEdit {
    Replace(Index, char),
    Insert(Index, char),
    Delete(Index),
    Truncate(Index),
    Append(String),
    Prepend(String),
    Swap(Index, Index),
    /// Flip one bit of one byte (staying ASCII).
    FlipBit(Index, u8),
    /// Spellings a lenient decoder would take for the same token.
    Respell(Respelling),
}

#[derive(Debug, Clone, Copy)]
enum Respelling {
    /// `=` padding after the tag.
    PadTag(usize),
    /// `=` padding after the claims.
    PadClaims,
    /// The standard base64 alphabet (`+` and `/`) instead of the URL-safe one.
    StandardAlphabet,
    /// The unused low bits of the last character of the claims or the tag set.
    TrailingBits {
        tag: bool,
        bits: u8,
    },
    /// Whitespace around the token.
    Whitespace(&'static str, &'static str),
    UppercasePrefix,
}

const B64URL_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn respell(token: &str, how: Respelling) -> String {
    let (claims_end, _) = token.rsplit_once('.').unwrap();
    let claims_end = claims_end.len();
    match how {
        Respelling::PadTag(n) => format!("{token}{}", "=".repeat(n)),
        Respelling::PadClaims => format!("{}={}", &token[..claims_end], &token[claims_end..]),
        Respelling::StandardAlphabet => token.replace('-', "+").replace('_', "/"),
        Respelling::TrailingBits { tag, bits } => {
            let at = if tag { token.len() - 1 } else { claims_end - 1 };
            let mut bytes = token.as_bytes().to_vec();
            let value = B64URL_ALPHABET
                .iter()
                .position(|&b| b == bytes[at])
                .unwrap();
            // Bits of the last character that carry no data: 2 for a 43-character tag;
            // 2 or 4 for the claims, depending on their length (none if a multiple of 4).
            let seg_len = if tag {
                token.len() - claims_end - 1
            } else {
                claims_end - 4
            };
            let spare = match seg_len % 4 {
                2 => 0b1111,
                3 => 0b11,
                _ => 0,
            };
            bytes[at] = B64URL_ALPHABET[value ^ (usize::from(bits) & spare)];
            String::from_utf8(bytes).unwrap()
        }
        Respelling::Whitespace(before, after) => format!("{before}{token}{after}"),
        Respelling::UppercasePrefix => format!("RC1{}", &token[3..]),
    }
}

fn arb_token_edit() -> BoxedStrategy<TokenEdit> {
    let ch = prop_oneof![
        3 => prop::sample::select(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".to_vec()
        )
        .prop_map(char::from),
        1 => arb_char(),
    ];
    let suffix = prop::collection::vec(ch.clone(), 1..8).prop_map(String::from_iter);
    prop_oneof![
        4 => (any::<Index>(), ch.clone()).prop_map(|(i, c)| TokenEdit::Replace(i, c)),
        1 => (any::<Index>(), ch).prop_map(|(i, c)| TokenEdit::Insert(i, c)),
        1 => any::<Index>().prop_map(TokenEdit::Delete),
        1 => any::<Index>().prop_map(TokenEdit::Truncate),
        1 => suffix.clone().prop_map(TokenEdit::Append),
        1 => suffix.prop_map(TokenEdit::Prepend),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TokenEdit::Swap(a, b)),
        3 => (any::<Index>(), 0u8..7).prop_map(|(i, bit)| TokenEdit::FlipBit(i, bit)),
        3 => prop_oneof![
            (1usize..3).prop_map(Respelling::PadTag),
            Just(Respelling::PadClaims),
            Just(Respelling::StandardAlphabet),
            (any::<bool>(), 1u8..16).prop_map(|(tag, bits)| Respelling::TrailingBits { tag, bits }),
            (
                prop::sample::select(vec!["", " ", "\t", "\n"]),
                prop::sample::select(vec!["", " ", "\r\n", "\0"])
            )
                .prop_map(|(a, b)| Respelling::Whitespace(a, b)),
            Just(Respelling::UppercasePrefix),
        ]
        .prop_map(TokenEdit::Respell),
    ]
    .boxed()
}

fn edit_token(token: &str, edit: &TokenEdit) -> String {
    if let TokenEdit::Respell(how) = edit {
        return respell(token, *how);
    }
    let mut chars: Vec<char> = token.chars().collect();
    let len = chars.len();
    match edit {
        TokenEdit::Replace(i, c) => chars[i.index(len)] = *c,
        TokenEdit::Insert(i, c) => chars.insert(i.index(len + 1), *c),
        TokenEdit::Delete(i) => {
            chars.remove(i.index(len));
        }
        TokenEdit::Truncate(i) => chars.truncate(i.index(len)),
        TokenEdit::Append(s) => chars.extend(s.chars()),
        TokenEdit::Prepend(s) => {
            chars.splice(0..0, s.chars());
        }
        TokenEdit::Swap(a, b) => chars.swap(a.index(len), b.index(len)),
        TokenEdit::FlipBit(i, bit) => {
            let i = i.index(len);
            chars[i] = char::from(u8::try_from(chars[i]).unwrap() ^ (1 << bit));
        }
        TokenEdit::Respell(_) => unreachable!(),
    }
    String::from_iter(chars)
}

#[test]
fn token_any_edit_is_refused() {
    let codec = codec();
    // The format allows no equivalent spellings: the HMAC covers the exact text of
    // `rc1.<claims>`, and the tag must be the one canonical unpadded base64url of 32
    // bytes. So every edit that changes the string must be refused.
    fuzz(
        "token/edits",
        (
            arb_identity(false),
            prop::collection::vec(arb_token_edit(), 1..4),
        ),
        |((identity, now), edits)| {
            let token = codec.issue(&identity, now).unwrap();
            let mut edited = token.clone();
            for edit in &edits {
                if edited.is_empty() || !edited.is_ascii() {
                    break;
                }
                // Respellings are of a well-formed token: the first edit only.
                if matches!(edit, TokenEdit::Respell(_)) && edited != token {
                    continue;
                }
                edited = edit_token(&edited, edit);
            }
            if edited != token {
                check_token_refused(&codec, &edited, now)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// 3. AK/SK: the Authorization parser, the canonical request, the verifier
// ---------------------------------------------------------------------------------------

/// Code points for which Python's `str.isspace()` is true (what the SDK's `strip()`
/// removes), as listed by CPython for the SDK vectors in `src/auth/sdk_signature.rs`.
const PY_WHITESPACE: &[u32] = &[
    0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001,
    0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f,
    0x205f, 0x3000,
];

fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| PY_WHITESPACE.contains(&u32::from(c)))
}

/// `urllib.parse.quote(s, safe='~')`.
fn py_quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode a string that [`py_quote`] produced.
fn unquote_canonical(s: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            if !hex
                .iter()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
            {
                return None;
            }
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            if !(b.is_ascii_alphanumeric() || b"_.-~".contains(&b)) {
                return None;
            }
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// The SDK's canonical URI of a path whose decoded `/`-separated segments are `segments`.
fn oracle_uri(segments: &[String]) -> String {
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| py_quote(s))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// The SDK's canonical query string of decoded `(key, value)` pairs.
fn oracle_query(pairs: &[(String, String)]) -> String {
    let mut sorted = pairs.to_vec();
    sorted.sort();
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", py_quote(k), py_quote(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encode `s` the way some client might: each character raw or as `%XX` of its
/// UTF-8 bytes (either hex case), except that `%` and `forced` are always encoded.
fn wire_encode(s: &str, forced: &[char], rng: &mut Mix, out: &mut String) {
    for c in s.chars() {
        if c != '%' && !forced.contains(&c) && rng.next() % 3 != 0 {
            out.push(c);
            continue;
        }
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            if rng.one_in(2) {
                out.push_str(&format!("%{b:02X}"));
            } else {
                out.push_str(&format!("%{b:02x}"));
            }
        }
    }
}

fn wire_path(segments: &[String], rng: &mut Mix) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        wire_encode(s, &[], rng, &mut out);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A raw query string for `pairs`, in a random order, with stray `&`s; `None` sometimes
/// when there are no pairs.
fn wire_query(pairs: &[(String, String)], rng: &mut Mix) -> Option<String> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    for i in (1..order.len()).rev() {
        let j = usize::try_from(rng.next() % (i as u64 + 1)).unwrap();
        order.swap(i, j);
    }
    let mut out = String::new();
    for i in order {
        let (k, v) = &pairs[i];
        if !out.is_empty() || rng.one_in(8) {
            out.push('&');
        }
        if rng.one_in(8) {
            out.push('&');
        }
        wire_encode(k, &['&', '='], rng, &mut out);
        // "k" and "k=" mean the same, except that "" alone would be skipped.
        if !v.is_empty() || k.is_empty() || rng.one_in(2) {
            out.push('=');
        }
        wire_encode(v, &['&'], rng, &mut out);
    }
    if out.is_empty() && rng.one_in(2) {
        None
    } else {
        Some(out)
    }
}

fn path_segment() -> BoxedStrategy<String> {
    prop::collection::vec(
        arb_char().prop_map(|c| if c == '/' { '_' } else { c }),
        0..10,
    )
    .prop_map(String::from_iter)
    .boxed()
}

fn query_pairs() -> BoxedStrategy<Vec<(String, String)>> {
    prop::collection::vec((arb_text(8), arb_text(10)), 0..6).boxed()
}

/// Canonicalise `path` and `query` alone: the URI and query lines of the canonical request.
fn canonical_uri_and_query(path: &str, query: Option<&str>) -> (String, String) {
    let canonical = canonical_request(
        "GET",
        path,
        query,
        &[("host", "h")],
        &["host"],
        EMPTY_PAYLOAD_SHA256_HEX,
    )
    .unwrap();
    let mut lines = canonical.split('\n');
    let _method = lines.next();
    (
        lines.next().unwrap().to_owned(),
        lines.next().unwrap().to_owned(),
    )
}

#[test]
fn aksk_canonical_escaping() {
    fuzz(
        "aksk/canonical-escaping",
        (
            prop::collection::vec(path_segment(), 0..6),
            query_pairs(),
            any::<u64>(),
            any::<u64>(),
        ),
        |(segments, pairs, seed_a, seed_b)| {
            let want = (oracle_uri(&segments), oracle_query(&pairs));
            for seed in [seed_a, seed_b] {
                let mut rng = Mix(seed);
                let path = wire_path(&segments, &mut rng);
                let query = wire_query(&pairs, &mut rng);
                let got = canonical_uri_and_query(&path, query.as_deref());
                prop_assert_eq!(
                    &got,
                    &want,
                    "path {:?} query {:?} (decoded {:?} {:?})",
                    path,
                    query,
                    segments,
                    pairs
                );
            }
            Ok(())
        },
    );
}

/// Header names that the canonical-request builder must treat case-insensitively.
fn header_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "host", "Host", "HOST", "x-sdk-date", "X-Sdk-Date", "content-type", "x-a", "X-A",
            "x-sdk-content-sha256", "x_under",
        ])
        .prop_map(str::to_owned),
        2 => from_alphabet(LOWER_DIGITS_DASH, 1..=6),
        1 => arb_text(8),
    ]
    .boxed()
}

/// What `canonical_request` must fail with, in the order its documentation checks.
fn expected_canonical_failure(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    signed: &[String],
) -> Option<&'static str> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty()
        || !method.bytes().all(tchar)
        || signed.is_empty()
        || !path.starts_with('/')
    {
        return Some("malformed");
    }
    for name in signed {
        let valid = !name.is_empty()
            && name.len() <= MAX_HEADER_NAME_LEN
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^`|~".contains(&b)
            });
        if !valid {
            return Some("malformed");
        }
        match headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
        {
            0 => return Some("missing"),
            1 => {}
            _ => return Some("duplicate"),
        }
    }
    None
}

#[test]
fn aksk_canonical_request_arbitrary() {
    let method = prop_oneof![
        3 => prop::sample::select(vec!["GET", "get", "PuT", "POST", "DELETE", "M-SEARCH", ""]).prop_map(str::to_owned),
        1 => arb_text(10),
    ];
    let path = prop_oneof![
        3 => arb_text(60).prop_map(|p| format!("/{p}")),
        1 => arb_text(60),
    ];
    let headers = prop::collection::vec((header_name(), arb_text(20)), 0..8);
    let signed = prop_oneof![
        3 => prop::collection::btree_set(header_name(), 0..5).prop_map(|s| s.into_iter().collect::<Vec<_>>()),
        1 => prop::collection::vec(header_name(), 0..5),
    ];
    fuzz(
        "aksk/canonical-request",
        (
            method,
            path,
            prop::option::of(arb_text(60)),
            headers,
            signed,
            arb_text(70),
        ),
        |(method, path, query, headers, signed, payload)| {
            let header_refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let signed_refs: Vec<&str> = signed.iter().map(String::as_str).collect();
            let build = || {
                canonical_request(
                    &method,
                    &path,
                    query.as_deref(),
                    &header_refs,
                    &signed_refs,
                    &payload,
                )
            };
            let first = build();
            let again = build();
            prop_assert_eq!(
                format!("{first:?}"),
                format!("{again:?}"),
                "not deterministic"
            );
            match (
                first,
                expected_canonical_failure(&method, &path, &headers, &signed),
            ) {
                (Ok(canonical), None) => {
                    let mut lines = canonical.splitn(4, '\n');
                    let (m, uri, q) = (
                        lines.next().unwrap(),
                        lines.next().unwrap(),
                        lines.next().unwrap(),
                    );
                    let upper = method.to_ascii_uppercase();
                    prop_assert_eq!(m, upper.as_str());
                    // The URI: '/'-separated quoted segments ending in '/'.
                    prop_assert!(uri.starts_with('/') && uri.ends_with('/'), "{uri}");
                    for seg in uri.split('/') {
                        prop_assert!(unquote_canonical(seg).is_some(), "bad URI {uri}");
                    }
                    // The query: sorted k=v pairs of quoted text.
                    let mut pairs = Vec::new();
                    for piece in q.split('&').filter(|_| !q.is_empty()) {
                        let pair = piece
                            .split_once('=')
                            .map(|(k, v)| (unquote_canonical(k), unquote_canonical(v)));
                        let Some((Some(k), Some(v))) = pair else {
                            return Err(TestCaseError::fail(format!("bad query {q}")));
                        };
                        pairs.push((k, v));
                    }
                    prop_assert!(pairs.windows(2).all(|w| w[0] <= w[1]), "unsorted {q}");
                    // The canonical forms are fixed points.
                    let (uri2, q2) = canonical_uri_and_query(uri, Some(q));
                    prop_assert_eq!((uri2.as_str(), q2.as_str()), (uri, q));
                    // Header lines, the signed list and the payload hash, exactly.
                    let mut block = String::new();
                    for name in &signed {
                        let (_, value) = headers
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case(name))
                            .unwrap();
                        block.push_str(&format!("{name}:{}\n", py_strip(value)));
                    }
                    let want = format!(
                        "{upper}\n{uri}\n{q}\n{block}\n{}\n{payload}",
                        signed.join(";")
                    );
                    prop_assert_eq!(canonical, want);
                }
                (Err(e), Some(kind)) => {
                    let ok = match kind {
                        "malformed" => matches!(e, SignatureError::MalformedRequest(_)),
                        "missing" => matches!(e, SignatureError::MissingSignedHeader(_)),
                        _ => matches!(e, SignatureError::DuplicateHeader(_)),
                    };
                    prop_assert!(ok, "expected {kind}, got {e:?}");
                }
                (got, want) => {
                    return Err(TestCaseError::fail(format!(
                        "got {got:?}, expected failure {want:?}"
                    )))
                }
            }
            Ok(())
        },
    );
}

// ---- the Authorization header ----

fn access_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => from_alphabet(UPPER_DIGITS, 20),
        1 => from_alphabet(ACCESS_KEY_CHARS, 1..=128),
    ]
    .boxed()
}

fn signed_header_set() -> BoxedStrategy<Vec<String>> {
    prop::collection::btree_set(from_alphabet(HEADER_NAME_CHARS, 1..=12), 1..=8)
        .prop_map(|s| s.into_iter().collect())
        .boxed()
}

/// Ways a valid header can be spelled wrongly; each must be refused.
#[derive(Debug, Clone)]
enum AuthBreak {
    /// Spaces and comma layouts the parser allows (not a break).
    None,
    UppercaseHeader(Index),
    DuplicateHeader(Index),
    ReverseHeaders,
    UppercaseSignature,
    SignatureLength(bool),
    AccessKeyChar(char),
    EmptyAccessKey,
    ExtraParameter,
    RepeatParameter(Index),
    TwoSpacesAfterAlgorithm,
    LowercaseAlgorithm,
    OtherAlgorithm,
}

fn arb_auth_break() -> BoxedStrategy<AuthBreak> {
    prop_oneof![
        6 => Just(AuthBreak::None),
        1 => any::<Index>().prop_map(AuthBreak::UppercaseHeader),
        1 => any::<Index>().prop_map(AuthBreak::DuplicateHeader),
        1 => Just(AuthBreak::ReverseHeaders),
        1 => Just(AuthBreak::UppercaseSignature),
        1 => any::<bool>().prop_map(AuthBreak::SignatureLength),
        1 => prop::sample::select(vec![',', '=', '"', ' ', 'é', '\t', '\0']).prop_map(AuthBreak::AccessKeyChar),
        1 => Just(AuthBreak::EmptyAccessKey),
        1 => Just(AuthBreak::ExtraParameter),
        1 => any::<Index>().prop_map(AuthBreak::RepeatParameter),
        1 => Just(AuthBreak::TwoSpacesAfterAlgorithm),
        1 => Just(AuthBreak::LowercaseAlgorithm),
        1 => Just(AuthBreak::OtherAlgorithm),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct AuthCase {
    access_key: String,
    headers: Vec<String>,
    signature: [u8; 32],
    /// Order of Access, SignedHeaders, Signature.
    order: [usize; 3],
    /// Spaces before and after each of the two commas, and at the end.
    spaces: [usize; 5],
    brk: AuthBreak,
}

fn arb_auth_case() -> BoxedStrategy<AuthCase> {
    let orders: &[[usize; 3]] = &[
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    (
        access_key(),
        signed_header_set(),
        any::<[u8; 32]>(),
        prop::sample::select(orders),
        [0usize..3, 0..3, 0..3, 0..3, 0..3],
        arb_auth_break(),
    )
        .prop_map(
            |(access_key, headers, signature, order, spaces, brk)| AuthCase {
                access_key,
                headers,
                signature,
                order,
                spaces,
                brk,
            },
        )
        .boxed()
}

/// The header text for `case`; true if it must be accepted.
fn auth_text(case: &AuthCase) -> (String, bool) {
    let mut ak = case.access_key.clone();
    let mut headers = case.headers.clone();
    let mut sig = hex::encode(case.signature);
    let mut algorithm = format!("{ALGORITHM} ");
    let mut extra = None;
    let mut repeat = None;
    let mut valid = false;
    match &case.brk {
        AuthBreak::None => valid = true,
        AuthBreak::UppercaseHeader(i) => {
            let i = i.index(headers.len());
            let upper = headers[i].to_ascii_uppercase();
            valid = upper == headers[i];
            headers[i] = upper;
        }
        AuthBreak::DuplicateHeader(i) => {
            let i = i.index(headers.len());
            headers.insert(i, headers[i].clone());
        }
        AuthBreak::ReverseHeaders => {
            valid = headers.len() == 1;
            headers.reverse();
        }
        AuthBreak::UppercaseSignature => {
            valid = !sig.bytes().any(|b| b.is_ascii_alphabetic());
            sig = sig.to_ascii_uppercase();
        }
        AuthBreak::SignatureLength(longer) => {
            if *longer {
                sig.push('0');
            } else {
                sig.pop();
            }
        }
        AuthBreak::AccessKeyChar(c) => {
            let at = ak.len() / 2;
            ak.insert(at, *c);
        }
        AuthBreak::EmptyAccessKey => ak.clear(),
        AuthBreak::ExtraParameter => extra = Some("Date=20240101T000000Z".to_owned()),
        AuthBreak::RepeatParameter(i) => repeat = Some(i.index(3)),
        AuthBreak::TwoSpacesAfterAlgorithm => algorithm.push(' '),
        AuthBreak::LowercaseAlgorithm => algorithm = algorithm.to_ascii_lowercase(),
        AuthBreak::OtherAlgorithm => algorithm = "SDK-HMAC-SM3 ".to_owned(),
    }
    let params = [
        format!("Access={ak}"),
        format!("SignedHeaders={}", headers.join(";")),
        format!("Signature={sig}"),
    ];
    let mut parts: Vec<String> = case.order.iter().map(|&i| params[i].clone()).collect();
    if let Some(e) = extra {
        parts.push(e);
    }
    if let Some(r) = repeat {
        parts.push(params[r].clone());
    }
    let mut text = algorithm;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            let (before, after) = (case.spaces[(2 * i - 2) % 4], case.spaces[(2 * i - 1) % 4]);
            text.push_str(&" ".repeat(before));
            text.push(',');
            text.push_str(&" ".repeat(after));
        }
        text.push_str(part);
    }
    text.push_str(&" ".repeat(case.spaces[4]));
    (text, valid)
}

/// What any accepted Authorization must look like, and that it formats back to itself.
fn check_parsed_authorization(text: &str) -> Result<(), TestCaseError> {
    match parse_authorization(text) {
        Ok(auth) => {
            prop_assert!(text.starts_with("SDK-HMAC-SHA256 "), "{text:?}");
            let ak = auth.access_key;
            prop_assert!(
                !ak.is_empty() && ak.len() <= MAX_ACCESS_KEY_LEN,
                "access key {ak:?}"
            );
            prop_assert!(
                ak.bytes()
                    .all(|b| b.is_ascii_graphic() && !b",=\"".contains(&b)),
                "access key {ak:?}"
            );
            let hs = &auth.signed_headers;
            prop_assert!(!hs.is_empty() && hs.len() <= MAX_SIGNED_HEADERS);
            prop_assert!(hs.windows(2).all(|w| w[0] < w[1]), "not ascending {hs:?}");
            for h in hs {
                prop_assert!(
                    !h.is_empty()
                        && h.len() <= MAX_HEADER_NAME_LEN
                        && h.bytes().all(|b| b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b"!#$%&'*+-.^`|~".contains(&b)),
                    "header name {h:?}"
                );
            }
            let again = format_authorization(ak, hs, &auth.signature);
            prop_assert_eq!(parse_authorization(&again).ok(), Some(auth));
        }
        Err(e) => {
            prop_assert!(
                matches!(
                    e,
                    SignatureError::MalformedAuthorization(_)
                        | SignatureError::UnsupportedAlgorithm(_)
                ),
                "{e:?}"
            );
            prop_assert!(e.to_string().len() <= 200, "{e}");
        }
    }
    Ok(())
}

/// Authorization values built from the grammar's pieces, in any arrangement.
fn arb_authorization_text() -> BoxedStrategy<String> {
    let name = prop_oneof![
        4 => prop::sample::select(vec!["Access", "SignedHeaders", "Signature"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["access", "Signature ", " Access", "X", "", "Date"]).prop_map(str::to_owned),
    ];
    let value = prop_oneof![
        access_key(),
        signed_header_set().prop_map(|h| h.join(";")),
        from_alphabet(b"0123456789abcdef", 64),
        from_alphabet(b"0123456789abcdefABCDEF", 62..=66),
        from_alphabet(
            b"abcdefghijklmnopqrstuvwxyz;_ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            0..=20
        ),
        arb_text(20),
    ];
    let grammar = (
        prop::sample::select(vec![
            ALGORITHM,
            ALGORITHM,
            "SDK-HMAC-SM3",
            "sdk-hmac-sha256",
            "",
            "V11-HMAC-SHA256",
            "Bearer",
        ]),
        prop::sample::select(vec![" ", " ", "", "  ", "\t"]),
        prop::collection::vec(
            (
                name,
                prop::sample::select(vec!["=", "=", "", "=="]),
                value,
                prop::sample::select(vec![", ", ",", " , ", ",,", ";", ", "]),
            ),
            0..5,
        ),
    )
        .prop_map(|(alg, sep, params)| {
            let mut s = format!("{alg}{sep}");
            for (i, (n, eq, v, comma)) in params.iter().enumerate() {
                if i > 0 {
                    s.push_str(comma);
                }
                s.push_str(&format!("{n}{eq}{v}"));
            }
            s
        });
    prop_oneof![
        2 => arb_text(200),
        4 => grammar,
        3 => (arb_auth_case(), prop::collection::vec(arb_byte_edit(), 1..4)).prop_map(|(case, edits)| {
            String::from_utf8_lossy(&apply_byte_edits(auth_text(&case).0.into_bytes(), &edits)).into_owned()
        }),
        1 => (1usize..9000).prop_map(|n| format!("{ALGORITHM} Access={}", "A".repeat(n))),
    ]
    .boxed()
}

#[test]
fn aksk_authorization_arbitrary() {
    fuzz(
        "aksk/authorization-arbitrary",
        arb_authorization_text(),
        |text| check_parsed_authorization(&text),
    );
}

#[test]
fn aksk_authorization_valid_and_broken() {
    fuzz("aksk/authorization-shapes", arb_auth_case(), |case| {
        let (text, valid) = auth_text(&case);
        check_parsed_authorization(&text)?;
        let got = parse_authorization(&text);
        if valid {
            let auth = got.map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(auth.access_key, case.access_key.as_str());
            prop_assert_eq!(&auth.signed_headers, &case.headers);
            prop_assert_eq!(auth.signature, case.signature);
        } else {
            prop_assert!(got.is_err(), "{:?} accepted: {:?}", text, got);
        }
        Ok(())
    });
}

// ---- signing and verifying whole requests ----

/// 2026-01-01T00:00:00Z.
const NOW: u64 = 1_767_225_600;
const MAX_SKEW: u64 = 900;

/// A request as the client meant it: decoded path segments and query pairs, headers with
/// lower-case names (signed or not), the body.
#[derive(Debug, Clone)]
struct SdkRequest {
    method: String,
    segments: Vec<String>,
    query: Vec<(String, String)>,
    /// (lower-case name, value, signed)
    headers: Vec<(String, String, bool)>,
    body: Vec<u8>,
}

impl SdkRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_str())
    }

    fn signed_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .iter()
            .filter(|h| h.2)
            .map(|h| h.0.clone())
            .collect();
        names.sort();
        names
    }

    /// The payload hash line, or why the verifier refuses the body.
    fn payload(&self) -> Result<String, &'static str> {
        if self.body.is_empty() {
            return Ok(EMPTY_PAYLOAD_SHA256_HEX.to_owned());
        }
        let actual = sha256_hex(&self.body);
        match self.header("x-sdk-content-sha256").map(py_strip) {
            None | Some("") => Ok(actual),
            Some("UNSIGNED-PAYLOAD") => Err("unsigned payload"),
            Some(v) if v.eq_ignore_ascii_case(&actual) => Ok(v.to_owned()),
            Some(_) => Err("hash mismatch"),
        }
    }

    /// The SDK's canonical request, built from the decoded parts (signer.py's recipe).
    fn canonical(&self) -> Result<String, &'static str> {
        let names = self.signed_names();
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.method.to_ascii_uppercase(),
            oracle_uri(&self.segments),
            oracle_query(&self.query)
        );
        for name in &names {
            out.push_str(&format!(
                "{name}:{}\n",
                py_strip(self.header(name).unwrap())
            ));
        }
        out.push_str(&format!("\n{}\n{}", names.join(";"), self.payload()?));
        Ok(out)
    }

    /// Sign as the SDK does: HMAC-SHA256 keyed with the SK over the string to sign.
    fn authorization(&self, ak: &str, sk: &str) -> String {
        let date = self.header("x-sdk-date").unwrap();
        let sts = format!(
            "{ALGORITHM}\n{date}\n{}",
            sha256_hex(self.canonical().unwrap().as_bytes())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(sk.as_bytes()).unwrap();
        mac.update(sts.as_bytes());
        let names = self.signed_names();
        format!(
            "{ALGORITHM} Access={ak}, SignedHeaders={}, Signature={}",
            names.join(";"),
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// How the request may arrive: percent-encoding, header-name case and order vary.
    fn wire(&self, seed: u64, authorization: String) -> Wire {
        let mut rng = Mix(seed);
        let path = wire_path(&self.segments, &mut rng);
        let query = wire_query(&self.query, &mut rng);
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v, _)| {
                let name = match rng.next() % 3 {
                    0 => n.clone(),
                    1 => n.to_ascii_uppercase(),
                    _ => n
                        .split('-')
                        .map(|w| {
                            let mut c = w.chars();
                            c.next()
                                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                                .unwrap_or_default()
                        })
                        .collect::<Vec<_>>()
                        .join("-"),
                };
                (name, v.clone())
            })
            .collect();
        for i in (1..headers.len()).rev() {
            let j = usize::try_from(rng.next() % (i as u64 + 1)).unwrap();
            headers.swap(i, j);
        }
        Wire {
            method: self.method.clone(),
            path,
            query,
            headers,
            body: self.body.clone(),
            authorization,
        }
    }
}

#[derive(Debug, Clone)]
struct Wire {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    authorization: String,
}

impl Wire {
    fn signed_request(&self) -> SignedRequest<'_> {
        SignedRequest {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            authorization: &self.authorization,
            body: &self.body,
        }
    }
}

fn header_value() -> BoxedStrategy<String> {
    prop_oneof![
        3 => from_alphabet(PRINTABLE, 0..=24),
        1 => arb_text(16).prop_map(|s| s.replace(['\r', '\n'], "")),
        1 => (prop::sample::select(vec![" ", "\t", "\u{a0}", "\u{3000}", ""]), from_alphabet(&PRINTABLE[1..], 1..=10), prop::sample::select(vec![" ", "\t ", "\u{2028}", ""]))
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
    .boxed()
}

fn arb_sdk_request() -> BoxedStrategy<SdkRequest> {
    let method = prop_oneof![
        4 => prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"]).prop_map(str::to_owned),
        1 => (from_alphabet(&UPPER_DIGITS[..26], 1), from_alphabet(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", 0..=8))
            .prop_map(|(a, b)| a + &b),
    ];
    let extra = prop::collection::vec(
        (
            from_alphabet(LOWER_DIGITS_DASH, 0..=8).prop_map(|s| format!("x-h{s}")),
            header_value(),
            any::<bool>(),
        ),
        0..5,
    );
    let content_type = prop::option::of(prop::sample::select(&[
        "application/json",
        "application/json;charset=UTF-8",
        "text/plain",
    ]));
    (
        method,
        prop::collection::vec(path_segment(), 0..5),
        query_pairs(),
        (
            from_alphabet(b"abcdefghijklmnopqrstuvwxyz0123456789.-", 1..=20),
            prop::option::of(from_alphabet(DIGITS, 1..=5)),
        )
            .prop_map(|(host, port)| match port {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }),
        content_type,
        extra,
        prop::option::of(any::<bool>()),
        prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 0..200)],
        -(MAX_SKEW as i64)..=(MAX_SKEW as i64),
    )
        .prop_map(
            |(method, segments, query, host, content_type, extra, content_sha, body, offset)| {
                let mut headers = vec![
                    ("host".to_owned(), host, true),
                    (
                        "x-sdk-date".to_owned(),
                        sdk_date(NOW.checked_add_signed(offset).unwrap()),
                        true,
                    ),
                ];
                if let Some(ct) = content_type {
                    headers.push(("content-type".to_owned(), ct.to_owned(), true));
                }
                if let Some(upper) = content_sha {
                    let h = sha256_hex(&body);
                    let v = if upper { h.to_ascii_uppercase() } else { h };
                    headers.push(("x-sdk-content-sha256".to_owned(), v, true));
                }
                for (name, value, signed) in extra {
                    if !headers.iter().any(|h| h.0 == name) {
                        headers.push((name, value, signed));
                    }
                }
                SdkRequest {
                    method,
                    segments,
                    query,
                    headers,
                    body,
                }
            },
        )
        .boxed()
}

/// A change between what was signed and what arrives.
#[derive(Debug, Clone)]
enum Tamper {
    /// Nothing but a different (equivalent) encoding of the same request.
    Reencode(u64),
    // Changes to the request; the expectation comes from comparing canonical forms.
    Method(String),
    Segments(Vec<String>),
    AppendToSegment(Index, char),
    Query(Vec<(String, String)>),
    DropQueryPair(Index),
    HeaderValue(Index, String),
    HeaderPad(Index, &'static str, &'static str),
    Body(Vec<u8>),
    FlipBodyBit(Index, u8),
    ContentSha(&'static str),
    DateWithinSkew(i64),
    // Changes to the wire form or the signature, each with its own expected outcome.
    DateOutsideSkew(u64, bool),
    RemoveHeader(Index),
    DuplicateHeader(Index, String),
    AddUnsignedHeader(String, String),
    FlipSignatureBit(Index, u8),
    OtherAccessKey(String),
    OtherSecretKey,
    UnsignHeader(Index),
    SignUnsignedHeader,
}

fn arb_tamper() -> BoxedStrategy<Tamper> {
    prop_oneof![
        2 => any::<u64>().prop_map(Tamper::Reencode),
        1 => prop::sample::select(vec!["GET", "get", "Put", "POST", "DELETE", "PATCH", "OPTIONS"]).prop_map(|m| Tamper::Method(m.to_owned())),
        1 => prop::collection::vec(path_segment(), 0..5).prop_map(Tamper::Segments),
        2 => (any::<Index>(), arb_char()).prop_map(|(i, c)| Tamper::AppendToSegment(i, if c == '/' { '_' } else { c })),
        1 => query_pairs().prop_map(Tamper::Query),
        1 => any::<Index>().prop_map(Tamper::DropQueryPair),
        2 => (any::<Index>(), header_value()).prop_map(|(i, v)| Tamper::HeaderValue(i, v)),
        1 => (any::<Index>(), prop::sample::select(vec!["", " ", "\t", "\u{a0}", "\u{1c}"]), prop::sample::select(vec!["", " ", "\u{3000}", "\u{85}"]))
            .prop_map(|(i, a, b)| Tamper::HeaderPad(i, a, b)),
        1 => prop::collection::vec(any::<u8>(), 0..50).prop_map(Tamper::Body),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Tamper::FlipBodyBit(i, b)),
        1 => prop::sample::select(vec!["UNSIGNED-PAYLOAD", "", "  ", "0000000000000000000000000000000000000000000000000000000000000000"]).prop_map(Tamper::ContentSha),
        2 => (-(MAX_SKEW as i64)..=(MAX_SKEW as i64)).prop_map(Tamper::DateWithinSkew),
        1 => (MAX_SKEW + 1..10 * MAX_SKEW, any::<bool>()).prop_map(|(d, ahead)| Tamper::DateOutsideSkew(d, ahead)),
        2 => any::<Index>().prop_map(Tamper::RemoveHeader),
        1 => (any::<Index>(), header_value()).prop_map(|(i, v)| Tamper::DuplicateHeader(i, v)),
        1 => (from_alphabet(LOWER_DIGITS_DASH, 0..=8).prop_map(|s| format!("x-u{s}")), header_value()).prop_map(|(n, v)| Tamper::AddUnsignedHeader(n, v)),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Tamper::FlipSignatureBit(i, b)),
        1 => from_alphabet(UPPER_DIGITS, 20).prop_map(Tamper::OtherAccessKey),
        1 => Just(Tamper::OtherSecretKey),
        1 => any::<Index>().prop_map(Tamper::UnsignHeader),
        1 => Just(Tamper::SignUnsignedHeader),
    ]
    .boxed()
}

/// What the verifier must answer.
#[derive(Debug, PartialEq)]
enum Outcome {
    Verified,
    Mismatch,
    Malformed,
    Stale,
    UnknownKey,
}

fn outcome(result: &Result<Identity, Error>) -> Result<Outcome, String> {
    Ok(match result {
        Ok(_) => Outcome::Verified,
        Err(Error::SignatureMismatch) => Outcome::Mismatch,
        Err(Error::SignatureMalformed(_)) => Outcome::Malformed,
        Err(Error::SignatureStale(_)) => Outcome::Stale,
        Err(Error::UnknownAccessKey) => Outcome::UnknownKey,
        Err(other) => return Err(format!("unexpected error {other:?}")),
    })
}

/// Compare the canonical forms of what was signed and what the server sees.
fn by_canonical(signed: &SdkRequest, received: &SdkRequest) -> Outcome {
    match received.canonical() {
        Err("unsigned payload") => Outcome::Malformed,
        Err(_) => Outcome::Mismatch,
        Ok(c) if c == signed.canonical().unwrap() => Outcome::Verified,
        Ok(_) => Outcome::Mismatch,
    }
}

struct Verifier {
    rt: tokio::runtime::Runtime,
    verifier: SignatureVerifier,
    ak: String,
    sk: String,
    identity: Identity,
    _dir: tempfile::TempDir,
}

impl Verifier {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::at_unix(NOW));
        let url = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let (verifier, ak, sk, identity) = rt.block_on(async {
            let store: Arc<dyn CredentialStore> =
                Arc::new(SqliteStore::connect(&url, clock.clone()).await.unwrap());
            let root = RootKey::from_bytes([0x33; 32]);
            let credentials = Arc::new(Credentials::new(store, &root, clock.clone()));
            let tenant = TenantId::parse("fuzz-tenant").unwrap();
            let (credential, secret) = credentials
                .create(&tenant, "fuzz-user", Role::Admin, &Actor::cli())
                .await
                .unwrap();
            let identity = credentials
                .resolve(&credential.access_key)
                .await
                .unwrap()
                .unwrap()
                .0;
            let verifier =
                SignatureVerifier::new(credentials, clock, Duration::from_secs(MAX_SKEW));
            (
                verifier,
                credential.access_key,
                secret.expose().to_owned(),
                identity,
            )
        });
        Verifier {
            rt,
            verifier,
            ak,
            sk,
            identity,
            _dir: dir,
        }
    }

    fn verify(&self, wire: &Wire) -> Result<Identity, Error> {
        self.rt
            .block_on(self.verifier.verify(&wire.signed_request()))
    }
}

/// Apply `tamper` to `req`, signed as `auth`; what arrives and what the verifier must say.
fn tampered(
    v: &Verifier,
    req: &SdkRequest,
    auth: String,
    seed: u64,
    tamper: &Tamper,
) -> (Wire, Outcome) {
    let mut changed = req.clone();
    let semantic =
        |changed: &SdkRequest| (changed.wire(seed, auth.clone()), by_canonical(req, changed));
    let n_headers = req.headers.len();
    match tamper {
        Tamper::Reencode(other) => (req.wire(*other, auth), Outcome::Verified),
        Tamper::Method(m) => {
            changed.method = m.clone();
            semantic(&changed)
        }
        Tamper::Segments(s) => {
            changed.segments = s.clone();
            semantic(&changed)
        }
        Tamper::AppendToSegment(i, c) => {
            if changed.segments.is_empty() {
                changed.segments.push(String::new());
            }
            let i = i.index(changed.segments.len());
            changed.segments[i].push(*c);
            semantic(&changed)
        }
        Tamper::Query(q) => {
            changed.query = q.clone();
            semantic(&changed)
        }
        Tamper::DropQueryPair(i) => {
            if !changed.query.is_empty() {
                let i = i.index(changed.query.len());
                changed.query.remove(i);
            }
            semantic(&changed)
        }
        Tamper::HeaderValue(i, value) => {
            // Not the date or the content hash: those have their own tampers.
            let i = i.index(n_headers);
            if !matches!(
                changed.headers[i].0.as_str(),
                "x-sdk-date" | "x-sdk-content-sha256"
            ) {
                changed.headers[i].1 = value.clone();
            }
            semantic(&changed)
        }
        Tamper::HeaderPad(i, before, after) => {
            let h = &mut changed.headers[i.index(n_headers)];
            if h.0 != "x-sdk-date" {
                h.1 = format!("{before}{}{after}", h.1);
            }
            semantic(&changed)
        }
        Tamper::Body(body) => {
            changed.body = body.clone();
            semantic(&changed)
        }
        Tamper::FlipBodyBit(i, bit) => {
            if !changed.body.is_empty() {
                let i = i.index(changed.body.len());
                changed.body[i] ^= 1 << bit;
            }
            semantic(&changed)
        }
        Tamper::ContentSha(value) => {
            match changed
                .headers
                .iter_mut()
                .find(|h| h.0 == "x-sdk-content-sha256")
            {
                Some(h) => h.1 = (*value).to_owned(),
                None => changed.headers.push((
                    "x-sdk-content-sha256".to_owned(),
                    (*value).to_owned(),
                    false,
                )),
            }
            let sent_unsigned = req.header("x-sdk-content-sha256").is_none();
            let (wire, expect) = semantic(&changed);
            // An unsigned, non-empty X-Sdk-Content-Sha256 that would decide the payload
            // hash is refused as malformed.
            if sent_unsigned && !changed.body.is_empty() && !py_strip(value).is_empty() {
                (wire, Outcome::Malformed)
            } else {
                (wire, expect)
            }
        }
        Tamper::DateWithinSkew(offset) => {
            let date = sdk_date(NOW.checked_add_signed(*offset).unwrap());
            changed
                .headers
                .iter_mut()
                .find(|h| h.0 == "x-sdk-date")
                .unwrap()
                .1 = date;
            semantic(&changed)
        }
        Tamper::DateOutsideSkew(by, ahead) => {
            // Signed correctly, but too old or too far ahead.
            let at = if *ahead { NOW + by } else { NOW - by };
            changed
                .headers
                .iter_mut()
                .find(|h| h.0 == "x-sdk-date")
                .unwrap()
                .1 = sdk_date(at);
            let auth = changed.authorization(&v.ak, &v.sk);
            (changed.wire(seed, auth), Outcome::Stale)
        }
        Tamper::RemoveHeader(i) => {
            let (name, _, signed) = changed.headers.remove(i.index(n_headers));
            let expect = match (name.as_str(), signed) {
                ("x-sdk-date", _) => Outcome::Stale,
                (_, true) => Outcome::Malformed,
                (_, false) => Outcome::Verified,
            };
            (changed.wire(seed, auth), expect)
        }
        Tamper::DuplicateHeader(i, value) => {
            let (name, _, signed) = changed.headers[i.index(n_headers)].clone();
            let mut wire = changed.wire(seed, auth);
            wire.headers
                .push((name.to_ascii_uppercase(), value.clone()));
            let expect = if signed || name == "x-sdk-content-sha256" {
                Outcome::Malformed
            } else {
                Outcome::Verified
            };
            (wire, expect)
        }
        Tamper::AddUnsignedHeader(name, value) => {
            let mut wire = changed.wire(seed, auth);
            if !req.headers.iter().any(|h| &h.0 == name) {
                wire.headers.push((name.clone(), value.clone()));
            }
            (wire, Outcome::Verified)
        }
        Tamper::FlipSignatureBit(i, bit) => {
            let (head, hex_sig) = auth.rsplit_once("Signature=").unwrap();
            let mut sig = hex::decode(hex_sig).unwrap();
            sig[i.index(32)] ^= 1 << bit;
            let auth = format!("{head}Signature={}", hex::encode(sig));
            (changed.wire(seed, auth), Outcome::Mismatch)
        }
        Tamper::OtherAccessKey(ak) => {
            let expect = if *ak == v.ak {
                Outcome::Verified
            } else {
                Outcome::UnknownKey
            };
            (changed.wire(seed, req.authorization(ak, &v.sk)), expect)
        }
        Tamper::OtherSecretKey => {
            let mut sk = v.sk.clone().into_bytes();
            sk[0] ^= 1;
            let sk = String::from_utf8(sk).unwrap();
            (
                changed.wire(seed, req.authorization(&v.ak, &sk)),
                Outcome::Mismatch,
            )
        }
        Tamper::UnsignHeader(i) => {
            // Drop one name from SignedHeaders, keeping the header and the signature.
            let names = req.signed_names();
            let drop = &names[i.index(names.len())];
            let kept: Vec<&str> = names
                .iter()
                .filter(|n| *n != drop)
                .map(String::as_str)
                .collect();
            let (_, sig) = auth.rsplit_once("Signature=").unwrap();
            let auth = format!(
                "{ALGORITHM} Access={}, SignedHeaders={}, Signature={sig}",
                v.ak,
                kept.join(";")
            );
            let expect = match drop.as_str() {
                "host" | "x-sdk-date" => Outcome::Malformed,
                "x-sdk-content-sha256" if !req.body.is_empty() => Outcome::Malformed,
                _ => Outcome::Mismatch,
            };
            (changed.wire(seed, auth), expect)
        }
        Tamper::SignUnsignedHeader => {
            // Claim an unsigned header as signed, keeping the signature.
            match req.headers.iter().find(|h| !h.2) {
                Some((name, _, _)) => {
                    let mut names = req.signed_names();
                    names.push(name.clone());
                    names.sort();
                    let (_, sig) = auth.rsplit_once("Signature=").unwrap();
                    let auth = format!(
                        "{ALGORITHM} Access={}, SignedHeaders={}, Signature={sig}",
                        v.ak,
                        names.join(";")
                    );
                    (changed.wire(seed, auth), Outcome::Mismatch)
                }
                None => (changed.wire(seed, auth), Outcome::Verified),
            }
        }
    }
}

#[test]
fn aksk_signed_requests() {
    let v = Verifier::new();
    fuzz(
        "aksk/signed-requests",
        (arb_sdk_request(), any::<u64>(), arb_tamper()),
        |(req, seed, tamper)| {
            let auth = req.authorization(&v.ak, &v.sk);
            let wire = req.wire(seed, auth.clone());
            let got = v.verify(&wire);
            prop_assert_eq!(
                got.as_ref().ok(),
                Some(&v.identity),
                "a correctly signed request was refused: {:?}\n{:#?}",
                got,
                wire
            );
            let (wire, want) = tampered(&v, &req, auth, seed, &tamper);
            let got = v.verify(&wire);
            let seen = outcome(&got).map_err(TestCaseError::fail)?;
            prop_assert_eq!(seen, want, "{:?}\n{:#?}", got, wire);
            if let Ok(identity) = &got {
                prop_assert_eq!(identity, &v.identity);
            }
            Ok(())
        },
    );
}

/// The test's own signer reproduces signatures made by the official SDK
/// (`huaweicloudsdkcore` 3.1.219; the vectors of `src/auth/sdk_signature.rs`), so the
/// round trips above check the verifier against the SDK's algorithm, not against itself.
#[test]
fn aksk_test_signer_matches_sdk_vectors() {
    const AK: &str = "HPUAEXAMPLEAK0000001";
    const SK: &str = "ExampleSecretKey0123456789abcdefghijklmn";
    const DATE: &str = "20240315T093012Z";
    let s = |x: &str| x.to_owned();
    let common = |extra: &[(&str, &str, bool)]| {
        let mut h = vec![
            (
                s("user-agent"),
                s("huaweicloud-usdk-python/3.0; repocrypt-sigvec/1.0"),
                true,
            ),
            (s("content-type"), s("application/json"), true),
            (
                s("x-project-id"),
                s("0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
                true,
            ),
            (s("x-sdk-date"), s(DATE), true),
            (s("host"), s("codearts-repo.example.com"), true),
        ];
        h.extend(extra.iter().map(|(n, v, signed)| (s(n), s(v), *signed)));
        h
    };
    let cases = [
        (
            SdkRequest {
                method: s("GET"),
                segments: vec![s("v4"), s("repositories")],
                query: [
                    ("Alpha", "A~B*C'(d)!"),
                    ("_under", "x y"),
                    ("empty", ""),
                    ("filter", "a=b&c=d"),
                    ("flag", "true"),
                    ("name", "my repo/\u{3b1}+\u{3b2}"),
                    ("tag", "v1"),
                    ("tag", "v10"),
                    ("tag", "v2"),
                    ("zeta", "last"),
                ]
                .iter()
                .map(|(k, v)| (s(k), s(v)))
                .collect(),
                headers: common(&[]),
                body: Vec::new(),
            },
            "97eb50481515d337d95455c8cc7057571d2ea15615cc35ce7f80da98c38060d2",
        ),
        (
            SdkRequest {
                method: s("GET"),
                segments: [
                    "v4",
                    "tenants",
                    "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
                    "repo-encryption",
                    "setting",
                ]
                .map(s)
                .to_vec(),
                query: Vec::new(),
                headers: common(&[
                    ("x-request-id", "  req-42\t ", true),
                    ("x_not_signed", "underscore headers are skipped", false),
                    ("x-repo-label", "\u{a0}\u{3a9}mega repo\u{3000}", true),
                ]),
                body: Vec::new(),
            },
            "94c1ac5cf0d97c82830fe67f990e7acd6815e7f56fdba27256b4e75a26aff170",
        ),
        (
            SdkRequest {
                method: s("DELETE"),
                segments: [
                    "v4",
                    "tenants",
                    "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
                    "repos",
                    "grp",
                    "sub repo~\u{e9}",
                    "keys",
                ]
                .map(s)
                .to_vec(),
                query: Vec::new(),
                headers: common(&[]),
                body: Vec::new(),
            },
            "9ab17c6d6a110868c1c3fe1e8564313d829df17b3fc656acc02c164b1a0728da",
        ),
        (
            SdkRequest {
                method: s("POST"),
                segments: [
                    "v4",
                    "tenants",
                    "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
                    "repo-encryption",
                    "setting",
                ]
                .map(s)
                .to_vec(),
                query: vec![(s("dry_run"), s("false")), (s("limit"), s("10"))],
                headers: common(&[]),
                body: "{\"description\": \"Schl\\u00fcssel f\\u00fcr \\u03a9\", \"enabled\": true}"
                    .as_bytes()
                    .to_vec(),
            },
            "e993122e6257aa333c0bfbc9b288ff042a2233e13aec995e6c9c1749abaebb60",
        ),
    ];
    for (req, signature) in cases {
        let auth = req.authorization(AK, SK);
        assert!(
            auth.ends_with(&format!("Signature={signature}")),
            "{req:#?}\n{auth}"
        );
    }
}
