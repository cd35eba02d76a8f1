//! End to end with real `git`: a repository with history, branches and tags is bundled,
//! sealed with its data key by `repocrypt repo seal` (a storage node's client, over the
//! API), unsealed and cloned; every ref and every file must match. Then the kill switch
//! (the CMK disabled: unseal refused with its code) and the shred (refused for ever).

use std::path::Path;
use std::process::{Command, Output};

use crate::common::binary::{self, Server};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Ann", "-c", "user.email=ann@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git_available() -> bool {
    if Command::new("git").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
        "REPOCRYPT_REQUIRE_EXTERNAL is set but git is not installed"
    );
    eprintln!("SKIPPED: the git end-to-end test needs git, which is not installed");
    false
}

/// Every ref with its object, and every file of every ref with its blob.
fn inventory(repo: &Path) -> (String, String) {
    let refs = git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    let mut files = String::new();
    for line in refs.lines() {
        let name = line.split(' ').next().unwrap_or_default();
        files.push_str(&format!("== {name}\n"));
        files.push_str(&git(repo, &["ls-tree", "-r", name]));
    }
    (refs, files)
}

fn seal(server: &Server, env: &[(&str, String)], verb: &str, input: &str, output: &str) -> Output {
    server.cli_with(
        env,
        &[
            "repo",
            verb,
            "--endpoint",
            &format!("http://{}", server.addr),
            "--tenant",
            "t1",
            "--repo-id",
            "7",
            "--in",
            input,
            "--out",
            output,
        ],
    )
}

