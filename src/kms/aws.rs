//! AWS KMS (and anything that speaks its API: LocalStack, moto) through `aws-sdk-kms`.
//!
//! Tenant binding: a key belongs to tenant T when it carries the tag
//! `repocrypt:tenant` = T. Every call first resolves what the caller named (key id, key
//! ARN or `alias/...`) with DescribeKey and then reads the key's tags; a key without the
//! tenant's tag is reported exactly as a key that does not exist, so a tenant cannot
//! select, see or learn of another tenant's key. Its `cmk_key_name` is its alias
//! without the `alias/` prefix.
//!
//! Every call has a bounded timeout and a bounded number of attempts (see `AwsSettings`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::config::ConfigBag;
pub use aws_sdk_kms::config::Credentials;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::{KeyState as AwsKeyState, OriginType, Tag};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use serde_json::json;

use super::{KeyInfo, KeyOrigin, Kms, MIN_PENDING_DAYS};
use crate::domain::ports::Store;
use crate::domain::{
    Actor, DataKey, EncryptionContext, Error, GeneratedKey, KeyState, RepoId, Result, TenantId,
};
use crate::home::Home;

/// The tag that binds a key to a tenant.
pub const TENANT_TAG: &str = "repocrypt:tenant";
/// Longest deletion window AWS KMS accepts, in days.
pub const AWS_MAX_PENDING_DAYS: u32 = 30;
/// Default (and largest) time one KMS operation may take, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per operation (the first and two retries, with backoff, within the timeout).
pub const MAX_ATTEMPTS: u32 = 3;

/// How to reach the KMS. Credentials come from the standard AWS chain (environment,
/// profile, web identity, container and instance metadata).
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// Endpoint URL, for LocalStack, moto or a VPC endpoint; `None` uses AWS's own.
    pub endpoint: Option<String>,
    /// Region; `None` takes it from the AWS chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Time one operation may take, all attempts included.
    pub timeout: Duration,
}

pub struct AwsKms {
    client: aws_sdk_kms::Client,
    store: Arc<dyn Store>,
}

/// A lifecycle change: its audit action, the states AWS KMS allows it from (checked
/// before the call, so every AWS-compatible KMS refuses the same moves), the state it
/// leads to, and what a refusal says.
#[derive(Clone, Copy)]
struct Move {
    action: &'static str,
    from: &'static [KeyState],
    to: KeyState,
    refused: &'static str,
}

const ENABLE: Move = Move {
    action: "kms.enable_key",
    from: &[KeyState::Enabled, KeyState::Disabled],
    to: KeyState::Enabled,
    refused: "enable it",
};
const DISABLE: Move = Move {
    action: "kms.disable_key",
    from: &[KeyState::Enabled, KeyState::Disabled],
    to: KeyState::Disabled,
    refused: "disable it",
};
const SCHEDULE_DELETION: Move = Move {
    action: "kms.schedule_key_deletion",
    from: &[
        KeyState::ToBeActivated,
        KeyState::Enabled,
        KeyState::Disabled,
        KeyState::PendingImport,
    ],
    to: KeyState::PendingDeletion,
    refused: "schedule its deletion again",
};
const CANCEL_DELETION: Move = Move {
    action: "kms.cancel_key_deletion",
    from: &[KeyState::PendingDeletion],
    // AWS KMS brings a key whose deletion is cancelled back disabled.
    to: KeyState::Disabled,
    refused: "cancel a deletion that is not scheduled",
};

/// Audit action of a key's creation.
const CREATE_KEY: &str = "kms.create_key";
/// Suffix of the audit record written before a change is sent to AWS KMS.
pub const REQUESTED: &str = ".requested";
/// Suffix of the audit record of a change AWS KMS did not make (or did not confirm).
pub const FAILED: &str = ".failed";

/// What AWS says of a key the tenant owns.
struct Owned {
    key_id: String,
    state: KeyState,
}

/// The SDK's HTTP client, its connections opened and driven on the home runtime
/// (`crate::home`) whichever connection thread makes the call.
#[derive(Debug)]
struct AtHome {
    client: SharedHttpClient,
    home: Home,
}

