//! Records the store keeps and the views the API returns.

use serde::Serialize;
use utoipa::ToSchema;

use super::types::{EncryptionType, KeyState, PermitPublic, TenantId};

/// A tenant's stored repository-encryption setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    pub id: i64,
    pub tenant_id: TenantId,
    pub encryption_type: Option<EncryptionType>,
    pub default_encryption_enabled: bool,
    pub cmk_key_id: Option<String>,
    pub cmk_key_name: Option<String>,
}

/// The new content of a setting, before the store assigns (or keeps) its id.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingDraft {
    pub encryption_type: Option<EncryptionType>,
    pub default_encryption_enabled: bool,
    pub cmk_key_id: Option<String>,
    pub cmk_key_name: Option<String>,
}

/// A parsed PUT body: every field optional, absent (or null) keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingPatch {
    pub tenant_id: Option<String>,
    pub encryption_type: Option<EncryptionType>,
    pub default_encryption_enabled: Option<bool>,
    pub cmk_key_name: Option<String>,
    pub cmk_key_id: Option<String>,
}

/// A tenant's KMS grant.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub tenant_id: TenantId,
    pub granted_by: String,
    pub granted_at: String,
}

/// A project and the tenant that owns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    pub project_id: String,
    pub tenant_id: String,
    pub name: String,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: String,
    pub tenant_id: String,
    pub actor: String,
    pub request_id: Option<String>,
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Response of PUT and GET `/v4/tenants/{tenant_id}/repo-encryption/setting`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SettingView {
    /// Record id, assigned on first write; absent for a tenant that never wrote a setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2147483647, format = Int64, nullable = false)]
    pub id: Option<i64>,
    #[schema(min_length = 1, max_length = 1000)]
    pub tenant_id: String,
    /// `KMS`, `normal`, or null for a tenant that never configured anything.
    #[schema(value_type = Option<EncryptionTypeOut>)]
    pub encryption_type: Option<EncryptionType>,
    pub default_encryption_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub cmk_key_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 1000, nullable = false)]
    pub cmk_key_id: Option<String>,
    /// Current state of the key in KMS: 1 to be activated, 2 enabled, 3 disabled,
    /// 4 pending deletion, 5 pending import.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<KeyStateCode>, nullable = false)]
    pub key_state: Option<KeyState>,
    #[schema(min_length = 1, max_length = 1000)]
    pub region: String,
    #[schema(min_length = 1, max_length = 1000)]
    pub region_type: String,
}

/// Response of the kms-grant operations.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GrantView {
    #[schema(min_length = 1, max_length = 1000)]
    pub tenant_id: String,
    pub assumed: bool,
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
