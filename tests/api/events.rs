//! The change events (`GET /v4/repo-encryption/events`) in process, on SQLite, or on
//! PostgreSQL when `REPOCRYPT_TEST_DATABASE_URL` is set: each change once, in commit
//! order, resumable with `Last-Event-ID`, and applied to the service's own caches.

use crate::common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::*;
use repocrypt::clock::Clock;
use repocrypt::domain::{Identity, KeyState};

const EVENTS: &str = "/v4/repo-encryption/events";

fn service_token(t: &TestApp) -> String {
    let now = t.clock.unix_seconds();
    let identity = Identity::service("node", now + TOKEN_TTL_SECS).unwrap();
    t.app.tokens.issue(&identity, now).unwrap()
}

/// One Server-Sent Event as a client parses it.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// An open events stream.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    /// The next event (comments skipped), or `None` when none comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                // A comment, or the retry hint, is no event.
                if let Some((id, event, data)) = parse_sse_block(&block) {
                    return Some(Sse { id, event, data });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(bytes) = frame.data_ref() {
                        self.buffer.push_str(&String::from_utf8_lossy(bytes));
                    }
                }
                _ => return None,
            }
        }
    }

    /// Every event that comes until `wait` passes with none.
    async fn drain(&mut self, wait: Duration) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next(wait).await {
            out.push(e);
        }
        out
    }
}

/// Open the stream as `token`, resuming after `last` if given; the status and, on 200, the
/// stream once it said it is ready.
async fn open(
    t: &TestApp,
    token: &str,
    last: Option<&str>,
    query: &str,
) -> (StatusCode, Option<Stream>, Value) {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(format!("{EVENTS}{query}"))
        .header("X-Auth-Token", token);
    if let Some(last) = last {
        req = req.header("Last-Event-ID", last);
    }
    let response = t
        .router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    if status != StatusCode::OK {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        return (
            status,
            None,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        );
    }
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        response.headers()
    );
    let mut stream = Stream {
        body: response.into_body(),
        buffer: String::new(),
    };
    // The ready comment comes first.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stream.buffer.contains(": ready after") {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("ready comment");
        let frame = tokio::time::timeout(left, stream.body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(bytes) = frame.data_ref() {
            stream.buffer.push_str(&String::from_utf8_lossy(bytes));
        }
    }
    (status, Some(stream), Value::Null)
}

/// A tenant encrypting by default, with repositories `ids` registered; the key.
async fn tenant_with_repos(t: &TestApp, tenant: &str, ids: &[i64]) -> String {
    let key = t.configure_kms(tenant).await;
    let token = service_token(t);
    for id in ids {
        let body =
            json!({"repo_id": id, "repo_name": format!("r{id}"), "full_path": format!("g/r{id}")});
        let r = t
            .send(
                Method::POST,
                &format!("/v4/tenants/{tenant}/repo-encryption/repositories"),
                &[
                    ("X-Auth-Token", token.as_str()),
                    ("Content-Type", "application/json"),
                ],
                body.to_string(),
            )
            .await;
        assert_eq!(r.0, StatusCode::CREATED, "{}", r.2);
    }
    key.key_id
}

async fn shred(t: &TestApp, tenant: &str, id: i64) {
    let token = service_token(t);
    let r = t
        .send(
            Method::DELETE,
            &format!("/v4/tenants/{tenant}/repo-encryption/repositories/{id}/data-key"),
            &[("X-Auth-Token", token.as_str())],
            Body::empty(),
        )
        .await;
    assert_eq!(r.0, StatusCode::NO_CONTENT, "{}", r.2);
}

async fn release(t: &TestApp, tenant: &str, id: i64) -> Resp {
    let token = service_token(t);
    t.send(
        Method::GET,
        &format!("/v4/tenants/{tenant}/repo-encryption/repositories/{id}/data-key"),
        &[("X-Auth-Token", token.as_str())],
        Body::empty(),
    )
    .await
}

const QUIET: Duration = Duration::from_millis(600);

