//! HTTP: routing, extractors, error mapping. Handlers stay thin.

pub mod broker;
pub mod context;
pub mod error;
pub mod events;
pub mod extract;
pub mod handlers;
pub mod limits;
pub mod openapi;
pub mod rewrap;
pub mod routes;
pub mod server;
pub mod views;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::Router;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::{Limits, RateLimits};
use crate::domain::events::EventFeed;
use crate::domain::Service;
use crate::kms::Kms;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;

/// What the router is built from.
pub struct Deps {
    pub service: Arc<Service>,
    pub events: Arc<EventFeed>,
    pub auth: Arc<dyn Authenticator>,
    pub kms: Arc<dyn Kms>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    /// What the rate limits and the readiness reuse window measure time with.
    pub clock: Arc<dyn Clock>,
}

/// The rate limits in force (`None`: off).
#[derive(Debug, Default)]
pub struct RateLimiters {
    pub tenant: Option<RateLimiter>,
    pub credential: Option<RateLimiter>,
}

impl RateLimiters {
    pub fn new(rates: RateLimits, clock: Arc<dyn Clock>) -> Self {
        RateLimiters {
            tenant: RateLimiter::per_second(rates.per_tenant, clock.clone()),
            credential: RateLimiter::per_second(rates.per_credential, clock),
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
    pub events: Arc<EventFeed>,
    pub auth: Arc<dyn Authenticator>,
    pub kms: Arc<dyn Kms>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub rate_limiters: Arc<RateLimiters>,
    pub readiness: Arc<handlers::Readiness>,
    pub openapi: axum::body::Bytes,
    pub clock: Arc<dyn Clock>,
}

pub fn router(deps: Deps) -> Router {
    let state = AppState(Arc::new(Shared {
        service: deps.service,
        events: deps.events,
        auth: deps.auth,
        kms: deps.kms,
        metrics: deps.metrics,
        limits: deps.limits,
        rate_limiters: Arc::new(RateLimiters::new(deps.rate_limits, deps.clock.clone())),
        readiness: Arc::default(),
        openapi: openapi::document().into(),
        clock: deps.clock,
    }));
    // Each route, and each fallback, has its own request-context layer, which knows the
    // route: what the request is counted as and whether its signature is checked.
    let context = |route| context::RequestContextLayer::new(state.clone(), route);
    let mut router = Router::new();
    for route in &routes::ROUTES {
        router = router.route(
            route.path,
            route.method_router().route_layer(context(Some(route))),
        );
    }
    router
        .fallback(handlers::not_found.layer(context(None)))
        .method_not_allowed_fallback(handlers::method_not_allowed.layer(context(None)))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}
