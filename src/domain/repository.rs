//! Repositories and their data keys (envelope encryption): what the platform registers,
//! what a storage node is released, and the types that hold a key in clear.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::error::Error;
use super::types::{check_len, truncate, TenantId};

/// Length of a data key (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// A repository id: the SDK's `repo_id`, an integer 1..=2147483647.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RepoId(i32);

impl RepoId {
    pub const MAX: i64 = i32::MAX as i64;

    pub fn new(value: i64) -> Result<Self, Error> {
        if (1..=Self::MAX).contains(&value) {
            Ok(RepoId(value as i32))
        } else {
            Err(Error::invalid(
                "repo_id",
                format!("must be an integer from 1 to {}, got {value}", Self::MAX),
            ))
        }
    }

    /// A path segment: digits only, 1..=2147483647.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(
                "repo_id",
                format!(
                    "must be an integer from 1 to {}, got `{}`",
                    Self::MAX,
                    truncate(text, 16)
                ),
            ));
        }
        Self::new(text.parse::<i64>().unwrap_or(0))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A repository as the platform describes it: the SDK's `RepoEncryptionDto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoFields {
    pub repo_id: RepoId,
    pub repo_name: String,
    pub full_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_iam_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_tenant_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_nick_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_name: Option<String>,
}

/// A registration: the repository and, if the platform chose, whether to encrypt it
/// (absent: the tenant's `default_encryption_enabled` at that moment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub fields: RepoFields,
    pub encrypted: Option<bool>,
}

/// The text fields of a registration body, each optional but `repo_name` and
/// `full_path`, each 1..=1000 characters.
const TEXT_FIELDS: [&str; 8] = [
    "repo_name",
    "full_path",
    "project_id",
    "project_name",
    "owner_iam_id",
    "owner_tenant_name",
    "owner_nick_name",
    "owner_name",
];

/// Every field a registration body may have.
pub const REGISTRATION_FIELDS: [&str; 11] = [
    "repo_id",
    "repo_name",
    "full_path",
    "project_id",
    "project_name",
    "owner_id",
    "owner_iam_id",
    "owner_tenant_name",
    "owner_nick_name",
    "owner_name",
    "encrypted",
];

/// Parse a registration body (a JSON object) with errors that name the field. `null` is
/// the same as an absent field.
pub fn parse_registration(body: &[u8]) -> Result<Registration, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequestBody(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Error::BadRequestBody(
            "the body must be a JSON object".into(),
        ));
    };
    if let Some(unknown) = map
        .keys()
        .find(|k| !REGISTRATION_FIELDS.contains(&k.as_str()))
    {
        return Err(Error::BadRequestBody(format!(
            "unknown field `{}`; the fields are {}",
            truncate(unknown, 64),
            REGISTRATION_FIELDS.join(", ")
        )));
    }
    let get = |name: &str| map.get(name).filter(|v| !v.is_null());
    let integer = |name: &'static str| -> Result<Option<i64>, Error> {
        match get(name) {
            None => Ok(None),
            // JSON Schema's integers include integral numbers written with a fraction
            // (`7.0`); only those exactly representable are taken.
            Some(v) => v
                .as_i64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
                        .map(|f| f as i64)
                })
                .map(Some)
                .ok_or_else(|| Error::invalid(name, "must be an integer")),
        }
    };
    let mut text = TextFields::default();
    for name in TEXT_FIELDS {
        if let Some(v) = get(name) {
            let s = v
                .as_str()
                .ok_or_else(|| Error::invalid(name, "must be a string"))?;
            check_len(name, s)?;
            text.set(name, s.to_owned());
        }
    }
    let repo_id = integer("repo_id")?.ok_or_else(|| Error::invalid("repo_id", "is required"))?;
    let owner_id = integer("owner_id")?;
    if owner_id.is_some_and(|o| o < 0) {
        return Err(Error::invalid("owner_id", "must not be negative"));
    }
    let encrypted = match get("encrypted") {
        None => None,
        Some(v) => Some(
            v.as_bool()
                .ok_or_else(|| Error::invalid("encrypted", "must be true or false"))?,
        ),
    };
    Ok(Registration {
        fields: RepoFields {
            repo_id: RepoId::new(repo_id)?,
            repo_name: text
                .repo_name
                .ok_or_else(|| Error::invalid("repo_name", "is required"))?,
            full_path: text
                .full_path
                .ok_or_else(|| Error::invalid("full_path", "is required"))?,
            project_id: text.project_id,
            project_name: text.project_name,
            owner_id,
            owner_iam_id: text.owner_iam_id,
            owner_tenant_name: text.owner_tenant_name,
            owner_nick_name: text.owner_nick_name,
            owner_name: text.owner_name,
        },
        encrypted,
    })
}

