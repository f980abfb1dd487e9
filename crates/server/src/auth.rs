//! Who is calling the admin API, and what they may do.
//!
//! Two kinds of credential:
//!
//! - **The operator root credential**, `writ_root_<43 base64url chars>`
//!   (256 random bits). The server is given only its SHA-256
//!   (`[admin] root_credential_hash = "sha256:<hex>"`); `writ credential new`
//!   and `writ serve --dev` make one. It creates orgs and may do everything
//!   an org admin may, on every org (incident response). SHA-256 rather
//!   than a slow password hash is deliberate: slow hashes protect
//!   low-entropy passwords, and a 256-bit random secret cannot be guessed
//!   from its SHA-256 however fast the hash is. The comparison is constant
//!   time.
//! - **writ admin tokens**: writ tokens whose scope holds only `writ:`
//!   permissions, obtained by OIDC exchange like any token (GitOps: an
//!   org's infra repository gets `writ:policy:write` for its own org, no
//!   stored secret). They carry `aud` = [`admin_audience`], never the
//!   platform's audience, so a platform that receives deploy tokens can't
//!   replay one here and a leaked admin token is worthless to the platform.
//!   A token acts only on its own `org`.
//!
//! Every admin token is verified in full on every call: Ed25519 signature
//! with writ's published keys, `typ` at+jwt, `iss`, `aud`, `exp`, `nbf`,
//! and not revoked.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use writ_core::token::{TokenCheck, TokenError, WritClaims};

use crate::app::AppState;
use crate::error::ApiError;
use crate::exchange::storage_error;

/// Every root credential starts with this, so it is recognisable in a
/// secret scanner and never mistaken for a JWT.
pub const ROOT_CREDENTIAL_PREFIX: &str = "writ_root_";

/// The suffix of `server.public_url` that forms the `aud` of admin tokens.
pub const ADMIN_AUDIENCE_PATH: &str = "/admin";

/// The `aud` of writ admin tokens: `<public_url>/admin`.
pub fn admin_audience(public_url: &str) -> String {
    format!("{public_url}{ADMIN_AUDIENCE_PATH}")
}

/// The SHA-256 of a credential, as configured (`sha256:<64 hex digits>`).
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialHash([u8; 32]);

impl CredentialHash {
    /// Parses `sha256:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<CredentialHash, String> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            "must be \"sha256:<64 hex digits>\"; `writ credential new` prints a credential and its hash".to_owned()
        })?;
        if hex.len() != 64 {
            return Err(format!("has {} hex digits after \"sha256:\"; a SHA-256 has 64", hex.len()));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| "is not hexadecimal after \"sha256:\"".to_owned())?;
        }
        Ok(CredentialHash(out))
    }

    /// The hash of `secret`.
    pub fn of(secret: &str) -> CredentialHash {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
        CredentialHash(out)
    }

    /// True when `presented` hashes to this; constant time in the hash.
    pub fn matches(&self, presented: &str) -> bool {
        verify_slices_are_equal(CredentialHash::of(presented).0.as_slice(), self.0.as_slice()).is_ok()
    }
}

impl std::fmt::Display for CredentialHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialHash({self})")
    }
}

/// A fresh root credential and its hash for the config.
pub fn generate_root_credential() -> anyhow::Result<(String, CredentialHash)> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let credential = format!("{ROOT_CREDENTIAL_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = CredentialHash::of(&credential);
    Ok((credential, hash))
}

/// writ's own admin permissions, as named in policies and token scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPermission {
    /// Read the org's policy and its history; dry-run evaluation.
    PolicyRead,
    /// Change the org's policy (implies [`AdminPermission::PolicyRead`]).
    PolicyWrite,
    /// Read the org's audit log; introspect the org's tokens.
    AuditRead,
    /// Revoke the org's tokens; introspect them.
    TokensRevoke,
}

