//! Configuration: one type, [`Config`], whose fields are the settings; the TOML file's keys
//! are its field names. [`Config::load`] layers, with figment, the defaults
//! ([`Config::default`]), the TOML file (`--config`), and the flags with their
//! environment variables (`REPOCRYPT_*`, read by clap: [`ConfigArgs`]), then checks the result
//! once ([`Config::validate`]). Precedence: flag > environment > file > default.
//!
//! Adding a setting: a field here (with its default in `Default for Config`, its check in
//! `validate` if it has one), its flag in [`ConfigArgs`] (same name; the environment
//! variable is `REPOCRYPT_` and the name in capitals), and its row in README.md's table (a
//! test compares the table with these).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::Error;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./repocrypt-data";
pub const DEFAULT_REGION: &str = "local";
pub const DEFAULT_REGION_TYPE: &str = "primary";
pub const DEFAULT_KEY_STATE_CACHE_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEY_STATE_CACHE_CAPACITY: usize = 100_000;
pub const DEFAULT_KMS_TIMEOUT: Duration = crate::kms::aws::DEFAULT_TIMEOUT;
pub const MAX_KMS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one PostgreSQL call may take (its connection's acquisition included), and how
/// long a SQLite call waits for a lock.
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_DB_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SIGNATURE_MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// How long change events are kept for storage nodes that reconnect.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_RATE_LIMIT_PER_TENANT: u32 = 1000;
pub const DEFAULT_RATE_LIMIT_PER_CREDENTIAL: u32 = 500;
/// How long a token validated by the external IAM is trusted without asking it again.
pub const DEFAULT_IAM_CACHE_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_IAM_TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_IAM_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_IAM_USER_DOMAIN: &str = "Default";
/// The environment variable of the IAM password of the service's own user: never a flag.
pub const IAM_PASSWORD_ENV: &str = "REPOCRYPT_IAM_PASSWORD";

/// Where tenants' keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KmsBackend {
    /// The embedded KMS, in the service's own database.
    Local,
    /// AWS KMS or anything speaking its API (LocalStack, moto), through aws-sdk-kms.
    Aws,
}

/// Who says who a token's bearer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IamBackend {
    /// Tokens from `repocrypt token issue`, verified here.
    Local,
    /// An OpenStack Keystone v3 (or Huawei Cloud IAM), which validates every token.
    Keystone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The settings as flags and environment variables: clap's view of [`Config`], one
