//! Tokens from an external IAM: OpenStack Keystone v3, whose token API Huawei Cloud IAM
//! follows (`iam = "keystone"`).
//!
//! ```text
//! POST {iam_url}/auth/tokens?nocatalog            the service's own token (password, scoped)
//!   201, X-Subject-Token: <token>, {"token": {"expires_at": ...}}
//! GET  {iam_url}/auth/tokens?nocatalog&allow_expired=1
//!   X-Auth-Token: <the service's token>, X-Subject-Token: <the caller's token>
//!   200 {"token": {user, roles, project{domain} | domain, expires_at}}  valid (or expired:
//!       `allow_expired` lets Keystone say so instead of 404, for `DEV.00000003`)
//!   404  unknown, revoked, or expired beyond Keystone's allow_expired_window
//!   401  the service's own token was refused: renewed once, then 503
//! ```
//!
//! What a caller is: the tenant is the domain of the token's scope (`token.domain.id`, or
//! `token.project.domain.id`); the role is the first of admin, member, service whose list
//! (`iam_admin_roles`, `iam_member_roles`, `iam_service_roles`) holds one of the token's roles.
//! A service principal belongs to no tenant ([`Identity::PLATFORM`]).
//!
//! Verdicts are cached in memory ([`VerdictCache`]), keyed by the SHA-256 of the token (never
//! the token), for the shorter of `iam_cache_ttl` and the token's remaining life; refusals for
//! [`REFUSAL_TTL`] at most, so that garbage cannot flood Keystone. Concurrent validations of
//! one token make one call ([`InFlight`]). Every call to Keystone is bounded by
//! `iam_timeout` (2 s at most) and a validation, its service-token renewal included, by the
//! same: Keystone slow or down is a 503 `RC.503003` in that time, while tokens already in the
//! cache keep working until their entry expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::signature::{SignatureVerifier, SignedRequest};
use super::{trace_outcome, Authenticator};
use crate::clock::Clock;
use crate::domain::ports::CacheStats;
use crate::domain::{Error, Identity, Result, Role, TenantId};
use crate::home::Home;
use crate::metrics::{CallOutcome, IamCall, Metrics};
use crate::shards::Shards;

/// Longest a refusal (an unknown, revoked, expired or unscoped token, or one without a
/// mapped role) is remembered: a role granted in Keystone takes effect after it.
pub const REFUSAL_TTL: Duration = Duration::from_secs(5);
/// Most accepted tokens kept in memory (least recently used first out); about 300 bytes each.
pub const CACHE_CAPACITY: usize = 65_536;
/// Most refusals kept, apart, so that a stream of distinct garbage tokens cannot push the
/// accepted ones out.
pub const REFUSAL_CAPACITY: usize = 8_192;
/// Most calls to Keystone under way at once; more callers wait (within `iam_timeout`).
pub const MAX_CONCURRENT_CALLS: usize = 64;
/// Largest answer read from Keystone (a token without its catalog is 1-3 KB).
const MAX_ANSWER: usize = 1024 * 1024;
/// After a failed attempt to get the service's own token, callers are told it failed for
/// this long without another attempt (one log line, one call, a second at most).
const RENEW_BACKOFF: Duration = Duration::from_secs(1);

/// The settings of [`KeystoneAuth`], from `iam_*` in the configuration.
pub struct KeystoneSettings {
    /// The v3 endpoint, e.g. `http://127.0.0.1:5000/v3`.
    pub url: String,
    pub user: String,
    pub user_domain: String,
    /// A project of `user_domain` to scope the service's token to; else the domain itself.
    pub project: Option<String>,
    pub password: SecretString,
    pub admin_roles: Vec<String>,
    pub member_roles: Vec<String>,
    pub service_roles: Vec<String>,
    /// `0`: no cache (concurrent validations of one token still make one call).
    pub cache_ttl: Duration,
    pub timeout: Duration,
}

