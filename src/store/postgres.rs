//! PostgreSQL: for several stateless replicas behind a load balancer. Nothing is cached
//! here, so a write acknowledged by one replica is read by every other at once. Writes
//! that read first take a per-tenant (or per-row) lock inside their transaction.
//!
//! The hot paths are batched, without weakening that:
//!
//! - Reads of settings, grants, tenants' `permit_public` and local-KMS keys are coalesced (`store::coalesce`):
//!   the calls waiting at once are answered by one `... = ANY($1)` query. See
//!   [`PostgresStore::get_setting`] for why that is as fresh as one query per call.
//! - Setting writes (PUT) are committed in groups, as on SQLite: the PUTs waiting at once
//!   run in one transaction, each in its own savepoint, with one COMMIT, and each is
//!   answered only after that COMMIT. See [`commit_settings`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use super::coalesce::{BoxFuture, Coalescer};
use super::{
    all_fail, audit_query, bulk_summary, db_error, parse_role, role_str, to_json, unique_violation,
    AuditFilter, BulkTenant, Credential, KeyChange, SettingPlan, Store, StoredKey,
};
use crate::clock::Clock;
use crate::domain::{
    Actor, AuditRecord, EncryptionType, Error, Grant, KeyState, PermitPublic, Project, ProjectId,
    Result, Setting, TenantId,
};

/// Forward-only migrations, applied in order on start (same versions as SQLite's).
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "credentials",
        include_str!("../../migrations/postgres/0002_credentials.sql"),
    ),
    (
        3,
        "audit_by_time",
        include_str!("../../migrations/postgres/0003_audit_by_time.sql"),
    ),
];

/// Advisory lock key that serialises migrations across replicas starting together.
const MIGRATION_LOCK: i64 = 0x7265_706f_6372_7970; // "repocryp"

/// Tasks that serve coalesced reads of one kind (settings, grants, keys): while some wait
/// for PostgreSQL, another collects the next batch.
const READERS: usize = 3;
/// Most reads answered by one query.
const MAX_READ_BATCH: usize = 128;
/// Tasks that commit setting writes. Two, so that one batch can be collected and wait for
/// its tenants' locks while the other commits; writes of different tenants also proceed
/// side by side.
const WRITERS: usize = 2;
/// Most setting writes committed in one transaction. Each written savepoint is a
/// subtransaction, and PostgreSQL tracks at most 64 of them per transaction in shared
/// memory; past that every other session's snapshot becomes "suboverflowed" and slower.
const MAX_WRITE_BATCH: usize = 48;

pub struct PostgresStore {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    settings: Coalescer<TenantId, Option<Setting>>,
    grants: Coalescer<TenantId, Option<Grant>>,
    keys: Coalescer<(TenantId, String), Option<StoredKey>>,
    permits: Coalescer<TenantId, Option<PermitPublic>>,
    writer: Coalescer<SettingJob, Setting>,
}

/// A PUT's write, handed to a writer task.
struct SettingJob {
    tenant: TenantId,
    actor: Actor,
    plan: SettingPlan,
}

impl PostgresStore {
    /// Connect to a `postgres://` URL and migrate the database to the newest version.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::connect_at(url, clock, None).await
    }

    /// Like [`connect`](Self::connect), migrating only up to `target` (tests of upgrades).
    pub async fn connect_at(url: &str, clock: Arc<dyn Clock>, target: Option<i64>) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| db_error("cannot connect to PostgreSQL", e))?;
        let store = PostgresStore {
            settings: Coalescer::start("setting read", READERS, MAX_READ_BATCH, {
                let pool = pool.clone();
                Arc::new(move |tenants| Box::pin(read_settings(pool.clone(), tenants)))
            }),
            grants: Coalescer::start("grant read", READERS, MAX_READ_BATCH, {
                let pool = pool.clone();
                Arc::new(move |tenants| Box::pin(read_grants(pool.clone(), tenants)))
            }),
            keys: Coalescer::start("key read", READERS, MAX_READ_BATCH, {
                let pool = pool.clone();
                Arc::new(move |keys| Box::pin(read_keys(pool.clone(), keys)))
            }),
            permits: Coalescer::start("tenant read", READERS, MAX_READ_BATCH, {
                let pool = pool.clone();
                Arc::new(move |tenants| Box::pin(read_permits(pool.clone(), tenants)))
            }),
            writer: Coalescer::start("setting write", WRITERS, MAX_WRITE_BATCH, {
                let (pool, clock) = (pool.clone(), clock.clone());
                Arc::new(move |jobs| commit_settings(pool.clone(), clock.clone(), jobs))
            }),
            pool,
            clock,
        };
        store.migrate(target).await?;
        Ok(store)
    }

    async fn migrate(&self, target: Option<i64>) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("migration lock", e))?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("migrations table", e))?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error("read schema version", e))?;
        let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > newest {
            return Err(Error::Store(format!(
                "the database is at schema version {current}, newer than this binary's {newest}: upgrade repocrypt"
            )));
        }
        let target = target.unwrap_or(newest);
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current && m.0 <= target) {
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(&format!("migration {version} ({name})"), e))?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(name)
            .bind(self.clock.rfc3339())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("record migration", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("commit migrations", e))
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("read schema version", e))
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(|e| db_error("begin transaction", e))
    }

    /// Serialise writers of one tenant's rows until the transaction ends.
    async fn lock_tenant(conn: &mut PgConnection, scope: &str, tenant: &str) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("{scope}:{tenant}"))
            .execute(conn)
            .await
            .map_err(|e| db_error("tenant lock", e))?;
        Ok(())
    }

    async fn audit(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        actor: &Actor,
        action: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Result<()> {
        insert_audit(conn, &self.clock, tenant, actor, action, before, after).await
    }
}