/// field per setting of the same name (`None`: not given). Every subcommand takes them.
/// [`Config::load`] lays the given ones over the file, as they are serialized here.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "REPOCRYPT_CONFIG", global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "REPOCRYPT_LISTEN", global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database and the root key [default: ./repocrypt-data].
    #[arg(long, env = "REPOCRYPT_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL [default: sqlite://DATA_DIR/repocrypt.db].
    #[arg(
        long = "database",
        env = "REPOCRYPT_DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,
    /// Longest time one database call may take: on PostgreSQL the whole call (then 503 `RC.503002`), on SQLite the wait for a lock; at most 5s [default: 2s].
    #[arg(long, env = "REPOCRYPT_DB_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub db_timeout: Option<Duration>,
    /// Region reported in settings [default: local].
    #[arg(long, env = "REPOCRYPT_REGION", global = true)]
    pub region: Option<String>,
    /// Region type reported in settings [default: primary].
    #[arg(long, env = "REPOCRYPT_REGION_TYPE", global = true)]
    pub region_type: Option<String>,
    /// How long a key state read from the KMS is reused, e.g. `10s`; `0` turns the cache off [default: 10s].
    #[arg(long, env = "REPOCRYPT_KEY_STATE_CACHE_TTL", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub key_state_cache_ttl: Option<Duration>,
    /// Most key states kept in memory; the least recently used go first [default: 100000].
    #[arg(
        long,
        env = "REPOCRYPT_KEY_STATE_CACHE_CAPACITY",
        global = true,
        value_name = "N"
    )]
    pub key_state_cache_capacity: Option<usize>,
    /// SQLite only: most settings (and as many grants) kept in memory; 0 turns it off [default: 50000].
    #[arg(
        long,
        env = "REPOCRYPT_ROW_CACHE_CAPACITY",
        global = true,
        value_name = "N"
    )]
    pub row_cache_capacity: Option<usize>,
    /// Largest difference between a signed request's X-Sdk-Date and the server's clock [default: 15m].
    #[arg(long, env = "REPOCRYPT_SIGNATURE_MAX_SKEW", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub signature_max_skew: Option<Duration>,
    /// How long change events are kept for a storage node that reconnects (`Last-Event-ID`); older ones are pruned [default: 7d].
    #[arg(long, env = "REPOCRYPT_EVENT_RETENTION", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub event_retention: Option<Duration>,
    /// KMS backend: `local` (embedded) or `aws` (AWS KMS API) [default: local].
    #[arg(
        long,
        env = "REPOCRYPT_KMS_BACKEND",
        global = true,
        value_name = "BACKEND"
    )]
    pub kms_backend: Option<KmsBackend>,
    /// AWS KMS endpoint URL (LocalStack, moto, a VPC endpoint) [default: AWS's own].
    #[arg(
        long,
        env = "REPOCRYPT_KMS_ENDPOINT",
        global = true,
        value_name = "URL"
    )]
    pub kms_endpoint: Option<String>,
    /// AWS KMS region [default: from AWS_REGION or the AWS profile].
    #[arg(
        long,
        env = "REPOCRYPT_KMS_REGION",
        global = true,
        value_name = "REGION"
    )]
    pub kms_region: Option<String>,
    /// Longest time one KMS operation may take, retries included; at most 2s [default: 2s].
    #[arg(long, env = "REPOCRYPT_KMS_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub kms_timeout: Option<Duration>,
    /// Who validates X-Auth-Token: `local` (tokens of `repocrypt token issue`) or `keystone` (an OpenStack Keystone v3 / Huawei Cloud IAM) [default: local].
    #[arg(long, env = "REPOCRYPT_IAM", global = true, value_name = "IAM")]
    pub iam: Option<IamBackend>,
    /// The IAM's v3 endpoint, e.g. `http://127.0.0.1:5000/v3`.
    #[arg(long, env = "REPOCRYPT_IAM_URL", global = true, value_name = "URL")]
    pub iam_url: Option<String>,
    /// The service's own IAM user, whose token validates the callers' (it needs the `service` or `admin` role).
    #[arg(long, env = "REPOCRYPT_IAM_USER", global = true, value_name = "NAME")]
    pub iam_user: Option<String>,
    /// The domain (name) of --iam-user [default: Default].
    #[arg(
        long,
        env = "REPOCRYPT_IAM_USER_DOMAIN",
        global = true,
        value_name = "NAME"
    )]
    pub iam_user_domain: Option<String>,
    /// A project (name) of --iam-user-domain to scope the service's token to [default: the domain itself].
    #[arg(
        long,
        env = "REPOCRYPT_IAM_PROJECT",
        global = true,
        value_name = "NAME"
    )]
    pub iam_project: Option<String>,
    /// A file holding the IAM password of --iam-user (REPOCRYPT_IAM_PASSWORD is read first).
    #[arg(
        long,
        env = "REPOCRYPT_IAM_PASSWORD_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub iam_password_file: Option<PathBuf>,
    /// IAM roles that make a token's bearer the tenant admin, comma-separated [default: admin].
    #[arg(
        long,
        env = "REPOCRYPT_IAM_ADMIN_ROLES",
        global = true,
        value_delimiter = ',',
        value_name = "ROLES"
    )]
    pub iam_admin_roles: Option<Vec<String>>,
    /// IAM roles that make a token's bearer a tenant member, comma-separated [default: member,reader].
    #[arg(
        long,
        env = "REPOCRYPT_IAM_MEMBER_ROLES",
        global = true,
        value_delimiter = ',',
        value_name = "ROLES"
    )]
    pub iam_member_roles: Option<Vec<String>>,
    /// IAM roles that make a token's bearer a platform service principal, comma-separated [default: service].
    #[arg(
        long,
        env = "REPOCRYPT_IAM_SERVICE_ROLES",
        global = true,
        value_delimiter = ',',
        value_name = "ROLES"
    )]
    pub iam_service_roles: Option<Vec<String>>,
    /// How long a token the IAM validated is trusted without asking again (a revoked token works that long at most); `0` turns the cache off [default: 60s].
    #[arg(long, env = "REPOCRYPT_IAM_CACHE_TTL", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub iam_cache_ttl: Option<Duration>,
    /// Longest time one call to the IAM may take; at most 2s [default: 2s].
    #[arg(long, env = "REPOCRYPT_IAM_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub iam_timeout: Option<Duration>,
    /// Log filter, e.g. `info` or `repocrypt=debug` [default: info for serve, warn otherwise].
    #[arg(long, env = "REPOCRYPT_LOG", global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "REPOCRYPT_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Have the kernel write the log out as it goes (a log file: its own pages; a pipe: the data directory's file system), so that it never holds up the database's fsyncs [default: true].
    #[arg(
        long,
        env = "REPOCRYPT_LOG_WRITEBACK",
        global = true,
        value_name = "BOOL"
    )]
    pub log_writeback: Option<bool>,
    /// Requests per second one tenant may make (a token bucket holding two seconds' worth); 0 turns it off [default: 1000].
    #[arg(
        long,
        env = "REPOCRYPT_RATE_LIMIT_PER_TENANT",
        global = true,
        value_name = "RPS"
    )]
    pub rate_limit_per_tenant: Option<u32>,
    /// Requests per second one credential (a token's user, or an access key) may make; 0 turns it off [default: 500].
    #[arg(
        long,
        env = "REPOCRYPT_RATE_LIMIT_PER_CREDENTIAL",
        global = true,
        value_name = "RPS"
    )]
    pub rate_limit_per_credential: Option<u32>,
    /// Most connections served at once; further clients wait in the kernel's queue [default: 1024].
    #[arg(
        long,
        env = "REPOCRYPT_MAX_CONNECTIONS",
        global = true,
        value_name = "N"
    )]
    pub max_connections: Option<usize>,
    /// Threads that serve connections, each on its own event loop and each connection on one of them from start to end [default: twice the cores].
    #[arg(
        long,
        env = "REPOCRYPT_CONNECTION_THREADS",
        global = true,
        value_name = "N"
    )]
    pub connection_threads: Option<usize>,
    /// Longest time a request may take, reading its body included (408 after) [default: 10s].
    #[arg(long, env = "REPOCRYPT_REQUEST_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub request_timeout: Option<Duration>,
    /// Longest time a client may take to send a request's head or finish the TLS handshake; idle keep-alive connections are closed after it too [default: 10s].
    #[arg(long, env = "REPOCRYPT_HEADER_READ_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    #[serde(serialize_with = "duration::serialize_option")]
    pub header_read_timeout: Option<Duration>,
    /// Largest request body, 1024 to 65536 (413 above it) [default: 65536].
    #[arg(
        long,
        env = "REPOCRYPT_MAX_BODY_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub max_body_bytes: Option<usize>,
    /// Largest request head, request line and headers together, 8192 to 262144 (431 above it) [default: 32768].
    #[arg(
        long,
        env = "REPOCRYPT_MAX_HEADER_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub max_header_bytes: Option<usize>,
    /// Longest X-Auth-Token or Authorization value, 256 to --max-header-bytes (401 above it) [default: 16384].
    #[arg(
        long,
        env = "REPOCRYPT_MAX_TOKEN_BYTES",
        global = true,
        value_name = "BYTES"
    )]
    pub max_token_bytes: Option<usize>,
    /// Deepest nesting of arrays and objects in a JSON body, 1 to 128 (400 above it) [default: 32].
    #[arg(
        long,
        env = "REPOCRYPT_JSON_MAX_DEPTH",
        global = true,
        value_name = "N"
    )]
    pub json_max_depth: Option<usize>,
    /// PEM certificate chain: serve HTTPS (with --tls-key) instead of plain HTTP.
    #[arg(long, env = "REPOCRYPT_TLS_CERT", global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "REPOCRYPT_TLS_KEY", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// Bounds on what one client can make the server hold or do: [`Config::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Largest request body (413 above it); at most the API's 64 KiB.
    pub max_body_bytes: usize,
    /// Largest request head: request line and headers (431 above it).
    pub max_header_bytes: usize,
    /// Longest `X-Auth-Token` or `Authorization` value (401 above it).
    pub max_token_bytes: usize,
    /// Deepest nesting of arrays and objects in a JSON body (400 above it).
    pub json_max_depth: usize,
    /// Longest time from a request's head to its response (408 after).
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request's head, or to finish the TLS
    /// handshake; an idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    /// The limits of the default configuration.
    fn default() -> Self {
        Config::default().limits()
    }
}

