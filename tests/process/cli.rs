//! The command line and the process: admin commands, key states, graceful shutdown.

use crate::common::binary;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use binary::{cli_in, stderr, stdout, Server};
use serde_json::Value;

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let out = cli_in(dir, args);
    assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).expect("JSON output")
}

/// Runs a command that must fail with exit status 1 and a message containing `needle`.
fn refused(dir: &Path, args: &[&str], needle: &str) {
    let out = cli_in(dir, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(needle),
        "{args:?}: message {err:?} lacks {needle:?}"
    );
    assert!(stdout(&out).is_empty(), "nothing on stdout on failure");
}

/// `repocrypt init` in `dir`: the data directory and root key admin commands need.
fn init(dir: &Path) {
    let out = cli_in(dir, &["init"]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
}

fn state(v: &Value) -> i64 {
    v["key_state"].as_i64().expect("key_state is an integer")
}

#[test]
fn token_issue_prints_only_the_token() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let out = cli_in(
        dir.path(),
        &[
            "token", "issue", "--tenant", "t1", "--user", "u1", "--role", "admin", "--ttl", "60s",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("rc1."), "{text}");
    assert!(stderr(&out).is_empty(), "no log noise: {}", stderr(&out));
    // `init` created the root key 0600 in the default data directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("repocrypt-data/root.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    refused(
        dir.path(),
        &[
            "token", "issue", "--tenant", "t1", "--user", "u1", "--ttl", "0s",
        ],
        "--ttl",
    );
    refused(
        dir.path(),
        &["token", "issue", "--tenant", "", "--user", "u1"],
        "tenant_id",
    );
    let usage = cli_in(
        dir.path(),
        &["token", "issue", "--tenant", "t1", "--role", "root"],
    );
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}

