//! The server's one error type and its one JSON shape.
//!
//! Every 4xx/5xx leaves the server as
//! `{"error", "error_description", "explanation"?, "request_id"}`. Handlers
//! return [`ApiError`]; [`finish_errors`] (a middleware) stamps the request
//! id into the body and rewrites errors produced outside our handlers (body
//! limit, unknown route, method not allowed) into the same shape, so no
//! plain-text error ever escapes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Header carrying the request id, set on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Seconds a client should wait before retrying when storage or an
/// issuer's keys are unavailable.
pub const RETRY_AFTER_SECS: u64 = 2;

/// An error as the caller sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    // Boxed: `Result<_, ApiError>` is returned everywhere, and the body is
    // large; the box keeps the `Err` variant small.
    body: Box<ErrorBody>,
    retry_after: Option<u64>,
    www_authenticate: Option<&'static str>,
}

/// The JSON body of every error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// An RFC 6749 error code (`invalid_grant`, `invalid_request`, …).
    #[schema(example = "invalid_grant")]
    pub error: &'static str,
    /// One human sentence: what was wrong and, where possible, how to fix it.
    pub error_description: String,
    /// Per-rule detail of a policy denial, when the caller may see it; for
    /// a refused policy, its diagnostics (each with `line` and `column`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub explanation: Option<serde_json::Value>,
    /// On 412 (a policy changed since the caller read it): the version
    /// stored now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// The request id, also in the `x-request-id` header and in the logs.
    pub request_id: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                error,
                error_description: description.into(),
                explanation: None,
                current_version: None,
                request_id: String::new(),
            }),
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// 400 `invalid_request`: the request is malformed.
    pub fn invalid_request(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 400 `invalid_grant`: the subject token is invalid or the policy
    /// grants nothing to it.
    pub fn invalid_grant(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// 400 with a policy-denial code (`invalid_grant`, `invalid_scope`,
    /// `invalid_target`).
    pub fn denied(code: &'static str, description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, description)
    }

    /// 400 `unsupported_grant_type` (RFC 6749 §5.2).
    pub fn unsupported_grant_type(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", description)
    }

    /// 404 `not_found`.
    pub fn not_found(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", description)
    }

    /// 401 `invalid_token` with `WWW-Authenticate: Bearer` (RFC 6750): no
    /// credential, or one that is invalid, expired or revoked.
    pub fn unauthorized(description: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", description);
        e.www_authenticate = Some("Bearer realm=\"writ\", error=\"invalid_token\"");
        e
    }

    /// 401 `invalid_client` with `WWW-Authenticate: Basic` (RFC 6749 §5.2):
    /// introspection without valid client credentials.
    pub fn invalid_client(description: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", description);
        e.www_authenticate = Some("Basic realm=\"writ\"");
        e
    }

    /// 403 `insufficient_scope` (RFC 6750): authenticated, but not allowed
    /// this on this org.
    pub fn forbidden(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", description)
    }

    /// 409 `conflict`: the request clashes with the state of the resource.
    pub fn conflict(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", description)
    }

    /// 412 `precondition_failed`: `If-Match` names a version that is no
    /// longer current; the body and the `ETag` header carry the current one.
    pub fn precondition_failed(description: impl Into<String>, current_version: i64) -> ApiError {
        let mut e = ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", description);
        e.body.current_version = Some(current_version);
        e
    }

    /// 428 `precondition_required` (RFC 6585): a write without `If-Match`.
    pub fn precondition_required(description: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PRECONDITION_REQUIRED, "precondition_required", description)
    }

    /// 503 `temporarily_unavailable` with `Retry-After`.
    pub fn unavailable(description: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", description);
        e.retry_after = Some(RETRY_AFTER_SECS);
        e
    }

    /// 429 with `Retry-After`: a rate limit per source was reached.
    pub fn too_many_requests(description: impl Into<String>, retry_after_secs: u64) -> ApiError {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable", description);
        e.retry_after = Some(retry_after_secs);
        e
    }

    /// 500: "internal error" and the request id; the cause goes to the log
    /// only. Log it where it is handled, before calling this.
    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error; quote the request_id when reporting it",
        )
    }

    /// Attaches the per-rule explanation of a denial.
    pub fn with_explanation(mut self, explanation: serde_json::Value) -> ApiError {
        self.body.explanation = Some(explanation);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The RFC 6749 code.
    pub fn code(&self) -> &'static str {
        self.body.error
    }

    /// The human sentence.
    pub fn description(&self) -> &str {
        &self.body.error_description
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        // A 412 names the current version in the ETag header too.
        if let Some(v) = self.body.current_version.filter(|v| *v > 0)
            && let Ok(etag) = HeaderValue::from_str(&format!("\"v{v}\""))
        {
            response.headers_mut().insert(header::ETAG, etag);
        }
        // The body is rendered by `finish_errors`, which knows the request id.
        response.extensions_mut().insert(*self.body);
        response
    }
}

/// Renders an error response as the one JSON shape with the request id,
/// including errors raised by layers and by axum itself; other responses
/// pass unchanged. Run on every response by the router's edge middleware.
pub fn finish_errors(response: Response, request_id: Option<&HeaderValue>) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut error = match parts.extensions.remove::<ErrorBody>() {
        Some(e) => e,
        // A handler that deliberately answers an error status with its own
        // JSON (`/readyz`) keeps its body.
        None if is_json(&parts.headers) => return Response::from_parts(parts, body),
        None => foreign_error(status),
    };
    drop(body);
    error.request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let json = serde_json::to_vec(&error).unwrap_or_else(|_| b"{\"error\":\"server_error\"}".to_vec());
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(json))
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

/// The shape of an error that did not come from a handler.
fn foreign_error(status: StatusCode) -> ErrorBody {
    let (error, description) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint; see GET /openapi.json for the API"),
        StatusCode::METHOD_NOT_ALLOWED => ("invalid_request", "this endpoint does not accept that HTTP method"),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request", "the request body is larger than this server accepts"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ("invalid_request", "the request headers are too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "invalid_request",
            "unsupported Content-Type; send application/json (or application/x-www-form-urlencoded to /oauth/token)",
        ),
        StatusCode::REQUEST_TIMEOUT => ("invalid_request", "the request took too long to arrive"),
        s if s.is_server_error() => ("server_error", "internal error; quote the request_id when reporting it"),
        _ => ("invalid_request", "the request was not accepted"),
    };
    ErrorBody {
        error,
        error_description: description.to_owned(),
        explanation: None,
        current_version: None,
        request_id: String::new(),
    }
}
