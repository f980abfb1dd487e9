//! The `writ-action` binary as a process: usage, the fix-it check, and the post step's never-fail rule, without any server.
//!
//! The full flow against a real server, through `action.yml` and the
//! launcher, is in the workspace's `tests/tests/action.rs`.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// The binary, with an empty environment so the host's (maybe a real
/// runner's) variables cannot leak in.
fn writ_action() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_writ-action"));
    command.env_clear();
    command
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A loopback URL where nothing listens.
fn dead_server() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    format!("http://127.0.0.1:{port}")
}

#[test]
fn help_and_usage_errors() {
    let out = writ_action().arg("--help").output().expect("run");
    assert!(out.status.success());
    assert!(text(&out).0.contains("writ-action exchange --server URL --org ORG"));

    let out = writ_action().args(["exchange", "--org", "o"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--server is required"), "{}", text(&out).1);
}

#[test]
fn main_without_id_token_permission_says_how_to_fix_it_before_any_network_call() {
    let out = writ_action()
        .arg("main")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_EVENT_NAME", "push")
        .env("INPUT_SERVER", dead_server())
        .env("INPUT_ORG", "acme-prod")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("::error title=writ cannot get an OIDC token::"), "{stdout}");
    assert!(stdout.contains("id-token: write"), "{stdout}");
    assert!(!stdout.contains("retrying"), "no network call was made: {stdout}");
}

#[test]
fn exchange_refuses_a_token_that_is_not_a_jwt() {
    let mut child = writ_action()
        .args(["exchange", "--server", &dead_server(), "--org", "o"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"not-a-jwt\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("not a JWT"), "{}", text(&out).1);
}

#[test]
fn exchange_gives_up_at_the_deadline_when_the_server_is_unreachable() {
    let out = writ_action()
        .args(["exchange", "--server", &dead_server(), "--org", "o", "--oidc-token-env", "T", "--deadline", "1s"])
        .env("T", "a.b.c")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = text(&out);
    assert!(stdout.is_empty(), "nothing on stdout but a token: {stdout}");
    assert!(stderr.contains("retrying"), "network errors are retried: {stderr}");
    assert!(stderr.contains("deadline"), "{stderr}");
}

#[test]
fn exchange_refuses_plain_http_to_a_remote_host() {
    let out = writ_action()
        .args(["exchange", "--server", "http://writ.example.com", "--org", "o", "--oidc-token-env", "T"])
        .env("T", "a.b.c")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("plain HTTP"), "{}", text(&out).1);
}

#[test]
fn post_without_a_token_does_nothing_and_succeeds() {
    let out = writ_action().arg("post").env("GITHUB_ACTIONS", "true").output().expect("run");
    assert!(out.status.success());
    assert!(text(&out).0.contains("no token to revoke"));
}

#[test]
fn post_turns_a_failed_revocation_into_a_warning_not_a_failure() {
    let out = writ_action()
        .arg("post")
        .env("GITHUB_ACTIONS", "true")
        .env("STATE_token", "a.b.c")
        .env("STATE_server", dead_server())
        .env("WRIT_ACTION_DEADLINE", "1s")
        .output()
        .expect("run");
    assert!(out.status.success(), "a failed revocation never fails the job");
    let (stdout, _) = text(&out);
    let mask = stdout.find("::add-mask::a.b.c").expect("token masked");
    let warning = stdout.find("::warning title=writ could not revoke the token::").expect("warning");
    assert!(mask < warning, "{stdout}");
}
