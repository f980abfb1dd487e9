//! `writ-action`: the CI-side client of writ. Under GitHub Actions it is the action's logic (`main`, `post`); elsewhere `exchange` and `revoke` take the OIDC or writ token explicitly.
//!
//! Code map: [`args`] parses the command line; [`github`] is the action's
//! two steps; [`cli`] the explicit subcommands; [`api`] the calls to the
//! writ server over [`client`] (retries, deadline); [`oidc`] the job's OIDC
//! token; [`fixit`] explains a missing one; [`workflow`] speaks the
//! runner's command and file protocols; [`wire`] holds the JSON shapes.

mod api;
mod args;
mod cli;
mod client;
mod fixit;
mod github;
mod oidc;
mod wire;
mod workflow;

use std::process::ExitCode;

use args::Command;

fn main() -> ExitCode {
    let argv: Vec<String> = match std::env::args_os().skip(1).map(|a| a.into_string()).collect() {
        Ok(argv) => argv,
        Err(bad) => {
            eprintln!("writ-action: argument {bad:?} is not UTF-8");
            return ExitCode::from(2);
        }
    };
    let under_actions = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    let command = match args::parse(&argv, under_actions) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("writ-action: {error}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Main => return github::main_step(),
        Command::Post => return github::post_step(),
        Command::Help => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("writ-action {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Exchange(args) => cli::exchange(&args),
        Command::Revoke(args) => cli::revoke(&args),
    };
    result.unwrap_or_else(|error| {
        eprintln!("writ-action: {error:#}");
        ExitCode::FAILURE
    })
}
