//! `GET /v4/repo-encryption/events`: the change events (`domain::events`) as Server-Sent
//! Events, for storage nodes, from the id a reconnecting client names in `Last-Event-ID`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{ErrorBody, WebError};
use super::extract::Caller;
use super::handlers::ApiResult;
use super::AppState;
use crate::domain::events::{Backlog, Change, Event, EventFeed};
use crate::domain::{Error, TenantId};

/// How often an idle stream sends a comment, so proxies and clients know it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a stream waits before reading the events table again after a failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Query of the events stream.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this tenant's events (default: every tenant's).
    tenant_id: Option<String>,
}

/// Follow the changes that alter what a storage node may hold (platform service
/// principals only): `text/event-stream`, one event per change, in commit order.
#[utoipa::path(
    get,
    path = "/v4/repo-encryption/events",
    operation_id = "ListRepoEncryptionEvents",
    tag = "Tenant",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this event id (what the last event received carried); without it the stream starts with the next change."),
    ),
    responses(
        (status = 200, description = "A stream of Server-Sent Events: `id:` the event id, `event:` one of key_state_changed, grant_withdrawn, grant_restored, data_key_shredded, repository_rewrapped (or reset: the events after the id given are no longer kept, drop every data key held and resume from this id), `data:` the event as JSON", content_type = "text/event-stream", body = String),
        (status = 400, description = "Last-Event-ID is not a non-negative integer, or tenant_id is not a tenant id", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not a service principal", body = ErrorBody),
        (status = 429, description = "Too many requests from this credential: retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("X-Auth-Token" = []), ("SDK-HMAC-SHA256" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    if !caller.is_service() {
        return Err(Error::ServiceOnly.into());
    }
    let Query(query) = query.map_err(|e| WebError::InvalidQuery(e.body_text()))?;
    let tenant = query.tenant_id.map(TenantId::parse).transpose()?;
    let feed = state.events.clone();
    let after = match headers.get("last-event-id") {
        None => feed.latest(),
        Some(value) => last_event_id(value)?,
    };
    // Subscribed before the first read, so that nothing the follower reads meanwhile
    // goes unnoticed; the first read now, so that a backlog the database must give (older
    // than the events in memory) is a 503 when it is down, not an empty stream. A stream
    // from the latest event, or from one still in memory, begins without it.
    let mut changed = feed.subscribe();
    changed.borrow_and_update();
    let first = feed.after(after).await?;
    let stream = Stream {
        feed: feed.clone(),
        changed,
        after,
        tenant,
        pending: VecDeque::new(),
        first: Some(first),
    };
    let ready = SseEvent::default()
        .comment(format!("ready after {after}"))
        .retry(Duration::from_secs(1));
    let events = futures_util::stream::unfold(stream, Stream::next);
    let events = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(ready)]), events);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    // Proxies that buffer responses (nginx) pass this one on as it comes.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn last_event_id(value: &HeaderValue) -> Result<i64, Error> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            Error::invalid(
                "Last-Event-ID",
                "must be a non-negative integer: the id of the last event received",
            )
        })
}

/// One client's place in the feed.
struct Stream {
    feed: Arc<EventFeed>,
    changed: tokio::sync::watch::Receiver<i64>,
    after: i64,
    tenant: Option<TenantId>,
    pending: VecDeque<Event>,
    /// The backlog read before the response began.
    first: Option<Backlog>,
}

impl Stream {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if self.feed.is_closed() {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                let sse = to_sse(&event);
                return Some((Ok(sse), self));
            }
            let backlog = match self.first.take() {
                Some(backlog) => Ok(backlog),
                None => {
                    // Marked seen before the read: a change the read misses wakes the wait.
                    self.changed.borrow_and_update();
                    self.feed.after(self.after).await
                }
            };
            match backlog {
                Ok(Backlog::Events(events)) if events.is_empty() => {
                    // Caught up: wait for the follower to read more (the sender lives as
                    // long as the feed, which this stream holds).
                    if self.changed.changed().await.is_err() {
                        return None;
                    }
                }
                Ok(Backlog::Events(events)) => {
                    if let Some(last) = events.last() {
                        self.after = last.id;
                    }
                    let tenant = self.tenant.as_ref().map(TenantId::as_str);
                    self.pending.extend(events.into_iter().filter(|e| {
                        tenant.is_none_or(|t| t == e.tenant_id)
                            && !matches!(e.change, Change::Unknown)
                    }));
                }
                Ok(Backlog::Lost { resume_from }) => {
                    self.after = resume_from;
                    let reset = SseEvent::default()
                        .id(resume_from.to_string())
                        .event("reset")
                        .data(
                            serde_json::json!({
                                "reason": "the events after the id given are no longer kept: drop every data key held, and resume from this id",
                                "resume_from": resume_from,
                            })
                            .to_string(),
                        );
                    return Some((Ok(reset), self));
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e.internal_detail().unwrap_or("unknown"),
                        "events stream: cannot read the events table; retrying"
                    );
                    tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                }
            }
        }
    }
}

fn to_sse(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(event.id.to_string())
        .event(event.change.kind())
        .data(data)
}
