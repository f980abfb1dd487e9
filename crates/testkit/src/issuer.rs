//! A fake OIDC issuer on a loopback socket: discovery, JWKS with rotation, outages, and the GitHub Actions ID-token endpoint.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{GitHubClaims, GitLabClaims, TestKey};

/// The bearer token the fake Actions runtime expects
/// (`ACTIONS_ID_TOKEN_REQUEST_TOKEN` in a real runner). TEST-ONLY.
pub const ACTIONS_REQUEST_TOKEN: &str = "writ-testkit-actions-request-token";

/// Claims GitHub lists in its discovery document's `claims_supported`.
const GITHUB_CLAIMS_SUPPORTED: &[&str] = &[
    "sub",
    "aud",
    "exp",
    "iat",
    "iss",
    "jti",
    "nbf",
    "ref",
    "sha",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
    "run_id",
    "run_number",
    "run_attempt",
    "actor",
    "actor_id",
    "workflow",
    "workflow_ref",
    "workflow_sha",
    "head_ref",
    "base_ref",
    "event_name",
    "ref_type",
    "ref_protected",
    "environment",
    "job_workflow_ref",
    "job_workflow_sha",
    "repository_visibility",
    "runner_environment",
    "check_run_id",
    "enterprise",
    "enterprise_id",
];

/// Claims a GitLab ID token carries, for the GitLab-shaped discovery document.
const GITLAB_CLAIMS_SUPPORTED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "namespace_id",
    "namespace_path",
    "project_id",
    "project_path",
    "user_id",
    "user_login",
    "user_email",
    "pipeline_id",
    "pipeline_source",
    "job_id",
    "ref",
    "ref_type",
    "ref_path",
    "ref_protected",
    "environment",
    "environment_protected",
    "deployment_tier",
    "runner_id",
    "runner_environment",
    "sha",
    "ci_config_ref_uri",
    "ci_config_sha",
    "project_visibility",
];

/// Which real issuer the fake imitates: kid naming and discovery document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerShape {
    /// `token.actions.githubusercontent.com`: a minimal discovery document
    /// without `authorization_endpoint` (GitHub's real one has none either,
    /// which strict OIDC discovery clients reject).
    GitHub,
    /// A GitLab instance: a full OpenID provider document.
    GitLab,
}

/// A fake OIDC issuer served by axum on a loopback socket. TEST-ONLY keys.
///
/// Serves `GET /.well-known/openid-configuration`, `GET /.well-known/jwks`,
/// the GitHub Actions runtime's `GET /actions/token` and, on loopback only,
/// `POST /dev/mint` (signs the posted JSON claims verbatim and answers the
/// token as text; unauthenticated, for `writ token --dev`). Cloning gives
/// another handle to the same issuer; the server stops when the last handle
/// is dropped or on [`FakeIssuer::shutdown`]. The server task runs on the
/// Tokio runtime that called `start`.
#[derive(Clone)]
pub struct FakeIssuer {
    handle: Arc<Handle>,
}

/// Owned by the handles only (not the server task), so its drop is the
/// "last handle gone" signal.
struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// State read by the HTTP handlers and changed through the handles.
struct Shared {
    shape: IssuerShape,
    url: String,
    /// `POST /dev/mint` signs anything for anyone who can connect, so it
    /// exists only when the socket is bound to a loopback address.
    dev_mint: bool,
    keys: Mutex<Keys>,
    key_counter: AtomicUsize,
    down: AtomicBool,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
    actions_hits: AtomicUsize,
    discovery_issuer: Mutex<Option<String>>,
    actions_claims: Mutex<Option<Value>>,
}