/// Token-bucket rates in requests per second; 0 turns a limit off: [`Config::rate_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub per_tenant: u32,
    pub per_credential: u32,
}

/// A certificate chain and its key, both PEM files: [`Config::tls`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The configuration: every setting, resolved. The TOML file's keys are these field
/// names; a key that is none of them is refused.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Defaults to `sqlite://DATA_DIR/repocrypt.db`, in the data directory of the layers.
    pub database_url: String,
    #[serde(with = "duration")]
    pub db_timeout: Duration,
    pub region: String,
    pub region_type: String,
    #[serde(with = "duration")]
    pub key_state_cache_ttl: Duration,
    pub key_state_cache_capacity: usize,
    /// Settings (and as many grants) SQLite keeps in memory; 0 turns it off.
    pub row_cache_capacity: usize,
    #[serde(with = "duration")]
    pub signature_max_skew: Duration,
    #[serde(with = "duration")]
    pub event_retention: Duration,
    pub kms_backend: KmsBackend,
    pub kms_endpoint: Option<String>,
    pub kms_region: Option<String>,
    #[serde(with = "duration")]
    pub kms_timeout: Duration,
    pub iam: IamBackend,
    pub iam_url: Option<String>,
    pub iam_user: Option<String>,
    pub iam_user_domain: String,
    pub iam_project: Option<String>,
    pub iam_password_file: Option<PathBuf>,
    pub iam_admin_roles: Vec<String>,
    pub iam_member_roles: Vec<String>,
    pub iam_service_roles: Vec<String>,
    #[serde(with = "duration")]
    pub iam_cache_ttl: Duration,
    #[serde(with = "duration")]
    pub iam_timeout: Duration,
    pub log: Option<String>,
    pub log_format: LogFormat,
    pub log_writeback: bool,
    pub rate_limit_per_tenant: u32,
    pub rate_limit_per_credential: u32,
    pub max_connections: usize,
    /// `None`: twice the cores ([`Config::connection_threads`]).
    pub connection_threads: Option<usize>,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_token_bytes: usize,
    pub json_max_depth: usize,
    /// HTTPS when both are set; plain HTTP when neither is.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Base64 root key from `REPOCRYPT_ROOT_KEY` only: never a flag (argv is visible to
    /// all) nor a file key.
    #[serde(skip)]
    pub root_key: Option<SecretString>,
    /// The IAM password of `iam_user`, from `REPOCRYPT_IAM_PASSWORD` or `iam_password_file`
    /// (read by [`Config::load`]): never a flag nor a file key.
    #[serde(skip)]
    pub iam_password: Option<SecretString>,
}

impl Default for Config {
    fn default() -> Self {
        let data_dir = PathBuf::from(DEFAULT_DATA_DIR);
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: default_database_url(&data_dir),
            db_timeout: DEFAULT_DB_TIMEOUT,
            data_dir,
            region: DEFAULT_REGION.into(),
            region_type: DEFAULT_REGION_TYPE.into(),
            key_state_cache_ttl: DEFAULT_KEY_STATE_CACHE_TTL,
            key_state_cache_capacity: DEFAULT_KEY_STATE_CACHE_CAPACITY,
            row_cache_capacity: crate::store::sqlite::DEFAULT_ROW_CACHE_CAPACITY,
            signature_max_skew: DEFAULT_SIGNATURE_MAX_SKEW,
            event_retention: DEFAULT_EVENT_RETENTION,
            kms_backend: KmsBackend::Local,
            kms_endpoint: None,
            kms_region: None,
            kms_timeout: DEFAULT_KMS_TIMEOUT,
            iam: IamBackend::Local,
            iam_url: None,
            iam_user: None,
            iam_user_domain: DEFAULT_IAM_USER_DOMAIN.into(),
            iam_project: None,
            iam_password_file: None,
            iam_admin_roles: vec!["admin".into()],
            iam_member_roles: vec!["member".into(), "reader".into()],
            iam_service_roles: vec!["service".into()],
            iam_cache_ttl: DEFAULT_IAM_CACHE_TTL,
            iam_timeout: DEFAULT_IAM_TIMEOUT,
            log: None,
            log_format: LogFormat::Text,
            log_writeback: true,
            rate_limit_per_tenant: DEFAULT_RATE_LIMIT_PER_TENANT,
            rate_limit_per_credential: DEFAULT_RATE_LIMIT_PER_CREDENTIAL,
            max_connections: 1024,
            connection_threads: None,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: crate::domain::MAX_BODY_BYTES,
            max_header_bytes: 32 * 1024,
            max_token_bytes: 16 * 1024,
            json_max_depth: 32,
            tls_cert: None,
            tls_key: None,
            root_key: None,
            iam_password: None,
        }
    }
}

