//! The admin API under `/v1/orgs`: org creation, the org's trust policy
//! (versions, history, optimistic concurrency), dry-run evaluation, the
//! audit log, and revocation. See docs/admin.md for the walk-through.
//!
//! Every handler authenticates first ([`crate::auth::authenticate`]) and
//! checks the permission on the path's org before it looks anything up, so
//! an admin of one org learns nothing about another — not even whether it
//! exists.
//!
//! Policy writes need a precondition (`If-Match: "v<version>"`, or
//! `If-None-Match: *` for an org's first policy); without one they are
//! refused with 428, so two admins can never silently overwrite each
//! other. Policies are linted before anything is stored; orgs whose policy
//! comes from the server's policy directory refuse API writes (409).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use writ_core::claims::VerifiedClaims;
use writ_core::policy::{self, Diagnostic, Pins, Policy, Request as PolicyRequest, SourceFormat, TtlLimits};

use crate::app::AppState;
use crate::auth::{AdminPermission, authenticate};
use crate::error::{ApiError, ErrorBody};
use crate::exchange::{LEEWAY_SECS, pin_keys, storage_error, verify_error};
use crate::policies::{PolicyRejected, PolicyUpdate, compile, policy_format};
use crate::routes::Caller;
use crate::storage::{
    AuditQuery, AuditRecord, ManagedBy, NewOrg, NewPolicy, Outcome, Pin, PolicyFormat, Revocation, RevocationTarget,
    StorageError, StoredPolicy,
};

/// Default page size of `GET /v1/orgs/{org}/audit`.
pub const DEFAULT_AUDIT_PAGE: u32 = 100;
/// Largest page size of `GET /v1/orgs/{org}/audit`.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// Where diagnostics of a policy sent in a request body point.
const BODY_ORIGIN: &str = "request body";

// ---- helpers ---------------------------------------------------------------

/// `"v<version>"`: the entity tag of a policy version.
fn etag(version: i64) -> String {
    format!("\"v{version}\"")
}

fn with_etag(mut response: Response, version: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// Org names: 1-64 of letters, digits, `.`, `-`, `_`, starting with a
/// letter or digit. They appear in URLs, tokens and audiences.
fn validate_org_name(org: &str) -> Result<(), ApiError> {
    let ok = !org.is_empty()
        && org.len() <= 64
        && org.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && org.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_request(format!(
            "{org:?} is not a valid org name: 1-64 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )))
    }
}

async fn require_org(state: &AppState, org: &str) -> Result<(), ApiError> {
    if state.store.org_exists(org).await.map_err(storage_error)? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no org {org:?} on this server; the operator creates orgs with `writ org create`"
        )))
    }
}

/// A refused policy as the one error shape: the first problem in the
/// sentence, every diagnostic (with line and column) in `explanation`.
fn rejected(e: PolicyRejected) -> ApiError {
    let first = e.diagnostics.first().map(|d| format!("{}:{}:{}: {}", e.origin, d.line, d.column, d.message));
    let count = e.diagnostics.len();
    let description = match first {
        Some(first) if count > 1 => format!("the policy has {count} errors and was not stored; first: {first}"),
        Some(first) => format!("the policy has an error and was not stored: {first}"),
        None => "the policy was refused".to_owned(),
    };
    ApiError::invalid_request(description).with_explanation(json!(e.diagnostics))
}

fn diagnostics_json(warnings: &[Diagnostic]) -> Value {
    json!(warnings)
}

/// The policy text and syntax of a request body, by `Content-Type`.
fn policy_body(headers: &HeaderMap, body: &Bytes) -> Result<(String, SourceFormat), ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let format = match mime.as_str() {
        "application/toml" | "text/toml" | "application/x-toml" => SourceFormat::Toml,
        "application/json" => SourceFormat::Json,
        _ => {
            return Err(ApiError::invalid_request(
                "send the policy as TOML (Content-Type: application/toml) or as JSON (Content-Type: application/json)",
            ));
        }
    };
    let text = String::from_utf8(body.to_vec()).map_err(|_| ApiError::invalid_request("the policy is not UTF-8"))?;
    Ok((text, format))
}

/// The version an `If-Match` value names: `"v3"`, `W/"v3"`, `v3` or `3`;
/// `*` is "any existing version" (`None`).
fn parse_if_match(value: &str) -> Result<Option<i64>, ApiError> {
    let v = value.trim();
    if v == "*" {
        return Ok(None);
    }
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    let v = v.strip_prefix('v').unwrap_or(v);
    v.parse::<i64>().map(Some).map_err(|_| {
        ApiError::invalid_request(format!(
            "If-Match {value:?} is not a policy version; send the ETag of GET /v1/orgs/{{org}}/policy, e.g. \"v3\""
        ))
    })
}