struct Keys {
    current: TestKey,
    published: Vec<TestKey>,
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the
/// data consistent, and a panicking test elsewhere must not cascade.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeIssuer {
    /// Starts an issuer on `127.0.0.1:0` (a free port) with one fresh key.
    pub async fn start(shape: IssuerShape) -> anyhow::Result<FakeIssuer> {
        FakeIssuer::start_on(shape, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an issuer on `addr` with one fresh key (dev mode picks its
    /// port). An unspecified address (`0.0.0.0`, `::`) binds all interfaces
    /// but the issuer URL names loopback.
    pub async fn start_on(shape: IssuerShape, addr: SocketAddr) -> anyhow::Result<FakeIssuer> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the fake issuer to {addr}"))?;
        let mut local = listener.local_addr().context("reading the fake issuer's bound address")?;
        let dev_mint = local.ip().is_loopback();
        if local.ip().is_unspecified() {
            local.set_ip(if local.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() });
        }
        let kid = kid_for(shape, 1);
        // RSA key generation is CPU-bound for a while; keep it off the
        // runtime's worker threads.
        let key = tokio::task::spawn_blocking(move || TestKey::generate(kid))
            .await
            .context("generating the fake issuer's first key")?;
        let shared = Arc::new(Shared {
            shape,
            url: format!("http://{local}"),
            dev_mint,
            keys: Mutex::new(Keys { current: key.clone(), published: vec![key] }),
            key_counter: AtomicUsize::new(1),
            down: AtomicBool::new(false),
            discovery_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
            actions_hits: AtomicUsize::new(0),
            discovery_issuer: Mutex::new(None),
            actions_claims: Mutex::new(None),
        });
        let (stop, mut stop_rx) = watch::channel(false);
        let (stopped_tx, stopped) = watch::channel(false);
        let app = router(shared.clone());
        tokio::spawn(async move {
            // `wait_for` also returns when every handle (sender) is gone.
            let signal = async move {
                let _stopped_or_dropped = stop_rx.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
                tracing::warn!(%error, "fake issuer server failed");
            }
            stopped_tx.send_replace(true);
        });
        Ok(FakeIssuer { handle: Arc::new(Handle { shared, stop, stopped }) })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The issuer identifier, e.g. `http://127.0.0.1:41234` (no trailing
    /// slash): the `iss` of minted tokens and the discovery base URL.
    pub fn url(&self) -> String {
        self.shared().url.clone()
    }

    /// Which issuer this fake imitates.
    pub fn shape(&self) -> IssuerShape {
        self.shared().shape
    }

    /// Signs `claims` (taken verbatim) with the current key, RS256, with
    /// header `{"alg":"RS256","typ":"JWT","kid":<current kid>}`.
    pub fn mint(&self, claims: &Value) -> String {
        self.current_key().sign(claims)
    }

    /// A GitHub claims builder with `iss` set to this issuer's URL.
    pub fn github_claims(&self, audience: &str, repository: &str, now: i64) -> GitHubClaims {
        GitHubClaims::new(&self.shared().url, audience, repository, now)
    }

    /// A GitLab claims builder with `iss` set to this issuer's URL.
    pub fn gitlab_claims(&self, audience: &str, project_path: &str, now: i64) -> GitLabClaims {
        GitLabClaims::new(&self.shared().url, audience, project_path, now)
    }

    /// The key that [`FakeIssuer::mint`] signs with (a cheap clone).
    pub fn current_key(&self) -> TestKey {
        lock(&self.shared().keys).current.clone()
    }

    /// The kids currently published in the JWKS, oldest first.
    pub fn published_kids(&self) -> Vec<String> {
        lock(&self.shared().keys).published.iter().map(|key| key.kid().to_owned()).collect()
    }

    /// The JWK Set the issuer currently serves.
    pub fn jwks(&self) -> Value {
        self.shared().jwks()
    }

    /// Generates a new key, publishes it and makes it current; returns its
    /// kid. Earlier keys stay published until [`FakeIssuer::retire`].
    ///
    /// Blocks for the RSA key generation (a fraction of a second).
    pub fn rotate(&self) -> String {
        let n = self.shared().key_counter.fetch_add(1, Ordering::Relaxed) + 1;
        let key = TestKey::generate(kid_for(self.shared().shape, n));
        let kid = key.kid().to_owned();
        let mut keys = lock(&self.shared().keys);
        keys.published.push(key.clone());
        keys.current = key;
        kid
    }

    /// Stops publishing the key `kid`. Retiring the current key is allowed:
    /// tokens minted afterwards then fail verification (unknown `kid`).
    pub fn retire(&self, kid: &str) {
        lock(&self.shared().keys).published.retain(|key| key.kid() != kid);
    }

    /// While down, every endpoint answers 503 (hits are still counted).
    pub fn set_down(&self, down: bool) {
        self.shared().down.store(down, Ordering::SeqCst);
    }

    /// Overrides the `issuer` field of the discovery document (`None`
    /// restores the real URL), to test the issuer-equality check.
    pub fn set_discovery_issuer(&self, issuer: Option<String>) {
        *lock(&self.shared().discovery_issuer) = issuer;
    }

    /// Requests received by the discovery endpoint, including 503 answers.
    pub fn discovery_hits(&self) -> usize {
        self.shared().discovery_hits.load(Ordering::SeqCst)
    }

    /// Requests received by the JWKS endpoint, including 503 answers.
    pub fn jwks_hits(&self) -> usize {
        self.shared().jwks_hits.load(Ordering::SeqCst)
    }

    /// Requests received by the Actions token endpoint, including 401 and
    /// 503 answers.
    pub fn actions_token_hits(&self) -> usize {
        self.shared().actions_hits.load(Ordering::SeqCst)
    }

    /// Sets the claims template of the Actions token endpoint (`None`
    /// restores the default: GitHub claims for a push to `acme/web` main).
    /// Each request overrides `aud`, `jti`, `iat`, `nbf` and `exp`.
    pub fn set_actions_claims(&self, claims: Option<Value>) {
        *lock(&self.shared().actions_claims) = claims;
    }

    /// The bearer token the Actions token endpoint accepts, what a runner
    /// exposes as `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    pub fn actions_request_token(&self) -> &str {
        ACTIONS_REQUEST_TOKEN
    }

    /// What a runner exposes as `ACTIONS_ID_TOKEN_REQUEST_URL`:
    /// `<url>/actions/token?api-version=2.0`. Like the real one it already
    /// has a query, so clients append `&audience=<aud>`; extra query
    /// parameters are ignored.
    pub fn actions_token_url(&self) -> String {
        format!("{}/actions/token?api-version=2.0", self.shared().url)
    }

    /// Stops the server for every handle and waits until it has stopped
    /// accepting and its open connections have closed.
    pub async fn shutdown(&self) {
        self.handle.stop.send_replace(true);
        let mut stopped = self.handle.stopped.clone();
        // An error means the server task is gone, which is also "stopped".
        let _stopped_or_gone = stopped.wait_for(|stopped| *stopped).await;
    }
}

impl std::fmt::Debug for FakeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeIssuer")
            .field("shape", &self.shared().shape)
            .field("url", &self.shared().url)
            .finish_non_exhaustive()
    }
}

