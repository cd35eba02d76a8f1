//! Rewrap: after the tenant chooses a new CMK, a job re-wraps the data keys of its
//! repositories under it (the same keys in clear), one transaction per repository, one job
//! per tenant at a time; driven through `App::router()` on SQLite, or on PostgreSQL when
//! `REPOCRYPT_TEST_DATABASE_URL` is set.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use common::*;
use repocrypt::clock::Clock;
use repocrypt::domain::{Actor, Identity, RepoId, RewrapCommit, RewrapState};

// =====================================================================================
// Helpers
// =====================================================================================

fn rewrap_path(tenant: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/rewrap")
}

fn job_path(tenant: &str, job_id: &str) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/rewrap/{job_id}")
}

fn data_key_path(tenant: &str, repo_id: i64) -> String {
    format!("/v4/tenants/{tenant}/repo-encryption/repositories/{repo_id}/data-key")
}

fn service_token(t: &TestApp) -> String {
    let now = t.clock.unix_seconds();
    let identity = Identity::service("node", now + TOKEN_TTL_SECS).unwrap();
    t.app.tokens.issue(&identity, now).unwrap()
}

async fn call(t: &TestApp, token: &str, method: Method, uri: &str, body: &str) -> Resp {
    t.send(
        method,
        uri,
        &[
            ("x-auth-token", token),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    )
    .await
}

/// Register repository `id` (encrypted: the tenant's default) as the service: its data key.
async fn register(t: &TestApp, tenant: &str, id: i64) -> String {
    let body =
        json!({"repo_id": id, "repo_name": format!("r{id}"), "full_path": format!("g/r{id}")});
    let r = call(
        t,
        &service_token(t),
        Method::POST,
        &format!("/v4/tenants/{tenant}/repo-encryption/repositories"),
        &body.to_string(),
    )
    .await;
    assert_eq!(r.0, StatusCode::CREATED, "register {id}: {}", r.2);
    r.2["data_key"].as_str().unwrap().to_owned()
}

/// The release of repository `id`: status and body.
async fn release(t: &TestApp, tenant: &str, id: i64) -> Resp {
    call(
        t,
        &service_token(t),
        Method::GET,
        &data_key_path(tenant, id),
        "",
    )
    .await
}

/// PUT the tenant's setting to KMS with `key_id`, default encryption on.
async fn use_key(t: &TestApp, tenant: &str, key_id: &str) {
    let r = t
        .put_setting(
            tenant,
            &t.admin(tenant),
            &json!({"encryption_type": "KMS", "cmk_key_id": key_id, "default_encryption_enabled": true}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
}

async fn post_rewrap(t: &TestApp, tenant: &str, token: &str) -> Resp {
    call(t, token, Method::POST, &rewrap_path(tenant), "").await
}

/// GET the job until it is no longer running (at most 20 s): its last answer.
async fn finished(t: &TestApp, tenant: &str, job_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(
            t,
            &t.member(tenant),
            Method::GET,
            &job_path(tenant, job_id),
            "",
        )
        .await;
        assert_eq!(r.0, StatusCode::OK, "{}", r.2);
        if r.2["state"] != "running" {
            return r.2;
        }
        assert!(Instant::now() < deadline, "still running: {}", r.2);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Each repository's CMK as the store keeps it.
async fn cmks(t: &TestApp, tenant: &str) -> BTreeMap<i64, Option<String>> {
    t.app
        .service
        .list_repositories(&tid(tenant))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.encrypted)
        .map(|r| (i64::from(r.fields.repo_id.get()), r.cmk_key_id))
        .collect()
}

/// `repocrypt_kms_calls_total{call, outcome}` as GET /metrics tells it.
async fn kms_calls(t: &TestApp, call: &str, outcome: &str) -> u64 {
    let (status, _, body) = t.send(Method::GET, "/metrics", &[], Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let prefix = format!("repocrypt_kms_calls_total{{call=\"{call}\",outcome=\"{outcome}\"}} ");
    body.as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .parse()
        .unwrap()
}

// =====================================================================================
// The story
// =====================================================================================

#[tokio::test]
async fn a_rewrap_moves_every_repository_to_the_new_key_with_its_original_data_key() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(60)).await;
    let a = t.configure_kms(TENANT_A).await.key_id;
    let mut keys = BTreeMap::new();
    for id in 1..=12 {
        keys.insert(id, register(&t, TENANT_A, id).await);
    }
    // Released once under A: the released-key cache holds them.
    for (id, key) in &keys {
        assert_eq!(release(&t, TENANT_A, *id).await.2["data_key"], key.as_str());
    }
    // One shredded, one not encrypted: neither is part of the work.
    let r = call(
        &t,
        &service_token(&t),
        Method::DELETE,
        &data_key_path(TENANT_A, 12),
        "",
    )
    .await;
    assert_eq!(r.0, StatusCode::NO_CONTENT, "{}", r.2);
    keys.remove(&12);
    let plain =
        json!({"repo_id": 99, "repo_name": "plain", "full_path": "g/plain", "encrypted": false});
    let r = call(
        &t,
        &service_token(&t),
        Method::POST,
        &format!("/v4/tenants/{TENANT_A}/repo-encryption/repositories"),
        &plain.to_string(),
    )
    .await;
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.2);
    let wrapped_before: BTreeMap<i64, Vec<u8>> = t
        .app
        .service
        .list_repositories(&tid(TENANT_A))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| Some((i64::from(r.fields.repo_id.get()), r.wrapped_key?)))
        .collect();

    let b = t.create_key(TENANT_A, "new-key").await.key_id;
    use_key(&t, TENANT_A, &b).await;
    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(
        keys_of(&r.2),
        [
            "created_at",
            "done",
            "failed",
            "finished_at",
            "job_id",
            "state",
            "target_key_id",
            "total",
            "updated_at"
        ]
    );
    assert_eq!(r.2["total"], 11, "{}", r.2);
    assert_eq!(r.2["target_key_id"], b.as_str());
    assert_eq!(r.2["failed"], json!([]));
    let job_id = r.2["job_id"].as_str().unwrap().to_owned();
    uuid::Uuid::parse_str(&job_id).expect("a UUID");

    let end = finished(&t, TENANT_A, &job_id).await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(end["done"], 11, "{end}");
    assert_eq!(end["failed"], json!([]), "{end}");
    assert!(end["finished_at"].is_string(), "{end}");

    // Every live repository is under B; the shredded one stays destroyed.
    let now = cmks(&t, TENANT_A).await;
    for id in 1..=11 {
        assert_eq!(now[&id].as_deref(), Some(b.as_str()), "repository {id}");
    }
    let shredded = t
        .app
        .service
        .show_repository(&tid(TENANT_A), RepoId::new(12).unwrap())
        .await
        .unwrap();
    assert!(shredded.wrapped_key.is_none() && shredded.shredded_at.is_some());
    assert_eq!(shredded.cmk_key_id.as_deref(), Some(a.as_str()));
    assert_eq!(kms_calls(&t, "re_encrypt", "ok").await, 11);

    // The old key can go: every release is the ORIGINAL key, now under B (a new unwrap:
    // the released-key cache knew the old wrapped form only).
    t.disable_key(TENANT_A, &a).await;
    let decrypts = kms_calls(&t, "decrypt", "ok").await;
    for (id, key) in &keys {
        let r = release(&t, TENANT_A, *id).await;
        assert_eq!(r.0, StatusCode::OK, "{}", r.2);
        assert_eq!(r.2["data_key"], key.as_str(), "repository {id}");
        assert_eq!(r.2["cmk_key_id"], b.as_str());
    }
    assert_eq!(kms_calls(&t, "decrypt", "ok").await, decrypts + 11);

    // One audit record per repository, with both key ids and no key material.
    let audit = t.audit_of(TENANT_A, "repository.rewrap").await;
    assert_eq!(audit.len(), 11);
    for rec in &audit {
        assert_eq!(rec.before.as_ref().unwrap()["cmk_key_id"], a.as_str());
        let after = rec.after.as_ref().unwrap();
        assert_eq!(after["cmk_key_id"], b.as_str());
        assert_eq!(after["rewrap_job_id"], job_id.as_str());
    }
    let text = serde_json::to_string(
        &t.audit(TENANT_A)
            .await
            .iter()
            .map(|r| (&r.before, &r.after))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    use base64::Engine;
    for (id, wrapped) in &wrapped_before {
        let b64 = base64::engine::general_purpose::STANDARD.encode(wrapped);
        assert!(
            !text.contains(&b64),
            "repository {id}'s wrapped key in the audit log"
        );
    }
    for key in keys.values() {
        assert!(!text.contains(key.as_str()), "a data key in the audit log");
    }
    // One repository_rewrapped event per repository, in the order they were done.
    let events: Vec<Value> = t
        .app
        .store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| serde_json::to_value(&e).unwrap())
        .filter(|e| e["type"] == "repository_rewrapped")
        .collect();
    assert_eq!(
        events
            .iter()
            .map(|e| e["repo_id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    for e in &events {
        assert_eq!(
            (
                e["tenant_id"].as_str(),
                e["old_key_id"].as_str(),
                e["new_key_id"].as_str()
            ),
            (Some(TENANT_A), Some(a.as_str()), Some(b.as_str())),
            "{e}"
        );
    }
    assert_eq!(t.audit_of(TENANT_A, "rewrap.start").await.len(), 1);
    let fin = t.audit_of(TENANT_A, "rewrap.finish").await;
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].after.as_ref().unwrap()["done"], 11);

    // Nothing left to do: a new job is finished at once.
    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(r.2["state"], "succeeded", "{}", r.2);
    assert_eq!(r.2["total"], 0);
    assert_ne!(r.2["job_id"], job_id.as_str());
}

