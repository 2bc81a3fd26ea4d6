//! A request id for every HTTP request: taken from the caller's `X-Request-Id` when it is a sane token (so a
//! proxy's id follows the request through), generated otherwise; returned in the `X-Request-Id` answer header
//! and carried by the request's tracing span, so every log line the request causes can be found by it.

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// Longest caller-supplied id we keep; longer (or odd) ones are replaced.
const MAX_LEN: usize = 64;

fn usable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Outermost middleware of both listeners.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| usable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %req.method(),
        path = %req.path()
    );
    // Refusals inside are answers, not errors (see `api::refuse`), so they get the header too. (Holding a clone
    // of the request to turn an error into an answer here is not possible: the router needs it unshared.)
    let mut response = next.call(req).instrument(span).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(HEADER), value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::usable;

    #[test]
    fn caller_ids_are_kept_only_when_harmless() {
        assert!(usable("3f2a-11:abc_def.1"));
        assert!(!usable(""));
        assert!(!usable("has space"));
        assert!(!usable("new\nline"));
        assert!(!usable(&"x".repeat(65)));
    }
}
