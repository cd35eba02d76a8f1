//! A [`Kms`] that times and counts every call of the one it wraps, for `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{KeyInfo, KeyOrigin, Kms};
use crate::domain::ports::KeyRecord;
use crate::domain::{
    Actor, DataKey, EncryptionContext, Error, GeneratedKey, RepoId, Result, TenantId,
};
use crate::metrics::{CallOutcome, KmsCall, Metrics};

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
        self.metrics
            .record_kms(call, outcome(&result), start.elapsed());
        result
    }
}

/// How a call's result is counted: a failure of this service (its database, an internal
/// error) is an `error`, not a refusal by the KMS.
fn outcome<T>(result: &Result<T>) -> CallOutcome {
    match result {
        Ok(_) => CallOutcome::Ok,
        Err(Error::KmsUnavailable(_)) => CallOutcome::Unavailable,
        Err(Error::Store(_) | Error::Internal(_)) => CallOutcome::Error,
        Err(_) => CallOutcome::Refused,
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

    fn describe_stored(&self, key: Option<KeyRecord>) -> Option<Option<KeyInfo>> {
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

    async fn generate_data_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey> {
        self.timed(
            KmsCall::GenerateDataKey,
            self.inner.generate_data_key(tenant, key_id, context),
        )
        .await
    }

    async fn decrypt_data_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<DataKey> {
        self.timed(
            KmsCall::Decrypt,
            self.inner
                .decrypt_data_key(tenant, key_id, wrapped, context, repo_id),
        )
        .await
    }

    async fn rewrap_data_key(
        &self,
        tenant: &TenantId,
        old_key_id: &str,
        new_key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<Vec<u8>> {
        self.timed(
            KmsCall::ReEncrypt,
            self.inner
                .rewrap_data_key(tenant, old_key_id, new_key_id, wrapped, context, repo_id),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyState;

    /// How a stub's calls end.
    type Ending = fn() -> Result<()>;

    /// A KMS whose every call ends with what its function returns.
    struct Stub(Ending);

    impl Stub {
        fn key(&self) -> Result<KeyInfo> {
            (self.0)().map(|()| KeyInfo {
                key_id: "k".into(),
                key_name: "n".into(),
                key_state: KeyState::Enabled,
            })
        }
    }

    #[async_trait]
    impl Kms for Stub {
        async fn ping(&self) -> Result<()> {
            (self.0)()
        }
        async fn check_access(&self, _: &TenantId) -> Result<()> {
            (self.0)()
        }
        async fn describe_key(&self, _: &TenantId, _: &str) -> Result<Option<KeyInfo>> {
            self.key().map(Some)
        }
        async fn create_key(
            &self,
            _: &TenantId,
            _: &str,
            _: KeyOrigin,
            _: bool,
            _: &Actor,
        ) -> Result<KeyInfo> {
            self.key()
        }
        async fn list_keys(&self, _: &TenantId) -> Result<Vec<KeyInfo>> {
            self.key().map(|k| vec![k])
        }
        async fn enable_key(&self, _: &TenantId, _: &str, _: &Actor) -> Result<KeyInfo> {
            self.key()
        }
        async fn disable_key(&self, _: &TenantId, _: &str, _: &Actor) -> Result<KeyInfo> {
            self.key()
        }
        async fn schedule_key_deletion(
            &self,
            _: &TenantId,
            _: &str,
            _: u32,
            _: &Actor,
        ) -> Result<KeyInfo> {
            self.key()
        }
        async fn cancel_key_deletion(&self, _: &TenantId, _: &str, _: &Actor) -> Result<KeyInfo> {
            self.key()
        }
        async fn import_key_material(
            &self,
            _: &TenantId,
            _: &str,
            _: Option<Vec<u8>>,
            _: &Actor,
        ) -> Result<KeyInfo> {
            self.key()
        }
        async fn generate_data_key(
            &self,
            _: &TenantId,
            _: &str,
            _: &EncryptionContext,
        ) -> Result<GeneratedKey> {
            (self.0)().map(|()| GeneratedKey {
                plaintext: DataKey::from_bytes([0; 32]),
                wrapped: vec![],
            })
        }
        async fn decrypt_data_key(
            &self,
            _: &TenantId,
            _: &str,
            _: &[u8],
            _: &EncryptionContext,
            _: RepoId,
        ) -> Result<DataKey> {
            (self.0)().map(|()| DataKey::from_bytes([0; 32]))
        }
        async fn rewrap_data_key(
            &self,
            _: &TenantId,
            _: &str,
            _: &str,
            _: &[u8],
            _: &EncryptionContext,
            _: RepoId,
        ) -> Result<Vec<u8>> {
            (self.0)().map(|()| vec![])
        }
    }

    #[tokio::test]
    async fn failures_of_the_service_are_errors_not_refusals_by_the_kms() {
        let cases: [(Ending, &str); 6] = [
            (|| Ok(()), "ok"),
            (|| Err(Error::KeyNotFound { key_id: "k".into() }), "refused"),
            (|| Err(Error::AlreadyExists("alias".into())), "refused"),
            (
                || Err(Error::KmsUnavailable("timeout".into())),
                "unavailable",
            ),
            (|| Err(Error::Store("database is locked".into())), "error"),
            (|| Err(Error::Internal("sealed blob".into())), "error"),
        ];
        let tenant = TenantId::parse("t1").expect("tenant");
        for (result, label) in cases {
            let metrics = Arc::new(Metrics::new());
            let kms = MeteredKms::new(Arc::new(Stub(result)), metrics.clone());
            let _ = kms.describe_key(&tenant, "k").await;
            let _ = kms.list_keys(&tenant).await;
            let text = metrics.render(&[], &[]);
            for call in ["describe_key", "list_keys"] {
                let line =
                    format!("repocrypt_kms_calls_total{{call=\"{call}\",outcome=\"{label}\"}} 1");
                assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
            }
            let counted = text
                .lines()
                .filter(|l| l.starts_with("repocrypt_kms_calls_total{") && !l.ends_with(" 0"))
                .count();
            assert_eq!(counted, 2, "each call counted once, under {label}:\n{text}");
        }
    }
}
