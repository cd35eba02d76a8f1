//! The key broker in process: registration of repositories by the platform, the release
//! of their data keys to storage nodes under the tenant's kill switch (CMK state, KMS
//! grant), crypto-shredding, and the SDK's two list operations, driven through
//! `App::router()` on SQLite, or on PostgreSQL when `REPOCRYPT_TEST_DATABASE_URL` is set.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::{json, Value};

use common::*;
use repocrypt::clock::Clock;
use repocrypt::domain::{Actor, Identity, RepoId};
use repocrypt::kms::KeyOrigin;

// =====================================================================================
// Helpers
// =====================================================================================

fn repos_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories")
}

fn data_key_path(tenant: &str, repo_id: impl std::fmt::Display) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key")
}

fn cmks_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/cmks")
}

fn with_query(path: String, query: &str) -> String {
    if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    }
}

/// A token of the platform service principal `node`, valid for an hour from the clock's now.
fn service_token(t: &TestApp) -> Auth {
    let now = t.clock.unix_seconds();
    let identity = Identity::service("node", now + TOKEN_TTL_SECS).unwrap();
    Auth::Token(t.app.tokens.issue(&identity, now).unwrap())
}

/// The service principal `node` calling as `kind`.
async fn service_as(t: &TestApp, kind: Caller) -> Auth {
    match kind {
        Caller::Token => service_token(t),
        Caller::AkSk => {
            let (c, secret) = t
                .app
                .credentials
                .create_service("node", &Actor::cli())
                .await
                .unwrap();
            Auth::AkSk(common::sdk::Cred {
                ak: c.access_key,
                sk: secret.expose().to_owned(),
            })
        }
    }
}

/// The minimal registration body of repository `id` named `name`.
fn repo(id: i64, name: &str) -> Value {
    json!({"repo_id": id, "repo_name": name, "full_path": format!("group/{name}")})
}

/// A registration body with every optional field of the SDK's RepoEncryptionDto.
fn full_repo(id: i64, name: &str, owner: &str) -> Value {
    json!({
        "repo_id": id,
        "repo_name": name,
        "full_path": format!("group/{name}"),
        "project_id": "0123456789abcdef0123456789abcdef",
        "project_name": "demo",
        "owner_id": 42,
        "owner_iam_id": "iam-42",
        "owner_tenant_name": "acme",
        "owner_nick_name": "nick",
        "owner_name": owner,
    })
}

async fn register(t: &TestApp, auth: &Auth, tenant: &str, body: &Value) -> Resp {
    t.send_as(auth, Method::POST, &repos_path(tenant), &body.to_string())
        .await
}

/// Register as the service (token), expecting 201; the answer.
async fn register_new(t: &TestApp, tenant: &str, body: &Value) -> Value {
    let r = register(t, &service_token(t), tenant, body).await;
    assert_eq!(r.0, StatusCode::CREATED, "register {body}: {}", r.2);
    r.2
}

async fn release(t: &TestApp, auth: &Auth, tenant: &str, repo_id: i64) -> Resp {
    t.send_as(auth, Method::GET, &data_key_path(tenant, repo_id), "")
        .await
}

/// Release as the service (token), expecting 200; the base64 data key.
async fn release_ok(t: &TestApp, tenant: &str, repo_id: i64) -> String {
    let r = release(t, &service_token(t), tenant, repo_id).await;
    assert_eq!(r.0, StatusCode::OK, "release {repo_id}: {}", r.2);
    r.2["data_key"].as_str().unwrap().to_owned()
}

async fn shred(t: &TestApp, auth: &Auth, tenant: &str, repo_id: i64) -> Resp {
    t.send_as(auth, Method::DELETE, &data_key_path(tenant, repo_id), "")
        .await
}

async fn list_repos(t: &TestApp, auth: &Auth, tenant: &str, query: &str) -> Resp {
    t.send_as(
        auth,
        Method::GET,
        &with_query(repos_path(tenant), query),
        "",
    )
    .await
}

/// The encrypted list as the service reads it, expecting 202.
async fn listed(t: &TestApp, tenant: &str, query: &str) -> Vec<Value> {
    let r = list_repos(t, &service_token(t), tenant, query).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "list ?{query}: {}", r.2);
    r.2.as_array()
        .unwrap_or_else(|| panic!("not an array: {}", r.2))
        .clone()
}

fn ids(list: &[Value]) -> Vec<i64> {
    list.iter()
        .map(|r| r["repo_id"].as_i64().unwrap())
        .collect()
}

async fn list_cmks(t: &TestApp, auth: &Auth, tenant: &str, query: &str) -> Resp {
    t.send_as(auth, Method::GET, &with_query(cmks_path(tenant), query), "")
        .await
}

/// The base64 data key of an answer, checked to be 32 bytes.
fn data_key_of(body: &Value) -> String {
    let text = body["data_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no data_key: {body}"));
    assert_eq!(B64.decode(text).unwrap().len(), 32, "{body}");
    text.to_owned()
}

