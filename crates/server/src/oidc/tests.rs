//! The key cache against fake issuers on loopback: discovery, the
//! issuer-equality check, rotation, the refresh cooldown, outages, pinned
//! keys, lookalike issuers and body caps. Time is stepped through `now`,
//! never slept.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::get;
use serde_json::{Value, json};
use writ_core::issuer::IssuerKind;
use writ_testkit::{FakeIssuer, IssuerShape, TestKey};

use super::*;

const AUD: &str = "https://writ.example.com";

fn now() -> i64 {
    unix_now()
}

fn cfg() -> VerifyConfig {
    VerifyConfig::new(AUD)
}

/// Limits with a real 60 s cooldown: tests step `now` past it.
fn limits() -> FetchLimits {
    FetchLimits::default()
}

fn discovery(name: &str, url: &str) -> IssuerEntry {
    IssuerEntry { spec: IssuerSpec::new(name, IssuerKind::GitHub, url), keys: KeySource::Discovery }
}

fn pinned(name: &str, url: &str, jwks: Value) -> IssuerEntry {
    IssuerEntry {
        spec: IssuerSpec::new(name, IssuerKind::GitHub, url),
        keys: KeySource::Pinned(serde_json::from_value(jwks).expect("a JWK set")),
    }
}

async fn github() -> FakeIssuer {
    FakeIssuer::start(IssuerShape::GitHub).await.expect("fake issuer starts")
}

/// A token from `issuer` for `acme/web`, issued at `at`.
fn token(issuer: &FakeIssuer, at: i64) -> String {
    issuer.mint(&issuer.github_claims(AUD, "acme/web", at).build())
}

/// A correctly signed token whose header names a kid nobody publishes.
fn garbage_kid_token(issuer: &FakeIssuer, at: i64, kid: &str) -> String {
    issuer.current_key().sign_with_header(
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        &issuer.github_claims(AUD, "acme/web", at).build(),
    )
}

/// A loopback listener and its base URL, for hand-made issuers whose
/// documents must name their own URL.
async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    (listener, url)
}

/// Serves `router` on `listener` in the background.
fn serve(listener: tokio::net::TcpListener, router: Router) {
    tokio::spawn(async move { axum::serve(listener, router).await });
}

#[tokio::test]
async fn discovery_then_verify_and_the_keys_are_cached() {
    let fake = github().await;
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], limits()).expect("valid config");
    let t = now();
    let claims = issuers.verify(&token(&fake, t), &cfg(), t).await.expect("verifies");
    assert_eq!(claims.issuer_name(), "github");
    assert_eq!(claims.get_str("repository").as_deref(), Some("acme/web"));
    issuers.verify(&token(&fake, t), &cfg(), t + 1).await.expect("verifies again");
    assert_eq!((fake.discovery_hits(), fake.jwks_hits()), (1, 1), "one discovery, one JWKS fetch");
    assert!(issuers.ready());
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let fake = github().await;
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], limits()).expect("valid config");
    let t = now();
    let others = [format!("{}/", fake.url()), "https://token.actions.githubusercontent.com".to_owned()];
    // Each attempt 61 s after the last, past the cooldown.
    for (attempt, other) in (0..).zip(others) {
        fake.set_discovery_issuer(Some(other.clone()));
        let at = t + 61 * attempt;
        let err = issuers.verify(&token(&fake, at), &cfg(), at).await.expect_err("issuer mismatch");
        assert_eq!(err, VerifyError::KeysUnavailable { issuer: "github".to_owned() }, "{other}");
    }
    assert_eq!(fake.discovery_hits(), 2);
    assert_eq!(fake.jwks_hits(), 0, "the JWKS of a mismatched issuer is never fetched");

    // The document naming the configured issuer exactly is accepted.
    fake.set_discovery_issuer(None);
    let at = t + 61 * 2;
    issuers.verify(&token(&fake, at), &cfg(), at).await.expect("exact issuer");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_then_verifies() {
    let fake = github().await;
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], limits()).expect("valid config");
    let t = now();
    issuers.verify(&token(&fake, t), &cfg(), t).await.expect("first key");
    fake.rotate();
    let later = t + 61;
    let rotated = token(&fake, later);
    issuers.verify(&rotated, &cfg(), later).await.expect("new kid after one refresh");
    assert_eq!(fake.jwks_hits(), 2);
    issuers.verify(&token(&fake, later), &cfg(), later + 1).await.expect("cached new key");
    assert_eq!(fake.jwks_hits(), 2, "the new key is cached");
}

