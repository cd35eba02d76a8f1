//! The real binary with `iam = "keystone"` against a real OpenStack Keystone v3 of the
//! test's own (tests/keystone): domain- and project-scoped tokens of each role, another
//! domain's token, unscoped, revoked and expired tokens, the cache (one call per token,
//! refusals remembered), the service's own token (renewed; refused), Keystone stopped and
//! started again, and the README's walkthrough.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::common::binary::{Client, Server};
use crate::common::keystone::{Keystone, Scope};
use crate::common::{grant_path, setting_path};

fn repositories_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories")
}

/// A server validating tokens with `keystone`, with more settings.
fn server(keystone: &Keystone, more: &[(&'static str, &str)]) -> Server {
    let mut env: Vec<(&str, String)> = keystone.settings();
    for (k, v) in more {
        env.retain(|(name, _)| name != k);
        env.push((k, (*v).to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env);
    // serve logs in at start: wait for it, so that the first request's iam_timeout is its
    // validation's alone (Keystone is slow on a loaded 2-core machine).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !["logged in to Keystone", "Keystone is not answering yet"]
        .iter()
        .any(|line| server.log().contains(line))
    {
        assert!(
            Instant::now() < deadline,
            "serve did not log in:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

async fn get(http: &Client, path: &str, token: &str) -> (u16, Value) {
    http.call(Method::GET, path, token, None).await
}

fn assert_refused(reply: &(u16, Value), status: u16, code: &str) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["error_code"], code, "{}", reply.1);
}

async fn readyz(http: &Client) -> (u16, String) {
    let reply = http.send(Method::GET, "/readyz", &[], None).await;
    (reply.status, reply.text)
}

/// The value of one sample of `/metrics`, 0 when absent.
async fn metric(http: &Client, sample: &str) -> u64 {
    let text = http.send(Method::GET, "/metrics", &[], None).await.text;
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

const VALIDATED: &str = "repocrypt_iam_calls_total{call=\"validate_token\",outcome=\"ok\"}";
const REFUSED: &str = "repocrypt_iam_calls_total{call=\"validate_token\",outcome=\"refused\"}";
const LOGINS: &str = "repocrypt_iam_calls_total{call=\"issue_service_token\",outcome=\"ok\"}";
const HITS: &str = "repocrypt_cache_hits_total{cache=\"iam_tokens\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_tokens_are_tenants_and_roles_and_revocation_ends_within_the_ttl() {
    let Some(keystone) = Keystone::start(
        "keystone_tokens_are_tenants_and_roles_and_revocation_ends_within_the_ttl",
        3600,
    ) else {
        return;
    };
    // At trace level, every crate's: no token and no password may reach the log even so.
    let server = server(
        &keystone,
        &[
            ("REPOCRYPT_IAM_CACHE_TTL", "2s"),
            ("REPOCRYPT_LOG", "trace"),
        ],
    );
    let http = server.client();
    let tenant_a = keystone.id("TENANT_A_DOMAIN_ID").to_owned();
    let tenant_b = keystone.id("TENANT_B_DOMAIN_ID").to_owned();
    let (setting_a, setting_b) = (setting_path(&tenant_a), setting_path(&tenant_b));

    // alice is admin of tenant-a: the tenant is the token's domain, whether the token is
    // scoped to the domain or to a project of it.
    let alice = keystone.token("alice", "tenant-a", Scope::Domain).await;
    let alice_app = keystone
        .token("alice", "tenant-a", Scope::Project("app"))
        .await;
    for token in [&alice, &alice_app] {
        let (status, body) = get(&http, &setting_a, token).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = http
        .call(Method::POST, &grant_path(&tenant_a), &alice_app, None)
        .await;
    assert!(
        (200..300).contains(&status),
        "an admin grants: {status} {body}"
    );
    // Her token is not tenant-b's.
    assert_refused(&get(&http, &setting_b, &alice).await, 403, "CH.004403");

    // bob (member) and dave (reader) read but do not change.
    let bob = keystone
        .token("bob", "tenant-a", Scope::Project("app"))
        .await;
    let dave = keystone.token("dave", "tenant-a", Scope::Domain).await;
    for token in [&bob, &dave] {
        assert_eq!(get(&http, &setting_a, token).await.0, 202);
        let reply = http
            .call(Method::POST, &grant_path(&tenant_a), token, None)
            .await;
        assert_refused(&reply, 403, "RC.403001");
    }

    // carol has no role anywhere: her only token is unscoped, which names no tenant.
    let carol = keystone.token("carol", "tenant-a", Scope::Unscoped).await;
    let reply = get(&http, &setting_a, &carol).await;
    assert_refused(&reply, 401, "RC.401002");
    assert!(
        reply.1["error_msg"].as_str().unwrap().contains("unscoped"),
        "{}",
        reply.1
    );

    // The service user (role `service`) is a platform service principal: it lists and
    // registers repositories of any tenant, and reads no setting.
    let service = keystone
        .token("repocrypt", "Default", Scope::Project("service"))
        .await;
    assert_refused(&get(&http, &setting_a, &service).await, 403, "RC.403003");
    let (status, body) = get(&http, &repositories_path(&tenant_b), &service).await;
    assert_eq!(status, 202, "{body}");

    // Garbage is refused, and remembered: Keystone is asked once for ten requests.
    let refused_before = metric(&http, REFUSED).await;
    for _ in 0..10 {
        assert_refused(
            &get(&http, &setting_a, "gAAAAABnot-a-keystone-token").await,
            401,
            "RC.401002",
        );
    }
    assert_eq!(metric(&http, REFUSED).await - refused_before, 1);

    // Sixteen concurrent requests with a new token make one validation.
    let fresh = keystone.token("bob", "tenant-a", Scope::Domain).await;
    let validated_before = metric(&http, VALIDATED).await;
    let hits_before = metric(&http, HITS).await;
    let replies = futures_util::future::join_all(
        (0..16).map(|_| async { get(&http, &setting_a, &fresh).await.0 }),
    )
    .await;
    assert!(replies.iter().all(|&s| s == 202), "{replies:?}");
    assert_eq!(metric(&http, VALIDATED).await - validated_before, 1);
    assert_eq!(get(&http, &setting_a, &fresh).await.0, 202);
    assert!(metric(&http, HITS).await > hits_before);

    // A token revoked in Keystone stops working within iam_cache_ttl (2 s here).
    let doomed = keystone.token("alice", "tenant-a", Scope::Domain).await;
    assert_eq!(get(&http, &setting_a, &doomed).await.0, 202);
    keystone.revoke(&doomed).await;
    let revoked_at = Instant::now();
    loop {
        let reply = get(&http, &setting_a, &doomed).await;
        if reply.0 == 401 {
            assert_refused(&reply, 401, "RC.401002");
            break;
        }
        assert_eq!(reply.0, 202, "{}", reply.1);
        assert!(
            revoked_at.elapsed() < Duration::from_millis(3500),
            "a revoked token still works after iam_cache_ttl"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "keystone: a revoked token was refused {} ms after its revocation (iam_cache_ttl 2s)",
        revoked_at.elapsed().as_millis()
    );

    // No token and no password reach the log.
    let log = server.log();
    assert!(
        log.contains("caller authenticated"),
        "the log is at trace level"
    );
    for secret in [&alice, &bob, &service, &fresh, &doomed] {
        assert!(!log.contains(secret.as_str()), "a token in the log");
    }
    assert!(!log.contains("repocrypt-secret"), "the password in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_mapping_and_the_service_users_credentials_are_settings() {
    let Some(keystone) = Keystone::start(
        "the_role_mapping_and_the_service_users_credentials_are_settings",
        3600,
    ) else {
        return;
    };
    let tenant_a = keystone.id("TENANT_A_DOMAIN_ID").to_owned();
    let setting_a = setting_path(&tenant_a);
    let dave = keystone.token("dave", "tenant-a", Scope::Domain).await;
    let bob = keystone.token("bob", "tenant-a", Scope::Domain).await;

    // Only `member` maps to a member: dave's `reader` maps to nothing, a 403.
    let narrow = server(&keystone, &[("REPOCRYPT_IAM_MEMBER_ROLES", "member")]);
    let http = narrow.client();
    assert_refused(&get(&http, &setting_a, &dave).await, 403, "RC.403006");
    assert_eq!(get(&http, &setting_a, &bob).await.0, 202);
    // `reader` as an admin role (a deliberately odd mapping) makes dave an admin.
    let odd = server(
        &keystone,
        &[
            ("REPOCRYPT_IAM_ADMIN_ROLES", "reader"),
            ("REPOCRYPT_IAM_MEMBER_ROLES", "member"),
        ],
    );
    let reply = odd
        .client()
        .call(Method::POST, &grant_path(&tenant_a), &dave, None)
        .await;
    assert!((200..300).contains(&reply.0), "{reply:?}");

    // The service's own password refused: 503 with its own code (never a 401), and an
    // error in the log naming the settings to check, not the password.
    let wrong = server(&keystone, &[("REPOCRYPT_IAM_PASSWORD", "not-the-password")]);
    let reply = get(&wrong.client(), &setting_a, &bob).await;
    assert_refused(&reply, 503, "RC.503003");
    let log = wrong.log_with("refused the service's own credentials");
    assert!(
        log.contains("iam_user") && log.contains("REPOCRYPT_IAM_PASSWORD"),
        "{log}"
    );
    assert!(!log.contains("not-the-password"), "the password in the log");
    // Reported, but the instance stays ready: AK/SK and cached tokens still work.
    let (status, body) = readyz(&wrong.client()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""status":"degraded""#) && body.contains(r#""iam":"unreachable""#),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_dev_00000003_and_the_service_token_is_renewed() {
    // Tokens live 4 s: the caller's and the service's own.
    let Some(keystone) = Keystone::start(
        "an_expired_token_is_dev_00000003_and_the_service_token_is_renewed",
        4,
    ) else {
        return;
    };
    let server = server(&keystone, &[]);
    let http = server.client();
    let setting_a = setting_path(keystone.id("TENANT_A_DOMAIN_ID"));
    let alice = keystone.token("alice", "tenant-a", Scope::Domain).await;
    let issued = Instant::now();
    assert_eq!(get(&http, &setting_a, &alice).await.0, 202);
    // Cached for 60 s, but never past the token's life.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(issued.elapsed())).await;
    let reply = get(&http, &setting_a, &alice).await;
    assert_refused(&reply, 401, "DEV.00000003");
    assert_eq!(reply.1["error_msg"], "Authentication information expired.");
    // A new token validates with a new service token: the first one has expired too.
    let again = keystone.token("alice", "tenant-a", Scope::Domain).await;
    assert_eq!(get(&http, &setting_a, &again).await.0, 202);
    assert!(
        metric(&http, LOGINS).await >= 2,
        "the service token was renewed"
    );
    // An expired token never seen before is expired too (Keystone tells, asked with
    // allow_expired), not merely unknown.
    let unseen = keystone.token("bob", "tenant-a", Scope::Domain).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_refused(&get(&http, &setting_a, &unseen).await, 401, "DEV.00000003");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_down_cached_tokens_work_new_ones_are_503_and_it_recovers() {
    let Some(mut keystone) = Keystone::start(
        "keystone_down_cached_tokens_work_new_ones_are_503_and_it_recovers",
        3600,
    ) else {
        return;
    };
    let server = server(&keystone, &[]);
    let http = server.client();
    let setting_a = setting_path(keystone.id("TENANT_A_DOMAIN_ID"));
    let cached = keystone.token("alice", "tenant-a", Scope::Domain).await;
    let unseen = keystone.token("bob", "tenant-a", Scope::Domain).await;
    assert_eq!(get(&http, &setting_a, &cached).await.0, 202);
    assert_eq!(readyz(&http).await.0, 200);

    keystone.stop();
    assert_eq!(get(&http, &setting_a, &cached).await.0, 202, "cached");
    let started = Instant::now();
    let reply = get(&http, &setting_a, &unseen).await;
    assert_refused(&reply, 503, "RC.503003");
    assert!(started.elapsed() < Duration::from_millis(2500));
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the readiness reuse
    let (status, body) = readyz(&http).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"degraded""#), "{body}");
    assert!(body.contains(r#""iam":"unreachable""#), "{body}");

    keystone.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&http, &setting_a, &unseen).await;
        if reply.0 == 202 {
            break;
        }
        assert_refused(&reply, 503, "RC.503003");
        assert!(Instant::now() < deadline, "not recovered: {}", reply.1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = readyz(&http).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ready""#), "{body}");
}

/// README's "Using an external IAM" walkthrough: the server's settings are those of its
/// first block, and its second block runs verbatim but for the addresses.
#[test]
fn readme_keystone_walkthrough_runs() {
    let Some(keystone) = Keystone::start("readme_keystone_walkthrough_runs", 3600) else {
        return;
    };
    let serve =
        crate::common::readme_block("\n## Using an external IAM (Keystone or Huawei Cloud IAM)\n");
    let readme_port = "127.0.0.1:5000";
    for (name, value) in keystone.settings() {
        let value = value.replace(&format!("127.0.0.1:{}", keystone.port), readme_port);
        assert!(
            serve.contains(&format!("{name}={value}")),
            "README's serve block lacks {name}={value}:\n{serve}"
        );
    }
    assert!(serve.contains("cargo run --release -- serve"), "{serve}");
    let server = server(&keystone, &[]);
    let script = crate::common::readme_block("\nThen, in another shell:\n");
    let script = crate::common::substitute(
        &script,
        readme_port,
        &format!("127.0.0.1:{}", keystone.port),
    );
    let script = crate::common::substitute(&script, "127.0.0.1:8080", &server.addr);
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(server.dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HTTP/1.1 202"), "{stdout}");
    assert!(stdout.contains(r#""assumed":true}"#), "the grant: {stdout}");
    assert!(stdout.contains("HTTP/1.1 403"), "{stdout}");
    assert!(stdout.contains("RC.403001"), "{stdout}");
}