impl HttpClient for AtHome {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(AtHomeConnector {
            connector: self.client.http_connector(settings, components),
            home: self.home.clone(),
        })
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        self.client.validate_base_client_config(components, cfg)
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        self.client.validate_final_config(components, cfg)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.client.connector_metadata()
    }
}

#[derive(Debug)]
struct AtHomeConnector {
    connector: SharedHttpConnector,
    home: Home,
}

impl HttpConnector for AtHomeConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        HttpConnectorFuture::new(self.home.within(self.connector.call(request)))
    }
}

impl AwsKms {
    /// Build the client, with credentials from the standard AWS chain. Nothing is sent
    /// until the first call.
    pub async fn connect(settings: &AwsSettings, store: Arc<dyn Store>) -> Result<AwsKms> {
        Self::build(settings, store, None).await
    }

    /// Build the client with these credentials instead of the AWS chain (for embedding
    /// the service, and for tests that must not touch the process environment).
    pub async fn with_credentials(
        settings: &AwsSettings,
        store: Arc<dyn Store>,
        credentials: Credentials,
    ) -> Result<AwsKms> {
        Self::build(settings, store, Some(credentials)).await
    }

    async fn build(
        settings: &AwsSettings,
        store: Arc<dyn Store>,
        credentials: Option<Credentials>,
    ) -> Result<AwsKms> {
        let http = SharedHttpClient::new(AtHome {
            client: aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build_https(),
            home: Home::here(),
        });
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.timeout)
            .operation_attempt_timeout(settings.timeout)
            .operation_timeout(settings.timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Error::InvalidArgument(
                "the AWS KMS backend needs a region: set REPOCRYPT_KMS_REGION (or AWS_REGION)"
                    .into(),
            ));
        }
        Ok(AwsKms {
            client: aws_sdk_kms::Client::new(&sdk),
            store,
        })
    }

    /// The key the caller named, if it exists and carries this tenant's tag.
    async fn owned(&self, tenant: &TenantId, named: &str) -> Result<Option<Owned>> {
        // AWS-managed keys belong to no tenant; describing `alias/aws/<service>` would even
        // make AWS create one.
        if named.starts_with("alias/aws/") {
            return Ok(None);
        }
        let Some(key) = self.described(named).await? else {
            return Ok(None);
        };
        if !self.tagged_for(tenant, &key.key_id).await? {
            return Ok(None);
        }
        Ok(Some(key))
    }

    /// The key's own id and state (DescribeKey), whoever it belongs to.
    async fn described(&self, named: &str) -> Result<Option<Owned>> {
        let described = match self.client.describe_key().key_id(named).send().await {
            Ok(out) => out,
            Err(e) => return absent_or(e, "DescribeKey"),
        };
        Ok(described.key_metadata().map(|meta| Owned {
            key_id: meta.key_id().to_owned(),
            state: meta
                .key_state()
                .map(key_state_from_aws)
                .unwrap_or(KeyState::Disabled),
        }))
    }

    async fn tagged_for(&self, tenant: &TenantId, key_id: &str) -> Result<bool> {
        let mut marker: Option<String> = None;
        loop {
            let out = match self
                .client
                .list_resource_tags()
                .key_id(key_id)
                .set_marker(marker.take())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => return absent_or(e, "ListResourceTags").map(|_: Option<()>| false),
            };
            if let Some(tag) = out.tags().iter().find(|t| t.tag_key() == TENANT_TAG) {
                return Ok(tag.tag_value() == tenant.as_str());
            }
            match out.next_marker() {
                Some(m) if out.truncated() => marker = Some(m.to_owned()),
                _ => return Ok(false),
            }
        }
    }

    /// The key's name: its first alias (in alphabetical order) without `alias/`.
    async fn name_of(&self, key_id: &str) -> Result<String> {
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .client
                .list_aliases()
                .key_id(key_id)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| unavailable(e, "ListAliases"))?;
            names.extend(
                out.aliases()
                    .iter()
                    .filter_map(|a| a.alias_name())
                    .filter_map(|n| n.strip_prefix("alias/"))
                    .map(str::to_owned),
            );
            match out.next_marker() {
                Some(m) if out.truncated() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        names.sort();
        Ok(names.into_iter().next().unwrap_or_default())
    }

    async fn info(&self, owned: Owned) -> Result<KeyInfo> {
        let key_name = self.name_of(&owned.key_id).await?;
        Ok(KeyInfo {
            key_id: owned.key_id,
            key_name,
            key_state: owned.state,
        })
    }

    async fn require(&self, tenant: &TenantId, named: &str) -> Result<Owned> {
        self.owned(tenant, named)
            .await?
            .ok_or_else(|| Error::KeyNotFound {
                key_id: named.to_owned(),
            })
    }

    /// CreateKey with the tenant's tag, then CreateAlias. On failure, the error and the
    /// id of the key AWS created, if it got that far (it is then scheduled for deletion,
    /// so that no unnamed key is left behind).
    async fn create(
        &self,
        tenant: &TenantId,
        alias: &str,
        origin: KeyOrigin,
        tag: Tag,
    ) -> std::result::Result<KeyInfo, (Error, Option<String>)> {
        let created = self
            .client
            .create_key()
            .description(format!("repocrypt key of tenant {tenant}"))
            .origin(match origin {
                KeyOrigin::Kms => OriginType::AwsKms,
                KeyOrigin::External => OriginType::External,
            })
            .tags(tag)
            .send()
            .await
            .map_err(|e| {
                let error = match e.as_service_error().and_then(|s| s.code()) {
                    Some(
                        code @ ("ValidationException" | "LimitExceededException" | "TagException"),
                    ) => Error::InvalidArgument(format!("AWS KMS refused the new key: {code}")),
                    _ => unavailable(e, "CreateKey"),
                };
                (error, None)
            })?;
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| {
                (
                    Error::KmsUnavailable("AWS KMS CreateKey: no key in answer".into()),
                    None,
                )
            })?;
        let alias_result = self
            .client
            .create_alias()
            .alias_name(format!("alias/{alias}"))
            .target_key_id(&key_id)
            .send()
            .await;
        if let Err(e) = alias_result {
            // Do not leave an unnamed key behind: schedule it for deletion.
            let cleanup = self
                .client
                .schedule_key_deletion()
                .key_id(&key_id)
                .pending_window_in_days(MIN_PENDING_DAYS as i32)
                .send()
                .await;
            if cleanup.is_err() {
                tracing::warn!(key_id, "could not schedule the unnamed key's deletion");
            }
            let error = match e.as_service_error().and_then(|s| s.code()) {
                Some("AlreadyExistsException") => Error::InvalidArgument(format!(
                    "alias `{alias}` is already in use in this AWS account and region"
                )),
                Some(code @ ("ValidationException" | "LimitExceededException")) => {
                    Error::InvalidArgument(format!("AWS KMS refused alias `{alias}`: {code}"))
                }
                _ => unavailable(e, "CreateAlias"),
            };
            return Err((error, Some(key_id)));
        }
        // AWS KMS is eventually consistent: describe the key from CreateKey's own answer.
        Ok(KeyInfo {
            key_id,
            key_name: alias.to_owned(),
            key_state: created
                .key_metadata()
                .and_then(|m| m.key_state())
                .map(key_state_from_aws)
                .unwrap_or(KeyState::Disabled),
        })
    }

    /// Record that a change is about to be sent to AWS KMS. The change is made only if
    /// this record is written (fail closed): the caller returns this error otherwise.
    async fn record_request(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        action: &str,
        before: Option<serde_json::Value>,
        intended: serde_json::Value,
    ) -> Result<()> {
        self.store
            .record_audit(
                tenant,
                actor,
                &format!("{action}{REQUESTED}"),
                before,
                Some(intended),
            )
            .await
    }

    /// Record what AWS KMS answered. By now the change is made (or refused) in AWS, so a
    /// failure to record it cannot undo anything: it is logged, with the request id that
    /// links it to the `.requested` record already written, and the caller is answered.
    async fn record_outcome(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        action: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) {
        if let Err(e) = self
            .store
            .record_audit(tenant, actor, action, before, after)
            .await
        {
            tracing::error!(
                request_id = actor.request_id.as_deref().unwrap_or("-"),
                tenant = %tenant,
                action,
                error = %e,
                detail = e.internal_detail().unwrap_or(""),
                "AWS KMS answered but the audit record of the outcome could not be written; \
                 the `{REQUESTED}` record of this request id stands for it"
            );
        }
    }

    /// Run a lifecycle change on a key of the tenant's whose state allows it. An audit
    /// record of the request (`<action>.requested`, with the state before and the state
    /// intended) is written first, and nothing is sent to AWS if it cannot be; then the
    /// outcome is recorded (`<action>` with the states before and after, or
    /// `<action>.failed` with the error code).
    async fn transition<F, Fut>(
        &self,
        tenant: &TenantId,
        named: &str,
        actor: &Actor,
        step: Move,
        details: serde_json::Value,
        call: F,
    ) -> Result<KeyInfo>
    where
        F: FnOnce(String) -> Fut + Send,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let before = self.require(tenant, named).await?;
        if !step.from.contains(&before.state) {
            return Err(Error::KeyInvalidState {
                key_id: before.key_id,
                state: before.state.describe(),
                op: step.refused,
            });
        }
        let before_json = json!({"key_id": before.key_id, "key_state": before.state});
        let mut intended = json!({"key_id": before.key_id, "key_state": step.to});
        if let (Some(map), serde_json::Value::Object(extra)) = (intended.as_object_mut(), details) {
            map.extend(extra);
        }
        self.record_request(
            tenant,
            actor,
            step.action,
            Some(before_json.clone()),
            intended,
        )
        .await?;
        if let Err(e) = call(before.key_id.clone()).await {
            let failed = json!({"key_id": before.key_id, "error_code": e.code()});
            self.record_outcome(
                tenant,
                actor,
                &format!("{}{FAILED}", step.action),
                Some(before_json),
                Some(failed),
            )
            .await;
            return Err(e);
        }
        // The change is made: record it now, whatever reading the key back says. The key
        // was the tenant's a moment ago, so its tags need not be read again.
        let after = match self.described(&before.key_id).await {
            Ok(Some(owned)) => self.info(owned).await,
            Ok(None) => Err(Error::KeyNotFound {
                key_id: named.to_owned(),
            }),
            Err(e) => Err(e),
        };
        let after_json = match &after {
            Ok(info) => json!(info),
            Err(_) => json!({"key_id": before.key_id, "key_state": null}),
        };
        self.record_outcome(
            tenant,
            actor,
            step.action,
            Some(before_json),
            Some(after_json),
        )
        .await;
        after
    }
}

