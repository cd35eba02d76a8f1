//! Tests of the real `repocrypt` binary: the command line, the server process, crash
//! durability, the audit log and the secrets in its output, the limits the accept loop
//! enforces, and the README walkthrough (one test binary: `cargo test --test process`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod cli;
mod durability;
mod events;
mod files;
mod git_seal;
mod hardening;
mod logs;
mod repositories;
mod rewrap;
mod secrets;
mod walkthrough;
