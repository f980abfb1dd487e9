//! writ-verify against the real writ server, in-process on `127.0.0.1:0`
//! (`writ_server::app::router` served by axum), with a fake GitHub issuer:
//! tokens come from real exchanges, keys from the real JWKS, revocations
//! from the real feed. The server's clock is pinned, so key rotation is
//! shown by moving it, not by waiting.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{AUDIENCE, claims, new_key, now, sign};
use writ_server::app::{AppState, Clock, router};
use writ_server::config::Config;
use writ_testkit::{FakeIssuer, IssuerShape};
use writ_verify::{FeedPoll, Target, Verifier, VerifierConfig, VerifyError};

const PROD_POLICY: &str = r#"
org = "acme-prod"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/main"
environment = "production"
permissions = ["deploy", "logs:read"]
apps = ["web"]
max_ttl = "15m"
"#;

/// A running writ server and what the tests need to reach into it.
struct World {
    issuer: FakeIssuer,
    url: String,
    state: AppState,
    clock: Clock,
    jwks_hits: Arc<AtomicUsize>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("fake issuer");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("policies")).expect("policies dir");
        std::fs::write(dir.path().join("policies/acme-prod.toml"), PROD_POLICY).expect("policy");
        let config = format!(
            r#"
[server]
public_url = "{url}"
audience = "{url}"
[tokens]
audience = "{AUDIENCE}"
[storage]
url = "sqlite://writ.db"
[policies]
dir = "policies"
[permissions]
deploy = "Deploy"
"logs:read" = "Read logs"
[[issuers]]
name = "github"
kind = "github"
url = "{issuer}"
"#,
            issuer = issuer.url()
        );
        let config = Config::parse(&config, dir.path(), &|_| None).expect("config");
        let clock = Clock::pinned(now());
        let state = AppState::build(config, clock.clone()).await.expect("state");
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let hits = jwks_hits.clone();
        let app = router(state.clone()).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                if request.uri().path() == "/.well-known/jwks.json" {
                    hits.fetch_add(1, Ordering::SeqCst);
                }
                next.run(request)
            },
        ));
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve")
        });
        World { issuer, url, state, clock, jwks_hits, http: reqwest::Client::new(), _dir: dir }
    }

    async fn verifier(&self, audience: &str) -> Verifier {
        Verifier::discover(&self.url, VerifierConfig::new(audience)).await.expect("discovery")
    }

    /// Exchanges the production deploy job's OIDC token; returns the
    /// exchange response.
    async fn exchange(&self, permissions: &[&str]) -> Value {
        let oidc = self.issuer.github_claims(&self.url, "acme/web", self.clock.now()).environment("production").build();
        let response = self
            .http
            .post(format!("{}/v1/exchange", self.url))
            .json(&json!({"token": self.issuer.mint(&oidc), "org": "acme-prod", "permissions": permissions}))
            .send()
            .await
            .expect("exchange request");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 200, "{body:#}");
        body
    }

    async fn token(&self, permissions: &[&str]) -> String {
        self.exchange(permissions).await["token"].as_str().expect("token").to_owned()
    }
}

