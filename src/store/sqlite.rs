//! SQLite: the embedded default. WAL journal, `synchronous=FULL` (an acknowledged write
//! survives power loss), writes in `BEGIN IMMEDIATE` transactions so a read-then-write
//! never fails to upgrade its lock. The queries are `store::sql`'s; what is SQLite's own
//! is here: the pools and pragmas, the background checkpoints, the row caches of settings,
//! grants and repositories (this process is the database's only server), and the dialect.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row as _;

use super::cache::{RowCache, Ticket};
use super::coalesce::Coalescer;
use super::sql;
use super::{migrations, Context, JoinedKey};
use crate::clock::Clock;
use crate::domain::ports::KeyRecord;
use crate::domain::{
    Error, Grant, PermitPublic, RepoForRelease, RepoId, Result, Setting, TenantId,
};
use crate::home::Home;
use crate::store::{Credential, StoredKey};

use super::dialect::sqlite as dialect;

#[path = "sql/mod.rs"]
#[allow(clippy::duplicate_mod)] // also `store::postgres`'s: the queries are written once
mod sql;

use sql::settings::SettingJob;

type Backend = SqliteStore;

/// Forward-only migrations, applied in order on start.
pub const MIGRATIONS: &[(i64, &str, &str)] = migrations!("sqlite");

/// Most setting writes committed in one transaction.
const MAX_BATCH: usize = 64;
/// Rows each read cache (settings, grants) keeps by default.
pub const DEFAULT_ROW_CACHE_CAPACITY: usize = 50_000;

pub struct SqliteStore {
    pool: SqlitePool,
    /// Where the reads that miss the row caches run (`crate::home`, [`Self::at_home`]).
    home: Home,
    clock: Arc<dyn Clock>,
    /// The setting writer: one connection that commits concurrent PUTs together.
    writer: Coalescer<SettingJob, Setting>,
    /// Settings are written by this process only (one `serve` per SQLite database), so
    /// they can be cached exactly; see `store::cache`.
    settings: Arc<RowCache<Option<Setting>>>,
    /// Grants, with when they were read: exact for this process's writes, at most
    /// [`OUTSIDE_WRITE_BOUND`] old for another process's (`tenant revoke-kms-grant`).
    grants: RowCache<(Instant, Option<Grant>)>,
    /// Repositories as a release reads them (with whether their tenant's grant stands),
    /// keyed `tenant NUL repo_id`, with when they were read. Exact for this process's
    /// writes to the repository (registration and shred invalidate), and at most
    /// [`OUTSIDE_WRITE_BOUND`] old for anything else: another process's writes
    /// (`repocrypt repo shred` while the server runs) and the grant.
    repositories: RowCache<(Instant, Option<RepoForRelease>)>,
    /// Held while the store lives; the checkpoint task stops when it is gone.
    alive: Arc<()>,
}

