//! Fault injection: the real binary with a TCP proxy (`common::proxy`) between it and one
//! dependency (PostgreSQL, the AWS KMS on moto, Keystone), on SQLite and on PostgreSQL. For
//! each fault (latency, blackhole, reset, an answer cut mid-way) every operation must
//! answer within `BOUND` with the documented status: success under latency; under the
//! others 503 with the dependency's own code, or success where the README promises it
//! (a key state the KMS cannot be asked for; a token the IAM validated before). Then the
//! path passes again and every operation must succeed again within `RECOVERY`, without a
//! restart. Every write sent carries its own request id, and at the end the audit trail
//! must hold exactly one record for each acknowledged write, at most one for a write
//! answered 503 (whose commit may have happened), none for any other request; a
//! registered repository exists if and only if its record does; the setting is the last
//! one audited; and every audited request has its line in the request log.
//!
//! A table of dependency × database × fault × operation × answer × time is printed and
//! written to `$CARGO_TARGET_TMPDIR/faults-<dependency>-<database>.txt`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common;
use crate::common::binary::{self, Client, Server};
use crate::common::keystone::{Keystone, Scope};
use crate::common::moto::Moto;
use crate::common::proxy::{Fault, FaultProxy};

/// Every answer under a fault: the deadline of a dependency call (2 s) and slack for a
/// loaded machine.
const BOUND: Duration = Duration::from_secs(5);
/// From the fault's end to every operation succeeding again.
const RECOVERY: Duration = Duration::from_secs(5);

const FAULTS: [Fault; 4] = [
    Fault::Latency(Duration::from_millis(30)),
    Fault::Blackhole,
    Fault::Reset,
    Fault::Cut(9),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dependency {
    Postgres,
    Kms,
    Iam,
}

impl Dependency {
    fn name(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgresql",
            Dependency::Kms => "kms",
            Dependency::Iam => "iam",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Dependency::Postgres => "RC.503002",
            Dependency::Kms => "RC.503001",
            Dependency::Iam => "RC.503003",
        }
    }

    /// The operations and what each may answer while the dependency is faulty (other
    /// than slow).
    fn operations(self) -> Vec<(Kind, UnderFault)> {
        use Kind::*;
        use UnderFault::*;
        match self {
            // Everything reads or writes the database (a release reads its repository's
            // row first: nothing is cached on PostgreSQL).
            Dependency::Postgres => vec![
                (ShowSetting, Unavailable),
                (UpdateSetting, Unavailable),
                (ShowGrant, Unavailable),
                (CreateGrant, Unavailable),
                (ListCmks, Unavailable),
                (ListRepositories, Unavailable),
                (Register, Unavailable),
                (Release, Unavailable),
                (ShowTenantSetting, Unavailable),
                (ListCmkRepositories, Unavailable),
                (Shred, Unavailable),
            ],
            // GET setting answers with the last known key state (README, "When the KMS is
            // slow or down"); a PUT naming the key, a grant, a key list and a new data key
            // need the KMS; a release may come from the cache of unwrapped keys.
            Dependency::Kms => vec![
                (ShowSetting, Served),
                (UpdateSetting, Unavailable),
                (ShowGrant, Served),
                (CreateGrant, Unavailable),
                (ListCmks, Unavailable),
                (ListRepositories, Served),
                (Register, Unavailable),
                (Release, Either),
                (ShowTenantSetting, Served),
                (ListCmkRepositories, Either),
                (Shred, Served),
            ],
            // Tokens validated before are trusted for iam_cache_ttl (README, "Using an
            // external IAM"); a token never seen needs Keystone.
            Dependency::Iam => vec![
                (ShowSetting, Served),
                (ShowSettingNewToken, Unavailable),
                (UpdateSetting, Served),
                (ShowGrant, Served),
                (ListRepositories, Served),
                (Register, Served),
                (Release, Served),
                (ShowTenantSetting, Served),
                (ListCmkRepositories, Served),
                (Shred, Served),
            ],
        }
    }
}

/// What an operation may answer while its dependency is faulty (other than slow).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum UnderFault {
    /// 503 with the dependency's code.
    Unavailable,
    /// Success: it does not need the dependency, or is served from a cache the README
    /// promises.
    Served,
    /// Either (a cache that may or may not hold the answer).
    Either,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    ShowSetting,
    UpdateSetting,
    ShowGrant,
    CreateGrant,
    ListCmks,
    ListRepositories,
    Register,
    Release,
    /// GET setting with a token the IAM has not validated yet.
    ShowSettingNewToken,
    /// ShowProjectTenantSettings, the caller's own tenant.
    ShowTenantSetting,
    ListCmkRepositories,
    /// DELETE data-key of a repository registered for it in the set-up.
    Shred,
}

