//! The remote admin commands: `writ org`, `writ policy apply|get|history|
//! diff`, the server side of `writ policy test`, `writ audit`, `writ token`
//! and `writ credential`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use writ_core::policy::SourceFormat;

use crate::remote::{
    Failure, Remote, RemoteArgs, encode_query, print_table, read_secret, render_explanation, rfc3339, with_origin,
};
use crate::{EXIT_DENIED, EXIT_OK};

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

/// The org a policy file names, read with the server's own parser; syntax
/// errors are reported here with file, line and column (exit 2).
fn org_of_file(path: &Path, source: &str) -> anyhow::Result<String> {
    match writ_core::policy::parse(source, format_of(path)) {
        Ok(p) => Ok(p.org().to_owned()),
        Err(e) => {
            let lines: Vec<String> = e
                .diagnostics
                .iter()
                .map(|d| format!("{}:{}:{}: error: {}", path.display(), d.line, d.column, d.message))
                .collect();
            Err(Failure { code: EXIT_DENIED, message: format!("the policy does not parse:\n{}", lines.join("\n")) }
                .into())
        }
    }
}

fn print_warnings(file: &str, warnings: &Value) {
    for w in warnings.as_array().into_iter().flatten() {
        eprintln!(
            "{file}:{}:{}: warning: {}{}",
            w["line"],
            w["column"],
            w["message"].as_str().unwrap_or_default(),
            w["help"].as_str().map(|h| format!(" ({h})")).unwrap_or_default()
        );
    }
}

// ---- writ org ----------------------------------------------------------------

/// `writ org create` arguments.
#[derive(Debug, clap::Args)]
pub struct OrgCreateArgs {
    /// The new org's name.
    org: String,
    /// Its first policy (TOML, or JSON by extension); linted first.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Creates an org (root credential only).
pub async fn org_create(args: OrgCreateArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    remote.require_credential()?;
    let mut body = json!({"org": args.org});
    if let Some(path) = &args.policy {
        body["policy"] = json!(read(path)?);
        body["format"] = json!(if format_of(path) == SourceFormat::Json { "json" } else { "toml" });
    }
    let reply = remote.post_json("/v1/orgs", &body).await;
    let reply = match (&args.policy, reply) {
        (Some(path), Err(e)) => return Err(with_origin(e, &path.display().to_string())),
        (_, r) => r?,
    };
    let out = reply.json()?;
    println!("created org {}", args.org);
    if let Some(v) = out["policy_version"].as_i64() {
        println!("policy version {v}");
    }
    if let Some(path) = &args.policy {
        print_warnings(&path.display().to_string(), &out["warnings"]);
    }
    Ok(EXIT_OK)
}

// ---- writ policy apply | get | history | diff ---------------------------------

/// `writ policy apply` arguments.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The policy file (TOML, or JSON by extension).
    file: PathBuf,
    /// The org (default: the file's `org`).
    #[arg(long)]
    org: Option<String>,
    /// Apply only if the server is still at this version (the one you
    /// reviewed with `writ policy diff`); default: the version read just
    /// before writing.
    #[arg(long, value_name = "VERSION")]
    if_version: Option<i64>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Stores a new version of an org's policy, with optimistic concurrency.
pub async fn apply(args: ApplyArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    remote.require_credential()?;
    let source = read(&args.file)?;
    let org = match args.org {
        Some(o) => o,
        None => org_of_file(&args.file, &source)?,
    };
    let precondition = match args.if_version {
        Some(0) => ("if-none-match", "*".to_owned()),
        Some(v) => ("if-match", format!("\"v{v}\"")),
        None => match remote.get(&format!("/v1/orgs/{}/policy", encode_query(&org))).await {
            Ok(current) => ("if-match", current.etag.unwrap_or_else(|| "*".to_owned())),
            Err(e) if e.downcast_ref::<Failure>().is_some_and(|f| f.code == crate::EXIT_NOT_FOUND) => {
                ("if-none-match", "*".to_owned())
            }
            Err(e) => return Err(e),
        },
    };
    let content_type =
        if format_of(&args.file) == SourceFormat::Json { "application/json" } else { "application/toml" };
    let file = args.file.display().to_string();
    let reply = remote
        .send(
            reqwest::Method::PUT,
            &format!("/v1/orgs/{}/policy", encode_query(&org)),
            &[(precondition.0, precondition.1)],
            Some((content_type, source)),
        )
        .await
        .map_err(|e| with_origin(e, &file))?;
    let out = reply.json()?;
    print_warnings(&file, &out["warnings"]);
    println!("applied {file} to org {org}: version {}", out["version"]);
    Ok(EXIT_OK)
}

/// `writ policy get` arguments.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The org.
    org: String,
    /// A past version instead of the current one.
    #[arg(long)]
    version: Option<i64>,
    /// Print the version's metadata and text as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

async fn fetch_policy(remote: &Remote, org: &str, version: Option<i64>) -> anyhow::Result<Value> {
    let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
    remote.get(&format!("/v1/orgs/{}/policy{query}", encode_query(org))).await?.json()
}

/// Prints an org's policy text (stdout) and its version (stderr).
pub async fn get(args: GetArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    remote.require_credential()?;
    let policy = fetch_policy(&remote, &args.org, args.version).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&policy)?);
    } else {
        eprintln!(
            "# org {}, version {}, {} by {}",
            args.org,
            policy["version"],
            policy["created_at"].as_str().unwrap_or_default(),
            policy["author"].as_str().unwrap_or("-")
        );
        print!("{}", policy["source"].as_str().unwrap_or_default());
    }
    Ok(EXIT_OK)
}

