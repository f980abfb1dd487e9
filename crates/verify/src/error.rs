//! The errors of writ-verify: why a token was refused ([`VerifyError`]),
//! why a verifier could not be built ([`SetupError`]), and why fetching
//! from the writ server failed ([`FetchError`]).

use std::time::Duration;

/// Why a token was refused: one variant per failed check.
///
/// `Display` never contains a value read from a token whose signature has
/// not verified (an attacker chooses those); values of verified claims may
/// appear. Messages are written for the token's holder: a platform may send
/// them back as the `error_description` of a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is longer than [`VerifierConfig::max_token_bytes`](crate::VerifierConfig::max_token_bytes).
    #[error("token is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size of the presented token.
        len: usize,
        /// The configured bound.
        max: usize,
    },
    /// Not a compact JWS with a JSON header and a JSON object as payload.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header lists `crit` extensions; none are understood, so RFC 7515
    /// section 4.1.11 requires refusing the token.
    #[error("token header lists critical extensions (crit), which writ tokens never have")]
    CriticalHeader,
    /// The header's `typ` is not `at+jwt` (RFC 9068 section 4): an OIDC ID
    /// token, a CI job's token or another issuer's JWT, which must never be
    /// accepted as an access token even when signed by a trusted key.
    #[error("token is not a writ access token: its typ is not at+jwt (an oidc id token or another kind of jwt?)")]
    WrongType,
    /// The header's `alg` is not `EdDSA`, the one algorithm writ signs with.
    /// The algorithm comes from this allow-list, never from the header:
    /// stops `none` and HMAC-keyed-with-the-public-key forgeries.
    #[error("token algorithm is not EdDSA, the only one writ signs with")]
    Algorithm,
    /// The header names no `kid`; writ always sets one.
    #[error("token header has no kid; writ tokens always name their signing key")]
    MissingKeyId,
    /// No published key has the token's `kid`, even after a refetch (or the
    /// refetch cooldown forbade one).
    #[error("token kid names no key the writ server publishes: the token is forged, or from another writ server")]
    UnknownKey,
    /// The writ server's keys could not be fetched and none are cached.
    /// Temporary: answer 503 and let the client retry.
    #[error("the writ server's signing keys are temporarily unavailable; retry shortly")]
    KeysUnavailable,
    /// The signature does not verify with the key named by `kid`.
    #[error("token signature does not verify")]
    Signature,
    /// The verified `iss` is not byte for byte the writ server's URL.
    #[error("token issuer is {got}, not {expected}")]
    Issuer {
        /// The configured issuer.
        expected: String,
        /// The token's `iss`.
        got: String,
    },
    /// `aud` does not contain this platform's audience: the token was
    /// minted for another API and must not be spent here.
    #[error("token is for audience {}, not {expected}", render_list(.got))]
    Audience {
        /// The configured audience.
        expected: String,
        /// The token's audiences.
        got: Vec<String>,
    },
    /// `now >= exp + leeway`.
    #[error("token expired at {exp} (now {now}); get a fresh one")]
    Expired {
        /// The token's `exp`, seconds since the Unix epoch.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `nbf > now + leeway`.
    #[error("token is not valid before {nbf} (now {now}); check the clocks of writ and this platform")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The time of the check.
        now: i64,
    },
    /// `iat > now + leeway`.
    #[error("token is issued in the future, at {iat} (now {now}); check the clocks of writ and this platform")]
    IssuedInFuture {
        /// The token's `iat`.
        iat: i64,
        /// The time of the check.
        now: i64,
    },
    /// A required claim is absent.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// A claim is present with the wrong type or an empty value.
    #[error("token claim {claim} is invalid: {reason}")]
    InvalidClaim {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token's `jti` is in the revocation feed.
    #[error("token {jti} was revoked")]
    Revoked {
        /// The revoked token's id.
        jti: String,
    },
    /// [`RevocationConfig::max_staleness`](crate::RevocationConfig::max_staleness)
    /// is set and the revocation feed has not been read successfully for
    /// longer than that. Temporary: answer 503.
    #[error("the revocation feed has not been read for {}; refusing tokens until it is", render_age(*.since_secs))]
    RevocationsStale {
        /// Seconds since the last successful read (`None`: never read).
        since_secs: Option<i64>,
    },
}

fn render_list(items: &[String]) -> String {
    if items.is_empty() { "(none)".to_owned() } else { items.join(", ") }
}

fn render_age(since_secs: Option<i64>) -> String {
    match since_secs {
        Some(s) => format!("{s} s"),
        None => "as long as this verifier has run".to_owned(),
    }
}

