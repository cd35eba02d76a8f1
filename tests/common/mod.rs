//! Helpers for the in-process API tests: a fresh app per test (own temp dir, own database,
//! own root key), a manual clock, tokens, and a `send` that drives the router.
//!
//! The database is SQLite, or, when `REPOCRYPT_TEST_DATABASE_URL` names a PostgreSQL
//! server, a fresh PostgreSQL database per test (`repocrypt_test_<random>`), so the same
//! test story runs on both.

#![allow(dead_code)]

pub mod binary;
pub mod keystone;
pub mod moto;
pub mod proxy;
pub mod sdk;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

use repocrypt::app::App;
use repocrypt::clock::{Clock, ManualClock};
use repocrypt::config::{Config, ConfigArgs};
use repocrypt::domain::{Actor, AuditRecord, Identity, PermitPublic, Role, TenantId};
use repocrypt::kms::{KeyInfo, KeyOrigin};
use repocrypt::store::AuditFilter;

use sdk::{Cred, Signer};

/// 2026-01-01T00:00:00Z.
pub const START_UNIX: u64 = 1_767_225_600;
/// Lifetime of the tokens `token()` issues.
pub const TOKEN_TTL_SECS: u64 = 3600;

pub const TENANT_A: &str = "159b65b41ead484d8ddff250a4731781";
pub const TENANT_B: &str = "28c4e7f1a0b94d2e9c3b5a6d7e8f9012";

pub const REGION: &str = "cn-north-7";
pub const REGION_TYPE: &str = "primary";
/// The `Host` of the in-process signed requests.
pub const SIGNED_HOST: &str = "repocrypt.test";

/// Status, headers and JSON body of a response (`Null` for an empty body, a JSON string
/// holding the raw text when the body is not JSON).
pub type Resp = (StatusCode, HeaderMap, Value);

pub struct TestApp {
    pub app: App,
    pub clock: Arc<ManualClock>,
    pub router: Router,
    _dir: TempDir,
}

/// What a request may have changed: the stored row, the grant and the audit log.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub setting: Option<Value>,
    pub granted: bool,
    pub audit_len: usize,
}

/// An app with the key-state cache off (every GET asks the KMS).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app whose configuration `adjust` may change before it opens.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::load(&ConfigArgs {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .expect("config loads");
    config.root_key = None; // a fresh root key per app, whatever the environment says
    config.key_state_cache_ttl = Duration::ZERO;
    config.region = REGION.into();
    config.region_type = REGION_TYPE.into();
    if let Some(url) = test_database_url() {
        config.database_url = fresh_postgres_database(&url).await;
    }
    adjust(&mut config);
    let clock = Arc::new(ManualClock::at_unix(START_UNIX));
    let app = App::open(config, clock.clone()).await.expect("app opens");
    let router = app.router();
    TestApp {
        app,
        clock,
        router,
        _dir: dir,
    }
}

