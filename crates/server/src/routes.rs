//! HTTP handlers: the two front doors of the exchange, discovery, health.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::AppState;
use crate::error::{ApiError, REQUEST_ID_HEADER};
use crate::exchange::{self, CallerInfo, ExchangeInput, ExchangeOutput};

/// RFC 8693 grant type of `/oauth/token`.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Subject token types accepted for OIDC tokens.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// Generic JWT subject token type (also accepted for OIDC tokens).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Access-token type: what writ issues, and what a narrowing request presents.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Request id and client address of the current request.
pub struct Caller(pub CallerInfo);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let request_id =
            parts.headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let client_addr = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        Ok(Caller(CallerInfo { request_id, client_addr }))
    }
}

/// `POST /v1/exchange` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The CI job's OIDC token.
    pub token: String,
    /// The org to get a token for (may be left out when `token` is a writ
    /// token being narrowed: it keeps its org).
    #[serde(default)]
    pub org: String,
    /// Permissions wanted (default: the matching rule's grant).
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Apps the token should be limited to.
    #[serde(default)]
    pub apps: Vec<String>,
    /// Machines the token should be limited to.
    #[serde(default)]
    pub machines: Vec<String>,
    /// Lifetime wanted: `"10m"`, or seconds as a number.
    #[serde(default)]
    pub ttl: Option<Ttl>,
}

/// A lifetime given as `"10m"` or as a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    /// Seconds.
    Seconds(u64),
    /// A humantime duration.
    Text(String),
}

impl Ttl {
    fn parse(&self) -> Result<Duration, ApiError> {
        match self {
            Ttl::Seconds(s) => Ok(Duration::from_secs(*s)),
            Ttl::Text(t) => humantime::parse_duration(t).map_err(|_| {
                ApiError::invalid_request(format!("ttl {t:?} is not a duration; write e.g. \"10m\" or 600"))
            }),
        }
    }
}