#[tokio::test]
async fn repositories_under_a_disabled_old_key_are_listed_as_failed_with_their_reason() {
    let t = spawn_app().await;
    let a = t.configure_kms(TENANT_A).await.key_id;
    for id in 1..=3 {
        register(&t, TENANT_A, id).await;
    }
    let a2 = t.create_key(TENANT_A, "second").await.key_id;
    use_key(&t, TENANT_A, &a2).await;
    let mut keys = BTreeMap::new();
    for id in 4..=5 {
        keys.insert(id, register(&t, TENANT_A, id).await);
    }
    let b = t.create_key(TENANT_A, "third").await.key_id;
    use_key(&t, TENANT_A, &b).await;
    t.disable_key(TENANT_A, &a).await;

    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(r.2["total"], 5);
    let job_id = r.2["job_id"].as_str().unwrap().to_owned();
    let end = finished(&t, TENANT_A, &job_id).await;
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(end["done"], 2, "{end}");
    let failed = end["failed"].as_array().unwrap();
    assert_eq!(
        failed
            .iter()
            .map(|f| f["repo_id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3],
        "{end}"
    );
    for f in failed {
        let reason = f["reason"].as_str().unwrap();
        assert!(
            reason.contains(&a) && reason.contains("disabled"),
            "{reason}"
        );
        assert_eq!(keys_of(f), ["reason", "repo_id"]);
    }
    assert!(end.get("error").is_none(), "{end}");
    let now = cmks(&t, TENANT_A).await;
    for id in 1..=3 {
        assert_eq!(now[&id].as_deref(), Some(a.as_str()), "left under A: {id}");
    }
    for (id, key) in &keys {
        assert_eq!(now[id].as_deref(), Some(b.as_str()));
        assert_eq!(release(&t, TENANT_A, *id).await.2["data_key"], key.as_str());
    }
    assert_eq!(
        t.audit_of(TENANT_A, "repository.rewrap_failed").await.len(),
        3
    );

    // With A enabled again, a new job does the rest.
    t.enable_key(TENANT_A, &a).await;
    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    assert_eq!(r.2["total"], 3);
    let end = finished(&t, TENANT_A, r.2["job_id"].as_str().unwrap()).await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert!(cmks(&t, TENANT_A)
        .await
        .values()
        .all(|k| k.as_deref() == Some(b.as_str())));
}

#[tokio::test]
async fn one_job_at_a_time_a_second_post_answers_the_running_one() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    for id in 1..=4 {
        register(&t, TENANT_A, id).await;
    }
    let b = t.create_key(TENANT_A, "new-key").await.key_id;
    use_key(&t, TENANT_A, &b).await;
    // Started, not yet run by anyone (as `repocrypt repo rewrap` without --wait leaves it).
    let (job, created) = t
        .app
        .service
        .start_rewrap(&Actor::cli(), &tid(TENANT_A))
        .await
        .unwrap();
    assert!(created && job.state == RewrapState::Running);
    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["job_id"], job.job_id.as_str());
    // The second POST took it up: it runs to its end.
    let end = finished(&t, TENANT_A, &job.job_id).await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(end["done"], 4);
    assert_eq!(t.audit_of(TENANT_A, "rewrap.start").await.len(), 1);
}

