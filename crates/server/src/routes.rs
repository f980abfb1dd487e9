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
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, REQUEST_ID_HEADER};
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

/// Whether the request says its body is JSON (`Content-Type:
/// application/json`, parameters allowed). Read from the request's headers
/// where they are: axum's `HeaderMap` extractor copies the whole map.
#[derive(Debug, Clone, Copy)]
pub struct JsonContent(bool);

impl<S: Send + Sync> FromRequestParts<S> for JsonContent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let is_json =
            parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        Ok(JsonContent(is_json))
    }
}

/// `POST /v1/exchange` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    /// The CI job's OIDC token (or a writ token to narrow).
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
#[derive(Debug, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct ExchangeResponse {
    /// The writ token.
    pub token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Expiry, RFC 3339.
    #[schema(format = DateTime)]
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

/// A token response: `body` as JSON, not to be cached. Serialized into one
/// buffer sized for the token up front (axum's `Json` starts at 128 bytes
/// and grows it several times per response).
fn token_response<T: Serialize>(body: &T, token_len: usize) -> Response {
    let mut bytes = Vec::with_capacity(token_len + 512);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => no_store(([(header::CONTENT_TYPE, "application/json")], bytes).into_response()),
        Err(e) => {
            tracing::error!("serializing a token response failed: {e}");
            ApiError::internal().into_response()
        }
    }
}

