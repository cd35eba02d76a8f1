//! The ports: what the core needs from the outside, owned by the core. The store
//! (`store::sqlite`, `store::postgres`) and the KMS backends (`kms::local`, `kms::aws`)
//! implement them; nothing here knows of SQL, HTTP or a command line.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

use super::events::Event;
use super::{
    Actor, AuditRecord, DataKey, EncryptionContext, GeneratedKey, Grant, KeyState, Page,
    PermitPublic, Project, ProjectId, RepoForRelease, RepoId, RepoQuery, Repository, Result,
    RewrapCommit, RewrapJob, Setting, SettingDraft, Shredded, TenantId,
};

// ---- storage -------------------------------------------------------------------------

/// A pure function from the stored setting (if any) and whether the tenant has granted
/// KMS use, to the new setting. The store runs it inside the write transaction, so the
/// decision and the write see the same data. It owns what it needs, so a store may hand it
/// to a writer task that commits many of them together.
pub type SettingPlan =
    std::sync::Arc<dyn Fn(Option<&Setting>, bool) -> Result<SettingDraft> + Send + Sync>;

/// A key as the service's own database keeps it, for a KMS whose keys live there (the
/// local KMS): what a read of a setting can bring of its key in the same query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub alias: String,
    pub state: KeyState,
    /// Unix seconds at which a key pending deletion is deleted.
    pub deletion_at: Option<i64>,
}

/// The key record that came with a setting from [`Store::get_setting_with_key`].
#[derive(Debug)]
pub enum JoinedKey {
    /// Not read (the setting came from a cache, or the backend reads keys separately).
    NotRead,
    /// The record of the setting's key, if there is one.
    Read(Option<KeyRecord>),
}

