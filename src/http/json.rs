//! [`JsonAnswer`]: a JSON answer written straight from its view.
//!
//! poem-openapi's `Json` renders a view by building it as a tree of JSON values first (a
//! map, a key and a string per field) and then writing the tree; on the hot reads (an
//! agent listing, `/me`) that tree was most of the rendering's cost. A `JsonAnswer` is
//! documented exactly as `Json` (same media type, same schema), and written by the view's
//! `serde::Serialize`. That the two write the same JSON is asserted on every answer in
//! debug builds, so every API test that reaches such a route checks it.

use chrono::{DateTime, Utc};
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::{Json, Payload};
use poem_openapi::registry::{MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};

/// A JSON answer, documented as poem-openapi's `Json<T>` and written by serde.
pub(crate) struct JsonAnswer<T>(pub T);

impl<T: Type> Payload for JsonAnswer<T> {
    const CONTENT_TYPE: &'static str = Json::<T>::CONTENT_TYPE;

    fn check_content_type(content_type: &str) -> bool {
        Json::<T>::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        Json::<T>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Json::<T>::register(registry);
    }
}

impl<T: ToJSON + serde::Serialize + Send> IntoResponse for JsonAnswer<T> {
    fn into_response(self) -> Response {
        debug_assert_eq!(serde_json::to_value(&self.0).ok(), self.0.to_json(), "the view writes the JSON its schema documents");
        poem::web::Json(self.0).into_response()
    }
}

impl<T: ToJSON + serde::Serialize + Send> ApiResponse for JsonAnswer<T> {
    fn meta() -> MetaResponses {
        Json::<T>::meta()
    }

    fn register(registry: &mut Registry) {
        <Json<T> as ApiResponse>::register(registry);
    }
}

/// Writes a time as poem-openapi documents and writes it (RFC 3339, `+00:00`).
pub(crate) fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&at.to_rfc3339())
}
