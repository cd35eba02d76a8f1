use std::sync::Mutex;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode as AxStatus, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::net::TcpListener;

use super::*;
use crate::auth::sdk_signature::{parse_authorization, verify};

const TENANT: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0";
const KEY: [u8; 32] = [0x5a; 32];
const ROUTE: &str = "/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key";

/// What the server saw of the last request.
#[derive(Default)]
struct Seen {
    tenant: String,
    repo_id: u32,
    uri: String,
    headers: Vec<(String, String)>,
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Option<Seen>>>,
    /// How to answer a repository: (status, body).
    answer: Arc<dyn Fn(u32) -> (u16, String) + Send + Sync>,
    delay: Duration,
}

async fn handler(
    State(fake): State<Fake>,
    UrlPath((tenant, repo_id)): UrlPath<(String, u32)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    *fake.seen.lock().unwrap() = Some(Seen {
        tenant,
        repo_id,
        uri: uri.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    });
    tokio::time::sleep(fake.delay).await;
    let (status, body) = (fake.answer)(repo_id);
    (
        AxStatus::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

fn key_answer(repo_id: u32) -> (u16, String) {
    let body = json!({
        "repo_id": repo_id,
        "cmk_key_id": "0d0466b0-e727-4d9c-b35d-f84bb474a37f",
        "data_key": base64::engine::general_purpose::STANDARD.encode(KEY),
        "cache_seconds": 300,
    });
    (200, body.to_string())
}

fn refusal(status: u16, code: &str, msg: &str) -> (u16, String) {
    (
        status,
        json!({"error_code": code, "error_msg": msg}).to_string(),
    )
}

/// A fake key broker on 127.0.0.1; its base URL and what it saw.
async fn start(
    answer: impl Fn(u32) -> (u16, String) + Send + Sync + 'static,
    delay: Duration,
) -> (String, Arc<Mutex<Option<Seen>>>) {
    let seen = Arc::new(Mutex::new(None));
    let fake = Fake {
        seen: Arc::clone(&seen),
        answer: Arc::new(answer),
        delay,
    };
    let app = Router::new().route(ROUTE, get(handler)).with_state(fake);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn token() -> Credentials {
    Credentials::Token("tok-123.secret".to_owned().into())
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn fetches_a_key_with_a_token() {
    let (url, seen) = start(key_answer, Duration::ZERO).await;
    let client = KeyBrokerClient::new(&url, None, token()).unwrap();
    let fetched = client.fetch_data_key(TENANT, 7).await.unwrap();
    assert_eq!(fetched.key.expose(), &KEY);
    assert_eq!(fetched.repo_id, 7);
    assert_eq!(fetched.cache_seconds, 300);
    assert_eq!(fetched.cmk_key_id, "0d0466b0-e727-4d9c-b35d-f84bb474a37f");
    let seen = seen.lock().unwrap().take().unwrap();
    assert_eq!(seen.tenant, TENANT);
    assert_eq!(seen.repo_id, 7);
    assert_eq!(
        seen.uri,
        format!("/v4/tenants/{TENANT}/repo-encryption/repositories/7/data-key")
    );
    assert_eq!(header(&seen, "x-auth-token"), Some("tok-123.secret"));
    assert_eq!(header(&seen, "authorization"), None);
    assert_eq!(
        header(&seen, "host"),
        Some(url.trim_start_matches("http://"))
    );
    // Nothing secret in Debug.
    let shown = format!("{fetched:?} {client:?}");
    assert!(!shown.contains("tok-123"), "{shown}");
    assert!(!shown.contains(&base64::engine::general_purpose::STANDARD.encode(KEY)));
    assert!(shown.contains("<redacted>"));
}

#[tokio::test]
async fn signs_with_ak_sk() {
    let (url, seen) = start(key_answer, Duration::ZERO).await;
    let creds = Credentials::AkSk {
        access_key: "HPUAEXAMPLEAK0000001".into(),
        secret_key: "the-secret-key".to_owned().into(),
    };
    let client = KeyBrokerClient::new(&format!("{url}/"), None, creds).unwrap();
    let fetched = client.fetch_data_key(TENANT, 42).await.unwrap();
    assert_eq!(fetched.key.expose(), &KEY);
    let seen = seen.lock().unwrap().take().unwrap();
    assert_eq!(header(&seen, "x-auth-token"), None);
    let authorization = header(&seen, "authorization").unwrap();
    let auth = parse_authorization(authorization).unwrap();
    assert_eq!(auth.access_key, "HPUAEXAMPLEAK0000001");
    assert_eq!(auth.signed_headers, ["host", "x-sdk-date"]);
    let date = header(&seen, "x-sdk-date").unwrap();
    assert_eq!(date.len(), 16);
    assert!(crate::auth::sdk_signature::parse_sdk_date(date).is_ok());
    // Verify as the server does, from what it received.
    let headers: Vec<(&str, &str)> = seen
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let canonical = canonical_request(
        "GET",
        &seen.uri,
        None,
        &headers,
        &auth.signed_headers,
        EMPTY_PAYLOAD_SHA256_HEX,
    )
    .unwrap();
    let sts = string_to_sign(date, &canonical);
    assert!(verify(b"the-secret-key", &auth, &sts));
    assert!(!verify(b"another-secret", &auth, &sts));
}

#[tokio::test]
async fn a_refusal_shows_status_code_and_message() {
    let (url, _) = start(
        |_| {
            refusal(
                410,
                "RC.410001",
                "the data key of repository 7 was destroyed",
            )
        },
        Duration::ZERO,
    )
    .await;
    let client = KeyBrokerClient::new(&url, None, token()).unwrap();
    let err = client.fetch_data_key(TENANT, 7).await.unwrap_err();
    match &err {
        ClientError::Refused {
            what,
            status,
            error_code,
            error_msg,
        } => {
            assert_eq!(
                (what.as_str(), *status),
                ("the data key of repository 7", 410)
            );
            assert_eq!(error_code, "RC.410001");
            assert_eq!(error_msg, "the data key of repository 7 was destroyed");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "the key broker refused the data key of repository 7: HTTP 410, RC.410001: the data key of repository 7 was destroyed"
    );
    assert!(matches!(Error::from(err), Error::InvalidArgument(_)));
}

#[tokio::test]
async fn refusals_and_bad_answers() {
    let (url, _) = start(
        |repo| match repo {
            1 => refusal(503, "RC.503001", "KMS unreachable"),
            2 => (502, "<html>Bad\nGateway</html>".into()),
            3 => (
                200,
                json!({"repo_id": 3, "cmk_key_id": "k", "cache_seconds": 1,
                    "data_key": base64::engine::general_purpose::STANDARD.encode([1u8; 31])})
                .to_string(),
            ),
            4 => (
                200,
                json!({"repo_id": 4, "cmk_key_id": "k", "cache_seconds": 1,
                    "data_key": "not base64!"})
                .to_string(),
            ),
            5 => key_answer(6),
            6 => (200, "{\"repo_id\": 6, \"data_key\": ".into()),
            7 => (204, String::new()),
            8 => (
                200,
                json!({"repo_id": 8, "cmk_key_id": "k",
                    "data_key": base64::engine::general_purpose::STANDARD.encode(KEY)})
                .to_string(),
            ),
            9 => refusal(403, "RC.403002", "key disabled\u{1b}[31m"),
            _ => (404, "{}".into()),
        },
        Duration::ZERO,
    )
    .await;
    let client = KeyBrokerClient::new(&url, None, token()).unwrap();
    let fetch = |repo| {
        let client = &client;
        async move { client.fetch_data_key(TENANT, repo).await.unwrap_err() }
    };

    let e = fetch(1).await;
    assert!(
        e.to_string()
            .contains("HTTP 503, RC.503001: KMS unreachable"),
        "{e}"
    );
    assert!(matches!(Error::from(e), Error::KmsUnavailable(_)));
    let e = fetch(2).await;
    assert!(
        e.to_string()
            .contains("HTTP 502, (no JSON error body): <html>Bad Gateway</html>"),
        "{e}"
    );
    let e = fetch(3).await.to_string();
    assert!(e.contains("decodes to 31 bytes, not 32"), "{e}");
    assert!(!e.contains("AQEB"), "{e}");
    let e = fetch(4).await.to_string();
    assert!(
        e.contains("not standard base64") && !e.contains("not base64!"),
        "{e}"
    );
    let e = fetch(5).await.to_string();
    assert!(e.contains("key of repository 6, not 5"), "{e}");
    let e = fetch(6).await.to_string();
    assert!(e.contains("not JSON"), "{e}");
    let e = fetch(7).await;
    assert!(
        matches!(e, ClientError::UnexpectedStatus { status: 204, .. }),
        "{e}"
    );
    let e = fetch(8).await.to_string();
    assert!(e.contains("`cache_seconds` is missing"), "{e}");
    let e = fetch(9).await.to_string();
    assert!(e.contains("HTTP 403, RC.403002: key disabled [31m"), "{e}");
    assert!(!e.contains('\u{1b}'));
    let e = fetch(10).await.to_string();
    assert!(e.contains("HTTP 404, (none): (none)"), "{e}");
}

#[tokio::test]
async fn tenant_is_percent_encoded() {
    let (url, seen) = start(key_answer, Duration::ZERO).await;
    let client = KeyBrokerClient::new(&url, None, token()).unwrap();
    client.fetch_data_key("a b/c?d", 1).await.unwrap();
    let seen = seen.lock().unwrap().take().unwrap();
    assert_eq!(seen.tenant, "a b/c?d");
    assert!(
        seen.uri.starts_with("/v4/tenants/a%20b%2Fc%3Fd/"),
        "{}",
        seen.uri
    );
}

#[tokio::test]
async fn endpoint_prefix_is_kept() {
    let client = KeyBrokerClient::new("http://127.0.0.1:1/broker/", None, token()).unwrap();
    assert_eq!(
        client.data_key_path("t", 3),
        "/broker/v4/tenants/t/repo-encryption/repositories/3/data-key"
    );
}

#[tokio::test]
async fn times_out() {
    let (url, _) = start(key_answer, Duration::from_secs(5)).await;
    let client = KeyBrokerClient::new(&url, None, token())
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = client.fetch_data_key(TENANT, 1).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(Error::from(err), Error::KmsUnavailable(_)));
}

#[tokio::test]
async fn unreachable_endpoint() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = KeyBrokerClient::new(&format!("http://{addr}"), None, token()).unwrap();
    let err = client.fetch_data_key(TENANT, 1).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()));
}

#[test]
fn endpoints_are_checked() {
    let new = |url: &str, ca: Option<&Path>| KeyBrokerClient::new(url, ca, token()).unwrap_err();
    assert!(matches!(
        new("https://localhost", None),
        ClientError::HttpsNeedsCaFile
    ));
    assert!(new("https://localhost", None)
        .to_string()
        .contains("needs --ca-file"));
    assert!(matches!(
        new("http://localhost", Some(Path::new("ca.pem"))),
        ClientError::CaFileWithHttp
    ));
    assert!(matches!(
        new("ftp://host", None),
        ClientError::InvalidEndpoint(_)
    ));
    assert!(matches!(
        new("localhost:8080", None),
        ClientError::InvalidEndpoint(_)
    ));
    assert!(matches!(
        new("http://u:p@host", None),
        ClientError::InvalidEndpoint(_)
    ));
    assert!(matches!(
        new("http://host/?q=1", None),
        ClientError::InvalidEndpoint(_)
    ));
    assert!(matches!(
        new("not a url", None),
        ClientError::InvalidEndpoint(_)
    ));
    let missing = Path::new("/nonexistent/ca.pem");
    assert!(matches!(
        new("https://localhost", Some(missing)),
        ClientError::CaFile(_)
    ));
    // A key is no CA certificate.
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls/server.key");
    assert!(matches!(
        new("https://localhost", Some(&key)),
        ClientError::CaFile(_)
    ));
    assert!(KeyBrokerClient::new("http://[::1]:8080", None, token()).is_ok());
}

#[test]
fn credentials_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let c = Credentials::from_lookup(env(&[
        ("REPOCRYPT_TOKEN", "t"),
        ("REPOCRYPT_ACCESS_KEY", "ak"),
        ("REPOCRYPT_SECRET_KEY", "sk"),
    ]))
    .unwrap();
    assert!(matches!(c, Credentials::Token(_)));
    let c = Credentials::from_lookup(env(&[
        ("REPOCRYPT_TOKEN", ""),
        ("REPOCRYPT_ACCESS_KEY", "ak"),
        ("REPOCRYPT_SECRET_KEY", "sk-value"),
    ]))
    .unwrap();
    assert!(matches!(&c, Credentials::AkSk { access_key, .. } if access_key == "ak"));
    assert!(!format!("{c:?}").contains("sk-value"));
    assert!(matches!(
        Credentials::from_lookup(env(&[("REPOCRYPT_ACCESS_KEY", "ak")])),
        Err(ClientError::MissingCredentials)
    ));
}