/// Every setting, through its serialization: database URLs redacted, the root key only
/// said to be there.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Config");
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) {
            for (name, value) in &fields {
                match (name.as_str(), value.as_str()) {
                    ("database_url" | "kms_endpoint" | "iam_url", Some(url)) => {
                        out.field(name, &redact_url(url))
                    }
                    _ => out.field(name, &format_args!("{value}")),
                };
            }
        }
        out.field("root_key", &self.root_key.as_ref().map(|_| "<redacted>"))
            .field(
                "iam_password",
                &self.iam_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A database URL with any password (in the authority or a `password=` query parameter)
/// replaced, for logs.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redact_authority(base);
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn redact_authority(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Config {
    /// The defaults, under the file named by `--config`, under the flags and environment
    /// variables clap has read; then [`Config::validate`]. The root key comes from
    /// `REPOCRYPT_ROOT_KEY`.
    pub fn load(args: &ConfigArgs) -> Result<Self, Error> {
        let mut layers = Figment::new();
        if let Some(path) = &args.config {
            // Read here for a plain message on a missing or unreadable file.
            std::fs::metadata(path).map_err(|e| {
                Error::InvalidArgument(format!("cannot read config file {}: {e}", path.display()))
            })?;
            layers = layers.merge(Toml::file_exact(path));
        }
        let layers = layers.merge(Serialized::defaults(given(args)?));
        // The default database lives in the data directory the layers name.
        let data_dir = layers
            .find_value("data_dir")
            .ok()
            .and_then(|v| v.deserialize::<PathBuf>().ok())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let layers = layers.join(Serialized::default(
            "database_url",
            default_database_url(&data_dir),
        ));
        let db_timeout_given = layers.find_value("db_timeout").is_ok();
        let mut config: Config = layers.extract().map_err(figment_error)?;
        if !db_timeout_given && config.db_timeout >= config.request_timeout {
            // A short request timeout brings the default database deadline inside it.
            config.db_timeout = config.request_timeout / 2;
        }
        config.root_key = std::env::var(crate::keys::ROOT_KEY_ENV)
            .ok()
            .map(SecretString::from);
        for roles in [
            &mut config.iam_admin_roles,
            &mut config.iam_member_roles,
            &mut config.iam_service_roles,
        ] {
            // `member, reader` from the environment means `member` and `reader`.
            for role in roles.iter_mut() {
                *role = role.trim().to_owned();
            }
        }
        if config.iam == IamBackend::Keystone {
            config.iam_password = iam_password(config.iam_password_file.as_deref())?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Each setting against its range, naming the first one out of it.
    pub fn validate(&self) -> Result<(), Error> {
        let in_range = |name: &str, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{name} is {value}: it must be from {min} to {max}"
                )))
            }
        };
        in_range("max_connections", self.max_connections, 1, 1_000_000)?;
        if let Some(n) = self.connection_threads {
            in_range("connection_threads", n, 1, 1024)?;
        }
        in_range(
            "max_body_bytes",
            self.max_body_bytes,
            1024,
            crate::domain::MAX_BODY_BYTES,
        )?;
        // hyper needs at least 8 KiB of read buffer, and its ~400 KiB read buffer caps a head.
        in_range("max_header_bytes", self.max_header_bytes, 8192, 256 * 1024)?;
        in_range(
            "max_token_bytes",
            self.max_token_bytes,
            256,
            self.max_header_bytes,
        )?;
        in_range("json_max_depth", self.json_max_depth, 1, 128)?;
        for (name, value) in [
            ("request_timeout", self.request_timeout),
            ("header_read_timeout", self.header_read_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(300) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be more than 0 and at most 5m"
                )));
            }
        }
        if self.signature_max_skew.is_zero() {
            return Err(Error::InvalidArgument(
                "signature_max_skew must be positive".into(),
            ));
        }
        if self.event_retention < Duration::from_secs(60) {
            return Err(Error::InvalidArgument(
                "event_retention must be at least 1m".into(),
            ));
        }
        if self.db_timeout.is_zero() || self.db_timeout > MAX_DB_TIMEOUT {
            return Err(Error::InvalidArgument(format!(
                "db_timeout must be more than 0 and at most {}",
                humantime::format_duration(MAX_DB_TIMEOUT)
            )));
        }
        if self.db_timeout >= self.request_timeout {
            return Err(Error::InvalidArgument(format!(
                "db_timeout ({}) must be shorter than request_timeout ({}): a database call must end before its request does",
                humantime::format_duration(self.db_timeout),
                humantime::format_duration(self.request_timeout)
            )));
        }
        if self.kms_timeout.is_zero() || self.kms_timeout > MAX_KMS_TIMEOUT {
            return Err(Error::InvalidArgument(format!(
                "kms_timeout must be more than 0 and at most {}",
                humantime::format_duration(MAX_KMS_TIMEOUT)
            )));
        }
        if let Some(url) = &self.kms_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::InvalidArgument(format!(
                    "kms_endpoint `{}` must be an http:// or https:// URL",
                    redact_url(url)
                )));
            }
        }
        if let Some(region) = &self.kms_region {
            crate::domain::check_text_arg("kms_region", region)?;
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::InvalidArgument(
                "tls_cert and tls_key go together: give both to serve HTTPS, or neither".into(),
            ));
        }
        crate::domain::check_text_arg("region", &self.region)?;
        crate::domain::check_text_arg("region_type", &self.region_type)?;
        self.validate_iam()
    }

    /// The external IAM's settings: only checked when `iam = "keystone"`, except the
    /// timeout and the role lists, which have ranges of their own.
    fn validate_iam(&self) -> Result<(), Error> {
        if self.iam_timeout.is_zero() || self.iam_timeout > MAX_IAM_TIMEOUT {
            return Err(Error::InvalidArgument(format!(
                "iam_timeout must be more than 0 and at most {}",
                humantime::format_duration(MAX_IAM_TIMEOUT)
            )));
        }
        let lists = [
            ("iam_admin_roles", &self.iam_admin_roles),
            ("iam_member_roles", &self.iam_member_roles),
            ("iam_service_roles", &self.iam_service_roles),
        ];
        for (i, (name, roles)) in lists.iter().enumerate() {
            for role in roles.iter() {
                crate::domain::check_text_arg(name, role)?;
                if let Some((other, _)) = lists[..i].iter().find(|(_, r)| r.contains(role)) {
                    return Err(Error::InvalidArgument(format!(
                        "role `{role}` is in both {other} and {name}: a role maps to one access level"
                    )));
                }
            }
        }
        if self.iam != IamBackend::Keystone {
            return Ok(());
        }
        if self.iam_timeout >= self.request_timeout {
            return Err(Error::InvalidArgument(format!(
                "iam_timeout ({}) must be shorter than request_timeout ({}): a validation must end before its request does",
                humantime::format_duration(self.iam_timeout),
                humantime::format_duration(self.request_timeout)
            )));
        }
        let url = self.iam_url.as_deref().ok_or_else(|| {
            Error::InvalidArgument(
                "iam = keystone needs iam_url (REPOCRYPT_IAM_URL), the v3 endpoint, e.g. http://127.0.0.1:5000/v3".into(),
            )
        })?;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains('?') {
            return Err(Error::InvalidArgument(format!(
                "iam_url `{}` must be an http:// or https:// URL without a query, e.g. http://127.0.0.1:5000/v3",
                redact_url(url)
            )));
        }
        let user = self.iam_user.as_deref().ok_or_else(|| {
            Error::InvalidArgument(
                "iam = keystone needs iam_user (REPOCRYPT_IAM_USER), the service's own user in the IAM".into(),
            )
        })?;
        crate::domain::check_text_arg("iam_user", user)?;
        crate::domain::check_text_arg("iam_user_domain", &self.iam_user_domain)?;
        if let Some(project) = &self.iam_project {
            crate::domain::check_text_arg("iam_project", project)?;
        }
        // The password is checked where it is needed, by `serve` (admin commands share the
        // settings but authenticate nobody).
        Ok(())
    }

    /// The threads that serve connections: as set, or twice the cores the process may use
    /// (two when that is unknown). With the service sharing its cores with other processes,
    /// a connection thread preempted by one of them holds up only its own share of the
    /// connections (docs/performance.md, "Connections on threads of their own").
    pub fn connection_threads(&self) -> usize {
        self.connection_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, |n| n.get().saturating_mul(2).min(1024))
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            max_token_bytes: self.max_token_bytes,
            json_max_depth: self.json_max_depth,
            request_timeout: self.request_timeout,
            header_read_timeout: self.header_read_timeout,
        }
    }

    pub fn rate_limits(&self) -> RateLimits {
        RateLimits {
            per_tenant: self.rate_limit_per_tenant,
            per_credential: self.rate_limit_per_credential,
        }
    }

    /// The certificate and key to serve HTTPS with; `None` unless both are set.
    pub fn tls(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// The root key's base64 text, for [`crate::keys::RootKey`].
    pub fn expose_root_key(&self) -> Option<&str> {
        self.root_key.as_ref().map(|k| k.expose_secret())
    }
}

