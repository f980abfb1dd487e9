//! writ-verify's network side against a fake writ server on loopback whose
//! answers the test controls: discovery's issuer check, the JWKS cache
//! (rotation, refetch cooldown, coalescing, stale-while-down, background
//! refresh) and following the revocation feed.
//!
//! Time for the checks and the cooldown is passed to `verify_at`, so the
//! cooldown is exercised without sleeping; the background tests wait for
//! the event (a request reaching the fake), never for a duration.

mod support;

use std::time::Duration;

use support::{AUDIENCE, FakeWrit, FeedMode, claims, new_key, now, sign};
use writ_verify::{FeedPoll, FetchError, RevocationConfig, SetupError, Verifier, VerifierConfig, VerifyError};

fn config() -> VerifierConfig {
    VerifierConfig::new(AUDIENCE)
}

async fn discover(writ: &FakeWrit, config: VerifierConfig) -> Verifier {
    Verifier::discover(&writ.url, config).await.expect("discovery succeeds")
}

// ---- discovery -------------------------------------------------------------

#[tokio::test]
async fn discovery_requires_the_exact_issuer() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    let with_slash = format!("{}/", writ.url);
    match Verifier::discover(&with_slash, config()).await {
        Err(SetupError::Fetch(FetchError::IssuerMismatch { expected, got, .. })) => {
            assert_eq!((expected, got), (with_slash, writ.url.clone()));
        }
        other => panic!("a trailing slash is another issuer: {other:?}"),
    }
    writ.set_discovery_issuer("https://writ.example.com");
    let err = Verifier::discover(&writ.url, config()).await.expect_err("another server's document");
    assert!(err.to_string().contains(r#"names issuer "https://writ.example.com""#), "{err}");
    assert_eq!(writ.jwks_hits(), 0, "no keys are fetched from a mismatched document");
}

#[tokio::test]
async fn plain_http_is_refused_except_on_loopback() {
    let err = Verifier::discover("http://writ.example.com", config()).await.expect_err("plain http");
    assert!(matches!(err, SetupError::InsecureUrl(_)), "{err:?}");
}

#[tokio::test]
async fn discovery_fails_when_writ_is_unreachable() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    writ.set_jwks_down(true);
    let err = Verifier::discover(&writ.url, config()).await.expect_err("no keys, no verifier");
    assert!(err.to_string().contains("answered HTTP 503"), "{err}");
}

// ---- the key cache ---------------------------------------------------------

#[tokio::test]
async fn a_new_kid_is_fetched_once_and_the_cooldown_is_respected() {
    let old = new_key("k1");
    let writ = FakeWrit::start(&[&old]).await;
    let verifier = discover(&writ, config()).await;
    // After discovery: its fetch is the cooldown's start, and a `t0` taken
    // before it could fall a second earlier, which would put `t0 + 60`
    // inside the cooldown.
    let t0 = now();
    assert_eq!(writ.jwks_hits(), 1);
    assert!(verifier.verify_at(&sign(&claims(&writ.url, "a", t0), &old), t0).await.is_ok());

    // A key published right after discovery, within the cooldown: refused,
    // and no fetch (writ pre-publishes keys an hour before using them, so
    // this does not happen with a real server).
    let new = new_key("k2");
    writ.publish(&new);
    let token = sign(&claims(&writ.url, "b", t0), &new);
    assert_eq!(verifier.verify_at(&token, t0 + 59).await, Err(VerifyError::UnknownKey));
    assert_eq!(writ.jwks_hits(), 1, "cooldown: no fetch within 60 s of the last one");

    // After the cooldown the unknown kid is fetched, once.
    assert!(verifier.verify_at(&token, t0 + 60).await.is_ok());
    assert_eq!(writ.jwks_hits(), 2);
    assert!(verifier.verify_at(&token, t0 + 61).await.is_ok());
    assert_eq!(writ.jwks_hits(), 2, "a known kid needs no fetch");
    assert_eq!(verifier.key_ids(), ["k1", "k2"]);

    // Garbage kids cannot make the verifier hammer writ.
    let forged = sign(&claims(&writ.url, "c", t0), &new_key("random"));
    for t in [t0 + 61, t0 + 90, t0 + 119] {
        assert_eq!(verifier.verify_at(&forged, t).await, Err(VerifyError::UnknownKey));
    }
    assert_eq!(writ.jwks_hits(), 2);
    assert_eq!(verifier.verify_at(&forged, t0 + 120).await, Err(VerifyError::UnknownKey));
    assert_eq!(writ.jwks_hits(), 3, "one fetch per cooldown");
}