#[tokio::test]
async fn unknown_kids_trigger_at_most_one_fetch_per_cooldown() {
    let fake = github().await;
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], limits()).expect("valid config");
    let t = now();
    issuers.verify(&token(&fake, t), &cfg(), t).await.expect("primes the cache");
    assert_eq!(fake.jwks_hits(), 1);

    // Within the cooldown of the first fetch: no refetch at all.
    let err = issuers.verify(&garbage_kid_token(&fake, t, "garbage-0"), &cfg(), t + 30).await;
    assert_eq!(err.expect_err("unknown kid"), VerifyError::UnknownKey);
    assert_eq!(fake.jwks_hits(), 1);

    // Past it: one refresh, then none for the next garbage kid.
    for (at, kid) in [(t + 61, "garbage-1"), (t + 62, "garbage-2"), (t + 120, "garbage-3")] {
        let err = issuers.verify(&garbage_kid_token(&fake, t, kid), &cfg(), at).await;
        assert_eq!(err.expect_err("unknown kid"), VerifyError::UnknownKey, "{kid}");
    }
    assert_eq!(fake.jwks_hits(), 2, "one refresh in [t+61, t+121)");

    let err = issuers.verify(&garbage_kid_token(&fake, t, "garbage-4"), &cfg(), t + 122).await;
    assert_eq!(err.expect_err("unknown kid"), VerifyError::UnknownKey);
    assert_eq!(fake.jwks_hits(), 3, "the next cooldown allows the next refresh");
}

#[tokio::test]
async fn concurrent_first_fetches_of_one_issuer_coalesce() {
    let fake = github().await;
    let no_cooldown = FetchLimits { refresh_cooldown: Duration::ZERO, ..limits() };
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], no_cooldown).expect("valid config");
    let t = now();
    let tokens: Vec<String> = (0..8).map(|_| token(&fake, t)).collect();
    let cfg = cfg();
    let results = futures::future::join_all(tokens.iter().map(|tok| issuers.verify(tok, &cfg, t))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!((fake.discovery_hits(), fake.jwks_hits()), (1, 1));
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_issuer_is_down() {
    let fake = github().await;
    let short_age = FetchLimits { max_age: Duration::from_secs(10), ..limits() };
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], short_age).expect("valid config");
    let t = now();
    issuers.verify(&token(&fake, t), &cfg(), t).await.expect("primes the cache");
    fake.set_down(true);

    // Stale keys: the request is served from the cache while a background
    // refresh tries (and fails).
    let later = t + 100;
    issuers.verify(&token(&fake, later), &cfg(), later).await.expect("stale keys still verify");
    issuers.join_background_refresh("github").await;
    assert_eq!(fake.discovery_hits(), 2, "the background refresh tried");
    issuers.verify(&token(&fake, later), &cfg(), later + 1).await.expect("still verifies after the failed refresh");
    assert!(issuers.ready(), "stale keys still count as ready");

    // A new kid during the outage is an unknown key, not an outage.
    fake.rotate();
    let err = issuers.verify(&token(&fake, later), &cfg(), later + 200).await.expect_err("new kid, issuer down");
    assert_eq!(err, VerifyError::UnknownKey);
}

#[tokio::test]
async fn keys_older_than_max_age_are_refreshed_in_the_background() {
    let fake = github().await;
    let short_age = FetchLimits { max_age: Duration::from_secs(10), ..limits() };
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], short_age).expect("valid config");
    let t = now();
    let old_key = fake.current_key();
    let old_token = || old_key.sign(&fake.github_claims(AUD, "acme/web", t).build());
    issuers.verify(&old_token(), &cfg(), t).await.expect("primes the cache");
    // The issuer rotates and retires the old key without anyone presenting
    // the new kid: only the age-based refresh notices.
    fake.rotate();
    fake.retire(old_key.kid());
    issuers.verify(&old_token(), &cfg(), t + 5).await.expect("fresh enough: cached");
    assert_eq!(fake.jwks_hits(), 1);
    issuers.verify(&old_token(), &cfg(), t + 100).await.expect("served from the stale cache");
    issuers.join_background_refresh("github").await;
    assert_eq!(fake.jwks_hits(), 2, "refreshed in the background");
    let err = issuers.verify(&old_token(), &cfg(), t + 101).await.expect_err("retired key");
    assert_eq!(err, VerifyError::UnknownKey);
    issuers.verify(&token(&fake, t), &cfg(), t + 102).await.expect("the new key was fetched");
    assert_eq!(fake.jwks_hits(), 2);
}