/// `writ policy history` arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The org.
    org: String,
    /// Print JSON (with every version's text).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Lists an org's policy versions, newest first.
pub async fn history(args: HistoryArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    remote.require_credential()?;
    let out = remote.get(&format!("/v1/orgs/{}/policy/history", encode_query(&args.org))).await?.json()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = out["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            vec![
                v["version"].to_string(),
                v["created_at"].as_str().unwrap_or_default().to_owned(),
                v["managed_by"].as_str().unwrap_or_default().to_owned(),
                v["format"].as_str().unwrap_or_default().to_owned(),
                v["author"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    print_table(&["VERSION", "CREATED", "MANAGED", "FORMAT", "AUTHOR"], &rows);
    Ok(EXIT_OK)
}

/// `writ policy diff` arguments.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The local policy file.
    file: PathBuf,
    /// The org (default: the file's `org`).
    #[arg(long)]
    org: Option<String>,
    /// Compare with this server version instead of the current one.
    #[arg(long)]
    version: Option<i64>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Shows what `writ policy apply FILE` would change, as a unified diff
/// from the server's version to the file.
pub async fn diff(args: DiffArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    remote.require_credential()?;
    let local = read(&args.file)?;
    let org = match args.org {
        Some(o) => o,
        None => org_of_file(&args.file, &local)?,
    };
    let (server_text, label) = match fetch_policy(&remote, &org, args.version).await {
        Ok(p) => (p["source"].as_str().unwrap_or_default().to_owned(), format!("{org} v{} (server)", p["version"])),
        Err(e)
            if args.version.is_none()
                && e.downcast_ref::<Failure>().is_some_and(|f| f.code == crate::EXIT_NOT_FOUND) =>
        {
            (String::new(), format!("{org} (no policy on the server)"))
        }
        Err(e) => return Err(e),
    };
    if server_text == local {
        println!("no changes: {} is {label}", args.file.display());
        return Ok(EXIT_OK);
    }
    let diff = similar::TextDiff::from_lines(&server_text, &local);
    print!("{}", diff.unified_diff().context_radius(3).header(&label, &args.file.display().to_string()));
    Ok(EXIT_OK)
}

// ---- the server side of writ policy test -----------------------------------------

/// What the remote dry run needs from `writ policy test`.
pub struct DryRun<'a> {
    /// The org.
    pub org: &'a str,
    /// A candidate policy file, evaluated instead of the current policy.
    pub candidate: Option<&'a Path>,
    /// A claims file.
    pub claims: Option<&'a Path>,
    /// Or a real OIDC token.
    pub token: Option<&'a str>,
    /// The issuer name.
    pub issuer: Option<&'a str>,
    /// The request.
    pub permissions: &'a [String],
    /// Requested apps.
    pub apps: &'a [String],
    /// Requested machines.
    pub machines: &'a [String],
    /// Requested lifetime.
    pub ttl: Option<String>,
    /// Print JSON.
    pub json: bool,
}

/// Evaluates on the server (current policy and recorded pins), nothing
/// issued or consumed; exit 0 granted, 2 denied.
pub async fn dry_run(remote: &Remote, d: DryRun<'_>) -> anyhow::Result<u8> {
    remote.require_credential()?;
    let mut body = json!({
        "request": {"permissions": d.permissions, "apps": d.apps, "machines": d.machines, "ttl": d.ttl},
    });
    match (d.claims, d.token) {
        (Some(path), _) => {
            body["claims"] =
                serde_json::from_str(&read(path)?).with_context(|| format!("{} is not JSON", path.display()))?;
        }
        (None, Some(token)) => body["token"] = json!(read_secret(token)?),
        (None, None) => bail!("give --claims FILE or --token JWT"),
    }
    if let Some(issuer) = d.issuer {
        body["issuer"] = json!(issuer);
    }
    if let Some(path) = d.candidate {
        body["policy"] = json!(read(path)?);
        body["format"] = json!(if format_of(path) == SourceFormat::Json { "json" } else { "toml" });
    }
    let out = remote
        .post_json(&format!("/v1/orgs/{}/policy/dry-run", encode_query(d.org)), &body)
        .await
        .map_err(|e| match d.candidate {
            Some(p) => with_origin(e, &p.display().to_string()),
            None => e,
        })?
        .json()?;
    let granted = out["decision"] == "granted";
    if d.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let version = out["policy_version"].as_i64().map_or("candidate".to_owned(), |v| format!("v{v}"));
        if granted {
            println!(
                "GRANTED for org {} by rule {:?} (server policy {version}; dry run: nothing issued)",
                d.org,
                out["rule"].as_str().unwrap_or_default()
            );
            let list = |v: &Value| {
                let items: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                if items.is_empty() { "(all)".to_owned() } else { items.join(", ") }
            };
            println!("  permissions: {}", list(&out["permissions"]));
            println!("  apps:        {}", list(&out["apps"]));
            println!("  machines:    {}", list(&out["machines"]));
            println!("  ttl:         {}s", out["ttl_s"]);
        } else {
            println!(
                "DENIED ({}) for org {} (server policy {version}; dry run)",
                out["kind"].as_str().unwrap_or_default(),
                d.org
            );
            println!("  {}{}", out["message"].as_str().unwrap_or_default(), render_explanation(&out["explanation"]));
        }
    }
    Ok(if granted { EXIT_OK } else { EXIT_DENIED })
}

