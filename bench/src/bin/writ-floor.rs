//! `writ-floor`: the least an OIDC-exchange server can do per exchange, as
//! a yardstick for writ on the same machine (docs/PERFORMANCE.md, "The
//! floor").
//!
//! The crypto ceiling counts only the signature check and the signature.
//! Every real exchange also pays for HTTP on loopback, parsing, a durable
//! record and the wake-ups between threads, and on a small virtual machine
//! those can cost as much as the crypto. This server does each of those
//! once, in the plainest way that still holds the same guarantees, and
//! nothing else:
//!
//! - one HTTP/1.1 route (`POST /v1/exchange`, the same body as writ's);
//! - RS256 verified with the issuer's key parsed once (fetched from its
//!   JWKS on first use), `iss`, `aud`, `exp`, `nbf` and `iat` checked;
//! - a fixed rule instead of a policy: `repository`, `ref` and
//!   `environment` must equal the flags' values;
//! - each `jti` accepted once (a fingerprint in memory, and the `jti` in
//!   the durable record);
//! - a writ-shaped token minted with Ed25519;
//! - one record per exchange (about the size of writ's audit, replay and
//!   issued-token rows together) written by a group-commit thread that
//!   answers only after `fdatasync`, with writ's 2 ms least interval
//!   between commits, into a file that it overwrites in a ring, as SQLite
//!   reuses its WAL.
//!
//! It keeps no audit query, no policy language, no pins, no rate limits,
//! no metrics and no logging. It is not a product and serves nothing but
//! the benchmark: run it, then point `writ-bench --server` at it (the
//! method in docs/PERFORMANCE.md).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, oneshot};

// The allocator writ's binary uses, so that the two compare like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The least work per exchange: HTTP, RS256 verify, a fixed rule, a replay
/// check, an Ed25519-signed token and a durable record, nothing else.
#[derive(Parser, Debug)]
#[command(name = "writ-floor")]
struct Args {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The issuer whose RS256 tokens are accepted, on loopback (its JWKS is
    /// fetched from `<issuer>/.well-known/jwks` on first use).
    #[arg(long)]
    issuer: String,
    /// The `aud` tokens must carry.
    #[arg(long)]
    audience: String,
    /// The `repository` claim the fixed rule requires.
    #[arg(long, default_value = "acme/web")]
    repository: String,
    /// The `ref` claim the fixed rule requires.
    #[arg(long, default_value = "refs/heads/main")]
    git_ref: String,
    /// The `environment` claim the fixed rule requires.
    #[arg(long, default_value = "production")]
    environment: String,
    /// Directory of the record file (`floor.log`, 64 MiB, overwritten in a
    /// ring); it must be on the disk under test.
    #[arg(long)]
    data_dir: PathBuf,
    /// Least time from the start of one commit to the start of the next
    /// (writ's is 2 ms).
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    commit_interval: Duration,
}

struct Floor {
    args: Args,
    keys: OnceCell<HashMap<String, ParsedPublicKey>>,
    signer: Ed25519KeyPair,
    /// Fingerprints of the `jti`s taken, in 256 tables by first byte, so
    /// that no single table grows (and stalls every exchange) all at once;
    /// writ's replay index does the same.
    used: Mutex<Vec<HashSet<[u8; 16]>>>,
    commits: std::sync::mpsc::SyncSender<(Vec<u8>, oneshot::Sender<std::io::Result<()>>)>,
    http: reqwest::Client,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("--listen {}: writ-floor is a benchmark yardstick and listens on loopback only", args.listen);
    }
    let issuer_on_loopback = url::Url::parse(&args.issuer).ok().and_then(|u| match u.host() {
        Some(url::Host::Ipv4(ip)) => Some(ip.is_loopback()),
        Some(url::Host::Ipv6(ip)) => Some(ip.is_loopback()),
        Some(url::Host::Domain(name)) => Some(name == "localhost"),
        None => None,
    });
    if issuer_on_loopback != Some(true) {
        bail!(
            "--issuer {}: give the URL of the fake issuer writ-bench starts on loopback (e.g. http://127.0.0.1:9301); \
             writ-floor fetches keys from nowhere else",
            args.issuer
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let ring = Ring::create(&args.data_dir.join("floor.log"))?;
    let (commits, queue) = std::sync::mpsc::sync_channel(4096);
    let interval = args.commit_interval;
    let timings = Arc::new(Mutex::new(Vec::new()));
    let writer_timings = timings.clone();
    std::thread::Builder::new()
        .name("floor-writer".into())
        .spawn(move || group_commit(ring, queue, interval, &writer_timings))?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).context("generating the signing key")?;
    let signer = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).context("loading the signing key")?;
    let floor = Arc::new(Floor {
        args,
        keys: OnceCell::new(),
        signer,
        used: Mutex::new((0..256).map(|_| HashSet::new()).collect()),
        commits,
        http: reqwest::Client::new(),
    });
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(floor))?;
    report(&timings.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(())
}

