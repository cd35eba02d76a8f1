//! The storage node's side of the key broker: fetch a repository's data key.
//!
//! ```text
//! GET {endpoint}/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key
//! 200 {"repo_id": N, "cmk_key_id": "...", "data_key": "<base64 of 32 bytes>", "cache_seconds": N}
//! 4xx/5xx {"error_code": "...", "error_msg": "..."}
//! ```
//!
//! Authenticated with `X-Auth-Token` ([`Credentials::Token`]) or an `SDK-HMAC-SHA256`
//! AK/SK signature over `host` and `x-sdk-date` ([`Credentials::AkSk`]), made with
//! [`crate::auth::sdk_signature`]. One HTTP/1.1 request on one connection (hyper's client
//! connection, no pool: a fetch is one request), `http://` or `https://` with the CA
//! certificates of a PEM file (there is no built-in trust store). The whole fetch
//! (connect, TLS, request, body) is bounded by [`DEFAULT_TIMEOUT`].
//!
//! No key material or secret reaches an error message or a log: the data key, the token
//! and the secret key are held in zeroizing types with redacted `Debug`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::auth::sdk_signature::{
    canonical_request, format_authorization, sign, string_to_sign, EMPTY_PAYLOAD_SHA256_HEX,
};
use crate::domain::Error;
use crate::seal::DataKeyBytes;

/// Bound on one whole fetch.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read (a data-key answer is about 150 bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// Environment variable of the token (sent as `X-Auth-Token`).
pub const ENV_TOKEN: &str = "REPOCRYPT_TOKEN";
/// Environment variable of the access key (AK), used when there is no token.
pub const ENV_ACCESS_KEY: &str = "REPOCRYPT_ACCESS_KEY";
/// Environment variable of the secret key (SK).
pub const ENV_SECRET_KEY: &str = "REPOCRYPT_SECRET_KEY";

/// How requests are authenticated. `Debug` shows no secret.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `X-Auth-Token: <token>`.
    Token(SecretString),
    /// `SDK-HMAC-SHA256` signing with an AK/SK pair.
    AkSk {
        access_key: String,
        secret_key: SecretString,
    },
}

