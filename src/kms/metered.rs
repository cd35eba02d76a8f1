//! A [`Kms`] that times and counts every call of the one it wraps, for `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{KeyInfo, KeyOrigin, Kms};
use crate::domain::{Actor, Error, Result, TenantId};
use crate::metrics::{KmsCall, KmsOutcome, Metrics};
use crate::store::StoredKey;

pub struct MeteredKms {
    inner: Arc<dyn Kms>,
    metrics: Arc<Metrics>,
}

impl MeteredKms {
    pub fn new(inner: Arc<dyn Kms>, metrics: Arc<Metrics>) -> Self {
        MeteredKms { inner, metrics }
    }

    async fn timed<T>(&self, call: KmsCall, f: impl Future<Output = Result<T>>) -> Result<T> {
        let start = Instant::now();
        let result = f.await;
        let outcome = match &result {
            Ok(_) => KmsOutcome::Ok,
            Err(Error::KmsUnavailable(_)) => KmsOutcome::Unavailable,
            Err(_) => KmsOutcome::Refused,
        };
        self.metrics.record_kms(call, outcome, start.elapsed());
        result
    }
}

#[async_trait]
impl Kms for MeteredKms {
    async fn ping(&self) -> Result<()> {
        self.timed(KmsCall::Ping, self.inner.ping()).await
    }

    async fn check_access(&self, tenant: &TenantId) -> Result<()> {
        self.timed(KmsCall::CheckAccess, self.inner.check_access(tenant))
            .await
    }

    async fn describe_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<KeyInfo>> {
        self.timed(
            KmsCall::DescribeKey,
            self.inner.describe_key(tenant, key_id),
        )
        .await
    }

    fn describe_stored(&self, key: Option<StoredKey>) -> Option<Option<KeyInfo>> {
        // Part of a database read, not a call to a KMS: not counted as one.
        self.inner.describe_stored(key)
    }

    fn keys_in_store(&self) -> bool {
        self.inner.keys_in_store()
    }

    async fn create_key(
        &self,
        tenant: &TenantId,
        alias: &str,
        origin: KeyOrigin,
        inactive: bool,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        let call = self
            .inner
            .create_key(tenant, alias, origin, inactive, actor);
        self.timed(KmsCall::CreateKey, call).await
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<KeyInfo>> {
        self.timed(KmsCall::ListKeys, self.inner.list_keys(tenant))
            .await
    }

    async fn enable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo> {
        let call = self.inner.enable_key(tenant, key_id, actor);
        self.timed(KmsCall::EnableKey, call).await
    }

    async fn disable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo> {
        let call = self.inner.disable_key(tenant, key_id, actor);
        self.timed(KmsCall::DisableKey, call).await
    }

    async fn schedule_key_deletion(
        &self,
        tenant: &TenantId,
        key_id: &str,
        pending_days: u32,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        let call = self
            .inner
            .schedule_key_deletion(tenant, key_id, pending_days, actor);
        self.timed(KmsCall::ScheduleKeyDeletion, call).await
    }

    async fn cancel_key_deletion(
        &self,
        tenant: &TenantId,
        key_id: &str,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        let call = self.inner.cancel_key_deletion(tenant, key_id, actor);
        self.timed(KmsCall::CancelKeyDeletion, call).await
    }

    async fn import_key_material(
        &self,
        tenant: &TenantId,
        key_id: &str,
        material: Option<Vec<u8>>,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        let call = self
            .inner
            .import_key_material(tenant, key_id, material, actor);
        self.timed(KmsCall::ImportKeyMaterial, call).await
    }
}
