//! `writ-demo-platform`: runs the demo platform API next to a writ server.
//!
//! ```text
//! cargo run -p writ-cli -- serve --dev          # writ on 127.0.0.1:8080
//! cargo run -p writ-demo-platform -- --writ http://127.0.0.1:8080 \
//!     --listen 127.0.0.1:8090 --audience https://api.platform.example
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use writ_demo_platform::{AppState, DEMO_SEED, Platform, Seed, router};
use writ_verify::{Verifier, VerifierConfig};

/// How many times start-up tries to reach writ (one second apart), so the
/// demo can start together with `writ serve --dev`.
const DISCOVERY_ATTEMPTS: u32 = 10;

/// A demo platform API whose endpoints accept writ tokens.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The writ server's URL, exactly its public_url (the `iss` of its
    /// tokens).
    #[arg(long, env = "WRIT_URL", default_value = "http://127.0.0.1:8080")]
    writ: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// The `aud` writ puts in tokens for this platform (`[tokens] audience`).
    #[arg(long, default_value = "https://api.platform.example")]
    audience: String,
    /// A JSON file of orgs, apps and machines (default: the built-in demo:
    /// acme-prod, acme-staging, globex, initech).
    #[arg(long)]
    seed: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    tokio::runtime::Runtime::new().context("starting the Tokio runtime")?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let seed_text = match &args.seed {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => DEMO_SEED.to_owned(),
    };
    let seed: Seed =
        serde_json::from_str(&seed_text).context("the seed is not {\"orgs\": {name: {apps, machines}}}")?;
    let verifier = discover(&args).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; is another demo platform running?", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    print_banner(&addr.to_string(), &args, &seed);
    let state = AppState { verifier, platform: Arc::new(Platform::from_seed(&seed)) };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving HTTP")
}

async fn discover(args: &Args) -> anyhow::Result<Verifier> {
    let mut attempt = 1;
    loop {
        match Verifier::discover(&args.writ, VerifierConfig::new(&args.audience)).await {
            Ok(verifier) => return Ok(verifier),
            Err(e) if attempt < DISCOVERY_ATTEMPTS => {
                tracing::info!("writ at {} is not answering yet ({e}); retrying", args.writ);
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot reach writ at {}; is `writ serve --dev` running there?", args.writ)
                });
            }
        }
    }
}

fn print_banner(addr: &str, args: &Args, seed: &Seed) {
    let orgs: Vec<&str> = seed.orgs.keys().map(String::as_str).collect();
    println!(
        r#"
demo platform is up at http://{addr}   (Ctrl-C stops it)
  trusts writ tokens from {writ} for audience {aud}
  orgs: {orgs}

  POST /orgs/{{org}}/apps/{{app}}/deploy      needs deploy        on the app
  GET  /orgs/{{org}}/apps/{{app}}/logs        needs logs:read     on the app
  GET  /orgs/{{org}}/metrics                needs metrics:read  org-wide
  POST /orgs/{{org}}/machines/{{id}}/exec     needs machines:exec on the machine

  e.g. curl -s -X POST http://{addr}/orgs/acme-prod/apps/web/deploy -H "authorization: Bearer $WRIT_TOKEN"
"#,
        writ = args.writ,
        aud = args.audience,
        orgs = orgs.join(", "),
    );
}
