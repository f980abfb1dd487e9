//! A real GitHub-minted OIDC token (crates/core/tests/fixtures/github-oidc,
//! provenance in its manifest.json) exchanged through the whole server with
//! GitHub's published keys pinned (`jwks_file`): granted with the clock
//! pinned inside the token's lifetime, refused as expired under the real
//! clock.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use writ_core::policy::SourceFormat;
use writ_server::app::{AppState, Clock, router};
use writ_server::config::Config;
use writ_server::policies::PolicyUpdate;
use writ_server::storage::ManagedBy;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/fixtures/github-oidc");
const TOKEN: &str = "tokens/gh_2026-06-13_sigstore-beacon_kid38826b.jwt";
const JWKS: &str = "jwks/github_jwks_2025_cratesio.json";
/// The token's `iat` (manifest.json); it expires 300 s later.
const IAT: i64 = 1_781_377_264;

const POLICY: &str = r#"
org = "beacon"

[[rule]]
name = "beacon-main"
issuer = "github"
repository = "sigstore-conformance/extremely-dangerous-public-oidc-beacon"
ref = "refs/heads/main"
workflow = "sigstore-conformance/extremely-dangerous-public-oidc-beacon/.github/workflows/extremely-dangerous-oidc-beacon.yml"
claims = { runner_environment = "github-hosted", event_name = "workflow_dispatch" }
permissions = ["deploy"]
"#;

async fn server(clock: Clock, dir: &tempfile::TempDir) -> AppState {
    let config = format!(
        r#"
[server]
public_url = "https://writ.test"
audience = "sigstore"
[storage]
url = "sqlite://writ.db"
[permissions]
deploy = "Deploy"
[[issuers]]
name = "github"
kind = "github"
url = "https://token.actions.githubusercontent.com"
jwks_file = "{FIXTURES}/{JWKS}"
"#
    );
    let config = Config::parse(&config, dir.path(), &|_| None).expect("config");
    let state = AppState::build(config, clock.clone()).await.expect("state");
    let update = PolicyUpdate {
        source: POLICY,
        format: SourceFormat::Toml,
        managed_by: ManagedBy::Api,
        expected_version: None,
        origin: "beacon.toml",
        author: None,
    };
    state.policies.apply(state.store.as_ref(), &state.catalogue, update, clock.now()).await.expect("policy");
    state
}

async fn exchange(state: &AppState) -> (StatusCode, Value) {
    let token = std::fs::read_to_string(format!("{FIXTURES}/{TOKEN}")).expect("fixture");
    let body = json!({"token": token.trim(), "org": "beacon"}).to_string();
    let request = Request::post("/v1/exchange").header("content-type", "application/json").body(Body::from(body));
    let response = router(state.clone()).oneshot(request.expect("request")).await.expect("infallible");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).expect("json"))
}

#[tokio::test]
async fn a_real_github_token_is_granted_with_the_clock_pinned_inside_its_lifetime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = server(Clock::pinned(IAT + 60), &dir).await;
    let (status, body) = exchange(&state).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["rule"], "beacon-main");
    assert_eq!(body["permissions"], json!(["deploy"]));
    // And only once.
    let (status, body) = exchange(&state).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
}

#[tokio::test]
async fn a_real_github_token_is_refused_as_expired_under_the_real_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = server(Clock::system(), &dir).await;
    let (status, body) = exchange(&state).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].as_str().expect("text").contains("expired"), "{body:#}");
}
