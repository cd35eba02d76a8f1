//! In-process tests: the router, the service, the stores and the KMS backends, driven
//! without the real binary (one test binary: `cargo test --test api`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod api;
mod events;
mod group_commit;
mod keystone;
mod kms_conformance;
mod migrations;
mod repositories;
mod rewrap;
mod signature;
