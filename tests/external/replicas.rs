//! Two `repocrypt serve` replicas, each with its own data directory, on one PostgreSQL
//! database, sharing only the root key (`REPOCRYPT_ROOT_KEY`). Needs
//! `REPOCRYPT_TEST_DATABASE_URL`; skipped without it (a failure under `.ci/run`). The
//! `batching` tests below drive two (or three) `PostgresStore`s in-process on one database:
//! coalesced reads and group-committed writes, as seen from another replica.

use crate::common;
use crate::common::binary;

use binary::{Client, Server};
use serde_json::{json, Value};

use common::pg_url_or_skip;

/// An admin command with the replicas' shared settings, run in `dir`.
fn cli(dir: &std::path::Path, env: &[(&str, String)], args: &[&str]) -> String {
    binary::cli_ok(dir, env, args)
}

/// The replicas' client: every call with the same token, to the server it names.
struct Api {
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
        Client::new(server)
            .call(method, path, &self.token, body)
            .await
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
    let api = Api { token };
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
            &common::tenant_setting_path(Some(&format!("project_id={project}"))),
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
        let client = Client::new(&server);
        let token = api.token.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({ "encryption_type": "normal", "tenant_id": "t1", "default_encryption_enabled": false });
            let path = common::setting_path("t1");
            client
                .call(reqwest::Method::PUT, &path, &token, Some(body))
                .await
                .0
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

// ---- the PostgreSQL store's batching, in-process, two store instances as two replicas ----

mod batching {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use repocrypt::clock::SystemClock;
    use repocrypt::domain::{
        Actor, EncryptionType, Error, KeyState, PermitPublic, SettingDraft, TenantId,
    };
    use repocrypt::store::postgres::PostgresStore;
    use repocrypt::store::{AuditFilter, KeyStore, SettingPlan, Store, StoredKey};

    use super::{common, pg_url_or_skip};

    /// Two stores (two replicas) on a fresh database, or None (skipped).
    async fn replicas(test: &str) -> Option<(String, Arc<PostgresStore>, Arc<PostgresStore>)> {
        let url = pg_url_or_skip(test)?;
        let db = common::fresh_postgres_database(&url).await;
        let a = PostgresStore::connect(&db, Arc::new(SystemClock))
            .await
            .unwrap();
        let b = PostgresStore::connect(&db, Arc::new(SystemClock))
            .await
            .unwrap();
        Some((db, Arc::new(a), Arc::new(b)))
    }

    fn tenant(i: usize) -> TenantId {
        TenantId::parse(format!("tenant-{i:03}")).unwrap()
    }

    fn actor(i: usize) -> Actor {
        Actor {
            actor: format!("u{i}"),
            request_id: Some(format!("r{i}")),
        }
    }

    fn draft(key: &str) -> SettingDraft {
        SettingDraft {
            encryption_type: Some(EncryptionType::Kms),
            default_encryption_enabled: true,
            cmk_key_id: Some(key.to_owned()),
            cmk_key_name: Some("n".into()),
        }
    }

