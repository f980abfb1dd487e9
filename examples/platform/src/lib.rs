//! The demo platform API: orgs with apps and machines, kept in memory, whose
//! every endpoint is protected by writ-verify. It shows what a platform
//! does with a writ token: verify it ([`WritGrant`]), then ask the grant
//! whether this org, permission and app or machine are allowed
//! ([`writ_verify::Grant::require`]), and only then look at the resource.
//!
//! | endpoint | permission | target |
//! | --- | --- | --- |
//! | `POST /orgs/{org}/apps/{app}/deploy` | `deploy` | the app |
//! | `GET /orgs/{org}/apps/{app}/logs` | `logs:read` | the app |
//! | `GET /orgs/{org}/metrics` | `metrics:read` | the whole org |
//! | `POST /orgs/{org}/machines/{id}/exec` | `machines:exec` | the machine |
//!
//! Authorization comes before existence: a caller without a fitting token
//! learns nothing about which orgs, apps or machines exist. Nothing is ever
//! executed: `exec` answers with a simulated output.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use axum::body::Bytes;
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use writ_verify::axum::{Rejection, WritGrant};
use writ_verify::{Grant, Target, Verifier};

/// Permission to deploy an app.
pub const DEPLOY: &str = "deploy";
/// Permission to read an app's logs.
pub const LOGS_READ: &str = "logs:read";
/// Permission to read an org's metrics.
pub const METRICS_READ: &str = "metrics:read";
/// Permission to run a command on a machine.
pub const MACHINES_EXEC: &str = "machines:exec";

/// Log lines kept per app.
const MAX_LOG_LINES: usize = 200;
/// Longest accepted `exec` command.
const MAX_COMMAND_LEN: usize = 256;

/// The seed of the demo: two orgs of acme (staging and prod, separate), and
/// two client orgs a consultant might work for.
pub const DEMO_SEED: &str = r#"{
  "orgs": {
    "acme-prod":    {"apps": ["web", "billing"], "machines": ["vm-prod-1", "vm-prod-2"]},
    "acme-staging": {"apps": ["web", "billing"], "machines": ["vm-staging-1"]},
    "globex":       {"apps": ["shop"],           "machines": ["vm-globex-1"]},
    "initech":      {"apps": ["tps"],            "machines": ["vm-initech-1"]}
  }
}"#;

/// The seed file's shape: org name to its app names and machine ids.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// The orgs.
    pub orgs: BTreeMap<String, SeedOrg>,
}

/// One org of a [`Seed`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedOrg {
    /// App names.
    #[serde(default)]
    pub apps: Vec<String>,
    /// Machine ids.
    #[serde(default)]
    pub machines: Vec<String>,
}

/// The platform's in-memory data.
#[derive(Debug, Default)]
pub struct Platform {
    orgs: RwLock<BTreeMap<String, Org>>,
}

#[derive(Debug, Default)]
struct Org {
    apps: BTreeMap<String, App>,
    machines: BTreeMap<String, Machine>,
}

#[derive(Debug, Default)]
struct App {
    version: u64,
    logs: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Machine {
    execs: u64,
}

impl Platform {
    /// A platform holding the orgs, apps and machines of `seed`.
    pub fn from_seed(seed: &Seed) -> Platform {
        let orgs = seed
            .orgs
            .iter()
            .map(|(name, org)| {
                let apps = org
                    .apps
                    .iter()
                    .map(|app| (app.clone(), App { version: 0, logs: VecDeque::from([format!("{app}: created")]) }))
                    .collect();
                let machines = org.machines.iter().map(|id| (id.clone(), Machine::default())).collect();
                (name.clone(), Org { apps, machines })
            })
            .collect();
        Platform { orgs: RwLock::new(orgs) }
    }

    /// The platform of [`DEMO_SEED`].
    pub fn demo() -> Platform {
        let seed: Seed = serde_json::from_str(DEMO_SEED).expect("the built-in seed is valid JSON");
        Platform::from_seed(&seed)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Org>> {
        self.orgs.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The router's state.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// Verifies writ tokens.
    pub verifier: Verifier,
    /// The data.
    pub platform: Arc<Platform>,
}

/// The platform's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orgs/{org}/apps/{app}/deploy", post(deploy))
        .route("/orgs/{org}/apps/{app}/logs", get(logs))
        .route("/orgs/{org}/metrics", get(metrics))
        .route("/orgs/{org}/machines/{id}/exec", post(exec))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_owned()) })
        .with_state(state)
}

/// Every failure of the platform, with one JSON shape:
/// `{"error": "...", "error_description": "..."}`.
#[derive(Debug)]
pub enum ApiError {
    /// 400/401/403/503 from writ-verify (RFC 6750 answers).
    Auth(Rejection),
    /// 404.
    NotFound(String),
    /// 400.
    BadRequest(String),
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::Auth(rejection)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, description) = match self {
            ApiError::Auth(rejection) => return rejection.into_response(),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", d),
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", d),
        };
        (status, Json(json!({"error": error, "error_description": description}))).into_response()
    }
}

/// Asks the grant; logs the decision with who asked (never the token).
fn authorize(grant: &Grant, org: &str, permission: &str, target: Target<'_>) -> Result<(), ApiError> {
    match grant.require(org, permission, target) {
        Ok(()) => {
            tracing::info!(
                org, permission, subject = grant.subject(), jti = grant.jti(), repository = ?grant.provenance().repository,
                "allowed {permission} on {target} of {org} for {}", grant.subject()
            );
            Ok(())
        }
        Err(denied) => {
            tracing::info!(
                org,
                permission,
                subject = grant.subject(),
                jti = grant.jti(),
                "denied {permission} on {target} of {org}: {denied}"
            );
            Err(Rejection::from(denied).into())
        }
    }
}