async fn serve(floor: Arc<Floor>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(floor.args.listen).await?;
    // The same line writ prints, so scripts find the port the same way.
    eprintln!("writ-floor listening on {}", listener.local_addr()?);
    let app = Router::new().route("/v1/exchange", post(exchange)).with_state(floor);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(stop).await?;
    Ok(())
}

/// Prints the commits' sizes and times on the way out (SIGTERM or Ctrl-C).
fn report(timings: &[(u32, u32)]) {
    if timings.is_empty() {
        return;
    }
    let writes: u64 = timings.iter().map(|&(w, _)| u64::from(w)).sum();
    let mut micros: Vec<u32> = timings.iter().map(|&(_, m)| m).collect();
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    eprintln!(
        "writ-floor: {} commits, {:.1} writes each; commit time p50 {} µs, p99 {} µs, max {} µs",
        micros.len(),
        writes as f64 / micros.len() as f64,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The record file: written through once at start, then overwritten in a
/// ring, so that a commit's `fdatasync` flushes data blocks only, as a
/// reused SQLite WAL's does (an append would also change the file's size
/// on every commit).
struct Ring {
    file: std::fs::File,
    at: u64,
}

/// The ring's size: far more than one commit ever writes.
const RING_BYTES: u64 = 64 << 20;

impl Ring {
    fn create(path: &std::path::Path) -> anyhow::Result<Ring> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..RING_BYTES / zeros.len() as u64 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        Ok(Ring { file, at: 0 })
    }

    /// Writes `bytes` at the ring's cursor (wrapping to the start when they
    /// would run past its end) and syncs them.
    fn commit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        if self.at + bytes.len() as u64 > RING_BYTES {
            self.at = 0;
        }
        self.file.write_all_at(bytes, self.at)?;
        self.at += bytes.len() as u64;
        self.file.sync_data()
    }
}

type Queue = std::sync::mpsc::Receiver<(Vec<u8>, oneshot::Sender<std::io::Result<()>>)>;

/// Writes each batch of records with one write and one `fdatasync`, and
/// only then answers the batch's callers.
fn group_commit(mut ring: Ring, queue: Queue, interval: Duration, timings: &Mutex<Vec<(u32, u32)>>) {
    let mut last = Instant::now().checked_sub(interval).unwrap_or_else(Instant::now);
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut replies = Vec::with_capacity(512);
    while let Ok(first) = queue.recv() {
        let fill = interval.saturating_sub(last.elapsed());
        if !fill.is_zero() {
            std::thread::sleep(fill);
        }
        last = Instant::now();
        let mut next = Some(first);
        while let Some((record, reply)) = next.take() {
            buffer.extend_from_slice(&record);
            replies.push(reply);
            if replies.len() < 512 {
                next = queue.try_recv().ok();
            }
        }
        let started = Instant::now();
        let result = ring.commit(&buffer);
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        timings.lock().unwrap_or_else(PoisonError::into_inner).push((replies.len() as u32, micros));
        buffer.clear();
        for reply in replies.drain(..) {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[derive(Deserialize)]
struct ExchangeBody<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    #[serde(borrow)]
    org: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
}

/// The claims the floor reads; any others are skipped.
#[derive(Deserialize)]
struct Claims<'a> {
    #[serde(borrow)]
    iss: Cow<'a, str>,
    #[serde(borrow)]
    aud: Cow<'a, str>,
    #[serde(borrow)]
    sub: Cow<'a, str>,
    #[serde(borrow)]
    jti: Cow<'a, str>,
    exp: i64,
    iat: i64,
    nbf: Option<i64>,
    #[serde(borrow)]
    repository: Cow<'a, str>,
    #[serde(borrow, rename = "ref")]
    git_ref: Cow<'a, str>,
    #[serde(borrow)]
    environment: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workflow_ref: Option<Cow<'a, str>>,
    #[serde(borrow)]
    run_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    actor: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sha: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct Minted<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    scope: &'a str,
    org: &'a str,
    apps: [&'a str; 1],
    ci: Ci<'a>,
}

#[derive(Serialize)]
struct Ci<'a> {
    issuer: &'a str,
    repository: &'a str,
    #[serde(rename = "ref")]
    git_ref: &'a str,
    environment: Option<&'a str>,
    workflow_ref: Option<&'a str>,
    run_id: Option<&'a str>,
    sha: Option<&'a str>,
}

/// One durable line per exchange: what writ's audit, replay and
/// issued-token rows hold between them.
#[derive(Serialize)]
struct Record<'a> {
    time: i64,
    org: &'a str,
    issuer: &'a str,
    subject: &'a str,
    subject_jti: &'a str,
    subject_exp: i64,
    repository: &'a str,
    #[serde(rename = "ref")]
    git_ref: &'a str,
    environment: Option<&'a str>,
    workflow_ref: Option<&'a str>,
    run_id: Option<&'a str>,
    actor: Option<&'a str>,
    permissions: &'a str,
    token_jti: &'a str,
    token_expires_at: i64,
}