#[test]
fn a_real_repository_survives_seal_and_unseal_and_the_kill_switch_bites() {
    if !git_available() {
        return;
    }
    let server = Server::start(&[("REPOCRYPT_KEY_STATE_CACHE_TTL", "1s")]);
    let dir = server.dir.path();
    let ok = |args: &[&str]| binary::stdout(&server.cli(args)).trim().to_owned();
    let admin = ok(&[
        "token", "issue", "--tenant", "t1", "--user", "alice", "--role", "admin",
    ]);
    let key: serde_json::Value = serde_json::from_str(&ok(&[
        "kms",
        "create-key",
        "--tenant",
        "t1",
        "--alias",
        "k",
    ]))
    .expect("key json");
    let key_id = key["key_id"].as_str().expect("key id").to_owned();
    let service = ok(&["token", "issue", "--service", "node-1"]);
    let api = format!("http://{}/v4/tenants/t1/repo-encryption", server.addr);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json = ["-H", "Content-Type: application/json"];
    let as_admin = format!("X-Auth-Token: {admin}");
    let as_service = format!("X-Auth-Token: {service}");
    assert_eq!(
        curl(
            &[
                &["-X", "POST", &format!("{api}/kms-grant"), "-H", &as_admin][..],
                &json
            ]
            .concat()
        ),
        "200"
    );
    let setting = format!(
        r#"{{"encryption_type":"KMS","cmk_key_id":"{key_id}","default_encryption_enabled":true}}"#
    );
    assert_eq!(
        curl(
            &[
                &[
                    "-X",
                    "PUT",
                    &format!("{api}/setting"),
                    "-H",
                    &as_admin,
                    "-d",
                    &setting
                ][..],
                &json
            ]
            .concat()
        ),
        "200"
    );
    let repo = r#"{"repo_id":7,"repo_name":"history","full_path":"team/history"}"#;
    assert_eq!(
        curl(
            &[
                &[
                    "-X",
                    "POST",
                    &format!("{api}/repositories"),
                    "-H",
                    &as_service,
                    "-d",
                    repo
                ][..],
                &json
            ]
            .concat()
        ),
        "201"
    );

    // A repository with history on two branches, a merge, an annotated and a light tag,
    // a binary file and a file in a subdirectory.
    let src = dir.join("src");
    std::fs::create_dir(&src).expect("mkdir");
    git(&src, &["init", "-q"]);
    std::fs::write(src.join("README"), "first\n").expect("write");
    git(&src, &["add", "."]);
    git(&src, &["commit", "-qm", "first"]);
    git(&src, &["tag", "-a", "v1", "-m", "version one"]);
    git(&src, &["checkout", "-qb", "feature"]);
    std::fs::create_dir(src.join("lib")).expect("mkdir");
    std::fs::write(
        src.join("lib/data.bin"),
        (0..=255u8).cycle().take(300_000).collect::<Vec<_>>(),
    )
    .expect("write");
    git(&src, &["add", "."]);
    git(&src, &["commit", "-qm", "feature work"]);
    git(&src, &["checkout", "-q", "main"]);
    std::fs::write(src.join("README"), "first\nsecond\n").expect("write");
    git(&src, &["commit", "-qam", "second"]);
    git(&src, &["merge", "-q", "--no-edit", "feature"]);
    git(&src, &["tag", "light"]);
    git(&src, &["bundle", "create", "-q", "../repo.bundle", "--all"]);
    let (refs, files) = inventory(&src);
    assert!(
        refs.contains("refs/tags/v1") && files.contains("lib/data.bin"),
        "{refs}{files}"
    );

    let env = [("REPOCRYPT_TOKEN", service.clone())];
    let sealed = seal(&server, &env, "seal", "repo.bundle", "repo.sealed");
    assert!(sealed.status.success(), "seal: {}", binary::stderr(&sealed));
    let plain = std::fs::read(dir.join("repo.bundle")).expect("bundle");
    let cipher = std::fs::read(dir.join("repo.sealed")).expect("sealed");
    assert!(
        cipher.len() > plain.len(),
        "sealed carries a header and tags"
    );
    assert!(
        !cipher
            .windows(16)
            .any(|w| w == &plain[plain.len() / 2..plain.len() / 2 + 16]),
        "no plaintext in the sealed file"
    );
    let unsealed = seal(&server, &env, "unseal", "repo.sealed", "copy.bundle");
    assert!(
        unsealed.status.success(),
        "unseal: {}",
        binary::stderr(&unsealed)
    );
    assert_eq!(std::fs::read(dir.join("copy.bundle")).expect("copy"), plain);
    git(dir, &["clone", "-q", "--mirror", "copy.bundle", "copy.git"]);
    let (copy_refs, copy_files) = inventory(&dir.join("copy.git"));
    // A mirror clone has the bundle's refs; the bundle has HEAD and refs/* of the source.
    assert_eq!(copy_refs, refs, "every ref, with the same object");
    assert_eq!(
        copy_files, files,
        "every file of every ref, with the same blob"
    );

    // The kill switch: the CMK disabled (forced: the repository depends on it), unseal is
    // refused with the API's code and leaves no output; enabled again, it works again.
    let disabled = server.cli(&[
        "kms",
        "disable-key",
        "--tenant",
        "t1",
        "--key-id",
        &key_id,
        "--force",
    ]);
    assert!(disabled.status.success(), "{}", binary::stderr(&disabled));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let refused = seal(&server, &env, "unseal", "repo.sealed", "refused.bundle");
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        binary::stderr(&refused)
    );
    assert!(
        binary::stderr(&refused).contains("RC.403005"),
        "{}",
        binary::stderr(&refused)
    );
    assert!(!dir.join("refused.bundle").exists());
    let enabled = server.cli(&["kms", "enable-key", "--tenant", "t1", "--key-id", &key_id]);
    assert!(enabled.status.success());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let again = seal(&server, &env, "unseal", "repo.sealed", "again.bundle");
    assert!(again.status.success(), "{}", binary::stderr(&again));

    // A tampered sealed file is refused, and leaves nothing behind.
    let mut flipped = cipher.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 1;
    std::fs::write(dir.join("flipped.sealed"), &flipped).expect("write");
    let tampered = seal(&server, &env, "unseal", "flipped.sealed", "tampered.bundle");
    assert_eq!(tampered.status.code(), Some(1));
    assert!(!dir.join("tampered.bundle").exists());

    // Crypto-shred: refused for ever. (From the command line, another process: a running
    // SQLite server sees it within its repository cache's bound, one second.)
    let shred = server.cli(&["repo", "shred", "--tenant", "t1", "--repo-id", "7", "--yes"]);
    assert!(shred.status.success(), "{}", binary::stderr(&shred));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for _ in 0..2 {
        let gone = seal(&server, &env, "unseal", "repo.sealed", "gone.bundle");
        assert_eq!(gone.status.code(), Some(1));
        assert!(
            binary::stderr(&gone).contains("RC.410001"),
            "{}",
            binary::stderr(&gone)
        );
        assert!(!dir.join("gone.bundle").exists());
    }
    assert_eq!(server.stop(), Some(0));
}
