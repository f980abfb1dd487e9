//! The GitHub Action end to end: `action.yml` executed the way a runner executes it (inputs as `INPUT_*`, the file commands, the Actions OIDC endpoint from the testkit issuer, `node` running the launcher, main then post) against a real `writ serve` behind a recording, failure-injecting proxy; and `writ-action exchange` as other CI systems run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};
use writ_testkit::{FakeIssuer, IssuerShape};

mod common;
use common::{Server, built, free_port, now, repo_root};

fn writ_action_bin() -> PathBuf {
    built("writ-action", "writ-action")
}

const POLICY: &str = r#"
org = "acme-prod"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read"]
apps = ["web"]
"#;

/// The platform API's credentials for `POST /oauth/introspect`. TEST-ONLY.
const INTROSPECTION_CLIENT: &str = "platform";
const INTROSPECTION_SECRET: &str = "writ-test-introspection-secret";

async fn serve_with_config(issuer: &FakeIssuer, dir: &Path) -> Server {
    let port = free_port();
    std::fs::create_dir_all(dir.join("policies")).expect("mkdir");
    std::fs::write(dir.join("policies/acme-prod.toml"), POLICY).expect("policy");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[tokens]
audience = "https://api.platform.example"
[storage]
url = "sqlite://writ.db"
[policies]
dir = "policies"
[permissions]
deploy = "Deploy"
"logs:read" = "Read logs"
[[issuers]]
name = "github"
kind = "github"
url = "{}"
[[introspection.clients]]
id = "{INTROSPECTION_CLIENT}"
secret_hash = "sha256:{}"
"#,
        issuer.url(),
        sha256_hex(INTROSPECTION_SECRET.as_bytes())
    );
    let path = dir.join("writ.toml");
    std::fs::write(&path, config).expect("config");
    Server::start(&path, format!("http://127.0.0.1:{port}")).await
}

// ---------------------------------------------------------------------------
// The proxy: records every request and answers some with injected faults
// instead of forwarding them.

/// One request the proxy saw, and the status it answered.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: String,
    status: u16,
}

/// An injected answer for requests to `path`, `times` times (None: always).
#[derive(Debug, Clone)]
struct Fault {
    path: &'static str,
    status: u16,
    body: &'static str,
    retry_after: Option<&'static str>,
    times: Option<usize>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
}

struct Proxy {
    url: String,
    state: ProxyState,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let state = ProxyState {
            upstream: upstream.to_owned(),
            client: reqwest::Client::new(),
            seen: Arc::default(),
            faults: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let app = axum::Router::new().fallback(forward).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Proxy { url, state }
    }

    fn inject(&self, fault: Fault) {
        self.state.faults.lock().expect("faults").push(fault);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    fn seen_at(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.method == method && s.path == path).collect()
    }
}

async fn forward(State(state): State<ProxyState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let mut record = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
    };
    let fault = {
        let mut faults = state.faults.lock().expect("faults");
        let found = faults.iter_mut().find(|f| f.path == path && f.times != Some(0));
        found.map(|f| {
            if let Some(n) = f.times.as_mut() {
                *n -= 1;
            }
            f.clone()
        })
    };
    let response = match fault {
        Some(fault) => {
            let mut builder = Response::builder().status(fault.status);
            if let Some(after) = fault.retry_after {
                builder = builder.header("retry-after", after);
            }
            builder.body(Body::from(fault.body)).expect("fault response")
        }
        None => {
            let target = format!("{}{}", state.upstream, parts.uri.path_and_query().map_or("/", |p| p.as_str()));
            let mut upstream = state.client.request(parts.method.clone(), target);
            for (name, value) in &parts.headers {
                if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
                    upstream = upstream.header(name, value);
                }
            }
            match upstream.body(body.to_vec()).send().await {
                Ok(answer) => {
                    let mut builder = Response::builder().status(answer.status().as_u16());
                    for name in ["content-type", "retry-after", "cache-control"] {
                        if let Some(value) = answer.headers().get(name) {
                            builder = builder.header(name, value);
                        }
                    }
                    let bytes = answer.bytes().await.unwrap_or_default();
                    builder.body(Body::from(bytes)).expect("forwarded response")
                }
                Err(_) => Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::empty()).expect("502"),
            }
        }
    };
    record.status = response.status().as_u16();
    state.seen.lock().expect("seen").push(record);
    response
}

