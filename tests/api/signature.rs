//! AK/SK request signatures through the router: what verifies, what is refused, and
//! token precedence. The canonicalisation itself is checked against vectors computed by
//! the official SDK in `src/auth/sdk_signature.rs`; `tests/sdk/` drives the real SDK.

use crate::common;

use axum::http::{Method, StatusCode};
use common::sdk::{sdk_date, Cred};
use common::*;
use repocrypt::clock::Clock;
use repocrypt::domain::{Actor, Role};
use repocrypt::store::AuditFilter;
use serde_json::Value;

async fn send_signed(
    t: &TestApp,
    method: Method,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Resp {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    t.send(method, uri, &h, body.to_vec()).await
}

fn now_date(t: &TestApp) -> String {
    sdk_date(t.clock.unix_seconds())
}

#[tokio::test]
async fn signed_requests_reach_all_five_operations() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let date = now_date(&t);
    let body = br#"{"encryption_type":"normal"}"#;
    let cases: [(Method, String, &[u8], StatusCode); 5] = [
        (Method::POST, grant_path(TENANT_A), b"", StatusCode::OK),
        (Method::GET, grant_path(TENANT_A), b"", StatusCode::ACCEPTED),
        (Method::PUT, setting_path(TENANT_A), body, StatusCode::OK),
        (
            Method::GET,
            setting_path(TENANT_A),
            b"",
            StatusCode::ACCEPTED,
        ),
        (
            Method::GET,
            "/v4/tenant/setting".into(),
            b"",
            StatusCode::OK,
        ),
    ];
    for (method, uri, body, expected) in cases {
        let headers = signed_headers(&cred, method.as_str(), &uri, body, &date, &[]);
        let (status, h, v) = send_signed(&t, method.clone(), &uri, &headers, body).await;
        assert_eq!(status, expected, "{method} {uri}: {v}");
        assert!(h.contains_key("x-request-id"));
    }
    let (_, _, v) = send_signed(
        &t,
        Method::GET,
        &setting_path(TENANT_A),
        &signed_headers(&cred, "GET", &setting_path(TENANT_A), b"", &date, &[]),
        b"",
    )
    .await;
    assert_eq!(v["encryption_type"], "normal");
    // The audit record names the credential's user.
    let audit = t
        .app
        .store
        .list_audit(&AuditFilter::tenant(&tid(TENANT_A)))
        .await
        .unwrap();
    assert!(audit
        .iter()
        .any(|r| r.action == "setting.update" && r.actor == "sdk-user"));
}

