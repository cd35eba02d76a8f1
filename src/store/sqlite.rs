//! SQLite: the embedded default. WAL journal, `synchronous=FULL` (an acknowledged write
//! survives power loss), writes in `BEGIN IMMEDIATE` transactions so a read-then-write
//! never fails to upgrade its lock.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::cache::RowCache;
use super::{
    all_fail, audit_query, bulk_summary, db_error, parse_role, role_str, to_json, unique_violation,
    AuditFilter, BulkTenant, Credential, JoinedKey, KeyChange, SettingPlan, Store, StoredKey,
};
use crate::clock::Clock;
use crate::domain::{
    Actor, AuditRecord, EncryptionType, Error, Grant, KeyState, PermitPublic, Project, ProjectId,
    Result, Setting, TenantId,
};

/// Forward-only migrations, applied in order on start.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "credentials",
        include_str!("../../migrations/sqlite/0002_credentials.sql"),
    ),
    (
        3,
        "audit_by_time",
        include_str!("../../migrations/sqlite/0003_audit_by_time.sql"),
    ),
];

/// Most setting writes committed in one transaction.
const MAX_BATCH: usize = 64;
/// Rows each read cache (settings, grants) keeps by default.
pub const DEFAULT_ROW_CACHE_CAPACITY: usize = 50_000;

pub struct SqliteStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    /// The setting writer: one connection that commits concurrent PUTs together.
    writer: mpsc::Sender<SettingJob>,
    /// Settings and grants are written by this process only (one `serve` per SQLite
    /// database), so they can be cached exactly; see `store::cache`.
    settings: Arc<RowCache<Option<Setting>>>,
    grants: RowCache<Option<Grant>>,
}

/// A PUT's write, handed to the writer task.
struct SettingJob {
    tenant: TenantId,
    actor: Actor,
    plan: SettingPlan,
    reply: oneshot::Sender<Result<Setting>>,
}

impl SqliteStore {
    /// Open (creating if missing) the database at a `sqlite://PATH` URL and migrate it.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::connect_at(url, clock, None).await
    }

    /// Like [`connect`](Self::connect), migrating only up to `target` (tests of upgrades).
    pub async fn connect_at(url: &str, clock: Arc<dyn Clock>, target: Option<i64>) -> Result<Self> {
        Self::open(url, clock, target, DEFAULT_ROW_CACHE_CAPACITY).await
    }

    /// Open and migrate (up to `target`, or all), caching up to `row_cache_capacity`
    /// settings and as many grants (0: no cache).
    pub async fn open(
        url: &str,
        clock: Arc<dyn Clock>,
        target: Option<i64>,
        row_cache_capacity: usize,
    ) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("invalid database URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|e| db_error("cannot open the SQLite database", e))?;
        // The writer never checkpoints itself (a checkpoint in the commit path stalls
        // every PUT queued behind it); a background task checkpoints passively instead.
        let writer_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(options.pragma("wal_autocheckpoint", "0"));
        let (writer, jobs) = mpsc::channel(1024);
        let settings = Arc::new(RowCache::new(row_cache_capacity));
        let store = SqliteStore {
            pool,
            clock: clock.clone(),
            writer,
            settings: settings.clone(),
            grants: RowCache::new(row_cache_capacity),
        };
        store.migrate(target).await?;
        tokio::spawn(run_checkpoints(
            store.pool.clone(),
            store.writer.downgrade(),
        ));
        tokio::spawn(run_writer(writer_pool, clock, settings, jobs));
        Ok(store)
    }

    async fn migrate(&self, target: Option<i64>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("migrations table", e))?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
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
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
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
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("read schema version", e))
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| db_error("begin write transaction", e))
    }

    async fn audit(
        &self,
        conn: &mut SqliteConnection,
        tenant: &str,
        actor: &Actor,
        action: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Result<()> {
        insert_audit(conn, &self.clock, tenant, actor, action, before, after).await
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn insert_audit<'a>(
    conn: &'a mut SqliteConnection,
    clock: &'a Arc<dyn Clock>,
    tenant: &'a str,
    actor: &'a Actor,
    action: &'a str,
    before: Option<Value>,
    after: Option<Value>,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO audit_log (at, tenant_id, actor, request_id, action, before, after)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
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
    })
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoint the WAL in the background (PASSIVE: never waits for, nor blocks, readers or
/// the writer), until the store is dropped.
async fn run_checkpoints(pool: SqlitePool, alive: mpsc::WeakSender<SettingJob>) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if alive.upgrade().is_none() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
}

