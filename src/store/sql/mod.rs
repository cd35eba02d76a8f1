//! The store's queries, written once for both databases.
//!
//! This module is compiled twice: `store::sqlite` and `store::postgres` each declare it
//! (`#[path = "sql/mod.rs"] mod sql;`), so every query, row decoder and error context
//! here exists once in the source and once per database in the binary, with that
//! database's concrete sqlx types (no `sqlx::Any`, no generic bounds to satisfy). What
//! really differs between the databases comes from the parent module:
//!
//! - `dialect` (its database's half of `store/dialect.rs`): the sqlx types (`Db`, `Conn`;
//!   `Row` follows from `Db` here), the clauses only one database has (`FOR
//!   UPDATE`, `COLLATE "C"`, `BEGIN IMMEDIATE`), how a list is bound (`= ANY($1)` or
//!   `json_each`), and the locks (PostgreSQL's advisory locks, nothing on SQLite, whose
//!   write transactions are serialized by `BEGIN IMMEDIATE`);
//! - the store type `Backend` (the parent's `SqliteStore` or `PostgresStore`) with fields
//!   `pool`, `clock` and `writer`, and the reads each database serves its own way
//!   (`read_setting`, `read_setting_with_key`, `read_grant`, `read_permit_public`,
//!   `read_key`, `read_repository_for_release`, `read_credential`: SQLite from its row
//!   cache or, missing it, on the main runtime; PostgreSQL coalesced or direct), the cache
//!   hooks (`tenant_written`, `repository_written`, `repositories_written`,
//!   `row_cache_stats`), and what a shred leaves to clean (`after_shred`: SQLite truncates
//!   its WAL).
//!
//! One file per aggregate: settings (and their group commit), grants and tenants,
//! projects, audit, local-KMS keys, credentials; and the migrations and bulk loads.

pub(super) mod audit;
#[cfg(feature = "bench")]
pub(super) mod bulk;
pub(super) mod credentials;
pub(super) mod events;
pub(super) mod grants;
pub(super) mod keys;
pub(super) mod migrate;
pub(super) mod projects;
pub(super) mod repositories;
pub(super) mod rewrap;
pub(super) mod settings;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::{dialect, Backend};
use crate::domain::events::Event;
use crate::domain::ports::CacheStats;
use crate::domain::rewrap::REWRAP_LEASE;
use crate::domain::{
    Actor, AuditRecord, Grant, KeyState, Page, PermitPublic, Project, ProjectId, RepoForRelease,
    RepoId, RepoQuery, Repository, Result, RewrapCommit, RewrapJob, Setting, Shredded, TenantId,
};
#[cfg(feature = "bench")]
use crate::store::{bulk_summary, BulkTenant};
use crate::store::{
    AuditFilter, Context, Credential, CredentialStore, JoinedKey, KeyChange, KeyStore, SettingPlan,
    Store, StoredKey,
};

/// A row of the database's.
pub(super) type Row = <dialect::Db as sqlx::Database>::Row;

/// A write transaction: `BEGIN IMMEDIATE` on SQLite, so that a read-then-write never fails
/// to upgrade its lock; a plain `BEGIN` on PostgreSQL, whose writers lock what they read.
pub(super) async fn begin_write(
    pool: &sqlx::Pool<dialect::Db>,
) -> Result<sqlx::Transaction<'static, dialect::Db>> {
    pool.begin_with(dialect::BEGIN_WRITE)
        .await
        .context("begin write transaction")
}

/// Cheap round trip, for readiness checks.
async fn ping(pool: &sqlx::Pool<dialect::Db>) -> Result<()> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .context("ping")
}

/// Serialise writers of one tenant's rows (`scope` names which) until the transaction
/// ends: `dialect::lock_tenants` for one tenant.
pub(super) async fn lock_tenant(conn: &mut dialect::Conn, scope: &str, tenant: &str) -> Result<()> {
    dialect::lock_tenants(conn, scope, &[tenant])
        .await
        .context("tenant lock")
}

#[async_trait]
impl Store for Backend {
    async fn ping(&self) -> Result<()> {
        self.bounded("ping", ping(&self.pool)).await
    }

    async fn get_setting(&self, tenant: &TenantId) -> Result<Option<Setting>> {
        self.bounded("get_setting", self.read_setting(tenant)).await
    }

