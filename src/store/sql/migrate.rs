//! Forward-only, versioned migrations, applied in order on start.

use std::sync::Arc;

use super::dialect::{self, Db};
use crate::clock::Clock;
use crate::domain::{Error, Result};
use crate::store::Context;

/// Migrate the database up to `target` (`None`: the newest of `migrations`), in one
/// transaction that holds the dialect's migration lock (replicas starting together).
/// A database newer than this binary is refused.
pub(crate) async fn run(
    pool: &sqlx::Pool<Db>,
    clock: &Arc<dyn Clock>,
    migrations: &[(i64, &str, &str)],
    target: Option<i64>,
) -> Result<()> {
    let mut tx = super::begin_write(pool).await?;
    dialect::lock_migrations(&mut tx).await?;
    sqlx::query(dialect::SCHEMA_MIGRATIONS_TABLE)
        .execute(&mut *tx)
        .await
        .context("migrations table")?;
    let current: i64 = sqlx::query_scalar(SCHEMA_VERSION)
        .fetch_one(&mut *tx)
        .await
        .context("read schema version")?;
    let newest = migrations.last().map(|m| m.0).unwrap_or(0);
    if current > newest {
        return Err(Error::Store(format!(
            "the database is at schema version {current}, newer than this binary's {newest}: upgrade repocrypt"
        )));
    }
    let target = target.unwrap_or(newest);
    for (version, name, text) in migrations.iter().filter(|m| m.0 > current && m.0 <= target) {
        sqlx::raw_sql(text)
            .execute(&mut *tx)
            .await
            .context(&format!("migration {version} ({name})"))?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(version)
        .bind(name)
        .bind(clock.rfc3339())
        .execute(&mut *tx)
        .await
        .context("record migration")?;
    }
    tx.commit().await.context("commit migrations")
}

const SCHEMA_VERSION: &str =
    "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations";

/// The schema version the database is at.
pub(crate) async fn version(pool: &sqlx::Pool<Db>) -> Result<i64> {
    sqlx::query_scalar(SCHEMA_VERSION)
        .fetch_one(pool)
        .await
        .context("read schema version")
}