/// The setting writer: takes the PUTs waiting (up to `MAX_BATCH`), runs each in its own
/// savepoint of one `BEGIN IMMEDIATE` transaction, commits once (one fsync for all), and
/// only then answers each. A PUT that fails rolls back its savepoint alone.
async fn run_writer(
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    settings: Arc<RowCache<Option<Setting>>>,
    mut jobs: mpsc::Receiver<SettingJob>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let results = commit_batch(&pool, &clock, &batch).await;
        for (job, result) in batch.drain(..).zip(results) {
            // Whatever the outcome: a refusal (a conflict, say) may come from a cached row
            // that is out of date, and the caller's retry must read the database.
            settings.invalidate(job.tenant.as_str());
            let _ = job.reply.send(result); // the caller may have gone: the write stands
        }
    }
}

/// Boxed, so the writer task's future is `Send` for every lifetime (sqlx's executors
/// otherwise trip rustc's higher-ranked lifetime inference in a spawned task).
fn commit_batch<'a>(
    pool: &'a SqlitePool,
    clock: &'a Arc<dyn Clock>,
    batch: &'a [SettingJob],
) -> BoxFuture<'a, Vec<Result<Setting>>> {
    Box::pin(async move {
        let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(e) => return all_fail(batch.len(), "begin write transaction", &e),
        };
        let mut results = Vec::with_capacity(batch.len());
        for job in batch {
            if let Err(e) = sqlx::query("SAVEPOINT put").execute(&mut *tx).await {
                return all_fail(batch.len(), "savepoint", &e);
            }
            let result = write_setting(&mut tx, clock, job).await;
            if result.is_err() {
                if let Err(e) = sqlx::query("ROLLBACK TO put").execute(&mut *tx).await {
                    return all_fail(batch.len(), "savepoint", &e);
                }
            }
            if let Err(e) = sqlx::query("RELEASE put").execute(&mut *tx).await {
                return all_fail(batch.len(), "savepoint", &e);
            }
            results.push(result);
        }
        match tx.commit().await {
            Ok(()) => results,
            Err(e) => results
                .into_iter()
                .map(|r| r.and(Err(db_error("commit setting", &e))))
                .collect(),
        }
    })
}

/// A bulk load's failure: a tenant already there is the caller's mistake, said plainly.
fn bulk_error(e: sqlx::Error, what: &str, tenant: &str) -> Error {
    if unique_violation(&e) {
        Error::AlreadyExists(format!(
            "tenant {tenant} already has a key, grant or setting: load into a database without these tenants"
        ))
    } else {
        db_error(what, e)
    }
}

