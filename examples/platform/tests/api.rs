//! The demo platform's endpoints through the router (`oneshot`, no socket),
//! with writ tokens minted by writ-core's `mint` under a throwaway key that
//! the platform's verifier pins: each endpoint's permission and target, and
//! the 401/403/404 answers a caller gets.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use writ_core::token::{CiProvenance, SigningKey, WritClaims, mint};
use writ_demo_platform::{AppState, Platform, router};
use writ_verify::{Verifier, VerifierConfig};

const WRIT: &str = "http://127.0.0.1:8080";
const AUDIENCE: &str = "https://api.platform.example";

struct Demo {
    key: SigningKey,
    app: axum::Router,
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: Value,
}

/// What a token grants, for [`Demo::token`].
struct Scope<'a> {
    org: &'a str,
    permissions: &'a str,
    apps: Option<&'a [&'a str]>,
    machines: Option<&'a [&'a str]>,
}

impl Demo {
    fn new() -> Demo {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        let key = SigningKey::from_pkcs8_der("test-kid", der.as_ref()).expect("key");
        let jwks = json!({ "keys": [key.public_jwk()] }).to_string();
        let verifier = Verifier::from_jwks(WRIT, &jwks, VerifierConfig::new(AUDIENCE)).expect("verifier");
        let app = router(AppState { verifier, platform: std::sync::Arc::new(Platform::demo()) });
        Demo { key, app }
    }

    fn token(&self, scope: Scope<'_>) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        let claims = WritClaims {
            iss: WRIT.into(),
            aud: AUDIENCE.into(),
            sub: "github:repo:acme/web:environment:production".into(),
            client_id: "github:acme/web".into(),
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: format!("jti-{now}-{}", scope.permissions),
            scope: scope.permissions.into(),
            org: scope.org.into(),
            apps: list(scope.apps),
            machines: list(scope.machines),
            ci: CiProvenance {
                repository: Some("acme/web".into()),
                sha: Some("0123456789abcdef".into()),
                run_id: Some("42".into()),
                ..CiProvenance::default()
            },
            parent: None,
        };
        mint(&claims, &self.key).expect("mint")
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = self.app.clone().oneshot(request.body(body).expect("request")).await.expect("infallible");
        let status = response.status();
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().expect("ascii").to_owned());
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes).expect("JSON body");
        Answer { status, challenge, body }
    }
}

fn prod_deployer() -> Scope<'static> {
    Scope { org: "acme-prod", permissions: "deploy logs:read", apps: Some(&["web"]), machines: None }
}

