//! The storage node's side of the change events: follow `GET /v4/repo-encryption/events`
//! and say when the data key in hand is revoked, so it is dropped at once rather than at
//! the end of its `cache_seconds`.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;

use super::{sanitize, ClientError, KeyBrokerClient};

/// How long opening the stream (connect, request, the server's `ready` comment) may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest event read (an event naming many repositories is large, but not this large).
const MAX_EVENT: usize = 4 * 1024 * 1024;

/// What revoked the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The event's name (`key_state_changed`, `grant_withdrawn`, `data_key_shredded`, or
    /// `reset`: events were lost, so nothing held can be trusted).
    pub event: String,
    /// The event's id.
    pub id: Option<i64>,
    /// What it says, for a person.
    pub detail: String,
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "event {id} ({}): {}", self.event, self.detail),
            None => write!(f, "{}: {}", self.event, self.detail),
        }
    }
}

/// An open events stream.
pub struct EventStream {
    body: Incoming,
    buffer: Vec<u8>,
    driver: tokio::task::JoinHandle<()>,
    /// The id the server said the stream starts after.
    pub after: i64,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One event of the stream.
#[derive(Debug, Default)]
struct Raw {
    id: Option<i64>,
    event: String,
    data: String,
    comment: String,
}

impl KeyBrokerClient {
    /// Open the events stream (service principals only) and wait for the server to say it
    /// is following: every change committed after this returns is delivered.
    pub async fn open_events(&self) -> Result<EventStream, ClientError> {
        let open = async {
            let path = format!("{}/v4/repo-encryption/events", self.base_path);
            let request = self.request(&path, "text/event-stream")?;
            let io = self.connect().await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            let status = response.status();
            let mut stream = EventStream {
                body: response.into_body(),
                buffer: Vec::new(),
                driver,
                after: 0,
            };
            if status != StatusCode::OK {
                let body = stream.rest().await;
                return Err(super::interpret_refusal(status, &body, "the events stream"));
            }
            loop {
                let raw = stream.next_raw().await?;
                if let Some(after) = raw.comment.strip_prefix("ready after ") {
                    stream.after = after.trim().parse().unwrap_or(0);
                    return Ok(stream);
                }
            }
        };
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                after: OPEN_TIMEOUT,
            })?
    }
}

impl EventStream {
    /// What is left of a refusal's body (bounded).
    async fn rest(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(Ok(frame)) = self.body.frame().await {
            if let Some(data) = frame.data_ref() {
                out.extend_from_slice(data);
                if out.len() > super::MAX_BODY {
                    break;
                }
            }
        }
        out
    }

    async fn next_raw(&mut self) -> Result<Raw, ClientError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let mut raw = Raw::default();
                for line in String::from_utf8_lossy(&block).lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "" => raw.comment.push_str(value),
                        "id" => raw.id = value.parse().ok(),
                        "event" => raw.event = value.to_owned(),
                        "data" => raw.data.push_str(value),
                        _ => {}
                    }
                }
                return Ok(raw);
            }
            if self.buffer.len() > MAX_EVENT {
                return Err(ClientError::BadResponse("an event over 4 MiB".into()));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ClientError::BadResponse(format!(
                        "the events stream broke: {e}"
                    )))
                }
                None => {
                    return Err(ClientError::BadResponse(
                        "the key broker closed the events stream".into(),
                    ))
                }
            }
        }
    }

    /// Wait for the first event that revokes the data key of repository `repo_id` of
    /// `tenant`, wrapped by `cmk_key_id`: its CMK leaving the enabled state (or the KMS),
    /// the tenant's grant withdrawn, the key shredded, or events lost. A broken stream is
    /// an error: the caller cannot know what it missed.
    pub async fn revocation(
        &mut self,
        tenant: &str,
        repo_id: u32,
        cmk_key_id: &str,
    ) -> Result<Revocation, ClientError> {
        loop {
            let raw = self.next_raw().await?;
            if raw.event.is_empty() {
                continue;
            }
            if raw.event == "reset" {
                return Ok(Revocation {
                    event: raw.event,
                    id: raw.id,
                    detail: "the key broker no longer has the events since this stream began"
                        .into(),
                });
            }
            let Ok(data) = serde_json::from_str::<serde_json::Value>(&raw.data) else {
                continue;
            };
            if data["tenant_id"].as_str() != Some(tenant) {
                continue;
            }
            let revoked = match raw.event.as_str() {
                "grant_withdrawn" => Some("the tenant withdrew its KMS grant".to_owned()),
                "data_key_shredded" if data["repo_id"].as_u64() == Some(u64::from(repo_id)) => {
                    Some("the repository's data key was destroyed".into())
                }
                "key_state_changed"
                    if data["key_id"].as_str() == Some(cmk_key_id)
                        && data["new_state"].as_u64() != Some(2) =>
                {
                    Some(match data["new_state"].as_u64() {
                        Some(state) => format!(
                            "its CMK {} is now in state {state}",
                            sanitize(cmk_key_id, 300)
                        ),
                        None => format!("its CMK {} is gone", sanitize(cmk_key_id, 300)),
                    })
                }
                _ => None,
            };
            if let Some(detail) = revoked {
                return Ok(Revocation {
                    event: raw.event,
                    id: raw.id,
                    detail,
                });
            }
        }
    }
}
