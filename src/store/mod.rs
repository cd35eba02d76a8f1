//! Persistence: one trait, one implementation per database, each with its own migrations.

pub mod cache;
mod coalesce;
mod dialect;
pub mod postgres;
pub mod sqlite;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::{
    Actor, AuditRecord, Error, Grant, KeyState, PermitPublic, Project, ProjectId, Result, Role,
    Setting, SettingDraft, TenantId,
};

/// A pure function from the stored setting (if any) and whether the tenant has granted
/// KMS use, to the new setting. The store runs it inside the write transaction, so the
/// decision and the write see the same data. It owns what it needs, so a store may hand it
/// to a writer task that commits many of them together.
pub type SettingPlan =
    std::sync::Arc<dyn Fn(Option<&Setting>, bool) -> Result<SettingDraft> + Send + Sync>;

/// A change to a local-KMS key, run inside the write transaction.
pub type KeyChange<'a> = &'a (dyn Fn(&StoredKey) -> Result<StoredKey> + Send + Sync);

/// A key of the local KMS as the store keeps it. `material` is encrypted under the root
/// key; it never leaves the `kms::local` module in clear.
#[derive(Clone, PartialEq, Serialize)]
pub struct StoredKey {
    pub key_id: String,
    pub tenant_id: String,
    pub alias: String,
    pub origin: String,
    pub state: KeyState,
    #[serde(skip)]
    pub material: Option<Vec<u8>>,
    /// Unix seconds at which a key pending deletion is deleted.
    pub deletion_at: Option<i64>,
    pub created_at: String,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("key_id", &self.key_id)
            .field("tenant_id", &self.tenant_id)
            .field("alias", &self.alias)
            .field("state", &self.state)
            .field("material", &self.material.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An AK/SK credential. `sealed_secret` is the secret key encrypted under the root key.
#[derive(Clone, PartialEq, Serialize)]
pub struct Credential {
    pub access_key: String,
    pub tenant_id: String,
    pub user_id: String,
    pub role: Role,
    #[serde(skip)]
    pub sealed_secret: Vec<u8>,
    pub created_at: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("access_key", &self.access_key)
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .field("sealed_secret", &"<redacted>")
            .finish()
    }
}

/// One tenant of a bulk load (`repocrypt bench load`): a local-KMS key, a grant and a
/// setting that uses the key.
#[derive(Debug, Clone)]
pub struct BulkTenant {
    pub key: StoredKey,
    pub setting: crate::domain::SettingDraft,
}

/// The key row that came with a setting from [`Store::get_setting_with_key`].
#[derive(Debug)]
pub enum JoinedKey {
    /// Not read (the setting came from a cache, or the backend reads keys separately).
    NotRead,
    /// The row of the setting's key, if there is one.
    Read(Option<StoredKey>),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip, for readiness checks.
    async fn ping(&self) -> Result<()>;

    async fn get_setting(&self, tenant: &TenantId) -> Result<Option<Setting>>;
    /// The setting and, in the same read where the backend can, the local KMS's row of
    /// the key it names. The default reads the setting alone.
    async fn get_setting_with_key(
        &self,
        tenant: &TenantId,
    ) -> Result<(Option<Setting>, JoinedKey)> {
        Ok((self.get_setting(tenant).await?, JoinedKey::NotRead))
    }
    /// Read the setting and the grant, run `plan`, write the result and its audit record,
    /// all in one transaction. The id is assigned on first write and kept afterwards.
    async fn update_setting(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        plan: SettingPlan,
    ) -> Result<Setting>;

    async fn get_grant(&self, tenant: &TenantId) -> Result<Option<Grant>>;
    /// Record the grant (idempotent: the first grant's who and when are kept) and audit it.
    async fn put_grant(&self, tenant: &TenantId, actor: &Actor) -> Result<Grant>;

    async fn get_permit_public(&self, tenant: &TenantId) -> Result<Option<PermitPublic>>;
    async fn set_permit_public(
        &self,
        tenant: &TenantId,
        value: PermitPublic,
        actor: &Actor,
    ) -> Result<()>;

    /// Fails with [`Error::AlreadyExists`] when the project id is taken.
    async fn add_project(&self, project: &Project, actor: &Actor) -> Result<()>;
    async fn get_project(&self, project_id: &ProjectId) -> Result<Option<Project>>;
    /// Fails with [`Error::ProjectNotFound`] when the project does not exist.
    async fn add_project_member(
        &self,
        project_id: &ProjectId,
        tenant: &TenantId,
        user_id: &str,
        actor: &Actor,
    ) -> Result<()>;
    async fn is_project_member(
        &self,
        project_id: &ProjectId,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<bool>;

    /// The audit records `filter` selects, oldest first.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;
    /// Insert many new tenants in one transaction (benchmarks, migrations from another
    /// system), with one audit record for the batch under the tenant `*`.
    async fn bulk_load(&self, tenants: &[BulkTenant], actor: &Actor) -> Result<()>;
    /// Record a change made outside the database (an external KMS's key lifecycle), in a
    /// transaction of its own. A caller that must fail closed writes a record *before* it
    /// makes the change and does not make it when this fails.
    async fn record_audit(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        action: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> Result<()>;

    async fn kms_insert_key(&self, key: &StoredKey, actor: &Actor) -> Result<()>;
    async fn kms_get_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<StoredKey>>;
    async fn kms_list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>>;
    /// Apply `change` to a key of `tenant` in one transaction, with an audit record
    /// named `action`. Fails with [`Error::KeyNotFound`] for an unknown key.
    async fn kms_update_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        action: &str,
        actor: &Actor,
        change: KeyChange<'_>,
    ) -> Result<StoredKey>;

    async fn credential_insert(&self, credential: &Credential, actor: &Actor) -> Result<()>;
    async fn credential_get(&self, access_key: &str) -> Result<Option<Credential>>;
    async fn credential_list(&self, tenant: &TenantId) -> Result<Vec<Credential>>;
    /// `false` when there was no such access key.
    async fn credential_delete(&self, access_key: &str, actor: &Actor) -> Result<bool>;

    /// The counters of this store's in-memory caches, for `/metrics`.
    fn cache_stats(&self) -> Vec<crate::metrics::CacheStats> {
        Vec::new()
    }
}

/// Which audit records to list. Every field narrows the selection; the default selects
/// every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Records of this tenant only (`*` for bulk loads).
    pub tenant: Option<TenantId>,
    /// Records of this actor only: an API caller's user id, or `cli`.
    pub actor: Option<String>,
    /// Records written at or after this time.
    pub since: Option<SystemTime>,
    /// Records written before this time.
    pub until: Option<SystemTime>,
    /// Only the `limit` most recent of the records selected (still listed oldest first).
    pub limit: Option<u32>,
}

impl AuditFilter {
    /// Every record of one tenant.
    pub fn tenant(tenant: &TenantId) -> Self {
        AuditFilter {
            tenant: Some(tenant.clone()),
            ..Self::default()
        }
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
    }
}

pub(crate) fn parse_role(value: &str) -> Result<Role> {
    match value {
        "admin" => Ok(Role::Admin),
        "member" => Ok(Role::Member),
        other => Err(Error::Store(format!("invalid role {other} in database"))),
    }
}

/// A database's "unique constraint violated", whichever the database.
pub(crate) fn unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

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