async fn insert_audit(
    conn: &mut PgConnection,
    clock: &Arc<dyn Clock>,
    tenant: &str,
    actor: &Actor,
    action: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, tenant_id, actor, request_id, action, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(clock.rfc3339())
    .bind(tenant)
    .bind(&actor.actor)
    .bind(actor.request_id.as_deref())
    .bind(action)
    .bind(before.map(|v| v.to_string()))
    .bind(after.map(|v| v.to_string()))
    .execute(conn)
    .await
    .map_err(|e| db_error("write audit record", e))?;
    Ok(())
}

fn setting_from_row(row: &PgRow) -> Result<Setting> {
    let get = |e: sqlx::Error| db_error("decode setting", e);
    let tenant: String = row.try_get("tenant_id").map_err(get)?;
    let encryption_type: Option<String> = row.try_get("encryption_type").map_err(get)?;
    let id: i32 = row.try_get("id").map_err(get)?;
    Ok(Setting {
        id: i64::from(id),
        tenant_id: TenantId::parse(tenant)?,
        encryption_type: encryption_type
            .as_deref()
            .map(EncryptionType::parse)
            .transpose()?,
        default_encryption_enabled: row.try_get("default_encryption_enabled").map_err(get)?,
        cmk_key_id: row.try_get("cmk_key_id").map_err(get)?,
        cmk_key_name: row.try_get("cmk_key_name").map_err(get)?,
    })
}

fn key_from_row(row: &PgRow) -> Result<StoredKey> {
    let get = |e: sqlx::Error| db_error("decode key", e);
    let code: i32 = row.try_get("key_state").map_err(get)?;
    Ok(StoredKey {
        key_id: row.try_get("key_id").map_err(get)?,
        tenant_id: row.try_get("tenant_id").map_err(get)?,
        alias: row.try_get("alias").map_err(get)?,
        origin: row.try_get("origin").map_err(get)?,
        state: KeyState::from_code(i64::from(code))
            .ok_or_else(|| Error::Store(format!("invalid key_state {code} in database")))?,
        material: row.try_get("material").map_err(get)?,
        deletion_at: row.try_get("deletion_at").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
    })
}

fn audit_from_row(row: &PgRow) -> Result<AuditRecord> {
    let get = |e: sqlx::Error| db_error("decode audit record", e);
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(AuditRecord {
        id: row.try_get("id").map_err(get)?,
        at: row.try_get("at").map_err(get)?,
        tenant_id: row.try_get("tenant_id").map_err(get)?,
        actor: row.try_get("actor").map_err(get)?,
        request_id: row.try_get("request_id").map_err(get)?,
        action: row.try_get("action").map_err(get)?,
        before: json(row.try_get("before").map_err(get)?),
        after: json(row.try_get("after").map_err(get)?),
    })
}

fn credential_from_row(row: &PgRow) -> Result<Credential> {
    let get = |e: sqlx::Error| db_error("decode credential", e);
    let role: String = row.try_get("role").map_err(get)?;
    Ok(Credential {
        access_key: row.try_get("access_key").map_err(get)?,
        tenant_id: row.try_get("tenant_id").map_err(get)?,
        user_id: row.try_get("user_id").map_err(get)?,
        role: parse_role(&role)?,
        sealed_secret: row.try_get("secret").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
    })
}

