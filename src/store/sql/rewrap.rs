//! Rewrap jobs (`domain::rewrap`): the job rows, their leases, and each repository's
//! rewrap in one transaction with its audit record and the job's count.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use sqlx::Row as _;

use super::dialect::{self, Conn, Db};
use super::repositories;
use super::Row;
use super::{audit, events};
use crate::clock::Clock;
use crate::domain::events::Change;
use crate::domain::{
    Actor, RepoId, Repository, Result, RewrapCommit, RewrapFailure, RewrapJob, RewrapState,
    TenantId,
};
use crate::store::{db_error, sql, Context};

const COLUMNS: &str = "job_id, tenant_id, target_key_id, state, total, done, error, actor, \
     request_id, created_at, updated_at, finished_at";

fn from_row(row: &Row) -> Result<RewrapJob> {
    let what = "decode rewrap job";
    let tenant: String = row.try_get("tenant_id").context(what)?;
    let state: String = row.try_get("state").context(what)?;
    let count = |name: &str| -> Result<u64> {
        let v: i64 = row.try_get(name).context(what)?;
        Ok(v.max(0) as u64)
    };
    Ok(RewrapJob {
        job_id: row.try_get("job_id").context(what)?,
        tenant_id: TenantId::parse(tenant).map_err(|_| db_error(what, "invalid tenant_id"))?,
        target_key_id: row.try_get("target_key_id").context(what)?,
        state: RewrapState::parse(&state).ok_or_else(|| db_error(what, "invalid state"))?,
        total: count("total")?,
        done: count("done")?,
        failed: Vec::new(),
        error: row.try_get("error").context(what)?,
        actor: row.try_get("actor").context(what)?,
        request_id: row.try_get("request_id").context(what)?,
        created_at: row.try_get("created_at").context(what)?,
        updated_at: row.try_get("updated_at").context(what)?,
        finished_at: row.try_get("finished_at").context(what)?,
    })
}

/// Unix milliseconds now, on the store's clock.
fn now_millis(clock: &Arc<dyn Clock>) -> i64 {
    clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lease_until(clock: &Arc<dyn Clock>, ttl: Duration) -> i64 {
    now_millis(clock).saturating_add(ttl.as_millis() as i64)
}

/// The job with its failures, on `conn`.
async fn with_failures(conn: &mut Conn, row: Option<Row>) -> Result<Option<RewrapJob>> {
    let Some(row) = row else {
        return Ok(None);
    };
    let mut job = from_row(&row)?;
    let rows = sqlx::query(
        "SELECT repo_id, reason FROM rewrap_failures WHERE job_id = $1 ORDER BY repo_id",
    )
    .bind(&job.job_id)
    .fetch_all(&mut *conn)
    .await
    .context("read rewrap failures")?;
    for r in &rows {
        let repo_id: i32 = r.try_get("repo_id").context("decode rewrap failure")?;
        job.failed.push(RewrapFailure {
            repo_id: RepoId::new(i64::from(repo_id))
                .map_err(|_| db_error("decode rewrap failure", "repo_id out of range"))?,
            reason: r.try_get("reason").context("decode rewrap failure")?,
        });
    }
    Ok(Some(job))
}

async fn running_on(conn: &mut Conn, tenant: &TenantId) -> Result<Option<RewrapJob>> {
    let row = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM rewrap_jobs WHERE tenant_id = $1 AND state = 'running'"
    )))
    .bind(tenant.as_str())
    .fetch_optional(&mut *conn)
    .await
    .context("read rewrap job")?;
    with_failures(conn, row).await
}

