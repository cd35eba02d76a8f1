//! The real binary on the AWS KMS backend, against a `moto_server` of the test's own:
//! configuration from the environment (credentials from the standard AWS chain), the
//! `repocrypt kms` commands, the API, and an outage (moto stopped mid-test).

use crate::common::binary;
use crate::common::moto;

use std::time::{Duration, Instant};

use crate::common::{grant_path as grant, setting_path as setting};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
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

// ---- the key broker on the AWS backend ------------------------------------------------

const BROKER_TENANT: &str = "4b8d2f6a0c1e4a3b9d5f7e8c6a4b2d0f";

fn repositories(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories")
}

fn data_key_path(tenant: &str, repo_id: i64) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key")
}

/// The stored wrapped key of a repository (the server's database, read directly).
async fn wrapped_key(database: Option<&str>, server: &Server, repo_id: i64) -> Vec<u8> {
    use sqlx::Connection;
    let sql = "SELECT wrapped_key FROM repositories WHERE repo_id = $1";
    match database {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query_scalar(sql)
                .bind(repo_id)
                .fetch_one(&mut c)
                .await
                .expect("read the wrapped key")
        }
        None => {
            let mut c = sqlx::SqliteConnection::connect(&sqlite_url(server))
                .await
                .expect("open the database");
            sqlx::query_scalar(sql)
                .bind(repo_id)
                .fetch_one(&mut c)
                .await
                .expect("read the wrapped key")
        }
    }
}

/// Overwrite a repository's stored wrapped key (what an attacker with the database, or a
/// botched restore, could do).
async fn set_wrapped_key(database: Option<&str>, server: &Server, repo_id: i64, key: &[u8]) {
    use sqlx::Connection;
    let sql = "UPDATE repositories SET wrapped_key = $1 WHERE repo_id = $2";
    let done = match database {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query(sql)
                .bind(key)
                .bind(repo_id)
                .execute(&mut c)
                .await
                .expect("write the wrapped key")
                .rows_affected()
        }
        None => {
            let mut c = sqlx::SqliteConnection::connect(&sqlite_url(server))
                .await
                .expect("open the database");
            sqlx::query(sql)
                .bind(key)
                .bind(repo_id)
                .execute(&mut c)
                .await
                .expect("write the wrapped key")
                .rows_affected()
        }
    };
    assert_eq!(done, 1);
}

fn sqlite_url(server: &Server) -> String {
    let path = server.dir.path().join("repocrypt-data/repocrypt.db");
    format!("sqlite://{}", path.display())
}

