//! Change events (`domain::events`): written in the transaction of the change they report,
//! read in id order by every process's follower, pruned by age.

use std::sync::Arc;

use sqlx::Row as _;

use super::dialect::{self, Conn, Db};
use super::Row;
use crate::clock::Clock;
use crate::domain::events::{Change, Event, MAX_LISTED_REPOSITORIES};
use crate::domain::{KeyState, Result, TenantId};
use crate::store::coalesce::BoxFuture;
use crate::store::{sql, Context};

/// Write an event on `conn`, inside the caller's transaction, after everything else it
/// writes (the ordering lock is its last lock). Its id.
pub(in super::super) fn insert<'a>(
    conn: &'a mut Conn,
    clock: &'a Arc<dyn Clock>,
    tenant: &'a str,
    change: &'a Change,
) -> BoxFuture<'a, Result<i64>> {
    Box::pin(async move {
        let body =
            serde_json::to_string(change).map_err(|e| crate::store::db_error("encode event", e))?;
        dialect::lock_events(&mut *conn)
            .await
            .context("event lock")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (tenant_id, kind, body, at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(tenant)
        .bind(change.kind())
        .bind(body)
        .bind(clock.rfc3339())
        .fetch_one(&mut *conn)
        .await
        .context("write event")?;
        Ok(id)
    })
}

fn from_row(row: &Row) -> Result<Event> {
    let what = "decode event";
    let body: String = row.try_get("body").context(what)?;
    Ok(Event {
        id: row.try_get("id").context(what)?,
        tenant_id: row.try_get("tenant_id").context(what)?,
        at: row.try_get("at").context(what)?,
        change: serde_json::from_str(&body).unwrap_or_else(|e| {
            // One unreadable event must not stop every follower behind it.
            tracing::warn!(error = %e, "events: an event that does not decode is passed over");
            Change::Unknown
        }),
    })
}

/// At most `limit` events after `after`, oldest first.
pub(in super::super) async fn after(
    pool: &sqlx::Pool<Db>,
    after: i64,
    limit: u32,
) -> Result<Vec<Event>> {
    let rows = sqlx::query(
        "SELECT id, tenant_id, body, at FROM events WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .context("read events")?;
    rows.iter().map(from_row).collect()
}

/// The newest id pruned (0: none).
pub(in super::super) async fn pruned_through(pool: &sqlx::Pool<Db>) -> Result<i64> {
    sqlx::query_scalar("SELECT pruned_through FROM events_pruned WHERE only_row = 1")
        .fetch_optional(pool)
        .await
        .context("read events")
        .map(Option::unwrap_or_default)
}

/// The newest id given (0: none yet), pruned or not.
pub(in super::super) async fn latest_id(pool: &sqlx::Pool<Db>) -> Result<i64> {
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events")
        .fetch_one(pool)
        .await
        .context("read events")?;
    Ok(newest.unwrap_or(0).max(pruned_through(pool).await?))
}

/// Delete the events written before `before` (fixed-width UTC text, as `at`); how many.
pub(in super::super) async fn prune(pool: &sqlx::Pool<Db>, before: &str) -> Result<u64> {
    let mut tx = super::begin_write(pool).await?;
    let newest: Option<i64> = sqlx::query_scalar(sql!(format!(
        "SELECT MAX(id) FROM events WHERE {at} < $1",
        at = dialect::AUDIT_AT
    )))
    .bind(before)
    .fetch_one(&mut *tx)
    .await
    .context("prune events")?;
    let Some(newest) = newest else {
        return Ok(0);
    };
    let deleted = sqlx::query("DELETE FROM events WHERE id <= $1")
        .bind(newest)
        .execute(&mut *tx)
        .await
        .context("prune events")?
        .rows_affected();
    sqlx::query(
        "UPDATE events_pruned SET pruned_through = $1
         WHERE only_row = 1 AND pruned_through < $1",
    )
    .bind(newest)
    .execute(&mut *tx)
    .await
    .context("prune events")?;
    tx.commit().await.context("commit prune")?;
    Ok(deleted)
}

/// A key's state as someone saw it now (`None`: gone), and what they knew of it before
/// (`previous`: `None` when they knew nothing). Raises `key_state_changed`, once whoever
/// sees a change first, when the state differs from the last one an event recorded (or,
/// for a key no event has recorded, from `previous`). The event's id, if one was raised.
pub(in super::super) async fn observe_key_state(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    tenant: &TenantId,
    key_id: &str,
    previous: Option<Option<KeyState>>,
    now: Option<KeyState>,
) -> Result<Option<i64>> {
    let code = |s: Option<KeyState>| s.map(|s| i64::from(s.code()));
    // Most calls change nothing (the recorded state is the one seen, or nothing is
    // recorded and nothing was known): a plain read decides that, without a write lock.
    let recorded: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT CAST(state AS BIGINT) FROM key_states_seen WHERE tenant_id = $1 AND key_id = $2",
    )
    .bind(tenant.as_str())
    .bind(key_id)
    .fetch_optional(pool)
    .await
    .context("read key state")?;
    match recorded {
        Some(state) if state == code(now) => return Ok(None),
        None if previous.is_none_or(|p| p == now) => return Ok(None),
        _ => {}
    }
    let mut tx = super::begin_write(pool).await?;
    super::lock_tenant(&mut tx, "key_state", tenant.as_str()).await?;
    let seen: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT CAST(state AS BIGINT) FROM key_states_seen WHERE tenant_id = $1 AND key_id = $2",
    )
    .bind(tenant.as_str())
    .bind(key_id)
    .fetch_optional(&mut *tx)
    .await
    .context("read key state")?;
    let old = match seen {
        Some(state) => state.and_then(KeyState::from_code),
        None => match previous {
            Some(previous) => previous,
            None => return Ok(None),
        },
    };
    if old == now {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO key_states_seen (tenant_id, key_id, state) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, key_id) DO UPDATE SET state = excluded.state",
    )
    .bind(tenant.as_str())
    .bind(key_id)
    .bind(code(now))
    .execute(&mut *tx)
    .await
    .context("write key state")?;
    let repositories: Vec<i64> = sqlx::query_scalar(sql!(format!(
        "SELECT CAST(repo_id AS BIGINT) FROM repositories
         WHERE tenant_id = $1 AND cmk_key_id = $2 AND encrypted = {TRUE} AND shredded_at IS NULL
         ORDER BY repo_id LIMIT $3",
        TRUE = dialect::TRUE
    )))
    .bind(tenant.as_str())
    .bind(key_id)
    .bind(i64::from(MAX_LISTED_REPOSITORIES))
    .fetch_all(&mut *tx)
    .await
    .context("read repositories")?;
    let total: i64 = if repositories.len() < MAX_LISTED_REPOSITORIES as usize {
        repositories.len() as i64
    } else {
        sqlx::query_scalar(sql!(format!(
            "SELECT COUNT(*) FROM repositories
             WHERE tenant_id = $1 AND cmk_key_id = $2 AND encrypted = {TRUE}
                 AND shredded_at IS NULL",
            TRUE = dialect::TRUE
        )))
        .bind(tenant.as_str())
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await
        .context("count repositories")?
    };
    let change = Change::KeyStateChanged {
        key_id: key_id.to_owned(),
        old_state: old,
        new_state: now,
        repositories,
        repositories_total: u64::try_from(total).unwrap_or(0),
    };
    let id = insert(&mut tx, clock, tenant.as_str(), &change).await?;
    tx.commit().await.context("commit key state")?;
    Ok(Some(id))
}
