//! [`Verifier`]: writ's keys (discovered or pinned) with their cache, the
//! revocation set, and the background task that keeps both fresh.
//!
//! The key cache follows the server's OIDC key cache:
//! - fetched once at [`Verifier::discover`];
//! - refetched when a token names an unknown `kid`, at most once per
//!   [`VerifierConfig::refresh_cooldown`]; concurrent refetches coalesce
//!   into one request;
//! - refetched in the background once older than
//!   [`VerifierConfig::keys_max_age`];
//! - kept and served when a refetch fails (stale-while-down), the outage
//!   logged once.
//!
//! Time for the checks and the cooldown is the `now` of
//! [`Verifier::verify_at`] (seconds since the Unix epoch), so tests step it
//! instead of sleeping; [`Verifier::verify`] reads the system clock.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::config::{MAX_LEEWAY, VerifierConfig, secs};
use crate::error::{FetchError, SetupError, VerifyError};
use crate::fetch::{self, KeyMap, LenientJwkSet};
use crate::grant::Grant;
use crate::revocation::{Feed, FeedPoll, RevocationStatus, Revocations};
use crate::token::{self, Checks};

#[cfg(test)]
mod tests;

/// Verifies writ tokens offline against the writ server's published keys.
///
/// Build it once at start-up ([`Verifier::discover`] or
/// [`Verifier::from_jwks`]) and share it: cloning is cheap (one `Arc`), and
/// [`Verifier::verify`] takes no lock on its fast path beyond a read lock.
/// A discovered verifier runs one background task (key refresh, revocation
/// feed) that ends when the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    checks: Checks,
    keys: RwLock<Arc<KeySet>>,
    /// How to refetch keys; `None` for pinned keys.
    remote: Option<Remote>,
    revocations: Revocations,
    background: Mutex<Option<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.background.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

/// One fetched (or pinned) key set.
struct KeySet {
    keys: KeyMap,
    /// Incremented on every successful fetch.
    generation: u64,
}

