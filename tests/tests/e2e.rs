//! End-to-end: the real `writ` binary over real sockets on loopback —
//! `writ serve --config` with a fake GitHub issuer, the `serve --dev`
//! walk-through as printed, and the offline `policy check` / `policy test`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use writ_testkit::{FakeIssuer, IssuerShape};

mod common;
use common::{Server, free_port, now, repo_root, writ_bin};

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
"#,
        issuer.url()
    );
    let path = dir.join("writ.toml");
    std::fs::write(&path, config).expect("config");
    Server::start(&path, format!("http://127.0.0.1:{port}")).await
}

async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

#[tokio::test]
async fn serve_with_config_grants_denies_and_refuses_replay_over_http() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_with_config(&issuer, dir.path()).await;
    let now = now();

    let claims = issuer.github_claims(&server.url, "acme/web", now).environment("production").build();
    let token = issuer.mint(&claims);
    let (status, body) =
        post_json(&format!("{}/v1/exchange", server.url), &json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["permissions"], json!(["deploy", "logs:read"]));

    let (status, body) =
        post_json(&format!("{}/v1/exchange", server.url), &json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, 400);
    assert!(body["error_description"].as_str().expect("text").contains("already"), "{body:#}");

    let pr = issuer.github_claims(&server.url, "acme/web", now).pull_request(3, "feature").build();
    let (status, body) =
        post_json(&format!("{}/v1/exchange", server.url), &json!({"token": issuer.mint(&pr), "org": "acme-prod"}))
            .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].as_str().expect("text").contains("refs/pull/3/merge"), "{body:#}");

    // The database is a real file and the audit survives.
    assert!(dir.path().join("writ.db").exists());
}

#[tokio::test]
async fn a_policy_file_edit_takes_effect_and_a_bad_edit_changes_nothing() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_with_config(&issuer, dir.path()).await;
    let exchange = |claims: Value| {
        let url = format!("{}/v1/exchange", server.url);
        let token = issuer.mint(&claims);
        async move { post_json(&url, &json!({"token": token, "org": "acme-prod"})).await }
    };
    let staging_job = || issuer.github_claims(&server.url, "acme/web", now()).environment("staging").build();
    assert_eq!(exchange(staging_job()).await.0, 400);

    // A broken edit: the previous policy keeps serving.
    std::fs::write(dir.path().join("policies/acme-prod.toml"), "org = \"acme-prod\"\n[[rule]]\nnme = 1\n")
        .expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let prod_job = issuer.github_claims(&server.url, "acme/web", now()).environment("production").build();
    assert_eq!(exchange(prod_job).await.0, 200, "a bad edit must not take the org down");

    // A good edit that admits staging arrives within the poll interval.
    std::fs::write(
        dir.path().join("policies/acme-prod.toml"),
        POLICY.replace("\"production\"", "[\"production\", \"staging\"]"),
    )
    .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = exchange(staging_job()).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the edited policy was not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn dev_mode_walkthrough_as_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("dev");
    let port = free_port();
    let mut child = Command::new(writ_bin())
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .env_remove("CARGO_MANIFEST_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev server");
    let stdout = child.stdout.take().expect("stdout");
    let url = format!("http://127.0.0.1:{port}");
    let server = Server { child, url: url.clone() };
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("jwks.json"))
            .collect::<Vec<_>>()
    });
    let printed = lines.join().expect("reader thread");
    assert!(printed.iter().any(|l| l.contains(&url)), "prints its address: {printed:#?}");

    // Run the printed `dev token` line (with our data dir) and the exchange.
    let token_line = printed.iter().find(|l| l.contains("dev token") && l.contains("production")).expect("step 1 line");
    assert!(token_line.contains("--repository acme/web"));
    let mint = |args: &[&str]| {
        let out = Command::new(writ_bin())
            .args(["dev", "token", "--data-dir"])
            .arg(&data)
            .args(args)
            .output()
            .expect("dev token");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8").trim().to_owned()
    };
    let token = mint(&["--repository", "acme/web", "--ref", "refs/heads/main", "--environment", "production"]);
    let (status, body) = post_json(
        &format!("{}/v1/exchange", server.url),
        &json!({"token": token, "org": "acme-prod", "permissions": ["deploy"]}),
    )
    .await;
    assert_eq!(status, 200, "granted as printed: {body:#}");

    let token = mint(&["--repository", "acme/web", "--ref", "refs/pull/7/merge"]);
    let (status, body) =
        post_json(&format!("{}/v1/exchange", server.url), &json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, 400, "denied as printed: {body:#}");
    assert!(body["explanation"].is_array(), "acme is named by the policy, so the reason is shown: {body:#}");
}

#[test]
fn policy_check_reports_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "org = \"x\"\n\n[[rule]]\nname = \"r\"\nissuer = \"github\"\nrepository = \"acme/web\"\npermissions = [\"deploi\"]\n")
        .expect("write");
    let out = Command::new(writ_bin()).args(["policy", "check"]).arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}:7:", bad.display())), "{text}");
    assert!(text.contains("deploy"), "suggests the nearest permission: {text}");

    let examples = repo_root().join("examples");
    let out = Command::new(writ_bin())
        .args(["policy", "check", "--config"])
        .arg(examples.join("writ.toml"))
        .arg(examples.join("policies/acme-prod.toml"))
        .arg(examples.join("policies/acme-staging.toml"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn policy_test_explains_the_readme_examples() {
    let examples = repo_root().join("examples");
    let run = |claims: &str| {
        Command::new(writ_bin())
            .args(["policy", "test", "--config"])
            .arg(examples.join("writ.toml"))
            .arg(examples.join("policies/acme-prod.toml"))
            .arg("--claims")
            .arg(examples.join("claims").join(claims))
            .output()
            .expect("run")
    };
    let granted = run("deploy-main-production.json");
    assert_eq!(granted.status.code(), Some(0), "{}", String::from_utf8_lossy(&granted.stdout));
    assert!(String::from_utf8_lossy(&granted.stdout).contains("GRANTED"));
    let denied = run("pr.json");
    assert_eq!(denied.status.code(), Some(2));
    let text = String::from_utf8_lossy(&denied.stdout);
    assert!(text.contains("DENIED") && text.contains("refs/pull/7/merge"), "{text}");
}

#[test]
fn policy_test_verifies_a_real_github_token_with_pinned_keys() {
    let fixtures = repo_root().join("crates/core/tests/fixtures/github-oidc");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "org = \"beacon\"\n[[rule]]\nname = \"beacon\"\nissuer = \"github\"\nrepository = \"sigstore-conformance/extremely-dangerous-public-oidc-beacon\"\nref = \"refs/heads/main\"\npermissions = [\"deploy\"]\n",
    )
    .expect("write");
    let token = fixtures.join("tokens/gh_2026-06-13_sigstore-beacon_kid38826b.jwt");
    let jwks = fixtures.join("jwks/github_jwks_2025_cratesio.json");
    let run = |now: Option<&str>| {
        let mut cmd = Command::new(writ_bin());
        cmd.args(["policy", "test"]).arg(&policy).arg("--token").arg(format!("@{}", token.display()));
        cmd.arg("--jwks").arg(&jwks).args(["--audience", "sigstore"]);
        if let Some(n) = now {
            cmd.args(["--now", n]);
        }
        cmd.output().expect("run")
    };
    let pinned = run(Some("1781377300"));
    assert_eq!(
        pinned.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&pinned.stdout),
        String::from_utf8_lossy(&pinned.stderr)
    );
    let today = run(None);
    assert_eq!(today.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&today.stderr).contains("expired"), "{}", String::from_utf8_lossy(&today.stderr));
}
