//! What the service creates in its data directory (the database, its `-wal` and `-shm`,
//! the root key) only its user can read, whatever the umask it is started with; a data
//! directory open to others is warned about, and database files an older version left
//! readable are narrowed.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::binary::{self, Client, BIN};

/// A server killed when dropped, so that a failing assertion leaves no process behind.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `repocrypt serve` in `dir` under umask 000 (so that nothing is private by accident),
/// its log in `dir/server.log`; the child and its address once it listens.
fn serve_with_open_umask(dir: &Path) -> (Serving, String) {
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "umask 000; exec \"$0\" serve --listen 127.0.0.1:0",
        BIN,
    ])
    .current_dir(dir)
    .stdout(Stdio::piped())
    .stderr(log);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REPOCRYPT_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Serving(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit_once("://")
        .map(|(_, a)| a.to_owned())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (child, addr)
}

/// Every file under `dir` with a mode other than 0600, and every directory under it
/// (not `dir` itself) other than 0700.
fn not_private(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            found.push(format!("{} {mode:o}", entry.path().display()));
        }
        if meta.is_dir() {
            found.extend(not_private(&entry.path()));
        }
    }
    found
}

/// The server's log once it holds `needle` (it is written out every 20 ms), or panics
/// with it after 2 s.
fn log_with(dir: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn stop(mut child: Serving) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
}

#[tokio::test]
async fn the_data_directory_holds_only_files_its_user_can_read_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("repocrypt-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (child, addr) = serve_with_open_umask(dir.path());
    // A write, so that the WAL and its index hold something.
    let token = binary::cli_ok(
        dir.path(),
        binary::NO_ENV,
        &[
            "token", "issue", "--tenant", "t1", "--user", "u", "--role", "admin",
        ],
    );
    let (status, body) = Client::new(&addr)
        .call(
            reqwest::Method::POST,
            "/v4/tenants/t1/repo-encryption/kms-grant",
            token.trim(),
            None,
        )
        .await;
    assert!(status < 300, "{status} {body}");
    let files: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in [
        "repocrypt.db",
        "repocrypt.db-wal",
        "repocrypt.db-shm",
        "root.key",
    ] {
        assert!(files.iter().any(|f| f == name), "no {name} in {files:?}");
    }
    assert_eq!(not_private(&data), Vec::<String>::new());
    log_with(dir.path(), "the data directory is open to group or others");
    stop(child);

    // Files an older version left 0644 are narrowed on the next start, with a warning;
    // a private data directory is not warned about.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    for name in ["repocrypt.db", "repocrypt.db-wal", "repocrypt.db-shm"] {
        let path = data.join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let (child, _addr) = serve_with_open_umask(dir.path());
    assert_eq!(not_private(&data), Vec::<String>::new());
    let log = log_with(
        dir.path(),
        "a database file was readable by group or others; it is now 0600",
    );
    assert!(!log.contains("the data directory is open"), "{log}");
    stop(child);
}
