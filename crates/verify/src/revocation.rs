//! Revoked token ids, and following writ's revocation feed.
//!
//! The feed contract (`GET {writ}/v1/revocations?since=<cursor>`):
//!
//! ```json
//! {"revocations": [{"jti": "…", "org": "…", "exp": 1900000900, "revoked_at": 1900000100}],
//!  "cursor": "<opaque>", "poll_after_s": 10}
//! ```
//!
//! The first poll sends no `since` and gets every revocation of a token
//! still alive; each later poll sends the last `cursor`. A page with
//! entries and `poll_after_s: 0` means "more pages now". A 404 means an
//! older server without a feed: logged once, asked again every
//! [`MAX_POLL_INTERVAL`]. A 400 or 410 to a cursor (the server forgot it)
//! restarts from no cursor.
//!
//! Memory is bounded: a revoked `jti` is kept only while its token could
//! still verify (until `exp + leeway`), and at most
//! [`RevocationConfig::max_revoked`] of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Client;
use serde::Deserialize;

use crate::config::{MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, RevocationConfig, secs};
use crate::error::{FetchError, VerifyError};
use crate::fetch::get_json;

/// Marker for "never" in the atomics below.
const NEVER: i64 = i64::MIN;

/// Most pages read in one poll before yielding to the next scheduled one.
const MAX_PAGES_PER_POLL: usize = 100;

/// What one poll of the feed did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedPoll {
    /// The feed was read; `added` revocations are new.
    Synced {
        /// Revocations not known before.
        added: usize,
        /// When to poll again (the server's `poll_after_s`, bounded).
        next_poll: Duration,
    },
    /// The server has no feed (HTTP 404: an older writ).
    NoFeed {
        /// When to ask again.
        next_poll: Duration,
    },
    /// This verifier does not follow a feed (pinned keys, or
    /// [`RevocationConfig::follow`] is false).
    Disabled,
}

/// The state of revocation checking, e.g. for a platform's `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevocationStatus {
    /// Whether a feed is followed.
    pub following: bool,
    /// Whether the server has a feed: `None` before the first answer.
    pub feed_available: Option<bool>,
    /// When the feed was last read successfully.
    pub last_sync: Option<SystemTime>,
    /// How many revoked token ids are remembered now.
    pub revoked: usize,
}

/// One page of the feed.
#[derive(Deserialize)]
struct FeedPage {
    revocations: Vec<FeedEntry>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    poll_after_s: Option<u64>,
}

/// One revocation. `exp` is required: without it the entry could never be
/// forgotten. Other fields (`org`, `revoked_at`) are informational.
#[derive(Deserialize)]
struct FeedEntry {
    jti: String,
    exp: i64,
}

/// Where and how the feed is read.
pub(crate) struct Feed {
    pub url: String,
    pub client: Client,
    pub config: RevocationConfig,
}

/// The revoked token ids and, when following, the feed's state.
pub(crate) struct Revocations {
    /// `jti` → the token's `exp`.
    revoked: RwLock<HashMap<String, i64>>,
    leeway_secs: i64,
    max_revoked: usize,
    feed: Option<FeedState>,
}

struct FeedState {
    feed: Feed,
    /// The last cursor; the lock also serializes polls.
    cursor: tokio::sync::Mutex<Option<String>>,
    last_success: AtomicI64,
    /// `None` before the first answer, then whether the last answer was a
    /// feed (1) or a 404 (0); stored as -1/0/1.
    available: AtomicI64,
    /// The "no feed" message is logged once per verifier.
    logged_no_feed: AtomicBool,
    /// Whether the last poll failed; logs an outage once.
    failing: AtomicBool,
}

impl Revocations {
    pub(crate) fn new(leeway_secs: i64, max_revoked: usize, feed: Option<Feed>) -> Self {
        Revocations {
            revoked: RwLock::new(HashMap::new()),
            leeway_secs,
            max_revoked,
            feed: feed.map(|feed| FeedState {
                feed,
                cursor: tokio::sync::Mutex::new(None),
                last_success: AtomicI64::new(NEVER),
                available: AtomicI64::new(-1),
                logged_no_feed: AtomicBool::new(false),
                failing: AtomicBool::new(false),
            }),
        }
    }