// ---- writ audit -----------------------------------------------------------------------

/// `writ audit` arguments.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The org.
    org: String,
    /// Records at or after this time (RFC 3339 or Unix seconds).
    #[arg(long)]
    from: Option<String>,
    /// Records before this time.
    #[arg(long)]
    to: Option<String>,
    /// Only this repository.
    #[arg(long)]
    repository: Option<String>,
    /// Only grants or only denials.
    #[arg(long, value_parser = ["granted", "denied"])]
    outcome: Option<String>,
    /// Only this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Only records that requested or granted this permission.
    #[arg(long)]
    permission: Option<String>,
    /// Records per page (1-1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Continue after a previous page.
    #[arg(long)]
    cursor: Option<String>,
    /// Follow every page.
    #[arg(long)]
    all: bool,
    /// Print JSON (one document per page).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV.
    #[arg(long)]
    csv: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Reads an org's audit log: a table by default, `--json` or `--csv`.
pub async fn audit(args: AuditArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    remote.require_credential()?;
    let mut params: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    for (k, v) in [
        ("from", &args.from),
        ("to", &args.to),
        ("repository", &args.repository),
        ("outcome", &args.outcome),
        ("rule", &args.rule),
        ("permission", &args.permission),
    ] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    if args.csv {
        params.push(("format", "csv".into()));
    }
    let mut cursor = args.cursor.clone();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut first_page = true;
    loop {
        let mut query = params.clone();
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let path = format!("/v1/orgs/{}/audit?{}", encode_query(&args.org), crate::remote::url_encode(&query));
        let reply = remote.get(&path).await?;
        let next = if args.csv {
            // Every page has a header row; print it once.
            let text =
                if first_page { reply.text.as_str() } else { reply.text.split_once('\n').map_or("", |(_, rest)| rest) };
            print!("{text}");
            reply.next_cursor.clone()
        } else {
            let page = reply.json()?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                rows.extend(page["records"].as_array().into_iter().flatten().map(audit_row));
            }
            page["next_cursor"].as_str().map(str::to_owned)
        };
        first_page = false;
        match next {
            Some(c) if args.all => cursor = Some(c),
            Some(c) => {
                eprintln!("(more records: --cursor {c}, or --all)");
                break;
            }
            None => break,
        }
    }
    if !args.json && !args.csv {
        print_table(&["TIME", "OUTCOME", "RULE/ERROR", "REPOSITORY", "REF", "ENV", "PERMISSIONS", "RUN"], &rows);
    }
    Ok(EXIT_OK)
}