impl Credentials {
    /// `REPOCRYPT_TOKEN` when set (and not empty), else `REPOCRYPT_ACCESS_KEY` and
    /// `REPOCRYPT_SECRET_KEY`.
    pub fn from_env() -> Result<Credentials, ClientError> {
        Credentials::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Credentials::from_env`] over another source of variables.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Credentials, ClientError> {
        let nonempty = |name: &str| var(name).filter(|v| !v.is_empty());
        if let Some(token) = nonempty(ENV_TOKEN) {
            return Ok(Credentials::Token(token.into()));
        }
        match (nonempty(ENV_ACCESS_KEY), nonempty(ENV_SECRET_KEY)) {
            (Some(access_key), Some(secret_key)) => Ok(Credentials::AkSk {
                access_key,
                secret_key: secret_key.into(),
            }),
            _ => Err(ClientError::MissingCredentials),
        }
    }
}

/// Why a data key could not be fetched. Messages carry the server's `error_code` and
/// `error_msg` (sanitised) but never a key, token or secret.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid --endpoint: {0}")]
    InvalidEndpoint(String),
    #[error("an https endpoint needs --ca-file PEM (the CA certificates to trust): this build has no built-in trust store")]
    HttpsNeedsCaFile,
    #[error("--ca-file is for https endpoints only")]
    CaFileWithHttp,
    #[error("--ca-file {0}")]
    CaFile(String),
    #[error("no credentials: set {ENV_TOKEN}, or {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}")]
    MissingCredentials,
    #[error("the tenant id {0:?} cannot be sent: it must not be empty")]
    InvalidTenant(String),
    #[error("cannot reach the key broker at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the key broker at {endpoint} did not answer within {} s", .after.as_secs())]
    Timeout { endpoint: String, after: Duration },
    #[error("the key broker refused {what}: HTTP {status}, {error_code}: {error_msg}")]
    Refused {
        what: String,
        status: u16,
        error_code: String,
        error_msg: String,
    },
    #[error("unexpected answer from the key broker: HTTP {status}: {detail}")]
    UnexpectedStatus { status: u16, detail: String },
    #[error("malformed data-key answer from the key broker: {0}")]
    BadResponse(String),
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        use ClientError::*;
        match &e {
            InvalidEndpoint(_) | HttpsNeedsCaFile | CaFileWithHttp | CaFile(_)
            | MissingCredentials | InvalidTenant(_) => Error::InvalidArgument(e.to_string()),
            Unreachable { .. } | Timeout { .. } => Error::KmsUnavailable(e.to_string()),
            Refused { status, .. } if *status >= 500 => Error::KmsUnavailable(e.to_string()),
            Refused { .. } => Error::InvalidArgument(e.to_string()),
            UnexpectedStatus { .. } | BadResponse(_) => Error::Internal(e.to_string()),
        }
    }
}

/// A fetched data key.
#[derive(Debug)]
pub struct FetchedKey {
    pub repo_id: u32,
    pub cmk_key_id: String,
    pub cache_seconds: u64,
    pub key: DataKeyBytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// A client of one key broker endpoint.
pub struct KeyBrokerClient {
    endpoint: String,
    scheme: Scheme,
    /// Host as in the URL (IPv6 in brackets): the `Host` header, with `:port` if given.
    authority: String,
    /// Host to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    /// The endpoint's path, without a trailing `/` (usually empty).
    base_path: String,
    tls: Option<tokio_rustls::TlsConnector>,
    credentials: Credentials,
    timeout: Duration,
}

impl std::fmt::Debug for KeyBrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBrokerClient")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KeyBrokerClient {
    /// A client of `endpoint` (`http://host[:port][/prefix]` or `https://...` with
    /// `ca_file`).
    pub fn new(
        endpoint: &str,
        ca_file: Option<&Path>,
        credentials: Credentials,
    ) -> Result<KeyBrokerClient, ClientError> {
        let bad = |why: &str| ClientError::InvalidEndpoint(format!("{endpoint:?}: {why}"));
        let uri: hyper::Uri = endpoint.parse().map_err(|_| bad("not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("no scheme: write http://host:port")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not supported"));
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match (scheme, ca_file) {
            (Scheme::Http, None) => None,
            (Scheme::Http, Some(_)) => return Err(ClientError::CaFileWithHttp),
            (Scheme::Https, None) => return Err(ClientError::HttpsNeedsCaFile),
            (Scheme::Https, Some(path)) => Some(tls_connector(path)?),
        };
        Ok(KeyBrokerClient {
            endpoint: endpoint.to_owned(),
            scheme,
            authority: authority.as_str().to_owned(),
            host: bare_host,
            port,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            tls,
            credentials,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Another bound on a whole fetch than [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> KeyBrokerClient {
        self.timeout = timeout;
        self
    }

    /// The request path of a repository's data key.
    pub fn data_key_path(&self, tenant: &str, repo_id: u32) -> String {
        format!(
            "{}/v4/tenants/{}/repo-encryption/repositories/{repo_id}/data-key",
            self.base_path,
            percent_encode(tenant)
        )
    }

    /// Fetches the data key of repository `repo_id` of `tenant`.
    pub async fn fetch_data_key(
        &self,
        tenant: &str,
        repo_id: u32,
    ) -> Result<FetchedKey, ClientError> {
        if tenant.is_empty() {
            return Err(ClientError::InvalidTenant(tenant.to_owned()));
        }
        let request = self.request(&self.data_key_path(tenant, repo_id), "application/json")?;
        let (status, body) = tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                after: self.timeout,
            })??;
        interpret(status, &body, repo_id)
    }

    /// A GET of `path`, authenticated.
    fn request(&self, path: &str, accept: &str) -> Result<Request<Empty<Bytes>>, ClientError> {
        let builder = Request::get(path)
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::ACCEPT, accept)
            .header(
                hyper::header::USER_AGENT,
                concat!("repocrypt/", env!("CARGO_PKG_VERSION")),
            );
        let builder = match &self.credentials {
            Credentials::Token(token) => builder.header("x-auth-token", token.expose_secret()),
            Credentials::AkSk {
                access_key,
                secret_key,
            } => {
                let date = sdk_date(SystemTime::now());
                let headers = [("host", self.authority.as_str()), ("x-sdk-date", &date)];
                let names = ["host", "x-sdk-date"];
                let canonical = canonical_request(
                    "GET",
                    path,
                    None,
                    &headers,
                    &names,
                    EMPTY_PAYLOAD_SHA256_HEX,
                )
                .map_err(|e| ClientError::InvalidEndpoint(format!("cannot sign: {e}")))?;
                let signature = sign(
                    secret_key.expose_secret().as_bytes(),
                    &string_to_sign(&date, &canonical),
                );
                builder.header("x-sdk-date", date.as_str()).header(
                    hyper::header::AUTHORIZATION,
                    format_authorization(access_key, &names, &signature),
                )
            }
        };
        // A header value the token or access key cannot make (control characters) fails
        // here; the message names no value.
        builder
            .body(Empty::new())
            .map_err(|_| ClientError::InvalidEndpoint("cannot build the request: the endpoint, the token or the access key holds characters not allowed in HTTP".into()))
    }

    async fn exchange(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), ClientError> {
        let stream = self.connect().await?;
        send(stream, request)
            .await
            .map_err(|reason| self.unreachable(reason))
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// A connection to the endpoint, through TLS for https.
    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, self.scheme) {
            (Some(tls), Scheme::Https) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                    self.unreachable(format!("{:?} is not a TLS server name", self.host))
                })?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?;
                Ok(Box::new(stream))
            }
            _ => Ok(Box::new(tcp)),
        }
    }
}

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// One request on a fresh HTTP/1.1 connection; the status and the (bounded) body.
async fn send<S>(
    stream: S,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Zeroizing<Vec<u8>>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let outcome = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, Zeroizing::new(body.to_vec())))
    }
    .await;
    driver.abort();
    outcome
}

