//! In-process API tests: every test drives `App::router()` with `tower::ServiceExt::oneshot`
//! on its own temp directory, database, root key and manual clock.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::{json, Value};

use common::*;
use repocrypt::domain::{PermitPublic, Role};
use repocrypt::kms::KeyOrigin;

const SEED_SETTING_FIELDS: [&str; 9] = [
    "cmk_key_id",
    "cmk_key_name",
    "default_encryption_enabled",
    "encryption_type",
    "id",
    "key_state",
    "region",
    "region_type",
    "tenant_id",
];

/// Method, uri, headers, body and expected status of a request that must fail.
type ErrorCase<'a> = (
    Method,
    String,
    Vec<(&'a str, &'a str)>,
    &'static str,
    StatusCode,
);

/// Path, method, operationId, success status, success schema, every documented status.
type OpSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// The five `/v4` operations on `tenant`: method, uri, body.
fn operations(tenant: &str) -> Vec<(Method, String, &'static str)> {
    vec![
        (
            Method::PUT,
            setting_path(tenant),
            r#"{"encryption_type":"normal"}"#,
        ),
        (Method::GET, setting_path(tenant), ""),
        (Method::POST, grant_path(tenant), ""),
        (Method::GET, grant_path(tenant), ""),
        (Method::GET, "/v4/tenant/setting".to_owned(), ""),
    ]
}

/// Send each of the five operations on TENANT_A with `token` (or none).
async fn each_operation(t: &TestApp, token: Option<&str>) -> Vec<(String, Resp)> {
    let mut out = Vec::new();
    for (method, uri, body) in operations(TENANT_A) {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(tok) = token {
            headers.push(("x-auth-token", tok));
        }
        let label = format!("{method} {uri}");
        out.push((label, t.send(method, &uri, &headers, body).await));
    }
    out
}

// =====================================================================================
// 1. Every operation's success shape
// =====================================================================================

#[tokio::test]
async fn put_setting_returns_200_with_every_seed_field_and_json_type() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({
                "cmk_key_id": key.key_id,
                "cmk_key_name": "repo-key",
                "default_encryption_enabled": true,
                "encryption_type": "KMS",
                "tenant_id": TENANT_A,
            }),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(
        r.1.get("content-type").unwrap().to_str().unwrap(),
        "application/json"
    );
    let b = &r.2;
    assert_eq!(keys_of(b), SEED_SETTING_FIELDS);
    assert!(b["id"].is_u64(), "id must be an integer: {b}");
    let id = b["id"].as_u64().unwrap();
    assert!((1..=2_147_483_647).contains(&id), "id {id}");
    assert_eq!(b["tenant_id"], TENANT_A);
    assert_eq!(b["encryption_type"], "KMS");
    assert_eq!(b["default_encryption_enabled"], true);
    assert_eq!(b["cmk_key_id"], key.key_id.as_str());
    assert_eq!(b["cmk_key_name"], "repo-key");
    assert!(b["key_state"].is_u64(), "key_state must be an integer: {b}");
    assert_eq!(b["key_state"], 2);
    assert_eq!(b["region"], REGION);
    assert_eq!(b["region_type"], REGION_TYPE);
}

#[tokio::test]
async fn get_setting_returns_202_with_what_put_returned() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let put = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        )
        .await;
    assert_eq!(put.0, StatusCode::OK, "{}", put.2);
    let get = t.get_setting(TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(get.0, StatusCode::ACCEPTED, "{}", get.2);
    assert_eq!(get.2, put.2);
    assert_eq!(keys_of(&get.2), SEED_SETTING_FIELDS);
    assert_eq!(get.2["default_encryption_enabled"], false);
}

#[tokio::test]
async fn get_setting_of_a_never_configured_tenant_is_202_with_null_type_and_no_id_or_key_fields() {
    let t = spawn_app().await;
    let r = t.get_setting(TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(
        r.2,
        json!({
            "tenant_id": TENANT_A,
            "encryption_type": null,
            "default_encryption_enabled": false,
            "region": REGION,
            "region_type": REGION_TYPE,
        })
    );
}

#[tokio::test]
async fn put_normal_setting_returns_normal_and_no_key_fields() {
    let t = spawn_app().await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "Normal"}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(
        keys_of(&r.2),
        [
            "default_encryption_enabled",
            "encryption_type",
            "id",
            "region",
            "region_type",
            "tenant_id"
        ]
    );
    assert_eq!(r.2["encryption_type"], "normal");
    assert_eq!(r.2["default_encryption_enabled"], false);
}

#[tokio::test]
async fn region_and_region_type_come_from_the_configuration() {
    let t = spawn_app_with(|c| {
        c.region = "eu-west-101".into();
        c.region_type = "secondary".into();
    })
    .await;
    let r = t.get_setting(TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED);
    assert_eq!(r.2["region"], "eu-west-101");
    assert_eq!(r.2["region_type"], "secondary");
}

#[tokio::test]
async fn post_kms_grant_returns_200_with_tenant_id_and_assumed_true() {
    let t = spawn_app().await;
    let r = t.post_grant(TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2, json!({"tenant_id": TENANT_A, "assumed": true}));
}

#[tokio::test]
async fn get_kms_grant_after_a_grant_returns_202_assumed_true() {
    let t = spawn_app().await;
    assert_eq!(
        t.post_grant(TENANT_A, &t.admin(TENANT_A)).await.0,
        StatusCode::OK
    );
    let r = t.get_grant(TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(r.2, json!({"tenant_id": TENANT_A, "assumed": true}));
}

#[tokio::test]
async fn get_kms_grant_before_any_grant_returns_202_assumed_false() {
    let t = spawn_app().await;
    let r = t.get_grant(TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(r.2, json!({"tenant_id": TENANT_A, "assumed": false}));
}

#[tokio::test]
async fn tenant_setting_returns_200_with_exactly_the_seed_fields() {
    let t = spawn_app().await;
    let r = t.tenant_setting(&t.admin(TENANT_A), None).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(
        r.2,
        json!({"default_encryption_enabled": false, "encryption_type": null, "permit_public": "deny"})
    );
    t.configure_kms(TENANT_A).await;
    let r = t.tenant_setting(&t.admin(TENANT_A), None).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(
        r.2,
        json!({"default_encryption_enabled": true, "encryption_type": "KMS", "permit_public": "deny"})
    );
}

// =====================================================================================
// 2. X-Request-Id
// =====================================================================================

#[tokio::test]
async fn request_id_is_echoed_on_every_operation() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    for (method, uri, body) in operations(TENANT_A) {
        let r = t
            .send(
                method.clone(),
                &uri,
                &[
                    ("x-auth-token", &token),
                    ("content-type", "application/json"),
                    ("x-request-id", "req-0123456789abcdef"),
                ],
                body,
            )
            .await;
        assert!(r.0.is_success(), "{method} {uri}: {} {}", r.0, r.2);
        assert_eq!(
            r.1.get("x-request-id").unwrap(),
            "req-0123456789abcdef",
            "{method} {uri}"
        );
    }
}

#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let a = t.get_setting(TENANT_A, &token).await;
    let b = t.get_setting(TENANT_A, &token).await;
    let ida =
        a.1.get("x-request-id")
            .expect("generated id")
            .to_str()
            .unwrap();
    let idb =
        b.1.get("x-request-id")
            .expect("generated id")
            .to_str()
            .unwrap();
    assert!(!ida.is_empty());
    assert!(!idb.is_empty());
    assert_ne!(ida, idb, "each request gets its own id");
}

#[tokio::test]
async fn request_id_is_present_on_401_404_405_and_400() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let cases: Vec<ErrorCase> = vec![
        (
            Method::GET,
            setting_path(TENANT_A),
            vec![],
            "",
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/v4/no/such/route".into(),
            vec![("x-auth-token", token.as_str())],
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            setting_path(TENANT_A),
            vec![("x-auth-token", token.as_str())],
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::PUT,
            setting_path(TENANT_A),
            vec![
                ("x-auth-token", token.as_str()),
                ("content-type", "application/json"),
            ],
            "{",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, uri, headers, body, status) in cases {
        // generated
        let r = t.send(method.clone(), &uri, &headers, body).await;
        assert_eq!(r.0, status, "{method} {uri}: {}", r.2);
        let generated = r.1.get("x-request-id").expect("X-Request-Id on error");
        assert!(!generated.is_empty());
        // echoed
        let mut with_id = headers.clone();
        with_id.push(("x-request-id", "err-req-42"));
        let r = t.send(method.clone(), &uri, &with_id, body).await;
        assert_eq!(r.0, status);
        assert_eq!(
            r.1.get("x-request-id").unwrap(),
            "err-req-42",
            "{method} {uri}"
        );
    }
}

#[tokio::test]
async fn unusable_request_id_is_replaced_by_a_generated_one() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let too_long = "r".repeat(129);
    for bad in [too_long.as_str(), "has space"] {
        let r = t
            .send(
                Method::GET,
                &setting_path(TENANT_A),
                &[("x-auth-token", &token), ("x-request-id", bad)],
                Body::empty(),
            )
            .await;
        assert_eq!(r.0, StatusCode::ACCEPTED);
        let id = r.1.get("x-request-id").unwrap().to_str().unwrap();
        assert!(!id.is_empty());
        assert_ne!(id, bad);
    }
}

