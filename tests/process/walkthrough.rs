//! Starts the real binary on a free port and runs the README's walkthrough block against it,
//! so the README cannot drift from what the service does.

use crate::common::binary;
use crate::common::{readme_block, substitute};

use std::process::Command;

use binary::Server;

/// The first ```sh block after the `## Walkthrough` heading.
fn walkthrough_block() -> String {
    readme_block("\n## Walkthrough")
}

#[test]
fn readme_walkthrough_runs_against_the_real_binary() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
            "REPOCRYPT_REQUIRE_EXTERNAL is set but curl is not installed"
        );
        eprintln!("SKIPPED: the walkthrough needs curl, which is not installed");
        return;
    }
    // A 1 s key-state cache so the walkthrough's `sleep 10` can be shortened.
    let server = Server::start(&[("REPOCRYPT_KEY_STATE_CACHE_TTL", "1s")]);
    let mut script = walkthrough_block();
    script = substitute(&script, "./target/release/repocrypt", binary::BIN);
    script = substitute(&script, "127.0.0.1:8080", &server.addr);
    script = substitute(&script, "sleep 10", "sleep 1.5");

    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(server.dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{stdout}\n{stderr}"
    );

    assert!(
        stdout.contains(r#"{"tenant_id":"t1","assumed":true}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("HTTP/1.1 202"),
        "GET setting answers 202:\n{stdout}"
    );
    assert!(
        stdout.to_ascii_lowercase().contains("x-request-id:"),
        "{stdout}"
    );
    // Setting answers are the lines with a region (audit lines have none).
    let settings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(r#"{"id":"#) && l.contains(r#""region":"#))
        .collect();
    assert_eq!(settings.len(), 3, "PUT, GET, GET:\n{stdout}");
    let put = settings[0];
    for field in [
        r#""encryption_type":"KMS""#,
        r#""default_encryption_enabled":true"#,
        r#""cmk_key_name":"repo-key""#,
        r#""key_state":2"#,
        r#""region":"local""#,
    ] {
        assert!(put.contains(field), "PUT answer lacks {field}: {put}");
    }
    assert!(settings[1].contains(r#""key_state":2"#), "{}", settings[1]);
    let last_get = settings[2];
    assert!(last_get.contains(r#""key_state":3"#), "{last_get}");
    // The audit log lists the key's creation, the grant, the PUT and the disable.
    for action in [
        "kms.create_key",
        "kms_grant.create",
        "setting.update",
        "kms.disable_key",
    ] {
        assert!(stdout.contains(action), "audit lacks {action}:\n{stdout}");
    }
    assert_eq!(server.stop(), Some(0), "SIGTERM exits 0");
}

/// The "Encrypting repositories" walkthrough: a real git repository bundled, sealed with its
/// data key, unsealed and cloned; refused while the key is disabled; gone after the shred.
#[test]
fn readme_repository_walkthrough_runs_against_the_real_binary() {
    for tool in ["curl", "git"] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
                "REPOCRYPT_REQUIRE_EXTERNAL is set but {tool} is not installed"
            );
            eprintln!("SKIPPED: the repository walkthrough needs {tool}, which is not installed");
            return;
        }
    }
    let server = Server::start(&[("REPOCRYPT_KEY_STATE_CACHE_TTL", "1s")]);
    let mut script = readme_block("\n## Encrypting repositories");
    script = substitute(&script, "./target/release/repocrypt", binary::BIN);
    script = substitute(&script, "127.0.0.1:8080", &server.addr);
    script = substitute(&script, "sleep 10", "sleep 1.5");

    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(server.dir.path())
        .env_remove("REPOCRYPT_TOKEN")
        .env_remove("REPOCRYPT_ACCESS_KEY")
        .env_remove("REPOCRYPT_SECRET_KEY")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "repository walkthrough failed:\n{stdout}\n{stderr}"
    );
    let registered = stdout
        .lines()
        .find(|l| l.starts_with(r#"{"repo_id":42"#))
        .unwrap_or_else(|| panic!("no registration answer:\n{stdout}"));
    for field in [
        r#""encrypted":true"#,
        r#""data_key":"(32 bytes, base64)""#,
        r#""owner_name":"alice""#,
    ] {
        assert!(registered.contains(field), "{registered}");
    }
    assert!(
        stdout.contains(
            r#"[{"repo_id":42,"repo_name":"demo","full_path":"team/demo","owner_name":"alice"}]"#
        ),
        "the encrypted list shows repository 42:\n{stdout}"
    );
    // The clone of the unsealed bundle has the file the repository had.
    assert!(
        stdout.lines().any(|l| l == "hello"),
        "copy/README:\n{stdout}"
    );
    // The impact of the key: repository 42, as ListTenantCmkRepositories lists it; and
    // disable-key refused without --force.
    let impact = stdout
        .lines()
        .find(|l| l.starts_with(r#"{"tenant_id":"t1","key_id":"#))
        .unwrap_or_else(|| panic!("no kms impact answer:\n{stdout}"));
    assert!(
        impact.ends_with(
            r#""repositories":1,"items":[{"repo_id":42,"repo_name":"demo","full_path":"team/demo","owner_name":"alice"}]}"#
        ),
        "{impact}"
    );
    assert!(
        stdout.contains("refused: repositories depend on the key"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("1 repository of this tenant") && stderr.contains("--force"),
        "the refusal names the count and --force:\n{stderr}"
    );
    assert!(
        stdout.contains("refused while the key is disabled"),
        "{stdout}\n{stderr}"
    );
    // The grant withdrawn: refused with its own code; granted again: unsealed again.
    assert!(
        stdout.contains(r#"{"tenant_id":"t1","assumed":false,"withdrawn":true}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused while the grant is withdrawn"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("RC.403004"),
        "the withdrawal names its code:\n{stderr}"
    );
    assert!(stdout.contains("unsealed again"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("RC.403005"),
        "the refusal names its code:\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l == "204"),
        "shred answers 204:\n{stdout}"
    );
    assert!(stdout.contains("gone for ever"), "{stdout}\n{stderr}");
    assert!(stderr.contains("RC.410001"), "after the shred:\n{stderr}");
    // The refused unseals left no output behind.
    assert!(!server.dir.path().join("again.bundle").exists());
    assert_eq!(server.stop(), Some(0), "SIGTERM exits 0");
}

/// The "Rewrapping data keys under a new key" walkthrough: three repositories under the old
/// key, a new key chosen, the rewrap job to its end over HTTP and from the command line,
/// the old key disabled and the repositories still released.
#[test]
fn readme_rewrap_walkthrough_runs_against_the_real_binary() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
            "REPOCRYPT_REQUIRE_EXTERNAL is set but curl is not installed"
        );
        eprintln!("SKIPPED: the rewrap walkthrough needs curl, which is not installed");
        return;
    }
    let server = Server::start(&[]);
    let mut script = readme_block("\n### Rewrapping data keys under a new key");
    script = substitute(&script, "./target/release/repocrypt", binary::BIN);
    script = substitute(&script, "127.0.0.1:8080", &server.addr);
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(server.dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rewrap walkthrough failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let job: serde_json::Value = serde_json::from_str(lines[0]).expect("the job");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        (job["total"].clone(), job["done"].clone()),
        (3.into(), 3.into()),
        "{job}"
    );
    assert_eq!(job["failed"], serde_json::json!([]), "{job}");
    let again: serde_json::Value = serde_json::from_str(lines[1]).expect("the CLI's job");
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(again["total"], 0, "{again}");
    assert_eq!(again["target_key_id"], job["target_key_id"], "{again}");
    let disabled: serde_json::Value = serde_json::from_str(lines[2]).expect("the old key");
    assert_eq!(
        (disabled["key_name"].clone(), disabled["key_state"].clone()),
        ("old-key".into(), 3.into()),
        "{disabled}"
    );
    let released: serde_json::Value = serde_json::from_str(lines[3]).expect("the release");
    assert_eq!(released["repo_id"], 1, "{released}");
    assert_eq!(released["cmk_key_id"], job["target_key_id"], "{released}");
    assert_eq!(released["data_key"], "(32 bytes, base64)", "{released}");
    assert_eq!(server.stop(), Some(0));
}
