//! `writ policy check` and `writ policy test`: the server's own parser,
//! linter and evaluator, offline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use writ_core::claims::VerifiedClaims;
use writ_core::issuer::IssuerKind;
use writ_core::jwt::{IssuerSpec, VerifyConfig};
use writ_core::policy::{self, Decision, Pins, Request, SourceFormat, TtlLimits};
use writ_server::config::Config;
use writ_server::policies::{Catalogue, compile, render_diagnostics};

use crate::{EXIT_DENIED, EXIT_OK};

/// Arguments shared by check and test: where the catalogue comes from.
#[derive(Debug, clap::Args)]
pub struct CatalogueArgs {
    /// The server config whose issuers and permission catalogue the policy
    /// is checked against. Without it, a built-in catalogue is used:
    /// issuers `github` and `gitlab`, permissions deploy, logs:read,
    /// metrics:read and writ's admin permissions.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// `writ policy check` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files (TOML, or JSON by extension).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

/// `writ policy test` arguments.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The policy file. With --org, a candidate evaluated on the server
    /// instead of the org's current policy.
    #[arg(required_unless_present = "org")]
    file: Option<PathBuf>,
    /// Evaluate on the server (dry run: real pins, nothing issued or
    /// consumed) against this org's current policy, or against FILE.
    #[arg(long)]
    org: Option<String>,
    /// The writ server, for --org.
    #[arg(long, env = "WRIT_SERVER", requires = "org")]
    server: Option<String>,
    /// The admin credential for --org (`--token` here is the OIDC token
    /// to test).
    #[arg(long, env = "WRIT_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A JSON file of claims, as the issuer would sign them.
    #[arg(long, conflicts_with = "token", required_unless_present = "token")]
    claims: Option<PathBuf>,
    /// A real OIDC token (or @FILE); its signature is verified with the
    /// issuer's keys (discovery) or --jwks.
    #[arg(long)]
    token: Option<String>,
    /// Verify --token with this JWKS file instead of the issuer's discovery.
    #[arg(long, requires = "token")]
    jwks: Option<PathBuf>,
    /// The issuer name the claims or token belong to (default: the only
    /// issuer of that `iss`, else `github`).
    #[arg(long)]
    issuer: Option<String>,
    /// The `aud` the token must carry (default: the config's server.audience).
    #[arg(long)]
    audience: Option<String>,
    /// Evaluate at this time (Unix seconds) instead of now; useful for
    /// recorded tokens that have since expired.
    #[arg(long)]
    now: Option<i64>,
    /// Requested permissions (comma-separated).
    #[arg(long, value_delimiter = ',')]
    permissions: Vec<String>,
    /// Requested apps (comma-separated).
    #[arg(long, value_delimiter = ',')]
    apps: Vec<String>,
    /// Requested machines (comma-separated).
    #[arg(long, value_delimiter = ',')]
    machines: Vec<String>,
    /// Requested lifetime, e.g. 10m.
    #[arg(long)]
    ttl: Option<humantime::Duration>,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    catalogue: CatalogueArgs,
}

struct Setup {
    catalogue: Catalogue,
    config: Option<Config>,
}

fn setup(args: &CatalogueArgs) -> anyhow::Result<Setup> {
    match &args.config {
        Some(path) => {
            let config = Config::load(path, &|k| std::env::var(k).ok())?;
            let catalogue = Catalogue {
                issuers: config.issuers.iter().map(|i| (i.name.clone(), i.kind)).collect(),
                permissions: config.permissions.keys().cloned().collect(),
            };
            Ok(Setup { catalogue, config: Some(config) })
        }
        None => {
            let mut permissions: Vec<String> =
                ["deploy", "logs:read", "metrics:read"].iter().map(|s| s.to_string()).collect();
            permissions.extend(writ_server::config::ADMIN_PERMISSIONS.iter().map(|(n, _)| n.to_string()));
            Ok(Setup {
                catalogue: Catalogue {
                    issuers: vec![("github".into(), IssuerKind::GitHub), ("gitlab".into(), IssuerKind::GitLab)],
                    permissions,
                },
                config: None,
            })
        }
    }
}

