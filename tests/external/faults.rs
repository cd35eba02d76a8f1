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

/// How long each fault lasts at least.
const HOLD: Duration = Duration::from_secs(3);

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
                (CreateRewrap, Unavailable),
                (ShowRewrap, Unavailable),
                // A new stream from the latest event begins from memory; its events come
                // once the database answers again (the open stream's check, at the end).
                (Events, Served),
            ],
            // GET setting answers with the last known key state (README, "When the KMS is
            // slow or down"); a PUT naming the key, a grant, a key list and a new data key
            // need the KMS; a release may come from the cache of unwrapped keys; a rewrap
            // asks the KMS for its target key, unless the tenant's job is running already
            // (then that job is answered).
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
                (CreateRewrap, Either),
                (ShowRewrap, Served),
                (Events, Served),
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
                (CreateRewrap, Served),
                (ShowRewrap, Served),
                (Events, Served),
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
    /// POST rewrap: 202 a new job, or 200 the job already running.
    CreateRewrap,
    /// GET rewrap/{job_id} of the latest job.
    ShowRewrap,
    /// A new events stream (its status; the stream is then closed).
    Events,
}

impl Kind {
    fn writes(self) -> bool {
        matches!(
            self,
            Kind::UpdateSetting
                | Kind::CreateGrant
                | Kind::Register
                | Kind::Shred
                | Kind::CreateRewrap
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
    /// The JSON body (`Null` for an events stream, which is not read).
    body: Value,
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
    let mut builder = reqwest::Client::new()
        .request(req.method, format!("http://{addr}{}", req.path))
        .header("X-Auth-Token", req.token)
        .header("X-Request-Id", req.id.clone());
    if let Some(b) = req.body {
        builder = builder
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&b).unwrap());
    }
    let start = Instant::now();
    let stream = req.kind == Kind::Events;
    let sent = async move {
        let resp = builder.send().await.expect("request");
        let status = resp.status().as_u16();
        // A stream that began is not read: its status is the answer.
        if stream && status == 200 {
            return (status, Value::Null);
        }
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    };
    let (status, code, body) = match tokio::time::timeout(Duration::from_secs(20), sent).await {
        Ok((status, json)) => {
            let code = json["error_code"].as_str().unwrap_or("").to_owned();
            (status, code, json)
        }
        Err(_) => (0, "no answer within 20 s".to_owned(), Value::Null),
    };
    Answer {
        kind: req.kind,
        id: req.id,
        status,
        code,
        took: start.elapsed(),
        body,
    }
}

