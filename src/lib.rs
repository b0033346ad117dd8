//! Nexus, the multi-tenant control plane for Astromesh AI agents.
//!
//! `app` holds the use cases, written only against the ports of `nexus_ports`; `http` is
//! the poem-openapi layer over them; `bootstrap` picks the adapters from configuration.
#![forbid(unsafe_code)]

pub mod app;
pub mod bootstrap;
pub mod config;
pub mod http;
pub mod metered_node;
