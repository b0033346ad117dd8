//! A Rust client for the Nexus API, generated at build time by progenitor from the
//! committed `openapi/nexus.json` (see `build.rs`): the document is the contract, and this
//! crate proves that a Rust SDK can be generated from it as it is.
#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic, reason = "generated code")]

include!(concat!(env!("OUT_DIR"), "/client.rs"));
