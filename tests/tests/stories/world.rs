//! The world the stories run in: a fake GitHub issuer (the CI jobs), a
//! `writ serve --config` child process (or, for key rotation, the same app
//! in process), the demo platform protected by writ-verify on a loopback
//! socket, and the programs a user runs: `writ-action exchange` in CI and
//! the `writ` CLI.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use writ_server::auth::CredentialHash;
use writ_testkit::{FakeIssuer, GitHubClaims, IssuerShape};
use writ_verify::{Verifier, VerifierConfig};

use crate::common::{self, built, free_port, now, writ_bin};

/// The platform's audience: writ's `[tokens] audience`, and what the demo
/// platform's verifier requires in `aud`.
pub const AUDIENCE: &str = "https://api.platform.example";

/// The operator's root credential. TEST-ONLY.
pub const ROOT: &str = "writ_root_TEST-ONLY-stories-0000000000000000000000000000000";

/// acme's production org: only the protected `production` environment of
/// each repository gets a token, and each consumer gets only what it needs.
pub const ACME_PROD: &str = r#"org = "acme-prod"

# Devops' deploy job: main, in the protected environment.
[[rule]]
name = "deploy-prod"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read"]
apps = ["web", "billing"]

# The ops repository runs commands on production machines.
[[rule]]
name = "ops-machines"
issuer = "github"
repository = "acme/ops"
ref = "refs/heads/main"
environment = "production"
permissions = ["machines:exec"]

# The job that provisions Grafana's data source: read-only metrics.
[[rule]]
name = "grafana"
issuer = "github"
repository = "acme/grafana-sync"
ref = "refs/heads/main"
environment = "production"
permissions = ["metrics:read"]

# The log forwarder: reads logs, nothing else.
[[rule]]
name = "log-shipping"
issuer = "github"
repository = "acme/log-shipper"
ref = "refs/heads/main"
environment = "production"
permissions = ["logs:read"]

# GitOps: the infra repository administers the org (policy, revocation).
[[rule]]
name = "infra-admin"
issuer = "github"
repository = "acme/infra"
ref = "refs/heads/main"
permissions = ["writ:policy:write", "writ:audit:read", "writ:tokens:revoke"]
"#;

/// acme's staging org: every branch push of acme/web, developers' and
/// devops' alike, deploys staging.
pub const ACME_STAGING: &str = r#"org = "acme-staging"

