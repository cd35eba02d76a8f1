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

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use super::coalesce::Coalescer;
use super::deadline::Deadline;
use super::sql;
use super::{all_fail, distinct, internal_detail, migrations, Context, JoinedKey};
use crate::clock::Clock;
use crate::domain::{
    Error, Grant, PermitPublic, RepoForRelease, RepoId, Result, Setting, TenantId,
};
use crate::home::Home;
use crate::store::{Credential, StoredKey};

use super::dialect::postgres as dialect;

#[path = "sql/mod.rs"]
#[allow(clippy::duplicate_mod)] // also `store::sqlite`'s: the queries are written once
mod sql;

use sql::settings::SettingJob;

type Backend = PostgresStore;

/// Forward-only migrations, applied in order on start (same versions as SQLite's).
pub const MIGRATIONS: &[(i64, &str, &str)] = migrations!("postgres");

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
    /// Every call's (`store::deadline`).
    deadline: Deadline,
    /// Where the pool's connections live (`crate::home`): every call is polled within it,
    /// so that a connection a request opens is not tied to that request's thread.
    home: Home,
    pool: PgPool,
    clock: Arc<dyn Clock>,
    settings: Coalescer<TenantId, Option<Setting>>,
    grants: Coalescer<TenantId, Option<Grant>>,
    keys: Coalescer<(TenantId, String), Option<StoredKey>>,
    permits: Coalescer<TenantId, Option<PermitPublic>>,
    writer: Coalescer<SettingJob, Setting>,
}