/// Validates `X-Auth-Token` with Keystone; AK/SK signatures with repocrypt's own
/// credentials, as in `local` mode (Keystone verifies no SDK-HMAC-SHA256 signature).
pub struct KeystoneAuth {
    http: reqwest::Client,
    /// Where `http`'s connections live (`crate::home`): each call to Keystone is polled
    /// within it.
    home: Home,
    /// `{url}/auth/tokens?nocatalog`
    issue_url: String,
    /// `{url}/auth/tokens?nocatalog&allow_expired=1`
    validate_url: String,
    settings: KeystoneSettings,
    service: ServiceTokens,
    cache: VerdictCache,
    refusals: VerdictCache,
    in_flight: InFlight,
    calls: tokio::sync::Semaphore,
    refusal_logged: Throttle,
    signatures: SignatureVerifier,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl KeystoneAuth {
    /// Send a request to Keystone, its connection opened within the home runtime.
    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        self.home.within(request.send()).await
    }

    pub fn new(
        settings: KeystoneSettings,
        signatures: SignatureVerifier,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let parsed = reqwest::Url::parse(&settings.url).map_err(|e| {
            Error::InvalidArgument(format!("iam_url `{}` is not a URL: {e}", settings.url))
        })?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.query().is_some()
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
        {
            return Err(Error::InvalidArgument(format!(
                "iam_url `{}` must be http:// or https://, without credentials, query or fragment",
                settings.url
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A redirect would carry X-Auth-Token, X-Subject-Token (and a login's password)
            // to wherever it points: never followed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.timeout)
            // Below the keep-alive of common WSGI servers (gunicorn: 2 s), so that a request
            // is not sent on a connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(1))
            .user_agent(concat!("repocrypt/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("iam_url: cannot build a client: {e}")))?;
        let base = settings.url.trim_end_matches('/');
        Ok(KeystoneAuth {
            http,
            home: Home::here(),
            issue_url: format!("{base}/auth/tokens?nocatalog"),
            validate_url: format!("{base}/auth/tokens?nocatalog&allow_expired=1"),
            settings,
            service: ServiceTokens::default(),
            cache: VerdictCache::new(CACHE_CAPACITY),
            refusals: VerdictCache::new(REFUSAL_CAPACITY),
            in_flight: InFlight::default(),
            calls: tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS),
            refusal_logged: Throttle::default(),
            signatures,
            clock,
            metrics,
        })
    }

    /// A token's verdict from Keystone, cached; at most `timeout` however many calls it
    /// takes (a renewal of the service's token and a retry).
    async fn validate(&self, token: &str, key: &Digest32) -> Verdict {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.settings.timeout, async {
            let _permit =
                self.calls.acquire().await.map_err(|_| {
                    Failure::Unavailable("the Keystone client is shutting down".into())
                })?;
            self.ask_keystone(token).await
        })
        .await;
        let verdict = outcome.unwrap_or_else(|_| {
            // The call under way was dropped before it could count itself.
            self.metrics.record_iam(
                IamCall::ValidateToken,
                CallOutcome::Unavailable,
                started.elapsed(),
            );
            Err(self.late())
        });
        if let Some(ttl) = self.cache_ttl(&verdict) {
            let cache = if verdict.is_ok() {
                &self.cache
            } else {
                &self.refusals
            };
            cache.put(*key, verdict.clone(), self.clock.monotonic() + ttl);
        }
        verdict
    }

    fn late(&self) -> Failure {
        Failure::Unavailable(format!(
            "Keystone did not answer within {}",
            humantime::format_duration(self.settings.timeout)
        ))
    }

    /// How long a verdict is cached: none for an unavailable IAM.
    fn cache_ttl(&self, verdict: &Verdict) -> Option<Duration> {
        let ttl = self.settings.cache_ttl;
        if ttl.is_zero() {
            return None;
        }
        match verdict {
            Ok(identity) => {
                let left = identity
                    .expires_at
                    .saturating_sub(self.clock.unix_seconds());
                Some(ttl.min(Duration::from_secs(left))).filter(|d| !d.is_zero())
            }
            Err(Failure::Refused(_)) => Some(ttl.min(REFUSAL_TTL)),
            Err(Failure::Unavailable(_)) => None,
        }
    }

    async fn ask_keystone(&self, token: &str) -> Verdict {
        let mut subject = reqwest::header::HeaderValue::from_str(token)
            .map_err(|_| Failure::Refused(Refusal::Malformed))?;
        subject.set_sensitive(true);
        let mut service = self.service_token(None).await?;
        for attempt in 0..2 {
            let started = Instant::now();
            let answer = self
                .send(
                    self.http
                        .get(&self.validate_url)
                        .header("x-auth-token", service.header.clone())
                        .header("x-subject-token", subject.clone()),
                )
                .await;
            let answer = match answer {
                Ok(response) => read_answer(response).await,
                Err(e) => Err(unreachable(&e)),
            };
            let (outcome, verdict) = match answer {
                Err(detail) => (CallOutcome::Unavailable, Err(Failure::Unavailable(detail))),
                Ok((200, body)) => match self.identity(&body) {
                    Ok(identity) => (CallOutcome::Ok, Ok(identity)),
                    Err(Failure::Refused(r)) => (CallOutcome::Refused, Err(Failure::Refused(r))),
                    Err(e) => (CallOutcome::Error, Err(e)),
                },
                Ok((404, _)) => (
                    CallOutcome::Refused,
                    Err(Failure::Refused(Refusal::Unknown)),
                ),
                // What a front end of Keystone says of a token it will not pass on (too
                // long for its header limit, say): the token's fault, not Keystone's.
                Ok((400 | 413 | 414 | 431, _)) => (
                    CallOutcome::Refused,
                    Err(Failure::Refused(Refusal::Malformed)),
                ),
                Ok((401, _)) if attempt == 0 && service.issued.elapsed() >= RENEW_BACKOFF => {
                    // The service's own token was refused (expired early, revoked): a new
                    // one, and once more.
                    self.metrics.record_iam(
                        IamCall::ValidateToken,
                        CallOutcome::Error,
                        started.elapsed(),
                    );
                    service = self.service_token(Some(&service)).await?;
                    continue;
                }
                Ok((status @ (401 | 403), _)) => {
                    // A setting to fix, not an event: said once every ten seconds at most
                    // (each request's own failure is in its access line).
                    if self.refusal_logged.allow(self.clock.unix_seconds()) {
                        tracing::error!(
                            user = %self.settings.user,
                            status,
                            "Keystone refuses to let the service's own token validate tokens (401: refused again just after a login; 403: not allowed): give iam_user the `service` role on iam_project (or on iam_user_domain when iam_project is not set)"
                        );
                    }
                    (
                        CallOutcome::Error,
                        Err(Failure::Unavailable(
                            "Keystone refused the service's own token for validating tokens".into(),
                        )),
                    )
                }
                Ok((status, _)) => (
                    CallOutcome::Unavailable,
                    Err(Failure::Unavailable(format!(
                        "Keystone answered a validation with status {status}"
                    ))),
                ),
            };
            self.metrics
                .record_iam(IamCall::ValidateToken, outcome, started.elapsed());
            return verdict;
        }
        Err(Failure::Unavailable(
            "Keystone refused the service's own token twice".into(),
        ))
    }

    /// The identity in a validated token, or why it is refused.
    fn identity(&self, body: &[u8]) -> Verdict {
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
            Failure::Unavailable(format!("Keystone's token is not the v3 JSON expected: {e}"))
        })?;
        let token = envelope.token;
        let expires_at = unix_seconds(&token.expires_at).ok_or_else(|| {
            Failure::Unavailable(format!(
                "Keystone's token has an unreadable expires_at `{}`",
                token.expires_at
            ))
        })?;
        if expires_at <= self.clock.unix_seconds() {
            return Err(Failure::Refused(Refusal::Expired));
        }
        let domain = match (&token.project, &token.domain) {
            (Some(project), _) => &project.domain.id,
            (None, Some(domain)) => &domain.id,
            (None, None) => return Err(Failure::Refused(Refusal::Unscoped)),
        };
        let has = |names: &[String]| token.roles.iter().any(|r| names.contains(&r.name));
        let s = &self.settings;
        let role = if has(&s.admin_roles) {
            Role::Admin
        } else if has(&s.member_roles) {
            Role::Member
        } else if has(&s.service_roles) && self.in_platform_scope(&token) {
            Role::Service
        } else {
            return Err(Failure::Refused(Refusal::NoMappedRole));
        };
        let (tenant_id, user_id) = if role == Role::Service {
            (Identity::PLATFORM, format!("service:{}", token.user.id))
        } else {
            (domain.as_str(), token.user.id.clone())
        };
        Ok(Arc::new(Identity {
            tenant_id: TenantId::parse(tenant_id)
                .map_err(|_| Failure::Refused(Refusal::BadDomain))?,
            user_id,
            user_name: token.user.name,
            role,
            expires_at,
        }))
    }

    /// Whether a token is scoped where the platform's own principals are: `iam_project` of
    /// `iam_user_domain`, or that domain itself without `iam_project`. A service role held
    /// anywhere else (a tenant's admin may grant any role on the tenant's own projects)
    /// makes no platform principal.
    fn in_platform_scope(&self, token: &TokenBody) -> bool {
        let s = &self.settings;
        match (&s.project, &token.project, &token.domain) {
            (Some(name), Some(project), _) => {
                project.name == *name && project.domain.name == s.user_domain
            }
            (None, None, Some(domain)) => domain.name == s.user_domain,
            _ => false,
        }
    }

    /// The service's own token: the current one, or a new one when it is due for renewal
    /// or `refused` (the one Keystone just refused) is the current one.
    ///
    /// One request at a time asks Keystone. While the current token is still valid (due
    /// for renewal, not expired, not refused) nobody waits for that: the one request that
    /// renews gives it half of `iam_timeout`, and on failure (or while another request
    /// renews) the current token is used. Without a usable token, requests queue for the
    /// login; after a failed one they are told so for [`RENEW_BACKOFF`] without another.
    async fn service_token(
        &self,
        refused: Option<&Arc<ServiceToken>>,
    ) -> std::result::Result<Arc<ServiceToken>, Failure> {
        let not_refused = |t: &Arc<ServiceToken>| refused.is_none_or(|r| !Arc::ptr_eq(r, t));
        let now = self.clock.unix_seconds();
        let current = self.service.current().filter(|t| not_refused(t));
        if let Some(token) = current.as_ref().filter(|t| now < t.renew_at) {
            return Ok(token.clone());
        }
        if let Some(valid) = current.filter(|t| now < t.expires_at) {
            // Due for renewal but still good: renew without making anyone wait for it.
            let Ok(mut last_failure) = self.service.renewing.try_lock() else {
                return Ok(valid);
            };
            if last_failure
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < RENEW_BACKOFF)
            {
                return Ok(valid);
            }
            let renewed =
                tokio::time::timeout(self.settings.timeout / 2, self.issue_service_token())
                    .await
                    .unwrap_or_else(|_| {
                        Err("Keystone did not answer the service's login in time".to_owned())
                    });
            return match renewed {
                Ok(token) => {
                    let token = Arc::new(token);
                    self.service.set(token.clone());
                    *last_failure = None;
                    Ok(token)
                }
                Err(detail) => {
                    tracing::warn!(reason = %detail, "renewing the service's Keystone token failed; the current one is used until it expires");
                    *last_failure = Some((Instant::now(), detail));
                    Ok(valid)
                }
            };
        }
        let mut last_failure = self.service.renewing.lock().await;
        if let Some(token) = self
            .service
            .current()
            .filter(|t| not_refused(t) && self.clock.unix_seconds() < t.expires_at)
        {
            return Ok(token); // renewed while this request waited
        }
        if let Some((at, detail)) = last_failure.as_ref() {
            if at.elapsed() < RENEW_BACKOFF {
                return Err(Failure::Unavailable(detail.clone()));
            }
        }
        // Recorded before the call, so that a caller giving up (its deadline) still leaves
        // the backoff in place; cleared on success.
        *last_failure = Some((
            Instant::now(),
            "Keystone did not answer the service's login in time".to_owned(),
        ));
        match self.issue_service_token().await {
            Ok(token) => {
                let token = Arc::new(token);
                self.service.set(token.clone());
                *last_failure = None;
                Ok(token)
            }
            Err(detail) => {
                *last_failure = Some((Instant::now(), detail.clone()));
                Err(Failure::Unavailable(detail))
            }
        }
    }

    /// `POST /v3/auth/tokens` with the service's password.
    async fn issue_service_token(&self) -> std::result::Result<ServiceToken, String> {
        let s = &self.settings;
        let scope = match &s.project {
            Some(project) => serde_json::json!({
                "project": {"name": project, "domain": {"name": s.user_domain}}
            }),
            None => serde_json::json!({"domain": {"name": s.user_domain}}),
        };
        // The password is in this body, and in the request's copy of it, until both drop.
        let body = zeroize::Zeroizing::new(
            serde_json::json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": s.user,
                    "domain": {"name": s.user_domain},
                    "password": s.password.expose_secret(),
                }}},
                "scope": scope,
            }})
            .to_string(),
        );
        let started = Instant::now();
        let answer = self
            .send(
                self.http
                    .post(&self.issue_url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.as_bytes().to_vec()),
            )
            .await;
        let (outcome, result) = match answer {
            Err(e) => (CallOutcome::Unavailable, Err(unreachable(&e))),
            Ok(response) => {
                let status = response.status().as_u16();
                let header = response.headers().get("x-subject-token").cloned();
                match (status, header, read_answer(response).await) {
                    (_, _, Err(detail)) => (CallOutcome::Unavailable, Err(detail)),
                    (201, Some(mut header), Ok((_, body))) => {
                        header.set_sensitive(true);
                        match self.service_token_from(header, &body) {
                            Ok(token) => (CallOutcome::Ok, Ok(token)),
                            Err(detail) => (CallOutcome::Error, Err(detail)),
                        }
                    }
                    (401 | 403, _, _) => {
                        tracing::error!(
                            user = %s.user,
                            user_domain = %s.user_domain,
                            project = s.project.as_deref().unwrap_or("(none: the domain)"),
                            "Keystone refused the service's own credentials: check iam_user, iam_user_domain, iam_project and the password (REPOCRYPT_IAM_PASSWORD or iam_password_file)"
                        );
                        (
                            CallOutcome::Refused,
                            Err(format!(
                                "Keystone refused the service's own credentials (status {status})"
                            )),
                        )
                    }
                    (status, _, _) => (
                        CallOutcome::Unavailable,
                        Err(format!(
                            "Keystone answered the service's login with status {status}"
                        )),
                    ),
                }
            }
        };
        self.metrics
            .record_iam(IamCall::IssueServiceToken, outcome, started.elapsed());
        result
    }

    fn service_token_from(
        &self,
        header: reqwest::header::HeaderValue,
        body: &[u8],
    ) -> std::result::Result<ServiceToken, String> {
        #[derive(Deserialize)]
        struct Issued {
            token: IssuedToken,
        }
        #[derive(Deserialize)]
        struct IssuedToken {
            expires_at: String,
            issued_at: Option<String>,
        }
        let issued: Issued = serde_json::from_slice(body)
            .map_err(|e| format!("Keystone's new token is not the v3 JSON expected: {e}"))?;
        let expires = unix_seconds(&issued.token.expires_at)
            .ok_or("Keystone's new token has an unreadable expires_at")?;
        let now = self.clock.unix_seconds();
        // Its life by Keystone's clock (issued_at to expires_at), counted from now by this
        // one, so that clocks apart do not make it due at once; renewed once three quarters
        // of it have passed.
        let life = match issued.token.issued_at.as_deref().and_then(unix_seconds) {
            Some(at) => expires.saturating_sub(at),
            None => expires.saturating_sub(now),
        };
        Ok(ServiceToken {
            header,
            expires_at: now + life,
            renew_at: now + life * 3 / 4,
            issued: Instant::now(),
        })
    }
}

