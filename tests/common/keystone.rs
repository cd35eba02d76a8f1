//! A real OpenStack Keystone v3 of the test's own (tests/keystone/start.sh), on a free
//! loopback port, stopped when dropped.
//!
//! The venv is `$REPOCRYPT_KEYSTONE_VENV`, else `tests/keystone/.venv` (made by
//! `tests/keystone/install.sh`). When neither exists the tests that need it print why and
//! pass, unless `REPOCRYPT_REQUIRE_EXTERNAL` is set (as in `.ci/run`), where it fails.
//!
//! The first Keystone of a test process is set up and seeded once (16-32 s) in
//! `$CARGO_TARGET_TMPDIR/keystone-template`, then stopped; every test starts a copy of that
//! directory (about 3 s), with the same ids and keys, so tests run side by side.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

const HERE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keystone");

pub struct Keystone {
    /// The v3 endpoint, `http://127.0.0.1:PORT/v3`.
    pub url: String,
    pub port: u16,
    /// What seed.py wrote: `TENANT_A_DOMAIN_ID`, `TENANT_A_ALICE_ID`, ...
    pub ids: HashMap<String, String>,
    dir: tempfile::TempDir,
    expiration: u32,
    pid: Option<u32>,
    http: reqwest::Client,
}

/// What a token is scoped to.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Unscoped,
    /// The user's own domain.
    Domain,
    /// A project (by name) of the user's domain.
    Project(&'a str),
}

fn venv() -> Option<PathBuf> {
    let venv = std::env::var_os("REPOCRYPT_KEYSTONE_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(HERE).join(".venv"));
    venv.join("bin/keystone-manage").exists().then_some(venv)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// start.sh DIR PORT; the PID it prints.
fn start_sh(venv: &Path, dir: &Path, port: u16, expiration: u32) -> u32 {
    let out = Command::new("bash")
        .arg(Path::new(HERE).join("start.sh"))
        .arg(dir)
        .arg(port.to_string())
        .env("KEYSTONE_VENV", venv)
        .env("KEYSTONE_TOKEN_EXPIRATION", expiration.to_string())
        .output()
        .expect("bash runs start.sh");
    assert!(
        out.status.success(),
        "tests/keystone/start.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("start.sh prints the PID")
}

/// SIGTERM to gunicorn's master (which stops its worker), and wait for it to go.
fn stop_pid(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The set-up, seeded and stopped Keystone every test copies.
fn template(venv: &Path) -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("keystone-template");
            // Made again when the scripts that made it have changed.
            let stamp = dir.join("made-by.txt");
            let made_by = made_by();
            let current = std::fs::read_to_string(&stamp).is_ok_and(|s| s == made_by);
            if !current || !dir.join("ids.env").exists() {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("template dir");
                let started = Instant::now();
                let pid = start_sh(venv, &dir, free_port(), 3600);
                stop_pid(pid);
                std::fs::write(&stamp, &made_by).expect("template stamp");
                eprintln!(
                    "keystone: set up and seeded a template in {} s",
                    started.elapsed().as_secs()
                );
            }
            dir
        })
        .clone()
}

/// A digest of what makes a template: the scripts and the pinned packages.
fn made_by() -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in [
        "start.sh",
        "seed.py",
        "manage.py",
        "keystone_wsgi.py",
        "requirements.txt",
    ] {
        std::fs::read(Path::new(HERE).join(file))
            .unwrap_or_default()
            .hash(&mut hasher);
    }
    format!("{:016x}\n", hasher.finish())
}

