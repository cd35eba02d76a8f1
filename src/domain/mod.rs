//! The rules of the seeds, as README.md's "The API" section states them, and the choices
//! docs/decisions.md records where the seeds are silent: no HTTP, no SQL.

pub mod broker;
pub mod data_keys;
pub mod error;
pub mod events;
pub mod key_states;
pub mod keys;
pub mod model;
pub mod patch;
pub mod ports;
pub mod repository;
pub mod rewrap;
pub mod service;
pub mod types;

pub use error::{Error, Result};
pub use keys::KeyImpact;
pub use model::*;
pub use patch::{parse_setting_patch, BodyField, FieldKind, BODY_FIELDS, MAX_BODY_BYTES};
pub use repository::*;
pub use rewrap::{RewrapCommit, RewrapFailure, RewrapJob, RewrapState};
pub use service::Service;
pub use types::*;
