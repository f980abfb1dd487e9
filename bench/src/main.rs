//! writ-bench: the load generator of docs/PERFORMANCE.md. It starts (or
//! points at) a `writ serve` on loopback, mints unique GitHub-shaped OIDC
//! tokens with the testkit's fake issuer, drives `POST /v1/exchange` in a
//! closed loop (fixed concurrency) and an open loop (fixed rate), and
//! reports throughput, latency percentiles, errors, the server's CPU per
//! exchange and the crypto ceiling measured in the same run.
//!
//! Every phase is bounded in requests and time, and load only ever goes to
//! loopback addresses.

mod ceiling;
mod load;
mod memprobe;
mod procstat;
mod server;
mod stats;
mod tls_front;
mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use serde_json::{Value, json};
use writ_testkit::{FakeIssuer, IssuerShape};

use crate::load::{Conn, Source, Target};
use crate::procstat::ProcSample;
use crate::stats::{BySecond, Recorder, Summary, summarize};
use crate::tokens::{Minter, TokenShape};

/// Load generator for writ's token exchange (loopback only).
#[derive(Debug, Parser)]
#[command(name = "writ-bench", version, about)]
struct Args {
    /// A few-seconds run with small counts, for CI: proves the benchmark
    /// still works, measures nothing worth quoting.
    #[arg(long)]
    smoke: bool,
    /// Benchmark a server that is already running (http://127.0.0.1:PORT)
    /// instead of starting `writ serve`. It must trust the fake issuer this
    /// run starts (see --issuer-listen) and grant --org to --repository.
    #[arg(long)]
    server: Option<String>,
    /// Process id of the --server, for its CPU seconds and memory.
    #[arg(long, requires = "server")]
    server_pid: Option<u32>,
    /// The `writ` binary to start (default: `writ` next to this binary,
    /// i.e. target/release/writ).
    #[arg(long)]
    writ_bin: Option<PathBuf>,
    /// Where the started server keeps its SQLite file, policies and log
    /// (default: a fresh temporary directory, removed afterwards). The
    /// file system decides the cost of each fsync.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Closed loop: requests in flight; a comma-separated list runs one
    /// phase per value, and the best phase is the run's throughput.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    concurrency: Vec<usize>,
    /// Closed loop: requests per phase (each with its own token).
    #[arg(long, default_value_t = 40_000)]
    requests: usize,
    /// Open loop: requests per second, or `half` for half the best
    /// closed-loop throughput of this run.
    #[arg(long, default_value = "half")]
    rate: String,
    /// Open loop: how long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Open loop: before the measured phase, send at the same rate for this
    /// long on the same connections without recording. The phase then
    /// starts from a steady state rather than from the idle seconds spent
    /// minting its tokens (in which the server's caches and the disk's
    /// queue go cold). 0 turns it off.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Open loop: most requests outstanding at once.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Soak instead of the phases above: open loop at --rate (a number;
    /// default 1800/s) for this long, minting tokens while sending, and
    /// reporting the server's resident memory over time.
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// Soak: seconds between report lines.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    report_every: Duration,
    /// Threads minting tokens (default: one per core; 2 while soaking).
    #[arg(long)]
    mint_threads: Option<usize>,
    /// Time spent measuring each crypto operation of the ceiling (and half
    /// of it on each measurement of the host's idle penalty).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    ceiling_time: Duration,
    /// The org to ask for.
    #[arg(long, default_value = "bench")]
    org: String,
    /// The repository the tokens come from.
    #[arg(long, default_value = "acme/web")]
    repository: String,
    /// The tokens' deployment environment.
    #[arg(long, default_value = "production")]
    environment: String,
    /// Rules in the started server's policy for --org (the last matches).
    #[arg(long, default_value_t = 10)]
    rules: usize,
    /// The `aud` of minted tokens (default: the started server's audience,
    /// or the --server URL).
    #[arg(long)]
    audience: Option<String>,
    /// Address of the fake issuer (fix the port when a --server must trust
    /// it).
    #[arg(long, default_value = "127.0.0.1:0")]
    issuer_listen: std::net::SocketAddr,
    /// Serve the fake issuer over HTTPS with this PEM certificate chain
    /// (and --issuer-tls-key), for a --server that only accepts https://
    /// issuers; that server must trust the certificate.
    #[arg(long, requires_all = ["issuer_tls_key", "server"])]
    issuer_tls_cert: Option<PathBuf>,
    /// The PEM private key of --issuer-tls-cert.
    #[arg(long, requires = "issuer_tls_cert")]
    issuer_tls_key: Option<PathBuf>,
    /// For a --server that binds each assertion to a nonce it minted: before
    /// minting each token, POST to this path and put the `nonce` of the JSON
    /// answer into the token's `nonce` claim. Not with --soak.
    #[arg(long, requires = "server", conflicts_with = "soak")]
    nonce_path: Option<String>,
    /// Claims added to every minted token, as a JSON object (for example
    /// `{"email":"ci@acme.test","email_verified":true}` for a server that
    /// registers users by verified email).
    #[arg(long, value_parser = parse_claims)]
    extra_claims: Option<serde_json::Map<String, Value>>,
    /// The exchange path.
    #[arg(long, default_value = "/v1/exchange")]
    path: String,
    /// The request body; `{token}` is replaced by the OIDC token and
    /// `{org}` by --org.
    #[arg(long, default_value = r#"{"token":"{token}","org":"{org}"}"#)]
    body_template: String,
    /// The request's Content-Type.
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Abort if the whole run takes longer than this (soak time is added).
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    max_time: Duration,
    /// Print the results as one JSON document at the end as well.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    match run_main(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_main(mut args: Args) -> anyhow::Result<()> {
    if args.smoke {
        args.requests = args.requests.min(1500);
        args.concurrency = vec![16];
        args.duration = args.duration.min(Duration::from_secs(2));
        args.warmup = args.warmup.min(Duration::from_millis(200));
        args.ceiling_time = args.ceiling_time.min(Duration::from_millis(200));
        args.report_every = args.report_every.min(Duration::from_secs(1));
        if let Some(soak) = &mut args.soak {
            *soak = (*soak).min(Duration::from_secs(3));
        }
    }
    // One worker thread sends the load (plenty for a generator that only
    // writes prepared bodies); minting uses its own threads.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let budget = args.max_time + args.soak.unwrap_or_default();
    runtime.block_on(async {
        tokio::time::timeout(budget, run(args))
            .await
            .map_err(|_| anyhow::anyhow!("the benchmark ran longer than --max-time; stopped"))?
    })
}