#[tokio::test]
async fn an_issuer_down_from_the_start_is_keys_unavailable() {
    let fake = github().await;
    fake.set_down(true);
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], limits()).expect("valid config");
    assert!(issuers.ready(), "never asked yet");
    let t = now();
    let err = issuers.verify(&token(&fake, t), &cfg(), t).await.expect_err("issuer down");
    assert_eq!(err, VerifyError::KeysUnavailable { issuer: "github".to_owned() });
    assert!(err.is_temporary());
    assert_ne!(err, VerifyError::UnknownKey);

    // Back up, but within the cooldown of the failed attempt: no retry.
    fake.set_down(false);
    let err = issuers.verify(&token(&fake, t), &cfg(), t + 10).await.expect_err("cooling down");
    assert!(err.is_temporary());
    assert_eq!(fake.discovery_hits(), 1);
    issuers.verify(&token(&fake, t), &cfg(), t + 61).await.expect("retried after the cooldown");
    assert!(issuers.ready());
}

#[tokio::test]
async fn readiness_fails_while_an_issuer_has_no_keys_and_probes_retry() {
    let fake = github().await;
    fake.set_down(true);
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], limits()).expect("valid config");
    issuers.warm().await;
    assert_eq!(fake.discovery_hits(), 1);
    assert!(!issuers.ready(), "tried, failed, nothing cached");
    issuers.join_background_refresh("github").await;
    assert_eq!(fake.discovery_hits(), 1, "no retry within the cooldown");

    // An unready replica gets no traffic, so the probe itself retries once
    // the cooldown allows (zero here).
    let fake = github().await;
    fake.set_down(true);
    let no_cooldown = FetchLimits { refresh_cooldown: Duration::ZERO, ..limits() };
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], no_cooldown).expect("valid config");
    issuers.warm().await;
    fake.set_down(false);
    assert!(!issuers.ready());
    issuers.join_background_refresh("github").await;
    assert_eq!(fake.jwks_hits(), 1, "the probe fetched the keys");
    assert!(issuers.ready());
}

#[tokio::test]
async fn warm_fetches_every_discovery_issuer_up_front() {
    let fake = github().await;
    let issuers = Issuers::new(vec![discovery("github", &fake.url())], limits()).expect("valid config");
    issuers.warm().await;
    assert_eq!(fake.jwks_hits(), 1);
    let t = now();
    issuers.verify(&token(&fake, t), &cfg(), t).await.expect("warmed keys");
    assert_eq!(fake.jwks_hits(), 1);
}

#[tokio::test]
async fn pinned_keys_never_touch_the_network() {
    let fake = github().await;
    let issuers = Issuers::new(vec![pinned("github", &fake.url(), fake.jwks())], limits()).expect("valid config");
    fake.set_down(true);
    issuers.warm().await;
    let t = now();
    issuers.verify(&token(&fake, t), &cfg(), t).await.expect("pinned key verifies");
    fake.rotate();
    let err = issuers.verify(&token(&fake, t), &cfg(), t + 1000).await.expect_err("not in the pinned set");
    assert_eq!(err, VerifyError::UnknownKey);
    assert!(issuers.ready());
    assert_eq!((fake.discovery_hits(), fake.jwks_hits()), (0, 0));
}

