//! Tenants' encryption settings and their group commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::Row as _;

use super::audit;
use super::dialect::{self, Conn, Db};
use super::Row;
use crate::clock::Clock;
use crate::domain::{Actor, EncryptionType, Error, Result, Setting, SettingDraft, TenantId};
use crate::store::coalesce::BoxFuture;
use crate::store::{
    all_fail, db_error, distinct, internal_detail, sql, to_json, Context, SettingPlan,
};

pub(crate) const COLUMNS: &str =
    "id, tenant_id, encryption_type, default_encryption_enabled, cmk_key_id, cmk_key_name";

pub(crate) fn from_row(row: &Row) -> Result<Setting> {
    let what = "decode setting";
    let tenant: String = row.try_get("tenant_id").context(what)?;
    let encryption_type: Option<String> = row.try_get("encryption_type").context(what)?;
    let id: i32 = row.try_get("id").context(what)?;
    Ok(Setting {
        id: i64::from(id),
        tenant_id: TenantId::parse(tenant)?,
        encryption_type: encryption_type
            .as_deref()
            .map(EncryptionType::parse)
            .transpose()?,
        default_encryption_enabled: row.try_get("default_encryption_enabled").context(what)?,
        cmk_key_id: row.try_get("cmk_key_id").context(what)?,
        cmk_key_name: row.try_get("cmk_key_name").context(what)?,
    })
}

/// A PUT's write, handed to the store's writer (`Coalescer`), which commits the writes
/// waiting at once with [`commit_batch`].
pub(crate) struct SettingJob {
    pub(crate) tenant: TenantId,
    pub(crate) actor: Actor,
    pub(crate) plan: SettingPlan,
}

/// Commit a batch of setting writes (PUTs) in one transaction:
///
/// 1. Take every tenant's `setting:` lock (`dialect::lock_tenants`: on PostgreSQL,
///    advisory locks taken at once in the order of their keys, so that two batches of
///    this replica or another that share tenants never wait on each other in a cycle; on
///    SQLite, `BEGIN IMMEDIATE` has already serialized every writer).
/// 2. Read the batch's settings and grants, after the locks: every write of these tenants
///    committed before is seen (and, since the batch was collected before it began, every
///    write that returned before any of its PUTs arrived).
/// 3. Each PUT in turn: its plan decides on the setting as the PUTs before it in the batch
///    left it; a refusal writes nothing. Otherwise its write and its audit record run in
///    a savepoint of their own, which alone is rolled back if either fails.
/// 4. One COMMIT (one fsync for all). Only then is any PUT answered; if the COMMIT fails,
///    every PUT that was to succeed gets the error instead, so nothing is acknowledged
///    that is not durable.
///
/// Boxed, so the batch's future is `Send` for every lifetime (sqlx's executors otherwise
/// trip rustc's higher-ranked lifetime inference in a spawned task).
pub(crate) fn commit_batch<'a>(
    pool: &'a sqlx::Pool<Db>,
    clock: &'a Arc<dyn Clock>,
    jobs: &'a [SettingJob],
) -> BoxFuture<'a, Vec<Result<Setting>>> {
    Box::pin(async move {
        let n = jobs.len();
        let mut tx = match pool.begin_with(dialect::BEGIN_WRITE).await {
            Ok(tx) => tx,
            Err(e) => return all_fail(n, "begin write transaction", &e),
        };
        let tenants = distinct(jobs.iter().map(|j| j.tenant.as_str()));
        if let Err(e) = dialect::lock_tenants(&mut tx, "setting", &tenants).await {
            return all_fail(n, "tenant lock", &e);
        }
        let rows = match sqlx::query(sql!(format!(
            "SELECT {COLUMNS} FROM encryption_settings WHERE tenant_id {}",
            dialect::IN_LIST
        )))
        .bind(dialect::list(&tenants))
        .fetch_all(&mut *tx)
        .await
        {
            Ok(rows) => rows,
            Err(e) => return all_fail(n, "read setting", &e),
        };
        // Each tenant's setting as the batch has left it so far.
        let mut current: HashMap<String, Setting> = HashMap::new();
        for row in &rows {
            match from_row(row) {
                Ok(s) => {
                    current.insert(s.tenant_id.as_str().to_owned(), s);
                }
                Err(e) => {
                    let detail = internal_detail(&e);
                    return (0..n).map(|_| Err(Error::Store(detail.clone()))).collect();
                }
            }
        }
        let granted: HashSet<String> = match sqlx::query(sql!(format!(
            "SELECT tenant_id FROM kms_grants WHERE tenant_id {}",
            dialect::IN_LIST
        )))
        .bind(dialect::list(&tenants))
        .fetch_all(&mut *tx)
        .await
        {
            Ok(rows) => match rows.iter().map(|r| r.try_get("tenant_id")).collect() {
                Ok(granted) => granted,
                Err(e) => return all_fail(n, "decode grant", &e),
            },
            Err(e) => return all_fail(n, "read grant", &e),
        };
        let mut results = Vec::with_capacity(n);
        let mut open_savepoint = false;
        for job in jobs {
            let tenant = job.tenant.as_str();
            let before = current.get(tenant);
            // A refusal is decided here, before anything is written.
            let draft = match (job.plan)(before, granted.contains(tenant)) {
                Ok(draft) => draft,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            // The previous write's savepoint is released and this one's opened in one
            // round trip; COMMIT releases the last.
            let open = if open_savepoint {
                "RELEASE SAVEPOINT put; SAVEPOINT put"
            } else {
                "SAVEPOINT put"
            };
            if let Err(e) = savepoint(&mut tx, open).await {
                return all_fail(n, "savepoint", &e);
            }
            open_savepoint = true;
            let written = write(&mut tx, clock, job, before, draft).await;
            if written.is_err() {
                if let Err(e) = savepoint(&mut tx, "ROLLBACK TO SAVEPOINT put").await {
                    return all_fail(n, "savepoint", &e);
                }
            }
            if let Ok(saved) = &written {
                current.insert(tenant.to_owned(), saved.clone());
            }
            results.push(written);
        }
        match tx.commit().await {
            Ok(()) => results,
            Err(e) => results
                .into_iter()
                .map(|r| r.and_then(|_| Err(db_error("commit setting", &e))))
                .collect(),
        }
    })
}