/// The server under test, however it got there.
struct Under {
    target: Target,
    pid: Option<u32>,
    spawned: Option<server::Spawned>,
    _dir: Option<tempfile::TempDir>,
    audience: String,
    description: String,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (load, cpus) = procstat::load_and_cpus();
    println!("writ-bench: {cpus} CPUs, load average {load:.2} at start");
    if load > cpus as f64 / 2.0 {
        println!("  note: the machine is busy; figures are noisy (ratios within this run stay comparable)");
    }
    let (issuer, issuer_url, _front) = start_issuer(&args).await?;
    let under = start_server(&args, &issuer_url).await?;
    println!("server: {}", under.description);

    let shape = TokenShape {
        issuer: issuer_url.clone(),
        audience: under.audience.clone(),
        repository: args.repository.clone(),
        environment: (!args.environment.is_empty()).then(|| args.environment.clone()),
        lifetime_secs: 900,
        extra_claims: args.extra_claims.clone().unwrap_or_default(),
        body_template: args.body_template.replace("{org}", &args.org),
    };
    let minter = Minter::new(issuer.current_key(), &shape)?;
    let mint_threads = args.mint_threads.unwrap_or(procstat::load_and_cpus().1);

    // Warm-up: the first exchange fetches the issuer's keys and pins the
    // repository's ids; it also yields a real minted token, whose signing
    // input sizes the Ed25519 part of the ceiling.
    let nonces = Nonces { target: under.target.clone(), path: args.nonce_path.clone() };
    let probe_token = minter.token(nonces.fetch(1).await?.first().map(String::as_str));
    let mut conn = Conn::new(&under.target);
    let probe_body = Bytes::from(shape.body_template.replace("{token}", &probe_token));
    let (status, body) = conn.request(http::Method::POST, &args.path, probe_body).await?;
    if status != 200 {
        bail!("the warm-up exchange failed with HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    let signing_input = minted_signing_input(&body);
    let jwk = issuer.current_key().public_jwk();
    let ceiling_time = args.ceiling_time;
    // Parsed and checked once; every measurement below times the same work.
    let crypto = Arc::new(ceiling::Crypto::new(&probe_token, &jwk, &signing_input)?);
    let measure_ceiling = {
        let crypto = crypto.clone();
        move || crypto.ceiling(ceiling_time)
    };
    let measure_idle = move || crypto.idle_penalty(ceiling_time / 2);
    let mut ceiling = tokio::task::spawn_blocking(measure_ceiling.clone()).await?;
    println!(
        "crypto ceiling (one core, before load): RS256 verify {:.1} µs + Ed25519 sign {:.1} µs = {:.0} exchanges/s",
        ceiling.verify_us,
        ceiling.sign_us,
        ceiling.per_core()
    );

    let mut report = json!({
        "machine": { "cpus": cpus, "load_at_start": load },
        "server": under.description,
    });
    let mut failed = 0;
    if let Some(soak) = args.soak {
        let rate: f64 = if args.rate == "half" { 1800.0 } else { args.rate.parse().context("--rate")? };
        let soaked = soak_phase(&args, &under, &minter, rate, soak).await?;
        failed += soaked["errors"].as_u64().unwrap_or(0);
        report["soak"] = soaked;
    } else {
        // The host's memory speed, measured when the ceiling is: the
        // ceiling hardly depends on it, writ's other work does (see
        // `memprobe`). Not in a soak, whose report holds no ceiling either.
        let chain = Arc::new(tokio::task::spawn_blocking(memprobe::Chain::new).await?);
        let measure_memory = move || chain.measure();
        let mut memory_ns = vec![tokio::task::spawn_blocking(measure_memory.clone()).await?];
        // And how much slower the crypto runs right after a sleep: what an
        // open loop's wake-ups cost on this host (see `IdlePenalty`).
        let mut idle = vec![tokio::task::spawn_blocking(measure_idle.clone()).await?];
        let mut best = 0.0_f64;
        // The server's CPU per exchange in the phase that set `best`.
        let mut best_cpu_us = None;
        let mut closed = Vec::new();
        for &c in &args.concurrency {
            let bodies = premint(&minter, args.requests, mint_threads, &nonces).await?;
            let phase = measure_phase(&under, || {
                let target = under.target.clone();
                let bodies = Arc::new(bodies);
                async move {
                    let rec = Arc::new(Recorder::default());
                    let wall = load::closed_loop(&target, bodies, c, rec.clone()).await;
                    (wall, rec)
                }
            })
            .await?;
            if phase.throughput > best {
                best = phase.throughput;
                best_cpu_us = phase.server_cpu_us_per_exchange;
            }
            failed += phase.errors;
            println!("closed loop, {c} in flight: {}", phase.line());
            closed.push(phase.to_json(json!({"concurrency": c})));
            // Measured again after every phase: on a shared host the
            // crypto's speed drifts within minutes, and the fastest of
            // all measurements is the strictest ceiling.
            ceiling = ceiling.best(tokio::task::spawn_blocking(measure_ceiling.clone()).await?);
            memory_ns.push(tokio::task::spawn_blocking(measure_memory.clone()).await?);
            idle.push(tokio::task::spawn_blocking(measure_idle.clone()).await?);
        }
        report["closed_loop"] = json!(closed);

        let rate = if args.rate == "half" { best / 2.0 } else { args.rate.parse::<f64>().context("--rate")? };
        let total = ((rate * args.duration.as_secs_f64()).round() as usize).max(1);
        let warmup = (rate * args.warmup.as_secs_f64()).round() as usize;
        // One batch, in minting order: the warm-up's tokens, then the phase's.
        let mut bodies = premint(&minter, warmup + total, mint_threads, &nonces).await?;
        let measured = bodies.split_off(warmup);
        let mut conns = load::connect_all(&under.target, args.max_in_flight.max(1)).await;
        if warmup > 0 {
            let rec = Arc::new(Recorder::default());
            let source = Arc::new(Source::Premint(Arc::new(bodies)));
            (_, conns) = load::open_loop(conns, source, rate, warmup, rec.clone()).await;
            let done = rec.finish();
            if done.error_count() > 0 {
                println!(
                    "  warm-up ({warmup} requests, not recorded): {} errors, first: {}",
                    done.error_count(),
                    done.first_error.as_deref().unwrap_or("?")
                );
                failed += done.error_count();
            }
        }
        let source = Arc::new(Source::Premint(Arc::new(measured)));
        let phase = measure_phase(&under, || async move {
            let rec = Arc::new(Recorder::default());
            let (wall, _) = load::open_loop(conns, source, rate, total, rec.clone()).await;
            (wall, rec)
        })
        .await?;
        println!(
            "open loop at {rate:.0}/s after {} of warm-up (latency from intended send time, or from the send if earlier): {}",
            humantime::format_duration(args.warmup),
            phase.line()
        );
        failed += phase.errors;
        if let Some(premium) = Premium::of(&phase, best_cpu_us) {
            println!("  {}", premium.line(cpus));
            report["open_loop_premium"] = premium.to_json();
        }
        report["open_loop"] = phase.to_json(
            json!({"rate": rate, "duration_s": args.duration.as_secs_f64(), "warmup_s": args.warmup.as_secs_f64()}),
        );

        ceiling = ceiling.best(tokio::task::spawn_blocking(measure_ceiling).await?);
        memory_ns.push(tokio::task::spawn_blocking(measure_memory).await?);
        idle.push(tokio::task::spawn_blocking(measure_idle).await?);
        let ratio = best / ceiling.per_core();
        println!(
            "crypto ceiling (one core, fastest of {} measurements: before, after each phase): \
             {:.1} + {:.1} µs = {:.0} exchanges/s",
            args.concurrency.len() + 2,
            ceiling.verify_us,
            ceiling.sign_us,
            ceiling.per_core()
        );
        let shown: Vec<String> = memory_ns.iter().map(|ns| format!("{ns:.0}")).collect();
        println!(
            "host memory latency: {} ns per dependent load from a random line of 64 MiB (before load, then after each phase)",
            shown.join(", ")
        );
        let ratios: Vec<String> = idle.iter().map(|p| format!("{:.2}", p.ratio())).collect();
        let busy: Vec<String> = idle.iter().map(|p| format!("{:.1}", p.busy_us)).collect();
        println!(
            "host idle penalty: the crypto takes {} x as long right after a {} µs sleep as back to back, \
             and back to back between idle spells {} µs against the ceiling's {:.1} (before load, then after each phase)",
            ratios.join(", "),
            ceiling::IDLE_GAP.as_micros(),
            busy.join(", "),
            ceiling.verify_us + ceiling.sign_us,
        );
        println!(
            "RESULT: best closed-loop {best:.0} exchanges/s = {ratio:.2} x the single-core crypto ceiling; \
             open loop at {rate:.0}/s: p99 {:.2} ms",
            phase.summary.p99
        );
        report["ceiling"] = ceiling.to_json();
        report["memory_ns_per_load"] = json!(memory_ns);
        report["idle_penalty"] = json!({
            "sleep_us": ceiling::IDLE_GAP.as_micros() as u64,
            "measurements": idle.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
        });
        report["best_throughput_per_s"] = json!(best);
        report["ratio_to_single_core_ceiling"] = json!(ratio);
    }
    let (load_end, _) = procstat::load_and_cpus();
    println!("load average {load_end:.2} at end");
    report["machine"]["load_at_end"] = json!(load_end);
    if let Some(s) = &under.spawned
        && let Ok(sample) = procstat::sample(Some(s.pid))
    {
        println!("server memory: {:.1} MiB resident, peak {:.1} MiB", mib(sample.rss_kib), mib(sample.hwm_kib));
        report["server_memory"] = json!({"rss_mib": mib(sample.rss_kib), "peak_mib": mib(sample.hwm_kib)});
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    drop(under);
    if args.smoke && failed > 0 {
        bail!("{failed} exchanges failed in a smoke run: the benchmark or the server is broken");
    }
    Ok(())
}

/// The fake issuer, its URL (the tokens' `iss`), and the HTTPS front that
/// URL names when --issuer-tls-cert is given.
async fn start_issuer(args: &Args) -> anyhow::Result<(FakeIssuer, String, Option<tls_front::TlsFront>)> {
    let (Some(cert), Some(key)) = (&args.issuer_tls_cert, &args.issuer_tls_key) else {
        let issuer = FakeIssuer::start_on(IssuerShape::GitHub, args.issuer_listen).await?;
        let url = issuer.url();
        return Ok((issuer, url, None));
    };
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await?;
    let upstream: std::net::SocketAddr = issuer
        .url()
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .context("the fake issuer's URL is not http://ADDR")?;
    let front = tls_front::TlsFront::start(args.issuer_listen, cert, key, upstream).await?;
    let url = format!("https://{}", front.addr());
    issuer.set_discovery_issuer(Some(url.clone()));
    Ok((issuer, url, Some(front)))
}

async fn start_server(args: &Args, issuer_url: &str) -> anyhow::Result<Under> {
    if let Some(url) = &args.server {
        let (addr, host) = server::loopback_target(url)?;
        println!("fake issuer for --server: {issuer_url} (configure it as a trusted issuer)");
        return Ok(Under {
            target: Target { addr, host, path: args.path.clone(), content_type: args.content_type.clone() },
            pid: args.server_pid,
            spawned: None,
            _dir: None,
            audience: args.audience.clone().unwrap_or_else(|| url.trim_end_matches('/').to_owned()),
            description: format!("{url} (running elsewhere)"),
        });
    }
    let (dir, keep) = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let binary = args.writ_bin.clone().unwrap_or_else(server::default_binary);
    // Waiting for the process blocks; the fake issuer must keep answering
    // the server's discovery meanwhile, so wait off the runtime.
    let (issuer_url, org, repository, environment, rules, dir_owned) = (
        issuer_url.to_owned(),
        args.org.clone(),
        args.repository.clone(),
        (!args.environment.is_empty()).then(|| args.environment.clone()),
        args.rules,
        dir.clone(),
    );
    let spawned = tokio::task::spawn_blocking(move || {
        server::spawn(&server::ServerSetup {
            binary: &binary,
            dir: &dir_owned,
            issuer_url: &issuer_url,
            org: &org,
            repository: &repository,
            environment: environment.as_deref(),
            rules,
        })
    })
    .await??;
    let description = format!(
        "{} (pid {}, started here; SQLite {} with WAL and synchronous=FULL; {} rules in org {:?}; log {})",
        spawned.addr,
        spawned.pid,
        spawned.db_path.display(),
        args.rules,
        args.org,
        if keep.is_some() { "discarded".to_owned() } else { spawned.log_path.display().to_string() },
    );
    Ok(Under {
        target: Target {
            addr: spawned.addr,
            host: spawned.addr.to_string(),
            path: args.path.clone(),
            content_type: args.content_type.clone(),
        },
        pid: Some(spawned.pid),
        spawned: Some(spawned),
        _dir: keep,
        audience: args.audience.clone().unwrap_or_else(|| server::SPAWNED_AUDIENCE.to_owned()),
        description,
    })
}

/// The signing input of the token in an exchange response, or a stand-in
/// of typical size when the response has none (another server's shape).
fn minted_signing_input(response: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(response).unwrap_or_default();
    let token = v.get("token").or_else(|| v.get("access_token")).and_then(Value::as_str);
    match token.and_then(|t| t.rsplit_once('.')) {
        Some((input, _)) => input.as_bytes().to_vec(),
        None => vec![b'x'; 1100],
    }
}

/// Where nonces come from, for a server that wants one in each token.
struct Nonces {
    target: Target,
    path: Option<String>,
}

impl Nonces {
    /// Connections that fetch nonces at once.
    const CONNECTIONS: usize = 8;

    /// `n` fresh nonces, or none when no --nonce-path was given.
    async fn fetch(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let Some(path) = &self.path else { return Ok(Vec::new()) };
        let mut tasks = tokio::task::JoinSet::new();
        let per = n.div_ceil(Self::CONNECTIONS);
        for first in (0..n).step_by(per.max(1)) {
            let count = per.min(n - first);
            let (target, path) = (self.target.clone(), path.clone());
            tasks.spawn(async move {
                let mut conn = Conn::new(&target);
                let mut got = Vec::with_capacity(count);
                for _ in 0..count {
                    let (status, body) = conn.request(http::Method::POST, &path, Bytes::new()).await?;
                    let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
                    match answer.get("nonce").and_then(Value::as_str) {
                        Some(nonce) if status == 200 => got.push(nonce.to_owned()),
                        _ => bail!(
                            "POST {path} answered HTTP {status} without a \"nonce\": {}",
                            String::from_utf8_lossy(&body).chars().take(300).collect::<String>()
                        ),
                    }
                }
                Ok((first, got))
            });
        }
        let mut parts = Vec::new();
        while let Some(part) = tasks.join_next().await {
            parts.push(part??);
        }
        parts.sort_by_key(|(first, _)| *first);
        Ok(parts.into_iter().flat_map(|(_, got)| got).collect())
    }
}

async fn premint(minter: &Minter, n: usize, threads: usize, nonces: &Nonces) -> anyhow::Result<Vec<Bytes>> {
    let minter = minter.clone();
    let started = Instant::now();
    let nonces = nonces.fetch(n).await?;
    let bodies = tokio::task::spawn_blocking(move || tokens::premint(&minter, n, threads, &nonces)).await?;
    if bodies.len() != n {
        bail!("minted {} of {n} tokens", bodies.len());
    }
    eprintln!("  (minted {n} tokens on {threads} threads in {:.1} s)", started.elapsed().as_secs_f64());
    Ok(bodies)
}

/// One measured phase.
struct Phase {
    wall: Duration,
    ok: u64,
    errors: u64,
    error_classes: Value,
    first_error: Option<String>,
    throughput: f64,
    summary: Summary,
    /// Open loops only: how late the generator began each request, which
    /// every latency of `summary` includes.
    send_lateness: Option<Summary>,
    /// Open loops only: the latencies second by second.
    by_second: Option<BySecond>,
    /// Open loops only: when second 0 of `by_second` began.
    started: Option<std::time::SystemTime>,
    server_cpu_us_per_exchange: Option<f64>,
    server_cores: Option<f64>,
    generator_cpu_us_per_request: f64,
}

impl Phase {
    fn line(&self) -> String {
        let mut s = format!(
            "{} ok, {} errors in {:.2} s = {:.0} exchanges/s; {}",
            self.ok,
            self.errors,
            self.wall.as_secs_f64(),
            self.throughput,
            self.summary
        );
        if let (Some(us), Some(cores)) = (self.server_cpu_us_per_exchange, self.server_cores) {
            s.push_str(&format!("; server CPU {us:.0} µs/exchange ({cores:.2} cores busy)"));
        }
        s.push_str(&format!("; generator CPU {:.0} µs/request", self.generator_cpu_us_per_request));
        if let Some(late) = &self.send_lateness {
            s.push_str(&format!(
                "\n  the generator began requests late by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (included above; a request begun early counts 0)",
                late.p50, late.p99, late.max
            ));
        }
        if let Some(line) = self.by_second.as_ref().and_then(BySecond::line) {
            s.push_str(&format!("\n  {line}"));
            if let Some(at) = self.started {
                s.push_str(&format!(" (s0 began at {})", stats::utc_clock(at)));
            }
        }
        if let Some(e) = &self.first_error {
            s.push_str(&format!("\n  first error: {}", e.chars().take(300).collect::<String>()));
        }
        s
    }

    fn to_json(&self, mut extra: Value) -> Value {
        extra["wall_s"] = json!(self.wall.as_secs_f64());
        extra["ok"] = json!(self.ok);
        extra["errors"] = json!(self.errors);
        extra["error_classes"] = self.error_classes.clone();
        extra["throughput_per_s"] = json!(self.throughput);
        extra["latency"] = self.summary.to_json();
        extra["send_lateness"] = json!(self.send_lateness.map(Summary::to_json));
        extra["by_second"] = json!(self.by_second.as_ref().map(BySecond::to_json));
        extra["started_unix_s"] = json!(self.started.map(stats::unix_secs));
        extra["server_cpu_us_per_exchange"] = json!(self.server_cpu_us_per_exchange);
        extra["server_cores_busy"] = json!(self.server_cores);
        extra["generator_cpu_us_per_request"] = json!(self.generator_cpu_us_per_request);
        extra
    }
}

/// What an open loop costs beyond the closed loop that set its rate.
///
/// At half the peak, the cores the server keeps busy are about half the
/// best closed loop's times this ratio, however cheap an exchange is. On
/// two cores shared with the generator, the p99 climbs with them
/// (docs/PERFORMANCE.md, "What bounds throughput"), so this line tells a
/// p99 missed for lack of CPU from one missed to a stall.
#[derive(Debug, Clone, Copy)]
struct Premium {
    /// The server's CPU per exchange in the open loop, µs.
    open_us: f64,
    /// The same in the closed loop with the best throughput, µs.
    closed_us: f64,
    /// The server's cores busy in the open loop.
    server_cores: f64,
    /// The generator's cores busy in the open loop.
    generator_cores: f64,
}

impl Premium {
    /// `None` when the server's CPU was not measured (`--server` without
    /// `--server-pid`) or a phase granted nothing.
    fn of(open: &Phase, closed_us: Option<f64>) -> Option<Premium> {
        let (open_us, closed_us, server_cores) = (open.server_cpu_us_per_exchange?, closed_us?, open.server_cores?);
        (open_us > 0.0 && closed_us > 0.0).then(|| Premium {
            open_us,
            closed_us,
            server_cores,
            generator_cores: open.generator_cpu_us_per_request * open.throughput / 1e6,
        })
    }

    fn ratio(&self) -> f64 {
        self.open_us / self.closed_us
    }

    fn line(&self, cpus: usize) -> String {
        format!(
            "open-loop premium: the server took {:.0} µs per exchange against {:.0} in the best closed loop = {:.2} x; \
             server and generator kept {:.2} + {:.2} = {:.2} of {cpus} cores busy",
            self.open_us,
            self.closed_us,
            self.ratio(),
            self.server_cores,
            self.generator_cores,
            self.server_cores + self.generator_cores,
        )
    }

    fn to_json(self) -> Value {
        json!({
            "ratio": self.ratio(),
            "open_cpu_us_per_exchange": self.open_us,
            "closed_cpu_us_per_exchange": self.closed_us,
            "server_cores_busy": self.server_cores,
            "generator_cores_busy": self.generator_cores,
        })
    }
}

async fn measure_phase<F, Fut>(under: &Under, run: F) -> anyhow::Result<Phase>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = (Duration, Arc<Recorder>)> + Send + 'static,
{
    let server_before = under.pid.map(|p| procstat::sample(Some(p))).transpose()?;
    let self_before = procstat::sample(None)?;
    let (wall, rec) = tokio::spawn(run()).await?;
    let server_after = under.pid.map(|p| procstat::sample(Some(p))).transpose()?;
    let self_after = procstat::sample(None)?;
    let done = rec.finish();
    let requests = (done.ok + done.error_count()).max(1);
    let cpu = |a: Option<ProcSample>, b: Option<ProcSample>| a.zip(b).map(|(a, b)| b.cpu_secs - a.cpu_secs);
    let server_cpu = cpu(server_before, server_after);
    Ok(Phase {
        wall,
        ok: done.ok,
        errors: done.error_count(),
        error_classes: json!(done.errors),
        first_error: done.first_error.clone(),
        throughput: done.ok as f64 / wall.as_secs_f64(),
        summary: summarize(&done.latencies_us),
        send_lateness: (!done.send_lateness_us.is_empty()).then(|| summarize(&done.send_lateness_us)),
        by_second: (!done.by_second_us.is_empty()).then(|| BySecond::new(&done.by_second_us)),
        started: done.started,
        server_cpu_us_per_exchange: server_cpu.map(|c| c * 1e6 / requests as f64),
        server_cores: server_cpu.map(|c| c / wall.as_secs_f64()),
        generator_cpu_us_per_request: (self_after.cpu_secs - self_before.cpu_secs) * 1e6 / requests as f64,
    })
}

/// The soak: open loop at `rate` for `duration` with tokens minted while
/// sending (so every `jti` is fresh and replay records expire and get
/// purged as in production), reporting memory every `--report-every`.
async fn soak_phase(
    args: &Args,
    under: &Under,
    minter: &Minter,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Value> {
    let total = (rate * duration.as_secs_f64()).round() as usize;
    // Real GitHub token lifetime: replay records then expire (exp + 60 s)
    // during the soak, and the server's purge must keep up.
    let mut minter = minter.clone();
    minter.set_lifetime(writ_testkit::GITHUB_TOKEN_LIFETIME_SECS);
    let threads = args.mint_threads.unwrap_or(2);
    let capacity = (rate as usize).clamp(64, 20_000);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(capacity);
    let stop = Arc::new(AtomicBool::new(false));
    let minting = tokens::stream(minter, threads, tx, stop.clone());
    println!(
        "soak: {total} exchanges at {rate:.0}/s for {}, tokens minted on {threads} threads while sending",
        humantime::format_duration(duration)
    );
    let rec = Arc::new(Recorder::default());
    let source = Arc::new(Source::Stream(Arc::new(tokio::sync::Mutex::new(rx))));
    let runner = {
        let (target, rec) = (under.target.clone(), rec.clone());
        let max_in_flight = args.max_in_flight.max(1);
        tokio::spawn(async move {
            let conns = load::connect_all(&target, max_in_flight).await;
            load::open_loop(conns, source, rate, total, rec).await.0
        })
    };
    let started = Instant::now();
    let server_before = under.pid.map(|p| procstat::sample(Some(p))).transpose()?;
    let mut samples = Vec::new();
    println!("  time    ok        errors  rate/s   p50 ms  p99 ms  max ms  server RSS MiB  db MiB  wal MiB");
    let mut ticker = tokio::time::interval(args.report_every);
    ticker.tick().await;
    let mut last_ok = 0;
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = wait_finished(&runner) => {}
        }
        let (interval, ok, errors) = rec.take_interval();
        let s = summarize(&interval);
        let rss = under.pid.and_then(|p| procstat::sample(Some(p)).ok()).map(|s| mib(s.rss_kib));
        let (db, wal) = under.spawned.as_ref().map_or((None, None), |sp| {
            let size = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| m.len() as f64 / 1048576.0);
            (size(&sp.db_path), size(&sp.db_path.with_extension("db-wal")))
        });
        let now = Instant::now();
        let rate_now = (ok - last_ok) as f64 / now.duration_since(last_at).as_secs_f64();
        (last_ok, last_at) = (ok, now);
        let t = started.elapsed().as_secs_f64();
        println!(
            "  {t:>5.0}s  {ok:<9} {errors:<7} {rate_now:>7.0}  {:>6.2}  {:>6.2}  {:>6.2}  {:>14}  {:>6}  {:>7}",
            s.p50,
            s.p99,
            s.max,
            rss.map_or("-".into(), |r| format!("{r:.1}")),
            db.map_or("-".into(), |r| format!("{r:.1}")),
            wal.map_or("-".into(), |r| format!("{r:.1}")),
        );
        samples.push(json!({"t_s": t, "ok": ok, "errors": errors, "rate_per_s": rate_now,
            "latency": s.to_json(), "server_rss_mib": rss, "db_mib": db, "wal_mib": wal}));
        if runner.is_finished() {
            break;
        }
    }
    let wall = runner.await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(minting);
    let server_after = under.pid.map(|p| procstat::sample(Some(p))).transpose()?;
    let done = rec.finish();
    let all = summarize(&done.latencies_us);
    let rss: Vec<f64> = samples.iter().filter_map(|s| s["server_rss_mib"].as_f64()).collect();
    let (rss_first, rss_max, rss_last) = (
        rss.first().copied().unwrap_or(f64::NAN),
        rss.iter().copied().fold(f64::NAN, f64::max),
        rss.last().copied().unwrap_or(f64::NAN),
    );
    let cpu = server_before.zip(server_after).map(|(a, b)| (b.cpu_secs - a.cpu_secs) * 1e6 / done.ok.max(1) as f64);
    println!(
        "soak done: {} distinct jtis exchanged, {} errors in {:.0} s ({:.0}/s); {all}",
        done.ok,
        done.error_count(),
        wall.as_secs_f64(),
        done.ok as f64 / wall.as_secs_f64()
    );
    println!(
        "  server RSS: first report {rss_first:.1} MiB, max {rss_max:.1} MiB, last {rss_last:.1} MiB{}",
        cpu.map_or(String::new(), |c| format!("; server CPU {c:.0} µs/exchange"))
    );
    if let Some(e) = &done.first_error {
        println!("  first error: {}", e.chars().take(300).collect::<String>());
    }
    Ok(json!({
        "rate": rate, "duration_s": duration.as_secs_f64(), "ok": done.ok, "errors": done.error_count(),
        "latency": all.to_json(), "server_cpu_us_per_exchange": cpu,
        "rss_mib": {"first": rss_first, "max": rss_max, "last": rss_last}, "samples": samples,
    }))
}

async fn wait_finished<T>(handle: &tokio::task::JoinHandle<T>) {
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn parse_claims(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("--extra-claims must be a JSON object, e.g. '{\"email\":\"ci@acme.test\"}'".into()),
        Err(e) => Err(format!("--extra-claims is not JSON: {e}")),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request on every connection with
    /// `status` and, for 200, a JSON body holding the next nonce.
    async fn nonce_server(status: u16) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let counter = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        // Requests carry no body: each ends at its blank line.
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let body = if status == 200 {
                                format!(r#"{{"nonce":"n{}","expires_in":600}}"#, counter.fetch_add(1, Ordering::SeqCst))
                            } else {
                                r#"{"error":"nope"}"#.to_owned()
                            };
                            let response =
                                format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                            if socket.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Target { addr, host: addr.to_string(), path: "/token".into(), content_type: "text/plain".into() }
    }

    #[tokio::test]
    async fn nonces_are_fetched_once_each_and_none_without_a_path() {
        let target = nonce_server(200).await;
        let nonces = Nonces { target: target.clone(), path: Some("/nonce".into()) };
        let got = nonces.fetch(21).await.expect("nonces");
        assert_eq!(got.len(), 21);
        let distinct: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), 21, "every token needs its own nonce: {got:?}");
        assert!(Nonces { target, path: None }.fetch(5).await.expect("no nonces").is_empty());
    }

