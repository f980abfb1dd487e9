//! How a [`Verifier`](crate::Verifier) checks tokens and talks to writ:
//! [`VerifierConfig`], [`RevocationConfig`] and their documented defaults.

use std::time::Duration;

/// Largest accepted clock-skew leeway: 60 s.
///
/// Every second of leeway lengthens the life of a leaked token past its
/// `exp`; writ tokens live minutes, so a minute of skew is already
/// generous. A larger configured leeway is refused at setup.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// Default leeway on `exp`, `nbf` and `iat`: 30 s.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default bound on a presented token: 16 KiB, checked before decoding. A
/// writ token is about 1 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default timeout of one request to writ, connect to last byte: 5 s.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on a discovery document or JWKS body: 256 KiB. Stops a
/// broken or hostile endpoint from making the platform buffer without end.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default minimum time between two JWKS fetches: 60 s.
///
/// Anyone can send tokens naming random `kid`s; without a cooldown each
/// would make the platform fetch writ's JWKS (a refetch storm against writ,
/// and requests queued behind the fetch). Rotation still needs no failed
/// request: writ publishes a new key an hour (by default) before it signs
/// with it, far longer than this cooldown, so any fetch in that hour
/// already brings the new key.
pub const DEFAULT_REFRESH_COOLDOWN: Duration = Duration::from_secs(60);
/// Default age after which the keys are refetched in the background:
/// 15 min, well inside writ's one-hour pre-publication window, so the next
/// key is known before the first token signed with it arrives.
pub const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// Default pause between two polls of the revocation feed when the server
/// names none (`poll_after_s`) and after a failed poll: 10 s.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest pause between polls, whatever the server says: 1 s.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest pause between polls, whatever the server says, and the pause
/// before asking a server without a feed again: 5 min.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Default cap on remembered revocations: 250 000 (tens of MB at most).
/// Entries leave when their token expires, so this is reached only if
/// hundreds of thousands of live tokens are revoked at once.
pub const DEFAULT_MAX_REVOKED: usize = 250_000;
/// Default cap on one revocation feed response: 8 MiB.
pub const DEFAULT_MAX_FEED_BYTES: usize = 8 * 1024 * 1024;

/// How a [`Verifier`](crate::Verifier) checks tokens. Start from
/// [`VerifierConfig::new`] and override fields:
///
/// ```
/// # use std::time::Duration;
/// # use writ_verify::VerifierConfig;
/// let config = VerifierConfig {
///     leeway: Duration::from_secs(10),
///     ..VerifierConfig::new("https://api.platform.example")
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// The `aud` writ puts in tokens for this platform (the server's
    /// `[tokens] audience`). A token for another API is refused.
    pub audience: String,
    /// Clock-skew tolerance on `exp`, `nbf`, `iat`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Largest accepted token; see [`DEFAULT_MAX_TOKEN_BYTES`].
    pub max_token_bytes: usize,
    /// Timeout of one request to writ; see [`DEFAULT_FETCH_TIMEOUT`].
    pub fetch_timeout: Duration,
    /// Cap on a discovery or JWKS body; see [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// Minimum time between two JWKS fetches; see
    /// [`DEFAULT_REFRESH_COOLDOWN`]. Counted in whole seconds.
    pub refresh_cooldown: Duration,
    /// Age after which keys are refetched in the background; see
    /// [`DEFAULT_KEYS_MAX_AGE`].
    pub keys_max_age: Duration,
    /// Following writ's revocation feed.
    pub revocations: RevocationConfig,
}

impl VerifierConfig {
    /// A configuration for `audience` with the documented defaults.
    pub fn new(audience: impl Into<String>) -> Self {
        VerifierConfig {
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            refresh_cooldown: DEFAULT_REFRESH_COOLDOWN,
            keys_max_age: DEFAULT_KEYS_MAX_AGE,
            revocations: RevocationConfig::default(),
        }
    }
}

/// Following writ's revocation feed (`GET {writ}/v1/revocations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    /// Whether [`Verifier::discover`](crate::Verifier::discover) reads the
    /// feed once before returning and then follows it in the background.
    /// Default: true.
    pub follow: bool,
    /// Pause between polls when the server names none, and after a failed
    /// poll; see [`DEFAULT_POLL_INTERVAL`]. The server's `poll_after_s`
    /// wins otherwise, within [`MIN_POLL_INTERVAL`]..=[`MAX_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Cap on remembered revocations; see [`DEFAULT_MAX_REVOKED`]. Past it
    /// the soonest-expiring entries are dropped, with a warning.
    pub max_revoked: usize,
    /// Cap on one feed response; see [`DEFAULT_MAX_FEED_BYTES`].
    pub max_body_bytes: usize,
    /// When set, tokens are refused with
    /// [`VerifyError::RevocationsStale`](crate::VerifyError::RevocationsStale)
    /// while the feed has not been read successfully for longer than this
    /// (fail closed: a writ outage then becomes a platform outage). Default
    /// `None`: keep accepting tokens with the revocations known so far, and
    /// log the outage.
    pub max_staleness: Option<Duration>,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            follow: true,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_revoked: DEFAULT_MAX_REVOKED,
            max_body_bytes: DEFAULT_MAX_FEED_BYTES,
            max_staleness: None,
        }
    }
}

/// A duration in whole seconds, as compared with `now`.
pub(crate) fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}
