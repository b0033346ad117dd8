//! Opaque secrets: a short prefix that says what the secret is, then 256 random bits from
//! the operating system, base64url without padding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nexus_ports::ports::SecretGenerator;
use nexus_ports::tokens::OpaqueSecret;
use nexus_ports::{Error, Result};

/// [`SecretGenerator`] reading the operating system's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSecrets;

impl SecretGenerator for OsSecrets {
    fn generate(&self, prefix: &'static str) -> Result<OpaqueSecret> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(Error::internal)?;
        Ok(OpaqueSecret::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_long_and_distinct() {
        let (a, b) = (OsSecrets.generate("nxr_").unwrap(), OsSecrets.generate("nxr_").unwrap());
        assert!(a.expose().starts_with("nxr_"));
        assert_eq!(a.expose().len(), 4 + 43);
        assert_ne!(a, b);
    }
}