/// The IAM password: `REPOCRYPT_IAM_PASSWORD`, else the file's first line.
fn iam_password(file: Option<&Path>) -> Result<Option<SecretString>, Error> {
    if let Ok(password) = std::env::var(IAM_PASSWORD_ENV) {
        if !password.is_empty() {
            return Ok(Some(SecretString::from(password)));
        }
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read iam_password_file {}: {e}",
            path.display()
        ))
    })?);
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "iam_password_file {} is empty: its first line is the password",
            path.display()
        )));
    }
    Ok(Some(SecretString::from(password.to_owned())))
}

/// The flags and environment variables given: `args` serialized, without those not given.
fn given(args: &ConfigArgs) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    match serde_json::to_value(args) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.retain(|_, v| !v.is_null());
            Ok(map)
        }
        Ok(_) => Err(Error::Internal("flags serialize to a map".into())),
        Err(e) => Err(Error::Internal(format!("serializing flags: {e}"))),
    }
}

/// A figment error as one line naming the setting, and the file when it came from there.
fn figment_error(e: figment::Error) -> Error {
    use figment::error::{Kind, OneOf};
    let key = e.path.join(".");
    let detail = match &e.kind {
        Kind::UnknownField(found, _) => format!("unknown key `{found}`"),
        _ if key.is_empty() => e.kind.to_string(),
        Kind::UnknownVariant(found, expected) => {
            format!(
                "{key}: unknown value `{found}`, expected {}",
                OneOf(expected)
            )
        }
        // The duration parser's own message starts with the text it refused.
        Kind::Message(msg) if msg.starts_with('`') => format!("{key} {msg}"),
        kind => format!("{key}: {kind}"),
    };
    Error::InvalidArgument(match e.metadata.and_then(|m| m.source) {
        Some(figment::Source::File(path)) => {
            format!("config file {}: {detail}", path.display())
        }
        _ => detail,
    })
}