impl VerifyError {
    /// A short, stable name of the failed check, for metrics and logs.
    pub fn reason_class(&self) -> &'static str {
        match self {
            VerifyError::TooLarge { .. } => "too_large",
            VerifyError::Malformed(_) | VerifyError::CriticalHeader => "malformed",
            VerifyError::WrongType => "wrong_type",
            VerifyError::Algorithm => "algorithm",
            VerifyError::MissingKeyId | VerifyError::UnknownKey => "unknown_key",
            VerifyError::KeysUnavailable => "keys_unavailable",
            VerifyError::Signature => "signature",
            VerifyError::Issuer { .. } => "issuer",
            VerifyError::Audience { .. } => "audience",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::IssuedInFuture { .. } => "issued_in_future",
            VerifyError::MissingClaim(_) | VerifyError::InvalidClaim { .. } => "invalid_claims",
            VerifyError::Revoked { .. } => "revoked",
            VerifyError::RevocationsStale { .. } => "revocations_stale",
        }
    }

    /// True when the failure is on this side, not the token's: retrying
    /// later with the same token may succeed. Answer these with 503, not
    /// 401.
    pub fn is_temporary(&self) -> bool {
        matches!(self, VerifyError::KeysUnavailable | VerifyError::RevocationsStale { .. })
    }
}

/// Why a [`Verifier`](crate::Verifier) could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The configured leeway is above [`MAX_LEEWAY`](crate::MAX_LEEWAY).
    #[error(
        "leeway {leeway:?} is above the {max:?} maximum: every second of leeway lengthens the life of a leaked token"
    )]
    Leeway {
        /// The configured leeway.
        leeway: Duration,
        /// The maximum.
        max: Duration,
    },
    /// The audience is empty.
    #[error("audience is empty: set it to the aud writ puts in tokens for this platform ([tokens] audience)")]
    EmptyAudience,
    /// The writ URL is not https (http only for loopback hosts).
    #[error(
        "writ url {0:?} must be https (plain http only for loopback hosts): over plain http anyone on the path could substitute the keys"
    )]
    InsecureUrl(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed: {0}")]
    Client(#[source] reqwest::Error),
    /// Discovery or the first JWKS fetch failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A pinned key set is not a JWK Set.
    #[error("the pinned key set is not a JSON Web Key Set: {0}")]
    PinnedJwks(#[source] serde_json::Error),
    /// A pinned key set holds no Ed25519 signing key with a `kid`.
    #[error("the pinned key set holds no Ed25519 signing key with a kid")]
    NoPinnedKeys,
}

/// Why a request to the writ server failed. Logged by the verifier; the
/// caller of [`Verifier::verify`](crate::Verifier::verify) sees at most
/// [`VerifyError::KeysUnavailable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Connecting, sending or reading failed, or the timeout elapsed.
    #[error("fetching the {what} from {url} failed: {source}")]
    Request {
        /// What was fetched.
        what: &'static str,
        /// From where.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a non-success status.
    #[error("the {what} at {url} answered HTTP {status}")]
    Status {
        /// What was fetched.
        what: &'static str,
        /// From where.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body exceeded the configured cap.
    #[error("the {what} at {url} is larger than the {max} bytes allowed")]
    TooLarge {
        /// What was fetched.
        what: &'static str,
        /// From where.
        url: String,
        /// The cap.
        max: usize,
    },
    /// The body is not the expected JSON.
    #[error("the {what} at {url} is not valid: {source}")]
    Json {
        /// What was fetched.
        what: &'static str,
        /// From where.
        url: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The discovery document names another issuer.
    #[error(
        "the discovery document at {url} names issuer {got:?}, not {expected:?}: they must be equal byte for byte (pass exactly the writ server's public_url)"
    )]
    IssuerMismatch {
        /// The discovery URL.
        url: String,
        /// The configured writ URL.
        expected: String,
        /// The document's `issuer`.
        got: String,
    },
    /// The discovery document's `jwks_uri` is not https (or loopback http).
    #[error("the discovery document's jwks_uri {0:?} is not https (plain http only for loopback hosts)")]
    InsecureJwksUri(String),
    /// The JWKS holds no Ed25519 signing key with a `kid`.
    #[error("the JWKS at {url} holds no Ed25519 signing key with a kid")]
    NoUsableKeys {
        /// The JWKS URL.
        url: String,
    },
}

impl FetchError {
    /// The HTTP status, when the server answered with a non-success one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