#[tokio::test]
async fn members_read_jobs_admins_start_them_and_other_tenants_see_nothing() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    register(&t, TENANT_A, 1).await;
    let b = t.create_key(TENANT_A, "new-key").await.key_id;
    use_key(&t, TENANT_A, &b).await;
    let before = t.snapshot(TENANT_A).await;
    let r = post_rewrap(&t, TENANT_A, &t.member(TENANT_A)).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403001", &["admin"]);
    let r = post_rewrap(&t, TENANT_A, &service_token(&t)).await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403003", &[]);
    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_B)).await;
    assert_error(&r, StatusCode::FORBIDDEN, "CH.004403", &[]);
    assert_eq!(t.snapshot(TENANT_A).await, before, "refusals write nothing");

    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::ACCEPTED, "{}", r.2);
    let job_id = r.2["job_id"].as_str().unwrap().to_owned();
    finished(&t, TENANT_A, &job_id).await;
    let r = call(
        &t,
        &t.member(TENANT_A),
        Method::GET,
        &job_path(TENANT_A, &job_id),
        "",
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    assert_eq!(r.2["state"], "succeeded");
    // Another tenant: on A's path, refused; on its own, no such job.
    let r = call(
        &t,
        &t.admin(TENANT_B),
        Method::GET,
        &job_path(TENANT_A, &job_id),
        "",
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "CH.004403", &[]);
    let r = call(
        &t,
        &t.admin(TENANT_B),
        Method::GET,
        &job_path(TENANT_B, &job_id),
        "",
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "RC.404010", &[&job_id]);
    let r = call(
        &t,
        &service_token(&t),
        Method::GET,
        &job_path(TENANT_A, &job_id),
        "",
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "RC.403003", &[]);
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = call(
        &t,
        &t.member(TENANT_A),
        Method::GET,
        &job_path(TENANT_A, &unknown),
        "",
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "RC.404010", &[&unknown]);
    let r = call(
        &t,
        &t.member(TENANT_A),
        Method::GET,
        &job_path(TENANT_A, "not-a-job"),
        "",
    )
    .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "RC.400002",
        &["job_id", "UUID"],
    );
}