/// AWS's alias rules: `alias/` plus 1 to 250 of `[A-Za-z0-9/_-]` (after the prefix),
/// not in the reserved `aws/` space.
fn validate_aws_alias(alias: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "/_-".contains(c);
    if alias.is_empty() || alias.len() > 250 || !alias.chars().all(ok) {
        return Err(Error::InvalidArgument(
            "an AWS KMS alias is 1 to 250 characters of letters, digits and /_-".into(),
        ));
    }
    if alias.starts_with("aws/") {
        return Err(Error::InvalidArgument(
            "aliases beginning with aws/ are reserved by AWS".into(),
        ));
    }
    Ok(())
}

/// Characters AWS allows in a tag value.
fn tag_value_char(c: char) -> bool {
    c.is_alphanumeric() || " _.:/=+-@".contains(c)
}

/// The tag that binds a key to this tenant; refused for a tenant id AWS does not take as a
/// tag value (such a tenant can have no key in AWS KMS).
fn tenant_tag(tenant: &TenantId) -> Result<Tag> {
    if !tenant.as_str().chars().all(tag_value_char) || tenant.as_str().len() > 256 {
        return Err(Error::InvalidArgument(
            "this tenant id cannot be an AWS tag value (letters, digits, spaces and _.:/=+-@, at most 256)".into(),
        ));
    }
    Tag::builder()
        .tag_key(TENANT_TAG)
        .tag_value(tenant.as_str())
        .build()
        .map_err(|e| Error::Internal(format!("build tag: {e}")))
}

