//! Repositories and their wrapped data keys.

use std::sync::Arc;

use sqlx::Row as _;

use super::dialect::{self, Db};
use super::Row;
use super::{audit, events};
use crate::clock::Clock;
use crate::domain::events::Change;
use crate::domain::{
    Actor, Page, RepoFields, RepoForRelease, RepoId, RepoOrder, RepoQuery, Repository, Result,
    Shredded, TenantId,
};
use crate::store::{sql, Context};

pub(crate) const COLUMNS: &str =
    "tenant_id, repo_id, repo_name, full_path, project_id, project_name, \
     owner_id, owner_iam_id, owner_tenant_name, owner_nick_name, owner_name, encrypted, \
     cmk_key_id, wrapped_key, shredded_at, created_at";

pub(crate) fn from_row(tenant: &TenantId, row: &Row) -> Result<Repository> {
    let what = "decode repository";
    let repo_id: i32 = row.try_get("repo_id").context(what)?;
    Ok(Repository {
        tenant_id: tenant.clone(),
        fields: RepoFields {
            repo_id: RepoId::new(i64::from(repo_id))
                .map_err(|_| crate::store::db_error(what, "repo_id out of range"))?,
            repo_name: row.try_get("repo_name").context(what)?,
            full_path: row.try_get("full_path").context(what)?,
            project_id: row.try_get("project_id").context(what)?,
            project_name: row.try_get("project_name").context(what)?,
            owner_id: row.try_get("owner_id").context(what)?,
            owner_iam_id: row.try_get("owner_iam_id").context(what)?,
            owner_tenant_name: row.try_get("owner_tenant_name").context(what)?,
            owner_nick_name: row.try_get("owner_nick_name").context(what)?,
            owner_name: row.try_get("owner_name").context(what)?,
        },
        encrypted: row.try_get("encrypted").context(what)?,
        cmk_key_id: row.try_get("cmk_key_id").context(what)?,
        wrapped_key: row.try_get("wrapped_key").context(what)?,
        shredded_at: row.try_get("shredded_at").context(what)?,
        created_at: row.try_get("created_at").context(what)?,
    })
}

/// The stored repository, or `None` (and nothing written) when the tenant has a
/// repository with this id.
pub(crate) async fn insert(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    repo: &Repository,
    actor: &Actor,
) -> Result<Option<Repository>> {
    let repo = Repository {
        created_at: clock.rfc3339(),
        ..repo.clone()
    };
    let f = &repo.fields;
    let mut tx = super::begin_write(pool).await?;
    let inserted = sqlx::query(sql!(format!(
        "INSERT INTO repositories ({COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (tenant_id, repo_id) DO NOTHING"
    )))
    .bind(repo.tenant_id.as_str())
    .bind(f.repo_id.get())
    .bind(&f.repo_name)
    .bind(&f.full_path)
    .bind(&f.project_id)
    .bind(&f.project_name)
    .bind(f.owner_id)
    .bind(&f.owner_iam_id)
    .bind(&f.owner_tenant_name)
    .bind(&f.owner_nick_name)
    .bind(&f.owner_name)
    .bind(repo.encrypted)
    .bind(&repo.cmk_key_id)
    .bind(&repo.wrapped_key)
    .bind(&repo.shredded_at)
    .bind(&repo.created_at)
    .execute(&mut *tx)
    .await
    .context("write repository")?
    .rows_affected()
        == 1;
    if !inserted {
        return Ok(None);
    }
    audit::insert(
        &mut tx,
        clock,
        repo.tenant_id.as_str(),
        actor,
        "repository.register",
        None,
        Some(repo.audit_json()),
    )
    .await?;
    tx.commit().await.context("commit repository")?;
    Ok(Some(repo))
}

pub(crate) async fn get(
    pool: &sqlx::Pool<Db>,
    tenant: &TenantId,
    repo_id: RepoId,
) -> Result<Option<Repository>> {
    sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM repositories WHERE tenant_id = $1 AND repo_id = $2"
    )))
    .bind(tenant.as_str())
    .bind(repo_id.get())
    .fetch_optional(pool)
    .await
    .context("read repository")?
    .map(|r| from_row(tenant, &r))
    .transpose()
}

/// The repository and whether its tenant's grant stands, in one query.
pub(crate) async fn get_for_release(
    pool: &sqlx::Pool<Db>,
    tenant: &TenantId,
    repo_id: RepoId,
) -> Result<Option<RepoForRelease>> {
    let row = sqlx::query(sql!(format!(
        "SELECT {COLUMNS},
             EXISTS (SELECT 1 FROM kms_grants g WHERE g.tenant_id = r.tenant_id) AS granted
         FROM repositories r WHERE tenant_id = $1 AND repo_id = $2"
    )))
    .bind(tenant.as_str())
    .bind(repo_id.get())
    .fetch_optional(pool)
    .await
    .context("read repository")?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(RepoForRelease {
        repository: Arc::new(from_row(tenant, &row)?),
        granted: row.try_get("granted").context("decode repository")?,
    }))
}