    #[tokio::test]
    async fn a_refused_nonce_request_stops_the_run_with_the_answer() {
        let nonces = Nonces { target: nonce_server(503).await, path: Some("/nonce".into()) };
        let err = nonces.fetch(3).await.expect_err("must fail").to_string();
        assert!(err.contains("POST /nonce answered HTTP 503") && err.contains("nope"), "{err}");
    }

    fn open_phase(server_us: Option<f64>, server_cores: Option<f64>) -> Phase {
        Phase {
            wall: Duration::from_secs(10),
            ok: 100_000,
            errors: 0,
            error_classes: json!({}),
            first_error: None,
            throughput: 10_000.0,
            summary: Summary::default(),
            send_lateness: None,
            by_second: None,
            started: None,
            server_cpu_us_per_exchange: server_us,
            server_cores,
            generator_cpu_us_per_request: 18.0,
        }
    }

    #[test]
    fn the_premium_compares_the_open_loop_with_the_best_closed_loop() {
        let premium = Premium::of(&open_phase(Some(121.0), Some(1.21)), Some(86.0)).expect("both measured");
        assert!((premium.ratio() - 121.0 / 86.0).abs() < 1e-9);
        assert!((premium.generator_cores - 0.18).abs() < 1e-9, "18 µs per request at 10,000/s");
        let line = premium.line(2);
        assert!(line.contains("121 µs per exchange against 86") && line.contains("= 1.41 x"), "{line}");
        assert!(line.contains("1.21 + 0.18 = 1.39 of 2 cores busy"), "{line}");
        assert_eq!(premium.to_json()["closed_cpu_us_per_exchange"], 86.0);
        // No line for a server whose CPU was not measured, or a phase
        // that granted nothing.
        assert!(Premium::of(&open_phase(None, None), Some(86.0)).is_none());
        assert!(Premium::of(&open_phase(Some(121.0), Some(1.21)), None).is_none());
        assert!(Premium::of(&open_phase(Some(121.0), Some(1.21)), Some(0.0)).is_none());
    }

    #[test]
    fn extra_claims_must_be_a_json_object() {
        assert_eq!(parse_claims(r#"{"email":"a@b"}"#).expect("object")["email"], "a@b");
        assert!(parse_claims("[1]").expect_err("array").contains("must be a JSON object"));
        assert!(parse_claims("{").expect_err("broken").contains("is not JSON"));
    }
}