/// `repocrypt_kms_calls_total{call, outcome}` as GET /metrics tells it.
async fn kms_calls(t: &TestApp, call: &str, outcome: &str) -> u64 {
    let (status, _, body) = t.send(Method::GET, "/metrics", &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    let prefix = format!("repocrypt_kms_calls_total{{call=\"{call}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .parse()
        .unwrap()
}

/// Every audit record of the tenant as one JSON text.
async fn audit_text(t: &TestApp, tenant: &str) -> String {
    t.audit(tenant)
        .await
        .iter()
        .map(|r| {
            json!({"action": r.action, "actor": r.actor, "before": r.before, "after": r.after})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every text form of `bytes` that could leak it: base64 (both alphabets, padded or
/// not) and hex.
fn encodings(bytes: &[u8]) -> Vec<String> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        B64.encode(bytes),
        B64.encode(bytes).trim_end_matches('=').to_owned(),
        B64URL.encode(bytes),
        hex.clone(),
        hex.to_uppercase(),
    ]
}

#[track_caller]
fn assert_no_material(text: &str, material: &[u8], what: &str) {
    for form in encodings(material) {
        assert!(
            !text.contains(&form),
            "{what} leaks key material `{form}`: {text}"
        );
    }
}

/// Run `$body` with `$c`, a connection of its own to the test app's database (SQLite or
/// PostgreSQL); the statements use `$N` placeholders, which sqlx binds on both.
macro_rules! with_db {
    ($t:expr, |$c:ident| $body:expr) => {{
        use sqlx::Connection as _;
        let url = $t.app.config.database_url.clone();
        if url.starts_with("sqlite:") {
            let mut $c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let out = $body;
            $c.close().await.unwrap();
            out
        } else {
            let mut $c = sqlx::PgConnection::connect(&url).await.unwrap();
            let out = $body;
            $c.close().await.unwrap();
            out
        }
    }};
}

/// The `wrapped_key` column of a repository's row.
async fn wrapped_in_db(t: &TestApp, tenant: &str, repo_id: i32) -> Option<Vec<u8>> {
    use sqlx::Row as _;
    with_db!(t, |c| {
        sqlx::query("SELECT wrapped_key FROM repositories WHERE tenant_id = $1 AND repo_id = $2")
            .bind(tenant)
            .bind(repo_id)
            .fetch_one(&mut c)
            .await
            .unwrap()
            .try_get::<Option<Vec<u8>>, _>("wrapped_key")
            .unwrap()
    })
}

/// Overwrite the `wrapped_key` column of a repository's row behind the app's back.
async fn set_wrapped_in_db(t: &TestApp, tenant: &str, repo_id: i32, wrapped: &[u8]) {
    let n = with_db!(t, |c| {
        sqlx::query(
            "UPDATE repositories SET wrapped_key = $3 WHERE tenant_id = $1 AND repo_id = $2",
        )
        .bind(tenant)
        .bind(repo_id)
        .bind(wrapped.to_vec())
        .execute(&mut c)
        .await
        .unwrap()
        .rows_affected()
    });
    assert_eq!(n, 1, "one row updated");
    seen_by_the_service(t);
}

/// A write made outside the service (as another process makes it) reaches a release
/// at once on PostgreSQL, and on SQLite once the repository cache's bound (1 s) has
/// passed: let it pass.
fn seen_by_the_service(t: &TestApp) {
    if t.app.config.database_url.starts_with("sqlite:") {
        t.clock.advance(Duration::from_millis(1001));
    }
}

/// Withdraw the tenant's KMS grant in the database, as the tenant's side does it.
async fn delete_grant_in_db(t: &TestApp, tenant: &str) {
    let n = with_db!(t, |c| {
        sqlx::query("DELETE FROM kms_grants WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected()
    });
    assert_eq!(n, 1, "the grant row is deleted");
    seen_by_the_service(t);
}

/// The tenant's repositories as the store keeps them (encrypted or not, shredded or not).
async fn stored_repos(t: &TestApp, tenant: &str) -> usize {
    t.app
        .service
        .list_repositories(&tid(tenant))
        .await
        .unwrap()
        .len()
}

/// PUT KMS with `key` and default encryption off.
async fn configure_kms_default_off(t: &TestApp, tenant: &str) -> String {
    let key = t.kms_ready(tenant).await;
    let r = t
        .put_setting(
            tenant,
            &t.admin(tenant),
            &json!({
                "encryption_type": "KMS",
                "cmk_key_id": key.key_id,
                "default_encryption_enabled": false,
            }),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    key.key_id
}

// =====================================================================================
// 1. Registration
// =====================================================================================

#[tokio::test]
async fn registration_follows_the_tenants_default_unless_the_platform_chooses() {
    let t = spawn_app().await;
    let key = t.configure_kms(TENANT_A).await; // default_encryption_enabled on
    for kind in CALLERS {
        let svc = service_as(&t, kind).await;
        let base = if kind == Caller::Token { 10 } else { 20 };

        // Omitted: the tenant's default, on.
        let body = full_repo(base + 1, "alpha", "alice");
        let (status, _, r) = register(&t, &svc, TENANT_A, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{kind:?}: {r}");
        let mut expected = body.as_object().unwrap().clone();
        expected.insert("encrypted".into(), json!(true));
        expected.insert("cmk_key_id".into(), json!(key.key_id));
        expected.insert("data_key".into(), json!(data_key_of(&r)));
        assert_eq!(r, Value::Object(expected), "{kind:?}: every field answered");

        // Explicitly not encrypted: no key, cmk_key_id null.
        let body = json!({"repo_id": base + 2, "repo_name": "plain", "full_path": "g/plain", "encrypted": false});
        let (status, _, r) = register(&t, &svc, TENANT_A, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{kind:?}: {r}");
        assert_eq!(r["encrypted"], false, "{r}");
        assert!(r.get("data_key").is_none(), "no data key: {r}");
        assert_eq!(
            r.get("cmk_key_id"),
            Some(&Value::Null),
            "cmk_key_id null: {r}"
        );
        assert_eq!(wrapped_in_db(&t, TENANT_A, (base + 2) as i32).await, None);
    }

    // A tenant whose default is off: unencrypted unless the platform asks.
    let key_b = configure_kms_default_off(&t, TENANT_B).await;
    let svc = service_token(&t);
    let (status, _, r) = register(&t, &svc, TENANT_B, &repo(1, "default-off")).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(r["encrypted"], false, "{r}");
    assert!(r.get("data_key").is_none(), "{r}");
    let mut body = repo(2, "asked");
    body["encrypted"] = json!(true);
    let (status, _, r) = register(&t, &svc, TENANT_B, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(r["encrypted"], true, "{r}");
    assert_eq!(r["cmk_key_id"], key_b.as_str(), "{r}");
    data_key_of(&r);
    assert!(wrapped_in_db(&t, TENANT_B, 2).await.is_some());
    // What the list says agrees.
    assert_eq!(ids(&listed(&t, TENANT_B, "").await), [2]);
    assert_eq!(ids(&listed(&t, TENANT_A, "").await), [21, 11]);
}

#[tokio::test]
async fn the_same_registration_again_answers_the_same_key() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let body = full_repo(7, "seven", "owner");
    let first = register(&t, &service_as(&t, Caller::Token).await, TENANT_A, &body).await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.2);
    let audit_len = t.audit(TENANT_A).await.len();
    for kind in CALLERS {
        let again = register(&t, &service_as(&t, kind).await, TENANT_A, &body).await;
        assert_eq!(again.0, StatusCode::OK, "{kind:?}: {}", again.2);
        assert_eq!(again.2, first.2, "{kind:?}: the same answer, the same key");
    }
    // `encrypted: true` spelled out matches what the default chose; null is absent.
    let mut explicit = body.clone();
    explicit["encrypted"] = json!(true);
    explicit["owner_nick_name"] = json!("nick");
    let again = register(&t, &service_token(&t), TENANT_A, &explicit).await;
    assert_eq!(again.0, StatusCode::OK, "{}", again.2);
    assert_eq!(again.2["data_key"], first.2["data_key"]);
    assert_eq!(
        t.audit(TENANT_A).await.len(),
        audit_len,
        "nothing written again"
    );
    assert_eq!(t.audit_of(TENANT_A, "repository.register").await.len(), 1);
}

#[tokio::test]
async fn a_registration_with_other_fields_is_a_conflict_naming_the_field() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let body = full_repo(7, "seven", "owner");
    let first = register_new(&t, TENANT_A, &body).await;
    let audit_len = t.audit(TENANT_A).await.len();
    let changes: [(&str, Value); 11] = [
        ("repo_name", json!("eight")),
        ("full_path", json!("other/seven")),
        ("project_id", json!("fedcba9876543210fedcba9876543210")),
        ("project_id", Value::Null),
        ("project_name", json!("other")),
        ("owner_id", json!(43)),
        ("owner_iam_id", json!("iam-43")),
        ("owner_tenant_name", json!("other")),
        ("owner_nick_name", json!("other")),
        ("owner_name", json!("someone else")),
        ("encrypted", json!(false)),
    ];
    let svc = service_token(&t);
    for (field, value) in changes {
        let mut other = body.clone();
        other[field] = value.clone();
        let r = register(&t, &svc, TENANT_A, &other).await;
        assert_error(
            &r,
            StatusCode::CONFLICT,
            "RC.409004",
            &["repository 7", field],
        );
        assert!(!r
            .2
            .to_string()
            .contains(first["data_key"].as_str().unwrap()));
    }
    assert_eq!(t.audit(TENANT_A).await.len(), audit_len, "nothing written");
    let again = register(&t, &svc, TENANT_A, &body).await;
    assert_eq!((again.0, &again.2), (StatusCode::OK, &first), "unchanged");

    // An unencrypted repository asked for again as encrypted is a conflict too.
    let plain = json!({"repo_id": 8, "repo_name": "p", "full_path": "g/p", "encrypted": false});
    register_new(&t, TENANT_A, &plain).await;
    let mut enc = plain.clone();
    enc["encrypted"] = json!(true);
    let r = register(&t, &svc, TENANT_A, &enc).await;
    assert_error(&r, StatusCode::CONFLICT, "RC.409004", &["encrypted"]);
}

#[tokio::test]
async fn registration_bodies_are_validated_before_anything_is_written() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let svc = service_token(&t);
    let long = "x".repeat(1001);
    let cases: Vec<(String, &str, &str)> = vec![
        // (body, code, a part of the message)
        (
            json!({"repo_name": "a", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_id",
        ),
        (
            json!({"repo_id": 1, "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_name",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a"}).to_string(),
            "RC.400002",
            "full_path",
        ),
        (
            json!({"repo_id": 0, "repo_name": "a", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_id",
        ),
        (
            json!({"repo_id": -1, "repo_name": "a", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_id",
        ),
        (
            json!({"repo_id": 2_147_483_648_i64, "repo_name": "a", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_id",
        ),
        (
            json!({"repo_id": "1", "repo_name": "a", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_id",
        ),
        (
            json!({"repo_id": 1.5, "repo_name": "a", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_id",
        ),
        (
            json!({"repo_id": Value::Null, "repo_name": "a", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_id",
        ),
        (
            json!({"repo_id": 1, "repo_name": 5, "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_name",
        ),
        (
            json!({"repo_id": 1, "repo_name": "", "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_name",
        ),
        (
            json!({"repo_id": 1, "repo_name": long, "full_path": "g/a"}).to_string(),
            "RC.400002",
            "repo_name",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a", "full_path": ["g"]}).to_string(),
            "RC.400002",
            "full_path",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a", "full_path": "g/a", "owner_id": -1}).to_string(),
            "RC.400002",
            "owner_id",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a", "full_path": "g/a", "owner_id": "42"})
                .to_string(),
            "RC.400002",
            "owner_id",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a", "full_path": "g/a", "owner_name": 7})
                .to_string(),
            "RC.400002",
            "owner_name",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a", "full_path": "g/a", "encrypted": "yes"})
                .to_string(),
            "RC.400002",
            "encrypted",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a", "full_path": "g/a", "data_key": "AAAA"})
                .to_string(),
            "RC.400001",
            "data_key",
        ),
        (
            json!({"repo_id": 1, "repo_name": "a", "full_path": "g/a", "repoName": "a"})
                .to_string(),
            "RC.400001",
            "repoName",
        ),
        ("[1]".to_owned(), "RC.400001", "JSON object"),
        ("{\"repo_id\": 1,".to_owned(), "RC.400001", "JSON"),
        (String::new(), "RC.400001", "JSON"),
    ];
    let before = t.audit(TENANT_A).await.len();
    for (body, code, part) in &cases {
        let r = t
            .send_as(&svc, Method::POST, &repos_path(TENANT_A), body)
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, code, &[part]);
    }
    // Not JSON by its Content-Type: 415, however good the body.
    let Auth::Token(token) = &svc else {
        unreachable!()
    };
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut headers = vec![("x-auth-token", token.as_str())];
        if let Some(ct) = ct {
            headers.push(("content-type", ct));
        }
        let r = t
            .send(
                Method::POST,
                &repos_path(TENANT_A),
                &headers,
                repo(1, "a").to_string(),
            )
            .await;
        assert_error(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "RC.415001", &[]);
    }
    assert_eq!(t.audit(TENANT_A).await.len(), before, "audit unchanged");
    assert_eq!(stored_repos(&t, TENANT_A).await, 0, "no repository stored");
    assert_eq!(
        kms_calls(&t, "generate_data_key", "ok").await,
        0,
        "no key made"
    );
    // The bounds themselves are accepted.
    for id in [1_i64, 2_147_483_647] {
        register_new(&t, TENANT_A, &repo(id, "edge")).await;
    }
}

#[tokio::test]
async fn an_encrypted_registration_is_refused_like_a_put_and_writes_nothing() {
    let t = spawn_app().await;
    let svc = service_token(&t);
    let mut enc = repo(1, "one");
    enc["encrypted"] = json!(true);

    // No grant (and no setting).
    let r = register(&t, &svc, TENANT_A, &enc).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &["kms-grant"]);
    // Granted, but encryption unset, then normal.
    t.grant(TENANT_A).await;
    let r = register(&t, &svc, TENANT_A, &enc).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400014", &["KMS"]);
    let put = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"encryption_type": "normal"}),
        )
        .await;
    assert_eq!(put.0, StatusCode::OK, "{}", put.2);
    let r = register(&t, &service_token(&t), TENANT_A, &enc).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400014", &["KMS"]);
    assert_eq!(stored_repos(&t, TENANT_A).await, 0);

    // KMS with a key that is disabled, pending deletion, then gone.
    let t = spawn_app().await;
    let key = t.configure_kms(TENANT_A).await;
    let audit_len = t.audit(TENANT_A).await.len();
    t.disable_key(TENANT_A, &key.key_id).await;
    let body = repo(1, "one"); // the default: encrypted
    let r = register(&t, &service_token(&t), TENANT_A, &body).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "RC.400009",
        &[&key.key_id, "disabled"],
    );
    t.schedule_deletion(TENANT_A, &key.key_id, 7).await;
    let r = register(&t, &service_token(&t), TENANT_A, &body).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "RC.400009",
        &["pending deletion"],
    );
    t.clock.advance(Duration::from_secs(7 * 86_400 + 1));
    let r = register(&t, &service_token(&t), TENANT_A, &body).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400008", &[&key.key_id]);
    let audit_after = t.audit(TENANT_A).await;
    assert_eq!(
        audit_after
            .iter()
            .filter(|r| r.action.starts_with("repository."))
            .count(),
        0,
        "no repository record: {audit_after:?}"
    );
    assert!(audit_after.len() >= audit_len);
    assert_eq!(stored_repos(&t, TENANT_A).await, 0, "nothing stored");
    assert_eq!(
        kms_calls(&t, "generate_data_key", "ok").await,
        0,
        "no key made"
    );

    // An unencrypted repository needs none of it.
    let mut plain = repo(2, "plain");
    plain["encrypted"] = json!(false);
    let r = register(&t, &service_token(&t), TENANT_A, &plain).await;
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.2);
}

// =====================================================================================
// 2. Authorization
// =====================================================================================

#[tokio::test]
async fn tenant_users_cannot_register_release_or_shred() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let key = register_new(&t, TENANT_A, &repo(1, "one")).await["data_key"].clone();
    let mut users = Vec::new();
    for kind in CALLERS {
        // (AK/SK credentials are made, and audited, before the count.)
        users.push((kind, t.admin_as(kind, TENANT_A).await));
        users.push((kind, t.member_as(kind, TENANT_A).await));
    }
    let audit_len = t.audit(TENANT_A).await.len();
    for (kind, user) in users {
        {
            let label = format!("{kind:?} {user:?}");
            let r = register(&t, &user, TENANT_A, &repo(2, "two")).await;
            assert_error(&r, StatusCode::FORBIDDEN, "RC.403002", &[]);
            let r = release(&t, &user, TENANT_A, 1).await;
            assert_error(&r, StatusCode::FORBIDDEN, "RC.403002", &[]);
            assert!(!r.2.to_string().contains(key.as_str().unwrap()), "{label}");
            let r = shred(&t, &user, TENANT_A, 1).await;
            assert_error(&r, StatusCode::FORBIDDEN, "RC.403002", &[]);
            // The tenant's users do read the list of its encrypted repositories.
            let r = list_repos(&t, &user, TENANT_A, "").await;
            assert_eq!(r.0, StatusCode::ACCEPTED, "{label}: {}", r.2);
            assert_eq!(r.2, json!([repo(1, "one")]), "{label}");
        }
    }
    assert_eq!(t.audit(TENANT_A).await.len(), audit_len, "nothing written");
    assert_eq!(stored_repos(&t, TENANT_A).await, 1);
    assert_eq!(release_ok(&t, TENANT_A, 1).await, key.as_str().unwrap());
}

#[tokio::test]
async fn another_tenants_users_are_refused_on_its_paths() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    t.configure_kms(TENANT_B).await;
    register_new(&t, TENANT_A, &repo(1, "one")).await;
    let audit_len = t.audit(TENANT_A).await.len();
    for kind in CALLERS {
        for user in [
            t.admin_as(kind, TENANT_B).await,
            t.member_as(kind, TENANT_B).await,
        ] {
            let label = format!("{kind:?} {user:?}");
            let responses = [
                register(&t, &user, TENANT_A, &repo(2, "two")).await,
                release(&t, &user, TENANT_A, 1).await,
                shred(&t, &user, TENANT_A, 1).await,
                list_repos(&t, &user, TENANT_A, "").await,
                list_cmks(&t, &user, TENANT_A, "").await,
            ];
            for r in &responses {
                assert_error(r, StatusCode::FORBIDDEN, "CH.004403", &[]);
            }
            // Their own tenant's lists answer.
            let r = list_cmks(&t, &user, TENANT_B, "").await;
            assert_eq!(r.0, StatusCode::ACCEPTED, "{label}: {}", r.2);
        }
    }
    assert_eq!(t.audit(TENANT_A).await.len(), audit_len, "nothing written");
    assert_eq!(release_ok(&t, TENANT_A, 1).await.len(), 44);
}

#[tokio::test]
async fn service_principals_cannot_read_or_change_settings_grants_or_keys() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let before = t.snapshot(TENANT_A).await;
    for kind in CALLERS {
        let svc = service_as(&t, kind).await;
        let put = json!({"encryption_type": "normal"});
        let responses = [
            t.get_setting_as(&svc, TENANT_A).await,
            t.put_setting_as(&svc, TENANT_A, &put).await,
            t.post_grant_as(&svc, TENANT_A).await,
            t.get_grant_as(&svc, TENANT_A).await,
            list_cmks(&t, &svc, TENANT_A, "").await,
        ];
        for r in &responses {
            assert_error(r, StatusCode::FORBIDDEN, "RC.403003", &[]);
        }
    }
    assert_eq!(t.snapshot(TENANT_A).await, before, "nothing written");
    // ShowProjectTenantSettings too: a service principal has no tenant of its own to read,
    // and may not read a project's tenant's either.
    t.add_project(TENANT_A, "0123456789abcdef0123456789abcdef")
        .await;
    for kind in CALLERS {
        let svc = service_as(&t, kind).await;
        for q in [None, Some("project_id=0123456789abcdef0123456789abcdef")] {
            let r = t.tenant_setting_as(&svc, q).await;
            assert_error(&r, StatusCode::FORBIDDEN, "RC.403003", &[]);
        }
    }
}

#[tokio::test]
async fn a_service_principal_lists_any_tenants_encrypted_repositories() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    register_new(&t, TENANT_A, &repo(1, "one")).await;
    for kind in CALLERS {
        let svc = service_as(&t, kind).await;
        let r = list_repos(&t, &svc, TENANT_A, "").await;
        assert_eq!(r.0, StatusCode::ACCEPTED, "{kind:?}: {}", r.2);
        assert_eq!(r.2, json!([repo(1, "one")]), "{kind:?}");
        let r = list_repos(&t, &svc, TENANT_B, "").await;
        assert_eq!((r.0, r.2), (StatusCode::ACCEPTED, json!([])), "{kind:?}");
    }
}

// =====================================================================================
// 3. ListTenantEncryptedRepositories
// =====================================================================================

#[tokio::test]
async fn the_encrypted_list_holds_only_live_encrypted_repositories_by_name() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    t.configure_kms(TENANT_B).await;
    for (id, name) in [
        (1, "delta"),
        (2, "alpha"),
        (3, "charlie"),
        (4, "bravo"),
        (5, "echo"),
    ] {
        register_new(&t, TENANT_A, &repo(id, name)).await;
    }
    let mut plain = repo(6, "zulu");
    plain["encrypted"] = json!(false);
    register_new(&t, TENANT_A, &plain).await;
    register_new(&t, TENANT_A, &repo(7, "yankee")).await;
    assert_eq!(
        shred(&t, &service_token(&t), TENANT_A, 7).await.0,
        StatusCode::NO_CONTENT
    );
    register_new(&t, TENANT_B, &repo(8, "xray")).await;

    let desc = listed(&t, TENANT_A, "").await;
    assert_eq!(ids(&desc), [5, 1, 3, 4, 2], "default: repoName desc");
    assert_eq!(
        desc[0],
        repo(5, "echo"),
        "the SDK's RepoEncryptionDto, nothing more"
    );
    assert_eq!(
        ids(&listed(&t, TENANT_A, "order_by=repoName&sort=desc").await),
        [5, 1, 3, 4, 2]
    );
    assert_eq!(
        ids(&listed(&t, TENANT_A, "sort=asc").await),
        [2, 4, 3, 1, 5]
    );
    assert_eq!(
        ids(&listed(&t, TENANT_A, "order_by=repoName&sort=asc").await),
        [2, 4, 3, 1, 5]
    );
    assert_eq!(ids(&listed(&t, TENANT_B, "").await), [8]);
}

#[tokio::test]
async fn the_encrypted_list_orders_by_owner_name() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    register_new(&t, TENANT_A, &full_repo(1, "r1", "mallory")).await;
    register_new(&t, TENANT_A, &repo(2, "r2")).await; // no owner
    register_new(&t, TENANT_A, &full_repo(3, "r3", "alice")).await;
    register_new(&t, TENANT_A, &full_repo(4, "r4", "zed")).await;
    register_new(&t, TENANT_A, &repo(5, "r5")).await; // no owner
    register_new(&t, TENANT_A, &full_repo(6, "r6", "alice")).await;
    let asc = listed(&t, TENANT_A, "order_by=ownerName&sort=asc").await;
    assert_eq!(
        ids(&asc),
        [2, 5, 3, 6, 1, 4],
        "no owner first, ids break ties"
    );
    assert!(asc[0].get("owner_name").is_none(), "{}", asc[0]);
    assert_eq!(asc[2], full_repo(3, "r3", "alice"));
    let desc = listed(&t, TENANT_A, "order_by=ownerName").await;
    assert_eq!(
        ids(&desc),
        [4, 1, 6, 3, 5, 2],
        "desc by default, no owner last"
    );
}

#[tokio::test]
async fn encrypted_list_pages_are_disjoint_and_cover_everything() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    // Names repeat (ids break the ties), mix cases and reach outside ASCII, so that the
    // order is bytewise on both databases.
    let names = ["beta", "Alpha", "alpha", "zeta", "émile"];
    let owners = ["olga", "Bob", "", "olga", "zoé"];
    let mut all: Vec<(i64, String, String)> = Vec::new();
    for i in 0..23_i64 {
        let id = 1000 - 37 * i; // not in name order
        let name = names[(i % 5) as usize];
        let owner = owners[(i % 4) as usize];
        let body = if owner.is_empty() {
            repo(id, name)
        } else {
            full_repo(id, name, owner)
        };
        register_new(&t, TENANT_A, &body).await;
        all.push((id, name.to_owned(), owner.to_owned()));
    }
    for (order_by, sort) in [
        ("repoName", "asc"),
        ("repoName", "desc"),
        ("ownerName", "asc"),
        ("ownerName", "desc"),
    ] {
        let mut expected = all.clone();
        expected.sort_by(|a, b| {
            let (ka, kb) = if order_by == "repoName" {
                (&a.1, &b.1)
            } else {
                (&a.2, &b.2)
            };
            ka.as_bytes().cmp(kb.as_bytes()).then(a.0.cmp(&b.0))
        });
        if sort == "desc" {
            expected.reverse();
        }
        let expected: Vec<i64> = expected.iter().map(|e| e.0).collect();
        let q = format!("order_by={order_by}&sort={sort}");
        let whole = ids(&listed(&t, TENANT_A, &format!("{q}&limit=100")).await);
        assert_eq!(whole, expected, "{q}");
        let mut paged = Vec::new();
        let mut seen = BTreeSet::new();
        for offset in (0..30).step_by(7) {
            let page = ids(&listed(&t, TENANT_A, &format!("{q}&offset={offset}&limit=7")).await);
            assert!(page.len() <= 7);
            for id in &page {
                assert!(seen.insert(*id), "{q}: {id} on two pages");
            }
            paged.extend(page);
        }
        assert_eq!(
            paged, expected,
            "{q}: the pages, in turn, are the whole list"
        );
    }
    // The default limit is 20.
    assert_eq!(listed(&t, TENANT_A, "").await.len(), 20);
    assert_eq!(listed(&t, TENANT_A, "offset=20").await.len(), 3);
    assert_eq!(
        listed(&t, TENANT_A, "offset=2147483647&limit=100")
            .await
            .len(),
        0
    );
}

#[tokio::test]
async fn list_queries_out_of_range_or_malformed_are_400() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    register_new(&t, TENANT_A, &repo(1, "one")).await;
    let admin = t.admin_as(Caller::Token, TENANT_A).await;
    let svc = service_token(&t);
    let out_of_range = [
        ("offset=-1", "offset"),
        ("offset=2147483648", "offset"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-5", "limit"),
    ];
    for (q, field) in out_of_range {
        let r = list_repos(&t, &svc, TENANT_A, q).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &[field]);
        let r = list_cmks(&t, &admin, TENANT_A, q).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &[field]);
    }
    for (q, field) in [
        ("order_by=name", "order_by"),
        ("order_by=reponame", "order_by"),
        ("sort=up", "sort"),
        ("sort=DESC", "sort"),
    ] {
        let r = list_repos(&t, &svc, TENANT_A, q).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &[field]);
    }
    for (q, field) in [
        ("limit=abc", "limit"),
        ("offset=1.5", "offset"),
        ("offset=99999999999999999999", "offset"),
    ] {
        let r = list_repos(&t, &svc, TENANT_A, q).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400005", &[field]);
        let r = list_cmks(&t, &admin, TENANT_A, q).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400005", &[field]);
    }
    for q in ["limit=1", "limit=100", "offset=0", "offset=2147483647"] {
        assert_eq!(
            list_repos(&t, &svc, TENANT_A, q).await.0,
            StatusCode::ACCEPTED,
            "{q}"
        );
        assert_eq!(
            list_cmks(&t, &admin, TENANT_A, q).await.0,
            StatusCode::ACCEPTED,
            "{q}"
        );
    }
}

#[tokio::test]
async fn an_empty_tenant_lists_nothing() {
    let t = spawn_app().await;
    let r = list_repos(&t, &service_token(&t), TENANT_A, "").await;
    assert_eq!((r.0, r.2), (StatusCode::ACCEPTED, json!([])));
    let r = list_cmks(&t, &t.admin_as(Caller::Token, TENANT_A).await, TENANT_A, "").await;
    assert_eq!((r.0, r.2), (StatusCode::ACCEPTED, json!([])));
}

// =====================================================================================
// 4. ListTenantCmks
// =====================================================================================

#[tokio::test]
async fn the_cmk_list_has_every_state_in_key_id_order_and_only_the_tenants_keys() {
    let t = spawn_app().await;
    let enabled = t.create_key(TENANT_A, "enabled").await;
    let disabled = t.create_key(TENANT_A, "disabled").await;
    t.disable_key(TENANT_A, &disabled.key_id).await;
    let deleting = t.create_key(TENANT_A, "deleting").await;
    t.schedule_deletion(TENANT_A, &deleting.key_id, 7).await;
    let import = t
        .create_key_with(TENANT_A, "import", KeyOrigin::External, false)
        .await;
    let inactive = t
        .create_key_with(TENANT_A, "inactive", KeyOrigin::Kms, true)
        .await;
    let more = t.create_key(TENANT_A, "more").await;
    let b_key = t.create_key(TENANT_B, "b-only").await;

    let mut expected = vec![
        (enabled.key_id.clone(), "enabled", 2),
        (disabled.key_id.clone(), "disabled", 3),
        (deleting.key_id.clone(), "deleting", 4),
        (import.key_id.clone(), "import", 5),
        (inactive.key_id.clone(), "inactive", 1),
        (more.key_id.clone(), "more", 2),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<Value> = expected
        .into_iter()
        .map(
            |(id, name, state)| json!({"cmk_key_id": id, "cmk_key_name": name, "key_state": state}),
        )
        .collect();

    for kind in CALLERS {
        for user in [
            t.admin_as(kind, TENANT_A).await,
            t.member_as(kind, TENANT_A).await,
        ] {
            let r = list_cmks(&t, &user, TENANT_A, "limit=100").await;
            assert_eq!(r.0, StatusCode::ACCEPTED, "{kind:?}: {}", r.2);
            assert_eq!(r.2, Value::Array(expected.clone()), "{kind:?}");
        }
    }
    let admin = t.admin_as(Caller::Token, TENANT_A).await;
    assert_eq!(
        list_cmks(&t, &admin, TENANT_A, "").await.2,
        Value::Array(expected.clone())
    );
    // Pages of 4, then 2, then none: disjoint and, in turn, the whole list.
    let mut paged = Vec::new();
    for offset in [0, 4, 8] {
        let r = list_cmks(&t, &admin, TENANT_A, &format!("offset={offset}&limit=4")).await;
        assert_eq!(r.0, StatusCode::ACCEPTED);
        paged.extend(r.2.as_array().unwrap().clone());
    }
    assert_eq!(paged, expected);
    let r = list_cmks(&t, &admin, TENANT_A, "offset=5&limit=1").await;
    assert_eq!(r.2, json!([expected[5]]));
    // B's keys are B's only.
    let r = list_cmks(&t, &t.admin_as(Caller::Token, TENANT_B).await, TENANT_B, "").await;
    assert_eq!(
        r.2,
        json!([{"cmk_key_id": b_key.key_id, "cmk_key_name": "b-only", "key_state": 2}])
    );
    assert!(!list_cmks(&t, &admin, TENANT_A, "limit=100")
        .await
        .2
        .to_string()
        .contains(&b_key.key_id));
}

// =====================================================================================
// 5. Release and the kill switch
// =====================================================================================

#[tokio::test]
async fn a_release_answers_the_registered_key_and_the_ttl() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(10)).await;
    let key = t.configure_kms(TENANT_A).await;
    let registered = register_new(&t, TENANT_A, &repo(3, "three")).await;
    for kind in CALLERS {
        let r = release(&t, &service_as(&t, kind).await, TENANT_A, 3).await;
        assert_eq!(r.0, StatusCode::OK, "{kind:?}: {}", r.2);
        assert_eq!(
            r.2,
            json!({
                "repo_id": 3,
                "cmk_key_id": key.key_id,
                "data_key": registered["data_key"],
                "cache_seconds": 10,
            }),
            "{kind:?}"
        );
    }
    // With the cache off, a storage node may keep nothing.
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let registered = register_new(&t, TENANT_A, &repo(3, "three")).await;
    let r = release(&t, &service_token(&t), TENANT_A, 3).await;
    assert_eq!(r.2["cache_seconds"], 0, "{}", r.2);
    assert_eq!(r.2["data_key"], registered["data_key"]);
}

#[tokio::test]
async fn releases_of_unknown_unencrypted_or_malformed_repositories_are_refused() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    t.configure_kms(TENANT_B).await;
    register_new(&t, TENANT_A, &repo(1, "one")).await;
    let mut plain = repo(2, "plain");
    plain["encrypted"] = json!(false);
    register_new(&t, TENANT_A, &plain).await;
    let svc = service_token(&t);
    let r = release(&t, &svc, TENANT_A, 99).await;
    assert_error(&r, StatusCode::NOT_FOUND, "RC.404002", &["99"]);
    let r = release(&t, &svc, TENANT_B, 1).await;
    assert_error(&r, StatusCode::NOT_FOUND, "RC.404002", &["1"]);
    let r = release(&t, &svc, TENANT_A, 2).await;
    assert_error(&r, StatusCode::CONFLICT, "RC.409003", &["2"]);
    for bad in ["0", "-1", "abc", "2147483648", "1.0", "01x"] {
        let r = t
            .send_as(&svc, Method::GET, &data_key_path(TENANT_A, bad), "")
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &["repo_id"]);
        let r = t
            .send_as(&svc, Method::DELETE, &data_key_path(TENANT_A, bad), "")
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &["repo_id"]);
    }
}

#[tokio::test]
async fn disabling_the_cmk_stops_releases_within_the_ttl_and_enabling_restores_them() {
    let ttl = Duration::from_secs(10);
    let t = spawn_app_with(|c| c.key_state_cache_ttl = ttl).await;
    let key = t.configure_kms(TENANT_A).await;
    let data_key = register_new(&t, TENANT_A, &repo(1, "one")).await["data_key"].clone();
    assert_eq!(
        release_ok(&t, TENANT_A, 1).await,
        data_key.as_str().unwrap()
    );
    t.disable_key(TENANT_A, &key.key_id).await;
    // Short of the refresh-ahead point (3/4 TTL): the cached state stands.
    t.clock.advance(Duration::from_secs(5));
    assert_eq!(
        release_ok(&t, TENANT_A, 1).await,
        data_key.as_str().unwrap()
    );
    t.clock
        .advance(Duration::from_secs(5) + Duration::from_millis(1));
    let r = release(&t, &service_token(&t), TENANT_A, 1).await;
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        "RC.403005",
        &[&key.key_id, "disabled"],
    );
    assert!(!r.2.to_string().contains(data_key.as_str().unwrap()));
    // Enabled again: refused until the TTL of the refusal passes, then released.
    t.enable_key(TENANT_A, &key.key_id).await;
    t.clock.advance(Duration::from_secs(5));
    let r = release(&t, &service_token(&t), TENANT_A, 1).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403005", &["disabled"]);
    t.clock
        .advance(Duration::from_secs(5) + Duration::from_millis(1));
    assert_eq!(
        release_ok(&t, TENANT_A, 1).await,
        data_key.as_str().unwrap()
    );
}

#[tokio::test]
async fn with_no_ttl_a_disabled_or_deleting_cmk_is_refused_at_once() {
    let t = spawn_app().await; // key_state_cache_ttl = 0
    let key = t.configure_kms(TENANT_A).await;
    let data_key = register_new(&t, TENANT_A, &repo(1, "one")).await["data_key"].clone();
    assert_eq!(
        release_ok(&t, TENANT_A, 1).await,
        data_key.as_str().unwrap()
    );
    t.disable_key(TENANT_A, &key.key_id).await;
    let r = release(&t, &service_token(&t), TENANT_A, 1).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403005", &["disabled"]);
    t.enable_key(TENANT_A, &key.key_id).await;
    assert_eq!(
        release_ok(&t, TENANT_A, 1).await,
        data_key.as_str().unwrap()
    );
    t.schedule_deletion(TENANT_A, &key.key_id, 7).await;
    let r = release(&t, &service_token(&t), TENANT_A, 1).await;
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        "RC.403005",
        &["pending deletion"],
    );
    // Past its deletion date the CMK is gone, and its data keys with it.
    t.clock.advance(Duration::from_secs(7 * 86_400 + 1));
    let r = release(&t, &service_token(&t), TENANT_A, 1).await;
    assert_error(&r, StatusCode::GONE, "RC.410002", &[&key.key_id]);
}

