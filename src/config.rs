//! Layered configuration: flags > environment (`REPOCRYPT_*`) > TOML file > defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::Error;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./repocrypt-data";
pub const DEFAULT_REGION: &str = "local";
pub const DEFAULT_REGION_TYPE: &str = "primary";
pub const DEFAULT_KEY_STATE_CACHE_TTL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEY_STATE_CACHE_CAPACITY: usize = 100_000;
pub const DEFAULT_KMS_TIMEOUT: Duration = crate::kms::aws::DEFAULT_TIMEOUT;
pub const MAX_KMS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_SIGNATURE_MAX_SKEW: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_RATE_LIMIT_PER_TENANT: u32 = 1000;
pub const DEFAULT_RATE_LIMIT_PER_CREDENTIAL: u32 = 500;

/// Where tenants' keys live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KmsBackend {
    /// The embedded KMS, in the service's own database.
    Local,
    /// AWS KMS or anything speaking its API (LocalStack, moto), through aws-sdk-kms.
    Aws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The configuration flags every subcommand takes (with their environment variables).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "REPOCRYPT_CONFIG", global = true, value_name = "FILE")]
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
    /// Region reported in settings [default: local].
    #[arg(long, env = "REPOCRYPT_REGION", global = true)]
    pub region: Option<String>,
    /// Region type reported in settings [default: primary].
    #[arg(long, env = "REPOCRYPT_REGION_TYPE", global = true)]
    pub region_type: Option<String>,
    /// How long a key state read from the KMS is reused, e.g. `10s`; `0` turns the cache off [default: 10s].
    #[arg(long, env = "REPOCRYPT_KEY_STATE_CACHE_TTL", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub key_state_cache_ttl: Option<Duration>,
    /// Largest difference between a signed request's X-Sdk-Date and the server's clock [default: 15m].
    #[arg(long, env = "REPOCRYPT_SIGNATURE_MAX_SKEW", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub signature_max_skew: Option<Duration>,
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
    pub kms_timeout: Option<Duration>,
    /// Log filter, e.g. `info` or `repocrypt=debug` [default: info for serve, warn otherwise].
    #[arg(long, env = "REPOCRYPT_LOG", global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "REPOCRYPT_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
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
    /// Longest time a request may take, reading its body included (408 after) [default: 10s].
    #[arg(long, env = "REPOCRYPT_REQUEST_TIMEOUT", global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub request_timeout: Option<Duration>,
    /// PEM certificate chain: serve HTTPS (with --tls-key) instead of plain HTTP.
    #[arg(long, env = "REPOCRYPT_TLS_CERT", global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "REPOCRYPT_TLS_KEY", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// The TOML file: the same settings, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    region: Option<String>,
    region_type: Option<String>,
    key_state_cache_ttl: Option<String>,
    key_state_cache_capacity: Option<usize>,
    row_cache_capacity: Option<usize>,
    signature_max_skew: Option<String>,
    kms_backend: Option<KmsBackend>,
    kms_endpoint: Option<String>,
    kms_region: Option<String>,
    kms_timeout: Option<String>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    rate_limit_per_tenant: Option<u32>,
    rate_limit_per_credential: Option<u32>,
    max_connections: Option<usize>,
    request_timeout: Option<String>,
    header_read_timeout: Option<String>,
    max_body_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    max_token_bytes: Option<usize>,
    json_max_depth: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// Bounds on what one client can make the server hold or do.
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
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_body_bytes: crate::domain::MAX_BODY_BYTES,
            max_header_bytes: 32 * 1024,
            max_token_bytes: 16 * 1024,
            json_max_depth: 32,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Token-bucket rates in requests per second; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub per_tenant: u32,
    pub per_credential: u32,
}