#[tokio::test]
async fn a_rewrap_is_refused_as_a_registration_is_and_writes_nothing() {
    let t = spawn_app().await;
    let admin = t.admin(TENANT_A);
    // No grant.
    let r = post_rewrap(&t, TENANT_A, &admin).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400007", &["kms-grant"]);
    // A grant, but the setting is not KMS.
    t.grant(TENANT_A).await;
    let r = post_rewrap(&t, TENANT_A, &admin).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400020", &["KMS"]);
    let r = t
        .put_setting(TENANT_A, &admin, &json!({"encryption_type": "normal"}))
        .await;
    assert_eq!(r.0, StatusCode::OK);
    let r = post_rewrap(&t, TENANT_A, &admin).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "RC.400020", &["KMS"]);
    // KMS with a key that is then disabled (the target must be enabled).
    let key = t.create_key(TENANT_A, "k").await.key_id;
    use_key(&t, TENANT_A, &key).await;
    t.disable_key(TENANT_A, &key).await;
    let before = t.snapshot(TENANT_A).await;
    let r = post_rewrap(&t, TENANT_A, &admin).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "RC.400009",
        &[&key, "disabled"],
    );
    assert_eq!(t.snapshot(TENANT_A).await, before);
    assert!(t.audit_of(TENANT_A, "rewrap.start").await.is_empty());
}

/// What stops a job that has not run yet.
enum Cut {
    DisableTarget,
    WithdrawGrant,
}

/// Three repositories under key A, key B chosen, a job started and not run; `cut` made;
/// then the POST takes the job up. The job must end failed, with nothing rewrapped: its
/// `error`, and B's id.
async fn a_job_stopped_by(cut: Cut) -> (String, String) {
    let t = spawn_app().await;
    let a = t.configure_kms(TENANT_A).await.key_id;
    for id in 1..=3 {
        register(&t, TENANT_A, id).await;
    }
    let b = t.create_key(TENANT_A, "new-key").await.key_id;
    use_key(&t, TENANT_A, &b).await;
    let (job, _) = t
        .app
        .service
        .start_rewrap(&Actor::cli(), &tid(TENANT_A))
        .await
        .unwrap();
    match cut {
        Cut::DisableTarget => {
            t.disable_key(TENANT_A, &b).await;
        }
        Cut::WithdrawGrant => {
            t.app
                .service
                .delete_grant(&Actor::cli(), &tid(TENANT_A))
                .await
                .unwrap();
        }
    }
    // The POST answers the job and takes it up: it cannot run.
    let r = post_rewrap(&t, TENANT_A, &t.admin(TENANT_A)).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
    let end = finished(&t, TENANT_A, &job.job_id).await;
    assert_eq!(end["state"], "failed", "{end}");
    assert_eq!(end["done"], 0);
    assert!(cmks(&t, TENANT_A)
        .await
        .values()
        .all(|k| k.as_deref() == Some(a.as_str())));
    (end["error"].as_str().unwrap().to_owned(), b)
}