#[tokio::test]
async fn https_with_a_ca_file() {
    use crate::config::{Limits, TlsFiles};
    use crate::http::server::{serve, tls_config, ServerOptions};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let tls = tls_config(&TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
    .unwrap();
    let fake = Fake {
        seen: Arc::new(Mutex::new(None)),
        answer: Arc::new(key_answer),
        delay: Duration::ZERO,
    };
    let app = Router::new().route(ROUTE, get(handler)).with_state(fake);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = ServerOptions {
        limits: Limits::default(),
        tls: Some(tls),
        metrics: Default::default(),
        connection_threads: 2,
    };
    tokio::spawn(serve(listener, app, options, std::future::pending()));

    let ca = dir.join("ca.pem");
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}");
        let client = KeyBrokerClient::new(&url, Some(&ca), token()).unwrap();
        let fetched = client.fetch_data_key(TENANT, 9).await.unwrap();
        assert_eq!(fetched.key.expose(), &KEY);
    }
    // A CA that did not sign the server's certificate: the TLS handshake fails.
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), std::fs::read(dir.join("server.pem")).unwrap()).unwrap();
    let client = KeyBrokerClient::new(
        &format!("https://localhost:{port}"),
        Some(other.path()),
        token(),
    )
    .unwrap();
    let err = client.fetch_data_key(TENANT, 9).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}
