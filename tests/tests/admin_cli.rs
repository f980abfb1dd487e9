//! End-to-end: the `writ` admin commands against a real `writ serve` over
//! loopback — the admin walk-through of docs/admin.md (create an org with a
//! typo then fixed, dry-run, exchange, audit, narrow, revoke, inspect),
//! cross-org attempts, a conflicting apply, and the documented exit codes.

use std::process::{Command, Output};

use serde_json::{Value, json};
use writ_server::auth::CredentialHash;
mod common;
use common::{free_port, writ_bin};
use writ_testkit::{FakeIssuer, IssuerShape};

const ROOT: &str = "writ_root_TEST-ONLY-e2e-00000000000000000000000000000000";
const CLIENT_SECRET: &str = "test-only-platform-secret";

/// A running `writ serve` child with its working directory.
struct Server {
    /// Keeps the child alive (killed on drop).
    _process: common::Server,
    url: String,
    dir: tempfile::TempDir,
}

async fn serve(issuer: &FakeIssuer) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
[tokens]
audience = "https://api.platform.example"
[storage]
url = "sqlite://writ.db"
[permissions]
deploy = "Deploy"
"logs:read" = "Read logs"
"machines:exec" = "Run commands on a machine"
[admin]
root_credential_hash = "{root}"
[[introspection.clients]]
id = "platform-api"
secret_hash = "{client}"
[[issuers]]
name = "github"
kind = "github"
url = "{issuer}"
"#,
        root = CredentialHash::of(ROOT),
        client = CredentialHash::of(CLIENT_SECRET),
        issuer = issuer.url(),
    );
    let path = dir.path().join("writ.toml");
    std::fs::write(&path, config).expect("config");
    let url = format!("http://127.0.0.1:{port}");
    let inner = common::Server::start(&path, url.clone()).await;
    Server { _process: inner, url, dir }
}

