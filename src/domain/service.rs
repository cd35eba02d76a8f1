//! The operations of the API and of the admin commands, on top of the store and KMS traits.

use std::sync::Arc;

use super::data_keys::ReleasedKeys;
use super::error::{Error, Result};
use super::events::KeyWatch;
use super::key_states::{KeyStateCache, Lookup};
use super::model::*;
use super::ports::{CacheStats, JoinedKey, KeyInfo, Kms, Store};
use super::types::*;
use crate::home::Home;

/// How often an update is retried when the key id changed under it.
const MAX_UPDATE_ATTEMPTS: usize = 8;

pub struct Service {
    pub(super) store: Arc<dyn Store>,
    pub(super) kms: Arc<dyn Kms>,
    pub(super) cache: Arc<KeyStateCache>,
    /// Data keys released within the key-state TTL (`domain::broker`).
    pub(super) released: ReleasedKeys,
    /// The rewrap jobs this process runs now (`domain::rewrap`).
    pub(super) rewraps: super::rewrap::RunningHere,
    /// Where the key-state changes this process sees are reported (`domain::events`).
    pub(super) watch: KeyWatch,
    /// Shared with every report (a GET's answer clones no string for them).
    region: Arc<str>,
    region_type: Arc<str>,
    default_permit_public: PermitPublic,
    /// The runtime the service was made on, where the tasks it starts run (`crate::home`):
    /// in `serve` the main one, not the connection thread of the request that asked.
    pub(super) home: Home,
}