    /// Refuses a revoked `jti`, and every token while the feed is staler
    /// than [`RevocationConfig::max_staleness`].
    pub(crate) fn check(&self, jti: &str, now: i64) -> Result<(), VerifyError> {
        if let Some(state) = &self.feed
            && let Some(max) = state.feed.config.max_staleness
        {
            let last = state.last_success.load(Ordering::Acquire);
            let since_secs = (last != NEVER).then(|| now.saturating_sub(last));
            if since_secs.is_none_or(|since| since > secs(max)) {
                return Err(VerifyError::RevocationsStale { since_secs });
            }
        }
        if self.revoked.read().unwrap_or_else(PoisonError::into_inner).contains_key(jti) {
            return Err(VerifyError::Revoked { jti: jti.to_owned() });
        }
        Ok(())
    }

    /// Remembers revoked tokens; returns how many were new. Entries whose
    /// token can no longer verify (`now >= exp + leeway`) are skipped, and
    /// such old entries are forgotten.
    pub(crate) fn insert(&self, entries: impl IntoIterator<Item = (String, i64)>, now: i64) -> usize {
        let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        let leeway = self.leeway_secs;
        revoked.retain(|_, exp| now < exp.saturating_add(leeway));
        let mut added = 0;
        for (jti, exp) in entries {
            if now < exp.saturating_add(leeway) && revoked.insert(jti, exp).is_none() {
                added += 1;
            }
        }
        if revoked.len() > self.max_revoked {
            // Over the cap, the tokens that expire soonest are forgotten
            // first: they are the ones whose window of misuse is shortest.
            let excess = revoked.len() - self.max_revoked;
            let mut by_exp: Vec<(i64, String)> = revoked.iter().map(|(jti, exp)| (*exp, jti.clone())).collect();
            by_exp.sort_unstable();
            for (_, jti) in by_exp.into_iter().take(excess) {
                revoked.remove(&jti);
            }
            tracing::warn!(
                max_revoked = self.max_revoked,
                dropped = excess,
                "more than {} revoked tokens are alive; forgot the {excess} that expire soonest",
                self.max_revoked
            );
        }
        added
    }

    pub(crate) fn status(&self) -> RevocationStatus {
        let revoked = self.revoked.read().unwrap_or_else(PoisonError::into_inner).len();
        let Some(state) = &self.feed else {
            return RevocationStatus { following: false, feed_available: None, last_sync: None, revoked };
        };
        let last = state.last_success.load(Ordering::Acquire);
        RevocationStatus {
            following: true,
            feed_available: match state.available.load(Ordering::Acquire) {
                -1 => None,
                n => Some(n == 1),
            },
            last_sync: u64::try_from(last).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            revoked,
        }
    }

    /// The poll interval after a failed poll.
    pub(crate) fn retry_interval(&self) -> Option<Duration> {
        self.feed.as_ref().map(|state| bounded(state.feed.config.poll_interval))
    }

    /// Reads the feed: every page the server has now, from the last cursor.
    pub(crate) async fn poll(&self, now: i64) -> Result<FeedPoll, FetchError> {
        let Some(state) = &self.feed else {
            return Ok(FeedPoll::Disabled);
        };
        let feed = &state.feed;
        let mut cursor = state.cursor.lock().await;
        let mut added = 0;
        for _ in 0..MAX_PAGES_PER_POLL {
            let url = feed_url(&feed.url, cursor.as_deref());
            let page = match get_json::<FeedPage>(&feed.client, &url, "revocation feed", feed.config.max_body_bytes)
                .await
            {
                Ok(page) => page,
                Err(e) if e.status() == Some(404) => {
                    state.available.store(0, Ordering::Release);
                    if !state.logged_no_feed.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            url = %feed.url,
                            "the writ server has no revocation feed ({} answered 404): revoked tokens stay valid here until they expire",
                            feed.url
                        );
                    }
                    return Ok(FeedPoll::NoFeed { next_poll: MAX_POLL_INTERVAL });
                }
                Err(e) if matches!(e.status(), Some(400 | 410)) && cursor.is_some() => {
                    tracing::warn!(url = %feed.url, "the revocation feed refused the cursor ({e}); reading it again from the start");
                    *cursor = None;
                    continue;
                }
                Err(e) => {
                    if state.failing.swap(true, Ordering::AcqRel) {
                        tracing::debug!(url = %feed.url, "reading the revocation feed still fails: {e}");
                    } else {
                        tracing::warn!(url = %feed.url, "reading the revocation feed failed: {e}; known revocations stay in force");
                    }
                    return Err(e);
                }
            };
            let count = page.revocations.len();
            added += self.insert(page.revocations.into_iter().map(|e| (e.jti, e.exp)), now);
            if let Some(next) = page.cursor {
                *cursor = Some(next);
            }
            state.last_success.store(now, Ordering::Release);
            state.available.store(1, Ordering::Release);
            if state.failing.swap(false, Ordering::AcqRel) {
                tracing::info!(url = %feed.url, "reading the revocation feed works again");
            }
            if count > 0 && page.poll_after_s == Some(0) {
                continue;
            }
            let next_poll = page.poll_after_s.map_or(feed.config.poll_interval, Duration::from_secs);
            return Ok(FeedPoll::Synced { added, next_poll: bounded(next_poll) });
        }
        // More pages are waiting: come back soon.
        Ok(FeedPoll::Synced { added, next_poll: MIN_POLL_INTERVAL })
    }
}