/// Insert a local-KMS key row.
async fn insert_key(conn: &mut SqliteConnection, key: &StoredKey) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO kms_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&key.key_id)
    .bind(&key.tenant_id)
    .bind(&key.alias)
    .bind(&key.origin)
    .bind(i64::from(key.state.code()))
    .bind(key.material.as_deref())
    .bind(key.deletion_at)
    .bind(&key.created_at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// One PUT inside the writer's transaction: read, decide, write, audit.
fn write_setting<'a>(
    conn: &'a mut SqliteConnection,
    clock: &'a Arc<dyn Clock>,
    job: &'a SettingJob,
) -> BoxFuture<'a, Result<Setting>> {
    Box::pin(async move {
        let tenant = &job.tenant;
        let current = sqlx::query(&format!(
            "SELECT {SETTING_COLUMNS} FROM encryption_settings WHERE tenant_id = ?"
        ))
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("read setting", e))?
        .as_ref()
        .map(setting_from_row)
        .transpose()?;
        let granted: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM kms_grants WHERE tenant_id = ?)")
                .bind(tenant.as_str())
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| db_error("read grant", e))?;
        // A refusal returns here, before any write; its savepoint is rolled back.
        let draft = (job.plan)(current.as_ref(), granted)?;
        let now = clock.rfc3339();
        // UPDATE an existing row, INSERT a new one: an upsert would consume an id on every
        // write and exhaust the 32-bit range the API promises long before tenants do.
        let id: i64 = if current.is_some() {
            sqlx::query_scalar(
                "UPDATE encryption_settings SET encryption_type = ?2,
                 default_encryption_enabled = ?3, cmk_key_id = ?4, cmk_key_name = ?5,
                 updated_at = ?6
             WHERE tenant_id = ?1 RETURNING id",
            )
        } else {
            sqlx::query_scalar(
                "INSERT INTO encryption_settings (tenant_id, encryption_type,
                 default_encryption_enabled, cmk_key_id, cmk_key_name, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            )
        }
        .bind(tenant.as_str())
        .bind(draft.encryption_type.map(EncryptionType::as_str))
        .bind(draft.default_encryption_enabled)
        .bind(draft.cmk_key_id.as_deref())
        .bind(draft.cmk_key_name.as_deref())
        .bind(&now)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error("write setting", e))?;
        let saved = Setting {
            id,
            tenant_id: tenant.clone(),
            encryption_type: draft.encryption_type,
            default_encryption_enabled: draft.default_encryption_enabled,
            cmk_key_id: draft.cmk_key_id,
            cmk_key_name: draft.cmk_key_name,
        };
        let before = current.as_ref().and_then(to_json);
        insert_audit(
            conn,
            clock,
            tenant.as_str(),
            &job.actor,
            "setting.update",
            before,
            to_json(&saved),
        )
        .await?;
        Ok(saved)
    })
}

