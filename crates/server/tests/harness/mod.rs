//! Test harness: a writ server (router only, no socket) with SQLite in a
//! temp dir, a fake GitHub issuer on loopback, and a pinned clock.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use writ_core::policy::SourceFormat;
use writ_server::app::{AppState, Clock, router};
use writ_server::auth::CredentialHash;
use writ_server::config::Config;
use writ_server::policies::PolicyUpdate;
use writ_server::storage::ManagedBy;
use writ_testkit::{FakeIssuer, GitHubClaims, IssuerShape};

/// The production org of the stories.
pub const PROD_POLICY: &str = r#"
org = "acme-prod"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read"]
apps = ["web"]
max_ttl = "15m"

[[rule]]
name = "grafana"
issuer = "github"
repository = "acme/dashboards"
ref = "refs/heads/main"
permissions = ["metrics:read"]
"#;

/// The staging org of the stories.
pub const STAGING_POLICY: &str = r#"
org = "acme-staging"

[[rule]]
name = "deploy-staging"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/*"
permissions = ["deploy", "logs:read"]
"#;

/// The operator root credential of every harness server (test-only).
pub const ROOT_CREDENTIAL: &str = "writ_root_TEST-ONLY-0000000000000000000000000000000000";
/// The secret of the `platform-api` introspection client (test-only).
pub const INTROSPECTION_SECRET: &str = "test-only-introspection-secret";

/// A response with its headers and raw body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub text: String,
    pub json: Value,
}

pub struct Harness {
    pub issuer: FakeIssuer,
    pub state: AppState,
    pub router: Router,
    pub clock: Clock,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start(policies: &[&str]) -> Harness {
        Harness::start_with(policies, "").await
    }

    /// Like [`Harness::start`], with `extra` appended to the config.
    pub async fn start_with(policies: &[&str], extra: &str) -> Harness {
        let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("fake issuer");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            r#"
[server]
public_url = "https://writ.test"
audience = "https://writ.test"
[tokens]
audience = "https://api.platform.example"
[storage]
url = "sqlite://writ.db"
[permissions]
deploy = "Deploy"
"logs:read" = "Read logs"
"metrics:read" = "Read metrics"
[admin]
root_credential_hash = "{root}"
[[introspection.clients]]
id = "platform-api"
secret_hash = "{client}"
[[issuers]]
name = "github"
kind = "github"
url = "{}"
{extra}
"#,
            issuer.url(),
            root = CredentialHash::of(ROOT_CREDENTIAL),
            client = CredentialHash::of(INTROSPECTION_SECRET),
        );
        let config = Config::parse(&config, dir.path(), &|_| None).expect("config");
        let clock = Clock::pinned(now());
        let state = AppState::build(config, clock.clone()).await.expect("state");
        let h = Harness { router: router(state.clone()), issuer, state, clock, dir };
        for p in policies {
            h.apply_policy(p).await.expect("policy applies");
        }
        h
    }

    pub fn public_url(&self) -> &str {
        "https://writ.test"
    }

    pub fn audience(&self) -> &str {
        "https://writ.test"
    }

    pub async fn apply_policy(&self, source: &str) -> anyhow::Result<()> {
        self.state
            .policies
            .apply(
                self.state.store.as_ref(),
                &self.state.catalogue,
                PolicyUpdate {
                    source,
                    format: SourceFormat::Toml,
                    managed_by: ManagedBy::Api,
                    expected_version: None,
                    origin: "policy.toml",
                    author: None,
                },
                self.clock.now(),
            )
            .await
            .map(|_| ())
    }

    /// GitHub claims for `repository` at the pinned time, audience right.
    pub fn github(&self, repository: &str) -> GitHubClaims {
        self.issuer.github_claims(self.audience(), repository, self.clock.now())
    }

    pub async fn exchange(&self, body: Value) -> (StatusCode, Value) {
        self.post_raw("/v1/exchange", "application/json", &body.to_string()).await
    }

    pub async fn post_form(&self, path: &str, form: &str) -> (StatusCode, Value) {
        self.post_raw(path, "application/x-www-form-urlencoded", form).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::post(path)
            .header("content-type", content_type)
            .body(Body::from(body.to_owned()))
            .expect("request");
        self.send(request).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Request::get(path).body(Body::empty()).expect("request")).await
    }

    /// Any request, with headers; the reply keeps headers and raw text.
    pub async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Body::from(body.unwrap_or_default().to_owned())).expect("request");
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        assert!(headers.contains_key("x-request-id"), "every response carries a request id");
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, text, json }
    }

    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        assert!(response.headers().contains_key("x-request-id"), "every response carries a request id");
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("non-JSON body with {status}: {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    /// Verifies a writ token against the served JWKS with a plain JWT
    /// library, as a platform would.
    pub async fn verify_writ_token(&self, token: &str) -> Value {
        let (_, jwks) = self.get("/.well-known/jwks.json").await;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).expect("jwks");
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let kid = header.kid.expect("kid");
        let jwk = set.find(&kid).expect("published key");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&["https://api.platform.example"]);
        validation.validate_exp = false;
        jsonwebtoken::decode::<Value>(token, &key, &validation).expect("writ token verifies").claims
    }

    pub async fn audit(&self, org: &str) -> Vec<Value> {
        let records = self.state.store.audit_recent(org, 100).await.expect("audit");
        records.iter().map(|r| serde_json::to_value(r).expect("audit json")).collect()
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}