#[derive(Default)]
struct TextFields {
    repo_name: Option<String>,
    full_path: Option<String>,
    project_id: Option<String>,
    project_name: Option<String>,
    owner_iam_id: Option<String>,
    owner_tenant_name: Option<String>,
    owner_nick_name: Option<String>,
    owner_name: Option<String>,
}

impl TextFields {
    fn set(&mut self, name: &str, value: String) {
        let slot = match name {
            "repo_name" => &mut self.repo_name,
            "full_path" => &mut self.full_path,
            "project_id" => &mut self.project_id,
            "project_name" => &mut self.project_name,
            "owner_iam_id" => &mut self.owner_iam_id,
            "owner_tenant_name" => &mut self.owner_tenant_name,
            "owner_nick_name" => &mut self.owner_nick_name,
            _ => &mut self.owner_name,
        };
        *slot = Some(value);
    }
}

/// The JSON schema of a registration body, for the OpenAPI document: what
/// [`parse_registration`] accepts.
pub fn registration_schema() -> Value {
    let text =
        || serde_json::json!({ "type": ["string", "null"], "minLength": 1, "maxLength": 1000 });
    let mut properties = Map::new();
    for name in REGISTRATION_FIELDS {
        let schema = match name {
            "repo_id" => {
                serde_json::json!({ "type": "integer", "minimum": 1, "maximum": RepoId::MAX })
            }
            "owner_id" => {
                serde_json::json!({ "type": ["integer", "null"], "minimum": 0, "maximum": i64::MAX })
            }
            "encrypted" => serde_json::json!({ "type": ["boolean", "null"] }),
            "repo_name" | "full_path" => {
                serde_json::json!({ "type": "string", "minLength": 1, "maxLength": 1000 })
            }
            _ => text(),
        };
        properties.insert(name.to_owned(), schema);
    }
    serde_json::json!({
        "type": "object",
        "description": "A repository to register (the SDK's RepoEncryptionDto) and, optionally, whether to encrypt it.",
        "required": ["repo_id", "repo_name", "full_path"],
        "additionalProperties": false,
        "properties": properties,
    })
}

/// A registered repository as the store keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct Repository {
    pub tenant_id: TenantId,
    pub fields: RepoFields,
    pub encrypted: bool,
    /// The CMK that wraps its data key (encrypted repositories only).
    pub cmk_key_id: Option<String>,
    /// The data key, wrapped by the CMK. `None` once shredded (and for unencrypted ones).
    pub wrapped_key: Option<Vec<u8>>,
    /// When the wrapped data key was destroyed (RFC 3339), if it was.
    pub shredded_at: Option<String>,
    pub created_at: String,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("tenant_id", &self.tenant_id)
            .field("fields", &self.fields)
            .field("encrypted", &self.encrypted)
            .field("cmk_key_id", &self.cmk_key_id)
            .field(
                "wrapped_key",
                &self.wrapped_key.as_ref().map(|_| "<wrapped>"),
            )
            .field("shredded_at", &self.shredded_at)
            .finish()
    }
}

impl Repository {
    /// The audit form: never the wrapped key.
    pub fn audit_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.fields).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("encrypted".into(), self.encrypted.into());
            m.insert(
                "cmk_key_id".into(),
                self.cmk_key_id.clone().map_or(Value::Null, Value::String),
            );
            if let Some(at) = &self.shredded_at {
                m.insert("shredded_at".into(), at.clone().into());
            }
        }
        v
    }
}

/// A repository read for a release: its row (shared: a store may cache it) and whether
/// its tenant's KMS grant stands.
#[derive(Debug, Clone)]
pub struct RepoForRelease {
    pub repository: std::sync::Arc<Repository>,
    pub granted: bool,
}

