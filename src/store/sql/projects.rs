//! Projects and their members (for `GET /v4/tenant/setting?project_id=`).

use std::sync::Arc;

use sqlx::Row as _;

use super::audit;
use super::dialect::{self, Db};
use crate::clock::Clock;
use crate::domain::{Actor, Error, Project, ProjectId, Result, TenantId};
use crate::store::{sql, to_json, unique_violation, Context};

/// Fails with [`Error::AlreadyExists`] when the project id is taken.
pub(crate) async fn add(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    project: &Project,
    actor: &Actor,
) -> Result<()> {
    let mut tx = super::begin_write(pool).await?;
    sqlx::query(
        "INSERT INTO projects (project_id, tenant_id, name, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&project.project_id)
    .bind(&project.tenant_id)
    .bind(&project.name)
    .bind(clock.rfc3339())
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if unique_violation(&e) {
            Error::AlreadyExists(format!("project {}", project.project_id))
        } else {
            crate::store::db_error("write project", e)
        }
    })?;
    audit::insert(
        &mut tx,
        clock,
        &project.tenant_id,
        actor,
        "project.add",
        None,
        to_json(project),
    )
    .await?;
    tx.commit().await.context("commit project")
}

pub(crate) async fn get(pool: &sqlx::Pool<Db>, project_id: &ProjectId) -> Result<Option<Project>> {
    let row = sqlx::query("SELECT project_id, tenant_id, name FROM projects WHERE project_id = $1")
        .bind(project_id.as_str())
        .fetch_optional(pool)
        .await
        .context("read project")?;
    row.map(|r| {
        let what = "decode project";
        Ok(Project {
            project_id: r.try_get("project_id").context(what)?,
            tenant_id: r.try_get("tenant_id").context(what)?,
            name: r.try_get("name").context(what)?,
        })
    })
    .transpose()
}

/// Fails with [`Error::ProjectNotFound`] when the project does not exist. Adding a member
/// twice is not an error: the audit record's `before` says it was already one.
pub(crate) async fn add_member(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    project_id: &ProjectId,
    tenant: &TenantId,
    user_id: &str,
    actor: &Actor,
) -> Result<()> {
    let mut tx = super::begin_write(pool).await?;
    let owner: Option<String> = sqlx::query_scalar(sql!(format!(
        "SELECT tenant_id FROM projects WHERE project_id = $1{}",
        dialect::FOR_SHARE
    )))
    .bind(project_id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .context("read project")?;
    let owner = owner.ok_or_else(|| Error::ProjectNotFound(project_id.as_str().to_owned()))?;
    let inserted = sqlx::query(
        "INSERT INTO project_members (project_id, tenant_id, user_id, added_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(project_id.as_str())
    .bind(tenant.as_str())
    .bind(user_id)
    .bind(clock.rfc3339())
    .execute(&mut *tx)
    .await
    .context("write project member")?;
    let after = serde_json::json!({
        "project_id": project_id.as_str(), "member_tenant_id": tenant.as_str(), "user_id": user_id
    });
    // Already a member: nothing was inserted, and `before` says so.
    let before = (inserted.rows_affected() == 0).then(|| after.clone());
    audit::insert(
        &mut tx,
        clock,
        &owner,
        actor,
        "project.add_member",
        before,
        Some(after),
    )
    .await?;
    tx.commit().await.context("commit project member")
}

pub(crate) async fn is_member(
    pool: &sqlx::Pool<Db>,
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
    .fetch_one(pool)
    .await
    .context("read project member")
}