impl SqliteStore {
    /// Open (creating if missing) the database at a `sqlite://PATH` URL and migrate it.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::connect_at(url, clock, None).await
    }

    /// Like [`connect`](Self::connect), migrating only up to `target` (tests of upgrades).
    pub async fn connect_at(url: &str, clock: Arc<dyn Clock>, target: Option<i64>) -> Result<Self> {
        Self::open(
            url,
            clock,
            target,
            DEFAULT_ROW_CACHE_CAPACITY,
            crate::config::DEFAULT_DB_TIMEOUT,
        )
        .await
    }

    /// Open and migrate (up to `target`, or all), caching up to `row_cache_capacity`
    /// settings and as many grants (0: no cache). A call waits at most `db_timeout` for
    /// a lock; it is not cut once it runs (see `bounded`).
    pub async fn open(
        url: &str,
        clock: Arc<dyn Clock>,
        target: Option<i64>,
        row_cache_capacity: usize,
        db_timeout: Duration,
    ) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("invalid database URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(db_timeout)
            .foreign_keys(true)
            // A shredded data key's bytes are zeroed in the page, not left as free space.
            .pragma("secure_delete", "on");
        if !in_memory_or_read_only(url) {
            private_files(options.get_filename())?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(db_timeout)
            .connect_with(options.clone())
            .await
            .context("cannot open the SQLite database")?;
        // The writer never checkpoints itself (a checkpoint in the commit path stalls
        // every PUT queued behind it); a background task checkpoints passively instead.
        let writer_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(db_timeout)
            .connect_lazy_with(options.pragma("wal_autocheckpoint", "0"));
        let settings = Arc::new(RowCache::new(row_cache_capacity));
        let writer = Coalescer::start("SQLite setting write", 1, MAX_BATCH, None, {
            let (clock, settings) = (clock.clone(), settings.clone());
            Arc::new(move |jobs: Vec<SettingJob>| {
                let (pool, clock, settings) =
                    (writer_pool.clone(), clock.clone(), settings.clone());
                Box::pin(async move {
                    let results = sql::settings::commit_batch(&pool, &clock, &jobs).await;
                    // Whatever the outcome: a refusal (a conflict, say) may come from a
                    // cached row that is out of date, and the caller's retry must read
                    // the database. Done before any caller is answered.
                    for job in &jobs {
                        settings.invalidate(job.tenant.as_str());
                    }
                    results
                })
            })
        });
        let store = SqliteStore {
            pool,
            home: Home::here(),
            clock,
            writer,
            settings,
            grants: RowCache::new(row_cache_capacity),
            repositories: RowCache::new(row_cache_capacity),
            alive: Arc::new(()),
        };
        sql::migrate::run(&store.pool, &store.clock, MIGRATIONS, target).await?;
        tokio::spawn(run_checkpoints(
            store.pool.clone(),
            Arc::downgrade(&store.alive),
        ));
        Ok(store)
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64> {
        sql::migrate::version(&self.pool).await
    }

    /// SQLite calls are not cut once they run: the database is a local file with no
    /// network to stall, a lock is waited for at most `db_timeout` (`busy_timeout`), and a
    /// cut write would still be made by its connection's thread after its row-cache
    /// invalidation had been skipped.
    #[inline]
    async fn bounded<T>(
        &self,
        _call: &'static str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        work.await
    }

    /// A read of the pool (given to `read`) run on the home runtime as a task of its own
    /// ([`Home::run`]): its connection goes back to the pool (a ping to the connection's
    /// thread, then the idle queue) as soon as the query is done. Awaited on a connection
    /// thread, the connection would come back only once that thread was next scheduled,
    /// twice over (for the query's answer, then for the task sqlx spawns to give it back),
    /// and the pool's four connections would be held by the threads' queues rather than by
    /// the queries (docs/performance.md, "Cold reads at home"). The read is cut if the
    /// asker stops waiting.
    async fn at_home<T, F>(&self, read: impl FnOnce(SqlitePool) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        match self.home.run(read(self.pool.clone())).await {
            Some(done) => done,
            None => Err(Error::Store(
                "the runtime the store was opened on has stopped".to_owned(),
            )),
        }
    }

    /// The row `query` selects for `tenant` (its one parameter, `$1`), read at home.
    async fn tenant_row(
        &self,
        query: &'static str,
        what: &'static str,
        tenant: &TenantId,
    ) -> Result<Option<SqliteRow>> {
        let id = tenant.as_str().to_owned();
        self.at_home(move |pool| async move {
            sqlx::query(query)
                .bind(id)
                .fetch_optional(&pool)
                .await
                .context(what)
        })
        .await
    }

    // ---- the reads `store::sql` leaves to the backend: through the row cache ---------

    async fn read_setting(&self, tenant: &TenantId) -> Result<Option<Setting>> {
        let ticket = match self.settings.get(tenant.as_str()) {
            Ok(cached) => return Ok(cached),
            Err(ticket) => ticket,
        };
        let query = sql!(format!(
            "SELECT {} FROM encryption_settings WHERE tenant_id = $1",
            sql::settings::COLUMNS
        ));
        let row = self.tenant_row(query, "read setting", tenant).await?;
        let setting = row.as_ref().map(sql::settings::from_row).transpose()?;
        self.settings.fill(tenant.as_str(), ticket, setting.clone());
        Ok(setting)
    }

    /// The setting and its local-KMS key's row in one query (when not cached).
    async fn read_setting_with_key(
        &self,
        tenant: &TenantId,
    ) -> Result<(Option<Setting>, JoinedKey)> {
        let ticket = match self.settings.get(tenant.as_str()) {
            Ok(cached) => return Ok((cached, JoinedKey::NotRead)),
            Err(ticket) => ticket,
        };
        // The key's tenant is the setting's (the join says so): one tenant_id column.
        let query = "SELECT s.id, s.tenant_id, s.encryption_type, s.default_encryption_enabled,
                    s.cmk_key_id, s.cmk_key_name, k.key_id, k.alias, k.key_state,
                    k.deletion_at
             FROM encryption_settings s
             LEFT JOIN kms_keys k ON k.key_id = s.cmk_key_id AND k.tenant_id = s.tenant_id
             WHERE s.tenant_id = $1";
        let row = self
            .tenant_row(query, "read setting with key", tenant)
            .await?;
        let Some(row) = row else {
            self.settings.fill(tenant.as_str(), ticket, None);
            return Ok((None, JoinedKey::Read(None)));
        };
        let setting = sql::settings::from_row(&row)?;
        // Only what the domain's KeyRecord holds: never the key's material.
        let key_id: Option<String> = row.try_get("key_id").context("decode key")?;
        let key = key_id
            .map(|key_id| {
                Ok::<_, Error>(KeyRecord {
                    key_id,
                    alias: row.try_get("alias").context("decode key")?,
                    state: sql::keys::state(&row)?,
                    deletion_at: row.try_get("deletion_at").context("decode key")?,
                })
            })
            .transpose()?;
        self.settings
            .fill(tenant.as_str(), ticket, Some(setting.clone()));
        Ok((Some(setting), JoinedKey::Read(key)))
    }

    /// The grant from the cache (within [`OUTSIDE_WRITE_BOUND`]), else from the database.
    async fn read_grant(&self, tenant: &TenantId) -> Result<Option<Grant>> {
        let ticket = match bounded_get(&self.grants, tenant.as_str(), self.clock.monotonic()) {
            Err(cached) => return Ok(cached),
            Ok(ticket) => ticket,
        };
        let read_at = self.clock.monotonic();
        let query = "SELECT granted_by, granted_at FROM kms_grants WHERE tenant_id = $1";
        let row = self.tenant_row(query, "read grant", tenant).await?;
        let grant = row
            .map(|r| sql::grants::grant_from_row(tenant, &r))
            .transpose()?;
        if let Some(ticket) = ticket {
            self.grants
                .fill(tenant.as_str(), ticket, (read_at, grant.clone()));
        }
        Ok(grant)
    }

    async fn read_permit_public(&self, tenant: &TenantId) -> Result<Option<PermitPublic>> {
        let query = "SELECT permit_public FROM tenants WHERE tenant_id = $1";
        let row = self.tenant_row(query, "read tenant", tenant).await?;
        Ok(row
            .as_ref()
            .map(sql::grants::permit_from_row)
            .transpose()?
            .flatten())
    }

    async fn read_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<StoredKey>> {
        let (id, key_id) = (tenant.as_str().to_owned(), key_id.to_owned());
        let row = self
            .at_home(|pool| async move {
                sqlx::query(sql!(format!(
                    "SELECT {} FROM kms_keys WHERE tenant_id = $1 AND key_id = $2",
                    sql::keys::COLUMNS
                )))
                .bind(id)
                .bind(key_id)
                .fetch_optional(&pool)
                .await
                .context("read key")
            })
            .await?;
        row.as_ref().map(sql::keys::from_row).transpose()
    }

    /// An access key's credential, for every signed request: not cached (a revoked key
    /// must stop at once), so read at home like a row-cache miss.
    async fn read_credential(&self, access_key: &str) -> Result<Option<Credential>> {
        let access_key = access_key.to_owned();
        self.at_home(|pool| async move { sql::credentials::get(&pool, &access_key).await })
            .await
    }

    /// A write outside the setting writer (a grant, a bulk load) committed.
    fn tenant_written(&self, tenant: &str) {
        self.settings.invalidate(tenant);
        self.grants.invalidate(tenant);
    }

    fn repository_written(&self, tenant: &TenantId, repo_id: RepoId) {
        self.repositories
            .invalidate(&repository_key(tenant, repo_id));
    }

    /// Some of the tenant's repositories, or its grant (which they are cached with), were
    /// written: by this process (a grant given or withdrawn, or the write failed and may
    /// have happened), or by another (an event says so). Forget every cached repository of
    /// the tenant.
    fn repositories_written(&self, tenant: &TenantId) {
        self.repositories
            .invalidate_prefix(&repository_key_prefix(tenant));
    }

    /// The repository and its grant from the cache (within [`OUTSIDE_WRITE_BOUND`]), else
    /// from the database in one query: a release of a warm repository costs no query.
    async fn read_repository_for_release(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
    ) -> Result<Option<RepoForRelease>> {
        let key = repository_key(tenant, repo_id);
        match bounded_get(&self.repositories, &key, self.clock.monotonic()) {
            Err(cached) => Ok(cached),
            Ok(ticket) => {
                let read_at = self.clock.monotonic();
                let tenant = tenant.clone();
                let found = self
                    .at_home(|pool| async move {
                        sql::repositories::get_for_release(&pool, &tenant, repo_id).await
                    })
                    .await?;
                if let Some(ticket) = ticket {
                    self.repositories
                        .fill(&key, ticket, (read_at, found.clone()));
                }
                Ok(found)
            }
        }
    }

    /// A data key was shredded: `secure_delete` zeroed it in the page, but the page's
    /// older images are still in the WAL. Copy the WAL back and truncate it now (waiting at
    /// most two seconds for readers; the background checkpoints finish the job otherwise).
    async fn after_shred(&self) {
        let checkpoint = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool);
        match tokio::time::timeout(Duration::from_secs(2), checkpoint).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "WAL checkpoint after a shred failed"),
            Err(_) => tracing::warn!(
                "WAL checkpoint after a shred took over 2 s; left to the background checkpoints"
            ),
        }
    }

    fn row_cache_stats(&self) -> Vec<crate::domain::ports::CacheStats> {
        [
            ("settings", self.settings.hits_and_misses()),
            ("grants", self.grants.hits_and_misses()),
            ("repositories", self.repositories.hits_and_misses()),
        ]
        .into_iter()
        .map(|(name, (hits, misses))| crate::domain::ports::CacheStats { name, hits, misses })
        .collect()
    }
}