/// `POST /v1/exchange` response.
#[derive(Debug, Serialize)]
pub struct ExchangeResponse {
    /// The writ token.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// The org.
    pub org: String,
    /// Granted permissions.
    pub permissions: Vec<String>,
    /// Apps (empty: unrestricted).
    pub apps: Vec<String>,
    /// Machines (empty: unrestricted).
    pub machines: Vec<String>,
    /// The rule that granted it.
    pub rule: String,
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn no_store(mut response: Response) -> Response {
    // RFC 6749 §5.1: token responses must not be cached.
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// Parses a JSON body, turning every rejection into the one error shape.
fn parse_json<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(ApiError::invalid_request("send the body as JSON with Content-Type: application/json"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// `POST /v1/exchange`.
pub async fn exchange_json(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ExchangeRequest = parse_json(&headers, &body)?;
    let ttl = req.ttl.as_ref().map(Ttl::parse).transpose()?;
    let input = ExchangeInput {
        subject_token: req.token,
        org: req.org,
        permissions: req.permissions,
        apps: req.apps,
        machines: req.machines,
        ttl,
    };
    let out: ExchangeOutput = exchange::exchange(&state, input, &caller).await?;
    Ok(no_store(
        Json(ExchangeResponse {
            token: out.token,
            token_type: "Bearer",
            expires_in: out.expires_in,
            expires_at: rfc3339(out.expires_at),
            org: out.org,
            permissions: out.permissions,
            apps: out.apps,
            machines: out.machines,
            rule: out.rule,
        })
        .into_response(),
    ))
}

/// `POST /oauth/token` (RFC 8693 token exchange, form-encoded).
pub async fn exchange_form(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(ApiError::invalid_request(
            "send the body form-encoded with Content-Type: application/x-www-form-urlencoded (RFC 8693)",
        ));
    }
    let form = TokenForm::parse(&body)?;
    let (input, narrowing) = form.into_input()?;
    // The declared type must fit the token: a writ token is narrowed only
    // when the caller says so, and an OIDC token never goes that way.
    match (narrowing, crate::narrow::is_writ_token(&state, &input.subject_token)) {
        (true, false) => {
            return Err(ApiError::invalid_request(format!(
                "subject_token_type {TOKEN_TYPE_ACCESS_TOKEN} is for narrowing a writ token, and this is not one; use {TOKEN_TYPE_ID_TOKEN} for a CI OIDC token"
            )));
        }
        (false, true) => {
            return Err(ApiError::invalid_request(format!(
                "this subject_token is a writ token; to narrow it, send subject_token_type={TOKEN_TYPE_ACCESS_TOKEN}"
            )));
        }
        _ => {}
    }
    let out = exchange::exchange(&state, input, &caller).await?;
    let mut body = json!({
        "access_token": out.token,
        "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": out.expires_in,
        "scope": out.permissions.join(" "),
        "org": out.org,
        "rule": out.rule,
    });
    if !out.apps.is_empty() {
        body["apps"] = json!(out.apps);
    }
    if !out.machines.is_empty() {
        body["machines"] = json!(out.machines);
    }
    Ok(no_store(Json(body).into_response()))
}

/// The fields of an RFC 8693 request, with repeated `resource`s kept.
#[derive(Debug, Default)]
struct TokenForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    audience: Vec<String>,
    resource: Vec<String>,
    scope: Option<String>,
    ttl: Option<String>,
}

impl TokenForm {
    fn parse(body: &[u8]) -> Result<TokenForm, ApiError> {
        let mut form = TokenForm::default();
        for (key, value) in url::form_urlencoded::parse(body) {
            let value = value.into_owned();
            let single = |slot: &mut Option<String>| {
                if slot.replace(value.clone()).is_some() {
                    Err(ApiError::invalid_request(format!("parameter {key} is given more than once")))
                } else {
                    Ok(())
                }
            };
            match key.as_ref() {
                "grant_type" => single(&mut form.grant_type)?,
                "subject_token" => single(&mut form.subject_token)?,
                "subject_token_type" => single(&mut form.subject_token_type)?,
                "scope" => single(&mut form.scope)?,
                "ttl" => single(&mut form.ttl)?,
                "audience" => form.audience.push(value),
                "resource" => form.resource.push(value),
                // RFC 8693 optional parameters writ does not use.
                "requested_token_type" | "actor_token" | "actor_token_type" | "client_id" => {}
                other => {
                    return Err(ApiError::invalid_request(format!(
                        "unknown parameter {other:?}; RFC 8693 token exchange takes grant_type, subject_token, subject_token_type, audience, resource, scope"
                    )));
                }
            }
        }
        Ok(form)
    }

    /// The exchange input, and whether the caller asked for narrowing
    /// (`subject_token_type` access_token; the audience may then be left
    /// out: the token's own org).
    fn into_input(self) -> Result<(ExchangeInput, bool), ApiError> {
        match self.grant_type.as_deref() {
            Some(GRANT_TYPE_TOKEN_EXCHANGE) => {}
            Some(other) => {
                return Err(ApiError::unsupported_grant_type(format!(
                    "grant_type {other:?} is not supported; use {GRANT_TYPE_TOKEN_EXCHANGE}"
                )));
            }
            None => {
                return Err(ApiError::invalid_request(format!(
                    "grant_type is missing; use {GRANT_TYPE_TOKEN_EXCHANGE}"
                )));
            }
        }
        let subject_token = self
            .subject_token
            .ok_or_else(|| ApiError::invalid_request("subject_token is missing: send the CI job's OIDC token"))?;
        let narrowing = match self.subject_token_type.as_deref() {
            Some(TOKEN_TYPE_ID_TOKEN | TOKEN_TYPE_JWT) => false,
            Some(TOKEN_TYPE_ACCESS_TOKEN) => true,
            Some(other) => {
                return Err(ApiError::invalid_request(format!(
                    "subject_token_type {other:?} is not supported; use {TOKEN_TYPE_ID_TOKEN} for a CI OIDC token"
                )));
            }
            None => {
                return Err(ApiError::invalid_request(format!(
                    "subject_token_type is missing; use {TOKEN_TYPE_ID_TOKEN} for a CI OIDC token"
                )));
            }
        };
        let mut org = None;
        let mut apps = Vec::new();
        let mut machines = Vec::new();
        let mut set_org = |name: String| -> Result<(), ApiError> {
            match &org {
                Some(o) if *o != name => Err(ApiError::invalid_request(format!(
                    "two different orgs named ({o:?} and {name:?}); a token is for exactly one org"
                ))),
                _ => {
                    org = Some(name);
                    Ok(())
                }
            }
        };
        for a in self.audience {
            set_org(a.strip_prefix("org:").map(str::to_owned).unwrap_or(a))?;
        }
        for r in self.resource {
            if let Some(app) = r.strip_prefix("app:") {
                apps.push(app.to_owned());
            } else if let Some(machine) = r.strip_prefix("machine:") {
                machines.push(machine.to_owned());
            } else if let Some(o) = r.strip_prefix("org:") {
                set_org(o.to_owned())?;
            } else {
                return Err(ApiError::denied(
                    "invalid_target",
                    format!("resource {r:?} is not understood; use app:<name>, machine:<id> or org:<name>"),
                ));
            }
        }
        let org = match org {
            Some(org) => org,
            None if narrowing => String::new(),
            None => return Err(ApiError::invalid_request("audience is missing: name the org (audience=acme-prod)")),
        };
        let permissions =
            self.scope.map(|s| s.split(' ').filter(|p| !p.is_empty()).map(str::to_owned).collect()).unwrap_or_default();
        let ttl = self
            .ttl
            .map(|t| {
                humantime::parse_duration(&t).or_else(|_| t.parse::<u64>().map(Duration::from_secs)).map_err(|_| {
                    ApiError::invalid_request(format!("ttl {t:?} is not a duration; write e.g. 10m or 600"))
                })
            })
            .transpose()?;
        Ok((ExchangeInput { subject_token, org, permissions, apps, machines, ttl }, narrowing))
    }
}

/// `GET /.well-known/openid-configuration`: lets any JWT library find
/// writ's keys, and tells CI clients which `aud` to request.
pub async fn openid_configuration(State(state): State<AppState>) -> Response {
    let base = &state.config.public_url;
    Json(json!({
        "issuer": base,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/oauth/token"),
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": state.config.permissions.keys().collect::<Vec<_>>(),
        "writ_exchange_endpoint": format!("{base}/v1/exchange"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "introspection_endpoint": format!("{base}/oauth/introspect"),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "writ_revocation_feed": format!("{base}/v1/revocations"),
        "writ_admin_audience": crate::auth::admin_audience(base),
        "writ_oidc_audience": state.config.audience,
        "writ_token_audience": state.config.tokens.audience,
    }))
    .into_response()
}

/// `GET /.well-known/jwks.json`: writ's public signing keys, including one
/// pre-published before it signs.
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keyring.jwks_at(state.clock.now())).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=300"));
    response
}

/// `GET /v1/audience`: the `aud` a CI job should request for its OIDC token.
pub async fn audience(State(state): State<AppState>) -> Response {
    Json(json!({ "audience": state.config.audience })).into_response()
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: storage answers and a signing key is loaded.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let storage = state.store.ping().await;
    let body = json!({
        "status": if storage.is_ok() { "ready" } else { "unavailable" },
        "storage": match &storage { Ok(()) => "ok".to_owned(), Err(e) => format!("unavailable: {e}") },
        "signing_key": state.keyring.current_at(state.clock.now()).kid(),
        "orgs": state.policies.len(),
    });
    let status = if storage.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; the exchange is POST /v1/exchange or POST /oauth/token")
}