/// The feed URL with `since=<cursor>` (percent-encoded: the cursor is
/// opaque and may hold any character).
fn feed_url(base: &str, cursor: Option<&str>) -> String {
    match (cursor, reqwest::Url::parse(base)) {
        (Some(cursor), Ok(mut url)) => {
            url.query_pairs_mut().append_pair("since", cursor);
            url.into()
        }
        _ => base.to_owned(),
    }
}

fn bounded(interval: Duration) -> Duration {
    interval.clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_900_000_000;

    fn set(max: usize) -> Revocations {
        Revocations::new(30, max, None)
    }

    #[test]
    fn a_revoked_jti_is_refused_until_its_token_expires() {
        let r = set(10);
        assert_eq!(r.insert([("a".to_owned(), NOW + 600)], NOW), 1);
        assert_eq!(r.check("a", NOW), Err(VerifyError::Revoked { jti: "a".into() }));
        assert_eq!(r.check("b", NOW), Ok(()));
        assert_eq!(r.insert([("a".to_owned(), NOW + 600)], NOW), 0, "a known jti is not new");
    }

    #[test]
    fn entries_are_forgotten_once_their_token_cannot_verify() {
        let r = set(10);
        r.insert([("a".to_owned(), NOW + 60), ("b".to_owned(), NOW + 6000)], NOW);
        assert_eq!(r.status().revoked, 2);
        // Still kept within the leeway after exp: the token verifies then.
        r.insert([], NOW + 60 + 29);
        assert_eq!(r.status().revoked, 2);
        r.insert([], NOW + 60 + 30);
        assert_eq!(r.status().revoked, 1);
        assert_eq!(r.insert([("old".to_owned(), NOW - 3600)], NOW), 0, "an already expired token is not stored");
    }

    #[test]
    fn over_the_cap_the_soonest_expiring_are_forgotten() {
        let r = set(2);
        r.insert([("late".to_owned(), NOW + 900), ("soon".to_owned(), NOW + 100), ("mid".to_owned(), NOW + 500)], NOW);
        assert_eq!(r.status().revoked, 2);
        assert!(r.check("late", NOW).is_err());
        assert!(r.check("mid", NOW).is_err());
        assert_eq!(r.check("soon", NOW), Ok(()));
    }

    #[test]
    fn the_cursor_is_percent_encoded() {
        assert_eq!(feed_url("http://127.0.0.1:1/v1/revocations", None), "http://127.0.0.1:1/v1/revocations");
        assert_eq!(
            feed_url("http://127.0.0.1:1/v1/revocations", Some("a b&c=d/é")),
            "http://127.0.0.1:1/v1/revocations?since=a+b%26c%3Dd%2F%C3%A9"
        );
    }

    #[tokio::test]
    async fn without_a_feed_polling_is_disabled() {
        let r = set(2);
        assert_eq!(r.poll(NOW).await.expect("no io"), FeedPoll::Disabled);
        assert!(!r.status().following);
    }
}