#[tokio::test]
async fn a_target_key_disabled_while_the_job_waits_stops_it_with_the_reason() {
    let (error, b) = a_job_stopped_by(Cut::DisableTarget).await;
    assert!(error.contains(&b) && error.contains("disabled"), "{error}");
}

#[tokio::test]
async fn a_grant_withdrawn_while_the_job_waits_stops_it_and_nothing_is_rewrapped() {
    let (error, _) = a_job_stopped_by(Cut::WithdrawGrant).await;
    assert!(error.contains("withdrawn"), "{error}");
}

/// The runner's transaction per repository: fenced by the lease, compare-and-set on the
/// repository; a resumed job does what is left, once.
#[tokio::test]
async fn each_repository_commits_alone_a_concurrent_shred_wins_and_a_lost_lease_writes_nothing() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    let mut keys = BTreeMap::new();
    for id in 1..=5 {
        keys.insert(id, register(&t, TENANT_A, id).await);
    }
    let b = t.create_key(TENANT_A, "new-key").await.key_id;
    use_key(&t, TENANT_A, &b).await;
    let s = &t.app.service;
    let store = &t.app.store;
    let tenant = tid(TENANT_A);
    let (job, _) = s.start_rewrap(&Actor::cli(), &tenant).await.unwrap();
    assert_eq!(job.total, 5);
    let lease = s.claim_rewrap(&job.job_id).await.unwrap().expect("free");
    assert!(
        s.claim_rewrap(&job.job_id).await.unwrap().is_none(),
        "one runner at a time"
    );
    // Repository 1, read by the runner, then shredded before its rewrap commits.
    let one = store
        .get_repository(&tenant, RepoId::new(1).unwrap())
        .await
        .unwrap()
        .unwrap();
    s.shred_repository(&Actor::cli(), &tenant, RepoId::new(1).unwrap())
        .await
        .unwrap();
    let committed = store
        .commit_rewrap(&job, &lease, &one, &[7; 61], &job.actor())
        .await
        .unwrap();
    assert_eq!(committed, RewrapCommit::Changed);
    let one = store
        .get_repository(&tenant, RepoId::new(1).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(one.wrapped_key.is_none(), "the shred is never undone");
    // Another lease's write is refused, and writes nothing.
    let two = store
        .get_repository(&tenant, RepoId::new(2).unwrap())
        .await
        .unwrap()
        .unwrap();
    let committed = store
        .commit_rewrap(&job, "not-the-lease", &two, &[7; 61], &job.actor())
        .await
        .unwrap();
    assert_eq!(committed, RewrapCommit::LeaseLost);
    assert_eq!(
        store
            .get_repository(&tenant, RepoId::new(2).unwrap())
            .await
            .unwrap()
            .unwrap(),
        two
    );
    // The runner does what is left: 2 to 5, each once.
    s.run_rewrap(&job, &lease).await.unwrap();
    let end = s.show_rewrap(&tenant, &job.job_id).await.unwrap();
    assert_eq!(end.state, RewrapState::Succeeded);
    assert_eq!(end.done, 4);
    assert_eq!(t.audit_of(TENANT_A, "repository.rewrap").await.len(), 4);
    for id in 2..=5 {
        let r = release(&t, TENANT_A, id).await;
        assert_eq!(r.2["data_key"], keys[&id].as_str());
        assert_eq!(r.2["cmk_key_id"], b.as_str());
    }
    // A finished job's lease cannot be taken again.
    assert!(s.claim_rewrap(&job.job_id).await.unwrap().is_none());
}

/// A runner that died leaves its lease; another takes the job over once it expires.
#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_job_resumes() {
    let t = spawn_app().await;
    t.configure_kms(TENANT_A).await;
    for id in 1..=3 {
        register(&t, TENANT_A, id).await;
    }
    let b = t.create_key(TENANT_A, "new-key").await.key_id;
    use_key(&t, TENANT_A, &b).await;
    let s = &t.app.service;
    let (job, _) = s.start_rewrap(&Actor::cli(), &tid(TENANT_A)).await.unwrap();
    let _dead = s.claim_rewrap(&job.job_id).await.unwrap().expect("free");
    s.resume_rewraps().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let now = s.show_rewrap(&tid(TENANT_A), &job.job_id).await.unwrap();
    assert_eq!((now.state, now.done), (RewrapState::Running, 0), "held");
    t.clock
        .advance(repocrypt::domain::rewrap::REWRAP_LEASE + Duration::from_millis(1));
    s.resume_rewraps().await.unwrap();
    let end = finished(&t, TENANT_A, &job.job_id).await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(end["done"], 3);
}