#[tokio::test]
async fn query_strings_are_part_of_the_signature() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let date = now_date(&t);
    let project = "0123456789abcdef0123456789abcdef";
    let uri = tenant_setting_path(Some(&format!("project_id={project}")));
    let headers = signed_headers(&cred, "GET", &uri, b"", &date, &[]);
    let (status, _, v) = send_signed(&t, Method::GET, &uri, &headers, b"").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}"); // signed fine; the project is unknown
    let other = "/v4/tenant/setting?project_id=ffffffffffffffffffffffffffffffff";
    let (status, _, v) = send_signed(&t, Method::GET, other, &headers, b"").await;
    assert_eq!(
        (status, v["error_code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("RC.401006"))
    );
}

async fn expect_401(
    t: &TestApp,
    method: Method,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
    code: &str,
) -> Value {
    let (status, h, v) = send_signed(t, method, uri, headers, body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error_code"], code, "{v}");
    assert!(h.contains_key("x-request-id"));
    v
}

#[tokio::test]
async fn unknown_access_key_is_401_rc401004() {
    let t = spawn_app().await;
    let fake = Cred {
        ak: "AAAAAAAAAAAAAAAAAAAA".into(),
        sk: "x".repeat(40),
    };
    let uri = grant_path(TENANT_A);
    let h = signed_headers(&fake, "GET", &uri, b"", &now_date(&t), &[]);
    expect_401(&t, Method::GET, &uri, &h, b"", "RC.401004").await;
}

#[tokio::test]
async fn wrong_secret_key_is_401_rc401006() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    // The last character changed to one it is not: the secret is random, so a fixed
    // replacement would equal the real one once in 62 runs.
    let wrong = Cred {
        ak: cred.ak.clone(),
        sk: flip_char(&cred.sk, cred.sk.len() - 1),
    };
    assert_ne!(wrong.sk, cred.sk);
    let uri = grant_path(TENANT_A);
    let h = signed_headers(&wrong, "GET", &uri, b"", &now_date(&t), &[]);
    let v = expect_401(&t, Method::GET, &uri, &h, b"", "RC.401006").await;
    assert!(
        !v["error_msg"].as_str().unwrap().contains(&cred.sk),
        "no secret in errors"
    );
}

#[tokio::test]
async fn a_body_changed_after_signing_is_401_and_writes_nothing() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = setting_path(TENANT_A);
    let signed_body = br#"{"encryption_type":"normal"}"#;
    let h = signed_headers(&cred, "PUT", &uri, signed_body, &now_date(&t), &[]);
    let sent = br#"{"encryption_type":"NORMAL"}"#;
    expect_401(&t, Method::PUT, &uri, &h, sent, "RC.401006").await;
    assert!(t
        .app
        .store
        .get_setting(&tid(TENANT_A))
        .await
        .unwrap()
        .is_none());
    // A changed method or path fails too.
    expect_401(&t, Method::GET, &uri, &h, signed_body, "RC.401006").await;
    expect_401(
        &t,
        Method::PUT,
        &setting_path(TENANT_B),
        &h,
        signed_body,
        "RC.401006",
    )
    .await;
}

#[tokio::test]
async fn stale_or_future_dates_are_401_rc401005() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = grant_path(TENANT_A);
    let now = t.clock.unix_seconds();
    for (date, ok) in [
        (sdk_date(now - 15 * 60), true),
        (sdk_date(now + 15 * 60), true),
        (sdk_date(now - 15 * 60 - 1), false),
        (sdk_date(now + 15 * 60 + 1), false),
        ("20260101T000000".to_owned(), false),
        ("not a date".to_owned(), false),
    ] {
        let h = signed_headers(&cred, "GET", &uri, b"", &date, &[]);
        if ok {
            let (status, _, v) = send_signed(&t, Method::GET, &uri, &h, b"").await;
            assert_eq!(status, StatusCode::ACCEPTED, "{date}: {v}");
        } else {
            expect_401(&t, Method::GET, &uri, &h, b"", "RC.401005").await;
        }
    }
}

#[tokio::test]
async fn the_replay_window_is_configurable() {
    let t = spawn_app_with(|c| c.signature_max_skew = std::time::Duration::from_secs(60)).await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = grant_path(TENANT_A);
    let date = now_date(&t);
    let h = signed_headers(&cred, "GET", &uri, b"", &date, &[]);
    let (status, _, _) = send_signed(&t, Method::GET, &uri, &h, b"").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    t.clock.advance(std::time::Duration::from_secs(61));
    expect_401(&t, Method::GET, &uri, &h, b"", "RC.401005").await;
}

