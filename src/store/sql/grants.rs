//! Tenants' KMS grants and their `permit_public` setting.

use std::sync::Arc;

use sqlx::Row as _;

use super::dialect::{Conn, Db};
use super::Row;
use super::{audit, events};
use crate::clock::Clock;
use crate::domain::events::Change;
use crate::domain::{Actor, Grant, PermitPublic, Result, TenantId};
use crate::store::Context;

pub(crate) fn grant_from_row(tenant: &TenantId, row: &Row) -> Result<Grant> {
    let what = "decode grant";
    Ok(Grant {
        tenant_id: tenant.clone(),
        granted_by: row.try_get("granted_by").context(what)?,
        granted_at: row.try_get("granted_at").context(what)?,
    })
}

/// The grant's audit form.
fn grant_json(grant: &Grant) -> serde_json::Value {
    serde_json::json!({
        "assumed": true, "granted_by": grant.granted_by, "granted_at": grant.granted_at
    })
}

/// Record the grant (idempotent: the first grant's who and when are kept, and the audit
/// record's `before` shows them).
pub(crate) async fn put(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    tenant: &TenantId,
    actor: &Actor,
) -> Result<Grant> {
    let mut tx = super::begin_write(pool).await?;
    // Serialise grant writers of this tenant, so `before` is what the upsert finds.
    super::lock_tenant(&mut tx, "grant", tenant.as_str()).await?;
    let before = sqlx::query("SELECT granted_by, granted_at FROM kms_grants WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await
        .context("read grant")?
        .map(|r| grant_from_row(tenant, &r))
        .transpose()?;
    let row = sqlx::query(
        "INSERT INTO kms_grants (tenant_id, granted_by, granted_at) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE SET tenant_id = excluded.tenant_id
         RETURNING granted_by, granted_at",
    )
    .bind(tenant.as_str())
    .bind(&actor.actor)
    .bind(clock.rfc3339())
    .fetch_one(&mut *tx)
    .await
    .context("write grant")?;
    let grant = grant_from_row(tenant, &row)?;
    audit::insert(
        &mut tx,
        clock,
        tenant.as_str(),
        actor,
        "kms_grant.create",
        before.as_ref().map(grant_json),
        Some(grant_json(&grant)),
    )
    .await?;
    if before.is_none() && withdrawn_before(&mut tx, tenant).await? {
        // The tenant's data keys may be released again. (A first grant has nothing yet to
        // restore, and raises nothing.)
        events::insert(&mut tx, clock, tenant.as_str(), &Change::GrantRestored).await?;
    }
    tx.commit().await.context("commit grant")?;
    Ok(grant)
}

/// Whether the tenant ever withdrew a grant (its audit log says so, for ever: events are
/// pruned).
async fn withdrawn_before(conn: &mut Conn, tenant: &TenantId) -> Result<bool> {
    sqlx::query_scalar::<_, i64>(
        "SELECT CAST(1 AS BIGINT) FROM audit_log
         WHERE tenant_id = $1 AND action = 'kms_grant.delete' LIMIT 1",
    )
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await
    .context("read grant history")
    .map(|found| found.is_some())
}

/// Withdraw the grant: delete its row, with its audit record (`before`: the grant), in one
/// transaction. The grant that was withdrawn, or `None` (and nothing written) when there
/// was none. The tenant's settings and wrapped data keys are kept.
pub(crate) async fn delete(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    tenant: &TenantId,
    actor: &Actor,
) -> Result<Option<Grant>> {
    let mut tx = super::begin_write(pool).await?;
    super::lock_tenant(&mut tx, "grant", tenant.as_str()).await?;
    let before =
        sqlx::query("DELETE FROM kms_grants WHERE tenant_id = $1 RETURNING granted_by, granted_at")
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await
            .context("delete grant")?
            .map(|r| grant_from_row(tenant, &r))
            .transpose()?;
    let Some(before) = before else {
        return Ok(None);
    };
    audit::insert(
        &mut tx,
        clock,
        tenant.as_str(),
        actor,
        "kms_grant.delete",
        Some(grant_json(&before)),
        None,
    )
    .await?;
    events::insert(&mut tx, clock, tenant.as_str(), &Change::GrantWithdrawn).await?;
    tx.commit().await.context("commit grant withdrawal")?;
    Ok(Some(before))
}

pub(crate) fn permit_from_row(row: &Row) -> Result<Option<PermitPublic>> {
    let value: &str = row.try_get("permit_public").context("decode tenant")?;
    Ok(PermitPublic::parse(value))
}

pub(crate) async fn set_permit_public(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    tenant: &TenantId,
    value: PermitPublic,
    actor: &Actor,
) -> Result<()> {
    let mut tx = super::begin_write(pool).await?;
    super::lock_tenant(&mut tx, "tenant", tenant.as_str()).await?;
    let before: Option<String> =
        sqlx::query_scalar("SELECT permit_public FROM tenants WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await
            .context("read tenant")?;
    sqlx::query(
        "INSERT INTO tenants (tenant_id, permit_public, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE SET
             permit_public = excluded.permit_public, updated_at = excluded.updated_at",
    )
    .bind(tenant.as_str())
    .bind(value.as_str())
    .bind(clock.rfc3339())
    .execute(&mut *tx)
    .await
    .context("write tenant")?;
    audit::insert(
        &mut tx,
        clock,
        tenant.as_str(),
        actor,
        "tenant.set_permit_public",
        before.map(|b| serde_json::json!({ "permit_public": b })),
        Some(serde_json::json!({ "permit_public": value.as_str() })),
    )
    .await?;
    tx.commit().await.context("commit tenant")
}