/// Start a job, or answer the one running.
pub(crate) async fn start(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    tenant: &TenantId,
    job_id: &str,
    target_key_id: &str,
    actor: &Actor,
) -> Result<(RewrapJob, bool)> {
    let mut tx = super::begin_write(pool).await?;
    // Serialise starts of this tenant's jobs (the unique index would refuse a second
    // running one anyway), so the one found running is the one answered.
    super::lock_tenant(&mut tx, "rewrap", tenant.as_str()).await?;
    if let Some(running) = running_on(&mut tx, tenant).await? {
        return Ok((running, false));
    }
    let total: i64 = sqlx::query_scalar(sql!(format!(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM repositories
         WHERE tenant_id = $1 AND encrypted = {TRUE} AND shredded_at IS NULL
           AND cmk_key_id <> $2",
        TRUE = dialect::TRUE
    )))
    .bind(tenant.as_str())
    .bind(target_key_id)
    .fetch_one(&mut *tx)
    .await
    .context("count repositories to rewrap")?;
    let now = clock.rfc3339();
    // Nothing to do: finished at once.
    let (state, finished_at) = if total == 0 {
        (RewrapState::Succeeded, Some(now.clone()))
    } else {
        (RewrapState::Running, None)
    };
    sqlx::query(
        "INSERT INTO rewrap_jobs (job_id, tenant_id, target_key_id, state, total, done, failed,
             actor, request_id, created_at, updated_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $7, $8, $8, $9)",
    )
    .bind(job_id)
    .bind(tenant.as_str())
    .bind(target_key_id)
    .bind(state.as_str())
    .bind(total)
    .bind(&actor.actor)
    .bind(actor.request_id.as_deref())
    .bind(&now)
    .bind(&finished_at)
    .execute(&mut *tx)
    .await
    .context("write rewrap job")?;
    audit::insert(
        &mut tx,
        clock,
        tenant.as_str(),
        actor,
        "rewrap.start",
        None,
        Some(json!({
            "job_id": job_id, "target_key_id": target_key_id, "total": total,
            "state": state.as_str(),
        })),
    )
    .await?;
    tx.commit().await.context("commit rewrap job")?;
    let job = RewrapJob {
        job_id: job_id.to_owned(),
        tenant_id: tenant.clone(),
        target_key_id: target_key_id.to_owned(),
        state,
        total: total.max(0) as u64,
        done: 0,
        failed: Vec::new(),
        error: None,
        actor: actor.actor.clone(),
        request_id: actor.request_id.clone(),
        created_at: now.clone(),
        updated_at: now,
        finished_at,
    };
    Ok((job, true))
}

pub(crate) async fn get(
    pool: &sqlx::Pool<Db>,
    tenant: &TenantId,
    job_id: &str,
) -> Result<Option<RewrapJob>> {
    let mut conn = pool.acquire().await.context("acquire connection")?;
    let row = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM rewrap_jobs WHERE tenant_id = $1 AND job_id = $2"
    )))
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_optional(&mut *conn)
    .await
    .context("read rewrap job")?;
    with_failures(&mut conn, row).await
}

pub(crate) async fn running(pool: &sqlx::Pool<Db>, tenant: &TenantId) -> Result<Option<RewrapJob>> {
    let mut conn = pool.acquire().await.context("acquire connection")?;
    running_on(&mut conn, tenant).await
}

/// Running jobs whose lease is free or expired (their failures are not read: a runner
/// needs only the job).
pub(crate) async fn unleased(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
) -> Result<Vec<RewrapJob>> {
    let rows = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM rewrap_jobs
         WHERE state = 'running' AND (lease_until IS NULL OR lease_until < $1)
         ORDER BY created_at, job_id"
    )))
    .bind(now_millis(clock))
    .fetch_all(pool)
    .await
    .context("read rewrap jobs")?;
    rows.iter().map(from_row).collect()
}

/// One conditional UPDATE: of two runners claiming at once, one gets the row (PostgreSQL
/// re-checks the condition on the row the other committed; SQLite serialises writers).
pub(crate) async fn claim(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    job_id: &str,
    lease: &str,
    ttl: Duration,
) -> Result<bool> {
    let now = now_millis(clock);
    let claimed = sqlx::query(
        "UPDATE rewrap_jobs SET lease_owner = $2, lease_until = $3
         WHERE job_id = $1 AND state = 'running' AND (lease_until IS NULL OR lease_until < $4)",
    )
    .bind(job_id)
    .bind(lease)
    .bind(now.saturating_add(ttl.as_millis() as i64))
    .bind(now)
    .execute(pool)
    .await
    .context("claim rewrap job")?
    .rows_affected();
    Ok(claimed == 1)
}