fn no_org(org: &str) -> ApiError {
    ApiError::NotFound(format!("no org {org} on this platform"))
}

/// One line describing who did something, from the grant's provenance.
fn who(grant: &Grant) -> String {
    let ci = grant.provenance();
    let mut out = grant.subject().to_owned();
    if let Some(repo) = &ci.repository {
        out.push_str(&format!(" ({repo}"));
        if let Some(sha) = &ci.sha {
            out.push_str(&format!("@{}", sha.get(..7).unwrap_or(sha)));
        }
        if let Some(run) = &ci.run_id {
            out.push_str(&format!(", run {run}"));
        }
        out.push(')');
    }
    out
}

/// `POST /orgs/{org}/apps/{app}/deploy`, optional body `{"image": "…"}`.
async fn deploy(
    WritGrant(grant): WritGrant,
    State(platform): State<Arc<Platform>>,
    Path((org, app)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&grant, &org, DEPLOY, Target::App(&app))?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DeployRequest {
        image: Option<String>,
    }
    let request: DeployRequest = if body.is_empty() {
        DeployRequest { image: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body must be {{\"image\": \"…\"}} or empty: {e}")))?
    };
    let mut orgs = platform.write();
    let entry = orgs.get_mut(&org).ok_or_else(|| no_org(&org))?;
    let target = entry.apps.get_mut(&app).ok_or_else(|| ApiError::NotFound(format!("no app {app} in org {org}")))?;
    target.version += 1;
    let image = request.image.unwrap_or_else(|| format!("{app}:v{}", target.version));
    let line = format!("{app}: deployed v{} ({image}) by {}", target.version, who(&grant));
    push_log(&mut target.logs, line);
    Ok(Json(json!({
        "org": org,
        "app": app,
        "version": target.version,
        "image": image,
        "deployed_by": grant.subject(),
        "repository": grant.provenance().repository,
        "token": grant.jti(),
    })))
}

fn push_log(logs: &mut VecDeque<String>, line: String) {
    if logs.len() == MAX_LOG_LINES {
        logs.pop_front();
    }
    logs.push_back(line);
}

/// `GET /orgs/{org}/apps/{app}/logs`.
async fn logs(
    WritGrant(grant): WritGrant,
    State(platform): State<Arc<Platform>>,
    Path((org, app)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize(&grant, &org, LOGS_READ, Target::App(&app))?;
    let orgs = platform.orgs.read().unwrap_or_else(PoisonError::into_inner);
    let entry = orgs.get(&org).ok_or_else(|| no_org(&org))?;
    let target = entry.apps.get(&app).ok_or_else(|| ApiError::NotFound(format!("no app {app} in org {org}")))?;
    Ok(Json(json!({"org": org, "app": app, "lines": target.logs})))
}

/// `GET /orgs/{org}/metrics`: org-wide, so only a token not limited to
/// apps or machines reads it.
async fn metrics(
    WritGrant(grant): WritGrant,
    State(platform): State<Arc<Platform>>,
    Path(org): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&grant, &org, METRICS_READ, Target::Org)?;
    let orgs = platform.orgs.read().unwrap_or_else(PoisonError::into_inner);
    let entry = orgs.get(&org).ok_or_else(|| no_org(&org))?;
    let apps: BTreeMap<&str, Value> =
        entry.apps.iter().map(|(name, app)| (name.as_str(), json!({"version": app.version}))).collect();
    let machines: BTreeMap<&str, Value> =
        entry.machines.iter().map(|(id, m)| (id.as_str(), json!({"execs": m.execs}))).collect();
    Ok(Json(json!({"org": org, "apps": apps, "machines": machines})))
}

/// `POST /orgs/{org}/machines/{id}/exec`, body `{"command": "…"}`.
/// Simulated: nothing is run.
async fn exec(
    WritGrant(grant): WritGrant,
    State(platform): State<Arc<Platform>>,
    Path((org, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&grant, &org, MACHINES_EXEC, Target::Machine(&id))?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ExecRequest {
        command: String,
    }
    let request: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body must be {{\"command\": \"…\"}}: {e}")))?;
    if request.command.trim().is_empty() || request.command.len() > MAX_COMMAND_LEN {
        return Err(ApiError::BadRequest(format!("command must be 1 to {MAX_COMMAND_LEN} characters")));
    }
    let mut orgs = platform.write();
    let entry = orgs.get_mut(&org).ok_or_else(|| no_org(&org))?;
    let machine =
        entry.machines.get_mut(&id).ok_or_else(|| ApiError::NotFound(format!("no machine {id} in org {org}")))?;
    machine.execs += 1;
    Ok(Json(json!({
        "org": org,
        "machine": id,
        "command": request.command,
        "exit_code": 0,
        "output": format!("(simulated) {} on {id}, requested by {}", request.command, who(&grant)),
    })))
}

/// `GET /healthz`: up, and how revocations are followed.
async fn healthz(State(verifier): State<Verifier>) -> Json<Value> {
    let status = verifier.revocation_status();
    Json(json!({
        "status": "ok",
        "writ": verifier.issuer(),
        "audience": verifier.audience(),
        "revocation_feed": {
            "following": status.following,
            "available": status.feed_available,
            "revoked_tokens": status.revoked,
        },
    }))
}