#[tokio::test]
async fn concurrent_requests_with_a_new_kid_share_one_fetch() {
    let old = new_key("k1");
    let writ = FakeWrit::start(&[&old]).await;
    let verifier = discover(&writ, config()).await;
    // After discovery: its fetch is the cooldown's start, and a `t0` taken
    // before it could fall a second earlier, which would put `t0 + 60`
    // inside the cooldown.
    let t0 = now();
    let new = new_key("k2");
    writ.publish(&new);
    let token = sign(&claims(&writ.url, "a", t0), &new);
    let checks = (0..20).map(|_| {
        let verifier = verifier.clone();
        let token = token.clone();
        tokio::spawn(async move { verifier.verify_at(&token, t0 + 60).await })
    });
    for check in checks {
        assert!(check.await.expect("task").is_ok());
    }
    assert_eq!(writ.jwks_hits(), 2, "one fetch for twenty requests");
}

#[tokio::test]
async fn known_keys_keep_verifying_while_writ_is_down() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    let verifier = discover(&writ, config()).await;
    // After discovery: its fetch is the cooldown's start, and a `t0` taken
    // before it could fall a second earlier, which would put `t0 + 60`
    // inside the cooldown.
    let t0 = now();
    writ.set_jwks_down(true);
    let unknown = sign(&claims(&writ.url, "x", t0), &new_key("k9"));
    assert_eq!(verifier.verify_at(&unknown, t0 + 60).await, Err(VerifyError::UnknownKey));
    assert_eq!(writ.jwks_hits(), 2, "the refetch was tried and failed");
    let known = sign(&claims(&writ.url, "a", t0), &key);
    assert!(verifier.verify_at(&known, t0 + 61).await.is_ok(), "stale-while-down");
}

#[tokio::test]
async fn the_background_refresh_learns_a_prepublished_key_before_it_signs() {
    let old = new_key("k1");
    let writ = FakeWrit::start(&[&old]).await;
    let config =
        VerifierConfig { keys_max_age: Duration::from_secs(1), refresh_cooldown: Duration::from_secs(1), ..config() };
    let verifier = discover(&writ, config).await;
    let new = new_key("k2");
    writ.publish(&new);
    writ.wait_for_jwks_hits(2).await;
    // The background fetch holds the fetch lock until it has installed the
    // keys, so this request either finds k2 or waits for that fetch: it
    // never fetches itself.
    let t = now();
    assert!(verifier.verify_at(&sign(&claims(&writ.url, "a", t), &new), t).await.is_ok());
    assert_eq!(writ.jwks_hits(), 2, "the first token of the new key needed no fetch of its own");
    assert_eq!(verifier.key_ids(), ["k1", "k2"]);
}

// ---- the revocation feed ---------------------------------------------------

#[tokio::test]
async fn discovery_reads_the_feed_before_returning() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    let t = now();
    writ.revoke("revoked-before-start", t + 600);
    let verifier = discover(&writ, config()).await;
    let token = sign(&claims(&writ.url, "revoked-before-start", t), &key);
    assert_eq!(
        verifier.verify_at(&token, t).await,
        Err(VerifyError::Revoked { jti: "revoked-before-start".into() }),
        "a restarted platform never accepts a token revoked while it was down"
    );
    assert_eq!(writ.feed_requests(), [None], "the first poll has no cursor");
    let status = verifier.revocation_status();
    assert!(status.following);
    assert_eq!(status.feed_available, Some(true));
    assert!(status.last_sync.is_some());
    assert_eq!(status.revoked, 1);
}

#[tokio::test]
async fn polls_follow_the_cursor_and_read_every_page() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    writ.set_feed_mode(FeedMode::Serve { page_size: 2, poll_after_s: 30 });
    let t = now();
    let verifier = discover(&writ, config()).await;
    let token = sign(&claims(&writ.url, "j3", t), &key);
    assert!(verifier.verify_at(&token, t).await.is_ok());

    for n in 0..5 {
        writ.revoke(&format!("j{n}"), t + 600);
    }
    let poll = verifier.poll_revocations().await.expect("feed answers");
    assert_eq!(poll, FeedPoll::Synced { added: 5, next_poll: Duration::from_secs(30) });
    assert_eq!(writ.feed_requests(), [None, Some("c0".into()), Some("c2".into()), Some("c4".into())]);
    assert_eq!(verifier.verify_at(&token, t).await, Err(VerifyError::Revoked { jti: "j3".into() }));

    let poll = verifier.poll_revocations().await.expect("feed answers");
    assert_eq!(poll, FeedPoll::Synced { added: 0, next_poll: Duration::from_secs(30) });
    assert_eq!(writ.feed_requests().last(), Some(&Some("c5".into())));
}

