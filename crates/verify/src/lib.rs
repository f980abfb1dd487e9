//! writ-verify: verifies writ access tokens in a platform's API, offline,
//! against the writ server's published keys, and says what each token
//! allows.
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use writ_verify::{Target, Verifier, VerifierConfig};
//!
//! // Once, at start-up: discovery, keys, revocation feed.
//! let verifier =
//!     Verifier::discover("https://writ.example.com", VerifierConfig::new("https://api.platform.example")).await?;
//!
//! // Per request: who may do what.
//! let grant = verifier.verify(token).await?;          // 401 on error
//! grant.require("acme-prod", "deploy", Target::App("web"))?; // 403 on error
//! println!("deploying web for {} ({:?})", grant.subject(), grant.provenance().repository);
//! # Ok(())
//! # }
//! ```
//!
//! What is checked, in order ([`Verifier::verify_at`] has the detail):
//! size and shape; header `typ` = `at+jwt` (RFC 9068: OIDC ID tokens and
//! other JWTs are refused); `alg` = `EdDSA` from a fixed allow-list; the key
//! named by `kid` from writ's JWKS (cached; an unknown `kid` refetches at
//! most once per cooldown); the signature; `iss` exactly the writ URL;
//! `aud` contains this platform's audience; `exp`/`nbf`/`iat` with at most
//! 60 s leeway; `jti` present and not revoked. Then [`Grant::require`]
//! checks org, permission and app or machine limits.
//!
//! With the `axum` feature, [`axum::WritGrant`] does the first half as an
//! extractor and answers 401/403/503 as RFC 6750 prescribes.
//!
//! writ-verify depends on neither `writ-server` nor `writ-core`: a platform
//! pulls in only jsonwebtoken, reqwest, serde, tokio and tracing.

#[cfg(feature = "axum")]
pub mod axum;
mod config;
mod error;
mod fetch;
mod grant;
mod revocation;
#[cfg(test)]
mod test_support;
mod token;
mod verifier;

pub use config::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_KEYS_MAX_AGE, DEFAULT_LEEWAY, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_FEED_BYTES,
    DEFAULT_MAX_REVOKED, DEFAULT_MAX_TOKEN_BYTES, DEFAULT_POLL_INTERVAL, DEFAULT_REFRESH_COOLDOWN, MAX_LEEWAY,
    MAX_POLL_INTERVAL, MIN_POLL_INTERVAL, RevocationConfig, VerifierConfig,
};
pub use error::{FetchError, SetupError, VerifyError};
pub use grant::{Denied, DeniedTarget, Grant, Provenance, Target};
pub use revocation::{FeedPoll, RevocationStatus};
pub use token::{ALGORITHM, TOKEN_TYPE};
pub use verifier::Verifier;