#[tokio::test]
async fn each_shred_is_streamed_once_in_order_and_a_reconnect_resumes_after_the_last_id() {
    let t = spawn_app().await;
    tenant_with_repos(&t, TENANT_A, &[1, 2, 3, 4]).await;
    let token = service_token(&t);
    let (status, stream, _) = open(&t, &token, None, "").await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.unwrap();
    shred(&t, TENANT_A, 2).await;
    shred(&t, TENANT_A, 1).await;
    shred(&t, TENANT_A, 1).await; // already shredded: no second event
    let got = stream.drain(QUIET).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].event, "data_key_shredded");
    assert_eq!(got[0].data["repo_id"], 2);
    assert_eq!(got[0].data["tenant_id"], TENANT_A);
    assert_eq!(got[0].data["type"], "data_key_shredded");
    assert_eq!(got[1].data["repo_id"], 1);
    let (first, second) = (got[0].id.unwrap(), got[1].id.unwrap());
    assert!(first < second, "{first} < {second}");
    assert_eq!(got[1].data["id"], second);
    drop(stream);

    // While the client is away: two more. Reconnecting after the first event it saw gives
    // the second, then the two it missed, each once.
    shred(&t, TENANT_A, 3).await;
    shred(&t, TENANT_A, 4).await;
    let (_, stream, _) = open(&t, &token, Some(&first.to_string()), "").await;
    let got = stream.unwrap().drain(QUIET).await;
    let repos: Vec<_> = got
        .iter()
        .map(|e| e.data["repo_id"].as_i64().unwrap())
        .collect();
    assert_eq!(repos, vec![1, 3, 4], "{got:?}");
    let ids: Vec<_> = got.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ids[0], second);
}

#[tokio::test]
async fn the_stream_is_for_service_principals_and_filters_by_tenant() {
    let t = spawn_app().await;
    tenant_with_repos(&t, TENANT_A, &[1]).await;
    tenant_with_repos(&t, TENANT_B, &[1]).await;
    // A tenant's admin is no storage node.
    let (status, _, body) = open(&t, &t.admin(TENANT_A), None, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error_code"], "RC.403002");
    // A bad Last-Event-ID names the header.
    let token = service_token(&t);
    for bad in ["-1", "x", "1.5"] {
        let (status, _, body) = open(&t, &token, Some(bad), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            body["error_msg"]
                .as_str()
                .unwrap()
                .contains("Last-Event-ID"),
            "{body}"
        );
    }
    let (_, stream, _) = open(&t, &token, None, &format!("?tenant_id={TENANT_B}")).await;
    let mut stream = stream.unwrap();
    shred(&t, TENANT_A, 1).await;
    shred(&t, TENANT_B, 1).await;
    let got = stream.drain(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].data["tenant_id"], TENANT_B);
}

#[tokio::test]
async fn a_key_state_change_seen_by_the_service_is_one_event_naming_the_repositories() {
    let t = spawn_app_with(|c| c.key_state_cache_ttl = Duration::from_secs(5)).await;
    let key = tenant_with_repos(&t, TENANT_A, &[7, 3]).await;
    let token = service_token(&t);
    let (_, stream, _) = open(&t, &token, None, "").await;
    let mut stream = stream.unwrap();
    assert_eq!(release(&t, TENANT_A, 7).await.0, StatusCode::OK);
    // Disabled in the KMS behind the service's back: the next look at the KMS sees it.
    t.disable_key(TENANT_A, &key).await;
    t.clock.advance(Duration::from_secs(6));
    let r = release(&t, TENANT_A, 7).await;
    assert_eq!(r.0, StatusCode::FORBIDDEN, "{}", r.2);
    let got = stream.drain(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event, "key_state_changed");
    assert_eq!(got[0].data["key_id"], key.as_str());
    assert_eq!(got[0].data["old_state"], 2);
    assert_eq!(got[0].data["new_state"], 3);
    assert_eq!(got[0].data["repositories"], json!([3, 7]));

    // Another replica that saw the same change raises nothing more; one that sees the key
    // enabled again raises that, once.
    let store = t.app.store.clone();
    let tenant = tid(TENANT_A);
    let again = store
        .observe_key_state(
            &tenant,
            &key,
            Some(Some(KeyState::Enabled)),
            Some(KeyState::Disabled),
        )
        .await
        .unwrap();
    assert_eq!(again, None);
    t.enable_key(TENANT_A, &key).await;
    let back = store
        .observe_key_state(
            &tenant,
            &key,
            Some(Some(KeyState::Disabled)),
            Some(KeyState::Enabled),
        )
        .await
        .unwrap();
    assert!(back.is_some());

    let twice = store
        .observe_key_state(
            &tenant,
            &key,
            Some(Some(KeyState::Disabled)),
            Some(KeyState::Enabled),
        )
        .await
        .unwrap();
    assert_eq!(twice, None);
    // A process that knew nothing of the key (cold) still raises a change from the state
    // the last event recorded; and nothing when it matches, or when nothing is recorded.
    let same = store
        .observe_key_state(&tenant, &key, None, Some(KeyState::Enabled))
        .await
        .unwrap();
    assert_eq!(same, None);
    let never = store
        .observe_key_state(&tenant, "no-such-key", None, Some(KeyState::Disabled))
        .await
        .unwrap();
    assert_eq!(never, None);
    let got = stream.drain(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].data["new_state"], 2);
    // The event reached this process's own key-state cache: releases work again at once,
    // without waiting for the TTL.
    let r = release(&t, TENANT_A, 7).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.2);
}