// =====================================================================================
// 3. POST kms-grant bodies and idempotency
// =====================================================================================

#[tokio::test]
async fn kms_grant_with_empty_body_and_json_content_type_succeeds() {
    let t = spawn_app().await;
    let r = t
        .send(
            Method::POST,
            &grant_path(TENANT_A),
            &[
                ("x-auth-token", &t.admin(TENANT_A)),
                ("content-type", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2, json!({"tenant_id": TENANT_A, "assumed": true}));
}

#[tokio::test]
async fn kms_grant_ignores_a_garbage_body() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    for (ct, body) in [
        ("application/json", "{not json at all"),
        ("text/plain", "garbage"),
        ("application/json", "[1,2,3]"),
    ] {
        let r = t
            .send(
                Method::POST,
                &grant_path(TENANT_A),
                &[("x-auth-token", &token), ("content-type", ct)],
                body,
            )
            .await;
        assert_eq!(r.0, StatusCode::OK, "{ct} {body}: {}", r.2);
        assert_eq!(r.2, json!({"tenant_id": TENANT_A, "assumed": true}));
    }
}

#[tokio::test]
async fn kms_grant_is_idempotent_and_keeps_the_first_grantor() {
    let t = spawn_app().await;
    let first = t.token(TENANT_A, "alice", Role::Admin);
    let second = t.token(TENANT_A, "bob", Role::Admin);
    assert_eq!(t.post_grant(TENANT_A, &first).await.0, StatusCode::OK);
    let r = t.post_grant(TENANT_A, &second).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2, json!({"tenant_id": TENANT_A, "assumed": true}));
    let g = t.get_grant(TENANT_A, &first).await;
    assert_eq!(g.0, StatusCode::ACCEPTED);
    assert_eq!(g.2["assumed"], true);
    let audit = t.audit_of(TENANT_A, "kms_grant.create").await;
    assert_eq!(audit.len(), 2, "one record per successful POST");
    assert_eq!(audit[0].actor, "alice");
    assert_eq!(audit[1].actor, "bob");
    assert_eq!(audit[1].after.as_ref().unwrap()["granted_by"], "alice");
}

// =====================================================================================
// 4. Merge semantics and ids
// =====================================================================================

#[tokio::test]
async fn put_with_only_default_flag_keeps_key_id_name_and_type() {
    let t = spawn_app().await;
    let key = t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    for flag in [false, true] {
        let r = t
            .put_setting(
                TENANT_A,
                &token,
                &json!({"default_encryption_enabled": flag}),
            )
            .await;
        assert_eq!(r.0, StatusCode::OK, "{}", r.2);
        assert_eq!(r.2["encryption_type"], "KMS");
        assert_eq!(r.2["cmk_key_id"], key.key_id.as_str());
        assert_eq!(r.2["cmk_key_name"], "repo-key");
        assert_eq!(r.2["default_encryption_enabled"], flag);
    }
}

#[tokio::test]
async fn null_fields_keep_the_stored_values() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let before = t.get_setting(TENANT_A, &token).await.2;
    let r = t
        .put_setting(
            TENANT_A,
            &token,
            &json!({
                "tenant_id": null,
                "encryption_type": null,
                "default_encryption_enabled": null,
                "cmk_key_name": null,
                "cmk_key_id": null,
            }),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2, before);
    assert_eq!(t.get_setting(TENANT_A, &token).await.2, before);
}

#[tokio::test]
async fn put_with_only_a_key_id_keeps_type_and_default_flag() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let other = t.create_key(TENANT_A, "second-key").await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"cmk_key_id": other.key_id}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["encryption_type"], "KMS");
    assert_eq!(r.2["default_encryption_enabled"], true);
    assert_eq!(r.2["cmk_key_id"], other.key_id.as_str());
    assert_eq!(
        r.2["cmk_key_name"], "second-key",
        "name follows the new key"
    );
}

#[tokio::test]
async fn id_is_assigned_on_first_write_and_stable_afterwards() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let first = t
        .put_setting(TENANT_A, &token, &json!({"encryption_type": "normal"}))
        .await;
    assert_eq!(first.0, StatusCode::OK);
    let id = first.2["id"].as_u64().expect("integer id");
    assert!(id >= 1);
    for body in [
        json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        json!({"default_encryption_enabled": true}),
        json!({"encryption_type": "normal"}),
    ] {
        let r = t.put_setting(TENANT_A, &token, &body).await;
        assert_eq!(r.0, StatusCode::OK, "{body}: {}", r.2);
        assert_eq!(r.2["id"].as_u64(), Some(id), "{body}");
    }
    assert_eq!(
        t.get_setting(TENANT_A, &token).await.2["id"].as_u64(),
        Some(id)
    );
}

#[tokio::test]
async fn ids_of_two_tenants_differ_and_are_within_the_seed_range() {
    let t = spawn_app().await;
    let mut ids = Vec::new();
    for tenant in [TENANT_A, TENANT_B] {
        let r = t
            .put_setting(
                tenant,
                &t.admin(tenant),
                &json!({"encryption_type": "normal"}),
            )
            .await;
        assert_eq!(r.0, StatusCode::OK);
        let id = r.2["id"].as_i64().expect("integer id");
        assert!((1..=2_147_483_647).contains(&id), "id {id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

/// Updates must not consume ids: the id space (1..2147483647) is for tenants, not writes.
#[tokio::test]
async fn updates_do_not_consume_record_ids() {
    let t = spawn_app().await;
    let put = |tenant: &'static str| {
        let t = &t;
        async move {
            let r = t
                .put_setting(
                    tenant,
                    &t.admin(tenant),
                    &json!({"encryption_type": "normal"}),
                )
                .await;
            assert_eq!(r.0, StatusCode::OK);
            r.2["id"].as_i64().expect("integer id")
        }
    };
    let first = put(TENANT_A).await;
    for _ in 0..5 {
        assert_eq!(put(TENANT_A).await, first);
    }
    assert_eq!(
        put(TENANT_B).await,
        first + 1,
        "five updates consumed no ids"
    );
}

// =====================================================================================
// 5. Body tenant_id
// =====================================================================================

#[tokio::test]
async fn body_tenant_id_that_differs_from_the_path_is_400_rc400003_and_writes_nothing() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let get_before = t.get_setting(TENANT_A, &token).await.2;
    let snap = t.snapshot(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &token,
            &json!({"tenant_id": TENANT_B, "encryption_type": "normal"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400003", &["tenant_id"]);
    assert_eq!(t.snapshot(TENANT_A).await, snap);
    assert_eq!(t.get_setting(TENANT_A, &token).await.2, get_before);
    assert_eq!(t.snapshot(TENANT_B).await.setting, None);
}

#[tokio::test]
async fn body_tenant_id_equal_to_the_path_is_accepted() {
    let t = spawn_app().await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"tenant_id": TENANT_A, "encryption_type": "normal"}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["tenant_id"], TENANT_A);
}

// =====================================================================================
// 6. Lengths
// =====================================================================================

#[tokio::test]
async fn empty_string_fields_are_400_naming_the_field() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    for field in ["cmk_key_id", "cmk_key_name", "tenant_id"] {
        let r = t.put_setting(TENANT_A, &token, &json!({ field: "" })).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &[field, "empty"]);
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn strings_of_1001_chars_are_400_naming_the_field() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    let long = "x".repeat(1001);
    for field in ["cmk_key_id", "cmk_key_name", "tenant_id"] {
        let r = t
            .put_setting(TENANT_A, &token, &json!({ field: long }))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &[field, "1000"]);
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn cmk_key_id_of_1000_chars_passes_the_length_check_and_is_key_not_found() {
    let t = spawn_app().await;
    let id = "k".repeat(1000);
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "normal", "cmk_key_id": id}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400008", &["not found"]);
}

#[tokio::test]
async fn cmk_key_name_of_1000_chars_passes_the_length_check_and_is_a_name_mismatch() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id, "cmk_key_name": "n".repeat(1000)}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400010", &["cmk_key_name"]);
}

