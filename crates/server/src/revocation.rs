//! Revocation for holders and verifiers: RFC 7009 (`POST /oauth/revoke`),
//! RFC 7662 introspection (`POST /oauth/introspect`) and the public
//! revocation feed (`GET /v1/revocations`).
//!
//! The feed is public, without authentication, on purpose: every platform
//! API that verifies writ tokens offline must be able to poll it as easily
//! as it fetches the JWKS, without holding a writ credential. An entry
//! holds a token's `jti` (a random UUID, useless without the token, which
//! is the bearer secret), its org name (also in every token and audit
//! record), its expiry and the revocation time. What it reveals is that
//! some token of an org was revoked, and when; nothing in it grants or
//! helps forge anything. Entries leave the feed once their token expires.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use writ_core::token::CiProvenance;

use crate::app::AppState;
use crate::auth::{
    AdminPermission, AuthFailure, Principal, admin_audience, authenticate, basic, bearer, verify_writ_token,
};
use crate::error::{ApiError, ErrorBody};
use crate::exchange::storage_error;
use crate::storage::{Revocation, RevocationTarget};

/// How long a verifier should wait before polling the feed again when it
/// has caught up. It bounds how long a revoked token may still be accepted
/// by a verifier that relies on the feed alone.
pub const REVOCATION_POLL_SECS: u64 = 30;
/// Default page size of the feed.
pub const DEFAULT_FEED_PAGE: u32 = 500;
/// Largest page size of the feed.
pub const MAX_FEED_PAGE: u32 = 1000;

/// The feed cursor: an opaque encoding of a feed position.
fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("rev:{seq}"))
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    text.strip_prefix("rev:")?.parse().ok().filter(|s: &i64| *s >= 0)
}

/// The query of `GET /v1/revocations` (read by hand in [`feed`], which
/// refuses other parameters).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The `cursor` of the previous page; leave out to start at the
    /// beginning.
    pub since: Option<String>,
    /// Page size, 1 to 1000 (default 500).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `GET /v1/revocations` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationFeed {
    /// Revoked, unexpired tokens after the cursor, oldest first.
    pub revocations: Vec<RevokedToken>,
    /// Send as `since` on the next poll.
    pub cursor: String,
    /// Seconds to wait before polling again; 0 while more entries wait.
    pub poll_after_s: u64,
}

/// One entry of the revocation feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedToken {
    /// The revoked token's `jti`.
    pub jti: String,
    /// Its org.
    pub org: String,
    /// Its expiry, Unix seconds: keep the entry until then.
    pub exp: i64,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
}

/// The revocation feed, for verifiers
///
/// Revoked, unexpired tokens after the cursor, oldest first.
/// `poll_after_s` is 0 while more entries wait (fetch the next page at
/// once), else [`REVOCATION_POLL_SECS`]. Keep the returned `cursor` for
/// the next poll. Public on purpose (see the module documentation).
#[utoipa::path(
    get,
    path = "/v1/revocations",
    operation_id = "revocation_feed",
    tag = "revocation",
    params(FeedQuery),
    responses(
        (status = 200, description = "A page of the feed", body = RevocationFeed),
        (status = 400, description = "`invalid_request`: a cursor this server did not give out, a limit out of range, or an unknown parameter", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn feed(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let mut since = 0;
    let mut limit = DEFAULT_FEED_PAGE;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "since" if v.is_empty() => {}
            "since" => {
                since = decode_cursor(&v).ok_or_else(|| {
                    ApiError::invalid_request("since is not a cursor this server gave out; start again without it")
                })?;
            }
            "limit" => {
                limit = v.parse().ok().filter(|l| (1..=MAX_FEED_PAGE).contains(l)).ok_or_else(|| {
                    ApiError::invalid_request(format!("limit={v:?}: a number from 1 to {MAX_FEED_PAGE}"))
                })?;
            }
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {other:?}; this endpoint takes since and limit"
                )));
            }
        }
    }
    let now = state.clock.now();
    let entries = state.store.revocation_feed(since, now, limit).await.map_err(storage_error)?;
    let more = entries.len() == limit as usize;
    let cursor = entries.last().map_or(since, |e| e.seq);
    let revocations = entries
        .iter()
        .map(|e| RevokedToken { jti: e.jti.clone(), org: e.org.clone(), exp: e.expires_at, revoked_at: e.revoked_at })
        .collect();
    let mut response = Json(RevocationFeed {
        revocations,
        cursor: encode_cursor(cursor),
        poll_after_s: if more { 0 } else { REVOCATION_POLL_SECS },
    })
    .into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The `token` parameter of an RFC 7009 / RFC 7662 form body.