fn audit_row(r: &Value) -> Vec<String> {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
    let list = |k: &str| {
        let items: Vec<&str> = r[k].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        items.join(" ")
    };
    let granted = r["outcome"] == "granted";
    let permissions = if granted { list("granted_permissions") } else { list("requested_permissions") };
    let narrowed = r["explanation"].get("narrowed_from").is_some();
    vec![
        r["time"].as_i64().map(rfc3339).unwrap_or_default(),
        format!("{}{}", s("outcome"), if narrowed { " (narrowed)" } else { "" }),
        if granted { s("rule") } else { s("error") },
        s("repository"),
        s("ref"),
        s("environment"),
        if permissions.is_empty() { "-".into() } else { permissions },
        s("run_id"),
    ]
}

// ---- writ token -----------------------------------------------------------------------

/// `writ token revoke` arguments.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// A writ token to revoke as its holder (RFC 7009; `@FILE` or `-`).
    /// Everything narrowed from it is revoked too.
    #[arg(conflicts_with_all = ["org"])]
    token_to_revoke: Option<String>,
    /// As an org admin: the org whose tokens to revoke.
    #[arg(long, requires = "target")]
    org: Option<String>,
    /// One token, by its jti.
    #[arg(long, group = "target")]
    jti: Option<String>,
    /// Every token issued to this repository.
    #[arg(long, group = "target")]
    repository: Option<String>,
    /// Every token issued to this CI run.
    #[arg(long, group = "target")]
    run_id: Option<String>,
    /// Every token granted under this rule.
    #[arg(long, group = "target")]
    rule: Option<String>,
    /// Why, for the record.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Revokes tokens: the holder's own (RFC 7009), or an org's by jti,
/// repository, run or rule (admin).
pub async fn revoke(args: RevokeArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    if let Some(token) = &args.token_to_revoke {
        let token = read_secret(token)?;
        remote
            .post_form("/oauth/revoke", &[("token", token), ("token_type_hint", "access_token".into())], false)
            .await?;
        println!("revoked (a token that was already invalid needs nothing)");
        return Ok(EXIT_OK);
    }
    let Some(org) = &args.org else {
        bail!("give a TOKEN to revoke it as its holder, or --org ORG with --jti, --repository, --run-id or --rule");
    };
    remote.require_credential()?;
    let mut body = match (&args.jti, &args.repository, &args.run_id, &args.rule) {
        (Some(v), ..) => json!({"jti": v}),
        (_, Some(v), ..) => json!({"repository": v}),
        (_, _, Some(v), _) => json!({"run_id": v}),
        (.., Some(v)) => json!({"rule": v}),
        _ => bail!("say what to revoke: --jti, --repository, --run-id or --rule"),
    };
    if let Some(reason) = &args.reason {
        body["reason"] = json!(reason);
    }
    let out = remote.post_json(&format!("/v1/orgs/{}/revocations", encode_query(org)), &body).await?.json()?;
    println!("revoked {} token(s) of org {org} (with every token narrowed from them)", out["revoked"]);
    Ok(EXIT_OK)
}

/// `writ token inspect` arguments.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The writ token (`@FILE` or `-`).
    token_to_inspect: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Decodes a writ token locally and, with `--server`, asks the server