/// Only `serve` and `init` create a root key: every admin command given a data directory
/// without one (a mistyped `--data-dir`) fails, naming the file it looked for, instead of
/// making a new key (and a token no server accepts).
#[test]
fn admin_commands_refuse_a_data_dir_without_a_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pid = "0123456789abcdef0123456789abcdef";
    let commands: [&[&str]; 9] = [
        &["token", "issue", "--tenant", "t1", "--user", "u1"],
        &["credential", "create", "--tenant", "t1", "--user", "u1"],
        &["credential", "list", "--tenant", "t1"],
        &["kms", "list-keys", "--tenant", "t1"],
        &["kms", "create-key", "--tenant", "t1", "--alias", "a1"],
        &[
            "project",
            "add",
            "--tenant",
            "t1",
            "--project-id",
            pid,
            "--name",
            "p",
        ],
        &["tenant", "set", "--tenant", "t1", "--permit-public", "deny"],
        &["audit", "list"],
        &["bench", "load", "--tenants", "1"],
    ];
    // `bench` exists only in a build with the bench tooling.
    let built = |args: &&[&str]| cfg!(feature = "bench") || args[0] != "bench";
    for args in commands.into_iter().filter(built) {
        let mut all = vec!["--data-dir", "typo"];
        all.extend_from_slice(args);
        refused(d, &all, "typo/root.key");
        refused(d, &all, "repocrypt init");
        refused(d, &all, "REPOCRYPT_ROOT_KEY");
        assert!(!d.join("typo").exists(), "{args:?} created the directory");
        // Nor in the default data directory.
        refused(d, args, "repocrypt-data/root.key");
        assert!(!d.join("repocrypt-data").exists(), "{args:?}");
    }

    // A root key from the environment needs no file.
    let root = repocrypt::keys::RootKey::from_bytes([7; 32]).to_base64();
    let out = binary::cli(
        d,
        &[("REPOCRYPT_ROOT_KEY", &root)],
        &[
            "--data-dir",
            "elsewhere",
            "token",
            "issue",
            "--tenant",
            "t1",
            "--user",
            "u1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("rc1."));
    assert!(!d.join("elsewhere/root.key").exists());

    // `init` creates the key and says where; a second `init` keeps it.
    let out = cli_in(d, &["--data-dir", "typo", "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("created a new root key at typo/root.key"),
        "{}",
        stdout(&out)
    );
    let key = std::fs::read(d.join("typo/root.key")).unwrap();
    let out = cli_in(d, &["--data-dir", "typo", "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already at typo/root.key"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read(d.join("typo/root.key")).unwrap(), key, "kept");
    let out = cli_in(
        d,
        &[
            "--data-dir",
            "typo",
            "token",
            "issue",
            "--tenant",
            "t1",
            "--user",
            "u1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn kms_reaches_all_five_key_states() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let d = dir.path();
    let k = ok_json(
        d,
        &[
            "kms",
            "create-key",
            "--tenant",
            "t1",
            "--alias",
            "a1",
            "--inactive",
        ],
    );
    assert_eq!(k["key_name"], "a1");
    assert_eq!(state(&k), 1, "to be activated");
    let id = k["key_id"].as_str().unwrap().to_owned();
    let key = |cmd: &str| ok_json(d, &["kms", cmd, "--tenant", "t1", "--key-id", &id]);
    assert_eq!(state(&key("enable-key")), 2);
    assert_eq!(state(&key("disable-key")), 3);
    let sched = ok_json(
        d,
        &[
            "kms",
            "schedule-key-deletion",
            "--tenant",
            "t1",
            "--key-id",
            &id,
            "--pending-days",
            "7",
        ],
    );
    assert_eq!(state(&sched), 4);
    assert_eq!(
        state(&key("cancel-key-deletion")),
        3,
        "cancelled keys come back disabled"
    );

    let ext = ok_json(
        d,
        &[
            "kms",
            "create-key",
            "--tenant",
            "t1",
            "--alias",
            "ext",
            "--origin",
            "external",
        ],
    );
    assert_eq!(state(&ext), 5, "external keys wait for material");
    let ext_id = ext["key_id"].as_str().unwrap();
    let imported = ok_json(
        d,
        &[
            "kms",
            "import-key-material",
            "--tenant",
            "t1",
            "--key-id",
            ext_id,
        ],
    );
    assert_eq!(state(&imported), 2);

    let list = ok_json(d, &["kms", "list-keys", "--tenant", "t1"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let other = ok_json(d, &["kms", "list-keys", "--tenant", "t2"]);
    assert_eq!(other, serde_json::json!([]), "keys are per tenant");
}

#[test]
fn kms_refuses_what_a_real_kms_forbids() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let d = dir.path();
    let k = ok_json(d, &["kms", "create-key", "--tenant", "t1", "--alias", "a1"]);
    let id = k["key_id"].as_str().unwrap().to_owned();
    let args = |cmd: &'static str| vec!["kms", cmd, "--tenant", "t1", "--key-id", id.as_str()];
    let sched = |days: &'static str| {
        let mut a = args("schedule-key-deletion");
        a.extend(["--pending-days", days]);
        a
    };
    refused(d, &sched("6"), "7 to 1096");
    refused(d, &sched("1097"), "7 to 1096");
    refused(d, &args("cancel-key-deletion"), "not scheduled");
    refused(d, &args("import-key-material"), "only external keys");
    ok_json(d, &sched("30"));
    refused(d, &sched("30"), "pending deletion");
    refused(d, &args("disable-key"), "pending deletion");
    refused(d, &args("enable-key"), "pending deletion");
    // Another tenant cannot see or touch the key.
    refused(
        d,
        &["kms", "disable-key", "--tenant", "t2", "--key-id", &id],
        "not found",
    );
    refused(
        d,
        &["kms", "create-key", "--tenant", "t1", "--alias", "a1"],
        "already exists",
    );
    refused(
        d,
        &[
            "kms",
            "create-key",
            "--tenant",
            "t1",
            "--alias",
            "bad alias!",
        ],
        "alias",
    );
    let ext = ok_json(
        d,
        &[
            "kms",
            "create-key",
            "--tenant",
            "t1",
            "--alias",
            "x",
            "--origin",
            "external",
        ],
    );
    let ext_id = ext["key_id"].as_str().unwrap();
    refused(
        d,
        &["kms", "enable-key", "--tenant", "t1", "--key-id", ext_id],
        "pending import",
    );
    let short = d.join("short.bin");
    std::fs::write(&short, [1u8; 16]).unwrap();
    refused(
        d,
        &[
            "kms",
            "import-key-material",
            "--tenant",
            "t1",
            "--key-id",
            ext_id,
            "--material-file",
            short.to_str().unwrap(),
        ],
        "exactly 32 bytes",
    );
}

#[test]
fn key_material_is_stored_only_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let d = dir.path();
    let material: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let file = d.join("material.bin");
    std::fs::write(&file, &material).unwrap();
    let ext = ok_json(
        d,
        &[
            "kms",
            "create-key",
            "--tenant",
            "t1",
            "--alias",
            "x",
            "--origin",
            "external",
        ],
    );
    ok_json(
        d,
        &[
            "kms",
            "import-key-material",
            "--tenant",
            "t1",
            "--key-id",
            ext["key_id"].as_str().unwrap(),
            "--material-file",
            file.to_str().unwrap(),
        ],
    );
    let data = d.join("repocrypt-data");
    for entry in std::fs::read_dir(&data).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(material.len())
                .any(|w| w == material.as_slice()),
            "clear key material found on disk"
        );
        let hex_material = material
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        assert!(!String::from_utf8_lossy(&bytes).contains(&hex_material));
    }
}

#[test]
fn project_tenant_and_audit_commands() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let d = dir.path();
    let pid = "0123456789abcdef0123456789abcdef";
    let p = ok_json(
        d,
        &[
            "project",
            "add",
            "--tenant",
            "t1",
            "--project-id",
            pid,
            "--name",
            "web",
        ],
    );
    assert_eq!(p["tenant_id"], "t1");
    refused(
        d,
        &[
            "project",
            "add",
            "--tenant",
            "t1",
            "--project-id",
            pid,
            "--name",
            "web",
        ],
        "already exists",
    );
    refused(
        d,
        &[
            "project",
            "add",
            "--tenant",
            "t1",
            "--project-id",
            "short",
            "--name",
            "x",
        ],
        "32",
    );
    ok_json(
        d,
        &[
            "project",
            "add-member",
            "--project-id",
            pid,
            "--tenant",
            "t2",
            "--user",
            "bob",
        ],
    );
    refused(
        d,
        &[
            "project",
            "add-member",
            "--project-id",
            "ffffffffffffffffffffffffffffffff",
            "--tenant",
            "t2",
            "--user",
            "bob",
        ],
        "does not exist",
    );
    let t = ok_json(
        d,
        &[
            "tenant",
            "set",
            "--tenant",
            "t1",
            "--permit-public",
            "allow",
        ],
    );
    assert_eq!(t["permit_public"], "allow");

    let out = cli_in(d, &["audit", "list", "--tenant", "t1"]);
    assert!(out.status.success());
    let records: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "project.add",
            "project.add_member",
            "tenant.set_permit_public"
        ]
    );
    assert!(records.iter().all(|r| r["actor"] == "cli"));
    assert_eq!(records[2]["after"]["permit_public"], "allow");
}

