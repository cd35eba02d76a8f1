//! The embedded KMS: keys kept in the service's own database, key material encrypted
//! (AES-256-GCM) under a key derived from the root key. It follows the state rules of a
//! real KMS so that all five key states are real.

use std::sync::Arc;

use async_trait::async_trait;
use rand::RngCore;

use super::{KeyInfo, KeyOrigin, Kms, MAX_PENDING_DAYS, MIN_PENDING_DAYS};
use crate::clock::Clock;
use crate::domain::ports::KeyRecord;
use crate::domain::{
    Actor, DataKey, EncryptionContext, Error, GeneratedKey, KeyState, RepoId, Result, TenantId,
    DATA_KEY_LEN,
};
use crate::keys::{RootKey, Sealer, LABEL_KMS_WRAP};
use serde::Serialize;

/// Length of key material (AES-256).
pub const MATERIAL_LEN: usize = 32;

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

#[cfg(feature = "bench")]
/// One tenant of a bulk load (`repocrypt bench load`): a local-KMS key, a grant and a
/// setting that uses the key.
#[derive(Debug, Clone)]
pub struct BulkTenant {
    pub key: StoredKey,
    pub setting: crate::domain::SettingDraft,
}

/// What the local KMS needs from the service's database: its keys' rows, each change in a
/// transaction with its audit record. The SQL stores implement it.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Cheap round trip: the local KMS is reachable when its database is.
    async fn ping(&self) -> Result<()>;
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

    #[cfg(feature = "bench")]
    /// Insert many new tenants in one transaction (benchmarks, migrations from another
    /// system), with one audit record for the batch under the tenant `*`.
    async fn bulk_load(&self, tenants: &[BulkTenant], actor: &Actor) -> Result<()>;
}

pub struct LocalKms {
    store: Arc<dyn KeyStore>,
    wrap: Sealer,
    clock: Arc<dyn Clock>,
}

impl LocalKms {
    pub fn new(store: Arc<dyn KeyStore>, root: &RootKey, clock: Arc<dyn Clock>) -> Self {
        let wrap = Sealer::new(root, LABEL_KMS_WRAP);
        LocalKms { store, wrap, clock }
    }

    #[cfg(feature = "bench")]
    /// A new enabled key's row with fresh sealed material, not yet stored (bulk loads).
    pub fn new_key_row(&self, tenant: &TenantId, alias: &str) -> Result<StoredKey> {
        validate_alias(alias)?;
        let key_id = uuid::Uuid::new_v4().to_string();
        let mut m = [0u8; MATERIAL_LEN];
        rand::rngs::OsRng.fill_bytes(&mut m);
        Ok(StoredKey {
            material: Some(self.seal(&key_id, &m)?),
            key_id,
            tenant_id: tenant.as_str().to_owned(),
            alias: alias.to_owned(),
            origin: KeyOrigin::Kms.as_str().to_owned(),
            state: KeyState::Enabled,
            deletion_at: None,
            created_at: self.clock.rfc3339(),
        })
    }

    fn seal(&self, key_id: &str, material: &[u8]) -> Result<Vec<u8>> {
        self.wrap.seal(key_id, material)
    }

    /// A key pending deletion whose window has passed is deleted.
    /// `false` for a key past its deletion date: it is gone.
    fn is_live(&self, state: KeyState, deletion_at: Option<i64>) -> bool {
        !matches!((state, deletion_at),
            (KeyState::PendingDeletion, Some(at)) if at <= self.clock.unix_seconds() as i64)
    }

    fn live(&self, key: StoredKey) -> Option<StoredKey> {
        self.is_live(key.state, key.deletion_at).then_some(key)
    }

    async fn live_key(&self, tenant: &TenantId, key_id: &str) -> Result<StoredKey> {
        self.store
            .kms_get_key(tenant, key_id)
            .await?
            .and_then(|k| self.live(k))
            .ok_or_else(|| Error::KeyNotFound {
                key_id: key_id.to_owned(),
            })
    }