impl Kind {
    fn writes(self) -> bool {
        matches!(
            self,
            Kind::UpdateSetting | Kind::CreateGrant | Kind::Register
        )
    }
}

/// One request, ready to send.
struct Req {
    kind: Kind,
    id: String,
    method: Method,
    path: String,
    token: String,
    body: Option<Value>,
}

/// One answer.
struct Answer {
    kind: Kind,
    id: String,
    status: u16,
    code: String,
    took: Duration,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn text(&self) -> String {
        if self.code.is_empty() {
            self.status.to_string()
        } else {
            format!("{} {}", self.status, self.code)
        }
    }
}

async fn send(addr: String, req: Req) -> Answer {
    let mut headers = vec![
        ("X-Auth-Token".to_owned(), req.token),
        ("X-Request-Id".to_owned(), req.id.clone()),
    ];
    let body = req.body.map(|b| {
        headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        serde_json::to_vec(&b).unwrap()
    });
    let start = Instant::now();
    let client = Client::new(&addr);
    let sent = client.send(req.method, &req.path, &headers, body);
    let (status, code) = match tokio::time::timeout(Duration::from_secs(20), sent).await {
        Ok(reply) => {
            let json: Value = serde_json::from_str(&reply.text).unwrap_or(Value::Null);
            let code = json["error_code"].as_str().unwrap_or("").to_owned();
            (reply.status, code)
        }
        Err(_) => (0, "no answer within 20 s".to_owned()),
    };
    Answer {
        kind: req.kind,
        id: req.id,
        status,
        code,
        took: start.elapsed(),
    }
}

/// A server with one dependency behind the proxy, and what the checks need.
struct Case {
    dependency: Dependency,
    database: &'static str,
    proxy: FaultProxy,
    server: Server,
    /// The environment of admin commands on the server's data (straight to the
    /// dependencies, not through the proxy).
    cli_env: Vec<(&'static str, String)>,
    tenant: String,
    admin: String,
    service: String,
    key_ids: [String; 2],
    keystone: Option<Keystone>,
    /// Kept running as long as the case.
    _moto: Option<Moto>,
    seq: u64,
    next_repo: u64,
    /// Every write sent: request id → status.
    writes: HashMap<String, u16>,
    /// Every registration sent: request id → repository id.
    registrations: HashMap<String, u64>,
    /// Repositories registered in the set-up, one per shred to come.
    to_shred: Vec<u64>,
    /// Every shred sent: request id → repository id.
    shredded: HashMap<String, u64>,
    table: String,
}

impl Case {
    fn api(&self, rest: &str) -> String {
        format!("/v4/tenants/{}/repo-encryption/{rest}", self.tenant)
    }

    fn cli(&self, args: &[&str]) -> String {
        binary::cli_ok(self.server.dir.path(), &self.cli_env, args)
    }

    fn request(&mut self, kind: Kind, fresh: Option<&str>) -> Req {
        self.seq += 1;
        let id = format!(
            "fault-{}-{}-{}",
            self.dependency.name(),
            self.database,
            self.seq
        );
        let setting = common::setting_path(&self.tenant);
        let (method, path, token, body) = match kind {
            Kind::ShowSetting => (Method::GET, setting, self.admin.clone(), None),
            Kind::ShowSettingNewToken => (
                Method::GET,
                setting,
                fresh.expect("a token never validated").to_owned(),
                None,
            ),
            Kind::UpdateSetting => (
                Method::PUT,
                setting,
                self.admin.clone(),
                // Each PUT names one of the two keys in turn: the setting shows which
                // write was last.
                Some(json!({
                    "encryption_type": "KMS",
                    "cmk_key_id": self.key_ids[(self.seq % 2) as usize],
                    "default_encryption_enabled": true,
                })),
            ),
            Kind::ShowGrant => (Method::GET, self.api("kms-grant"), self.admin.clone(), None),
            Kind::CreateGrant => (
                Method::POST,
                self.api("kms-grant"),
                self.admin.clone(),
                None,
            ),
            Kind::ListCmks => (Method::GET, self.api("cmks"), self.admin.clone(), None),
            Kind::ListRepositories => (
                Method::GET,
                self.api("repositories"),
                self.admin.clone(),
                None,
            ),
            Kind::Register => {
                self.next_repo += 1;
                let repo = self.next_repo;
                self.registrations.insert(id.clone(), repo);
                let body = json!({
                    "repo_id": repo,
                    "repo_name": format!("r{repo}"),
                    "full_path": format!("team/r{repo}"),
                    "owner_name": "alice",
                });
                (
                    Method::POST,
                    self.api("repositories"),
                    self.service.clone(),
                    Some(body),
                )
            }
            Kind::Release => (
                Method::GET,
                self.api("repositories/1/data-key"),
                self.service.clone(),
                None,
            ),
            Kind::ShowTenantSetting => (
                Method::GET,
                "/v4/tenant/setting".to_owned(),
                self.admin.clone(),
                None,
            ),
            Kind::ListCmkRepositories => (
                Method::GET,
                self.api(&format!("cmks/{}/repositories", self.key_ids[0])),
                self.admin.clone(),
                None,
            ),
            Kind::Shred => {
                let repo = self.to_shred.pop().expect("a repository left to shred");
                self.shredded.insert(id.clone(), repo);
                let path = self.api(&format!("repositories/{repo}/data-key"));
                (Method::DELETE, path, self.service.clone(), None)
            }
        };
        Req {
            kind,
            id,
            method,
            path,
            token,
            body,
        }
    }

