//! Crash durability: concurrent writers PUT settings into the real binary, the server is
//! killed with SIGKILL in the middle of it, restarted on the same data, and every write it
//! acknowledged (a complete 200 response) must be there: readable through the API, in the
//! audit log, once, with the id it was acknowledged with, in a database that is intact.
//!
//! Runs on SQLite (the default data directory), and also on PostgreSQL when
//! `REPOCRYPT_TEST_DATABASE_URL` names a server (a fresh database per run, dropped at the end).

use crate::common::binary;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::setting_path;
use binary::Server;
use serde_json::{json, Value};

/// Writer threads.
const WRITERS: usize = 8;
/// Tenants (one PUT each, each with its own admin token) per writer.
const TENANTS_PER_WRITER: usize = 48;
/// How long the writers run before the kill (longer if fewer than `MIN_ACKED` were
/// acknowledged by then, shorter if half the tenants are used up).
const WRITE_FOR: Duration = Duration::from_millis(300);
const WRITE_AT_MOST: Duration = Duration::from_secs(3);
/// Fewer acknowledged writes before the kill and the test proves little.
const MIN_ACKED: usize = 20;
/// Parallel admin commands (token issue, audit list).
const CLI_THREADS: usize = 4;

#[test]
fn acknowledged_writes_survive_sigkill() {
    let postgres = std::env::var("REPOCRYPT_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    assert!(
        postgres.is_some() || std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
        "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
    );

    let started = Instant::now();
    crash_story(&[]);
    eprintln!("durability [sqlite]: done in {:.1?}", started.elapsed());

    match postgres {
        Some(url) => {
            let started = Instant::now();
            let db = PgDatabase::create(&url);
            crash_story(&["--database".to_owned(), db.url.clone()]);
            drop(db);
            eprintln!("durability [postgres]: done in {:.1?}", started.elapsed());
        }
        None => eprintln!("SKIPPED (PostgreSQL part): REPOCRYPT_TEST_DATABASE_URL is not set"),
    }
}

/// What one writer saw.
#[derive(Default)]
struct WriterLog {
    /// Tenant and the setting id of every PUT answered 200 (response read completely).
    acked: Vec<(String, i64)>,
    /// The tenant whose PUT was sent (connection made) but not answered completely.
    in_flight: Option<String>,
    /// The tenant whose PUT could not even connect.
    unsent: Option<String>,
    /// Complete answers other than a 200 with an id: always a failure.
    rejected: Vec<String>,
    /// When and why the writer stopped on an I/O error.
    failed_at: Option<Instant>,
    error: Option<String>,
    /// Every tenant was written before the kill.
    exhausted: bool,
}