impl AdminPermission {
    /// The permission's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminPermission::PolicyRead => "writ:policy:read",
            AdminPermission::PolicyWrite => "writ:policy:write",
            AdminPermission::AuditRead => "writ:audit:read",
            AdminPermission::TokensRevoke => "writ:tokens:revoke",
        }
    }
}

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The operator root credential.
    Root,
    /// An org admin token.
    Org(OrgAdmin),
}

/// The verified claims of an admin token.
#[derive(Debug, Clone)]
pub struct OrgAdmin {
    /// The one org the token may act on.
    pub org: String,
    /// Its `writ:` permissions.
    pub permissions: Vec<String>,
    /// Its `sub`: who, for policy history and revocation records.
    pub sub: String,
    /// Its `jti`.
    pub jti: String,
}

impl Principal {
    /// Who this is, for records (`root`, or the token's `sub`).
    pub fn name(&self) -> String {
        match self {
            Principal::Root => "root".to_owned(),
            Principal::Org(a) => a.sub.clone(),
        }
    }

    /// Allows the call when the principal holds `permission` on `org`.
    /// An org admin token is for its own org only: on any other org it can
    /// do nothing, whatever its permissions (checked before the other org
    /// is even looked up, so the answer reveals nothing about it).
    pub fn require(&self, org: &str, permission: AdminPermission) -> Result<(), ApiError> {
        let Principal::Org(admin) = self else { return Ok(()) };
        if admin.org != org {
            return Err(ApiError::forbidden(format!(
                "this token is for org {:?}; it grants nothing on org {org:?}",
                admin.org
            )));
        }
        let holds = |p: AdminPermission| admin.permissions.iter().any(|h| h == p.as_str());
        let allowed =
            holds(permission) || (permission == AdminPermission::PolicyRead && holds(AdminPermission::PolicyWrite));
        if !allowed {
            return Err(ApiError::forbidden(format!(
                "this token lacks {}; exchange for a token with that permission (your org's policy must grant it)",
                permission.as_str()
            )));
        }
        Ok(())
    }

    /// Only the root credential passes.
    pub fn require_root(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Principal::Root => Ok(()),
            Principal::Org(_) => Err(ApiError::forbidden(format!("{what} needs the operator root credential"))),
        }
    }
}

/// The bearer credential of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

/// Authenticates an admin call: the root credential, or a valid,
/// unrevoked admin token.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(presented) = bearer(headers) else {
        return Err(ApiError::unauthorized(
            "this endpoint needs Authorization: Bearer <writ admin token or operator root credential>",
        ));
    };
    if presented.starts_with(ROOT_CREDENTIAL_PREFIX) {
        return match &state.config.admin.root_credential_hash {
            Some(hash) if hash.matches(presented) => Ok(Principal::Root),
            Some(_) => Err(ApiError::unauthorized("the root credential is not this server's")),
            None => Err(ApiError::unauthorized(
                "this server has no root credential configured ([admin] root_credential_hash)",
            )),
        };
    }
    let admin_aud = admin_audience(&state.config.public_url);
    let claims = verify_writ_token(state, presented, &[admin_aud.as_str()]).await.map_err(|e| match e {
        AuthFailure::Token(TokenError::Audience) => ApiError::unauthorized(
            "this is not an admin token: admin calls need a token with writ: permissions (aud <public_url>/admin)",
        ),
        AuthFailure::Token(e) => ApiError::unauthorized(format!("invalid admin token: {e}")),
        AuthFailure::Revoked => ApiError::unauthorized("this admin token was revoked"),
        AuthFailure::Storage(e) => e,
    })?;
    Ok(Principal::Org(OrgAdmin {
        org: claims.org.clone(),
        permissions: claims.permissions().map(str::to_owned).collect(),
        sub: claims.sub.clone(),
        jti: claims.jti.clone(),
    }))
}

/// Why a writ token was not accepted.
#[derive(Debug)]
pub enum AuthFailure {
    /// A check of the token itself failed.
    Token(TokenError),
    /// It was revoked.
    Revoked,
    /// Storage could not say whether it was revoked (fail closed).
    Storage(ApiError),
}