#[derive(Serialize)]
struct Answer<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
}

const TTL_SECS: i64 = 900;
const SCOPE: &str = "deploy logs:read";

async fn exchange(State(floor): State<Arc<Floor>>, body: Bytes) -> Response {
    match exchange_inner(&floor, &body).await {
        Ok(answer) => ([(header::CONTENT_TYPE, "application/json")], answer).into_response(),
        Err((status, message)) => (status, message).into_response(),
    }
}

type Refusal = (StatusCode, &'static str);

/// A 400 that says what was wrong with the request or its token.
fn refused(why: &'static str) -> Refusal {
    (StatusCode::BAD_REQUEST, why)
}

async fn exchange_inner(floor: &Floor, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let request: ExchangeBody<'_> = serde_json::from_slice(body)
        .map_err(|_| refused(r#"invalid_request: the body must be JSON {"token": "<OIDC token>", "org": "<org>"}"#))?;
    let token = request.token.as_ref();
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused("invalid_grant: the token is not a JWS of three dot-separated parts"));
    };
    const MALFORMED: &str = "invalid_grant: a part of the token is not base64url-encoded JSON";
    let header_json = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| refused(MALFORMED))?;
    let header: Header<'_> = serde_json::from_slice(&header_json).map_err(|_| refused(MALFORMED))?;
    if header.alg != "RS256" {
        return Err(refused("invalid_grant: only RS256 tokens are accepted"));
    }
    let keys = floor.keys.get_or_try_init(|| fetch_keys(floor)).await.map_err(|e| {
        eprintln!("writ-floor: fetching the issuer's keys: {e:#}");
        (StatusCode::SERVICE_UNAVAILABLE, "issuer keys unavailable")
    })?;
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.get(kid))
        .ok_or(refused("invalid_grant: the token's kid names no key of the issuer"))?;
    const FORGED: &str = "invalid_grant: the token's signature does not verify with the issuer's key";
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| refused(FORGED))?;
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    key.verify_sig(signed.as_bytes(), &signature).map_err(|_| refused(FORGED))?;
    let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| refused(MALFORMED))?;
    let claims: Claims<'_> = serde_json::from_slice(&payload)
        .map_err(|_| refused("invalid_grant: the token lacks a claim the floor needs, or one has the wrong type"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let in_time = claims.exp + 60 > now && claims.iat <= now + 60 && claims.nbf.is_none_or(|nbf| nbf <= now + 60);
    if claims.iss != floor.args.issuer {
        return Err(refused("invalid_grant: the token's iss is not the --issuer"));
    }
    if claims.aud != floor.args.audience {
        return Err(refused("invalid_grant: the token's aud is not the --audience"));
    }
    if !in_time {
        return Err(refused("invalid_grant: the token has expired or is not valid yet"));
    }
    if claims.repository != floor.args.repository
        || claims.git_ref != floor.args.git_ref
        || claims.environment.as_deref() != Some(floor.args.environment.as_str())
    {
        return Err(refused(
            "invalid_grant: the fixed rule wants --repository, --git-ref and --environment; the token names others",
        ));
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, claims.jti.as_bytes());
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&digest.as_ref()[..16]);
    let fresh =
        floor.used.lock().unwrap_or_else(PoisonError::into_inner)[usize::from(fingerprint[0])].insert(fingerprint);
    if !fresh {
        return Err(refused("invalid_grant: this token was already exchanged"));
    }

    let jti = uuid::Uuid::now_v7().to_string();
    let minted = Minted {
        iss: "https://writ-floor.invalid",
        aud: "https://api.platform.example",
        sub: format!("github:{}", claims.sub),
        iat: now,
        nbf: now,
        exp: now + TTL_SECS,
        jti: &jti,
        scope: SCOPE,
        org: &request.org,
        apps: ["web"],
        ci: Ci {
            issuer: "github",
            repository: &claims.repository,
            git_ref: &claims.git_ref,
            environment: claims.environment.as_deref(),
            workflow_ref: claims.workflow_ref.as_deref(),
            run_id: claims.run_id.as_deref(),
            sha: claims.sha.as_deref(),
        },
    };
    let access_token = mint(&floor.signer, &minted).map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "minting"))?;

    let record = Record {
        time: now,
        org: &request.org,
        issuer: "github",
        subject: &claims.sub,
        subject_jti: &claims.jti,
        subject_exp: claims.exp,
        repository: &claims.repository,
        git_ref: &claims.git_ref,
        environment: claims.environment.as_deref(),
        workflow_ref: claims.workflow_ref.as_deref(),
        run_id: claims.run_id.as_deref(),
        actor: claims.actor.as_deref(),
        permissions: SCOPE,
        token_jti: &jti,
        token_expires_at: now + TTL_SECS,
    };
    let mut line = Vec::with_capacity(768);
    serde_json::to_writer(&mut line, &record).map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "record"))?;
    line.push(b'\n');
    let (reply, committed) = oneshot::channel();
    const UNAVAILABLE: Refusal = (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable");
    // A full queue blocks this worker briefly, as a bounded queue should.
    floor.commits.send((line, reply)).map_err(|_| UNAVAILABLE)?;
    committed.await.map_err(|_| UNAVAILABLE)?.map_err(|_| UNAVAILABLE)?;

    let mut answer = Vec::with_capacity(access_token.len() + 64);
    let shaped = Answer { access_token: &access_token, token_type: "Bearer", expires_in: TTL_SECS };
    serde_json::to_writer(&mut answer, &shaped).map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "answer"))?;
    Ok(answer)
}

