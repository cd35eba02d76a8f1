//! AK/SK credentials: created by an operator, the secret shown once, stored only sealed
//! under a key derived from the root key.

use std::sync::Arc;

use async_trait::async_trait;
use rand::Rng;
use serde::Serialize;

use crate::clock::Clock;
use crate::domain::{Actor, Error, Identity, Result, Role, TenantId};
use crate::keys::{RootKey, Sealer, LABEL_CREDENTIAL};

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

/// Where credentials are kept: the service's database. The SQL stores implement it.
#[async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    async fn credential_insert(&self, credential: &Credential, actor: &Actor) -> Result<()>;
    async fn credential_get(&self, access_key: &str) -> Result<Option<Credential>>;
    async fn credential_list(&self, tenant: &TenantId) -> Result<Vec<Credential>>;
    /// `false` when there was no such access key.
    async fn credential_delete(&self, access_key: &str, actor: &Actor) -> Result<bool>;
}

const ACCESS_KEY_LEN: usize = 20;
const SECRET_KEY_LEN: usize = 40;

/// A secret key in clear. `Debug` never shows it.
pub struct SecretKey(String);

impl SecretKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

pub struct Credentials {
    store: Arc<dyn CredentialStore>,
    sealer: Sealer,
    clock: Arc<dyn Clock>,
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl Credentials {
    pub fn new(store: Arc<dyn CredentialStore>, root: &RootKey, clock: Arc<dyn Clock>) -> Self {
        Credentials {
            store,
            sealer: Sealer::new(root, LABEL_CREDENTIAL),
            clock,
        }
    }

    /// Create a credential; the only time the secret key exists in clear outside a request.
    pub async fn create(
        &self,
        tenant: &TenantId,
        user_id: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<(Credential, SecretKey)> {
        crate::domain::check_text_arg("--user", user_id)?;
        let access_key = random_string(ACCESS_KEY_LEN, UPPER_DIGITS);
        let secret = SecretKey(random_string(SECRET_KEY_LEN, ALNUM));
        let credential = Credential {
            sealed_secret: self.sealer.seal(&access_key, secret.0.as_bytes())?,
            access_key,
            tenant_id: tenant.as_str().to_owned(),
            user_id: user_id.to_owned(),
            role,
            created_at: self.clock.rfc3339(),
        };
        self.store.credential_insert(&credential, actor).await?;
        Ok((credential, secret))
    }

    /// Create a credential for the platform service principal `name`
    /// ([`Identity::service`]).
    pub async fn create_service(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<(Credential, SecretKey)> {
        let principal = Identity::service(name, u64::MAX)?;
        self.create(
            &principal.tenant_id,
            &principal.user_id,
            Role::Service,
            actor,
        )
        .await
    }

    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<Credential>> {
        self.store.credential_list(tenant).await
    }

    pub async fn delete(&self, access_key: &str, actor: &Actor) -> Result<()> {
        if self.store.credential_delete(access_key, actor).await? {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "no credential with access key {access_key}"
            )))
        }
    }

    /// The identity and secret key behind an access key, if it exists.
    pub async fn resolve(&self, access_key: &str) -> Result<Option<(Identity, Vec<u8>)>> {
        let Some(c) = self.store.credential_get(access_key).await? else {
            return Ok(None);
        };
        let secret = self.sealer.open(&c.access_key, &c.sealed_secret)?;
        let identity = Identity {
            tenant_id: TenantId::parse(c.tenant_id)?,
            user_name: c.user_id.clone(),
            user_id: c.user_id,
            role: c.role,
            expires_at: u64::MAX,
        };
        Ok(Some((identity, secret)))
    }
}