/// A certificate chain and its key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The resolved configuration.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub region: String,
    pub region_type: String,
    pub key_state_cache_ttl: Duration,
    pub key_state_cache_capacity: usize,
    /// Settings (and as many grants) SQLite keeps in memory; 0 turns it off.
    pub row_cache_capacity: usize,
    pub signature_max_skew: Duration,
    pub kms_backend: KmsBackend,
    pub kms_endpoint: Option<String>,
    pub kms_region: Option<String>,
    pub kms_timeout: Duration,
    pub log: Option<String>,
    pub log_format: LogFormat,
    /// Base64 root key from `REPOCRYPT_ROOT_KEY` (never a flag: argv is visible to all).
    pub root_key: Option<String>,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    /// HTTPS when set; plain HTTP otherwise.
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url))
            .field("region", &self.region)
            .field("key_state_cache_ttl", &self.key_state_cache_ttl)
            .field("kms_backend", &self.kms_backend)
            .field(
                "kms_endpoint",
                &self.kms_endpoint.as_deref().map(redact_url),
            )
            .field("kms_region", &self.kms_region)
            .field("kms_timeout", &self.kms_timeout)
            .field("root_key", &self.root_key.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .field("rate_limits", &self.rate_limits)
            .field("tls", &self.tls)
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

fn nonempty(name: &str, value: String) -> Result<String, Error> {
    crate::domain::check_text_arg(name, &value).map(|()| value)
}

impl Config {
    /// Resolve flags/env (already merged by clap) over the file over the defaults.
    pub fn load(args: &ConfigArgs) -> Result<Self, Error> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let limits = limits(args, &file)?;
        let ttl = duration(
            "key_state_cache_ttl",
            args.key_state_cache_ttl,
            file.key_state_cache_ttl.as_deref(),
            DEFAULT_KEY_STATE_CACHE_TTL,
        )?;
        let signature_max_skew = duration(
            "signature_max_skew",
            args.signature_max_skew,
            file.signature_max_skew.as_deref(),
            DEFAULT_SIGNATURE_MAX_SKEW,
        )?;
        if signature_max_skew.is_zero() {
            return Err(Error::InvalidArgument(
                "signature_max_skew must be positive".into(),
            ));
        }
        let kms_timeout = duration(
            "kms_timeout",
            args.kms_timeout,
            file.kms_timeout.as_deref(),
            DEFAULT_KMS_TIMEOUT,
        )?;
        if kms_timeout.is_zero() || kms_timeout > MAX_KMS_TIMEOUT {
            return Err(Error::InvalidArgument(format!(
                "kms_timeout must be more than 0 and at most {}",
                humantime::format_duration(MAX_KMS_TIMEOUT)
            )));
        }
        let kms_endpoint = args.kms_endpoint.clone().or(file.kms_endpoint);
        if let Some(url) = &kms_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::InvalidArgument(format!(
                    "kms_endpoint `{}` must be an http:// or https:// URL",
                    redact_url(url)
                )));
            }
        }
        let kms_region = match args.kms_region.clone().or(file.kms_region) {
            Some(r) => Some(nonempty("kms_region", r)?),
            None => None,
        };
        let listen = match args.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| Error::Internal("bad default listen address".into()))?,
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = args
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| default_database_url(&data_dir));
        let rate_limits = RateLimits {
            per_tenant: args
                .rate_limit_per_tenant
                .or(file.rate_limit_per_tenant)
                .unwrap_or(DEFAULT_RATE_LIMIT_PER_TENANT),
            per_credential: args
                .rate_limit_per_credential
                .or(file.rate_limit_per_credential)
                .unwrap_or(DEFAULT_RATE_LIMIT_PER_CREDENTIAL),
        };
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "tls_cert and tls_key go together: give both to serve HTTPS, or neither".into(),
                ))
            }
        };
        Ok(Config {
            limits,
            rate_limits,
            tls,
            listen,
            database_url,
            region: nonempty(
                "region",
                args.region
                    .clone()
                    .or(file.region)
                    .unwrap_or_else(|| DEFAULT_REGION.into()),
            )?,
            region_type: nonempty(
                "region_type",
                args.region_type
                    .clone()
                    .or(file.region_type)
                    .unwrap_or_else(|| DEFAULT_REGION_TYPE.into()),
            )?,
            key_state_cache_ttl: ttl,
            signature_max_skew,
            kms_backend: args
                .kms_backend
                .or(file.kms_backend)
                .unwrap_or(KmsBackend::Local),
            kms_endpoint,
            kms_region,
            kms_timeout,
            key_state_cache_capacity: file
                .key_state_cache_capacity
                .unwrap_or(DEFAULT_KEY_STATE_CACHE_CAPACITY),
            row_cache_capacity: file
                .row_cache_capacity
                .unwrap_or(crate::store::sqlite::DEFAULT_ROW_CACHE_CAPACITY),
            log: args.log.clone().or(file.log),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            root_key: std::env::var(crate::keys::ROOT_KEY_ENV).ok(),
            data_dir,
        })
    }
}

