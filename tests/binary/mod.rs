//! Helpers for tests that run the real `repocrypt` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_remove("REPOCRYPT_ROOT_KEY")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
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
            .map(|(_scheme, addr)| addr.to_owned())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Server { dir, addr, child }
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
        cli_in(self.dir.path(), args)
    }

    /// Run an admin command on this server's data, with more environment.
    pub fn cli_with(&self, env: &[(&str, String)], args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("REPOCRYPT_ROOT_KEY")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run repocrypt")
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

/// Run `repocrypt ARGS` with `dir` as working directory.
pub fn cli_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("REPOCRYPT_ROOT_KEY")
        .output()
        .expect("run repocrypt")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