#[tokio::test]
async fn a_withdrawn_grant_stops_releases_at_once() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(10)).await;
    t.configure_kms(TENANT_A).await;
    t.configure_kms(TENANT_B).await;
    let data_key = register_new(&t, TENANT_A, &repo(1, "one")).await["data_key"].clone();
    register_new(&t, TENANT_B, &repo(1, "one")).await;
    assert_eq!(
        release_ok(&t, TENANT_A, 1).await,
        data_key.as_str().unwrap()
    );
    delete_grant_in_db(&t, TENANT_A).await;
    // Within the TTL, the key released a moment ago cached: refused all the same.
    for kind in CALLERS {
        let r = release(&t, &service_as(&t, kind).await, TENANT_A, 1).await;
        assert_error(&r, StatusCode::FORBIDDEN, "RC.403004", &[TENANT_A]);
        assert!(!r.2.to_string().contains(data_key.as_str().unwrap()));
    }
    // Another tenant's keys are still released.
    assert_eq!(release_ok(&t, TENANT_B, 1).await.len(), 44);
}

// =====================================================================================
// 6. KMS calls
// =====================================================================================

#[tokio::test]
async fn a_repository_costs_one_kms_decrypt_per_ttl() {
    let ttl = Duration::from_secs(10);
    let t = spawn_app_with(|c| c.key_state_cache_ttl = ttl).await;
    t.configure_kms(TENANT_A).await;
    let one = register_new(&t, TENANT_A, &repo(1, "one")).await["data_key"].clone();
    let two = register_new(&t, TENANT_A, &repo(2, "two")).await["data_key"].clone();
    assert_eq!(kms_calls(&t, "decrypt", "ok").await, 0);
    for _ in 0..5 {
        assert_eq!(release_ok(&t, TENANT_A, 1).await, one.as_str().unwrap());
        t.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        kms_calls(&t, "decrypt", "ok").await,
        1,
        "one decrypt within the TTL"
    );
    assert_eq!(release_ok(&t, TENANT_A, 2).await, two.as_str().unwrap());
    assert_eq!(
        kms_calls(&t, "decrypt", "ok").await,
        2,
        "one more for another repository"
    );
    // Past the TTL of the first release (and of the key state: no refresh is pending).
    t.clock
        .advance(Duration::from_secs(5) + Duration::from_millis(1));
    for _ in 0..3 {
        assert_eq!(release_ok(&t, TENANT_A, 1).await, one.as_str().unwrap());
    }
    assert_eq!(
        kms_calls(&t, "decrypt", "ok").await,
        3,
        "one decrypt again after the TTL"
    );
}