/// The KMS answer for the key a PUT will store, fetched before the transaction.
#[derive(Clone)]
struct KeyLookup {
    key_id: String,
    info: Option<KeyInfo>,
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        kms: Arc<dyn Kms>,
        cache: KeyStateCache,
        region: String,
        region_type: String,
    ) -> Self {
        let released = ReleasedKeys::new(cache.ttl(), cache.capacity(), cache.clock());
        Service {
            watch: KeyWatch::new(store.clone()),
            store,
            kms,
            released,
            rewraps: Default::default(),
            cache: Arc::new(cache),
            region: region.into(),
            region_type: region_type.into(),
            default_permit_public: PermitPublic::Deny,
            home: Home::here(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Where this process's key-state changes go; what its event follower wakes on.
    pub fn key_watch(&self) -> &KeyWatch {
        &self.watch
    }

    /// This process committed an event: its follower reads it at once.
    pub(super) fn event_written(&self) {
        self.watch.poke();
    }

    /// Cache the KMS's answer about a key, read at `read_at`; a change of its state is
    /// reported as an event. `compare`: also when this process saw no change, compare the
    /// answer with the state the last event recorded (one read, in the background: the
    /// release path does, so that a change only another process saw the start of is not
    /// missed).
    pub(super) fn remember_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        info: Option<&KeyInfo>,
        read_at: std::time::Instant,
        compare: bool,
    ) {
        let now = info.map(|i| i.key_state);
        match self.cache.put(tenant.as_str(), key_id, info, read_at) {
            Some(previous) => self
                .watch
                .changed_later(tenant, key_id, Some(previous), now),
            None if compare => self.watch.changed_later(tenant, key_id, None, now),
            None => {}
        }
    }

    /// The counters of every in-memory cache behind the service, for `/metrics`.
    pub fn cache_stats(&self) -> Vec<CacheStats> {
        let (hits, misses) = self.cache.hits_and_misses();
        let (released_hits, released_misses) = self.released.hits_and_misses();
        let mut stats = vec![
            CacheStats {
                name: "key_state",
                hits,
                misses,
            },
            CacheStats {
                name: "data_key",
                hits: released_hits,
                misses: released_misses,
            },
        ];
        stats.extend(self.store.cache_stats());
        stats
    }

    // ---- GET setting -------------------------------------------------------------------

    pub async fn show_setting(&self, tenant: &TenantId) -> Result<SettingReport> {
        // A local KMS keeps its keys in the database: a setting read from there brings
        // its key's row along (one read, not two, when the setting is not cached).
        let (setting, joined) = if self.kms.keys_in_store() {
            self.store.get_setting_with_key(tenant).await?
        } else {
            (self.store.get_setting(tenant).await?, JoinedKey::NotRead)
        };
        let key_state = match setting.as_ref().and_then(|s| s.cmk_key_id.as_deref()) {
            Some(key_id) => self.current_key_state(tenant, key_id, joined).await,
            None => None,
        };
        Ok(self.report(tenant, setting, key_state))
    }

    /// The key's state now: from the cache within its TTL, else from the key's row read
    /// with the setting or from the KMS, else (KMS unreachable) the last known state.
    async fn current_key_state(
        &self,
        tenant: &TenantId,
        key_id: &str,
        joined: JoinedKey,
    ) -> Option<KeyState> {
        let stale = match self.cache.lookup(tenant.as_str(), key_id) {
            Lookup::Fresh(state) => return state,
            Lookup::Refresh(state) => {
                self.refresh_key_state(tenant, key_id);
                return state;
            }
            Lookup::Stale(state) => Some(state),
            Lookup::Unknown => None,
        };
        let read_at = self.cache.now();
        let described = match joined {
            JoinedKey::Read(row) => self.kms.describe_stored(row),
            JoinedKey::NotRead => None,
        };
        let answer = match described {
            Some(info) => Ok(info),
            None => self.kms.describe_key(tenant, key_id).await,
        };
        match answer {
            Ok(info) => {
                let state = info.as_ref().map(|i| i.key_state);
                self.remember_key(tenant, key_id, info.as_ref(), read_at, false);
                state
            }
            Err(e) => {
                tracing::warn!(
                    tenant = %tenant,
                    key_id,
                    error = %e.internal_detail().unwrap_or("unknown"),
                    known = stale.is_some(),
                    "KMS unreachable: answering with the last known key state"
                );
                // Serve the last known state for another TTL before asking again, so that
                // during an outage GETs do not each wait for the KMS's timeout.
                let last = stale.flatten();
                if last.is_some() {
                    self.cache.touch(tenant.as_str(), key_id);
                }
                last
            }
        }
    }

    /// Ask the KMS for a key's state in the background and cache the answer, so that the
    /// request that found the entry late in its TTL does not wait for it. A service made
    /// outside a tokio runtime (never the case in `serve`) lets the entry age to its TTL.
    pub(super) fn refresh_key_state(&self, tenant: &TenantId, key_id: &str) {
        let (kms, cache, watch) = (self.kms.clone(), self.cache.clone(), self.watch.clone());
        let refresh = {
            let (tenant, key_id) = (tenant.clone(), key_id.to_owned());
            async move {
                let read_at = cache.now();
                match kms.describe_key(&tenant, &key_id).await {
                    Ok(info) => {
                        let now = info.as_ref().map(|i| i.key_state);
                        // A refresh is of a key in use: compare with the recorded state too.
                        let previous = cache.put(tenant.as_str(), &key_id, info.as_ref(), read_at);
                        watch.changed(&tenant, &key_id, previous, now).await;
                    }
                    Err(e) => {
                        tracing::debug!(
                            tenant = %tenant,
                            key_id,
                            error = %e.internal_detail().unwrap_or("unknown"),
                            "refreshing a key state ahead of its TTL failed"
                        );
                        cache.refresh_failed(tenant.as_str(), &key_id);
                    }
                }
            }
        };
        if !self.home.spawn(refresh) {
            self.cache.refresh_failed(tenant.as_str(), key_id);
        }
    }

    fn report(
        &self,
        tenant: &TenantId,
        setting: Option<Setting>,
        key_state: Option<KeyState>,
    ) -> SettingReport {
        SettingReport {
            tenant_id: tenant.clone(),
            setting,
            key_state,
            region: self.region.clone(),
            region_type: self.region_type.clone(),
        }
    }

    // ---- PUT setting -------------------------------------------------------------------

    pub async fn update_setting(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        patch: SettingPatch,
    ) -> Result<SettingReport> {
        if let Some(body_tenant) = &patch.tenant_id {
            if body_tenant != tenant.as_str() {
                return Err(Error::TenantMismatch {
                    body: truncate(body_tenant, 64),
                });
            }
        }
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let current = self.store.get_setting(tenant).await?;
            let lookup = match key_to_look_up(&patch, current.as_ref()) {
                Some(key_id) => {
                    // A write decides on the KMS's answer now, not on the cache. Only keys
                    // that exist are remembered, under the KMS's own id: a tenant naming
                    // made-up keys must not push other tenants' states out of the cache.
                    let read_at = self.cache.now();
                    let info = self.kms.describe_key(tenant, &key_id).await?;
                    if let Some(found) = &info {
                        self.remember_key(tenant, &found.key_id, Some(found), read_at, false);
                    }
                    Some(KeyLookup { key_id, info })
                }
                None => None,
            };
            let (t, p, l) = (tenant.clone(), patch.clone(), lookup.clone());
            let plan = Arc::new(move |cur: Option<&Setting>, granted: bool| {
                plan_update(&t, &p, cur, granted, l.as_ref())
            });
            match self.store.update_setting(tenant, actor, plan).await {
                Err(Error::Conflict) => continue,
                Err(e) => return Err(e),
                Ok(saved) => {
                    let key_state = match (&lookup, saved.cmk_key_id.as_deref()) {
                        (Some(l), Some(k))
                            if l.key_id == k || l.info.as_ref().is_some_and(|i| i.key_id == k) =>
                        {
                            l.info.as_ref().map(|i| i.key_state)
                        }
                        (_, Some(k)) => self.current_key_state(tenant, k, JoinedKey::NotRead).await,
                        (_, None) => None,
                    };
                    return Ok(self.report(tenant, Some(saved), key_state));
                }
            }
        }
        Err(Error::Conflict)
    }

    // ---- KMS grant -----------------------------------------------------------------------

    /// Record that the tenant delegates KMS use to this service, once the service can
    /// reach the tenant's KMS. Idempotent.
    pub async fn create_grant(&self, actor: &Actor, tenant: &TenantId) -> Result<()> {
        self.kms.check_access(tenant).await?;
        self.store.put_grant(tenant, actor).await?;
        // A grant after none raised `grant_restored`.
        self.event_written();
        Ok(())
    }

    /// Withdraw the tenant's KMS grant: from then on no data key of the tenant is released
    /// (403 `GrantWithdrawn`), no KMS setting is accepted and no encrypted repository is
    /// registered, until a new grant. The data keys are kept. `true` when there was a grant
    /// (withdrawing none is not an error, and writes nothing).
    pub async fn delete_grant(&self, actor: &Actor, tenant: &TenantId) -> Result<bool> {
        let withdrawn = self.store.delete_grant(tenant, actor).await;
        // The keys released here are forgotten at once, whatever the outcome.
        self.released.forget_key(tenant.as_str(), None);
        let withdrawn = withdrawn?.is_some();
        if withdrawn {
            // It raised `grant_withdrawn`: the other processes forget theirs from it.
            self.event_written();
        }
        Ok(withdrawn)
    }

    /// Whether the tenant has granted KMS use (`assumed`).
    pub async fn show_grant(&self, tenant: &TenantId) -> Result<bool> {
        Ok(self.store.get_grant(tenant).await?.is_some())
    }

    // ---- GET /v4/tenant/setting -------------------------------------------------------

    pub async fn show_tenant_setting(
        &self,
        caller: &Identity,
        project_id: Option<&str>,
    ) -> Result<TenantSetting> {
        // A service principal has no tenant (its tenant field is a marker) and reads no
        // setting, as on the other settings operations.
        if caller.is_service() {
            return Err(Error::ServiceNotAllowed);
        }
        let owner = match project_id {
            None => caller.tenant_id.clone(),
            Some(raw) => {
                let project_id = ProjectId::parse(raw)?;
                let project = self
                    .store
                    .get_project(&project_id)
                    .await?
                    .ok_or_else(|| Error::ProjectNotFound(project_id.as_str().to_owned()))?;
                let owner = TenantId::parse(project.tenant_id)?;
                if owner != caller.tenant_id
                    && !self
                        .store
                        .is_project_member(&project_id, &caller.tenant_id, &caller.user_id)
                        .await?
                {
                    return Err(Error::NotProjectMember);
                }
                owner
            }
        };
        let setting = self.store.get_setting(&owner).await?;
        let permit_public = self
            .store
            .get_permit_public(&owner)
            .await?
            .unwrap_or(self.default_permit_public);
        Ok(TenantSetting {
            default_encryption_enabled: setting
                .as_ref()
                .is_some_and(|s| s.default_encryption_enabled),
            encryption_type: setting.and_then(|s| s.encryption_type),
            permit_public,
        })
    }

    // ---- admin (CLI) -------------------------------------------------------------------

    pub async fn add_project(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        project_id: &str,
        name: &str,
    ) -> Result<Project> {
        let project_id = ProjectId::parse(project_id)?;
        let name = CmkText::parse("name", name)?;
        let project = Project {
            project_id: project_id.as_str().to_owned(),
            tenant_id: tenant.as_str().to_owned(),
            name: name.into_string(),
        };
        self.store.add_project(&project, actor).await?;
        Ok(project)
    }

    pub async fn add_project_member(
        &self,
        actor: &Actor,
        project_id: &str,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<()> {
        let project_id = ProjectId::parse(project_id)?;
        let user = CmkText::parse("user", user_id)?;
        self.store
            .add_project_member(&project_id, tenant, user.as_str(), actor)
            .await
    }

    pub async fn set_permit_public(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        value: PermitPublic,
    ) -> Result<()> {
        self.store.set_permit_public(tenant, value, actor).await
    }
}

/// Which key (if any) a PUT must ask the KMS about.
fn key_to_look_up(patch: &SettingPatch, current: Option<&Setting>) -> Option<String> {
    if !needs_key_lookup(patch, current) {
        return None;
    }
    patch
        .cmk_key_id
        .clone()
        .or_else(|| current.and_then(|c| c.cmk_key_id.clone()))
}

fn resulting_type(patch: &SettingPatch, current: Option<&Setting>) -> Option<EncryptionType> {
    patch
        .encryption_type
        .or_else(|| current.and_then(|c| c.encryption_type))
}

/// The KMS rules apply when the result is KMS and the request asks for something that
/// depends on the key: choosing KMS, choosing a key, or turning default encryption on.
/// A request that only turns things off never needs the KMS.
fn kms_rules_apply(patch: &SettingPatch, current: Option<&Setting>) -> bool {
    resulting_type(patch, current) == Some(EncryptionType::Kms)
        && (patch.encryption_type.is_some()
            || patch.cmk_key_id.is_some()
            || patch.cmk_key_name.is_some()
            || patch.default_encryption_enabled == Some(true))
}

fn needs_key_lookup(patch: &SettingPatch, current: Option<&Setting>) -> bool {
    patch.cmk_key_id.is_some() || patch.cmk_key_name.is_some() || kms_rules_apply(patch, current)
}

/// The pure decision: the stored setting, the grant and the KMS's answer in, the new
/// setting (or the reason to refuse) out.
fn plan_update(
    tenant: &TenantId,
    patch: &SettingPatch,
    current: Option<&Setting>,
    granted: bool,
    lookup: Option<&KeyLookup>,
) -> Result<SettingDraft> {
    let encryption_type = resulting_type(patch, current);
    let mut key_id = patch
        .cmk_key_id
        .clone()
        .or_else(|| current.and_then(|c| c.cmk_key_id.clone()));

    // The key the KMS was asked about must still be the key we are about to store.
    if needs_key_lookup(patch, current) {
        match (&key_id, lookup) {
            (Some(k), Some(l)) if &l.key_id == k => {}
            (Some(_), _) => return Err(Error::Conflict),
            (None, _) => {}
        }
    }

    let mut default_on = patch
        .default_encryption_enabled
        .unwrap_or_else(|| current.is_some_and(|c| c.default_encryption_enabled));
    if patch.encryption_type == Some(EncryptionType::Normal)
        && patch.default_encryption_enabled.is_none()
    {
        default_on = false; // switching to normal turns default encryption off
    }
    if default_on && encryption_type != Some(EncryptionType::Kms) {
        return Err(Error::DefaultNeedsKms);
    }

    let kms_rules = kms_rules_apply(patch, current);
    if (kms_rules || patch.cmk_key_name.is_some()) && key_id.is_none() {
        return Err(Error::MissingCmkKeyId);
    }
    if kms_rules && !granted {
        return Err(Error::KmsGrantMissing {
            tenant: tenant.as_str().to_owned(),
        });
    }

    // Keep the stored name unless a lookup tells us the key's name now.
    let mut key_name = match (current, &patch.cmk_key_id) {
        (Some(c), Some(new_id)) if c.cmk_key_id.as_ref() != Some(new_id) => None,
        (Some(c), _) => c.cmk_key_name.clone(),
        (None, _) => None,
    };
    let mut resolved = None;
    if let (Some(k), Some(l)) = (&key_id, lookup) {
        let info = l.info.as_ref().ok_or_else(|| Error::KeyNotFound {
            key_id: truncate(k, 64),
        })?;
        if let Some(given) = &patch.cmk_key_name {
            if given != &info.key_name {
                return Err(Error::KeyNameMismatch {
                    given: truncate(given, 64),
                    key_id: info.key_id.clone(),
                    actual: info.key_name.clone(),
                });
            }
        }
        if kms_rules && info.key_state != KeyState::Enabled {
            return Err(Error::KeyNotEnabled {
                key_id: info.key_id.clone(),
                state: info.key_state.describe(),
                code: info.key_state.code(),
            });
        }
        key_name = Some(info.key_name.clone());
        resolved = Some(info.key_id.clone());
    }
    // Store the KMS's own id for the key, even when the caller named it by ARN or alias.
    if resolved.is_some() {
        key_id = resolved;
    }

    Ok(SettingDraft {
        encryption_type,
        default_encryption_enabled: default_on,
        cmk_key_id: key_id,
        cmk_key_name: key_name,
    })
}
