//! `/healthz` (the process runs) and `/readyz` (its dependencies answer).

use std::collections::BTreeMap;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::app::SharedNexus;

/// Liveness.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct Liveness {
    /// Always `ok`.
    status: String,
}

/// Readiness, with each dependency's answer.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ReadinessReport {
    /// `ready` or `unavailable`.
    status: String,
    /// Each dependency by name (`database`...): `ok`, or what is wrong.
    checks: BTreeMap<String, String>,
}

#[derive(ApiResponse)]
enum ReadyResponse {
    /// Every dependency answers.
    #[oai(status = 200)]
    Ready(Json<ReadinessReport>),
    /// A dependency does not answer.
    #[oai(status = 503)]
    NotReady(Json<ReadinessReport>),
}

pub(crate) struct HealthApi;

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: 200 while the process runs.
    #[oai(path = "/healthz", method = "get", operation_id = "health_live")]
    async fn live(&self) -> Json<Liveness> {
        Json(Liveness { status: "ok".to_owned() })
    }

    /// Readiness: 200 when every dependency answers, 503 naming the ones that do not.
    #[oai(path = "/readyz", method = "get", operation_id = "health_ready")]
    async fn ready(&self, nexus: Data<&SharedNexus>) -> ReadyResponse {
        let (ready, outcomes) = nexus.readiness.check().await;
        let checks = outcomes.into_iter().map(|(name, outcome)| (name.to_owned(), outcome.unwrap_or_else(|| "ok".to_owned()))).collect();
        if ready {
            ReadyResponse::Ready(Json(ReadinessReport { status: "ready".to_owned(), checks }))
        } else {
            ReadyResponse::NotReady(Json(ReadinessReport { status: "unavailable".to_owned(), checks }))
        }
    }
}