#[tokio::test]
async fn a_replayed_nonce_is_401_rc401007() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = grant_path(TENANT_A);
    let date = now_date(&t);
    let h = signed_headers(&cred, "POST", &uri, b"", &date, &[("x-sdk-nonce", "n-1")]);
    let (status, _, _) = send_signed(&t, Method::POST, &uri, &h, b"").await;
    assert_eq!(status, StatusCode::OK);
    expect_401(&t, Method::POST, &uri, &h, b"", "RC.401007").await;
    // Another nonce is fine; an unsigned nonce is refused.
    let h2 = signed_headers(&cred, "POST", &uri, b"", &date, &[("x-sdk-nonce", "n-2")]);
    assert_eq!(
        send_signed(&t, Method::POST, &uri, &h2, b"").await.0,
        StatusCode::OK
    );
    let mut h3 = signed_headers(&cred, "POST", &uri, b"", &date, &[]);
    h3.push(("x-sdk-nonce".into(), "n-3".into()));
    expect_401(&t, Method::POST, &uri, &h3, b"", "RC.401003").await;
    // Nonces are bounded, so the replay table cannot be used to exhaust memory.
    let long = "n".repeat(129);
    let h4 = signed_headers(&cred, "POST", &uri, b"", &date, &[("x-sdk-nonce", &long)]);
    expect_401(&t, Method::POST, &uri, &h4, b"", "RC.401003").await;
    let max = "m".repeat(128);
    let h5 = signed_headers(&cred, "POST", &uri, b"", &date, &[("x-sdk-nonce", &max)]);
    assert_eq!(
        send_signed(&t, Method::POST, &uri, &h5, b"").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_authorization_is_401_rc401003() {
    let t = spawn_app().await;
    let uri = grant_path(TENANT_A);
    let date = now_date(&t);
    for auth in [
        "Bearer abc",
        "SDK-HMAC-SHA256",
        "SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;x-sdk-date, Signature=zz",
        "SDK-HMAC-SM3 Access=AK, SignedHeaders=host;x-sdk-date, Signature=00",
        // host is not signed
        "SDK-HMAC-SHA256 Access=AK, SignedHeaders=x-sdk-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let h = vec![
            ("host".to_owned(), SIGNED_HOST.to_owned()),
            ("x-sdk-date".to_owned(), date.clone()),
            ("authorization".to_owned(), auth.to_owned()),
        ];
        expect_401(&t, Method::GET, &uri, &h, b"", "RC.401003").await;
    }
    let huge = vec![("authorization".to_owned(), "x".repeat(100_000))];
    expect_401(&t, Method::GET, &uri, &huge, b"", "RC.401003").await;
}

#[tokio::test]
async fn a_deleted_credential_stops_working() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = grant_path(TENANT_A);
    let h = signed_headers(&cred, "GET", &uri, b"", &now_date(&t), &[]);
    assert_eq!(
        send_signed(&t, Method::GET, &uri, &h, b"").await.0,
        StatusCode::ACCEPTED
    );
    t.app
        .credentials
        .delete(&cred.ak, &Actor::cli())
        .await
        .unwrap();
    expect_401(&t, Method::GET, &uri, &h, b"", "RC.401004").await;
    let audit = t
        .app
        .store
        .list_audit(&AuditFilter::tenant(&tid(TENANT_A)))
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["credential.create", "credential.delete"]);
    let dump = serde_json::to_string(
        &audit
            .iter()
            .map(|r| (&r.before, &r.after))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!dump.contains(&cred.sk), "the secret is never audited");
}

#[tokio::test]
async fn signed_callers_get_the_same_authorization_rules() {
    let t = spawn_app().await;
    let member = t.credential(TENANT_A, "sdk-user", Role::Member).await;
    let date = now_date(&t);
    let uri = grant_path(TENANT_A);
    let h = signed_headers(&member, "POST", &uri, b"", &date, &[]);
    let (status, _, v) = send_signed(&t, Method::POST, &uri, &h, b"").await;
    assert_eq!(
        (status, v["error_code"].as_str()),
        (StatusCode::FORBIDDEN, Some("RC.403001"))
    );
    let other = grant_path(TENANT_B);
    let h = signed_headers(&member, "GET", &other, b"", &date, &[]);
    let (status, _, v) = send_signed(&t, Method::GET, &other, &h, b"").await;
    assert_eq!(
        (status, v["error_code"].as_str()),
        (StatusCode::FORBIDDEN, Some("CH.004403"))
    );
}

#[tokio::test]
async fn x_auth_token_takes_precedence_over_a_signature() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = grant_path(TENANT_A);
    let date = now_date(&t);
    // A valid token with a garbage signature: the token decides, 202.
    let mut h = vec![
        (
            "authorization".to_owned(),
            "SDK-HMAC-SHA256 garbage".to_owned(),
        ),
        (
            "x-auth-token".to_owned(),
            t.token(TENANT_A, "alice", Role::Admin),
        ),
    ];
    assert_eq!(
        send_signed(&t, Method::GET, &uri, &h, b"").await.0,
        StatusCode::ACCEPTED
    );
    // A valid signature with a bad token: the token decides, 401 RC.401002.
    h = signed_headers(&cred, "GET", &uri, b"", &date, &[]);
    h.push(("x-auth-token".into(), "rc1.bad.token".into()));
    expect_401(&t, Method::GET, &uri, &h, b"", "RC.401002").await;
}

