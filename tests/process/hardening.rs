//! Limits, rate limits, `/metrics`, `/readyz` and TLS: in-process where the router alone
//! decides, with the real binary where the accept loop does (connections, request heads,
//! timeouts, TLS).

use crate::common;
use crate::common::binary;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::json;

use common::*;
use repocrypt::domain::Role;

fn code(body: &serde_json::Value) -> &str {
    body["error_code"].as_str().unwrap_or("")
}

// ---- limits the router enforces ----------------------------------------------------------

#[tokio::test]
async fn bodies_over_the_configured_limit_get_413_naming_it() {
    let t = spawn_app_with(|c| c.max_body_bytes = 2048).await;
    let admin = t.admin(TENANT_A);
    let big = format!(r#"{{"cmk_key_name":"{}"}}"#, "x".repeat(3000));
    let (status, _, body) = t
        .put_raw(TENANT_A, &admin, Some("application/json"), big)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(code(&body), "RC.413001");
    assert!(
        body["error_msg"].as_str().unwrap().contains("2048"),
        "{body}"
    );
    // The default is the API's 64 KiB.
    let t = spawn_app().await;
    let admin = t.admin(TENANT_A);
    let big = format!(r#"{{"cmk_key_name":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, _, _) = t
        .put_raw(TENANT_A, &admin, Some("application/json"), big)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn json_nested_deeper_than_the_limit_is_refused_before_parsing() {
    let t = spawn_app_with(|c| c.json_max_depth = 4).await;
    let admin = t.admin(TENANT_A);
    let deep = |n: usize| format!(r#"{{"tenant_id":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
    let (status, _, body) = t
        .put_raw(TENANT_A, &admin, Some("application/json"), deep(4))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("deeper than 4"),
        "{body}"
    );
    // Within the limit, the parser answers (tenant_id must be a string).
    let (status, _, body) = t
        .put_raw(TENANT_A, &admin, Some("application/json"), deep(3))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        !body["error_msg"].as_str().unwrap().contains("deeper"),
        "{body}"
    );
    // 30,000 levels (far past serde_json's own limit) is a clean 400 too.
    let t = spawn_app().await;
    let admin = t.admin(TENANT_A);
    let (status, _, body) = t
        .put_raw(TENANT_A, &admin, Some("application/json"), deep(30_000))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error_msg"]
            .as_str()
            .unwrap()
            .contains("deeper than 32"),
        "{body}"
    );
}

#[tokio::test]
async fn tokens_and_authorization_headers_over_the_limit_get_401() {
    let t = spawn_app_with(|c| c.max_token_bytes = 1024).await;
    let long = "A".repeat(1025);
    let (status, _, body) = t
        .send(
            Method::GET,
            &setting_path(TENANT_A),
            &[("X-Auth-Token", &long)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "RC.401002");
    assert!(
        body["error_msg"].as_str().unwrap().contains("longer"),
        "{body}"
    );
    let authorization = format!("SDK-HMAC-SHA256 Access={long}, SignedHeaders=host, Signature=00");
    let (status, _, body) = t
        .send(
            Method::GET,
            &setting_path(TENANT_A),
            &[("Authorization", &authorization)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), "RC.401003");
    assert!(
        body["error_msg"].as_str().unwrap().contains("1024"),
        "{body}"
    );
    // A real token is far below the default limit.
    let admin = t.admin(TENANT_A);
    assert_eq!(
        t.get_setting(TENANT_A, &admin).await.0,
        StatusCode::ACCEPTED
    );
}

// ---- rate limits -----------------------------------------------------------------------

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let t = spawn_app_with(|c| {
        c.rate_limit_per_tenant = 1;
        c.rate_limit_per_credential = 0;
    })
    .await;
    let alice = t.admin(TENANT_A);
    let bob = t.token(TENANT_A, "bob", Role::Member);
    // The bucket holds two seconds' worth: two requests pass, whoever sends them.
    assert_eq!(
        t.get_setting(TENANT_A, &alice).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(t.get_grant(TENANT_A, &bob).await.0, StatusCode::ACCEPTED);
    let (status, headers, body) = t.get_setting(TENANT_A, &bob).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(code(&body), "RC.429001");
    assert_eq!(headers["retry-after"], "1");
    assert!(headers.contains_key("x-request-id"));
    // Writes are limited too, and change nothing.
    let before = t.snapshot(TENANT_A).await;
    let (status, _, _) = t
        .put_setting(TENANT_A, &alice, &json!({"encryption_type": "Normal"}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(t.snapshot(TENANT_A).await, before);
    // Another tenant has its own bucket.
    let other = t.admin(TENANT_B);
    assert_eq!(
        t.get_setting(TENANT_B, &other).await.0,
        StatusCode::ACCEPTED
    );
    // The bucket refills at the rate (on the app's clock, which stands still until moved):
    // one request a second.
    t.clock.advance(Duration::from_millis(999));
    assert_eq!(
        t.get_setting(TENANT_A, &alice).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    t.clock.advance(Duration::from_millis(1));
    assert_eq!(
        t.get_setting(TENANT_A, &alice).await.0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn a_credential_over_its_rate_gets_429_while_the_tenants_other_users_go_on() {
    let t = spawn_app_with(|c| {
        c.rate_limit_per_tenant = 0;
        c.rate_limit_per_credential = 1;
    })
    .await;
    let alice = t.admin(TENANT_A);
    let bob = t.token(TENANT_A, "bob", Role::Member);
    assert_eq!(
        t.get_setting(TENANT_A, &alice).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        t.get_setting(TENANT_A, &alice).await.0,
        StatusCode::ACCEPTED
    );
    let (status, headers, body) = t.get_setting(TENANT_A, &alice).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&body), "RC.429002");
    assert_eq!(headers["retry-after"], "1");
    // A second token of the same user is the same credential.
    let alice_again = t.token(TENANT_A, &admin_user(TENANT_A), Role::Admin);
    assert_eq!(
        t.get_setting(TENANT_A, &alice_again).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(t.get_setting(TENANT_A, &bob).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_user_over_their_own_rate_does_not_use_up_the_tenants() {
    let t = spawn_app_with(|c| {
        c.rate_limit_per_tenant = 2; // a bucket of 4
        c.rate_limit_per_credential = 1; // a bucket of 2
    })
    .await;
    let alice = t.admin(TENANT_A);
    let bob = t.token(TENANT_A, "bob", Role::Member);
    let mut served = 0;
    for _ in 0..20 {
        if t.get_setting(TENANT_A, &alice).await.0 == StatusCode::ACCEPTED {
            served += 1;
        }
    }
    assert_eq!(served, 2);
    // Alice's 18 refusals took nothing from the tenant: two requests are left for Bob.
    assert_eq!(t.get_setting(TENANT_A, &bob).await.0, StatusCode::ACCEPTED);
    assert_eq!(t.get_setting(TENANT_A, &bob).await.0, StatusCode::ACCEPTED);
    // Now the tenant's bucket is empty, for a third user too.
    let carol = t.token(TENANT_A, "carol", Role::Member);
    let (status, _, body) = t.get_setting(TENANT_A, &carol).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&body), "RC.429001");
}

#[tokio::test]
async fn a_rate_of_zero_turns_the_limits_off() {
    let t = spawn_app_with(|c| {
        c.rate_limit_per_tenant = 0;
        c.rate_limit_per_credential = 0;
    })
    .await;
    let alice = t.admin(TENANT_A);
    for _ in 0..300 {
        assert_eq!(
            t.get_setting(TENANT_A, &alice).await.0,
            StatusCode::ACCEPTED
        );
    }
}

#[tokio::test]
async fn the_default_rates_are_far_above_a_normal_client() {
    let t = spawn_app().await;
    assert_eq!(t.app.config.rate_limits().per_tenant, 1000);
    assert_eq!(t.app.config.rate_limits().per_credential, 500);
    let alice = t.admin(TENANT_A);
    // A burst of 500 requests at once is admitted.
    for _ in 0..500 {
        assert_eq!(
            t.get_setting(TENANT_A, &alice).await.0,
            StatusCode::ACCEPTED
        );
    }
}

// ---- metrics ---------------------------------------------------------------------------

async fn scrape(t: &TestApp) -> String {
    let (status, headers, body) = t.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    body.as_str().expect("metrics are text").to_owned()
}

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_count_requests_kms_calls_caches_and_rejections() {
    let t = spawn_app_with(|c| {
        c.rate_limit_per_tenant = 1;
        c.key_state_cache_ttl = Duration::from_secs(60);
    })
    .await;
    let admin = t.admin(TENANT_A);
    let key = t.kms_ready(TENANT_A).await; // a key and a grant, made without requests
    let (status, _, body) = t
        .put_setting(
            TENANT_A,
            &admin,
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        t.get_setting(TENANT_A, &admin).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        t.get_setting(TENANT_A, &admin).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    t.send(Method::GET, "/nowhere", &[], "").await;
    let text = scrape(&t).await;
    let ops = "repocrypt_http_requests_total{operation=";
    assert_eq!(
        value(
            &text,
            &format!("{ops}\"UpdateTenantRepoEncryptionSetting\",status=\"200\"}}")
        ),
        1,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("{ops}\"ShowTenantRepoEncryptionSetting\",status=\"429\"}}")
        ),
        1
    );
    assert_eq!(value(&text, &format!("{ops}\"other\",status=\"404\"}}")), 1);
    assert_eq!(
        value(
            &text,
            "repocrypt_http_request_duration_seconds_count{operation=\"UpdateTenantRepoEncryptionSetting\"}"
        ),
        1
    );
    assert!(
        value(
            &text,
            "repocrypt_kms_calls_total{call=\"describe_key\",outcome=\"ok\"}"
        ) >= 1
    );
    assert_eq!(
        value(&text, "repocrypt_cache_hits_total{cache=\"key_state\"}"),
        1,
        "{text}"
    );
    assert_eq!(
        value(&text, "repocrypt_rate_limited_total{scope=\"tenant\"}"),
        1
    );
    assert!(text.contains("repocrypt_cache_hits_total{cache=\"key_state\"}"));
    // Nothing of the request's data is a label.
    assert!(!text.contains(TENANT_A));
    assert!(!text.contains(&key.key_id));
}

// ---- readiness -------------------------------------------------------------------------

#[tokio::test]
async fn readyz_reports_the_database_and_the_kms() {
    let t = spawn_app().await;
    let (status, _, body) = t.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "ready", "database": "ok", "kms": "ok", "iam": "ok"})
    );
}

#[tokio::test]
async fn readyz_fails_while_the_database_is_unreachable_and_recovers() {
    let Some(url) = test_database_url() else {
        assert!(
            std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
            "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
        );
        eprintln!("skipped: REPOCRYPT_TEST_DATABASE_URL is not set (this test cuts a PostgreSQL connection)");
        return;
    };
    let database = fresh_postgres_database(&url).await;
    let hostport = crate::common::pg_hostport(&database);
    let relay = crate::common::proxy::FaultProxy::start(&hostport);
    let relayed = relay.rewrite(&database, &hostport);
    let t = spawn_app_with(|c| c.database_url = relayed.clone()).await;
    let ready = || async { t.send(Method::GET, "/readyz", &[], "").await };
    assert_eq!(ready().await.0, StatusCode::OK);
    relay.set(crate::common::proxy::Fault::Reset); // the database "goes away"
    t.clock.advance(Duration::from_millis(1100)); // past the reuse window
    let (status, _, body) = ready().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unready");
    assert_eq!(body["database"], "unreachable");
    relay.set(crate::common::proxy::Fault::Pass);
    // The pool reconnects in real time; each probe is past the reuse window.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        t.clock.advance(Duration::from_millis(1100));
        let (status, _, body) = ready().await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "still unready: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[test]
fn readyz_fails_while_the_kms_is_unreachable() {
    // An AWS KMS endpoint where nothing listens: the KMS is down from the start.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = binary::Server::start(&[
        ("REPOCRYPT_KMS_BACKEND", "aws"),
        ("REPOCRYPT_KMS_ENDPOINT", &endpoint),
        ("REPOCRYPT_KMS_REGION", "us-east-1"),
        ("REPOCRYPT_KMS_TIMEOUT", "300ms"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]);
    let (status, body) = http(&server.addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""kms":"unreachable""#), "{body}");
    assert!(body.contains(r#""database":"ok""#), "{body}");
    server.log_with("readiness: KMS unreachable");
    // Liveness does not depend on the KMS.
    let (status, _) = http(&server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
}

#[test]
fn every_line_is_written_out_before_the_server_exits() {
    // Logs are buffered (and written out every 20 ms): a stop must not lose the tail.
    let mut server = binary::Server::start(&[]);
    for i in 0..50 {
        let request =
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: flush-{i}\r\n\r\n");
        let (status, _) = http(&server.addr, &request);
        assert_eq!(status, 200);
    }
    assert_eq!(server.terminate(), Some(0));
    let log = server.log();
    for i in 0..50 {
        assert!(
            log.contains(&format!("flush-{i} ")),
            "no access line for flush-{i}:\n{log}"
        );
    }
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("repocrypt stopped"), "last line: {last}");
}

// ---- what the accept loop enforces (the real binary) ----------------------------------

/// One request on a fresh connection; the status and the whole response text.
fn http(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let text = read_response(&mut s);
    (status_of(&text), text)
}

fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Read one response (head and a Content-Length body).
fn read_response(s: &mut impl Read) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).into_owned(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn request_heads_over_the_limit_get_431() {
    let server = binary::Server::start(&[]);
    let big = "a".repeat(40 * 1024);
    let (status, _) = http(
        &server.addr,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    );
    assert_eq!(status, 431);
    // Under the 32 KiB default, fine.
    let ok = "a".repeat(20 * 1024);
    let (status, _) = http(
        &server.addr,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {ok}\r\n\r\n"),
    );
    assert_eq!(status, 200);
}

#[test]
fn a_stalled_body_gets_408_after_the_request_timeout() {
    // (db_timeout must be shorter than the request timeout.)
    let server = binary::Server::start(&[
        ("REPOCRYPT_REQUEST_TIMEOUT", "1s"),
        ("REPOCRYPT_DB_TIMEOUT", "500ms"),
    ]);
    let token = binary::stdout(&server.cli(&[
        "token", "issue", "--tenant", "t1", "--user", "u", "--role", "admin",
    ]));
    let start = Instant::now();
    let (status, body) = http(
        &server.addr,
        &format!(
            "PUT /v4/tenants/t1/repo-encryption/setting HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"encryption",
            token.trim()
        ),
    );
    let took = start.elapsed();
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("RC.408001"), "{body}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let (status, body) = http(
        &server.addr,
        &format!(
            "GET /v4/tenants/t1/repo-encryption/setting HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\n\r\n",
            token.trim()
        ),
    );
    assert_eq!(status, 202, "{body}");
}

/// One request on a fresh connection, and everything the server sends until it closes the
/// connection (or 5 s pass): the status, the response's head and the rest.
fn until_closed(addr: &str, request: &[u8]) -> (u16, String, Duration) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    (status_of(&text), text, start.elapsed())
}

fn head_has(text: &str, header: &str) -> bool {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().any(|l| l.eq_ignore_ascii_case(header))
}

fn has_request_id(text: &str) -> bool {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with("x-request-id: "))
}

/// `/metrics` of a real server.
fn scrape_binary(addr: &str) -> String {
    let (status, text) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{text}");
    text
}

#[test]
fn requests_malformed_as_http_get_400_with_the_json_error_and_a_request_id() {
    let server = binary::Server::start(&[("REPOCRYPT_LOG", "debug")]);
    for (request, needle) in [
        ("GET /healthz HTTP/1.1\r\n\r\n", "needs a Host header"),
        // Unmatched routes too: the edge comes before the router.
        ("GET /nowhere HTTP/1.1\r\n\r\n", "needs a Host header"),
        (
            "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "more than one Host header",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
            "not a host name or address",
        ),
        (
            "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "only Transfer-Encoding accepted is chunked",
        ),
    ] {
        let (status, text, _) = until_closed(&server.addr, request.as_bytes());
        assert_eq!(status, 400, "{request:?}: {text}");
        assert!(text.contains(r#""error_code":"RC.400015""#), "{text}");
        assert!(text.contains(needle), "{request:?}: {text}");
        assert!(has_request_id(&text), "{text}");
        assert!(head_has(&text, "connection: close"), "{text}");
    }
    // The caller's request id is echoed, as on every answer.
    let (_, text, _) = until_closed(
        &server.addr,
        b"GET /healthz HTTP/1.1\r\nX-Request-Id: no-host-1\r\n\r\n",
    );
    assert!(head_has(&text, "x-request-id: no-host-1"), "{text}");
    // HTTP/1.0 predates Host; an empty Host is what a target without authority sends.
    let (status, text, _) = until_closed(&server.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "{text}");
    let (status, _) = http(&server.addr, "GET /healthz HTTP/1.1\r\nHost:\r\n\r\n");
    assert_eq!(status, 200);
    let text = scrape_binary(&server.addr);
    let refused = |reason: &str| {
        value(
            &text,
            &format!("repocrypt_http_requests_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("no_host"), 3, "{text}");
    assert_eq!(refused("bad_host"), 2, "{text}");
    assert_eq!(refused("framing"), 1, "{text}");
    // Logged at debug only: no refusal reaches the log at info or above.
    let log = server.log_with("reason=no_host");
    assert!(
        log.lines()
            .filter(|l| l.contains("refused"))
            .all(|l| l.contains(" DEBUG ")),
        "{log}"
    );
}

#[test]
fn a_body_declared_over_the_limit_gets_413_at_once_and_the_connection_closed() {
    let server = binary::Server::start(&[("REPOCRYPT_LOG", "warn")]);
    let token = binary::stdout(&server.cli(&[
        "token", "issue", "--tenant", "t1", "--user", "u", "--role", "admin",
    ]));
    for (target, extra) in [
        (
            "PUT /v4/tenants/t1/repo-encryption/setting",
            format!(
                "X-Auth-Token: {}\r\nContent-Type: application/json\r\n",
                token.trim()
            ),
        ),
        ("POST /nowhere", String::new()),
        // An Expect: 100-continue client is told before it sends anything.
        (
            "PUT /v4/tenants/t1/repo-encryption/setting",
            "Expect: 100-continue\r\n".to_owned(),
        ),
    ] {
        // The head only; then what would be the body is another request, which must not
        // be answered (the body is never read, the connection is closed).
        let request = format!(
            "{target} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 65537\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let (status, text, took) = until_closed(&server.addr, request.as_bytes());
        assert_eq!(status, 413, "{target}: {text}");
        assert!(text.contains(r#""error_code":"RC.413001""#), "{text}");
        assert!(text.contains("65536 bytes"), "{text}");
        assert!(has_request_id(&text), "{text}");
        assert!(head_has(&text, "connection: close"), "{text}");
        assert!(!text.contains("100 Continue"), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        // Not after the request timeout (10 s): at once, and closed at once.
        assert!(took < Duration::from_secs(2), "{target}: {took:?}");
    }
    // At the limit, the body is read and the handler answers.
    let body = format!(r#"{{"cmk_key_name":"{}"}}"#, "x".repeat(65536 - 19));
    assert_eq!(body.len(), 65536);
    let (status, text) = http(
        &server.addr,
        &format!(
            "PUT /v4/tenants/t1/repo-encryption/setting HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{body}",
            token.trim()
        ),
    );
    assert_eq!(status, 400, "{text}");
    assert!(!text.contains("RC.413001"), "{text}");
    let text = scrape_binary(&server.addr);
    assert_eq!(
        value(
            &text,
            "repocrypt_http_requests_refused_total{reason=\"body_too_large\"}"
        ),
        3,
        "{text}"
    );
    // Nothing about them in the log at warn.
    assert!(!server.log().contains("413"), "{}", server.log());
}

#[test]
fn malformed_heads_get_hypers_bare_answer_and_are_counted() {
    let server = binary::Server::start(&[("REPOCRYPT_MAX_HEADER_BYTES", "131072")]);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(140_000)
    );
    let cases: Vec<(&str, &str, u16)> = vec![
        (
            "space before colon",
            "GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
            400,
        ),
        (
            "bad header name",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX(A: 1\r\n\r\n",
            400,
        ),
        (
            "obs-fold",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
            400,
        ),
        (
            "two lengths",
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
        (
            "negative length",
            "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            "xchunked",
            "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            400,
        ),
        (
            "chunked in 1.0",
            "POST /healthz HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("HTTP/1.2", "GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 400),
        (
            "bad method",
            "G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        ("long target", &long_target, 414),
        ("big head", &big_head, 431),
    ];
    for (what, request, expected) in &cases {
        let (status, text, _) = until_closed(&server.addr, request.as_bytes());
        assert_eq!(status, *expected, "{what}: {text}");
        // hyper's own answer: empty, closed, no request id (README's error table says so).
        assert!(head_has(&text, "content-length: 0"), "{what}: {text}");
        assert!(head_has(&text, "connection: close"), "{what}: {text}");
        assert!(!has_request_id(&text), "{what}: {text}");
    }
    // Counted as the connection ends, just after the answer.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = scrape_binary(&server.addr);
        let parse = value(
            &text,
            "repocrypt_http_requests_refused_total{reason=\"parse\"}",
        );
        let large = value(
            &text,
            "repocrypt_http_requests_refused_total{reason=\"head_too_large\"}",
        );
        if (parse, large) == (9, 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "parse {parse}, head_too_large {large}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The access line of the request `id` (the server writes its log out within 20 ms).
fn access_line_of(server: &binary::Server, id: &str) -> String {
    let needle = format!("request_id={id} ");
    let log = server.log_with(&needle);
    log.lines()
        .find(|l| l.contains(&needle) && l.contains(" INFO request "))
        .unwrap_or_else(|| panic!("no access line for {id}:\n{log}"))
        .to_owned()
}

#[tokio::test]
async fn a_write_whose_client_went_away_is_in_the_log_as_in_the_audit_trail() {
    use sqlx::Connection;
    let server = binary::Server::start(&[]);
    let token = binary::stdout(&server.cli(&[
        "token", "issue", "--tenant", "t1", "--user", "u", "--role", "admin",
    ]));
    // Hold SQLite's write lock, so that the PUT waits in its commit (up to db_timeout,
    // 2 s) while its client goes away.
    let db = format!(
        "sqlite://{}",
        server
            .dir
            .path()
            .join("repocrypt-data/repocrypt.db")
            .display()
    );
    let mut lock = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let body = r#"{"encryption_type":"Normal","default_encryption_enabled":false}"#;
    let request = format!(
        "PUT /v4/tenants/t1/repo-encryption/setting HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-put-1\r\nX-Auth-Token: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    let mut client = TcpStream::connect(&server.addr).unwrap();
    client.write_all(request.as_bytes()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client); // the client hangs up before the answer
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await.unwrap();
    lock.close().await.unwrap();
    // The write went on to its end: its line names what was done, and that the client left.
    let line = access_line_of(&server, "gone-put-1");
    assert!(line.contains(" method=PUT "), "{line}");
    assert!(line.contains(" status=200 "), "{line}");
    assert!(line.ends_with(" client_closed=true"), "{line}");
    // ...and the audit trail has the change.
    let audit = binary::stdout(&server.cli(&["audit", "list", "--tenant", "t1"]));
    assert!(audit.contains(r#""request_id":"gone-put-1""#), "{audit}");
    // A write whose client stays has no such field.
    let (status, _) = http(&server.addr, &request.replace("gone-put-1", "stayed-put-1"));
    assert_eq!(status, 200);
    let line = access_line_of(&server, "stayed-put-1");
    assert!(!line.contains("client_closed"), "{line}");
    let text = scrape_binary(&server.addr);
    assert_eq!(
        value(
            &text,
            "repocrypt_http_requests_client_closed_total{operation=\"UpdateTenantRepoEncryptionSetting\"}"
        ),
        1,
        "{text}"
    );
}

#[test]
fn a_read_whose_client_went_away_is_logged_as_499() {
    // A KMS that accepts connections and never answers: /readyz waits for it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let server = binary::Server::start(&[
        ("REPOCRYPT_KMS_BACKEND", "aws"),
        ("REPOCRYPT_KMS_ENDPOINT", &endpoint),
        ("REPOCRYPT_KMS_REGION", "us-east-1"),
        ("REPOCRYPT_KMS_TIMEOUT", "2s"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]);
    let mut client = TcpStream::connect(&server.addr).unwrap();
    client
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-get-1\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(client);
    let line = access_line_of(&server, "gone-get-1");
    assert!(
        line.contains(" method=GET route=/readyz status=499 "),
        "{line}"
    );
    assert!(line.ends_with(" client_closed=true"), "{line}");
    let text = scrape_binary(&server.addr);
    assert_eq!(
        value(
            &text,
            "repocrypt_http_requests_client_closed_total{operation=\"readyz\"}"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "repocrypt_http_requests_total{operation=\"readyz\",status=\"499\"}"
        ),
        1,
        "{text}"
    );
    drop(silent);
}

fn config_file(server_dir: &std::path::Path, text: &str) -> String {
    let path = server_dir.join("limits.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), "header_read_timeout = \"1s\"\n");
    let server = binary::Server::start(&[("REPOCRYPT_CONFIG", &config)]);
    let closed_within = |mut s: TcpStream, what: &str| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        // Closed (end of stream), possibly after hyper's own 408 for a timed-out head.
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{what}: got data"
            ),
            Err(e) => panic!("{what}: not closed: {e}"),
        }
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
    };
    // Half a request head, then nothing (slowloris).
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    closed_within(s, "partial head");
    // A keep-alive connection that goes quiet after a request.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&read_response(&mut s)), 200);
    closed_within(s, "idle keep-alive");
    // The half head is a refused request; the quiet keep-alive connection is not.
    let (status, metrics) = http(
        &server.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("repocrypt_http_requests_refused_total{reason=\"header_timeout\"}"))
        .unwrap_or_else(|| panic!("no header_timeout series:\n{metrics}"));
    assert!(refused.ends_with(" 1"), "{refused}");
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let server = binary::Server::start(&[("REPOCRYPT_MAX_CONNECTIONS", "2")]);
    let first = TcpStream::connect(&server.addr).unwrap();
    let _second = TcpStream::connect(&server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&server.addr).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        third.read(&mut buf).is_err(),
        "a third connection was served while two were open"
    );
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(status_of(&read_response(&mut third)), 200);
}

#[test]
fn connections_are_spread_over_the_connection_threads() {
    let server = binary::Server::start(&[("REPOCRYPT_CONNECTION_THREADS", "3")]);
    // Each connection thread by name, with how often it has slept and been woken (an idle
    // event loop sleeps until one of its connections has something to read).
    let threads = || -> std::collections::BTreeMap<String, u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap();
        tasks
            .filter_map(|t| {
                let dir = t.unwrap().path();
                let name = std::fs::read_to_string(dir.join("comm")).ok()?;
                let name = name.trim().to_owned();
                if !name.starts_with("connection-") {
                    return None;
                }
                let status = std::fs::read_to_string(dir.join("status")).ok()?;
                let woken = status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name, woken))
            })
            .collect()
    };
    // The threads start with the accept loop, just after the server says it listens: once
    // it has answered, they are there.
    let (status, _) = http(
        &server.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    // Once the thread that served it has closed that connection and gone back to sleep.
    let mut before = threads();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let again = threads();
        if again == before {
            break;
        }
        before = again;
    }
    assert_eq!(
        before.len(),
        3,
        "the setting names how many threads serve connections: {before:?}"
    );
    // Six keep-alive connections open at once, each answered, then each answered again on
    // the same connection (served where it was first placed).
    let mut open: Vec<TcpStream> = (0..6)
        .map(|_| TcpStream::connect(&server.addr).unwrap())
        .collect();
    for _ in 0..2 {
        for c in &mut open {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        for c in &mut open {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(status_of(&read_response(c)), 200);
        }
    }
    // Every thread took a share: each was woken to serve one.
    let after = threads();
    for (name, woken) in &before {
        assert!(
            after[name] > *woken,
            "{name} served none of six connections: before {before:?}, after {after:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection() {
    use tokio::io::AsyncWriteExt;
    let server = binary::Server::start(&[
        ("REPOCRYPT_MAX_CONNECTIONS", "1"),
        ("REPOCRYPT_REQUEST_TIMEOUT", "1s"),
        ("REPOCRYPT_DB_TIMEOUT", "500ms"),
    ]);
    // Thousands of pipelined requests for a large answer, a tiny receive window, and no
    // reading: the server's writes stall once the socket buffers are full.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    let requests = "GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    slow.write_all(requests.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The only connection slot is the stalled client's until its write stall passes the
    // request timeout; then the next client is served.
    let addr = server.addr.clone();
    let start = Instant::now();
    let (status, _) = tokio::task::spawn_blocking(move || {
        http(&addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "the stalled connection kept the only slot");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    drop(slow);
}

#[test]
fn bad_limit_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        ("max_body_bytes = 100000\n", "max_body_bytes"),
        ("max_header_bytes = 100\n", "max_header_bytes"),
        ("max_header_bytes = 300000\n", "max_header_bytes"),
        ("json_max_depth = 0\n", "json_max_depth"),
        ("request_timeout = \"0s\"\n", "request_timeout"),
        ("max_connections = 0\n", "max_connections"),
        ("tls_cert = \"/nonexistent.pem\"\n", "tls_key"),
    ] {
        let config = config_file(dir.path(), text);
        let out = binary::cli_in(
            dir.path(),
            &["--config", &config, "serve", "--listen", "127.0.0.1:0"],
        );
        assert!(!out.status.success(), "{text}");
        let err = binary::stderr(&out);
        assert!(err.contains(needle), "{text}: {err}");
    }
}

// ---- TLS -------------------------------------------------------------------------------

fn fixture(name: &str) -> String {
    format!("{}/tests/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn serve_terminates_tls_with_the_given_certificate() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = binary::Server::start(&[
        ("REPOCRYPT_TLS_CERT", &fixture("server.pem")),
        ("REPOCRYPT_TLS_KEY", &fixture("server.key")),
    ]);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the test CA");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = binary::cli_in(
        dir.path(),
        &[
            "--tls-cert",
            &fixture("server.pem"),
            "--tls-key",
            &fixture("other.key"),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!out.status.success());
    let err = binary::stderr(&out);
    assert!(err.contains("do not make a usable pair"), "{err}");
    let out = binary::cli_in(
        dir.path(),
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            &fixture("server.key"),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!out.status.success());
    assert!(binary::stderr(&out).contains("/nonexistent/cert.pem"));
}