/// The API's key state for an AWS key state. AWS has states the API does not; each maps
/// to the API state that tells a caller the same thing about using the key now:
/// - `PendingReplicaDeletion` (a multi-Region replica being deleted): 4, pending deletion.
/// - `Unavailable` (its custom key store is disconnected: unusable until reconnected): 3.
/// - `Updating` (a multi-Region key changing its primary: briefly unusable): 1.
/// - any state added to AWS later: 3, disabled, so a key we cannot classify is never
///   treated as usable.
pub fn key_state_from_aws(state: &AwsKeyState) -> KeyState {
    match state {
        AwsKeyState::Creating => KeyState::ToBeActivated,
        AwsKeyState::Enabled => KeyState::Enabled,
        AwsKeyState::Disabled => KeyState::Disabled,
        AwsKeyState::PendingDeletion => KeyState::PendingDeletion,
        AwsKeyState::PendingImport => KeyState::PendingImport,
        AwsKeyState::PendingReplicaDeletion => KeyState::PendingDeletion,
        AwsKeyState::Unavailable => KeyState::Disabled,
        AwsKeyState::Updating => KeyState::ToBeActivated,
        _ => KeyState::Disabled,
    }
}

/// The encryption context as AWS takes it.
fn aws_context(context: &EncryptionContext) -> std::collections::HashMap<String, String> {
    context
        .pairs()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A key that is not enabled refuses to wrap or unwrap data keys.
fn refused(owned: &Owned) -> Error {
    Error::KeyRefused {
        key_id: owned.key_id.clone(),
        state: owned.state.describe(),
        code: owned.state.code(),
    }
}

/// Error codes with which AWS says "no such key" (or "not yours to see").
fn means_absent(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "NotFoundException"
                | "InvalidArnException"
                | "AccessDeniedException"
                | "ValidationException"
        )
    )
}

