//! The GitHub Action: the main step (check for an OIDC token, fetch it, exchange it, mask, outputs, summary) and the post step (revoke).
//!
//! Order matters in the main step: the fix-it check comes before any
//! network call, and `::add-mask::` for a token is printed before anything
//! else that could contain it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

use crate::api::{self, Exchanged, Revoked, Wanted};
use crate::args::split_list;
use crate::client::{self, Client};
use crate::fixit::{self, RunFacts};
use crate::oidc;
use crate::wire::{Granted, Secret, render_error};
use crate::workflow::{self, markdown_text};

/// Title of the annotation for a refused exchange.
pub const DENIED_TITLE: &str = "writ denied the exchange";
/// Title of the annotation for any other failure.
const FAILED_TITLE: &str = "writ failed";
/// Title of the post step's warning.
const REVOKE_TITLE: &str = "writ could not revoke the token";
/// The post step's deadline: shorter than the main step's, since the job is
/// over and the token expires by itself anyway.
const POST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// A notes printer for the runner log.
fn note(text: &str) {
    println!("{text}");
}

/// An action input: `INPUT_<NAME>` with the name upper-cased and spaces as
/// `_` (GitHub keeps hyphens: `export-env` is `INPUT_EXPORT-ENV`), trimmed;
/// empty means absent.
fn input(name: &str) -> Option<String> {
    let key = format!("INPUT_{}", name.replace(' ', "_").to_ascii_uppercase());
    std::env::var(key).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn required_input(name: &str) -> anyhow::Result<String> {
    input(name).with_context(|| format!("the input `{name}` is required: add `{name}:` under `with:` in the step"))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The inputs of the main step.
#[derive(Debug)]
struct Inputs {
    server: String,
    org: String,
    permissions: Vec<String>,
    apps: Vec<String>,
    ttl: Option<String>,
    audience: Option<String>,
    export_env: Option<String>,
}

impl Inputs {
    fn read() -> anyhow::Result<Inputs> {
        let server = api::server_base(&required_input("server")?)?;
        let export_env = input("export-env");
        if let Some(name) = &export_env
            && !workflow::valid_env_name(name)
        {
            bail!(
                "export-env {name:?} is not a usable variable name: letters, digits and _, not starting with a \
                 digit, and not PATH or a GITHUB_/RUNNER_/ACTIONS_ name"
            );
        }
        Ok(Inputs {
            server,
            org: required_input("org")?,
            permissions: input("permissions").map(|p| split_list(&p)).unwrap_or_default(),
            apps: input("apps").map(|a| split_list(&a)).unwrap_or_default(),
            ttl: input("ttl"),
            audience: input("audience"),
            export_env,
        })
    }
}

/// Runs the main step; failures become an `::error::` and exit status 1.
pub fn main_step() -> ExitCode {
    match run_main() {
        Ok(code) => code,
        Err(error) => {
            workflow::error(FAILED_TITLE, &format!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run_main() -> anyhow::Result<ExitCode> {
    // First: can this job get an OIDC token at all? Before reading inputs
    // or touching the network, so the fix is the first thing the author sees.
    let facts = RunFacts::from_env();
    let cause = fixit::diagnose(&facts);
    if cause != fixit::Cause::None {
        workflow::error(fixit::TITLE, &fixit::message(&cause));
        return Ok(ExitCode::FAILURE);
    }
    let request_url = std::env::var(fixit::REQUEST_URL_ENV).context("reading ACTIONS_ID_TOKEN_REQUEST_URL")?;
    let request_token = Secret::new(std::env::var(fixit::REQUEST_TOKEN_ENV).context("reading the request token")?);
    let inputs = Inputs::read()?;
    let output_file =
        env_path("GITHUB_OUTPUT").context("GITHUB_OUTPUT is not set: this runner is too old for file commands")?;
    let debug = std::env::var("RUNNER_DEBUG").is_ok_and(|v| v == "1");

    let client = Client::new(client::deadline_from_env(client::DEFAULT_DEADLINE)?, note);
    let audience = match &inputs.audience {
        Some(audience) => audience.clone(),
        None => api::discover_audience(&client, &inputs.server).unwrap_or_else(|| inputs.server.clone()),
    };
    note(&format!("writ: requesting an OIDC token for audience {audience}"));
    let fetch = || -> anyhow::Result<Secret> {
        let token = oidc::fetch_actions_token(&client, &request_url, &request_token, &audience)?;
        // The OIDC token is a credential too (until the server spends it).
        workflow::add_mask(token.expose());
        Ok(token)
    };
    let first = fetch()?;
    let claims = oidc::unverified_claims(first.expose()).unwrap_or_default();
    if debug {
        print_claims(&claims);
    }
    let caller = Caller::from_claims(&claims);
    note(&format!("writ: exchanging the OIDC token of {} for a token of org {}", caller.describe(), inputs.org));

    let mut first = Some(first);
    let wanted = Wanted {
        org: &inputs.org,
        permissions: &inputs.permissions,
        apps: &inputs.apps,
        machines: &[],
        ttl: inputs.ttl.as_deref(),
    };
    let outcome = api::exchange(&client, &inputs.server, &wanted, |_| match first.take() {
        Some(token) => Ok(token),
        None => fetch(),
    })?;
    match outcome {
        Exchanged::Granted(granted, _) => {
            // Before anything else that could contain the token.
            workflow::add_mask(granted.token.expose());
            deliver(&inputs, &granted, &caller, &output_file)?;
            Ok(ExitCode::SUCCESS)
        }
        Exchanged::Refused { status, body, .. } => {
            let lines = render_error(status, &body);
            workflow::error(DENIED_TITLE, &lines.join("\n"));
            if let Some(path) = env_path("GITHUB_STEP_SUMMARY") {
                workflow::append(&path, &denial_summary(&inputs, &caller, &lines))?;
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Prints the OIDC token's claims as debug lines (never the token).
fn print_claims(claims: &Map<String, Value>) {
    workflow::debug("OIDC token claims (decoded for display, not verified here; the server verifies them):");
    for (name, value) in claims {
        workflow::debug(&format!("  {name} = {value}"));
    }
}

/// Who is asking, as the OIDC token says (for display only).
#[derive(Debug, Default)]
struct Caller {
    repository: Option<String>,
    git_ref: Option<String>,
    environment: Option<String>,
}

impl Caller {
    fn from_claims(claims: &Map<String, Value>) -> Caller {
        Caller {
            repository: oidc::claim_text(claims, "repository"),
            git_ref: oidc::claim_text(claims, "ref"),
            environment: oidc::claim_text(claims, "environment"),
        }
    }

    fn describe(&self) -> String {
        let repository = self.repository.as_deref().unwrap_or("this job");
        let git_ref = self.git_ref.as_deref().unwrap_or("unknown ref");
        match &self.environment {
            Some(environment) => format!("{repository} ({git_ref}, environment {environment})"),
            None => format!("{repository} ({git_ref}, no environment)"),
        }
    }

    fn summary_rows(&self) -> String {
        let or_none = |v: &Option<String>| v.as_deref().map_or_else(|| "(none)".to_owned(), markdown_text);
        format!(
            "| Repository | {} |\n| Ref | {} |\n| Environment | {} |\n",
            or_none(&self.repository),
            or_none(&self.git_ref),
            or_none(&self.environment)
        )
    }
}

/// Writes outputs, the exported variable, the state for the post step and
/// the summary.
fn deliver(inputs: &Inputs, granted: &Granted, caller: &Caller, output_file: &std::path::Path) -> anyhow::Result<()> {
    let token = granted.token.expose();
    let permissions = granted.permissions.join(",");
    let apps = granted.apps.join(",");
    // State first: if anything below fails, the post step still revokes.
    match env_path("GITHUB_STATE") {
        Some(path) => workflow::append_file_command(
            &path,
            &[("token", token), ("server", &inputs.server), ("expires-at", &granted.expires_at)],
        )?,
        None => workflow::warning(REVOKE_TITLE, "GITHUB_STATE is not set, so the post step cannot revoke the token"),
    }
    workflow::append_file_command(
        output_file,
        &[("token", token), ("expires-at", &granted.expires_at), ("permissions", &permissions), ("apps", &apps)],
    )?;
    if let Some(name) = &inputs.export_env {
        let env_file = env_path("GITHUB_ENV").context("GITHUB_ENV is not set, so export-env cannot work")?;
        workflow::append_file_command(&env_file, &[(name, token)])?;
    }
    if let Some(path) = env_path("GITHUB_STEP_SUMMARY") {
        workflow::append(&path, &grant_summary(inputs, granted, caller))?;
    }
    let apps_text =
        if granted.apps.is_empty() { "any app".to_owned() } else { format!("apps {}", granted.apps.join(", ")) };
    note(&format!(
        "writ: granted {} for org {} ({apps_text}) by rule {}; expires at {}",
        if granted.permissions.is_empty() { "no permissions".to_owned() } else { granted.permissions.join(", ") },
        granted.org,
        granted.rule,
        granted.expires_at
    ));
    Ok(())
}

/// The step summary of a grant. Never contains the token.
fn grant_summary(inputs: &Inputs, granted: &Granted, caller: &Caller) -> String {
    let list = |items: &[String], empty: &str| {
        if items.is_empty() {
            empty.to_owned()
        } else {
            items.iter().map(|i| markdown_text(i)).collect::<Vec<_>>().join(", ")
        }
    };
    let expires = match granted.expires_in {
        Some(secs) => format!("{} (in {})", markdown_text(&granted.expires_at), human_secs(secs)),
        None => markdown_text(&granted.expires_at),
    };
    let mut text = format!(
        "### writ: token for org {}\n\n| | |\n| --- | --- |\n| Org | {} |\n| Permissions | {} |\n| Apps | {} |\n",
        markdown_text(&granted.org),
        markdown_text(&granted.org),
        list(&granted.permissions, "(none)"),
        list(&granted.apps, "any (not limited)"),
    );
    if !granted.machines.is_empty() {
        text.push_str(&format!("| Machines | {} |\n", list(&granted.machines, "")));
    }
    text.push_str(&format!("| Expires | {expires} |\n| Rule | {} |\n", markdown_text(&granted.rule)));
    text.push_str(&caller.summary_rows());
    text.push_str(&format!("| Server | {} |\n\n", markdown_text(&inputs.server)));
    let env = inputs.export_env.as_deref().map(|n| format!(" and in `${n}`")).unwrap_or_default();
    text.push_str(&format!(
        "The token is in the step output `token`{env}, masked in logs; the post step revokes it when the job ends. \
         Repository, ref and environment are read from the job's OIDC token for display.\n\n"
    ));
    text
}

/// The step summary of a denial: what was asked, by whom, and why not.
fn denial_summary(inputs: &Inputs, caller: &Caller, lines: &[String]) -> String {
    let mut text = format!(
        "### writ denied a token for org {}\n\n| | |\n| --- | --- |\n| Org | {} |\n| Permissions asked | {} |\n| Apps asked | {} |\n",
        markdown_text(&inputs.org),
        markdown_text(&inputs.org),
        if inputs.permissions.is_empty() {
            "(the rule's grant)".to_owned()
        } else {
            markdown_text(&inputs.permissions.join(", "))
        },
        if inputs.apps.is_empty() { "(any)".to_owned() } else { markdown_text(&inputs.apps.join(", ")) },
    );
    text.push_str(&caller.summary_rows());
    text.push_str("\nThe server's answer:\n\n");
    for line in lines {
        // Failures under a rule ("  - …") become a nested list.
        match line.trim_start().strip_prefix("- ") {
            Some(failure) => text.push_str(&format!("  - {}\n", markdown_text(failure))),
            None => text.push_str(&format!("- {}\n", markdown_text(line.trim_start()))),
        }
    }
    text.push('\n');
    text
}

/// `600` → `10 min`, `90` → `90 s`.
fn human_secs(secs: u64) -> String {
    if secs >= 120 && secs.is_multiple_of(60) { format!("{} min", secs / 60) } else { format!("{secs} s") }
}

/// Runs the post step: revoke the main step's token. Never fails the job.
pub fn post_step() -> ExitCode {
    if let Err(error) = run_post() {
        workflow::warning(REVOKE_TITLE, &format!("{error:#}"));
    }
    ExitCode::SUCCESS
}

fn run_post() -> anyhow::Result<()> {
    let state = |name: &str| std::env::var(format!("STATE_{name}")).ok().filter(|v| !v.is_empty());
    let Some(token) = state("token").map(Secret::new) else {
        note("writ: no token to revoke (the main step did not obtain one)");
        return Ok(());
    };
    workflow::add_mask(token.expose());
    let server = match state("server") {
        Some(server) => server,
        None => api::server_base(&required_input("server")?)?,
    };
    let expires = state("expires-at").map(|e| format!("; it stays valid until it expires at {e}")).unwrap_or_default();
    let client = Client::new(client::deadline_from_env(POST_DEADLINE)?, note);
    match api::revoke(&client, &server, &token) {
        Ok(Revoked::Done) => note("writ: revoked the token"),
        Ok(Revoked::Unsupported(status)) => workflow::warning(
            REVOKE_TITLE,
            &format!("{server} has no revocation endpoint (HTTP {status} from POST /oauth/revoke){expires}"),
        ),
        Ok(Revoked::Refused(status, text)) => {
            workflow::warning(REVOKE_TITLE, &format!("HTTP {status} from POST /oauth/revoke: {text}{expires}"))
        }
        Err(error) => workflow::warning(REVOKE_TITLE, &format!("{error:#}{expires}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted() -> Granted {
        serde_json::from_value(serde_json::json!({
            "token": "SECRET-TOKEN", "token_type": "Bearer", "expires_in": 900, "expires_at": "2026-11-27T12:15:00Z",
            "org": "acme-prod", "permissions": ["deploy", "logs:read"], "apps": ["web"], "machines": [], "rule": "deploy-web"
        }))
        .expect("grant")
    }

    fn inputs() -> Inputs {
        Inputs {
            server: "https://writ.example.com".to_owned(),
            org: "acme-prod".to_owned(),
            permissions: vec![],
            apps: vec![],
            ttl: None,
            audience: None,
            export_env: Some("PLATFORM_API_TOKEN".to_owned()),
        }
    }

    #[test]
    fn the_summary_shows_the_grant_and_the_caller_but_never_the_token() {
        let caller = Caller {
            repository: Some("acme/web".to_owned()),
            git_ref: Some("refs/heads/main".to_owned()),
            environment: Some("production".to_owned()),
        };
        let text = grant_summary(&inputs(), &granted(), &caller);
        for wanted in [
            "| Org | acme-prod |",
            "| Permissions | deploy, logs:read |",
            "| Apps | web |",
            "| Expires | 2026-11-27T12:15:00Z (in 15 min) |",
            "| Rule | deploy-web |",
            "| Repository | acme/web |",
            "| Ref | refs/heads/main |",
            "| Environment | production |",
            "`$PLATFORM_API_TOKEN`",
        ] {
            assert!(text.contains(wanted), "{wanted} in\n{text}");
        }
        assert!(!text.contains("SECRET-TOKEN"));
    }

    #[test]
    fn a_hostile_branch_name_renders_as_text_in_the_summary() {
        let caller = Caller { git_ref: Some("refs/heads/x|![p](https://e/p.png)".to_owned()), ..Caller::default() };
        let text = grant_summary(&inputs(), &granted(), &caller);
        assert!(text.contains("| Ref | refs/heads/x\\|\\!\\[p\\](https://e/p.png) |"), "{text}");
        assert!(text.contains("| Environment | (none) |"));
    }

    #[test]
    fn the_denial_summary_lists_the_reasons() {
        let lines = vec!["invalid_grant (HTTP 400): no".to_owned(), "  - claim `ref` is x".to_owned()];
        let text = denial_summary(&inputs(), &Caller::default(), &lines);
        assert!(text.contains("- invalid\\_grant (HTTP 400): no\n  - claim \\`ref\\` is x\n"), "{text}");
    }

    #[test]
    fn lifetimes_read_naturally() {
        assert_eq!(human_secs(900), "15 min");
        assert_eq!(human_secs(90), "90 s");
    }
}