fn token_param(headers: &HeaderMap, body: &Bytes) -> Result<String, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(ApiError::invalid_request(
            "send the body form-encoded (Content-Type: application/x-www-form-urlencoded) with token=<token>",
        ));
    }
    let mut token = None;
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "token" if token.is_some() => {
                return Err(ApiError::invalid_request("parameter token is given more than once"));
            }
            "token" => token = Some(v.into_owned()),
            // Hints and client ids are optional; writ knows its one token type.
            _ => {}
        }
    }
    token.filter(|t| !t.is_empty()).ok_or_else(|| ApiError::invalid_request("parameter token is missing"))
}

/// The form of `POST /oauth/revoke` and `POST /oauth/introspect`, as
/// documented; [`token_param`] reads it (and ignores other parameters).
#[derive(Debug, ToSchema)]
pub struct TokenParam {
    /// The writ token.
    #[schema(min_length = 1)]
    pub token: String,
    /// Optional, and ignored: writ knows its one token type.
    pub token_type_hint: Option<String>,
}

/// `POST /oauth/revoke` body: always empty (RFC 7009 §2.2).
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {}

/// Revoke a writ token (RFC 7009)
///
/// The holder of a writ token revokes it, and everything narrowed from
/// it. Possession of the token is the authorization, as for any public
/// client. Unknown, invalid and expired tokens also get 200 (RFC 7009
/// §2.2: nothing to do, and the answer must not tell a stranger which
/// tokens exist).
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    operation_id = "revoke_token",
    tag = "revocation",
    request_body(content = TokenParam, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke", body = Revoked),
        (status = 400, description = "`invalid_request`: not form-encoded, or no `token`", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached; nothing was revoked", body = ErrorBody),
    ),
)]
pub async fn oauth_revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = token_param(&headers, &body)?;
    let admin_aud = admin_audience(&state.config.public_url);
    let audiences = [state.config.tokens.audience.as_str(), admin_aud.as_str()];
    match verify_writ_token(&state, &token, &audiences).await {
        Ok(claims) => {
            let revocation = Revocation {
                org: claims.org.clone(),
                target: RevocationTarget::Jti(claims.jti.clone()),
                reason: "revoked by its holder (RFC 7009)".to_owned(),
                revoked_by: Some(claims.sub.clone()),
                now: state.clock.now(),
            };
            let n = state.store.revoke(&revocation).await.map_err(storage_error)?;
            tracing::info!(org = %claims.org, jti = %claims.jti, revoked = n, "holder revoked token {}", claims.jti);
        }
        Err(AuthFailure::Storage(e)) => return Err(e),
        Err(AuthFailure::Token(_) | AuthFailure::Revoked) => {}
    }
    Ok(Json(Revoked {}).into_response())
}

/// Who may introspect which tokens.
enum Introspector {
    /// A configured resource server, or the root credential: any token.
    Any,
    /// An org admin token: tokens of its own org only.
    Org(String),
}

