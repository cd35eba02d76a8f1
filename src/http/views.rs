//! The API's answers as the seeds spell them (field names, what is omitted), with their
//! OpenAPI schemas, built from what the service returns.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{
    EncryptionType, KeyState, PermitPublic, SettingReport, TenantId, TenantSetting,
};

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

impl From<SettingReport> for SettingView {
    fn from(report: SettingReport) -> Self {
        let setting = report.setting.as_ref();
        SettingView {
            id: setting.map(|s| s.id),
            tenant_id: report.tenant_id.as_str().to_owned(),
            encryption_type: setting.and_then(|s| s.encryption_type),
            default_encryption_enabled: setting.is_some_and(|s| s.default_encryption_enabled),
            cmk_key_name: setting.and_then(|s| s.cmk_key_name.clone()),
            cmk_key_id: setting.and_then(|s| s.cmk_key_id.clone()),
            key_state: setting
                .and_then(|s| s.cmk_key_id.as_ref())
                .and(report.key_state),
            region: report.region,
            region_type: report.region_type,
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