/// `YYYYMMDDTHHMMSSZ`, the `X-Sdk-Date` format.
fn sdk_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Printable text of at most `max` characters from a server-supplied string.
fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

fn interpret(status: StatusCode, body: &[u8], repo_id: u32) -> Result<FetchedKey, ClientError> {
    if status == StatusCode::OK {
        return parse_key(body, repo_id);
    }
    Err(interpret_refusal(
        status,
        body,
        &format!("the data key of repository {repo_id}"),
    ))
}

/// A refusal (anything but 200) of a request for `what`.
fn interpret_refusal(status: StatusCode, body: &[u8], what: &str) -> ClientError {
    if status.is_client_error() || status.is_server_error() {
        let (error_code, error_msg) = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => {
                let field = |name: &str| {
                    v.get(name)
                        .and_then(|f| f.as_str())
                        .map(|s| sanitize(s, 300))
                        .unwrap_or_else(|| "(none)".to_owned())
                };
                (field("error_code"), field("error_msg"))
            }
            Err(_) => (
                "(no JSON error body)".to_owned(),
                sanitize(&String::from_utf8_lossy(body), 200),
            ),
        };
        return ClientError::Refused {
            what: what.to_owned(),
            status: status.as_u16(),
            error_code,
            error_msg,
        };
    }
    ClientError::UnexpectedStatus {
        status: status.as_u16(),
        detail: if status.is_redirection() {
            "redirects are not followed: point --endpoint at the key broker itself".into()
        } else {
            "expected 200".into()
        },
    }
}

/// The 200 answer. Errors name fields, never their values (one is the key).
fn parse_key(body: &[u8], repo_id: u32) -> Result<FetchedKey, ClientError> {
    let bad = |why: String| ClientError::BadResponse(why);
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let data_key = match object.remove("data_key") {
        Some(serde_json::Value::String(s)) => Zeroizing::new(s),
        _ => return Err(bad("`data_key` is missing or not a string".into())),
    };
    let answered_repo = object
        .get("repo_id")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("`repo_id` is missing or not a non-negative integer".into()))?;
    if answered_repo != u64::from(repo_id) {
        return Err(bad(format!(
            "it is the key of repository {answered_repo}, not {repo_id}"
        )));
    }
    let cmk_key_id = object
        .get("cmk_key_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("`cmk_key_id` is missing or not a string".into()))?;
    let cache_seconds = object
        .get("cache_seconds")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("`cache_seconds` is missing or not a non-negative integer".into()))?;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(data_key.as_bytes())
            .map_err(|_| bad("`data_key` is not standard base64".into()))?,
    );
    let key = DataKeyBytes::from_slice(&decoded).ok_or_else(|| {
        bad(format!(
            "`data_key` decodes to {} bytes, not 32",
            decoded.len()
        ))
    })?;
    Ok(FetchedKey {
        repo_id,
        cmk_key_id: sanitize(cmk_key_id, 300),
        cache_seconds,
        key,
    })
}

fn tls_connector(path: &Path) -> Result<tokio_rustls::TlsConnector, ClientError> {
    let fail = |why: String| ClientError::CaFile(format!("{}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate found".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| fail(format!("unusable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

mod events;
pub use events::{EventStream, Revocation};

#[cfg(test)]
mod tests;
