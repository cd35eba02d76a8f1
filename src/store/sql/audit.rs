//! The audit log: one record per change, written in the change's transaction.

use std::sync::Arc;

use serde_json::Value;
use sqlx::Row as _;

use super::dialect::{self, Conn, Db};
use super::Row;
use crate::clock::Clock;
use crate::domain::{Actor, AuditRecord, Result};
use crate::store::coalesce::BoxFuture;
use crate::store::{audit_time_bound, AuditFilter, Context};

/// Write an audit record on `conn`, inside the caller's transaction.
///
/// Boxed, so a batch's future that calls it is `Send` for every lifetime (sqlx's executors
/// otherwise trip rustc's higher-ranked lifetime inference in a spawned task).
pub(in super::super) fn insert<'a>(
    conn: &'a mut Conn,
    clock: &'a Arc<dyn Clock>,
    tenant: &'a str,
    actor: &'a Actor,
    action: &'a str,
    before: Option<Value>,
    after: Option<Value>,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        sqlx::query(
            "INSERT INTO audit_log (at, tenant_id, actor, request_id, action, before, after)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(clock.rfc3339())
        .bind(tenant)
        .bind(&actor.actor)
        .bind(actor.request_id.as_deref())
        .bind(action)
        .bind(before.map(|v| v.to_string()))
        .bind(after.map(|v| v.to_string()))
        .execute(conn)
        .await
        .context("write audit record")?;
        Ok(())
    })
}

fn from_row(row: &Row) -> Result<AuditRecord> {
    let what = "decode audit record";
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(AuditRecord {
        id: row.try_get("id").context(what)?,
        at: row.try_get("at").context(what)?,
        tenant_id: row.try_get("tenant_id").context(what)?,
        actor: row.try_get("actor").context(what)?,
        request_id: row.try_get("request_id").context(what)?,
        action: row.try_get("action").context(what)?,
        before: json(row.try_get("before").context(what)?),
        after: json(row.try_get("after").context(what)?),
    })
}

/// The records `filter` selects, oldest first. `at` is compared bytewise
/// (`dialect::AUDIT_AT`): every `at` and every bound has the same fixed-width UTC form
/// (see [`audit_time_bound`]).
pub(in super::super) async fn list(
    pool: &sqlx::Pool<Db>,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>> {
    let at = dialect::AUDIT_AT;
    let mut q = sqlx::QueryBuilder::<Db>::new(if filter.limit.is_some() {
        "SELECT * FROM ("
    } else {
        ""
    });
    q.push(
        "SELECT id, at, tenant_id, actor, request_id, action, before, after
         FROM audit_log WHERE 1 = 1",
    );
    if let Some(tenant) = &filter.tenant {
        q.push(" AND tenant_id = ").push_bind(tenant.as_str());
    }
    if let Some(actor) = &filter.actor {
        q.push(" AND actor = ").push_bind(actor.as_str());
    }
    if let Some(since) = filter.since {
        q.push(format!(" AND {at} >= "))
            .push_bind(audit_time_bound(since));
    }
    if let Some(until) = filter.until {
        q.push(format!(" AND {at} < "))
            .push_bind(audit_time_bound(until));
    }
    match filter.limit {
        // The most recent `limit`, listed oldest first.
        Some(limit) => {
            q.push(" ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(limit))
                .push(") AS recent ORDER BY id");
        }
        None => {
            q.push(" ORDER BY id");
        }
    }
    let rows = q.build().fetch_all(pool).await.context("read audit log")?;
    rows.iter().map(from_row).collect()
}