/// Verifies one of writ's own tokens for use here: signature with a key
/// writ publishes now, header, `iss`, `aud` among `audiences`, times
/// (no leeway: writ checks its own tokens by its own clock), and not
/// revoked.
pub async fn verify_writ_token(state: &AppState, token: &str, audiences: &[&str]) -> Result<WritClaims, AuthFailure> {
    let now = state.clock.now();
    let check = TokenCheck {
        issuer: &state.config.public_url,
        audiences,
        leeway_secs: 0,
        max_token_bytes: state.config.limits.max_token_bytes,
    };
    let claims = writ_core::token::verify(token, |kid| state.keyring.public_key_at(kid, now), &check, now)
        .map_err(AuthFailure::Token)?;
    match state.store.is_revoked(&claims.jti).await {
        Ok(false) => Ok(claims),
        Ok(true) => Err(AuthFailure::Revoked),
        Err(e) => Err(AuthFailure::Storage(storage_error(e))),
    }
}

/// HTTP Basic credentials (RFC 7617), client id and secret
/// form-urldecoded as RFC 6749 §2.3.1 asks.
pub fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(rest.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape =
        |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((unescape(id)?, unescape(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_match_their_hash_and_nothing_else() {
        let (credential, hash) = generate_root_credential().expect("random");
        assert!(credential.starts_with(ROOT_CREDENTIAL_PREFIX));
        assert_eq!(credential.len(), ROOT_CREDENTIAL_PREFIX.len() + 43);
        assert!(hash.matches(&credential));
        assert!(!hash.matches(&format!("{credential}x")));
        let (other, _) = generate_root_credential().expect("random");
        assert!(!hash.matches(&other));
        assert_eq!(CredentialHash::parse(&hash.to_string()).expect("round trip"), hash);
    }

    #[test]
    fn hash_syntax_errors_say_what_is_expected() {
        assert!(CredentialHash::parse("deadbeef").expect_err("no prefix").contains("sha256:"));
        assert!(CredentialHash::parse("sha256:abc").expect_err("short").contains("64"));
        let bad = format!("sha256:{}", "zz".repeat(32));
        assert!(CredentialHash::parse(&bad).expect_err("not hex").contains("hexadecimal"));
    }

    #[test]
    fn sha256_of_a_known_string() {
        assert_eq!(
            CredentialHash::of("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn admin(org: &str, permissions: &[&str]) -> Principal {
        Principal::Org(OrgAdmin {
            org: org.into(),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            sub: "github:repo:acme/infra".into(),
            jti: "j".into(),
        })
    }

    #[test]
    fn an_org_admin_acts_only_on_its_org_and_within_its_permissions() {
        let a = admin("acme", &["writ:policy:write", "writ:audit:read"]);
        assert!(a.require("acme", AdminPermission::PolicyWrite).is_ok());
        assert!(a.require("acme", AdminPermission::PolicyRead).is_ok(), "write implies read");
        assert!(a.require("acme", AdminPermission::AuditRead).is_ok());
        let revoke = a.require("acme", AdminPermission::TokensRevoke).expect_err("not granted");
        assert_eq!(revoke.status(), http::StatusCode::FORBIDDEN);
        for p in [AdminPermission::PolicyRead, AdminPermission::PolicyWrite, AdminPermission::AuditRead] {
            let e = a.require("beta", p).expect_err("other org");
            assert!(e.description().contains("grants nothing on org \"beta\""), "{}", e.description());
        }
        assert!(a.require_root("creating an org").is_err());
        assert!(Principal::Root.require("beta", AdminPermission::TokensRevoke).is_ok());
        let read_only = admin("acme", &["writ:policy:read"]);
        assert!(read_only.require("acme", AdminPermission::PolicyWrite).is_err(), "read does not imply write");
    }

    #[test]
    fn bearer_and_basic_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic cGxhdGZvcm06czNjcjN0".parse().expect("header"));
        assert_eq!(bearer(&h), None);
        assert_eq!(basic(&h), Some(("platform".into(), "s3cr3t".into())));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().expect("header"));
        assert_eq!(basic(&h), None);
    }
}