const CREDENTIAL_COLUMNS: &str = "access_key, tenant_id, user_id, role, secret, created_at";
const SETTING_COLUMNS: &str =
    "id, tenant_id, encryption_type, default_encryption_enabled, cmk_key_id, cmk_key_name";
const KEY_COLUMNS: &str =
    "key_id, tenant_id, alias, origin, key_state, material, deletion_at, created_at";

// ---- coalesced reads ---------------------------------------------------------------------

/// What an error says, for the log (a store error's detail, not its "internal error").
fn internal_detail(e: &Error) -> String {
    e.internal_detail()
        .map_or_else(|| e.to_string(), str::to_owned)
}

/// Each value once, in first-seen order: the array a batch query is given.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}

/// The rows of a batch query by the text column `column` (the rows' key).
fn rows_by<'r>(rows: &'r [PgRow], column: &str, what: &str) -> Result<HashMap<&'r str, &'r PgRow>> {
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<&str, _>(column)
                    .map_err(|e| db_error(what, e))?,
                row,
            ))
        })
        .collect()
}

/// One answer per caller from the rows of a batch query: `decode` runs once per caller,
/// so each gets exactly the result (or error) its own query would have given.
fn answer<K, V>(
    items: &[K],
    found: Result<HashMap<&str, &PgRow>>,
    key: impl Fn(&K) -> &str,
    decode: impl Fn(&K, &PgRow) -> Result<Option<V>>,
) -> Vec<Result<Option<V>>> {
    match found {
        Ok(rows) => items
            .iter()
            .map(|item| match rows.get(key(item)) {
                Some(row) => decode(item, row),
                None => Ok(None),
            })
            .collect(),
        Err(e) => {
            let detail = internal_detail(&e);
            items
                .iter()
                .map(|_| Err(Error::Store(detail.clone())))
                .collect()
        }
    }
}

/// The settings of the tenants of a batch of `get_setting` calls, in one query.
async fn read_settings(pool: PgPool, tenants: Vec<TenantId>) -> Vec<Result<Option<Setting>>> {
    let wanted = distinct(tenants.iter().map(TenantId::as_str));
    let rows = match sqlx::query(&format!(
        "SELECT {SETTING_COLUMNS} FROM encryption_settings WHERE tenant_id = ANY($1)"
    ))
    .bind(&wanted)
    .fetch_all(&pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return all_fail(tenants.len(), "read setting", &e),
    };
    answer(
        &tenants,
        rows_by(&rows, "tenant_id", "decode setting"),
        TenantId::as_str,
        |_, row| setting_from_row(row).map(Some),
    )
}

/// The grants of the tenants of a batch of `get_grant` calls, in one query.
async fn read_grants(pool: PgPool, tenants: Vec<TenantId>) -> Vec<Result<Option<Grant>>> {
    let wanted = distinct(tenants.iter().map(TenantId::as_str));
    let rows = match sqlx::query(
        "SELECT tenant_id, granted_by, granted_at FROM kms_grants WHERE tenant_id = ANY($1)",
    )
    .bind(&wanted)
    .fetch_all(&pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return all_fail(tenants.len(), "read grant", &e),
    };
    answer(
        &tenants,
        rows_by(&rows, "tenant_id", "decode grant"),
        TenantId::as_str,
        |tenant, row| {
            let get = |e: sqlx::Error| db_error("decode grant", e);
            Ok(Some(Grant {
                tenant_id: tenant.clone(),
                granted_by: row.try_get("granted_by").map_err(get)?,
                granted_at: row.try_get("granted_at").map_err(get)?,
            }))
        },
    )
}

/// The keys of a batch of `kms_get_key` calls, in one query. `key_id` is the table's
/// primary key; a key of another tenant is not found, as with `tenant_id = $1 AND ...`.
async fn read_keys(pool: PgPool, keys: Vec<(TenantId, String)>) -> Vec<Result<Option<StoredKey>>> {
    let wanted = distinct(keys.iter().map(|(_, key_id)| key_id.as_str()));
    let rows = match sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM kms_keys WHERE key_id = ANY($1)"
    ))
    .bind(&wanted)
    .fetch_all(&pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) => return all_fail(keys.len(), "read key", &e),
    };
    answer(
        &keys,
        rows_by(&rows, "key_id", "decode key"),
        |(_, key_id)| key_id.as_str(),
        |(tenant, _), row| {
            let key = key_from_row(row)?;
            Ok((key.tenant_id == tenant.as_str()).then_some(key))
        },
    )
}

