//! TEST-ONLY support for writ: signing keys, hostile tokens, realistic GitHub Actions and GitLab CI claims, and a fake OIDC issuer.
//!
//! Used by the server's tests, the end-to-end tests, `writ serve --dev` and
//! benchmarks. Every key here is generated in memory and unprotected; nothing
//! in this crate may sign tokens a real deployment trusts.
//!
//! - [`TestKey`]: an RSA-2048 key that mints RS256 JWTs quickly (the key
//!   stays parsed between tokens).
//! - [`hostile`]: unsigned, HMAC-forged, raw and tampered tokens.
//! - [`GitHubClaims`], [`GitLabClaims`]: claim builders whose derived claims
//!   (`sub`, `ref_type`, `workflow_ref`, ...) stay consistent.
//! - [`FakeIssuer`]: discovery, JWKS, key rotation, outages and the GitHub
//!   Actions token endpoint on `127.0.0.1:0`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use writ_testkit::{FakeIssuer, IssuerShape};
//!
//! let issuer = FakeIssuer::start(IssuerShape::GitHub).await?;
//! let claims = issuer
//!     .github_claims("https://writ.example.com", "acme/web", 1_800_000_000)
//!     .environment("production")
//!     .build();
//! assert_eq!(claims["sub"], "repo:acme/web:environment:production");
//! let token = issuer.mint(&claims); // RS256, kid of the current published key
//! # assert_eq!(token.split('.').count(), 3);
//! # Ok(())
//! # }
//! ```

mod claims;
mod github;
mod gitlab;
pub mod hostile;
mod issuer;
mod jose;
mod key;

pub use github::{GITHUB_TOKEN_LIFETIME_SECS, GitHubClaims};
pub use gitlab::{GITLAB_TOKEN_LIFETIME_SECS, GitLabClaims};
pub use issuer::{ACTIONS_REQUEST_TOKEN, FakeIssuer, IssuerShape};
pub use key::TestKey;
