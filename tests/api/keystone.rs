//! `iam = "keystone"` in process, against a fake Keystone v3 on a loopback port that counts
//! what it is asked and can be made slow or refuse the service's token, with the app's manual
//! clock driving the cache: the role mapping, one validation per token however many ask at
//! once, the cache's TTL bounded by the token's life, refusals remembered briefly, the
//! service's token renewed when refused, and a hung Keystone answered with 503 in time. The
//! real Keystone runs in `tests/external/keystone.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use repocrypt::clock::Clock;
use repocrypt::config::IamBackend;
use serde_json::{json, Value};

use crate::common::{
    assert_error, setting_path, spawn_app_with, TestApp, START_UNIX, TENANT_A, TENANT_B,
};

fn repositories_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories")
}

/// What the fake Keystone knows and counts.
#[derive(Default)]
struct Fake {
    /// Caller tokens and the `token` object Keystone would return for each.
    tokens: Mutex<HashMap<String, Value>>,
    validations: AtomicU64,
    logins: AtomicU64,
    /// Service tokens issued; only the last is accepted.
    service_token: Mutex<String>,
    /// Every validation waits this long first (milliseconds).
    delay_ms: AtomicU64,
    /// Every login waits this long first (milliseconds).
    login_delay_ms: AtomicU64,
    /// Refuse the current service token (as if revoked) until the next login.
    refuse_service: AtomicBool,
    /// TCP connections accepted.
    connections: AtomicU64,
}

fn iso(unix: u64) -> String {
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

async fn login(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> Response {
    let delay = fake.login_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let user = &body["auth"]["identity"]["password"]["user"];
    if user["name"] != "svc" || user["password"] != "svc-pass" {
        return (StatusCode::UNAUTHORIZED, "{}").into_response();
    }
    let n = fake.logins.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("svc-token-{n}");
    *fake.service_token.lock().unwrap() = token.clone();
    fake.refuse_service.store(false, Ordering::SeqCst);
    (
        StatusCode::CREATED,
        [("x-subject-token", token)],
        Json(json!({"token": {"expires_at": iso(START_UNIX + 3600)}})),
    )
        .into_response()
}

async fn validate(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let delay = fake.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    fake.validations.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let service_ok = header("x-auth-token") == *fake.service_token.lock().unwrap()
        && !fake.refuse_service.load(Ordering::SeqCst);
    if !service_ok {
        return (StatusCode::UNAUTHORIZED, "{}").into_response();
    }
    match fake.tokens.lock().unwrap().get(&header("x-subject-token")) {
        Some(token) => Json(json!({ "token": token })).into_response(),
        None => (StatusCode::NOT_FOUND, "{}").into_response(),
    }
}

struct Harness {
    t: TestApp,
    fake: Arc<Fake>,
}

/// A fake Keystone and an app validating tokens with it.
async fn harness(adjust: impl FnOnce(&mut repocrypt::config::Config)) -> Harness {
    let fake = Arc::new(Fake::default());
    let router = Router::new()
        .route("/v3/auth/tokens", post(login).get(validate))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counted = fake.clone();
    let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
        counted.connections.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    let t = spawn_app_with(|c| {
        c.iam = IamBackend::Keystone;
        c.iam_url = Some(format!("http://{addr}/v3"));
        c.iam_user = Some("svc".into());
        c.iam_project = Some("service".into());
        c.iam_password = Some("svc-pass".to_owned().into());
        adjust(c);
    })
    .await;
    Harness { t, fake }
}

impl Harness {
    /// A token Keystone will vouch for: `roles` in `domain`, project-scoped when `project`,
    /// living `life` seconds from the app's clock.
    fn token(&self, name: &str, domain: &str, roles: &[&str], project: bool, life: u64) -> String {
        let mut body = json!({
            "user": {"id": format!("{name}-id"), "name": name, "domain": {"id": domain}},
            "roles": roles.iter().map(|r| json!({"id": r, "name": r})).collect::<Vec<_>>(),
            "expires_at": iso(self.t.clock.unix_seconds() + life),
        });
        if project {
            body["project"] =
                json!({"id": "p1", "name": "app", "domain": {"id": domain, "name": domain}});
        } else if !domain.is_empty() {
            body["domain"] = json!({"id": domain, "name": "d"});
        }
        let token = format!("gAAAAAB-{name}-{}", uuid::Uuid::new_v4().simple());
        self.fake.tokens.lock().unwrap().insert(token.clone(), body);
        token
    }

    /// A token of the platform's own project (`service` of `Default`, as the harness's
    /// iam_project and iam_user_domain say).
    fn platform_token(&self, name: &str, roles: &[&str]) -> String {
        let token = self.token(name, "default", roles, true, 3600);
        let mut tokens = self.fake.tokens.lock().unwrap();
        let body = tokens.get_mut(&token).unwrap();
        body["project"] =
            json!({"id": "svc", "name": "service", "domain": {"id": "default", "name": "Default"}});
        drop(tokens);
        token
    }

    fn validations(&self) -> u64 {
        self.fake.validations.load(Ordering::SeqCst)
    }

    async fn get(&self, path: &str, token: &str) -> crate::common::Resp {
        self.t
            .send(
                axum::http::Method::GET,
                path,
                &[("x-auth-token", token)],
                axum::body::Body::empty(),
            )
            .await
    }
}

#[tokio::test]
async fn keystone_roles_scopes_and_tenants() {
    let h = harness(|_| {}).await;
    let admin = h.token(
        "alice",
        TENANT_A,
        &["admin", "member", "reader"],
        false,
        3600,
    );
    let member = h.token("bob", TENANT_A, &["reader"], true, 3600);
    let service = h.platform_token("node", &["service"]);
    // A tenant's admin can grant `service` on the tenant's own project: that is no
    // platform principal.
    let self_made = h.token("mallory", TENANT_A, &["service"], true, 3600);
    let nobody = h.token("carol", TENANT_A, &["auditor"], false, 3600);
    let unscoped = h.token("erin", "", &[], false, 3600);

    let r = h.get(&setting_path(TENANT_A), &admin).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    let r = h.t.post_grant(TENANT_A, &admin).await;
    assert!(r.0.is_success(), "{}", r.2);
    assert_eq!(
        h.get(&setting_path(TENANT_A), &member).await.0,
        StatusCode::ACCEPTED
    );
    let r = h.t.post_grant(TENANT_A, &member).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403001", &[]);
    let r = h.get(&setting_path(TENANT_B), &admin).await;
    assert_error(&r, StatusCode::FORBIDDEN, "CH.004403", &[]);
    let r = h.get(&setting_path(TENANT_A), &service).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403003", &[]);
    let r = h.get(&repositories_path(TENANT_B), &service).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    let r = h.get(&repositories_path(TENANT_B), &self_made).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403006", &[]);
    let r = h.get(&setting_path(TENANT_A), &nobody).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403006", &["no role"]);
    let r = h.get(&setting_path(TENANT_A), &unscoped).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "RC.401002", &["unscoped"]);
    let r = h.get(&setting_path(TENANT_A), "gAAAAAB-unknown").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "RC.401002", &["revoked"]);
}