struct Remote {
    client: reqwest::Client,
    jwks_uri: String,
    max_body_bytes: usize,
    refresh_cooldown: i64,
    keys_max_age: Duration,
    /// Held during a fetch, so concurrent refetches coalesce.
    fetch_lock: tokio::sync::Mutex<()>,
    /// `now` of the last fetch attempt.
    last_attempt: AtomicI64,
    /// Whether the last attempt failed; logs an outage once.
    failing: AtomicBool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.checks.issuer)
            .field("audience", &self.inner.checks.audience)
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Discovers the writ server at `writ_url` and fetches its keys:
    /// `{writ_url}/.well-known/openid-configuration`, whose `issuer` must
    /// equal `writ_url` byte for byte (it is the `iss` every token must
    /// carry: pass the server's `public_url` exactly, without a trailing
    /// slash unless it has one), then its `jwks_uri`.
    ///
    /// With [`RevocationConfig::follow`](crate::RevocationConfig::follow)
    /// (the default) it also reads the revocation feed once before
    /// returning, so a restarted platform never accepts a token revoked
    /// while it was down; a failing feed is logged, not fatal. Then it
    /// starts the background task on the current Tokio runtime.
    ///
    /// Fails when the URL is not https (plain http only for loopback), the
    /// configuration is invalid, or discovery or the first key fetch fails:
    /// a platform that cannot verify tokens should not start.
    pub async fn discover(writ_url: &str, config: VerifierConfig) -> Result<Verifier, SetupError> {
        let checks = checks(writ_url, &config)?;
        if !fetch::is_allowed_url(writ_url) {
            return Err(SetupError::InsecureUrl(writ_url.to_owned()));
        }
        let client = fetch::client(config.fetch_timeout).map_err(SetupError::Client)?;
        let jwks_uri = fetch::discover_jwks_uri(&client, writ_url, config.max_body_bytes).await?;
        let now = unix_now();
        let keys = fetch::fetch_keys(&client, &jwks_uri, config.max_body_bytes).await?;
        let feed = config.revocations.follow.then(|| Feed {
            url: format!("{}/v1/revocations", writ_url.trim_end_matches('/')),
            client: client.clone(),
            config: config.revocations.clone(),
        });
        let revocations = Revocations::new(checks.leeway_secs, config.revocations.max_revoked, feed);
        let remote = Remote {
            client,
            jwks_uri,
            max_body_bytes: config.max_body_bytes,
            refresh_cooldown: secs(config.refresh_cooldown),
            keys_max_age: config.keys_max_age,
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: AtomicI64::new(now),
            failing: AtomicBool::new(false),
        };
        let verifier = Verifier {
            inner: Arc::new(Inner {
                checks,
                keys: RwLock::new(Arc::new(KeySet { keys, generation: 1 })),
                remote: Some(remote),
                revocations,
                background: Mutex::new(None),
            }),
        };
        let first_feed_poll = if config.revocations.follow {
            // Already logged inside when it fails; the background retries.
            let next = match verifier.poll_revocations().await {
                Ok(FeedPoll::Synced { next_poll, .. } | FeedPoll::NoFeed { next_poll }) => Some(next_poll),
                Ok(_) => None,
                Err(_) => verifier.inner.revocations.retry_interval(),
            };
            next.map(|wait| Instant::now() + wait)
        } else {
            None
        };
        let task = tokio::spawn(background(Arc::downgrade(&verifier.inner), first_feed_poll));
        *verifier.inner.background.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        Ok(verifier)
    }

    /// A verifier for pinned keys (an air-gapped platform, or tests):
    /// `issuer` is the writ server's URL as its tokens state it, and
    /// `jwks_json` its JWK Set (`GET {writ}/.well-known/jwks.json`, saved).
    /// No network is ever used: no key refetch, no revocation feed (feed
    /// revocations by hand with [`Verifier::revoke`]). Replace the file and
    /// rebuild the verifier before writ rotates its key.
    pub fn from_jwks(issuer: &str, jwks_json: &str, config: VerifierConfig) -> Result<Verifier, SetupError> {
        let checks = checks(issuer, &config)?;
        let set: LenientJwkSet = serde_json::from_str(jwks_json).map_err(SetupError::PinnedJwks)?;
        let keys = fetch::usable_keys(set);
        if keys.is_empty() {
            return Err(SetupError::NoPinnedKeys);
        }
        let revocations = Revocations::new(checks.leeway_secs, config.revocations.max_revoked, None);
        Ok(Verifier {
            inner: Arc::new(Inner {
                checks,
                keys: RwLock::new(Arc::new(KeySet { keys, generation: 1 })),
                remote: None,
                revocations,
                background: Mutex::new(None),
            }),
        })
    }

    /// Verifies `token` now: see [`Verifier::verify_at`].
    pub async fn verify(&self, token: &str) -> Result<Grant, VerifyError> {
        self.verify_at(token, unix_now()).await
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch), in this
    /// order:
    ///
    /// 1. size at most [`VerifierConfig::max_token_bytes`]; three base64url
    ///    parts; no `crit` header;
    /// 2. header `typ` is `at+jwt` (RFC 9068): an OIDC ID token or any
    ///    other JWT is refused, even one signed by a trusted key;
    /// 3. header `alg` is `EdDSA`: a fixed allow-list, the header only has
    ///    to agree (`none`, HMAC, RSA are refused);
    /// 4. the key named by `kid`; an unknown `kid` refetches the JWKS once
    ///    (at most once per cooldown; concurrent callers share the fetch);
    /// 5. the Ed25519 signature;
    /// 6. `iss` equals the writ URL exactly; `aud` contains the configured
    ///    audience; `now < exp + leeway`; `nbf` and `iat` not after
    ///    `now + leeway`; `jti`, `sub`, `client_id`, `org`, `scope` present;
    /// 7. `jti` not revoked, nor the `parent` a narrowed token came from
    ///    (and, with
    ///    [`RevocationConfig::max_staleness`](crate::RevocationConfig::max_staleness),
    ///    the feed fresh).
    ///
    /// The returned [`Grant`] says what the token allows; call
    /// [`Grant::require`] before each action.
    pub async fn verify_at(&self, token: &str, now: i64) -> Result<Grant, VerifyError> {
        let unverified = token::peek_unverified(token, self.inner.checks.max_token_bytes)?;
        let keys = self.current_keys();
        let grant = match keys.keys.get(&unverified.unverified_kid) {
            Some(key) => token::verify_signed(&unverified, key, &self.inner.checks, now)?,
            None => {
                let newer = self.refresh_keys(keys.generation, now).await;
                let key = newer.keys.get(&unverified.unverified_kid).ok_or(VerifyError::UnknownKey)?;
                token::verify_signed(&unverified, key, &self.inner.checks, now)?
            }
        };
        self.inner.revocations.check(grant.jti(), now)?;
        if let Some(parent) = grant.parent() {
            self.inner.revocations.check(parent, now)?;
        }
        Ok(grant)
    }

    /// Reads the revocation feed now (the background task does this on
    /// the server's schedule; call it to catch up at once, e.g. in tests).
    pub async fn poll_revocations(&self) -> Result<FeedPoll, FetchError> {
        self.inner.revocations.poll(unix_now()).await
    }

    /// Refuses the token `jti` from now until its expiry `exp` (seconds
    /// since the Unix epoch), as if the feed had named it: for revocations
    /// that reach the platform another way.
    pub fn revoke(&self, jti: impl Into<String>, exp: i64) {
        self.inner.revocations.insert([(jti.into(), exp)], unix_now());
    }

    /// The state of revocation checking.
    pub fn revocation_status(&self) -> RevocationStatus {
        self.inner.revocations.status()
    }

    /// The `kid`s of the keys known now, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.current_keys().keys.keys().cloned().collect();
        kids.sort_unstable();
        kids
    }

    /// The writ URL tokens must name as `iss`.
    pub fn issuer(&self) -> &str {
        &self.inner.checks.issuer
    }

    /// The audience tokens must name in `aud`.
    pub fn audience(&self) -> &str {
        &self.inner.checks.audience
    }

    fn current_keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.inner.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Refetches the JWKS unless someone did since the caller saw
    /// generation `seen`, or the cooldown forbids it. Returns the newest
    /// keys, fresh or cached (stale-while-down).
    async fn refresh_keys(&self, seen: u64, now: i64) -> Arc<KeySet> {
        let Some(remote) = &self.inner.remote else {
            return self.current_keys();
        };
        let _fetching = remote.fetch_lock.lock().await;
        let current = self.current_keys();
        if current.generation != seen {
            // Refetched while this caller waited for the lock.
            return current;
        }
        let last = remote.last_attempt.load(Ordering::Acquire);
        if remote.refresh_cooldown > 0 && now.saturating_sub(last) < remote.refresh_cooldown && now >= last {
            return current;
        }
        remote.last_attempt.store(now, Ordering::Release);
        match fetch::fetch_keys(&remote.client, &remote.jwks_uri, remote.max_body_bytes).await {
            Ok(keys) => {
                let fresh = Arc::new(KeySet { keys, generation: current.generation + 1 });
                *self.inner.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
                if remote.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(url = %remote.jwks_uri, "fetching writ's keys works again");
                }
                tracing::debug!(url = %remote.jwks_uri, keys = fresh.keys.len(), "fetched writ's keys");
                fresh
            }
            Err(error) => {
                if remote.failing.swap(true, Ordering::AcqRel) {
                    tracing::debug!(url = %remote.jwks_uri, "fetching writ's keys still fails: {error}");
                } else {
                    tracing::warn!(url = %remote.jwks_uri, "fetching writ's keys failed: {error}; verifying with the keys fetched before");
                }
                current
            }
        }
    }
}

