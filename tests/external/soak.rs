//! The soak: mixed reads and writes from several tenants at a fixed rate (open loop) on two
//! replicas sharing one PostgreSQL database through a fault proxy, one replica killed with
//! `kill -9` (and started again) every `REPOCRYPT_SOAK_KILL_EVERY`, every PostgreSQL
//! connection reset every `REPOCRYPT_SOAK_CUT_EVERY`. At the end: no acknowledged write
//! lost (each has its one audit record; each acknowledged registration its repository), no
//! audit record of a request that was refused, every tenant's setting the last one audited;
//! and, per minute, the p50/p99 of reads and writes and the count of each outcome, printed
//! and written to `$CARGO_TARGET_TMPDIR/soak.csv` (`scripts/soak.sh` plots it).
//!
//! Runs only when `REPOCRYPT_SOAK_SECS` is set (`scripts/soak.sh`: 30 minutes; `.ci/run`: 2),
//! with `REPOCRYPT_SOAK_BIN` as the server (default: this build's binary), and needs
//! `REPOCRYPT_TEST_DATABASE_URL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common;
use crate::common::binary::{self, Server, BIN};
use crate::common::proxy::{Fault, FaultProxy};

const TENANTS: usize = 6;

fn secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Op {
    Read,
    Put,
    Register,
}

/// One request's fate.
struct Outcome {
    minute: u64,
    op: Op,
    /// 0: no answer (the replica was killed, or the connection refused).
    status: u16,
    latency: Duration,
    tenant: usize,
    request_id: String,
    /// For a registration, the repository; for a PUT, which key.
    detail: u64,
}