/// Durations as humantime text (`10s`, `1h`, `500ms`, `0`), in both directions.
mod duration {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn serialize_option<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as \"10s\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                humantime::parse_duration(s).map_err(|e| E::custom(format!("`{s}`: {e}")))
            }
        }
        d.deserialize_str(Text)
    }
}

pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("repocrypt.db").display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn defaults() {
        let c = Config::load(&ConfigArgs::default()).expect("defaults load");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.database_url, "sqlite://./repocrypt-data/repocrypt.db");
        assert_eq!(c.key_state_cache_ttl, Duration::from_secs(10));
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nregion = \"file-region\"\nkey_state_cache_ttl = \"0\"\n",
        )
        .expect("write");
        let args = ConfigArgs {
            config: Some(file),
            region: Some("flag-region".into()),
            ..Default::default()
        };
        let c = Config::load(&args).expect("load");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.region, "flag-region");
        assert_eq!(c.key_state_cache_ttl, Duration::ZERO);
    }

    #[test]
    fn text_settings_follow_the_apis_length_rule() {
        let long = "é".repeat(1000);
        let too_long = "x".repeat(1001);
        for value in ["", " ", "  ", "\t", "a", long.as_str(), too_long.as_str()] {
            // The API's verdict on the same text.
            let api = crate::domain::CmkText::parse("cmk_key_name", value).is_ok();
            for key in ["region", "region_type", "kms_region"] {
                let mut args = ConfigArgs::default();
                let text = Some(value.to_owned());
                match key {
                    "region" => args.region = text,
                    "region_type" => args.region_type = text,
                    _ => args.kms_region = text,
                }
                let loaded = Config::load(&args);
                assert_eq!(loaded.is_ok(), api, "{key} = {value:?}: {loaded:?}");
                if let Err(e) = loaded {
                    assert_eq!(e.to_string(), format!("{key} must be 1 to 1000 characters"));
                }
            }
            let arg = crate::domain::check_text_arg("--user", value);
            assert_eq!(arg.is_ok(), api, "--user {value:?}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "lisen = \"x\"\n").expect("write");
        let args = ConfigArgs {
            config: Some(file),
            ..Default::default()
        };
        let err = Config::load(&args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn kms_settings_from_the_file_and_their_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).expect("write");
            Config::load(&ConfigArgs {
                config: Some(file.clone()),
                ..Default::default()
            })
        };
        let c = load("kms_backend = \"aws\"\nkms_endpoint = \"http://127.0.0.1:5000\"\nkms_region = \"us-east-1\"\nkms_timeout = \"500ms\"\n")
            .expect("load");
        assert_eq!(c.kms_backend, KmsBackend::Aws);
        assert_eq!(c.kms_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.kms_region.as_deref(), Some("us-east-1"));
        assert_eq!(c.kms_timeout, Duration::from_millis(500));
        let err = |text: &str| load(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("kms_timeout = \"3s\"\n").contains("kms_timeout"));
        assert!(err("db_timeout = \"6s\"\n").contains("db_timeout"));
        assert!(err("db_timeout = \"0s\"\n").contains("db_timeout"));
        assert!(err("db_timeout = \"3s\"\nrequest_timeout = \"3s\"\n")
            .contains("shorter than request_timeout"));
        assert!(err("kms_timeout = \"0s\"\n").contains("kms_timeout"));
        assert!(err("kms_endpoint = \"127.0.0.1:5000\"\n").contains("kms_endpoint"));
        assert!(err("kms_backend = \"vault\"\n").contains("kms_backend"));
        assert_eq!(
            Config::load(&ConfigArgs::default())
                .expect("defaults")
                .kms_backend,
            KmsBackend::Local
        );
    }

    #[test]
    fn limits_rate_limits_and_tls_from_the_file_and_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "rate_limit_per_tenant = 50\nrate_limit_per_credential = 0\nmax_connections = 10\n\
             request_timeout = \"3s\"\nheader_read_timeout = \"2s\"\nmax_body_bytes = 4096\n\
             max_header_bytes = 16384\nmax_token_bytes = 8192\njson_max_depth = 8\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .expect("write");
        let args = ConfigArgs {
            config: Some(file),
            rate_limit_per_tenant: Some(70),
            request_timeout: Some(Duration::from_secs(4)),
            ..Default::default()
        };
        let c = Config::load(&args).expect("load");
        assert_eq!(
            c.rate_limits(),
            RateLimits {
                per_tenant: 70,
                per_credential: 0
            }
        );
        assert_eq!(
            c.limits(),
            Limits {
                max_connections: 10,
                max_body_bytes: 4096,
                max_header_bytes: 16384,
                max_token_bytes: 8192,
                json_max_depth: 8,
                request_timeout: Duration::from_secs(4),
                header_read_timeout: Duration::from_secs(2),
            }
        );
        assert_eq!(
            c.tls(),
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        let d = Config::load(&ConfigArgs::default()).expect("defaults");
        assert_eq!(d.limits(), Limits::default());
        assert_eq!(d.rate_limits().per_tenant, DEFAULT_RATE_LIMIT_PER_TENANT);
        assert_eq!(d.tls(), None);
    }

    #[test]
    fn limits_out_of_range_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        let err = |text: &str| {
            std::fs::write(&file, text).expect("write");
            Config::load(&ConfigArgs {
                config: Some(file.clone()),
                ..Default::default()
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert!(err("max_body_bytes = 65537\n").contains("max_body_bytes"));
        assert!(err("max_body_bytes = 10\n").contains("max_body_bytes"));
        assert!(err("max_header_bytes = 8191\n").contains("max_header_bytes"));
        assert!(err("max_token_bytes = 40000\n").contains("max_token_bytes"));
        assert!(err("json_max_depth = 129\n").contains("json_max_depth"));
        assert!(err("max_connections = 0\n").contains("max_connections"));
        assert!(err("connection_threads = 0\n").contains("connection_threads"));
        assert!(err("connection_threads = 1025\n").contains("connection_threads"));
        assert!(err("request_timeout = \"10m\"\n").contains("request_timeout"));
        assert!(err("header_read_timeout = \"0s\"\n").contains("header_read_timeout"));
        assert!(err("tls_key = \"k.pem\"\n").contains("tls_cert and tls_key go together"));
        assert!(err("rate_limit_per_tenant = -1\n").contains("rate_limit_per_tenant"));
    }

    /// The settings as the code has them: (flag, environment variable, file key) for each
    /// flag of [`ConfigArgs`] (the file key is its id, but `--config` is no key), and the
    /// root key, which is only an environment variable.
    fn settings_in_the_code() -> Vec<(String, String, String)> {
        use clap::Args;
        let command = ConfigArgs::augment_args(clap::Command::new("repocrypt"));
        let mut rows: Vec<_> = command
            .get_arguments()
            .map(|arg| {
                let id = arg.get_id().as_str();
                (
                    arg.get_long().map(|l| format!("--{l}")).unwrap_or_default(),
                    arg.get_env()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    if id == "config" {
                        String::new()
                    } else {
                        id.to_owned()
                    },
                )
            })
            .collect();
        for env in [crate::keys::ROOT_KEY_ENV, IAM_PASSWORD_ENV] {
            rows.push((String::new(), env.to_owned(), String::new()));
        }
        rows
    }

    /// Config's fields (the file keys) and their defaults, as serialized.
    fn file_keys_and_defaults() -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(map)) => map,
            other => panic!("Config serializes to a map: {other:?}"),
        }
    }

    #[test]
    fn every_setting_is_a_flag_an_environment_variable_and_a_file_key() {
        let command = <ConfigArgs as clap::Args>::augment_args(clap::Command::new("repocrypt"));
        let mut flags: Vec<String> = Vec::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str().to_owned();
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(
                env,
                Some(format!("REPOCRYPT_{}", id.to_uppercase())),
                "--{id}'s environment variable"
            );
            assert!(arg.get_long().is_some(), "{id} has a long flag");
            assert!(arg.is_global_set(), "--{id} is taken by every subcommand");
            if id != "config" {
                flags.push(id);
            }
        }
        let keys: Vec<String> = file_keys_and_defaults().keys().cloned().collect();
        flags.sort();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort();
        assert_eq!(flags, sorted_keys, "a flag for each file key, and no other");
        // And the flags' serialization (the top layer) uses the same names.
        let all = ConfigArgs {
            listen: Some(DEFAULT_LISTEN.parse().expect("address")),
            data_dir: Some("d".into()),
            database_url: Some("sqlite://x".into()),
            db_timeout: Some(Duration::from_millis(500)),
            region: Some("r".into()),
            region_type: Some("t".into()),
            key_state_cache_ttl: Some(Duration::from_secs(1)),
            key_state_cache_capacity: Some(1),
            row_cache_capacity: Some(1),
            signature_max_skew: Some(Duration::from_secs(1)),
            event_retention: Some(Duration::from_secs(3600)),
            kms_backend: Some(KmsBackend::Aws),
            kms_endpoint: Some("http://k".into()),
            kms_region: Some("k".into()),
            kms_timeout: Some(Duration::from_secs(1)),
            // Local, so that the IAM settings load without a Keystone password.
            iam: Some(IamBackend::Local),
            iam_url: Some("http://i/v3".into()),
            iam_user: Some("u".into()),
            iam_user_domain: Some("d".into()),
            iam_project: Some("p".into()),
            iam_password_file: Some("f".into()),
            iam_admin_roles: Some(vec!["a".into()]),
            iam_member_roles: Some(vec!["m".into()]),
            iam_service_roles: Some(vec!["s".into()]),
            iam_cache_ttl: Some(Duration::from_secs(1)),
            iam_timeout: Some(Duration::from_secs(1)),
            log: Some("info".into()),
            log_format: Some(LogFormat::Json),
            log_writeback: Some(false),
            rate_limit_per_tenant: Some(1),
            rate_limit_per_credential: Some(1),
            max_connections: Some(1),
            connection_threads: Some(1),
            request_timeout: Some(Duration::from_secs(1)),
            header_read_timeout: Some(Duration::from_secs(1)),
            max_body_bytes: Some(1024),
            max_header_bytes: Some(8192),
            max_token_bytes: Some(256),
            json_max_depth: Some(1),
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            config: None,
        };
        let mut given_keys: Vec<String> =
            given(&all).expect("serializes").keys().cloned().collect();
        given_keys.sort();
        assert_eq!(given_keys, sorted_keys);
        Config::load(&all).expect("every flag given loads");
    }

    #[test]
    fn readme_table_lists_every_setting() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("README has a Configuration section");
        let header = "| flag | environment | file key | default | meaning |";
        let table = section
            .split(header)
            .nth(1)
            .expect("the Configuration section has the settings table");
        let rows: Vec<Vec<String>> = table
            .lines()
            .skip(2) // the rest of the header line and |---|
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .collect();
        let unquote = |cell: &str| cell.trim_matches('`').to_owned();
        let mut in_readme: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| {
                assert_eq!(r.len(), 5, "a README row of five cells: {r:?}");
                (unquote(&r[0]), unquote(&r[1]), unquote(&r[2]))
            })
            .collect();
        let mut in_code = settings_in_the_code();
        in_readme.sort();
        in_code.sort();
        let missing: Vec<_> = in_code.iter().filter(|s| !in_readme.contains(s)).collect();
        let unknown: Vec<_> = in_readme.iter().filter(|s| !in_code.contains(s)).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "README.md's configuration table and the code differ: settings missing from the \
             README (flag, environment, file key): {missing:?}; rows naming no setting: {unknown:?}"
        );
        // A default written as one value is the code's default.
        let defaults = file_keys_and_defaults();
        for r in &rows {
            let key = unquote(&r[2]);
            let Some(value) = defaults.get(&key) else {
                continue;
            };
            let code = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => continue, // no default (none, or chosen elsewhere): said in words
            };
            let readme_default = unquote(&r[3]).replace("DATA_DIR", DEFAULT_DATA_DIR);
            assert_eq!(readme_default, code, "README's default of {key}");
        }
    }

    #[test]
    fn formerly_file_only_settings_come_from_flags() {
        let c = Config::load(&ConfigArgs {
            key_state_cache_capacity: Some(7),
            row_cache_capacity: Some(0),
            header_read_timeout: Some(Duration::from_millis(1500)),
            max_body_bytes: Some(2048),
            max_header_bytes: Some(9000),
            max_token_bytes: Some(300),
            json_max_depth: Some(3),
            ..Default::default()
        })
        .expect("load");
        assert_eq!(c.key_state_cache_capacity, 7);
        assert_eq!(c.row_cache_capacity, 0);
        assert_eq!(c.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(
            (
                c.max_body_bytes,
                c.max_header_bytes,
                c.max_token_bytes,
                c.json_max_depth
            ),
            (2048, 9000, 300, 3)
        );
        let err = Config::load(&ConfigArgs {
            max_header_bytes: Some(8192),
            max_token_bytes: Some(9000),
            ..Default::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(err, "max_token_bytes is 9000: it must be from 256 to 8192");
    }

    #[test]
    fn a_bad_duration_names_the_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        for key in [
            "key_state_cache_ttl",
            "signature_max_skew",
            "event_retention",
            "db_timeout",
            "kms_timeout",
            "request_timeout",
            "header_read_timeout",
        ] {
            for (value, why) in [
                ("\"soon\"", "expected number"),
                ("\"10 parsecs\"", "unknown time unit"),
                ("10", "expected a duration"),
            ] {
                std::fs::write(&file, format!("{key} = {value}\n")).expect("write");
                let err = Config::load(&ConfigArgs {
                    config: Some(file.clone()),
                    ..Default::default()
                })
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
                assert!(
                    err.starts_with(&format!("config file {}: {key}", file.display())),
                    "{err}"
                );
                assert!(err.contains(why), "{key} = {value}: {err}");
            }
            // On the command line (and so in the environment, which clap reads too).
            let flag = format!("--{}", key.replace('_', "-"));
            let err = Cli::try_parse_from(["repocrypt", &flag, "soon", "serve"])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(&flag) && err.contains("soon"), "{err}");
        }
        // What was accepted stays accepted.
        std::fs::write(&file, "key_state_cache_ttl = \"0\"\nsignature_max_skew = \"1h 30m\"\nkms_timeout = \"1500ms\"\nrequest_timeout = \"2min\"\n").expect("write");
        let c = Config::load(&ConfigArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .expect("load");
        assert_eq!(c.key_state_cache_ttl, Duration::ZERO);
        assert_eq!(c.signature_max_skew, Duration::from_secs(5400));
        assert_eq!(c.kms_timeout, Duration::from_millis(1500));
        assert_eq!(c.request_timeout, Duration::from_secs(120));
    }

    #[test]
    fn debug_redacts_the_root_key_and_passwords() {
        let mut c = Config::load(&ConfigArgs {
            database_url: Some("postgres://u:hunter2@h/db".into()),
            ..Default::default()
        })
        .expect("load");
        c.root_key = Some(SecretString::from("c2VjcmV0LXJvb3Qta2V5"));
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("c2VjcmV0"),
            "{text}"
        );
        assert!(text.contains("postgres://u:***@h/db"), "{text}");
        assert!(text.contains("root_key: Some(\"<redacted>\")"), "{text}");
        assert!(text.contains("json_max_depth: 32"), "{text}");
        assert_eq!(c.expose_root_key(), Some("c2VjcmV0LXJvb3Qta2V5"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=TopSecret"),
            "postgres://u@h/db?sslmode=require&password=***"
        );
    }
}
