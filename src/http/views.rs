//! The API's answers as the seeds spell them (field names, what is omitted), with their
//! OpenAPI schemas, built from what the service returns.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::ports::KeyInfo;
use crate::domain::{
    DataKey, EncryptionType, KeyState, PermitPublic, Registered, Released, RepoFields, RewrapJob,
    RewrapState, SettingReport, TenantId, TenantSetting,
};

/// Response of PUT and GET `/v4/tenants/{tenant_id}/repo-encryption/setting`, borrowed
/// from the report it answers (encoding it copies no string first).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SettingView<'a> {
    /// Record id, assigned on first write; absent for a tenant that never wrote a setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2147483647, format = Int64, nullable = false)]
    pub id: Option<i64>,
    #[schema(min_length = 1, max_length = 1000)]
    pub tenant_id: &'a str,
    /// `KMS`, `normal`, or null for a tenant that never configured anything.
    #[schema(value_type = Option<EncryptionTypeOut>)]
    pub encryption_type: Option<EncryptionType>,
    pub default_encryption_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub cmk_key_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub cmk_key_id: Option<&'a str>,
    /// Current state of the key in KMS: 1 to be activated, 2 enabled, 3 disabled,
    /// 4 pending deletion, 5 pending import.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<KeyStateCode>, nullable = false)]
    pub key_state: Option<KeyState>,
    #[schema(min_length = 1, max_length = 1000)]
    pub region: &'a str,
    #[schema(min_length = 1, max_length = 1000)]
    pub region_type: &'a str,
}

impl<'a> From<&'a SettingReport> for SettingView<'a> {
    fn from(report: &'a SettingReport) -> Self {
        let setting = report.setting.as_ref();
        SettingView {
            id: setting.map(|s| s.id),
            tenant_id: report.tenant_id.as_str(),
            encryption_type: setting.and_then(|s| s.encryption_type),
            default_encryption_enabled: setting.is_some_and(|s| s.default_encryption_enabled),
            cmk_key_name: setting.and_then(|s| s.cmk_key_name.as_deref()),
            cmk_key_id: setting.and_then(|s| s.cmk_key_id.as_deref()),
            key_state: setting
                .and_then(|s| s.cmk_key_id.as_ref())
                .and(report.key_state),
            region: &report.region,
            region_type: &report.region_type,
        }
    }
}

/// Response of the kms-grant operations.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GrantView {
    #[schema(min_length = 1, max_length = 1000)]
    pub tenant_id: String,
    pub assumed: bool,
}

impl GrantView {
    pub fn new(tenant: &TenantId, assumed: bool) -> Self {
        GrantView {
            tenant_id: tenant.as_str().to_owned(),
            assumed,
        }
    }
}

/// Response of `GET /v4/tenant/setting`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TenantSettingView {
    pub default_encryption_enabled: bool,
    #[schema(value_type = Option<EncryptionTypeOut>)]
    pub encryption_type: Option<EncryptionType>,
    #[schema(value_type = PermitPublicOut)]
    pub permit_public: PermitPublic,
}

impl From<TenantSetting> for TenantSettingView {
    fn from(t: TenantSetting) -> Self {
        TenantSettingView {
            default_encryption_enabled: t.default_encryption_enabled,
            encryption_type: t.encryption_type,
            permit_public: t.permit_public,
        }
    }
}

/// `encryption_type` as the service writes it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum EncryptionTypeOut {
    #[schema(rename = "KMS")]
    Kms,
    #[schema(rename = "normal")]
    Normal,
}

/// `permit_public`: `allow` or `deny`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum PermitPublicOut {
    Allow,
    Deny,
}

/// Key state code: 1 to be activated, 2 enabled, 3 disabled, 4 pending deletion, 5 pending import.
pub struct KeyStateCode;

impl utoipa::PartialSchema for KeyStateCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .enum_values(Some([1, 2, 3, 4, 5]))
            .description(Some(
                "1 to be activated, 2 enabled, 3 disabled, 4 pending deletion, 5 pending import",
            ))
            .into()
    }
}

impl ToSchema for KeyStateCode {}

// ---- the key broker ------------------------------------------------------------------

/// A key of ListTenantCmks, as the SDK's `TenantCmkDto` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CmkView {
    pub cmk_key_name: String,
    pub cmk_key_id: String,
    #[schema(value_type = KeyStateCode)]
    pub key_state: KeyState,
}

impl From<KeyInfo> for CmkView {
    fn from(k: KeyInfo) -> Self {
        CmkView {
            cmk_key_name: k.key_name,
            cmk_key_id: k.key_id,
            key_state: k.key_state,
        }
    }
}

/// A repository as the SDK's `RepoEncryptionDto` reads it (ListTenantEncryptedRepositories).
/// Fields the platform did not register are absent.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RepoView {
    #[schema(minimum = 1, maximum = 2147483647, format = Int32)]
    pub repo_id: i32,
    #[schema(min_length = 1, max_length = 1000)]
    pub repo_name: String,
    #[schema(min_length = 1, max_length = 1000)]
    pub full_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub project_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, format = Int64, nullable = false)]
    pub owner_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub owner_iam_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub owner_tenant_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub owner_nick_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub owner_name: Option<String>,
}

