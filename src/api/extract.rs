//! [`JsonObject`]: the JSON body extractor of the REST API.

use std::ops::Deref;

use actix_web::{dev::Payload, error::JsonPayloadError, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// A JSON object body deserialized into `T`. Unlike `web::Json<T>`, a JSON array is refused: serde's derived
/// `Deserialize` also reads a struct from an array of its fields in order, so `[null, null]` used to pass for
/// an empty PATCH (found by schemathesis). Limits and error answers are `web::Json`'s (the app's `JsonConfig`).
pub struct JsonObject<T>(pub T);

impl<T> JsonObject<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for JsonObject<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonObject<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let value = web::Json::<Value>::from_request(req, payload);
        Box::pin(async move {
            let value = value.await?.into_inner();
            if !value.is_object() {
                return Err(
                    ApiError::BadRequest("the request body must be a JSON object".into()).into(),
                );
            }
            serde_json::from_value(value)
                .map(JsonObject)
                .map_err(|err| {
                    ApiError::BadRequest(format!(
                        "request body is not valid JSON: {}",
                        JsonPayloadError::Deserialize(err)
                    ))
                    .into()
                })
        })
    }
}