/// The limits from flags, the file and the defaults, each checked against its range.
fn limits(args: &ConfigArgs, file: &FileConfig) -> Result<Limits, Error> {
    let d = Limits::default();
    let limits = Limits {
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(d.max_connections),
        max_body_bytes: file.max_body_bytes.unwrap_or(d.max_body_bytes),
        max_header_bytes: file.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_token_bytes: file.max_token_bytes.unwrap_or(d.max_token_bytes),
        json_max_depth: file.json_max_depth.unwrap_or(d.json_max_depth),
        request_timeout: duration(
            "request_timeout",
            args.request_timeout,
            file.request_timeout.as_deref(),
            d.request_timeout,
        )?,
        header_read_timeout: duration(
            "header_read_timeout",
            None,
            file.header_read_timeout.as_deref(),
            d.header_read_timeout,
        )?,
    };
    let in_range = |name: &str, value: usize, min: usize, max: usize| {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "{name} is {value}: it must be from {min} to {max}"
            )))
        }
    };
    in_range("max_connections", limits.max_connections, 1, 1_000_000)?;
    in_range(
        "max_body_bytes",
        limits.max_body_bytes,
        1024,
        crate::domain::MAX_BODY_BYTES,
    )?;
    // hyper needs at least 8 KiB of read buffer, and its ~400 KiB read buffer caps a head.
    in_range(
        "max_header_bytes",
        limits.max_header_bytes,
        8192,
        256 * 1024,
    )?;
    in_range(
        "max_token_bytes",
        limits.max_token_bytes,
        256,
        limits.max_header_bytes,
    )?;
    in_range("json_max_depth", limits.json_max_depth, 1, 128)?;
    for (name, value) in [
        ("request_timeout", limits.request_timeout),
        ("header_read_timeout", limits.header_read_timeout),
    ] {
        if value.is_zero() || value > Duration::from_secs(300) {
            return Err(Error::InvalidArgument(format!(
                "{name} must be more than 0 and at most 5m"
            )));
        }
    }
    Ok(limits)
}

/// A duration from a flag/env (already parsed), else the file (text), else the default.
fn duration(
    name: &str,
    arg: Option<Duration>,
    file: Option<&str>,
    default: Duration,
) -> Result<Duration, Error> {
    match (arg, file) {
        (Some(d), _) => Ok(d),
        (None, Some(s)) => humantime::parse_duration(s)
            .map_err(|e| Error::InvalidArgument(format!("{name} `{s}`: {e}"))),
        (None, None) => Ok(default),
    }
}

pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("repocrypt.db").display())
}

fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidArgument(format!("cannot read config file {}: {e}", path.display()))
    })?;
    toml::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("config file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            c.rate_limits,
            RateLimits {
                per_tenant: 70,
                per_credential: 0
            }
        );
        assert_eq!(
            c.limits,
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
            c.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        let d = Config::load(&ConfigArgs::default()).expect("defaults");
        assert_eq!(d.limits, Limits::default());
        assert_eq!(d.rate_limits.per_tenant, DEFAULT_RATE_LIMIT_PER_TENANT);
        assert_eq!(d.tls, None);
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
        assert!(err("request_timeout = \"10m\"\n").contains("request_timeout"));
        assert!(err("header_read_timeout = \"0s\"\n").contains("header_read_timeout"));
        assert!(err("tls_key = \"k.pem\"\n").contains("tls_cert and tls_key go together"));
        assert!(err("rate_limit_per_tenant = -1\n").contains("rate_limit_per_tenant"));
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