impl Server {
    /// Runs `writ ARGS` with WRIT_SERVER set and the given WRIT_TOKEN.
    fn writ(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = Command::new(writ_bin());
        cmd.args(args).env("WRIT_SERVER", &self.url).env_remove("WRIT_TOKEN").current_dir(self.dir.path());
        if let Some(t) = token {
            cmd.env("WRIT_TOKEN", t);
        }
        Run::from(cmd.output().expect("run writ"))
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
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
    #[track_caller]
    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

const POLICY: &str = r#"org = "client-a"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "client-a/web"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read", "machines:exec"]

[[rule]]
name = "infra-admin"
issuer = "github"
repository = "client-a/infra"
ref = "refs/heads/main"
permissions = ["writ:policy:read", "writ:policy:write", "writ:audit:read", "writ:tokens:revoke"]
"#;

async fn exchange(server: &Server, issuer: &FakeIssuer, repository: &str, org: &str, permissions: &[&str]) -> Value {
    let claims = issuer.github_claims(&server.url, repository, now()).environment("production").build();
    let body = json!({"token": issuer.mint(&claims), "org": org, "permissions": permissions});
    let r =
        reqwest::Client::new().post(format!("{}/v1/exchange", server.url)).json(&body).send().await.expect("exchange");
    r.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_walkthrough_with_the_cli() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
    let server = serve(&issuer).await;

    // 1. Create an org with a typo in its first policy: refused with file:line:column.
    let typo = server.file("client-a.toml", &POLICY.replace("\"machines:exec\"]", "\"machine:exec\"]"));
    let run = server.writ(Some(ROOT), &["org", "create", "client-a", "--policy", &typo]);
    run.expect_code(2);
    assert!(run.stderr.contains(&format!("{typo}:9:")), "{}", run.stderr);
    assert!(run.stderr.contains("machines:exec"), "the nearest permission is suggested: {}", run.stderr);

    // 2. Fixed: created, version 1.
    let good = server.file("client-a.toml", POLICY);
    let run = server.writ(Some(ROOT), &["org", "create", "client-a", "--policy", &good]);
    run.expect_code(0);
    assert!(run.stdout.contains("created org client-a") && run.stdout.contains("policy version 1"), "{}", run.stdout);
    let run = server.writ(Some(ROOT), &["org", "create", "client-a"]);
    run.expect_code(3);

    // 3. The org's infra repository gets an admin token by OIDC exchange (GitOps).
    let admin = exchange(&server, &issuer, "client-a/infra", "client-a", &[]).await;
    let admin = admin["token"].as_str().expect("admin token").to_owned();
    let run = server.writ(Some(&admin), &["policy", "get", "client-a"]);
    run.expect_code(0);
    assert_eq!(run.stdout, POLICY);
    assert!(run.stderr.contains("version 1"), "{}", run.stderr);

    // 4. Dry run on the server: a PR job is denied and told why; the deploy job is granted.
    let pr = issuer.github_claims(&server.url, "client-a/web", now()).pull_request(9, "feature").build();
    let pr_file = server.file("pr.json", &pr.to_string());
    let run = server.writ(Some(&admin), &["policy", "test", "--org", "client-a", "--claims", &pr_file]);
    run.expect_code(2);
    assert!(run.stdout.contains("DENIED") && run.stdout.contains("refs/pull/9/merge"), "{}", run.stdout);
    let job = issuer.github_claims(&server.url, "client-a/web", now()).environment("production").build();
    let token = issuer.mint(&job);
    let run = server
        .writ(Some(&admin), &["policy", "test", "--org", "client-a", "--token", &token, "--permissions", "deploy"]);
    run.expect_code(0);
    assert!(run.stdout.contains("GRANTED") && run.stdout.contains("nothing issued"), "{}", run.stdout);

    // 5. Change the policy: diff, apply, history; a stale apply conflicts.
    let v2 = server
        .file("v2.toml", &POLICY.replace("environment = \"production\"", "environment = [\"production\", \"ops\"]"));
    let run = server.writ(Some(&admin), &["policy", "diff", &v2]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("-environment = \"production\"")
            && run.stdout.contains("+environment = [\"production\", \"ops\"]"),
        "{}",
        run.stdout
    );
    server.writ(Some(&admin), &["policy", "apply", &v2]).expect_code(0);
    let stale = server.writ(Some(&admin), &["policy", "apply", "--if-version", "1", &good]);
    stale.expect_code(3);
    assert!(stale.stderr.contains("version 2"), "{}", stale.stderr);
    let run = server.writ(Some(&admin), &["policy", "history", "client-a"]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("VERSION") && run.stdout.lines().count() == 3, "{}", run.stdout);
    assert!(run.stdout.contains("client-a/infra"), "the author is recorded: {}", run.stdout);
    server.writ(Some(&admin), &["policy", "diff", &v2]).expect_code(0);

    // 6. Exchange the deploy job's token (the dry run consumed nothing) and read the audit.
    let granted = exchange(&server, &issuer, "client-a/web", "client-a", &[]).await;
    let deploy = granted["token"].as_str().expect("deploy token").to_owned();
    let run = server.writ(Some(&admin), &["audit", "client-a"]);
    run.expect_code(0);
    assert!(
        run.stdout.starts_with("TIME") && run.stdout.contains("deploy-web") && run.stdout.contains("client-a/web"),
        "{}",
        run.stdout
    );
    let run = server.writ(Some(&admin), &["audit", "client-a", "--json", "--outcome", "granted"]);
    let page: Value = serde_json::from_str(&run.stdout).expect("json page");
    assert_eq!(page["records"].as_array().map(Vec::len), Some(2), "{}", run.stdout);
    let run = server.writ(Some(&admin), &["audit", "client-a", "--csv", "--all", "--limit", "1"]);
    run.expect_code(0);
    assert_eq!(run.stdout.lines().filter(|l| l.starts_with("time,")).count(), 1, "one header: {}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 3, "header + 2 records over 2 pages: {}", run.stdout);

    // 7. Narrow to one machine for a short while; inspect it.
    let run = server.writ(
        None,
        &["token", "narrow", &deploy, "--permissions", "machines:exec", "--machines", "vm-7", "--ttl", "5m"],
    );
    run.expect_code(0);
    let vm_token = run.stdout.trim().to_owned();
    let run = server.writ(Some(&admin), &["token", "inspect", &vm_token]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("active:      yes") && run.stdout.contains("vm-7") && run.stdout.contains("narrowed from"),
        "{}",
        run.stdout
    );
    let wider = server.writ(None, &["token", "narrow", &vm_token, "--permissions", "deploy"]);
    wider.expect_code(2);
    assert!(wider.stderr.contains("invalid_scope"), "{}", wider.stderr);

    // 8. Revoke the deploy token as an admin: the narrowed one goes with it.
    let jti = jwt_claims(&deploy)["jti"].as_str().expect("jti").to_owned();
    let run =
        server.writ(Some(&admin), &["token", "revoke", "--org", "client-a", "--jti", &jti, "--reason", "walk-through"]);
    run.expect_code(0);
    assert!(run.stdout.contains("revoked 2 token(s)"), "{}", run.stdout);
    let run = server.writ(Some(&admin), &["token", "inspect", &vm_token]);
    run.expect_code(2);
    assert!(run.stdout.contains("active:      NO"), "{}", run.stdout);
    let feed: Value =
        reqwest::get(format!("{}/v1/revocations", server.url)).await.expect("feed").json().await.expect("json");
    assert_eq!(feed["revocations"].as_array().map(Vec::len), Some(2), "{feed:#}");

    // 9. A holder revokes its own token (RFC 7009); introspection says inactive.
    let other = exchange(&server, &issuer, "client-a/web", "client-a", &["logs:read"]).await;
    let other = other["token"].as_str().expect("token").to_owned();
    server.writ(None, &["token", "revoke", &other]).expect_code(0);
    let r = reqwest::Client::new()
        .post(format!("{}/oauth/introspect", server.url))
        .basic_auth("platform-api", Some(CLIENT_SECRET))
        .form(&[("token", other.as_str())])
        .send()
        .await
        .expect("introspect");
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"active": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_admin_cannot_touch_another_org_and_exit_codes_say_why() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
    let server = serve(&issuer).await;
    let a = server.file("a.toml", POLICY);
    server.writ(Some(ROOT), &["org", "create", "client-a", "--policy", &a]).expect_code(0);
    let b = server.file("b.toml", &POLICY.replace("client-a", "client-b"));
    server.writ(Some(ROOT), &["org", "create", "client-b", "--policy", &b]).expect_code(0);
    let admin_a = exchange(&server, &issuer, "client-a/infra", "client-a", &[]).await;
    let admin_a = admin_a["token"].as_str().expect("token").to_owned();
    let deploy_b = exchange(&server, &issuer, "client-b/web", "client-b", &[]).await;
    let deploy_b = deploy_b["token"].as_str().expect("token").to_owned();
    let jti_b = jwt_claims(&deploy_b)["jti"].as_str().expect("jti").to_owned();

    let b2 = server.file("b2.toml", &POLICY.replace("client-a", "client-b").replace("\"ops\"", "\"x\""));
    for args in [
        vec!["policy", "get", "client-b"],
        vec!["policy", "history", "client-b"],
        vec!["policy", "apply", "--if-version", "1", &b2],
        vec!["audit", "client-b"],
        vec!["token", "revoke", "--org", "client-b", "--jti", &jti_b],
        vec!["token", "revoke", "--org", "client-b", "--repository", "client-b/web"],
        vec!["org", "create", "client-c"],
    ] {
        let run = server.writ(Some(&admin_a), &args);
        run.expect_code(4);
        assert!(run.stderr.contains("insufficient_scope"), "{args:?}: {}", run.stderr);
    }
    let run = server.writ(Some(&admin_a), &["token", "inspect", &deploy_b]);
    run.expect_code(2);
    assert!(run.stdout.contains("active:      NO"), "another org's admin learns nothing: {}", run.stdout);
    let run = server.writ(Some(ROOT), &["token", "inspect", &deploy_b]);
    run.expect_code(0);
    assert!(run.stdout.contains("active:      yes"), "client-b's token is untouched: {}", run.stdout);

    // Exit codes: 1 no server, 4 no credential, 5 not found.
    let run = Run::from(
        Command::new(writ_bin())
            .args(["audit", "client-a"])
            .env_remove("WRIT_SERVER")
            .env_remove("WRIT_TOKEN")
            .output()
            .expect("run"),
    );
    run.expect_code(1);
    assert!(run.stderr.contains("WRIT_SERVER"), "{}", run.stderr);
    let run = server.writ(None, &["audit", "client-a"]);
    run.expect_code(4);
    assert!(run.stderr.contains("WRIT_TOKEN"), "{}", run.stderr);
    server.writ(Some(ROOT), &["policy", "get", "no-such-org"]).expect_code(5);
    server.writ(Some("writ_root_wrong"), &["audit", "client-a"]).expect_code(4);
}

#[test]
fn completions_and_credentials() {
    for shell in ["bash", "zsh", "fish"] {
        let run = Run::from(Command::new(writ_bin()).args(["completions", shell]).output().expect("run"));
        run.expect_code(0);
        assert!(run.stdout.contains("writ") && run.stdout.contains("narrow"), "{shell}: {}", run.stdout);
    }
    let run = Run::from(Command::new(writ_bin()).args(["credential", "new"]).output().expect("run"));
    run.expect_code(0);
    let credential = run.stdout.trim();
    assert!(credential.starts_with("writ_root_"), "{}", run.stdout);
    let hash = CredentialHash::of(credential).to_string();
    assert!(run.stderr.contains(&format!("root_credential_hash = \"{hash}\"")), "{}", run.stderr);
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("b64"))
        .expect("json")
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}
