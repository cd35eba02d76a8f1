//! The one error type of the service. Every failure a client can see has a stable
//! `error_code`; the mapping to HTTP status lives in `http::error`, in one `match`, beside
//! the HTTP layer's own failures (no route, wrong method or media type, request timeout,
//! rate limits, a malformed query string: `http::error::WebError`).

use std::fmt;

/// Every error the core can return. Internal detail (`Internal`, `Store`) is logged,
/// never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- 400: bad input -------------------------------------------------------------
    #[error("{0}")]
    BadRequestBody(String),
    #[error("field `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("body tenant_id `{body}` does not match the tenant in the path")]
    TenantMismatch { body: String },
    #[error("project_id must be a string of exactly 32 letters or digits")]
    InvalidProjectId,
    #[error("encryption_type KMS needs a cmk_key_id: send one, or configure one first")]
    MissingCmkKeyId,
    #[error("the tenant has not granted KMS use to this service: call POST /v4/tenants/{tenant}/repo-encryption/kms-grant first")]
    KmsGrantMissing { tenant: String },
    #[error("key {key_id} was not found in this tenant's KMS")]
    KeyNotFound { key_id: String },
    #[error("key {key_id} is {state} in KMS (state {code}); enable it in KMS first")]
    KeyNotEnabled {
        key_id: String,
        state: &'static str,
        code: u8,
    },
    #[error("cmk_key_name `{given}` does not match the name of key {key_id} in KMS (`{actual}`); omit cmk_key_name or send the right one")]
    KeyNameMismatch {
        given: String,
        key_id: String,
        actual: String,
    },
    #[error("default_encryption_enabled=true needs encryption_type KMS")]
    DefaultNeedsKms,
    #[error("an encrypted repository needs the tenant's encryption_type to be KMS: PUT /v4/tenants/{tenant}/repo-encryption/setting first")]
    EncryptedNeedsKms { tenant: String },
    #[error("a rewrap needs the tenant's encryption_type to be KMS with a cmk_key_id, the key to rewrap under: PUT /v4/tenants/{tenant}/repo-encryption/setting first")]
    RewrapNeedsKms { tenant: String },

    // ---- 401 / 403: identity ---------------------------------------------------------
    #[error(
        "missing credentials: send an X-Auth-Token header or sign the request (SDK-HMAC-SHA256)"
    )]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    #[error("Authentication information expired.")]
    TokenExpired,
    #[error("invalid request signature: {0}")]
    SignatureMalformed(String),
    #[error("unknown access key")]
    UnknownAccessKey,
    #[error("request signature is stale: {0}")]
    SignatureStale(String),
    #[error(
        "request signature does not match: check the secret key and sign the exact request sent"
    )]
    SignatureMismatch,
    #[error("X-Sdk-Nonce was already used: sign each request afresh")]
    NonceReplayed,
    #[error("Insufficient permissions. Apply for the required permissions and try again.")]
    ForeignTenant,
    #[error("Insufficient permissions: this operation needs the tenant admin role.")]
    AdminRequired,
    #[error("Insufficient permissions. Apply for the required permissions and try again.")]
    NotProjectMember,
    #[error("Insufficient permissions: only platform service principals register repositories and receive or destroy data keys.")]
    ServiceOnly,
    #[error("Insufficient permissions: a service principal may only list, register and key repositories.")]
    ServiceNotAllowed,
    #[error("Insufficient permissions: the token holds no role this service maps to an access level (an admin, member or service role).")]
    NoMappedRole,
    #[error("the tenant has withdrawn its KMS grant: no data key of tenant {tenant} is released")]
    GrantWithdrawn { tenant: String },
    #[error("key {key_id} is {state} in KMS (state {code}): the tenant has stopped the release of data keys under it")]
    KeyRefused {
        key_id: String,
        state: &'static str,
        code: u8,
    },

    // ---- 404 / 409 / 413 -------------------------------------------------------------
    #[error("project {0} does not exist")]
    ProjectNotFound(String),
    #[error("repository {repo_id} is not registered in this tenant")]
    RepoNotFound { repo_id: i32 },
    #[error("repository {repo_id} is not encrypted: it has no data key")]
    RepoNotEncrypted { repo_id: i32 },
    #[error("repository {repo_id} is already registered with other fields: {field} differs")]
    RepoConflict { repo_id: i32, field: &'static str },
    #[error("the wrapped data key of repository {repo_id} does not unwrap under its encryption context: it was altered or moved")]
    DataKeyInvalid { repo_id: i32 },
    #[error(
        "the data key of repository {repo_id} was destroyed: its data cannot be decrypted, ever"
    )]
    DataKeyDestroyed { repo_id: i32 },
    #[error("key {key_id} no longer exists in this tenant's KMS: the data keys it wrapped can never be released")]
    CmkGone { key_id: String },
    #[error("rewrap job {job_id} does not exist in this tenant")]
    RewrapJobNotFound { job_id: String },
    #[error("the setting was changed concurrently too many times; retry the request")]
    Conflict,
    #[error("key {key_id} wraps the data keys of {} of this tenant: to {op} it would stop their release (see `repocrypt kms impact`); add --force to {op} it anyway", count_of(*.repositories, "repository", "repositories"))]
    KeyInUse {
        key_id: String,
        repositories: u64,
        op: &'static str,
    },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },

    // ---- 503 / 500 -------------------------------------------------------------------
    #[error("the KMS is unavailable; retry later")]
    KmsUnavailable(String),
    #[error("the identity service (IAM) is unavailable; retry later")]
    IamUnavailable(String),
    #[error("internal error")]
    Store(String),
    #[error("internal error")]
    Internal(String),

    // ---- administrative (CLI) errors -----------------------------------------------
    #[error("{0}")]
    InvalidArgument(String),
    #[error("key {key_id} is {state}: cannot {op}")]
    KeyInvalidState {
        key_id: String,
        state: &'static str,
        op: &'static str,
    },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{failed} of the {total} repositories of rewrap job {job_id} were not rewrapped: see `failed` for each one's reason")]
    RewrapIncomplete {
        job_id: String,
        failed: u64,
        total: u64,
    },
}