#[async_trait]
impl Authenticator for KeystoneAuth {
    async fn authenticate_token(&self, token: &str) -> Result<Arc<Identity>> {
        let key = digest(token);
        let now = self.clock.monotonic();
        let cached = self
            .cache
            .get(&key, now)
            .or_else(|| self.refusals.get(&key, now));
        let verdict = match cached {
            Some(verdict) => verdict,
            None => {
                let joined = self.in_flight.join(key);
                let cell = joined.cell();
                // Bounded from here: a waiter whose leader gave up late makes the call
                // itself, within what is left.
                let waited = tokio::time::timeout(
                    self.settings.timeout,
                    cell.get_or_init(|| self.validate(token, &key)),
                )
                .await;
                let verdict = match waited {
                    Ok(verdict) => verdict.clone(),
                    Err(_) => Err(self.late()),
                };
                drop(joined);
                verdict
            }
        };
        let outcome = match verdict {
            Ok(identity) if identity.expires_at <= self.clock.unix_seconds() => {
                Err(Error::TokenExpired)
            }
            Ok(identity) => Ok(identity),
            Err(failure) => Err(failure.into()),
        };
        trace_outcome("keystone", &outcome);
        outcome
    }

    async fn authenticate_signature(&self, request: &SignedRequest<'_>) -> Result<Arc<Identity>> {
        super::verify_signature(&self.signatures, request).await
    }

