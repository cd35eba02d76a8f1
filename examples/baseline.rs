//! The benchmark's baseline: the least a server can do to answer GET setting (or a data
//! key's release, on its path, when given a release's body). It serves
//! the same JSON bytes from memory (no authentication, no storage, no logging) on the
//! same stack (tokio, hyper, axum), so `scripts/bench.sh` can show what repocrypt's own
//! work costs.
//!
//!   cargo run --release --example baseline -- 127.0.0.1:8081 response.json
//!
//! Prints `baseline listening on http://ADDR` once it listens.

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8081".into());
    let body: &'static [u8] = match args.next() {
        Some(path) => Vec::leak(std::fs::read(path)?),
        None => br#"{"tenant_id":"t","encryption_type":"KMS","default_encryption_enabled":true}"#,
    };
    let answer = move || async move { ([(CONTENT_TYPE, "application/json")], body) };
    let app = Router::new()
        .route(
            "/v4/tenants/{tenant_id}/repo-encryption/setting",
            get(answer),
        )
        .route(
            "/v4/tenants/{tenant_id}/repo-encryption/kms-grant",
            get(answer),
        )
        .route("/v4/tenant/setting", get(answer))
        // The key broker's release, for a baseline started with a release's body.
        .route(
            "/v4/tenants/{tenant_id}/repo-encryption/repositories/{repo_id}/data-key",
            get(answer),
        );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
