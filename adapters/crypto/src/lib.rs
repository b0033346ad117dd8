//! Credential adapters: argon2id password hashing off the async workers, HS256 access
//! tokens, and random opaque secrets from the operating system.
#![forbid(unsafe_code)]

mod hasher;
mod jwt;
mod secrets;

pub use hasher::Argon2Hasher;
pub use jwt::{JwtAccessTokens, MIN_SECRET_BYTES};
pub use secrets::OsSecrets;
