//! Key management: one trait, one implementation per backend.

pub mod aws;
pub mod local;
pub mod metered;

pub use crate::domain::ports::{KeyInfo, KeyOrigin, Kms};

/// Shortest and longest deletion window a KMS accepts, in days.
pub const MIN_PENDING_DAYS: u32 = 7;
pub const MAX_PENDING_DAYS: u32 = 1096;