#[tokio::test]
async fn an_exchanged_token_verifies_into_its_grant() {
    let world = World::start().await;
    let verifier = world.verifier(AUDIENCE).await;
    let answer = world.exchange(&["deploy"]).await;
    let grant = verifier.verify(answer["token"].as_str().expect("token")).await.expect("verifies");

    assert_eq!(grant.org(), "acme-prod");
    assert_eq!(grant.permissions(), ["deploy"]);
    assert_eq!(grant.apps(), Some(&["web".to_owned()][..]));
    assert_eq!(grant.machines(), None);
    assert_eq!(grant.subject(), "github:repo:acme/web:environment:production");
    assert_eq!(grant.client_id(), "github:acme/web");
    let expires_in = answer["expires_in"].as_u64().expect("expires_in");
    assert_eq!(grant.expires_at(), UNIX_EPOCH + Duration::from_secs(world.clock.now() as u64 + expires_in));
    let ci = grant.provenance();
    assert_eq!(ci.issuer.as_deref(), Some(world.issuer.url().as_str()));
    assert_eq!(ci.repository.as_deref(), Some("acme/web"));
    assert_eq!(ci.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(ci.environment.as_deref(), Some("production"));
    assert!(ci.run_id.is_some() && ci.sha.is_some());

    assert_eq!(grant.require("acme-prod", "deploy", Target::App("web")), Ok(()));
    let denied = |org, permission, target| grant.require(org, permission, target).expect_err("denied").to_string();
    assert_eq!(denied("acme-staging", "deploy", Target::App("web")), "token is for org acme-prod, not acme-staging");
    assert_eq!(denied("acme-prod", "logs:read", Target::App("web")), "token lacks permission logs:read (has deploy)");
    assert_eq!(denied("acme-prod", "deploy", Target::App("billing")), "token is limited to apps web; not billing");
    assert_eq!(denied("acme-prod", "deploy", Target::Org), "token is limited to apps web; not the whole org acme-prod");
}

#[tokio::test]
async fn an_oidc_id_token_is_not_a_writ_token() {
    let world = World::start().await;
    let verifier = world.verifier(AUDIENCE).await;
    // A CI job's ID token with the platform's audience, from a trusted-looking
    // issuer: still not an access token.
    let oidc = world.issuer.github_claims(AUDIENCE, "acme/web", now()).environment("production").build();
    let err = verifier.verify(&world.issuer.mint(&oidc)).await.expect_err("refused");
    assert_eq!(err, VerifyError::WrongType);
    assert_eq!(world.jwks_hits.load(Ordering::SeqCst), 1, "a foreign token causes no JWKS fetch");
}

#[tokio::test]
async fn a_token_signed_by_an_outside_key_with_writs_kid_is_refused() {
    let world = World::start().await;
    let verifier = world.verifier(AUDIENCE).await;
    let kid = verifier.key_ids().into_iter().next().expect("writ publishes a key");
    let outsider = new_key(&kid);
    let forged = sign(&claims(&world.url, "forged", world.clock.now()), &outsider);
    assert_eq!(verifier.verify(&forged).await, Err(VerifyError::Signature));
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let world = World::start().await;
    let other_platform = world.verifier("https://api.other-platform.example").await;
    let err = other_platform.verify(&world.token(&["deploy"]).await).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "token is for audience https://api.platform.example, not https://api.other-platform.example"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let world = World::start().await;
    let verifier = world.verifier(AUDIENCE).await;
    let answer = world.exchange(&["deploy"]).await;
    let token = answer["token"].as_str().expect("token");
    let exp = world.clock.now() + answer["expires_in"].as_i64().expect("expires_in");
    assert!(verifier.verify_at(token, exp + 29).await.is_ok(), "default leeway 30 s");
    assert_eq!(verifier.verify_at(token, exp + 30).await, Err(VerifyError::Expired { exp, now: exp + 30 }));
}

#[tokio::test]
async fn signing_key_rotation_fails_no_request() {
    let world = World::start().await;
    let verifier = world.verifier(AUDIENCE).await;
    assert_eq!(world.jwks_hits.load(Ordering::SeqCst), 1);
    let t0 = world.clock.now();
    let old_token = world.token(&["deploy"]).await;
    let old_kid = verifier.key_ids();

    // writ publishes the next key an hour before signing with it.
    let new_kid = world.state.keyring.rotate(world.state.store.as_ref(), t0).await.expect("rotate");
    assert!(verifier.verify_at(&world.token(&["deploy"]).await, t0).await.is_ok(), "still the old key");

    // An hour later the new key signs; the first such token makes the
    // verifier fetch the JWKS once, and succeeds.
    let t1 = t0 + 3600;
    world.clock.set(t1);
    let new_token = world.token(&["deploy"]).await;
    let header = jsonwebtoken::decode_header(&new_token).expect("header");
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
    assert!(verifier.verify_at(&new_token, t1).await.is_ok());
    assert_eq!(world.jwks_hits.load(Ordering::SeqCst), 2, "one fetch for the new kid");
    assert!(verifier.verify_at(&world.token(&["deploy"]).await, t1).await.is_ok());
    assert_eq!(world.jwks_hits.load(Ordering::SeqCst), 2, "no further fetch");
    assert!(verifier.key_ids().contains(&new_kid));
    assert!(verifier.key_ids().contains(&old_kid[0]), "the old key stays published while its tokens live");
    // A token the old key signed before the switch still verifies in its lifetime.
    assert!(verifier.verify_at(&old_token, t0 + 60).await.is_ok());
}

#[tokio::test]
async fn a_token_revoked_by_its_holder_is_refused_after_the_next_feed_poll() {
    let world = World::start().await;
    let verifier = world.verifier(AUDIENCE).await;
    assert_eq!(verifier.revocation_status().feed_available, Some(true), "the server has a feed");
    let token = world.token(&["deploy"]).await;
    let kept = world.token(&["deploy"]).await;
    let grant = verifier.verify(&token).await.expect("valid before revocation");

    let response = world
        .http
        .post(format!("{}/oauth/revoke", world.url))
        .form(&[("token", token.as_str()), ("token_type_hint", "access_token")])
        .send()
        .await
        .expect("revoke request");
    assert_eq!(response.status(), 200);
    // Offline verification knows nothing until the feed says so.
    assert!(verifier.verify(&token).await.is_ok());

    let poll = verifier.poll_revocations().await.expect("feed");
    assert!(matches!(poll, FeedPoll::Synced { added: 1, .. }), "{poll:?}");
    assert_eq!(verifier.verify(&token).await, Err(VerifyError::Revoked { jti: grant.jti().to_owned() }));
    assert!(verifier.verify(&kept).await.is_ok(), "other tokens are unaffected");
}