impl PostgresStore {
    /// Connect to a `postgres://` URL and migrate the database to the newest version.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::connect_at(url, clock, None).await
    }

    /// Like [`connect`](Self::connect), migrating only up to `target` (tests of upgrades).
    pub async fn connect_at(url: &str, clock: Arc<dyn Clock>, target: Option<i64>) -> Result<Self> {
        Self::open(url, clock, target, crate::config::DEFAULT_DB_TIMEOUT).await
    }

    /// Connect and migrate (up to `target`, or all); every call of the store's, its
    /// connection's acquisition included, ends within `db_timeout` (see `store::deadline`).
    pub async fn open(
        url: &str,
        clock: Arc<dyn Clock>,
        target: Option<i64>,
        db_timeout: Duration,
    ) -> Result<Self> {
        let deadline = Deadline::new("PostgreSQL", db_timeout);
        // The server's side of the deadline: a call cut here sends no cancel, so without
        // these its statement would run on (holding its locks) until it next writes to the
        // connection, and a transaction whose client vanished would hold its locks until
        // the connection closes.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("invalid database URL: {e}")))?
            .options([
                ("statement_timeout", db_timeout.as_millis().to_string()),
                (
                    "idle_in_transaction_session_timeout",
                    (db_timeout * 5).as_millis().to_string(),
                ),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(db_timeout)
            .after_release({
                let deadline = deadline.clone();
                move |conn, _| {
                    let deadline = deadline.clone();
                    Box::pin(async move { deadline.test_released(conn).await })
                }
            })
            .connect_with(options)
            .await
            .context("cannot connect to PostgreSQL")?;
        let batches = Some(deadline.clone());
        let store = PostgresStore {
            deadline,
            home: Home::here(),
            settings: Coalescer::start(
                "PostgreSQL setting read",
                READERS,
                MAX_READ_BATCH,
                batches.clone(),
                {
                    let pool = pool.clone();
                    Arc::new(move |tenants| Box::pin(read_settings(pool.clone(), tenants)))
                },
            ),
            grants: Coalescer::start(
                "PostgreSQL grant read",
                READERS,
                MAX_READ_BATCH,
                batches.clone(),
                {
                    let pool = pool.clone();
                    Arc::new(move |tenants| Box::pin(read_grants(pool.clone(), tenants)))
                },
            ),
            keys: Coalescer::start(
                "PostgreSQL key read",
                READERS,
                MAX_READ_BATCH,
                batches.clone(),
                {
                    let pool = pool.clone();
                    Arc::new(move |keys| Box::pin(read_keys(pool.clone(), keys)))
                },
            ),
            permits: Coalescer::start(
                "PostgreSQL tenant read",
                READERS,
                MAX_READ_BATCH,
                batches.clone(),
                {
                    let pool = pool.clone();
                    Arc::new(move |tenants| Box::pin(read_permits(pool.clone(), tenants)))
                },
            ),
            writer: Coalescer::start(
                "PostgreSQL setting write",
                WRITERS,
                MAX_WRITE_BATCH,
                batches,
                {
                    let (pool, clock) = (pool.clone(), clock.clone());
                    Arc::new(move |jobs: Vec<SettingJob>| {
                        let (pool, clock) = (pool.clone(), clock.clone());
                        Box::pin(
                            async move { sql::settings::commit_batch(&pool, &clock, &jobs).await },
                        )
                    })
                },
            ),
            pool,
            clock,
        };
        sql::migrate::run(&store.pool, &store.clock, MIGRATIONS, target).await?;
        Ok(store)
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64> {
        sql::migrate::version(&self.pool).await
    }

    /// Every call of the store's ends within `db_timeout`: see `store::deadline`.
    async fn bounded<T>(
        &self,
        call: &'static str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.deadline.bound(call, self.home.within(work)).await
    }

    // ---- the reads `store::sql` leaves to the backend: coalesced -------------------

    /// Coalesced: the calls waiting at once are answered by one query (see
    /// [`read_settings`]). Linearizable like a query per call: a batch's query starts
    /// only after every call in it arrived, so it sees every write that had returned
    /// before any of them arrived (a write returns after its COMMIT, and each query reads
    /// a snapshot taken when it starts). Duplicate tenants in a batch are read once.
    async fn read_setting(&self, tenant: &TenantId) -> Result<Option<Setting>> {
        self.settings.call(tenant.clone()).await
    }

    /// The key is read apart (coalesced too), not joined.
    async fn read_setting_with_key(
        &self,
        tenant: &TenantId,
    ) -> Result<(Option<Setting>, JoinedKey)> {
        Ok((self.read_setting(tenant).await?, JoinedKey::NotRead))
    }

    /// Coalesced, as [`read_setting`](Self::read_setting).
    async fn read_grant(&self, tenant: &TenantId) -> Result<Option<Grant>> {
        self.grants.call(tenant.clone()).await
    }

    /// Coalesced, as [`read_setting`](Self::read_setting).
    async fn read_permit_public(&self, tenant: &TenantId) -> Result<Option<PermitPublic>> {
        self.permits.call(tenant.clone()).await
    }

    /// Coalesced, as [`read_setting`](Self::read_setting).
    async fn read_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<StoredKey>> {
        self.keys.call((tenant.clone(), key_id.to_owned())).await
    }

    /// Nothing is cached: every replica reads what was written.
    fn tenant_written(&self, _tenant: &str) {}

    /// The old row version stays until VACUUM (README: "Crypto-shredding").
    async fn after_shred(&self) {}

    /// Nothing is cached.
    fn repository_written(&self, _tenant: &TenantId, _repo_id: RepoId) {}

    /// Nothing cached: every replica reads the grant (and a release reads it with the
    /// repository), so a grant or a withdrawal is seen by all at once.
    fn repositories_written(&self, _tenant: &TenantId) {}

    /// Not cached: a revoked key stops at once on every replica.
    async fn read_credential(&self, access_key: &str) -> Result<Option<Credential>> {
        sql::credentials::get(&self.pool, access_key).await
    }

    /// Every replica reads the row: a shred on one is seen by all at once.
    async fn read_repository_for_release(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
    ) -> Result<Option<RepoForRelease>> {
        sql::repositories::get_for_release(&self.pool, tenant, repo_id).await
    }

    fn row_cache_stats(&self) -> Vec<crate::domain::ports::CacheStats> {
        Vec::new()
    }
}

// ---- coalesced reads ---------------------------------------------------------------------

/// The rows of a batch query by the text column `column` (the rows' key).
fn rows_by<'r>(rows: &'r [PgRow], column: &str, what: &str) -> Result<HashMap<&'r str, &'r PgRow>> {
    rows.iter()
        .map(|row| Ok((row.try_get::<&str, _>(column).context(what)?, row)))
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
    let rows = match sqlx::query(sql!(format!(
        "SELECT {} FROM encryption_settings WHERE tenant_id = ANY($1)",
        sql::settings::COLUMNS
    )))
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
        |_, row| sql::settings::from_row(row).map(Some),
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
        |tenant, row| sql::grants::grant_from_row(tenant, row).map(Some),
    )
}

/// The keys of a batch of `kms_get_key` calls, in one query. `key_id` is the table's
/// primary key; a key of another tenant is not found, as with `tenant_id = $1 AND ...`.
async fn read_keys(pool: PgPool, keys: Vec<(TenantId, String)>) -> Vec<Result<Option<StoredKey>>> {
    let wanted = distinct(keys.iter().map(|(_, key_id)| key_id.as_str()));
    let rows = match sqlx::query(sql!(format!(
        "SELECT {} FROM kms_keys WHERE key_id = ANY($1)",
        sql::keys::COLUMNS
    )))
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
            let key = sql::keys::from_row(row)?;
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
        |_, row| sql::grants::permit_from_row(row),
    )
}