impl TestApp {
    /// Another process on the same database, data directory (root key) and clock: a
    /// replica, or the same server after a restart.
    pub async fn replica(&self) -> TestApp {
        let app = App::open(self.app.config.clone(), self.clock.clone())
            .await
            .expect("replica opens");
        let router = app.router();
        TestApp {
            app,
            clock: self.clock.clone(),
            router,
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

/// One Server-Sent Event's block (up to its blank line) as a client reads it: its `id`,
/// `event` and `data` (JSON where it parses); `None` for a comment or a `retry:` alone.
pub fn parse_sse_block(block: &str) -> Option<(Option<i64>, String, Value)> {
    let (mut id, mut event, mut data) = (None, String::new(), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    if event.is_empty() {
        return None;
    }
    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
    Some((id, event, data))
}

impl TestApp {
    /// Run one SQL statement (no parameters) on the app's database, as another process
    /// would; the rows it affected.
    pub async fn exec_sql(&self, statement: &str) -> u64 {
        use sqlx::Connection as _;
        let url = self.app.config.database_url.clone();
        if url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            let n = sqlx::query(statement)
                .execute(&mut c)
                .await
                .expect(statement);
            c.close().await.expect("close");
            n.rows_affected()
        } else {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            let n = sqlx::query(statement)
                .execute(&mut c)
                .await
                .expect(statement);
            c.close().await.expect("close");
            n.rows_affected()
        }
    }
}

/// The PostgreSQL server for test `test`, or `None` with the reason printed (a failure
/// when `REPOCRYPT_REQUIRE_EXTERNAL` is set, as under `.ci/run`).
pub fn pg_url_or_skip(test: &str) -> Option<String> {
    let url = test_database_url();
    if url.is_none() {
        assert!(
            std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
            "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
        );
        eprintln!("SKIPPED {test}: REPOCRYPT_TEST_DATABASE_URL is not set");
    }
    url
}

/// The PostgreSQL server to run the story on, if any.
pub fn test_database_url() -> Option<String> {
    std::env::var("REPOCRYPT_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// `host:port` of a `postgres://user@host:port/db` URL (to put a proxy in front of).
pub fn pg_hostport(url: &str) -> String {
    let rest = url.split_once('@').map_or(url, |(_, r)| r);
    rest.split_once('/').map_or(rest, |(h, _)| h).to_owned()
}

/// Create an empty database on the server of `url`; its URL.
pub async fn fresh_postgres_database(url: &str) -> String {
    use sqlx::Connection;
    let name = format!("repocrypt_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to REPOCRYPT_TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let _ = admin.close().await;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let server = base.rsplit_once('/').map(|(s, _)| s).unwrap_or(base);
    format!("{server}/{name}{query}")
}

/// `text` with the ASCII character at byte `at` changed to another (`A`, or `B` where it
/// was `A`): never the same text, whatever the random secret or token was.
pub fn flip_char(text: &str, at: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("an ASCII character replaced by another")
}

pub fn tid(tenant: &str) -> TenantId {
    TenantId::parse(tenant).expect("valid tenant id")
}

pub fn setting_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/setting")
}

pub fn grant_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/kms-grant")
}

/// `/v4/tenant/setting`, with `query` appended verbatim after `?` when given.
pub fn tenant_setting_path(query: Option<&str>) -> String {
    match query {
        Some(q) => format!("/v4/tenant/setting?{q}"),
        None => "/v4/tenant/setting".to_owned(),
    }
}

/// The two kinds of caller of the API; the authorization tests run under both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `X-Auth-Token`.
    Token,
    /// `Authorization: SDK-HMAC-SHA256 …` with a credential of the app's.
    AkSk,
}

/// Both kinds of caller, for `for kind in CALLERS`.
pub const CALLERS: [Caller; 2] = [Caller::Token, Caller::AkSk];

/// How one caller authenticates (see [`TestApp::caller`]).
#[derive(Clone, Debug)]
pub enum Auth {
    Token(String),
    AkSk(Cred),
}

/// The headers of an in-process request signed with `cred` at `date`, for [`SIGNED_HOST`].
pub fn signed_headers(
    cred: &Cred,
    method: &str,
    uri: &str,
    body: &[u8],
    date: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    Signer {
        ak: &cred.ak,
        secret: cred.sk.as_bytes(),
        host: SIGNED_HOST,
        date,
    }
    .sign(method, uri, body, extra)
    .headers
}

/// Drive `router` with one request.
pub async fn send_to(
    router: Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Resp {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(body.into()).expect("request builds");
    let response = router.oneshot(request).await.expect("router is infallible");
    let (parts, body) = response.into_parts();
    if parts
        .headers
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream")
    {
        // A stream of events never ends: its status and headers are the answer.
        return (parts.status, parts.headers, Value::Null);
    }
    let bytes = body.collect().await.expect("body reads").to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (parts.status, parts.headers, value)
}

impl TestApp {
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        send_to(self.router.clone(), method, uri, headers, body).await
    }

    // ---- tokens ------------------------------------------------------------------------

    /// A token valid for `TOKEN_TTL_SECS` from the clock's now.
    pub fn token(&self, tenant: &str, user: &str, role: Role) -> String {
        let now = self.clock.unix_seconds();
        let identity = Identity {
            tenant_id: tid(tenant),
            user_id: user.to_owned(),
            user_name: format!("{user} (test)"),
            role,
            expires_at: now + TOKEN_TTL_SECS,
        };
        self.app.tokens.issue(&identity, now).expect("token issues")
    }

    /// Token of the tenant's admin, user `admin-<first 8 chars of tenant>`.
    pub fn admin(&self, tenant: &str) -> String {
        self.token(tenant, &admin_user(tenant), Role::Admin)
    }

    /// Token of a plain member of the tenant.
    pub fn member(&self, tenant: &str) -> String {
        self.token(tenant, &format!("member-{}", short(tenant)), Role::Member)
    }

    /// An AK/SK credential of `user` in `tenant`, created through the app (as
    /// `repocrypt credential create` does).
    pub async fn credential(&self, tenant: &str, user: &str, role: Role) -> Cred {
        let (c, secret) = self
            .app
            .credentials
            .create(&tid(tenant), user, role, &Actor::cli())
            .await
            .expect("credential is created");
        Cred {
            ak: c.access_key,
            sk: secret.expose().to_owned(),
        }
    }

    // ---- callers of either kind (a token, or an AK/SK signature) ------------------------

    /// The clock's now as an `X-Sdk-Date`.
    pub fn sdk_now(&self) -> String {
        sdk::sdk_date(self.clock.unix_seconds())
    }

    /// `user` of `tenant` with `role`, calling as `kind`: a token issued for them, or an
    /// AK/SK credential created for them through the app.
    pub async fn caller(&self, kind: Caller, tenant: &str, user: &str, role: Role) -> Auth {
        match kind {
            Caller::Token => Auth::Token(self.token(tenant, user, role)),
            Caller::AkSk => Auth::AkSk(self.credential(tenant, user, role).await),
        }
    }

    /// The tenant's admin (the user of [`TestApp::admin`]) as `kind`.
    pub async fn admin_as(&self, kind: Caller, tenant: &str) -> Auth {
        self.caller(kind, tenant, &admin_user(tenant), Role::Admin)
            .await
    }

    /// A plain member of the tenant (the user of [`TestApp::member`]) as `kind`.
    pub async fn member_as(&self, kind: Caller, tenant: &str) -> Auth {
        self.caller(
            kind,
            tenant,
            &format!("member-{}", short(tenant)),
            Role::Member,
        )
        .await
    }

    /// `method uri` with a JSON `body` (or none when empty), authenticated as `auth`.
    pub async fn send_as(&self, auth: &Auth, method: Method, uri: &str, body: &str) -> Resp {
        let headers: Vec<(String, String)> = match auth {
            Auth::Token(token) => vec![
                ("x-auth-token".into(), token.clone()),
                ("content-type".into(), "application/json".into()),
            ],
            Auth::AkSk(cred) => signed_headers(
                cred,
                method.as_str(),
                uri,
                body.as_bytes(),
                &self.sdk_now(),
                &[],
            ),
        };
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        self.send(method, uri, &h, body.to_owned()).await
    }

    pub async fn put_setting_as(&self, auth: &Auth, tenant: &str, body: &Value) -> Resp {
        self.send_as(auth, Method::PUT, &setting_path(tenant), &body.to_string())
            .await
    }

    pub async fn get_setting_as(&self, auth: &Auth, tenant: &str) -> Resp {
        self.send_as(auth, Method::GET, &setting_path(tenant), "")
            .await
    }

    pub async fn post_grant_as(&self, auth: &Auth, tenant: &str) -> Resp {
        self.send_as(auth, Method::POST, &grant_path(tenant), "")
            .await
    }

    pub async fn get_grant_as(&self, auth: &Auth, tenant: &str) -> Resp {
        self.send_as(auth, Method::GET, &grant_path(tenant), "")
            .await
    }

    pub async fn tenant_setting_as(&self, auth: &Auth, query: Option<&str>) -> Resp {
        self.send_as(auth, Method::GET, &tenant_setting_path(query), "")
            .await
    }

    // ---- the five operations -----------------------------------------------------------

    pub async fn put_setting(&self, tenant: &str, token: &str, body: &Value) -> Resp {
        self.put_raw(tenant, token, Some("application/json"), body.to_string())
            .await
    }

    pub async fn put_setting_with_id(
        &self,
        tenant: &str,
        token: &str,
        request_id: &str,
        body: &Value,
    ) -> Resp {
        self.send(
            Method::PUT,
            &setting_path(tenant),
            &[
                ("x-auth-token", token),
                ("content-type", "application/json"),
                ("x-request-id", request_id),
            ],
            body.to_string(),
        )
        .await
    }

    pub async fn put_raw(
        &self,
        tenant: &str,
        token: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Resp {
        let mut headers = vec![("x-auth-token", token)];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        self.send(Method::PUT, &setting_path(tenant), &headers, body)
            .await
    }

    pub async fn get_setting(&self, tenant: &str, token: &str) -> Resp {
        self.send(
            Method::GET,
            &setting_path(tenant),
            &[("x-auth-token", token)],
            Body::empty(),
        )
        .await
    }

    pub async fn post_grant(&self, tenant: &str, token: &str) -> Resp {
        self.send(
            Method::POST,
            &grant_path(tenant),
            &[("x-auth-token", token)],
            Body::empty(),
        )
        .await
    }

    pub async fn get_grant(&self, tenant: &str, token: &str) -> Resp {
        self.send(
            Method::GET,
            &grant_path(tenant),
            &[("x-auth-token", token)],
            Body::empty(),
        )
        .await
    }

    /// `GET /v4/tenant/setting`, with `query` appended verbatim after `?` when given.
    pub async fn tenant_setting(&self, token: &str, query: Option<&str>) -> Resp {
        let uri = tenant_setting_path(query);
        self.send(Method::GET, &uri, &[("x-auth-token", token)], Body::empty())
            .await
    }

    // ---- set-up through the service and the KMS -----------------------------------------

    pub async fn grant(&self, tenant: &str) {
        self.app
            .service
            .create_grant(&Actor::cli(), &tid(tenant))
            .await
            .expect("grant");
    }

    pub async fn create_key(&self, tenant: &str, alias: &str) -> KeyInfo {
        self.create_key_with(tenant, alias, KeyOrigin::Kms, false)
            .await
    }

    pub async fn create_key_with(
        &self,
        tenant: &str,
        alias: &str,
        origin: KeyOrigin,
        inactive: bool,
    ) -> KeyInfo {
        self.app
            .kms
            .create_key(&tid(tenant), alias, origin, inactive, &Actor::cli())
            .await
            .expect("create key")
    }

    pub async fn disable_key(&self, tenant: &str, key_id: &str) -> KeyInfo {
        self.app
            .kms
            .disable_key(&tid(tenant), key_id, &Actor::cli())
            .await
            .expect("disable key")
    }

    pub async fn enable_key(&self, tenant: &str, key_id: &str) -> KeyInfo {
        self.app
            .kms
            .enable_key(&tid(tenant), key_id, &Actor::cli())
            .await
            .expect("enable key")
    }

    pub async fn schedule_deletion(&self, tenant: &str, key_id: &str, days: u32) -> KeyInfo {
        self.app
            .kms
            .schedule_key_deletion(&tid(tenant), key_id, days, &Actor::cli())
            .await
            .expect("schedule key deletion")
    }

    pub async fn cancel_deletion(&self, tenant: &str, key_id: &str) -> KeyInfo {
        self.app
            .kms
            .cancel_key_deletion(&tid(tenant), key_id, &Actor::cli())
            .await
            .expect("cancel key deletion")
    }

    /// Grant KMS use and create an enabled key named `repo-key`.
    pub async fn kms_ready(&self, tenant: &str) -> KeyInfo {
        self.grant(tenant).await;
        self.create_key(tenant, "repo-key").await
    }

    /// `kms_ready`, then PUT encryption_type KMS with that key and default encryption on.
    pub async fn configure_kms(&self, tenant: &str) -> KeyInfo {
        let key = self.kms_ready(tenant).await;
        let r = self
            .put_setting(
                tenant,
                &self.admin(tenant),
                &serde_json::json!({
                    "encryption_type": "KMS",
                    "cmk_key_id": key.key_id,
                    "default_encryption_enabled": true,
                }),
            )
            .await;
        assert_eq!(r.0, StatusCode::OK, "configure_kms: {}", r.2);
        key
    }

    pub async fn add_project(&self, tenant: &str, project_id: &str) {
        self.app
            .service
            .add_project(&Actor::cli(), &tid(tenant), project_id, "demo")
            .await
            .expect("add project");
    }

    pub async fn add_member(&self, project_id: &str, tenant: &str, user: &str) {
        self.app
            .service
            .add_project_member(&Actor::cli(), project_id, &tid(tenant), user)
            .await
            .expect("add project member");
    }

    pub async fn set_permit_public(&self, tenant: &str, value: PermitPublic) {
        self.app
            .service
            .set_permit_public(&Actor::cli(), &tid(tenant), value)
            .await
            .expect("set permit_public");
    }

    // ---- inspection ----------------------------------------------------------------------

    pub async fn audit(&self, tenant: &str) -> Vec<AuditRecord> {
        self.app
            .store
            .list_audit(&AuditFilter::tenant(&tid(tenant)))
            .await
            .expect("list audit")
    }

    pub async fn audit_of(&self, tenant: &str, action: &str) -> Vec<AuditRecord> {
        self.audit(tenant)
            .await
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }

    pub async fn snapshot(&self, tenant: &str) -> Snapshot {
        let t = tid(tenant);
        let setting = self
            .app
            .store
            .get_setting(&t)
            .await
            .expect("get setting")
            .map(|s| serde_json::to_value(s).expect("setting serializes"));
        let granted = self
            .app
            .store
            .get_grant(&t)
            .await
            .expect("get grant")
            .is_some();
        Snapshot {
            setting,
            granted,
            audit_len: self.audit(tenant).await.len(),
        }
    }
}

pub fn short(tenant: &str) -> String {
    tenant.chars().take(8).collect()
}

pub fn admin_user(tenant: &str) -> String {
    format!("admin-{}", short(tenant))
}

/// Assert an error response: status, exact `error_code`, an `error_msg` containing every
/// part of `msg_parts`, no other body field, and an `X-Request-Id` header.
#[track_caller]
pub fn assert_error(resp: &Resp, status: StatusCode, code: &str, msg_parts: &[&str]) {
    let (got_status, headers, body) = resp;
    assert_eq!(*got_status, status, "status; body: {body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {body}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error_code", "error_msg"], "error body: {body}");
    assert_eq!(body["error_code"], code, "error_code; body: {body}");
    let msg = body["error_msg"]
        .as_str()
        .unwrap_or_else(|| panic!("error_msg is not a string: {body}"));
    for part in msg_parts {
        assert!(
            msg.contains(part),
            "error_msg should mention `{part}`: {msg}"
        );
    }
    let rid = headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on an error response: {body}"));
    assert!(!rid.is_empty(), "empty X-Request-Id");
}

/// The sorted keys of a JSON object.
pub fn keys_of(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort_unstable();
    keys
}

/// The first ```sh block after `heading` in README.md.
pub fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("README has a {heading:?} section"));
    let start = section
        .find("```sh\n")
        .expect("walkthrough has a ```sh block")
        + 6;
    let end = section[start..].find("```").expect("block is closed") + start;
    section[start..end].to_owned()
}

pub fn substitute(script: &str, from: &str, to: &str) -> String {
    assert!(
        script.contains(from),
        "the README walkthrough no longer contains `{from}`: update this test with it"
    );
    script.replace(from, to)
}