struct Tenant {
    id: String,
    token: String,
    keys: [String; 2],
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_replicas_with_kills_and_cut_connections() {
    let Some(total) = std::env::var("REPOCRYPT_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
    else {
        eprintln!("skipped soak_two_replicas_with_kills_and_cut_connections: set REPOCRYPT_SOAK_SECS (scripts/soak.sh does)");
        return;
    };
    let Some(url) = common::pg_url_or_skip("soak") else {
        return;
    };
    let kill_every = secs("REPOCRYPT_SOAK_KILL_EVERY", 60);
    let cut_every = secs("REPOCRYPT_SOAK_CUT_EVERY", 180);
    let rate: u64 = std::env::var("REPOCRYPT_SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bin = std::env::var("REPOCRYPT_SOAK_BIN").unwrap_or_else(|_| BIN.to_owned());

    let db = common::fresh_postgres_database(&url).await;
    let hostport = common::pg_hostport(&db);
    let proxy = FaultProxy::start(&hostport);
    let mut root = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut root);
    let root = repocrypt::keys::RootKey::from_bytes(root).to_base64();
    let server_env: Vec<(&str, String)> = vec![
        ("REPOCRYPT_DATABASE_URL", proxy.rewrite(&db, &hostport)),
        ("REPOCRYPT_ROOT_KEY", root.clone()),
        ("REPOCRYPT_RATE_LIMIT_PER_TENANT", "0".into()),
        ("REPOCRYPT_RATE_LIMIT_PER_CREDENTIAL", "0".into()),
    ];
    let cli_env: Vec<(&str, String)> = vec![
        ("REPOCRYPT_DATABASE_URL", db.clone()),
        ("REPOCRYPT_ROOT_KEY", root),
    ];
    let start_replica = {
        let (bin, server_env) = (bin.clone(), server_env.clone());
        // As a supervisor would (systemd's Restart=always): a replica started while its
        // database is unreachable (a reset under way) exits at once; start it again.
        move || {
            let env: Vec<(&str, &str)> = server_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut tries = 0;
            loop {
                match Server::try_start_binary(&bin, &env) {
                    Ok(server) => return server,
                    Err(why) if tries < 20 => {
                        tries += 1;
                        eprintln!(
                            "soak: a replica did not start (try {tries}), again in 250 ms: {}",
                            why.lines().next().unwrap_or("")
                        );
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(why) => panic!("a replica did not start in 20 tries: {why}"),
                }
            }
        }
    };
    let mut replicas = [start_replica(), start_replica()];
    let addrs = Arc::new(RwLock::new(
        replicas.iter().map(|r| r.addr.clone()).collect::<Vec<_>>(),
    ));
    let here = replicas[0].dir.path().to_owned();
    let cli = |args: &[&str]| binary::cli_ok(&here, &cli_env, args);

    // The tenants: a token, two keys, a grant and a setting each; and the service token.
    let mut tenants = Vec::new();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    for i in 0..TENANTS {
        let id = format!("soak{i:02}");
        let token = cli(&[
            "token", "issue", "--tenant", &id, "--user", "u", "--role", "admin",
        ]);
        let key = |alias: &str| -> String {
            let v: Value = serde_json::from_str(&cli(&[
                "kms",
                "create-key",
                "--tenant",
                &id,
                "--alias",
                alias,
            ]))
            .unwrap();
            v["key_id"].as_str().unwrap().to_owned()
        };
        let keys = [key("a"), key("b")];
        let base = format!(
            "http://{}/v4/tenants/{id}/repo-encryption",
            replicas[0].addr
        );
        let token = token.trim().to_owned();
        let r = http
            .post(format!("{base}/kms-grant"))
            .header("X-Auth-Token", &token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let r = http
            .put(format!("{base}/setting"))
            .header("X-Auth-Token", &token)
            .json(&json!({"encryption_type": "KMS", "cmk_key_id": keys[0], "default_encryption_enabled": true}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        tenants.push(Tenant { id, token, keys });
    }
    let service = cli(&["token", "issue", "--service", "soak"])
        .trim()
        .to_owned();
    let tenants = Arc::new(tenants);

    // The load: `rate` requests a second, whatever the answers (open loop): 70% GET
    // setting, 20% PUT setting (the tenant's other key each time), 10% registrations.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let began = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_kill = began + kill_every;
    let mut restarting: Option<(usize, tokio::task::JoinHandle<Server>)> = None;
    let mut next_cut = began + cut_every;
    let mut kills = 0u32;
    let mut cuts = 0u32;
    let mut cut_until: Option<Instant> = None;
    let mut seq: u64 = 0;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let mut last_report = began;
    while began.elapsed() < total {
        ticker.tick().await;
        let now = Instant::now();
        if now >= next_kill && restarting.is_none() {
            // kill -9 one replica (in turn) and start it again: a crash and a restart.
            // Until the new one listens, its share of the load still goes to the dead
            // address (a load balancer that has not noticed yet): those get no answer.
            let victim = (kills % 2) as usize;
            replicas[victim].signal("KILL");
            restarting = Some((victim, tokio::task::spawn_blocking(start_replica.clone())));
            kills += 1;
            next_kill += kill_every;
        }
        if restarting
            .as_ref()
            .is_some_and(|(_, task)| task.is_finished())
        {
            let (victim, task) = restarting.take().unwrap();
            let fresh = task.await.unwrap();
            addrs.write().unwrap()[victim] = fresh.addr.clone();
            drop(std::mem::replace(&mut replicas[victim], fresh));
        }
        if now >= next_cut {
            proxy.set(Fault::Reset);
            cut_until = Some(now + Duration::from_millis(500));
            cuts += 1;
            next_cut += cut_every;
        }
        if cut_until.is_some_and(|t| now >= t) {
            proxy.set(Fault::Pass);
            cut_until = None;
        }
        if now.duration_since(last_report) >= Duration::from_secs(60) {
            last_report = now;
            eprintln!(
                "soak: {:?} of {:?}, {} requests, {kills} kills, {cuts} cuts",
                began.elapsed(),
                total,
                seq
            );
        }
        seq += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            // Over 512 in flight: the request is dropped, and counted as such.
            outcomes.lock().unwrap().push(Outcome {
                minute: began.elapsed().as_secs() / 60,
                op: Op::Read,
                status: 1,
                latency: Duration::ZERO,
                tenant: 0,
                request_id: String::new(),
                detail: 0,
            });
            continue;
        };
        let tenant = (seq as usize * 7) % TENANTS;
        let op = match seq % 10 {
            0 | 5 => Op::Put,
            3 => Op::Register,
            _ => Op::Read,
        };
        let replica = (seq % 2) as usize;
        let addr = addrs.read().unwrap()[replica].clone();
        let (http, tenants, outcomes, service) = (
            http.clone(),
            tenants.clone(),
            outcomes.clone(),
            service.clone(),
        );
        let minute = began.elapsed().as_secs() / 60;
        tokio::spawn(async move {
            let t = &tenants[tenant];
            let base = format!("http://{addr}/v4/tenants/{}/repo-encryption", t.id);
            let request_id = format!("soak-{seq}");
            let (req, detail) = match op {
                Op::Read => (
                    http.get(format!("{base}/setting"))
                        .header("X-Auth-Token", &t.token),
                    0,
                ),
                Op::Put => {
                    let which = seq / 10 % 2;
                    (
                        http.put(format!("{base}/setting"))
                            .header("X-Auth-Token", &t.token)
                            .json(&json!({
                                "encryption_type": "KMS",
                                "cmk_key_id": t.keys[which as usize],
                                "default_encryption_enabled": true,
                            })),
                        which,
                    )
                }
                Op::Register => (
                    http.post(format!("{base}/repositories"))
                        .header("X-Auth-Token", &service)
                        .json(&json!({
                            "repo_id": seq,
                            "repo_name": format!("r{seq}"),
                            "full_path": format!("soak/r{seq}"),
                            "owner_name": "u",
                        })),
                    seq,
                ),
            };
            let start = Instant::now();
            let status = match req.header("X-Request-Id", &request_id).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            outcomes.lock().unwrap().push(Outcome {
                minute,
                op,
                status,
                latency: start.elapsed(),
                tenant,
                request_id,
                detail,
            });
            drop(permit);
        });
    }
    proxy.set(Fault::Pass);
    // Let the last requests end.
    if let Some((victim, task)) = restarting.take() {
        let fresh = task.await.unwrap();
        addrs.write().unwrap()[victim] = fresh.addr.clone();
        drop(std::mem::replace(&mut replicas[victim], fresh));
    }
    let drained = tokio::time::timeout(Duration::from_secs(20), in_flight.acquire_many(512)).await;
    assert!(
        drained.is_ok(),
        "requests still unanswered 20 s after the load stopped"
    );
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());

    // The table: per minute and kind of request, the count of each outcome and p50/p99 of
    // the answered ones.
    let mut csv =
        String::from("minute,op,requests,ok,unavailable_503,no_answer,other,p50_ms,p99_ms\n");
    let mut table = String::from("| minute | op | requests | ok | 503 | no answer | other | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|\n");
    let minutes = outcomes.iter().map(|o| o.minute).max().unwrap_or(0);
    for minute in 0..=minutes {
        for op in [Op::Read, Op::Put, Op::Register] {
            let of: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.minute == minute && o.op == op && o.status != 1)
                .collect();
            let ok = of.iter().filter(|o| (200..300).contains(&o.status)).count();
            let unavailable = of.iter().filter(|o| o.status == 503).count();
            let none = of.iter().filter(|o| o.status == 0).count();
            let other = of.len() - ok - unavailable - none;
            let mut lat: Vec<Duration> = of
                .iter()
                .filter(|o| o.status != 0)
                .map(|o| o.latency)
                .collect();
            lat.sort();
            let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            csv.push_str(&format!(
                "{minute},{op:?},{},{ok},{unavailable},{none},{other},{:.2},{:.2}\n",
                of.len(),
                ms(p50),
                ms(p99)
            ));
            table.push_str(&format!(
                "| {minute} | {op:?} | {} | {ok} | {unavailable} | {none} | {other} | {:.1} | {:.1} |\n",
                of.len(),
                ms(p50),
                ms(p99)
            ));
        }
    }
    let dropped = outcomes.iter().filter(|o| o.status == 1).count();
    let summary = format!(
        "soak: {:?}, {} requests at {rate}/s, {kills} replica kills, {cuts} connection resets, {dropped} not sent (over 512 in flight)\n",
        total,
        outcomes.len()
    );
    println!("{summary}{table}");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(out.join("soak.csv"), &csv).unwrap();
    std::fs::write(out.join("soak.md"), format!("{summary}\n{table}")).unwrap();

    // Every answer was a success, a 503, or no answer (the replica killed under it): never
    // a 4xx or a 500.
    let wrong: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status > 1 && !(200..300).contains(&o.status) && o.status != 503)
        .map(|o| format!("{:?} {} {}", o.op, o.status, o.request_id))
        .take(20)
        .collect();
    assert!(wrong.is_empty(), "unexpected answers: {wrong:?}");

    // The audit trail against the answers.
    let lines = binary::cli_ok(replicas[0].dir.path(), &cli_env, &["audit", "list"]);
    let mut audited: HashMap<String, Value> = HashMap::new();
    for line in lines.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        if let Some(id) = r["request_id"]
            .as_str()
            .filter(|id| id.starts_with("soak-"))
        {
            assert!(
                audited.insert(id.to_owned(), r.clone()).is_none(),
                "two audit records for {id}"
            );
        }
    }
    let by_id: HashMap<&str, &Outcome> = outcomes
        .iter()
        .filter(|o| !o.request_id.is_empty())
        .map(|o| (o.request_id.as_str(), o))
        .collect();
    let mut acknowledged = 0;
    for o in outcomes
        .iter()
        .filter(|o| o.op != Op::Read && (200..300).contains(&o.status))
    {
        acknowledged += 1;
        assert!(
            audited.contains_key(&o.request_id),
            "acknowledged {:?} {} lost: no audit record",
            o.op,
            o.request_id
        );
    }
    for (id, record) in &audited {
        let o = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("audit record of a request never sent: {record}"));
        assert!(
            (200..300).contains(&o.status) || o.status == 503 || o.status == 0,
            "{id} answered {} but is audited",
            o.status
        );
    }
    // Each acknowledged registration's repository is there; and the setting of each
    // tenant is the last one audited.
    let check = replicas[0].addr.clone();
    for (i, t) in tenants.iter().enumerate() {
        let base = format!("http://{check}/v4/tenants/{}/repo-encryption", t.id);
        for o in outcomes
            .iter()
            .filter(|o| o.tenant == i && o.op == Op::Register && (200..300).contains(&o.status))
        {
            let r = http
                .get(format!("{base}/repositories/{}/data-key", o.detail))
                .header("X-Auth-Token", &service)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "repository {} lost", o.detail);
        }
        let shown: Value = http
            .get(format!("{base}/setting"))
            .header("X-Auth-Token", &t.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let last = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .rfind(|r| r["tenant_id"] == t.id.as_str() && r["action"] == "setting.update")
            .unwrap();
        assert_eq!(shown["cmk_key_id"], last["after"]["cmk_key_id"], "{}", t.id);
    }
    println!(
        "soak: {acknowledged} acknowledged writes, 0 lost; {} audit records, each matched to its request",
        audited.len()
    );
    assert!(kills >= 1 || total < kill_every, "no replica was killed");
}