/// The broker's story on AWS KMS (moto): ListTenantCmks lists the tenant-tagged keys
/// only; a registration gets a data key from GenerateDataKey and a release answers the
/// same key (Decrypt with the repository's encryption context); DisableKey in the KMS
/// stops the release within the key-state cache's TTL (403 RC.403005), EnableKey restores
/// it; a wrapped key moved to another repository in the database does not unwrap there
/// (moto checks the encryption context): 409 RC.409005.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_backend_key_broker_sqlite() {
    let Some(mut moto) = Moto::start("aws_backend_key_broker_sqlite") else {
        return;
    };
    broker_story(&mut moto, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_backend_key_broker_postgres() {
    let Some(url) = crate::common::pg_url_or_skip("aws_backend_key_broker_postgres") else {
        return;
    };
    let Some(mut moto) = Moto::start("aws_backend_key_broker_postgres") else {
        return;
    };
    let db = crate::common::fresh_postgres_database(&url).await;
    broker_story(&mut moto, Some(&db)).await;
}

async fn broker_story(moto: &mut Moto, database: Option<&str>) {
    use reqwest::Method as M;
    const TTL: Duration = Duration::from_secs(1);
    let mut env = moto.env();
    env.push(("REPOCRYPT_KEY_STATE_CACHE_TTL", "1s".into()));
    if let Some(url) = database {
        env.push(("REPOCRYPT_DATABASE_URL", url.to_owned()));
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env_ref);
    let http = server.client();
    let t = BROKER_TENANT;
    let cli = |args: &[&str]| run(&server, &env, args);
    let created = |tenant: &str, alias: &str| -> String {
        let v: Value = serde_json::from_str(&cli(&[
            "kms",
            "create-key",
            "--tenant",
            tenant,
            "--alias",
            alias,
        ]))
        .expect("json");
        v["key_id"].as_str().expect("key id").to_owned()
    };
    let key_id = created(t, "broker");
    let spare = created(t, "spare");
    let _foreign = created(OTHER, "foreign");
    // Keys in the account that are not the tenant's: untagged, and tagged for no tenant.
    let raw = moto.raw_client();
    let untagged = raw.create_key().send().await.expect("create key");
    let untagged = untagged
        .key_metadata()
        .expect("metadata")
        .key_id()
        .to_owned();
    let other_tag = raw
        .create_key()
        .tags(
            aws_sdk_kms::types::Tag::builder()
                .tag_key("team")
                .tag_value(t)
                .build()
                .expect("tag"),
        )
        .send()
        .await
        .expect("create key");
    let other_tag = other_tag
        .key_metadata()
        .expect("metadata")
        .key_id()
        .to_owned();

    let admin = cli(&[
        "token", "issue", "--tenant", t, "--user", "admin-1", "--role", "admin",
    ]);
    let member = cli(&[
        "token", "issue", "--tenant", t, "--user", "member-1", "--role", "member",
    ]);
    let node = cli(&["token", "issue", "--service", "storage-node-1"]);

    // ListTenantCmks: the tenant's two keys, by id, nothing else of the account.
    let (status, cmks) = http
        .call(
            M::GET,
            &format!("/v4/tenants/{t}/repo-encryption/cmks"),
            &member,
            None,
        )
        .await;
    assert_eq!(status, 202, "{cmks}");
    let mut ours = vec![key_id.clone(), spare.clone()];
    ours.sort();
    let listed: Vec<&str> = cmks
        .as_array()
        .expect("an array")
        .iter()
        .map(|k| k["cmk_key_id"].as_str().expect("cmk_key_id"))
        .collect();
    assert_eq!(listed, ours, "{cmks}");
    assert!(!cmks.to_string().contains(&untagged) && !cmks.to_string().contains(&other_tag));
    let names: Vec<&Value> = cmks
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["cmk_key_name"])
        .collect();
    assert!(
        names.contains(&&json!("broker")) && names.contains(&&json!("spare")),
        "{cmks}"
    );
    assert!(
        cmks.as_array().unwrap().iter().all(|k| k["key_state"] == 2),
        "{cmks}"
    );

    // The tenant chooses its key; the platform registers two repositories.
    let (status, v) = http.call(M::POST, &grant(t), &admin, None).await;
    assert_eq!(status, 200, "{v}");
    let choose =
        json!({"encryption_type": "kms", "default_encryption_enabled": true, "cmk_key_id": key_id});
    let (status, v) = http.call(M::PUT, &setting(t), &admin, Some(choose)).await;
    assert_eq!(status, 200, "{v}");
    let mut keys = Vec::new();
    for id in [1_i64, 2] {
        let body =
            json!({"repo_id": id, "repo_name": format!("r{id}"), "full_path": format!("g/r{id}")});
        let (status, v) = http
            .call(M::POST, &repositories(t), &node, Some(body))
            .await;
        assert_eq!(status, 201, "{v}");
        assert_eq!(
            v["encrypted"], true,
            "encrypted by the tenant's default: {v}"
        );
        assert_eq!(v["cmk_key_id"], key_id.as_str(), "{v}");
        let key = v["data_key"].as_str().expect("data key").to_owned();
        assert_eq!(STANDARD.decode(&key).expect("base64").len(), 32);
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1]);
    let release = |id: i64| {
        let (http, node) = (&http, &node);
        async move { http.call(M::GET, &data_key_path(t, id), node, None).await }
    };
    for (id, key) in [(1, &keys[0]), (2, &keys[1])] {
        let (status, v) = release(id).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data_key"], key.as_str(), "{v}");
        assert_eq!(v["cmk_key_id"], key_id.as_str(), "{v}");
    }
    // What the database holds is moto's ciphertext, not the key.
    let wrapped_1 = wrapped_key(database, &server, 1).await;
    let wrapped_2 = wrapped_key(database, &server, 2).await;
    assert!(wrapped_1.len() > 32 && wrapped_1 != wrapped_2);
    let plain_1 = STANDARD.decode(&keys[0]).unwrap();
    assert!(!wrapped_1.windows(32).any(|w| w == plain_1.as_slice()));
    let (status, v) = http
        .call(
            M::GET,
            &format!("{}?order_by=repoName&sort=asc", repositories(t)),
            &member,
            None,
        )
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert!(!v.to_string().contains(&keys[0]), "{v}");

    // The interlock on AWS KMS: the repositories of the key, by its id and by its ARN
    // (resolved in the tenant's KMS); disable-key and schedule-key-deletion refused while
    // they depend on it, and nothing sent to AWS.
    let arn = raw
        .describe_key()
        .key_id(&key_id)
        .send()
        .await
        .expect("DescribeKey")
        .key_metadata()
        .and_then(|m| m.arn())
        .expect("an ARN")
        .to_owned();
    for named in [key_id.as_str(), arn.as_str()] {
        let impact: Value =
            serde_json::from_str(&cli(&["kms", "impact", "--tenant", t, "--key-id", named]))
                .expect("json");
        assert_eq!(impact["key_id"], key_id.as_str(), "{impact}");
        assert_eq!(impact["repositories"], 2, "{impact}");
        let ids: Vec<&Value> = impact["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["repo_id"])
            .collect();
        assert_eq!(ids, [&json!(1), &json!(2)], "{impact}");
        for op in [
            &["disable-key"][..],
            &["schedule-key-deletion", "--pending-days", "7"],
        ] {
            let mut args = vec!["kms", op[0], "--tenant", t, "--key-id", named];
            args.extend_from_slice(&op[1..]);
            let out = binary::cli(server.dir.path(), &env, &args);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("2 repositories"), "{}", stderr(&out));
        }
    }
    let audit = cli(&["audit", "list", "--tenant", t]);
    assert_eq!(
        audit.matches("\"kms.disable_key.refused\"").count(),
        2,
        "{audit}"
    );
    assert!(!audit.contains("\"kms.disable_key.requested\""), "{audit}");
    let (status, v) = release(1).await;
    assert_eq!(status, 200, "still enabled: {v}");

    // The kill switch: DisableKey in the KMS itself; releases stop within the TTL. A
    // storage node following the events hears of it from the refresh that sees it.
    let mut events = binary::EventClient::open(&server.addr, &node, None).await;
    raw.disable_key()
        .key_id(&key_id)
        .send()
        .await
        .expect("DisableKey");
    let disabled_at = Instant::now();
    let refused_after = loop {
        let started = Instant::now();
        let (status, v) = release(1).await;
        if status == 403 {
            assert_eq!(v["error_code"], "RC.403005", "{v}");
            let msg = v["error_msg"].as_str().unwrap_or_default();
            assert!(msg.to_ascii_lowercase().contains("disabled"), "{v}");
            assert!(!msg.contains(&keys[0]), "{v}");
            break started - disabled_at;
        }
        assert_eq!(status, 200, "{v}");
        assert!(
            started - disabled_at < TTL + Duration::from_millis(200),
            "a key was released {:?} after DisableKey, past the 1 s TTL",
            started - disabled_at
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("release refused {refused_after:?} after DisableKey (TTL 1 s)");
    let seen = events.drain(Duration::from_millis(800)).await;
    assert_eq!(
        seen.len(),
        1,
        "one event for one change in the KMS: {seen:?}"
    );
    assert_eq!(seen[0].event, "key_state_changed");
    assert_eq!(seen[0].data["key_id"], key_id.as_str());
    assert_eq!(
        (
            seen[0].data["old_state"].clone(),
            seen[0].data["new_state"].clone()
        ),
        (json!(2), json!(3))
    );
    assert_eq!(seen[0].data["repositories"], json!([1, 2]));
    // ...and stays refused, for every repository of the key, registration included.
    for id in [1, 2, 1] {
        let (status, v) = release(id).await;
        assert_eq!(
            (status, v["error_code"].clone()),
            (403, json!("RC.403005")),
            "{v}"
        );
    }
    let body = json!({"repo_id": 1, "repo_name": "r1", "full_path": "g/r1"});
    let (status, v) = http
        .call(M::POST, &repositories(t), &node, Some(body))
        .await;
    assert_eq!(
        (status, v["error_code"].clone()),
        (403, json!("RC.403005")),
        "{v}"
    );
    let body = json!({"repo_id": 3, "repo_name": "r3", "full_path": "g/r3"});
    let (status, v) = http
        .call(M::POST, &repositories(t), &node, Some(body))
        .await;
    assert_eq!(
        (status, v["error_code"].clone()),
        (400, json!("RC.400009")),
        "{v}"
    );

    // EnableKey: restored within the TTL, the same keys.
    raw.enable_key()
        .key_id(&key_id)
        .send()
        .await
        .expect("EnableKey");
    let enabled_at = Instant::now();
    loop {
        let (status, v) = release(1).await;
        if status == 200 {
            assert_eq!(v["data_key"], keys[0].as_str(), "{v}");
            break;
        }
        assert!(enabled_at.elapsed() < TTL + Duration::from_secs(1), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "release restored {:?} after EnableKey",
        enabled_at.elapsed()
    );
    let (status, v) = release(2).await;
    assert_eq!(
        (status, v["data_key"].clone()),
        (200, json!(keys[1])),
        "{v}"
    );

    // The wrapped keys swapped in the database: neither unwraps for the other repository.
    // (Written from outside the server: a SQLite server sees it within its repository
    // cache's bound, one second.)
    set_wrapped_key(database, &server, 1, &wrapped_2).await;
    set_wrapped_key(database, &server, 2, &wrapped_1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for id in [1, 2] {
        let (status, v) = release(id).await;
        assert_eq!(
            (status, v["error_code"].clone()),
            (409, json!("RC.409005")),
            "{id}: {v}"
        );
        let text = v.to_string();
        assert!(!text.contains(&keys[0]) && !text.contains(&keys[1]), "{v}");
    }
    // Put back, they release again.
    set_wrapped_key(database, &server, 1, &wrapped_1).await;
    set_wrapped_key(database, &server, 2, &wrapped_2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (id, key) in [(1, &keys[0]), (2, &keys[1])] {
        let (status, v) = release(id).await;
        assert_eq!((status, v["data_key"].clone()), (200, json!(key)), "{v}");
    }
    let metrics = http.send(M::GET, "/metrics", &[], None).await.text;
    for call in ["generate_data_key", "decrypt"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("repocrypt_kms_calls_total")
                    && l.contains(&format!("call=\"{call}\""))),
            "no {call} in /metrics"
        );
    }

    // The KMS down: once the key state is older than the TTL, releases fail closed with
    // 503 RC.503001 and no key material (a setting read would serve the last known state).
    moto.stop();
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    for id in [1, 2] {
        let (status, v) = release(id).await;
        assert_eq!(
            (status, v["error_code"].clone()),
            (503, json!("RC.503001")),
            "{id}: {v}"
        );
        let text = v.to_string();
        assert!(!text.contains(&keys[0]) && !text.contains(&keys[1]), "{v}");
    }
    assert_eq!(server.stop(), Some(0));
}

// ---- rewrap on the AWS backend ----------------------------------------------------------

/// Rewrap on AWS KMS (moto): after the tenant moves from key A (and A2) to key B, a
/// rewrap job ReEncrypts each data key from its key to B with the repository's encryption
/// context on both sides; every repository then releases its original key under B, with A
/// disabled; a repository whose old key is disabled in the KMS is listed in `failed` with
/// the reason, and a later job does it once the key is enabled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_backend_rewrap_sqlite() {
    let Some(mut moto) = Moto::start("aws_backend_rewrap_sqlite") else {
        return;
    };
    rewrap_story(&mut moto, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_backend_rewrap_postgres() {
    let Some(url) = crate::common::pg_url_or_skip("aws_backend_rewrap_postgres") else {
        return;
    };
    let Some(mut moto) = Moto::start("aws_backend_rewrap_postgres") else {
        return;
    };
    let db = crate::common::fresh_postgres_database(&url).await;
    rewrap_story(&mut moto, Some(&db)).await;
}

async fn rewrap_story(moto: &mut Moto, database: Option<&str>) {
    use reqwest::Method as M;
    let mut env = moto.env();
    env.push(("REPOCRYPT_KEY_STATE_CACHE_TTL", "1s".into()));
    if let Some(url) = database {
        env.push(("REPOCRYPT_DATABASE_URL", url.to_owned()));
    }
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env_ref);
    let http = server.client();
    let t = BROKER_TENANT;
    let cli = |args: &[&str]| run(&server, &env, args);
    let created = |alias: &str| -> String {
        let v: Value = serde_json::from_str(&cli(&[
            "kms",
            "create-key",
            "--tenant",
            t,
            "--alias",
            alias,
        ]))
        .expect("json");
        v["key_id"].as_str().expect("key id").to_owned()
    };
    let (a, a2, b) = (created("key-a"), created("key-a2"), created("key-b"));
    let admin = cli(&[
        "token", "issue", "--tenant", t, "--user", "admin-1", "--role", "admin",
    ]);
    let member = cli(&[
        "token", "issue", "--tenant", t, "--user", "member-1", "--role", "member",
    ]);
    let node = cli(&["token", "issue", "--service", "storage-node-1"]);
    let (status, v) = http.call(M::POST, &grant(t), &admin, None).await;
    assert_eq!(status, 200, "{v}");
    let choose = |key: &str| json!({"encryption_type": "KMS", "default_encryption_enabled": true, "cmk_key_id": key});
    let mut keys = Vec::new();
    for (key, ids) in [(&a, 1..=3_i64), (&a2, 4..=4)] {
        let (status, v) = http
            .call(M::PUT, &setting(t), &admin, Some(choose(key)))
            .await;
        assert_eq!(status, 200, "{v}");
        for id in ids {
            let body = json!({"repo_id": id, "repo_name": format!("r{id}"), "full_path": format!("g/r{id}")});
            let (status, v) = http
                .call(M::POST, &repositories(t), &node, Some(body))
                .await;
            assert_eq!(status, 201, "{v}");
            keys.push((id, v["data_key"].as_str().expect("data key").to_owned()));
        }
    }
    let wrapped_before = wrapped_key(database, &server, 1).await;
    let (status, v) = http
        .call(M::PUT, &setting(t), &admin, Some(choose(&b)))
        .await;
    assert_eq!(status, 200, "{v}");
    // A2 disabled in the KMS itself: repository 4 cannot be rewrapped.
    let raw = moto.raw_client();
    raw.disable_key()
        .key_id(&a2)
        .send()
        .await
        .expect("DisableKey");
    let rewrap = format!("/v4/tenants/{t}/repo-encryption/rewrap");
    let until_finished = |job_id: String| {
        let (http, member) = (&http, &member);
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, v) = http
                    .call(
                        M::GET,
                        &format!("/v4/tenants/{t}/repo-encryption/rewrap/{job_id}"),
                        member,
                        None,
                    )
                    .await;
                assert_eq!(status, 200, "{v}");
                if v["state"] != "running" {
                    return v;
                }
                assert!(Instant::now() < deadline, "{v}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (status, job) = http.call(M::POST, &rewrap, &admin, None).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["total"], 4, "{job}");
    let end = until_finished(job["job_id"].as_str().unwrap().to_owned()).await;
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(end["done"], 3, "{end}");
    let failed = end["failed"].as_array().expect("failed");
    assert_eq!(failed.len(), 1, "{end}");
    assert_eq!(failed[0]["repo_id"], 4);
    let reason = failed[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&a2) && reason.contains("disabled"),
        "{reason}"
    );
    // ReEncrypt made a new ciphertext under B; the key in clear is the same.
    let wrapped_after = wrapped_key(database, &server, 1).await;
    assert_ne!(wrapped_after, wrapped_before);
    let plain_1 = STANDARD.decode(&keys[0].1).unwrap();
    assert!(!wrapped_after.windows(32).any(|w| w == plain_1.as_slice()));
    raw.disable_key()
        .key_id(&a)
        .send()
        .await
        .expect("DisableKey");
    for (id, key) in &keys[..3] {
        let (status, v) = http.call(M::GET, &data_key_path(t, *id), &node, None).await;
        assert_eq!(status, 200, "{id}: {v}");
        assert_eq!(v["data_key"], key.as_str(), "{id}");
        assert_eq!(v["cmk_key_id"], b.as_str(), "{id}");
    }
    let metrics = http.send(M::GET, "/metrics", &[], None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l == "repocrypt_kms_calls_total{call=\"re_encrypt\",outcome=\"ok\"} 3"),
        "three ReEncrypt calls:\n{metrics}"
    );

    // A2 enabled again: `repo rewrap --wait` does the one left (exit 0, its summary).
    raw.enable_key()
        .key_id(&a2)
        .send()
        .await
        .expect("EnableKey");
    let out = binary::cli(
        server.dir.path(),
        &env,
        &["repo", "rewrap", "--tenant", t, "--wait"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let end: Value = serde_json::from_str(binary::stdout(&out).trim()).expect("summary");
    assert_eq!(
        (
            end["state"].clone(),
            end["total"].clone(),
            end["done"].clone()
        ),
        (json!("succeeded"), json!(1), json!(1)),
        "{end}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // the SQLite server's row cache
    let (status, v) = http.call(M::GET, &data_key_path(t, 4), &node, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data_key"], keys[3].1.as_str());
    assert_eq!(v["cmk_key_id"], b.as_str());
    assert_eq!(server.stop(), Some(0));
}