impl Error {
    /// The stable code clients see in `error_code`.
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            BadRequestBody(_) => "RC.400001",
            InvalidField { .. } => "RC.400002",
            TenantMismatch { .. } => "RC.400003",
            InvalidProjectId => "RC.400004",
            MissingCmkKeyId => "RC.400006",
            KmsGrantMissing { .. } => "RC.400007",
            KeyNotFound { .. } => "RC.400008",
            KeyNotEnabled { .. } => "RC.400009",
            KeyNameMismatch { .. } => "RC.400010",
            DefaultNeedsKms => "RC.400011",
            EncryptedNeedsKms { .. } => "RC.400014",
            RewrapNeedsKms { .. } => "RC.400020",
            InvalidArgument(_) => "RC.400012",
            KeyInvalidState { .. } => "RC.400013",
            MissingToken => "RC.401001",
            InvalidToken(_) => "RC.401002",
            TokenExpired => "DEV.00000003",
            SignatureMalformed(_) => "RC.401003",
            UnknownAccessKey => "RC.401004",
            SignatureStale(_) => "RC.401005",
            SignatureMismatch => "RC.401006",
            NonceReplayed => "RC.401007",
            ForeignTenant => "CH.004403",
            AdminRequired => "RC.403001",
            NotProjectMember => "DEV-23-50804",
            ServiceOnly => "RC.403002",
            ServiceNotAllowed => "RC.403003",
            GrantWithdrawn { .. } => "RC.403004",
            KeyRefused { .. } => "RC.403005",
            NoMappedRole => "RC.403006",
            RepoNotFound { .. } => "RC.404002",
            RewrapJobNotFound { .. } => "RC.404010",
            RepoNotEncrypted { .. } => "RC.409003",
            RepoConflict { .. } => "RC.409004",
            DataKeyInvalid { .. } => "RC.409005",
            DataKeyDestroyed { .. } => "RC.410001",
            CmkGone { .. } => "RC.410002",
            ProjectNotFound(_) => "RC.404001",
            Conflict => "RC.409001",
            KeyInUse { .. } => "RC.409010",
            AlreadyExists(_) => "RC.409002",
            RewrapIncomplete { .. } => "RC.409020",
            PayloadTooLarge { .. } => "RC.413001",
            KmsUnavailable(_) => "RC.503001",
            Store(_) => "RC.503002",
            IamUnavailable(_) => "RC.503003",
            Internal(_) => "RC.500000",
        }
    }

    /// Detail that must be logged but never shown to a client.
    pub fn internal_detail(&self) -> Option<&str> {
        match self {
            Error::Store(d)
            | Error::Internal(d)
            | Error::KmsUnavailable(d)
            | Error::IamUnavailable(d) => Some(d),
            _ => None,
        }
    }

    pub fn invalid(field: &'static str, reason: impl fmt::Display) -> Self {
        Error::InvalidField {
            field,
            reason: reason.to_string(),
        }
    }
}

/// `1 repository`, `2 repositories`.
fn count_of(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