/// The whole story on one database: `extra_args` (empty for SQLite, `--database URL`
/// otherwise) go to the server and to every admin command.
fn crash_story(extra_args: &[String]) {
    let database = extra_args
        .iter()
        .position(|a| a == "--database")
        .map(|i| extra_args[i + 1].clone());
    let label = if database.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let env: Vec<(&str, &str)> = database
        .iter()
        .map(|url| ("REPOCRYPT_DATABASE_URL", url.as_str()))
        .collect();
    let server = Server::start(&env);
    let dir = server.dir.path().to_path_buf();

    // One tenant per PUT, each with its own admin token (tokens are tenant-scoped).
    let tenants: Vec<String> = (0..WRITERS)
        .flat_map(|w| (0..TENANTS_PER_WRITER).map(move |n| format!("dur-w{w}-{n:03}")))
        .collect();
    let t = Instant::now();
    let tokens = issue_tokens(&dir, extra_args, &tenants);
    eprintln!(
        "durability [{label}]: {} tokens issued in {:.1?}",
        tokens.len(),
        t.elapsed()
    );

    // Concurrent writers; SIGKILL while they are running.
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mine: Vec<(String, String)> = tenants
                .iter()
                .filter(|t| t.starts_with(&format!("dur-w{w}-")))
                .map(|t| (t.clone(), tokens[t].clone()))
                .collect();
            let addr = server.addr.clone();
            let counter = acked_so_far.clone();
            std::thread::spawn(move || write_all(&addr, mine, &counter))
        })
        .collect();
    let writes_started = Instant::now();
    loop {
        let acked = acked_so_far.load(Ordering::SeqCst);
        let elapsed = writes_started.elapsed();
        if (elapsed >= WRITE_FOR && acked >= MIN_ACKED)
            || acked >= tenants.len() / 2
            || elapsed >= WRITE_AT_MOST
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_at = Instant::now();
    server.signal("KILL");
    wait_until_dead(server.pid());
    let logs: Vec<WriterLog> = writers
        .into_iter()
        .map(|h| h.join().expect("writer thread"))
        .collect();
    let write_time = killed_at - writes_started;

    let rejected: Vec<&String> = logs.iter().flat_map(|l| &l.rejected).collect();
    assert!(
        rejected.is_empty(),
        "PUTs refused before the kill: {rejected:?}"
    );
    for log in &logs {
        if let Some(at) = log.failed_at {
            assert!(
                at >= killed_at,
                "a writer failed {:?} before the kill (in flight {:?}, unsent {:?}): {:?}",
                killed_at - at,
                log.in_flight,
                log.unsent,
                log.error
            );
        }
    }
    let acked: Vec<(String, i64)> = logs.iter().flat_map(|l| l.acked.clone()).collect();
    let in_flight: Vec<String> = logs.iter().filter_map(|l| l.in_flight.clone()).collect();
    let unsent: Vec<String> = logs.iter().filter_map(|l| l.unsent.clone()).collect();
    let exhausted = logs.iter().filter(|l| l.exhausted).count();
    eprintln!(
        "durability [{label}]: killed after {write_time:.1?} of writes: {} acknowledged, {} in flight, \
         {} not sent, {exhausted} of {WRITERS} writers had finished",
        acked.len(),
        in_flight.len(),
        unsent.len()
    );
    assert!(
        acked.len() >= MIN_ACKED,
        "only {} writes acknowledged before the kill: the test proves little",
        acked.len()
    );
    assert!(
        exhausted < WRITERS,
        "every writer had finished before the kill: nothing was running when it came"
    );

    // On PostgreSQL the crash is over only when the killed process's sessions are: a
    // transaction whose COMMIT was already sent still commits after its client died, so
    // an in-flight write may become visible a moment after the kill (all or nothing).
    if let Some(url) = &database {
        wait_for_orphaned_sessions(url);
    }

    // Restart on the same data.
    let restarted = Proc::start_in(&dir, extra_args);

    // Every acknowledged write reads back with the id it was acknowledged with.
    let mut ids = HashSet::new();
    for (tenant, id) in &acked {
        let (status, body) = request(
            &restarted.addr,
            "GET",
            &setting_path(tenant),
            &tokens[tenant],
            None,
        )
        .unwrap_or_else(|e| panic!("GET {tenant} after the restart: {e:?}"));
        assert_eq!(status, 202, "GET {tenant}: {body}");
        assert_eq!(
            body["encryption_type"], "normal",
            "acknowledged write of {tenant} lost: {body}"
        );
        assert_eq!(body["tenant_id"], tenant.as_str(), "{body}");
        assert_eq!(
            body["id"].as_i64(),
            Some(*id),
            "{tenant}: id differs from the acknowledged one: {body}"
        );
        assert!(ids.insert(*id), "id {id} of {tenant} is not unique");
    }
    // A write cut off by the kill is either all there or not at all.
    let mut persisted_in_flight = Vec::new();
    for tenant in &in_flight {
        let (status, body) = request(
            &restarted.addr,
            "GET",
            &setting_path(tenant),
            &tokens[tenant],
            None,
        )
        .unwrap_or_else(|e| panic!("GET {tenant} after the restart: {e:?}"));
        assert_eq!(status, 202, "GET {tenant}: {body}");
        match body["id"].as_i64() {
            Some(id) => {
                assert_eq!(body["encryption_type"], "normal", "{body}");
                assert!(ids.insert(id), "id {id} of {tenant} is not unique");
                persisted_in_flight.push((tenant.clone(), id));
            }
            None => assert!(body["encryption_type"].is_null(), "{body}"),
        }
    }
    // A PUT that never connected changed nothing.
    for tenant in &unsent {
        let (status, body) = request(
            &restarted.addr,
            "GET",
            &setting_path(tenant),
            &tokens[tenant],
            None,
        )
        .unwrap_or_else(|e| panic!("GET {tenant} after the restart: {e:?}"));
        assert_eq!(status, 202, "GET {tenant}: {body}");
        assert!(body.get("id").is_none(), "never sent, yet stored: {body}");
    }

    // The audit log has exactly one setting.update per stored write, with its request id.
    let stored: Vec<(String, i64)> = acked.iter().chain(&persisted_in_flight).cloned().collect();
    let t = Instant::now();
    check_audit(&dir, extra_args, &stored);
    eprintln!(
        "durability [{label}]: {} audit logs checked in {:.1?}",
        stored.len(),
        t.elapsed()
    );
    for tenant in in_flight
        .iter()
        .filter(|t| !stored.iter().any(|s| &s.0 == *t))
    {
        let records = audit_list(&dir, extra_args, tenant);
        assert!(
            records.is_empty(),
            "{tenant}: no setting, yet audited: {records:?}"
        );
    }

    assert_eq!(
        restarted.stop(),
        Some(0),
        "the restarted server stops cleanly"
    );

    // The database itself: intact, and holding exactly the stored writes.
    let check = check_database(database.as_deref(), &dir);
    eprintln!(
        "durability [{label}]: {} in flight at the kill were persisted; database: integrity {:?}, \
         {} settings, {} setting.update records",
        persisted_in_flight.len(),
        check.integrity,
        check.settings,
        check.audited_updates
    );
    assert_eq!(check.integrity, "ok");
    assert!(check.settings >= acked.len() as i64);
    assert_eq!(
        check.settings,
        stored.len() as i64,
        "settings in the database vs acknowledged + persisted in flight"
    );
    assert_eq!(check.audited_updates, check.settings);
    assert_eq!(
        check.unaudited_settings, 0,
        "settings without an audit record"
    );
    drop(server);
}

