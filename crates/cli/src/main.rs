//! writ: the one operator and admin binary — `writ serve`, `writ dev`,
//! `writ policy`.

mod dev;
mod policy_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit code: success (and, for `policy test`, "granted").
pub const EXIT_OK: u8 = 0;
/// Exit code: an error (bad input, unreadable file, server failure).
pub const EXIT_ERROR: u8 = 1;
/// Exit code of `policy test` when the decision is a denial, and of
/// `policy check` when the policy has errors.
pub const EXIT_DENIED: u8 = 2;

/// writ trades a CI job's OIDC identity for a short-lived, narrowly scoped
/// deploy token under the org's trust policy.
#[derive(Debug, Parser)]
#[command(name = "writ", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the exchange server.
    Serve(ServeArgs),
    /// Development helpers for `writ serve --dev`.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Check and test trust policies offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The server config file (TOML).
    #[arg(long, short, required_unless_present = "dev", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Development mode: SQLite under --data-dir, a built-in fake GitHub
    /// issuer on loopback, sample policies, and printed next steps.
    #[arg(long)]
    dev: bool,
    /// Where dev mode keeps its database and policies.
    #[arg(long, default_value = ".writ-dev", requires = "dev")]
    data_dir: PathBuf,
    /// Address to listen on (dev mode; with --config use server.listen).
    #[arg(long, default_value = "127.0.0.1:8080", requires = "dev")]
    listen: String,
    /// Log format: `json` (default with --config) or `text` (default with --dev).
    #[arg(long)]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Mint an OIDC token from the dev server's fake GitHub issuer, as a
    /// GitHub Actions job would get it.
    Token(dev::TokenArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Parse and lint policy files; errors carry file, line and column.
    Check(policy_cmd::CheckArgs),
    /// Evaluate a policy against a claims file or a real token, offline,
    /// and explain the decision.
    Test(Box<policy_cmd::TestArgs>),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WRIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.compact().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            let format = args.log_format.unwrap_or(if args.dev { LogFormat::Text } else { LogFormat::Json });
            init_tracing(format);
            run_async(serve(args))
        }
        Command::Dev(DevCommand::Token(args)) => run_async(dev::token(args)),
        Command::Policy(PolicyCommand::Check(args)) => policy_cmd::check(args),
        Command::Policy(PolicyCommand::Test(args)) => run_async(policy_cmd::test(*args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run_async<F: std::future::Future<Output = anyhow::Result<u8>>>(f: F) -> anyhow::Result<u8> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(f)
}

async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    use anyhow::Context;
    if args.dev {
        return dev::serve(&args.data_dir, &args.listen).await;
    }
    let path = args.config.context("--config FILE is required (or use --dev)")?;
    let config = writ_server::config::Config::load(&path, &|k| std::env::var(k).ok())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let state = writ_server::app::AppState::build(config, writ_server::app::Clock::system()).await?;
    tracing::info!(addr = %listener.local_addr()?, "writ listening on {}", listener.local_addr()?);
    writ_server::app::serve(state, listener).await?;
    Ok(EXIT_OK)
}