/// The `permit_public` of the tenants of a batch of `get_permit_public` calls.
async fn read_permits(pool: PgPool, tenants: Vec<TenantId>) -> Vec<Result<Option<PermitPublic>>> {
    let wanted = distinct(tenants.iter().map(TenantId::as_str));
    let rows =
        match sqlx::query("SELECT tenant_id, permit_public FROM tenants WHERE tenant_id = ANY($1)")
            .bind(&wanted)
            .fetch_all(&pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) => return all_fail(tenants.len(), "read tenant", &e),
        };
    answer(
        &tenants,
        rows_by(&rows, "tenant_id", "decode tenant"),
        TenantId::as_str,
        |_, row| {
            let value: &str = row
                .try_get("permit_public")
                .map_err(|e| db_error("decode tenant", e))?;
            Ok(PermitPublic::parse(value))
        },
    )
}

// ---- group commit of setting writes ------------------------------------------------------

/// Commit a batch of setting writes (PUTs) in one transaction:
///
/// 1. Take every tenant's `setting:` advisory lock at once, in the order of the lock keys,
///    so that two batches (of this replica or of another) that share tenants never wait
///    on each other in a cycle. Each tenant's writes on every replica are serialized by
///    these locks, as they were one transaction at a time.
/// 2. Read the batch's settings and grants, after the locks: every write of these tenants
///    committed before is seen (and, since the batch was collected before it began, every
///    write that returned before any of its PUTs arrived).
/// 3. Each PUT in turn: its plan decides on the setting as the PUTs before it in the batch
///    left it; a refusal writes nothing. Otherwise its write and its audit record run in
///    a savepoint of their own, which alone is rolled back if either fails.
/// 4. One COMMIT. Only then is any PUT answered; if the COMMIT fails, every PUT that was
///    to succeed gets the error instead, so nothing is acknowledged that is not durable.
fn commit_settings(
    pool: PgPool,
    clock: Arc<dyn Clock>,
    jobs: Vec<SettingJob>,
) -> BoxFuture<'static, Vec<Result<Setting>>> {
    Box::pin(async move { commit_batch(&pool, &clock, &jobs).await })
}

/// [`commit_settings`], borrowing: boxed, so the batch's future is `Send` for every
/// lifetime (sqlx's executors otherwise trip rustc's higher-ranked lifetime inference).
fn commit_batch<'a>(
    pool: &'a PgPool,
    clock: &'a Arc<dyn Clock>,
    jobs: &'a [SettingJob],
) -> BoxFuture<'a, Vec<Result<Setting>>> {
    Box::pin(async move {
        let n = jobs.len();
        let mut tx = match pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return all_fail(n, "begin transaction", &e),
        };
        let tenants = distinct(jobs.iter().map(|j| j.tenant.as_str()));
        let lock_names: Vec<String> = tenants.iter().map(|t| format!("setting:{t}")).collect();
        // The same lock keys as `lock_tenant`. The sorted subquery is not flattened into
        // the outer query (it has ORDER BY and DISTINCT), so the locks are taken in its
        // order. DISTINCT: two tenants whose names hash alike share one lock.
        if let Err(e) = sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM (
                 SELECT DISTINCT hashtextextended(name, 0) AS k
                 FROM unnest($1::text[]) AS name ORDER BY k) AS locks",
        )
        .bind(&lock_names)
        .execute(&mut *tx)
        .await
        {
            return all_fail(n, "tenant lock", &e);
        }
        let rows = match sqlx::query(&format!(
            "SELECT {SETTING_COLUMNS} FROM encryption_settings WHERE tenant_id = ANY($1)"
        ))
        .bind(&tenants)
        .fetch_all(&mut *tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return all_fail(n, "read setting", &e),
        };
        // Each tenant's setting as the batch has left it so far.
        let mut current: HashMap<String, Setting> = HashMap::new();
        for row in &rows {
            match setting_from_row(row) {
                Ok(s) => {
                    current.insert(s.tenant_id.as_str().to_owned(), s);
                }
                Err(e) => {
                    let detail = internal_detail(&e);
                    return (0..n).map(|_| Err(Error::Store(detail.clone()))).collect();
                }
            }
        }
        let granted: HashSet<String> =
            match sqlx::query("SELECT tenant_id FROM kms_grants WHERE tenant_id = ANY($1)")
                .bind(&tenants)
                .fetch_all(&mut *tx)
                .await
            {
                Ok(rows) => match rows.iter().map(|r| r.try_get("tenant_id")).collect() {
                    Ok(granted) => granted,
                    Err(e) => return all_fail(n, "decode grant", &e),
                },
                Err(e) => return all_fail(n, "read grant", &e),
            };
        let mut results = Vec::with_capacity(n);
        let mut open_savepoint = false;
        for job in jobs {
            let tenant = job.tenant.as_str();
            let before = current.get(tenant);
            // A refusal is decided here, before anything is written.
            let draft = match (job.plan)(before, granted.contains(tenant)) {
                Ok(draft) => draft,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            // The previous write's savepoint is released and this one's opened in one
            // round trip; COMMIT releases the last.
            let open = if open_savepoint {
                "RELEASE SAVEPOINT put; SAVEPOINT put"
            } else {
                "SAVEPOINT put"
            };
            if let Err(e) = savepoint(&mut tx, open).await {
                return all_fail(n, "savepoint", &e);
            }
            open_savepoint = true;
            let written = write_setting(&mut tx, clock, job, before, draft).await;
            if written.is_err() {
                if let Err(e) = savepoint(&mut tx, "ROLLBACK TO SAVEPOINT put").await {
                    return all_fail(n, "savepoint", &e);
                }
            }
            if let Ok(saved) = &written {
                current.insert(tenant.to_owned(), saved.clone());
            }
            results.push(written);
        }
        match tx.commit().await {
            Ok(()) => results,
            Err(e) => results
                .into_iter()
                .map(|r| r.and_then(|_| Err(db_error("commit setting", &e))))
                .collect(),
        }
    })
}

