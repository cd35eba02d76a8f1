//! Change events through the real binary (SQLite): a revocation made by another process
//! (the command line) reaches a storage node's stream, and the server's own release
//! cache, in well under a second, whatever the key-state TTL; and `repo seal` stops the
//! moment its data key is revoked.

use crate::common::binary;

use std::process::Stdio;
use std::time::{Duration, Instant};

use binary::{stderr, EventClient, Server};
use reqwest::Method;
use serde_json::{json, Value};

const TENANT: &str = "5d1e3c7a9b2f4e6d8c0a1b3e5f7d9c2a";

fn ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    binary::stdout(&out).trim().to_owned()
}

/// A server with a long key-state TTL (so nothing below is explained by it), a tenant
/// encrypting by default, and `repos` registered; the server, the service token and the
/// key id.
async fn broker(repos: &[i64]) -> (Server, String, String) {
    let server = Server::start(&[("REPOCRYPT_KEY_STATE_CACHE_TTL", "60s")]);
    let admin = ok(
        &server,
        &[
            "token", "issue", "--tenant", TENANT, "--user", "alice", "--role", "admin",
        ],
    );
    let service = ok(&server, &["token", "issue", "--service", "node-1"]);
    let key: Value = serde_json::from_str(&ok(
        &server,
        &["kms", "create-key", "--tenant", TENANT, "--alias", "k"],
    ))
    .unwrap();
    let key_id = key["key_id"].as_str().unwrap().to_owned();
    let http = server.client();
    let api = format!("/v4/tenants/{TENANT}/repo-encryption");
    assert_eq!(
        http.call(Method::POST, &format!("{api}/kms-grant"), &admin, None)
            .await
            .0,
        200
    );
    let put =
        json!({"encryption_type": "KMS", "cmk_key_id": key_id, "default_encryption_enabled": true});
    assert_eq!(
        http.call(Method::PUT, &format!("{api}/setting"), &admin, Some(put))
            .await
            .0,
        200
    );
    for id in repos {
        let body =
            json!({"repo_id": id, "repo_name": format!("r{id}"), "full_path": format!("g/r{id}")});
        let (status, v) = http
            .call(
                Method::POST,
                &format!("{api}/repositories"),
                &service,
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{v}");
    }
    (server, service, key_id)
}

async fn release(server: &Server, service: &str, id: i64) -> (u16, Value) {
    server
        .client()
        .call(
            Method::GET,
            &format!("/v4/tenants/{TENANT}/repo-encryption/repositories/{id}/data-key"),
            service,
            None,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_by_another_process_reaches_the_stream_and_the_release_cache_within_a_second() {
    const N: i64 = 10;
    let ids: Vec<i64> = (1..=N + 1).collect();
    let (server, service, _) = broker(&ids).await;
    let mut events = EventClient::open(&server.addr, &service, None).await;
    let mut latencies = Vec::new();
    for id in 1..=N {
        assert_eq!(release(&server, &service, id).await.0, 200); // now in the release cache
                                                                 // Timed from the command's start (its start-up included): an upper bound.
        let done = Instant::now();
        let out = server.cli(&[
            "repo",
            "shred",
            "--tenant",
            TENANT,
            "--repo-id",
            &id.to_string(),
            "--yes",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let event = events.next(Duration::from_secs(5)).await.expect("an event");
        latencies.push(event.at.duration_since(done));
        assert_eq!(event.event, "data_key_shredded");
        assert_eq!(event.data["repo_id"], id);
        assert_eq!(event.data["tenant_id"], TENANT);
        // The server applied it too: its caches (the repository row cache, the released
        // key) no longer answer for the shredded repository.
        let (status, v) = release(&server, &service, id).await;
        assert_eq!(status, 410, "{v}");
    }
    latencies.sort();
    eprintln!(
        "MEASURED SQLite: shred by another process (from the start of repocrypt repo shred) to the subscriber, {N} times: min {} ms, median {} ms, max {} ms",
        latencies[0].as_millis(),
        latencies[latencies.len() / 2].as_millis(),
        latencies[latencies.len() - 1].as_millis()
    );
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "{latencies:?}"
    );
    assert_eq!(release(&server, &service, N + 1).await.0, 200);
    // Each exactly once.
    assert!(events.next(Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_stops_the_moment_its_data_key_is_revoked() {
    let (server, service, _) = broker(&[9]).await;
    // Big enough that sealing takes seconds in a debug build: a sparse file.
    let input = server.dir.path().join("big.bundle");
    let file = std::fs::File::create(&input).unwrap();
    file.set_len(4 << 30).unwrap();
    drop(file);
    let output = server.dir.path().join("big.sealed");
    let mut seal = binary::command(
        server.dir.path(),
        &[("REPOCRYPT_TOKEN", service.as_str())],
        &[
            "repo",
            "seal",
            "--endpoint",
            &format!("http://{}", server.addr),
            "--tenant",
            TENANT,
            "--repo-id",
            "9",
            "--in",
            input.to_str().unwrap(),
            "--out",
            output.to_str().unwrap(),
        ],
    );
    let mut seal = Killed(seal.stderr(Stdio::piped()).spawn().unwrap());
    let seal = &mut seal.0;
    // Wait until it is sealing (its partial output, `big.sealed.<tag>.partial`, exists).
    let partials = || {
        std::fs::read_dir(server.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("big.sealed.") && name.ends_with(".partial")
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while partials() == 0 {
        assert!(Instant::now() < deadline, "seal did not start");
        assert!(seal.try_wait().unwrap().is_none(), "seal ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Timed from the revoking command's start (its start-up included): an upper bound.
    let revoked = Instant::now();
    let out = server.cli(&[
        "repo",
        "shred",
        "--tenant",
        TENANT,
        "--repo-id",
        "9",
        "--yes",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = loop {
        if let Some(status) = seal.try_wait().unwrap() {
            break status;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "seal went on after the revocation"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let stopped = revoked.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut seal.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!(
        "MEASURED SQLite: from the start of repo shred to repo seal stopped: {} ms",
        stopped.as_millis()
    );
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("was revoked") && err.contains("data_key_shredded"),
        "{err}"
    );
    assert!(stopped < Duration::from_secs(1), "{stopped:?}: {err}");
    assert!(!output.exists() && partials() == 0, "nothing written");
}

/// A child process killed when the test ends, whatever its outcome.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
