//! Nexus domain: the types the core speaks in and the ports (traits) it needs from the
//! outside world. Nothing here performs I/O or knows a framework; adapters implement the
//! ports, the core calls them.
//!
//! Every port is `Send + Sync + 'static` and documents, under `# Errors`, which [`Error`]
//! variants it returns so that each adapter translates its driver errors the same way.
#![forbid(unsafe_code)]

pub mod agents;
pub mod audit;
pub mod changes;
pub mod context;
pub mod error;
pub mod identity;
pub mod leadership;
pub mod node_names;
pub mod ports;
pub mod tenancy;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tokens;

pub use error::{Error, FieldError, Result};