/// How old a cached repository or grant may be: the bound on how late this server sees a
/// write made by another process on the same SQLite database (a shred, or a grant withdrawn
/// by `repocrypt repo shred` or `repocrypt tenant revoke-kms-grant` while it runs).
const OUTSIDE_WRITE_BOUND: Duration = Duration::from_secs(1);

/// A row of a cache whose entries are kept with when they were read: `Err` with the row
/// when it is younger than [`OUTSIDE_WRITE_BOUND`], else `Ok` with a ticket to read the
/// database with (`None`: do not fill, a write raced).
fn bounded_get<V: Clone>(
    cache: &RowCache<(Instant, V)>,
    key: &str,
    now: Instant,
) -> std::result::Result<Option<Ticket>, V> {
    match cache.get(key) {
        Ok((at, row)) if now.saturating_duration_since(at) < OUTSIDE_WRITE_BOUND => Err(row),
        Ok(_) => {
            cache.invalidate(key);
            Ok(cache.get(key).err())
        }
        Err(ticket) => Ok(Some(ticket)),
    }
}

fn repository_key(tenant: &TenantId, repo_id: RepoId) -> String {
    format!("{}{repo_id}", repository_key_prefix(tenant))
}

/// What every [`repository_key`] of the tenant starts with.
fn repository_key_prefix(tenant: &TenantId) -> String {
    format!("{}\0", tenant.as_str())
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoint the WAL in the background (PASSIVE: never waits for, nor blocks, readers or
/// the writer), until the store is dropped.
async fn run_checkpoints(pool: SqlitePool, alive: Weak<()>) {
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

/// A database that has no file of its own to make private, or one not to create.
/// The directory of the SQLite database file `url` names, when it names a file the
/// service writes (not an in-memory or read-only database).
pub fn database_dir(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") || in_memory_or_read_only(url) {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let dir = options.get_filename().parent()?;
    Some(if dir.as_os_str().is_empty() {
        ".".into()
    } else {
        dir.to_owned()
    })
}

fn in_memory_or_read_only(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory") || url.contains("mode=ro")
}

/// The database file, created 0600 before SQLite opens it, and its `-wal` and `-shm`,
/// which SQLite creates with the database's own mode (it sets it whatever the umask): only
/// the service's user may read them. Files left broader by an older version are narrowed
/// to 0600, with a warning.
fn private_files(db: &std::path::Path) -> Result<()> {
    if db.as_os_str().is_empty() {
        return Ok(());
    }
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::keys::create_private_dir(dir)?;
    }
    let mut create = std::fs::OpenOptions::new();
    create.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
    match create.open(db) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "cannot create the SQLite database {}: {e}",
                db.display()
            )))
        }
    }
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let path = std::path::PathBuf::from(path);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // not there yet
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode != 0o600 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| {
                    Error::InvalidArgument(format!(
                        "cannot make {} private (mode {mode:o}): {e}",
                        path.display()
                    ))
                },
            )?;
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), was = %format!("{mode:o}"), "a database file was readable by group or others; it is now 0600");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_directory_is_known_only_for_a_file_the_service_writes() {
        let dir = |url: &str| database_dir(url).map(|d| d.display().to_string());
        assert_eq!(
            dir("sqlite:///var/lib/repocrypt/repocrypt.db").as_deref(),
            Some("/var/lib/repocrypt")
        );
        assert_eq!(
            dir("sqlite://data/repocrypt.db?mode=rwc").as_deref(),
            Some("data")
        );
        assert_eq!(dir("sqlite://repocrypt.db").as_deref(), Some("."));
        assert_eq!(dir("sqlite::memory:"), None);
        assert_eq!(dir("sqlite://x.db?mode=ro"), None);
        assert_eq!(dir("postgres://u@h/db"), None);
    }
    use crate::store::all_fail;

    /// A read that missed the row cache, asked for on a connection thread, gives its pooled
    /// connection back while that thread is busy with something else and does not turn its
    /// event loop: the read ran at home, not on the asker's runtime.
    #[test]
    fn a_cold_read_gives_its_connection_back_while_the_asking_thread_is_busy() {
        #![allow(clippy::unwrap_used)]
        // The store is opened on the main runtime, which becomes its home.
        let (main, _) = crate::home::test_runtimes::home();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = main
            .block_on(SqliteStore::open(
                &url,
                Arc::new(crate::clock::SystemClock),
                None,
                16,
                Duration::from_secs(5),
            ))
            .unwrap();
        let connection_thread = crate::home::test_runtimes::connection_thread();
        let tenant = TenantId::parse("0123456789abcdef0123456789abcdef").unwrap();
        connection_thread.block_on(async {
            assert!(store.read_setting(&tenant).await.unwrap().is_none());
            // Busy from here on: nothing spawned on this thread's runtime runs.
            let until = Instant::now() + Duration::from_secs(3);
            while store.pool.num_idle() < store.pool.size() as usize {
                assert!(
                    Instant::now() < until,
                    "the read's connection is still out of the pool ({} of {} idle)",
                    store.pool.num_idle(),
                    store.pool.size()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }

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