/// The query string as pairs; every key at most once.
fn query_pairs(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::invalid_request(format!(
                "unknown query parameter {k:?}; this endpoint takes {}",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::invalid_request(format!("query parameter {k:?} is given more than once")));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// A time given as Unix seconds or RFC 3339.
fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = value.parse::<i64>() {
        return Ok(secs);
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            ApiError::invalid_request(format!(
                "{name}={value:?} is not a time; write Unix seconds or RFC 3339 (2026-11-27T12:00:00Z)"
            ))
        })
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !is_json {
        return Err(ApiError::invalid_request("send the body as JSON with Content-Type: application/json"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// One stored version of an org's policy, with its metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyDocument {
    /// The org.
    pub org: String,
    /// 1, 2, 3, … per org; the `ETag` is `"v<version>"`.
    pub version: i64,
    /// `toml` or `json`: the syntax of `source`.
    #[schema(value_type = String, example = "toml")]
    pub format: PolicyFormat,
    /// `api` (written through this API) or `file` (the server's policy
    /// directory; API writes are refused).
    #[schema(value_type = String, example = "api")]
    pub managed_by: ManagedBy,
    /// Who stored it (`root`, or an admin token's `sub`).
    pub author: Option<String>,
    /// When it was stored, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The policy text.
    pub source: String,
}

fn policy_json(p: &StoredPolicy) -> PolicyDocument {
    PolicyDocument {
        org: p.org.clone(),
        version: p.version,
        format: p.format,
        managed_by: p.managed_by,
        author: p.author.clone(),
        created_at: rfc3339(p.created_at),
        source: p.source.clone(),
    }
}

/// A path's `{org}` parameter.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgPath {
    /// The org: 1-64 letters, digits, `.`, `-` or `_`, starting with a
    /// letter or digit.
    #[param(example = "acme-prod")]
    pub org: String,
}

// ---- POST /v1/orgs ---------------------------------------------------------

/// `POST /v1/orgs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// The new org's name.
    #[schema(example = "acme-prod")]
    pub org: String,
    /// An optional first policy: TOML text, JSON text (with `format`), or
    /// a JSON object.
    #[serde(default)]
    #[schema(schema_with = crate::api::schemas::policy_source)]
    pub policy: Option<Value>,
    /// `toml` (default) or `json`, for a policy given as text; read only
    /// with `policy`.
    #[serde(default)]
    pub format: Option<String>,
}

/// `POST /v1/orgs` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgCreated {
    /// The org.
    pub org: String,
    /// When it was created, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The version of its first policy, when one was given (1).
    pub policy_version: Option<i64>,
    /// The first policy's lint warnings.
    #[schema(value_type = Vec<crate::api::schemas::DiagnosticSchema>)]
    pub warnings: Value,
}