#[tokio::test]
async fn one_validation_per_token_cached_within_the_ttl_and_the_tokens_life() {
    let h = harness(|c| c.iam_cache_ttl = Duration::from_secs(60)).await;
    let token = h.token("alice", TENANT_A, &["admin"], false, 3600);
    let path = setting_path(TENANT_A);

    // Sixteen at once: one call.
    let replies =
        futures_util::future::join_all((0..16).map(|_| async { h.get(&path, &token).await.0 }))
            .await;
    assert!(
        replies.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{replies:?}"
    );
    assert_eq!(h.validations(), 1);
    // Cached for iam_cache_ttl, then asked again.
    h.t.clock.advance(Duration::from_secs(59));
    assert_eq!(h.get(&path, &token).await.0, StatusCode::ACCEPTED);
    assert_eq!(h.validations(), 1);
    h.t.clock.advance(Duration::from_secs(2));
    assert_eq!(h.get(&path, &token).await.0, StatusCode::ACCEPTED);
    assert_eq!(h.validations(), 2);

    // A token with 10 s to live is cached no longer than that, and then expired.
    let short = h.token("bob", TENANT_A, &["member"], false, 10);
    assert_eq!(h.get(&path, &short).await.0, StatusCode::ACCEPTED);
    h.t.clock.advance(Duration::from_secs(11));
    let r = h.get(&path, &short).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "DEV.00000003", &["expired"]);

    // Refusals are remembered for 5 s: garbage asks Keystone once.
    let before = h.validations();
    for _ in 0..5 {
        let r = h.get(&path, "gAAAAAB-garbage").await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "RC.401002", &[]);
    }
    assert_eq!(h.validations() - before, 1);
    h.t.clock.advance(Duration::from_secs(6));
    let _ = h.get(&path, "gAAAAAB-garbage").await;
    assert_eq!(h.validations() - before, 2);
}