// =====================================================================================
// 7. Crypto-shredding
// =====================================================================================

#[tokio::test]
async fn crypto_shredding_destroys_the_data_key_for_ever() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(10)).await;
    t.configure_kms(TENANT_A).await;
    let body = full_repo(1, "one", "owner");
    let registered = register_new(&t, TENANT_A, &body).await;
    let data_key = data_key_of(&registered);
    register_new(&t, TENANT_A, &repo(2, "two")).await;
    let wrapped = wrapped_in_db(&t, TENANT_A, 1).await.expect("a wrapped key");
    assert_eq!(release_ok(&t, TENANT_A, 1).await, data_key); // cached now
    let generated = kms_calls(&t, "generate_data_key", "ok").await;

    for kind in CALLERS {
        let r = shred(&t, &service_as(&t, kind).await, TENANT_A, 1).await;
        assert_eq!(
            (r.0, &r.2),
            (StatusCode::NO_CONTENT, &Value::Null),
            "{kind:?}: now, then again"
        );
    }
    assert_eq!(
        wrapped_in_db(&t, TENANT_A, 1).await,
        None,
        "the wrapped key is NULL"
    );
    // On SQLite, its bytes are in none of the database's files: zeroed in the page
    // (secure_delete), and the WAL that held the page's older images truncated.
    if let Some(path) = t.app.config.database_url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        for suffix in ["", "-wal"] {
            let file = format!("{path}{suffix}");
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes
                    .windows(wrapped.len())
                    .any(|w| w == wrapped.as_slice()),
                "the shredded wrapped key is still in {file}"
            );
        }
    }
    let shown = t
        .app
        .service
        .show_repository(&tid(TENANT_A), RepoId::new(1).unwrap())
        .await
        .unwrap();
    assert!(
        shown.shredded_at.is_some() && shown.wrapped_key.is_none(),
        "{shown:?}"
    );
    for _ in 0..2 {
        let r = release(&t, &service_token(&t), TENANT_A, 1).await;
        assert_error(&r, StatusCode::GONE, "RC.410001", &["1"]);
        // Registering it again with the same body makes no new key.
        let r = register(&t, &service_token(&t), TENANT_A, &body).await;
        assert_error(&r, StatusCode::GONE, "RC.410001", &["1"]);
        t.clock.advance(Duration::from_secs(3600));
    }
    assert_eq!(
        kms_calls(&t, "generate_data_key", "ok").await,
        generated,
        "no new key"
    );
    assert_eq!(wrapped_in_db(&t, TENANT_A, 1).await, None);
    assert_eq!(
        ids(&listed(&t, TENANT_A, "").await),
        [2],
        "no longer listed"
    );
    assert_eq!(
        stored_repos(&t, TENANT_A).await,
        2,
        "the row stays, keyless"
    );

    let registers = t.audit_of(TENANT_A, "repository.register").await;
    let shreds = t.audit_of(TENANT_A, "repository.shred").await;
    assert_eq!(registers.len(), 2);
    assert_eq!(
        shreds.len(),
        1,
        "one record: the second DELETE changed nothing"
    );
    assert_eq!(shreds[0].actor, "service:node");
    let before = shreds[0].before.as_ref().unwrap();
    let after = shreds[0].after.as_ref().unwrap();
    assert_eq!(before["repo_id"], 1);
    assert!(before.get("shredded_at").is_none() && after["shredded_at"].is_string());
    let text = audit_text(&t, TENANT_A).await;
    assert_no_material(&text, &B64.decode(&data_key).unwrap(), "the audit log");
    assert_no_material(&text, &wrapped, "the audit log");
    assert!(
        !text.contains("data_key") && !text.contains("wrapped"),
        "{text}"
    );
}