fn setting_from_row(row: &SqliteRow) -> Result<Setting> {
    let get = |e: sqlx::Error| db_error("decode setting", e);
    let tenant: String = row.try_get("tenant_id").map_err(get)?;
    let encryption_type: Option<String> = row.try_get("encryption_type").map_err(get)?;
    Ok(Setting {
        id: row.try_get("id").map_err(get)?,
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

fn key_from_row(row: &SqliteRow) -> Result<StoredKey> {
    let get = |e: sqlx::Error| db_error("decode key", e);
    let code: i64 = row.try_get("key_state").map_err(get)?;
    Ok(StoredKey {
        key_id: row.try_get("key_id").map_err(get)?,
        tenant_id: row.try_get("tenant_id").map_err(get)?,
        alias: row.try_get("alias").map_err(get)?,
        origin: row.try_get("origin").map_err(get)?,
        state: KeyState::from_code(code)
            .ok_or_else(|| Error::Store(format!("invalid key_state {code} in database")))?,
        material: row.try_get("material").map_err(get)?,
        deletion_at: row.try_get("deletion_at").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditRecord> {
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

fn credential_from_row(row: &SqliteRow) -> Result<Credential> {
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

#[async_trait]
impl Store for SqliteStore {
    fn cache_stats(&self) -> Vec<crate::metrics::CacheStats> {
        [
            ("settings", self.settings.hits_and_misses()),
            ("grants", self.grants.hits_and_misses()),
        ]
        .into_iter()
        .map(|(name, (hits, misses))| crate::metrics::CacheStats { name, hits, misses })
        .collect()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| db_error("ping", e))
    }

    async fn get_setting(&self, tenant: &TenantId) -> Result<Option<Setting>> {
        let ticket = match self.settings.get(tenant.as_str()) {
            Ok(cached) => return Ok(cached),
            Err(ticket) => ticket,
        };
        let row = sqlx::query(&format!(
            "SELECT {SETTING_COLUMNS} FROM encryption_settings WHERE tenant_id = ?"
        ))
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read setting", e))?;
        let setting = row.as_ref().map(setting_from_row).transpose()?;
        self.settings.fill(tenant.as_str(), ticket, setting.clone());
        Ok(setting)
    }

    async fn get_setting_with_key(
        &self,
        tenant: &TenantId,
    ) -> Result<(Option<Setting>, JoinedKey)> {
        let ticket = match self.settings.get(tenant.as_str()) {
            Ok(cached) => return Ok((cached, JoinedKey::NotRead)),
            Err(ticket) => ticket,
        };
        // The key's tenant is the setting's (the join says so): one tenant_id column.
        let row = sqlx::query(
            "SELECT s.id, s.tenant_id, s.encryption_type, s.default_encryption_enabled,
                    s.cmk_key_id, s.cmk_key_name, k.key_id, k.alias, k.origin, k.key_state,
                    k.material, k.deletion_at, k.created_at
             FROM encryption_settings s
             LEFT JOIN kms_keys k ON k.key_id = s.cmk_key_id AND k.tenant_id = s.tenant_id
             WHERE s.tenant_id = ?",
        )
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read setting", e))?;
        let Some(row) = row else {
            self.settings.fill(tenant.as_str(), ticket, None);
            return Ok((None, JoinedKey::Read(None)));
        };
        let setting = setting_from_row(&row)?;
        let key_id: Option<String> = row
            .try_get("key_id")
            .map_err(|e| db_error("decode key", e))?;
        let key = key_id.map(|_| key_from_row(&row)).transpose()?;
        self.settings
            .fill(tenant.as_str(), ticket, Some(setting.clone()));
        Ok((Some(setting), JoinedKey::Read(key)))
    }

    async fn update_setting(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        plan: SettingPlan,
    ) -> Result<Setting> {
        let (reply, answer) = oneshot::channel();
        let job = SettingJob {
            tenant: tenant.clone(),
            actor: actor.clone(),
            plan,
            reply,
        };
        let stopped = || Error::Store("the SQLite writer has stopped".into());
        self.writer.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn get_grant(&self, tenant: &TenantId) -> Result<Option<Grant>> {
        let ticket = match self.grants.get(tenant.as_str()) {
            Ok(cached) => return Ok(cached),
            Err(ticket) => ticket,
        };
        let row = sqlx::query("SELECT granted_by, granted_at FROM kms_grants WHERE tenant_id = ?")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("read grant", e))?;
        let grant = row
            .map(|r| {
                Ok(Grant {
                    tenant_id: tenant.clone(),
                    granted_by: r
                        .try_get("granted_by")
                        .map_err(|e| db_error("decode grant", e))?,
                    granted_at: r
                        .try_get("granted_at")
                        .map_err(|e| db_error("decode grant", e))?,
                })
            })
            .transpose()?;
        self.grants.fill(tenant.as_str(), ticket, grant.clone());
        Ok(grant)
    }

    async fn put_grant(&self, tenant: &TenantId, actor: &Actor) -> Result<Grant> {
        let mut tx = self.begin_write().await?;
        // A repeated grant keeps the first one's who and when: `before` shows it.
        let before =
            sqlx::query("SELECT granted_by, granted_at FROM kms_grants WHERE tenant_id = ?")
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
        let now = self.clock.rfc3339();
        let row = sqlx::query(
            "INSERT INTO kms_grants (tenant_id, granted_by, granted_at) VALUES (?, ?, ?)
             ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = excluded.tenant_id
             RETURNING granted_by, granted_at",
        )
        .bind(tenant.as_str())
        .bind(&actor.actor)
        .bind(&now)
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
        self.grants.invalidate(tenant.as_str());
        Ok(grant)
    }

    async fn get_permit_public(&self, tenant: &TenantId) -> Result<Option<PermitPublic>> {
        let value: Option<String> =
            sqlx::query_scalar("SELECT permit_public FROM tenants WHERE tenant_id = ?")
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("read tenant", e))?;
        Ok(value.as_deref().and_then(PermitPublic::parse))
    }

    async fn set_permit_public(
        &self,
        tenant: &TenantId,
        value: PermitPublic,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let before: Option<String> =
            sqlx::query_scalar("SELECT permit_public FROM tenants WHERE tenant_id = ?")
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("read tenant", e))?;
        sqlx::query(
            "INSERT INTO tenants (tenant_id, permit_public, updated_at) VALUES (?, ?, ?)
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
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO projects (project_id, tenant_id, name, created_at) VALUES (?, ?, ?, ?)",
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
            sqlx::query("SELECT project_id, tenant_id, name FROM projects WHERE project_id = ?")
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
        let mut tx = self.begin_write().await?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT tenant_id FROM projects WHERE project_id = ?")
                .bind(project_id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("read project", e))?;
        let owner = owner.ok_or_else(|| Error::ProjectNotFound(project_id.as_str().to_owned()))?;
        let inserted = sqlx::query(
            "INSERT INTO project_members (project_id, tenant_id, user_id, added_at)
             VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
                            WHERE project_id = ? AND tenant_id = ? AND user_id = ?)",
        )
        .bind(project_id.as_str())
        .bind(tenant.as_str())
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("read project member", e))
    }

    async fn bulk_load(&self, tenants: &[BulkTenant], actor: &Actor) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = self.clock.rfc3339();
        for t in tenants {
            let k = &t.key;
            insert_key(&mut tx, k)
                .await
                .map_err(|e| bulk_error(e, "bulk load key", &k.tenant_id))?;
            sqlx::query(
                "INSERT INTO kms_grants (tenant_id, granted_by, granted_at) VALUES (?, ?, ?)",
            )
            .bind(&k.tenant_id)
            .bind(&actor.actor)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(|e| bulk_error(e, "bulk load grant", &k.tenant_id))?;
            sqlx::query(
                "INSERT INTO encryption_settings (tenant_id, encryption_type,
                     default_encryption_enabled, cmk_key_id, cmk_key_name, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.tenant_id)
            .bind(t.setting.encryption_type.map(EncryptionType::as_str))
            .bind(t.setting.default_encryption_enabled)
            .bind(t.setting.cmk_key_id.as_deref())
            .bind(t.setting.cmk_key_name.as_deref())
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(|e| bulk_error(e, "bulk load setting", &k.tenant_id))?;
        }
        let summary = bulk_summary(tenants);
        self.audit(&mut tx, "*", actor, "bench.load", None, Some(summary))
            .await?;
        tx.commit()
            .await
            .map_err(|e| db_error("commit bulk load", e))?;
        for t in tenants {
            self.settings.invalidate(&t.key.tenant_id);
            self.grants.invalidate(&t.key.tenant_id);
        }
        Ok(())
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
        // SQLite compares text bytewise.
        let mut q = audit_query::<sqlx::Sqlite>(filter, "at");
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("read audit log", e))?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn kms_insert_key(&self, key: &StoredKey, actor: &Actor) -> Result<()> {
        let mut tx = self.begin_write().await?;
        insert_key(&mut tx, key).await.map_err(|e| {
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

    async fn kms_get_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM kms_keys WHERE tenant_id = ? AND key_id = ?"
        ))
        .bind(tenant.as_str())
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read key", e))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn kms_list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM kms_keys WHERE tenant_id = ? ORDER BY created_at, key_id"
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
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM kms_keys WHERE tenant_id = ? AND key_id = ?"
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
            "UPDATE kms_keys SET key_state = ?, material = ?, deletion_at = ?
             WHERE tenant_id = ? AND key_id = ?",
        )
        .bind(i64::from(after.state.code()))
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
        let mut tx = self.begin_write().await?;
        sqlx::query(&format!(
            "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
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
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE access_key = ?"
        ))
        .bind(access_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("read credential", e))?;
        row.as_ref().map(credential_from_row).transpose()
    }

    async fn credential_list(&self, tenant: &TenantId) -> Result<Vec<Credential>> {
        let rows = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = ?
             ORDER BY created_at, access_key"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("list credentials", e))?;
        rows.iter().map(credential_from_row).collect()
    }

    async fn credential_delete(&self, access_key: &str, actor: &Actor) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "DELETE FROM credentials WHERE access_key = ? RETURNING {CREDENTIAL_COLUMNS}"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_keeps_the_database_error_for_each_put() {
        let failed: Vec<Result<Setting>> =
            all_fail(2, "begin write transaction", &sqlx::Error::PoolTimedOut);
        assert_eq!(failed.len(), 2);
        for result in failed {
            let e = result.unwrap_err();
            assert_eq!(e.to_string(), "internal error");
            let detail = e.internal_detail().unwrap();
            assert!(detail.starts_with("begin write transaction: "), "{detail}");
            assert!(
                detail.contains(&sqlx::Error::PoolTimedOut.to_string()),
                "{detail}"
            );
        }
    }
}