// ---------------------------------------------------------------------------
// The runner simulation.

/// `action.yml` as the runner reads it.
#[derive(Debug)]
struct ActionMeta {
    /// (name, default, required)
    inputs: Vec<(String, Option<String>, bool)>,
    main: String,
    post: String,
}

fn action_meta() -> &'static ActionMeta {
    static META: OnceLock<ActionMeta> = OnceLock::new();
    META.get_or_init(|| {
        let text = std::fs::read_to_string(repo_root().join("action.yml")).expect("action.yml at the repository root");
        let doc: Value = yaml_serde::from_str(&text).expect("action.yml is YAML");
        let runs = &doc["runs"];
        let using = runs["using"].as_str().expect("runs.using");
        assert!(matches!(using, "node20" | "node24"), "a JavaScript action (main and post steps), not {using}");
        assert_eq!(runs["post-if"].as_str(), Some("always()"), "the post step runs even when the job failed");
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        let inputs = doc["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(name, spec)| (name.clone(), scalar(&spec["default"]), spec["required"].as_bool().unwrap_or(false)))
            .collect();
        let outputs: Vec<&String> = doc["outputs"].as_object().expect("outputs").keys().collect();
        for wanted in ["token", "expires-at", "permissions", "apps"] {
            assert!(outputs.iter().any(|o| *o == wanted), "output {wanted} is declared");
        }
        ActionMeta {
            inputs,
            main: runs["main"].as_str().expect("runs.main").to_owned(),
            post: runs["post"].as_str().expect("runs.post").to_owned(),
        }
    })
}

fn node_available() -> bool {
    static NODE: OnceLock<bool> = OnceLock::new();
    *NODE.get_or_init(|| Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Main,
    Post,
}

/// What one step left behind.
#[derive(Debug)]
struct StepRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    outputs: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    state: BTreeMap<String, String>,
    summary: String,
}

impl StepRun {
    fn log(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}---", self.stdout, self.stderr)
    }
}

/// Reads a file-command file (`$GITHUB_OUTPUT`, …) as the runner does:
/// `name=value` lines and `name<<DELIM` … `DELIM` blocks.
fn parse_file_command(text: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let equals = line.find('=');
        let heredoc = line.find("<<");
        match (equals, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                values.insert(line[..e].to_owned(), line[e + 1..].to_owned());
            }
            (_, Some(h)) => {
                let (name, delimiter) = (&line[..h], &line[h + 2..]);
                let mut value = Vec::new();
                loop {
                    let next = lines.next().unwrap_or_else(|| panic!("{name}: delimiter {delimiter} never closes"));
                    if next == delimiter {
                        break;
                    }
                    value.push(next);
                }
                values.insert(name.to_owned(), value.join("\n"));
            }
            _ => panic!("invalid file command line {line:?}"),
        }
    }
    values
}