fn format_of(path: &Path) -> SourceFormat {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        SourceFormat::Json
    } else {
        SourceFormat::Toml
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Checks every file; prints diagnostics; exit 2 when any has errors.
pub fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let setup = setup(&args.catalogue)?;
    if args.catalogue.config.is_none() {
        eprintln!(
            "note: checking against the built-in catalogue; pass --config to use your server's issuers and permissions"
        );
    }
    let mut failed = false;
    for file in &args.files {
        let source = read(file)?;
        let origin = file.display().to_string();
        match compile(&source, format_of(file), &setup.catalogue, &origin) {
            Ok((policy, warnings)) => {
                if !warnings.is_empty() {
                    println!("{}", render_diagnostics(&origin, &warnings));
                }
                println!("{origin}: ok (org {}, {} rule(s))", policy.org(), policy.rules().len());
            }
            Err(rejected) => {
                failed = true;
                println!("{rejected}");
            }
        }
    }
    Ok(if failed { EXIT_DENIED } else { EXIT_OK })
}

/// Evaluates a policy offline and explains the decision; exit 0 granted,
/// 2 denied.
pub async fn test(args: TestArgs) -> anyhow::Result<u8> {
    if let Some(org) = &args.org {
        let remote = crate::remote::Remote::new(&crate::remote::RemoteArgs {
            server: args.server.clone(),
            token: args.admin_token.clone(),
        })?;
        let dry_run = crate::admin_cmd::DryRun {
            org,
            candidate: args.file.as_deref(),
            claims: args.claims.as_deref(),
            token: args.token.as_deref(),
            issuer: args.issuer.as_deref(),
            permissions: &args.permissions,
            apps: &args.apps,
            machines: &args.machines,
            ttl: args.ttl.map(|t| t.to_string()),
            json: args.json,
        };
        return crate::admin_cmd::dry_run(&remote, dry_run).await;
    }
    let file = args.file.clone().context("give the policy FILE to test offline, or --org ORG to test on the server")?;
    let setup = setup(&args.catalogue)?;
    let source = read(&file)?;
    let origin = file.display().to_string();
    let (policy, warnings) = compile(&source, format_of(&file), &setup.catalogue, &origin)?;
    if !warnings.is_empty() {
        eprintln!("{}", render_diagnostics(&origin, &warnings));
    }
    let now = match args.now {
        Some(n) => n,
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64,
    };
    let claims = match (&args.claims, &args.token) {
        (Some(path), _) => claims_from_file(path, &args, &setup)?,
        (None, Some(token)) => claims_from_token(token, &args, &setup, now).await?,
        (None, None) => bail!("give --claims FILE or --token JWT"),
    };
    let request = Request {
        permissions: args.permissions.clone(),
        apps: args.apps.clone(),
        machines: args.machines.clone(),
        ttl: args.ttl.map(Duration::from),
    };
    let limits = match &setup.config {
        Some(c) => TtlLimits { default: c.tokens.default_ttl, max: c.tokens.max_ttl },
        None => TtlLimits { default: writ_server::config::DEFAULT_TTL, max: writ_server::config::DEFAULT_MAX_TTL },
    };
    let decision = policy::evaluate(&policy, &claims, &request, &Pins::default(), limits);
    print_decision(&decision, policy.org(), args.json)?;
    Ok(match decision {
        Decision::Granted(_) => EXIT_OK,
        Decision::Denied(_) => EXIT_DENIED,
    })
}

fn issuer_kind(name: &str, setup: &Setup) -> anyhow::Result<IssuerKind> {
    setup.catalogue.issuers.iter().find(|(n, _)| n == name).map(|(_, k)| *k).with_context(|| {
        let names: Vec<&str> = setup.catalogue.issuers.iter().map(|(n, _)| n.as_str()).collect();
        format!("unknown issuer {name:?}; known: {}", names.join(", "))
    })
}