#[tokio::test]
async fn shredding_an_unencrypted_or_unknown_repository_is_refused() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let mut plain = repo(2, "plain");
    plain["encrypted"] = json!(false);
    register_new(&t, TENANT_A, &plain).await;
    let audit_len = t.audit(TENANT_A).await.len();
    let svc = service_token(&t);
    let r = shred(&t, &svc, TENANT_A, 2).await;
    assert_error(&r, StatusCode::CONFLICT, "RC.409003", &["2"]);
    let r = shred(&t, &svc, TENANT_A, 3).await;
    assert_error(&r, StatusCode::NOT_FOUND, "RC.404002", &["3"]);
    assert_eq!(t.audit(TENANT_A).await.len(), audit_len, "nothing written");
}

// =====================================================================================
// 8. A wrapped key moved or altered
// =====================================================================================

#[tokio::test]
async fn a_moved_or_altered_wrapped_key_is_refused() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(10)).await;
    t.configure_kms(TENANT_A).await;
    t.configure_kms(TENANT_B).await;
    let key4 = register_new(&t, TENANT_A, &repo(4, "four")).await["data_key"].clone();
    let key5 = register_new(&t, TENANT_A, &repo(5, "five")).await["data_key"].clone();
    let key_b4 = register_new(&t, TENANT_B, &repo(4, "four")).await["data_key"].clone();
    let own = wrapped_in_db(&t, TENANT_A, 4).await.unwrap();
    let of_5 = wrapped_in_db(&t, TENANT_A, 5).await.unwrap();
    let of_b4 = wrapped_in_db(&t, TENANT_B, 4).await.unwrap();
    assert_eq!(release_ok(&t, TENANT_A, 4).await, key4.as_str().unwrap()); // cached

    let mut flipped_tag = own.clone();
    *flipped_tag.last_mut().unwrap() ^= 0x01;
    let mut flipped_body = own.clone();
    flipped_body[own.len() / 2] ^= 0x80;
    let mut flipped_version = own.clone();
    flipped_version[0] ^= 0x01;
    let truncated = own[..own.len() - 1].to_vec();
    let cases: [(&str, Vec<u8>); 6] = [
        ("repository 5's", of_5),
        ("tenant B's repository 4's", of_b4),
        ("a flipped tag bit", flipped_tag),
        ("a flipped ciphertext bit", flipped_body),
        ("another version", flipped_version),
        ("a truncated one", truncated),
    ];
    let keys: Vec<Vec<u8>> = [&key4, &key5, &key_b4]
        .iter()
        .map(|k| B64.decode(k.as_str().unwrap()).unwrap())
        .collect();
    for (what, wrapped) in cases {
        set_wrapped_in_db(&t, TENANT_A, 4, &wrapped).await;
        let r = release(&t, &service_token(&t), TENANT_A, 4).await;
        assert_error(&r, StatusCode::CONFLICT, "RC.409005", &["repository 4"]);
        let text = r.2.to_string();
        for k in &keys {
            assert_no_material(&text, k, what);
        }
        assert_no_material(&text, &wrapped, what);
        // Registering it again releases nothing either.
        let r = register(&t, &service_token(&t), TENANT_A, &repo(4, "four")).await;
        assert_error(&r, StatusCode::CONFLICT, "RC.409005", &["repository 4"]);
    }
    set_wrapped_in_db(&t, TENANT_A, 4, &own).await;
    assert_eq!(
        release_ok(&t, TENANT_A, 4).await,
        key4.as_str().unwrap(),
        "restored"
    );
    assert_eq!(release_ok(&t, TENANT_A, 5).await, key5.as_str().unwrap());
}

