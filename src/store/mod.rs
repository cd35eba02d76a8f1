//! Persistence: one trait, one implementation per database, each with its own migrations.

pub mod cache;
mod coalesce;
pub(crate) mod deadline;
mod dialect;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use crate::auth::credentials::{Credential, CredentialStore};
pub use crate::domain::ports::{AuditFilter, JoinedKey, SettingPlan, Store};
#[cfg(feature = "bench")]
pub use crate::kms::local::BulkTenant;
pub use crate::kms::local::{KeyChange, KeyStore, StoredKey};

use crate::domain::{Error, Result, Role};

/// Everything the service's database keeps: the domain's [`Store`], the local KMS's
/// [`KeyStore`] and the [`CredentialStore`]. Both SQL backends are one; the app hands each
/// part to whoever needs it.
pub trait Database: Store + KeyStore + CredentialStore {
    fn keys(self: Arc<Self>) -> Arc<dyn KeyStore>;
    fn credentials(self: Arc<Self>) -> Arc<dyn CredentialStore>;
    fn settings(self: Arc<Self>) -> Arc<dyn Store>;
}

impl<T: Store + KeyStore + CredentialStore> Database for T {
    fn keys(self: Arc<Self>) -> Arc<dyn KeyStore> {
        self
    }
    fn credentials(self: Arc<Self>) -> Arc<dyn CredentialStore> {
        self
    }
    fn settings(self: Arc<Self>) -> Arc<dyn Store> {
        self
    }
}

/// Latest instant an audit time bound can name: the last millisecond of year 9999.
const MAX_AUDIT_MILLIS: u128 = 253_402_300_799_999;

/// A time bound of an [`AuditFilter`] in the form `audit_log.at` is stored in
/// (`Clock::rfc3339`: UTC, always with milliseconds, `2026-01-31T12:00:00.000Z`), so that
/// comparing the strings compares the times. Rounded up to the next millisecond, so
/// `at >= bound` and `at < bound` select exactly the records at or after, and before,
/// `time`; clamped to 1970..=9999, the years such a string can hold.
pub fn audit_time_bound(time: SystemTime) -> String {
    let nanos = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let millis = nanos.div_ceil(1_000_000).min(MAX_AUDIT_MILLIS);
    // Both casts are in range: `millis` is at most MAX_AUDIT_MILLIS.
    let secs = (millis / 1000) as u64;
    let sub_nanos = ((millis % 1000) * 1_000_000) as u32;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::new(secs, sub_nanos)).to_string()
}

/// Map a driver error to the service's error, keeping the detail for the log only.
pub(crate) fn db_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{context}: {e}"))
}

/// `?` for database calls: the driver's error becomes [`Error::Store`] with what was
/// being done, for the log (the client sees only "internal error").
pub(crate) trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, sqlx::Error> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| db_error(what, e))
    }
}

/// A query's text composed from constants (`format!`), built once per call site instead
/// of on every call. Every query is written with `$N` placeholders, which sqlx binds by
/// their number on both databases (on SQLite too, where `$N` is a named parameter: the
/// test `placeholders_bind_by_number_on_both_databases` keeps this honest).
macro_rules! sql {
    ($text:expr) => {{
        static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| $text);
        TEXT.as_str()
    }};
}
pub(crate) use sql;

/// The forward-only migrations of one database, from `migrations/<dir>/`: the same
/// versions and names on both.
macro_rules! migrations {
    ($dir:literal) => {
        &[
            (
                1,
                "init",
                include_str!(concat!("../../migrations/", $dir, "/0001_init.sql")),
            ),
            (
                2,
                "credentials",
                include_str!(concat!("../../migrations/", $dir, "/0002_credentials.sql")),
            ),
            (
                3,
                "audit_by_time",
                include_str!(concat!(
                    "../../migrations/",
                    $dir,
                    "/0003_audit_by_time.sql"
                )),
            ),
            (
                4,
                "repositories",
                include_str!(concat!("../../migrations/", $dir, "/0004_repositories.sql")),
            ),
            (
                5,
                "events",
                include_str!(concat!("../../migrations/", $dir, "/0005_events.sql")),
            ),
            (
                6,
                "rewrap_jobs",
                include_str!(concat!("../../migrations/", $dir, "/0006_rewrap_jobs.sql")),
            ),
            (
                7,
                "repositories_by_key",
                include_str!(concat!(
                    "../../migrations/",
                    $dir,
                    "/0007_repositories_by_key.sql"
                )),
            ),
        ]
    };
}
pub(crate) use migrations;

/// What an error says, for the log (a store error's detail, not its "internal error").
pub(crate) fn internal_detail(e: &Error) -> String {
    e.internal_detail()
        .map_or_else(|| e.to_string(), str::to_owned)
}

/// Each value once, in first-seen order: the array a batch query is given.
pub(crate) fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    values.filter(|v| seen.insert(*v)).collect()
}

/// The same store error for each of `n` callers of a batch (an `Error` is not `Clone`):
/// each keeps the database's error as its detail, for its request's log line.
pub(crate) fn all_fail<V>(n: usize, what: &str, e: &sqlx::Error) -> Vec<Result<V>> {
    (0..n).map(|_| Err(db_error(what, e))).collect()
}

/// JSON of a record, for audit `before`/`after`.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
        Role::Service => "service",
    }
}

pub(crate) fn parse_role(value: &str) -> Result<Role> {
    match value {
        "admin" => Ok(Role::Admin),
        "member" => Ok(Role::Member),
        "service" => Ok(Role::Service),
        other => Err(Error::Store(format!("invalid role {other} in database"))),
    }
}

/// A database's "unique constraint violated", whichever the database.
pub(crate) fn unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

#[cfg(feature = "bench")]
/// The audit record of a bulk load: how many tenants, the first and the last.
pub fn bulk_summary(tenants: &[BulkTenant]) -> serde_json::Value {
    serde_json::json!({
        "tenants": tenants.len(),
        "first": tenants.first().map(|t| t.key.tenant_id.as_str()),
        "last": tenants.last().map(|t| t.key.tenant_id.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> String {
        audit_time_bound(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn audit_time_bounds_have_the_stored_form_and_round_up() {
        // The form `Clock::rfc3339` writes.
        let clock = crate::clock::ManualClock::at_unix(1_767_225_600);
        assert_eq!(at(1_767_225_600, 0), crate::clock::Clock::rfc3339(&clock));
        assert_eq!(at(1_767_225_600, 0), "2026-01-01T00:00:00.000Z");
        assert_eq!(at(1_767_225_600, 1_000_000), "2026-01-01T00:00:00.001Z");
        // A bound between two milliseconds is the next one.
        assert_eq!(at(1_767_225_600, 1), "2026-01-01T00:00:00.001Z");
        assert_eq!(at(1_767_225_600, 999_999_999), "2026-01-01T00:00:01.000Z");
        // Out of the range the column can hold: clamped, never a panic.
        assert_eq!(
            audit_time_bound(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(at(253_402_300_799, 999_999_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(at(300_000_000_000, 0), "9999-12-31T23:59:59.999Z");
    }
}
