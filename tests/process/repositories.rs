//! The key broker through the real binary: service principals made by the command line
//! (`credential create --service`, `token issue --service`) registering repositories and
//! receiving their data keys over HTTP, and the `repo list|show|shred` commands on the
//! server's data (which never print key material).

use crate::common::binary;
use crate::common::sdk;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use binary::{stderr, stdout, Client, Reply, Server};
use reqwest::Method;
use sdk::{sdk_date, Cred, Signer};
use serde_json::{json, Value};

use crate::common::{grant_path, setting_path};

const TENANT: &str = "3a9c1e5b7d2f4a6c8e0b1d3f5a7c9e2b";

fn repositories_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories")
}

fn data_key_path(tenant: &str, repo_id: i64) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key")
}

fn registration(repo_id: i64, encrypted: bool) -> Value {
    json!({
        "repo_id": repo_id,
        "repo_name": format!("repo-{repo_id}"),
        "full_path": format!("group/repo-{repo_id}"),
        "owner_name": "owner-1",
        "encrypted": encrypted,
    })
}

/// A command on the server's data that must succeed: its standard output, trimmed.
fn ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn ok_json(server: &Server, args: &[&str]) -> Value {
    let out = ok(server, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// A command that must fail with `code` and nothing on standard output: its standard error.
fn fails(server: &Server, args: &[&str], code: i32) -> String {
    let out = server.cli(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {} / {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    stderr(&out)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A request signed with `cred` (SDK-HMAC-SHA256), as the official SDK signs it.
async fn signed(
    http: &Client,
    host: &str,
    cred: &Cred,
    method: Method,
    uri: &str,
    body: Option<&Value>,
) -> Reply {
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let date = sdk_date(unix_now());
    let s = Signer {
        ak: &cred.ak,
        secret: cred.sk.as_bytes(),
        host,
        date: &date,
    }
    .sign(method.as_str(), uri, &body, &[]);
    http.send(method, uri, &s.headers, Some(body)).await
}

/// The base64 data key of an answer: 32 bytes.
fn data_key(v: &Value) -> String {
    let key = v["data_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no data_key: {v}"));
    assert_eq!(STANDARD.decode(key).expect("base64").len(), 32, "{v}");
    key.to_owned()
}

/// Every form of a data key a careless printer could use.
fn key_forms(b64: &str) -> Vec<String> {
    let raw = STANDARD.decode(b64).unwrap();
    vec![
        b64.to_owned(),
        b64.trim_end_matches('=').to_owned(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw),
        hex::encode(&raw),
        hex::encode_upper(&raw),
        format!("{raw:?}"),
    ]
}

/// The wrapped keys stored for the tenant (read from the SQLite file directly).
async fn wrapped_keys(server: &Server) -> Vec<(i64, Vec<u8>)> {
    use sqlx::{Connection, Row};
    let path = server.dir.path().join("repocrypt-data/repocrypt.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect("open the database");
    let rows = sqlx::query(
        "SELECT repo_id, wrapped_key FROM repositories WHERE wrapped_key IS NOT NULL ORDER BY repo_id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read repositories");
    rows.iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<Vec<u8>, _>(1)))
        .collect()
}

/// The tenant's KMS setting: a key, the grant, encryption by default with it. The admin token.
async fn kms_tenant(server: &Server, http: &Client, tenant: &str) -> (String, String) {
    let key = ok_json(
        server,
        &[
            "kms",
            "create-key",
            "--tenant",
            tenant,
            "--alias",
            "repo-key",
        ],
    );
    let key_id = key["key_id"].as_str().unwrap().to_owned();
    let admin = ok(
        server,
        &[
            "token", "issue", "--tenant", tenant, "--user", "admin-1", "--role", "admin",
        ],
    );
    let (status, v) = http
        .call(Method::POST, &grant_path(tenant), &admin, None)
        .await;
    assert_eq!(status, 200, "{v}");
    let body =
        json!({"encryption_type": "kms", "default_encryption_enabled": true, "cmk_key_id": key_id});
    let (status, v) = http
        .call(Method::PUT, &setting_path(tenant), &admin, Some(body))
        .await;
    assert_eq!(status, 200, "{v}");
    (admin, key_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_principals_from_the_cli_register_and_release() {
    let server = Server::start(&[]);
    let http = server.client();
    let host = server.addr.clone();
    let (admin, key_id) = kms_tenant(&server, &http, TENANT).await;

    // `credential create --service`: the pair, and nothing else.
    let out = ok(&server, &["credential", "create", "--service", "node-1"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut fields: Vec<&String> = v.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["access_key", "secret_key"], "{v}");
    let cred = Cred {
        ak: v["access_key"].as_str().unwrap().to_owned(),
        sk: v["secret_key"].as_str().unwrap().to_owned(),
    };

    // The pair signs a registration (201 with the key) and a release (the same key).
    let r = signed(
        &http,
        &host,
        &cred,
        Method::POST,
        &repositories_path(TENANT),
        Some(&registration(101, true)),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let registered = r.json();
    assert_eq!(registered["repo_id"], 101, "{registered}");
    assert_eq!(registered["encrypted"], true, "{registered}");
    assert_eq!(registered["cmk_key_id"], key_id.as_str(), "{registered}");
    let key_101 = data_key(&registered);
    let r = signed(
        &http,
        &host,
        &cred,
        Method::GET,
        &data_key_path(TENANT, 101),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(data_key(&r.json()), key_101);
    assert_eq!(r.json()["cmk_key_id"], key_id.as_str());
    // ...and is refused on the setting.
    for method in [Method::GET, Method::PUT] {
        let body = (method == Method::PUT).then(|| json!({"encryption_type": "normal"}));
        let r = signed(
            &http,
            &host,
            &cred,
            method.clone(),
            &setting_path(TENANT),
            body.as_ref(),
        )
        .await;
        assert_eq!(r.status, 403, "signed {method} setting: {}", r.text);
        assert_eq!(r.json()["error_code"], "RC.403003", "{}", r.text);
    }

    // `token issue --service --ttl`: one line, a token that registers and releases.
    let out = server.cli(&["token", "issue", "--service", "node-2", "--ttl", "60s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out);
    assert_eq!(token.lines().count(), 1, "{token}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("rc1."), "{token}");
    let (status, v) = http
        .call(
            Method::POST,
            &repositories_path(TENANT),
            &token,
            Some(registration(102, true)),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let key_102 = data_key(&v);
    assert_ne!(key_101, key_102, "a data key per repository");
    let (status, v) = http
        .call(Method::GET, &data_key_path(TENANT, 102), &token, None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(data_key(&v), key_102);
    // The same registration again: 200, the same key.
    let (status, v) = http
        .call(
            Method::POST,
            &repositories_path(TENANT),
            &token,
            Some(registration(102, true)),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(data_key(&v), key_102);
    let (status, v) = http
        .call(
            Method::POST,
            &repositories_path(TENANT),
            &token,
            Some(registration(103, false)),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert!(v.get("data_key").is_none(), "{v}");
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"encryption_type": "normal"}))),
    ] {
        let (status, v) = http
            .call(method.clone(), &setting_path(TENANT), &token, body)
            .await;
        assert_eq!(status, 403, "{method} setting with a service token: {v}");
        assert_eq!(v["error_code"], "RC.403003", "{v}");
    }
    // The tenant's admin may not release (service only).
    let (status, v) = http
        .call(Method::GET, &data_key_path(TENANT, 102), &admin, None)
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error_code"], "RC.403002", "{v}");

    // --service with a tenant user's flags is a usage error (clap: exit 2), no output.
    for args in [
        &["token", "issue", "--service", "n", "--tenant", TENANT][..],
        &["token", "issue", "--service", "n", "--user", "u1"],
        &["token", "issue", "--service", "n", "--role", "admin"],
        &["token", "issue", "--service", "n", "--user-name", "x"],
        &["credential", "create", "--service", "n", "--tenant", TENANT],
        &["credential", "create", "--service", "n", "--user", "u1"],
        &["credential", "create", "--service", "n", "--role", "admin"],
    ] {
        let err = fails(&server, args, 2);
        assert!(err.contains("--service"), "{args:?}: {err}");
    }

    // The credential's creation is audited, outside any tenant, without its secret.
    let audit = ok(&server, &["audit", "list"]);
    assert!(!audit.contains(&cred.sk), "the secret key in the audit log");
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let created: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "credential.create")
        .collect();
    assert_eq!(created.len(), 1, "one credential created: {audit}");
    let r = created[0];
    assert_eq!(r["tenant_id"], "-", "{r}");
    assert_eq!(r["actor"], "cli", "{r}");
    assert_eq!(r["after"]["access_key"], cred.ak.as_str(), "{r}");
    assert_eq!(r["after"]["role"], "service", "{r}");
    assert_eq!(r["after"]["user_id"], "service:node-1", "{r}");
    // The registrations are audited in the tenant, by the principal that made them.
    let registered: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "repository.register")
        .collect();
    assert_eq!(registered.len(), 3, "{audit}");
    assert!(
        registered.iter().all(|r| r["tenant_id"] == TENANT),
        "{audit}"
    );
    assert_eq!(
        registered[0]["actor"], "service:node-1",
        "{}",
        registered[0]
    );
    assert_eq!(
        registered[1]["actor"], "service:node-2",
        "{}",
        registered[1]
    );

    // ---- repo list / show / shred ---------------------------------------------------
    let wrapped = wrapped_keys(&server).await;
    assert_eq!(
        wrapped.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [101, 102]
    );
    let mut secret_forms: Vec<String> = [&key_101, &key_102]
        .into_iter()
        .flat_map(|k| key_forms(k))
        .collect();
    for (_, w) in &wrapped {
        secret_forms.extend(key_forms(&STANDARD.encode(w)));
    }
    let no_key_material = |what: &str, text: &str| {
        for form in &secret_forms {
            assert!(
                !text.contains(form.as_str()),
                "{what} prints {form}: {text}"
            );
        }
    };

    let out = ok(&server, &["repo", "list", "--tenant", TENANT]);
    no_key_material("repo list", &out);
    let list: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repo_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [101, 102, 103], "{list}");
    assert_eq!(list[0]["encrypted"], true, "{list}");
    assert_eq!(list[0]["cmk_key_id"], key_id.as_str(), "{list}");
    assert_eq!(list[0]["shredded"], false, "{list}");
    assert_eq!(list[2]["encrypted"], false, "{list}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("data_key").is_none() && r.get("wrapped_key").is_none()),
        "{list}"
    );
    assert_eq!(
        ok(&server, &["repo", "list", "--tenant", "another-tenant"]),
        "[]"
    );

    let show = |id: &str| {
        ok(
            &server,
            &["repo", "show", "--tenant", TENANT, "--repo-id", id],
        )
    };
    let out = show("101");
    no_key_material("repo show", &out);
    let one: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(one, list[0], "show answers what list lists");
    let err = fails(
        &server,
        &["repo", "show", "--tenant", TENANT, "--repo-id", "999"],
        1,
    );
    assert!(
        err.contains("999") && err.contains("not registered"),
        "{err}"
    );

    // Shred without --yes: refused, nothing changed (the key is still released).
    let shred = ["repo", "shred", "--tenant", TENANT, "--repo-id", "101"];
    let err = fails(&server, &shred, 1);
    assert!(err.contains("--yes"), "{err}");
    let (status, v) = http
        .call(Method::GET, &data_key_path(TENANT, 101), &token, None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(data_key(&v), key_101);
    assert_eq!(wrapped_keys(&server).await, wrapped, "shred without --yes");
    assert!(!ok(&server, &["audit", "list"]).contains("repository.shred"));

    // With --yes: JSON, and the key is gone for good over HTTP.
    let mut confirmed = shred.to_vec();
    confirmed.push("--yes");
    let out = ok_json(&server, &confirmed);
    assert_eq!(
        out,
        json!({"tenant_id": TENANT, "repo_id": 101, "shredded": true})
    );
    // Another process's write: the SQLite server sees it within its repository cache's
    // bound (README: one second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, v) = http
        .call(Method::GET, &data_key_path(TENANT, 101), &token, None)
        .await;
    assert_eq!(status, 410, "{v}");
    assert_eq!(v["error_code"], "RC.410001", "{v}");
    let r = signed(
        &http,
        &host,
        &cred,
        Method::GET,
        &data_key_path(TENANT, 101),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error_code"].clone()),
        (410, json!("RC.410001"))
    );
    // The other repository is untouched.
    let (status, v) = http
        .call(Method::GET, &data_key_path(TENANT, 102), &token, None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(data_key(&v), key_102);
    assert_eq!(
        wrapped_keys(&server)
            .await
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        [102]
    );
    let out = show("101");
    no_key_material("repo show after the shred", &out);
    let one: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(one["shredded"], true, "{one}");
    let out = ok(&server, &["repo", "list", "--tenant", TENANT]);
    no_key_material("repo list after the shred", &out);
    // Shredding twice is not an error; a repository that is not there is.
    ok_json(&server, &confirmed);
    let err = fails(
        &server,
        &[
            "repo",
            "shred",
            "--tenant",
            TENANT,
            "--repo-id",
            "999",
            "--yes",
        ],
        1,
    );
    assert!(err.contains("999"), "{err}");
    let audit = ok(&server, &["audit", "list", "--tenant", TENANT]);
    no_key_material("audit list", &audit);
    assert!(audit.contains("\"action\":\"repository.shred\""), "{audit}");

    assert_eq!(server.stop(), Some(0));
}

/// The audit records of the tenant, from `audit list`, with this action.
fn audit_of(server: &Server, tenant: &str, action: &str) -> Vec<Value> {
    ok(server, &["audit", "list", "--tenant", tenant])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == action)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_keys_impact_refuses_to_cut_it_off_unless_forced_and_withdraws_grants() {
    let server = Server::start(&[]);
    let http = server.client();
    let (admin, key_id) = kms_tenant(&server, &http, TENANT).await;
    let node = ok(&server, &["token", "issue", "--service", "node-1"]);
    let mut keys = Vec::new();
    for (id, encrypted) in [(202, true), (201, true), (203, false)] {
        let (status, v) = http
            .call(
                Method::POST,
                &repositories_path(TENANT),
                &node,
                Some(registration(id, encrypted)),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        if encrypted {
            keys.push((id, data_key(&v)));
        }
    }
    let release = |id: i64| {
        let (http, node) = (http.clone(), node.clone());
        async move {
            http.call(Method::GET, &data_key_path(TENANT, id), &node, None)
                .await
        }
    };

    // `kms impact`: the count, and the repositories as the API's list shows them.
    let impact = ok_json(
        &server,
        &["kms", "impact", "--tenant", TENANT, "--key-id", &key_id],
    );
    let (status, listed) = http
        .call(
            Method::GET,
            &format!("/v4/tenants/{TENANT}/repo-encryption/cmks/{key_id}/repositories"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 202, "{listed}");
    assert_eq!(
        impact,
        json!({"tenant_id": TENANT, "key_id": key_id, "repositories": 2, "items": listed}),
    );
    assert_eq!(impact["items"][0]["repo_id"], 201, "by id: {impact}");
    assert_eq!(impact["items"][0]["owner_name"], "owner-1", "{impact}");
    assert_eq!(
        ok_json(
            &server,
            &[
                "kms",
                "impact",
                "--tenant",
                TENANT,
                "--key-id",
                "no-such-key"
            ]
        ),
        json!({"tenant_id": TENANT, "key_id": "no-such-key", "repositories": 0, "items": []}),
    );
    assert_eq!(
        ok_json(
            &server,
            &[
                "kms",
                "impact",
                "--tenant",
                "another-tenant",
                "--key-id",
                &key_id
            ]
        )["repositories"],
        0,
        "another tenant's view of the key"
    );

    // disable-key and schedule-key-deletion refuse (exit 1, the count, --force), audited.
    let disable = [
        "kms",
        "disable-key",
        "--tenant",
        TENANT,
        "--key-id",
        &key_id,
    ];
    let err = fails(&server, &disable, 1);
    assert!(
        err.contains("2 repositories") && err.contains("--force") && err.contains(&key_id),
        "{err}"
    );
    let schedule = [
        "kms",
        "schedule-key-deletion",
        "--tenant",
        TENANT,
        "--key-id",
        &key_id,
        "--pending-days",
        "7",
    ];
    let err = fails(&server, &schedule, 1);
    assert!(
        err.contains("2 repositories") && err.contains("--force"),
        "{err}"
    );
    let refused = audit_of(&server, TENANT, "kms.disable_key.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["actor"], "cli");
    assert_eq!(refused[0]["after"]["repositories"], 2, "{}", refused[0]);
    let refused = audit_of(&server, TENANT, "kms.schedule_key_deletion.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["after"]["pending_days"], 7, "{}", refused[0]);
    assert!(audit_of(&server, TENANT, "kms.disable_key").is_empty());
    // Nothing changed: the key is enabled, its repositories' keys are released.
    let listed_keys = ok_json(&server, &["kms", "list-keys", "--tenant", TENANT]);
    assert_eq!(listed_keys[0]["key_state"], 2, "{listed_keys}");
    for (id, key) in &keys {
        let (status, v) = release(*id).await;
        assert_eq!((status, data_key(&v)), (200, key.clone()));
    }

    // The grant withdrawn from the command line while the server runs: within a second
    // the server answers assumed false and releases nothing; the data keys are kept.
    let revoke = ["tenant", "revoke-kms-grant", "--tenant", TENANT];
    assert_eq!(
        ok_json(&server, &revoke),
        json!({"tenant_id": TENANT, "assumed": false, "withdrawn": true})
    );
    assert_eq!(
        ok_json(&server, &revoke),
        json!({"tenant_id": TENANT, "assumed": false, "withdrawn": false}),
        "again: nothing to withdraw, not an error"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, v) = http
        .call(Method::GET, &grant_path(TENANT), &admin, None)
        .await;
    assert_eq!(
        (status, v),
        (202, json!({"tenant_id": TENANT, "assumed": false}))
    );
    let (status, v) = release(201).await;
    assert_eq!(
        (status, v["error_code"].clone()),
        (403, json!("RC.403004")),
        "{v}"
    );
    let (status, v) = http
        .call(
            Method::POST,
            &repositories_path(TENANT),
            &node,
            Some(registration(204, true)),
        )
        .await;
    assert_eq!(
        (status, v["error_code"].clone()),
        (400, json!("RC.400007")),
        "{v}"
    );
    let deleted = audit_of(&server, TENANT, "kms_grant.delete");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["actor"], "cli");
    assert_eq!(
        deleted[0]["before"]["granted_by"], "admin-1",
        "{}",
        deleted[0]
    );
    assert_eq!(deleted[0]["after"], Value::Null);
    assert_eq!(
        wrapped_keys(&server).await.len(),
        2,
        "the wrapped keys are kept"
    );
    // Granted again: the same keys.
    let (status, v) = http
        .call(Method::POST, &grant_path(TENANT), &admin, None)
        .await;
    assert_eq!(status, 200, "{v}");
    for (id, key) in &keys {
        let (status, v) = release(*id).await;
        assert_eq!((status, data_key(&v)), (200, key.clone()));
    }

    // --force: done, and audited with the count before the change itself.
    let mut forced = disable.to_vec();
    forced.push("--force");
    let info = ok_json(&server, &forced);
    assert_eq!(info["key_state"], 3, "{info}");
    let records: Vec<Value> = ok(&server, &["audit", "list", "--tenant", TENANT])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |action: &str| {
        records
            .iter()
            .position(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("no {action}"))
    };
    assert!(at("kms.disable_key.forced") < at("kms.disable_key"));
    assert_eq!(
        records[at("kms.disable_key.forced")]["after"]["repositories"],
        2
    );
    let mut forced = schedule.to_vec();
    forced.push("--force");
    assert_eq!(ok_json(&server, &forced)["key_state"], 4);
    assert_eq!(
        audit_of(&server, TENANT, "kms.schedule_key_deletion.forced")[0]["after"]["repositories"],
        2
    );

    // A key no repository depends on needs no --force.
    let spare = ok_json(
        &server,
        &["kms", "create-key", "--tenant", TENANT, "--alias", "spare"],
    );
    let spare_id = spare["key_id"].as_str().unwrap();
    let info = ok_json(
        &server,
        &[
            "kms",
            "disable-key",
            "--tenant",
            TENANT,
            "--key-id",
            spare_id,
        ],
    );
    assert_eq!(info["key_state"], 3, "{info}");
    assert_eq!(
        audit_of(&server, TENANT, "kms.disable_key.refused").len(),
        1
    );
    assert_eq!(audit_of(&server, TENANT, "kms.disable_key.forced").len(), 1);

    assert_eq!(server.stop(), Some(0));
}