// =====================================================================================
// 9. Concurrency
// =====================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_registrations_make_one_repository_and_one_key() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let Auth::Token(token) = service_token(&t) else {
        unreachable!()
    };
    let body = full_repo(77, "raced", "owner").to_string();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (router, token, body) = (t.router.clone(), token.clone(), body.clone());
        set.spawn(async move {
            send_to(
                router,
                Method::POST,
                &repos_path(TENANT_A),
                &[
                    ("x-auth-token", &token),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        });
    }
    let mut created = 0;
    let mut keys = BTreeSet::new();
    while let Some(r) = set.join_next().await {
        let (status, _, body) = r.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::OK => {}
            other => panic!("{other}: {body}"),
        }
        keys.insert(data_key_of(&body));
    }
    assert_eq!(created, 1, "exactly one registration is new");
    assert_eq!(keys.len(), 1, "every answer has the same key: {keys:?}");
    assert_eq!(t.audit_of(TENANT_A, "repository.register").await.len(), 1);
    assert_eq!(stored_repos(&t, TENANT_A).await, 1);
    assert_eq!(&release_ok(&t, TENANT_A, 77).await, keys.first().unwrap());
}

// =====================================================================================
// 10. Changing and retiring keys: impact, the interlock, grant withdrawal
// =====================================================================================

fn key_repos_path(tenant: &str, key_id: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/cmks/{key_id}/repositories")
}

async fn key_repos(t: &TestApp, auth: &Auth, tenant: &str, key_id: &str, query: &str) -> Resp {
    t.send_as(
        auth,
        Method::GET,
        &with_query(key_repos_path(tenant, key_id), query),
        "",
    )
    .await
}

/// ListTenantCmkRepositories expecting 202: the repository ids and `X-Total-Count`.
async fn key_repo_ids(
    t: &TestApp,
    auth: &Auth,
    tenant: &str,
    key_id: &str,
    query: &str,
) -> (Vec<i64>, u64) {
    let r = key_repos(t, auth, tenant, key_id, query).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{key_id} ?{query}: {}", r.2);
    let total =
        r.1.get("x-total-count")
            .unwrap_or_else(|| panic!("no X-Total-Count: {:?}", r.1))
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
    let list = r.2.as_array().unwrap_or_else(|| panic!("{}", r.2));
    (ids(list), total)
}

