//! Two replicas in one process — two `AppState`s with their background
//! tasks, routers driven without sockets — sharing a fresh PostgreSQL
//! database (from `DATABASE_URL`), with pinned clocks, so a key rotation
//! can be followed through its whole life: pre-publication, activation,
//! retirement. At no point may a token signed by one replica fail to
//! verify on the other. (`tests/tests/cluster.rs` runs real processes.)

use std::io::Write;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use writ_core::policy::SourceFormat;
use writ_server::app::{AppState, Clock, router};
use writ_server::config::Config;
use writ_server::policies::PolicyUpdate;
use writ_server::storage::ManagedBy;
use writ_testkit::{FakeIssuer, IssuerShape};

const POLICY: &str = r#"
org = "acme-prod"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/main"
permissions = ["deploy", "logs:read"]
max_ttl = "15m"
"#;

/// A key-encryption key for tests only (base64 of 32 bytes).
const TEST_KEK: &str = "VEVTVC1PTkxZLWtleS1lbmNyeXB0aW9uLWtleS0wMDA=";
const T0: i64 = 1_900_000_000;
const HOUR: i64 = 3600;

/// A database of this test's own, created from `DATABASE_URL`; `None`
/// (said past the output capture) when it is unset.
async fn fresh_database() -> Option<(String, String)> {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED: replica tests did not run because DATABASE_URL is unset (CI sets it)"
        );
        return None;
    };
    let name = format!("writ_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url).await.expect("connect to DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.expect("create");
    admin.close().await;
    let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    Some((url.to_string(), name))
}

async fn drop_database(name: &str) {
    let admin_url = std::env::var("DATABASE_URL").expect("set");
    let admin = sqlx::PgPool::connect(&admin_url).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&admin)
        .await
        .expect("drop");
    admin.close().await;
}

struct Replica {
    state: AppState,
    router: Router,
    _dir: tempfile::TempDir,
}

async fn replica(url: &str, issuer: &FakeIssuer, clock: &Clock) -> Replica {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kek.key"), TEST_KEK).expect("kek");
    let config = format!(
        r#"
[server]
public_url = "https://writ.test"
[tokens]
audience = "https://api.platform.example"
max_ttl = "15m"
[storage]
url = "{url}"
key_encryption_key_file = "kek.key"
[permissions]
deploy = "Deploy"
"logs:read" = "Read logs"
[[issuers]]
name = "github"
kind = "github"
url = "{}"
"#,
        issuer.url()
    );
    let config = Config::parse(&config, dir.path(), &|_| None).expect("config");
    let state = AppState::build(config, clock.clone()).await.expect("state");
    state.spawn_background();
    Replica { router: router(state.clone()), state, _dir: dir }
}

impl Replica {
    async fn exchange(&self, body: Value) -> (u16, Value) {
        let request = Request::post("/v1/exchange")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    async fn grant(&self, oidc_token: &str) -> (u16, Value) {
        self.exchange(json!({"token": oidc_token, "org": "acme-prod"})).await
    }

    async fn narrow(&self, writ_token: &str) -> (u16, Value) {
        self.exchange(json!({"token": writ_token, "permissions": ["logs:read"]})).await
    }

    fn published(&self, now: i64) -> Vec<String> {
        self.state.keyring.jwks_at(now)["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).expect("header").kid.expect("kid")
}

/// Waits (at most 1 s: the cluster's promise) until `done` holds.
async fn within_a_second(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(1), "{what} took over 1 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_on_one_replica_never_fails_a_verification_on_another() {
    let Some((url, name)) = fresh_database().await else { return };
    let outcome = tokio::spawn(async move {
        let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
        let clock = Clock::pinned(T0);
        let a = replica(&url, &issuer, &clock).await;
        let b = replica(&url, &issuer, &clock).await;
        let first_kid = a.published(T0);
        assert_eq!(first_kid, b.published(T0), "the second replica uses the first one's key");

        let update = PolicyUpdate {
            source: POLICY,
            format: SourceFormat::Toml,
            managed_by: ManagedBy::Api,
            expected_version: Some(0),
            origin: "test",
            author: None,
        };
        a.state.policies.apply(a.state.store.as_ref(), &a.state.catalogue, update, T0).await.expect("policy");
        within_a_second("the policy reaching replica B", || b.state.policies.get("acme-prod").is_some()).await;

        let job = |now: i64| issuer.mint(&issuer.github_claims("https://writ.test", "acme/web", now).build());

        // Rotation starts on A: B publishes the new key within a second,
        // and neither signs with it yet.
        let new_kid = a.state.keyring.rotate(a.state.store.as_ref(), T0).await.expect("rotate");
        within_a_second("the new key reaching replica B", || b.published(T0).contains(&new_kid)).await;
        let (status, before) = b.grant(&job(T0)).await;
        assert_eq!(status, 200, "{before:#}");
        assert_eq!(kid_of(before["token"].as_str().expect("token")), first_kid[0]);

        // Just before activation, A signs with the old key…
        clock.set(T0 + HOUR - 1);
        let (status, old) = a.grant(&job(T0 + HOUR - 1)).await;
        assert_eq!(status, 200, "{old:#}");
        let old = old["token"].as_str().expect("token").to_owned();
        assert_eq!(kid_of(&old), first_kid[0]);

        // …at activation both sign with the new one, and each verifies the
        // other's tokens, old key and new.
        clock.set(T0 + HOUR);
        let (status, new) = b.grant(&job(T0 + HOUR)).await;
        assert_eq!(status, 200, "{new:#}");
        let new = new["token"].as_str().expect("token").to_owned();
        assert_eq!(kid_of(&new), new_kid);
        for (who, r) in [("A", &a), ("B", &b)] {
            let (status, body) = r.narrow(&old).await;
            assert_eq!(status, 200, "replica {who} verifies a token of the old key: {body:#}");
            let (status, body) = r.narrow(&new).await;
            assert_eq!(status, 200, "replica {who} verifies a token of the new key: {body:#}");
            assert_eq!(r.published(T0 + HOUR), vec![new_kid.clone(), first_kid[0].clone()]);
        }

        // Once every token of the old key has expired (15 min + margin),
        // both stop publishing it.
        let retired = T0 + HOUR + 15 * 60 + writ_server::signing::RETIREMENT_MARGIN_SECS;
        assert_eq!(a.published(retired), vec![new_kid.clone()]);
        assert_eq!(b.published(retired), vec![new_kid.clone()]);
    })
    .await;
    drop_database(&name).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