[[rule]]
name = "deploy-staging"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/*"
permissions = ["deploy", "logs:read"]
"#;

/// A consultant's client: globex trusts its own repository and, in a rule
/// of its own, the consultant's deploy kit.
pub const GLOBEX: &str = r#"org = "globex"

[[rule]]
name = "shop-deploy"
issuer = "github"
repository = "globex/shop"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read"]

[[rule]]
name = "consultant-kit"
issuer = "github"
repository = "pat-consulting/deploy-kit"
ref = "refs/heads/main"
permissions = ["deploy"]
"#;

/// The consultant's other client, initech: the same shape, its own repo.
pub const INITECH: &str = r#"org = "initech"

[[rule]]
name = "tps-deploy"
issuer = "github"
repository = "initech/tps"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read"]

[[rule]]
name = "consultant-kit"
issuer = "github"
repository = "pat-consulting/deploy-kit"
ref = "refs/heads/main"
permissions = ["deploy"]
"#;

/// The server config shared by the child and the in-process server.
pub fn server_config(port: u16, issuer: &FakeIssuer) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[tokens]
audience = "{AUDIENCE}"
default_ttl = "15m"
max_ttl = "1h"
[storage]
url = "sqlite://writ.db"
[permissions]
deploy = "Deploy apps"
"logs:read" = "Read app logs"
"metrics:read" = "Read org metrics"
"machines:exec" = "Run commands on a machine"
[admin]
root_credential_hash = "{root}"
[[issuers]]
name = "github"
kind = "github"
url = "{issuer}"
"#,
        root = CredentialHash::of(ROOT),
        issuer = issuer.url(),
    )
}

/// One world: issuer, writ, platform, and a working directory.
pub struct World {
    /// The CI jobs' OIDC issuer.
    pub issuer: FakeIssuer,
    /// writ's base URL (its `public_url`).
    pub url: String,
    /// The demo platform.
    pub platform: Platform,
    /// Keeps the `writ serve` child alive (killed on drop); `None` when the
    /// server runs in process.
    _child: Option<common::Server>,
    dir: tempfile::TempDir,
}

impl World {
    /// Starts `writ serve --config` as a child, creates `orgs` (name,
    /// policy) with `writ org create`, and starts the platform with the
    /// verifier defaults (it follows the revocation feed).
    pub async fn start(orgs: &[(&str, &str)]) -> World {
        let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("fake issuer");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("writ.toml");
        std::fs::write(&config, server_config(port, &issuer)).expect("config");
        let url = format!("http://127.0.0.1:{port}");
        let child = common::Server::start(&config, url.clone()).await;
        World::finish(issuer, url, Some(child), dir, orgs, VerifierConfig::new(AUDIENCE)).await
    }

    /// The rest of start-up once writ answers: orgs, then the platform.
    pub async fn finish(
        issuer: FakeIssuer,
        url: String,
        child: Option<common::Server>,
        dir: tempfile::TempDir,
        orgs: &[(&str, &str)],
        verifier: VerifierConfig,
    ) -> World {
        let platform = Platform::start(&url, verifier).await;
        let world = World { issuer, url, platform, _child: child, dir };
        for (org, policy) in orgs {
            let file = world.file(&format!("{org}.toml"), policy);
            let run = world.writ(Some(ROOT), &["org", "create", org, "--policy", &file]).await;
            run.expect_code(0);
        }
        world
    }

    /// A push job of `repository` on `refs/heads/main`, with writ as the
    /// OIDC audience; the story adds environment, ref or event.
    pub fn job(&self, repository: &str) -> GitHubClaims {
        self.issuer.github_claims(&self.url, repository, now())
    }

    /// `writ-action exchange` as a CI job runs it: the OIDC token of
    /// `job` in an environment variable, `--json` for the whole answer.
    /// `Ok(answer)` on exit 0; `Err(stderr)` on exit 1 (a denial).
    pub async fn action_exchange(&self, org: &str, job: &GitHubClaims, extra: &[&str]) -> Result<Value, String> {
        let oidc = self.issuer.mint(&job.build());
        let mut command = Command::new(writ_action_bin());
        command
            .env_clear()
            .env("WRIT_OIDC_TOKEN", oidc)
            .args(["exchange", "--server", &self.url, "--org", org, "--oidc-token-env", "WRIT_OIDC_TOKEN"])
            .args(["--json", "--deadline", "20s"])
            .args(extra);
        let out = run_blocking(command).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(0) => {
                Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON answer ({e}): {stderr}")))
            }
            Some(1) => {
                assert!(out.stdout.is_empty(), "a denial prints no token");
                Err(stderr)
            }
            other => panic!("writ-action exchange exited with {other:?}: {stderr}"),
        }
    }

    /// [`World::action_exchange`] that must be granted; returns the token.
    pub async fn granted(&self, org: &str, job: &GitHubClaims, extra: &[&str]) -> String {
        let answer = self.action_exchange(org, job, extra).await.unwrap_or_else(|e| panic!("denied: {e}"));
        answer["token"].as_str().expect("token").to_owned()
    }

    /// Runs `writ ARGS` with `WRIT_SERVER` set and the given `WRIT_TOKEN`.
    pub async fn writ(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut command = Command::new(writ_bin());
        command.args(args).env("WRIT_SERVER", &self.url).env_remove("WRIT_TOKEN").current_dir(self.dir.path());
        if let Some(token) = token {
            command.env("WRIT_TOKEN", token);
        }
        Run::from(run_blocking(command).await)
    }

    /// Writes `text` to `name` in the working directory; returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }

    /// `POST /oauth/token` (RFC 8693) with a writ token as the subject:
    /// narrowing over HTTP, as any OAuth client does it.
    pub async fn narrow_form(&self, token: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("subject_token", token),
        ];
        form.extend_from_slice(params);
        let r = reqwest::Client::new()
            .post(format!("{}/oauth/token", self.url))
            .form(&form)
            .send()
            .await
            .expect("POST /oauth/token");
        (r.status().as_u16(), r.json().await.expect("JSON body"))
    }

    /// `writ audit ORG --json --all` as the operator: every record.
    pub async fn audit(&self, org: &str) -> Vec<Value> {
        let run = self.writ(Some(ROOT), &["audit", org, "--json", "--limit", "1000"]).await;
        run.expect_code(0);
        let page: Value = serde_json::from_str(&run.stdout).expect("audit JSON");
        page["records"].as_array().expect("records").clone()
    }
}

fn writ_action_bin() -> PathBuf {
    built("writ-action", "writ-action")
}

/// Runs a child process off the async runtime, so the in-process platform
/// and servers keep answering meanwhile.
async fn run_blocking(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("run the command")
}

/// What a CLI run left.
pub struct Run {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing both streams otherwise.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// The demo platform (`writ-demo-platform` as a library) on a loopback
/// socket, verifying tokens with a [`Verifier`] that discovered writ.
pub struct Platform {
    /// Its base URL.
    pub url: String,
    /// Its verifier, shared with the router (for its key ids and feed state).
    pub verifier: Verifier,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One answer of the platform.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl Answer {
    /// Asserts 200 and returns the body.
    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "{:#}", self.body);
        &self.body
    }

    /// Asserts 403 `insufficient_scope` with exactly `description`.
    #[track_caller]
    pub fn forbidden(&self, description: &str) {
        assert_eq!(
            (self.status, &self.body),
            (403, &json!({"error": "insufficient_scope", "error_description": description})),
        );
    }

    /// Asserts 401 `invalid_token` with exactly `description`.
    #[track_caller]
    pub fn unauthorized(&self, description: &str) {
        assert_eq!(
            (self.status, &self.body),
            (401, &json!({"error": "invalid_token", "error_description": description}))
        );
    }
}

impl Platform {
    /// Discovers writ at `writ_url` (keys and revocation feed), then serves
    /// the demo platform's routes on `127.0.0.1:0`.
    pub async fn start(writ_url: &str, config: VerifierConfig) -> Platform {
        let verifier = Verifier::discover(writ_url, config).await.expect("the platform discovers writ");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the platform");
        let url = format!("http://{}", listener.local_addr().expect("platform address"));
        let state = writ_demo_platform::AppState {
            verifier: verifier.clone(),
            platform: Arc::new(writ_demo_platform::Platform::demo()),
        };
        let app = writ_demo_platform::router(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Platform { url, verifier, client: reqwest::Client::new(), task }
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("platform request");
        let status = response.status().as_u16();
        Answer { status, body: response.json().await.expect("platform JSON") }
    }

    /// `POST /orgs/{org}/apps/{app}/deploy` (needs `deploy` on the app).
    pub async fn deploy(&self, org: &str, app: &str, token: &str) -> Answer {
        self.call(reqwest::Method::POST, &format!("/orgs/{org}/apps/{app}/deploy"), token, None).await
    }

    /// `GET /orgs/{org}/apps/{app}/logs` (needs `logs:read` on the app).
    pub async fn logs(&self, org: &str, app: &str, token: &str) -> Answer {
        self.call(reqwest::Method::GET, &format!("/orgs/{org}/apps/{app}/logs"), token, None).await
    }

    /// `GET /orgs/{org}/metrics` (needs `metrics:read`, org-wide).
    pub async fn metrics(&self, org: &str, token: &str) -> Answer {
        self.call(reqwest::Method::GET, &format!("/orgs/{org}/metrics"), token, None).await
    }

    /// `POST /orgs/{org}/machines/{id}/exec` (needs `machines:exec` on the
    /// machine).
    pub async fn exec(&self, org: &str, machine: &str, token: &str) -> Answer {
        let body = json!({"command": "uptime"});
        self.call(reqwest::Method::POST, &format!("/orgs/{org}/machines/{machine}/exec"), token, Some(body)).await
    }

    /// `GET /healthz`: the platform's view of the revocation feed.
    pub async fn health(&self) -> Value {
        let r = self.client.get(format!("{}/healthz", self.url)).send().await.expect("healthz");
        r.json().await.expect("healthz JSON")
    }
}

/// A JWT's payload, decoded without verification (the test inspects
/// tokens it was just handed; the platform verifies them for real).
pub fn payload(jwt: &str) -> Value {
    part(jwt, 1)
}

/// A JWT's header, decoded without verification.
pub fn header(jwt: &str) -> Value {
    part(jwt, 0)
}

fn part(jwt: &str, index: usize) -> Value {
    let text = jwt.split('.').nth(index).expect("JWT part");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).expect("base64url"))
        .expect("JSON")
}