#[tokio::test]
async fn a_client_resuming_before_the_retention_window_is_told_to_start_afresh() {
    let t = spawn_app().await;
    tenant_with_repos(&t, TENANT_A, &[1, 2]).await;
    let token = service_token(&t);
    shred(&t, TENANT_A, 1).await;
    let (status, stream, body) = open(&t, &token, Some("0"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let got = stream.unwrap().drain(QUIET).await;
    let first = got[0].id.unwrap_or_else(|| panic!("{got:?}"));
    // Everything older than an hour from "now" is pruned: the clock moves two hours on.
    t.clock.advance(Duration::from_secs(7200));
    let pruned = t
        .app
        .store
        .prune_events(t.clock.now() - Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    shred(&t, TENANT_A, 2).await;
    let token = service_token(&t);
    // This process still has them in memory, and serves them: nothing is lost.
    let (_, stream, _) = open(&t, &token, Some(&(first - 1).to_string()), "").await;
    let got = stream.unwrap().drain(QUIET).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].id, Some(first));
    // A process started since (a restart, another replica) has only the table.
    let t = t.replica().await;
    let (_, stream, _) = open(&t, &token, Some(&(first - 1).to_string()), "").await;
    let got = stream.unwrap().drain(QUIET).await;
    assert_eq!(got[0].event, "reset", "{got:?}");
    assert_eq!(got[0].id, Some(first));
    assert_eq!(got[1].event, "data_key_shredded");
    assert_eq!(got[1].data["repo_id"], 2);
    assert_eq!(got.len(), 2, "{got:?}");
    // An id this database never gave is no better.
    let (_, stream, _) = open(&t, &token, Some("999999"), "").await;
    let got = stream.unwrap().drain(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event, "reset");
}

#[tokio::test]
async fn an_event_this_version_cannot_read_is_passed_over_not_a_wall() {
    let t = spawn_app().await;
    tenant_with_repos(&t, TENANT_A, &[1]).await;
    let token = service_token(&t);
    let (_, stream, _) = open(&t, &token, None, "").await;
    let mut stream = stream.unwrap();
    // A newer version's event, and a row that is not JSON at all, then a real change.
    let at = "2026-01-01T00:00:00.000Z";
    for body in [r#"{"type":"from_the_future","x":1}"#, "{not json"] {
        let n = t
            .exec_sql(&format!(
                "INSERT INTO events (tenant_id, kind, body, at) VALUES ('{TENANT_A}', 'x', '{body}', '{at}')"
            ))
            .await;
        assert_eq!(n, 1);
    }
    shred(&t, TENANT_A, 1).await;
    let got = stream.drain(QUIET).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event, "data_key_shredded");
    // A reconnect from before them reads them from the table: passed over there too.
    let first = got[0].id.unwrap();
    let t = t.replica().await;
    let (_, stream, _) = open(&t, &token, Some(&(first - 3).to_string()), "").await;
    let again = stream.unwrap().drain(QUIET).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].id, Some(first));
}