    async fn get_setting_with_key(
        &self,
        tenant: &TenantId,
    ) -> Result<(Option<Setting>, JoinedKey)> {
        self.bounded("get_setting_with_key", self.read_setting_with_key(tenant))
            .await
    }

    /// Group commit: see [`settings::commit_batch`]. Answered only after the COMMIT of the
    /// transaction that holds this write.
    async fn update_setting(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        plan: SettingPlan,
    ) -> Result<Setting> {
        self.bounded(
            "update_setting",
            self.writer.call(settings::SettingJob {
                tenant: tenant.clone(),
                actor: actor.clone(),
                plan,
            }),
        )
        .await
    }

    async fn get_grant(&self, tenant: &TenantId) -> Result<Option<Grant>> {
        self.bounded("get_grant", self.read_grant(tenant)).await
    }

    async fn put_grant(&self, tenant: &TenantId, actor: &Actor) -> Result<Grant> {
        self.bounded("put_grant", async {
            let grant = grants::put(&self.pool, &self.clock, tenant, actor).await;
            self.tenant_written(tenant.as_str());
            self.repositories_written(tenant);
            grant
        })
        .await
    }

    async fn delete_grant(&self, tenant: &TenantId, actor: &Actor) -> Result<Option<Grant>> {
        self.bounded("delete_grant", async {
            let withdrawn = grants::delete(&self.pool, &self.clock, tenant, actor).await;
            // Whatever the outcome (a commit whose answer was lost may still have happened).
            self.tenant_written(tenant.as_str());
            self.repositories_written(tenant);
            withdrawn
        })
        .await
    }

    async fn get_permit_public(&self, tenant: &TenantId) -> Result<Option<PermitPublic>> {
        self.bounded("get_permit_public", self.read_permit_public(tenant))
            .await
    }

    async fn set_permit_public(
        &self,
        tenant: &TenantId,
        value: PermitPublic,
        actor: &Actor,
    ) -> Result<()> {
        self.bounded(
            "set_permit_public",
            grants::set_permit_public(&self.pool, &self.clock, tenant, value, actor),
        )
        .await
    }

    async fn add_project(&self, project: &Project, actor: &Actor) -> Result<()> {
        self.bounded(
            "add_project",
            projects::add(&self.pool, &self.clock, project, actor),
        )
        .await
    }

    async fn get_project(&self, project_id: &ProjectId) -> Result<Option<Project>> {
        self.bounded("get_project", projects::get(&self.pool, project_id))
            .await
    }

    async fn add_project_member(
        &self,
        project_id: &ProjectId,
        tenant: &TenantId,
        user_id: &str,
        actor: &Actor,
    ) -> Result<()> {
        self.bounded(
            "add_project_member",
            projects::add_member(&self.pool, &self.clock, project_id, tenant, user_id, actor),
        )
        .await
    }