impl Keystone {
    /// A running Keystone whose tokens live `expiration` seconds, or `None` (with the
    /// reason printed) when it is not installed.
    pub fn start(test: &str, expiration: u32) -> Option<Keystone> {
        let Some(venv) = venv() else {
            assert!(
                std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
                "REPOCRYPT_REQUIRE_EXTERNAL is set but Keystone is not installed \
                 (run tests/keystone/install.sh, or set REPOCRYPT_KEYSTONE_VENV)"
            );
            eprintln!(
                "skipping {test}: no Keystone (run tests/keystone/install.sh, or set REPOCRYPT_KEYSTONE_VENV)"
            );
            return None;
        };
        let template = template(&venv);
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", template.display()))
            .arg(dir.path())
            .status()
            .expect("cp runs");
        assert!(status.success(), "copying the Keystone template");
        let _ = std::fs::remove_file(dir.path().join("keystone.log"));
        let ids = std::fs::read_to_string(dir.path().join("ids.env"))
            .expect("ids.env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let port = free_port();
        let mut keystone = Keystone {
            url: format!("http://127.0.0.1:{port}/v3"),
            port,
            ids,
            dir,
            expiration,
            pid: None,
            http: reqwest::Client::new(),
        };
        keystone.resume();
        Some(keystone)
    }

    /// Stops the server; its state stays (see [`Keystone::resume`]).
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            stop_pid(pid);
        }
    }

    /// Starts it again on the same port, with the same state.
    pub fn resume(&mut self) {
        let venv = venv().expect("the Keystone venv");
        self.pid = Some(start_sh(&venv, self.dir.path(), self.port, self.expiration));
    }

    pub fn id(&self, name: &str) -> &str {
        self.ids
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in ids.env"))
    }

    /// What Keystone logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("keystone.log")).unwrap_or_default()
    }

    /// A token of `user` (password `USER-secret`) of `domain` (by name), from
    /// `POST /v3/auth/tokens`: its `X-Subject-Token`.
    pub async fn token(&self, user: &str, domain: &str, scope: Scope<'_>) -> String {
        let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": domain}, "password": format!("{user}-secret"),
        }}}});
        match scope {
            Scope::Unscoped => {}
            Scope::Domain => auth["scope"] = json!({"domain": {"name": domain}}),
            Scope::Project(project) => {
                auth["scope"] = json!({"project": {"name": project, "domain": {"name": domain}}})
            }
        }
        let body = json!({ "auth": auth });
        // Keystone on SQLite has answered a login with 500 once under the whole suite's load:
        // such an answer is retried (twice), its log shown.
        for attempt in 0..3 {
            let resp = self
                .http
                .post(format!("{}/auth/tokens?nocatalog", self.url))
                .json(&body)
                .send()
                .await
                .expect("POST /v3/auth/tokens");
            let status = resp.status().as_u16();
            let token = resp
                .headers()
                .get("x-subject-token")
                .map(|v| v.to_str().expect("ASCII").to_owned());
            let answer = resp.text().await.unwrap_or_default();
            if status >= 500 && attempt < 2 {
                eprintln!(
                    "keystone: a login of {user}@{domain} answered {status} ({answer}); retrying. Keystone's log ends:\n{}",
                    tail(&self.log(), 40)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(
                status,
                201,
                "token of {user}@{domain}: {answer}\nKeystone's log ends:\n{}",
                tail(&self.log(), 40)
            );
            return token.expect("X-Subject-Token");
        }
        unreachable!("the last attempt returns or fails")
    }

    /// `DELETE /v3/auth/tokens`: the token revokes itself.
    pub async fn revoke(&self, token: &str) {
        let resp = self
            .http
            .delete(format!("{}/auth/tokens", self.url))
            .header("x-auth-token", token)
            .header("x-subject-token", token)
            .send()
            .await
            .expect("DELETE /v3/auth/tokens");
        assert_eq!(resp.status().as_u16(), 204, "revoking a token");
    }

    /// The `REPOCRYPT_*` settings of a repocrypt validating tokens with this Keystone as
    /// the seeded service user `repocrypt` (service on project `service` of `Default`).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REPOCRYPT_IAM", "keystone".into()),
            ("REPOCRYPT_IAM_URL", self.url.clone()),
            ("REPOCRYPT_IAM_USER", "repocrypt".into()),
            ("REPOCRYPT_IAM_PROJECT", "service".into()),
            ("REPOCRYPT_IAM_PASSWORD", "repocrypt-secret".into()),
        ]
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Keystone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "keystone: the test failed; Keystone's log ends:\n{}",
                tail(&self.log(), 60)
            );
        }
        self.stop();
    }
}