/// Write one setting per tenant until the first I/O error.
fn write_all(addr: &str, tenants: Vec<(String, String)>, acked_so_far: &AtomicUsize) -> WriterLog {
    let mut log = WriterLog::default();
    for (tenant, token) in tenants {
        let body = json!({ "encryption_type": "normal", "tenant_id": tenant }).to_string();
        match request(addr, "PUT", &setting_path(&tenant), &token, Some(&body)) {
            Ok((200, v)) if v["id"].as_i64().is_some() => {
                log.acked
                    .push((tenant, v["id"].as_i64().unwrap_or_default()));
                acked_so_far.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, v)) => {
                log.rejected.push(format!("{tenant}: {status} {v}"));
                return log;
            }
            Err(failure) => {
                log.failed_at = Some(Instant::now());
                match failure {
                    Failure::NotSent(e) => {
                        log.error = Some(e.to_string());
                        log.unsent = Some(tenant);
                    }
                    Failure::InFlight(e) => {
                        log.error = Some(e.to_string());
                        log.in_flight = Some(tenant);
                    }
                }
                return log;
            }
        }
    }
    log.exhausted = true;
    log
}

#[derive(Debug)]
enum Failure {
    /// No connection: the server cannot have seen the request.
    NotSent(std::io::Error),
    /// Connected, but no complete response: the server may or may not have acted.
    InFlight(std::io::Error),
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); the status and JSON
/// body of a complete response (the body as long as its `Content-Length`).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Result<(u16, Value), Failure> {
    let mut stream = TcpStream::connect(addr).map_err(Failure::NotSent)?;
    let in_flight = Failure::InFlight;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(in_flight)?;
    let body = body.unwrap_or("");
    let request_id = format!(
        "dur-{}-{}",
        method.to_ascii_lowercase(),
        path.replace('/', ".")
    );
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {token}\r\n\
         X-Request-Id: {request_id}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(format!("{head}{body}").as_bytes())
        .map_err(in_flight)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(in_flight)?;
    let incomplete = |what: &str| {
        Failure::InFlight(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{what}: {:?}", String::from_utf8_lossy(&raw)),
        ))
    };
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(incomplete("no complete header"));
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let content = &raw[split + 4..];
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| incomplete("no status line"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| incomplete("no Content-Length"))?;
    if content.len() != length {
        return Err(incomplete("body shorter than its Content-Length"));
    }
    let value = serde_json::from_slice(content).unwrap_or(Value::Null);
    Ok((status, value))
}