/// A storage node following the tenant's events stream through every fault, as
/// EventSource does: on an end or an error it reconnects (every 200 ms until it is
/// answered) with `Last-Event-ID`.
struct Follower {
    seen: std::sync::Arc<std::sync::Mutex<Followed>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Followed {
    /// Every event received, in order.
    events: Vec<Value>,
    /// Streams that began.
    streams: u64,
    /// Streams that ended without the chunked encoding's end (an error mid-stream).
    unclean: u64,
}

impl Follower {
    async fn start(addr: &str, tenant: &str, token: &str) -> Follower {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Followed::default()));
        let url = format!("http://{addr}/v4/repo-encryption/events?tenant_id={tenant}");
        let (token, into) = (token.to_owned(), seen.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut last: Option<String> = None;
            loop {
                let mut req = http.get(&url).header("X-Auth-Token", &token);
                if let Some(id) = &last {
                    req = req.header("Last-Event-ID", id);
                }
                let mut resp = match req.send().await {
                    Ok(r) if r.status() == 200 => r,
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                into.lock().unwrap().streams += 1;
                let mut buf = String::new();
                loop {
                    match resp.chunk().await {
                        Ok(Some(bytes)) => {
                            buf.push_str(std::str::from_utf8(&bytes).expect("UTF-8 events"));
                            while let Some(end) = buf.find("\n\n") {
                                let block: String = buf.drain(..end + 2).collect();
                                for line in block.lines() {
                                    if let Some(data) = line.strip_prefix("data: ") {
                                        let event: Value = serde_json::from_str(data).unwrap();
                                        last = Some(event["id"].to_string());
                                        into.lock().unwrap().events.push(event);
                                    }
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            into.lock().unwrap().unclean += 1;
                            break;
                        }
                    }
                }
            }
        });
        let follower = Follower { seen, task };
        let deadline = Instant::now() + Duration::from_secs(10);
        while follower.seen.lock().unwrap().streams == 0 {
            assert!(Instant::now() < deadline, "the events stream never began");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        follower
    }

    /// The events received of type `kind`: their `field`.
    fn of(&self, kind: &str, field: &str) -> Vec<i64> {
        let seen = self.seen.lock().unwrap();
        seen.events
            .iter()
            .filter(|e| e["type"] == kind)
            .map(|e| e[field].as_i64().unwrap())
            .collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
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
    /// PUTs of the setting sent (each names the other key than the last).
    puts: u64,
    /// Every rewrap job answered, first seen first.
    jobs: Vec<String>,
    /// Follows the events stream from the end of the set-up.
    follower: Option<Follower>,
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
                // Each PUT names the other key than the last: the setting shows which
                // write was last, and a rewrap has work.
                {
                    self.puts += 1;
                    Some(json!({
                        "encryption_type": "KMS",
                        "cmk_key_id": self.key_ids[(self.puts % 2) as usize],
                        "default_encryption_enabled": true,
                    }))
                },
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
            Kind::CreateRewrap => (Method::POST, self.api("rewrap"), self.admin.clone(), None),
            Kind::ShowRewrap => {
                let job = self.jobs.last().expect("a job started in the set-up");
                (
                    Method::GET,
                    self.api(&format!("rewrap/{job}")),
                    self.admin.clone(),
                    None,
                )
            }
            Kind::Events => (
                Method::GET,
                "/v4/repo-encryption/events".to_owned(),
                self.service.clone(),
                None,
            ),
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
            if a.kind == Kind::CreateRewrap && a.ok() {
                let job = a.body["job_id"].as_str().expect("a job id").to_owned();
                if !self.jobs.contains(&job) {
                    self.jobs.push(job);
                }
                if a.status == 200 {
                    continue; // the running job answered: nothing was written
                }
            }
            if a.kind.writes() {
                self.writes.insert(a.id.clone(), a.status);
            }
        }
        answers
    }

    fn record(&mut self, fault: &str, answers: &[Answer]) {
        for a in answers {
            let (kind, ms) = (format!("{:?}", a.kind), a.took.as_millis().to_string());
            self.row(fault, &kind, &a.text(), &ms);
        }
    }

    /// One line of the table, for this case.
    fn row(&mut self, fault: &str, operation: &str, answer: &str, last: &str) {
        let (dependency, database) = (self.dependency.name(), self.database);
        let line = row([dependency, database, fault, operation, answer, last]);
        self.table.push_str(&line);
    }

    /// One fault: every operation within `BOUND` with its documented answer; then the
    /// path passes and every operation succeeds again within `RECOVERY`.
    async fn inject(&mut self, fault: Fault) {
        let ops = self.dependency.operations();
        let kinds: Vec<Kind> = ops.iter().map(|(k, _)| *k).collect();
        // A rewrap of every repository runs into the fault: the other key, then the job.
        for kind in [Kind::UpdateSetting, Kind::CreateRewrap] {
            let a = self.round(&[kind]).await;
            assert!(
                a[0].ok(),
                "before {}: {kind:?} {}",
                fault.name(),
                a[0].text()
            );
        }
        self.proxy.set(fault);
        let began = Instant::now();
        let answers = self.round(&kinds).await;
        self.record(&fault.name(), &answers);
        // Long enough for the running rewrap to meet the fault too (a reset fails a KMS
        // call at once, its retries included).
        tokio::time::sleep(HOLD.saturating_sub(began.elapsed())).await;
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
                let took = healed.elapsed().as_millis().to_string();
                let ended = format!("{} ended", fault.name());
                self.row(&ended, "every operation", "ok again", &took);
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
        self.check_jobs().await;
        let lines = self.cli(&["audit", "list", "--tenant", &self.tenant.clone()]);
        let mut audited: HashMap<String, Vec<Value>> = HashMap::new();
        // What the rewrap runners wrote (under the request id of the job's POST).
        let mut rewrapped = 0;
        for line in lines.lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            match record["action"].as_str().unwrap() {
                "repository.rewrap" => rewrapped += 1,
                "repository.rewrap_failed" => panic!("a repository failed its rewrap: {record}"),
                "rewrap.finish" => {}
                _ => {
                    if let Some(id) = record["request_id"].as_str() {
                        audited.entry(id.to_owned()).or_default().push(record);
                    }
                }
            }
        }
        for (id, records) in &audited {
            let Some(status) = self.writes.get(id) else {
                // Only writes are audited; a rewrap POST that joined a running job is not
                // one. (Records without our prefix are the set-up's commands.)
                assert!(
                    !id.starts_with("fault-"),
                    "{id} is not a write but was audited: {records:?}"
                );
                continue;
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
        self.check_events(rewrapped).await;
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

    /// Every rewrap job ends, and succeeds: an outage of a dependency stops a job (to be
    /// resumed), it never fails a repository.
    async fn check_jobs(&mut self) {
        let http = Client::new(&self.server.addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        for job in self.jobs.clone() {
            let path = self.api(&format!("rewrap/{job}"));
            loop {
                let (status, shown) = http.call(Method::GET, &path, &self.admin, None).await;
                assert_eq!(status, 200, "{shown}");
                if shown["state"] != "running" {
                    assert_eq!(shown["state"], "succeeded", "{shown}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "still running: {shown}\n{}",
                    self.server.log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let succeeded = format!("{} succeeded", self.jobs.len());
        self.row("after every fault", "rewrap jobs", &succeeded, "");
    }

    /// The events stream followed through every fault: each change once, in order, none
    /// missing: a shredded repository's event for each repository that answers 410, a
    /// rewrapped repository's for each `repository.rewrap` record.
    async fn check_events(&mut self, rewrapped: usize) {
        let follower = self.follower.as_ref().expect("followed");
        let shredded: std::collections::BTreeSet<i64> = {
            let http = Client::new(&self.server.addr);
            let mut gone = std::collections::BTreeSet::new();
            for repo in self.shredded.values() {
                let path = self.api(&format!("repositories/{repo}/data-key"));
                let (status, _) = http.call(Method::GET, &path, &self.service, None).await;
                if status == 410 {
                    gone.insert(*repo as i64);
                }
            }
            gone
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let heard = follower.of("data_key_shredded", "repo_id");
            let moved = follower.of("repository_rewrapped", "repo_id");
            if (heard.len() >= shredded.len() && moved.len() >= rewrapped)
                || Instant::now() > deadline
            {
                let unique: std::collections::BTreeSet<i64> = heard.iter().copied().collect();
                assert_eq!(unique.len(), heard.len(), "a shred heard twice: {heard:?}");
                assert_eq!(unique, shredded, "shreds heard / repositories shredded");
                assert_eq!(moved.len(), rewrapped, "rewraps heard / audited");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seen = follower.seen.lock().unwrap();
        let ids: Vec<i64> = seen
            .events
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "event ids out of order: {ids:?}"
        );
        assert_eq!(seen.unclean, 0, "an events stream broke off mid-way");
        let (events, streams) = (
            format!("{} events", seen.events.len()),
            format!("{} str", seen.streams),
        );
        drop(seen);
        self.row("after every fault", "open events stream", &events, &streams);
    }

    fn finish(&self) {
        let header = row([
            "dependency",
            "database",
            "fault",
            "operation",
            "answer",
            "ms",
        ]);
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

/// One line of the table.
fn row([dependency, database, fault, operation, answer, last]: [&str; 6]) -> String {
    format!("{dependency:<10} {database:<9} {fault:<20} {operation:<20} {answer:<14} {last:>6}\n")
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
        puts: 0,
        jobs: Vec::new(),
        follower: None,
        table: String::new(),
    };
    // The set-up, through the API: a grant, a setting, repository 1; then one round of
    // every operation, which must all succeed (and warm the caches the README promises).
    for kind in [
        Kind::CreateGrant,
        Kind::UpdateSetting,
        Kind::Register,
        Kind::CreateRewrap,
    ] {
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
    // From here on every shred and rewrap must reach the stream.
    let follower = Follower::start(&case.server.addr, &case.tenant, &case.service).await;
    case.follower = Some(follower);
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