/// Create an org (root only)
///
/// Optionally with its first policy, which is linted before anything is
/// stored.
#[utoipa::path(
    post,
    path = "/v1/orgs",
    operation_id = "create_org",
    tag = "admin",
    security(("root_credential" = [])),
    request_body(content = CreateOrg, content_type = "application/json",
        example = json!({"org": "acme-prod", "policy": "org = \"acme-prod\"\n"})),
    responses(
        (status = 201, description = "Created", body = OrgCreated,
            headers(("etag" = String, description = "`\"v1\"` when a first policy was stored"))),
        (status = 400, description = "`invalid_request`: a bad org name or body; a policy that does not lint (diagnostics with line and column in `explanation`)", body = ErrorBody),
        (status = 401, description = "`invalid_token`: no, or an invalid, credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: not the root credential", body = ErrorBody),
        (status = 409, description = "`conflict`: the org exists", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn create_org(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    principal.require_root("creating an org")?;
    let req: CreateOrg = json_body(&headers, &body)?;
    validate_org_name(&req.org)?;
    let now = state.clock.now();
    let compiled = match &req.policy {
        None | Some(Value::Null) => None,
        Some(p) => {
            let (source, format) = match (p, req.format.as_deref()) {
                (Value::String(text), None | Some("toml")) => (text.clone(), SourceFormat::Toml),
                (Value::String(text), Some("json")) => (text.clone(), SourceFormat::Json),
                (Value::Object(_), None | Some("json")) => (
                    serde_json::to_string_pretty(p).map_err(|_| ApiError::invalid_request("invalid policy JSON"))?,
                    SourceFormat::Json,
                ),
                _ => {
                    return Err(ApiError::invalid_request(
                        "policy is TOML text (format \"toml\", the default), JSON text (format \"json\") or a JSON object",
                    ));
                }
            };
            let (parsed, warnings) = compile(&source, format, &state.catalogue, BODY_ORIGIN).map_err(rejected)?;
            if parsed.org() != req.org {
                return Err(ApiError::invalid_request(format!(
                    "the policy is for org {:?}, not {:?}; its `org` must name the org being created",
                    parsed.org(),
                    req.org
                )));
            }
            Some((parsed, warnings, source, format))
        }
    };
    let first_policy = compiled.as_ref().map(|(_, _, source, format)| NewPolicy {
        org: req.org.clone(),
        source: source.clone(),
        format: policy_format(*format),
        managed_by: ManagedBy::Api,
        author: Some(principal.name()),
        expected_version: Some(0),
    });
    let (org, stored) = match state
        .store
        .create_org(NewOrg { org: req.org.clone(), created_by: Some(principal.name()) }, first_policy, now)
        .await
    {
        Ok(created) => created,
        Err(StorageError::AlreadyExists) => {
            return Err(ApiError::conflict(format!("org {:?} exists already", req.org)));
        }
        Err(e) => return Err(storage_error(e)),
    };
    let mut warnings = Value::Array(Vec::new());
    if let (Some((parsed, w, _, _)), Some(stored)) = (compiled, &stored) {
        state.policies.install_compiled(parsed, stored.version, ManagedBy::Api);
        warnings = diagnostics_json(&w);
    }
    tracing::info!(org = %org.org, "org {} created by {}", org.org, principal.name());
    let body = OrgCreated {
        org: org.org,
        created_at: rfc3339(org.created_at),
        policy_version: stored.as_ref().map(|p| p.version),
        warnings,
    };
    let response = (StatusCode::CREATED, Json(body)).into_response();
    Ok(match stored {
        Some(p) => with_etag(response, p.version),
        None => response,
    })
}

// ---- the policy ------------------------------------------------------------

/// The query of `GET /v1/orgs/{org}/policy`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PolicyQuery {
    /// A past version number; absent or empty: the current one. (A
    /// string, since an empty value is accepted as absent.)
    #[param(pattern = "^[0-9]*$", example = "3")]
    pub version: Option<String>,
}

/// Read the org's policy
///
/// The current (or a given) version, as JSON with its metadata, or the
/// raw text with `Accept: application/toml` (`application/json` for a
/// JSON policy is the metadata document). `ETag: "v<version>"`.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/policy",
    operation_id = "get_policy",
    tag = "admin",
    params(OrgPath, PolicyQuery),
    security(("admin_token" = []), ("root_credential" = [])),
    responses(
        (status = 200, description = "The policy version", headers(("etag" = String, description = "`\"v<version>\"`")),
            content((PolicyDocument = "application/json"), (String = "application/toml"))),
        (status = 400, description = "`invalid_request`: a bad `version` or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "`invalid_token`: no, or an invalid, credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: another org, or no `writ:policy:read`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such org, or no such policy version", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn get_policy(
    State(state): State<AppState>,
    Path(org): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    principal.require(&org, AdminPermission::PolicyRead)?;
    let pairs = query_pairs(query.as_deref(), &["version"])?;
    require_org(&state, &org).await?;
    let stored = match get(&pairs, "version") {
        None => state.store.get_policy(&org).await.map_err(storage_error)?,
        Some(v) => {
            let version: i64 =
                v.parse().map_err(|_| ApiError::invalid_request(format!("version={v:?} is not a version number")))?;
            let history = state.store.policy_history(&org).await.map_err(storage_error)?;
            history.into_iter().find(|p| p.version == version)
        }
    };
    let Some(stored) = stored else {
        return Err(ApiError::not_found(format!(
            "org {org:?} has no such policy version; `writ policy apply` stores the first one"
        )));
    };
    let wants_toml = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/toml") || a.contains("text/toml"));
    let response = if wants_toml && stored.format == crate::storage::PolicyFormat::Toml {
        ([(header::CONTENT_TYPE, "application/toml; charset=utf-8")], stored.source.clone()).into_response()
    } else {
        Json(policy_json(&stored)).into_response()
    };
    Ok(with_etag(response, stored.version))
}

/// `PUT /v1/orgs/{org}/policy` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyStored {
    /// The org.
    pub org: String,
    /// The new version; the `ETag` is `"v<version>"`.
    pub version: i64,
    /// When it was stored, RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Lint warnings (the policy was stored anyway).
    #[schema(value_type = Vec<crate::api::schemas::DiagnosticSchema>)]
    pub warnings: Value,
}

/// Store a new version of the org's policy
///
/// Needs `If-Match: "v<current>"` (or `If-None-Match: *` when the org has
/// no policy yet); 412 with the current version when it moved on, 428
/// without a precondition, 400 with line/column diagnostics for a policy
/// that does not lint, 409 for a file-managed org.
#[utoipa::path(
    put,
    path = "/v1/orgs/{org}/policy",
    operation_id = "put_policy",
    tag = "admin",
    params(
        OrgPath,
        ("if-match" = Option<String>, Header, pattern = r#"^\s*(\*|(W/)?"?v?[0-9]+"?)\s*$"#, description = "`\"v<version>\"` of the policy the change is based on, or `*` for whatever is stored"),
        ("if-none-match" = Option<String>, Header, pattern = r"^\s*\*\s*$", description = "`*`: store the org's first policy"),
    ),
    security(("admin_token" = []), ("root_credential" = [])),
    request_body(
        description = "The policy, TOML or JSON (docs/policy.md); its `org` must be the path's",
        content(
            (String = "application/toml", example = json!("org = \"acme-prod\"\n\n[[rule]]\nname = \"deploy-web\"\nissuer = \"github\"\nrepository = \"acme/web\"\nref = \"refs/heads/main\"\npermissions = [\"deploy\"]\n")),
            (Object = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "Stored as a new version", body = PolicyStored, headers(("etag" = String))),
        (status = 201, description = "Stored as the org's first version", body = PolicyStored, headers(("etag" = String))),
        (status = 400, description = "`invalid_request`: the policy does not lint (diagnostics with line and column in `explanation`; nothing stored), is for another org, has a wrong Content-Type, or a malformed precondition", body = ErrorBody),
        (status = 401, description = "`invalid_token`: no, or an invalid, credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: another org, or no `writ:policy:write`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such org", body = ErrorBody),
        (status = 409, description = "`conflict`: the org's policy comes from the server's policy directory", body = ErrorBody),
        (status = 412, description = "`precondition_failed`: the policy moved on; `current_version` in the body and the `ETag` header", body = ErrorBody,
            headers(("etag" = String, description = "The current version"))),
        (status = 428, description = "`precondition_required`: neither `If-Match` nor `If-None-Match: *`", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn put_policy(
    State(state): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    principal.require(&org, AdminPermission::PolicyWrite)?;
    require_org(&state, &org).await?;

    let if_match = headers.get(header::IF_MATCH).map(|v| v.to_str().unwrap_or_default().to_owned());
    let if_none_match = headers.get(header::IF_NONE_MATCH).map(|v| v.to_str().unwrap_or_default().trim().to_owned());
    let precondition = match (&if_match, if_none_match.as_deref()) {
        (Some(m), _) => Precondition::Match(parse_if_match(m)?),
        (None, Some("*")) => Precondition::Absent,
        (None, Some(other)) => {
            return Err(ApiError::invalid_request(format!(
                "If-None-Match {other:?} is not supported; send If-None-Match: * to create the first version"
            )));
        }
        (None, None) => {
            return Err(ApiError::precondition_required(
                "send If-Match: \"v<version>\" with the ETag of GET /v1/orgs/{org}/policy (or If-None-Match: * for the first version), so concurrent edits cannot overwrite each other",
            ));
        }
    };

    let current = state.store.get_policy(&org).await.map_err(storage_error)?;
    if current.as_ref().is_some_and(|c| c.managed_by == ManagedBy::File) {
        return Err(ApiError::conflict(format!(
            "org {org:?} is file-managed: its policy comes from a file in the server's policy directory, which replaces any API change on reload; edit that file instead"
        )));
    }
    let current_version = current.as_ref().map_or(0, |c| c.version);
    let expected = match precondition {
        Precondition::Match(Some(v)) => v,
        Precondition::Match(None) if current_version > 0 => current_version,
        Precondition::Match(None) => {
            return Err(ApiError::precondition_failed(
                format!("If-Match: * needs an existing policy and org {org:?} has none; send If-None-Match: *"),
                0,
            ));
        }
        Precondition::Absent => 0,
    };

    let (source, format) = policy_body(&headers, &body)?;
    let (parsed, warnings) = compile(&source, format, &state.catalogue, BODY_ORIGIN).map_err(rejected)?;
    if parsed.org() != org {
        return Err(ApiError::invalid_request(format!(
            "the policy is for org {:?} but was sent to org {org:?}; fix its `org` or the URL",
            parsed.org()
        )));
    }
    let author = principal.name();
    let update = PolicyUpdate {
        source: &source,
        format,
        managed_by: ManagedBy::Api,
        expected_version: Some(expected),
        origin: BODY_ORIGIN,
        author: Some(&author),
    };
    let stored = match state.policies.apply_compiled(state.store.as_ref(), parsed, update, state.clock.now()).await {
        Ok(stored) => stored,
        Err(StorageError::VersionConflict { current }) => {
            return Err(ApiError::precondition_failed(
                format!(
                    "the policy of org {org:?} is at version {current}, not {expected}: someone changed it since you read it; GET it again, merge, and retry with If-Match: \"v{current}\""
                ),
                current,
            ));
        }
        Err(e) => return Err(storage_error(e)),
    };
    tracing::info!(org = %org, version = stored.version, "policy of org {org} is now v{} (by {author})", stored.version);
    let status = if stored.version == 1 { StatusCode::CREATED } else { StatusCode::OK };
    let body = PolicyStored {
        org: stored.org,
        version: stored.version,
        created_at: rfc3339(stored.created_at),
        warnings: diagnostics_json(&warnings),
    };
    Ok(with_etag((status, Json(body)).into_response(), stored.version))
}

enum Precondition {
    /// `If-Match`: this version, or any (`*`, `None`).
    Match(Option<i64>),
    /// `If-None-Match: *`: no policy yet.
    Absent,
}

/// `GET /v1/orgs/{org}/policy/history` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyHistory {
    /// The org.
    pub org: String,
    /// Every version, newest first.
    pub versions: Vec<PolicyDocument>,
}

/// Every version of the org's policy, newest first
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/policy/history",
    operation_id = "policy_history",
    tag = "admin",
    params(OrgPath),
    security(("admin_token" = []), ("root_credential" = [])),
    responses(
        (status = 200, description = "The history", body = PolicyHistory),
        (status = 401, description = "`invalid_token`: no, or an invalid, credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: another org, or no `writ:policy:read`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such org", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn policy_history(
    State(state): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    principal.require(&org, AdminPermission::PolicyRead)?;
    require_org(&state, &org).await?;
    let mut history = state.store.policy_history(&org).await.map_err(storage_error)?;
    history.reverse();
    let versions = history.iter().map(policy_json).collect();
    Ok(Json(PolicyHistory { org, versions }).into_response())
}

// ---- dry run ---------------------------------------------------------------

/// `POST /v1/orgs/{org}/policy/dry-run` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRun {
    /// Claims to evaluate, as an issuer would sign them.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub claims: Option<serde_json::Map<String, Value>>,
    /// Or a real OIDC token, verified like an exchange (its `jti` is not
    /// consumed).
    #[serde(default)]
    pub token: Option<String>,
    /// The configured issuer the claims come from (default: the one whose
    /// URL is the claims' `iss`, or the only one).
    #[serde(default)]
    pub issuer: Option<String>,
    /// What the exchange would ask for.
    #[serde(default)]
    pub request: DryRunRequest,
    /// A candidate policy to evaluate instead of the current one (TOML
    /// text, or JSON text with `format`): test before you apply.
    #[serde(default)]
    pub policy: Option<String>,
    /// `toml` (default) or `json`, for `policy`; read only with `policy`.
    #[serde(default)]
    pub format: Option<String>,
}

/// The request part of a dry run.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// Requested permissions.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Requested apps.
    #[serde(default)]
    pub apps: Vec<String>,
    /// Requested machines.
    #[serde(default)]
    pub machines: Vec<String>,
    /// Requested lifetime, `"10m"`.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Evaluate claims or a token against the org's policy
///
/// Evaluates claims or a real token against the org's policy (or a
/// candidate) and returns the decision with its full explanation.
/// Consumes nothing, issues nothing, audits nothing.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/policy/dry-run",
    operation_id = "dry_run",
    tag = "admin",
    params(OrgPath),
    security(("admin_token" = []), ("root_credential" = [])),
    request_body(content = DryRun, content_type = "application/json",
        example = json!({"claims": {"iss": "https://token.actions.githubusercontent.com", "repository": "acme/web", "repository_owner": "acme", "ref": "refs/heads/main"}, "request": {"permissions": ["deploy"]}})),
    responses(
        (status = 200, description = "The decision, granted or denied, with every rule's outcome", body = crate::api::schemas::DryRunResultSchema),
        (status = 400, description = "`invalid_request`: not exactly one of `claims` and `token`, a token that does not verify, an unknown issuer, a bad ttl, or a candidate policy that does not lint", body = ErrorBody),
        (status = 401, description = "`invalid_token`: no, or an invalid, credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: another org, or no `writ:policy:read`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such org, or it has no policy and no candidate was sent", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage or the issuer's keys cannot be reached", body = ErrorBody),
    ),
)]
pub async fn dry_run(
    State(state): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    principal.require(&org, AdminPermission::PolicyRead)?;
    require_org(&state, &org).await?;
    let req: DryRun = json_body(&headers, &body)?;
    let now = state.clock.now();

    let (policy, version): (std::sync::Arc<Policy>, Option<i64>) = match &req.policy {
        Some(text) => {
            let format = match req.format.as_deref() {
                None | Some("toml") => SourceFormat::Toml,
                Some("json") => SourceFormat::Json,
                Some(other) => return Err(ApiError::invalid_request(format!("format {other:?}: use toml or json"))),
            };
            let (parsed, _) = compile(text, format, &state.catalogue, BODY_ORIGIN).map_err(rejected)?;
            if parsed.org() != org {
                return Err(ApiError::invalid_request(format!(
                    "the candidate policy is for org {:?}, not {org:?}",
                    parsed.org()
                )));
            }
            (std::sync::Arc::new(parsed), None)
        }
        None => match state.policies.get(&org) {
            Some(loaded) => (std::sync::Arc::new(loaded.policy.clone()), Some(loaded.version)),
            None => {
                return Err(ApiError::not_found(format!(
                    "org {org:?} has no policy to evaluate; send a candidate as \"policy\""
                )));
            }
        },
    };

    let claims = match (req.claims, req.token) {
        (Some(claims), None) => claims_of(&state, claims, req.issuer.as_deref())?,
        (None, Some(token)) => {
            let cfg = writ_core::jwt::VerifyConfig {
                audience: state.config.audience.clone(),
                leeway_secs: LEEWAY_SECS,
                max_age_secs: state
                    .config
                    .issuers
                    .iter()
                    .map(|i| i.max_token_age.as_secs() as i64)
                    .max()
                    .unwrap_or(3600),
                max_token_bytes: state.config.limits.max_token_bytes,
            };
            state.issuers.verify(&token, &cfg, now).await.map_err(|e| {
                let refused = verify_error(&e);
                if refused.status().is_server_error() {
                    return refused;
                }
                // An admin evaluating a token gets the whole reason.
                ApiError::invalid_request(format!("the token does not verify ({}): {e}", e.reason_class()))
            })?
        }
        _ => {
            return Err(ApiError::invalid_request(
                "send exactly one of \"claims\" (a JSON object) or \"token\" (a real OIDC token)",
            ));
        }
    };
    let ttl = req
        .request
        .ttl
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t)
                .map_err(|_| ApiError::invalid_request(format!("ttl {t:?} is not a duration; write e.g. \"10m\"")))
        })
        .transpose()?;
    if ttl.is_some_and(|t: Duration| t.is_zero()) {
        return Err(ApiError::invalid_request("ttl must be longer than zero"));
    }
    let pins: Pins = state
        .store
        .get_pins(claims.issuer_name(), &pin_keys(&claims))
        .await
        .map_err(storage_error)?
        .into_iter()
        .map(Pin::into_core)
        .collect();
    let request = PolicyRequest {
        permissions: req.request.permissions,
        apps: req.request.apps,
        machines: req.request.machines,
        ttl,
    };
    let limits = TtlLimits { default: state.config.tokens.default_ttl, max: state.config.tokens.max_ttl };
    let decision = policy::evaluate(&policy, &claims, &request, &pins, limits);
    let mut out = serde_json::to_value(&decision).map_err(|e| {
        tracing::error!("serializing a decision: {e}");
        ApiError::internal()
    })?;
    if let Value::Object(map) = &mut out {
        map.insert("org".into(), json!(org));
        map.insert("policy_version".into(), json!(version));
        map.insert("issuer".into(), json!(claims.issuer_name()));
        map.insert("consumed".into(), json!(false));
        map.insert("issued".into(), json!(false));
    }
    Ok(Json(out).into_response())
}

/// Claims typed in by an admin: evaluated as if verified (nothing is ever
/// issued from a dry run), under the named issuer, or the one whose URL is
/// their `iss`, or the only configured one.
fn claims_of(
    state: &AppState,
    claims: serde_json::Map<String, Value>,
    issuer: Option<&str>,
) -> Result<VerifiedClaims, ApiError> {
    let issuers = &state.config.issuers;
    let chosen = match issuer {
        Some(name) => issuers.iter().find(|i| i.name == name).ok_or_else(|| {
            let names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
            ApiError::invalid_request(format!("unknown issuer {name:?}; configured: {}", names.join(", ")))
        })?,
        None => {
            let iss = claims.get("iss").and_then(Value::as_str);
            match (iss.and_then(|iss| issuers.iter().find(|i| i.url == iss)), issuers.as_slice()) {
                (Some(i), _) => i,
                (None, [only]) => only,
                (None, _) => {
                    return Err(ApiError::invalid_request(
                        "name the issuer of these claims (\"issuer\": \"github\"), or give their \"iss\"",
                    ));
                }
            }
        }
    };
    Ok(VerifiedClaims::from_trusted_claims_file(&chosen.name, chosen.kind, claims))
}

// ---- the audit log ---------------------------------------------------------

/// The query of `GET /v1/orgs/{org}/audit` (read by hand in [`audit`],
/// which refuses other parameters).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// Only decisions at or after this time: Unix seconds or RFC 3339.
    pub from: Option<String>,
    /// Only decisions at or before this time: Unix seconds or RFC 3339.
    pub to: Option<String>,
    /// Only this CI repository (`owner/name`).
    pub repository: Option<String>,
    /// `granted` or `denied` (empty: either).
    #[param(pattern = "^(granted|denied)?$")]
    pub outcome: Option<String>,
    /// Only decisions by this rule.
    pub rule: Option<String>,
    /// Only decisions that asked for or granted this permission.
    pub permission: Option<String>,
    /// Page size, 1 to 1000; absent or empty: 100. (A string, since an
    /// empty value is accepted as absent.)
    #[param(pattern = "^([1-9][0-9]{0,2}|1000)?$", example = "100")]
    pub limit: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// `json` (default) or `csv`.
    #[param(pattern = "^(json|csv)?$")]
    pub format: Option<String>,
}

