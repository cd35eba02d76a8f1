//! Helpers for tests that run the real `repocrypt` binary: the one way to run it (a
//! command in a directory, with exactly the `REPOCRYPT_*` environment it is given), a
//! server on a free port, and an HTTP client for it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_repocrypt");

/// A `repocrypt serve` on a free port, with its own working directory (so the default
/// `./repocrypt-data` lands there too).
pub struct Server {
    pub dir: TempDir,
    pub addr: String,
    child: Child,
}

impl Server {
    pub fn start(env: &[(&str, &str)]) -> Server {
        Server::start_binary(BIN, env)
    }

    /// [`Server::start`] of another build of the binary (a release build, say).
    pub fn start_binary(bin: &str, env: &[(&str, &str)]) -> Server {
        Server::try_start_binary(bin, env).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Server::start_binary`], or why the server did not come up (it exited before
    /// listening: its log).
    pub fn try_start_binary(bin: &str, env: &[(&str, &str)]) -> Result<Server, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut cmd = command_of(bin, dir.path(), env, &["serve", "--listen", "127.0.0.1:0"]);
        cmd.stdout(Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().expect("start repocrypt serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("repocrypt listening on ")
            .and_then(|url| url.split_once("://"))
            .map(|(_scheme, addr)| addr.to_owned());
        match addr {
            Some(addr) => Ok(Server { dir, addr, child }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                Err(format!("unexpected first line: {line:?}; the log:\n{log}"))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, then wait up to 10 s; the exit code (None if killed by a signal).
    pub fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    /// Like [`Server::stop`], but keeps the `Server` (its directory, its log) for reading.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run an admin command on this server's data.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(self.dir.path(), NO_ENV, args)
    }

    /// Run an admin command on this server's data, with more environment.
    pub fn cli_with(&self, env: &[(&str, String)], args: &[&str]) -> Output {
        cli(self.dir.path(), env, args)
    }

    /// An HTTP client for this server.
    pub fn client(&self) -> Client {
        Client::new(&self.addr)
    }

    /// What the server has logged so far (its standard error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The log once it holds `needle`: the server writes its log out at least every 20 ms
    /// (see `telemetry`), so a line logged before a response may reach the file just
    /// after it. Panics with the log after two seconds.
    pub fn log_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// No environment for [`cli`].
pub const NO_ENV: &[(&str, &str)] = &[];

/// `repocrypt ARGS` in `dir` with exactly the `REPOCRYPT_*` variables of `env` (none of the
/// test process's own: a developer's `REPOCRYPT_ROOT_KEY` or CI's `REPOCRYPT_TEST_*` do not
/// reach it), not yet started.
pub fn command<K, V, A>(dir: &Path, env: &[(K, V)], args: &[A]) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
    A: AsRef<OsStr>,
{
    command_of(BIN, dir, env, args)
}

/// [`command`] of another build of the binary.
pub fn command_of<K, V, A>(bin: &str, dir: &Path, env: &[(K, V)], args: &[A]) -> Command
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
    A: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REPOCRYPT_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Run `repocrypt ARGS` in `dir` with `env` (see [`command`]) to the end.
pub fn cli<K, V, A>(dir: &Path, env: &[(K, V)], args: &[A]) -> Output
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
    A: AsRef<OsStr>,
{
    command(dir, env, args).output().expect("run repocrypt")
}

/// [`cli`] that must succeed: its standard output, trimmed.
#[track_caller]
pub fn cli_ok<K, V, A>(dir: &Path, env: &[(K, V)], args: &[A]) -> String
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
    A: AsRef<OsStr> + std::fmt::Debug,
{
    let out = cli(dir, env, args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// `repocrypt ARGS` in `dir`, no environment.
pub fn cli_in(dir: &Path, args: &[&str]) -> Output {
    cli(dir, NO_ENV, args)
}

/// A response of the real server: status, headers and body (JSON, or the text as a JSON
/// string, or null when empty).
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        if self.text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.text).unwrap_or_else(|_| Value::String(self.text.clone()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// HTTP client of a real server at `addr` (`host:port`).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(addr: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: format!("http://{addr}"),
        }
    }

    /// `method path` with exactly these headers and body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (n, v) in headers {
            req = req.header(n.as_str(), v.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            text,
        }
    }

    /// `method path` with `X-Auth-Token: token` and a JSON body when given: status and JSON
    /// (null when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut headers = vec![("X-Auth-Token".to_owned(), token.to_owned())];
        let body = body.map(|b| {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
            serde_json::to_vec(&b).expect("JSON body")
        });
        let reply = self.send(method, path, &headers, body).await;
        let json = serde_json::from_str(&reply.text).unwrap_or(Value::Null);
        (reply.status, json)
    }

    /// [`Client::call`], also timed.
    pub async fn timed(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value, Duration) {
        let started = Instant::now();
        let (status, json) = self.call(method, path, token, body).await;
        (status, json, started.elapsed())
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One Server-Sent Event of `GET /v4/repo-encryption/events`.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
    /// When it arrived.
    pub at: Instant,
}

/// A client following the events stream of a server.
pub struct EventClient {
    response: reqwest::Response,
    buffer: String,
    /// The id the server said the stream starts after.
    pub after: i64,
}

impl EventClient {
    /// Open the stream as `token` (a service principal's), resuming after `last`; returns
    /// once the server says it is following.
    pub async fn open(addr: &str, token: &str, last: Option<i64>) -> EventClient {
        let mut req = reqwest::Client::new()
            .get(format!("http://{addr}/v4/repo-encryption/events"))
            .header("X-Auth-Token", token);
        if let Some(last) = last {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let response = req.send().await.expect("events request");
        assert_eq!(response.status(), 200, "events stream: {:?}", response);
        let mut client = EventClient {
            response,
            buffer: String::new(),
            after: -1,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.after < 0 {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("the stream says it is ready within 10 s");
            if let Some(i) = client.buffer.find(": ready after ") {
                let rest = &client.buffer[i + 14..];
                if let Some(end) = rest.find('\n') {
                    client.after = rest[..end].trim().parse().expect("ready id");
                    let cut = i + 14 + end;
                    client.buffer.drain(..cut);
                    break;
                }
            }
            client.read(left).await.expect("stream open");
        }
        client
    }

    async fn read(&mut self, wait: Duration) -> Option<()> {
        match tokio::time::timeout(wait, self.response.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                self.buffer.push_str(&String::from_utf8_lossy(&bytes));
                Some(())
            }
            _ => None,
        }
    }

    /// The next event within `wait` (comments skipped).
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some((id, event, data)) = super::parse_sse_block(&block) {
                    return Some(SseEvent {
                        id,
                        event,
                        data,
                        at: Instant::now(),
                    });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.read(left).await?;
        }
    }

    /// Every event until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next(quiet).await {
            out.push(e);
        }
        out
    }
}
