//! TEST-ONLY support for writ-verify's integration tests: throwaway signing
//! keys, writ claims, and a fake writ server (discovery, JWKS, revocation
//! feed) on `127.0.0.1:0` whose answers and hit counts the test controls.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::Notify;
use writ_core::token::{CiProvenance, SigningKey, WritClaims, mint};

pub const AUDIENCE: &str = "https://api.platform.example";

/// The system clock, seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A fresh TEST-ONLY Ed25519 signing key.
pub fn new_key(kid: &str) -> SigningKey {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
    SigningKey::from_pkcs8_der(kid, der.as_ref()).expect("generated key parses")
}

/// Writ claims valid from `now` for ten minutes.
pub fn claims(issuer: &str, jti: &str, now: i64) -> WritClaims {
    WritClaims {
        iss: issuer.to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: "github:repo:acme/web:environment:production".to_owned(),
        client_id: "github:acme/web".to_owned(),
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: jti.to_owned(),
        scope: "deploy".to_owned(),
        org: "acme-prod".to_owned(),
        apps: Some(vec!["web".to_owned()]),
        machines: None,
        ci: CiProvenance { repository: Some("acme/web".to_owned()), ..CiProvenance::default() },
        parent: None,
    }
}

/// Signs `claims` as writ does.
pub fn sign(claims: &WritClaims, key: &SigningKey) -> String {
    mint(claims, key).expect("mint")
}

/// Waits (at most 10 s) until `done()` holds, woken by `notify`. Not a
/// sleep: the test goes on as soon as the event happened.
pub async fn wait_for(notify: &Notify, what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// How the fake's revocation feed answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMode {
    /// Pages of `page_size` entries; `poll_after_s` once caught up.
    Serve { page_size: usize, poll_after_s: u64 },
    /// 404, as an older writ without a feed.
    NotFound,
    /// 503.
    Down,
}

/// A fake writ server on loopback.
#[derive(Clone)]
pub struct FakeWrit {
    pub url: String,
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    discovery_issuer: Mutex<Option<String>>,
    jwks: Mutex<Vec<Value>>,
    jwks_down: AtomicBool,
    jwks_hits: AtomicUsize,
    feed_mode: Mutex<FeedMode>,
    /// Feed entries, in order; the cursor is the index after the last one
    /// read, written `c<n>`.
    feed: Mutex<Vec<Value>>,
    /// Each feed request's `since` (`None`: without).
    feed_requests: Mutex<Vec<Option<String>>>,
    reject_next_cursor: AtomicBool,
    hit: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeWrit {
    /// Starts the fake publishing `keys`, its feed serving one page of 100
    /// with `poll_after_s` 3600 (so no background poll interferes).
    pub async fn start(keys: &[&SigningKey]) -> FakeWrit {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared {
            url: url.clone(),
            discovery_issuer: Mutex::new(None),
            jwks: Mutex::new(keys.iter().map(|k| k.public_jwk()).collect()),
            jwks_down: AtomicBool::new(false),
            jwks_hits: AtomicUsize::new(0),
            feed_mode: Mutex::new(FeedMode::Serve { page_size: 100, poll_after_s: 3600 }),
            feed: Mutex::new(Vec::new()),
            feed_requests: Mutex::new(Vec::new()),
            reject_next_cursor: AtomicBool::new(false),
            hit: Notify::new(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/.well-known/jwks.json", get(jwks))
            .route("/v1/revocations", get(feed))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake writ serves") });
        FakeWrit { url, shared }
    }

    /// Adds a key to the JWKS (pre-publication, as writ does).
    pub fn publish(&self, key: &SigningKey) {
        lock(&self.shared.jwks).push(key.public_jwk());
    }

    /// Overrides the discovery document's `issuer`.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        *lock(&self.shared.discovery_issuer) = Some(issuer.to_owned());
    }

    /// While down, the JWKS endpoint answers 503.
    pub fn set_jwks_down(&self, down: bool) {
        self.shared.jwks_down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_hits(&self) -> usize {
        self.shared.jwks_hits.load(Ordering::SeqCst)
    }

    /// Waits until the JWKS was fetched `n` times in all.
    pub async fn wait_for_jwks_hits(&self, n: usize) {
        wait_for(&self.shared.hit, &format!("{n} JWKS fetches"), || self.jwks_hits() >= n).await;
    }

    pub fn set_feed_mode(&self, mode: FeedMode) {
        *lock(&self.shared.feed_mode) = mode;
    }

    /// Appends a revocation to the feed.
    pub fn revoke(&self, jti: &str, exp: i64) {
        lock(&self.shared.feed).push(json!({"jti": jti, "org": "acme-prod", "exp": exp, "revoked_at": now()}));
    }

    /// The `since` of each feed request so far.
    pub fn feed_requests(&self) -> Vec<Option<String>> {
        lock(&self.shared.feed_requests).clone()
    }

    /// Waits until the feed was requested `n` times in all.
    pub async fn wait_for_feed_requests(&self, n: usize) {
        wait_for(&self.shared.hit, &format!("{n} feed requests"), || self.feed_requests().len() >= n).await;
    }

    /// The next request with a cursor gets 400, as a writ server that lost
    /// the cursor answers.
    pub fn reject_next_cursor(&self) {
        self.shared.reject_next_cursor.store(true, Ordering::SeqCst);
    }
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let issuer = lock(&s.discovery_issuer).clone().unwrap_or_else(|| s.url.clone());
    axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{}/.well-known/jwks.json", s.url)})).into_response()
}

async fn jwks(State(s): State<Arc<Shared>>) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    s.hit.notify_waiters();
    if s.jwks_down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(json!({ "keys": *lock(&s.jwks) })).into_response()
}

async fn feed(State(s): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let since = query.as_deref().and_then(|q| q.strip_prefix("since=")).map(str::to_owned);
    lock(&s.feed_requests).push(since.clone());
    s.hit.notify_waiters();
    let (page_size, poll_after_s) = match *lock(&s.feed_mode) {
        FeedMode::NotFound => return StatusCode::NOT_FOUND.into_response(),
        FeedMode::Down => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        FeedMode::Serve { page_size, poll_after_s } => (page_size, poll_after_s),
    };
    if since.is_some() && s.reject_next_cursor.swap(false, Ordering::SeqCst) {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_request"}))).into_response();
    }
    let start = match since.as_deref().map(|c| c.strip_prefix('c').and_then(|n| n.parse::<usize>().ok())) {
        None => 0,
        Some(Some(n)) => n,
        Some(None) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let entries = lock(&s.feed);
    let page: Vec<Value> = entries.iter().skip(start).take(page_size).cloned().collect();
    let end = start + page.len();
    let more = end < entries.len();
    axum::Json(json!({
        "revocations": page,
        "cursor": format!("c{end}"),
        "poll_after_s": if more { 0 } else { poll_after_s },
    }))
    .into_response()
}
