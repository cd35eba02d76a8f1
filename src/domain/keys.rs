//! A tenant's keys through the service: their lifecycle (create, enable, disable, schedule
//! and cancel deletion, import material) and the impact interlock. Every change of a key's
//! state made by repocrypt goes through here, so that what must follow a change (the
//! key-state cache, the released keys, the audit of a refusal or a forced change) happens in
//! one place.
//!
//! The interlock: disabling a key, or scheduling its deletion, stops the release of the
//! data key of every repository it wraps. While any repository depends on the key the
//! service refuses ([`Error::KeyInUse`], with the count) unless the caller forces it; both
//! the refusal and the forced change are audited with the count.

use serde_json::json;

use super::error::{Error, Result};
use super::ports::{KeyInfo, KeyOrigin};
use super::repository::{Page, Repository};
use super::service::Service;
use super::types::{Actor, KeyState, TenantId};

/// The repositories that depend on a key: how many in all, and a page of them.
#[derive(Debug, Clone)]
pub struct KeyImpact {
    /// The key id as asked for, or as the KMS names it when it was asked for by alias or
    /// ARN.
    pub key_id: String,
    /// How many repositories of the tenant depend on the key (encrypted, not shredded,
    /// their data key wrapped by it).
    pub total: u64,
    /// The page asked for, by repository id.
    pub repositories: Vec<Repository>,
}

/// A change that stops the release of the data keys a key wraps.
#[derive(Debug, Clone, Copy)]
enum Cutting {
    Disable,
    ScheduleDeletion { pending_days: u32 },
}

impl Cutting {
    /// The verb of the refusal's message.
    fn op(self) -> &'static str {
        match self {
            Cutting::Disable => "disable",
            Cutting::ScheduleDeletion { .. } => "schedule the deletion of",
        }
    }

    /// The audit action of the change (as the KMS records it), which `.refused` and
    /// `.forced` extend.
    fn action(self) -> &'static str {
        match self {
            Cutting::Disable => "kms.disable_key",
            Cutting::ScheduleDeletion { .. } => "kms.schedule_key_deletion",
        }
    }
}

impl Service {
    // ---- impact ----------------------------------------------------------------------

    /// The tenant's repositories that depend on `key_id`: the count and a page, by id. A key
    /// the tenant does not have (another tenant's included) has none.
    pub async fn key_impact(
        &self,
        tenant: &TenantId,
        key_id: &str,
        page: Page,
    ) -> Result<KeyImpact> {
        let mut key_id = key_id.to_owned();
        let mut total = self.store.count_key_repositories(tenant, &key_id).await?;
        // Repositories name their key by the KMS's own id; an alias or ARN (AWS) is
        // resolved, in this tenant's KMS only, when it names none itself.
        if total == 0 && names_indirectly(&key_id) {
            if let Some(info) = self.kms.describe_key(tenant, &key_id).await? {
                key_id = info.key_id;
                total = self.store.count_key_repositories(tenant, &key_id).await?;
            }
        }
        let repositories = if total == 0 {
            Vec::new()
        } else {
            self.store
                .list_key_repositories(tenant, &key_id, page)
                .await?
        };
        Ok(KeyImpact {
            key_id,
            total,
            repositories,
        })
    }

    // ---- lifecycle -------------------------------------------------------------------

    pub async fn create_key(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        alias: &str,
        origin: KeyOrigin,
        inactive: bool,
    ) -> Result<KeyInfo> {
        let info = self
            .kms
            .create_key(tenant, alias, origin, inactive, actor)
            .await?;
        // A new key: no repository depends on it, nothing to report.
        self.key_changed(tenant, None, &info).await;
        Ok(info)
    }

    pub async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<KeyInfo>> {
        self.kms.list_keys(tenant).await
    }

    pub async fn enable_key(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        key_id: &str,
    ) -> Result<KeyInfo> {
        let before = self.kms.describe_key(tenant, key_id).await?;
        let info = self.kms.enable_key(tenant, key_id, actor).await?;
        self.key_changed(tenant, before.map(|b| Some(b.key_state)), &info)
            .await;
        Ok(info)
    }

