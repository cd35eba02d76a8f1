//! Two `repocrypt serve` replicas, each with its own data directory, on one PostgreSQL
//! database, sharing only the root key (`REPOCRYPT_ROOT_KEY`). Needs
//! `REPOCRYPT_TEST_DATABASE_URL`; skipped without it (a failure under `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod binary;
mod common;

use std::process::Command;

use binary::{Server, BIN};
use serde_json::{json, Value};

fn pg_url_or_skip(test: &str) -> Option<String> {
    let url = common::test_database_url();
    if url.is_none() {
        assert!(
            std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
            "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
        );
        eprintln!("SKIPPED {test}: REPOCRYPT_TEST_DATABASE_URL is not set");
    }
    url
}

/// An admin command with the replicas' shared settings, run in `dir`.
fn cli(dir: &std::path::Path, env: &[(&str, String)], args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn call(
        &self,
        server: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{server}{path}"))
            .header("X-Auth-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_postgres_database() {
    let Some(url) = pg_url_or_skip("two_replicas_on_one_postgres_database") else {
        return;
    };
    let db = common::fresh_postgres_database(&url).await;
    let mut root = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut root);
    let root = repocrypt::keys::RootKey::from_bytes(root).to_base64();
    let env: Vec<(&str, String)> = vec![
        ("REPOCRYPT_DATABASE_URL", db.clone()),
        ("REPOCRYPT_ROOT_KEY", root),
        ("REPOCRYPT_KEY_STATE_CACHE_TTL", "0".into()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Server::start(&env_ref);
    let b = Server::start(&env_ref);
    assert_ne!(a.dir.path(), b.dir.path(), "separate data directories");

    // A token issued next to replica A works on replica B (shared root key).
    let token = cli(
        a.dir.path(),
        &env,
        &[
            "token", "issue", "--tenant", "t1", "--user", "alice", "--role", "admin",
        ],
    );
    let api = Api {
        http: reqwest::Client::new(),
        token,
    };
    let (status, v) = api
        .call(
            &b.addr,
            reqwest::Method::GET,
            "/v4/tenants/t1/repo-encryption/setting",
            None,
        )
        .await;
    assert_eq!(status, 202, "{v}");

    // Writes acknowledged by one replica are read by the other at once.
    let (status, _) = api
        .call(
            &a.addr,
            reqwest::Method::POST,
            "/v4/tenants/t1/repo-encryption/kms-grant",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, v) = api
        .call(
            &b.addr,
            reqwest::Method::GET,
            "/v4/tenants/t1/repo-encryption/kms-grant",
            None,
        )
        .await;
    assert_eq!(v["assumed"], true, "grant visible on B: {v}");

    let key: Value = serde_json::from_str(&cli(
        b.dir.path(),
        &env,
        &["kms", "create-key", "--tenant", "t1", "--alias", "k1"],
    ))
    .unwrap();
    let key_id = key["key_id"].as_str().unwrap();
    let put =
        json!({"encryption_type": "KMS", "cmk_key_id": key_id, "default_encryption_enabled": true});
    let (status, v) = api
        .call(
            &a.addr,
            reqwest::Method::PUT,
            "/v4/tenants/t1/repo-encryption/setting",
            Some(put),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let first_id = v["id"].clone();
    assert!(first_id.as_i64().is_some_and(|id| id >= 1), "{v}");
    let (_, v) = api
        .call(
            &b.addr,
            reqwest::Method::GET,
            "/v4/tenants/t1/repo-encryption/setting",
            None,
        )
        .await;
    assert_eq!(
        (v["encryption_type"].as_str(), v["key_state"].as_i64()),
        (Some("KMS"), Some(2)),
        "{v}"
    );
    cli(
        a.dir.path(),
        &env,
        &["kms", "disable-key", "--tenant", "t1", "--key-id", key_id],
    );
    let (_, v) = api
        .call(
            &b.addr,
            reqwest::Method::GET,
            "/v4/tenants/t1/repo-encryption/setting",
            None,
        )
        .await;
    assert_eq!(v["key_state"], 3, "key state (cache off) visible on B: {v}");

    cli(
        a.dir.path(),
        &env,
        &[
            "tenant",
            "set",
            "--tenant",
            "t1",
            "--permit-public",
            "allow",
        ],
    );
    let project = "0123456789abcdef0123456789abcdef";
    cli(
        a.dir.path(),
        &env,
        &[
            "project",
            "add",
            "--tenant",
            "t1",
            "--project-id",
            project,
            "--name",
            "p",
        ],
    );
    let (status, v) = api
        .call(
            &b.addr,
            reqwest::Method::GET,
            &format!("/v4/tenant/setting?project_id={project}"),
            None,
        )
        .await;
    assert_eq!(
        (status, v["permit_public"].as_str()),
        (200, Some("allow")),
        "{v}"
    );

    // 200 concurrent PUTs split across both replicas: all succeed, one final state,
    // exactly 200 audit records.
    let audits_before = cli(a.dir.path(), &env, &["audit", "list", "--tenant", "t1"])
        .lines()
        .filter(|l| l.contains("setting.update"))
        .count();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let server = if i % 2 == 0 {
            a.addr.clone()
        } else {
            b.addr.clone()
        };
        let http = api.http.clone();
        let token = api.token.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({ "encryption_type": "normal", "tenant_id": "t1", "default_encryption_enabled": false });
            let resp = http
                .put(format!("http://{server}/v4/tenants/t1/repo-encryption/setting"))
                .header("X-Auth-Token", token)
                .json(&body)
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let (_, va) = api
        .call(
            &a.addr,
            reqwest::Method::GET,
            "/v4/tenants/t1/repo-encryption/setting",
            None,
        )
        .await;
    let (_, vb) = api
        .call(
            &b.addr,
            reqwest::Method::GET,
            "/v4/tenants/t1/repo-encryption/setting",
            None,
        )
        .await;
    assert_eq!(va, vb, "both replicas read one state");
    assert_eq!(va["encryption_type"], "normal");
    assert_eq!(
        va["id"], first_id,
        "the record id is kept across 200 writes"
    );
    let audits_after = cli(b.dir.path(), &env, &["audit", "list", "--tenant", "t1"])
        .lines()
        .filter(|l| l.contains("setting.update"))
        .count();
    assert_eq!(audits_after - audits_before, 200);

    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
}