    /// Keystone answers and accepts the service's token: the service validates its own.
    async fn ping(&self) -> Result<()> {
        let check = async {
            let service = self.service_token(None).await?;
            let answer = self
                .send(
                    self.http
                        .get(&self.validate_url)
                        .header("x-auth-token", service.header.clone())
                        .header("x-subject-token", service.header.clone()),
                )
                .await
                .map_err(|e| Failure::Unavailable(unreachable(&e)))?;
            match answer.status().as_u16() {
                200 => Ok(()),
                401 => {
                    // Refused: renewed now rather than on a caller's request.
                    self.service_token(Some(&service)).await.map(|_| ())
                }
                status => Err(Failure::Unavailable(format!(
                    "Keystone answered the service's own validation with status {status}"
                ))),
            }
        };
        match tokio::time::timeout(self.settings.timeout, check).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(failure.into()),
            Err(_) => Err(Error::IamUnavailable(format!(
                "Keystone did not answer within {}",
                humantime::format_duration(self.settings.timeout)
            ))),
        }
    }

    fn cache_stats(&self) -> Vec<CacheStats> {
        let (hits, misses) = self.cache.shards.hits_and_misses();
        vec![CacheStats {
            name: "iam_tokens",
            hits,
            misses,
        }]
    }
}

/// Why a token is refused. Cached (for [`REFUSAL_TTL`] at most) and cloned to each caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Keystone does not know it (never issued, revoked, or expired long ago).
    Unknown,
    Expired,
    /// Scoped to nothing (or to the system): it names no tenant.
    Unscoped,
    NoMappedRole,
    /// Not a value an HTTP header can carry.
    Malformed,
    /// Its domain id is not a tenant id (longer than 1000 characters).
    BadDomain,
}