/// Savepoint commands, one or more, as one simple query (boxed, like [`commit_batch`]).
fn savepoint<'a>(conn: &'a mut Conn, commands: &'static str) -> BoxFuture<'a, sqlx::Result<()>> {
    // A plain `&str` runs unprepared, and may hold several commands.
    Box::pin(async move { sqlx::Executor::execute(conn, commands).await.map(|_| ()) })
}

/// One PUT's write in the batch's transaction: the row and its audit record. An existing
/// row is UPDATEd (where the database can, in the statement that also writes the audit
/// record: one round trip, as the row's id and so the record's `after` are known); a new
/// row is INSERTed first for its id. Never an upsert: that would burn an id on every write
/// and exhaust the 32-bit range the API promises long before tenants do.
///
/// Boxed, like [`commit_batch`].
fn write<'a>(
    conn: &'a mut Conn,
    clock: &'a Arc<dyn Clock>,
    job: &'a SettingJob,
    current: Option<&'a Setting>,
    draft: SettingDraft,
) -> BoxFuture<'a, Result<Setting>> {
    Box::pin(async move {
        let tenant = &job.tenant;
        let now = clock.rfc3339();
        let saved = |id: i64| Setting {
            id,
            tenant_id: tenant.clone(),
            encryption_type: draft.encryption_type,
            default_encryption_enabled: draft.default_encryption_enabled,
            cmk_key_id: draft.cmk_key_id.clone(),
            cmk_key_name: draft.cmk_key_name.clone(),
        };
        let Some(current) = current else {
            let id: i32 = sqlx::query_scalar(
                "INSERT INTO encryption_settings (tenant_id, encryption_type,
                     default_encryption_enabled, cmk_key_id, cmk_key_name, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(tenant.as_str())
            .bind(draft.encryption_type.map(EncryptionType::as_str))
            .bind(draft.default_encryption_enabled)
            .bind(draft.cmk_key_id.as_deref())
            .bind(draft.cmk_key_name.as_deref())
            .bind(&now)
            .fetch_one(&mut *conn)
            .await
            .context("write setting")?;
            let saved = saved(i64::from(id));
            audit::insert(
                conn,
                clock,
                tenant.as_str(),
                &job.actor,
                "setting.update",
                None,
                to_json(&saved),
            )
            .await?;
            return Ok(saved);
        };
        let saved = saved(current.id);
        let id = i32::try_from(current.id).map_err(|e| db_error("write setting", e))?;
        let update = if dialect::DATA_MODIFYING_CTE {
            "WITH row AS (
                     UPDATE encryption_settings SET encryption_type = $2,
                         default_encryption_enabled = $3, cmk_key_id = $4, cmk_key_name = $5,
                         updated_at = $6
                     WHERE tenant_id = $1 AND id = $7 RETURNING tenant_id)
                 INSERT INTO audit_log (at, tenant_id, actor, request_id, action, before, after)
                 SELECT $6, tenant_id, $8, $9, 'setting.update', $10, $11 FROM row"
        } else {
            // The same binds; $8.. are not in the text, and the audit record follows.
            "UPDATE encryption_settings SET encryption_type = $2,
                     default_encryption_enabled = $3, cmk_key_id = $4, cmk_key_name = $5,
                     updated_at = $6
                 WHERE tenant_id = $1 AND id = $7"
        };
        let mut query = sqlx::query(update)
            .bind(tenant.as_str())
            .bind(draft.encryption_type.map(EncryptionType::as_str))
            .bind(draft.default_encryption_enabled)
            .bind(draft.cmk_key_id.as_deref())
            .bind(draft.cmk_key_name.as_deref())
            .bind(&now)
            .bind(id);
        if dialect::DATA_MODIFYING_CTE {
            query = query
                .bind(&job.actor.actor)
                .bind(job.actor.request_id.as_deref())
                .bind(to_json(current).map(|v| v.to_string()))
                .bind(to_json(&saved).map(|v| v.to_string()));
        }
        let written = query.execute(&mut *conn).await.context("write setting")?;
        // The row was read under the tenant's lock in this transaction: it is there.
        if written.rows_affected() != 1 {
            return Err(db_error(
                "write setting",
                format!("{} rows updated, expected 1", written.rows_affected()),
            ));
        }
        if !dialect::DATA_MODIFYING_CTE {
            audit::insert(
                conn,
                clock,
                tenant.as_str(),
                &job.actor,
                "setting.update",
                to_json(current),
                to_json(&saved),
            )
            .await?;
        }
        Ok(saved)
    })
}