#[tokio::test]
async fn signed_bodies_over_64_kib_are_413() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = setting_path(TENANT_A);
    let body = format!(r#"{{"cmk_key_id":"{}"}}"#, "x".repeat(70_000));
    let h = signed_headers(&cred, "PUT", &uri, body.as_bytes(), &now_date(&t), &[]);
    let (status, _, v) = send_signed(&t, Method::PUT, &uri, &h, body.as_bytes()).await;
    assert_eq!(
        (status, v["error_code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("RC.413001"))
    );
}

#[tokio::test]
async fn each_access_key_has_its_own_rate_limit() {
    let t = spawn_app_with(|c| {
        c.rate_limit_per_tenant = 0;
        c.rate_limit_per_credential = 1;
    })
    .await;
    let first = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let second = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = grant_path(TENANT_A);
    let h = signed_headers(&first, "GET", &uri, b"", &now_date(&t), &[]);
    for _ in 0..2 {
        assert_eq!(
            send_signed(&t, Method::GET, &uri, &h, b"").await.0,
            StatusCode::ACCEPTED
        );
    }
    let (status, headers, body) = send_signed(&t, Method::GET, &uri, &h, b"").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error_code"], "RC.429002");
    assert_eq!(headers["retry-after"], "1");
    // The same user's other access key is another credential.
    let h = signed_headers(&second, "GET", &uri, b"", &now_date(&t), &[]);
    assert_eq!(
        send_signed(&t, Method::GET, &uri, &h, b"").await.0,
        StatusCode::ACCEPTED
    );
}

/// Every operation of the route table is served at its method and path, counted under its
/// label in `/metrics`, in the OpenAPI document with that method and operation id when it
/// is an API operation (and only then), and an API operation wants a token or a verified
/// signature. So a route renamed or added in one place only fails here.
#[tokio::test]
async fn every_route_in_the_table_is_served_documented_counted_and_authenticated() {
    use std::collections::HashMap;

    use repocrypt::http::routes::{Verb, ROUTES};

    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let wrong = Cred {
        ak: cred.ak.clone(),
        sk: flip_char(&cred.sk, cred.sk.len() - 1),
    };
    let token = t.admin(TENANT_A);
    // The platform's operations are a service principal's, on a tenant that encrypts.
    use repocrypt::metrics::Operation;
    t.configure_kms(TENANT_A).await;
    let (made, secret) = t
        .app
        .credentials
        .create_service("sweep", &repocrypt::domain::Actor::cli())
        .await
        .unwrap();
    let service_cred = Cred {
        ak: made.access_key,
        sk: secret.expose().to_owned(),
    };
    let service_token = {
        use repocrypt::clock::Clock;
        let now = t.clock.unix_seconds();
        let id = repocrypt::domain::Identity::service("sweep", now + 3600).unwrap();
        t.app.tokens.issue(&id, now).unwrap()
    };
    // A rewrap job to read (nothing to rewrap: it is finished at once).
    let (job, _) = t
        .app
        .service
        .start_rewrap(&repocrypt::domain::Actor::cli(), &tid(TENANT_A))
        .await
        .unwrap();
    let job_id = job.job_id;
    let mut sent: HashMap<&str, u64> = HashMap::new();
    *sent.entry("UpdateTenantRepoEncryptionSetting").or_default() += 1; // configure_kms's PUT
    let (status, _, doc) = t.send(Method::GET, "/openapi.json", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    *sent.entry("openapi").or_default() += 1;
    for route in &ROUTES {
        let method = route.method.method();
        let uri = route
            .path
            .replace("{tenant_id}", TENANT_A)
            .replace("{repo_id}", "1")
            .replace("{job_id}", &job_id)
            .replace("{key_id}", "some-key");
        let platform = matches!(
            route.operation,
            Operation::RegisterRepository
                | Operation::ShowDataKey
                | Operation::DeleteDataKey
                | Operation::Events
        );
        let (cred, token) = if platform {
            (&service_cred, &service_token)
        } else {
            (&cred, &token)
        };
        let body: &[u8] = match (route.method, platform) {
            // KMS again (the key configured above): the repository registered below is
            // encrypted, so that its data key can be released and destroyed.
            (Verb::Put, _) => br#"{"encryption_type":"KMS"}"#,
            (Verb::Post, true) => br#"{"repo_id":1,"repo_name":"r","full_path":"g/r"}"#,
            (Verb::Get | Verb::Post | Verb::Delete, _) => b"",
        };
        let what = format!("{method} {} ({})", route.path, route.id);
        let documented = &doc["paths"][route.path][method.as_str().to_ascii_lowercase()];
        if !route.is_api() {
            assert!(documented.is_null(), "{what} is documented: {documented}");
            let (status, _, v) = t.send(method, &uri, &[], "").await;
            assert!(status.is_success(), "{what}: {status} {v}");
            *sent.entry(route.id).or_default() += 1;
            continue;
        }
        assert_eq!(documented["operationId"], route.id, "{what}: {documented}");
        assert_eq!(
            documented["security"],
            serde_json::json!([{ "X-Auth-Token": [] }, { "SDK-HMAC-SHA256": [] }]),
            "{what}"
        );
        let json = [("content-type", "application/json")];
        let anonymous = t.send(method.clone(), &uri, &json, body.to_vec()).await;
        assert_error(&anonymous, StatusCode::UNAUTHORIZED, "RC.401001", &[]);
        // Refused as a bad signature, not as missing credentials: the signature was checked.
        let h = signed_headers(&wrong, method.as_str(), &uri, body, &now_date(&t), &[]);
        expect_401(&t, method.clone(), &uri, &h, body, "RC.401006").await;
        let h = signed_headers(cred, method.as_str(), &uri, body, &now_date(&t), &[]);
        let (status, _, v) = send_signed(&t, method.clone(), &uri, &h, body).await;
        assert!(status.is_success(), "{what} signed: {status} {v}");
        let with_token = [("x-auth-token", token.as_str()), json[0]];
        let (status, _, v) = t.send(method, &uri, &with_token, body.to_vec()).await;
        assert!(status.is_success(), "{what} with a token: {status} {v}");
        *sent.entry(route.id).or_default() += 4;
    }
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                ROUTES.iter().any(|r| r.is_api()
                    && r.path == path
                    && r.method.method().as_str().eq_ignore_ascii_case(method)
                    && operation["operationId"] == r.id),
                "{method} {path} is documented but not in the route table"
            );
        }
    }
    // The scrape counts itself only after it is answered.
    let (status, _, text) = t.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    for route in &ROUTES {
        let series = format!(
            "repocrypt_http_request_duration_seconds_count{{operation=\"{}\"}} ",
            route.id
        );
        let counted = text
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok());
        assert_eq!(counted, Some(sent[route.id]), "{}: {text}", route.id);
    }
}

/// HEAD is answered by a GET operation's handler, and is that operation: its signature is
/// checked too.
#[tokio::test]
async fn a_signed_head_request_is_verified_like_its_get() {
    let t = spawn_app().await;
    let cred = t.credential(TENANT_A, "sdk-user", Role::Admin).await;
    let uri = setting_path(TENANT_A);
    let h = signed_headers(&cred, "HEAD", &uri, b"", &now_date(&t), &[]);
    let (status, _, _) = send_signed(&t, Method::HEAD, &uri, &h, b"").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let wrong = Cred {
        ak: cred.ak.clone(),
        sk: flip_char(&cred.sk, cred.sk.len() - 1),
    };
    let h = signed_headers(&wrong, "HEAD", &uri, b"", &now_date(&t), &[]);
    let (status, _, _) = send_signed(&t, Method::HEAD, &uri, &h, b"").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