/// The runner's environment for one job.
struct Job {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Job {
    /// A push job of acme/web (or whatever `env` overrides), with
    /// `permissions: id-token: write` when `issuer` is given.
    fn new(issuer: Option<&FakeIssuer>) -> Job {
        let dir = tempfile::tempdir().expect("runner temp");
        let mut env: Vec<(String, String)> = [
            ("GITHUB_ACTIONS", "true"),
            ("CI", "true"),
            ("GITHUB_EVENT_NAME", "push"),
            ("GITHUB_ACTOR", "octocat"),
            ("GITHUB_REPOSITORY", "acme/web"),
            ("GITHUB_REF", "refs/heads/main"),
            ("GITHUB_ACTION_REPOSITORY", "acme/writ"),
            ("GITHUB_ACTION_REF", "v1"),
            ("RUNNER_OS", runner_os()),
            ("RUNNER_ARCH", if cfg!(target_arch = "aarch64") { "ARM64" } else { "X64" }),
            ("WRIT_ACTION_DEADLINE", "20s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        env.push(("RUNNER_TEMP".to_owned(), dir.path().display().to_string()));
        env.push(("GITHUB_ACTION_PATH".to_owned(), repo_root().display().to_string()));
        env.push(("WRIT_ACTION_BIN".to_owned(), writ_action_bin().display().to_string()));
        if let Some(issuer) = issuer {
            env.push(("ACTIONS_ID_TOKEN_REQUEST_URL".to_owned(), issuer.actions_token_url()));
            env.push(("ACTIONS_ID_TOKEN_REQUEST_TOKEN".to_owned(), issuer.actions_request_token().to_owned()));
        }
        let event = dir.path().join("event.json");
        std::fs::write(&event, "{}").expect("event payload");
        env.push(("GITHUB_EVENT_PATH".to_owned(), event.display().to_string()));
        Job { dir, env }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    fn event(&mut self, name: &str, payload: Value) {
        self.set("GITHUB_EVENT_NAME", name);
        std::fs::write(self.dir.path().join("event.json"), payload.to_string()).expect("event payload");
    }

    /// Runs one step of the action with `with:` values; `state` is the
    /// main step's saved state (for post).
    async fn step(&self, phase: Phase, with: &[(&str, &str)], state: &BTreeMap<String, String>) -> StepRun {
        let action = action_meta();
        let step_dir = tempfile::tempdir_in(self.dir.path()).expect("step dir");
        let file = |name: &str| {
            let path = step_dir.path().join(name);
            std::fs::write(&path, "").expect("file command file");
            path
        };
        let (output, env_file, state_file, summary) = (file("output"), file("env"), file("state"), file("summary"));

        let mut command = if node_available() {
            let script = match phase {
                Phase::Main => &action.main,
                Phase::Post => &action.post,
            };
            let mut c = Command::new("node");
            c.arg(repo_root().join(script));
            c
        } else {
            eprintln!("node is not installed: running writ-action directly instead of the launcher");
            let mut c = Command::new(writ_action_bin());
            c.arg(if phase == Phase::Main { "main" } else { "post" });
            c
        };
        command.env_clear();
        for name in ["PATH", "HOME", "SystemRoot", "TEMP", "TMP"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        for (name, default, required) in &action.inputs {
            let value = with.iter().find(|(k, _)| k == name).map(|(_, v)| v.to_string()).or_else(|| default.clone());
            assert!(!required || value.is_some(), "required input {name} not given");
            command.env(format!("INPUT_{}", name.replace(' ', "_").to_uppercase()), value.unwrap_or_default());
        }
        for (name, value) in state {
            command.env(format!("STATE_{name}"), value);
        }
        command
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_ENV", &env_file)
            .env("GITHUB_STATE", &state_file)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .stdin(Stdio::null());
        let out = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("run the step");
        let read = |path: &Path| std::fs::read_to_string(path).expect("read file command file");
        StepRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            outputs: parse_file_command(&read(&output)),
            env: parse_file_command(&read(&env_file)),
            state: parse_file_command(&read(&state_file)),
            summary: read(&summary),
        }
    }
}

fn runner_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "macOS",
        "windows" => "Windows",
        _ => "Linux",
    }
}

/// The runner masks a secret from its `::add-mask::` line on: the secret
/// must not appear on stdout before that line, and never on stderr.
fn assert_masked_first(run: &StepRun, secret: &str, what: &str) {
    let prefix = "::add-mask::";
    let mask_at = run
        .stdout
        .find(&format!("{prefix}{secret}"))
        .unwrap_or_else(|| panic!("{what} is never masked\n{}", run.log()));
    assert!(mask_at == 0 || run.stdout[..mask_at].ends_with('\n'), "the mask command starts a line");
    assert_eq!(
        run.stdout.find(secret),
        Some(mask_at + prefix.len()),
        "the first occurrence of the {what} on stdout must be its ::add-mask:: line\n{}",
        run.log()
    );
    assert!(!run.stderr.contains(secret), "the {what} appears on stderr\n{}", run.log());
}

/// The message of the first `::<name> …::message` line, unescaped.
fn annotation(stdout: &str, prefix: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.starts_with(prefix))?;
    Some(line[prefix.len()..].replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%"))
}

fn unverified_payload(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
        .expect("JSON payload")
}

/// Everything a test needs: the issuer (the Actions OIDC endpoint), the
/// server, and the proxy the action talks to.
struct World {
    issuer: FakeIssuer,
    server: Server,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = serve_with_config(&issuer, dir.path()).await;
        let proxy = Proxy::start(&server.url).await;
        // The job the runner would give a production deploy of acme/web.
        issuer.set_actions_claims(Some(
            issuer.github_claims("replaced-per-request", "acme/web", now()).environment("production").build(),
        ));
        World { issuer, server, proxy, _dir: dir }
    }