/// Admin command on the data in `dir`: same working directory, same database flags.
fn cli(dir: &Path, extra_args: &[String], args: &[&str]) -> Output {
    let args: Vec<&str> = args
        .iter()
        .copied()
        .chain(extra_args.iter().map(String::as_str))
        .collect();
    binary::cli(dir, binary::NO_ENV, &args)
}

/// An admin token (10 minutes) for every tenant, issued `CLI_THREADS` at a time.
fn issue_tokens(dir: &Path, extra_args: &[String], tenants: &[String]) -> HashMap<String, String> {
    let chunk = tenants.len().div_ceil(CLI_THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = tenants
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|t| {
                            let user = format!("admin-{t}");
                            let out = cli(
                                dir,
                                extra_args,
                                &[
                                    "token", "issue", "--tenant", t, "--user", &user, "--role",
                                    "admin", "--ttl", "600s",
                                ],
                            );
                            assert!(
                                out.status.success(),
                                "token issue: {}",
                                String::from_utf8_lossy(&out.stderr)
                            );
                            let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                            (t.clone(), token)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("token thread"))
            .collect()
    })
}

/// `repocrypt audit list --tenant T`, one JSON record per line.
fn audit_list(dir: &Path, extra_args: &[String], tenant: &str) -> Vec<Value> {
    let out = cli(dir, extra_args, &["audit", "list", "--tenant", tenant]);
    assert!(
        out.status.success(),
        "audit list --tenant {tenant}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit record is JSON"))
        .collect()
}

/// Each stored write has exactly one audit record: `setting.update` by the tenant's admin,
/// with the PUT's request id and the setting as acknowledged.
fn check_audit(dir: &Path, extra_args: &[String], stored: &[(String, i64)]) {
    if stored.is_empty() {
        return;
    }
    let chunk = stored.len().div_ceil(CLI_THREADS);
    std::thread::scope(|s| {
        for part in stored.chunks(chunk) {
            s.spawn(move || {
                for (tenant, id) in part {
                    let records = audit_list(dir, extra_args, tenant);
                    assert_eq!(records.len(), 1, "{tenant}: {records:?}");
                    let r = &records[0];
                    assert_eq!(r["action"], "setting.update", "{r}");
                    assert_eq!(r["tenant_id"], tenant.as_str(), "{r}");
                    assert_eq!(r["actor"], format!("admin-{tenant}"), "{r}");
                    assert_eq!(
                        r["request_id"],
                        format!("dur-put-{}", setting_path(tenant).replace('/', ".")),
                        "{r}"
                    );
                    assert!(r["before"].is_null(), "first write of {tenant}: {r}");
                    assert_eq!(r["after"]["id"].as_i64(), Some(*id), "{r}");
                    assert_eq!(r["after"]["encryption_type"], "normal", "{r}");
                }
            });
        }
    });
}

struct DatabaseCheck {
    integrity: String,
    settings: i64,
    audited_updates: i64,
    unaudited_settings: i64,
}

const COUNT_SETTINGS: &str = "SELECT count(*) FROM encryption_settings";
const COUNT_UPDATES: &str = "SELECT count(*) FROM audit_log WHERE action = 'setting.update'";
const COUNT_UNAUDITED: &str = "SELECT count(*) FROM encryption_settings s WHERE NOT EXISTS \
     (SELECT 1 FROM audit_log a WHERE a.tenant_id = s.tenant_id AND a.action = 'setting.update')";

