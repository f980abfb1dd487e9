//! Claims of an OIDC token whose signature, issuer, audience and times have
//! been verified.
//!
//! [`VerifiedClaims`] can only be built by [`crate::jwt::verify_oidc`] (and by
//! test helpers behind `cfg(test)`), so a policy decision can never be made on
//! claims that did not pass verification: "don't check, convert".

use serde_json::{Map, Value};

use crate::issuer::IssuerKind;

/// Verified claims of one OIDC subject token. Private fields: the only way in
/// is verification.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub(crate) issuer_name: String,
    pub(crate) issuer_kind: IssuerKind,
    pub(crate) issuer_url: String,
    pub(crate) jti: String,
    pub(crate) sub: String,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    pub(crate) claims: Map<String, Value>,
}

impl VerifiedClaims {
    /// The configured name of the issuer that signed the token (`github`).
    pub fn issuer_name(&self) -> &str {
        &self.issuer_name
    }

    /// The kind of that issuer.
    pub fn issuer_kind(&self) -> IssuerKind {
        self.issuer_kind
    }

    /// The issuer URL, exactly as in the token's `iss` (equal to the config).
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// The token's unique id; single-use is enforced on it.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// The token's `sub`. Never parse it for decisions: its format changes.
    pub fn sub(&self) -> &str {
        &self.sub
    }

    /// Issued-at, seconds since the Unix epoch.
    pub fn iat(&self) -> i64 {
        self.iat
    }

    /// Expiry, seconds since the Unix epoch.
    pub fn exp(&self) -> i64 {
        self.exp
    }

    /// One claim by name, as the issuer sent it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// A claim rendered as a string: strings as they are, numbers and
    /// booleans in their JSON spelling; `None` for absent, null, arrays and
    /// objects.
    pub fn get_str(&self, name: &str) -> Option<String> {
        match self.claims.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// All claims, for audit records and `policy test` output.
    pub fn all(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Builds claims without verification, for unit tests and for the
    /// offline `policy test --claims` path, which evaluates a claims file the
    /// operator typed in (no token exists there to verify). Never call it on
    /// the exchange path.
    pub fn from_trusted_claims_file(issuer_name: &str, issuer_kind: IssuerKind, claims: Map<String, Value>) -> Self {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let num = |k: &str| claims.get(k).and_then(Value::as_i64).unwrap_or_default();
        VerifiedClaims {
            issuer_name: issuer_name.to_owned(),
            issuer_kind,
            issuer_url: text("iss"),
            jti: text("jti"),
            sub: text("sub"),
            iat: num("iat"),
            exp: num("exp"),
            claims,
        }
    }
}
