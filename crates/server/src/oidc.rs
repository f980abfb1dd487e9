//! The configured OIDC issuers and their key cache: steps 1-3 of the
//! exchange on the server side (pick the issuer by exact `iss`, find its
//! keys, run writ-core's verification).
//!
//! Keys come from a pinned `jwks_file` (never any network) or from OIDC
//! discovery. Discovered keys are cached per issuer and:
//! - fetched once, by the first request or by [`Issuers::warm`]; concurrent
//!   fetches of one issuer coalesce into one request;
//! - refreshed when a token names an unknown `kid`, at most once per
//!   [`FetchLimits::refresh_cooldown`] per issuer;
//! - refreshed in the background once older than [`FetchLimits::max_age`];
//! - kept and served when a refresh fails (stale-while-down), logged once
//!   per outage.
//!
//! Time for this bookkeeping is the `now` passed to [`Issuers::verify`]
//! (seconds since the Unix epoch), so tests step it instead of sleeping;
//! [`Issuers::warm`] and [`Issuers::ready`] read the system clock.

mod fetch;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use arc_swap::ArcSwapOption;
use jsonwebtoken::AlgorithmFamily;
use jsonwebtoken::jwk::JwkSet;
use tokio::task::JoinHandle;
use writ_core::claims::VerifiedClaims;
use writ_core::jwt::{IssuerSpec, KeySet, ParsedToken, VerifyConfig, VerifyError};

/// Default timeout of one discovery or JWKS request, connect to last byte.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on a discovery document or JWKS body: 256 KiB (GitHub's JWKS
/// is about 2 KiB). Stops a hostile or broken issuer endpoint from making
/// the server buffer an unbounded body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default minimum time between two key fetches of one issuer: 60 s.
///
/// Stops refetch storms: anyone can mint tokens with random `kid`s, and
/// without a cooldown each one would make writ hit the issuer's JWKS
/// endpoint (amplifying traffic towards the issuer and queueing our own
/// requests behind those fetches).
pub const DEFAULT_REFRESH_COOLDOWN: Duration = Duration::from_secs(60);
/// Default age after which cached keys are refreshed in the background:
/// 1 h. Keys rotated out by the issuer stop verifying within about this
/// long, even if no token ever names an unknown `kid`.
pub const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// OIDC discovery: `{iss}/.well-known/openid-configuration`, then its
    /// `jwks_uri`.
    Discovery,
    /// A fixed key set from the config's `jwks_file` (air-gapped setups);
    /// the network is never used for this issuer.
    Pinned(JwkSet),
}

/// One configured issuer.
#[derive(Debug, Clone)]
pub struct IssuerEntry {
    /// What verification needs to know about it.
    pub spec: IssuerSpec,
    /// Where its keys come from.
    pub keys: KeySource,
}

/// Bounds on fetching issuer keys. Durations count in whole seconds for the
/// cooldown and the age (they are compared with `now`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchLimits {
    /// Timeout of one request, connect to last byte;
    /// see [`DEFAULT_FETCH_TIMEOUT`].
    pub timeout: Duration,
    /// Cap on one response body; see [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// Minimum time between two fetches of one issuer's keys (including
    /// retries after a failure); see [`DEFAULT_REFRESH_COOLDOWN`].
    pub refresh_cooldown: Duration,
    /// Age after which cached keys are refreshed in the background; see
    /// [`DEFAULT_KEYS_MAX_AGE`].
    pub max_age: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            timeout: DEFAULT_FETCH_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            refresh_cooldown: DEFAULT_REFRESH_COOLDOWN,
            max_age: DEFAULT_KEYS_MAX_AGE,
        }
    }
}

/// The configured issuers with their key cache. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Issuers {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: Vec<Issuer>,
    /// Exact `iss` string to index in `issuers`: lookalike and enterprise
    /// issuer URLs (`…githubusercontent.com/acme`) are distinct keys, never
    /// prefix matches.
    by_url: HashMap<String, usize>,
    client: reqwest::Client,
    limits: FetchLimits,
}