impl From<&RepoFields> for RepoView {
    fn from(f: &RepoFields) -> Self {
        RepoView {
            repo_id: f.repo_id.get(),
            repo_name: f.repo_name.clone(),
            full_path: f.full_path.clone(),
            project_id: f.project_id.clone(),
            project_name: f.project_name.clone(),
            owner_id: f.owner_id,
            owner_iam_id: f.owner_iam_id.clone(),
            owner_tenant_name: f.owner_tenant_name.clone(),
            owner_nick_name: f.owner_nick_name.clone(),
            owner_name: f.owner_name.clone(),
        }
    }
}

/// A data key in base64, zeroed when the answer is dropped.
pub type SecretText = zeroize::Zeroizing<String>;

fn base64_key(key: &DataKey) -> SecretText {
    use base64::Engine;
    zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.expose()))
}

/// Answer of a registration: the repository, whether it is encrypted, its CMK and (when
/// encrypted) its data key. (No `Debug`: it holds a key.)
#[derive(Serialize, ToSchema)]
pub struct RegisteredView {
    #[serde(flatten)]
    pub repository: RepoView,
    pub encrypted: bool,
    #[schema(nullable = true)]
    pub cmk_key_id: Option<String>,
    /// Base64 of the 32-byte data key (encrypted repositories only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false, min_length = 44, max_length = 44)]
    pub data_key: Option<SecretText>,
}

impl From<&Registered> for RegisteredView {
    fn from(r: &Registered) -> Self {
        RegisteredView {
            repository: RepoView::from(&r.repository.fields),
            encrypted: r.repository.encrypted,
            cmk_key_id: r.repository.cmk_key_id.clone(),
            data_key: r.data_key.as_ref().map(base64_key),
        }
    }
}

/// Answer of a release. (No `Debug`: it holds a key.)
#[derive(Serialize, ToSchema)]
pub struct DataKeyView {
    #[schema(minimum = 1, maximum = 2147483647, format = Int32)]
    pub repo_id: i32,
    pub cmk_key_id: String,
    /// Base64 of the 32-byte data key.
    #[schema(value_type = String, min_length = 44, max_length = 44)]
    pub data_key: SecretText,
    /// How long the storage node may keep the key, in seconds (the key-state TTL).
    #[schema(minimum = 0)]
    pub cache_seconds: u64,
}

impl From<&Released> for DataKeyView {
    fn from(r: &Released) -> Self {
        DataKeyView {
            repo_id: r.repo_id.get(),
            cmk_key_id: r.cmk_key_id.clone(),
            data_key: base64_key(&r.data_key),
            cache_seconds: r.cache_seconds,
        }
    }
}

/// Where a rewrap job is: `running`; `succeeded` (every repository rewrapped); `failed`
/// (finished with repositories in `failed`, or stopped by `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RewrapStateView {
    Running,
    Succeeded,
    Failed,
}

impl From<RewrapState> for RewrapStateView {
    fn from(s: RewrapState) -> Self {
        match s {
            RewrapState::Running => RewrapStateView::Running,
            RewrapState::Succeeded => RewrapStateView::Succeeded,
            RewrapState::Failed => RewrapStateView::Failed,
        }
    }
}

/// A repository a rewrap job could not rewrap, and why.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RewrapFailureView {
    #[schema(minimum = 1, maximum = 2147483647, format = Int32)]
    pub repo_id: i32,
    /// What refused it, as an error message says it (the old key disabled, say).
    pub reason: String,
}

/// A rewrap job of the tenant's data keys under its current CMK.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RewrapJobView {
    /// The job's id (a UUID), for GET `…/rewrap/{job_id}`.
    pub job_id: String,
    pub state: RewrapStateView,
    /// The CMK the data keys are rewrapped under.
    pub target_key_id: String,
    /// Repositories to rewrap (counted at the start).
    #[schema(minimum = 0)]
    pub total: u64,
    /// Repositories rewrapped so far.
    #[schema(minimum = 0)]
    pub done: u64,
    /// Repositories not rewrapped, by id, each with its reason.
    pub failed: Vec<RewrapFailureView>,
    /// Why the job stopped before its end (its target key became unusable), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[schema(nullable = true)]
    pub finished_at: Option<String>,
}

impl From<&RewrapJob> for RewrapJobView {
    fn from(j: &RewrapJob) -> Self {
        RewrapJobView {
            job_id: j.job_id.clone(),
            state: j.state.into(),
            target_key_id: j.target_key_id.clone(),
            total: j.total,
            done: j.done,
            failed: j
                .failed
                .iter()
                .map(|f| RewrapFailureView {
                    repo_id: f.repo_id.get(),
                    reason: f.reason.clone(),
                })
                .collect(),
            error: j.error.clone(),
            created_at: j.created_at.clone(),
            updated_at: j.updated_at.clone(),
            finished_at: j.finished_at.clone(),
        }
    }
}
