//! Micro-benchmarks of the per-request work that does not touch the network or the
//! database: token verification, AK/SK (SDK-HMAC-SHA256) verification and PUT body
//! parsing. `cargo bench --bench micro`; docs/performance.md has the figures.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use repocrypt::auth::sdk_signature::{
    canonical_request, format_authorization, parse_authorization, payload_sha256_hex, sign,
    string_to_sign, verify,
};
use repocrypt::auth::token::TokenCodec;
use repocrypt::domain::{parse_setting_patch, Identity, Role, TenantId};
use repocrypt::keys::RootKey;

const NOW: u64 = 1_767_225_600;

fn token_verification(c: &mut Criterion) {
    let codec = TokenCodec::new(&RootKey::from_bytes([7; 32]));
    let identity = Identity {
        tenant_id: TenantId::parse("159b65b41ead484d8ddff250a4731781")
            .unwrap_or_else(|_| unreachable!()),
        user_id: "a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
        user_name: "alice".into(),
        role: Role::Admin,
        expires_at: NOW + 3600,
    };
    let token = codec.issue(&identity, NOW).unwrap_or_default();
    c.bench_function("token_verify", |b| {
        b.iter(|| codec.verify(black_box(&token), NOW).is_ok())
    });
}

fn aksk_verification(c: &mut Criterion) {
    let secret = b"0123456789abcdefghijABCDEFGHIJ0123456789";
    let body = br#"{"encryption_type":"kms","default_encryption_enabled":true,"cmk_key_id":"7e410cf0-f77d-43ec-8c3e-5d19a95a8bb4","cmk_key_name":"repo-key"}"#;
    let path = "/v4/tenants/159b65b41ead484d8ddff250a4731781/repo-encryption/setting";
    let date = "20260101T000000Z";
    let headers = [
        ("content-type", "application/json"),
        ("host", "repo.example.com"),
        ("x-sdk-date", date),
    ];
    let signed = ["content-type", "host", "x-sdk-date"];
    let payload = payload_sha256_hex(body, &headers, &signed, false).unwrap_or_default();
    let canonical =
        canonical_request("PUT", path, None, &headers, &signed, &payload).unwrap_or_default();
    let signature = sign(secret, &string_to_sign(date, &canonical));
    let authorization = format_authorization("AKIAREPOCRYPT0001", &signed, &signature);
    // Everything the server does for a signed PUT but look up the secret key.
    c.bench_function("aksk_verify_put", |b| {
        b.iter(|| {
            let auth = match parse_authorization(black_box(&authorization)) {
                Ok(a) => a,
                Err(_) => return false,
            };
            let Ok(payload) =
                payload_sha256_hex(black_box(body), &headers, &auth.signed_headers, false)
            else {
                return false;
            };
            let Ok(canonical) =
                canonical_request("PUT", path, None, &headers, &auth.signed_headers, &payload)
            else {
                return false;
            };
            verify(secret, &auth, &string_to_sign(date, &canonical))
        })
    });
}

fn body_parsing(c: &mut Criterion) {
    let body = br#"{"tenant_id":"159b65b41ead484d8ddff250a4731781","encryption_type":"kms","default_encryption_enabled":true,"cmk_key_id":"7e410cf0-f77d-43ec-8c3e-5d19a95a8bb4","cmk_key_name":"repo-key"}"#;
    c.bench_function("put_body_parse", |b| {
        b.iter(|| parse_setting_patch(black_box(body)).is_ok())
    });
}

criterion_group!(benches, token_verification, aksk_verification, body_parsing);
criterion_main!(benches);