    /// The OIDC tokens the action presented, in order.
    fn presented_oidc_tokens(&self) -> Vec<String> {
        self.proxy
            .seen_at("POST", "/v1/exchange")
            .iter()
            .map(|s| {
                let body: Value = serde_json::from_str(&s.body).expect("exchange body is JSON");
                body["token"].as_str().expect("token").to_owned()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_delivers_a_masked_token_and_the_post_step_revokes_it() {
    let world = World::start().await;
    let mut job = Job::new(Some(&world.issuer));
    job.set("RUNNER_DEBUG", "1");
    let with = [
        ("server", world.proxy.url.as_str()),
        ("org", "acme-prod"),
        ("permissions", "deploy"),
        ("apps", "web"),
        ("ttl", "10m"),
        ("export-env", "PLATFORM_API_TOKEN"),
    ];
    let main = job.step(Phase::Main, &with, &BTreeMap::new()).await;
    assert_eq!(main.code, Some(0), "{}", main.log());

    // No `audience` input: the action asked the server which one to use.
    assert_eq!(world.proxy.seen_at("GET", "/v1/audience").len(), 1);
    let oidc = world.presented_oidc_tokens();
    assert_eq!(oidc.len(), 1, "one exchange");
    assert_eq!(unverified_payload(&oidc[0])["aud"], json!(world.server.url), "the server's audience");

    // Outputs, env and state.
    let token = main.outputs.get("token").expect("token output").clone();
    let claims = unverified_payload(&token);
    assert_eq!(claims["org"], "acme-prod");
    assert_eq!(claims["scope"], "deploy");
    assert_eq!(main.outputs["permissions"], "deploy");
    assert_eq!(main.outputs["apps"], "web");
    let expires_at = &main.outputs["expires-at"];
    assert!(expires_at.len() >= 20 && expires_at.ends_with('Z'), "RFC 3339: {expires_at}");
    assert_eq!(main.env.get("PLATFORM_API_TOKEN"), Some(&token), "export-env");
    assert_eq!(main.env.len(), 1, "nothing else exported: {:?}", main.env.keys());
    assert_eq!(main.state.get("token"), Some(&token));

    // Masks: the writ token and the OIDC token, each before any other use.
    assert_masked_first(&main, &token, "writ token");
    assert_masked_first(&main, &oidc[0], "OIDC token");

    // Debug mode lists the decoded claims, never the raw token.
    assert!(main.stdout.contains("::debug::  repository = \"acme/web\""), "{}", main.log());
    assert!(main.stdout.contains("::debug::  environment = \"production\""), "{}", main.log());

    // The summary.
    for row in [
        "| Org | acme-prod |",
        "| Permissions | deploy |",
        "| Apps | web |",
        "| Rule | deploy-web |",
        "| Repository | acme/web |",
        "| Ref | refs/heads/main |",
        "| Environment | production |",
    ] {
        assert!(main.summary.contains(row), "summary row {row}:\n{}", main.summary);
    }
    assert!(main.summary.contains(&format!("| Expires | {expires_at} (in 10 min) |")), "{}", main.summary);
    assert!(!main.summary.contains(&token) && !main.summary.contains(&oidc[0]), "no token in the summary");

    // Post: revokes the token it was handed through the state.
    assert!(introspect_active(&world, &token).await, "the token works until the post step");
    let post = job.step(Phase::Post, &with, &main.state).await;
    assert_eq!(post.code, Some(0), "{}", post.log());
    assert_masked_first(&post, &token, "writ token (post)");
    let revokes = world.proxy.seen_at("POST", "/oauth/revoke");
    assert_eq!(revokes.len(), 1, "one revocation: {:?}", world.proxy.seen());
    let form = &revokes[0].body;
    assert!(form.contains(&format!("token={token}")), "the token is revoked: {form}");
    assert!(form.contains("token_type_hint=access_token"), "{form}");
    assert_eq!(revokes[0].status, 200, "RFC 7009: 200\n{}", post.log());
    assert!(post.stdout.contains("writ: revoked the token"), "{}", post.log());
    assert!(!post.stdout.contains("::warning"), "{}", post.log());
    assert!(!introspect_active(&world, &token).await, "the revoked token is refused afterwards");
}

/// Whether the server considers `token` active, asked as a platform API
/// would: RFC 7662 introspection with the resource server's credentials.
async fn introspect_active(world: &World, token: &str) -> bool {
    let answer = reqwest::Client::new()
        .post(format!("{}/oauth/introspect", world.server.url))
        .basic_auth(INTROSPECTION_CLIENT, Some(INTROSPECTION_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .expect("introspect request");
    assert_eq!(answer.status().as_u16(), 200, "introspection answers");
    let body: Value = answer.json().await.expect("introspection JSON");
    body["active"].as_bool().unwrap_or_else(|| panic!("`active` in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_a_fresh_oidc_token() {
    let world = World::start().await;
    world.proxy.inject(Fault {
        path: "/v1/exchange",
        status: 503,
        body: "upstream down",
        retry_after: None,
        times: Some(1),
    });
    world.proxy.inject(Fault {
        path: "/v1/exchange",
        status: 429,
        body: r#"{"error":"slow_down","error_description":"rate limited","request_id":"r"}"#,
        retry_after: Some("1"),
        times: Some(1),
    });
    let job = Job::new(Some(&world.issuer));
    let with = [("server", world.proxy.url.as_str()), ("org", "acme-prod"), ("audience", world.server.url.as_str())];
    let started = Instant::now();
    let main = job.step(Phase::Main, &with, &BTreeMap::new()).await;
    assert_eq!(main.code, Some(0), "{}", main.log());
    assert!(main.outputs.contains_key("token"));

    let attempts = world.proxy.seen_at("POST", "/v1/exchange");
    assert_eq!(attempts.iter().map(|s| s.status).collect::<Vec<_>>(), [503, 429, 200], "{attempts:?}");
    assert!(main.stdout.contains("HTTP 503"), "the retry is logged: {}", main.log());
    assert!(started.elapsed() >= Duration::from_secs(1), "the 429's Retry-After was honoured");
    // Each attempt presented its own OIDC token: the server accepts a token
    // once, and a failed attempt may have reached it.
    let tokens = world.presented_oidc_tokens();
    assert_eq!(tokens.len(), 3);
    assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2], "fresh token per attempt");
    assert_eq!(world.issuer.actions_token_hits(), 3);
    // An explicit `audience` input: no discovery request.
    assert!(world.proxy.seen_at("GET", "/v1/audience").is_empty());

    // A server without revocation (404): the post step warns, the job passes.
    world.proxy.inject(Fault { path: "/oauth/revoke", status: 404, body: "", retry_after: None, times: None });
    let post = job.step(Phase::Post, &with, &main.state).await;
    assert_eq!(post.code, Some(0), "{}", post.log());
    let warning = annotation(&post.stdout, "::warning title=writ could not revoke the token::")
        .unwrap_or_else(|| panic!("a warning\n{}", post.log()));
    assert!(warning.contains("no revocation endpoint") && warning.contains("expires at"), "{warning}");
    assert_eq!(world.proxy.seen_at("POST", "/oauth/revoke").len(), 1, "a 404 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_is_tried_once_and_fails_the_step() {
    let world = World::start().await;
    world.proxy.inject(Fault {
        path: "/v1/exchange",
        status: 403,
        body: "Forbidden by policy",
        retry_after: None,
        times: None,
    });
    let job = Job::new(Some(&world.issuer));
    let with = [("server", world.proxy.url.as_str()), ("org", "acme-prod")];
    let main = job.step(Phase::Main, &with, &BTreeMap::new()).await;
    assert_eq!(main.code, Some(1), "{}", main.log());
    assert_eq!(world.proxy.seen_at("POST", "/v1/exchange").len(), 1, "a 4xx is never retried");
    let error = annotation(&main.stdout, "::error title=writ denied the exchange::").expect("error annotation");
    assert_eq!(error, "HTTP 403: Forbidden by policy");
    assert!(main.outputs.is_empty() && main.state.is_empty(), "no token anywhere: {:?}", main.outputs);

    // Nothing to revoke: the post step succeeds without calling the server.
    let post = job.step(Phase::Post, &with, &main.state).await;
    assert_eq!(post.code, Some(0), "{}", post.log());
    assert!(post.stdout.contains("no token to revoke"), "{}", post.log());
    assert!(world.proxy.seen_at("POST", "/oauth/revoke").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_shows_the_servers_explanation_as_an_error_annotation() {
    let world = World::start().await;
    // A contributor's pull request job: not main, no protected environment.
    world.issuer.set_actions_claims(Some(
        world.issuer.github_claims("x", "acme/web", now()).pull_request(7, "feature").build(),
    ));
    let mut job = Job::new(Some(&world.issuer));
    job.event("pull_request", json!({"pull_request": {"number": 7}}));
    let with = [("server", world.proxy.url.as_str()), ("org", "acme-prod"), ("permissions", "deploy")];
    let main = job.step(Phase::Main, &with, &BTreeMap::new()).await;
    assert_eq!(main.code, Some(1), "{}", main.log());
    assert_eq!(world.proxy.seen_at("POST", "/v1/exchange").len(), 1, "a denial is never retried");

    let error = annotation(&main.stdout, "::error title=writ denied the exchange::").expect("error annotation");
    let lines: Vec<&str> = error.lines().collect();
    assert!(lines[0].starts_with("invalid_grant (HTTP 400): "), "{error}");
    assert!(lines.contains(&"rule \"deploy-web\" did not match:"), "{error}");
    assert!(
        lines.iter().any(|l| l.starts_with("  - ") && l.contains("`ref`") && l.contains("refs/pull/7/merge")),
        "the failed condition is named: {error}"
    );
    assert!(lines.iter().any(|l| l.starts_with("request id: ")), "{error}");
    // One line on the runner's log: the explanation's newlines are escaped.
    assert_eq!(main.stdout.lines().filter(|l| l.starts_with("::error")).count(), 1);
    assert!(main.outputs.is_empty());
    assert!(main.summary.contains("### writ denied a token for org acme-prod"), "{}", main.summary);
    assert!(main.summary.contains("refs/pull/7/merge"), "{}", main.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_oidc_token_the_action_names_the_likely_cause_and_the_fix() {
    // No issuer: the runner did not set ACTIONS_ID_TOKEN_REQUEST_*. The
    // server URL is never contacted; a dead port makes sure of that.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let with = [("server", dead.as_str()), ("org", "acme-prod")];
    let title = "::error title=writ cannot get an OIDC token::";

    let job = Job::new(None);
    let run = job.step(Phase::Main, &with, &BTreeMap::new()).await;
    assert_eq!(run.code, Some(1), "{}", run.log());
    let message = annotation(&run.stdout, title).expect("fix-it annotation");
    assert!(message.contains("permissions:\n    id-token: write"), "{message}");
    assert!(run.stdout.starts_with(title), "the first thing printed: {}", run.log());

    let mut fork = Job::new(None);
    fork.event(
        "pull_request",
        json!({"pull_request": {"head": {"repo": {"full_name": "mallory/web", "fork": true}},
                                "base": {"repo": {"full_name": "acme/web"}}}}),
    );
    let message = annotation(&fork.step(Phase::Main, &with, &BTreeMap::new()).await.stdout, title).expect("fork");
    assert!(message.contains("pull request from the fork mallory/web"), "{message}");
    assert!(!message.contains("id-token: write"), "{message}");

    let mut dependabot = Job::new(None);
    dependabot.set("GITHUB_ACTOR", "dependabot[bot]");
    dependabot.event("pull_request", json!({"pull_request": {"head": {"repo": {"full_name": "acme/web"}}}}));
    let message = annotation(&dependabot.step(Phase::Main, &with, &BTreeMap::new()).await.stdout, title).expect("bot");
    assert!(message.contains("triggered by Dependabot"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ci_systems_exchange_a_token_from_an_env_var_a_file_or_stdin() {
    let world = World::start().await;
    let issuer = &world.issuer;
    let mint =
        || issuer.mint(&issuer.github_claims(&world.server.url, "acme/web", now()).environment("production").build());
    let exchange = |args: &[&str], env: Option<(&str, String)>, stdin: Option<String>| {
        let mut command = Command::new(writ_action_bin());
        command.env_clear().arg("exchange").args(["--server", &world.proxy.url, "--org", "acme-prod"]).args(args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let input = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            let mut input = input;
            if let Some(text) = stdin {
                std::io::Write::write_all(&mut input, text.as_bytes()).expect("write stdin");
            }
        });
        async move {
            let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("join").expect("wait");
            writer.join().expect("stdin writer");
            out
        }
    };

    // GitLab CI style: the ID token in a variable; the token alone on stdout.
    let out = exchange(
        &["--oidc-token-env", "WRIT_ID_TOKEN", "--permissions", "logs:read"],
        Some(("WRIT_ID_TOKEN", mint())),
        None,
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let token = stdout.strip_suffix('\n').expect("one line");
    assert_eq!(unverified_payload(token)["scope"], "logs:read");

    // From stdin, with the whole answer as JSON.
    let out = exchange(&["--json"], None, Some(format!("{}\n", mint()))).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["org"], "acme-prod");
    assert_eq!(answer["rule"], "deploy-web");
    assert_eq!(answer["permissions"], json!(["deploy", "logs:read"]));

    // From a file; a denial goes to stderr with the explanation, exit 1.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, issuer.mint(&issuer.github_claims(&world.server.url, "acme/web", now()).build()))
        .expect("write");
    let out = exchange(&["--oidc-token-file", file.to_str().expect("utf8 path")], None, None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no token on stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writ denied the exchange") && stderr.contains("environment"), "{stderr}");
}

/// A release as the launcher finds it: `action/checksums.txt` next to a copy
/// of the launcher, and the asset served at
/// `$GITHUB_SERVER_URL/<repo>/releases/download/<tag>/<asset>`.
struct Release {
    root: tempfile::TempDir,
    server_url: String,
    downloads: Arc<Mutex<usize>>,
}

impl Release {
    async fn publish(asset_bytes: Vec<u8>) -> Release {
        let root = tempfile::tempdir().expect("action root");
        let launcher = root.path().join("action/launcher");
        std::fs::create_dir_all(&launcher).expect("mkdir");
        for script in ["launcher.js", "main.js", "post.js"] {
            std::fs::copy(repo_root().join("action/launcher").join(script), launcher.join(script))
                .expect("copy launcher");
        }
        let downloads = Arc::new(Mutex::new(0usize));
        let counter = downloads.clone();
        let path = format!("/acme/writ/releases/download/v9.9.9/{}", release_asset_name());
        let app = axum::Router::new().route(
            &path,
            axum::routing::get(move || {
                let counter = counter.clone();
                let bytes = asset_bytes.clone();
                async move {
                    *counter.lock().expect("counter") += 1;
                    bytes
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Release { root, server_url, downloads }
    }

    fn commit_checksums(&self, sum: Option<&str>) {
        let mut text = "# test release\nrelease v9.9.9\nrepository acme/writ\n".to_owned();
        if let Some(sum) = sum {
            text.push_str(&format!("{sum}  {}\n", release_asset_name()));
        }
        std::fs::write(self.root.path().join("action/checksums.txt"), text).expect("checksums");
    }

    /// Runs the copied launcher's main step without WRIT_ACTION_BIN, in a
    /// job without an OIDC token (so a binary that runs prints its fix-it
    /// message and makes no network call).
    async fn run_main(&self) -> std::process::Output {
        let job = Job::new(None);
        let mut command = Command::new("node");
        command.arg(self.root.path().join("action/launcher/main.js")).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        for (name, value) in job.env.iter().filter(|(k, _)| k != "WRIT_ACTION_BIN") {
            command.env(name, value);
        }
        command
            .env("GITHUB_SERVER_URL", &self.server_url)
            .env("RUNNER_TOOL_CACHE", job.dir.path().join("tool-cache"))
            .env("INPUT_SERVER", "https://writ.example.com")
            .env("INPUT_ORG", "acme-prod");
        tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("run node")
    }
}

fn release_asset_name() -> String {
    let os = match runner_os() {
        "macOS" => "macos",
        "Windows" => "windows",
        _ => "linux",
    };
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "x64" };
    format!("writ-action-{os}-{arch}{}", if os == "windows" { ".exe" } else { "" })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launcher_runs_a_release_binary_only_when_its_committed_checksum_matches() {
    if !node_available() {
        eprintln!("node is not installed: the launcher's download path is not exercised");
        return;
    }
    let binary = std::fs::read(writ_action_bin()).expect("read writ-action");
    let fix_it = "::error title=writ cannot get an OIDC token::";
    let refused = "::error title=writ could not start::";

    // The committed sum matches: downloaded once, verified, run.
    let release = Release::publish(binary.clone()).await;
    release.commit_checksums(Some(&sha256_hex(&binary)));
    let out = release.run_main().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(fix_it), "the downloaded binary ran: {stdout}");
    assert_eq!(*release.downloads.lock().expect("count"), 1);

    // A different binary behind the same name: refused, never run.
    let tampered = Release::publish([binary.as_slice(), b"tampered"].concat()).await;
    tampered.commit_checksums(Some(&sha256_hex(&binary)));
    let out = tampered.run_main().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    let message = annotation(&stdout, refused).unwrap_or_else(|| panic!("refusal expected: {stdout}"));
    assert!(message.contains("Refusing to run it"), "{message}");
    assert!(!stdout.contains(fix_it), "the tampered binary did not run: {stdout}");

    // No committed sum: nothing is downloaded (the launcher would build from
    // source; this copy has no sources, so that fails).
    let unsummed = Release::publish(binary).await;
    unsummed.commit_checksums(None);
    let out = unsummed.run_main().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("no committed checksum"), "{stdout}");
    assert!(annotation(&stdout, refused).is_some(), "{stdout}");
    assert_eq!(*unsummed.downloads.lock().expect("count"), 0, "no unverified download");
}