/// The change events of the tenant in the store, as (type, the event's JSON).
async fn events_of(t: &TestApp, tenant: &str) -> Vec<(String, Value)> {
    t.app
        .store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.tenant_id == tenant)
        .map(|e| {
            (
                e.change.kind().to_owned(),
                serde_json::to_value(&e).unwrap(),
            )
        })
        .collect()
}

async fn delete_grant(t: &TestApp, auth: &Auth, tenant: &str) -> Resp {
    t.send_as(auth, Method::DELETE, &grant_path(tenant), "")
        .await
}

/// Register `id` encrypted under the tenant's current key, as the service; its data key.
async fn register_encrypted(t: &TestApp, tenant: &str, id: i64) -> String {
    let mut body = repo(id, &format!("r{id}"));
    body["encrypted"] = json!(true);
    data_key_of(&register_new(t, tenant, &body).await)
}

#[tokio::test]
async fn the_repositories_of_a_key_are_counted_paged_by_id_and_tenant_isolated() {
    let t = spawn_app().await;
    let first = t.configure_kms(TENANT_A).await;
    for id in [5, 3, 1, 2, 4] {
        register_new(&t, TENANT_A, &full_repo(id, &format!("r{id}"), "owner")).await;
    }
    let mut plain = repo(8, "plain");
    plain["encrypted"] = json!(false);
    register_new(&t, TENANT_A, &plain).await;
    assert_eq!(
        shred(&t, &service_token(&t), TENANT_A, 2).await.0,
        StatusCode::NO_CONTENT
    );
    // A new key for new repositories: the old ones stay under the first.
    let second = t.create_key(TENANT_A, "second-key").await;
    let r = t
        .put_setting(
            TENANT_A,
            &t.admin(TENANT_A),
            &json!({"cmk_key_id": second.key_id}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    for id in [7, 6] {
        register_new(&t, TENANT_A, &repo(id, &format!("r{id}"))).await;
    }
    let b_key = t.configure_kms(TENANT_B).await;
    register_new(&t, TENANT_B, &repo(1, "b1")).await;

    // Any role of the tenant, and service principals, by either kind of credential.
    for kind in CALLERS {
        for auth in [
            t.admin_as(kind, TENANT_A).await,
            t.member_as(kind, TENANT_A).await,
            service_as(&t, kind).await,
        ] {
            let got = key_repo_ids(&t, &auth, TENANT_A, &first.key_id, "").await;
            assert_eq!(got, (vec![1, 3, 4, 5], 4), "{kind:?} {auth:?}");
        }
    }
    let svc = service_token(&t);
    assert_eq!(
        key_repo_ids(&t, &svc, TENANT_A, &second.key_id, "").await,
        (vec![6, 7], 2)
    );
    // Paged by id; the count is of them all.
    assert_eq!(
        key_repo_ids(&t, &svc, TENANT_A, &first.key_id, "offset=1&limit=2").await,
        (vec![3, 4], 4)
    );
    assert_eq!(
        key_repo_ids(&t, &svc, TENANT_A, &first.key_id, "offset=3&limit=2").await,
        (vec![5], 4)
    );
    assert_eq!(
        key_repo_ids(&t, &svc, TENANT_A, &first.key_id, "offset=9").await,
        (vec![], 4)
    );
    // The items are the list operation's RepoEncryptionDto, field for field.
    let r = key_repos(&t, &svc, TENANT_A, &first.key_id, "limit=1").await;
    let listed_one = listed(&t, TENANT_A, "order_by=repoName&sort=asc&limit=1").await;
    assert_eq!(r.2, json!(listed_one), "the same view as the list");
    assert_eq!(r.2[0]["repo_id"], 1, "{}", r.2);
    // Out of range, or a malformed key id: 400, as the list operations.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=-1", "offset"),
    ] {
        let r = key_repos(&t, &svc, TENANT_A, &first.key_id, query).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &[field]);
    }
    let r = key_repos(&t, &svc, TENANT_A, &"k".repeat(1001), "").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400002", &["key_id"]);
    let r = key_repos(&t, &svc, TENANT_A, &first.key_id, "limit=x").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400005", &[]);

    // Another tenant's user: 403. Another tenant's key, seen from this tenant, is a key
    // this tenant does not have: the same empty answer as a key that exists nowhere.
    let r = key_repos(
        &t,
        &Auth::Token(t.admin(TENANT_B)),
        TENANT_A,
        &first.key_id,
        "",
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "CH.004403", &[]);
    let b_admin = Auth::Token(t.admin(TENANT_B));
    let foreign = key_repos(&t, &b_admin, TENANT_B, &first.key_id, "").await;
    let unknown = key_repos(&t, &b_admin, TENANT_B, "no-such-key", "").await;
    for r in [&foreign, &unknown] {
        assert_eq!((r.0, &r.2), (StatusCode::ACCEPTED, &json!([])));
        assert_eq!(r.1["x-total-count"], "0");
    }
    assert_eq!(
        key_repo_ids(&t, &b_admin, TENANT_B, &b_key.key_id, "").await,
        (vec![1], 1)
    );
    assert_eq!(
        key_repo_ids(
            &t,
            &Auth::Token(t.admin(TENANT_A)),
            TENANT_A,
            &b_key.key_id,
            ""
        )
        .await,
        (vec![], 0)
    );
    // The service's answer, as `repocrypt kms impact` reads it.
    let page = repocrypt::domain::Page::new(None, None).unwrap();
    let impact = t
        .app
        .service
        .key_impact(&tid(TENANT_A), &first.key_id, page)
        .await
        .unwrap();
    assert_eq!(
        (impact.key_id.as_str(), impact.total),
        (first.key_id.as_str(), 4)
    );
}

#[tokio::test]
async fn disabling_or_deleting_a_key_that_repositories_depend_on_is_refused_unless_forced() {
    use repocrypt::domain::{Error, KeyState};
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(10)).await;
    let key = t.configure_kms(TENANT_A).await;
    let one = register_encrypted(&t, TENANT_A, 1).await;
    register_encrypted(&t, TENANT_A, 2).await;
    register_encrypted(&t, TENANT_A, 3).await;
    assert_eq!(
        shred(&t, &service_token(&t), TENANT_A, 3).await.0,
        StatusCode::NO_CONTENT
    );
    let mut plain = repo(4, "plain");
    plain["encrypted"] = json!(false);
    register_new(&t, TENANT_A, &plain).await;
    assert_eq!(release_ok(&t, TENANT_A, 1).await, one); // cached, state and key
    let (s, a, cli) = (&t.app.service, tid(TENANT_A), Actor::cli());
    let state = || async {
        t.app
            .kms
            .describe_key(&tid(TENANT_A), &key.key_id)
            .await
            .unwrap()
            .unwrap()
            .key_state
    };

    // Refused, with the count of the repositories it would cut off (2: not the shredded
    // one, nor the unencrypted), and audited; the key is unchanged.
    let e = s
        .disable_key(&cli, &a, &key.key_id, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::KeyInUse {
                repositories: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), "RC.409010");
    let msg = e.to_string();
    for part in [
        key.key_id.as_str(),
        "2 repositories",
        "--force",
        "kms impact",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    let e = s
        .schedule_key_deletion(&cli, &a, &key.key_id, 7, false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::KeyInUse {
                repositories: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("deletion"), "{e}");
    assert_eq!(state().await, KeyState::Enabled);
    assert_eq!(release_ok(&t, TENANT_A, 1).await, one);
    let refused = t.audit_of(TENANT_A, "kms.disable_key.refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "cli");
    assert_eq!(
        refused[0].after,
        Some(json!({"key_id": key.key_id, "key_state": 2, "repositories": 2}))
    );
    let refused = t
        .audit_of(TENANT_A, "kms.schedule_key_deletion.refused")
        .await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].after.as_ref().unwrap()["repositories"], 2);
    assert_eq!(refused[0].after.as_ref().unwrap()["pending_days"], 7);
    assert!(t.audit_of(TENANT_A, "kms.disable_key").await.is_empty());
    assert!(t
        .audit_of(TENANT_A, "kms.schedule_key_deletion")
        .await
        .is_empty());

    // Another tenant cannot learn of the key, nor of its repositories, this way.
    let e = s
        .disable_key(&cli, &tid(TENANT_B), &key.key_id, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "RC.400008", "{e:?}");
    assert!(t
        .audit(TENANT_B)
        .await
        .iter()
        .all(|r| !r.action.contains("refused")));

    // Forced: done, audited with the count before the KMS's own record; this process's
    // releases stop at once (not after the TTL).
    let key_events = |all: Vec<(String, Value)>| -> Vec<(String, Value)> {
        all.into_iter()
            .filter(|e| e.0 == "key_state_changed")
            .collect()
    };
    assert!(
        key_events(events_of(&t, TENANT_A).await).is_empty(),
        "a refusal changes nothing"
    );
    let info = s.disable_key(&cli, &a, &key.key_id, true).await.unwrap();
    assert_eq!(info.key_state, KeyState::Disabled);
    // The change is an event naming the repositories it cut off.
    let events = key_events(events_of(&t, TENANT_A).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "key_state_changed");
    assert_eq!(events[0].1["key_id"], key.key_id.as_str());
    assert_eq!(events[0].1["old_state"], 2);
    assert_eq!(events[0].1["new_state"], 3);
    assert_eq!(events[0].1["repositories"], json!([1, 2]));
    assert_eq!(state().await, KeyState::Disabled);
    let r = release(&t, &service_token(&t), TENANT_A, 1).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403005", &["disabled"]);
    let records = t.audit(TENANT_A).await;
    let at = |action: &str| records.iter().position(|r| r.action == action);
    let forced = at("kms.disable_key.forced").expect("forced record");
    assert!(forced < at("kms.disable_key").expect("the change's record"));
    assert_eq!(
        records[forced].after,
        Some(json!({"key_id": key.key_id, "key_state": 2, "repositories": 2}))
    );
    let info = s
        .schedule_key_deletion(&cli, &a, &key.key_id, 7, true)
        .await
        .unwrap();
    assert_eq!(info.key_state, KeyState::PendingDeletion);
    let forced = t
        .audit_of(TENANT_A, "kms.schedule_key_deletion.forced")
        .await;
    assert_eq!(forced.len(), 1);
    assert_eq!(forced[0].after.as_ref().unwrap()["repositories"], 2);
    assert_eq!(forced[0].after.as_ref().unwrap()["key_state"], 3);
    // Cancelled and enabled again through the service: released again at once.
    s.cancel_key_deletion(&cli, &a, &key.key_id).await.unwrap();
    s.enable_key(&cli, &a, &key.key_id).await.unwrap();
    assert_eq!(release_ok(&t, TENANT_A, 1).await, one);

    // A key no repository depends on: as before, no --force, nothing more recorded.
    let spare = t.create_key(TENANT_A, "spare-key").await;
    let before = t.audit(TENANT_A).await.len();
    let info = s.disable_key(&cli, &a, &spare.key_id, false).await.unwrap();
    assert_eq!(info.key_state, KeyState::Disabled);
    s.schedule_key_deletion(&cli, &a, &spare.key_id, 7, false)
        .await
        .unwrap();
    let new: Vec<String> = t.audit(TENANT_A).await[before..]
        .iter()
        .map(|r| r.action.clone())
        .collect();
    assert_eq!(new, ["kms.disable_key", "kms.schedule_key_deletion"]);
}