    /// Every operation once, side by side, each on a connection of its own.
    async fn round(&mut self, kinds: &[Kind]) -> Vec<Answer> {
        let fresh = match &self.keystone {
            Some(k) if kinds.contains(&Kind::ShowSettingNewToken) => {
                Some(k.token("bob", "tenant-a", Scope::Domain).await)
            }
            _ => None,
        };
        let reqs: Vec<Req> = kinds
            .iter()
            .map(|k| self.request(*k, fresh.as_deref()))
            .collect();
        let addr = self.server.addr.clone();
        let answers =
            futures_util::future::join_all(reqs.into_iter().map(|r| send(addr.clone(), r))).await;
        for a in &answers {
            if a.kind.writes() {
                self.writes.insert(a.id.clone(), a.status);
            }
        }
        answers
    }

    fn record(&mut self, fault: &str, answers: &[Answer]) {
        for a in answers {
            let line = format!(
                "{:<10} {:<9} {:<20} {:<20} {:<14} {:>6}\n",
                self.dependency.name(),
                self.database,
                fault,
                format!("{:?}", a.kind),
                a.text(),
                a.took.as_millis()
            );
            self.table.push_str(&line);
        }
    }

    /// One fault: every operation within `BOUND` with its documented answer; then the
    /// path passes and every operation succeeds again within `RECOVERY`.
    async fn inject(&mut self, fault: Fault) {
        let ops = self.dependency.operations();
        let kinds: Vec<Kind> = ops.iter().map(|(k, _)| *k).collect();
        self.proxy.set(fault);
        let answers = self.round(&kinds).await;
        self.record(&fault.name(), &answers);
        for (a, (_, under)) in answers.iter().zip(&ops) {
            let what = format!(
                "{} {} {}: {:?} answered {} in {:?}\n{}",
                self.dependency.name(),
                self.database,
                fault.name(),
                a.kind,
                a.text(),
                a.took,
                self.table
            );
            assert!(a.took <= BOUND, "too slow: {what}");
            let unavailable = a.status == 503 && a.code == self.dependency.code();
            let fine = match (fault, under) {
                (Fault::Latency(_) | Fault::Pass, _) => a.ok(),
                (_, UnderFault::Unavailable) => unavailable,
                (_, UnderFault::Served) => a.ok(),
                (_, UnderFault::Either) => a.ok() || unavailable,
            };
            assert!(fine, "wrong answer: {what}");
        }
        self.proxy.set(Fault::Pass);
        let healed = Instant::now();
        loop {
            let answers = self.round(&kinds).await;
            if answers.iter().all(Answer::ok) {
                let took = healed.elapsed();
                self.table.push_str(&format!(
                    "{:<10} {:<9} {:<20} {:<20} {:<14} {:>6}\n",
                    self.dependency.name(),
                    self.database,
                    format!("{} ended", fault.name()),
                    "every operation",
                    "ok again",
                    took.as_millis()
                ));
                break;
            }
            let failing: Vec<String> = answers
                .iter()
                .filter(|a| !a.ok())
                .map(|a| format!("{:?} {}", a.kind, a.text()))
                .collect();
            assert!(
                healed.elapsed() < RECOVERY,
                "{} {}: not recovered {:?} after {}: {failing:?}\n{}",
                self.dependency.name(),
                self.database,
                healed.elapsed(),
                fault.name(),
                self.server.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The audit trail against what was sent and answered; the request log against the
    /// audit trail.
    async fn check_audit(&mut self) {
        let lines = self.cli(&["audit", "list", "--tenant", &self.tenant.clone()]);
        let mut audited: HashMap<String, Vec<Value>> = HashMap::new();
        for line in lines.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            if let Some(id) = record["request_id"].as_str() {
                audited.entry(id.to_owned()).or_default().push(record);
            }
        }
        for (id, records) in &audited {
            let Some(status) = self.writes.get(id) else {
                continue; // the set-up's
            };
            assert!(
                (200..300).contains(status) || *status == 503,
                "{id} answered {status} but was audited: {records:?}"
            );
            assert_eq!(records.len(), 1, "{id}: {records:?}");
        }
        for (id, status) in &self.writes {
            if (200..300).contains(status) {
                assert!(
                    audited.contains_key(id),
                    "{id} answered {status} but has no audit record"
                );
            }
        }
        // A registration answered 503 may have been committed: then its repository exists
        // and so does its record; never one without the other.
        let http = Client::new(&self.server.addr);
        for (id, repo) in &self.registrations {
            let path = self.api(&format!("repositories/{repo}/data-key"));
            let (status, body) = http.call(Method::GET, &path, &self.service, None).await;
            assert!(status == 200 || status == 404, "{repo}: {status} {body}");
            let exists = status == 200;
            assert_eq!(
                exists,
                audited.contains_key(id),
                "repository {repo} ({id}, answered {:?}): exists {exists}, audited {}",
                self.writes.get(id),
                audited.contains_key(id)
            );
        }
        // A shred acknowledged is for ever: its repository answers 410; one answered 503
        // either happened (410, audited) or did not (200, not audited).
        for (id, repo) in &self.shredded {
            let path = self.api(&format!("repositories/{repo}/data-key"));
            let (status, body) = http.call(Method::GET, &path, &self.service, None).await;
            assert!(status == 200 || status == 410, "{repo}: {status} {body}");
            assert_eq!(
                status == 410,
                audited.contains_key(id),
                "shredded repository {repo} ({id}, answered {:?}) releases {status}",
                self.writes.get(id)
            );
        }
        // The setting is the last one audited.
        let last = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .rfind(|r| r["action"] == "setting.update")
            .expect("setting records");
        let (status, shown) = Client::new(&self.server.addr)
            .call(
                Method::GET,
                &common::setting_path(&self.tenant),
                &self.admin,
                None,
            )
            .await;
        assert_eq!(status / 100, 2, "{shown}");
        assert_eq!(
            shown["cmk_key_id"], last["after"]["cmk_key_id"],
            "shown {shown}, last audited {last}"
        );
        // Every audited request has its line in the request log.
        let log = self.server.log();
        for id in audited.keys().filter(|id| self.writes.contains_key(*id)) {
            let needle = format!("request_id={id} ");
            assert!(
                log.contains(&needle),
                "{id} is audited but not in the request log"
            );
        }
    }

    fn finish(&self) {
        let header = format!(
            "{:<10} {:<9} {:<20} {:<20} {:<14} {:>6}\n",
            "dependency", "database", "fault", "operation", "answer", "ms"
        );
        let table = format!("{header}{}", self.table);
        println!("{table}");
        let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "faults-{}-{}.txt",
            self.dependency.name(),
            self.database
        ));
        std::fs::write(file, &table).unwrap();
    }
}

/// Set up `dependency` behind a proxy, on `database`; `None` (with the reason printed)
/// when a part is missing and not required.
async fn start(dependency: Dependency, database: &'static str, test: &str) -> Option<Case> {
    let mut server_env: Vec<(&'static str, String)> = vec![];
    let mut cli_env: Vec<(&'static str, String)> = vec![];
    let mut hold_moto = None;
    let mut keystone = None;
    if database == "postgres" {
        let url = common::pg_url_or_skip(test)?;
        let db = common::fresh_postgres_database(&url).await;
        cli_env.push(("REPOCRYPT_DATABASE_URL", db.clone()));
        server_env.push(("REPOCRYPT_DATABASE_URL", db));
    }
    let target = match dependency {
        Dependency::Postgres => common::pg_hostport(&server_env[0].1),
        Dependency::Kms => {
            let moto = Moto::start(test)?;
            cli_env.extend(moto.env());
            server_env.extend(moto.env());
            let port = moto.port;
            hold_moto = Some(moto);
            format!("127.0.0.1:{port}")
        }
        Dependency::Iam => {
            let k = Keystone::start(test, 3600)?;
            server_env.extend(k.settings());
            let port = k.port;
            keystone = Some(k);
            format!("127.0.0.1:{port}")
        }
    };
    let proxy = FaultProxy::start(&target);
    for (name, value) in server_env.iter_mut() {
        if matches!(
            *name,
            "REPOCRYPT_DATABASE_URL" | "REPOCRYPT_KMS_ENDPOINT" | "REPOCRYPT_IAM_URL"
        ) && value.contains(&target)
        {
            *value = proxy.rewrite(value, &target);
        }
    }
    let env: Vec<(&str, &str)> = server_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env);
    if keystone.is_some() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.log().contains("logged in to Keystone") {
            assert!(Instant::now() < deadline, "no login:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (tenant, admin, service) = match &keystone {
        Some(k) => (
            k.id("TENANT_A_DOMAIN_ID").to_owned(),
            k.token("alice", "tenant-a", Scope::Domain).await,
            k.token("repocrypt", "Default", Scope::Project("service"))
                .await,
        ),
        None => {
            let issue = |args: &[&str]| binary::cli_ok(server.dir.path(), &cli_env, args);
            let tenant = "9f6a3c1e2b7d4e5f8a9b0c1d2e3f4a5b".to_owned();
            let admin = issue(&[
                "token", "issue", "--tenant", &tenant, "--user", "alice", "--role", "admin",
            ]);
            let service = issue(&["token", "issue", "--service", "storage-1"]);
            (tenant, admin.trim().to_owned(), service.trim().to_owned())
        }
    };
    let key = |alias: &str| -> String {
        let args = ["kms", "create-key", "--tenant", &tenant, "--alias", alias];
        let key: Value =
            serde_json::from_str(&binary::cli_ok(server.dir.path(), &cli_env, &args)).unwrap();
        key["key_id"].as_str().unwrap().to_owned()
    };
    let key_ids = [key("faults-a"), key("faults-b")];
    let mut case = Case {
        dependency,
        database,
        proxy,
        server,
        cli_env,
        tenant,
        admin,
        service,
        key_ids,
        keystone,
        _moto: hold_moto,
        seq: 0,
        next_repo: 0,
        writes: HashMap::new(),
        registrations: HashMap::new(),
        to_shred: Vec::new(),
        shredded: HashMap::new(),
        table: String::new(),
    };
    // The set-up, through the API: a grant, a setting, repository 1; then one round of
    // every operation, which must all succeed (and warm the caches the README promises).
    for kind in [Kind::CreateGrant, Kind::UpdateSetting, Kind::Register] {
        let answers = case.round(&[kind]).await;
        assert!(
            answers[0].ok(),
            "set-up {kind:?}: {}\n{}",
            answers[0].text(),
            case.server.log()
        );
    }
    // Repositories to shred, one per round to come (a fault's round and its recovery's).
    for _ in 0..3 {
        for a in case.round(&[Kind::Register; 50]).await {
            assert!(a.ok(), "set-up registration: {}", a.text());
            let repo = case.registrations.remove(&a.id).unwrap();
            case.to_shred.push(repo);
        }
    }
    let kinds: Vec<Kind> = dependency.operations().iter().map(|(k, _)| *k).collect();
    let answers = case.round(&kinds).await;
    case.record("pass", &answers);
    for a in &answers {
        assert!(
            a.ok(),
            "{:?} while passing: {}\n{}",
            a.kind,
            a.text(),
            case.server.log()
        );
    }
    Some(case)
}

/// One case at a time: the bounds are measured by the client, on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(dependency: Dependency, database: &'static str, test: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(mut case) = start(dependency, database, test).await else {
        return;
    };
    for fault in FAULTS {
        case.inject(fault).await;
    }
    case.check_audit().await;
    case.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_postgresql() {
    run(Dependency::Postgres, "postgres", "faults_of_postgresql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_the_kms_on_sqlite() {
    run(Dependency::Kms, "sqlite", "faults_of_the_kms_on_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_the_kms_on_postgresql() {
    run(
        Dependency::Kms,
        "postgres",
        "faults_of_the_kms_on_postgresql",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_the_iam_on_sqlite() {
    run(Dependency::Iam, "sqlite", "faults_of_the_iam_on_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_the_iam_on_postgresql() {
    run(
        Dependency::Iam,
        "postgres",
        "faults_of_the_iam_on_postgresql",
    )
    .await;
}
