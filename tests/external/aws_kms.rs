//! The real binary on the AWS KMS backend, against a `moto_server` of the test's own:
//! configuration from the environment (credentials from the standard AWS chain), the
//! `repocrypt kms` commands, the API, and an outage (moto stopped mid-test).

use crate::common::binary;
use crate::common::moto;

use std::time::{Duration, Instant};

use crate::common::{grant_path as grant, setting_path as setting};
use binary::{stderr, Server};
use moto::Moto;
use serde_json::{json, Value};

const TENANT: &str = "159b65b41ead484d8ddff250a4731781";
const OTHER: &str = "28c4e7f1a0b94d2e9c3b5a6d7e8f9012";

/// An admin command on the server's data that must succeed: its output.
fn run(server: &Server, env: &[(&str, String)], args: &[&str]) -> String {
    binary::cli_ok(server.dir.path(), env, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_backend_end_to_end_and_outage() {
    let Some(mut moto) = Moto::start("aws_backend_end_to_end_and_outage") else {
        return;
    };
    let mut env = moto.env();
    env.push(("REPOCRYPT_KEY_STATE_CACHE_TTL", "1s".into()));
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env_ref);
    let http = server.client();
    let token = |tenant: &str| {
        run(
            &server,
            &env,
            &[
                "token", "issue", "--tenant", tenant, "--user", "u1", "--role", "admin",
            ],
        )
    };
    let (admin, other) = (token(TENANT), token(OTHER));

    // Keys made with the CLI land in moto, tagged for the tenant, named by their alias.
    let key: Value = serde_json::from_str(&run(
        &server,
        &env,
        &["kms", "create-key", "--tenant", TENANT, "--alias", "prod"],
    ))
    .expect("json");
    assert_eq!(key["key_name"], "prod");
    assert_eq!(key["key_state"], 2);
    let key_id = key["key_id"].as_str().expect("key id").to_owned();
    let tags = moto
        .raw_client()
        .list_resource_tags()
        .key_id(&key_id)
        .send()
        .await
        .expect("tags");
    assert!(tags
        .tags()
        .iter()
        .any(|t| t.tag_key() == "repocrypt:tenant" && t.tag_value() == TENANT));
    let listed: Value = serde_json::from_str(&run(
        &server,
        &env,
        &["kms", "list-keys", "--tenant", OTHER],
    ))
    .expect("json");
    assert_eq!(listed, json!([]));

    // Grant (checks the KMS is reachable), then choose the key.
    let (status, body, _) = http
        .timed(reqwest::Method::POST, &grant(TENANT), &admin, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let choose =
        json!({"encryption_type": "kms", "default_encryption_enabled": true, "cmk_key_id": key_id});
    let (status, body, _) = http
        .timed(
            reqwest::Method::PUT,
            &setting(TENANT),
            &admin,
            Some(choose.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["cmk_key_name"].clone(), body["key_state"].clone()),
        (json!("prod"), json!(2))
    );

    // The other tenant cannot select it by id, ARN or alias: the same answer as a key
    // that does not exist.
    let (_, _, _) = http
        .timed(reqwest::Method::POST, &grant(OTHER), &other, None)
        .await;
    let arn = format!("arn:aws:kms:{}:123456789012:key/{key_id}", moto::REGION);
    let mut answers = Vec::new();
    for name in [
        key_id.as_str(),
        arn.as_str(),
        "alias/prod",
        "00000000-0000-0000-0000-000000000000",
    ] {
        let body = json!({"encryption_type": "kms", "cmk_key_id": name});
        let (status, body, _) = http
            .timed(reqwest::Method::PUT, &setting(OTHER), &other, Some(body))
            .await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error_code"], "RC.400008", "{name}: {body}");
        // The message names what the caller sent (cut to 64 characters), nothing else.
        let msg = body["error_msg"].as_str().unwrap_or("").to_owned();
        let named = msg
            .strip_prefix("key ")
            .and_then(|m| m.strip_suffix(" was not found in this tenant's KMS"))
            .unwrap_or_else(|| panic!("{msg}"));
        assert!(name.starts_with(named.trim_end_matches('…')), "{msg}");
        answers.push(msg.replace(named, "<KEY>"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");

    // Lifecycle through the CLI shows in GET once the 1 s cache runs out. The binary runs
    // on the real clock: poll, a bounded while, rather than sleep past the TTL.
    let state_becomes = |want: u64| {
        let (http, setting, admin) = (&http, setting(TENANT), &admin);
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (_, body, _) = http
                    .timed(reqwest::Method::GET, &setting, admin, None)
                    .await;
                if body["key_state"] == want {
                    return body;
                }
                assert!(Instant::now() < deadline, "{body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    run(
        &server,
        &env,
        &[
            "kms",
            "disable-key",
            "--tenant",
            TENANT,
            "--key-id",
            &key_id,
        ],
    );
    let body = state_becomes(3).await;
    assert_eq!(body["key_state"], 3, "{body}");
    run(
        &server,
        &env,
        &["kms", "enable-key", "--tenant", TENANT, "--key-id", &key_id],
    );
    let before = state_becomes(2).await;
    assert_eq!(before["key_state"], 2, "{before}");
    let audit_before = run(&server, &env, &["audit", "list", "--tenant", TENANT]);

    // The KMS goes away.
    moto.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await; // the cached state is now stale

    // GET keeps answering, with the last known key state, and the server warns.
    let (status, body, took) = http
        .timed(reqwest::Method::GET, &setting(TENANT), &admin, None)
        .await;
    assert_eq!(status, 202, "{body}"); // the seeds answer GET with 202
    assert_eq!(body, before);
    eprintln!("GET with the KMS down answered in {took:?}");
    assert!(took < Duration::from_secs(5), "GET took {took:?}");
    server.log_with("KMS unreachable");
    // ...and for the next TTL serves it without waiting for the KMS again.
    let (status, body, took) = http
        .timed(reqwest::Method::GET, &setting(TENANT), &admin, None)
        .await;
    assert_eq!((status, &body), (202, &before));
    assert!(
        took < Duration::from_millis(500),
        "second GET took {took:?}"
    );

    // A PUT that needs the KMS: 503 with its own code, within 10 s, and nothing changed.
    for body in [
        choose.clone(),
        json!({"cmk_key_id": key_id}),
        json!({"default_encryption_enabled": true}),
    ] {
        let (status, answer, took) = http
            .timed(
                reqwest::Method::PUT,
                &setting(TENANT),
                &admin,
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (status, answer["error_code"].as_str()),
            (503, Some("RC.503001")),
            "{body}: {answer}"
        );
        eprintln!("PUT with the KMS down answered {status} in {took:?}");
        assert!(took < Duration::from_secs(10), "PUT took {took:?}");
    }
    let (_, after, _) = http
        .timed(reqwest::Method::GET, &setting(TENANT), &admin, None)
        .await;
    assert_eq!(after, before);
    assert_eq!(
        run(&server, &env, &["audit", "list", "--tenant", TENANT]),
        audit_before
    );

    // The grant check says the KMS cannot be reached; it is not a 500.
    let (status, body, took) = http
        .timed(reqwest::Method::POST, &grant(TENANT), &admin, None)
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (503, Some("RC.503001")),
        "{body}"
    );
    assert!(took < Duration::from_secs(10));

    // A PUT that needs no KMS still works: turning encryption off.
    let (status, body, _) = http
        .timed(
            reqwest::Method::PUT,
            &setting(TENANT),
            &admin,
            Some(json!({"encryption_type": "normal"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The CLI, too, says what is wrong and exits non-zero.
    let out = server.cli_with(&env, &["kms", "list-keys", "--tenant", TENANT]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("KMS"), "{}", stderr(&out));
}

#[test]
fn aws_backend_needs_a_region() {
    let dir = tempfile::tempdir().expect("tempdir");
    let init = binary::cli_in(dir.path(), &["init"]);
    assert!(init.status.success(), "init: {}", stderr(&init));
    let list = ["kms", "list-keys", "--tenant", TENANT];
    let out = binary::command(
        dir.path(),
        &[
            ("REPOCRYPT_KMS_BACKEND", "aws"),
            ("REPOCRYPT_KMS_ENDPOINT", "http://127.0.0.1:9"),
        ],
        &list,
    )
    .env_remove("AWS_REGION")
    .env_remove("AWS_DEFAULT_REGION")
    .env("AWS_CONFIG_FILE", "/dev/null")
    .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    .output()
    .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("REPOCRYPT_KMS_REGION"),
        "{}",
        stderr(&out)
    );

    let out = binary::cli(
        dir.path(),
        &[
            ("REPOCRYPT_KMS_BACKEND", "aws"),
            ("REPOCRYPT_KMS_TIMEOUT", "30s"),
        ],
        &list,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("kms_timeout"), "{}", stderr(&out));
}
