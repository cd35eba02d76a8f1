//! The log never holds a request up: with stderr a pipe nobody reads (a stuck log
//! shipper), every request is still answered at once, the lines that do not fit the log's
//! buffer are dropped and counted in `/metrics`, and once the pipe is read again a `WARN`
//! line says how many were lost.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::common::binary::{self, Client, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stderr_drops_and_counts_lines_and_never_stalls_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("REPOCRYPT_RATE_LIMIT_PER_TENANT", "0"),
        ("REPOCRYPT_RATE_LIMIT_PER_CREDENTIAL", "0"),
    ];
    binary::cli_ok(dir.path(), &env, &["init"]);
    let tenant = "9f6a3c1e2b7d4e5f8a9b0c1d2e3f4a5b";
    let token = binary::cli_ok(
        dir.path(),
        &env,
        &[
            "token", "issue", "--tenant", tenant, "--user", "alice", "--role", "admin",
        ],
    );
    let mut cmd = binary::command_of(BIN, dir.path(), &env, &["serve", "--listen", "127.0.0.1:0"]);
    // stderr: a pipe this test does not read until the end (64 KiB of room in the kernel).
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit_once("://")
        .map(|(_, a)| a.to_owned())
        .expect("listening line");
    let client = std::sync::Arc::new(Client::new(&addr));
    let metrics = |client: std::sync::Arc<Client>| async move {
        let reply = client.send(Method::GET, "/metrics", &[], None).await;
        reply
            .text
            .lines()
            .find_map(|l| l.strip_prefix("repocrypt_log_lines_dropped_total "))
            .map(|n| n.parse::<u64>().unwrap())
            .expect("the dropped-lines counter")
    };
    // Long request ids make long access lines: the pipe and the 4 MiB buffer fill sooner.
    let path = format!("/v4/tenants/{tenant}/repo-encryption/setting");
    let pad = "x".repeat(100);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut sent = 0u64;
    while metrics(client.clone()).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no line dropped after {sent} requests"
        );
        let batch = (0..64).map(|i| {
            let (client, path, token) = (client.clone(), path.clone(), token.clone());
            let id = format!("{pad}-{sent}-{i}");
            async move {
                let headers = [
                    ("X-Auth-Token".to_owned(), token),
                    ("X-Request-Id".to_owned(), id),
                ];
                let start = Instant::now();
                let reply = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.send(Method::GET, &path, &headers, None),
                )
                .await
                .expect("a request stalled behind the log");
                assert!(reply.status < 500, "{} {}", reply.status, reply.text);
                start.elapsed()
            }
        });
        for took in futures_util::future::join_all(batch).await {
            slowest = slowest.max(took);
        }
        sent += 64;
    }
    let dropped = metrics(client.clone()).await;
    println!(
        "{sent} requests with stderr unread: {dropped} lines dropped, slowest answer {slowest:?}"
    );
    // Unloaded, an answer takes milliseconds; a request behind the log would wait for ever.
    assert!(
        slowest < Duration::from_secs(5),
        "a request waited {slowest:?}"
    );
    // Read the pipe again: the log drains and reports the loss.
    let stderr = child.stderr.take().unwrap();
    let (lines, read) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Until every loss counted is reported (a request's own line may be dropped after its
    // answer: the count is read again each time).
    let mut reported = 0u64;
    let mut total = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(20);
    while reported != total && Instant::now() < deadline {
        while let Ok(line) = read.recv_timeout(Duration::from_millis(100)) {
            if line.contains("WARN log lines dropped") {
                reported += line
                    .rsplit_once("dropped=")
                    .and_then(|(_, n)| n.parse::<u64>().ok())
                    .expect("a count");
            }
        }
        total = metrics(client.clone()).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(reported > 0, "no report of the loss in the log");
    assert_eq!(reported, total, "reported in the log / counted in /metrics");
}
