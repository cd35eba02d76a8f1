//! The audit log. Every change is recorded with its actor, request id, before and after;
//! a change whose audit record cannot be written is refused and leaves nothing behind
//! (fail closed), through the API, the command line and the AWS KMS backend; and
//! `repocrypt audit list` filters by tenant, actor and time.
//!
//! The audit log is made to fail on purpose with a trigger on `audit_log` that raises
//! `audit unavailable`. Everything runs on SQLite, or on a fresh PostgreSQL database when
//! `REPOCRYPT_TEST_DATABASE_URL` is set; the AWS test needs moto (see tests/moto).

use crate::common;
use crate::common::binary;
use crate::common::moto;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;

use binary::{stderr, stdout};
use common::{
    admin_user, assert_error, fresh_postgres_database, grant_path, spawn_app, test_database_url,
    Resp, TENANT_A, TENANT_B,
};
use moto::Moto;

// ---- the database under the test ------------------------------------------------------

/// The database a test's `repocrypt` commands use: SQLite in the working directory, or a
/// fresh PostgreSQL database when `REPOCRYPT_TEST_DATABASE_URL` is set.
struct Db {
    url: String,
    /// Flags that point a command at it.
    args: Vec<String>,
}

impl Db {
    /// A database for the data in `dir`, whose root key `repocrypt init` makes first (the
    /// admin commands need one).
    async fn new(dir: &Path) -> Db {
        let init = binary::cli_in(dir, &["init"]);
        assert!(init.status.success(), "init: {}", stderr(&init));
        match test_database_url() {
            Some(server) => {
                let url = fresh_postgres_database(&server).await;
                Db {
                    args: vec!["--database".into(), url.clone()],
                    url,
                }
            }
            None => Db {
                url: format!(
                    "sqlite://{}",
                    dir.join("repocrypt-data/repocrypt.db").display()
                ),
                args: Vec::new(),
            },
        }
    }
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

async fn execute(url: &str, sql: &str) {
    if is_sqlite(url) {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    }
}

/// Make every insert into `audit_log` fail (or, with `outcomes_only`, every insert but
/// the `.requested` records written before an outside change).
async fn break_audit(url: &str, outcomes_only: bool) {
    let sql = if is_sqlite(url) {
        let when = if outcomes_only {
            "WHEN NEW.action NOT LIKE '%.requested'"
        } else {
            ""
        };
        format!(
            "CREATE TRIGGER audit_unavailable BEFORE INSERT ON audit_log FOR EACH ROW {when}
             BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END;"
        )
    } else {
        let when = if outcomes_only {
            "WHEN (NEW.action NOT LIKE '%.requested')"
        } else {
            ""
        };
        format!(
            "CREATE OR REPLACE FUNCTION audit_unavailable() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'audit unavailable'; END $$;
             CREATE TRIGGER audit_unavailable BEFORE INSERT ON audit_log FOR EACH ROW {when}
                 EXECUTE FUNCTION audit_unavailable();"
        )
    };
    execute(url, &sql).await;
}

async fn repair_audit(url: &str) {
    let sql = if is_sqlite(url) {
        "DROP TRIGGER audit_unavailable"
    } else {
        "DROP TRIGGER audit_unavailable ON audit_log"
    };
    execute(url, sql).await;
}

/// Every row of every table, as sorted text: equal dumps mean nothing changed.
async fn dump(url: &str) -> Vec<String> {
    let mut rows = Vec::new();
    if is_sqlite(url) {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .fetch_all(&mut c)
                .await
                .unwrap();
        for table in tables {
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                    .bind(&table)
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
            let row = columns
                .iter()
                .map(|col| format!("quote(\"{col}\")"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let values: Vec<String> = sqlx::query_scalar(&format!("SELECT {row} FROM \"{table}\""))
                .fetch_all(&mut c)
                .await
                .unwrap();
            rows.extend(values.into_iter().map(|v| format!("{table}: {v}")));
        }
        c.close().await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        for table in tables {
            let values: Vec<String> =
                sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
            rows.extend(values.into_iter().map(|v| format!("{table}: {v}")));
        }
        c.close().await.unwrap();
    }
    rows.sort();
    assert!(
        rows.iter().any(|r| r.starts_with("schema_migrations: ")),
        "the dump reads the service's database"
    );
    rows
}

// ---- the command line -----------------------------------------------------------------

/// `repocrypt [db flags] ARGS` in `dir`, with `env`.
fn run(dir: &Path, env: &[(&str, String)], db: &Db, args: &[&str]) -> Output {
    let args: Vec<&str> = db
        .args
        .iter()
        .map(String::as_str)
        .chain(args.iter().copied())
        .collect();
    binary::cli(dir, env, &args)
}

/// The JSON a successful command prints.
fn ok(dir: &Path, env: &[(&str, String)], db: &Db, args: &[&str]) -> Value {
    let out = run(dir, env, db, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    let text = stdout(&out);
    serde_json::from_str(text.trim()).unwrap_or(Value::Null)
}

/// The records `audit list ARGS` prints.
fn audit_list(dir: &Path, env: &[(&str, String)], db: &Db, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "list"];
    all.extend_from_slice(args);
    let out = run(dir, env, db, &all);
    assert!(out.status.success(), "{all:?}: {}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}

fn actions(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect()
}

/// A command refused because the audit log is unavailable: exit status 1, the cause on
/// stderr, nothing on stdout (no secret key of a credential that does not exist).
#[track_caller]
fn refused_for_audit(out: &Output, args: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should be refused: {}",
        stdout(out)
    );
    let err = stderr(out);
    assert!(
        err.contains("write audit record") && err.contains("audit unavailable"),
        "{args:?}: {err}"
    );
    assert!(stdout(out).is_empty(), "{args:?}: {}", stdout(out));
}

fn words(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_owned).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

const PROJECT: &str = "0123456789abcdef0123456789abcdef";
const PROJECT_2: &str = "fedcba9876543210fedcba9876543210";

fn is_cli_request_id(id: &Value) -> bool {
    id.as_str()
        .and_then(|s| s.strip_prefix("cli-"))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---- the API --------------------------------------------------------------------------

#[tokio::test]
async fn api_changes_are_refused_when_their_audit_record_cannot_be_written() {
    let t = spawn_app().await;
    let url = t.app.config.database_url.clone();
    let key = t.kms_ready(TENANT_A).await;
    let (admin_a, admin_b) = (t.admin(TENANT_A), t.admin(TENANT_B));
    let choose = json!({
        "encryption_type": "KMS", "cmk_key_id": key.key_id, "default_encryption_enabled": true
    });
    let unavailable = |r: &Resp| assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "RC.503002", &[]);

    // A first setting, a first grant and a repeated grant are each refused with 503, and
    // nothing in the database changes.
    break_audit(&url, false).await;
    let before = dump(&url).await;
    unavailable(&t.put_setting(TENANT_A, &admin_a, &choose).await);
    unavailable(&t.post_grant(TENANT_B, &admin_b).await);
    unavailable(&t.post_grant(TENANT_A, &admin_a).await);
    assert_eq!(dump(&url).await, before);
    let (status, _, setting) = t.get_setting(TENANT_A, &admin_a).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(setting["encryption_type"], Value::Null, "{setting}");
    assert!(setting.get("id").is_none(), "{setting}");
    assert_eq!(t.get_grant(TENANT_B, &admin_b).await.2["assumed"], false);

    // With the audit log back, the same requests succeed: the audit log was the cause.
    repair_audit(&url).await;
    assert_eq!(t.put_setting(TENANT_A, &admin_a, &choose).await.0, 200);
    let stored = t.get_setting(TENANT_A, &admin_a).await.2;
    assert_eq!(stored["encryption_type"], "KMS");

    // Changes to an existing setting are refused too, and the setting stays as it was.
    break_audit(&url, false).await;
    let before = dump(&url).await;
    for body in [
        json!({"encryption_type": "normal"}),
        json!({"default_encryption_enabled": false}),
        json!({"cmk_key_id": key.key_id}),
    ] {
        unavailable(&t.put_setting(TENANT_A, &admin_a, &body).await);
    }
    assert_eq!(dump(&url).await, before);
    assert_eq!(t.get_setting(TENANT_A, &admin_a).await.2, stored);

    repair_audit(&url).await;
    assert_eq!(
        t.put_setting(TENANT_A, &admin_a, &json!({"encryption_type": "normal"}))
            .await
            .0,
        200
    );
    assert_eq!(t.post_grant(TENANT_B, &admin_b).await.0, 200);
}

#[tokio::test]
async fn api_changes_are_recorded_with_actor_request_id_before_and_after() {
    let t = spawn_app().await;
    let key = t.create_key(TENANT_A, "repo-key").await;
    let admin = t.admin(TENANT_A);
    for request_id in ["req-grant-1", "req-grant-2"] {
        let r = t
            .send(
                Method::POST,
                &grant_path(TENANT_A),
                &[
                    ("x-auth-token", admin.as_str()),
                    ("x-request-id", request_id),
                ],
                Body::empty(),
            )
            .await;
        assert_eq!(r.0, 200, "{}", r.2);
    }
    let choose = json!({"encryption_type": "KMS", "cmk_key_id": key.key_id});
    let r = t
        .put_setting_with_id(TENANT_A, &admin, "req-put-1", &choose)
        .await;
    assert_eq!(r.0, 200, "{}", r.2);
    let r = t
        .put_setting_with_id(
            TENANT_A,
            &admin,
            "req-put-2",
            &json!({"encryption_type": "normal"}),
        )
        .await;
    assert_eq!(r.0, 200, "{}", r.2);

    let records: Vec<_> = t
        .audit(TENANT_A)
        .await
        .into_iter()
        .filter(|r| r.actor == admin_user(TENANT_A))
        .collect();
    let summary: Vec<(&str, Option<&str>)> = records
        .iter()
        .map(|r| (r.action.as_str(), r.request_id.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("kms_grant.create", Some("req-grant-1")),
            ("kms_grant.create", Some("req-grant-2")),
            ("setting.update", Some("req-put-1")),
            ("setting.update", Some("req-put-2")),
        ]
    );
    // The first grant creates it; the repeated one finds it and keeps it.
    let first = records[0].after.clone().expect("after");
    assert_eq!(records[0].before, None);
    assert_eq!(first["assumed"], true);
    assert_eq!(first["granted_by"], admin_user(TENANT_A));
    assert_eq!(records[1].before.as_ref(), Some(&first));
    assert_eq!(records[1].after.as_ref(), Some(&first));
    // The first setting has no before; the next one's before is the first one's after.
    let put1 = records[2].after.clone().expect("after");
    assert_eq!(records[2].before, None);
    assert_eq!(put1["cmk_key_id"], key.key_id.as_str());
    assert_eq!(put1["encryption_type"], "KMS");
    assert_eq!(records[3].before.as_ref(), Some(&put1));
    assert_eq!(
        records[3].after.as_ref().unwrap()["encryption_type"],
        "normal"
    );
}

// ---- the command line, local KMS ------------------------------------------------------

/// Keys in the states each lifecycle command starts from, a project and a credential.
struct Fixture {
    enabled: String,
    disabled: String,
    pending_deletion: String,
    pending_import: String,
    access_key: String,
}

fn fixture(dir: &Path, db: &Db) -> Fixture {
    let key = |alias: &str, extra: &[&str]| {
        let mut args = vec!["kms", "create-key", "--tenant", "t1", "--alias", alias];
        args.extend_from_slice(extra);
        ok(dir, &[], db, &args)["key_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let f = Fixture {
        enabled: key("enabled", &[]),
        disabled: key("disabled", &[]),
        pending_deletion: key("pending-deletion", &[]),
        pending_import: key("pending-import", &["--origin", "external"]),
        access_key: String::new(),
    };
    ok(
        dir,
        &[],
        db,
        &[
            "kms",
            "disable-key",
            "--tenant",
            "t1",
            "--key-id",
            &f.disabled,
        ],
    );
    ok(
        dir,
        &[],
        db,
        &[
            "kms",
            "schedule-key-deletion",
            "--tenant",
            "t1",
            "--key-id",
            &f.pending_deletion,
            "--pending-days",
            "7",
        ],
    );
    ok(
        dir,
        &[],
        db,
        &[
            "project",
            "add",
            "--tenant",
            "t1",
            "--project-id",
            PROJECT,
            "--name",
            "web",
        ],
    );
    let cred = ok(
        dir,
        &[],
        db,
        &["credential", "create", "--tenant", "t1", "--user", "ci"],
    );
    Fixture {
        access_key: cred["access_key"].as_str().unwrap().to_owned(),
        ..f
    }
}

/// Every command that changes something, on the fixture's data.
fn changes(f: &Fixture) -> Vec<Vec<String>> {
    let key = |cmd: &str, id: &str| {
        vec![
            "kms".to_owned(),
            cmd.to_owned(),
            "--tenant".into(),
            "t1".into(),
            "--key-id".into(),
            id.to_owned(),
        ]
    };
    let mut schedule = key("schedule-key-deletion", &f.enabled);
    schedule.extend(["--pending-days".into(), "30".into()]);
    vec![
        words("tenant set --tenant t1 --permit-public allow"),
        words(&format!(
            "project add --tenant t1 --project-id {PROJECT_2} --name api"
        )),
        words(&format!(
            "project add-member --project-id {PROJECT} --tenant t2 --user bob"
        )),
        words("kms create-key --tenant t1 --alias fresh"),
        key("disable-key", &f.enabled),
        key("enable-key", &f.disabled),
        schedule,
        key("cancel-key-deletion", &f.pending_deletion),
        key("import-key-material", &f.pending_import),
        words("credential create --tenant t1 --user ops --role admin"),
        words(&format!("credential delete --access-key {}", f.access_key)),
    ]
    .into_iter()
    .chain(cfg!(feature = "bench").then(|| words("bench load --tenants 2")))
    .collect()
}

#[tokio::test]
async fn cli_changes_are_refused_when_their_audit_record_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::new(d).await;
    let f = fixture(d, &db);
    let changes = changes(&f);

    break_audit(&db.url, false).await;
    let before = dump(&db.url).await;
    for args in &changes {
        refused_for_audit(&run(d, &[], &db, &strs(args)), &strs(args));
        assert_eq!(dump(&db.url).await, before, "{args:?} changed the database");
    }
    // Reads still work while the audit log is down.
    let keys = ok(d, &[], &db, &["kms", "list-keys", "--tenant", "t1"]);
    let states: BTreeSet<i64> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_state"].as_i64().unwrap())
        .collect();
    assert_eq!(states, BTreeSet::from([2, 3, 4, 5]), "{keys}");

    // With the audit log back every one of them succeeds: the audit log was the cause.
    repair_audit(&db.url).await;
    for args in &changes {
        ok(d, &[], &db, &strs(args));
    }
    assert_ne!(dump(&db.url).await, before);
}

#[tokio::test]
async fn cli_changes_are_recorded_with_their_invocation_request_id_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::new(d).await;
    let f = fixture(d, &db);
    let setup = audit_list(d, &[], &db, &[]);
    let changes = changes(&f);
    for args in &changes {
        ok(d, &[], &db, &strs(args));
    }
    // A second `tenant set`: its before is the first one's after.
    ok(
        d,
        &[],
        &db,
        &["tenant", "set", "--tenant", "t1", "--permit-public", "deny"],
    );
    let records: Vec<Value> = audit_list(d, &[], &db, &[])
        .into_iter()
        .skip(setup.len())
        .collect();
    // `bench load` is run (and recorded) in a build with the bench tooling.
    let bench: &[&str] = if cfg!(feature = "bench") {
        &["bench.load"]
    } else {
        &[]
    };
    let expected: Vec<&str> = [
        "tenant.set_permit_public",
        "project.add",
        "project.add_member",
        "kms.create_key",
        "kms.disable_key",
        "kms.enable_key",
        "kms.schedule_key_deletion",
        "kms.cancel_key_deletion",
        "kms.import_key_material",
        "credential.create",
        "credential.delete",
    ]
    .iter()
    .chain(bench)
    .chain(&["tenant.set_permit_public"])
    .copied()
    .collect();
    assert_eq!(actions(&records), expected);
    // One request id per invocation, `cli-` and 32 hex digits, all different.
    let ids: BTreeSet<&str> = records
        .iter()
        .map(|r| {
            assert!(is_cli_request_id(&r["request_id"]), "{r}");
            assert_eq!(r["actor"], "cli", "{r}");
            assert!(r["at"].as_str().is_some_and(|a| a.len() == 24), "{r}");
            r["request_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), records.len());
    // Before is null for a creation, after is null for a deletion; both are there for
    // every other change.
    for r in &records {
        let action = r["action"].as_str().unwrap();
        let creation = matches!(
            action,
            "project.add" | "project.add_member" | "kms.create_key" | "credential.create"
        ) || action == "bench.load";
        let first_permit = action == "tenant.set_permit_public" && r == &records[0];
        assert_eq!(
            r["before"].is_null(),
            creation || first_permit,
            "before of {r}"
        );
        assert_eq!(
            r["after"].is_null(),
            action == "credential.delete",
            "after of {r}"
        );
    }
    let last = records.last().unwrap();
    assert_eq!(last["before"], json!({"permit_public": "allow"}));
    assert_eq!(last["after"], json!({"permit_public": "deny"}));
    let disable = &records[4];
    assert_eq!(disable["before"]["state"], 2, "{disable}");
    assert_eq!(disable["after"]["state"], 3, "{disable}");
    // A credential's record never holds its secret, sealed or not.
    for r in records.iter().filter(|r| {
        r["action"]
            .as_str()
            .is_some_and(|a| a.starts_with("credential."))
    }) {
        let text = r.to_string();
        assert!(!text.contains("secret"), "{text}");
    }
}

// ---- the command line, AWS KMS ----------------------------------------------------------

async fn aws_state(moto: &Moto, key_id: &str) -> String {
    moto.raw_client()
        .describe_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .and_then(|m| m.key_state())
        .map(|s| s.as_str().to_owned())
        .unwrap()
}

async fn aws_key_count(moto: &Moto) -> usize {
    moto.raw_client()
        .list_keys()
        .send()
        .await
        .unwrap()
        .keys()
        .len()
}

/// The `cli-…` request id in a command's log.
fn logged_request_id(log: &str) -> String {
    let start = log
        .find("cli-")
        .unwrap_or_else(|| panic!("no request id: {log}"));
    log[start..start + 36].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_key_changes_are_not_sent_when_their_audit_record_cannot_be_written() {
    let Some(moto) =
        Moto::start("aws_key_changes_are_not_sent_when_their_audit_record_cannot_be_written")
    else {
        return;
    };
    let env = moto.env();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::new(d).await;
    let t = "159b65b41ead484d8ddff250a4731781";
    let create = |alias: &str| {
        ok(
            d,
            &env,
            &db,
            &["kms", "create-key", "--tenant", t, "--alias", alias],
        )["key_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (enabled, disabled, pending) = (create("enabled"), create("disabled"), create("pending"));
    let lifecycle = |cmd: &str, id: &str| -> Vec<String> {
        let mut args = words(&format!("kms {cmd} --tenant {t} --key-id {id}"));
        if cmd == "schedule-key-deletion" {
            args.extend(words("--pending-days 7"));
        }
        args
    };
    ok(d, &env, &db, &strs(&lifecycle("disable-key", &disabled)));
    ok(
        d,
        &env,
        &db,
        &strs(&lifecycle("schedule-key-deletion", &pending)),
    );
    assert_eq!(aws_state(&moto, &disabled).await, "Disabled");
    assert_eq!(aws_state(&moto, &pending).await, "PendingDeletion");

    // With the audit log down, no change reaches AWS: every key keeps its state and no
    // key is created.
    break_audit(&db.url, false).await;
    let before = dump(&db.url).await;
    let keys_before = aws_key_count(&moto).await;
    for args in [
        lifecycle("disable-key", &enabled),
        lifecycle("schedule-key-deletion", &enabled),
        lifecycle("enable-key", &disabled),
        lifecycle("cancel-key-deletion", &pending),
        words(&format!("kms create-key --tenant {t} --alias never")),
    ] {
        refused_for_audit(&run(d, &env, &db, &strs(&args)), &strs(&args));
    }
    assert_eq!(aws_state(&moto, &enabled).await, "Enabled");
    assert_eq!(aws_state(&moto, &disabled).await, "Disabled");
    assert_eq!(aws_state(&moto, &pending).await, "PendingDeletion");
    assert_eq!(aws_key_count(&moto).await, keys_before);
    assert_eq!(dump(&db.url).await, before);

    // With the audit log back, a change is recorded twice under the invocation's request
    // id: the request before AWS is called, the outcome after.
    repair_audit(&db.url).await;
    let seen = audit_list(d, &env, &db, &["--tenant", t]).len();
    let disable = lifecycle("disable-key", &enabled);
    assert_eq!(ok(d, &env, &db, &strs(&disable))["key_state"], 3);
    let records = audit_list(d, &env, &db, &["--tenant", t]);
    let new = &records[seen..];
    assert_eq!(
        actions(new),
        ["kms.disable_key.requested", "kms.disable_key"]
    );
    assert!(is_cli_request_id(&new[0]["request_id"]));
    assert_eq!(new[0]["request_id"], new[1]["request_id"]);
    let id = enabled.as_str();
    assert_eq!(new[0]["before"], json!({"key_id": id, "key_state": 2}));
    assert_eq!(new[0]["after"], json!({"key_id": id, "key_state": 3}));
    assert_eq!(new[1]["before"], json!({"key_id": id, "key_state": 2}));
    assert_eq!(
        new[1]["after"],
        json!({"key_id": id, "key_name": "enabled", "key_state": 3})
    );

    // A change AWS refuses after the request was recorded: CreateKey works, CreateAlias
    // finds the alias taken. The outcome says so, with the key that was cleaned up.
    let seen = records.len();
    let out = run(
        d,
        &env,
        &db,
        &["kms", "create-key", "--tenant", t, "--alias", "enabled"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let records = audit_list(d, &env, &db, &["--tenant", t]);
    let new = &records[seen..];
    assert_eq!(
        actions(new),
        ["kms.create_key.requested", "kms.create_key.failed"]
    );
    assert_eq!(
        new[0]["after"],
        json!({"key_name": "enabled", "origin": "kms"})
    );
    assert_eq!(new[1]["after"]["error_code"], "RC.400012", "{}", new[1]);
    let orphan = new[1]["after"]["key_id"]
        .as_str()
        .expect("the new key's id");
    assert_eq!(aws_state(&moto, orphan).await, "PendingDeletion");

    // When only the outcome cannot be recorded, the change stands (AWS has made it): the
    // command succeeds, and the error is logged with the request id of the `.requested`
    // record already written.
    break_audit(&db.url, true).await;
    let out = run(d, &env, &db, &strs(&lifecycle("enable-key", &enabled)));
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("audit record of the outcome could not be written"),
        "{log}"
    );
    assert_eq!(aws_state(&moto, &enabled).await, "Enabled");
    repair_audit(&db.url).await;
    let last = audit_list(d, &env, &db, &["--tenant", t])
        .pop()
        .expect("a record");
    assert_eq!(last["action"], "kms.enable_key.requested");
    assert_eq!(last["request_id"], logged_request_id(&log).as_str());
}

// ---- audit list -----------------------------------------------------------------------

#[tokio::test]
async fn audit_list_filters_by_tenant_actor_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = Db::new(d).await;
    assert!(audit_list(d, &[], &db, &[]).is_empty(), "a new database");
    // Records at known times (in the past), as the service writes `at`.
    execute(
        &db.url,
        "INSERT INTO audit_log (at, tenant_id, actor, request_id, action, before, after) VALUES
             ('2020-01-01T00:00:00.000Z', 't1', 'alice', 'r1', 'a1', NULL, '{}'),
             ('2020-01-01T00:00:00.001Z', 't1', 'bob',   'r2', 'a2', NULL, '{}'),
             ('2020-01-01T11:59:59.999Z', 't2', 'alice', 'r3', 'a3', NULL, '{}'),
             ('2020-01-01T12:00:00.000Z', 't1', 'alice', 'r4', 'a4', NULL, '{}'),
             ('2020-01-02T00:00:00.000Z', 't2', 'bob',   'r5', 'a5', NULL, '{}')",
    )
    .await;
    let list = |args: &[&str]| actions(&audit_list(d, &[], &db, args));
    assert_eq!(list(&[]), ["a1", "a2", "a3", "a4", "a5"]);
    assert_eq!(list(&["--tenant", "t1"]), ["a1", "a2", "a4"]);
    assert_eq!(list(&["--actor", "alice"]), ["a1", "a3", "a4"]);
    assert_eq!(list(&["--tenant", "t1", "--actor", "alice"]), ["a1", "a4"]);
    assert!(list(&["--tenant", "t3"]).is_empty());
    // --since is inclusive, --until exclusive, to the millisecond.
    assert_eq!(list(&["--since", "2020-01-01T12:00:00Z"]), ["a4", "a5"]);
    assert_eq!(
        list(&["--until", "2020-01-01T12:00:00Z"]),
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        list(&[
            "--since",
            "2020-01-01T00:00:00.001Z",
            "--until",
            "2020-01-01T12:00:00.001Z"
        ]),
        ["a2", "a3", "a4"]
    );
    // Between two milliseconds: the next one.
    assert_eq!(
        list(&["--since", "2020-01-01T00:00:00.0005Z"]),
        ["a2", "a3", "a4", "a5"]
    );
    // An offset from UTC, and a date (midnight UTC).
    assert_eq!(
        list(&["--since", "2020-01-01T13:00:00+01:00"]),
        ["a4", "a5"]
    );
    assert_eq!(
        list(&["--since", "2020-01-01", "--until", "2020-01-02"]),
        ["a1", "a2", "a3", "a4"]
    );
    // --limit keeps the most recent, still oldest first; it applies after the filters.
    assert_eq!(list(&["--limit", "2"]), ["a4", "a5"]);
    assert_eq!(list(&["--tenant", "t1", "--limit", "2"]), ["a2", "a4"]);
    assert_eq!(list(&["--limit", "100"]), ["a1", "a2", "a3", "a4", "a5"]);

    // A duration ago: a change made now is within the last hour, the old records are not.
    ok(
        d,
        &[],
        &db,
        &[
            "tenant",
            "set",
            "--tenant",
            "t1",
            "--permit-public",
            "allow",
        ],
    );
    assert_eq!(list(&["--since", "1h"]), ["tenant.set_permit_public"]);
    assert_eq!(
        list(&["--since", "1h", "--actor", "cli", "--tenant", "t1"]),
        ["tenant.set_permit_public"]
    );
    assert_eq!(list(&["--until", "1h"]), ["a1", "a2", "a3", "a4", "a5"]);
    assert_eq!(
        list(&["--tenant", "t1", "--limit", "1"]),
        ["tenant.set_permit_public"]
    );

    // Bad input is a clear error, never an empty answer.
    let fails = |args: &[&str], code: i32, needle: &str| {
        let mut all = vec!["audit", "list"];
        all.extend_from_slice(args);
        let out = run(d, &[], &db, &all);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    };
    fails(&["--since", "yesterday"], 2, "RFC 3339");
    fails(&["--until", "2020-01-01T25:00:00Z"], 2, "RFC 3339");
    fails(&["--since", "2020-01-01T12:00:00"], 2, "no time zone");
    fails(&["--limit", "0"], 2, "--limit");
    fails(&["--actor", ""], 1, "--actor");
    fails(
        &[
            "--since",
            "2020-01-02T00:00:00Z",
            "--until",
            "2020-01-01T00:00:00Z",
        ],
        1,
        "must be before --until",
    );
}