pub(crate) async fn release(pool: &sqlx::Pool<Db>, job_id: &str, lease: &str) -> Result<()> {
    sqlx::query(
        "UPDATE rewrap_jobs SET lease_owner = NULL, lease_until = NULL
         WHERE job_id = $1 AND lease_owner = $2",
    )
    .bind(job_id)
    .bind(lease)
    .execute(pool)
    .await
    .context("release rewrap lease")?;
    Ok(())
}

/// The fence of a runner's transaction: the job is still running under `lease`; renewed.
/// It locks the job's row (PostgreSQL) until the transaction ends, so a claim by another
/// runner waits for it and then sees the renewed lease.
async fn fence(
    conn: &mut Conn,
    clock: &Arc<dyn Clock>,
    job_id: &str,
    lease: &str,
    ttl: Duration,
) -> Result<bool> {
    let held = sqlx::query(
        "UPDATE rewrap_jobs SET lease_until = $3, updated_at = $4
         WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'",
    )
    .bind(job_id)
    .bind(lease)
    .bind(lease_until(clock, ttl))
    .bind(clock.rfc3339())
    .execute(&mut *conn)
    .await
    .context("renew rewrap lease")?
    .rows_affected();
    Ok(held == 1)
}

/// What the job still has to do, by id after `after`: the tenant's encrypted, not
/// shredded repositories under another key that have not failed in this job.
pub(crate) async fn work(
    pool: &sqlx::Pool<Db>,
    job: &RewrapJob,
    after: Option<RepoId>,
    limit: u32,
) -> Result<Vec<Repository>> {
    let rows = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM repositories r
         WHERE tenant_id = $1 AND encrypted = {TRUE} AND shredded_at IS NULL
           AND cmk_key_id <> $2 AND repo_id > $3
           AND NOT EXISTS (SELECT 1 FROM rewrap_failures f
                           WHERE f.job_id = $4 AND f.repo_id = r.repo_id)
         ORDER BY repo_id LIMIT $5",
        COLUMNS = repositories::COLUMNS,
        TRUE = dialect::TRUE
    )))
    .bind(job.tenant_id.as_str())
    .bind(&job.target_key_id)
    .bind(after.map_or(0, RepoId::get))
    .bind(&job.job_id)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .context("read repositories to rewrap")?;
    rows.iter()
        .map(|r| repositories::from_row(&job.tenant_id, r))
        .collect()
}

/// Count one more repository (rewrapped or failed) in the job; `total` grows if the job
/// finds more than it counted at its start.
fn count_sql(column: &str) -> String {
    format!(
        "UPDATE rewrap_jobs SET {column} = {column} + 1,
             total = CASE WHEN done + failed + 1 > total THEN done + failed + 1 ELSE total END
         WHERE job_id = $1"
    )
}

/// One repository's rewrap: see `Store::commit_rewrap`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn commit(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    job: &RewrapJob,
    lease: &str,
    ttl: Duration,
    repo: &Repository,
    new_wrapped: &[u8],
    actor: &Actor,
) -> Result<RewrapCommit> {
    let (Some(old_key), Some(old_wrapped)) = (&repo.cmk_key_id, &repo.wrapped_key) else {
        return Ok(RewrapCommit::Changed);
    };
    let mut tx = super::begin_write(pool).await?;
    if !fence(&mut tx, clock, &job.job_id, lease, ttl).await? {
        return Ok(RewrapCommit::LeaseLost);
    }
    // Compare-and-set: only the key the rewrap started from is replaced, so a shred (or
    // another rewrap) since then is never undone.
    let updated = sqlx::query(
        "UPDATE repositories SET cmk_key_id = $3, wrapped_key = $4
         WHERE tenant_id = $1 AND repo_id = $2 AND shredded_at IS NULL
           AND cmk_key_id = $5 AND wrapped_key = $6",
    )
    .bind(job.tenant_id.as_str())
    .bind(repo.fields.repo_id.get())
    .bind(&job.target_key_id)
    .bind(new_wrapped)
    .bind(old_key)
    .bind(old_wrapped)
    .execute(&mut *tx)
    .await
    .context("rewrap repository")?
    .rows_affected();
    if updated != 1 {
        return Ok(RewrapCommit::Changed);
    }
    sqlx::query(sql!(count_sql("done")))
        .bind(&job.job_id)
        .execute(&mut *tx)
        .await
        .context("count rewrap")?;
    let after = Repository {
        cmk_key_id: Some(job.target_key_id.clone()),
        ..repo.clone()
    };
    let mut after = after.audit_json();
    if let serde_json::Value::Object(m) = &mut after {
        m.insert("rewrap_job_id".into(), job.job_id.clone().into());
    }
    audit::insert(
        &mut tx,
        clock,
        job.tenant_id.as_str(),
        actor,
        "repository.rewrap",
        Some(repo.audit_json()),
        Some(after),
    )
    .await?;
    let change = Change::RepositoryRewrapped {
        repo_id: i64::from(repo.fields.repo_id.get()),
        old_key_id: old_key.clone(),
        new_key_id: job.target_key_id.clone(),
    };
    events::insert(&mut tx, clock, job.tenant_id.as_str(), &change).await?;
    tx.commit().await.context("commit rewrap")?;
    Ok(RewrapCommit::Rewrapped)
}