/// `Ok(None)` when AWS says the key is not there (or not ours), else the KMS is
/// unavailable.
fn absent_or<T, E, R>(e: SdkError<E, R>, op: &str) -> Result<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    if let Some(service) = e.as_service_error() {
        if means_absent(service.code()) {
            if service.code() == Some("AccessDeniedException") {
                tracing::warn!(
                    op,
                    "AWS KMS denied access to a key: treating it as not found; check the service's IAM policy"
                );
            }
            return Ok(None);
        }
    }
    Err(unavailable(e, op))
}

/// A failure to get an answer from the KMS: it is unreachable, timed out, or refused
/// the service's credentials.
fn unavailable<E, R>(e: SdkError<E, R>, op: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let detail = match &e {
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::DispatchFailure(d) if d.is_timeout() => "timed out".to_owned(),
        SdkError::DispatchFailure(_) => "cannot connect".to_owned(),
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or("")
        ),
        SdkError::ResponseError(_) => "unreadable response".to_owned(),
        _ => "request not sent".to_owned(),
    };
    Error::KmsUnavailable(format!("AWS KMS {op}: {detail}"))
}

/// A lifecycle call's error: the state AWS refuses, the key gone, or the KMS unavailable.
fn call_error<E, R>(e: SdkError<E, R>, op: &'static str, key_id: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = e.as_service_error().and_then(|s| s.code());
    match code {
        Some("KMSInvalidStateException") => Error::KeyInvalidState {
            key_id: key_id.to_owned(),
            state: "in a state AWS KMS refuses",
            op,
        },
        Some("NotFoundException") => Error::KeyNotFound {
            key_id: key_id.to_owned(),
        },
        _ => unavailable(e, op),
    }
}

#[async_trait]
impl Kms for AwsKms {
    /// A tenant's keys are the keys tagged with its id (all tenants share the service's
    /// credentials): the id must be one AWS takes as a tag value, else the tenant can have
    /// no key, and the calls that find a tenant's keys must answer: ListKeys, and a key's
    /// tags (ListResourceTags). Any failure is reported, an access denied included (the key
    /// lookups take that for "not this tenant's key").
    async fn check_access(&self, tenant: &TenantId) -> Result<()> {
        tenant_tag(tenant)?;
        let page = self
            .client
            .list_keys()
            .limit(1)
            .send()
            .await
            .map_err(|e| unavailable(e, "ListKeys"))?;
        let Some(key_id) = page.keys().first().and_then(|k| k.key_id()) else {
            return Ok(());
        };
        match self.client.list_resource_tags().key_id(key_id).send().await {
            Ok(_) => Ok(()),
            // The key was deleted since ListKeys: the tags were readable as far as we know.
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NotFoundException") => {
                Ok(())
            }
            Err(e) => Err(unavailable(e, "ListResourceTags")),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .list_keys()
            .limit(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable(e, "ListKeys"))
    }