/// Kids look like `github-1`, `gitlab-2`: readable in test failures.
fn kid_for(shape: IssuerShape, n: usize) -> String {
    match shape {
        IssuerShape::GitHub => format!("github-{n}"),
        IssuerShape::GitLab => format!("gitlab-{n}"),
    }
}

impl Shared {
    fn jwks(&self) -> Value {
        let keys = lock(&self.keys);
        json!({ "keys": keys.published.iter().map(TestKey::public_jwk).collect::<Vec<_>>() })
    }

    fn discovery(&self) -> Value {
        let issuer = lock(&self.discovery_issuer).clone().unwrap_or_else(|| self.url.clone());
        let url = &self.url;
        let jwks_uri = format!("{url}/.well-known/jwks");
        match self.shape {
            IssuerShape::GitHub => json!({
                "issuer": issuer,
                "jwks_uri": jwks_uri,
                "subject_types_supported": ["public", "pairwise"],
                "response_types_supported": ["id_token"],
                "claims_supported": GITHUB_CLAIMS_SUPPORTED,
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid"],
            }),
            IssuerShape::GitLab => json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{url}/oauth/authorize"),
                "token_endpoint": format!("{url}/oauth/token"),
                "revocation_endpoint": format!("{url}/oauth/revoke"),
                "introspection_endpoint": format!("{url}/oauth/introspect"),
                "userinfo_endpoint": format!("{url}/oauth/userinfo"),
                "jwks_uri": jwks_uri,
                "scopes_supported": ["api", "read_api", "read_user", "openid", "profile", "email"],
                "response_types_supported": ["code"],
                "response_modes_supported": ["query", "fragment", "form_post"],
                "grant_types_supported": ["authorization_code", "password", "client_credentials", "device_code", "refresh_token"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claim_types_supported": ["normal"],
                "claims_supported": GITLAB_CLAIMS_SUPPORTED,
            }),
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Mints an Actions ID token from the template at `now`.
    fn actions_token(&self, audience: Option<&str>, now: i64) -> Option<String> {
        let template = lock(&self.actions_claims)
            .clone()
            .unwrap_or_else(|| GitHubClaims::new(&self.url, "https://github.com/acme", "acme/web", now).build());
        let Value::Object(mut claims) = template else {
            return None;
        };
        let lifetime = match (claims.get("iat"), claims.get("exp")) {
            (Some(iat), Some(exp)) => {
                exp.as_i64().zip(iat.as_i64()).map_or(crate::github::GITHUB_TOKEN_LIFETIME_SECS, |(exp, iat)| exp - iat)
            }
            _ => crate::github::GITHUB_TOKEN_LIFETIME_SECS,
        };
        if let Some(audience) = audience {
            claims.insert("aud".to_owned(), json!(audience));
        }
        claims.insert("jti".to_owned(), json!(crate::claims::fresh_jti()));
        claims.insert("iat".to_owned(), json!(now));
        claims.insert("nbf".to_owned(), json!(now));
        claims.insert("exp".to_owned(), json!(now + lifetime));
        let key = lock(&self.keys).current.clone();
        Some(key.sign(&Value::Object(claims)))
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks", get(jwks))
        .route("/actions/token", get(actions_token))
        .route("/dev/mint", post(dev_mint))
        .fallback(fallback)
        .with_state(shared)
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "fake issuer is down").into_response()
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if shared.is_down() {
        return unavailable();
    }
    Json(shared.discovery()).into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if shared.is_down() {
        return unavailable();
    }
    Json(shared.jwks()).into_response()
}

/// The GitHub Actions runtime's ID-token endpoint: this one reads the system
/// clock, as the real runtime does.
async fn actions_token(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    shared.actions_hits.fetch_add(1, Ordering::SeqCst);
    if shared.is_down() {
        return unavailable();
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| token == ACTIONS_REQUEST_TOKEN);
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "bad or missing request token").into_response();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX));
    match shared.actions_token(query.get("audience").map(String::as_str), now) {
        Some(token) => Json(json!({ "count": 1, "value": token })).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "actions claims template is not a JSON object").into_response(),
    }
}

/// Signs the posted claims with the current key: the dev CLI's way to get a
/// token from a running `writ serve --dev`.
async fn dev_mint(State(shared): State<Arc<Shared>>, Json(claims): Json<Value>) -> Response {
    if shared.is_down() {
        return unavailable();
    }
    if !shared.dev_mint {
        return StatusCode::NOT_FOUND.into_response();
    }
    let key = lock(&shared.keys).current.clone();
    key.sign(&claims).into_response()
}

async fn fallback(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_down() {
        return unavailable();
    }
    StatusCode::NOT_FOUND.into_response()
}
