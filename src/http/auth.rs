//! Authentication as poem-openapi sees it. [`Caller`] documents both schemes as
//! alternatives on every operation that takes it (`bearer` or `apiKey`), reads both
//! headers, and leaves the decision to the access use case: bearer first, then the key.
//! (poem-openapi's own scheme enum would keep only the last scheme's error, so an invalid
//! token with no key would read as "missing credentials".)

use poem::http::{Method, header};
use poem::{Request, RequestBody};
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::registry::Registry;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme};

use super::error::{ApiError, AuthenticatedErrors};
use crate::app::{Credentials, Principal, SharedNexus};

// The two schemes below are never extracted: they only describe themselves in the document.

/// A user's access token: `Authorization: Bearer <jwt>`, from `/auth/login`.
#[derive(SecurityScheme)]
#[oai(rename = "bearer", ty = "bearer", bearer_format = "JWT")]
#[allow(dead_code)]
struct BearerScheme(Bearer);

/// A tenant's API key: `X-API-Key: nxk_...`, from `POST /api/v1/tenants/{id}/keys`.
#[derive(SecurityScheme)]
#[oai(rename = "apiKey", ty = "api_key", key_name = "X-API-Key", key_in = "header")]
#[allow(dead_code)]
struct ApiKeyScheme(ApiKey);

/// The authenticated caller of an operation.
pub(crate) struct Caller(pub Principal);

pub(crate) fn bearer_token(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl<'a> ApiExtractor<'a> for Caller {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <BearerScheme as ApiExtractor>::register(registry);
        <ApiKeyScheme as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        let mut schemes = <BearerScheme as ApiExtractor>::security_schemes();
        schemes.extend(<ApiKeyScheme as ApiExtractor>::security_schemes());
        schemes
    }

    async fn from_request(req: &'a Request, _body: &mut RequestBody, _options: ExtractParamOptions<()>) -> poem::Result<Self> {
        let fail = |err: nexus_ports::Error| poem::Error::from(ApiError::<AuthenticatedErrors>::from(err));
        let nexus = req.data::<SharedNexus>().ok_or_else(|| fail(nexus_ports::Error::internal("the application state is missing")))?;
        // poem reads a header that is not visible ASCII as absent; a tenant named that way
        // is malformed, not missing.
        if req.headers().get("x-tenant-id").is_some_and(|value| value.to_str().is_err()) {
            return Err(fail(nexus_ports::Error::invalid("malformed tenant id: expected t_ and 32 lower-case hex digits")));
        }
        let credentials = Credentials { bearer: bearer_token(req), api_key: req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) };
        let principal = nexus.access.authenticate(credentials).await.map_err(fail)?;
        let reads_only = matches!(*req.method(), Method::GET | Method::HEAD);
        nexus.access.authorize(&principal, reads_only, || format!("{} {}", req.method(), req.uri().path())).map_err(fail)?;
        Ok(Caller(principal))
    }
}
