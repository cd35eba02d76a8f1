//! Bulk loads (`repocrypt bench load`): many new tenants in one transaction.

use super::dialect::Conn;
use super::keys;
use crate::domain::{Actor, EncryptionType, Error, Result};
use crate::store::{db_error, unique_violation, BulkTenant};

/// A bulk load's rows, one at a time, in the caller's transaction (a few thousand a
/// batch: `bench load` writes 5,000 tenants per transaction).
pub(crate) async fn insert_tenants(
    tx: &mut Conn,
    tenants: &[BulkTenant],
    actor: &Actor,
    now: &str,
) -> Result<()> {
    for t in tenants {
        let k = &t.key;
        keys::insert_row(tx, k)
            .await
            .map_err(|e| bulk_error(e, "bulk load key", &k.tenant_id))?;
        sqlx::query(
            "INSERT INTO kms_grants (tenant_id, granted_by, granted_at) VALUES ($1, $2, $3)",
        )
        .bind(&k.tenant_id)
        .bind(&actor.actor)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| bulk_error(e, "bulk load grant", &k.tenant_id))?;
        sqlx::query(
            "INSERT INTO encryption_settings (tenant_id, encryption_type,
                 default_encryption_enabled, cmk_key_id, cmk_key_name, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&k.tenant_id)
        .bind(t.setting.encryption_type.map(EncryptionType::as_str))
        .bind(t.setting.default_encryption_enabled)
        .bind(t.setting.cmk_key_id.as_deref())
        .bind(t.setting.cmk_key_name.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| bulk_error(e, "bulk load setting", &k.tenant_id))?;
    }
    Ok(())
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
