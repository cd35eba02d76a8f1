//! No secret reaches a log line, the audit log or the database in clear.
//!
//! The real binary serves at trace level (`REPOCRYPT_LOG=trace`, every crate), and every
//! admin command runs at trace level too. The test drives every API operation with
//! `X-Auth-Token` and with AK/SK signed requests, their error paths, and every CLI command,
//! collecting each secret it knows on the way: the tokens it sends (issued, tampered,
//! forged, expired), the AK/SK secret keys, the `Signature=` values it sends (and the right
//! signature of each request it signs wrongly), the root key and the keys derived from it
//! (and a root key refused for its length), imported key material (and material refused
//! for its length), the AWS secret access key and session token (on moto) and the database
//! password (on PostgreSQL), and the key broker's data keys (each answered by a
//! registration or a release: a secret everywhere but in that answer) and the wrapped
//! keys the database holds (a secret everywhere but in the database). Then
//! it asserts that none of them, in any of the forms a log could print them in (raw, hex,
//! base64, a Rust byte-slice `Debug`), appears in:
//! - the server's log;
//! - any command's standard error, or its standard output, except the one secret the
//!   command exists to print (`token issue`'s token, `credential create`'s secret key);
//! - `repocrypt audit list` of every tenant, and every row of the `audit_log` table;
//! - the database files (SQLite), byte for byte;
//! - any HTTP response body.
//!
//! It also checks that the logs are not trivially empty (TRACE and DEBUG lines, every
//! request id it sent), so it cannot pass because nothing was logged.
//!
//! Three runs: the local KMS on SQLite (text logs); the AWS KMS backend on a `moto_server`
//! (JSON logs; skipped without moto unless `REPOCRYPT_REQUIRE_EXTERNAL`); PostgreSQL with a
//! password in the database URL (skipped without `REPOCRYPT_TEST_DATABASE_URL`, likewise).

use crate::common;
use crate::common::binary;
use crate::common::moto;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use binary::{stderr, stdout, Client, Server};
use common::sdk::{sdk_date, Cred, Signer};
use common::{grant_path as grant, setting_path as setting};
use reqwest::Method;
use serde_json::{json, Value};

use repocrypt::auth::token::TokenCodec;
use repocrypt::domain::{Identity, Role, TenantId};
use repocrypt::keys::{RootKey, LABEL_CREDENTIAL, LABEL_KMS_WRAP, LABEL_TOKEN};

const TENANT_A: &str = "5ec2e7a0c1d44f7e9b3a6d8f0e2c4b61";
const TENANT_B: &str = "7f3d9b1e5a2c48d0b6e4f8a1c3d5e7f9";
const PROJECT: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const UNKNOWN_PROJECT: &str = "ffffffffffffffffffffffffffffffff";

/// 32 bytes of printable key material, so a log printing it as text would show it too.
const MATERIAL: &[u8; 32] = b"Imported-KeyMaterial/Sentinel+42";
/// 31 bytes: refused for its length; the refusal must not echo it either.
const SHORT_MATERIAL: &[u8; 31] = b"Short-Material/Sentinel+Refused";

// ---- the secrets and where they must not be ---------------------------------------------

/// Everything the test knows to be secret, each in every form a log might print it in.
#[derive(Default)]
struct Secrets {
    /// (what it is, the bytes to look for as Latin-1 text: see [`latin1`])
    needles: Vec<(String, String)>,
}

/// Bytes as text, one char per byte, so that `str::contains` (fast even in a debug build)
/// matches bytes exactly, whether or not they are UTF-8.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

impl Secrets {
    fn add(&mut self, label: impl Into<String>, value: impl AsRef<[u8]>) {
        let value = latin1(value.as_ref());
        let label = label.into();
        assert!(
            value.len() >= 16,
            "{label}: a needle this short ({} bytes) could match by chance",
            value.len()
        );
        if !self.needles.iter().any(|(_, v)| *v == value) {
            self.needles.push((label, value));
        }
    }

    /// Raw bytes as raw (which is also their text, when printable), hex (both cases),
    /// base64 (standard and URL-safe; unpadded, so padded matches too) and Rust's `Debug`
    /// of a byte slice.
    fn add_bytes(&mut self, label: &str, raw: &[u8]) {
        self.add(format!("{label} (raw)"), raw);
        self.add(format!("{label} (hex)"), hex::encode(raw));
        self.add(format!("{label} (HEX)"), hex::encode_upper(raw));
        self.add(format!("{label} (base64)"), STANDARD_NO_PAD.encode(raw));
        self.add(format!("{label} (base64url)"), URL_SAFE_NO_PAD.encode(raw));
        self.add(format!("{label} (Debug)"), format!("{raw:?}"));
    }

    /// A token: the whole of it, and its MAC (the part that makes it valid).
    fn add_token(&mut self, label: &str, token: &str) {
        self.add(label, token);
        let mac = token.rsplit_once('.').map(|(_, m)| m).unwrap_or(token);
        if let Ok(raw) = URL_SAFE_NO_PAD.decode(mac) {
            if raw.len() >= 16 {
                self.add_bytes(&format!("{label}'s MAC"), &raw);
            }
        }
    }

    /// The labels of the secrets found in `haystack`, once the `allowed` values (what the
    /// output is meant to show) are blanked out.
    fn found_in(&self, haystack: &[u8], allowed: &[String]) -> Vec<String> {
        let mut text = latin1(haystack);
        for a in allowed.iter().filter(|a| !a.is_empty()) {
            text = text.replace(&latin1(a.as_bytes()), "<allowed>");
        }
        self.needles
            .iter()
            .filter(|(_, needle)| text.contains(needle.as_str()))
            .map(|(label, _)| label.clone())
            .collect()
    }
}

/// One admin command as it ran.
struct CliRun {
    args: Vec<String>,
    stdout: String,
    stderr: String,
    /// What its standard output exists to print (a token, a secret key).
    allowed: Vec<String>,
}

// ---- the run ----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kms {
    Local,
    Aws,
}