#[tokio::test]
async fn tenant_id_of_1000_chars_is_accepted_in_path_token_and_body() {
    let t = spawn_app().await;
    let tenant = "t".repeat(1000);
    let r = t
        .put_setting(
            &tenant,
            &t.admin(&tenant),
            &json!({"tenant_id": tenant, "encryption_type": "normal"}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["tenant_id"], tenant.as_str());
    // a 1000-char body tenant_id that is not the path's is a mismatch, not a length error
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"tenant_id": tenant, "encryption_type": "normal"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400003", &["tenant_id"]);
}

#[tokio::test]
async fn lengths_count_characters_not_bytes() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let ok = "é".repeat(1000); // 2000 bytes
    let r = t
        .put_setting(
            TENANT_A,
            &token,
            &json!({"encryption_type": "normal", "cmk_key_id": ok}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400008", &[]);
    let too_long = "é".repeat(1001);
    let r = t
        .put_setting(TENANT_A, &token, &json!({"cmk_key_id": too_long}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &["cmk_key_id"]);
}

// =====================================================================================
// 7. encryption_type values
// =====================================================================================

#[tokio::test]
async fn encryption_type_is_case_insensitive_and_output_is_canonical() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let token = t.admin(TENANT_A);
    for (input, output) in [
        ("kms", "KMS"),
        ("Normal", "normal"),
        ("Kms", "KMS"),
        ("NORMAL", "normal"),
        ("KMS", "KMS"),
        ("normal", "normal"),
    ] {
        let body = if output == "KMS" {
            json!({"encryption_type": input, "cmk_key_id": key.key_id})
        } else {
            json!({"encryption_type": input})
        };
        let r = t.put_setting(TENANT_A, &token, &body).await;
        assert_eq!(r.0, StatusCode::OK, "{input}: {}", r.2);
        assert_eq!(r.2["encryption_type"], output, "{input}");
        let g = t.get_setting(TENANT_A, &token).await;
        assert_eq!(g.2["encryption_type"], output, "{input}");
        let ts = t.tenant_setting(&token, None).await;
        assert_eq!(ts.2["encryption_type"], output, "{input}");
    }
}

#[tokio::test]
async fn unknown_encryption_type_is_400_rc400002() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    for bad in ["AES", "", "KMS ", "none"] {
        let r = t
            .put_setting(TENANT_A, &token, &json!({"encryption_type": bad}))
            .await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "RC.400002",
            &["encryption_type"],
        );
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

// =====================================================================================
// 8. Malformed bodies
// =====================================================================================

#[tokio::test]
async fn malformed_json_is_400_rc400001_and_writes_nothing() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    let bodies: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        br#"{"encryption_type":}"#.to_vec(),
        b"not json".to_vec(),
        br#"{"encryption_type":"normal"} trailing"#.to_vec(),
        br#"{'encryption_type':'normal'}"#.to_vec(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
    ];
    for body in bodies {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let r = t
            .put_raw(TENANT_A, &token, Some("application/json"), body)
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400001", &["JSON"]);
        assert!(!r.0.is_server_error(), "{shown}");
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn deeply_nested_json_is_400_not_a_crash() {
    let t = spawn_app().await;
    let body = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let r = t
        .put_raw(TENANT_A, &t.admin(TENANT_A), Some("application/json"), body)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400001", &[]);
}

#[tokio::test]
async fn wrong_json_types_are_400_rc400002_naming_the_field() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    for (field, value) in [
        ("cmk_key_id", json!(5)),
        ("cmk_key_id", json!({})),
        ("cmk_key_name", json!(true)),
        ("tenant_id", json!(1)),
        ("encryption_type", json!(1)),
        ("encryption_type", json!(["KMS"])),
        ("default_encryption_enabled", json!("true")),
        ("default_encryption_enabled", json!(1)),
    ] {
        let r = t
            .put_setting(TENANT_A, &token, &json!({ field: value }))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &[field]);
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn non_object_bodies_are_400_rc400001() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    for body in ["[]", "\"x\"", "1", "null", "true"] {
        let r = t
            .put_raw(TENANT_A, &token, Some("application/json"), body)
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400001", &["JSON object"]);
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn empty_body_is_400_rc400001() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    for body in ["", "   \n"] {
        let r = t
            .put_raw(TENANT_A, &token, Some("application/json"), body)
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400001", &["empty"]);
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn unknown_field_is_400_rc400001_naming_it() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    for (body, name) in [
        (json!({"encryption_type": "normal", "bogus": 1}), "bogus"),
        (json!({"Encryption_Type": "normal"}), "Encryption_Type"),
        (json!({"key_state": 2}), "key_state"),
    ] {
        let r = t.put_setting(TENANT_A, &token, &body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400001", &[name]);
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn body_over_64_kib_is_413_rc413001_and_writes_nothing() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    let big = json!({"cmk_key_id": "x".repeat(70_000)}).to_string();
    let r = t
        .put_raw(TENANT_A, &token, Some("application/json"), big)
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "RC.413001", &["65536"]);
    // one byte over: valid JSON padded with spaces
    let mut just_over = r#"{"encryption_type":"normal"}"#.to_owned();
    just_over.push_str(&" ".repeat(64 * 1024 + 1 - just_over.len()));
    let r = t
        .put_raw(TENANT_A, &token, Some("application/json"), just_over)
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "RC.413001", &[]);
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn body_of_exactly_64_kib_is_not_refused_for_its_size() {
    let t = spawn_app().await;
    let mut body = r#"{"encryption_type":"normal"}"#.to_owned();
    body.push_str(&" ".repeat(64 * 1024 - body.len()));
    assert_eq!(body.len(), 65_536);
    let r = t
        .put_raw(TENANT_A, &t.admin(TENANT_A), Some("application/json"), body)
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
}

#[tokio::test]
async fn wrong_or_missing_content_type_on_put_is_415_rc415001() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    let body = r#"{"encryption_type":"normal"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("json"),
        Some(""),
    ] {
        let r = t.put_raw(TENANT_A, &token, ct, body).await;
        assert_error(
            &r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "RC.415001",
            &["Content-Type"],
        );
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn json_content_type_variants_are_accepted() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ] {
        let r = t
            .put_raw(
                TENANT_A,
                &token,
                Some(ct),
                r#"{"encryption_type":"normal"}"#,
            )
            .await;
        assert_eq!(r.0, StatusCode::OK, "{ct}: {}", r.2);
    }
}

#[tokio::test]
async fn odd_path_tenant_ids_are_4xx_never_5xx() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    for tenant in ["%ZZ", "%FF%FE", "%00", "a%2Fb", "%20", ""] {
        for (method, uri) in [
            (Method::GET, setting_path(tenant)),
            (Method::PUT, setting_path(tenant)),
            (Method::POST, grant_path(tenant)),
            (Method::GET, grant_path(tenant)),
        ] {
            let r = t
                .send(
                    method.clone(),
                    &uri,
                    &[
                        ("x-auth-token", &token),
                        ("content-type", "application/json"),
                    ],
                    r#"{"encryption_type":"normal"}"#,
                )
                .await;
            assert!(r.0.is_client_error(), "{method} {uri}: {} {}", r.0, r.2);
            assert!(r.2["error_code"].is_string(), "{method} {uri}: {}", r.2);
        }
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

// =====================================================================================
// 9. KMS rules
// =====================================================================================

#[tokio::test]
async fn kms_without_a_key_id_is_400_rc400006() {
    let t = spawn_app().await;
    t.grant(TENANT_A).await;
    let snap = t.snapshot(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400006", &["cmk_key_id"]);
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn kms_without_the_grant_is_400_rc400007_mentioning_kms_grant() {
    let t = spawn_app().await;
    let key = t.create_key(TENANT_A, "repo-key").await;
    let snap = t.snapshot(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &["kms-grant"]);
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn unknown_key_is_400_rc400008() {
    let t = spawn_app().await;
    t.grant(TENANT_A).await;
    let snap = t.snapshot(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS", "cmk_key_id": "7308c1b8-557f-453a-aef7-28643f49cf1e"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "RC.400008",
        &["7308c1b8-557f-453a-aef7-28643f49cf1e", "not found"],
    );
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn key_of_another_tenant_is_400_rc400008_and_not_revealed() {
    let t = spawn_app().await;
    t.grant(TENANT_A).await;
    let foreign = t.create_key(TENANT_B, "b-secret-alias").await;
    for kind in CALLERS {
        // (an AK/SK caller's credential is an audited change: made before the snapshot)
        let caller = t.admin_as(kind, TENANT_A).await;
        let snap = t.snapshot(TENANT_A).await;
        let unknown_id = "00000000-0000-4000-8000-000000000000";
        for body_type in ["KMS", "normal"] {
            let r = t
                .put_setting_as(
                    &caller,
                    TENANT_A,
                    &json!({"encryption_type": body_type, "cmk_key_id": foreign.key_id}),
                )
                .await;
            assert_error(&r, StatusCode::BAD_REQUEST, "RC.400008", &["not found"]);
            let text = r.2.to_string();
            for secret in ["b-secret-alias", TENANT_B, "enabled", "state"] {
                assert!(!text.contains(secret), "leaks `{secret}`: {text}");
            }
            // indistinguishable from a key that does not exist anywhere
            let u = t
                .put_setting_as(
                    &caller,
                    TENANT_A,
                    &json!({"encryption_type": body_type, "cmk_key_id": unknown_id}),
                )
                .await;
            assert_eq!(u.0, r.0);
            assert_eq!(
                r.2["error_msg"]
                    .as_str()
                    .unwrap()
                    .replace(&foreign.key_id, "<id>"),
                u.2["error_msg"]
                    .as_str()
                    .unwrap()
                    .replace(unknown_id, "<id>")
            );
        }
        // also when the name is guessed right
        let r = t
            .put_setting_as(
                &caller,
                TENANT_A,
                &json!({"encryption_type": "KMS", "cmk_key_id": foreign.key_id, "cmk_key_name": "b-secret-alias"}),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400008", &[]);
        assert_eq!(t.snapshot(TENANT_A).await, snap, "{kind:?}");
    }
}

async fn assert_key_state_refused(t: &TestApp, key_id: &str, state_text: &str) {
    let snap = t.snapshot(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS", "cmk_key_id": key_id}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "RC.400009",
        &[key_id, state_text],
    );
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn disabled_key_is_400_rc400009_naming_the_state() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    t.disable_key(TENANT_A, &key.key_id).await;
    assert_key_state_refused(&t, &key.key_id, "disabled").await;
}

#[tokio::test]
async fn pending_deletion_key_is_400_rc400009() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    t.schedule_deletion(TENANT_A, &key.key_id, 7).await;
    assert_key_state_refused(&t, &key.key_id, "pending deletion").await;
}

#[tokio::test]
async fn pending_import_key_is_400_rc400009() {
    let t = spawn_app().await;
    t.grant(TENANT_A).await;
    let key = t
        .create_key_with(TENANT_A, "ext-key", KeyOrigin::External, false)
        .await;
    assert_key_state_refused(&t, &key.key_id, "pending import").await;
}

#[tokio::test]
async fn to_be_activated_key_is_400_rc400009() {
    let t = spawn_app().await;
    t.grant(TENANT_A).await;
    let key = t
        .create_key_with(TENANT_A, "new-key", KeyOrigin::Kms, true)
        .await;
    assert_key_state_refused(&t, &key.key_id, "to be activated").await;
}

#[tokio::test]
async fn cmk_key_name_is_filled_in_from_kms_when_omitted() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let r = t
        .put_setting(
            TENANT_A,
            &token,
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["cmk_key_name"], "repo-key");
    assert_eq!(
        t.get_setting(TENANT_A, &token).await.2["cmk_key_name"],
        "repo-key"
    );
}

#[tokio::test]
async fn wrong_cmk_key_name_is_400_rc400010() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let snap = t.snapshot(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id, "cmk_key_name": "test111"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "RC.400010",
        &["cmk_key_name", "test111"],
    );
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn right_cmk_key_name_is_accepted() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id, "cmk_key_name": "repo-key"}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["cmk_key_name"], "repo-key");
}

#[tokio::test]
async fn cmk_key_name_alone_is_checked_against_the_stored_key() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let r = t
        .put_setting(TENANT_A, &token, &json!({"cmk_key_name": "other"}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400010", &["cmk_key_name"]);
    let r = t
        .put_setting(TENANT_A, &token, &json!({"cmk_key_name": "repo-key"}))
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
}

// =====================================================================================
// 10. Default encryption
// =====================================================================================

#[tokio::test]
async fn default_encryption_without_kms_is_400_rc400011() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let snap = t.snapshot(TENANT_A).await;
    for body in [
        json!({"default_encryption_enabled": true}),
        json!({"encryption_type": "normal", "default_encryption_enabled": true}),
    ] {
        let r = t.put_setting(TENANT_A, &token, &body).await;
        assert_error(
            &r,
            StatusCode::BAD_REQUEST,
            "RC.400011",
            &["default_encryption_enabled", "KMS"],
        );
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

#[tokio::test]
async fn switching_to_normal_turns_default_encryption_off() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let r = t
        .put_setting(TENANT_A, &token, &json!({"encryption_type": "normal"}))
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["encryption_type"], "normal");
    assert_eq!(r.2["default_encryption_enabled"], false);
    let ts = t.tenant_setting(&token, None).await;
    assert_eq!(ts.2["default_encryption_enabled"], false);
    assert_eq!(ts.2["encryption_type"], "normal");
}

#[tokio::test]
async fn switching_to_normal_works_while_the_key_is_disabled() {
    let t = spawn_app().await;
    let key = t.configure_kms(TENANT_A).await;
    t.disable_key(TENANT_A, &key.key_id).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "normal"}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["encryption_type"], "normal");
    assert_eq!(r.2["default_encryption_enabled"], false);
}

#[tokio::test]
async fn turning_default_encryption_off_works_while_the_key_is_disabled() {
    let t = spawn_app().await;
    let key = t.configure_kms(TENANT_A).await;
    t.disable_key(TENANT_A, &key.key_id).await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"default_encryption_enabled": false}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["default_encryption_enabled"], false);
    assert_eq!(r.2["key_state"], 3);
}

