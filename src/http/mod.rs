//! HTTP: routing, extractors, error mapping. Handlers stay thin.

pub mod context;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod openapi;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{middleware, Router};
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::domain::{Service, MAX_BODY_BYTES};

/// What every handler can reach. Built once; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub auth: Arc<dyn Authenticator>,
    pub openapi: axum::body::Bytes,
}

pub fn router(service: Arc<Service>, auth: Arc<dyn Authenticator>) -> Router {
    let state = AppState {
        service,
        auth,
        openapi: openapi::document().into(),
    };
    let v4 = Router::new()
        .route(
            "/v4/tenants/{tenant_id}/repo-encryption/setting",
            get(handlers::show_setting).put(handlers::update_setting),
        )
        .route(
            "/v4/tenants/{tenant_id}/repo-encryption/kms-grant",
            get(handlers::show_grant).post(handlers::create_grant),
        )
        .route("/v4/tenant/setting", get(handlers::show_tenant_setting))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            extract::verify_signature,
        ));
    Router::new()
        .merge(v4)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(context::request_context))
        .with_state(state)
}

/// Serve until `shutdown` resolves, then finish in-flight requests and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
