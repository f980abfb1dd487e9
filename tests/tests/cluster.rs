//! Clusters: two real `writ serve` replicas on loopback sharing a
//! PostgreSQL instance that the test owns (initdb into a temp dir, its own
//! port), so it can stop and start it under load.
//!
//! What a user of a cluster relies on: a policy change made through one
//! replica takes effect on the other within a second; a subject token
//! accepted by one replica is refused by every other; a revocation made on
//! one is honoured by all; a key rotation reaches every replica's JWKS;
//! and with PostgreSQL gone, exchanges fail closed (503 with Retry-After,
//! no token without its audit record), `/readyz` says so, and each replica
//! recovers on its own when PostgreSQL returns.
//!
//! Needs PostgreSQL's server binaries (`/usr/lib/postgresql/*/bin`); as
//! root they run as the `postgres` OS user (initdb refuses root). Without
//! them the tests say they were skipped, past the output capture.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use writ_server::auth::CredentialHash;
use writ_testkit::{FakeIssuer, IssuerShape};

mod common;
use common::{Server, free_port, now};

const ROOT: &str = "writ_root_TEST-ONLY-cluster-000000000000000000000000000000";
/// The replicas' shared `iss` and OIDC audience: in production, the load
/// balancer's URL.
const PUBLIC_URL: &str = "https://writ.cluster.test";
/// A key-encryption key for tests only (base64 of 32 bytes).
const TEST_KEK: &str = "VEVTVC1PTkxZLWtleS1lbmNyeXB0aW9uLWtleS0wMDA=";

const POLICY: &str = r#"
org = "acme-prod"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read"]
"#;

// ---- a PostgreSQL instance of the test's own ----------------------------------

/// A PostgreSQL server in a temporary directory on a free port. Stopped
/// (immediately) and deleted on drop.
struct TestPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres_user: bool,
}

fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: cluster test: {reason}");
}

impl TestPostgres {
    /// Creates and starts the instance, or says why it cannot (`None`).
    fn start() -> Option<TestPostgres> {
        let Some(bin) = postgres_bin() else {
            skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let as_postgres_user = is_root();
        if as_postgres_user {
            // initdb refuses to run as root: hand the directory to the
            // `postgres` OS user and run the server binaries as it.
            let Some((uid, gid)) = postgres_user() else {
                skip("running as root and there is no `postgres` OS user to run initdb as");
                return None;
            };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the data directory's parent");
        }
        let pg = TestPostgres { bin, dir, port: free_port(), as_postgres_user };
        let data = pg.data_dir();
        let init = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        if !init.status.success() {
            skip(&format!("initdb failed: {}", String::from_utf8_lossy(&init.stderr)));
            return None;
        }
        pg.pg_ctl_start();
        Some(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let status = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-o", &options, "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(status.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&status.stderr));
    }

    /// Stops the server the hard way (like a crash or a killed container):
    /// connections drop mid-transaction, committed work survives.
    fn stop(&self) {
        let status = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-m", "immediate", "-D"])
            .arg(self.data_dir())
            .arg("stop")
            .output()
            .expect("run pg_ctl stop");
        assert!(status.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&status.stderr));
    }

    /// Runs one SQL query with psql; rows as lines.
    fn query(&self, sql: &str) -> Vec<String> {
        let out = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-Atc", sql])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-m", "immediate", "-D"]).arg(self.data_dir()).arg("stop").output();
    }
}

/// The newest installed PostgreSQL's `bin` directory.
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn postgres_user() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

// ---- replicas -------------------------------------------------------------------

