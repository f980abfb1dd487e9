//! writ: the one operator and admin binary — `writ serve`, `writ dev`,
//! `writ policy`, and the remote admin commands (`writ org`, `writ audit`,
//! `writ token`, `writ credential`, `writ completions`).

mod admin_cmd;
mod dev;
mod logging;
mod policy_cmd;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use logging::LogFormat;

/// mimalloc instead of the system allocator: the exchange allocates many
/// small short-lived objects (JSON values, claims, SQL arguments) on
/// several threads, where glibc's malloc spent about a fifth of the
/// server's CPU (docs/PERFORMANCE.md). The `system-allocator` feature
/// leaves it out, only so that valgrind's DHAT, which sees the system
/// allocator's calls, can count the exchange's allocations
/// (`bench/scripts/allocations-per-exchange`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code: success (and, for `policy test`, "granted").
pub const EXIT_OK: u8 = 0;
/// Exit code: an error (unreadable file, unreachable server, server
/// failure, anything not below).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: denied or refused — `policy test` denied, `policy check`
/// errors, a policy the server refused (lint errors, with file:line:column),
/// any other 400 from the server, `token inspect` of an inactive token.
/// (clap's own usage errors also exit 2.)
pub const EXIT_DENIED: u8 = 2;
/// Exit code: conflict — the policy changed since it was read (412), the
/// org is file-managed or exists already (409), no precondition (428).
pub const EXIT_CONFLICT: u8 = 3;
/// Exit code: not authenticated or not allowed (401, 403), or no credential.
pub const EXIT_AUTH: u8 = 4;
/// Exit code: not found (404): no such org, policy version or token.
pub const EXIT_NOT_FOUND: u8 = 5;

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
    /// Trust policies: check and test offline; apply, get, history, diff
    /// and test on a server.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Orgs on a server (root credential).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Read an org's audit log: every decision with its explanation.
    Audit(Box<admin_cmd::AuditArgs>),
    /// Writ tokens: revoke, inspect, narrow.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Operator credentials.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// writ's token-signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print shell completions: `writ completions bash > /etc/bash_completion.d/writ`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum OrgCommand {
    /// Create an org, optionally with its first policy.
    Create(admin_cmd::OrgCreateArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Revoke your own token (RFC 7009), or an org's tokens by jti,
    /// repository, run or rule (admin). Narrowed tokens go with them.
    Revoke(admin_cmd::RevokeArgs),
    /// Show a token's claims; with --server, whether it is active.
    Inspect(admin_cmd::InspectArgs),
    /// Exchange a writ token for a narrower one: fewer permissions, one
    /// app or machine, a shorter life. Prints the new token.
    Narrow(admin_cmd::NarrowArgs),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Start a key rotation: store a new signing key, published at once by
    /// every replica and signing after the pre-publication window (1 h).
    /// Opens the storage of the server config directly; servers pick the
    /// key up by themselves.
    Rotate {
        /// The server config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Generate an operator root credential and print the hash line for
    /// the server config.
    New,
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
    /// Evaluate a policy against a claims file or a real token and explain
    /// the decision: offline, or on the server with --org (dry run).
    Test(Box<policy_cmd::TestArgs>),
    /// Store a policy file as the org's next version (linted first; refused
    /// if the policy changed since it was read).
    Apply(admin_cmd::ApplyArgs),
    /// Print an org's current (or a past) policy.
    Get(admin_cmd::GetArgs),
    /// List an org's policy versions.
    History(admin_cmd::HistoryArgs),
    /// Show what `apply` would change: server version → file.
    Diff(admin_cmd::DiffArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            let format = args.log_format.unwrap_or(if args.dev { LogFormat::Text } else { LogFormat::Json });
            logging::init(format);
            run_async(serve(args))
        }
        Command::Dev(DevCommand::Token(args)) => run_async(dev::token(args)),
        Command::Policy(PolicyCommand::Check(args)) => policy_cmd::check(args),
        Command::Policy(PolicyCommand::Test(args)) => run_async(policy_cmd::test(*args)),
        Command::Policy(PolicyCommand::Apply(args)) => run_async(admin_cmd::apply(args)),
        Command::Policy(PolicyCommand::Get(args)) => run_async(admin_cmd::get(args)),
        Command::Policy(PolicyCommand::History(args)) => run_async(admin_cmd::history(args)),
        Command::Policy(PolicyCommand::Diff(args)) => run_async(admin_cmd::diff(args)),
        Command::Org(OrgCommand::Create(args)) => run_async(admin_cmd::org_create(args)),
        Command::Audit(args) => run_async(admin_cmd::audit(*args)),
        Command::Token(TokenCommand::Revoke(args)) => run_async(admin_cmd::revoke(args)),
        Command::Token(TokenCommand::Inspect(args)) => run_async(admin_cmd::inspect(args)),
        Command::Token(TokenCommand::Narrow(args)) => run_async(admin_cmd::narrow(args)),
        Command::Credential(CredentialCommand::New) => admin_cmd::credential_new(),
        Command::Keys(KeysCommand::Rotate { config }) => run_async(keys_rotate(config)),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "writ", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => match e.downcast_ref::<remote::Failure>() {
            Some(failure) => {
                eprintln!("error: {failure}");
                ExitCode::from(failure.code)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_ERROR)
            }
        },
    }
}

fn run_async<F: std::future::Future<Output = anyhow::Result<u8>>>(f: F) -> anyhow::Result<u8> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(f)
}

/// `writ keys rotate --config FILE`.
async fn keys_rotate(path: PathBuf) -> anyhow::Result<u8> {
    use anyhow::Context;
    use writ_server::signing::{Keyring, KeyringConfig};
    let config = writ_server::config::Config::load(&path, &|k| std::env::var(k).ok())?;
    let store = writ_server::storage::open(&config.storage_url, &config.storage)
        .await
        .with_context(|| format!("opening storage {}", writ_server::app::redact_url(&config.storage_url)))?;
    let keyring_config = KeyringConfig { max_token_lifetime: config.tokens.max_ttl, ..KeyringConfig::default() };
    let prepublication = humantime::format_duration(keyring_config.prepublication);
    let now = writ_server::app::Clock::system().now();
    let keyring = Keyring::load_or_create(store.as_ref(), keyring_config, now).await?;
    let kid = keyring.rotate(store.as_ref(), now).await?;
    println!(
        "published signing key {kid}; it signs from {prepublication} from now. Running servers pick it up by themselves \
         (PostgreSQL: at once; SQLite: within {}s).",
        writ_server::replicas::RECONCILE_INTERVAL.as_secs()
    );
    Ok(EXIT_OK)
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