fn mint(signer: &Ed25519KeyPair, claims: &Minted<'_>) -> anyhow::Result<String> {
    const HEADER: &str = r#"{"alg":"EdDSA","typ":"at+jwt","kid":"floor-1"}"#;
    let payload = serde_json::to_vec(claims)?;
    let mut jws = String::with_capacity(80 + payload.len() * 4 / 3 + 90);
    URL_SAFE_NO_PAD.encode_string(HEADER, &mut jws);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut jws);
    let signature = signer.sign(jws.as_bytes());
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
    Ok(jws)
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    n: Option<String>,
    e: Option<String>,
}

async fn fetch_keys(floor: &Floor) -> anyhow::Result<HashMap<String, ParsedPublicKey>> {
    let url = format!("{}/.well-known/jwks", floor.args.issuer.trim_end_matches('/'));
    let jwks: Jwks = floor.http.get(&url).send().await?.error_for_status()?.json().await?;
    let mut keys = HashMap::new();
    for jwk in jwks.keys.into_iter().filter(|k| k.kty == "RSA") {
        let (Some(n), Some(e)) = (jwk.n, jwk.e) else { continue };
        let n = URL_SAFE_NO_PAD.decode(n)?;
        let e = URL_SAFE_NO_PAD.decode(e)?;
        let key = RsaPublicKeyComponents { n: &n[..], e: &e[..] }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .map_err(|e| anyhow::anyhow!("parsing key {}: {e:?}", jwk.kid))?;
        keys.insert(jwk.kid, key);
    }
    if keys.is_empty() {
        bail!("{url} holds no RSA key");
    }
    Ok(keys)
}
