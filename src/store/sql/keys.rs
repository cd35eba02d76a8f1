//! The local KMS's keys: material sealed under the root key, one row per key.

use std::sync::Arc;

use sqlx::Row as _;

use super::audit;
use super::dialect::{self, Conn, Db};
use super::Row;
use crate::clock::Clock;
use crate::domain::{Actor, Error, KeyState, Result, TenantId};
use crate::store::{sql, to_json, unique_violation, Context, KeyChange, StoredKey};

pub(crate) const COLUMNS: &str =
    "key_id, tenant_id, alias, origin, key_state, material, deletion_at, created_at";

/// A `key_state` column's value.
pub(crate) fn state(row: &Row) -> Result<KeyState> {
    let code: i32 = row.try_get("key_state").context("decode key")?;
    KeyState::from_code(i64::from(code))
        .ok_or_else(|| Error::Store(format!("invalid key_state {code} in database")))
}

pub(crate) fn from_row(row: &Row) -> Result<StoredKey> {
    let what = "decode key";
    Ok(StoredKey {
        key_id: row.try_get("key_id").context(what)?,
        tenant_id: row.try_get("tenant_id").context(what)?,
        alias: row.try_get("alias").context(what)?,
        origin: row.try_get("origin").context(what)?,
        state: state(row)?,
        material: row.try_get("material").context(what)?,
        deletion_at: row.try_get("deletion_at").context(what)?,
        created_at: row.try_get("created_at").context(what)?,
    })
}

/// Insert a key row (also the bulk load's).
pub(crate) async fn insert_row(conn: &mut Conn, key: &StoredKey) -> sqlx::Result<()> {
    sqlx::query(sql!(format!(
        "INSERT INTO kms_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )))
    .bind(&key.key_id)
    .bind(&key.tenant_id)
    .bind(&key.alias)
    .bind(&key.origin)
    .bind(i32::from(key.state.code()))
    .bind(key.material.as_deref())
    .bind(key.deletion_at)
    .bind(&key.created_at)
    .execute(conn)
    .await
    .map(|_| ())
}

pub(crate) async fn insert(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    key: &StoredKey,
    actor: &Actor,
) -> Result<()> {
    let mut tx = super::begin_write(pool).await?;
    insert_row(&mut tx, key).await.map_err(|e| {
        if unique_violation(&e) {
            Error::AlreadyExists(format!("a key with alias {}", key.alias))
        } else {
            crate::store::db_error("write key", e)
        }
    })?;
    audit::insert(
        &mut tx,
        clock,
        &key.tenant_id,
        actor,
        "kms.create_key",
        None,
        to_json(key),
    )
    .await?;
    tx.commit().await.context("commit key")
}

pub(crate) async fn list(pool: &sqlx::Pool<Db>, tenant: &TenantId) -> Result<Vec<StoredKey>> {
    let rows = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM kms_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
    )))
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await
    .context("list keys")?;
    rows.iter().map(from_row).collect()
}

/// Apply `change` to a key of `tenant`, with an audit record named `action`, in one
/// transaction that holds the key's row.
pub(crate) async fn update(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    tenant: &TenantId,
    key_id: &str,
    action: &str,
    actor: &Actor,
    change: KeyChange<'_>,
) -> Result<StoredKey> {
    let mut tx = super::begin_write(pool).await?;
    let row = sqlx::query(sql!(format!(
        "SELECT {COLUMNS} FROM kms_keys WHERE tenant_id = $1 AND key_id = $2{}",
        dialect::FOR_UPDATE
    )))
    .bind(tenant.as_str())
    .bind(key_id)
    .fetch_optional(&mut *tx)
    .await
    .context("read key")?;
    let before = row
        .as_ref()
        .map(from_row)
        .transpose()?
        .ok_or_else(|| Error::KeyNotFound {
            key_id: key_id.to_owned(),
        })?;
    let after = change(&before)?;
    sqlx::query(
        "UPDATE kms_keys SET key_state = $3, material = $4, deletion_at = $5
         WHERE tenant_id = $1 AND key_id = $2",
    )
    .bind(tenant.as_str())
    .bind(key_id)
    .bind(i32::from(after.state.code()))
    .bind(after.material.as_deref())
    .bind(after.deletion_at)
    .execute(&mut *tx)
    .await
    .context("write key")?;
    audit::insert(
        &mut tx,
        clock,
        tenant.as_str(),
        actor,
        action,
        to_json(&before),
        to_json(&after),
    )
    .await?;
    tx.commit().await.context("commit key")?;
    Ok(after)
}
