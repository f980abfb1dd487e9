//! `writ-action exchange` and `writ-action revoke`: the same calls as the GitHub Action, for any CI system, with the token given on stdin, in a file or in an environment variable.

use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use crate::api::{self, Exchanged, Revoked, Wanted};
use crate::args::{ExchangeArgs, RevokeArgs, TokenSource};
use crate::client::{self, Client};
use crate::wire::{Secret, render_error};

/// Notes go to stderr: stdout carries only the token (or the JSON).
fn note(text: &str) {
    eprintln!("{text}");
}

/// Reads a token from its source, trimmed; refuses an empty one.
fn read_token(source: &TokenSource, what: &str) -> anyhow::Result<Secret> {
    let text = match source {
        TokenSource::File(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading the {what} from {}", path.display()))?
        }
        TokenSource::Env(name) => std::env::var(name).with_context(|| format!("reading the {what} from ${name}"))?,
        TokenSource::Stdin => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("no {what}: pipe it on stdin, or pass it with a file or environment variable flag (see --help)");
            }
            let mut text = String::new();
            stdin
                .lock()
                .take(64 * 1024)
                .read_to_string(&mut text)
                .with_context(|| format!("reading the {what} from stdin"))?;
            text
        }
    };
    let token = text.trim();
    if token.is_empty() {
        bail!("the {what} is empty");
    }
    if token.split('.').count() != 3 {
        bail!("the {what} is not a JWT (three base64url parts separated by dots)");
    }
    Ok(Secret::new(token.to_owned()))
}

/// Runs `exchange`: prints the writ token (or the JSON answer) on stdout.
pub fn exchange(args: &ExchangeArgs) -> anyhow::Result<ExitCode> {
    let server = api::server_base(&args.server)?;
    let token = read_token(&args.token, "OIDC token")?;
    let deadline = match args.deadline {
        Some(d) => d,
        None => client::deadline_from_env(client::DEFAULT_DEADLINE)?,
    };
    let client = Client::new(deadline, note);
    let wanted = Wanted {
        org: &args.org,
        permissions: &args.permissions,
        apps: &args.apps,
        machines: &args.machines,
        ttl: args.ttl.as_deref(),
    };
    match api::exchange(&client, &server, &wanted, |_| Ok(token.clone()))? {
        Exchanged::Granted(granted, raw) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&raw).context("printing the answer")?);
            } else {
                println!("{}", granted.token.expose());
            }
            Ok(ExitCode::SUCCESS)
        }
        Exchanged::Refused { status, body, attempts } => {
            eprintln!("writ denied the exchange:");
            for line in render_error(status, &body) {
                eprintln!("  {line}");
            }
            if attempts > 1 {
                eprintln!(
                    "  (an earlier attempt failed in transit and may have reached the server; an OIDC token is \
                     accepted once, so if the server says it was already used, get a fresh one)"
                );
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs `revoke`.
pub fn revoke(args: &RevokeArgs) -> anyhow::Result<ExitCode> {
    let server = api::server_base(&args.server)?;
    let token = read_token(&args.token, "writ token")?;
    let deadline = match args.deadline {
        Some(d) => d,
        None => client::deadline_from_env(client::DEFAULT_DEADLINE)?,
    };
    let client = Client::new(deadline, note);
    match api::revoke(&client, &server, &token)? {
        Revoked::Done => {
            note("revoked");
            Ok(ExitCode::SUCCESS)
        }
        Revoked::Unsupported(status) => {
            eprintln!("{server} has no revocation endpoint (HTTP {status} from POST /oauth/revoke)");
            Ok(ExitCode::FAILURE)
        }
        Revoked::Refused(status, text) => {
            eprintln!("HTTP {status} from POST /oauth/revoke: {text}");
            Ok(ExitCode::FAILURE)
        }
    }
}