/// Introspection callers: a resource server with HTTP Basic client
/// credentials (`[[introspection.clients]]`), the operator root
/// credential, or an org admin token holding `writ:audit:read` or
/// `writ:tokens:revoke` (its own org's tokens only).
async fn introspector(state: &AppState, headers: &HeaderMap) -> Result<Introspector, ApiError> {
    if let Some((id, secret)) = basic(headers) {
        let known = state.config.introspection_clients.iter().find(|c| c.id == id);
        return match known {
            Some(c) if c.secret_hash.matches(&secret) => Ok(Introspector::Any),
            _ => Err(ApiError::invalid_client("unknown introspection client or wrong secret")),
        };
    }
    if bearer(headers).is_none() {
        return Err(ApiError::invalid_client(
            "introspection needs client credentials (HTTP Basic, [[introspection.clients]] in the server config) or an admin credential",
        ));
    }
    match authenticate(state, headers).await? {
        Principal::Root => Ok(Introspector::Any),
        Principal::Org(admin) => {
            let principal = Principal::Org(admin.clone());
            principal
                .require(&admin.org, AdminPermission::AuditRead)
                .or_else(|_| principal.require(&admin.org, AdminPermission::TokensRevoke))?;
            Ok(Introspector::Org(admin.org))
        }
    }
}

/// `POST /oauth/introspect` body (RFC 7662 §2.2): `{"active": false}`
/// alone, or `active` with the token's claims.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Introspection {
    /// Whether the token is active now.
    pub active: bool,
    /// Granted permissions, space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// RFC 9068 `client_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `Bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// Expiry, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// `<issuer-name>:<oidc sub>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The platform's audience, or writ's admin audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// writ's public URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The token's org.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Apps the token is limited to; absent: not limited by app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// Machines the token is limited to; absent: not limited by machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machines: Option<Vec<String>>,
    /// The `jti` of the token this one was narrowed from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Where the CI job that obtained the token came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::api::schemas::CiProvenanceSchema>)]
    pub ci: Option<CiProvenance>,
}

/// Introspect a writ token (RFC 7662)
///
/// Whether a writ token is active now — signature, `iss`, `aud` (the
/// platform's or writ's admin audience), times, and not revoked — and its
/// claims if so. Anything else is `{"active": false}`, with no reason
/// (RFC 7662 §2.2). An org admin token sees its own org's tokens only.
#[utoipa::path(
    post,
    path = "/oauth/introspect",
    operation_id = "introspect_token",
    tag = "revocation",
    request_body(content = TokenParam, content_type = "application/x-www-form-urlencoded"),
    security(("introspection_client" = []), ("root_credential" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Whether the token is active, and its claims if so", body = Introspection),
        (status = 400, description = "`invalid_request`: not form-encoded, or no `token`", body = ErrorBody),
        (status = 401, description = "`invalid_client` (`WWW-Authenticate: Basic`): no or wrong client credentials; `invalid_token` (`WWW-Authenticate: Bearer`): an invalid admin credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: an admin token without `writ:audit:read` or `writ:tokens:revoke`", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn introspect(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let who = introspector(&state, &headers).await?;
    let token = token_param(&headers, &body)?;
    let admin_aud = admin_audience(&state.config.public_url);
    let audiences = [state.config.tokens.audience.as_str(), admin_aud.as_str()];
    let body = match verify_writ_token(&state, &token, &audiences).await {
        Ok(claims) if matches!(&who, Introspector::Org(org) if *org != claims.org) => Introspection::default(),
        Ok(c) => Introspection {
            active: true,
            scope: Some(c.scope),
            client_id: Some(c.client_id),
            token_type: Some("Bearer"),
            exp: Some(c.exp),
            iat: Some(c.iat),
            nbf: Some(c.nbf),
            sub: Some(c.sub),
            aud: Some(c.aud),
            iss: Some(c.iss),
            jti: Some(c.jti),
            org: Some(c.org),
            apps: c.apps,
            machines: c.machines,
            parent: c.parent,
            ci: Some(c.ci),
        },
        Err(AuthFailure::Storage(e)) => return Err(e),
        Err(AuthFailure::Token(_) | AuthFailure::Revoked) => Introspection::default(),
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("42"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("rev:-1")), None);
    }
}