/// Never-attempted marker for [`Issuer::last_attempt`].
const NEVER: i64 = i64::MIN;

struct Issuer {
    spec: IssuerSpec,
    /// The `jwks_file` keys, for pinned issuers.
    pinned: Option<KeySet>,
    /// The last good keys of a discovery issuer. Deliberately without
    /// expiry: dropping them would throw away the keys that
    /// stale-while-down serves during an outage. One atomic load per
    /// exchange (a general-purpose cache here had bookkeeping on every read).
    keys: ArcSwapOption<Snapshot>,
    /// Held for the duration of a fetch, so concurrent refreshes of one
    /// issuer coalesce into one request.
    fetch_lock: tokio::sync::Mutex<()>,
    /// `now` of the last fetch attempt ([`NEVER`] before the first).
    last_attempt: AtomicI64,
    /// Incremented on every successful fetch.
    generation: AtomicU64,
    /// Whether the last attempt failed; logs an outage once.
    failing: AtomicBool,
    /// Whether a background refresh is running (at most one per issuer).
    background: AtomicBool,
    /// The running or last background refresh, so tests can await it.
    background_task: Mutex<Option<JoinHandle<()>>>,
}

/// One fetched key set.
struct Snapshot {
    keys: KeySet,
    fetched_at: i64,
    generation: u64,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuers")
            .field("issuers", &self.inner.issuers.iter().map(|i| &i.spec.name).collect::<Vec<_>>())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Issuers {
    /// Checks the entries and builds the HTTP client (rustls; redirects only
    /// within the same origin; `limits.timeout` on connect and on the whole
    /// request).
    ///
    /// Fails on a duplicate name or URL, an issuer URL that is not https
    /// (http only for loopback hosts), an allow-list without a usable
    /// algorithm (HMAC never counts), or an empty pinned key set.
    pub fn new(entries: Vec<IssuerEntry>, limits: FetchLimits) -> anyhow::Result<Issuers> {
        let mut by_url = HashMap::new();
        let mut names = HashSet::new();
        let mut issuers = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let spec = entry.spec;
            ensure!(names.insert(spec.name.clone()), "issuer name `{}` is configured twice", spec.name);
            ensure!(
                by_url.insert(spec.url.clone(), index).is_none(),
                "issuer url `{}` is configured twice (issuer `{}`)",
                spec.url,
                spec.name
            );
            ensure!(
                fetch::is_allowed_url(&spec.url),
                "issuer `{}`: url `{}` must be https (http only for loopback hosts)",
                spec.name,
                spec.url
            );
            ensure!(
                spec.algorithms.iter().any(|alg| alg.family() != AlgorithmFamily::Hmac),
                "issuer `{}`: no usable signature algorithm (HMAC is never accepted from an OIDC issuer)",
                spec.name
            );
            let pinned = match entry.keys {
                KeySource::Discovery => None,
                KeySource::Pinned(keys) if keys.keys.is_empty() => {
                    bail!("issuer `{}`: the pinned key set is empty", spec.name)
                }
                KeySource::Pinned(keys) => Some(KeySet::new(keys)),
            };
            issuers.push(Issuer {
                spec,
                pinned,
                keys: ArcSwapOption::empty(),
                fetch_lock: tokio::sync::Mutex::new(()),
                last_attempt: AtomicI64::new(NEVER),
                generation: AtomicU64::new(0),
                failing: AtomicBool::new(false),
                background: AtomicBool::new(false),
                background_task: Mutex::new(None),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout)
            .redirect(fetch::same_origin_redirects())
            .user_agent(concat!("writ/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client for issuer discovery")?;
        Ok(Issuers { inner: Arc::new(Inner { issuers, by_url, client, limits }) })
    }

    /// The issuer configured under `name`.
    pub fn issuer(&self, name: &str) -> Option<&IssuerSpec> {
        self.inner.issuers.iter().map(|issuer| &issuer.spec).find(|spec| spec.name == name)
    }

    /// Verifies an OIDC token at `now`: picks the configured issuer whose
    /// URL equals the token's (unverified) `iss` exactly, finds its keys and
    /// runs [`verify_oidc`].
    ///
    /// A `kid` missing from the cached keys triggers one refresh (at most
    /// one per cooldown per issuer) and a second attempt. Errors: those of
    /// [`verify_oidc`], [`VerifyError::UnknownIssuer`], and
    /// [`VerifyError::KeysUnavailable`] when the issuer's keys were never
    /// fetched successfully (a temporary condition, answered 503).
    pub async fn verify(&self, token: &str, cfg: &VerifyConfig, now: i64) -> Result<VerifiedClaims, VerifyError> {
        let mut parsed = ParsedToken::parse(token, cfg.max_token_bytes)?;
        self.verify_parsed(&mut parsed, cfg, now).await
    }

    /// [`verify`](Self::verify) for a caller that already parsed the token
    /// (the exchange, which looks at its `iss` first).
    pub async fn verify_parsed(
        &self,
        token: &mut ParsedToken<'_>,
        cfg: &VerifyConfig,
        now: i64,
    ) -> Result<VerifiedClaims, VerifyError> {
        let Some(&index) = self.inner.by_url.get(token.unverified_iss()) else {
            return Err(VerifyError::UnknownIssuer);
        };
        let issuer = &self.inner.issuers[index];
        if let Some(pinned) = &issuer.pinned {
            return token.verify(&issuer.spec, pinned, cfg, now);
        }
        let snapshot = self.current_keys(index, now).await?;
        match token.verify(&issuer.spec, &snapshot.keys, cfg, now) {
            Err(VerifyError::UnknownKey) => match self.refresh(index, Some(snapshot.generation), now).await {
                Some(newer) if newer.generation != snapshot.generation => {
                    token.verify(&issuer.spec, &newer.keys, cfg, now)
                }
                _ => Err(VerifyError::UnknownKey),
            },
            verified_or_refused => verified_or_refused,
        }
    }

    /// Fetches the keys of every discovery issuer that has none yet,
    /// concurrently; best effort for start-up. Failures are logged (once per
    /// issuer) and count as an attempt for the cooldown.
    pub async fn warm(&self) {
        let now = unix_now();
        let fetches = (0..self.inner.issuers.len())
            .filter(|&index| self.inner.issuers[index].pinned.is_none())
            .map(|index| self.refresh(index, None, now));
        let fetched = futures::future::join_all(fetches).await;
        let missing = fetched.iter().filter(|keys| keys.is_none()).count();
        tracing::info!(
            issuers = fetched.len(),
            missing,
            "issuer keys warmed: {} of {} fetched",
            fetched.len() - missing,
            fetched.len()
        );
    }

    /// For `/readyz`: true when every issuer can verify tokens or has not
    /// been tried yet.
    ///
    /// Pinned issuers are always ready. A discovery issuer is ready once it
    /// has keys (stale ones too: they keep verifying during an outage), and
    /// before its first fetch (a server without traffic and without
    /// [`warm`](Self::warm) is not broken). It is not ready when its fetches
    /// failed and no keys are cached: this replica would refuse every token
    /// from it. Because an unready replica gets no traffic to trigger a
    /// retry, this call also starts a background retry for such an issuer
    /// whenever its cooldown has passed.
    pub fn ready(&self) -> bool {
        let now = unix_now();
        let mut ready = true;
        for (index, issuer) in self.inner.issuers.iter().enumerate() {
            let never_tried = issuer.last_attempt.load(Ordering::Acquire) == NEVER;
            let has_keys = issuer.generation.load(Ordering::Acquire) > 0;
            if issuer.pinned.is_some() || has_keys || never_tried {
                continue;
            }
            ready = false;
            self.spawn_refresh(index, None, now);
        }
        ready
    }

    /// The cached keys of a discovery issuer, fetching them on first use;
    /// starts a background refresh when they are older than `max_age`.
    async fn current_keys(&self, index: usize, now: i64) -> Result<Arc<Snapshot>, VerifyError> {
        if let Some(snapshot) = self.inner.issuers[index].keys.load_full() {
            if now.saturating_sub(snapshot.fetched_at) > secs(self.inner.limits.max_age) {
                self.spawn_refresh(index, Some(snapshot.generation), now);
            }
            return Ok(snapshot);
        }
        self.refresh(index, None, now)
            .await
            .ok_or_else(|| VerifyError::KeysUnavailable { issuer: self.inner.issuers[index].spec.name.clone() })
    }

    /// Whether the cooldown forbids fetching `issuer`'s keys at `now`.
    fn cooling_down(&self, issuer: &Issuer, now: i64) -> bool {
        let cooldown = secs(self.inner.limits.refresh_cooldown);
        let last = issuer.last_attempt.load(Ordering::Acquire);
        cooldown > 0 && last != NEVER && now.saturating_sub(last) < cooldown
    }

    /// Fetches an issuer's keys unless someone else did since the caller
    /// saw generation `seen` (`None`: the caller saw no keys) or the
    /// cooldown forbids it. Returns the newest keys, fresh or cached; `None`
    /// only when there are none at all.
    async fn refresh(&self, index: usize, seen: Option<u64>, now: i64) -> Option<Arc<Snapshot>> {
        let issuer = &self.inner.issuers[index];
        let _fetching = issuer.fetch_lock.lock().await;
        let cached = issuer.keys.load_full();
        if let Some(snapshot) = &cached
            && Some(snapshot.generation) != seen
        {
            // Refreshed while this caller waited for the lock.
            return cached;
        }
        if self.cooling_down(issuer, now) {
            return cached;
        }
        issuer.last_attempt.store(now, Ordering::Release);
        let name = &issuer.spec.name;
        match fetch::fetch_keys(&self.inner.client, &issuer.spec.url, self.inner.limits.max_body_bytes).await {
            Ok(keys) => {
                let generation = issuer.generation.fetch_add(1, Ordering::AcqRel) + 1;
                let snapshot = Arc::new(Snapshot { keys: KeySet::new(keys), fetched_at: now, generation });
                issuer.keys.store(Some(snapshot.clone()));
                if issuer.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(issuer = %name, "keys of issuer {name} fetched again after failures");
                }
                tracing::debug!(issuer = %name, keys = snapshot.keys.jwks().keys.len(), "fetched keys of issuer {name}");
                Some(snapshot)
            }
            Err(error) => {
                let serving_cached = cached.is_some();
                if issuer.failing.swap(true, Ordering::AcqRel) {
                    tracing::debug!(issuer = %name, %error, serving_cached, "fetching keys of issuer {name} still fails: {error}");
                } else {
                    tracing::warn!(issuer = %name, %error, serving_cached, "fetching keys of issuer {name} failed: {error}");
                }
                cached
            }
        }
    }

    /// Starts a background refresh unless one is running or the cooldown
    /// forbids it.
    fn spawn_refresh(&self, index: usize, seen: Option<u64>, now: i64) {
        let issuer = &self.inner.issuers[index];
        // Outside a Tokio runtime there is nothing to run on: skip, never
        // panic; the next request retries.
        if tokio::runtime::Handle::try_current().is_err()
            || self.cooling_down(issuer, now)
            || issuer.background.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            this.refresh(index, seen, now).await;
            this.inner.issuers[index].background.store(false, Ordering::Release);
        });
        *issuer.background_task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Awaits the running or last background refresh of `name`, if any.
    #[cfg(test)]
    async fn join_background_refresh(&self, name: &str) {
        let Some(issuer) = self.inner.issuers.iter().find(|i| i.spec.name == name) else {
            return;
        };
        let task = issuer.background_task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = task {
            task.await.expect("background refresh does not panic");
        }
    }
}

/// A duration in whole seconds, as compared with `now`.
fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// The system clock in seconds since the Unix epoch, for the calls that get
/// no `now`.
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, secs)
}