/// Parses a JSON body, turning every rejection into the one error shape.
fn parse_json<T: serde::de::DeserializeOwned>(content: JsonContent, body: &Bytes) -> Result<T, ApiError> {
    if !content.0 {
        return Err(ApiError::invalid_request("send the body as JSON with Content-Type: application/json"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// Exchange an OIDC token for a writ token (JSON)
///
/// A writ token as `token` is narrowed instead: the result is never wider
/// than it. Denials name the failed conditions in `explanation` when the
/// caller's verified owner is one the org's policy names.
#[utoipa::path(
    post,
    path = "/v1/exchange",
    operation_id = "exchange",
    tag = "exchange",
    request_body(
        content = ExchangeRequest,
        content_type = "application/json",
        example = json!({
            "token": "eyJhbGciOiJSUzI1NiIsImtpZCI6ImV4YW1wbGUifQ.eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZ2l0aHVidXNlcmNvbnRlbnQuY29tIn0.c2lnbmF0dXJl",
            "org": "acme-prod",
            "permissions": ["deploy"],
            "apps": ["web"],
            "machines": [],
            "ttl": "10m"
        }),
    ),
    responses(
        (status = 200, description = "Granted. Not cacheable (`Cache-Control: no-store`).", body = ExchangeResponse,
            example = json!({
                "token": "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFZERTQSIsImtpZCI6Ii4uLiJ9.e30.c2ln",
                "token_type": "Bearer", "expires_in": 600, "expires_at": "2026-11-27T12:10:00Z",
                "org": "acme-prod", "permissions": ["deploy"], "apps": ["web"], "machines": [], "rule": "deploy-web"
            })),
        (status = 400, description = "`invalid_request` (malformed body, wrong Content-Type, bad names or ttl), `invalid_grant` (invalid token, replayed token, or no rule matches), `invalid_scope` (permissions not granted), `invalid_target` (apps or machines not granted)", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage or the issuer's keys cannot be reached; nothing was issued. Retry after `Retry-After` seconds.", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn exchange_json(
    State(state): State<AppState>,
    Caller(caller): Caller,
    content: JsonContent,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ExchangeRequest = parse_json(content, &body)?;
    // Freed before the exchange waits for its commit, on this thread (see
    // `exchange::exchange`).
    drop(body);
    let ttl = req.ttl.as_ref().map(Ttl::parse).transpose()?;
    let input = ExchangeInput {
        subject_token: req.token,
        org: req.org,
        permissions: req.permissions,
        apps: req.apps,
        machines: req.machines,
        ttl,
    };
    let started = std::time::Instant::now();
    let result = exchange::exchange(&state, input, &caller).await;
    crate::metrics::exchange(started, result.as_ref().err().map(ApiError::code));
    let out: ExchangeOutput = result?;
    let token_len = out.token.len();
    let body = ExchangeResponse {
        token: out.token,
        token_type: "Bearer",
        expires_in: out.expires_in,
        expires_at: rfc3339(out.expires_at),
        org: out.org,
        permissions: out.permissions,
        apps: out.apps,
        machines: out.machines,
        rule: out.rule,
    };
    Ok(token_response(&body, token_len))
}

/// RFC 8693 token exchange (form-encoded)
///
/// The same exchange as `POST /v1/exchange`, as an OAuth token endpoint.
/// `subject_token_type` `…:access_token` narrows a writ token.
#[utoipa::path(
    post,
    path = "/oauth/token",
    operation_id = "token_exchange",
    tag = "exchange",
    request_body(
        content = TokenRequest,
        content_type = "application/x-www-form-urlencoded",
        example = json!({
            "grant_type": GRANT_TYPE_TOKEN_EXCHANGE,
            "subject_token": "eyJhbGciOiJSUzI1NiIsImtpZCI6ImV4YW1wbGUifQ.eyJpc3MiOiJodHRwczovL3Rva2VuLmFjdGlvbnMuZ2l0aHVidXNlcmNvbnRlbnQuY29tIn0.c2lnbmF0dXJl",
            "subject_token_type": TOKEN_TYPE_ID_TOKEN,
            "audience": ["acme-prod"],
            "scope": "deploy logs:read",
            "resource": ["app:web"]
        }),
    ),
    responses(
        (status = 200, description = "Granted (RFC 8693 §2.2.1). Not cacheable (`Cache-Control: no-store`).", body = TokenResponse),
        (status = 400, description = "`invalid_request`, `unsupported_grant_type`, `invalid_grant`, `invalid_scope` or `invalid_target` (RFC 6749 §5.2, RFC 8693 §2.2.2)", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage or the issuer's keys cannot be reached; nothing was issued. Retry after `Retry-After` seconds.", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
    ),
)]
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
    // As in `exchange_json`: freed here, before the commit's wait.
    drop((headers, body));
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
    let started = std::time::Instant::now();
    let result = exchange::exchange(&state, input, &caller).await;
    crate::metrics::exchange(started, result.as_ref().err().map(ApiError::code));
    let out = result?;
    let token_len = out.token.len();
    let body = TokenResponse {
        access_token: out.token,
        issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
        token_type: "Bearer",
        expires_in: out.expires_in,
        scope: out.permissions.join(" "),
        org: out.org,
        rule: out.rule,
        apps: out.apps,
        machines: out.machines,
    };
    Ok(token_response(&body, token_len))
}

/// `POST /oauth/token` response (RFC 8693 §2.2.1), with writ's additions.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The writ token.
    pub access_token: String,
    /// Always `urn:ietf:params:oauth:token-type:access_token`.
    #[schema(example = "urn:ietf:params:oauth:token-type:access_token")]
    pub issued_token_type: &'static str,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Granted permissions, space-separated.
    #[schema(example = "deploy logs:read")]
    pub scope: String,
    /// The org.
    pub org: String,
    /// The rule that granted it.
    pub rule: String,
    /// Apps the token is limited to; left out when unrestricted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// Machines the token is limited to; left out when unrestricted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
}

/// The form of `POST /oauth/token` (RFC 8693 §2.1), as documented.
/// [`TokenForm::parse`] reads it by hand, to keep repeated `resource`s
/// and refuse a repeated single-valued parameter; a unit test keeps the
/// two in step. RFC 8693's `requested_token_type`, `actor_token`,
/// `actor_token_type` and `client_id` are accepted and ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    #[schema(value_type = GrantType)]
    pub grant_type: String,
    /// The CI job's OIDC token, or a writ token to narrow.
    pub subject_token: String,
    /// `…:id_token` or `…:jwt` for an OIDC token, `…:access_token` for a
    /// writ token to narrow.
    #[schema(value_type = SubjectTokenType)]
    pub subject_token_type: String,
    /// The org (`acme-prod`, or `org:acme-prod`); may be left out when
    /// narrowing (the token keeps its org). Repeated values must agree.
    #[serde(default)]
    pub audience: Vec<String>,
    /// `app:<name>`, `machine:<id>` or `org:<name>`; repeat for several.
    #[serde(default)]
    pub resource: Vec<String>,
    /// Permissions wanted, space-separated (default: the matching rule's
    /// grant).
    #[serde(default)]
    pub scope: Option<String>,
    /// Lifetime wanted: `10m`, or seconds.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// The grant type of `POST /oauth/token`.
#[derive(Debug, Deserialize, ToSchema)]
pub enum GrantType {
    /// RFC 8693 token exchange.
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

/// The subject token types `POST /oauth/token` accepts.
#[derive(Debug, Deserialize, ToSchema)]
pub enum SubjectTokenType {
    /// A CI job's OIDC token.
    #[serde(rename = "urn:ietf:params:oauth:token-type:id_token")]
    IdToken,
    /// A CI job's OIDC token, as a generic JWT.
    #[serde(rename = "urn:ietf:params:oauth:token-type:jwt")]
    Jwt,
    /// A writ token, to narrow.
    #[serde(rename = "urn:ietf:params:oauth:token-type:access_token")]
    AccessToken,
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

/// `GET /.well-known/openid-configuration` body: the discovery metadata
/// JWT libraries read, plus writ's own `writ_…` fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenIdConfiguration {
    /// writ's public URL: the `iss` of every writ token.
    pub issuer: String,
    /// Where writ's public keys are.
    pub jwks_uri: String,
    /// The RFC 8693 token endpoint.
    pub token_endpoint: String,
    /// Only RFC 8693 token exchange.
    pub grant_types_supported: Vec<&'static str>,
    /// `token`.
    pub response_types_supported: Vec<&'static str>,
    /// `public`.
    pub subject_types_supported: Vec<&'static str>,
    /// `EdDSA`: how writ signs.
    pub id_token_signing_alg_values_supported: Vec<&'static str>,
    /// `none`: the subject token is the credential.
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// The permission catalogue.
    pub scopes_supported: Vec<String>,
    /// `POST /v1/exchange`.
    pub writ_exchange_endpoint: String,
    /// RFC 7009 revocation.
    pub revocation_endpoint: String,
    /// RFC 7662 introspection.
    pub introspection_endpoint: String,
    /// `client_secret_basic`.
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// The public revocation feed.
    pub writ_revocation_feed: String,
    /// The `aud` of writ admin tokens.
    pub writ_admin_audience: String,
    /// The `aud` a CI job should request for its OIDC token.
    pub writ_oidc_audience: String,
    /// The `aud` of the tokens writ mints for the platform.
    pub writ_token_audience: String,
}

/// OpenID discovery document
///
/// Lets any JWT library find writ's keys, and tells CI clients which
/// `aud` to request.
#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    operation_id = "openid_configuration",
    tag = "discovery",
    responses((status = 200, description = "The discovery document", body = OpenIdConfiguration)),
)]
pub async fn openid_configuration(State(state): State<AppState>) -> Response {
    let base = &state.config.public_url;
    Json(OpenIdConfiguration {
        issuer: base.clone(),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        token_endpoint: format!("{base}/oauth/token"),
        grant_types_supported: vec![GRANT_TYPE_TOKEN_EXCHANGE],
        response_types_supported: vec!["token"],
        subject_types_supported: vec!["public"],
        id_token_signing_alg_values_supported: vec!["EdDSA"],
        token_endpoint_auth_methods_supported: vec!["none"],
        scopes_supported: state.config.permissions.keys().cloned().collect(),
        writ_exchange_endpoint: format!("{base}/v1/exchange"),
        revocation_endpoint: format!("{base}/oauth/revoke"),
        introspection_endpoint: format!("{base}/oauth/introspect"),
        introspection_endpoint_auth_methods_supported: vec!["client_secret_basic"],
        writ_revocation_feed: format!("{base}/v1/revocations"),
        writ_admin_audience: crate::auth::admin_audience(base),
        writ_oidc_audience: state.config.audience.clone(),
        writ_token_audience: state.config.tokens.audience.clone(),
    })
    .into_response()
}

/// writ's public signing keys
///
/// Including one published before it signs, so verifiers that cache the
/// set see a rotation coming.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "jwks",
    tag = "discovery",
    responses((status = 200, description = "The JSON Web Key Set; cacheable for 5 minutes", body = crate::api::schemas::JwksSchema)),
)]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keyring.jwks_at(state.clock.now())).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=300"));
    response
}