/// Starts one `writ serve --config` replica on a free port, sharing the
/// database, the key-encryption key and the public URL with its peers.
async fn replica(name: &str, dir: &Path, pg: &TestPostgres, issuer: &FakeIssuer) -> Server {
    let port = free_port();
    let kek = dir.join("kek.key");
    if !kek.exists() {
        std::fs::write(&kek, TEST_KEK).expect("write key-encryption key");
    }
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{PUBLIC_URL}"
[tokens]
audience = "https://api.platform.example"
[storage]
url = "{url}"
key_encryption_key_file = "kek.key"
max_connections = 8
acquire_timeout = "1s"
[permissions]
deploy = "Deploy"
"logs:read" = "Read logs"
[admin]
root_credential_hash = "{root}"
# The load test drives one repository far past the default rate limit.
[limits]
exchanges_per_minute_per_repository = 0
requests_per_second_per_client = 0
[[issuers]]
name = "github"
kind = "github"
url = "{issuer}"
"#,
        url = pg.url(),
        root = CredentialHash::of(ROOT),
        issuer = issuer.url(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write config");
    Server::start(&path, format!("http://127.0.0.1:{port}")).await
}

struct Cluster {
    issuer: FakeIssuer,
    pg: TestPostgres,
    a: Server,
    b: Server,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

/// A database, two replicas, and org `acme-prod` created through replica
/// A with [`POLICY`]. `None` when PostgreSQL cannot run here.
async fn cluster() -> Option<Cluster> {
    let pg = TestPostgres::start()?;
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
    let dir = tempfile::tempdir().expect("tempdir");
    // Started one after the other: the first migrates and creates the
    // signing key, the second finds both.
    let a = replica("a", dir.path(), &pg, &issuer).await;
    let b = replica("b", dir.path(), &pg, &issuer).await;
    let c = Cluster { issuer, pg, a, b, http: reqwest::Client::new(), dir };
    let (status, body) = c.send(c.post(&c.a, "/v1/orgs").json(&json!({"org": "acme-prod", "policy": POLICY}))).await;
    assert_eq!(status, 201, "{body:#}");
    // Replica B hears of the new org through PostgreSQL, in milliseconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready: Value =
            c.http.get(format!("{}/readyz", c.b.url)).send().await.expect("readyz").json().await.expect("json");
        if ready["orgs"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "replica B never loaded the org created through A: {ready:#}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(c)
}

impl Cluster {
    fn post(&self, server: &Server, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", server.url)).bearer_auth(ROOT)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let r = request.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A fresh OIDC token of a `acme/web` job in `environment`.
    fn job(&self, environment: &str) -> String {
        self.issuer.mint(&self.issuer.github_claims(PUBLIC_URL, "acme/web", now()).environment(environment).build())
    }

    async fn exchange(&self, server: &Server, token: &str) -> (u16, Value) {
        self.send(
            self.http.post(format!("{}/v1/exchange", server.url)).json(&json!({"token": token, "org": "acme-prod"})),
        )
        .await
    }
}

/// The `jti` of a writ token (the test trusts its own server's token).
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON");
    claims["jti"].as_str().expect("jti").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_policies_replay_records_revocations_and_keys() {
    let Some(c) = cluster().await else { return };

    // A policy change through A takes effect on B within a second. A
    // staging job is denied (denials do not consume the token) until B
    // has the new version.
    let staging = c.job("staging");
    assert_eq!(c.exchange(&c.b, &staging).await.0, 400, "staging is not allowed yet");
    let widened = POLICY.replace("\"production\"", "[\"production\", \"staging\"]");
    let put = c
        .http
        .put(format!("{}/v1/orgs/acme-prod/policy", c.a.url))
        .bearer_auth(ROOT)
        .header("if-match", "\"v1\"")
        .header("content-type", "application/toml")
        .body(widened);
    let (status, body) = c.send(put).await;
    assert_eq!(status, 200, "{body:#}");
    let changed = Instant::now();
    loop {
        let (status, body) = c.exchange(&c.b, &staging).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 400, "{body:#}");
        assert!(changed.elapsed() < Duration::from_secs(1), "the policy change took over 1 s to reach replica B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = changed.elapsed();
    let _ = writeln!(std::io::stderr().lock(), "policy change reached the other replica in {took:?}");

    // A token accepted by one replica is refused by the other…
    let token = c.job("production");
    let (status, first) = c.exchange(&c.a, &token).await;
    assert_eq!(status, 200, "{first:#}");
    let (status, body) = c.exchange(&c.b, &token).await;
    assert_eq!(status, 400, "{body:#}");
    assert!(body["error_description"].as_str().expect("text").contains("already"), "{body:#}");
    // …also when both race for it.
    let contested = c.job("production");
    let (x, y) = tokio::join!(c.exchange(&c.a, &contested), c.exchange(&c.b, &contested));
    let mut statuses = [x.0, y.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "exactly one replica grants a token: {x:?} {y:?}");

    // B verifies A's tokens (same keys): it narrows one.
    let writ_token = first["token"].as_str().expect("token").to_owned();
    let narrow = json!({"token": writ_token, "permissions": ["logs:read"]});
    let (status, narrowed) = c.send(c.http.post(format!("{}/v1/exchange", c.b.url)).json(&narrow)).await;
    assert_eq!(status, 200, "{narrowed:#}");

    // Revoked through B, refused by A, and in A's feed with its child.
    let jti = jti_of(&writ_token);
    let (status, body) =
        c.send(c.post(&c.b, "/v1/orgs/acme-prod/revocations").json(&json!({"jti": jti, "reason": "test"}))).await;
    assert_eq!(status, 200, "{body:#}");
    let (status, body) = c.send(c.http.post(format!("{}/v1/exchange", c.a.url)).json(&narrow)).await;
    assert_eq!(status, 400, "a revoked token is refused by every replica: {body:#}");
    let feed: Value =
        c.http.get(format!("{}/v1/revocations", c.a.url)).send().await.expect("feed").json().await.expect("json");
    let revoked: Vec<&str> =
        feed["revocations"].as_array().expect("revocations").iter().filter_map(|e| e["jti"].as_str()).collect();
    let child = jti_of(narrowed["token"].as_str().expect("token"));
    assert!(revoked.contains(&jti.as_str()) && revoked.contains(&child.as_str()), "{feed:#}");

    // A key rotation (the operator's `writ keys rotate`, straight on the
    // database) is pre-published by every replica within a second, while
    // the current key keeps signing.
    let jwks = |server: &Server| {
        let url = format!("{}/.well-known/jwks.json", server.url);
        let http = c.http.clone();
        async move {
            let set: Value = http.get(url).send().await.expect("jwks").json().await.expect("json");
            set["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k["kid"].as_str().expect("kid").to_owned())
                .collect::<Vec<_>>()
        }
    };
    let before = jwks(&c.a).await;
    assert_eq!(before, jwks(&c.b).await, "one key set");
    let new_kid = rotate_with_the_cli(c.dir.path());
    let rotated = Instant::now();
    for server in [&c.a, &c.b] {
        while !jwks(server).await.contains(&new_kid) {
            assert!(
                rotated.elapsed() < Duration::from_secs(1),
                "the new key took over 1 s to be published by {}",
                server.url
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (status, body) = c.exchange(&c.b, &c.job("production")).await;
    assert_eq!(status, 200, "{body:#}");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(body["token"].as_str().expect("token").split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(header["kid"], before[0].as_str(), "the pre-published key does not sign yet");
}

/// `writ keys rotate --config` with replica A's config, as an operator
/// runs it; returns the new key's kid.
fn rotate_with_the_cli(dir: &Path) -> String {
    let out = Command::new(common::writ_bin())
        .args(["keys", "rotate", "--config"])
        .arg(dir.join("a.toml"))
        .output()
        .expect("run writ keys rotate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "writ keys rotate: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let kid = stdout.strip_prefix("published signing key ").and_then(|rest| rest.split(';').next());
    kid.unwrap_or_else(|| panic!("no kid in {stdout:?}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_fails_closed_and_replicas_recover_by_themselves() {
    let Some(c) = cluster().await else { return };
    let c = Arc::new(c);

    // Load: four workers exchanging fresh tokens, alternating replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (c, stop) = (Arc::clone(&c), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    let server = if i % 2 == 0 { &c.a } else { &c.b };
                    i += 1;
                    let token = c.job("production");
                    let response = c
                        .http
                        .post(format!("{}/v1/exchange", server.url))
                        .json(&json!({"token": token, "org": "acme-prod"}))
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await;
                    let Ok(r) = response else {
                        seen.push((0, false, None));
                        continue;
                    };
                    let status = r.status().as_u16();
                    let retry_after = r.headers().contains_key("retry-after");
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    seen.push((status, retry_after, body["token"].as_str().map(jti_of)));
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    c.pg.stop();
    let stopped = Instant::now();
    // Both replicas say they are not ready, and the load meets 503s with
    // Retry-After for a while.
    for server in [&c.a, &c.b] {
        wait_for_readyz(&c.http, server, 503, "readyz reports storage unavailable").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = stopped.elapsed();

    c.pg.pg_ctl_start();
    let restarted = Instant::now();
    for server in [&c.a, &c.b] {
        wait_for_readyz(&c.http, server, 200, "the replica recovers by itself").await;
    }
    // Exchanges succeed again on both.
    for server in [&c.a, &c.b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _) = c.exchange(server, &c.job("production")).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{} did not grant again after PostgreSQL returned", server.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let recovered = restarted.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.expect("worker"));
    }

    let granted: Vec<&String> =
        results.iter().filter_map(|(s, _, jti)| (*s == 200).then_some(jti.as_ref()).flatten()).collect();
    let unavailable = results.iter().filter(|(s, _, _)| *s == 503).count();
    let _ = writeln!(
        std::io::stderr().lock(),
        "under load: {} granted, {unavailable} unavailable; outage {outage:?}, recovered {recovered:?} after restart",
        granted.len()
    );
    assert!(unavailable > 0, "the outage was seen by the load");
    assert!(granted.len() > 10, "the load ran before and after the outage");
    for (status, retry_after, _) in &results {
        assert!(matches!(status, 200 | 503), "only grants and fail-closed 503s, got {status}");
        if *status == 503 {
            assert!(retry_after, "every 503 says when to retry");
        }
    }
    // No token without its audit record (and issued-token row).
    let audited: std::collections::HashSet<String> = c
        .pg
        .query("SELECT token_jti FROM audit WHERE outcome = 'granted' AND token_jti IN (SELECT jti FROM issued_tokens)")
        .into_iter()
        .collect();
    for jti in granted {
        assert!(audited.contains(jti), "token {jti} was returned without its audit record");
    }
}

/// Polls `/readyz` until it answers `status`, for at most 60 s.
async fn wait_for_readyz(http: &reqwest::Client, server: &Server, status: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = http.get(format!("{}/readyz", server.url)).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {} /readyz still answers {got}", server.url);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