/// `GET /v1/orgs/{org}/audit` response (JSON).
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The org.
    pub org: String,
    /// Decisions, newest first.
    #[schema(value_type = Vec<crate::api::schemas::AuditRecordSchema>)]
    pub records: Vec<Value>,
    /// Send as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Query the org's audit log
///
/// Decisions newest first. Filters `from`, `to` (Unix seconds or RFC
/// 3339), `repository`, `outcome`, `rule`, `permission`; `limit` (default
/// 100, at most 1000); `cursor` from the previous page's `next_cursor`.
/// `Accept: text/csv` or `format=csv` for CSV (the next cursor is then in
/// the `x-next-cursor` header).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/audit",
    operation_id = "query_audit",
    tag = "admin",
    params(OrgPath, AuditFilter),
    security(("admin_token" = []), ("root_credential" = [])),
    responses(
        (status = 200, description = "A page of decisions", headers(("x-next-cursor" = String, description = "CSV only: the next page's cursor")),
            content((AuditPage = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_request`: a bad filter, limit, cursor or format, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "`invalid_token`: no, or an invalid, credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: another org, or no `writ:audit:read`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such org", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn audit(
    State(state): State<AppState>,
    Path(org): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    principal.require(&org, AdminPermission::AuditRead)?;
    let pairs = query_pairs(
        query.as_deref(),
        &["from", "to", "repository", "outcome", "rule", "permission", "limit", "cursor", "format"],
    )?;
    require_org(&state, &org).await?;
    let mut q = AuditQuery::new(org.clone(), DEFAULT_AUDIT_PAGE);
    q.from = get(&pairs, "from").map(|v| parse_time("from", v)).transpose()?;
    q.to = get(&pairs, "to").map(|v| parse_time("to", v)).transpose()?;
    q.repository = get(&pairs, "repository").map(str::to_owned);
    q.rule = get(&pairs, "rule").map(str::to_owned);
    q.permission = get(&pairs, "permission").map(str::to_owned);
    q.outcome = match get(&pairs, "outcome") {
        None => None,
        Some("granted") => Some(Outcome::Granted),
        Some("denied") => Some(Outcome::Denied),
        Some(other) => {
            return Err(ApiError::invalid_request(format!("outcome={other:?}: use granted or denied")));
        }
    };
    if let Some(limit) = get(&pairs, "limit") {
        q.limit = limit.parse().ok().filter(|l| (1..=MAX_AUDIT_PAGE).contains(l)).ok_or_else(|| {
            ApiError::invalid_request(format!("limit={limit:?}: a number from 1 to {MAX_AUDIT_PAGE}"))
        })?;
    }
    q.before = get(&pairs, "cursor").map(decode_audit_cursor).transpose()?;
    let csv = match get(&pairs, "format") {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => return Err(ApiError::invalid_request(format!("format={other:?}: use json or csv"))),
        None => headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv")),
    };

    // One more than asked tells whether another page exists.
    let page_size = q.limit as usize;
    q.limit += 1;
    let mut records = state.store.query_audit(&q).await.map_err(storage_error)?;
    let next_cursor = if records.len() > page_size {
        records.truncate(page_size);
        records.last().map(|r| URL_SAFE_NO_PAD.encode(r.id.as_bytes()))
    } else {
        None
    };
    if csv {
        let mut response = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], audit_csv(&records)).into_response();
        if let Some(c) = next_cursor.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            response.headers_mut().insert("x-next-cursor", c);
        }
        return Ok(response);
    }
    let records = records.iter().map(audit_json).collect();
    Ok(Json(AuditPage { org, records, next_cursor }).into_response())
}

fn decode_audit_cursor(cursor: &str) -> Result<uuid::Uuid, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| uuid::Uuid::from_slice(&b).ok())
        .ok_or_else(|| ApiError::invalid_request("cursor is not one this server gave out; start again without it"))
}

/// An audit record as JSON, with its time also in RFC 3339.
fn audit_json(r: &AuditRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.insert("time_rfc3339".into(), json!(rfc3339(r.time)));
    }
    v
}

/// The CSV columns, in order.
const AUDIT_CSV_COLUMNS: &[&str] = &[
    "time",
    "outcome",
    "error",
    "rule",
    "repository",
    "ref",
    "environment",
    "workflow_ref",
    "run_id",
    "actor",
    "requested_permissions",
    "granted_permissions",
    "granted_apps",
    "granted_machines",
    "token_jti",
    "token_expires_at",
    "issuer",
    "subject",
    "subject_jti",
    "request_id",
    "client_addr",
    "id",
    "explanation",
];

fn audit_csv(records: &[AuditRecord]) -> String {
    let mut out = AUDIT_CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let list = |v: &[String]| v.join(" ");
    let opt_list = |v: &Option<Vec<String>>| v.as_deref().map(|l| l.join(" ")).unwrap_or_default();
    for r in records {
        let fields = [
            rfc3339(r.time),
            r.outcome.as_str().to_owned(),
            opt(&r.error),
            opt(&r.rule),
            opt(&r.repository),
            opt(&r.ref_),
            opt(&r.environment),
            opt(&r.workflow_ref),
            opt(&r.run_id),
            opt(&r.actor),
            list(&r.requested_permissions),
            list(&r.granted_permissions),
            opt_list(&r.granted_apps),
            opt_list(&r.granted_machines),
            opt(&r.token_jti),
            r.token_expires_at.map(rfc3339).unwrap_or_default(),
            opt(&r.issuer),
            opt(&r.subject),
            opt(&r.subject_jti),
            r.request_id.clone(),
            opt(&r.client_addr),
            r.id.to_string(),
            r.explanation.as_ref().map(Value::to_string).unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// One RFC 4180 field. Values come from CI claims an attacker may choose
/// (actor, ref), so a field a spreadsheet would run as a formula (`=`, `+`,
/// `-`, `@`, tab, CR) is prefixed with `'` (OWASP "CSV injection").
fn csv_field(value: &str) -> String {
    let neutral =
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{value}") } else { value.to_owned() };
    if neutral.contains([',', '"', '\n', '\r']) { format!("\"{}\"", neutral.replace('"', "\"\"")) } else { neutral }
}

// ---- revocation ------------------------------------------------------------

/// `POST /v1/orgs/{org}/revocations` body: exactly one target.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// One token.
    #[serde(default)]
    pub jti: Option<String>,
    /// Every token issued to this CI repository.
    #[serde(default)]
    pub repository: Option<String>,
    /// Every token issued to this CI run.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Every token granted under this rule.
    #[serde(default)]
    pub rule: Option<String>,
    /// Why, for the record.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/orgs/{org}/revocations` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokeResult {
    /// The org.
    pub org: String,
    /// How many tokens were newly revoked, descendants included.
    pub revoked: u64,
    /// The target, as sent: one of `jti`, `repository`, `run_id`, `rule`.
    #[schema(value_type = Object, example = json!({"repository": "acme/web"}))]
    pub target: Value,
}

/// Revoke the org's tokens
///
/// Revokes the org's unexpired tokens that the target selects, and
/// everything narrowed from them; returns how many were newly revoked.
/// They appear in the revocation feed at once.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/revocations",
    operation_id = "revoke_tokens",
    tag = "admin",
    params(OrgPath),
    security(("admin_token" = []), ("root_credential" = [])),
    request_body(content = RevokeRequest, content_type = "application/json",
        example = json!({"repository": "acme/web", "reason": "leaked in a log"})),
    responses(
        (status = 200, description = "Revoked", body = RevokeResult),
        (status = 400, description = "`invalid_request`: not exactly one target, or a target of more than 256 characters", body = ErrorBody),
        (status = 401, description = "`invalid_token`: no, or an invalid, credential", body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: another org, or no `writ:tokens:revoke`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such org, or no token with that `jti` was issued for it", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: storage cannot be reached", body = ErrorBody),
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers).await?;
    principal.require(&org, AdminPermission::TokensRevoke)?;
    let req: RevokeRequest = json_body(&headers, &body)?;
    require_org(&state, &org).await?;
    let targets = [
        req.jti.clone().map(RevocationTarget::Jti),
        req.repository.clone().map(RevocationTarget::Repository),
        req.run_id.clone().map(RevocationTarget::RunId),
        req.rule.clone().map(RevocationTarget::Rule),
    ];
    let mut chosen = targets.into_iter().flatten();
    let (Some(target), None) = (chosen.next(), chosen.next()) else {
        return Err(ApiError::invalid_request("send exactly one of \"jti\", \"repository\", \"run_id\" or \"rule\""));
    };
    let value = match &target {
        RevocationTarget::Jti(v)
        | RevocationTarget::Repository(v)
        | RevocationTarget::RunId(v)
        | RevocationTarget::Rule(v) => v,
    };
    if value.is_empty() || value.len() > 256 {
        return Err(ApiError::invalid_request("the revocation target must be 1-256 characters"));
    }
    if let RevocationTarget::Jti(jti) = &target {
        // Another org's token is "not found" here, exactly like a jti that
        // never existed (the lookup is by org): the answer must not tell one
        // from the other.
        let issued = state.store.get_issued_token(&org, jti).await.map_err(storage_error)?;
        if issued.is_none() {
            return Err(ApiError::not_found(format!("no token with jti {jti:?} was issued for org {org:?}")));
        }
    }
    let now = state.clock.now();
    let revocation = Revocation {
        org: org.clone(),
        target: target.clone(),
        reason: req.reason.clone().unwrap_or_else(|| "revoked by an org admin".to_owned()),
        revoked_by: Some(principal.name()),
        now,
    };
    let revoked = state.store.revoke(&revocation).await.map_err(storage_error)?;
    tracing::warn!(org = %org, revoked, request_id = %caller.request_id, "{} revoked {revoked} token(s) of org {org}: {target:?}", principal.name());
    let target_json = match &target {
        RevocationTarget::Jti(v) => json!({"jti": v}),
        RevocationTarget::Repository(v) => json!({"repository": v}),
        RevocationTarget::RunId(v) => json!({"run_id": v}),
        RevocationTarget::Rule(v) => json!({"rule": v}),
    };
    Ok(Json(RevokeResult { org, revoked, target: target_json }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(parse_if_match("\"v3\"").expect("quoted"), Some(3));
        assert_eq!(parse_if_match("W/\"v3\"").expect("weak"), Some(3));
        assert_eq!(parse_if_match("v12").expect("bare"), Some(12));
        assert_eq!(parse_if_match("*").expect("any"), None);
        assert!(parse_if_match("\"abc\"").is_err());
    }

    #[test]
    fn org_names() {
        for ok in ["acme", "acme-prod", "a.b_c", "9lives"] {
            assert!(validate_org_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a/b", "a b", "ä", &"x".repeat(65)] {
            assert!(validate_org_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_unix_or_rfc3339() {
        assert_eq!(parse_time("from", "1700000000").expect("unix"), 1_700_000_000);
        assert_eq!(parse_time("from", "2023-11-14T22:13:20Z").expect("rfc3339"), 1_700_000_000);
        assert!(parse_time("from", "yesterday").is_err());
    }
}
