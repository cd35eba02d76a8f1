//! Migrations are forward-only and reach the newest schema from an empty database and from
//! every earlier version, keeping the data; a database newer than the binary is refused.
//! SQLite always; PostgreSQL too when `REPOCRYPT_TEST_DATABASE_URL` is set.

use crate::common;

use std::sync::Arc;

use repocrypt::clock::{Clock, SystemClock};
use repocrypt::domain::{Actor, EncryptionType, Result, SettingDraft, TenantId};
use repocrypt::store::postgres::{self, PostgresStore};
use repocrypt::store::sqlite::{self, SqliteStore};
use repocrypt::store::Database;

/// Open the database at `url`, migrated up to `target` (None: the newest).
async fn open(url: &str, target: Option<i64>) -> Result<(Arc<dyn Database>, i64)> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if url.starts_with("sqlite:") {
        let s = SqliteStore::connect_at(url, clock, target).await?;
        let v = s.schema_version().await?;
        Ok((Arc::new(s), v))
    } else {
        let s = PostgresStore::connect_at(url, clock, target).await?;
        let v = s.schema_version().await?;
        Ok((Arc::new(s), v))
    }
}

fn newest(url: &str) -> i64 {
    let m = if url.starts_with("sqlite:") {
        sqlite::MIGRATIONS
    } else {
        postgres::MIGRATIONS
    };
    // Versions are 1, 2, … with no gaps.
    for (i, (v, _, _)) in m.iter().enumerate() {
        assert_eq!(*v, i as i64 + 1, "migration versions must be consecutive");
    }
    m.len() as i64
}

async fn write_setting(store: &Arc<dyn Database>, tenant: &str) -> i64 {
    let plan = |_: Option<&repocrypt::domain::Setting>, _: bool| {
        Ok(SettingDraft {
            encryption_type: Some(EncryptionType::Normal),
            default_encryption_enabled: false,
            cmk_key_id: None,
            cmk_key_name: None,
        })
    };
    store
        .update_setting(
            &TenantId::parse(tenant).unwrap(),
            &Actor::cli(),
            std::sync::Arc::new(plan),
        )
        .await
        .unwrap()
        .id
}

async fn story(
    fresh_url: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String>>>,
) {
    let sample = fresh_url().await;
    let newest = newest(&sample);

    // From an empty database.
    let (_, v) = open(&sample, None).await.unwrap();
    assert_eq!(v, newest);

    // From every earlier version, with data written at that version.
    for from in 1..newest {
        let url = fresh_url().await;
        let (old, v) = open(&url, Some(from)).await.unwrap();
        assert_eq!(v, from);
        let id = write_setting(&old, "tenant-before-upgrade").await;
        drop(old);
        let (store, v) = open(&url, None).await.unwrap();
        assert_eq!(v, newest, "upgraded from {from}");
        let kept = store
            .get_setting(&TenantId::parse("tenant-before-upgrade").unwrap())
            .await
            .unwrap()
            .expect("data written before the upgrade is kept");
        assert_eq!(kept.id, id);
        assert_eq!(kept.encryption_type, Some(EncryptionType::Normal));
        assert_eq!(write_setting(&store, "tenant-before-upgrade").await, id);
        // Reopening is a no-op.
        assert_eq!(open(&url, None).await.unwrap().1, newest);
    }

    // A database from a newer binary is refused with a clear message.
    let url = fresh_url().await;
    let (store, _) = open(&url, None).await.unwrap();
    drop(store);
    mark_future_version(&url).await;
    let err = match open(&url, None).await {
        Ok(_) => panic!("a newer schema must be refused"),
        Err(e) => format!("{e}: {}", e.internal_detail().unwrap_or("")),
    };
    assert!(err.contains("newer than this binary"), "{err}");
}

async fn mark_future_version(url: &str) {
    use sqlx::Connection;
    let sql =
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 'now')";
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

#[tokio::test]
async fn sqlite_migrations() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    story(move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("db{n}.sqlite")).display()
        );
        Box::pin(async move { url })
    })
    .await;
}

#[tokio::test]
async fn postgres_migrations() {
    let Some(server) = common::test_database_url() else {
        assert!(
            std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
            "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
        );
        eprintln!("SKIPPED postgres_migrations: REPOCRYPT_TEST_DATABASE_URL is not set");
        return;
    };
    story(move || {
        let server = server.clone();
        Box::pin(async move { common::fresh_postgres_database(&server).await })
    })
    .await;
}

/// Every query is written with `$N` placeholders, some out of order or repeated (the
/// key update binds `$3..$5` before `$1, $2`; PostgreSQL's setting update repeats `$6`).
/// sqlx binds them by number on both databases, SQLite included, where `$N` is a named
/// parameter: a driver that bound them in order of appearance would fail here.
async fn placeholders_bind_by_number(url: &str) {
    use repocrypt::domain::KeyState;
    use repocrypt::store::StoredKey;
    use sqlx::{Connection, Row};
    let (store, _) = open(url, None).await.unwrap();
    let sql = "SELECT $2 AS a, $1 AS b, $2 AS c";
    let row: (String, String, String) = if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        let r = sqlx::query(sql).bind("one").bind("two");
        let r = r.fetch_one(&mut c).await.unwrap();
        (r.get("a"), r.get("b"), r.get("c"))
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let r = sqlx::query("SELECT $2::text AS a, $1::text AS b, $2::text AS c")
            .bind("one")
            .bind("two");
        let r = r.fetch_one(&mut c).await.unwrap();
        (r.get("a"), r.get("b"), r.get("c"))
    };
    assert_eq!(row, ("two".into(), "one".into(), "two".into()));

    // The store's own out-of-order query: every field of the update reads back.
    let tenant = TenantId::parse("tenant-placeholders").unwrap();
    let key = StoredKey {
        key_id: "key-placeholders".into(),
        tenant_id: tenant.as_str().into(),
        alias: "alias".into(),
        origin: "kms".into(),
        state: KeyState::Enabled,
        material: Some(vec![1, 2, 3]),
        deletion_at: None,
        created_at: "2026-01-01T00:00:00.000Z".into(),
    };
    store.kms_insert_key(&key, &Actor::cli()).await.unwrap();
    let change = |k: &StoredKey| {
        Ok(StoredKey {
            state: KeyState::PendingDeletion,
            material: Some(vec![9, 8]),
            deletion_at: Some(1_900_000_000),
            ..k.clone()
        })
    };
    store
        .kms_update_key(&tenant, &key.key_id, "kms.test", &Actor::cli(), &change)
        .await
        .unwrap();
    let listed = store.kms_list_keys(&tenant).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], change(&key).unwrap());
    // A setting written twice (the update path) reads back, and keeps its id.
    let id = write_setting(&store, tenant.as_str()).await;
    assert_eq!(write_setting(&store, tenant.as_str()).await, id);
    let read = store.get_setting(&tenant).await.unwrap().unwrap();
    assert_eq!(
        (read.id, read.encryption_type),
        (id, Some(EncryptionType::Normal))
    );
}

#[tokio::test]
async fn placeholders_bind_by_number_on_both_databases() {
    let dir = tempfile::tempdir().unwrap();
    placeholders_bind_by_number(&format!("sqlite://{}", dir.path().join("p.db").display())).await;
    match common::test_database_url() {
        Some(server) => {
            placeholders_bind_by_number(&common::fresh_postgres_database(&server).await).await
        }
        None => {
            assert!(
                std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
                "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
            );
            eprintln!("SKIPPED the PostgreSQL half: REPOCRYPT_TEST_DATABASE_URL is not set");
        }
    }
}