#[tokio::test]
async fn a_zero_ttl_asks_keystone_every_time() {
    let h = harness(|c| c.iam_cache_ttl = Duration::ZERO).await;
    let token = h.token("alice", TENANT_A, &["admin"], false, 3600);
    for _ in 0..3 {
        assert_eq!(
            h.get(&setting_path(TENANT_A), &token).await.0,
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(h.validations(), 3);
}

/// A connection to Keystone belongs to the app's runtime (`crate::home`), not to the
/// runtime of the request that opened it: after a request answered on a thread of its own
/// (as `serve`'s connection threads are), whose runtime then stops, the next request, from
/// another such thread, uses the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_keystone_outlives_the_thread_whose_request_opened_it() {
    let h = harness(|c| c.iam_cache_ttl = Duration::ZERO).await;
    let mut opened_by_the_first = None;
    for name in ["alice", "bob", "carol"] {
        let token = h.token(name, TENANT_A, &["admin"], false, 3600);
        let router = h.t.router.clone();
        let status = tokio::task::spawn_blocking(move || {
            let thread = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            thread.block_on(async {
                let headers = [("x-auth-token", token.as_str())];
                let path = setting_path(TENANT_A);
                crate::common::send_to(router, axum::http::Method::GET, &path, &headers, "")
                    .await
                    .0
            })
            // The thread's runtime stops here, and with it whatever was spawned on it.
        })
        .await
        .unwrap();
        assert_eq!(status, StatusCode::ACCEPTED);
        // The first request logs in and validates: one connection or, if the login's was
        // not back in the pool when the validation asked, two. None after that.
        let opened = h.fake.connections.load(Ordering::SeqCst);
        assert_eq!(
            *opened_by_the_first.get_or_insert(opened),
            opened,
            "after {name}"
        );
    }
    assert_eq!(h.validations(), 3);
}

#[tokio::test]
async fn a_refused_service_token_is_renewed_and_the_validation_retried() {
    let h = harness(|_| {}).await;
    let first = h.token("alice", TENANT_A, &["admin"], false, 3600);
    assert_eq!(
        h.get(&setting_path(TENANT_A), &first).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(h.fake.logins.load(Ordering::SeqCst), 1);
    h.fake.refuse_service.store(true, Ordering::SeqCst);
    // Refused under a second after its login: another login would not help (Keystone
    // nodes out of step, a clock far off), so none is made, and the answer is 503.
    let second = h.token("bob", TENANT_A, &["member"], false, 3600);
    let r = h.get(&setting_path(TENANT_A), &second).await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "RC.503003", &[]);
    assert_eq!(h.fake.logins.load(Ordering::SeqCst), 1);
    // Refused when older: renewed, and the validation made again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = h.get(&setting_path(TENANT_A), &second).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(h.fake.logins.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_hung_keystone_is_a_503_within_iam_timeout_and_cached_tokens_still_work() {
    let h = harness(|c| c.iam_timeout = Duration::from_millis(300)).await;
    let cached = h.token("alice", TENANT_A, &["admin"], false, 3600);
    assert_eq!(
        h.get(&setting_path(TENANT_A), &cached).await.0,
        StatusCode::ACCEPTED
    );
    h.fake.delay_ms.store(5_000, Ordering::SeqCst);
    let fresh = h.token("bob", TENANT_A, &["member"], false, 3600);
    let started = Instant::now();
    let r = h.get(&setting_path(TENANT_A), &fresh).await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "RC.503003", &["retry"]);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        h.get(&setting_path(TENANT_A), &cached).await.0,
        StatusCode::ACCEPTED
    );
    // Not cached: once Keystone answers again, the token works.
    h.fake.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(
        h.get(&setting_path(TENANT_A), &fresh).await.0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn a_hung_login_while_the_service_token_is_still_valid_costs_callers_nothing() {
    let h = harness(|c| c.iam_timeout = Duration::from_millis(600)).await;
    let first = h.token("alice", TENANT_A, &["admin"], false, 7200);
    assert_eq!(
        h.get(&setting_path(TENANT_A), &first).await.0,
        StatusCode::ACCEPTED
    );
    // Past three quarters of the service token's hour: due for renewal, still valid.
    h.t.clock.advance(Duration::from_secs(2800));
    h.fake.login_delay_ms.store(5_000, Ordering::SeqCst);
    for name in ["bob", "dave", "erin"] {
        let token = h.token(name, TENANT_A, &["member"], false, 3600);
        let started = Instant::now();
        let r = h.get(&setting_path(TENANT_A), &token).await;
        assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        h.fake.logins.load(Ordering::SeqCst),
        1,
        "the hung login never finished"
    );
    // Keystone answers logins again: the next request after the backoff renews.
    h.fake.login_delay_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let token = h.token("frank", TENANT_A, &["member"], false, 3600);
    assert_eq!(
        h.get(&setting_path(TENANT_A), &token).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(h.fake.logins.load(Ordering::SeqCst), 2);
}