/// A cache's counters, read at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    pub name: &'static str,
    pub hits: u64,
    pub misses: u64,
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
    /// Withdraw the grant, with its audit record (`kms_grant.delete`), in one transaction:
    /// the grant withdrawn, or `None` (nothing written) when there was none. Settings and
    /// wrapped data keys stay.
    async fn delete_grant(&self, tenant: &TenantId, actor: &Actor) -> Result<Option<Grant>>;

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

    /// Register a repository, with its audit record, in one transaction: the stored
    /// repository (its `created_at` set now), or `None` (and no write) when the tenant
    /// already has a repository with this id.
    async fn insert_repository(
        &self,
        repository: &Repository,
        actor: &Actor,
    ) -> Result<Option<Repository>>;
    async fn get_repository(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
    ) -> Result<Option<Repository>>;
    /// The repository and, in the same read, whether its tenant's KMS grant stands.
    async fn get_repository_for_release(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
    ) -> Result<Option<RepoForRelease>>;
    /// A page of the tenant's encrypted repositories whose data key is not destroyed.
    async fn list_encrypted_repositories(
        &self,
        tenant: &TenantId,
        query: &RepoQuery,
    ) -> Result<Vec<Repository>>;
    /// A page of the tenant's repositories that depend on the CMK `key_id` (encrypted, data
    /// key not destroyed, wrapped by that key), by id.
    async fn list_key_repositories(
        &self,
        tenant: &TenantId,
        key_id: &str,
        page: Page,
    ) -> Result<Vec<Repository>>;
    /// How many repositories [`list_key_repositories`](Store::list_key_repositories)
    /// selects in all.
    async fn count_key_repositories(&self, tenant: &TenantId, key_id: &str) -> Result<u64>;
    /// Every repository of the tenant, encrypted or not, shredded or not, by id.
    async fn list_repositories(&self, tenant: &TenantId) -> Result<Vec<Repository>>;
    /// Destroy the wrapped data key (overwritten, not flagged), with its audit record.
    async fn shred_repository(
        &self,
        tenant: &TenantId,
        repo_id: RepoId,
        actor: &Actor,
    ) -> Result<Shredded>;

    // ---- rewrap jobs (`domain::rewrap`) ----

    /// Start a rewrap job of the tenant under `target_key_id`, with its audit record, in
    /// one transaction that counts its work (the tenant's encrypted, not shredded
    /// repositories under another key): the job and `true`; or, when one is running
    /// already, that one and `false` (nothing written). A job with nothing to do is
    /// finished at once.
    async fn start_rewrap_job(
        &self,
        tenant: &TenantId,
        job_id: &str,
        target_key_id: &str,
        actor: &Actor,
    ) -> Result<(RewrapJob, bool)>;
    async fn get_rewrap_job(&self, tenant: &TenantId, job_id: &str) -> Result<Option<RewrapJob>>;
    async fn running_rewrap_job(&self, tenant: &TenantId) -> Result<Option<RewrapJob>>;
    /// Every running job (of any tenant) whose lease is free or expired.
    async fn unleased_rewrap_jobs(&self) -> Result<Vec<RewrapJob>>;
    /// Take a running job's lease for `ttl` if it is free or expired: whether it was taken.
    async fn claim_rewrap_job(&self, job_id: &str, lease: &str, ttl: Duration) -> Result<bool>;
    /// Give a lease back (it is free at once).
    async fn release_rewrap_lease(&self, job_id: &str, lease: &str) -> Result<()>;
    /// Up to `limit` repositories the job still has to rewrap, by id, after `after`.
    async fn rewrap_work(
        &self,
        job: &RewrapJob,
        after: Option<RepoId>,
        limit: u32,
    ) -> Result<Vec<Repository>>;
    /// One repository's rewrap, in one transaction: while the job's lease is `lease` (and
    /// renewed by it), replace the repository's CMK and wrapped key with the target and
    /// `new_wrapped` only if they are still `repo`'s, write its audit record and count it.
    async fn commit_rewrap(
        &self,
        job: &RewrapJob,
        lease: &str,
        repo: &Repository,
        new_wrapped: &[u8],
        actor: &Actor,
    ) -> Result<RewrapCommit>;
    /// Record that a repository was not rewrapped and why, with its audit record, while
    /// the lease is `lease`: whether it was (false: the lease is lost).
    async fn record_rewrap_failure(
        &self,
        job: &RewrapJob,
        lease: &str,
        repo_id: RepoId,
        reason: &str,
        actor: &Actor,
    ) -> Result<bool>;
    /// Finish the job (succeeded, or failed when repositories failed or `error` stopped
    /// it), with its audit record, while the lease is `lease`: whether it was.
    async fn finish_rewrap_job(
        &self,
        job: &RewrapJob,
        lease: &str,
        error: Option<&str>,
        actor: &Actor,
    ) -> Result<bool>;

    // ---- change events (`domain::events`) ----------------------------------------------

    /// At most `limit` events after id `after`, oldest first.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>>;
    /// The newest event id given (0: none), pruned or not.
    async fn latest_event_id(&self) -> Result<i64>;
    /// The newest event id pruned (0: none): a stream resuming before it has missed events.
    async fn events_pruned_through(&self) -> Result<i64>;
    /// Delete the events older than `before`; how many.
    async fn prune_events(&self, before: SystemTime) -> Result<u64>;
    /// A key's state as the service saw it now (`None`: gone from the KMS), and what it knew
    /// of it before (`None`: nothing). Raises `key_state_changed` once, whichever process
    /// sees the change first; the event's id if it was raised.
    async fn observe_key_state(
        &self,
        tenant: &TenantId,
        key_id: &str,
        previous: Option<Option<KeyState>>,
        now: Option<KeyState>,
    ) -> Result<Option<i64>>;
    /// Another process changed `tenant`'s rows (an event said so): forget what the store
    /// caches of that repository (`None`: of the tenant's grant and every repository).
    fn forget_cached(&self, _tenant: &TenantId, _repo_id: Option<RepoId>) {}

    /// The counters of this store's in-memory caches, for `/metrics`.
    fn cache_stats(&self) -> Vec<CacheStats> {
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

// ---- key management ------------------------------------------------------------------

/// What the API needs to know of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub key_id: String,
    pub key_name: String,
    pub key_state: KeyState,
}

