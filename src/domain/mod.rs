//! The rules of the seeds and DESIGN.md: no HTTP, no SQL.

pub mod error;
pub mod model;
pub mod patch;
pub mod service;
pub mod types;

pub use error::{Error, Result};
pub use model::*;
pub use patch::{parse_setting_patch, BodyField, FieldKind, BODY_FIELDS, MAX_BODY_BYTES};
pub use service::Service;
pub use types::*;