struct Run {
    server: Server,
    env: Vec<(&'static str, String)>,
    kms: Kms,
    root: RootKey,
    secrets: Secrets,
    cli_runs: Vec<CliRun>,
    http: Client,
    /// Every X-Request-Id sent: each must show up in the log (it is not vacuous).
    request_ids: Vec<String>,
    /// Every response body, none of which may hold a secret (but the data keys a
    /// registration or release exists to answer: the third part).
    responses: Vec<(String, String, Vec<String>)>,
    /// The wrapped data keys the database holds (in every form): never in a log, an
    /// output or an answer.
    wrapped: Secrets,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// How a signed request is to be signed.
enum Signing<'a> {
    /// With the credential's own secret, now.
    Good,
    /// With another secret (a client that has the wrong one).
    WrongSecret(&'a str),
    /// With the right secret, an hour ago.
    Stale,
}

impl Run {
    /// Start the server at trace level with a known root key and `extra` environment.
    fn start(kms: Kms, extra: Vec<(&'static str, String)>) -> Run {
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let root = RootKey::from_bytes(raw);
        let mut secrets = Secrets::default();
        secrets.add_bytes("root key", &raw);
        for label in [LABEL_TOKEN, LABEL_KMS_WRAP, LABEL_CREDENTIAL] {
            secrets.add_bytes(&format!("key derived for {label}"), &root.derive(label));
        }
        let mut env: Vec<(&'static str, String)> = vec![
            ("REPOCRYPT_LOG", "trace".into()),
            ("REPOCRYPT_ROOT_KEY", root.to_base64()),
            // Every GET asks the KMS, so the KMS code paths log too.
            ("REPOCRYPT_KEY_STATE_CACHE_TTL", "0".into()),
        ];
        env.extend(extra);
        let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = Server::start(&env_ref);
        let http = server.client();
        Run {
            server,
            env,
            kms,
            root,
            secrets,
            cli_runs: Vec::new(),
            http,
            request_ids: Vec::new(),
            responses: Vec::new(),
            wrapped: Secrets::default(),
        }
    }

    fn cli_raw(&mut self, args: &[&str]) -> std::process::Output {
        self.cli_raw_with(&[], args)
    }

    /// A command with more environment (which wins over the run's).
    fn cli_raw_with(
        &mut self,
        extra: &[(&'static str, String)],
        args: &[&str],
    ) -> std::process::Output {
        let mut env = self.env.clone();
        env.extend_from_slice(extra);
        let out = self.server.cli_with(&env, args);
        self.cli_runs.push(CliRun {
            args: args.iter().map(|a| a.to_string()).collect(),
            stdout: stdout(&out),
            stderr: stderr(&out),
            allowed: Vec::new(),
        });
        out
    }

    /// A command that must succeed; its standard output, trimmed.
    fn cli(&mut self, args: &[&str]) -> String {
        let out = self.cli_raw(args);
        assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
        stdout(&out).trim().to_owned()
    }

    /// A command that must fail; its standard error.
    fn cli_fails(&mut self, args: &[&str], expect: &str) -> String {
        self.cli_fails_with(&[], args, expect)
    }

    fn cli_fails_with(
        &mut self,
        extra: &[(&'static str, String)],
        args: &[&str],
        expect: &str,
    ) -> String {
        let out = self.cli_raw_with(extra, args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} should have failed");
        assert!(
            err.contains(expect),
            "{args:?}: expected `{expect}` in {err}"
        );
        err
    }

    fn cli_json(&mut self, args: &[&str]) -> Value {
        let out = self.cli(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// The last command's standard output exists to print `secret`.
    fn allow_last(&mut self, secret: &str) {
        self.cli_runs
            .last_mut()
            .unwrap()
            .allowed
            .push(secret.into());
    }

    fn token(&mut self, tenant: &str, user: &str, role: &str) -> String {
        let token = self.cli(&[
            "token", "issue", "--tenant", tenant, "--user", user, "--role", role,
        ]);
        assert!(token.starts_with("rc1."), "{token}");
        self.allow_last(&token);
        self.secrets
            .add_token(&format!("token of {user} in {tenant}"), &token);
        token
    }

    fn credential(&mut self, tenant: &str, user: &str, role: &str) -> Cred {
        let v = self.cli_json(&[
            "credential",
            "create",
            "--tenant",
            tenant,
            "--user",
            user,
            "--role",
            role,
        ]);
        let cred = Cred {
            ak: v["access_key"].as_str().unwrap().to_owned(),
            sk: v["secret_key"].as_str().unwrap().to_owned(),
        };
        self.allow_last(&cred.sk);
        self.secrets.add_bytes(
            &format!("secret key of {user} in {tenant}"),
            cred.sk.as_bytes(),
        );
        cred
    }

    fn key(&mut self, args: &[&str], state: u64) -> String {
        let v = self.cli_json(args);
        assert_eq!(v["key_state"], state, "{args:?}: {v}");
        v["key_id"].as_str().unwrap().to_owned()
    }

    fn key_op(&mut self, op: &str, tenant: &str, key: &str, state: u64) {
        self.key(&["kms", op, "--tenant", tenant, "--key-id", key], state);
    }

    /// Send one request with the given headers; (status, JSON body or the text as a string).
    async fn send(
        &mut self,
        method: Method,
        uri: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let request_id = format!("secrets-test-{:04}", self.request_ids.len());
        self.request_ids.push(request_id.clone());
        let mut all = vec![("X-Request-Id".to_owned(), request_id.clone())];
        all.extend_from_slice(headers);
        let reply = self.http.send(method.clone(), uri, &all, body).await;
        let status = reply.status;
        assert_eq!(
            reply.header("x-request-id"),
            Some(request_id.as_str()),
            "{method} {uri}"
        );
        let text = reply.text;
        self.responses
            .push((format!("{method} {uri}"), text.clone(), Vec::new()));
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// A request with `X-Auth-Token` (a JSON body when given); checks the status.
    async fn with_token(
        &mut self,
        method: Method,
        uri: &str,
        token: &str,
        body: Option<&str>,
        expect: u16,
    ) -> Value {
        let mut headers = vec![("X-Auth-Token".to_owned(), token.to_owned())];
        if body.is_some() {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        let (status, v) = self
            .send(
                method.clone(),
                uri,
                &headers,
                body.map(|b| b.as_bytes().to_vec()),
            )
            .await;
        assert_eq!(status, expect, "{method} {uri}: {v}");
        v
    }

    /// Headers of a request signed like the SDK does; records the `Signature=` value.
    fn sign(
        &mut self,
        cred: &Cred,
        signing: Signing<'_>,
        method: &str,
        uri: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let now = unix_now();
        let date = sdk_date(match signing {
            Signing::Stale => now - 3600,
            _ => now,
        });
        let host = self.server.addr.clone();
        let signer = |secret: &[u8]| {
            Signer {
                ak: &cred.ak,
                secret,
                host: &host,
                date: &date,
            }
            .sign(method, uri, body, extra)
        };
        let right = signer(cred.sk.as_bytes());
        self.secrets
            .add_bytes("a Signature= sent", &right.signature);
        match signing {
            Signing::WrongSecret(wrong) => {
                let signed = signer(wrong.as_bytes());
                self.secrets
                    .add_bytes("a wrong Signature= sent", &signed.signature);
                signed.headers
            }
            _ => right.headers,
        }
    }

    /// A signed request (SDK-HMAC-SHA256); checks the status.
    async fn signed(
        &mut self,
        method: Method,
        uri: &str,
        cred: &Cred,
        body: &[u8],
        expect: u16,
    ) -> Value {
        let headers = self.sign(cred, Signing::Good, method.as_str(), uri, body, &[]);
        let (status, v) = self
            .send(method.clone(), uri, &headers, Some(body.to_vec()))
            .await;
        assert_eq!(status, expect, "signed {method} {uri}: {v}");
        v
    }

    async fn send_expect(
        &mut self,
        method: Method,
        uri: &str,
        headers: &[(String, String)],
        body: &[u8],
        expect: u16,
        code: &str,
    ) {
        let (status, v) = self
            .send(method.clone(), uri, headers, Some(body.to_vec()))
            .await;
        assert_eq!(status, expect, "{method} {uri}: {v}");
        assert_eq!(v["error_code"], code, "{method} {uri}: {v}");
    }
}

impl Run {
    /// The last response exists to answer `secret` (a data key).
    fn allow_last_response(&mut self, secret: &str) {
        self.responses.last_mut().unwrap().2.push(secret.to_owned());
    }

    /// A service principal's token (`token issue --service`).
    fn service_token(&mut self, name: &str) -> String {
        let token = self.cli(&["token", "issue", "--service", name]);
        assert!(token.starts_with("rc1."), "{token}");
        self.allow_last(&token);
        self.secrets
            .add_token(&format!("token of service {name}"), &token);
        token
    }

    /// A service principal's AK/SK (`credential create --service`).
    fn service_credential(&mut self, name: &str) -> Cred {
        let v = self.cli_json(&["credential", "create", "--service", name]);
        let cred = Cred {
            ak: v["access_key"].as_str().unwrap().to_owned(),
            sk: v["secret_key"].as_str().unwrap().to_owned(),
        };
        self.allow_last(&cred.sk);
        self.secrets
            .add_bytes(&format!("secret key of service {name}"), cred.sk.as_bytes());
        cred
    }

    /// The data key of the last answer (allowed in it, a secret everywhere else).
    fn data_key(&mut self, v: &Value, what: &str) -> String {
        let key = v["data_key"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no data_key in {v}"))
            .to_owned();
        let raw = STANDARD.decode(&key).expect("base64 data key");
        assert_eq!(raw.len(), 32, "{what}: {v}");
        self.secrets.add_bytes(&format!("data key of {what}"), &raw);
        self.allow_last_response(&key);
        key
    }

    fn database_url(&self) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| *k == "REPOCRYPT_DATABASE_URL")
            .map(|(_, v)| v.clone())
    }

    /// A repository's stored wrapped key, read from the database directly.
    async fn wrapped_key(&self, tenant: &str, repo_id: i64) -> Vec<u8> {
        use sqlx::Connection;
        let sql = "SELECT wrapped_key FROM repositories WHERE tenant_id = $1 AND repo_id = $2";
        match self.database_url() {
            Some(url) => {
                let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query_scalar(sql)
                    .bind(tenant)
                    .bind(repo_id)
                    .fetch_one(&mut c)
                    .await
                    .expect("read the wrapped key")
            }
            None => {
                let mut c = sqlx::SqliteConnection::connect(&self.sqlite_url())
                    .await
                    .expect("open the database");
                sqlx::query_scalar(sql)
                    .bind(tenant)
                    .bind(repo_id)
                    .fetch_one(&mut c)
                    .await
                    .expect("read the wrapped key")
            }
        }
    }

    /// Overwrite a repository's stored wrapped key.
    async fn set_wrapped_key(&self, tenant: &str, repo_id: i64, key: &[u8]) {
        use sqlx::Connection;
        let sql = "UPDATE repositories SET wrapped_key = $1 WHERE tenant_id = $2 AND repo_id = $3";
        let n = match self.database_url() {
            Some(url) => {
                let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query(sql)
                    .bind(key)
                    .bind(tenant)
                    .bind(repo_id)
                    .execute(&mut c)
                    .await
                    .expect("write the wrapped key")
                    .rows_affected()
            }
            None => {
                let mut c = sqlx::SqliteConnection::connect(&self.sqlite_url())
                    .await
                    .expect("open the database");
                // As the service's own connections do: what this overwrites is zeroed.
                sqlx::query("PRAGMA secure_delete = on")
                    .execute(&mut c)
                    .await
                    .expect("secure_delete");
                sqlx::query(sql)
                    .bind(key)
                    .bind(tenant)
                    .bind(repo_id)
                    .execute(&mut c)
                    .await
                    .expect("write the wrapped key")
                    .rows_affected()
            }
        };
        assert_eq!(n, 1);
    }

    fn sqlite_url(&self) -> String {
        let path = self.server.dir.path().join("repocrypt-data/repocrypt.db");
        format!("sqlite://{}", path.display())
    }
}

fn repositories(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories")
}

fn data_key_uri(tenant: &str, repo_id: i64) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key")
}

fn registration(repo_id: i64, name: &str, encrypted: Option<bool>) -> String {
    let mut v = json!({
        "repo_id": repo_id,
        "repo_name": name,
        "full_path": format!("secret-group/{name}"),
        "owner_name": "alice",
    });
    if let Some(e) = encrypted {
        v["encrypted"] = e.into();
    }
    v.to_string()
}

/// The key broker: service principals register encrypted repositories and receive their
/// data keys (with a token and signed), register again, are refused (conflict, not
/// encrypted, a key disabled, wrapped keys swapped in the database), shred; the `repo`
/// commands show them. Every data key answered is a secret everywhere but in the answer
/// that exists to carry it; every wrapped key, everywhere but the database. The tenant's
/// setting is KMS with `default_encryption_enabled` and its grant stands.
async fn broker(run: &mut Run) {
    use Method as M;
    let a = TENANT_A;
    let node = run.service_token("storage-node-1");
    let node_cred = run.service_credential("storage-node-2");
    let admin = run.token(a, "alice", "admin");
    let key_id = run.cli_json(&["kms", "list-keys", "--tenant", a]);
    let setting_key = {
        let v = run.with_token(M::GET, &setting(a), &admin, None, 202).await;
        v["cmk_key_id"].as_str().unwrap().to_owned()
    };
    assert!(key_id.to_string().contains(&setting_key));

    // Register: with the token (11, the tenant's default: encrypted), signed (12), one
    // not encrypted (13).
    let body = registration(11, "alpha", None);
    let v = run
        .with_token(M::POST, &repositories(a), &node, Some(&body), 201)
        .await;
    let k11 = run.data_key(&v, "repository 11");
    let body = registration(12, "beta", Some(true));
    let v = run
        .signed(M::POST, &repositories(a), &node_cred, body.as_bytes(), 201)
        .await;
    let k12 = run.data_key(&v, "repository 12");
    let body = registration(13, "gamma", Some(false));
    let v = run
        .with_token(M::POST, &repositories(a), &node, Some(&body), 201)
        .await;
    assert!(v.get("data_key").is_none(), "{v}");
    for id in [11, 12] {
        let w = run.wrapped_key(a, id).await;
        run.wrapped
            .add_bytes(&format!("wrapped key of repository {id}"), &w);
    }

    // Release, with a token and signed; register again: the same keys.
    let v = run
        .with_token(M::GET, &data_key_uri(a, 11), &node, None, 200)
        .await;
    assert_eq!(run.data_key(&v, "repository 11"), k11);
    let v = run
        .signed(M::GET, &data_key_uri(a, 12), &node_cred, b"", 200)
        .await;
    assert_eq!(run.data_key(&v, "repository 12"), k12);
    let body = registration(11, "alpha", None);
    let v = run
        .with_token(M::POST, &repositories(a), &node, Some(&body), 200)
        .await;
    assert_eq!(run.data_key(&v, "repository 11"), k11);

    // Refusals: none may echo a key.
    let body = registration(11, "alpha-renamed", None);
    let v = run
        .with_token(M::POST, &repositories(a), &node, Some(&body), 409)
        .await;
    assert_eq!(v["error_code"], "RC.409004", "{v}");
    let v = run
        .with_token(M::GET, &data_key_uri(a, 13), &node, None, 409)
        .await;
    assert_eq!(v["error_code"], "RC.409003", "{v}");
    let v = run
        .with_token(M::GET, &data_key_uri(a, 99), &node, None, 404)
        .await;
    assert_eq!(v["error_code"], "RC.404002", "{v}");
    let v = run
        .with_token(M::GET, &data_key_uri(a, 11), &admin, None, 403)
        .await;
    assert_eq!(v["error_code"], "RC.403002", "{v}");
    let v = run
        .with_token(
            M::PUT,
            &setting(a),
            &node,
            Some(r#"{"encryption_type":"normal"}"#),
            403,
        )
        .await;
    assert_eq!(v["error_code"], "RC.403003", "{v}");
    let v = run
        .with_token(M::GET, &repositories(a), &admin, None, 202)
        .await;
    assert_eq!(
        v.as_array().map(Vec::len),
        Some(2),
        "the two encrypted: {v}"
    );
    run.with_token(
        M::GET,
        &format!("/v4/tenants/{a}/repo-encryption/cmks"),
        &admin,
        None,
        202,
    )
    .await;
    let listed = run.cli_json(&["repo", "list", "--tenant", a]);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    run.cli_json(&["repo", "show", "--tenant", a, "--repo-id", "11"]);
    run.cli_fails(&["repo", "show", "--tenant", a, "--repo-id", "99"], "99");

    // The wrapped keys swapped in the database: neither unwraps for the other.
    let (w11, w12) = (run.wrapped_key(a, 11).await, run.wrapped_key(a, 12).await);
    run.set_wrapped_key(a, 11, &w12).await;
    run.set_wrapped_key(a, 12, &w11).await;
    // A write from outside the server: a SQLite server sees it within its repository
    // cache's bound (README: one second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for id in [11, 12] {
        let v = run
            .with_token(M::GET, &data_key_uri(a, id), &node, None, 409)
            .await;
        assert_eq!(v["error_code"], "RC.409005", "{v}");
    }
    run.set_wrapped_key(a, 11, &w11).await;
    run.set_wrapped_key(a, 12, &w12).await;
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // The key disabled (forced: repositories depend on it): refused (the run's key-state
    // cache TTL is 0); enabled: released.
    run.key(
        &[
            "kms",
            "disable-key",
            "--tenant",
            a,
            "--key-id",
            &setting_key,
            "--force",
        ],
        3,
    );
    let v = run
        .with_token(M::GET, &data_key_uri(a, 11), &node, None, 403)
        .await;
    assert_eq!(v["error_code"], "RC.403005", "{v}");
    let body = registration(14, "delta", None);
    let v = run
        .with_token(M::POST, &repositories(a), &node, Some(&body), 400)
        .await;
    assert_eq!(v["error_code"], "RC.400009", "{v}");
    run.key_op("enable-key", a, &setting_key, 2);
    let v = run
        .with_token(M::GET, &data_key_uri(a, 11), &node, None, 200)
        .await;
    assert_eq!(run.data_key(&v, "repository 11"), k11);

    // Shred: 12 over the API (signed), 11 with the CLI; then 410, also to a registration.
    run.signed(M::DELETE, &data_key_uri(a, 12), &node_cred, b"", 204)
        .await;
    run.cli_fails(
        &["repo", "shred", "--tenant", a, "--repo-id", "11"],
        "--yes",
    );
    run.cli_json(&["repo", "shred", "--tenant", a, "--repo-id", "11", "--yes"]);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // another process's write
    for id in [11, 12] {
        let v = run
            .with_token(M::GET, &data_key_uri(a, id), &node, None, 410)
            .await;
        assert_eq!(v["error_code"], "RC.410001", "{v}");
    }
    let body = registration(12, "beta", Some(true));
    let v = run
        .signed(M::POST, &repositories(a), &node_cred, body.as_bytes(), 410)
        .await;
    assert_eq!(v["error_code"], "RC.410001", "{v}");
    run.cli_json(&["repo", "list", "--tenant", a]);
    run.cli_json(&["repo", "show", "--tenant", a, "--repo-id", "12"]);

    // One that stays: its wrapped key is in the database, its data key nowhere.
    let body = registration(15, "epsilon", Some(true));
    let v = run
        .with_token(M::POST, &repositories(a), &node, Some(&body), 201)
        .await;
    run.data_key(&v, "repository 15");
    let w15 = run.wrapped_key(a, 15).await;
    run.wrapped.add_bytes("wrapped key of repository 15", &w15);
}

// ---- the story --------------------------------------------------------------------------

/// Every CLI command, every operation, their error paths; then the checks.
async fn story(mut run: Run) {
    let (a, b) = (TENANT_A, TENANT_B);

    // A root key of the wrong length: refused without being echoed.
    let mut short_root = [0u8; 31];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut short_root);
    run.secrets.add_bytes("a root key of 31 bytes", &short_root);
    run.cli_fails_with(
        &[("REPOCRYPT_ROOT_KEY", STANDARD.encode(short_root))],
        &["token", "issue", "--tenant", a, "--user", "alice"],
        "must be 32 bytes",
    );
    run.cli_fails_with(
        &[("REPOCRYPT_ROOT_KEY", STANDARD.encode(short_root))],
        &["kms", "list-keys", "--tenant", a],
        "must be 32 bytes",
    );

    // Tokens and credentials.
    let admin = run.token(a, "alice", "admin");
    let member = run.token(a, "mallory", "member");
    let bob = run.token(b, "bob", "member");
    let eve = run.token(b, "eve", "admin");
    let cred_a = run.credential(a, "sdk-admin", "admin");
    let cred_bob = run.credential(b, "bob", "member");
    let cred_gone = run.credential(b, "temp", "member");
    let listed = run.cli_json(&["credential", "list", "--tenant", b]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Keys.
    let kms_key = run.key(
        &["kms", "create-key", "--tenant", a, "--alias", "repo-key"],
        2,
    );
    let keys = run.cli_json(&["kms", "list-keys", "--tenant", a]);
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    run.key_op("disable-key", a, &kms_key, 3);
    run.key_op("enable-key", a, &kms_key, 2);
    run.key(
        &[
            "kms",
            "schedule-key-deletion",
            "--tenant",
            a,
            "--key-id",
            &kms_key,
            "--pending-days",
            "7",
        ],
        4,
    );
    run.key_op("cancel-key-deletion", a, &kms_key, 3);
    run.key_op("enable-key", a, &kms_key, 2);
    let material_file = run.server.dir.path().join("material.bin");
    std::fs::write(&material_file, MATERIAL).unwrap();
    let short_file = run.server.dir.path().join("short.bin");
    std::fs::write(&short_file, SHORT_MATERIAL).unwrap();
    run.secrets.add_bytes("imported key material", MATERIAL);
    run.secrets
        .add_bytes("refused (short) key material", SHORT_MATERIAL);
    let (material_path, short_path) = (
        material_file.to_str().unwrap().to_owned(),
        short_file.to_str().unwrap().to_owned(),
    );
    let chosen_key = match run.kms {
        Kms::Local => {
            let inactive = run.key(
                &[
                    "kms",
                    "create-key",
                    "--tenant",
                    a,
                    "--alias",
                    "later",
                    "--inactive",
                ],
                1,
            );
            run.key_op("enable-key", a, &inactive, 2);
            let external = run.key(
                &[
                    "kms",
                    "create-key",
                    "--tenant",
                    a,
                    "--alias",
                    "byok",
                    "--origin",
                    "external",
                ],
                5,
            );
            let import = |file: &str| {
                vec![
                    "kms".to_owned(),
                    "import-key-material".into(),
                    "--tenant".into(),
                    a.into(),
                    "--key-id".into(),
                    external.clone(),
                    "--material-file".into(),
                    file.to_owned(),
                ]
            };
            let short_args = import(&short_path);
            let short_args: Vec<&str> = short_args.iter().map(String::as_str).collect();
            run.cli_fails(&short_args, "exactly 32 bytes");
            let args = import(&material_path);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run.key(&args, 2);
            run.cli_fails(&args, "not pending import");
            external
        }
        Kms::Aws => {
            // Import is a local-KMS feature; the refusal must not echo the material.
            run.cli_fails(
                &[
                    "kms",
                    "import-key-material",
                    "--tenant",
                    a,
                    "--key-id",
                    &kms_key,
                    "--material-file",
                    &material_path,
                ],
                "local KMS only",
            );
            kms_key.clone()
        }
    };

    // Projects and tenant settings.
    run.cli_json(&[
        "project",
        "add",
        "--tenant",
        a,
        "--project-id",
        PROJECT,
        "--name",
        "secret-sauce",
    ]);
    run.cli_json(&[
        "project",
        "add-member",
        "--project-id",
        PROJECT,
        "--tenant",
        b,
        "--user",
        "bob",
    ]);
    run.cli_json(&["tenant", "set", "--tenant", a, "--permit-public", "deny"]);

    // Tokens a client might send that the service did not issue (or no longer accepts).
    let now = unix_now();
    let alice = |exp: u64| Identity {
        tenant_id: TenantId::parse(a).unwrap(),
        user_id: "alice".into(),
        user_name: "alice".into(),
        role: Role::Admin,
        expires_at: exp,
    };
    let expired = TokenCodec::new(&run.root)
        .issue(&alice(now - 60), now - 3600)
        .unwrap();
    run.secrets.add_token("an expired token", &expired);
    let forged = TokenCodec::new(&RootKey::from_bytes([9; 32]))
        .issue(&alice(now + 3600), now)
        .unwrap();
    run.secrets
        .add_token("a token under another root key", &forged);
    // One character of the MAC changed (not the last, whose low bits are padding).
    let tampered = common::flip_char(&admin, admin.len() - 5);
    run.secrets.add_token("a tampered token", &tampered);
    let garbage = format!("not-a-token-{}", uuid::Uuid::new_v4().simple());
    run.secrets.add("a garbage token", &garbage);

    // ---- the API with X-Auth-Token --------------------------------------------------
    use Method as M;
    for (path, ok) in [
        ("/healthz", vec![200]),
        ("/readyz", vec![200]),
        ("/openapi.json", vec![200]),
        ("/metrics", vec![200, 404]),
        ("/nowhere", vec![404]),
    ] {
        let (status, v) = run.send(M::GET, path, &[], None).await;
        assert!(ok.contains(&status), "GET {path}: {status} {v}");
    }
    run.with_token(M::DELETE, &setting(a), &admin, None, 405)
        .await;
    let v = run.with_token(M::GET, &setting(a), &admin, None, 202).await;
    assert_eq!(v["encryption_type"], Value::Null, "{v}");
    run.with_token(M::GET, &grant(a), &admin, None, 202).await;
    let kms_body = json!({
        "encryption_type": "KMS",
        "cmk_key_id": chosen_key,
        "default_encryption_enabled": true,
    })
    .to_string();
    let v = run
        .with_token(M::PUT, &setting(a), &admin, Some(&kms_body), 400)
        .await;
    assert_eq!(v["error_code"], "RC.400007", "{v}");
    run.with_token(M::POST, &grant(a), &admin, None, 200).await;
    let v = run.with_token(M::GET, &grant(a), &admin, None, 202).await;
    assert_eq!(v["assumed"], true, "{v}");
    let v = run
        .with_token(M::PUT, &setting(a), &admin, Some(&kms_body), 200)
        .await;
    assert_eq!(v["cmk_key_id"], chosen_key.as_str(), "{v}");
    let v = run
        .with_token(M::GET, &setting(a), &member, None, 202)
        .await;
    assert_eq!(v["key_state"], 2, "{v}");
    run.with_token(M::GET, "/v4/tenant/setting", &admin, None, 200)
        .await;
    let project_q = common::tenant_setting_path(Some(&format!("project_id={PROJECT}")));
    let v = run.with_token(M::GET, &project_q, &bob, None, 200).await;
    assert_eq!(v["permit_public"], "deny", "{v}");
    run.with_token(M::GET, &project_q, &eve, None, 403).await;
    run.with_token(
        M::GET,
        &common::tenant_setting_path(Some(&format!("project_id={UNKNOWN_PROJECT}"))),
        &admin,
        None,
        404,
    )
    .await;
    run.with_token(
        M::GET,
        "/v4/tenant/setting?project_id=short",
        &admin,
        None,
        400,
    )
    .await;

    // Identity errors.
    let v = run.send(M::GET, &setting(a), &[], None).await;
    assert_eq!(v.0, 401, "{}", v.1);
    for (token, code) in [
        (&garbage, "RC.401002"),
        (&tampered, "RC.401002"),
        (&forged, "RC.401002"),
        (&expired, "DEV.00000003"),
    ] {
        for (method, uri) in [(M::GET, setting(a)), (M::POST, grant(a))] {
            let v = run.with_token(method, &uri, token, None, 401).await;
            assert_eq!(v["error_code"], code, "{v}");
        }
    }
    for uri in [setting(a), grant(a)] {
        let v = run.with_token(M::GET, &uri, &bob, None, 403).await;
        assert_eq!(v["error_code"], "CH.004403", "{v}");
    }
    let v = run
        .with_token(M::PUT, &setting(a), &member, Some(&kms_body), 403)
        .await;
    assert_eq!(v["error_code"], "RC.403001", "{v}");
    run.with_token(M::POST, &grant(a), &member, None, 403).await;

    // Bad bodies: each refused with a 4xx, nothing written.
    let too_long = json!({ "cmk_key_name": "n".repeat(1001) }).to_string();
    let huge = format!(r#"{{"cmk_key_name":"{}"}}"#, "x".repeat(70_000));
    let other_tenant = json!({ "tenant_id": b }).to_string();
    let unknown_key = json!({ "encryption_type": "KMS", "cmk_key_id": "no-such-key" }).to_string();
    for (body, status) in [
        (r#"{"encryption_type":"#, 400),
        (r#"{"encryption_type":"AES"}"#, 400),
        (r#"{"default_encryption_enabled":"yes"}"#, 400),
        (r#"{"unknown_field":1}"#, 400),
        (too_long.as_str(), 400),
        (other_tenant.as_str(), 400),
        (unknown_key.as_str(), 400),
        (huge.as_str(), 413),
    ] {
        run.with_token(M::PUT, &setting(a), &admin, Some(body), status)
            .await;
    }
    let headers = vec![
        ("X-Auth-Token".to_owned(), admin.clone()),
        ("Content-Type".to_owned(), "text/plain".to_owned()),
    ];
    let (status, v) = run
        .send(M::PUT, &setting(a), &headers, Some(b"{}".to_vec()))
        .await;
    assert_eq!(status, 415, "{v}");
    // A key the KMS refuses: disabled.
    run.key_op("disable-key", a, &kms_key, 3);
    let disabled = json!({ "encryption_type": "KMS", "cmk_key_id": kms_key }).to_string();
    let v = run
        .with_token(M::PUT, &setting(a), &admin, Some(&disabled), 400)
        .await;
    assert_eq!(v["error_code"], "RC.400009", "{v}");
    run.key_op("enable-key", a, &kms_key, 2);

    // ---- the API with AK/SK signatures ----------------------------------------------
    run.signed(M::GET, &setting(a), &cred_a, b"", 202).await;
    run.signed(M::GET, &grant(a), &cred_a, b"", 202).await;
    run.signed(M::POST, &grant(a), &cred_a, b"", 200).await;
    let v = run
        .signed(M::PUT, &setting(a), &cred_a, kms_body.as_bytes(), 200)
        .await;
    assert_eq!(v["cmk_key_id"], chosen_key.as_str(), "{v}");
    run.signed(M::GET, "/v4/tenant/setting", &cred_a, b"", 200)
        .await;
    run.signed(M::GET, &project_q, &cred_bob, b"", 200).await;
    let v = run.signed(M::GET, &setting(a), &cred_bob, b"", 403).await;
    assert_eq!(v["error_code"], "CH.004403", "{v}");
    let normal = br#"{"encryption_type":"normal"}"#;
    let v = run
        .signed(M::PUT, &setting(b), &cred_bob, normal, 403)
        .await;
    assert_eq!(v["error_code"], "RC.403001", "{v}");

    // Signature errors.
    let wrong_secret = format!("Wrong{}", uuid::Uuid::new_v4().simple());
    run.secrets.add("a wrong secret key", &wrong_secret);
    let h = run.sign(
        &cred_a,
        Signing::WrongSecret(&wrong_secret),
        "PUT",
        &setting(a),
        normal,
        &[],
    );
    run.send_expect(M::PUT, &setting(a), &h, normal, 401, "RC.401006")
        .await;
    let h = run.sign(&cred_a, Signing::Stale, "GET", &setting(a), b"", &[]);
    run.send_expect(M::GET, &setting(a), &h, b"", 401, "RC.401005")
        .await;
    // The body changed after signing.
    let h = run.sign(&cred_a, Signing::Good, "PUT", &setting(a), normal, &[]);
    run.send_expect(
        M::PUT,
        &setting(a),
        &h,
        br#"{"encryption_type":"NORMAL"}"#,
        401,
        "RC.401006",
    )
    .await;
    // A nonce replayed.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let h = run.sign(
        &cred_a,
        Signing::Good,
        "GET",
        &grant(a),
        b"",
        &[("x-sdk-nonce", &nonce)],
    );
    run.send(M::GET, &grant(a), &h, None).await;
    run.send_expect(M::GET, &grant(a), &h, b"", 401, "RC.401007")
        .await;
    // An unknown access key, with a real secret.
    let unknown = Cred {
        ak: "NOSUCHACCESSKEY00000".into(),
        sk: cred_a.sk.clone(),
    };
    let h = run.sign(&unknown, Signing::Good, "GET", &setting(a), b"", &[]);
    run.send_expect(M::GET, &setting(a), &h, b"", 401, "RC.401004")
        .await;
    // A malformed Authorization carrying a real signature.
    let h = run.sign(&cred_a, Signing::Good, "GET", &setting(a), b"", &[]);
    let broken: Vec<(String, String)> = h
        .into_iter()
        .map(|(n, v)| {
            if n == "authorization" {
                (n, v.replacen("SDK-HMAC-SHA256 ", "SDK-HMAC-SHA256  ", 1))
            } else {
                (n, v)
            }
        })
        .collect();
    run.send_expect(M::GET, &setting(a), &broken, b"", 401, "RC.401003")
        .await;
    // A deleted credential.
    run.signed(M::GET, "/v4/tenant/setting", &cred_gone, b"", 200)
        .await;
    run.cli_json(&["credential", "delete", "--access-key", &cred_gone.ak]);
    let h = run.sign(
        &cred_gone,
        Signing::Good,
        "GET",
        "/v4/tenant/setting",
        b"",
        &[],
    );
    run.send_expect(M::GET, "/v4/tenant/setting", &h, b"", 401, "RC.401004")
        .await;

    broker(&mut run).await;

    // Back to normal with a token (the last write), then the audit log.
    run.with_token(
        M::PUT,
        &setting(a),
        &admin,
        Some(r#"{"encryption_type":"normal"}"#),
        200,
    )
    .await;
    let mut audit = String::new();
    for tenant in [a, b] {
        let out = run.cli(&["audit", "list", "--tenant", tenant]);
        audit.push_str(&out);
        audit.push('\n');
    }
    for action in [
        "setting.update",
        "kms_grant.create",
        "kms.create_key",
        "kms.disable_key",
        "kms.enable_key",
        "kms.schedule_key_deletion",
        "kms.cancel_key_deletion",
        "credential.create",
        "credential.delete",
        "project.add",
        "project.add_member",
        "tenant.set_permit_public",
        "repository.register",
        "repository.shred",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "no {action} in the audit log:\n{audit}"
        );
    }
    if run.kms == Kms::Local {
        assert!(audit.contains("\"action\":\"kms.import_key_material\""));
    }

    // Stop the server (it logs its shutdown), then look everywhere.
    assert_eq!(run.server.terminate(), Some(0), "server exit status");
    let log = run.server.log();
    let database_url = run
        .env
        .iter()
        .find(|(k, _)| *k == "REPOCRYPT_DATABASE_URL")
        .map(|(_, v)| v.clone());
    let table = audit_table(run.server.dir.path(), database_url.as_deref()).await;
    check(&run, &log, &audit, &table);
}

/// Every row of `audit_log`, whatever its columns, as text.
async fn audit_table(dir: &Path, database_url: Option<&str>) -> String {
    use sqlx::{Connection, Row};
    let mut out = String::new();
    match database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            let rows = sqlx::query("SELECT row_to_json(a)::text FROM audit_log a ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .expect("read audit_log");
            for row in rows {
                out.push_str(&row.get::<String, _>(0));
                out.push('\n');
            }
        }
        None => {
            let path = dir.join("repocrypt-data").join("repocrypt.db");
            let url = format!("sqlite://{}?mode=ro", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("open the database");
            let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .expect("read audit_log");
            for row in rows {
                for i in 0..row.len() {
                    // SQLite turns any value into text on request.
                    let v: Option<String> = row.try_get_unchecked(i).unwrap_or_default();
                    out.push_str(v.as_deref().unwrap_or("NULL"));
                    out.push('\t');
                }
                out.push('\n');
            }
        }
    }
    out
}

/// The files of the data directory (the SQLite database and its WAL), byte for byte.
fn data_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let data = dir.join("repocrypt-data");
    let Ok(entries) = std::fs::read_dir(&data) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn check(run: &Run, log: &str, audit: &str, table: &str) {
    let s = &run.secrets;
    let mut leaks: Vec<String> = Vec::new();
    let mut report = |place: &str, found: Vec<String>| {
        for label in found {
            leaks.push(format!("{label} in {place}"));
        }
    };

    // Not vacuous: trace level is on, every request is in the log, the searches work.
    let lines = log.lines().count();
    let count = |text: &str, level: &str| text.lines().filter(|l| l.contains(level)).count();
    assert!(
        lines >= 2 * run.request_ids.len(),
        "only {lines} log lines for {} requests: is trace level on?\n{log}",
        run.request_ids.len()
    );
    for level in ["TRACE", "DEBUG", "INFO"] {
        assert!(
            count(log, level) >= 20,
            "fewer than 20 {level} lines in the server log: is trace level on?\n{log}"
        );
    }
    for id in &run.request_ids {
        assert!(log.contains(id.as_str()), "request {id} is not in the log");
    }
    let cli_stderr: String = run.cli_runs.iter().map(|c| c.stderr.as_str()).collect();
    assert!(
        count(&cli_stderr, "DEBUG") >= run.cli_runs.len(),
        "too few DEBUG lines from the commands: is trace level on?\n{cli_stderr}"
    );
    let issued = run
        .cli_runs
        .iter()
        .find(|c| {
            c.args.get(..2) == Some(&["token".to_owned(), "issue".to_owned()][..])
                && !c.allowed.is_empty()
        })
        .expect("a token was issued");
    assert!(
        !s.found_in(issued.stdout.as_bytes(), &[]).is_empty(),
        "the search does not find a token printed by `token issue`"
    );
    assert!(audit.lines().count() >= 15, "audit list:\n{audit}");
    assert!(table.lines().count() >= 15, "audit_log:\n{table}");

    report("the server log", s.found_in(log.as_bytes(), &[]));
    for c in &run.cli_runs {
        let what = format!("`repocrypt {}`", c.args.join(" "));
        report(
            &format!("the standard error of {what}"),
            s.found_in(c.stderr.as_bytes(), &[]),
        );
        report(
            &format!("the standard output of {what}"),
            s.found_in(c.stdout.as_bytes(), &c.allowed),
        );
    }
    report("`repocrypt audit list`", s.found_in(audit.as_bytes(), &[]));
    report("the audit_log table", s.found_in(table.as_bytes(), &[]));
    for (name, bytes) in data_files(run.server.dir.path()) {
        report(&format!("data file {name}"), s.found_in(&bytes, &[]));
    }
    for (request, body, allowed) in &run.responses {
        report(
            &format!("the response to {request}"),
            s.found_in(body.as_bytes(), allowed),
        );
    }
    // The wrapped data keys: stored in the database, nowhere else.
    let w = &run.wrapped;
    report("the server log", w.found_in(log.as_bytes(), &[]));
    for c in &run.cli_runs {
        let what = format!("`repocrypt {}`", c.args.join(" "));
        report(
            &format!("the standard error of {what}"),
            w.found_in(c.stderr.as_bytes(), &[]),
        );
        report(
            &format!("the standard output of {what}"),
            w.found_in(c.stdout.as_bytes(), &[]),
        );
    }
    report("`repocrypt audit list`", w.found_in(audit.as_bytes(), &[]));
    report("the audit_log table", w.found_in(table.as_bytes(), &[]));
    for (request, body, _) in &run.responses {
        report(
            &format!("the response to {request}"),
            w.found_in(body.as_bytes(), &[]),
        );
    }

    eprintln!(
        "checked {} secrets: server log {lines} lines, {} commands, {} requests, {} audit records",
        s.needles.len(),
        run.cli_runs.len(),
        run.request_ids.len(),
        audit.lines().count()
    );
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

// ---- the three runs ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_or_audit_local_kms_sqlite() {
    story(Run::start(Kms::Local, Vec::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_or_audit_aws_kms() {
    let Some(moto) = moto::Moto::start("no_secret_in_logs_or_audit_aws_kms") else {
        return;
    };
    let secret = format!("FakeAwsSecret/{}", uuid::Uuid::new_v4().simple());
    let session = format!("FakeAwsSession+{}", uuid::Uuid::new_v4().simple());
    let mut env: Vec<(&'static str, String)> = moto
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY")
        .collect();
    env.push(("AWS_SECRET_ACCESS_KEY", secret.clone()));
    env.push(("AWS_SESSION_TOKEN", session.clone()));
    env.push(("REPOCRYPT_LOG_FORMAT", "json".into()));
    let mut run = Run::start(Kms::Aws, env);
    run.secrets
        .add_bytes("the AWS secret access key", secret.as_bytes());
    run.secrets
        .add_bytes("the AWS session token", session.as_bytes());
    story(run).await;
    drop(moto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_or_audit_postgres() {
    let Some(url) = common::test_database_url() else {
        assert!(
            std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
            "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
        );
        eprintln!(
            "SKIPPED no_secret_in_logs_or_audit_postgres: REPOCRYPT_TEST_DATABASE_URL is not set"
        );
        return;
    };
    let db = common::fresh_postgres_database(&url).await;
    // A password in the URL (ignored by a server that trusts the user; one that asks for
    // it gets the one already in REPOCRYPT_TEST_DATABASE_URL).
    let (url, password) = with_password(&db);
    let mut run = Run::start(Kms::Local, vec![("REPOCRYPT_DATABASE_URL", url)]);
    if password.len() >= 16 {
        run.secrets.add("the database password", &password);
    } else {
        eprintln!("not looking for the database password: too short to search for");
    }
    story(run).await;
}

/// `url` with its password, adding a made-up one if it has none.
fn with_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (userinfo, host) = rest.split_once('@').expect("postgres://USER@HOST/DB");
    match userinfo.split_once(':') {
        Some((_, password)) => (url.to_owned(), password.to_owned()),
        None => {
            let password = format!("PgPassword{}", uuid::Uuid::new_v4().simple());
            (format!("{scheme}://{userinfo}:{password}@{host}"), password)
        }
    }
}