/// Record a repository the job could not rewrap: see `Store::record_rewrap_failure`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn failure(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    job: &RewrapJob,
    lease: &str,
    ttl: Duration,
    repo_id: RepoId,
    reason: &str,
    actor: &Actor,
) -> Result<bool> {
    let mut tx = super::begin_write(pool).await?;
    if !fence(&mut tx, clock, &job.job_id, lease, ttl).await? {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO rewrap_failures (job_id, repo_id, reason, at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (job_id, repo_id) DO NOTHING",
    )
    .bind(&job.job_id)
    .bind(repo_id.get())
    .bind(reason)
    .bind(clock.rfc3339())
    .execute(&mut *tx)
    .await
    .context("write rewrap failure")?
    .rows_affected();
    if inserted == 1 {
        sqlx::query(sql!(count_sql("failed")))
            .bind(&job.job_id)
            .execute(&mut *tx)
            .await
            .context("count rewrap failure")?;
        audit::insert(
            &mut tx,
            clock,
            job.tenant_id.as_str(),
            actor,
            "repository.rewrap_failed",
            None,
            Some(json!({
                "rewrap_job_id": job.job_id, "repo_id": repo_id, "reason": reason,
            })),
        )
        .await?;
    }
    tx.commit().await.context("commit rewrap failure")?;
    Ok(true)
}

/// Finish the job: see `Store::finish_rewrap_job`.
pub(crate) async fn finish(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    job: &RewrapJob,
    lease: &str,
    error: Option<&str>,
    actor: &Actor,
) -> Result<bool> {
    let mut tx = super::begin_write(pool).await?;
    let row = sqlx::query(sql!(format!(
        "SELECT total, done, failed FROM rewrap_jobs
         WHERE job_id = $1 AND lease_owner = $2 AND state = 'running'{}",
        dialect::FOR_UPDATE
    )))
    .bind(&job.job_id)
    .bind(lease)
    .fetch_optional(&mut *tx)
    .await
    .context("read rewrap job")?;
    let Some(row) = row else {
        return Ok(false);
    };
    let what = "decode rewrap job";
    let total: i64 = row.try_get("total").context(what)?;
    let done: i64 = row.try_get("done").context(what)?;
    let failed: i64 = row.try_get("failed").context(what)?;
    let state = if failed > 0 || error.is_some() {
        RewrapState::Failed
    } else {
        RewrapState::Succeeded
    };
    let now = clock.rfc3339();
    sqlx::query(
        "UPDATE rewrap_jobs SET state = $2, error = $3, finished_at = $4, updated_at = $4,
             lease_owner = NULL, lease_until = NULL
         WHERE job_id = $1",
    )
    .bind(&job.job_id)
    .bind(state.as_str())
    .bind(error)
    .bind(&now)
    .execute(&mut *tx)
    .await
    .context("finish rewrap job")?;
    audit::insert(
        &mut tx,
        clock,
        job.tenant_id.as_str(),
        actor,
        "rewrap.finish",
        Some(json!({ "job_id": job.job_id, "state": "running" })),
        Some(json!({
            "job_id": job.job_id, "target_key_id": job.target_key_id, "state": state.as_str(),
            "total": total, "done": done, "failed": failed, "error": error,
        })),
    )
    .await?;
    tx.commit().await.context("commit rewrap job")?;
    Ok(true)
}