/// What a shred found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shredded {
    /// The wrapped key was destroyed now.
    Now,
    /// It had been destroyed before.
    Already,
    NotEncrypted,
    NotFound,
}

/// How ListTenantEncryptedRepositories orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoOrder {
    RepoName,
    OwnerName,
}

impl RepoOrder {
    pub fn parse(value: Option<&str>) -> Result<Self, Error> {
        match value {
            None | Some("repoName") => Ok(RepoOrder::RepoName),
            Some("ownerName") => Ok(RepoOrder::OwnerName),
            Some(other) => Err(Error::invalid(
                "order_by",
                format!(
                    "must be repoName or ownerName, got `{}`",
                    truncate(other, 32)
                ),
            )),
        }
    }
}

/// A page of a list: `offset` 0..=2147483647 (default 0), `limit` 1..=100 (default 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u32,
    pub limit: u32,
}

impl Page {
    pub const MAX_LIMIT: i64 = 100;
    pub const DEFAULT_LIMIT: u32 = 20;

    pub fn new(offset: Option<i64>, limit: Option<i64>) -> Result<Self, Error> {
        let offset = offset.unwrap_or(0);
        if !(0..=i64::from(i32::MAX)).contains(&offset) {
            return Err(Error::invalid(
                "offset",
                format!("must be from 0 to {}, got {offset}", i32::MAX),
            ));
        }
        let limit = limit.unwrap_or(i64::from(Self::DEFAULT_LIMIT));
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("must be from 1 to {}, got {limit}", Self::MAX_LIMIT),
            ));
        }
        Ok(Page {
            offset: offset as u32,
            limit: limit as u32,
        })
    }

    /// The items of this page of `all`.
    pub fn of<T>(&self, all: Vec<T>) -> Vec<T> {
        all.into_iter()
            .skip(self.offset as usize)
            .take(self.limit as usize)
            .collect()
    }
}

/// A query of ListTenantEncryptedRepositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoQuery {
    pub page: Page,
    pub order: RepoOrder,
    pub descending: bool,
}

impl RepoQuery {
    /// From the query string's values; `sort` is `asc` or `desc` (the default).
    pub fn new(page: Page, order_by: Option<&str>, sort: Option<&str>) -> Result<Self, Error> {
        let descending = match sort {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(other) => {
                return Err(Error::invalid(
                    "sort",
                    format!("must be asc or desc, got `{}`", truncate(other, 32)),
                ))
            }
        };
        Ok(RepoQuery {
            page,
            order: RepoOrder::parse(order_by)?,
            descending,
        })
    }
}

/// The encryption context a data key is bound to: its tenant and repository. A KMS binds
/// it to the wrapped key (AWS's `EncryptionContext`, the local KMS's associated data), so a
/// wrapped key moved to another repository or tenant never unwraps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionContext {
    pub tenant: String,
    pub repo: String,
}

impl EncryptionContext {
    pub const TENANT: &'static str = "repocrypt:tenant";
    pub const REPO: &'static str = "repocrypt:repo";

    pub fn new(tenant: &TenantId, repo_id: RepoId) -> Self {
        EncryptionContext {
            tenant: tenant.as_str().to_owned(),
            repo: repo_id.to_string(),
        }
    }

    /// The pairs, in key order.
    pub fn pairs(&self) -> [(&'static str, &str); 2] {
        [(Self::REPO, &self.repo), (Self::TENANT, &self.tenant)]
    }

    /// One canonical byte string of the context (JSON with sorted keys), for a KMS that
    /// binds it as associated data.
    pub fn canonical(&self) -> Vec<u8> {
        let map: serde_json::Map<String, Value> = self
            .pairs()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        Value::Object(map).to_string().into_bytes()
    }
}

/// A data key in clear: zeroed when dropped, never shown by `Debug`.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// From a slice that must be exactly [`DATA_KEY_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if bytes.len() != DATA_KEY_LEN {
            return None;
        }
        key.copy_from_slice(bytes);
        Some(DataKey(key))
    }

    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl PartialEq for DataKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&*other.0).into()
    }
}

/// A fresh data key from a KMS: in clear, and wrapped by the CMK.
pub struct GeneratedKey {
    pub plaintext: DataKey,
    pub wrapped: Vec<u8>,
}