#[tokio::test]
async fn a_deploy_token_deploys_its_app_and_reads_its_logs() {
    let demo = Demo::new();
    let token = demo.token(prod_deployer());
    let answer =
        demo.call("POST", "/orgs/acme-prod/apps/web/deploy", Some(&token), Some(json!({"image": "web:1.2.3"}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["version"], 1);
    assert_eq!(answer.body["deployed_by"], "github:repo:acme/web:environment:production");
    let again = demo.call("POST", "/orgs/acme-prod/apps/web/deploy", Some(&token), None).await;
    assert_eq!(again.body["version"], 2);

    let logs = demo.call("GET", "/orgs/acme-prod/apps/web/logs", Some(&token), None).await;
    assert_eq!(logs.status, StatusCode::OK);
    let lines = logs.body["lines"].as_array().expect("lines");
    assert_eq!(
        lines[1],
        "web: deployed v1 (web:1.2.3) by github:repo:acme/web:environment:production (acme/web@0123456, run 42)"
    );
}

#[tokio::test]
async fn the_deploy_token_reaches_neither_another_app_nor_staging() {
    let demo = Demo::new();
    let token = demo.token(prod_deployer());
    let billing = demo.call("POST", "/orgs/acme-prod/apps/billing/deploy", Some(&token), None).await;
    assert_eq!(billing.status, StatusCode::FORBIDDEN);
    assert_eq!(billing.body["error_description"], "token is limited to apps web; not billing");
    let staging = demo.call("POST", "/orgs/acme-staging/apps/web/deploy", Some(&token), None).await;
    assert_eq!(staging.status, StatusCode::FORBIDDEN);
    assert_eq!(staging.body["error_description"], "token is for org acme-prod, not acme-staging");
    let metrics = demo.call("GET", "/orgs/acme-prod/metrics", Some(&token), None).await;
    assert_eq!(metrics.status, StatusCode::FORBIDDEN, "{}", metrics.body);
}

#[tokio::test]
async fn a_metrics_token_reads_metrics_and_nothing_else() {
    let demo = Demo::new();
    let token = demo.token(Scope { org: "acme-prod", permissions: "metrics:read", apps: None, machines: None });
    let metrics = demo.call("GET", "/orgs/acme-prod/metrics", Some(&token), None).await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.body);
    assert_eq!(metrics.body["apps"]["web"]["version"], 0);
    assert_eq!(metrics.body["machines"]["vm-prod-1"]["execs"], 0);

    let deploy = demo.call("POST", "/orgs/acme-prod/apps/web/deploy", Some(&token), None).await;
    assert_eq!(deploy.status, StatusCode::FORBIDDEN);
    assert_eq!(deploy.body["error"], "insufficient_scope");
    assert_eq!(deploy.body["error_description"], "token lacks permission deploy (has metrics:read)");
    assert!(deploy.challenge.expect("challenge").ends_with(r#"scope="deploy""#));
    let logs = demo.call("GET", "/orgs/acme-prod/apps/web/logs", Some(&token), None).await;
    assert_eq!(logs.body["error_description"], "token lacks permission logs:read (has metrics:read)");
}

#[tokio::test]
async fn a_one_machine_token_runs_on_that_machine_only() {
    let demo = Demo::new();
    let token = demo.token(Scope {
        org: "acme-prod",
        permissions: "machines:exec",
        apps: None,
        machines: Some(&["vm-prod-1"]),
    });
    let run = demo
        .call("POST", "/orgs/acme-prod/machines/vm-prod-1/exec", Some(&token), Some(json!({"command": "uptime"})))
        .await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.body);
    assert_eq!(run.body["exit_code"], 0);
    assert!(run.body["output"].as_str().expect("output").starts_with("(simulated) uptime on vm-prod-1"));

    let other = demo
        .call("POST", "/orgs/acme-prod/machines/vm-prod-2/exec", Some(&token), Some(json!({"command": "uptime"})))
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.body["error_description"], "token is limited to machines vm-prod-1; not vm-prod-2");
    let bad =
        demo.call("POST", "/orgs/acme-prod/machines/vm-prod-1/exec", Some(&token), Some(json!({"cmd": "x"}))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn without_a_valid_token_the_platform_answers_401() {
    let demo = Demo::new();
    let none = demo.call("GET", "/orgs/acme-prod/metrics", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.challenge.as_deref(), Some("Bearer"));

    // An ID-token-shaped JWT (typ JWT), even signed by the pinned key.
    let token = demo.token(prod_deployer());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[0] = base64_url(r#"{"alg":"EdDSA","typ":"JWT","kid":"test-kid"}"#);
    let forged = parts.join(".");
    let answer = demo.call("POST", "/orgs/acme-prod/apps/web/deploy", Some(&forged), None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body["error"], "invalid_token");
    assert!(answer.challenge.expect("challenge").starts_with(r#"Bearer error="invalid_token""#));
}

#[tokio::test]
async fn existence_is_checked_only_after_authorization() {
    let demo = Demo::new();
    let anywhere = demo.token(Scope { org: "acme-prod", permissions: "deploy", apps: None, machines: None });
    let missing = demo.call("POST", "/orgs/acme-prod/apps/nope/deploy", Some(&anywhere), None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error_description"], "no app nope in org acme-prod");
    let other_org = demo.call("POST", "/orgs/no-such-org/apps/web/deploy", Some(&anywhere), None).await;
    assert_eq!(other_org.status, StatusCode::FORBIDDEN, "an unknown org is not revealed: {}", other_org.body);
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