#[tokio::test]
async fn lookalike_issuer_urls_are_separate_issuers() {
    let fake = github().await;
    let enterprise_key = TestKey::generate("acme-1");
    let base = fake.url();
    let enterprise = format!("{base}/acme");
    let issuers = Issuers::new(
        vec![discovery("github", &base), pinned("github-acme", &enterprise, enterprise_key.public_jwks())],
        limits(),
    )
    .expect("valid config");
    let t = now();
    let claims = |iss: &str| fake.github_claims(AUD, "acme/web", t).issuer(iss).build();

    let verified = issuers.verify(&enterprise_key.sign(&claims(&enterprise)), &cfg(), t).await.expect("enterprise");
    assert_eq!(verified.issuer_name(), "github-acme");
    let verified = issuers.verify(&fake.mint(&claims(&base)), &cfg(), t).await.expect("github.com");
    assert_eq!(verified.issuer_name(), "github");

    // The github.com key does not vouch for the enterprise issuer, nor the
    // other way round.
    let err = issuers.verify(&fake.mint(&claims(&enterprise)), &cfg(), t).await.expect_err("wrong issuer's key");
    assert_eq!(err, VerifyError::UnknownKey);
    let err = issuers.verify(&enterprise_key.sign(&claims(&base)), &cfg(), t).await.expect_err("wrong issuer's key");
    assert_eq!(err, VerifyError::UnknownKey);

    // No prefix or suffix matching.
    for lookalike in
        [format!("{base}/"), format!("{base}/acme/"), format!("{base}/acmecorp"), format!("{base}.evil.com")]
    {
        let err = issuers.verify(&fake.mint(&claims(&lookalike)), &cfg(), t).await.expect_err(&lookalike);
        assert_eq!(err, VerifyError::UnknownIssuer, "{lookalike}");
    }
    assert_eq!(issuers.issuer("github-acme").map(|s| s.url.as_str()), Some(enterprise.as_str()));
    assert!(issuers.issuer("acme").is_none());
}

#[tokio::test]
async fn an_unknown_issuer_is_refused_without_any_fetch() {
    let fake = github().await;
    let issuers = Issuers::new(vec![discovery("github", "https://token.actions.githubusercontent.com")], limits())
        .expect("valid config");
    let t = now();
    let err = issuers.verify(&token(&fake, t), &cfg(), t).await.expect_err("not configured");
    assert_eq!(err, VerifyError::UnknownIssuer);
    assert!(err.before_signature());
    assert_eq!((fake.discovery_hits(), fake.jwks_hits()), (0, 0));
}