    async fn describe_key(&self, tenant: &TenantId, key_id: &str) -> Result<Option<KeyInfo>> {
        match self.owned(tenant, key_id).await? {
            Some(owned) => Ok(Some(self.info(owned).await?)),
            None => Ok(None),
        }
    }

    async fn create_key(
        &self,
        tenant: &TenantId,
        alias: &str,
        origin: KeyOrigin,
        inactive: bool,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        if inactive {
            return Err(Error::InvalidArgument(
                "AWS KMS has no inactive state for a new key: create it, then disable it".into(),
            ));
        }
        let alias = alias.strip_prefix("alias/").unwrap_or(alias);
        validate_aws_alias(alias)?;
        let tag = tenant_tag(tenant)?;
        let origin_name = origin.as_str();
        self.record_request(
            tenant,
            actor,
            CREATE_KEY,
            None,
            json!({"key_name": alias, "origin": origin_name}),
        )
        .await?;
        match self.create(tenant, alias, origin, tag).await {
            Ok(info) => {
                self.record_outcome(tenant, actor, CREATE_KEY, None, Some(json!(info)))
                    .await;
                Ok(info)
            }
            Err((e, key_id)) => {
                let failed = json!({
                    "key_name": alias, "origin": origin_name, "key_id": key_id,
                    "error_code": e.code(),
                });
                self.record_outcome(
                    tenant,
                    actor,
                    &format!("{CREATE_KEY}{FAILED}"),
                    None,
                    Some(failed),
                )
                .await;
                Err(e)
            }
        }
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_keys()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| unavailable(e, "ListKeys"))?;
            for key in page.keys() {
                if let Some(id) = key.key_id() {
                    if let Some(info) = self.describe_key(tenant, id).await? {
                        out.push(info);
                    }
                }
            }
            match page.next_marker() {
                Some(m) if page.truncated() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn enable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo> {
        let client = self.client.clone();
        self.transition(tenant, key_id, actor, ENABLE, json!({}), |id| async move {
            client
                .enable_key()
                .key_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| call_error(e, "enable it", &id))
        })
        .await
    }

    async fn disable_key(&self, tenant: &TenantId, key_id: &str, actor: &Actor) -> Result<KeyInfo> {
        let client = self.client.clone();
        self.transition(tenant, key_id, actor, DISABLE, json!({}), |id| async move {
            client
                .disable_key()
                .key_id(&id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| call_error(e, "disable it", &id))
        })
        .await
    }

    async fn schedule_key_deletion(
        &self,
        tenant: &TenantId,
        key_id: &str,
        pending_days: u32,
        actor: &Actor,
    ) -> Result<KeyInfo> {
        if !(MIN_PENDING_DAYS..=AWS_MAX_PENDING_DAYS).contains(&pending_days) {
            return Err(Error::InvalidArgument(format!(
                "pending days must be {MIN_PENDING_DAYS} to {AWS_MAX_PENDING_DAYS} on AWS KMS, got {pending_days}"
            )));
        }
        let client = self.client.clone();
        let details = json!({"pending_days": pending_days});
        self.transition(
            tenant,
            key_id,
            actor,
            SCHEDULE_DELETION,
            details,
            |id| async move {
                client
                    .schedule_key_deletion()
                    .key_id(&id)
                    .pending_window_in_days(pending_days as i32)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| call_error(e, "schedule its deletion", &id))
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
        let client = self.client.clone();
        self.transition(
            tenant,
            key_id,
            actor,
            CANCEL_DELETION,
            json!({}),
            |id| async move {
                client
                    .cancel_key_deletion()
                    .key_id(&id)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| call_error(e, "cancel its deletion", &id))
            },
        )
        .await
    }

