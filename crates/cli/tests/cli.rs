//! The `writ` binary's argument handling: helpful errors, documented exit codes.

use std::process::Command;

fn writ() -> Command {
    Command::new(env!("CARGO_BIN_EXE_writ"))
}

#[test]
fn help_lists_the_commands() {
    let out = writ().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "dev", "policy"] {
        assert!(text.contains(cmd), "{text}");
    }
}

#[test]
fn serve_without_config_says_what_to_pass() {
    let out = writ().arg("serve").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn serve_with_a_broken_config_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("writ.toml");
    std::fs::write(&path, "[server]\npublic_url = \"http://writ.example.com\"\n[[issuers]]\nname = \"github\"\nkind = \"github\"\nurl = \"https://token.actions.githubusercontent.com\"\n").expect("write");
    let out = writ().args(["serve", "--config"]).arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("server.public_url") && text.contains("https"), "{text}");
}

#[test]
fn dev_token_without_a_dev_server_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        writ().args(["dev", "token", "--repository", "acme/web", "--data-dir"]).arg(dir.path()).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve --dev"));
}