/// What a registration answers.
#[derive(Debug)]
pub struct Registered {
    pub repository: Repository,
    /// The data key in clear, for an encrypted repository.
    pub data_key: Option<DataKey>,
    /// Created now (201), or registered before with the same fields (200).
    pub created: bool,
}

/// What a release answers.
#[derive(Debug)]
pub struct Released {
    pub repo_id: RepoId,
    pub cmk_key_id: String,
    pub data_key: DataKey,
    /// How long the storage node may keep the key.
    pub cache_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_1_to_i32_max() {
        assert!(RepoId::new(0).is_err() && RepoId::new(2_147_483_648).is_err());
        assert_eq!(
            RepoId::new(2_147_483_647).map(RepoId::get).ok(),
            Some(i32::MAX)
        );
        assert_eq!(RepoId::parse("42").map(RepoId::get).ok(), Some(42));
        for bad in ["", "0", "-1", "+1", "1.0", "2147483648", "99999999999", "x"] {
            assert!(RepoId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registrations_name_the_field_they_refuse() {
        let ok = parse_registration(
            br#"{"repo_id":7,"repo_name":"r","full_path":"g/r","owner_name":null}"#,
        )
        .expect("valid");
        assert_eq!(ok.fields.repo_id.get(), 7);
        assert_eq!(ok.fields.owner_name, None);
        assert_eq!(ok.encrypted, None);
        for (body, field) in [
            (r#"{"repo_name":"r","full_path":"p"}"#, "repo_id"),
            (
                r#"{"repo_id":"7","repo_name":"r","full_path":"p"}"#,
                "repo_id",
            ),
            (
                r#"{"repo_id":0,"repo_name":"r","full_path":"p"}"#,
                "repo_id",
            ),
            (r#"{"repo_id":7,"full_path":"p"}"#, "repo_name"),
            (
                r#"{"repo_id":7,"repo_name":"","full_path":"p"}"#,
                "repo_name",
            ),
            (r#"{"repo_id":7,"repo_name":"r"}"#, "full_path"),
            (
                r#"{"repo_id":7,"repo_name":"r","full_path":"p","owner_id":-1}"#,
                "owner_id",
            ),
            (
                r#"{"repo_id":7,"repo_name":"r","full_path":"p","encrypted":"yes"}"#,
                "encrypted",
            ),
        ] {
            let err = parse_registration(body.as_bytes())
                .expect_err(body)
                .to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
        let err = parse_registration(br#"{"repo_id":7,"repo_name":"r","full_path":"p","x":1}"#)
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
        assert!(parse_registration(b"[1]").is_err() && parse_registration(b"{").is_err());
    }

    #[test]
    fn pages_and_orders_are_bounded() {
        assert_eq!(
            Page::new(None, None).ok(),
            Some(Page {
                offset: 0,
                limit: 20
            })
        );
        assert!(Page::new(Some(-1), None).is_err());
        assert!(Page::new(Some(2_147_483_648), None).is_err());
        assert!(Page::new(None, Some(0)).is_err() && Page::new(None, Some(101)).is_err());
        assert_eq!(
            Page::new(Some(1), Some(2))
                .map(|p| p.of(vec![1, 2, 3, 4]))
                .ok(),
            Some(vec![2, 3])
        );
        let q = RepoQuery::new(Page::new(None, None).expect("page"), None, None).expect("query");
        assert!(q.descending && q.order == RepoOrder::RepoName);
        assert!(RepoQuery::new(q.page, Some("name"), None).is_err());
        assert!(RepoQuery::new(q.page, None, Some("up")).is_err());
    }

    #[test]
    fn the_context_is_canonical_and_keys_are_redacted() {
        let tenant = TenantId::parse("t1").expect("tenant");
        let ctx = EncryptionContext::new(&tenant, RepoId::new(9).expect("id"));
        assert_eq!(
            String::from_utf8(ctx.canonical()).expect("utf8"),
            r#"{"repocrypt:repo":"9","repocrypt:tenant":"t1"}"#
        );
        let key = DataKey::from_bytes([7; 32]);
        assert_eq!(format!("{key:?}"), "DataKey(<redacted>)");
        assert!(DataKey::from_slice(&[0; 31]).is_none());
        assert!(DataKey::from_slice(&[7; 32]) == Some(key));
    }
}