    async fn transition(
        &self,
        tenant: &TenantId,
        key_id: &str,
        action: &'static str,
        actor: &Actor,
        change: &(dyn Fn(&StoredKey) -> Result<StoredKey> + Send + Sync),
    ) -> Result<KeyInfo> {
        // Refuse keys already past their deletion date before touching the row.
        self.live_key(tenant, key_id).await?;
        let key = self
            .store
            .kms_update_key(tenant, key_id, action, actor, change)
            .await?;
        Ok(info(&key))
    }
}

/// Version byte of a wrapped data key: `1 || nonce (12) || AES-256-GCM(data key) || tag (16)`.
const WRAPPED_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const WRAPPED_LEN: usize = 1 + NONCE_LEN + DATA_KEY_LEN + 16;

/// The associated data a data key is wrapped with: the CMK's id and the canonical
/// encryption context, so a wrapped key unwraps only under its key and its context.
fn wrap_aad(key_id: &str, context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key_id.len() + 64);
    aad.extend_from_slice(b"repocrypt/local-kms/data-key/v1\0");
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&context.canonical());
    aad
}

impl LocalKms {
    /// The key's material in clear, for a key that is enabled (a real KMS refuses to
    /// use a key in any other state).
    fn usable_material(&self, key: &StoredKey) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        if key.state != KeyState::Enabled {
            return Err(Error::KeyRefused {
                key_id: key.key_id.clone(),
                state: key.state.describe(),
                code: key.state.code(),
            });
        }
        let sealed = key
            .material
            .as_deref()
            .ok_or_else(|| Error::Internal(format!("key {} has no material", key.key_id)))?;
        Ok(zeroize::Zeroizing::new(
            self.wrap.open(&key.key_id, sealed)?,
        ))
    }

    /// Wrap a data key under `key` (which must be enabled), bound to `context`.
    fn wrap_under(
        &self,
        key: &StoredKey,
        plaintext: &DataKey,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>> {
        use aes_gcm::aead::{Aead, Payload};
        let cipher = Self::cipher(&self.usable_material(key)?)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = wrap_aad(&key.key_id, context);
        let sealed = cipher
            .encrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.expose(),
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Internal("wrap data key".into()))?;
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.push(WRAPPED_V1);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&sealed);
        Ok(wrapped)
    }

    /// Unwrap a data key wrapped under `key` (which must be enabled) with `context`.
    fn unwrap_under(
        &self,
        key: &StoredKey,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<DataKey> {
        use aes_gcm::aead::{Aead, Payload};
        let cipher = Self::cipher(&self.usable_material(key)?)?;
        let invalid = || Error::DataKeyInvalid {
            repo_id: repo_id.get(),
        };
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAPPED_V1 {
            return Err(invalid());
        }
        let (nonce, sealed) = wrapped[1..].split_at(NONCE_LEN);
        let aad = wrap_aad(&key.key_id, context);
        let plaintext = zeroize::Zeroizing::new(
            cipher
                .decrypt(
                    aes_gcm::Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| invalid())?,
        );
        DataKey::from_slice(&plaintext).ok_or_else(invalid)
    }

    fn cipher(material: &[u8]) -> Result<aes_gcm::Aes256Gcm> {
        use aes_gcm::KeyInit;
        aes_gcm::Aes256Gcm::new_from_slice(material)
            .map_err(|_| Error::Internal("key material is not 32 bytes".into()))
    }
}

fn info(key: &StoredKey) -> KeyInfo {
    KeyInfo {
        key_id: key.key_id.clone(),
        key_name: key.alias.clone(),
        key_state: key.state,
    }
}

fn invalid_state(key: &StoredKey, op: &'static str) -> Error {
    Error::KeyInvalidState {
        key_id: key.key_id.clone(),
        state: key.state.describe(),
        op,
    }
}