    /// A plan that writes `key` whatever is stored.
    fn write(key: String) -> SettingPlan {
        Arc::new(move |_: Option<&_>, _: bool| Ok(draft(&key)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reads_of_different_tenants_each_get_their_own() {
        let Some((_, a, _b)) =
            replicas("concurrent_reads_of_different_tenants_each_get_their_own").await
        else {
            return;
        };
        // 60 tenants: a setting each, a grant for every other, permit_public for every
        // fourth (allow, deny, allow, ...), a key for every third.
        for i in 0..60 {
            a.update_setting(&tenant(i), &actor(i), write(format!("key-of-{i}")))
                .await
                .unwrap();
            if i % 2 == 0 {
                a.put_grant(&tenant(i), &actor(i)).await.unwrap();
            }
            if i % 4 == 1 {
                let value = if i % 8 == 1 {
                    PermitPublic::Allow
                } else {
                    PermitPublic::Deny
                };
                a.set_permit_public(&tenant(i), value, &actor(i))
                    .await
                    .unwrap();
            }
            if i % 3 == 0 {
                let key = StoredKey {
                    key_id: format!("k{i}"),
                    tenant_id: tenant(i).as_str().to_owned(),
                    alias: format!("alias-{i}"),
                    origin: "kms".into(),
                    state: KeyState::Enabled,
                    material: None,
                    deletion_at: None,
                    created_at: "2026-01-01T00:00:00.000Z".into(),
                };
                a.kms_insert_key(&key, &actor(i)).await.unwrap();
            }
        }
        // 2,400 reads at once over 80 tenants (20 never written) of settings, grants,
        // permit_public and keys (asked of their own tenant and of the next one): each
        // answer must be the caller's own.
        let mut tasks = Vec::new();
        for n in 0..2400usize {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let i = (n * 7) % 80;
                let t = tenant(i);
                match n % 4 {
                    0 => {
                        let s = a.get_setting(&t).await.unwrap();
                        let expected = (i < 60).then(|| format!("key-of-{i}"));
                        assert_eq!(
                            s.as_ref().and_then(|s| s.cmk_key_id.clone()),
                            expected,
                            "{t}"
                        );
                        assert!(s.is_none_or(|s| s.tenant_id == t));
                    }
                    1 => {
                        let g = a.get_grant(&t).await.unwrap();
                        assert_eq!(g.is_some(), i < 60 && i % 2 == 0, "{t}");
                        assert!(
                            g.is_none_or(|g| g.tenant_id == t && g.granted_by == format!("u{i}"))
                        );
                    }
                    2 => {
                        let p = a.get_permit_public(&t).await.unwrap();
                        let expected = (i < 60 && i % 4 == 1).then_some(if i % 8 == 1 {
                            PermitPublic::Allow
                        } else {
                            PermitPublic::Deny
                        });
                        assert_eq!(p, expected, "{t}");
                    }
                    _ => {
                        // Key k{j} belongs to tenant j; asked by tenant i.
                        let j = if n % 2 == 0 { i } else { i + 1 };
                        let k = a.kms_get_key(&t, &format!("k{j}")).await.unwrap();
                        let expected = i == j && j < 60 && j % 3 == 0;
                        assert_eq!(k.is_some(), expected, "{t} asking for k{j}");
                        assert!(k.is_none_or(
                            |k| k.tenant_id == t.as_str() && k.key_id == format!("k{j}")
                        ));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_write_returned_on_one_replica_is_read_at_once_on_the_other() {
        let Some((_, a, b)) =
            replicas("a_write_returned_on_one_replica_is_read_at_once_on_the_other").await
        else {
            return;
        };
        let t = tenant(1);
        // Readers on B keep its batchers busy with this very tenant, so that a read may
        // arrive while a batch for it is in flight: it must not be answered by that batch.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut noise = Vec::new();
        for _ in 0..16 {
            let (b, t, stop) = (b.clone(), t.clone(), stop.clone());
            noise.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    b.get_setting(&t).await.unwrap();
                }
            }));
        }
        for i in 0..300 {
            let key = format!("key-{i}");
            a.update_setting(&t, &actor(i), write(key.clone()))
                .await
                .unwrap();
            let seen = b.get_setting(&t).await.unwrap().unwrap();
            assert_eq!(
                seen.cmk_key_id.as_deref(),
                Some(key.as_str()),
                "write {i} not seen on B"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for n in noise {
            n.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_puts_to_one_tenant_all_land_in_order_with_their_audit_records() {
        let Some((_, a, b)) =
            replicas("concurrent_puts_to_one_tenant_all_land_in_order_with_their_audit_records")
                .await
        else {
            return;
        };
        let t = tenant(7);
        let mut tasks = Vec::new();
        for i in 0..400 {
            let store = if i % 4 == 0 { b.clone() } else { a.clone() };
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .update_setting(&t, &actor(i), write(format!("key-{i}")))
                    .await
                    .unwrap()
            }));
        }
        let mut ids = HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().id);
        }
        assert_eq!(ids.len(), 1, "one record id for every write: {ids:?}");
        let audit = a.list_audit(&AuditFilter::tenant(&t)).await.unwrap();
        assert_eq!(audit.len(), 400);
        let actors: HashSet<&str> = audit.iter().map(|r| r.actor.as_str()).collect();
        assert_eq!(actors.len(), 400, "one record per write");
        // Serialized: each write saw the one before it (in commit order) as `before`.
        for pair in audit.windows(2) {
            assert_eq!(
                pair[1].before.as_ref().unwrap()["cmk_key_id"],
                pair[0].after.as_ref().unwrap()["cmk_key_id"],
                "record {} did not see record {}",
                pair[1].id,
                pair[0].id
            );
            assert_eq!(
                pair[1].after.as_ref().unwrap()["cmk_key_id"],
                format!("key-{}", &pair[1].actor[1..]),
                "the record of {} holds its own write",
                pair[1].actor
            );
        }
        assert!(audit[0].before.is_none());
        // The final state is the last write's, on both replicas.
        let last = audit.last().unwrap().after.as_ref().unwrap()["cmk_key_id"].clone();
        for store in [&a, &b] {
            let now = store.get_setting(&t).await.unwrap().unwrap();
            assert_eq!(serde_json::json!(now.cmk_key_id), last);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn refused_and_failed_puts_in_a_batch_do_not_affect_the_others() {
        let Some((db, a, b)) =
            replicas("refused_and_failed_puts_in_a_batch_do_not_affect_the_others").await
        else {
            return;
        };
        // 600 writes over 30 tenants on two replicas, so batches hold many tenants and
        // take their locks against each other: the replicas meet the tenants in opposite
        // orders (taking the locks in the order met deadlocks here).
        // Every third is refused by its plan; every seventh (not refused) fails in the
        // database (a NUL byte in text) after its savepoint was opened.
        let mut tasks = Vec::new();
        for i in 0..600usize {
            let on_a = (i / 3) % 2 == 0;
            let store = if on_a { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let n = (i * 11) % 30;
                let t = tenant(if on_a { n } else { 29 - n });
                let plan: SettingPlan = Arc::new(move |_: Option<&_>, _: bool| {
                    if i % 3 == 0 {
                        Err(Error::MissingCmkKeyId)
                    } else if i % 7 == 0 {
                        Ok(draft(&format!("bad\0key-{i}")))
                    } else {
                        Ok(draft(&format!("key-{i}")))
                    }
                });
                (i, store.update_setting(&t, &actor(i), plan).await)
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let (i, result) = task.await.unwrap();
            match result {
                Ok(saved) => {
                    assert!(i % 3 != 0 && i % 7 != 0, "write {i} should have failed");
                    assert_eq!(saved.cmk_key_id, Some(format!("key-{i}")));
                    ok += 1;
                }
                Err(Error::MissingCmkKeyId) => assert_eq!(i % 3, 0, "write {i}"),
                Err(Error::Store(detail)) => {
                    assert!(i % 3 != 0 && i % 7 == 0, "write {i}: {detail}");
                }
                Err(e) => panic!("write {i}: {e:?}"),
            }
        }
        assert_eq!(ok, (0..600).filter(|i| i % 3 != 0 && i % 7 != 0).count());
        // One audit record per acknowledged write, none for the others; each tenant's row
        // is its last record's, seen alike by a third replica.
        let c = PostgresStore::connect(&db, Arc::new(SystemClock))
            .await
            .unwrap();
        let mut records = 0;
        for n in 0..30 {
            let audit = a
                .list_audit(&AuditFilter::tenant(&tenant(n)))
                .await
                .unwrap();
            for r in &audit {
                let i: usize = r.actor[1..].parse().unwrap();
                assert!(i % 3 != 0 && i % 7 != 0, "record of write {i}");
            }
            records += audit.len();
            let row = c.get_setting(&tenant(n)).await.unwrap();
            match audit.last() {
                None => assert!(row.is_none()),
                Some(last) => assert_eq!(
                    last.after.as_ref().unwrap()["cmk_key_id"],
                    row.unwrap().cmk_key_id.unwrap()
                ),
            }
        }
        assert_eq!(records, ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_database_failure_reaches_every_caller_of_a_batch() {
        let Some((db, a, _b)) =
            replicas("a_database_failure_reaches_every_caller_of_a_batch").await
        else {
            return;
        };
        a.update_setting(&tenant(1), &actor(1), write("k".into()))
            .await
            .unwrap();
        // The database goes away under the store: its connections are cut, new ones fail.
        let url = pg_url_or_skip("a_database_failure_reaches_every_caller_of_a_batch").unwrap();
        let name = db
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..200usize {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let t = tenant(i % 5);
                let result = match i % 4 {
                    0 => a.get_setting(&t).await.map(|_| ()),
                    1 => a.get_grant(&t).await.map(|_| ()),
                    2 => a.kms_get_key(&t, "k").await.map(|_| ()),
                    _ => a
                        .update_setting(&t, &actor(i), write("k2".into()))
                        .await
                        .map(|_| ()),
                };
                (i, result)
            }));
        }
        let all = async {
            for task in tasks {
                let (i, result) = task.await.unwrap();
                assert!(
                    matches!(result, Err(Error::Store(_))),
                    "call {i}: {result:?}"
                );
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("every caller is answered, none hangs");
    }
}

/// Change events across two replicas on PostgreSQL: a change made through one is
/// delivered by the other's stream, within a second; a subscriber that loses its replica
/// resumes on the other with `Last-Event-ID` and gets each event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_raised_on_one_replica_are_delivered_by_the_other() {
    use std::time::{Duration, Instant};
    let Some(url) = pg_url_or_skip("events_raised_on_one_replica_are_delivered_by_the_other")
    else {
        return;
    };
    let db = common::fresh_postgres_database(&url).await;
    let mut root = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut root);
    let root = repocrypt::keys::RootKey::from_bytes(root).to_base64();
    let env: Vec<(&str, String)> = vec![
        ("REPOCRYPT_DATABASE_URL", db.clone()),
        ("REPOCRYPT_ROOT_KEY", root),
        // Long: nothing below is explained by the key-state cache expiring.
        ("REPOCRYPT_KEY_STATE_CACHE_TTL", "60s".into()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Server::start(&env_ref);
    let mut b = Server::start(&env_ref);
    let admin = cli(
        a.dir.path(),
        &env,
        &[
            "token", "issue", "--tenant", "t1", "--user", "alice", "--role", "admin",
        ],
    );
    let node = cli(
        a.dir.path(),
        &env,
        &["token", "issue", "--service", "node-1"],
    );
    let key: Value = serde_json::from_str(&cli(
        a.dir.path(),
        &env,
        &["kms", "create-key", "--tenant", "t1", "--alias", "k1"],
    ))
    .unwrap();
    let key_id = key["key_id"].as_str().unwrap().to_owned();
    let (admin_api, node_api) = (
        Api { token: admin },
        Api {
            token: node.clone(),
        },
    );
    let base = "/v4/tenants/t1/repo-encryption";
    let post = reqwest::Method::POST;
    assert_eq!(
        admin_api
            .call(&a.addr, post.clone(), &format!("{base}/kms-grant"), None)
            .await
            .0,
        200
    );
    let put =
        json!({"encryption_type": "KMS", "cmk_key_id": key_id, "default_encryption_enabled": true});
    let (status, v) = admin_api
        .call(
            &a.addr,
            reqwest::Method::PUT,
            &format!("{base}/setting"),
            Some(put),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    for id in (1..=4).chain(101..=110) {
        let body =
            json!({"repo_id": id, "repo_name": format!("r{id}"), "full_path": format!("g/r{id}")});
        let (status, v) = node_api
            .call(
                &a.addr,
                post.clone(),
                &format!("{base}/repositories"),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    let data_key = |id: i64| format!("{base}/repositories/{id}/data-key");
    // B has released repository 2's key: it is in B's release cache for the next 60 s.
    assert_eq!(
        node_api
            .call(&b.addr, reqwest::Method::GET, &data_key(2), None)
            .await
            .0,
        200
    );

    let mut on_b = binary::EventClient::open(&b.addr, &node, None).await;
    // Ten shreds on A, each timed to B's subscriber.
    let mut latencies = Vec::new();
    for id in 101..=110 {
        let (status, _) = node_api
            .call(&a.addr, reqwest::Method::DELETE, &data_key(id), None)
            .await;
        assert_eq!(status, 204);
        let done = Instant::now();
        let event = on_b
            .next(Duration::from_secs(5))
            .await
            .expect("the shred on A, seen on B");
        assert_eq!(event.data["repo_id"], id);
        latencies.push(event.at.duration_since(done));
    }
    latencies.sort();
    eprintln!(
        "MEASURED PostgreSQL, two replicas: shred answered by A to B's subscriber, 10 times: min {} ms, median {} ms, max {} ms",
        latencies[0].as_millis(),
        latencies[5].as_millis(),
        latencies[9].as_millis()
    );
    assert!(latencies[9] < Duration::from_secs(1), "{latencies:?}");
    let started = Instant::now();
    let (status, _) = node_api
        .call(&a.addr, reqwest::Method::DELETE, &data_key(1), None)
        .await;
    assert_eq!(status, 204);
    let done = Instant::now();
    let first = on_b
        .next(Duration::from_secs(5))
        .await
        .expect("the shred on A, seen on B");
    assert_eq!(first.event, "data_key_shredded");
    assert_eq!(first.data["repo_id"], 1);
    let shred_ms = first.at.duration_since(done).as_millis();
    // A key disabled through replica A's command line: B's stream says so, and B (whose
    // cache holds the key as enabled, and repository 2's data key) refuses at once.
    let out = binary::cli(
        a.dir.path(),
        &env,
        &[
            "kms",
            "disable-key",
            "--tenant",
            "t1",
            "--key-id",
            &key_id,
            "--force",
        ],
    );
    assert!(out.status.success(), "{}", binary::stderr(&out));
    let disabled = Instant::now();
    let second = on_b
        .next(Duration::from_secs(5))
        .await
        .expect("key_state_changed on B");
    let disable_ms = second.at.duration_since(disabled).as_millis();
    assert_eq!(second.event, "key_state_changed", "{:?}", second);
    assert_eq!(second.data["new_state"], 3);
    assert_eq!(second.data["repositories"], json!([2, 3, 4]));
    let (status, v) = node_api
        .call(&b.addr, reqwest::Method::GET, &data_key(2), None)
        .await;
    assert_eq!(status, 403, "B still released the key: {v}");
    eprintln!(
        "MEASURED PostgreSQL, two replicas: shred on A to B's subscriber {shred_ms} ms; \
         disable-key (CLI) to B's subscriber {disable_ms} ms; {} ms in all",
        started.elapsed().as_millis()
    );
    assert!(
        shred_ms < 1000 && disable_ms < 1000,
        "{shred_ms} ms, {disable_ms} ms"
    );

    // B goes away; meanwhile A shreds two more. The subscriber resumes on A from the
    // last id it saw, and gets the two, each once, in order.
    let last = second.id.unwrap();
    drop(on_b);
    b.terminate();
    for id in [3, 4] {
        let (status, _) = node_api
            .call(&a.addr, reqwest::Method::DELETE, &data_key(id), None)
            .await;
        assert_eq!(status, 204);
    }
    let mut on_a = binary::EventClient::open(&a.addr, &node, Some(last)).await;
    let got = on_a.drain(Duration::from_millis(800)).await;
    let repos: Vec<_> = got.iter().map(|e| e.data["repo_id"].as_i64()).collect();
    assert_eq!(repos, vec![Some(3), Some(4)], "{got:?}");
    assert!(got[0].id.unwrap() > last && got[1].id.unwrap() > got[0].id.unwrap());
    // And on a restarted B, from the same id, the same two.
    let b = Server::start(&env_ref);
    let mut on_b = binary::EventClient::open(&b.addr, &node, Some(last)).await;
    let again = on_b.drain(Duration::from_millis(800)).await;
    let ids = |v: &[binary::SseEvent]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&got));
}