    async fn is_project_member(
        &self,
        project_id: &ProjectId,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<bool> {
        self.bounded(
            "is_project_member",
            projects::is_member(&self.pool, project_id, tenant, user_id),
        )
        .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        self.bounded("list_audit", audit::list(&self.pool, filter))
            .await
    }

    async fn record_audit(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        action: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Result<()> {
        self.bounded("record_audit", async {
            let mut conn = self.pool.acquire().await.context("acquire connection")?;
            audit::insert(
                &mut conn,
                &self.clock,
                tenant.as_str(),
                actor,
                action,
                before,
                after,
            )
            .await
        })
        .await
    }

    async fn insert_repository(
        &self,
        repository: &Repository,
        actor: &Actor,
    ) -> Result<Option<Repository>> {
        self.bounded("insert_repository", async {
            let stored = repositories::insert(&self.pool, &self.clock, repository, actor).await?;
            self.repository_written(&repository.tenant_id, repository.fields.repo_id);
            Ok(stored)
        })
        .await
    }

    async fn get_repository(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
    ) -> Result<Option<Repository>> {
        self.bounded(
            "get_repository",
            repositories::get(&self.pool, tenant, repo_id),
        )
        .await
    }

    async fn get_repository_for_release(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
    ) -> Result<Option<RepoForRelease>> {
        self.bounded(
            "get_repository_for_release",
            self.read_repository_for_release(tenant, repo_id),
        )
        .await
    }

    async fn list_encrypted_repositories(
        &self,
        tenant: &TenantId,
        query: &RepoQuery,
    ) -> Result<Vec<Repository>> {
        self.bounded(
            "list_encrypted_repositories",
            repositories::list_encrypted(&self.pool, tenant, query),
        )
        .await
    }

    async fn list_key_repositories(
        &self,
        tenant: &TenantId,
        key_id: &str,
        page: Page,
    ) -> Result<Vec<Repository>> {
        self.bounded(
            "list_key_repositories",
            repositories::list_by_key(&self.pool, tenant, key_id, page),
        )
        .await
    }

    async fn count_key_repositories(&self, tenant: &TenantId, key_id: &str) -> Result<u64> {
        self.bounded(
            "count_key_repositories",
            repositories::count_by_key(&self.pool, tenant, key_id),
        )
        .await
    }

    async fn list_repositories(&self, tenant: &TenantId) -> Result<Vec<Repository>> {
        self.bounded(
            "list_repositories",
            repositories::list_all(&self.pool, tenant),
        )
        .await
    }

    async fn shred_repository(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
        actor: &Actor,
    ) -> Result<Shredded> {
        self.bounded("shred_repository", async {
            let shredded =
                repositories::shred(&self.pool, &self.clock, tenant, repo_id, actor).await;
            self.repository_written(tenant, repo_id);
            let shredded = shredded?;
            if shredded == Shredded::Now {
                self.after_shred().await;
            }
            Ok(shredded)
        })
        .await
    }

    async fn start_rewrap_job(
        &self,
        tenant: &TenantId,
        job_id: &str,
        target_key_id: &str,
        actor: &Actor,
    ) -> Result<(RewrapJob, bool)> {
        self.bounded(
            "start_rewrap_job",
            rewrap::start(
                &self.pool,
                &self.clock,
                tenant,
                job_id,
                target_key_id,
                actor,
            ),
        )
        .await
    }

    async fn get_rewrap_job(&self, tenant: &TenantId, job_id: &str) -> Result<Option<RewrapJob>> {
        self.bounded("get_rewrap_job", rewrap::get(&self.pool, tenant, job_id))
            .await
    }

    async fn running_rewrap_job(&self, tenant: &TenantId) -> Result<Option<RewrapJob>> {
        self.bounded("running_rewrap_job", rewrap::running(&self.pool, tenant))
            .await
    }

    async fn unleased_rewrap_jobs(&self) -> Result<Vec<RewrapJob>> {
        self.bounded(
            "unleased_rewrap_jobs",
            rewrap::unleased(&self.pool, &self.clock),
        )
        .await
    }

    async fn claim_rewrap_job(&self, job_id: &str, lease: &str, ttl: Duration) -> Result<bool> {
        self.bounded(
            "claim_rewrap_job",
            rewrap::claim(&self.pool, &self.clock, job_id, lease, ttl),
        )
        .await
    }

    async fn release_rewrap_lease(&self, job_id: &str, lease: &str) -> Result<()> {
        self.bounded(
            "release_rewrap_lease",
            rewrap::release(&self.pool, job_id, lease),
        )
        .await
    }

    async fn rewrap_work(
        &self,
        job: &RewrapJob,
        after: Option<RepoId>,
        limit: u32,
    ) -> Result<Vec<Repository>> {
        self.bounded("rewrap_work", rewrap::work(&self.pool, job, after, limit))
            .await
    }

    async fn commit_rewrap(
        &self,
        job: &RewrapJob,
        lease: &str,
        repo: &Repository,
        new_wrapped: &[u8],
        actor: &Actor,
    ) -> Result<RewrapCommit> {
        self.bounded("commit_rewrap", async {
            let committed = rewrap::commit(
                &self.pool,
                &self.clock,
                job,
                lease,
                REWRAP_LEASE,
                repo,
                new_wrapped,
                actor,
            )
            .await;
            self.repository_written(&job.tenant_id, repo.fields.repo_id);
            committed
        })
        .await
    }

    async fn record_rewrap_failure(
        &self,
        job: &RewrapJob,
        lease: &str,
        repo_id: RepoId,
        reason: &str,
        actor: &Actor,
    ) -> Result<bool> {
        self.bounded(
            "record_rewrap_failure",
            rewrap::failure(
                &self.pool,
                &self.clock,
                job,
                lease,
                REWRAP_LEASE,
                repo_id,
                reason,
                actor,
            ),
        )
        .await
    }

    async fn finish_rewrap_job(
        &self,
        job: &RewrapJob,
        lease: &str,
        error: Option<&str>,
        actor: &Actor,
    ) -> Result<bool> {
        self.bounded(
            "finish_rewrap_job",
            rewrap::finish(&self.pool, &self.clock, job, lease, error, actor),
        )
        .await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>> {
        self.bounded("events_after", events::after(&self.pool, after, limit))
            .await
    }

    async fn latest_event_id(&self) -> Result<i64> {
        self.bounded("latest_event_id", events::latest_id(&self.pool))
            .await
    }

    async fn events_pruned_through(&self) -> Result<i64> {
        self.bounded("events_pruned_through", events::pruned_through(&self.pool))
            .await
    }

    async fn prune_events(&self, before: std::time::SystemTime) -> Result<u64> {
        self.bounded(
            "prune_events",
            events::prune(&self.pool, &crate::store::audit_time_bound(before)),
        )
        .await
    }

    async fn observe_key_state(
        &self,
        tenant: &TenantId,
        key_id: &str,
        previous: Option<Option<KeyState>>,
        now: Option<KeyState>,
    ) -> Result<Option<i64>> {
        self.bounded(
            "observe_key_state",
            events::observe_key_state(&self.pool, &self.clock, tenant, key_id, previous, now),
        )
        .await
    }

    fn forget_cached(&self, tenant: &TenantId, repo_id: Option<RepoId>) {
        match repo_id {
            Some(repo_id) => self.repository_written(tenant, repo_id),
            None => {
                self.tenant_written(tenant.as_str());
                self.repositories_written(tenant);
            }
        }
    }

    fn cache_stats(&self) -> Vec<CacheStats> {
        self.row_cache_stats()
    }
}

#[async_trait]
impl KeyStore for Backend {
    async fn ping(&self) -> Result<()> {
        self.bounded("ping", ping(&self.pool)).await
    }

    async fn kms_insert_key(&self, key: &StoredKey, actor: &Actor) -> Result<()> {
        self.bounded(
            "kms_insert_key",
            keys::insert(&self.pool, &self.clock, key, actor),
        )
        .await
    }

    async fn kms_get_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<StoredKey>> {
        self.bounded("kms_get_key", self.read_key(tenant, key_id))
            .await
    }

    async fn kms_list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>> {
        self.bounded("kms_list_keys", keys::list(&self.pool, tenant))
            .await
    }

    async fn kms_update_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        action: &str,
        actor: &Actor,
        change: KeyChange<'_>,
    ) -> Result<StoredKey> {
        self.bounded(
            "kms_update_key",
            keys::update(
                &self.pool,
                &self.clock,
                tenant,
                key_id,
                action,
                actor,
                change,
            ),
        )
        .await
    }

    #[cfg(feature = "bench")]
    async fn bulk_load(&self, tenants: &[BulkTenant], actor: &Actor) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        let now = self.clock.rfc3339();
        bulk::insert_tenants(&mut tx, tenants, actor, &now).await?;
        audit::insert(
            &mut tx,
            &self.clock,
            "*",
            actor,
            "bench.load",
            None,
            Some(bulk_summary(tenants)),
        )
        .await?;
        tx.commit().await.context("commit bulk load")?;
        for t in tenants {
            self.tenant_written(&t.key.tenant_id);
        }
        Ok(())
    }
}

#[async_trait]
impl CredentialStore for Backend {
    async fn credential_insert(&self, credential: &Credential, actor: &Actor) -> Result<()> {
        self.bounded(
            "credential_insert",
            credentials::insert(&self.pool, &self.clock, credential, actor),
        )
        .await
    }

    async fn credential_get(&self, access_key: &str) -> Result<Option<Credential>> {
        self.bounded("credential_get", self.read_credential(access_key))
            .await
    }

    async fn credential_list(&self, tenant: &TenantId) -> Result<Vec<Credential>> {
        self.bounded("credential_list", credentials::list(&self.pool, tenant))
            .await
    }

    async fn credential_delete(&self, access_key: &str, actor: &Actor) -> Result<bool> {
        self.bounded(
            "credential_delete",
            credentials::delete(&self.pool, &self.clock, access_key, actor),
        )
        .await
    }
}