/// `GET /v1/audience` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Audience {
    /// The `aud` to request.
    pub audience: String,
}

/// The `aud` a CI job should request for its OIDC token
#[utoipa::path(
    get,
    path = "/v1/audience",
    operation_id = "audience",
    tag = "discovery",
    responses((status = 200, description = "The audience", body = Audience)),
)]
pub async fn audience(State(state): State<AppState>) -> Response {
    Json(Audience { audience: state.config.audience.clone() }).into_response()
}

/// `GET /healthz` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Prometheus metrics: exchange outcomes by OAuth error code and exchange
/// latency. Public like `/healthz`: no token, org or repository appears in
/// any label.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")),
)]
pub async fn metrics() -> Response {
    let body = match crate::metrics::handle() {
        Some(handle) => handle.render(),
        None => "# metrics recorder unavailable: the embedding program installed its own\n".to_owned(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Liveness: the process is up
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "Up", body = Health)),
)]
pub async fn healthz() -> Response {
    Json(Health { status: "ok" }).into_response()
}

/// `GET /readyz` body, with 200 and with 503.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `ok`, or `unavailable: <why>`.
    pub storage: String,
    /// The `kid` of the current signing key.
    pub signing_key: String,
    /// How many orgs have a policy loaded.
    pub orgs: usize,
}

/// Readiness: storage answers and a signing key is loaded
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Storage does not answer; this body, not the error shape, so a probe sees which part failed", body = Readiness),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let storage = state.store.ping().await;
    let body = Readiness {
        status: if storage.is_ok() { "ready" } else { "unavailable" },
        storage: match &storage {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("unavailable: {e}"),
        },
        signing_key: state.keyring.current_at(state.clock.now()).kid().to_owned(),
        orgs: state.policies.len(),
    };
    let status = if storage.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; the exchange is POST /v1/exchange or POST /oauth/token")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented form and the hand-written parser take the same
    /// parameters: each documented one is accepted, an undocumented one
    /// is refused.
    #[test]
    fn documented_token_form_matches_the_parser() {
        let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(form)) =
            <TokenRequest as utoipa::PartialSchema>::schema()
        else {
            panic!("TokenRequest is an object schema");
        };
        assert!(form.properties.len() >= 7, "{:?}", form.properties.keys().collect::<Vec<_>>());
        for name in form.properties.keys() {
            assert!(TokenForm::parse(format!("{name}=x").as_bytes()).is_ok(), "{name} is documented but refused");
        }
        let refused = TokenForm::parse(b"subject_tokn=x").expect_err("undocumented parameter");
        assert_eq!(refused.code(), "invalid_request");
    }
}