/// Savepoint commands, one or more (simple-query protocol; boxed, like [`commit_batch`]).
fn savepoint<'a>(
    conn: &'a mut PgConnection,
    commands: &'static str,
) -> BoxFuture<'a, sqlx::Result<()>> {
    // A plain `&str` runs as a simple query, which may hold several commands.
    Box::pin(async move { sqlx::Executor::execute(conn, commands).await.map(|_| ()) })
}

/// One PUT's write in the batch's transaction: the row and its audit record. An existing
/// row is updated in the same statement that writes the audit record (one round trip; the
/// row's id is known, so is the record's `after`); a new row is INSERTed first for its
/// id. Never an upsert: that would burn an identity value on every write and exhaust the
/// 32-bit id range long before tenants do.
///
/// Boxed, so the batch's future is `Send` for every lifetime (sqlx's executors otherwise
/// trip rustc's higher-ranked lifetime inference in a spawned task).
fn write_setting<'a>(
    conn: &'a mut PgConnection,
    clock: &'a Arc<dyn Clock>,
    job: &'a SettingJob,
    current: Option<&'a Setting>,
    draft: crate::domain::SettingDraft,
) -> BoxFuture<'a, Result<Setting>> {
    Box::pin(async move {
        let tenant = &job.tenant;
        let now = clock.rfc3339();
        let saved = |id: i64| Setting {
            id,
            tenant_id: tenant.clone(),
            encryption_type: draft.encryption_type,
            default_encryption_enabled: draft.default_encryption_enabled,
            cmk_key_id: draft.cmk_key_id.clone(),
            cmk_key_name: draft.cmk_key_name.clone(),
        };
        if let Some(current) = current {
            let saved = saved(current.id);
            let written = sqlx::query(
                "WITH row AS (
                     UPDATE encryption_settings SET encryption_type = $2,
                         default_encryption_enabled = $3, cmk_key_id = $4, cmk_key_name = $5,
                         updated_at = $6
                     WHERE tenant_id = $1 AND id = $7 RETURNING tenant_id)
                 INSERT INTO audit_log (at, tenant_id, actor, request_id, action, before, after)
                 SELECT $6, tenant_id, $8, $9, 'setting.update', $10, $11 FROM row",
            )
            .bind(tenant.as_str())
            .bind(draft.encryption_type.map(EncryptionType::as_str))
            .bind(draft.default_encryption_enabled)
            .bind(draft.cmk_key_id.as_deref())
            .bind(draft.cmk_key_name.as_deref())
            .bind(&now)
            .bind(i32::try_from(current.id).map_err(|e| db_error("write setting", e))?)
            .bind(&job.actor.actor)
            .bind(job.actor.request_id.as_deref())
            .bind(to_json(current).map(|v| v.to_string()))
            .bind(to_json(&saved).map(|v| v.to_string()))
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("write setting", e))?;
            // The row is read under the tenant's lock in this transaction: it is there.
            if written.rows_affected() != 1 {
                return Err(db_error(
                    "write setting",
                    format!("{} rows updated, expected 1", written.rows_affected()),
                ));
            }
            return Ok(saved);
        }
        let id: i32 = sqlx::query_scalar(
            "INSERT INTO encryption_settings (tenant_id, encryption_type,
                 default_encryption_enabled, cmk_key_id, cmk_key_name, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(tenant.as_str())
        .bind(draft.encryption_type.map(EncryptionType::as_str))
        .bind(draft.default_encryption_enabled)
        .bind(draft.cmk_key_id.as_deref())
        .bind(draft.cmk_key_name.as_deref())
        .bind(&now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error("write setting", e))?;
        let saved = saved(i64::from(id));
        insert_audit(
            conn,
            clock,
            tenant.as_str(),
            &job.actor,
            "setting.update",
            None,
            to_json(&saved),
        )
        .await?;
        Ok(saved)
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| db_error("ping", e))
    }

    /// Coalesced: the calls waiting at once are answered by one query (see
    /// [`read_settings`]). Linearizable like a query per call: a batch's query starts
    /// only after every call in it arrived, so it sees every write that had returned
    /// before any of them arrived (a write returns after its COMMIT, and each query reads
    /// a snapshot taken when it starts). Duplicate tenants in a batch are read once.
    async fn get_setting(&self, tenant: &TenantId) -> Result<Option<Setting>> {
        self.settings.call(tenant.clone()).await
    }

    /// Group commit: see [`commit_settings`]. Answered only after the COMMIT of the
    /// transaction that holds this write.
    async fn update_setting(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        plan: SettingPlan,
    ) -> Result<Setting> {
        self.writer
            .call(SettingJob {
                tenant: tenant.clone(),
                actor: actor.clone(),
                plan,
            })
            .await
    }

    /// Coalesced, as [`get_setting`](Self::get_setting).
    async fn get_grant(&self, tenant: &TenantId) -> Result<Option<Grant>> {
        self.grants.call(tenant.clone()).await
    }

    async fn put_grant(&self, tenant: &TenantId, actor: &Actor) -> Result<Grant> {
        let mut tx = self.begin().await?;
        // Serialise grant writers of this tenant, so `before` is what the upsert finds.
        Self::lock_tenant(&mut tx, "grant", tenant.as_str()).await?;
        // A repeated grant keeps the first one's who and when: `before` shows it.
        let before =
            sqlx::query("SELECT granted_by, granted_at FROM kms_grants WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("read grant", e))?
                .map(|r| {
                    let get = |e: sqlx::Error| db_error("decode grant", e);
                    Ok::<_, Error>(serde_json::json!({
                        "assumed": true,
                        "granted_by": r.try_get::<String, _>("granted_by").map_err(get)?,
                        "granted_at": r.try_get::<String, _>("granted_at").map_err(get)?,
                    }))
                })
                .transpose()?;
        let row = sqlx::query(
            "INSERT INTO kms_grants (tenant_id, granted_by, granted_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = excluded.tenant_id
             RETURNING granted_by, granted_at",
        )
        .bind(tenant.as_str())
        .bind(&actor.actor)
        .bind(self.clock.rfc3339())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error("write grant", e))?;
        let grant = Grant {
            tenant_id: tenant.clone(),
            granted_by: row
                .try_get("granted_by")
                .map_err(|e| db_error("decode grant", e))?,
            granted_at: row
                .try_get("granted_at")
                .map_err(|e| db_error("decode grant", e))?,
        };
        let after = serde_json::json!({
            "assumed": true, "granted_by": grant.granted_by, "granted_at": grant.granted_at
        });
        self.audit(
            &mut tx,
            tenant.as_str(),
            actor,
            "kms_grant.create",
            before,
            Some(after),
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("commit grant", e))?;
        Ok(grant)
    }

    /// Coalesced, as [`get_setting`](Self::get_setting).
    async fn get_permit_public(&self, tenant: &TenantId) -> Result<Option<PermitPublic>> {
        self.permits.call(tenant.clone()).await
    }

    async fn set_permit_public(
        &self,
        tenant: &TenantId,
        value: PermitPublic,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        Self::lock_tenant(&mut tx, "tenant", tenant.as_str()).await?;
        let before: Option<String> =
            sqlx::query_scalar("SELECT permit_public FROM tenants WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("read tenant", e))?;
        sqlx::query(
            "INSERT INTO tenants (tenant_id, permit_public, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET
                 permit_public = excluded.permit_public, updated_at = excluded.updated_at",
        )
        .bind(tenant.as_str())
        .bind(value.as_str())
        .bind(self.clock.rfc3339())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("write tenant", e))?;
        self.audit(
            &mut tx,
            tenant.as_str(),
            actor,
            "tenant.set_permit_public",
            before.map(|b| serde_json::json!({ "permit_public": b })),
            Some(serde_json::json!({ "permit_public": value.as_str() })),
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("commit tenant", e))
    }

    async fn add_project(&self, project: &Project, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO projects (project_id, tenant_id, name, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&project.project_id)
        .bind(&project.tenant_id)
        .bind(&project.name)
        .bind(self.clock.rfc3339())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                Error::AlreadyExists(format!("project {}", project.project_id))
            } else {
                db_error("write project", e)
            }
        })?;
        self.audit(
            &mut tx,
            &project.tenant_id,
            actor,
            "project.add",
            None,
            to_json(project),
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("commit project", e))
    }

    async fn get_project(&self, project_id: &ProjectId) -> Result<Option<Project>> {
        let row =
            sqlx::query("SELECT project_id, tenant_id, name FROM projects WHERE project_id = $1")
                .bind(project_id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("read project", e))?;
        row.map(|r| {
            let get = |e: sqlx::Error| db_error("decode project", e);
            Ok(Project {
                project_id: r.try_get("project_id").map_err(get)?,
                tenant_id: r.try_get("tenant_id").map_err(get)?,
                name: r.try_get("name").map_err(get)?,
            })
        })
        .transpose()
    }

    async fn add_project_member(
        &self,
        project_id: &ProjectId,
        tenant: &TenantId,
        user_id: &str,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM projects WHERE project_id = $1 FOR SHARE")
                .bind(project_id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("read project", e))?;
        let owner = owner.ok_or_else(|| Error::ProjectNotFound(project_id.as_str().to_owned()))?;
        let inserted = sqlx::query(
            "INSERT INTO project_members (project_id, tenant_id, user_id, added_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(project_id.as_str())
        .bind(tenant.as_str())
        .bind(user_id)
        .bind(self.clock.rfc3339())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("write project member", e))?;
        let after = serde_json::json!({
            "project_id": project_id.as_str(), "member_tenant_id": tenant.as_str(), "user_id": user_id
        });
        // Already a member: nothing was inserted, and `before` says so.
        let before = (inserted.rows_affected() == 0).then(|| after.clone());
        self.audit(
            &mut tx,
            &owner,
            actor,
            "project.add_member",
            before,
            Some(after),
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| db_error("commit project member", e))
    }

    async fn is_project_member(
        &self,
        project_id: &ProjectId,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM project_members
                            WHERE project_id = $1 AND tenant_id = $2 AND user_id = $3)",
        )
        .bind(project_id.as_str())
        .bind(tenant.as_str())
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("read project member", e))
    }

    async fn bulk_load(&self, tenants: &[BulkTenant], actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        let now = self.clock.rfc3339();
        let col = |f: fn(&BulkTenant) -> Option<String>| -> Vec<Option<String>> {
            tenants.iter().map(f).collect()
        };
        let tenant_ids = col(|t| Some(t.key.tenant_id.clone()));
        let key_ids = col(|t| Some(t.key.key_id.clone()));
        let aliases = col(|t| Some(t.key.alias.clone()));
        let origins = col(|t| Some(t.key.origin.clone()));
        let states: Vec<i32> = tenants
            .iter()
            .map(|t| i32::from(t.key.state.code()))
            .collect();
        let materials: Vec<Option<Vec<u8>>> =
            tenants.iter().map(|t| t.key.material.clone()).collect();
        let types = col(|t| t.setting.encryption_type.map(|e| e.as_str().to_owned()));
        let defaults: Vec<bool> = tenants
            .iter()
            .map(|t| t.setting.default_encryption_enabled)
            .collect();
        let cmk_ids = col(|t| t.setting.cmk_key_id.clone());
        let cmk_names = col(|t| t.setting.cmk_key_name.clone());
        sqlx::query(
            "INSERT INTO kms_keys (key_id, tenant_id, alias, origin, key_state, material, created_at)
             SELECT k, t, a, o, s, m, $7 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bytea[]) AS u(k, t, a, o, s, m)",
        )
        .bind(&key_ids)
        .bind(&tenant_ids)
        .bind(&aliases)
        .bind(&origins)
        .bind(&states)
        .bind(&materials)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                Error::AlreadyExists(
                    "some of these tenants already have a key, grant or setting: load into a database without them".into(),
                )
            } else {
                db_error("bulk load keys", e)
            }
        })?;
        sqlx::query(
            "INSERT INTO kms_grants (tenant_id, granted_by, granted_at)
             SELECT t, $2, $3 FROM UNNEST($1::text[]) AS u(t)",
        )
        .bind(&tenant_ids)
        .bind(&actor.actor)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("bulk load grants", e))?;
        sqlx::query(
            "INSERT INTO encryption_settings (tenant_id, encryption_type, default_encryption_enabled, cmk_key_id, cmk_key_name, updated_at)
             SELECT t, e, d, k, n, $6 FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[]) AS u(t, e, d, k, n)",
        )
        .bind(&tenant_ids)
        .bind(&types)
        .bind(&defaults)
        .bind(&cmk_ids)
        .bind(&cmk_names)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("bulk load settings", e))?;
        let summary = bulk_summary(tenants);
        self.audit(&mut tx, "*", actor, "bench.load", None, Some(summary))
            .await?;
        tx.commit()
            .await
            .map_err(|e| db_error("commit bulk load", e))
    }

    async fn record_audit(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        action: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("acquire connection", e))?;
        self.audit(&mut conn, tenant.as_str(), actor, action, before, after)
            .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        // `COLLATE "C"` compares bytewise whatever the database's collation (and can use
        // `audit_log_by_at`).
        let mut q = audit_query::<sqlx::Postgres>(filter, r#"at COLLATE "C""#);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("read audit log", e))?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn kms_insert_key(&self, key: &StoredKey, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO kms_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&key.key_id)
        .bind(&key.tenant_id)
        .bind(&key.alias)
        .bind(&key.origin)
        .bind(i32::from(key.state.code()))
        .bind(key.material.as_deref())
        .bind(key.deletion_at)
        .bind(&key.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                Error::AlreadyExists(format!("a key with alias {}", key.alias))
            } else {
                db_error("write key", e)
            }
        })?;
        self.audit(
            &mut tx,
            &key.tenant_id,
            actor,
            "kms.create_key",
            None,
            to_json(key),
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("commit key", e))
    }

    /// Coalesced, as [`get_setting`](Self::get_setting).
    async fn kms_get_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<StoredKey>> {
        self.keys.call((tenant.clone(), key_id.to_owned())).await
    }

    async fn kms_list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM kms_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("list keys", e))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn kms_update_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        action: &str,
        actor: &Actor,
        change: KeyChange<'_>,
    ) -> Result<StoredKey> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM kms_keys WHERE tenant_id = $1 AND key_id = $2 FOR UPDATE"
        ))
        .bind(tenant.as_str())
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("read key", e))?;
        let before =
            row.as_ref()
                .map(key_from_row)
                .transpose()?
                .ok_or_else(|| Error::KeyNotFound {
                    key_id: key_id.to_owned(),
                })?;
        let after = change(&before)?;
        sqlx::query(
            "UPDATE kms_keys SET key_state = $1, material = $2, deletion_at = $3
             WHERE tenant_id = $4 AND key_id = $5",
        )
        .bind(i32::from(after.state.code()))
        .bind(after.material.as_deref())
        .bind(after.deletion_at)
        .bind(tenant.as_str())
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("write key", e))?;
        self.audit(
            &mut tx,
            tenant.as_str(),
            actor,
            action,
            to_json(&before),
            to_json(&after),
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("commit key", e))?;
        Ok(after)
    }

    async fn credential_insert(&self, credential: &Credential, actor: &Actor) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&credential.access_key)
        .bind(&credential.tenant_id)
        .bind(&credential.user_id)
        .bind(role_str(credential.role))
        .bind(&credential.sealed_secret)
        .bind(&credential.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("write credential", e))?;
        self.audit(
            &mut tx,
            &credential.tenant_id,
            actor,
            "credential.create",
            None,
            to_json(credential),
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| db_error("commit credential", e))
    }

    async fn credential_get(&self, access_key: &str) -> Result<Option<Credential>> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE access_key = $1"
        ))
        .bind(access_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read credential", e))?;
        row.as_ref().map(credential_from_row).transpose()
    }

    async fn credential_list(&self, tenant: &TenantId) -> Result<Vec<Credential>> {
        let rows = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1
             ORDER BY created_at, access_key"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("list credentials", e))?;
        rows.iter().map(credential_from_row).collect()
    }

    async fn credential_delete(&self, access_key: &str, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "DELETE FROM credentials WHERE access_key = $1 RETURNING {CREDENTIAL_COLUMNS}"
        ))
        .bind(access_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("delete credential", e))?;
        let Some(deleted) = row.as_ref().map(credential_from_row).transpose()? else {
            return Ok(false);
        };
        self.audit(
            &mut tx,
            &deleted.tenant_id,
            actor,
            "credential.delete",
            to_json(&deleted),
            None,
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| db_error("commit credential", e))?;
        Ok(true)
    }
}