/// A request that is still arriving when SIGTERM comes is answered, then the process
/// exits 0; new connections are refused after the shutdown.
#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let server = Server::start(&[]);
    let token = stdout(&server.cli(&[
        "token", "issue", "--tenant", "t1", "--user", "u", "--role", "admin",
    ]));
    let body = br#"{"encryption_type":"normal"}"#;
    let head = format!(
        "PUT /v4/tenants/t1/repo-encryption/setting HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        token.trim(),
        body.len()
    );
    let mut conn = TcpStream::connect(&server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(&body[10..]).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(r#""encryption_type":"normal""#),
        "{response}"
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn bad_configuration_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let d = dir.path();
    std::fs::write(d.join("bad.toml"), "listen = 5\n").unwrap();
    refused(
        d,
        &["--config", "bad.toml", "audit", "list", "--tenant", "t"],
        "bad.toml",
    );
    refused(
        d,
        &["--config", "missing.toml", "audit", "list", "--tenant", "t"],
        "missing.toml",
    );
    refused(
        d,
        &["--database", "mysql://x", "audit", "list", "--tenant", "t"],
        "unsupported database URL",
    );
    let out = binary::cli_in(d, &["--key-state-cache-ttl", "soon", "serve"]);
    assert_eq!(out.status.code(), Some(2));
}

#[cfg(feature = "bench")]
#[test]
fn bench_load_adds_tenants_with_keys_settings_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let out = cli_in(
        dir.path(),
        &[
            "bench",
            "load",
            "--tenants",
            "7",
            "--tokens-file",
            "tokens.txt",
            "--tokens",
            "3",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("loaded 7/7 tenants"),
        "{}",
        stderr(&out)
    );
    let tokens = std::fs::read_to_string(dir.path().join("tokens.txt")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("tokens.txt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let lines: Vec<&str> = tokens.lines().collect();
    assert_eq!(lines.len(), 3);
    for line in lines {
        let (tenant, token) = line.split_once(' ').unwrap();
        assert_eq!(tenant.len(), 32);
        assert!(token.starts_with("rc1."));
        let keys = stdout(&cli_in(
            dir.path(),
            &["kms", "list-keys", "--tenant", tenant],
        ));
        let keys: serde_json::Value = serde_json::from_str(&keys).unwrap();
        assert_eq!(keys[0]["key_state"], 2, "{keys}");
    }
    let audit = stdout(&cli_in(dir.path(), &["audit", "list", "--tenant", "*"]));
    assert!(
        audit.contains("\"bench.load\"") && audit.contains("\"tenants\":7"),
        "{audit}"
    );
    refused(
        dir.path(),
        &["bench", "load", "--tenants", "1", "--token-ttl", "0s"],
        "--token-ttl",
    );
    // Loading the same tenants again is refused clearly, and nothing is half-written.
    refused(
        dir.path(),
        &["bench", "load", "--tenants", "1"],
        "already has",
    );
    // The tokens file is never written over.
    refused(
        dir.path(),
        &[
            "bench",
            "load",
            "--tenants",
            "1",
            "--tokens-file",
            "tokens.txt",
        ],
        "tokens.txt",
    );
}

// ---- configuration layers --------------------------------------------------------------

/// Run `repocrypt ARGS` in `dir` with exactly the `REPOCRYPT_*` variables of `env`.
use binary::cli as cli_env;

#[test]
fn a_setting_resolves_flag_over_environment_over_file_over_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), "data_dir = \"from-file\"\n").unwrap();
    let env = [("REPOCRYPT_DATA_DIR", "from-env")];
    let file = ["--config", "c.toml"];
    let data_dir = |env: &[(&str, &str)], args: &[&str]| {
        let args: Vec<&str> = args.iter().copied().chain(["init"]).collect();
        let out = cli_env(d, env, &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let flag_env_file = data_dir(&env, &[&file[..], &["--data-dir", "from-flag"]].concat());
    assert!(
        flag_env_file.contains("from-flag/root.key"),
        "{flag_env_file}"
    );
    let env_file = data_dir(&env, &file);
    assert!(env_file.contains("from-env/root.key"), "{env_file}");
    let just_file = data_dir(&[], &file);
    assert!(just_file.contains("from-file/root.key"), "{just_file}");
    let default = data_dir(&[], &[]);
    assert!(default.contains("repocrypt-data/root.key"), "{default}");

    // The same order for a number: the value checked is the one on top.
    std::fs::write(d.join("c.toml"), "max_body_bytes = 10\n").unwrap();
    let env = [("REPOCRYPT_MAX_BODY_BYTES", "20")];
    let out = cli_env(
        d,
        &env,
        &["--config", "c.toml", "--max-body-bytes", "30", "init"],
    );
    assert!(
        stderr(&out).contains("max_body_bytes is 30:"),
        "{}",
        stderr(&out)
    );
    let out = cli_env(d, &env, &["--config", "c.toml", "init"]);
    assert!(
        stderr(&out).contains("max_body_bytes is 20:"),
        "{}",
        stderr(&out)
    );
    let out = cli_env(d, binary::NO_ENV, &["--config", "c.toml", "init"]);
    assert!(
        stderr(&out).contains("max_body_bytes is 10:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn formerly_file_only_settings_work_from_a_flag_and_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // (file key, a valid value, a value refused with `needle` in the message)
    for (key, good, bad, needle) in [
        (
            "key_state_cache_capacity",
            "5",
            "lots",
            "key-state-cache-capacity",
        ),
        ("row_cache_capacity", "0", "lots", "row-cache-capacity"),
        (
            "header_read_timeout",
            "2s",
            "0s",
            "header_read_timeout must be",
        ),
        ("max_body_bytes", "4096", "100", "max_body_bytes is 100"),
        (
            "max_header_bytes",
            "16384",
            "100",
            "max_header_bytes is 100",
        ),
        ("max_token_bytes", "1024", "100", "max_token_bytes is 100"),
        ("json_max_depth", "8", "0", "json_max_depth is 0"),
    ] {
        let flag = format!("--{}", key.replace('_', "-"));
        let env = format!("REPOCRYPT_{}", key.to_uppercase());
        // A file value that would be refused, under a good one from the flag or environment.
        std::fs::write(d.join("c.toml"), format!("{key} = \"{bad}\"\n")).unwrap();
        let file = cli_env(d, binary::NO_ENV, &["--config", "c.toml", "init"]);
        assert!(
            !file.status.success(),
            "{key} = {bad:?} in the file is refused"
        );
        let out = cli_env(
            d,
            binary::NO_ENV,
            &["--config", "c.toml", &flag, good, "init"],
        );
        assert!(out.status.success(), "{flag} {good}: {}", stderr(&out));
        let out = cli_env(d, &[(&env, good)], &["--config", "c.toml", "init"]);
        assert!(out.status.success(), "{env}={good}: {}", stderr(&out));
        // A bad value from either is refused, naming the setting.
        let out = cli_env(d, binary::NO_ENV, &[&flag, bad, "init"]);
        assert!(!out.status.success(), "{flag} {bad}");
        assert!(
            stderr(&out).contains(needle),
            "{flag} {bad}: {}",
            stderr(&out)
        );
        let out = cli_env(d, &[(&env, bad)], &["init"]);
        assert!(!out.status.success(), "{env}={bad}");
        assert!(
            stderr(&out).contains(needle),
            "{env}={bad}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_bad_duration_in_the_file_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("c.toml"), "header_read_timeout = \"10 parsecs\"\n").unwrap();
    refused(
        d,
        &["--config", "c.toml", "init"],
        "config file c.toml: header_read_timeout `10 parsecs`: unknown time unit \"parsecs\"",
    );
}

/// `iam = "keystone"`: its settings are checked up front, naming what is missing, and the
/// built-in tokens are not issued (they would not be accepted).
#[test]
fn keystone_mode_settings_are_checked_and_token_issue_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let d = dir.path();
    let issue = ["token", "issue", "--tenant", "t", "--user", "u"];
    let keystone = [
        ("REPOCRYPT_IAM", "keystone"),
        ("REPOCRYPT_IAM_URL", "http://127.0.0.1:5000/v3"),
        ("REPOCRYPT_IAM_USER", "repocrypt"),
    ];
    let expect_refused = |env: &[(&str, &str)], needle: &str| {
        let out = binary::cli(d, env, &issue);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {}", stdout(&out));
        assert!(stdout(&out).is_empty(), "no token printed");
        let err = stderr(&out);
        assert!(err.contains(needle), "{env:?}: {err:?} lacks {needle:?}");
    };
    expect_refused(&keystone[..1], "iam_url (REPOCRYPT_IAM_URL)");
    expect_refused(&keystone[..2], "iam_user (REPOCRYPT_IAM_USER)");
    // Only serve needs the password; admin commands run without it.
    let out = binary::cli(d, &keystone, &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("set REPOCRYPT_IAM_PASSWORD or iam_password_file"),
        "{}",
        stderr(&out)
    );
    let out = binary::cli(d, &keystone, &["credential", "list", "--tenant", "t"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    expect_refused(&keystone, "get a token from Keystone instead");
    let mut env = keystone.to_vec();
    env.push(("REPOCRYPT_IAM_PASSWORD_FILE", "missing-password-file"));
    expect_refused(&env, "cannot read iam_password_file missing-password-file");
    env.pop();
    env.push(("REPOCRYPT_IAM_PASSWORD", "s3cret-password"));
    let with_password = env.clone();
    expect_refused(&with_password, "get a token from Keystone instead");
    env[1] = ("REPOCRYPT_IAM_URL", "ftp://keystone");
    expect_refused(&env, "must be an http:// or https:// URL");
    let mut env = with_password.clone();
    env.push(("REPOCRYPT_IAM_MEMBER_ROLES", "member,admin"));
    expect_refused(
        &env,
        "role `admin` is in both iam_admin_roles and iam_member_roles",
    );
    // No message carries the password.
    let out = binary::cli(d, &with_password, &issue);
    assert!(!stderr(&out).contains("s3cret-password"));
    // The built-in IAM still issues tokens, whatever the iam_* settings say.
    let mut local = with_password.clone();
    local[0] = ("REPOCRYPT_IAM", "local");
    let out = binary::cli(d, &local, &issue);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("rc1."));
}
