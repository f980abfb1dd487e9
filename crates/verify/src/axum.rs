//! axum integration (feature `axum`): [`WritGrant`], an extractor that
//! verifies the request's bearer token, and [`Rejection`], which answers
//! as RFC 6750 section 3 prescribes.
//!
//! ```no_run
//! use axum::Router;
//! use axum::extract::{FromRef, Path};
//! use axum::routing::post;
//! use writ_verify::axum::{Rejection, WritGrant};
//! use writ_verify::{Target, Verifier};
//!
//! #[derive(Clone, FromRef)]
//! struct AppState {
//!     verifier: Verifier,
//! }
//!
//! async fn deploy(
//!     WritGrant(grant): WritGrant,
//!     Path((org, app)): Path<(String, String)>,
//! ) -> Result<String, Rejection> {
//!     grant.require(&org, "deploy", Target::App(&app))?; // 403 insufficient_scope
//!     Ok(format!("deploying {app} for {}", grant.subject()))
//! }
//!
//! # fn app(verifier: Verifier) -> Router {
//! Router::new().route("/orgs/{org}/apps/{app}/deploy", post(deploy)).with_state(AppState { verifier })
//! # }
//! ```
//!
//! | outcome | status | `WWW-Authenticate` |
//! | --- | --- | --- |
//! | no `Authorization: Bearer` | 401 | `Bearer` (no error code, RFC 6750 section 3.1) |
//! | malformed header, two headers, empty token | 400 | `Bearer error="invalid_request"` |
//! | token refused by [`Verifier::verify`] | 401 | `Bearer error="invalid_token", error_description="…"` |
//! | keys unavailable, feed stale (temporary) | 503 | none; `Retry-After: 5` |
//! | [`Grant::require`] refused ([`Denied`]) | 403 | `Bearer error="insufficient_scope", error_description="…", scope="…"` |
//!
//! Bodies are JSON: `{"error": "<code>", "error_description": "<sentence>"}`.

use ::axum::Json;
use ::axum::extract::{FromRef, FromRequestParts};
use ::axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use ::axum::http::request::Parts;
use ::axum::http::{HeaderMap, HeaderValue, StatusCode};
use ::axum::response::{IntoResponse, Response};

use crate::{Denied, Grant, Verifier, VerifyError};

/// Seconds a client is told to wait after a temporary failure.
const RETRY_AFTER_SECS: &str = "5";

/// The verified [`Grant`] of the request's `Authorization: Bearer` token.
///
/// Needs a [`Verifier`] in the router state (`Verifier: FromRef<S>`, e.g.
/// with `#[derive(FromRef)]` on the state struct, or the verifier itself as
/// the state). Verification only: call [`Grant::require`] in the handler,
/// where the org, permission and target of the action are known.
#[derive(Debug, Clone)]
pub struct WritGrant(pub Grant);

impl<S> FromRequestParts<S> for WritGrant
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let verifier = Verifier::from_ref(state);
        match verifier.verify(token).await {
            Ok(grant) => Ok(WritGrant(grant)),
            Err(error) => {
                // The message never holds values of an unverified token,
                // and the token itself is never logged.
                tracing::info!(reason = error.reason_class(), "writ token refused: {error}");
                Err(Rejection::InvalidToken(error))
            }
        }
    }
}

/// The bearer token of `headers` (RFC 6750 section 2.1; the scheme is
/// case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(AUTHORIZATION) {
            Rejection::BadRequest("send exactly one Authorization header")
        } else {
            Rejection::MissingToken
        });
    };
    let value = value.to_str().map_err(|_| Rejection::BadRequest("the Authorization header is not ASCII"))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(if value.eq_ignore_ascii_case("bearer") {
            Rejection::BadRequest("the bearer token is empty or contains spaces")
        } else {
            Rejection::MissingToken
        });
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, …) is "no bearer credentials": answered
        // without an error code (RFC 6750 section 3.1).
        return Err(Rejection::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(Rejection::BadRequest("the bearer token is empty or contains spaces"));
    }
    Ok(token)
}

/// Why a request was not allowed, as an axum response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No `Authorization: Bearer` header.
    #[error("send a writ token as Authorization: Bearer <token>")]
    MissingToken,
    /// The `Authorization` header is malformed.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The token was refused (or verification is temporarily impossible,
    /// see [`VerifyError::is_temporary`]).
    #[error(transparent)]
    InvalidToken(VerifyError),
    /// The token does not allow the action.
    #[error(transparent)]
    Denied(Denied),
}

impl From<VerifyError> for Rejection {
    fn from(error: VerifyError) -> Self {
        Rejection::InvalidToken(error)
    }
}

impl From<Denied> for Rejection {
    fn from(denied: Denied) -> Self {
        Rejection::Denied(denied)
    }
}

impl Rejection {
    /// The HTTP status of this rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MissingToken => StatusCode::UNAUTHORIZED,
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::InvalidToken(e) if e.is_temporary() => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Rejection::Denied(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The OAuth error code of the body (RFC 6750 section 3.1).
    pub fn error_code(&self) -> &'static str {
        match self {
            Rejection::MissingToken => "invalid_token",
            Rejection::BadRequest(_) => "invalid_request",
            Rejection::InvalidToken(e) if e.is_temporary() => "temporarily_unavailable",
            Rejection::InvalidToken(_) => "invalid_token",
            Rejection::Denied(_) => "insufficient_scope",
        }
    }