    /// Disable the key: refused while repositories depend on it, unless `force`.
    pub async fn disable_key(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        key_id: &str,
        force: bool,
    ) -> Result<KeyInfo> {
        self.cut(actor, tenant, key_id, Cutting::Disable, force)
            .await
    }

    /// Schedule the key's deletion: refused while repositories depend on it, unless
    /// `force`.
    pub async fn schedule_key_deletion(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        key_id: &str,
        pending_days: u32,
        force: bool,
    ) -> Result<KeyInfo> {
        let change = Cutting::ScheduleDeletion { pending_days };
        self.cut(actor, tenant, key_id, change, force).await
    }

    pub async fn cancel_key_deletion(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        key_id: &str,
    ) -> Result<KeyInfo> {
        let before = self.kms.describe_key(tenant, key_id).await?;
        let info = self.kms.cancel_key_deletion(tenant, key_id, actor).await?;
        self.key_changed(tenant, before.map(|b| Some(b.key_state)), &info)
            .await;
        Ok(info)
    }

    pub async fn import_key_material(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        key_id: &str,
        material: Option<Vec<u8>>,
    ) -> Result<KeyInfo> {
        let before = self.kms.describe_key(tenant, key_id).await?;
        let info = self
            .kms
            .import_key_material(tenant, key_id, material, actor)
            .await?;
        self.key_changed(tenant, before.map(|b| Some(b.key_state)), &info)
            .await;
        Ok(info)
    }

    /// A change that cuts the key's repositories off: counted first (under the KMS's own id
    /// of the key), refused and audited while any depend on it, unless forced; a forced
    /// change is audited before it is made, so it is never made unrecorded.
    async fn cut(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        key_id: &str,
        change: Cutting,
        force: bool,
    ) -> Result<KeyInfo> {
        let before = self.kms.describe_key(tenant, key_id).await?;
        let canonical = before.as_ref().map_or(key_id, |b| b.key_id.as_str());
        let repositories = self.store.count_key_repositories(tenant, canonical).await?;
        if repositories > 0 {
            let mut record = json!({
                "key_id": canonical,
                "key_state": before.as_ref().map(|b| b.key_state.code()),
                "repositories": repositories,
            });
            if let Cutting::ScheduleDeletion { pending_days } = change {
                record["pending_days"] = json!(pending_days);
            }
            let outcome = if force { "forced" } else { "refused" };
            let action = format!("{}.{outcome}", change.action());
            self.store
                .record_audit(tenant, actor, &action, None, Some(record))
                .await?;
            if !force {
                return Err(Error::KeyInUse {
                    key_id: canonical.to_owned(),
                    repositories,
                    op: change.op(),
                });
            }
            tracing::warn!(
                tenant = %tenant,
                key_id = canonical,
                repositories,
                action = change.action(),
                "forced: the key's repositories no longer get their data keys"
            );
        }
        let info = match change {
            Cutting::Disable => self.kms.disable_key(tenant, key_id, actor).await?,
            Cutting::ScheduleDeletion { pending_days } => {
                self.kms
                    .schedule_key_deletion(tenant, key_id, pending_days, actor)
                    .await?
            }
        };
        self.key_changed(tenant, before.map(|b| Some(b.key_state)), &info)
            .await;
        Ok(info)
    }

    /// After every change of a key's state made through the service: this process's caches
    /// know the new state at once (a release here is refused without waiting for the TTL),
    /// a key that no longer releases forgets the data keys it released, and the change is
    /// recorded (`key_state_changed`, raised once: here, before a command exits, rather
    /// than by the next process whose refresh sees it). `before`: the key's state before
    /// (`None` for a key that did not exist, or was not seen).
    async fn key_changed(
        &self,
        tenant: &TenantId,
        before: Option<Option<KeyState>>,
        info: &KeyInfo,
    ) {
        self.cache
            .put(tenant.as_str(), &info.key_id, Some(info), self.cache.now());
        if info.key_state != KeyState::Enabled {
            self.released
                .forget_key(tenant.as_str(), Some(info.key_id.as_str()));
        }
        self.watch
            .changed(tenant, &info.key_id, before, Some(info.key_state))
            .await;
    }
}

/// Whether a key is named by alias or ARN rather than by its id.
fn names_indirectly(key_id: &str) -> bool {
    key_id.starts_with("alias/") || key_id.starts_with("arn:")
}
