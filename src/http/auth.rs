//! Authentication schemes as poem-openapi sees them. The checkers only translate: the
//! decision belongs to the identity use cases.

use nexus_ports::tokens::AccessClaims;
use poem::Request;
use poem::http::StatusCode;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use super::error::{ApiError, AuthenticatedErrors};
use crate::app::SharedNexus;

/// A user's access token: `Authorization: Bearer <jwt>`.
#[derive(SecurityScheme)]
#[oai(rename = "bearer", ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub(crate) struct BearerAuth(pub AccessClaims);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<AccessClaims> {
    let nexus = req.data::<SharedNexus>().ok_or_else(|| ApiError::<AuthenticatedErrors>::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
    nexus.identity.authenticate(&bearer.token).map_err(|err| ApiError::<AuthenticatedErrors>::from(err).into())
}