    /// The `WWW-Authenticate` challenge, if this rejection has one.
    fn challenge(&self) -> Option<String> {
        let description = quoted(&self.to_string());
        match self {
            Rejection::MissingToken => Some("Bearer".to_owned()),
            Rejection::BadRequest(_) => {
                Some(format!(r#"Bearer error="invalid_request", error_description="{description}""#))
            }
            Rejection::InvalidToken(e) if e.is_temporary() => None,
            Rejection::InvalidToken(_) => {
                Some(format!(r#"Bearer error="invalid_token", error_description="{description}""#))
            }
            Rejection::Denied(denied) => {
                let mut challenge = format!(r#"Bearer error="insufficient_scope", error_description="{description}""#);
                if let Some(scope) = denied.required_permission() {
                    challenge.push_str(&format!(r#", scope="{}""#, quoted(scope)));
                }
                Some(challenge)
            }
        }
    }
}

/// Makes `text` safe inside an RFC 6750 quoted attribute value, whose
/// characters must be %x20-21 / %x23-5B / %x5D-7E: quotes and backslashes
/// become `'` and `/`, anything else outside printable ASCII `?`.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.error_code(), "error_description": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        if let Some(challenge) = self.challenge()
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use ::axum::Router;
    use ::axum::body::Body;
    use ::axum::http::Request;
    use ::axum::routing::get;
    use http_body_util::BodyExt as _;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::Target;
    use crate::test_support::{Key, claims, verifier};

    async fn deploy_web(WritGrant(grant): WritGrant) -> Result<String, Rejection> {
        grant.require("acme-prod", "deploy", Target::App("web"))?;
        Ok(grant.subject().to_owned())
    }

    struct Answer {
        status: StatusCode,
        challenge: Option<String>,
        body: Value,
    }

    async fn call(key: &Key, authorization: &[&str]) -> Answer {
        let app = Router::new().route("/", get(deploy_web)).with_state(verifier(&[key]));
        let mut request = Request::get("/");
        for value in authorization {
            request = request.header(AUTHORIZATION, *value);
        }
        let response = app.oneshot(request.body(Body::empty()).expect("request")).await.expect("infallible");
        let status = response.status();
        let challenge =
            response.headers().get(WWW_AUTHENTICATE).map(|v| v.to_str().expect("ascii challenge").to_owned());
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        Answer { status, challenge, body }
    }

    /// Valid claims at the system clock, with `changes`.
    fn token(key: &Key, changes: Value) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let mut c = claims();
        c["iat"] = json!(now);
        c["nbf"] = json!(now);
        c["exp"] = json!(now + 600);
        for (k, v) in changes.as_object().expect("object") {
            c[k] = v.clone();
        }
        key.sign(&c)
    }

    #[tokio::test]
    async fn a_valid_token_reaches_the_handler() {
        let key = Key::new("k1");
        let good = token(&key, json!({}));
        for header in [format!("Bearer {good}"), format!("bearer {good}"), format!("BEARER  {good} ")] {
            let answer = call(&key, &[&header]).await;
            assert_eq!(answer.status, StatusCode::OK, "{header}: {}", answer.body);
            assert_eq!(answer.body, json!("github:repo:acme/web:environment:production"));
        }
    }

    #[tokio::test]
    async fn no_bearer_credentials_get_a_bare_challenge() {
        let key = Key::new("k1");
        for headers in [&[][..], &["Basic dXNlcjpwYXNz"][..], &["Token abc"][..]] {
            let answer = call(&key, headers).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{headers:?}");
            assert_eq!(answer.challenge.as_deref(), Some("Bearer"), "no error code (RFC 6750 3.1)");
            assert_eq!(answer.body["error"], "invalid_token");
        }
    }

    #[tokio::test]
    async fn a_malformed_authorization_header_is_a_bad_request() {
        let key = Key::new("k1");
        let good = token(&key, json!({}));
        let two = format!("Bearer {good}");
        for headers in [&["Bearer"][..], &["Bearer "][..], &["Bearer a b"][..], &[two.as_str(), two.as_str()][..]] {
            let answer = call(&key, headers).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{headers:?}");
            assert!(answer.challenge.expect("challenge").starts_with(r#"Bearer error="invalid_request""#));
            assert_eq!(answer.body["error"], "invalid_request");
        }
    }

    #[tokio::test]
    async fn a_refused_token_is_invalid_token_with_the_reason() {
        let key = Key::new("k1");
        let outsider = token(&Key::new("k1"), json!({}));
        let answer = call(&key, &[&format!("Bearer {outsider}")]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.challenge.as_deref(),
            Some(r#"Bearer error="invalid_token", error_description="token signature does not verify""#)
        );
        assert_eq!(
            answer.body,
            json!({"error": "invalid_token", "error_description": "token signature does not verify"})
        );
    }

    #[tokio::test]
    async fn a_denied_action_is_insufficient_scope_naming_the_permission() {
        let key = Key::new("k1");
        let logs_only = token(&key, json!({"scope": "logs:read"}));
        let answer = call(&key, &[&format!("Bearer {logs_only}")]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(
            answer.challenge.as_deref(),
            Some(
                r#"Bearer error="insufficient_scope", error_description="token lacks permission deploy (has logs:read)", scope="deploy""#
            )
        );
        assert_eq!(answer.body["error"], "insufficient_scope");

        let staging = token(&key, json!({"org": "acme-staging"}));
        let answer = call(&key, &[&format!("Bearer {staging}")]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(answer.body["error_description"], "token is for org acme-staging, not acme-prod");
        assert!(!answer.challenge.expect("challenge").contains("scope="), "no permission to name");
    }

    #[test]
    fn temporary_failures_are_503_with_retry_after() {
        let response = Rejection::InvalidToken(VerifyError::KeysUnavailable).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"5"[..]));
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn challenge_values_stay_within_rfc_6750_characters() {
        assert_eq!(quoted(r#"say "hi" \ café"#), "say 'hi' / caf?");
    }
}