fn validate_alias(alias: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_-/:.".contains(c);
    if alias.is_empty() || alias.len() > 255 || !alias.chars().all(ok_char) {
        return Err(Error::InvalidArgument(
            "alias must be 1 to 255 characters of letters, digits and _-/:.".into(),
        ));
    }
    Ok(())
}

#[async_trait]
impl Kms for LocalKms {
    async fn ping(&self) -> Result<()> {
        // The local KMS lives in the service's database: reachable when the database is.
        self.store
            .ping()
            .await
            .map_err(|e| Error::KmsUnavailable(format!("local KMS store: {e}")))
    }

    /// The tenant's KMS is its keys in the service's database: reachable when a read of
    /// them answers (a database that answers a ping may still fail this tenant's rows).
    /// A failure is the database's (503 `RC.503002`), as for every other call here.
    async fn check_access(&self, tenant: &TenantId) -> Result<()> {
        self.store.kms_list_keys(tenant).await.map(|_| ())
    }

    async fn describe_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<KeyInfo>> {
        let key = self.store.kms_get_key(tenant, key_id).await?;
        Ok(key.and_then(|k| self.live(k)).map(|k| info(&k)))
    }

    fn describe_stored(&self, key: Option<KeyRecord>) -> Option<Option<KeyInfo>> {
        Some(
            key.filter(|k| self.is_live(k.state, k.deletion_at))
                .map(|k| KeyInfo {
                    key_id: k.key_id,
                    key_name: k.alias,
                    key_state: k.state,
                }),
        )
    }

    fn keys_in_store(&self) -> bool {
        true
    }