#[derive(Debug, Clone)]
enum Failure {
    Refused(Refusal),
    /// Keystone could not be asked, or did not answer as it should: not cached.
    Unavailable(String),
}

impl From<Failure> for Error {
    fn from(failure: Failure) -> Error {
        match failure {
            Failure::Unavailable(detail) => Error::IamUnavailable(detail),
            Failure::Refused(Refusal::Expired) => Error::TokenExpired,
            Failure::Refused(Refusal::NoMappedRole) => Error::NoMappedRole,
            Failure::Refused(Refusal::Unknown) => {
                Error::InvalidToken("the identity service does not know it, or it was revoked")
            }
            Failure::Refused(Refusal::Unscoped) => Error::InvalidToken(
                "it is unscoped (or system-scoped): it names no tenant; get a token scoped to your domain or to a project of it",
            ),
            Failure::Refused(Refusal::Malformed) => {
                Error::InvalidToken("not a value an HTTP header can carry")
            }
            Failure::Refused(Refusal::BadDomain) => {
                Error::InvalidToken("its domain id is not a tenant id")
            }
        }
    }
}

type Verdict = std::result::Result<Arc<Identity>, Failure>;
type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// Verdicts by token digest, each until its deadline (monotonic).
struct VerdictCache {
    shards: Shards<lru::LruCache<Digest32, (Verdict, Instant)>>,
}