    async fn import_key_material(
        &self,
        _tenant: &TenantId,
        _key_id: &str,
        _material: Option<Vec<u8>>,
        _actor: &Actor,
    ) -> Result<KeyInfo> {
        Err(Error::InvalidArgument(
            "import-key-material works on the local KMS only: on AWS KMS, import with AWS's own tools (GetParametersForImport, ImportKeyMaterial), which wrap the material for the KMS".into(),
        ))
    }

    /// GenerateDataKey (AES_256) with the repository's encryption context, under a key
    /// of this tenant that is enabled (checked first: an AWS-compatible KMS that does not
    /// check the state itself refuses the same).
    async fn generate_data_key(
        &self,
        tenant: &TenantId,
        key_id: &str,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey> {
        let owned = self.require(tenant, key_id).await?;
        if owned.state != KeyState::Enabled {
            return Err(refused(&owned));
        }
        let out = self
            .client
            .generate_data_key()
            .key_id(&owned.key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .set_encryption_context(Some(aws_context(context)))
            .send()
            .await
            .map_err(|e| match e.as_service_error().and_then(|s| s.code()) {
                Some("DisabledException" | "KMSInvalidStateException") => Error::KeyRefused {
                    key_id: owned.key_id.clone(),
                    state: "in a state AWS KMS refuses",
                    code: owned.state.code(),
                },
                Some("NotFoundException") => Error::KeyNotFound {
                    key_id: owned.key_id.clone(),
                },
                _ => unavailable(e, "GenerateDataKey"),
            })?;
        let plaintext = out
            .plaintext()
            .and_then(|b| DataKey::from_slice(b.as_ref()))
            .ok_or_else(|| {
                Error::KmsUnavailable("AWS KMS GenerateDataKey: no 32-byte key".into())
            })?;
        let wrapped = out
            .ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| {
                Error::KmsUnavailable("AWS KMS GenerateDataKey: no ciphertext".into())
            })?;
        Ok(GeneratedKey { plaintext, wrapped })
    }

    /// Decrypt with the key's id and the repository's encryption context. The caller has
    /// checked the key is this tenant's and enabled (moto does not check the state).
    async fn decrypt_data_key(
        &self,
        _tenant: &TenantId,
        key_id: &str,
        wrapped: &[u8],
        context: &EncryptionContext,
        repo_id: RepoId,
    ) -> Result<DataKey> {
        let invalid = || Error::DataKeyInvalid {
            repo_id: repo_id.get(),
        };
        let out = match self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped))
            .set_encryption_context(Some(aws_context(context)))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return Err(match e.as_service_error().and_then(|s| s.code()) {
                    Some("InvalidCiphertextException" | "IncorrectKeyException") => invalid(),
                    Some("DisabledException" | "KMSInvalidStateException") => {
                        match self.described(key_id).await {
                            Ok(Some(owned)) => refused(&owned),
                            Ok(None) => Error::CmkGone {
                                key_id: key_id.to_owned(),
                            },
                            Err(e) => e,
                        }
                    }
                    Some("NotFoundException") => Error::CmkGone {
                        key_id: key_id.to_owned(),
                    },
                    _ => unavailable(e, "Decrypt"),
                })
            }
        };
        out.plaintext()
            .and_then(|b| DataKey::from_slice(b.as_ref()))
            .ok_or_else(invalid)
    }

    /// ReEncrypt from the old key to the new one, the repository's encryption context on
    /// both sides (SourceEncryptionContext, DestinationEncryptionContext): the key in clear
    /// never leaves AWS KMS. Both keys are checked first to be this tenant's and enabled
    /// (moto does not check the states itself), the old one first.
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
            .owned(tenant, old_key_id)
            .await?
            .ok_or_else(|| Error::CmkGone {
                key_id: old_key_id.to_owned(),
            })?;
        if old.state != KeyState::Enabled {
            return Err(refused(&old));
        }
        let new = self.require(tenant, new_key_id).await?;
        if new.state != KeyState::Enabled {
            return Err(refused(&new));
        }
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped))
            .source_key_id(&old.key_id)
            .destination_key_id(&new.key_id)
            .set_source_encryption_context(Some(aws_context(context)))
            .set_destination_encryption_context(Some(aws_context(context)))
            .send()
            .await
            .map_err(|e| match e.as_service_error().and_then(|s| s.code()) {
                Some("InvalidCiphertextException" | "IncorrectKeyException") => {
                    Error::DataKeyInvalid {
                        repo_id: repo_id.get(),
                    }
                }
                Some("DisabledException" | "KMSInvalidStateException") => Error::KeyRefused {
                    key_id: old.key_id.clone(),
                    state: "in a state AWS KMS refuses",
                    code: old.state.code(),
                },
                Some("NotFoundException") => Error::CmkGone {
                    key_id: old.key_id.clone(),
                },
                // Permanent, not an outage: a key policy without kms:ReEncrypt* (a rewrap
                // records it as the repository's failure instead of retrying for ever).
                Some("AccessDeniedException") => Error::KeyRefused {
                    key_id: old.key_id.clone(),
                    state: "not usable by this service (AWS KMS denied access: the key policy must allow kms:ReEncryptFrom and kms:ReEncryptTo)",
                    code: old.state.code(),
                },
                _ => unavailable(e, "ReEncrypt"),
            })?;
        out.ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| Error::KmsUnavailable("AWS KMS ReEncrypt: no ciphertext".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports the thread a task it spawns runs on, as the SDK's hyper client spawns the
    /// task of each connection it opens.
    #[derive(Debug)]
    struct SpawnsAConnectionTask(Arc<std::sync::Mutex<Option<String>>>);

    impl HttpConnector for SpawnsAConnectionTask {
        fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
            let seen = self.0.clone();
            HttpConnectorFuture::new(async move {
                let on = tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                    .await
                    .ok()
                    .flatten();
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = on;
                Err(
                    aws_smithy_runtime_api::client::result::ConnectorError::other(
                        "no network in this test".into(),
                        None,
                    ),
                )
            })
        }
    }

    #[test]
    fn the_sdk_opens_its_connections_on_the_home_runtime() {
        let (_main, home) = crate::home::test_runtimes::home();
        let seen = Arc::new(std::sync::Mutex::new(None));
        let connector = AtHomeConnector {
            connector: SharedHttpConnector::new(SpawnsAConnectionTask(seen.clone())),
            home,
        };
        // A connection thread's runtime makes the call.
        let connection_thread = crate::home::test_runtimes::connection_thread();
        let answer = connection_thread.block_on(connector.call(HttpRequest::empty()));
        assert!(answer.is_err());
        let on = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(on.as_deref(), Some("home-worker"));
    }

    #[test]
    fn every_aws_state_maps_to_an_api_state() {
        let cases = [
            (AwsKeyState::Creating, KeyState::ToBeActivated),
            (AwsKeyState::Enabled, KeyState::Enabled),
            (AwsKeyState::Disabled, KeyState::Disabled),
            (AwsKeyState::PendingDeletion, KeyState::PendingDeletion),
            (AwsKeyState::PendingImport, KeyState::PendingImport),
            (
                AwsKeyState::PendingReplicaDeletion,
                KeyState::PendingDeletion,
            ),
            (AwsKeyState::Unavailable, KeyState::Disabled),
            (AwsKeyState::Updating, KeyState::ToBeActivated),
            (AwsKeyState::from("SomethingNew"), KeyState::Disabled),
        ];
        for (aws, ours) in cases {
            assert_eq!(key_state_from_aws(&aws), ours, "{aws:?}");
        }
        // Only Enabled is usable.
        for aws in AwsKeyState::values() {
            let ours = key_state_from_aws(&AwsKeyState::from(*aws));
            assert_eq!(ours == KeyState::Enabled, *aws == "Enabled", "{aws}");
        }
    }

    #[test]
    fn absence_codes() {
        assert!(means_absent(Some("NotFoundException")));
        assert!(means_absent(Some("AccessDeniedException")));
        assert!(!means_absent(Some("KMSInternalException")));
        assert!(!means_absent(Some("UnrecognizedClientException")));
        assert!(!means_absent(None));
    }
}