    async fn create_key(
        &self,
        tenant: &TenantId,
        alias: &str,
        origin: KeyOrigin,
        inactive: bool,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        validate_alias(alias)?;
        let key_id = uuid::Uuid::new_v4().to_string();
        let (state, material) = match origin {
            KeyOrigin::Kms => {
                let mut m = [0u8; MATERIAL_LEN];
                rand::rngs::OsRng.fill_bytes(&mut m);
                let state = if inactive {
                    KeyState::ToBeActivated
                } else {
                    KeyState::Enabled
                };
                (state, Some(self.seal(&key_id, &m)?))
            }
            KeyOrigin::External if inactive => {
                return Err(Error::InvalidArgument(
                    "--inactive applies to origin kms only: an external key waits for its material instead".into(),
                ))
            }
            KeyOrigin::External => (KeyState::PendingImport, None),
        };
        let key = StoredKey {
            key_id,
            tenant_id: tenant.as_str().to_owned(),
            alias: alias.to_owned(),
            origin: origin.as_str().to_owned(),
            state,
            material,
            deletion_at: None,
            created_at: self.clock.rfc3339(),
        };
        self.store.kms_insert_key(&key, actor).await?;
        Ok(info(&key))
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<KeyInfo>> {
        let keys = self.store.kms_list_keys(tenant).await?;
        Ok(keys
            .into_iter()
            .filter_map(|k| self.live(k))
            .map(|k| info(&k))
            .collect())
    }

    async fn enable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo> {
        self.transition(
            tenant,
            key_id,
            "kms.enable_key",
            actor,
            &|k| match k.state {
                KeyState::ToBeActivated | KeyState::Enabled | KeyState::Disabled => Ok(StoredKey {
                    state: KeyState::Enabled,
                    ..k.clone()
                }),
                _ => Err(invalid_state(k, "enable it")),
            },
        )
        .await
    }

    async fn disable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo> {
        self.transition(
            tenant,
            key_id,
            "kms.disable_key",
            actor,
            &|k| match k.state {
                KeyState::Enabled | KeyState::Disabled => Ok(StoredKey {
                    state: KeyState::Disabled,
                    ..k.clone()
                }),
                _ => Err(invalid_state(k, "disable it")),
            },
        )
        .await
    }

    async fn schedule_key_deletion(
        &self,
        tenant: &TenantId,
        key_id: &str,
        pending_days: u32,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        if !(MIN_PENDING_DAYS..=MAX_PENDING_DAYS).contains(&pending_days) {
            return Err(Error::InvalidArgument(format!(
                "pending days must be {MIN_PENDING_DAYS} to {MAX_PENDING_DAYS}, got {pending_days}"
            )));
        }
        let at = self.clock.unix_seconds() as i64 + i64::from(pending_days) * 86_400;
        self.transition(
            tenant,
            key_id,
            "kms.schedule_key_deletion",
            actor,
            &|k| match k.state {
                KeyState::PendingDeletion => Err(invalid_state(k, "schedule its deletion again")),
                _ => Ok(StoredKey {
                    state: KeyState::PendingDeletion,
                    deletion_at: Some(at),
                    ..k.clone()
                }),
            },
        )
        .await
    }

    async fn cancel_key_deletion(
        &self,
        tenant: &TenantId,
        key_id: &str,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        self.transition(tenant, key_id, "kms.cancel_key_deletion", actor, &|k| {
            match k.state {
                // Like AWS KMS: a cancelled key comes back disabled (or still waiting for
                // its material, if it never had any).
                KeyState::PendingDeletion => Ok(StoredKey {
                    state: if k.material.is_some() {
                        KeyState::Disabled
                    } else {
                        KeyState::PendingImport
                    },
                    deletion_at: None,
                    ..k.clone()
                }),
                _ => Err(invalid_state(k, "cancel a deletion that is not scheduled")),
            }
        })
        .await
    }

    async fn import_key_material(
        &self,
        tenant: &TenantId,
        key_id: &str,
        material: Option<Vec<u8>>,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        let material = match material {
            Some(m) if m.len() == MATERIAL_LEN => m,
            Some(m) => {
                return Err(Error::InvalidArgument(format!(
                    "key material must be exactly {MATERIAL_LEN} bytes, got {}",
                    m.len()
                )))
            }
            None => {
                let mut m = vec![0u8; MATERIAL_LEN];
                rand::rngs::OsRng.fill_bytes(&mut m);
                m
            }
        };
        let sealed = self.seal(key_id, &material)?;
        self.transition(tenant, key_id, "kms.import_key_material", actor, &|k| {
            if k.origin != KeyOrigin::External.as_str() {
                return Err(Error::InvalidArgument(format!(
                    "key {} has origin {}: only external keys take imported material",
                    k.key_id, k.origin
                )));
            }
            match k.state {
                KeyState::PendingImport => Ok(StoredKey {
                    state: KeyState::Enabled,
                    material: Some(sealed.clone()),
                    ..k.clone()
                }),
                _ => Err(invalid_state(
                    k,
                    "import material (it is not pending import)",
                )),
            }
        })
        .await
    }

    async fn generate_data_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey> {
        let key = self.live_key(tenant, key_id).await?;
        let mut plaintext = [0u8; DATA_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut plaintext);
        let plaintext = DataKey::from_bytes(plaintext);
        let wrapped = self.wrap_under(&key, &plaintext, context)?;
        Ok(GeneratedKey { plaintext, wrapped })
    }

    async fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<DataKey> {
        let key = self.live_key(tenant, key_id).await?;
        self.unwrap_under(&key, wrapped, context, repo_id)
    }

    /// Unwrap under the old key, wrap under the new one: the key in clear is a zeroizing
    /// `DataKey`, dropped (zeroed) before this returns. The old key is checked first, so a
    /// refusal names the key that refused.
    async fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        old_key_id: &str,
        new_key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<Vec<u8>> {
        let old = self
            .live_key(tenant, old_key_id)
            .await
            .map_err(|e| match e {
                Error::KeyNotFound { key_id } => Error::CmkGone { key_id },
                e => e,
            })?;
        self.usable_material(&old)?;
        let new = self.live_key(tenant, new_key_id).await?;
        // Refuse a new key that cannot wrap before anything is unwrapped.
        self.usable_material(&new)?;
        let plaintext = self.unwrap_under(&old, wrapped, context, repo_id)?;
        self.wrap_under(&new, &plaintext, context)
    }
}
