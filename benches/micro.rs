//! Micro-benchmarks of the per-request work that does not touch the network or the
//! database: token verification, a Keystone token answered from the IAM cache, AK/SK
//! (SDK-HMAC-SHA256) verification and PUT body parsing. `cargo bench --bench micro`;
//! docs/performance.md has the figures.

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

/// `iam = "keystone"`, a token validated once by a fake Keystone on loopback (the real one's
/// answer, shortened), then answered from the cache: what every request after a token's
/// first costs. The cached path has no await point that waits, so `now_or_never` runs it.
fn keystone_cached_validation(c: &mut Criterion) {
    use axum::routing::post;
    use futures_util::FutureExt;

    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
    // A fernet token's length (Keystone's are 180-250 characters).
    let token = format!("gAAAAABn{}", "x".repeat(200));
    let app = runtime.block_on(async {
        let expires = humantime::format_rfc3339_micros(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        )
        .to_string();
        let (login_expires, token_expires) = (expires.clone(), expires);
        let keystone = axum::Router::new().route(
            "/v3/auth/tokens",
            post(move || async move {
                (
                    axum::http::StatusCode::CREATED,
                    [("x-subject-token", "service-token")],
                    axum::Json(serde_json::json!({"token": {"expires_at": login_expires}})),
                )
            })
            .get(move || async move {
                axum::Json(serde_json::json!({"token": {
                    "expires_at": token_expires,
                    "user": {"id": "a1b2c3d4e5f60718293a4b5c6d7e8f90", "name": "alice"},
                    "roles": [{"id": "1", "name": "admin"}, {"id": "2", "name": "member"}, {"id": "3", "name": "reader"}],
                    "domain": {"id": "159b65b41ead484d8ddff250a4731781", "name": "tenant-a"},
                }}))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        tokio::spawn(async move { axum::serve(listener, keystone).await });
        let mut config = repocrypt::config::Config {
            data_dir: dir.path().to_path_buf(),
            database_url: repocrypt::config::default_database_url(dir.path()),
            iam: repocrypt::config::IamBackend::Keystone,
            iam_url: Some(format!("http://{addr}/v3")),
            iam_user: Some("repocrypt".into()),
            ..Default::default()
        };
        config.iam_password = Some("secret".to_owned().into());
        let clock: std::sync::Arc<dyn repocrypt::clock::Clock> =
            std::sync::Arc::new(repocrypt::clock::SystemClock);
        let app = repocrypt::app::App::open(config, clock).await.ok()?;
        app.auth.authenticate_token(&token).await.ok()?;
        Some(app)
    });
    let Some(app) = app else {
        eprintln!("keystone_cached_validate: the fake Keystone did not validate the token");
        return;
    };
    c.bench_function("keystone_cached_validate", |b| {
        b.iter(|| {
            app.auth
                .authenticate_token(black_box(&token))
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        })
    });
    drop(runtime);
}

criterion_group!(
    benches,
    token_verification,
    keystone_cached_validation,
    aksk_verification,
    body_parsing
);
criterion_main!(benches);