#[tokio::test]
async fn withdrawing_the_grant_stops_releases_registrations_and_kms_puts_until_a_new_grant() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(10)).await;
    let key = t.configure_kms(TENANT_A).await;
    t.configure_kms(TENANT_B).await;
    let one = register_encrypted(&t, TENANT_A, 1).await;
    register_new(&t, TENANT_B, &repo(1, "b1")).await;
    let wrapped = wrapped_in_db(&t, TENANT_A, 1).await.unwrap();
    assert_eq!(release_ok(&t, TENANT_A, 1).await, one); // cached: repository, key, state

    // Only the tenant's admin withdraws it.
    let audit_len = t.audit(TENANT_A).await.len();
    for kind in CALLERS {
        let r = delete_grant(&t, &t.member_as(kind, TENANT_A).await, TENANT_A).await;
        assert_error(&r, StatusCode::FORBIDDEN, "RC.403001", &["admin"]);
        let r = delete_grant(&t, &t.admin_as(kind, TENANT_B).await, TENANT_A).await;
        assert_error(&r, StatusCode::FORBIDDEN, "CH.004403", &[]);
        let r = delete_grant(&t, &service_as(&t, kind).await, TENANT_A).await;
        assert_error(&r, StatusCode::FORBIDDEN, "RC.403003", &[]);
    }
    assert!(t.audit_of(TENANT_A, "kms_grant.delete").await.is_empty());
    assert!(t.audit(TENANT_A).await.len() >= audit_len);
    // (AK/SK credentials made above are audited: count from here.)
    let audit_len = t.audit(TENANT_A).await.len();
    assert_eq!(release_ok(&t, TENANT_A, 1).await, one, "still granted");

    assert!(
        events_of(&t, TENANT_A).await.is_empty(),
        "a first grant raises nothing"
    );
    // Withdrawn: 204, and again 204 (nothing more written).
    for kind in CALLERS {
        let r = delete_grant(&t, &t.admin_as(kind, TENANT_A).await, TENANT_A).await;
        assert_eq!(
            (r.0, &r.2),
            (StatusCode::NO_CONTENT, &Value::Null),
            "{kind:?}"
        );
    }
    let deleted = t.audit_of(TENANT_A, "kms_grant.delete").await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].actor, admin_user(TENANT_A));
    assert!(deleted[0].request_id.is_some());
    let before = deleted[0].before.as_ref().unwrap();
    assert_eq!(before["assumed"], true, "{before}");
    assert_eq!(before["granted_by"], "cli", "{before}");
    assert!(before["granted_at"].is_string(), "{before}");
    assert_eq!(deleted[0].after, None);
    let new: Vec<String> = t.audit(TENANT_A).await[audit_len..]
        .iter()
        .map(|r| r.action.clone())
        .collect();
    assert_eq!(
        new.iter().filter(|a| *a == "kms_grant.delete").count(),
        1,
        "{new:?}"
    );
    let kinds: Vec<String> = events_of(&t, TENANT_A)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        kinds,
        ["grant_withdrawn"],
        "one event, for the one withdrawal"
    );

    // GET answers assumed false; releases are refused at once in this process (the cached
    // repository, state and key notwithstanding), by every kind of caller.
    let r = t.get_grant(TENANT_A, &t.member(TENANT_A)).await;
    assert_eq!(
        (r.0, &r.2),
        (
            StatusCode::ACCEPTED,
            &json!({"tenant_id": TENANT_A, "assumed": false})
        )
    );
    for kind in CALLERS {
        let r = release(&t, &service_as(&t, kind).await, TENANT_A, 1).await;
        assert_error(&r, StatusCode::FORBIDDEN, "RC.403004", &[TENANT_A]);
        assert!(!r.2.to_string().contains(&one), "{kind:?}");
    }
    // Registering it again releases nothing either; a new encrypted one is refused as
    // before a grant, an unencrypted one is not.
    let mut again = repo(1, "r1");
    again["encrypted"] = json!(true);
    let r = register(&t, &service_token(&t), TENANT_A, &again).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403004", &[]);
    let mut enc = repo(2, "r2");
    enc["encrypted"] = json!(true);
    let r = register(&t, &service_token(&t), TENANT_A, &enc).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &["kms-grant"]);
    let r = register(&t, &service_token(&t), TENANT_A, &repo(3, "default")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &["kms-grant"]);
    let mut plain = repo(4, "plain");
    plain["encrypted"] = json!(false);
    register_new(&t, TENANT_A, &plain).await;
    // A KMS PUT is refused as before a grant; one that turns encryption off is not.
    let admin = t.admin(TENANT_A);
    let r = t
        .put_setting(
            TENANT_A,
            &admin,
            &json!({"encryption_type": "KMS", "cmk_key_id": key.key_id}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &["kms-grant"]);
    let r = t
        .put_setting(
            TENANT_A,
            &admin,
            &json!({"default_encryption_enabled": true}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &[]);
    // The other tenant is untouched.
    assert_eq!(release_ok(&t, TENANT_B, 1).await.len(), 44);
    // The data key is kept: withdrawal is reversible.
    assert_eq!(wrapped_in_db(&t, TENANT_A, 1).await, Some(wrapped));

    // A new grant restores the releases: the same plaintext key.
    let r = t.post_grant(TENANT_A, &admin).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    let r = t.get_grant(TENANT_A, &admin).await;
    assert_eq!(r.2["assumed"], true, "{}", r.2);
    assert_eq!(release_ok(&t, TENANT_A, 1).await, one);
    assert_eq!(
        data_key_of(&register_new(&t, TENANT_A, &enc).await).len(),
        44
    );
    let created = t.audit_of(TENANT_A, "kms_grant.create").await;
    assert_eq!(
        created.last().unwrap().before,
        None,
        "a new grant, not the old one"
    );
    let r = t.post_grant(TENANT_A, &admin).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    let kinds: Vec<String> = events_of(&t, TENANT_A)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        kinds,
        ["grant_withdrawn", "grant_restored"],
        "restored once: a repeated grant is no restoration"
    );
    assert!(events_of(&t, TENANT_B).await.is_empty());
}

#[tokio::test]
async fn a_grant_withdrawn_by_another_process_is_seen_within_a_second() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    register_encrypted(&t, TENANT_A, 1).await;
    let member = t.member(TENANT_A);
    // Read (and cached, on SQLite) before the withdrawal.
    assert_eq!(t.get_grant(TENANT_A, &member).await.2["assumed"], true);
    delete_grant_in_db(&t, TENANT_A).await; // as `repocrypt tenant revoke-kms-grant` does
    assert_eq!(t.get_grant(TENANT_A, &member).await.2["assumed"], false);
    let r = register(&t, &service_token(&t), TENANT_A, &repo(2, "two")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &[]);
    let r = release(&t, &service_token(&t), TENANT_A, 1).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403004", &[]);
}