/// Inspect the database directly (after the server stopped): SQLite's `integrity_check`,
/// or, on PostgreSQL, that the tables answer; and the counts.
fn check_database(database: Option<&str>, dir: &Path) -> DatabaseCheck {
    block_on(async {
        match database {
            None => {
                let path: PathBuf = dir.join("repocrypt-data/repocrypt.db");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .expect("open the SQLite database");
                let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
                    .fetch_one(&pool)
                    .await
                    .expect("integrity_check");
                let count = |sql: &'static str| {
                    let pool = pool.clone();
                    async move {
                        sqlx::query_scalar::<_, i64>(sql)
                            .fetch_one(&pool)
                            .await
                            .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    }
                };
                let check = DatabaseCheck {
                    integrity,
                    settings: count(COUNT_SETTINGS).await,
                    audited_updates: count(COUNT_UPDATES).await,
                    unaudited_settings: count(COUNT_UNAUDITED).await,
                };
                pool.close().await;
                check
            }
            Some(url) => {
                let pool = sqlx::PgPool::connect(url)
                    .await
                    .expect("connect to the story's PostgreSQL database");
                let count = |sql: &'static str| {
                    let pool = pool.clone();
                    async move {
                        sqlx::query_scalar::<_, i64>(sql)
                            .fetch_one(&pool)
                            .await
                            .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    }
                };
                let check = DatabaseCheck {
                    // Answering queries on every table it owns is what "intact" can mean here.
                    integrity: "ok".to_owned(),
                    settings: count(COUNT_SETTINGS).await,
                    audited_updates: count(COUNT_UPDATES).await,
                    unaudited_settings: count(COUNT_UNAUDITED).await,
                };
                pool.close().await;
                check
            }
        }
    })
}

/// Wait (at most 10 s) until no session but ours is connected to the story's database.
fn wait_for_orphaned_sessions(url: &str) {
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connect to the story's PostgreSQL database");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let others: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut conn)
            .await
            .expect("pg_stat_activity");
            if others == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{others} sessions of the killed server still open after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = conn.close().await;
    });
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A fresh PostgreSQL database on the server of `REPOCRYPT_TEST_DATABASE_URL`, dropped
/// (`WITH (FORCE)`) when this goes out of scope, also when the story panics.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(admin_url: &str) -> PgDatabase {
        let name = format!("repocrypt_dur_{}", uuid::Uuid::new_v4().simple());
        block_on(async {
            let pool = sqlx::PgPool::connect(admin_url)
                .await
                .expect("connect to REPOCRYPT_TEST_DATABASE_URL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&pool)
                .await
                .expect("CREATE DATABASE");
            pool.close().await;
        });
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url, String::new()),
        };
        let server = base.rsplit_once('/').map(|(s, _)| s).unwrap_or(base);
        PgDatabase {
            admin_url: admin_url.to_owned(),
            url: format!("{server}/{name}{query}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let result = block_on(async {
            let pool = sqlx::PgPool::connect(&self.admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&pool)
            .await?;
            pool.close().await;
            Ok::<_, sqlx::Error>(())
        });
        if let Err(e) = result {
            eprintln!("could not drop database {}: {e}", self.name);
        }
    }
}

