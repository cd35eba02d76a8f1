//! Validated domain types: request input becomes these at the edge, so the core never
//! re-checks raw strings.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::error::Error;

/// Shortest and longest string the seeds allow for tenant ids and CMK fields.
pub const MIN_LEN: usize = 1;
pub const MAX_LEN: usize = 1000;

/// The one length rule for text: in the API (tenant ids, CMK ids and names), on the
/// command line (`--user`, `--user-name`, `--actor`) and in the configuration (`region`,
/// `region_type`, `kms_region`). 1 to 1000 characters, counted as Unicode scalar values,
/// nothing trimmed (a single space is one character). `Err` holds the count.
pub fn text_len(value: &str) -> Result<usize, usize> {
    let n = value.chars().count();
    if (MIN_LEN..=MAX_LEN).contains(&n) {
        Ok(n)
    } else {
        Err(n)
    }
}

/// [`text_len`] for a command-line flag or a configuration key `name`.
pub fn check_text_arg(name: &str, value: &str) -> Result<(), Error> {
    text_len(value).map(|_| ()).map_err(|_| {
        Error::InvalidArgument(format!("{name} must be {MIN_LEN} to {MAX_LEN} characters"))
    })
}

pub(crate) fn check_len(field: &'static str, value: &str) -> Result<(), Error> {
    match text_len(value) {
        Ok(_) => Ok(()),
        Err(0) => Err(Error::invalid(field, "must not be empty")),
        Err(n) => Err(Error::invalid(
            field,
            format!("must be at most {MAX_LEN} characters, got {n}"),
        )),
    }
}

/// A tenant (domain) id: 1..=1000 characters, no control characters. Deserialized
/// through [`TenantId::parse`], so no invalid one can be made that way either.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TenantId(String);

impl Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl TryFrom<String> for TenantId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        TenantId::parse(value)
    }
}

impl TenantId {
    pub fn parse(value: impl Into<String>) -> Result<Self, Error> {
        let value = value.into();
        check_len("tenant_id", &value)?;
        if value.chars().any(char::is_control) {
            return Err(Error::invalid(
                "tenant_id",
                "must not contain control characters",
            ));
        }
        Ok(TenantId(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A project id: exactly 32 ASCII letters or digits (the seeds' 32-character UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ProjectId(String);

impl ProjectId {
    pub fn parse(value: &str) -> Result<Self, Error> {
        if value.len() == 32 && value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(ProjectId(value.to_owned()))
        } else {
            Err(Error::InvalidProjectId)
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A CMK id or name as sent by a client: 1..=1000 characters. Deserialized through
/// [`CmkText::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CmkText(String);

impl Serialize for CmkText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl TryFrom<String> for CmkText {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        CmkText::parse("cmk_key_id or cmk_key_name", &value)
    }
}

impl CmkText {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, Error> {
        check_len(field, value)?;
        Ok(CmkText(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

/// `encryption_type`: read case-insensitively, always written as `KMS` or `normal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptionType {
    Kms,
    Normal,
}

impl EncryptionType {
    pub fn parse(value: &str) -> Result<Self, Error> {
        if value.eq_ignore_ascii_case("kms") {
            Ok(EncryptionType::Kms)
        } else if value.eq_ignore_ascii_case("normal") {
            Ok(EncryptionType::Normal)
        } else {
            Err(Error::invalid(
                "encryption_type",
                format!(
                    "unknown value `{}`: expected KMS or normal",
                    truncate(value, 64)
                ),
            ))
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            EncryptionType::Kms => "KMS",
            EncryptionType::Normal => "normal",
        }
    }
}

impl Serialize for EncryptionType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EncryptionType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EncryptionType::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// State of a customer master key, with the seeds' integer codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// 1: to be activated (created, not yet usable).
    ToBeActivated = 1,
    /// 2: enabled.
    Enabled = 2,
    /// 3: disabled.
    Disabled = 3,
    /// 4: pending deletion.
    PendingDeletion = 4,
    /// 5: pending import (external key without material).
    PendingImport = 5,
}

impl KeyState {
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => KeyState::ToBeActivated,
            2 => KeyState::Enabled,
            3 => KeyState::Disabled,
            4 => KeyState::PendingDeletion,
            5 => KeyState::PendingImport,
            _ => return None,
        })
    }
    pub fn describe(self) -> &'static str {
        match self {
            KeyState::ToBeActivated => "to be activated",
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending deletion",
            KeyState::PendingImport => "pending import",
        }
    }
}

impl Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for KeyState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = i64::deserialize(d)?;
        KeyState::from_code(code)
            .ok_or_else(|| serde::de::Error::custom(format!("no key state {code}")))
    }
}

/// A caller's role within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
    /// A platform service principal (a storage node): belongs to no tenant, may register
    /// repositories and receive their data keys in any tenant, and change no setting.
    Service,
}

/// `permit_public` of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PermitPublic {
    Allow,
    Deny,
}

impl PermitPublic {
    pub fn as_str(self) -> &'static str {
        match self {
            PermitPublic::Allow => "allow",
            PermitPublic::Deny => "deny",
        }
    }
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "allow" => Some(PermitPublic::Allow),
            "deny" => Some(PermitPublic::Deny),
            _ => None,
        }
    }
}

/// Who is calling: the result of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant_id: TenantId,
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
    /// Unix seconds after which the credential is no longer valid.
    pub expires_at: u64,
}

impl Identity {
    /// The tenant field of a service principal: the principal belongs to no tenant, and
    /// this marker grants nothing (every rule below looks at the role first).
    pub const PLATFORM: &'static str = "-";