#[tokio::test]
async fn turning_default_encryption_on_needs_an_enabled_key() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let r = t
        .put_setting(
            TENANT_A,
            &token,
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK);
    t.disable_key(TENANT_A, &key.key_id).await;
    let snap = t.snapshot(TENANT_A).await;
    let r = t
        .put_setting(
            TENANT_A,
            &token,
            &json!({"default_encryption_enabled": true}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400009", &["disabled"]);
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

// =====================================================================================
// 11. key_state is the KMS's state now
// =====================================================================================

#[tokio::test]
async fn key_state_follows_the_kms_with_the_cache_off() {
    let t = spawn_app().await; // key_state_cache_ttl = 0
    let key = t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    let state = || async { t.get_setting(TENANT_A, &token).await.2["key_state"].clone() };
    assert_eq!(state().await, 2);
    t.disable_key(TENANT_A, &key.key_id).await;
    assert_eq!(state().await, 3);
    t.schedule_deletion(TENANT_A, &key.key_id, 7).await;
    assert_eq!(state().await, 4);
    t.cancel_deletion(TENANT_A, &key.key_id).await;
    assert_eq!(state().await, 3);
    t.enable_key(TENANT_A, &key.key_id).await;
    assert_eq!(state().await, 2);
}

#[tokio::test]
async fn key_state_is_the_same_read_with_the_setting_or_asked_of_the_kms() {
    // With the row cache off, every GET reads the setting and its key's row in one query
    // (SQLite, local KMS); with it on, the setting comes from memory and the key's state
    // from the KMS. Both must tell the same story, a key past its deletion date included.
    for row_cache in [0, 1000] {
        let t = spawn_app_with(|c| c.row_cache_capacity = row_cache).await;
        let key = t.configure_kms(TENANT_A).await;
        let state = || async {
            let token = t.admin(TENANT_A);
            let (status, _, body) = t.get_setting(TENANT_A, &token).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["cmk_key_id"], key.key_id.as_str(), "{body}");
            body.get("key_state").cloned()
        };
        assert_eq!(state().await, Some(json!(2)), "row cache {row_cache}");
        t.disable_key(TENANT_A, &key.key_id).await;
        assert_eq!(state().await, Some(json!(3)), "row cache {row_cache}");
        t.schedule_deletion(TENANT_A, &key.key_id, 7).await;
        assert_eq!(state().await, Some(json!(4)), "row cache {row_cache}");
        t.clock.advance(Duration::from_secs(7 * 86_400 + 1));
        assert_eq!(state().await, None, "row cache {row_cache}: deleted key");
    }
}

#[tokio::test]
async fn key_state_is_served_from_the_cache_until_the_ttl() {
    // The app's clock stands still until the test moves it: the state cached by the PUT
    // is as old as the test says, however slow the machine.
    let ttl = Duration::from_secs(60);
    let t = spawn_app_with(|c| c.key_state_cache_ttl = ttl).await;
    let key = t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    t.disable_key(TENANT_A, &key.key_id).await;
    // Just short of the refresh-ahead point, so no refresh can land meanwhile.
    t.clock.advance(ttl / 4 * 3 - Duration::from_millis(1));
    let cached = t.get_setting(TENANT_A, &token).await;
    assert_eq!(
        cached.2["key_state"], 2,
        "within the TTL the cached state is served"
    );
    t.clock.advance(ttl / 4 + Duration::from_millis(1));
    let fresh = t.get_setting(TENANT_A, &token).await;
    assert_eq!(
        fresh.2["key_state"], 3,
        "after the TTL the KMS is asked again"
    );
}

#[tokio::test]
async fn a_key_state_read_late_in_its_ttl_is_refreshed_in_the_background() {
    let ttl = Duration::from_secs(8);
    let t = spawn_app_with(|c| c.key_state_cache_ttl = ttl).await;
    let key = t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    t.disable_key(TENANT_A, &key.key_id).await;
    assert_eq!(t.get_setting(TENANT_A, &token).await.2["key_state"], 2);
    t.clock.advance(ttl / 4 * 3 + Duration::from_millis(100));
    assert_eq!(
        t.get_setting(TENANT_A, &token).await.2["key_state"],
        2,
        "late in the TTL the cached state is still served, without waiting for the KMS"
    );
    // ...and the KMS is asked meanwhile: the new state arrives before the TTL runs out
    // (the app's clock stays short of it, so only the background refresh can bring it).
    // The refresh is a task on the runtime: wait for it in real time, a bounded while.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the state was not refreshed ahead of the TTL"
        );
        if t.get_setting(TENANT_A, &token).await.2["key_state"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_write_decides_on_the_kms_state_not_the_cache() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(3600)).await;
    let key = t.configure_kms(TENANT_A).await;
    let token = t.admin(TENANT_A);
    assert_eq!(t.get_setting(TENANT_A, &token).await.2["key_state"], 2);
    t.disable_key(TENANT_A, &key.key_id).await;
    let r = t
        .put_setting(
            TENANT_A,
            &token,
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400009", &["disabled"]);
}

// =====================================================================================
// 12. No partial writes; audit
// =====================================================================================

#[tokio::test]
async fn rejected_requests_of_every_kind_write_nothing() {
    let t = spawn_app().await;
    let key = t.configure_kms(TENANT_A).await;
    let disabled = t.create_key(TENANT_A, "disabled-key").await;
    t.disable_key(TENANT_A, &disabled.key_id).await;
    let admin = t.admin(TENANT_A);
    let member = t.member(TENANT_A);
    let foreign = t.admin(TENANT_B);
    let get_before = t.get_setting(TENANT_A, &admin).await.2;
    let snap = t.snapshot(TENANT_A).await;
    let json_ct = Some("application/json");
    let cases: Vec<(&str, &str, Option<&str>, String, u16)> = vec![
        ("no token", "", json_ct, r#"{"encryption_type":"normal"}"#.into(), 401),
        ("member", member.as_str(), json_ct, r#"{"encryption_type":"normal"}"#.into(), 403),
        ("foreign", foreign.as_str(), json_ct, r#"{"encryption_type":"normal"}"#.into(), 403),
        ("415", admin.as_str(), Some("text/plain"), r#"{"encryption_type":"normal"}"#.into(), 415),
        ("413", admin.as_str(), json_ct, json!({"cmk_key_id": "x".repeat(70_000)}).to_string(), 413),
        ("malformed", admin.as_str(), json_ct, "{".into(), 400),
        ("unknown field", admin.as_str(), json_ct, r#"{"encryption_type":"normal","x":1}"#.into(), 400),
        // a valid change followed by an invalid field: nothing of it is applied
        ("bad type after good field", admin.as_str(), json_ct,
            r#"{"encryption_type":"normal","default_encryption_enabled":"no"}"#.into(), 400),
        ("mismatch", admin.as_str(), json_ct,
            json!({"tenant_id": TENANT_B, "default_encryption_enabled": false}).to_string(), 400),
        ("disabled key", admin.as_str(), json_ct,
            json!({"cmk_key_id": disabled.key_id}).to_string(), 400),
        ("unknown key", admin.as_str(), json_ct,
            json!({"cmk_key_id": "nope", "default_encryption_enabled": false}).to_string(), 400),
        ("wrong name", admin.as_str(), json_ct,
            json!({"cmk_key_id": key.key_id, "cmk_key_name": "wrong", "default_encryption_enabled": false}).to_string(), 400),
        ("default without kms", admin.as_str(), json_ct,
            json!({"encryption_type": "normal", "default_encryption_enabled": true}).to_string(), 400),
    ];
    for (label, token, ct, body, status) in cases {
        let mut headers = Vec::new();
        if !token.is_empty() {
            headers.push(("x-auth-token", token));
        }
        if let Some(ct) = ct {
            headers.push(("content-type", ct));
        }
        let r = t
            .send(Method::PUT, &setting_path(TENANT_A), &headers, body)
            .await;
        assert_eq!(r.0.as_u16(), status, "{label}: {}", r.2);
        assert!(r.2["error_code"].is_string(), "{label}: {}", r.2);
        assert_eq!(t.snapshot(TENANT_A).await, snap, "{label} wrote something");
        assert_eq!(
            t.get_setting(TENANT_A, &admin).await.2,
            get_before,
            "{label}"
        );
    }
}

#[tokio::test]
async fn each_successful_put_writes_exactly_one_audit_record() {
    let t = spawn_app().await;
    let key = t.kms_ready(TENANT_A).await;
    let token = t.token(TENANT_A, "user-42", Role::Admin);
    let before_len = t.audit(TENANT_A).await.len();

    let first = t
        .put_setting_with_id(
            TENANT_A,
            &token,
            "req-first",
            &json!({"encryption_type": "normal"}),
        )
        .await;
    assert_eq!(first.0, StatusCode::OK);
    let second = t
        .put_setting_with_id(
            TENANT_A,
            &token,
            "req-second",
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id, "default_encryption_enabled": true}),
        )
        .await;
    assert_eq!(second.0, StatusCode::OK, "{}", second.2);

    let audit = t.audit(TENANT_A).await;
    assert_eq!(
        audit.len(),
        before_len + 2,
        "one record per PUT, nothing else"
    );
    let records = t.audit_of(TENANT_A, "setting.update").await;
    assert_eq!(records.len(), 2);

    let (r1, r2) = (&records[0], &records[1]);
    assert_eq!(r1.actor, "user-42");
    assert_eq!(r1.request_id.as_deref(), Some("req-first"));
    assert_eq!(r1.tenant_id, TENANT_A);
    assert!(!r1.at.is_empty());
    assert!(
        r1.before.is_none() || r1.before == Some(Value::Null),
        "{:?}",
        r1.before
    );
    let after1 = r1.after.as_ref().expect("after");
    assert_eq!(after1["encryption_type"], "normal");
    assert_eq!(after1["default_encryption_enabled"], false);
    assert_eq!(after1["id"], first.2["id"]);

    assert_eq!(r2.actor, "user-42");
    assert_eq!(r2.request_id.as_deref(), Some("req-second"));
    assert_eq!(
        r2.before.as_ref(),
        Some(after1),
        "before = the previous after"
    );
    let after2 = r2.after.as_ref().expect("after");
    assert_eq!(after2["encryption_type"], "KMS");
    assert_eq!(after2["cmk_key_id"], key.key_id.as_str());
    assert_eq!(after2["cmk_key_name"], "repo-key");
    assert_eq!(after2["default_encryption_enabled"], true);
}

#[tokio::test]
async fn each_successful_post_writes_exactly_one_audit_record() {
    let t = spawn_app().await;
    let token = t.token(TENANT_A, "granter", Role::Admin);
    for (i, rid) in ["grant-1", "grant-2"].into_iter().enumerate() {
        let r = t
            .send(
                Method::POST,
                &grant_path(TENANT_A),
                &[("x-auth-token", &token), ("x-request-id", rid)],
                Body::empty(),
            )
            .await;
        assert_eq!(r.0, StatusCode::OK);
        let audit = t.audit(TENANT_A).await;
        assert_eq!(audit.len(), i + 1);
        let rec = audit.last().unwrap();
        assert_eq!(rec.action, "kms_grant.create");
        assert_eq!(rec.actor, "granter");
        assert_eq!(rec.request_id.as_deref(), Some(rid));
        assert_eq!(rec.after.as_ref().unwrap()["assumed"], true);
    }
}

#[tokio::test]
async fn reads_write_no_audit_records() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let snap = t.snapshot(TENANT_A).await;
    let token = t.admin(TENANT_A);
    t.get_setting(TENANT_A, &token).await;
    t.get_grant(TENANT_A, &token).await;
    t.tenant_setting(&token, None).await;
    assert_eq!(t.snapshot(TENANT_A).await, snap);
}

// =====================================================================================
// 13. Tokens and roles, on every /v4 path
// =====================================================================================

#[tokio::test]
async fn missing_or_empty_token_is_401_rc401001_on_every_operation() {
    let t = spawn_app().await;
    for kind in CALLERS {
        match kind {
            Caller::Token => {
                for (label, r) in each_operation(&t, None).await {
                    assert_error(&r, StatusCode::UNAUTHORIZED, "RC.401001", &["X-Auth-Token"]);
                    assert!(!label.is_empty());
                }
                for (label, r) in each_operation(&t, Some("")).await {
                    assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{label}");
                    assert_eq!(r.2["error_code"], "RC.401001", "{label}");
                }
            }
            Caller::AkSk => {
                // An SDK request that lost its Authorization: no credential at all.
                let unsigned = sdk::Cred {
                    ak: "unused".into(),
                    sk: "unused".into(),
                };
                let date = t.sdk_now();
                for (method, uri, body) in operations(TENANT_A) {
                    let headers = signed_headers(
                        &unsigned,
                        method.as_str(),
                        &uri,
                        body.as_bytes(),
                        &date,
                        &[],
                    );
                    let h: Vec<(&str, &str)> = headers
                        .iter()
                        .filter(|(n, _)| n != "authorization")
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect();
                    let r = t.send(method.clone(), &uri, &h, body).await;
                    assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{method} {uri}");
                    assert_error(&r, StatusCode::UNAUTHORIZED, "RC.401001", &["X-Auth-Token"]);
                }
            }
        }
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

#[tokio::test]
async fn garbled_token_is_401_rc401002_on_every_operation() {
    let t = spawn_app().await;
    for garbled in [
        "garbage",
        "rc1.",
        "rc1.a.b",
        "Bearer abc.def",
        "rc1.!!!.???",
    ] {
        for (label, r) in each_operation(&t, Some(garbled)).await {
            assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{label} {garbled}: {}", r.2);
            assert_eq!(r.2["error_code"], "RC.401002", "{label} {garbled}");
        }
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

#[tokio::test]
async fn two_token_headers_are_401_rc401002() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let r = t
        .send(
            Method::GET,
            &setting_path(TENANT_A),
            &[("x-auth-token", &token), ("x-auth-token", &token)],
            Body::empty(),
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "RC.401002", &[]);
}

#[tokio::test]
async fn forged_token_from_another_root_key_is_401_rc401002_on_every_operation() {
    let t = spawn_app().await;
    let other = spawn_app().await;
    let forged = other.admin(TENANT_A);
    for (label, r) in each_operation(&t, Some(&forged)).await {
        assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{label}: {}", r.2);
        assert_eq!(r.2["error_code"], "RC.401002", "{label}");
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

#[tokio::test]
async fn tampered_token_is_401_rc401002_on_every_operation() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let (signed, _sig) = token.rsplit_once('.').unwrap();
    // one character flipped in the claims, and one in the signature
    let in_claims = flip_char(&token, 10);
    let in_sig = flip_char(&token, signed.len() + 10);
    for tampered in [in_claims, in_sig] {
        assert_ne!(tampered, token);
        for (label, r) in each_operation(&t, Some(&tampered)).await {
            assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{label}: {}", r.2);
            assert_eq!(r.2["error_code"], "RC.401002", "{label}");
        }
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

#[tokio::test]
async fn member_token_rewritten_to_admin_is_401() {
    let t = spawn_app().await;
    let token = t.member(TENANT_A);
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let payload = signed.strip_prefix("rc1.").unwrap();
    let claims = String::from_utf8(B64URL.decode(payload).unwrap()).unwrap();
    assert!(claims.contains("\"member\""), "{claims}");
    let escalated = claims.replace("\"member\"", "\"admin\"");
    let forged = format!("rc1.{}.{sig}", B64URL.encode(escalated));
    let r = t
        .put_setting(TENANT_A, &forged, &json!({"encryption_type": "normal"}))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "RC.401002", &[]);
    assert_eq!(t.snapshot(TENANT_A).await.setting, None);
}

#[tokio::test]
async fn a_token_in_use_is_refused_from_the_second_it_expires() {
    // The server remembers verified tokens; expiry must still be checked on every use.
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    t.clock.advance(Duration::from_secs(TOKEN_TTL_SECS - 1));
    for _ in 0..3 {
        assert_eq!(
            t.get_setting(TENANT_A, &token).await.0,
            StatusCode::ACCEPTED
        );
    }
    t.clock.advance(Duration::from_secs(1));
    for (label, r) in each_operation(&t, Some(&token)).await {
        assert_error(&r, StatusCode::UNAUTHORIZED, "DEV.00000003", &[]);
        assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0, "{label}");
    }
}

#[tokio::test]
async fn expired_token_is_401_dev00000003_on_every_operation() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    t.clock.advance(Duration::from_secs(TOKEN_TTL_SECS));
    for (label, r) in each_operation(&t, Some(&token)).await {
        assert_error(
            &r,
            StatusCode::UNAUTHORIZED,
            "DEV.00000003",
            &["Authentication information expired."],
        );
        assert_eq!(
            r.2["error_msg"], "Authentication information expired.",
            "{label}"
        );
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

#[tokio::test]
async fn token_is_valid_until_its_expiry() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    t.clock.advance(Duration::from_secs(TOKEN_TTL_SECS - 1));
    for (label, r) in each_operation(&t, Some(&token)).await {
        assert!(r.0.is_success(), "{label}: {} {}", r.0, r.2);
    }
}

#[tokio::test]
async fn token_of_100001_chars_is_4xx_on_every_operation() {
    let t = spawn_app().await;
    let valid = t.admin(TENANT_A);
    let huge_garbage = "a".repeat(100_001);
    let mut padded = valid.clone();
    padded.push_str(&"A".repeat(100_001 - valid.len()));
    for token in [huge_garbage, padded, "b".repeat(100_000)] {
        for (label, r) in each_operation(&t, Some(&token)).await {
            assert!(r.0.is_client_error(), "{label}: {} {}", r.0, r.2);
            assert_eq!(r.0, StatusCode::UNAUTHORIZED, "{label}");
            assert!(r.2["error_code"].is_string(), "{label}: {}", r.2);
        }
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

#[tokio::test]
async fn another_tenants_token_is_403_ch004403_on_every_tenant_operation() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let snap = t.snapshot(TENANT_A).await;
    for kind in CALLERS {
        for caller in [
            t.admin_as(kind, TENANT_B).await,
            t.member_as(kind, TENANT_B).await,
        ] {
            for (method, uri, body) in operations(TENANT_A).into_iter().take(4) {
                let r = t.send_as(&caller, method.clone(), &uri, body).await;
                assert_eq!(r.0, StatusCode::FORBIDDEN, "{kind:?} {method} {uri}");
                assert_error(
                    &r,
                    StatusCode::FORBIDDEN,
                    "CH.004403",
                    &["Insufficient permissions"],
                );
                assert!(
                    !r.2.to_string().contains("repo-key"),
                    "{kind:?} {method} {uri} leaks"
                );
            }
        }
    }
    assert_eq!(t.snapshot(TENANT_A).await, snap);
    assert_eq!(t.snapshot(TENANT_B).await.setting, None);
    assert!(!t.snapshot(TENANT_B).await.granted);
}

#[tokio::test]
async fn member_put_and_post_are_403_rc403001() {
    let t = spawn_app().await;
    for kind in CALLERS {
        let member = t.member_as(kind, TENANT_A).await;
        let snap = t.snapshot(TENANT_A).await;
        let r = t
            .put_setting_as(&member, TENANT_A, &json!({"encryption_type": "normal"}))
            .await;
        assert_eq!(r.0, StatusCode::FORBIDDEN, "{kind:?}");
        assert_error(&r, StatusCode::FORBIDDEN, "RC.403001", &["admin"]);
        let r = t.post_grant_as(&member, TENANT_A).await;
        assert_eq!(r.0, StatusCode::FORBIDDEN, "{kind:?}");
        assert_error(&r, StatusCode::FORBIDDEN, "RC.403001", &["admin"]);
        assert_eq!(t.snapshot(TENANT_A).await, snap, "{kind:?}");
    }
}

#[tokio::test]
async fn member_can_read_every_get_operation() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    for kind in CALLERS {
        let member = t.member_as(kind, TENANT_A).await;
        let r = t.get_setting_as(&member, TENANT_A).await;
        assert_eq!(r.0, StatusCode::ACCEPTED, "{kind:?} {}", r.2);
        assert_eq!(r.2["encryption_type"], "KMS");
        let r = t.get_grant_as(&member, TENANT_A).await;
        assert_eq!(r.0, StatusCode::ACCEPTED, "{kind:?} {}", r.2);
        assert_eq!(r.2["assumed"], true);
        let r = t.tenant_setting_as(&member, None).await;
        assert_eq!(r.0, StatusCode::OK, "{kind:?} {}", r.2);
        assert_eq!(r.2["encryption_type"], "KMS");
    }
}

// =====================================================================================
// 14. GET /v4/tenant/setting
// =====================================================================================

const PROJECT: &str = "0123456789abcdef0123456789ABCDEF";

#[tokio::test]
async fn tenant_setting_without_project_is_the_callers_tenant_and_permit_public_is_configurable() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    for kind in CALLERS {
        let a = t.admin_as(kind, TENANT_A).await;
        let b = t.admin_as(kind, TENANT_B).await;
        assert_eq!(
            t.tenant_setting_as(&a, None).await.2["permit_public"],
            "deny",
            "{kind:?}"
        );
        t.set_permit_public(TENANT_A, PermitPublic::Allow).await;
        let ra = t.tenant_setting_as(&a, None).await;
        assert_eq!(ra.0, StatusCode::OK, "{kind:?}");
        assert_eq!(
            ra.2,
            json!({"default_encryption_enabled": true, "encryption_type": "KMS", "permit_public": "allow"}),
            "{kind:?}"
        );
        // B sees its own tenant, not A's
        let rb = t.tenant_setting_as(&b, None).await;
        assert_eq!(
            rb.2,
            json!({"default_encryption_enabled": false, "encryption_type": null, "permit_public": "deny"}),
            "{kind:?}"
        );
        t.set_permit_public(TENANT_A, PermitPublic::Deny).await;
        assert_eq!(
            t.tenant_setting_as(&a, None).await.2["permit_public"],
            "deny",
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn tenant_setting_with_a_project_of_the_callers_tenant_gives_that_tenants_settings() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    t.set_permit_public(TENANT_A, PermitPublic::Allow).await;
    t.add_project(TENANT_A, PROJECT).await;
    let expected = json!({"default_encryption_enabled": true, "encryption_type": "KMS", "permit_public": "allow"});
    for kind in CALLERS {
        for caller in [
            t.admin_as(kind, TENANT_A).await,
            t.member_as(kind, TENANT_A).await,
        ] {
            let r = t
                .tenant_setting_as(&caller, Some(&format!("project_id={PROJECT}")))
                .await;
            assert_eq!(r.0, StatusCode::OK, "{kind:?} {}", r.2);
            assert_eq!(r.2, expected, "{kind:?}");
        }
    }
}

#[tokio::test]
async fn tenant_setting_for_a_project_member_from_another_tenant_gives_the_owners_settings() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    t.set_permit_public(TENANT_A, PermitPublic::Allow).await;
    t.add_project(TENANT_A, PROJECT).await;
    t.add_member(PROJECT, TENANT_B, "guest-b").await;
    for kind in CALLERS {
        let guest = t.caller(kind, TENANT_B, "guest-b", Role::Member).await;
        let r = t
            .tenant_setting_as(&guest, Some(&format!("project_id={PROJECT}")))
            .await;
        assert_eq!(r.0, StatusCode::OK, "{kind:?} {}", r.2);
        assert_eq!(
            r.2,
            json!({"default_encryption_enabled": true, "encryption_type": "KMS", "permit_public": "allow"}),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn tenant_setting_for_a_non_member_of_another_tenant_is_403_dev2350804() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    t.add_project(TENANT_A, PROJECT).await;
    t.add_member(PROJECT, TENANT_B, "guest-b").await;
    // same user id, other tenant: not the member
    t.add_member(PROJECT, TENANT_B, "someone").await;
    for kind in CALLERS {
        for caller in [
            t.admin_as(kind, TENANT_B).await,
            t.caller(kind, TENANT_B, "stranger", Role::Member).await,
            t.caller(
                kind,
                "ffffffffffffffffffffffffffffffff",
                "guest-b",
                Role::Admin,
            )
            .await,
        ] {
            let r = t
                .tenant_setting_as(&caller, Some(&format!("project_id={PROJECT}")))
                .await;
            assert_eq!(r.0, StatusCode::FORBIDDEN, "{kind:?}");
            assert_error(
                &r,
                StatusCode::FORBIDDEN,
                "DEV-23-50804",
                &["Insufficient permissions"],
            );
            assert!(!r.2.to_string().contains("KMS"), "{kind:?} {}", r.2);
        }
    }
}

#[tokio::test]
async fn tenant_setting_with_an_unknown_project_is_404_rc404001() {
    let t = spawn_app().await;
    t.add_project(TENANT_A, PROJECT).await;
    let unknown = "ffffffffffffffffffffffffffffffff";
    let r = t
        .tenant_setting(&t.admin(TENANT_A), Some(&format!("project_id={unknown}")))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "RC.404001", &[unknown]);
}

#[tokio::test]
async fn tenant_setting_with_a_malformed_project_id_is_400_rc400004() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let thirty_one = "a".repeat(31);
    let thirty_three = "a".repeat(33);
    let dashed = format!("{}-", "a".repeat(31));
    let uuid_form = "01234567-89ab-cdef-0123-456789abcdef".to_owned();
    let non_ascii = format!("{}%C3%A9", "a".repeat(30)); // 30 + "é" (2 bytes)
    let spaces = format!("{}%20", "a".repeat(31));
    for pid in [
        thirty_one,
        thirty_three,
        dashed,
        uuid_form,
        non_ascii,
        spaces,
    ] {
        let r = t
            .tenant_setting(&token, Some(&format!("project_id={pid}")))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400004", &["project_id"]);
    }
}

#[tokio::test]
async fn tenant_setting_with_a_duplicated_project_id_is_400() {
    let t = spawn_app().await;
    let r = t
        .tenant_setting(
            &t.admin(TENANT_A),
            Some(&format!("project_id={PROJECT}&project_id={PROJECT}")),
        )
        .await;
    assert_eq!(r.0, StatusCode::BAD_REQUEST, "{}", r.2);
    assert!(r.2["error_code"].as_str().unwrap().starts_with("RC.400"));
}

// =====================================================================================
// 15. Routing, health and the OpenAPI document
// =====================================================================================

#[tokio::test]
async fn unknown_route_is_404_with_a_json_error_body() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    for uri in [
        "/v4/no/such/thing",
        "/",
        "/v3/tenants/x/repo-encryption/setting",
        "/v4/tenants/x/repo-encryption",
    ] {
        let r = t
            .send(Method::GET, uri, &[("x-auth-token", &token)], Body::empty())
            .await;
        assert_error(&r, StatusCode::NOT_FOUND, "RC.404000", &[]);
    }
}

#[tokio::test]
async fn wrong_method_is_405_with_a_json_error_body() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    for (method, uri) in [
        (Method::DELETE, setting_path(TENANT_A)),
        (Method::POST, setting_path(TENANT_A)),
        (Method::PUT, grant_path(TENANT_A)),
        (Method::PATCH, grant_path(TENANT_A)),
        (
            Method::DELETE,
            format!("/v4/tenants/{TENANT_A}/repo-encryption/cmks/k/repositories"),
        ),
        (Method::POST, "/v4/tenant/setting".to_owned()),
    ] {
        let r = t
            .send(
                method.clone(),
                &uri,
                &[("x-auth-token", &token)],
                Body::empty(),
            )
            .await;
        assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "RC.405000", &[]);
    }
    assert_eq!(t.snapshot(TENANT_A).await.audit_len, 0);
}

#[tokio::test]
async fn healthz_and_readyz_are_200_without_a_token() {
    let t = spawn_app().await;
    let r = t.send(Method::GET, "/healthz", &[], Body::empty()).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert!(r.1.get("x-request-id").is_some());
    let r = t.send(Method::GET, "/readyz", &[], Body::empty()).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
}

async fn openapi_doc() -> Value {
    let t = spawn_app().await;
    let r = t
        .send(Method::GET, "/openapi.json", &[], Body::empty())
        .await;
    assert_eq!(r.0, StatusCode::OK);
    assert!(r
        .1
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("application/json"));
    assert!(r.2.is_object(), "not JSON: {}", r.2);
    r.2
}

#[tokio::test]
async fn openapi_lists_the_five_operations_with_every_documented_status() {
    let doc = openapi_doc().await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let setting = "/v4/tenants/{tenant_id}/repo-encryption/setting";
    let grant = "/v4/tenants/{tenant_id}/repo-encryption/kms-grant";
    let tenant = "/v4/tenant/setting";
    let expected: [OpSpec; 5] = [
        (
            setting,
            "put",
            "UpdateTenantRepoEncryptionSetting",
            "200",
            "SettingView",
            &[
                "200", "400", "401", "403", "409", "413", "415", "408", "429", "503",
            ],
        ),
        (
            setting,
            "get",
            "ShowTenantRepoEncryptionSetting",
            "202",
            "SettingView",
            &["202", "400", "401", "403", "408", "429", "503"],
        ),
        (
            grant,
            "post",
            "CreateTenantKmsGrant",
            "200",
            "GrantView",
            &["200", "400", "401", "403", "408", "429", "503"],
        ),
        (
            grant,
            "get",
            "ShowTenantKmsGrant",
            "202",
            "GrantView",
            &["202", "400", "401", "403", "408", "429", "503"],
        ),
        (
            tenant,
            "get",
            "ShowProjectTenantSettings",
            "200",
            "TenantSettingView",
            &["200", "400", "401", "403", "404", "408", "429", "503"],
        ),
    ];
    let mut op_ids = BTreeSet::new();
    for (path, method, op_id, success, schema, statuses) in expected {
        let op = &doc["paths"][path][method];
        assert_eq!(op["operationId"], op_id, "{method} {path}");
        op_ids.insert(op_id);
        let responses = op["responses"].as_object().unwrap();
        let got: BTreeSet<&str> = responses.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = statuses.iter().copied().collect();
        assert_eq!(got, want, "{op_id} statuses");
        assert!(
            !responses.contains_key(if success == "200" { "202" } else { "200" }),
            "{op_id}: wrong success status"
        );
        let ok_ref = &responses[success]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(*ok_ref, format!("#/components/schemas/{schema}"), "{op_id}");
        for status in statuses.iter().filter(|s| **s != success) {
            let err_ref = &responses[*status]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                *err_ref, "#/components/schemas/ErrorBody",
                "{op_id} {status}"
            );
        }
        for status in statuses {
            assert!(
                responses[*status]["headers"]["X-Request-Id"].is_object(),
                "{op_id} {status}: X-Request-Id header not documented"
            );
            assert_eq!(
                responses[*status]["headers"]["X-Request-Id"]["required"], true,
                "{op_id} {status}: X-Request-Id is sent on every response"
            );
        }
        assert_eq!(
            op["security"],
            json!([{"X-Auth-Token": []}, {"SDK-HMAC-SHA256": []}]),
            "{op_id}: a token or an AK/SK signature"
        );
    }
    assert_eq!(op_ids.len(), 5);
    // the path parameter and the query parameter
    let params = doc["paths"][setting]["put"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params
        .iter()
        .any(|p| p["name"] == "tenant_id" && p["in"] == "path"));
    let params = doc["paths"][tenant]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params
        .iter()
        .any(|p| p["name"] == "project_id" && p["in"] == "query"));
    let body = &doc["paths"][setting]["put"]["requestBody"]["content"]["application/json"];
    assert_eq!(
        body["schema"]["$ref"],
        "#/components/schemas/UpdateSettingBody"
    );
}

#[tokio::test]
async fn openapi_declares_the_x_auth_token_security_scheme() {
    let doc = openapi_doc().await;
    let scheme = &doc["components"]["securitySchemes"]["X-Auth-Token"];
    assert_eq!(scheme["type"], "apiKey", "{scheme}");
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "X-Auth-Token");
    // Fields the service omits rather than nulls are optional, not nullable.
    let view = &doc["components"]["schemas"]["SettingView"]["properties"];
    for field in ["id", "cmk_key_id", "cmk_key_name", "key_state"] {
        let text = view[field].to_string();
        assert!(
            !text.contains("null"),
            "{field} must not be nullable: {text}"
        );
    }
    let signature = &doc["components"]["securitySchemes"]["SDK-HMAC-SHA256"];
    assert_eq!(signature["type"], "apiKey", "{signature}");
    assert_eq!(signature["in"], "header");
    assert_eq!(signature["name"], "Authorization");
}

#[tokio::test]
async fn openapi_component_schemas_match_the_seed_field_names() {
    let doc = openapi_doc().await;
    let schemas = &doc["components"]["schemas"];
    let props = |name: &str| -> Vec<String> {
        let p = &schemas[name]["properties"];
        assert!(p.is_object(), "schema {name} has no properties");
        keys_of(p)
    };
    assert_eq!(props("SettingView"), SEED_SETTING_FIELDS);
    assert_eq!(props("GrantView"), ["assumed", "tenant_id"]);
    assert_eq!(
        props("TenantSettingView"),
        [
            "default_encryption_enabled",
            "encryption_type",
            "permit_public"
        ]
    );
    assert_eq!(props("ErrorBody"), ["error_code", "error_msg"]);
    assert_eq!(
        props("UpdateSettingBody"),
        [
            "cmk_key_id",
            "cmk_key_name",
            "default_encryption_enabled",
            "encryption_type",
            "tenant_id"
        ]
    );
    // JSON types of the seeds
    let sv = &schemas["SettingView"]["properties"];
    let ty = |v: &Value| v["type"].clone();
    assert!(
        ty(&sv["id"]).to_string().contains("integer"),
        "{}",
        sv["id"]
    );
    assert!(ty(&sv["default_encryption_enabled"])
        .to_string()
        .contains("boolean"));
    assert!(ty(&sv["tenant_id"]).to_string().contains("string"));
    assert!(ty(&schemas["GrantView"]["properties"]["assumed"])
        .to_string()
        .contains("boolean"));
    let required = |name: &str| -> BTreeSet<String> {
        schemas[name]["required"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    assert!(required("ErrorBody").contains("error_code"));
    assert!(required("ErrorBody").contains("error_msg"));
    assert!(required("GrantView").contains("assumed"));
    assert!(
        required("UpdateSettingBody").is_empty(),
        "every PUT field is optional"
    );
}

// =====================================================================================
// 16. Concurrency
// =====================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_puts_all_succeed_with_fifty_audit_records_and_one_row() {
    let t = spawn_app().await;
    t.grant(TENANT_A).await;
    let k1 = t.create_key(TENANT_A, "key-one").await;
    let k2 = t.create_key(TENANT_A, "key-two").await;
    let token = t.admin(TENANT_A);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let router = t.router.clone();
        let token = token.clone();
        let key = if i % 2 == 0 { &k1 } else { &k2 };
        let body = json!({
            "encryption_type": "KMS",
            "cmk_key_id": key.key_id,
            "default_encryption_enabled": i % 3 == 0,
        })
        .to_string();
        tasks.push(tokio::spawn(async move {
            let rid = format!("concurrent-{i}");
            let r = send_to(
                router,
                Method::PUT,
                &setting_path(TENANT_A),
                &[
                    ("x-auth-token", &token),
                    ("content-type", "application/json"),
                    ("x-request-id", &rid),
                ],
                body,
            )
            .await;
            (rid, r)
        }));
    }
    let mut ids = BTreeSet::new();
    let mut rids = BTreeSet::new();
    for task in tasks {
        let (rid, r) = task.await.unwrap();
        assert_eq!(r.0, StatusCode::OK, "{rid}: {}", r.2);
        ids.insert(r.2["id"].as_i64().unwrap());
        rids.insert(rid);
    }
    assert_eq!(ids.len(), 1, "one row, one id: {ids:?}");
    let records = t.audit_of(TENANT_A, "setting.update").await;
    assert_eq!(records.len(), 50);
    let audited: BTreeSet<String> = records
        .iter()
        .map(|r| r.request_id.clone().unwrap())
        .collect();
    assert_eq!(audited, rids);
    // each record's before is the previous record's after: the writes were serialized
    for pair in records.windows(2) {
        assert_eq!(pair[1].before, pair[0].after);
    }
    let last = records.last().unwrap().after.clone().unwrap();
    let get = t.get_setting(TENANT_A, &token).await.2;
    for field in [
        "id",
        "encryption_type",
        "default_encryption_enabled",
        "cmk_key_id",
        "cmk_key_name",
    ] {
        assert_eq!(get[field], last[field], "{field}");
    }
    let expected_name = if get["cmk_key_id"] == k1.key_id.as_str() {
        "key-one"
    } else {
        "key-two"
    };
    assert_eq!(
        get["cmk_key_name"], expected_name,
        "id and name stay a pair"
    );
}

#[tokio::test]
async fn method_not_allowed_lists_the_allowed_methods() {
    let t = spawn_app().await;
    let r = t
        .send(
            Method::DELETE,
            &setting_path(TENANT_A),
            &[("x-auth-token", &t.admin(TENANT_A))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.0, StatusCode::METHOD_NOT_ALLOWED);
    let allow =
        r.1.get("allow")
            .expect("RFC 9110: a 405 response must carry Allow")
            .to_str()
            .unwrap()
            .to_owned();
    assert!(allow.contains("GET") && allow.contains("PUT"), "{allow}");
}

#[tokio::test]
async fn audit_record_carries_the_generated_request_id_when_none_was_sent() {
    let t = spawn_app().await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "normal"}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK);
    let sent_back = r.1.get("x-request-id").unwrap().to_str().unwrap();
    let records = t.audit_of(TENANT_A, "setting.update").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].request_id.as_deref(), Some(sent_back));
    assert_eq!(records[0].actor, admin_user(TENANT_A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_grants_all_succeed_with_one_grant_and_twenty_audit_records() {
    let t = spawn_app().await;
    let token = t.admin(TENANT_A);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let router = t.router.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            send_to(
                router,
                Method::POST,
                &grant_path(TENANT_A),
                &[("x-auth-token", &token)],
                Body::empty(),
            )
            .await
        }));
    }
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    }
    assert!(t.snapshot(TENANT_A).await.granted);
    assert_eq!(t.audit_of(TENANT_A, "kms_grant.create").await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_mixed_puts_changing_the_key_and_the_flag_all_succeed() {
    let t = spawn_app().await;
    let k1 = t.configure_kms(TENANT_A).await;
    let k2 = t.create_key(TENANT_A, "key-two").await;
    let token = t.admin(TENANT_A);
    let setup = t.audit_of(TENANT_A, "setting.update").await.len();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let router = t.router.clone();
        let token = token.clone();
        // half change the key, half only touch the flag (which re-checks the stored key)
        let body = match i % 4 {
            0 => json!({"cmk_key_id": k1.key_id}),
            1 => json!({"default_encryption_enabled": true}),
            2 => json!({"cmk_key_id": k2.key_id}),
            _ => json!({"default_encryption_enabled": false}),
        }
        .to_string();
        tasks.push(tokio::spawn(async move {
            send_to(
                router,
                Method::PUT,
                &setting_path(TENANT_A),
                &[
                    ("x-auth-token", &token),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        statuses.push((r.0.as_u16(), r.2["error_code"].clone()));
    }
    let failed: Vec<_> = statuses.iter().filter(|s| s.0 != 200).collect();
    assert!(failed.is_empty(), "not all 200: {failed:?}");
    let records = t.audit_of(TENANT_A, "setting.update").await;
    assert_eq!(records.len(), setup + 50);
    let get = t.get_setting(TENANT_A, &token).await.2;
    let expected_name = if get["cmk_key_id"] == k1.key_id.as_str() {
        "repo-key"
    } else {
        "key-two"
    };
    assert_eq!(
        get["cmk_key_name"], expected_name,
        "id and name stay a pair"
    );
}

/// Which database this run of the story uses; under CI, PostgreSQL must be configured for
/// the second run (see `.ci/run`).
#[test]
fn database_under_test() {
    match test_database_url() {
        Some(_) => eprintln!("running the API story on PostgreSQL (REPOCRYPT_TEST_DATABASE_URL)"),
        None => {
            assert!(
                std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
                "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
            );
            eprintln!(
                "running the API story on SQLite; SKIPPED on PostgreSQL: REPOCRYPT_TEST_DATABASE_URL is not set"
            );
        }
    }
}

/// Every `$ref` of the document names a schema it has (schemathesis skips what it cannot
/// resolve, so an unregistered view would go unchecked).
#[tokio::test]
async fn every_reference_of_the_openapi_document_resolves() {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let doc = openapi_doc().await;
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 10, "{found:?}");
    for r in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }
}