/// A hand-made issuer whose JWKS holds `key` plus `padding` bytes of
/// filler, streamed in 1 KiB chunks without a Content-Length (`chunked`)
/// or sent with one.
async fn issuer_with_padded_jwks(key: &TestKey, padding: usize, chunked: bool) -> String {
    let (listener, url) = bind().await;
    let doc = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
    let body = json!({"keys": [key.public_jwk()], "padding": "x".repeat(padding)}).to_string();
    let router =
        Router::new().route("/.well-known/openid-configuration", get(move || async move { axum::Json(doc) })).route(
            "/jwks",
            get(move || async move {
                if chunked {
                    let chunks: Vec<Result<Bytes, Infallible>> =
                        body.as_bytes().chunks(1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
                    Body::from_stream(futures::stream::iter(chunks))
                } else {
                    Body::from(body)
                }
            }),
        );
    serve(listener, router);
    url
}

#[tokio::test]
async fn an_oversize_jwks_body_is_refused() {
    let key = TestKey::generate("k");
    for chunked in [true, false] {
        let url = issuer_with_padded_jwks(&key, 2 * DEFAULT_MAX_BODY_BYTES, chunked).await;
        let claims = json!({"iss": url, "aud": AUD, "sub": "x", "jti": "j", "iat": now(), "exp": now() + 60});
        let token = key.sign(&claims);

        let issuers = Issuers::new(vec![discovery("big", &url)], limits()).expect("valid config");
        let err = issuers.verify(&token, &cfg(), now()).await.expect_err("oversize JWKS");
        assert_eq!(err, VerifyError::KeysUnavailable { issuer: "big".to_owned() }, "chunked: {chunked}");

        // The same JWKS under a larger cap verifies: the refusal is the cap's.
        let roomy = FetchLimits { max_body_bytes: 4 * DEFAULT_MAX_BODY_BYTES, ..limits() };
        let issuers = Issuers::new(vec![discovery("big", &url)], roomy).expect("valid config");
        issuers.verify(&token, &cfg(), now()).await.expect("under the cap");
    }
}

#[tokio::test]
async fn a_jwks_uri_that_is_not_https_or_loopback_is_refused() {
    // `http://0.0.0.0:<port>` reaches this host's listeners on Linux, yet is
    // not a loopback address: the classic way round loopback-only rules.
    let key = TestKey::generate("k");
    let (keys_listener, keys_url) = bind().await;
    let port = keys_url.rsplit(':').next().expect("a port");
    let jwks_uri = format!("http://0.0.0.0:{port}/jwks");
    let jwks = key.public_jwks();
    serve(keys_listener, Router::new().route("/jwks", get(move || async move { axum::Json(jwks) })));
    let (listener, url) = bind().await;
    let doc = json!({"issuer": url, "jwks_uri": jwks_uri});
    serve(
        listener,
        Router::new().route("/.well-known/openid-configuration", get(move || async move { axum::Json(doc) })),
    );

    let issuers = Issuers::new(vec![discovery("plain", &url)], limits()).expect("valid config");
    let claims = json!({"iss": url, "aud": AUD, "sub": "x", "jti": "j", "iat": now(), "exp": now() + 60});
    let err = issuers.verify(&key.sign(&claims), &cfg(), now()).await.expect_err("insecure jwks_uri");
    assert_eq!(err, VerifyError::KeysUnavailable { issuer: "plain".to_owned() });
    // The keys were reachable there: the refusal is the URL check's.
    let reachable = reqwest::get(&jwks_uri).await.is_ok_and(|r| r.status().is_success());
    assert!(reachable, "{jwks_uri} serves the keys");
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed() {
    // The other origin serves a discovery document and keys that would
    // verify the token, so following the redirect would make it pass.
    let key = TestKey::generate("k");
    let (target, target_url) = bind().await;
    let (listener, url) = bind().await;
    let doc = json!({"issuer": url, "jwks_uri": format!("{target_url}/jwks")});
    let jwks = key.public_jwks();
    serve(
        target,
        Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { axum::Json(doc) }))
            .route("/jwks", get(move || async move { axum::Json(jwks) })),
    );
    let elsewhere = format!("{target_url}/.well-known/openid-configuration");
    serve(
        listener,
        Router::new().route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::response::Redirect::temporary(&elsewhere) }),
        ),
    );
    let issuers = Issuers::new(vec![discovery("redirecting", &url)], limits()).expect("valid config");
    let claims = json!({"iss": url, "aud": AUD, "sub": "x", "jti": "j", "iat": now(), "exp": now() + 60});
    let token = key.sign(&claims);
    let err = issuers.verify(&token, &cfg(), now()).await.expect_err("redirect refused");
    assert_eq!(err, VerifyError::KeysUnavailable { issuer: "redirecting".to_owned() });

    // A client that follows any redirect gets usable keys: the refusal
    // above is the redirect policy's.
    let keys =
        fetch::fetch_keys(&reqwest::Client::new(), &url, DEFAULT_MAX_BODY_BYTES).await.expect("keys via the redirect");
    assert_eq!(keys.keys.len(), 1);
}

#[test]
fn bad_issuer_configs_fail_fast() {
    let ok = || discovery("github", "https://token.actions.githubusercontent.com");
    assert!(Issuers::new(vec![ok()], limits()).is_ok());
    let cases = [
        vec![ok(), ok()],
        vec![ok(), discovery("github", "https://gitlab.com")],
        vec![ok(), discovery("again", "https://token.actions.githubusercontent.com")],
        vec![discovery("plain", "http://token.actions.githubusercontent.com")],
        vec![pinned("empty", "https://ci.example.com", json!({"keys": []}))],
        vec![IssuerEntry {
            spec: IssuerSpec {
                algorithms: vec![jsonwebtoken::Algorithm::HS256],
                ..IssuerSpec::new("mac", IssuerKind::Generic, "https://ci.example.com")
            },
            keys: KeySource::Discovery,
        }],
    ];
    for entries in cases {
        let names: Vec<String> = entries.iter().map(|e| e.spec.name.clone()).collect();
        assert!(Issuers::new(entries, limits()).is_err(), "{names:?}");
    }
}