impl VerdictCache {
    fn new(capacity: usize) -> Self {
        let per_shard = crate::shards::per_shard(capacity);
        VerdictCache {
            shards: Shards::new(|| lru::LruCache::new(per_shard)),
        }
    }

    fn index(key: &Digest32) -> usize {
        // The key is a hash already: its first bytes pick the shard.
        let first = u64::from_le_bytes([
            key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7],
        ]);
        crate::shards::index_of(first)
    }

    /// A hit takes its shard shared (see `crate::shards`).
    fn get(&self, key: &Digest32, now: Instant) -> Option<Verdict> {
        let index = Self::index(key);
        // Some(Some(verdict)): a hit; Some(None): a verdict past its time.
        let found = self.shards.peek(index, key, |_, entry| match entry {
            Some((verdict, until)) if now < *until => (Some(Some(verdict.clone())), true),
            Some(_) => (Some(None), false),
            None => (None, false),
        })?;
        let found = match found {
            Some(Some(verdict)) => Some(verdict),
            // Past its time: of no further use.
            Some(None) => {
                if let Some(mut shard) = self.shards.write(index) {
                    // Unless a validation put a fresh verdict since.
                    if shard.peek(key).is_some_and(|(_, until)| now >= *until) {
                        shard.pop(key);
                    }
                }
                None
            }
            None => None,
        };
        self.shards.count(found.is_some());
        found
    }

    fn put(&self, key: Digest32, verdict: Verdict, until: Instant) {
        if let Some(mut shard) = self.shards.write(Self::index(&key)) {
            shard.put(key, (verdict, until));
        }
    }
}