/// Wait until a killed process has exited (its open files and sockets closed).
fn wait_until_dead(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    if !Path::new("/proc/self/stat").exists() {
        std::thread::sleep(Duration::from_millis(500));
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // The state is the first field after the command name (in parentheses); Z: exited.
        let exited = std::fs::read_to_string(&stat).map_or(true, |s| {
            s.rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
        if exited {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} still alive 5 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `repocrypt serve` started in a given working directory (the restart on the crashed
/// server's data); its log goes to `restart.log` there.
struct Proc {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Proc {
    fn start_in(dir: &Path, extra_args: &[String]) -> Proc {
        let log = dir.join("restart.log");
        let mut child = binary::command(dir, binary::NO_ENV, &["serve", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("restart.log"))
            .spawn()
            .expect("restart repocrypt serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let Some(addr) = line.trim().strip_prefix("repocrypt listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the restart failed: first line {line:?}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Proc {
            addr: addr.to_owned(),
            child,
            log,
        }
    }

    /// SIGTERM, then wait up to 10 s; the exit code.
    fn stop(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the restarted server did not stop within 10 s of SIGTERM; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- registrations of the key broker ----------------------------------------------------

/// Concurrent registering clients (service principals of the platform).
const REGISTRARS: usize = 16;
/// Repositories each client registers at most before the kill.
const REPOS_PER_REGISTRAR: i64 = 400;
/// The tenant whose repositories are registered.
const BROKER_TENANT: &str = "6d1f3b5a7c9e4b2d8f0a1c3e5b7d9f1a";
/// How long the clients register before the kill (longer, up to `WRITE_AT_MOST`, if fewer
/// than `MIN_REGISTERED` were acknowledged by then).
const REGISTER_FOR: Duration = Duration::from_millis(1000);
const MIN_REGISTERED: usize = 40;

/// The broker's crash story: 16 clients register encrypted repositories (distinct repo
/// ids) with a service token, the server is killed with SIGKILL in the middle of it and
/// restarted on the same data. Every registration answered 201 is there and releases the
/// very data key its 201 carried; every repository the server lists releases a key (none
/// half-written: a row without its wrapped key, or one that does not unwrap); a
/// registration cut off by the kill is all there or not at all.
#[test]
fn acknowledged_registrations_survive_sigkill() {
    let postgres = std::env::var("REPOCRYPT_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    assert!(
        postgres.is_some() || std::env::var_os("REPOCRYPT_REQUIRE_EXTERNAL").is_none(),
        "REPOCRYPT_REQUIRE_EXTERNAL is set but REPOCRYPT_TEST_DATABASE_URL is not"
    );
    let started = Instant::now();
    registration_crash_story(&[]);
    eprintln!(
        "registration durability [sqlite]: done in {:.1?}",
        started.elapsed()
    );
    match postgres {
        Some(url) => {
            let started = Instant::now();
            let db = PgDatabase::create(&url);
            registration_crash_story(&["--database".to_owned(), db.url.clone()]);
            drop(db);
            eprintln!(
                "registration durability [postgres]: done in {:.1?}",
                started.elapsed()
            );
        }
        None => eprintln!("SKIPPED (PostgreSQL part): REPOCRYPT_TEST_DATABASE_URL is not set"),
    }
}

/// What one registering client saw.
#[derive(Default)]
struct RegistrarLog {
    /// Repo id and data key of every registration answered 201 (completely).
    acked: Vec<(i64, String)>,
    in_flight: Option<i64>,
    unsent: Option<i64>,
    rejected: Vec<String>,
    failed_at: Option<Instant>,
    error: Option<String>,
    exhausted: bool,
}

fn registration_body(repo_id: i64) -> String {
    json!({
        "repo_id": repo_id,
        "repo_name": format!("repo-{repo_id}"),
        "full_path": format!("crash/repo-{repo_id}"),
        "encrypted": true,
    })
    .to_string()
}

fn repo_data_key_path(repo_id: i64) -> String {
    format!("/v4/tenants/{BROKER_TENANT}/repo-encryption/repositories/{repo_id}/data-key")
}

/// Register repositories `ids` one after the other until the first I/O error.
fn register_all(
    addr: &str,
    token: &str,
    ids: Vec<i64>,
    acked_so_far: &AtomicUsize,
) -> RegistrarLog {
    let mut log = RegistrarLog::default();
    let path = format!("/v4/tenants/{BROKER_TENANT}/repo-encryption/repositories");
    for id in ids {
        match request(addr, "POST", &path, token, Some(&registration_body(id))) {
            Ok((201, v)) if v["data_key"].is_string() && v["repo_id"] == id => {
                log.acked
                    .push((id, v["data_key"].as_str().unwrap_or_default().to_owned()));
                acked_so_far.fetch_add(1, Ordering::SeqCst);
            }
            Ok((status, v)) => {
                log.rejected.push(format!("{id}: {status} {v}"));
                return log;
            }
            Err(failure) => {
                log.failed_at = Some(Instant::now());
                match failure {
                    Failure::NotSent(e) => {
                        log.error = Some(e.to_string());
                        log.unsent = Some(id);
                    }
                    Failure::InFlight(e) => {
                        log.error = Some(e.to_string());
                        log.in_flight = Some(id);
                    }
                }
                return log;
            }
        }
    }
    log.exhausted = true;
    log
}

/// A command that must succeed: its standard output.
fn cli_ok(dir: &Path, extra_args: &[String], args: &[&str]) -> String {
    let out = cli(dir, extra_args, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn registration_crash_story(extra_args: &[String]) {
    let database = extra_args
        .iter()
        .position(|a| a == "--database")
        .map(|i| extra_args[i + 1].clone());
    let label = if database.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let env: Vec<(&str, &str)> = database
        .iter()
        .map(|url| ("REPOCRYPT_DATABASE_URL", url.as_str()))
        .collect();
    let server = Server::start(&env);
    let dir = server.dir.path().to_path_buf();

    // The tenant encrypts with a key of its own; the platform registers with a service token.
    let key: Value = serde_json::from_str(&cli_ok(
        &dir,
        extra_args,
        &[
            "kms",
            "create-key",
            "--tenant",
            BROKER_TENANT,
            "--alias",
            "k",
        ],
    ))
    .expect("JSON");
    let admin = cli_ok(
        &dir,
        extra_args,
        &[
            "token",
            "issue",
            "--tenant",
            BROKER_TENANT,
            "--user",
            "admin",
            "--role",
            "admin",
            "--ttl",
            "600s",
        ],
    );
    let grant = format!("/v4/tenants/{BROKER_TENANT}/repo-encryption/kms-grant");
    let (status, v) = request(&server.addr, "POST", &grant, &admin, None).expect("grant");
    assert_eq!(status, 200, "{v}");
    let setting = json!({"encryption_type": "kms", "cmk_key_id": key["key_id"]}).to_string();
    let (status, v) = request(
        &server.addr,
        "PUT",
        &setting_path(BROKER_TENANT),
        &admin,
        Some(&setting),
    )
    .expect("setting");
    assert_eq!(status, 200, "{v}");
    let token = cli_ok(
        &dir,
        extra_args,
        &["token", "issue", "--service", "crash-node", "--ttl", "600s"],
    );

    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let registrars: Vec<_> = (0..REGISTRARS)
        .map(|w| {
            let ids: Vec<i64> = (1..=REPOS_PER_REGISTRAR)
                .map(|n| (w as i64 + 1) * 10_000 + n)
                .collect();
            let (addr, token, counter) = (server.addr.clone(), token.clone(), acked_so_far.clone());
            std::thread::spawn(move || register_all(&addr, &token, ids, &counter))
        })
        .collect();
    let total = REGISTRARS * REPOS_PER_REGISTRAR as usize;
    let writes_started = Instant::now();
    loop {
        let acked = acked_so_far.load(Ordering::SeqCst);
        let elapsed = writes_started.elapsed();
        if (elapsed >= REGISTER_FOR && acked >= MIN_REGISTERED)
            || acked >= total / 2
            || elapsed >= WRITE_AT_MOST
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_at = Instant::now();
    server.signal("KILL");
    wait_until_dead(server.pid());
    let logs: Vec<RegistrarLog> = registrars
        .into_iter()
        .map(|h| h.join().expect("registrar thread"))
        .collect();
    let write_time = killed_at - writes_started;

    let rejected: Vec<&String> = logs.iter().flat_map(|l| &l.rejected).collect();
    assert!(
        rejected.is_empty(),
        "registrations refused before the kill: {rejected:?}"
    );
    for log in &logs {
        if let Some(at) = log.failed_at {
            assert!(
                at >= killed_at,
                "a client failed {:?} before the kill: {:?}",
                killed_at - at,
                log.error
            );
        }
    }
    let acked: Vec<(i64, String)> = logs.iter().flat_map(|l| l.acked.clone()).collect();
    let in_flight: Vec<i64> = logs.iter().filter_map(|l| l.in_flight).collect();
    let unsent: Vec<i64> = logs.iter().filter_map(|l| l.unsent).collect();
    let exhausted = logs.iter().filter(|l| l.exhausted).count();
    eprintln!(
        "registration durability [{label}]: killed after {write_time:.1?}: {} acknowledged, \
         {} in flight, {} not sent, {exhausted} of {REGISTRARS} clients had finished",
        acked.len(),
        in_flight.len(),
        unsent.len()
    );
    assert!(
        acked.len() >= MIN_REGISTERED,
        "only {} registrations acknowledged before the kill: the test proves little",
        acked.len()
    );
    assert!(
        exhausted < REGISTRARS,
        "nothing was running when the kill came"
    );
    let keys: HashSet<&String> = acked.iter().map(|(_, k)| k).collect();
    assert_eq!(keys.len(), acked.len(), "a data key answered twice");

    if let Some(url) = &database {
        wait_for_orphaned_sessions(url);
    }
    let restarted = Proc::start_in(&dir, extra_args);
    let release = |id: i64| {
        request(
            &restarted.addr,
            "GET",
            &repo_data_key_path(id),
            &token,
            None,
        )
        .unwrap_or_else(|e| panic!("release {id} after the restart: {e:?}"))
    };

    // Every acknowledged registration releases the key its 201 carried.
    let t = Instant::now();
    for (id, key) in &acked {
        let (status, v) = release(*id);
        assert_eq!(status, 200, "acknowledged registration {id} lost: {v}");
        assert_eq!(
            v["data_key"].as_str(),
            Some(key.as_str()),
            "{id}: another key: {v}"
        );
    }
    // One cut off by the kill: all there (and releasing) or not there.
    let mut persisted_in_flight = Vec::new();
    for id in &in_flight {
        match release(*id) {
            (200, v) => {
                assert!(v["data_key"].is_string(), "{v}");
                persisted_in_flight.push(*id);
            }
            (404, v) => assert_eq!(v["error_code"], "RC.404002", "{v}"),
            (status, v) => panic!("in-flight registration {id}: {status} {v}"),
        }
    }
    for id in &unsent {
        let (status, v) = release(*id);
        assert_eq!(status, 404, "never sent, yet registered: {id} {v}");
    }

    // Every repository the server knows is whole: listed, encrypted, and releases a key.
    let listed: Vec<Value> = serde_json::from_str(&cli_ok(
        &dir,
        extra_args,
        &["repo", "list", "--tenant", BROKER_TENANT],
    ))
    .expect("repo list is JSON");
    let mut expected: Vec<i64> = acked
        .iter()
        .map(|(id, _)| *id)
        .chain(persisted_in_flight.iter().copied())
        .collect();
    expected.sort_unstable();
    let mut listed_ids: Vec<i64> = listed
        .iter()
        .map(|r| r["repo_id"].as_i64().expect("repo_id"))
        .collect();
    listed_ids.sort_unstable();
    assert_eq!(
        listed_ids, expected,
        "listed vs acknowledged + persisted in flight"
    );
    for r in &listed {
        assert_eq!(r["encrypted"], true, "{r}");
        assert_eq!(r["shredded"], false, "{r}");
        assert_eq!(r["cmk_key_id"], key["key_id"], "{r}");
        let id = r["repo_id"].as_i64().unwrap_or_default();
        let (status, v) = release(id);
        assert_eq!(status, 200, "listed repository {id} releases no key: {v}");
    }
    // Exactly one audit record per registration.
    let audit = cli_ok(
        &dir,
        extra_args,
        &["audit", "list", "--tenant", BROKER_TENANT],
    );
    let registered: Vec<i64> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("audit JSON"))
        .filter(|r| r["action"] == "repository.register")
        .map(|r| {
            r["after"]["repo_id"]
                .as_i64()
                .expect("repo_id in the record")
        })
        .collect();
    let mut audited = registered.clone();
    audited.sort_unstable();
    assert_eq!(audited, expected, "repository.register records");
    eprintln!(
        "registration durability [{label}]: after the restart {} acknowledged released the same key, \
         {} of {} in flight persisted, {} listed and released, checked in {:.1?}",
        acked.len(),
        persisted_in_flight.len(),
        in_flight.len(),
        listed.len(),
        t.elapsed()
    );
    assert_eq!(
        restarted.stop(),
        Some(0),
        "the restarted server stops cleanly"
    );
    if database.is_none() {
        let integrity = block_on(async {
            let path = dir.join("repocrypt-data/repocrypt.db");
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open the SQLite database");
            let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&pool)
                .await
                .expect("integrity_check");
            pool.close().await;
            integrity
        });
        assert_eq!(integrity, "ok");
    }
    drop(server);
}