/// Where a key's material comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Generated by the KMS.
    Kms,
    /// Imported later (the key starts in state 5, pending import).
    External,
}

impl KeyOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Kms => "kms",
            KeyOrigin::External => "external",
        }
    }
}

/// A key management service. Every call is scoped to a tenant: a key of another tenant
/// is reported as not found, never as forbidden, so a tenant cannot learn of it.
#[async_trait]
pub trait Kms: Send + Sync + 'static {
    /// Check that the KMS as a whole answers (readiness checks).
    async fn ping(&self) -> Result<()>;
    /// Check that the service can reach this tenant's KMS with its credentials.
    async fn check_access(&self, tenant: &TenantId) -> Result<()>;
    /// The key with this id in this tenant's KMS, or `None`.
    async fn describe_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<KeyInfo>>;
    /// For a KMS that keeps its keys in the service's own database (the local KMS): what
    /// [`describe_key`](Kms::describe_key) would answer, from the key's record (`None`: no
    /// record), so that one read can bring a setting and its key
    /// ([`Store::get_setting_with_key`]). `None` for a KMS whose keys live elsewhere.
    fn describe_stored(&self, _key: Option<KeyRecord>) -> Option<Option<KeyInfo>> {
        None
    }
    /// Whether [`describe_stored`](Kms::describe_stored) answers.
    fn keys_in_store(&self) -> bool {
        false
    }

    async fn create_key(
        &self,
        tenant: &TenantId,
        alias: &str,
        origin: KeyOrigin,
        inactive: bool,
        actor: &Actor,
    ) -> Result<KeyInfo>;
    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<KeyInfo>>;
    async fn enable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo>;
    async fn disable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo>;
    async fn schedule_key_deletion(
        &self,
        tenant: &TenantId,
        key_id: &str,
        pending_days: u32,
        actor: &Actor,
    ) -> Result<KeyInfo>;
    async fn cancel_key_deletion(
        &self,
        tenant: &TenantId,
        key_id: &str,
        actor: &Actor,
    ) -> Result<KeyInfo>;
    /// Import material into an external key (state 5 to 2). `None` generates it.
    async fn import_key_material(
        &self,
        tenant: &TenantId,
        key_id: &str,
        material: Option<Vec<u8>>,
        actor: &Actor,
    ) -> Result<KeyInfo>;

    /// A fresh 256-bit data key, in clear and wrapped by the tenant's key `key_id` (which
    /// must be enabled), bound to `context`: AWS `GenerateDataKey`.
    async fn generate_data_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey>;
    /// Unwrap a data key wrapped by [`generate_data_key`](Kms::generate_data_key) under
    /// the same key and context: AWS `Decrypt`. A wrapped key that does not unwrap (altered,
    /// or bound to another context) is [`Error::DataKeyInvalid`] for `repo_id`.
    async fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<DataKey>;
    /// Re-wrap a data key wrapped under `old_key_id` (with `context`) under `new_key_id`,
    /// with the same context: the same key in clear, which never leaves the KMS (AWS
    /// `ReEncrypt`; the local KMS unwraps and wraps, zeroizing the key in between). Both
    /// keys must be the tenant's and enabled: an old key that is not enabled or gone is
    /// [`Error::KeyRefused`] or [`Error::CmkGone`] naming it, a new one that is not is
    /// [`Error::KeyRefused`] or [`Error::KeyNotFound`] naming the new key; a wrapped key
    /// that does not unwrap is [`Error::DataKeyInvalid`] for `repo_id`.
    async fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        old_key_id: &str,
        new_key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<Vec<u8>>;
}