/// The validations under way, one per token digest, so that concurrent requests with one
/// token make one call to Keystone.
#[derive(Default)]
struct InFlight {
    calls: Mutex<HashMap<Digest32, Arc<tokio::sync::OnceCell<Verdict>>>>,
}

impl InFlight {
    /// The validation of `key` under way, or a new one. A caller that gives up (its client
    /// went away) lets the next waiter make the call.
    fn join(&self, key: Digest32) -> Joined<'_> {
        let cell = match self.calls.lock() {
            Ok(mut calls) => calls.entry(key).or_default().clone(),
            Err(_) => Arc::default(),
        };
        Joined {
            owner: self,
            key,
            cell: Some(cell),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// A place in a validation under way; the last one out removes it. Every clone of the cell
/// is made and dropped under the map's lock, so its count there is exact.
struct Joined<'a> {
    owner: &'a InFlight,
    key: Digest32,
    cell: Option<Arc<tokio::sync::OnceCell<Verdict>>>,
}

impl Joined<'_> {
    fn cell(&self) -> &tokio::sync::OnceCell<Verdict> {
        // Some until dropped.
        self.cell.as_deref().unwrap_or(&EMPTY)
    }
}

static EMPTY: tokio::sync::OnceCell<Verdict> = tokio::sync::OnceCell::const_new();

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let Ok(mut calls) = self.owner.calls.lock() else {
            return;
        };
        let Some(mine) = self.cell.take() else {
            return;
        };
        let done = mine.initialized();
        drop(mine);
        if let Some(entry) = calls.get(&self.key) {
            // Only the map holds it now, or it has its answer (later callers find the cache).
            if Arc::strong_count(entry) == 1 || done {
                calls.remove(&self.key);
            }
        }
    }
}