/// Validates the configuration into the claim checks.
fn checks(issuer: &str, config: &VerifierConfig) -> Result<Checks, SetupError> {
    if config.leeway > MAX_LEEWAY {
        return Err(SetupError::Leeway { leeway: config.leeway, max: MAX_LEEWAY });
    }
    if config.audience.is_empty() {
        return Err(SetupError::EmptyAudience);
    }
    Ok(Checks {
        issuer: issuer.to_owned(),
        audience: config.audience.clone(),
        leeway_secs: secs(config.leeway),
        max_token_bytes: config.max_token_bytes,
    })
}

/// The background task of a discovered verifier: refetches keys once they
/// are older than `keys_max_age` and polls the revocation feed when due.
/// Holds only a weak reference between rounds, so dropping the last
/// [`Verifier`] ends it (and `Inner`'s drop aborts it at once).
async fn background(inner: Weak<Inner>, mut next_feed: Option<Instant>) {
    let Some(keys_max_age) = inner.upgrade().and_then(|i| i.remote.as_ref().map(|r| r.keys_max_age)) else {
        return;
    };
    let mut next_keys = Instant::now() + keys_max_age;
    loop {
        let wake = next_feed.map_or(next_keys, |feed| feed.min(next_keys));
        tokio::time::sleep_until(wake).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let verifier = Verifier { inner };
        let woke = Instant::now();
        if woke >= next_keys {
            let seen = verifier.current_keys().generation;
            let fresh = verifier.refresh_keys(seen, unix_now()).await.generation != seen;
            let cooldown = verifier.inner.remote.as_ref().map_or(60, |r| r.refresh_cooldown.max(1));
            let wait = if fresh { keys_max_age } else { Duration::from_secs(cooldown.unsigned_abs()) };
            next_keys = Instant::now() + wait;
        }
        if next_feed.is_some_and(|due| woke >= due) {
            let wait = match verifier.poll_revocations().await {
                Ok(FeedPoll::Synced { next_poll, .. } | FeedPoll::NoFeed { next_poll }) => Some(next_poll),
                Ok(_) => None,
                Err(_) => verifier.inner.revocations.retry_interval(),
            };
            next_feed = wait.map(|wait| Instant::now() + wait);
        }
    }
}

/// The system clock in seconds since the Unix epoch.
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, secs)
}
