//! AK/SK credentials: the secret is stored sealed under the root key.

use std::sync::Arc;

use sqlx::Row as _;

use super::audit;
use super::dialect::Db;
use super::Row;
use crate::clock::Clock;
use crate::domain::{Actor, Result, TenantId};
use crate::store::{parse_role, role_str, sql, to_json, Context, Credential};

const COLUMNS: &str = "access_key, tenant_id, user_id, role, secret, created_at";

fn from_row(row: &Row) -> Result<Credential> {
    let what = "decode credential";
    let role: String = row.try_get("role").context(what)?;
    Ok(Credential {
        access_key: row.try_get("access_key").context(what)?,
        tenant_id: row.try_get("tenant_id").context(what)?,
        user_id: row.try_get("user_id").context(what)?,
        role: parse_role(&role)?,
        sealed_secret: row.try_get("secret").context(what)?,
        created_at: row.try_get("created_at").context(what)?,
    })
}

pub(in super::super) async fn insert(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    credential: &Credential,
    actor: &Actor,
) -> Result<()> {
    let mut tx = super::begin_write(pool).await?;
    sqlx::query(sql!(format!(
        "INSERT INTO credentials ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
    )))
    .bind(&credential.access_key)
    .bind(&credential.tenant_id)
    .bind(&credential.user_id)
    .bind(role_str(credential.role))
    .bind(&credential.sealed_secret)
    .bind(&credential.created_at)
    .execute(&mut *tx)
    .await
    .context("write credential")?;
    audit::insert(
        &mut tx,
        clock,
        &credential.tenant_id,
        actor,
        "credential.create",
        None,
        to_json(credential),
    )
    .await?;
    tx.commit().await.context("commit credential")
}

pub(in super::super) async fn get(
    pool: &sqlx::Pool<Db>,
    access_key: &str,
) -> Result<Option<Credential>> {
    let row = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM credentials WHERE access_key = $1"
    )))
    .bind(access_key)
    .fetch_optional(pool)
    .await
    .context("read credential")?;
    row.as_ref().map(from_row).transpose()
}

pub(in super::super) async fn list(
    pool: &sqlx::Pool<Db>,
    tenant: &TenantId,
) -> Result<Vec<Credential>> {
    let rows = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM credentials WHERE tenant_id = $1 ORDER BY created_at, access_key"
    )))
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await
    .context("list credentials")?;
    rows.iter().map(from_row).collect()
}

/// `false` when there was no such access key.
pub(in super::super) async fn delete(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    access_key: &str,
    actor: &Actor,
) -> Result<bool> {
    let mut tx = super::begin_write(pool).await?;
    let row = sqlx::query(sql!(format!(
        "DELETE FROM credentials WHERE access_key = $1 RETURNING {COLUMNS}"
    )))
    .bind(access_key)
    .fetch_optional(&mut *tx)
    .await
    .context("delete credential")?;
    let Some(deleted) = row.as_ref().map(from_row).transpose()? else {
        return Ok(false);
    };
    audit::insert(
        &mut tx,
        clock,
        &deleted.tenant_id,
        actor,
        "credential.delete",
        to_json(&deleted),
        None,
    )
    .await?;
    tx.commit().await.context("commit credential")?;
    Ok(true)
}