#[tokio::test]
async fn a_forgotten_cursor_restarts_the_feed_from_the_beginning() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    let t = now();
    let verifier = discover(&writ, config()).await;
    writ.revoke("j0", t + 600);
    writ.reject_next_cursor();
    let poll = verifier.poll_revocations().await.expect("recovers");
    assert!(matches!(poll, FeedPoll::Synced { added: 1, .. }), "{poll:?}");
    assert_eq!(writ.feed_requests(), [None, Some("c0".into()), None]);
}

#[tokio::test]
async fn server_poll_interval_is_bounded() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    let verifier = discover(&writ, config()).await;
    writ.set_feed_mode(FeedMode::Serve { page_size: 10, poll_after_s: 86_400 });
    let poll = verifier.poll_revocations().await.expect("feed");
    assert_eq!(poll, FeedPoll::Synced { added: 0, next_poll: writ_verify::MAX_POLL_INTERVAL });
}

#[tokio::test]
async fn an_older_server_without_a_feed_is_not_an_error() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    writ.set_feed_mode(FeedMode::NotFound);
    let verifier = discover(&writ, config()).await;
    assert_eq!(verifier.revocation_status().feed_available, Some(false));
    assert_eq!(
        verifier.poll_revocations().await.expect("404 is an answer"),
        FeedPoll::NoFeed { next_poll: writ_verify::MAX_POLL_INTERVAL }
    );
    let t = now();
    assert!(verifier.verify_at(&sign(&claims(&writ.url, "a", t), &key), t).await.is_ok());
}

#[tokio::test]
async fn expired_revocations_are_not_kept() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    let t = now();
    writ.revoke("long-expired", t - 3600);
    writ.revoke("alive", t + 600);
    let verifier = discover(&writ, config()).await;
    assert_eq!(verifier.revocation_status().revoked, 1, "only tokens that could still verify are remembered");
}

#[tokio::test]
async fn the_background_task_follows_the_feed_on_the_servers_schedule() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    writ.set_feed_mode(FeedMode::Serve { page_size: 100, poll_after_s: 1 });
    let t = now();
    let verifier = discover(&writ, config()).await;
    let token = sign(&claims(&writ.url, "leaked", t + 1), &key);
    assert!(verifier.verify_at(&token, t + 1).await.is_ok());
    writ.revoke("leaked", t + 600);
    let seen = writ.feed_requests().len();
    // The poll after the next one has surely applied the revocation.
    writ.wait_for_feed_requests(seen + 2).await;
    assert_eq!(verifier.verify_at(&token, t + 1).await, Err(VerifyError::Revoked { jti: "leaked".into() }));
}

#[tokio::test]
async fn with_max_staleness_a_failing_feed_fails_closed() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    writ.set_feed_mode(FeedMode::Down);
    let config = VerifierConfig {
        revocations: RevocationConfig { max_staleness: Some(Duration::from_secs(60)), ..RevocationConfig::default() },
        ..config()
    };
    let verifier = discover(&writ, config).await;
    let t = now();
    let token = sign(&claims(&writ.url, "a", t), &key);
    let err = verifier.verify_at(&token, t).await.expect_err("stale");
    assert_eq!(err, VerifyError::RevocationsStale { since_secs: None });
    assert!(err.is_temporary());

    writ.set_feed_mode(FeedMode::Serve { page_size: 100, poll_after_s: 30 });
    verifier.poll_revocations().await.expect("feed is back");
    assert!(verifier.verify_at(&token, t).await.is_ok());
    assert!(matches!(
        verifier.verify_at(&token, t + 61).await,
        Err(VerifyError::RevocationsStale { since_secs: Some(61) })
    ));
}

#[tokio::test]
async fn without_max_staleness_a_failing_feed_keeps_the_known_revocations() {
    let key = new_key("k1");
    let writ = FakeWrit::start(&[&key]).await;
    let t = now();
    writ.revoke("r", t + 600);
    let verifier = discover(&writ, config()).await;
    writ.set_feed_mode(FeedMode::Down);
    assert!(verifier.poll_revocations().await.is_err());
    let revoked = sign(&claims(&writ.url, "r", t), &key);
    assert_eq!(verifier.verify_at(&revoked, t).await, Err(VerifyError::Revoked { jti: "r".into() }));
    let fine = sign(&claims(&writ.url, "ok", t), &key);
    assert!(verifier.verify_at(&fine, t).await.is_ok());
}
