//! repocrypt: the CodeArts Repo V4 tenant repository-encryption API.
//!
//! Layers: `http` (routing, extractors, error mapping) over `domain` (the rules) over
//! `store` (SQLite or PostgreSQL) and `kms` (the local KMS, in the store, or AWS KMS and
//! anything speaking its API), with `auth` (identity), `config`, `cli` and `telemetry`
//! beside them.

pub mod app;
pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod home;
pub mod http;
pub mod keys;
pub mod kms;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod ratelimit;
pub mod seal;
pub mod shards;
pub mod storage_client;
pub mod store;
pub mod telemetry;
