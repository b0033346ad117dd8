//! Black-box tests over HTTP: a real Nexus listening on a loopback port, driven by an HTTP
//! client. Cases that touch the database run on SQLite and on PostgreSQL. One binary, so
//! the suite links once.

mod support;

mod agents;
mod audit;
mod concurrency;
mod connections;
mod deploy;
mod events;
mod faults;
mod h2_flood;
mod health;
mod identity;
mod input;
mod isolation;
mod keys;
mod kube_e2e;
mod limits;
mod manifests;
mod matrix;
mod node_e2e;
mod observability;
mod openapi_doc;
mod quotas;
mod reconcile_kube;
mod replica_processes;
mod replicas;
mod restart;
mod runs;
mod secrets;
mod sessions;
mod startup;
mod tenancy;
mod versions;
