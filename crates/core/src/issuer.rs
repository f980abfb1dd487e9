//! Issuer kinds and the per-issuer facts that verification and policy need.

use serde::{Deserialize, Serialize};

/// What shape of OIDC identity an issuer produces; decides which policy sugar
/// (`repository`, `project_path`, …) and which claim names are valid for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// GitHub Actions (github.com, GHES, GHE.com, enterprise-slug issuers).
    #[serde(rename = "github")]
    GitHub,
    /// GitLab CI ID tokens (gitlab.com or self-managed).
    #[serde(rename = "gitlab")]
    GitLab,
    /// Any other OIDC issuer; rules constrain it with `claims = {…}` only.
    Generic,
}

impl IssuerKind {
    /// The name used in config files and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::GitHub => "github",
            IssuerKind::GitLab => "gitlab",
            IssuerKind::Generic => "generic",
        }
    }
}

impl std::fmt::Display for IssuerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