pub(crate) async fn list_encrypted(
    pool: &sqlx::Pool<Db>,
    tenant: &TenantId,
    query: &RepoQuery,
) -> Result<Vec<Repository>> {
    // Four texts, chosen from constants: the order is never taken from the caller.
    let text = match (query.order, query.descending) {
        (RepoOrder::RepoName, false) => sql!(list_query("repo_name", "ASC")),
        (RepoOrder::RepoName, true) => sql!(list_query("repo_name", "DESC")),
        (RepoOrder::OwnerName, false) => sql!(list_query("COALESCE(owner_name, '')", "ASC")),
        (RepoOrder::OwnerName, true) => sql!(list_query("COALESCE(owner_name, '')", "DESC")),
    };
    let rows = sqlx::query(text)
        .bind(tenant.as_str())
        .bind(i64::from(query.page.limit))
        .bind(i64::from(query.page.offset))
        .fetch_all(pool)
        .await
        .context("list repositories")?;
    rows.iter().map(|r| from_row(tenant, r)).collect()
}

/// The list query ordered by `key` (bytewise on both databases), ids breaking ties in
/// the same direction, so that pages neither overlap nor skip.
fn list_query(key: &str, direction: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM repositories
         WHERE tenant_id = $1 AND encrypted = {TRUE} AND shredded_at IS NULL
         ORDER BY {key}{bytewise} {direction}, repo_id {direction}
         LIMIT $2 OFFSET $3",
        TRUE = dialect::TRUE,
        bytewise = dialect::BYTEWISE,
    )
}

/// A page of the tenant's repositories whose data key is wrapped by `key_id` (encrypted,
/// not shredded), by id: what disabling or deleting the key would cut off.
pub(crate) async fn list_by_key(
    pool: &sqlx::Pool<Db>,
    tenant: &TenantId,
    key_id: &str,
    page: Page,
) -> Result<Vec<Repository>> {
    let rows = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM repositories
         WHERE tenant_id = $1 AND cmk_key_id = $2 AND encrypted = {TRUE} AND shredded_at IS NULL
         ORDER BY repo_id
         LIMIT $3 OFFSET $4",
        TRUE = dialect::TRUE,
    )))
    .bind(tenant.as_str())
    .bind(key_id)
    .bind(i64::from(page.limit))
    .bind(i64::from(page.offset))
    .fetch_all(pool)
    .await
    .context("list repositories by key")?;
    rows.iter().map(|r| from_row(tenant, r)).collect()
}

/// How many of the tenant's repositories [`list_by_key`] would list, in all.
pub(crate) async fn count_by_key(
    pool: &sqlx::Pool<Db>,
    tenant: &TenantId,
    key_id: &str,
) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(sql!(format!(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM repositories
         WHERE tenant_id = $1 AND cmk_key_id = $2 AND encrypted = {TRUE} AND shredded_at IS NULL",
        TRUE = dialect::TRUE,
    )))
    .bind(tenant.as_str())
    .bind(key_id)
    .fetch_one(pool)
    .await
    .context("count repositories by key")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(crate) async fn list_all(pool: &sqlx::Pool<Db>, tenant: &TenantId) -> Result<Vec<Repository>> {
    let rows = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM repositories WHERE tenant_id = $1 ORDER BY repo_id"
    )))
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await
    .context("list repositories")?;
    rows.iter().map(|r| from_row(tenant, r)).collect()
}

/// Destroy a repository's wrapped data key, with its audit record.
pub(crate) async fn shred(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    tenant: &TenantId,
    repo_id: RepoId,
    actor: &Actor,
) -> Result<Shredded> {
    let mut tx = super::begin_write(pool).await?;
    let before = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM repositories WHERE tenant_id = $1 AND repo_id = $2{}",
        dialect::FOR_UPDATE
    )))
    .bind(tenant.as_str())
    .bind(repo_id.get())
    .fetch_optional(&mut *tx)
    .await
    .context("read repository")?
    .map(|r| from_row(tenant, &r))
    .transpose()?;
    let Some(before) = before else {
        return Ok(Shredded::NotFound);
    };
    if !before.encrypted {
        return Ok(Shredded::NotEncrypted);
    }
    if before.shredded_at.is_some() {
        return Ok(Shredded::Already);
    }
    let at = clock.rfc3339();
    sqlx::query(
        "UPDATE repositories SET wrapped_key = NULL, shredded_at = $3
         WHERE tenant_id = $1 AND repo_id = $2",
    )
    .bind(tenant.as_str())
    .bind(repo_id.get())
    .bind(&at)
    .execute(&mut *tx)
    .await
    .context("shred repository")?;
    let after = Repository {
        wrapped_key: None,
        shredded_at: Some(at),
        ..before.clone()
    };
    audit::insert(
        &mut tx,
        clock,
        tenant.as_str(),
        actor,
        "repository.shred",
        Some(before.audit_json()),
        Some(after.audit_json()),
    )
    .await?;
    let change = Change::DataKeyShredded {
        repo_id: i64::from(repo_id.get()),
    };
    events::insert(&mut tx, clock, tenant.as_str(), &change).await?;
    tx.commit().await.context("commit shred")?;
    Ok(Shredded::Now)
}
