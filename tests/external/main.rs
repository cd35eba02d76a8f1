//! Suites that need outside parts and skip without them: two replicas on one PostgreSQL
//! database (`REPOCRYPT_TEST_DATABASE_URL`) and the real binary on the AWS KMS backend
//! against moto (`REPOCRYPT_MOTO_SERVER`), and with a real Keystone as its IAM
//! (`REPOCRYPT_KEYSTONE_VENV`) (one test binary: `cargo test --test external`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod aws_kms;
mod faults;
mod keystone;
mod replicas;
mod soak;