    /// A platform service principal named `name` (its user id is `service:NAME`).
    pub fn service(name: &str, expires_at: u64) -> Result<Self, Error> {
        check_text_arg("--service", name)?;
        Ok(Identity {
            tenant_id: TenantId(Self::PLATFORM.to_owned()),
            user_id: format!("service:{name}"),
            user_name: name.to_owned(),
            role: Role::Service,
            expires_at,
        })
    }

    pub fn is_service(&self) -> bool {
        self.role == Role::Service
    }

    /// Reading a tenant's data needs any role in that tenant. Service principals read
    /// only what [`authorize_repositories`](Self::authorize_repositories) allows.
    pub fn authorize_read(&self, tenant: &str) -> Result<(), Error> {
        if self.is_service() {
            Err(Error::ServiceNotAllowed)
        } else if self.tenant_id.as_str() == tenant {
            Ok(())
        } else {
            Err(Error::ForeignTenant)
        }
    }
    /// Changing a tenant's data needs the admin role in that tenant.
    pub fn authorize_write(&self, tenant: &str) -> Result<(), Error> {
        self.authorize_read(tenant)?;
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(Error::AdminRequired)
        }
    }
    /// Listing a tenant's repositories: any role in that tenant, or a service principal.
    pub fn authorize_repositories(&self, tenant: &str) -> Result<(), Error> {
        if self.is_service() {
            Ok(())
        } else {
            self.authorize_read(tenant)
        }
    }
    /// Registering repositories, and receiving or destroying their data keys: service
    /// principals only. A tenant user of another tenant is told so first, like
    /// everywhere else.
    pub fn authorize_service(&self, tenant: &str) -> Result<(), Error> {
        if self.is_service() {
            Ok(())
        } else {
            self.authorize_read(tenant)?;
            Err(Error::ServiceOnly)
        }
    }
}

/// Where a change came from, for the audit record.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `user_id` of the API caller, or `cli` for the command line.
    pub actor: String,
    pub request_id: Option<String>,
}

impl Actor {
    /// The command line: actor `cli` with a request id of its own, `cli-` and 32 random
    /// hex digits. `repocrypt` makes one per invocation, so every record a command writes
    /// carries the same id, and no two invocations share one.
    pub fn cli() -> Self {
        Actor {
            actor: "cli".into(),
            request_id: Some(format!("cli-{:032x}", rand::random::<u128>())),
        }
    }
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializing_goes_through_parse() {
        let tenant: TenantId = serde_json::from_str(r#""t1""#).expect("valid tenant");
        assert_eq!(tenant.as_str(), "t1");
        let long = serde_json::to_string(&"x".repeat(1001)).expect("json");
        for bad in [r#""""#, r#""a\u0007b""#, long.as_str()] {
            let err = serde_json::from_str::<TenantId>(bad)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("tenant_id"), "{bad}: {err}");
        }
        let cmk: CmkText = serde_json::from_str(r#"" ""#).expect("one character");
        assert_eq!(cmk.as_str(), " ");
        for bad in [r#""""#, long.as_str()] {
            let err = serde_json::from_str::<CmkText>(bad)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("cmk_key_id"), "{bad}: {err}");
        }
        // Serialized as before: the plain string.
        assert_eq!(serde_json::to_string(&tenant).expect("json"), r#""t1""#);
    }

    #[test]
    fn text_length_is_1_to_1000_characters_untrimmed() {
        assert_eq!(text_len(""), Err(0));
        assert_eq!(text_len(" "), Ok(1));
        assert_eq!(text_len(&"é".repeat(1000)), Ok(1000));
        assert_eq!(text_len(&"é".repeat(1001)), Err(1001));
        assert!(check_text_arg("--user", "\t").is_ok());
        let err = check_text_arg("--user", "").expect_err("empty").to_string();
        assert_eq!(err, "--user must be 1 to 1000 characters");
        assert!(check_len("f", "").is_err() && check_len("f", &"x".repeat(1001)).is_err());
    }

    #[test]
    fn encryption_type_is_case_insensitive_and_canonical() {
        for s in ["KMS", "kms", "Kms"] {
            assert_eq!(EncryptionType::parse(s).ok(), Some(EncryptionType::Kms));
        }
        for s in ["Normal", "normal", "NORMAL"] {
            assert_eq!(EncryptionType::parse(s).ok(), Some(EncryptionType::Normal));
        }
        assert!(EncryptionType::parse("aes").is_err());
        assert_eq!(EncryptionType::Kms.as_str(), "KMS");
        assert_eq!(EncryptionType::Normal.as_str(), "normal");
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(CmkText::parse("cmk_key_id", "").is_err());
        assert!(CmkText::parse("cmk_key_id", &"x".repeat(1000)).is_ok());
        assert!(CmkText::parse("cmk_key_id", &"x".repeat(1001)).is_err());
        // characters, not bytes
        assert!(CmkText::parse("cmk_key_id", &"é".repeat(1000)).is_ok());
    }

    #[test]
    fn cli_actors_carry_a_fresh_request_id() {
        let (a, b) = (Actor::cli(), Actor::cli());
        assert_eq!(a.actor, "cli");
        let id = a.request_id.clone().unwrap_or_default();
        let hex = id.strip_prefix("cli-").unwrap_or_default();
        assert_eq!(hex.len(), 32, "{id}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_ne!(a.request_id, b.request_id);
    }

    #[test]
    fn project_ids_are_32_alphanumerics() {
        assert!(ProjectId::parse(&"a".repeat(32)).is_ok());
        assert!(ProjectId::parse(&"a".repeat(31)).is_err());
        assert!(ProjectId::parse(&"a".repeat(33)).is_err());
        assert!(ProjectId::parse(&format!("{}-", "a".repeat(31))).is_err());
    }
}
