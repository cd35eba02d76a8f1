//! Records the store keeps and what the operations answer.

use serde::Serialize;

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

/// What GET and PUT setting answer: the tenant's stored setting (if any), its key's
/// current state in KMS, and the service's region.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingReport {
    pub tenant_id: TenantId,
    pub setting: Option<Setting>,
    /// The state of the setting's key now; `None` without a key, or when the key is gone.
    pub key_state: Option<KeyState>,
    pub region: std::sync::Arc<str>,
    pub region_type: std::sync::Arc<str>,
}

/// What `GET /v4/tenant/setting` answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantSetting {
    pub default_encryption_enabled: bool,
    pub encryption_type: Option<EncryptionType>,
    pub permit_public: PermitPublic,
}