fn claims_from_file(path: &Path, args: &TestArgs, setup: &Setup) -> anyhow::Result<VerifiedClaims> {
    let value: serde_json::Value =
        serde_json::from_str(&read(path)?).with_context(|| format!("{} is not JSON", path.display()))?;
    let serde_json::Value::Object(map) = value else {
        bail!("{} must hold a JSON object of claims", path.display());
    };
    let name = args.issuer.clone().unwrap_or_else(|| "github".to_owned());
    let kind = issuer_kind(&name, setup)?;
    Ok(VerifiedClaims::from_trusted_claims_file(&name, kind, map))
}

async fn claims_from_token(token: &str, args: &TestArgs, setup: &Setup, now: i64) -> anyhow::Result<VerifiedClaims> {
    let token = match token.strip_prefix('@') {
        Some(path) => read(Path::new(path))?.trim().to_owned(),
        None => token.trim().to_owned(),
    };
    let peek = writ_core::jwt::peek_unverified(&token, 64 * 1024)?;
    let unverified_iss = peek.unverified_iss.clone();
    let configured = setup.config.as_ref().and_then(|c| c.issuers.iter().find(|i| i.url == unverified_iss));
    let name = match (&args.issuer, configured) {
        (Some(n), _) => n.clone(),
        (None, Some(i)) => i.name.clone(),
        (None, None) => "github".to_owned(),
    };
    let kind = issuer_kind(&name, setup)?;
    let url = match configured {
        Some(i) => i.url.clone(),
        None => unverified_iss.clone(),
    };
    let algorithms = configured.map(|i| i.algorithms.clone()).unwrap_or_else(|| vec![jsonwebtoken::Algorithm::RS256]);
    let keys: jsonwebtoken::jwk::JwkSet = match &args.jwks {
        Some(path) => {
            serde_json::from_str(&read(path)?).with_context(|| format!("{} is not a JWKS", path.display()))?
        }
        None => fetch_jwks(&url).await?,
    };
    let audience = match (&args.audience, &setup.config) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.audience.clone(),
        (None, None) => bail!("give --audience (the aud your server requires of OIDC tokens) or --config"),
    };
    let spec = IssuerSpec { name, kind, url, algorithms };
    let cfg = VerifyConfig { audience, leeway_secs: 60, max_age_secs: i64::MAX / 4, max_token_bytes: 64 * 1024 };
    writ_core::jwt::verify_oidc(&token, &spec, &keys, &cfg, now).map_err(|e| {
        anyhow::anyhow!(
            "the token does not verify: {e}{}",
            if args.now.is_none() { " (for a recorded token, pin the time with --now UNIX_SECONDS)" } else { "" }
        )
    })
}

async fn fetch_jwks(issuer: &str) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let discovery: serde_json::Value = client
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| {
            format!("cannot fetch the discovery document of {issuer}; pass --jwks FILE to verify offline")
        })?
        .json()
        .await?;
    if discovery.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
        bail!("the discovery document of {issuer} names another issuer; refusing its keys");
    }
    let jwks_uri = discovery.get("jwks_uri").and_then(|v| v.as_str()).context("discovery document has no jwks_uri")?;
    Ok(client.get(jwks_uri).send().await?.error_for_status()?.json().await?)
}

fn print_decision(decision: &Decision, org: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(decision)?);
        return Ok(());
    }
    match decision {
        Decision::Granted(g) => {
            println!("GRANTED for org {org} by rule {:?}", g.rule);
            println!("  permissions: {}", g.permissions.join(" "));
            println!("  apps:        {}", if g.apps.is_empty() { "(all)".to_owned() } else { g.apps.join(", ") });
            println!(
                "  machines:    {}",
                if g.machines.is_empty() { "(all)".to_owned() } else { g.machines.join(", ") }
            );
            println!("  ttl:         {}", humantime::format_duration(g.ttl));
            for p in &g.new_pins {
                println!("  would pin:   {p:?}");
            }
            for o in g.explanation.iter().filter(|o| !o.matched) {
                println!("  (earlier rule {:?} did not match: {})", o.rule, failures(o));
            }
        }
        Decision::Denied(d) => {
            println!("DENIED ({}) for org {org}", d.kind.oauth_error());
            for o in &d.explanation {
                println!("  rule {:?}: {}", o.rule, failures(o));
            }
        }
    }
    Ok(())
}

fn failures(o: &policy::RuleOutcome) -> String {
    o.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; ")
}