/// Lets a log line through once every [`Throttle::EVERY`] seconds at most.
#[derive(Default)]
struct Throttle {
    /// Unix seconds of the last line let through, plus one (0: none yet).
    last: std::sync::atomic::AtomicU64,
}

impl Throttle {
    const EVERY: u64 = 10;

    fn allow(&self, now: u64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now + 1 >= last + Self::EVERY)
            && self
                .last
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The service's own token, as a header value marked sensitive (never in a log).
struct ServiceToken {
    header: reqwest::header::HeaderValue,
    /// Unix seconds by this service's clock.
    expires_at: u64,
    renew_at: u64,
    /// When it was issued: a 401 for a token this young is not cured by another login.
    issued: Instant,
}

#[derive(Default)]
struct ServiceTokens {
    current: std::sync::RwLock<Option<Arc<ServiceToken>>>,
    /// Held while one request renews it; the last failure, for [`RENEW_BACKOFF`].
    renewing: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl ServiceTokens {
    fn current(&self) -> Option<Arc<ServiceToken>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, token: Arc<ServiceToken>) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(token);
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    expires_at: String,
    user: Named,
    #[serde(default)]
    roles: Vec<RoleName>,
    project: Option<Project>,
    domain: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    id: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RoleName {
    name: String,
}

#[derive(Deserialize)]
struct Project {
    #[serde(default)]
    name: String,
    domain: Named,
}

/// Keystone's `2026-12-01T16:50:02.000000Z` as Unix seconds.
fn unix_seconds(text: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The status and the body (at most [`MAX_ANSWER`] bytes) of an answer.
async fn read_answer(
    mut response: reqwest::Response,
) -> std::result::Result<(u16, Vec<u8>), String> {
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("Keystone's answer is over {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// A transport failure, for the log (the URL holds no secret).
fn unreachable(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut detail = if e.is_timeout() {
        "Keystone did not answer in time".to_owned()
    } else if e.is_connect() {
        "cannot connect to Keystone".to_owned()
    } else {
        "Keystone's answer failed".to_owned()
    };
    let mut source = e.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_line_goes_through_once_every_ten_seconds() {
        let throttle = Throttle::default();
        assert!(throttle.allow(100));
        assert!(!throttle.allow(100));
        assert!(!throttle.allow(109));
        assert!(throttle.allow(110));
        assert!(!throttle.allow(111));
    }

    #[test]
    fn the_last_caller_out_of_a_validation_removes_it() {
        let in_flight = InFlight::default();
        let (a, b) = (in_flight.join([1; 32]), in_flight.join([1; 32]));
        let other = in_flight.join([2; 32]);
        assert_eq!(in_flight.len(), 2);
        drop(a);
        assert_eq!(in_flight.len(), 2, "b still waits on it");
        drop(b);
        assert_eq!(in_flight.len(), 1);
        drop(other);
        assert_eq!(in_flight.len(), 0);
    }

    #[test]
    fn keystone_times_are_read_with_their_fraction() {
        assert_eq!(
            unix_seconds("2026-12-01T16:50:02.000000Z"),
            Some(1_796_143_802)
        );
        assert_eq!(unix_seconds("2026-12-01T16:50:02Z"), Some(1_796_143_802));
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