/// whether it is active (introspection). Exit 2 when the server says it
/// is not.
pub async fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let token = read_secret(&args.token_to_inspect)?;
    let unverified_claims = decode_unverified(&token)?;
    let introspection = match args.remote.server.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(_) => {
            let remote = Remote::new(&args.remote)?;
            remote.require_credential()?;
            Some(remote.post_form("/oauth/introspect", &[("token", token.clone())], true).await?.json()?)
        }
    };
    let active = introspection.as_ref().map(|i| i["active"] == true);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"unverified_claims": unverified_claims, "introspection": introspection})
            )?
        );
    } else {
        let c = &unverified_claims;
        let s = |k: &str| c[k].as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
        let list = |k: &str| {
            c[k].as_array()
                .map_or("(all)".to_owned(), |l| l.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        };
        match active {
            Some(true) => println!("active:      yes (the server verified it: signature, expiry, not revoked)"),
            Some(false) => println!("active:      NO (expired, revoked, or not this server's token)"),
            None => println!("active:      unknown (decoded locally, NOT verified; pass --server to ask the server)"),
        }
        println!("org:         {}", s("org"));
        println!("permissions: {}", s("scope"));
        println!("apps:        {}", list("apps"));
        println!("machines:    {}", list("machines"));
        println!("audience:    {}", s("aud"));
        println!("subject:     {}", s("sub"));
        println!("jti:         {}", s("jti"));
        if let Some(parent) = c["parent"].as_str() {
            println!("narrowed from: {parent}");
        }
        if let (Some(iat), Some(exp)) = (c["iat"].as_i64(), c["exp"].as_i64()) {
            println!("issued:      {}", rfc3339(iat));
            println!("expires:     {}", rfc3339(exp));
        }
        if let Some(repo) = c["ci"]["repository"].as_str() {
            println!(
                "ci:          {repo} {} run {}",
                c["ci"]["ref"].as_str().unwrap_or_default(),
                c["ci"]["run_id"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(if active == Some(false) { EXIT_DENIED } else { EXIT_OK })
}

/// The claims of a JWT, decoded without verifying anything: display only.
fn decode_unverified(token: &str) -> anyhow::Result<Value> {
    let payload = token.split('.').nth(1).context("this is not a JWT (header.payload.signature)")?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).context("the token's payload is not base64url")?;
    serde_json::from_slice(&bytes).context("the token's payload is not JSON")
}

/// `writ token narrow` arguments.
#[derive(Debug, clap::Args)]
pub struct NarrowArgs {
    /// The writ token to narrow (`@FILE` or `-`).
    token_to_narrow: String,
    /// Permissions to keep (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    permissions: Vec<String>,
    /// Apps to limit the new token to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    apps: Vec<String>,
    /// Machines to limit the new token to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    machines: Vec<String>,
    /// Lifetime, e.g. 5m (default: the rest of the token's life).
    #[arg(long)]
    ttl: Option<String>,
    /// Print the whole response as JSON instead of just the token.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Exchanges a writ token for a narrower one (RFC 8693) and prints it.
pub async fn narrow(args: NarrowArgs) -> anyhow::Result<u8> {
    let remote = Remote::new(&args.remote)?;
    let token = read_secret(&args.token_to_narrow)?;
    let mut form: Vec<(&str, String)> = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".into()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token".into()),
        ("subject_token", token),
    ];
    if !args.permissions.is_empty() {
        form.push(("scope", args.permissions.join(" ")));
    }
    form.extend(args.apps.iter().map(|a| ("resource", format!("app:{a}"))));
    form.extend(args.machines.iter().map(|m| ("resource", format!("machine:{m}"))));
    if let Some(ttl) = &args.ttl {
        form.push(("ttl", ttl.clone()));
    }
    let out = remote.post_form("/oauth/token", &form, false).await?.json()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", out["access_token"].as_str().context("the server sent no access_token")?);
        eprintln!(
            "narrowed: {} for org {}, {}s{}{}",
            out["scope"].as_str().unwrap_or_default(),
            out["org"].as_str().unwrap_or_default(),
            out["expires_in"],
            out.get("apps").map(|a| format!(", apps {a}")).unwrap_or_default(),
            out.get("machines").map(|m| format!(", machines {m}")).unwrap_or_default(),
        );
    }
    Ok(EXIT_OK)
}

// ---- writ credential -------------------------------------------------------------------

/// Prints a fresh root credential and the config line with its hash.
pub fn credential_new() -> anyhow::Result<u8> {
    let (credential, hash) = writ_server::auth::generate_root_credential()?;
    println!("{credential}");
    eprintln!(
        "The line above is a new operator root credential; it is shown once. Keep it in a secret manager.\n\
         Give the server only its hash, in its config file:\n\n[admin]\nroot_credential_hash = \"{hash}\"\n\n\
         (or WRIT_ROOT_CREDENTIAL_HASH={hash}). The same format serves [[introspection.clients]] secret_hash."
    );
    Ok(EXIT_OK)
}
