//! HTTP: routing, extractors, error mapping. Handlers stay thin.

pub mod context;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod limits;
pub mod openapi;
pub mod server;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{middleware, Router};

use crate::auth::Authenticator;
use crate::config::{Limits, RateLimits};
use crate::domain::Service;
use crate::kms::Kms;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// What the router is built from.
pub struct Deps {
    pub service: Arc<Service>,
    pub auth: Arc<dyn Authenticator>,
    pub kms: Arc<dyn Kms>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub rate_limits: RateLimits,
}

/// The rate limits in force (`None`: off).
#[derive(Debug, Default)]
pub struct RateLimiters {
    pub tenant: Option<RateLimiter>,
    pub credential: Option<RateLimiter>,
}

impl RateLimiters {
    pub fn new(rates: RateLimits) -> Self {
        RateLimiters {
            tenant: RateLimiter::per_second(rates.per_tenant),
            credential: RateLimiter::per_second(rates.per_credential),
        }
    }

    /// Requests refused so far, by limit.
    pub fn rejected(&self) -> [(&'static str, u64); 2] {
        let count = |l: &Option<RateLimiter>| l.as_ref().map_or(0, RateLimiter::rejected);
        [
            ("tenant", count(&self.tenant)),
            ("credential", count(&self.credential)),
        ]
    }
}

/// What every handler can reach. Built once; a clone (axum makes several per request) is
/// one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub service: Arc<Service>,
    pub auth: Arc<dyn Authenticator>,
    pub kms: Arc<dyn Kms>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub rate_limiters: Arc<RateLimiters>,
    pub readiness: Arc<handlers::Readiness>,
    pub openapi: axum::body::Bytes,
}

pub fn router(deps: Deps) -> Router {
    let state = AppState(Arc::new(Shared {
        service: deps.service,
        auth: deps.auth,
        kms: deps.kms,
        metrics: deps.metrics,
        limits: deps.limits,
        rate_limiters: Arc::new(RateLimiters::new(deps.rate_limits)),
        readiness: Arc::default(),
        openapi: openapi::document().into(),
    }));
    let v4 = Router::new()
        .route(
            "/v4/tenants/{tenant_id}/repo-encryption/setting",
            get(handlers::show_setting).put(handlers::update_setting),
        )
        .route(
            "/v4/tenants/{tenant_id}/repo-encryption/kms-grant",
            get(handlers::show_grant).post(handlers::create_grant),
        )
        .route("/v4/tenant/setting", get(handlers::show_tenant_setting));
    Router::new()
        .merge(v4)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            context::request_context,
        ))
        .with_state(state)
}
