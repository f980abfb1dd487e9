//! writ's own access tokens: the RFC 9068 claims it mints and the signing
//! step itself.
//!
//! Pure like the rest of core: the caller supplies every timestamp, the key
//! and the identifiers; nothing here reads a clock or touches storage.
//! Verification of writ tokens lives with the resource servers
//! (`writ-verify`) and, for downscoping, in the server.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::claims::VerifiedClaims;
use crate::issuer::IssuerKind;

/// The JOSE `typ` of every writ token (RFC 9068 section 2.1), so a writ
/// token can never be confused with an ID token by a library that checks it.
pub const TOKEN_TYPE: &str = "at+jwt";

/// The JOSE `alg` writ signs with: Ed25519 (RFC 8037).
pub const SIGNING_ALGORITHM: &str = "EdDSA";

/// Claims of one writ access token (RFC 9068 plus writ's authorization
/// claims). Resource servers enforce `aud`, `org`, `scope`, `apps` and
/// `machines`; `ci` is provenance for their logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritClaims {
    /// This writ server's public URL.
    pub iss: String,
    /// The platform API the token is meant for.
    pub aud: String,
    /// `<issuer-name>:<oidc sub>`: who the token was issued to.
    pub sub: String,
    /// RFC 9068 `client_id`: the party that requested the token.
    pub client_id: String,
    /// Issued-at, seconds since the Unix epoch.
    pub iat: i64,
    /// Not-before, seconds since the Unix epoch.
    pub nbf: i64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Unique token id; revocation and introspection refer to it.
    pub jti: String,
    /// Granted permissions, space-separated (RFC 9068 `scope`).
    pub scope: String,
    /// The one organization this token is valid for.
    pub org: String,
    /// Apps the token is limited to; absent means not limited by app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<Vec<String>>,
    /// Machines the token is limited to; absent means not limited by machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<Vec<String>>,
    /// Where the CI job that obtained the token came from.
    pub ci: CiProvenance,
}

impl WritClaims {
    /// The granted permissions, split out of `scope`.
    pub fn permissions(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }
}

/// Provenance of the CI job that obtained a token, in GitHub's vocabulary
/// whatever the issuer (see [`CiProvenance::from_claims`] for the mapping).
/// Every field is optional and omitted from the JSON when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiProvenance {
    /// The OIDC issuer URL of the subject token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `owner/name` (GitLab: the project path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The repository's immutable id (GitLab: project id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// The owner's name (GitLab: the namespace path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_owner: Option<String>,
    /// The owner's immutable id (GitLab: namespace id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_owner_id: Option<String>,
    /// The git ref the job ran on, as the issuer spells it.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
    /// The commit the job ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// The workflow file and ref (GitLab: `ci_config_ref_uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_ref: Option<String>,
    /// The deployment environment, when the job declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The workflow run id (GitLab: pipeline id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The attempt number of that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_attempt: Option<String>,
    /// The user that triggered the run (GitLab: `user_login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl CiProvenance {
    /// Provenance from verified OIDC claims. GitHub claims keep their names;
    /// GitLab's are mapped to GitHub's vocabulary (`project_path` →
    /// `repository`, `namespace_id` → `repository_owner_id`, `pipeline_id` →
    /// `run_id`, `ci_config_ref_uri` → `workflow_ref`, …); for a generic
    /// issuer only the issuer is known, because claim names are not.
    /// Numeric claims are rendered as strings.
    pub fn from_claims(claims: &VerifiedClaims) -> Self {
        let get = |name: &str| claims.get_str(name);
        let issuer = Some(claims.issuer_url().to_owned());
        match claims.issuer_kind() {
            IssuerKind::GitHub => CiProvenance {
                issuer,
                repository: get("repository"),
                repository_id: get("repository_id"),
                repository_owner: get("repository_owner"),
                repository_owner_id: get("repository_owner_id"),
                ref_: get("ref"),
                sha: get("sha"),
                workflow_ref: get("workflow_ref"),
                environment: get("environment"),
                run_id: get("run_id"),
                run_attempt: get("run_attempt"),
                actor: get("actor"),
            },
            IssuerKind::GitLab => CiProvenance {
                issuer,
                repository: get("project_path"),
                repository_id: get("project_id"),
                repository_owner: get("namespace_path"),
                repository_owner_id: get("namespace_id"),
                ref_: get("ref"),
                sha: get("sha"),
                workflow_ref: get("ci_config_ref_uri"),
                environment: get("environment"),
                run_id: get("pipeline_id"),
                run_attempt: None,
                actor: get("user_login"),
            },
            IssuerKind::Generic => CiProvenance { issuer, ..CiProvenance::default() },
        }
    }
}

/// A private Ed25519 signing key with its `kid`.
///
/// The PKCS#8 document is parsed once, here, so minting on the hot path only
/// signs. `Debug` shows the kid and the public key, never private material.
pub struct SigningKey {
    kid: String,
    key_pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Parses an Ed25519 private key from PKCS#8 (v1 or v2) DER.
    pub fn from_pkcs8_der(kid: impl Into<String>, der: &[u8]) -> Result<Self, KeyError> {
        let key_pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| KeyError::InvalidPkcs8)?;
        Ok(SigningKey { kid: kid.into(), key_pair })
    }

    /// The key id that goes into the JOSE header and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key_bytes(&self) -> &[u8] {
        self.key_pair.public_key().as_ref()
    }

    /// The public half as a JWK, for the JWKS document.
    pub fn public_jwk(&self) -> serde_json::Value {
        ed25519_public_jwk(&self.kid, self.public_key_bytes())
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("private_key", &"[redacted]").finish()
    }
}

/// A signing key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The bytes are not an Ed25519 PKCS#8 private key.
    #[error("not an ed25519 pkcs#8 private key")]
    InvalidPkcs8,
}

/// Minting failed; neither case depends on the caller's input.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The claims could not be serialized.
    #[error("serializing token claims: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The crypto library refused to sign.
    #[error("signing the token failed")]
    Sign,
}

/// The JOSE header of a writ token; field order is the serialized order.
#[derive(Serialize)]
struct JoseHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// Mints a signed writ token: a compact JWS with header
/// `{"alg":"EdDSA","typ":"at+jwt","kid":…}` over `claims`.
///
/// The JWS is assembled here rather than through `jsonwebtoken::encode`
/// because that re-parses the PKCS#8 key (deriving the public key) on every
/// call, which would double the signing cost on the exchange hot path.
pub fn mint(claims: &WritClaims, key: &SigningKey) -> Result<String, MintError> {
    let header = JoseHeader { alg: SIGNING_ALGORITHM, typ: TOKEN_TYPE, kid: &key.kid };
    let header_json = serde_json::to_vec(&header)?;
    let claims_json = serde_json::to_vec(claims)?;

    let mut jws = String::with_capacity((header_json.len() + claims_json.len()) * 4 / 3 + 2 + 86 + 8);
    URL_SAFE_NO_PAD.encode_string(&header_json, &mut jws);
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims_json, &mut jws);
    let signature = key.key_pair.try_sign(jws.as_bytes()).map_err(|_| MintError::Sign)?;
    jws.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
    Ok(jws)
}

/// The public JWK (RFC 8037) of an Ed25519 key:
/// `{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}`.
pub fn ed25519_public_jwk(kid: &str, public_key_bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(public_key_bytes),
        "kid": kid,
        "alg": SIGNING_ALGORITHM,
        "use": "sig",
    })
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::json;

    use super::*;

    fn new_key(kid: &str) -> SigningKey {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        SigningKey::from_pkcs8_der(kid, der.as_ref()).expect("generated key parses")
    }

    fn claims() -> WritClaims {
        WritClaims {
            iss: "https://writ.example.com".into(),
            aud: "https://api.platform.example".into(),
            sub: "github:repo:acme/web:environment:production".into(),
            client_id: "github:acme/web".into(),
            iat: 1_900_000_000,
            nbf: 1_900_000_000,
            // Far in the future: jsonwebtoken's validation reads the clock.
            exp: 4_000_000_000,
            jti: "0197a3b0-0000-7000-8000-000000000001".into(),
            scope: "deploy logs:read".into(),
            org: "acme-prod".into(),
            apps: Some(vec!["web".into()]),
            machines: None,
            ci: CiProvenance {
                issuer: Some("https://token.actions.githubusercontent.com".into()),
                repository: Some("acme/web".into()),
                repository_id: Some("123".into()),
                ref_: Some("refs/heads/main".into()),
                environment: Some("production".into()),
                run_id: Some("42".into()),
                ..CiProvenance::default()
            },
        }
    }

    fn decoding_key(key: &SigningKey) -> DecodingKey {
        let jwk: Jwk = serde_json::from_value(key.public_jwk()).expect("jwk parses");
        DecodingKey::from_jwk(&jwk).expect("jwk is a usable key")
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["https://api.platform.example"]);
        v.set_issuer(&["https://writ.example.com"]);
        v
    }

    #[test]
    fn minted_token_verifies_with_public_jwk_and_round_trips() {
        let key = new_key("kid-1");
        let token = mint(&claims(), &key).expect("mint");

        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some("kid-1"));
        assert_eq!(header.alg, Algorithm::EdDSA);

        let data = jsonwebtoken::decode::<WritClaims>(&token, &decoding_key(&key), &validation()).expect("verifies");
        assert_eq!(data.claims, claims());
    }

    #[test]
    fn header_is_exactly_alg_typ_kid() {
        let key = new_key("k");
        let token = mint(&claims(), &key).expect("mint");
        let first = token.split('.').next().expect("three parts");
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(first).expect("b64")).expect("json");
        assert_eq!(header, json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k"}));
    }

    #[test]
    fn token_signed_by_another_key_is_rejected() {
        let token = mint(&claims(), &new_key("a")).expect("mint");
        let other = new_key("a");
        assert!(jsonwebtoken::decode::<WritClaims>(&token, &decoding_key(&other), &validation()).is_err());
    }

    #[test]
    fn tampered_claims_are_rejected() {
        let key = new_key("k");
        let token = mint(&claims(), &key).expect("mint");
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut wider = claims();
        wider.org = "acme-staging".into();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).expect("json"));
        parts[1] = &forged;
        let forged_token = parts.join(".");
        assert!(jsonwebtoken::decode::<WritClaims>(&forged_token, &decoding_key(&key), &validation()).is_err());
    }

    #[test]
    fn unrestricted_apps_and_machines_are_omitted_and_ref_is_named_ref() {
        let mut c = claims();
        c.apps = None;
        let value = serde_json::to_value(&c).expect("json");
        assert!(value.get("apps").is_none());
        assert!(value.get("machines").is_none());
        assert_eq!(value["ci"]["ref"], "refs/heads/main");
        assert!(value["ci"].get("sha").is_none(), "unknown provenance is omitted, not null");
    }

    #[test]
    fn jwk_has_rfc8037_shape() {
        let jwk = ed25519_public_jwk("kid-9", &[7u8; 32]);
        assert_eq!(
            jwk,
            json!({
                "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]),
                "kid": "kid-9", "alg": "EdDSA", "use": "sig"
            })
        );
    }

    #[test]
    fn garbage_key_is_refused() {
        assert!(matches!(SigningKey::from_pkcs8_der("k", b"not a key"), Err(KeyError::InvalidPkcs8)));
    }

    #[test]
    fn debug_does_not_show_private_key() {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        let key = SigningKey::from_pkcs8_der("k", der.as_ref()).expect("parses");
        assert_eq!(format!("{key:?}"), r#"SigningKey { kid: "k", private_key: "[redacted]" }"#);
    }

    fn verified(kind: IssuerKind, claims: serde_json::Value) -> VerifiedClaims {
        let serde_json::Value::Object(map) = claims else { panic!("object") };
        VerifiedClaims::from_trusted_claims_file(kind.as_str(), kind, map)
    }

    #[test]
    fn provenance_from_github_claims() {
        let c = verified(
            IssuerKind::GitHub,
            json!({
                "iss": "https://token.actions.githubusercontent.com",
                "repository": "acme/web", "repository_id": "123",
                "repository_owner": "acme", "repository_owner_id": "9",
                "ref": "refs/heads/main", "sha": "abc", "environment": "production",
                "workflow_ref": "acme/web/.github/workflows/deploy.yml@refs/heads/main",
                "run_id": "42", "run_attempt": "2", "actor": "octocat",
            }),
        );
        let p = CiProvenance::from_claims(&c);
        assert_eq!(
            p,
            CiProvenance {
                issuer: Some("https://token.actions.githubusercontent.com".into()),
                repository: Some("acme/web".into()),
                repository_id: Some("123".into()),
                repository_owner: Some("acme".into()),
                repository_owner_id: Some("9".into()),
                ref_: Some("refs/heads/main".into()),
                sha: Some("abc".into()),
                workflow_ref: Some("acme/web/.github/workflows/deploy.yml@refs/heads/main".into()),
                environment: Some("production".into()),
                run_id: Some("42".into()),
                run_attempt: Some("2".into()),
                actor: Some("octocat".into()),
            }
        );
    }

    #[test]
    fn provenance_from_gitlab_claims_maps_names() {
        let c = verified(
            IssuerKind::GitLab,
            json!({
                "iss": "https://gitlab.com",
                "project_path": "acme/web", "project_id": "77",
                "namespace_path": "acme", "namespace_id": 5,
                "ref": "main", "sha": "def", "environment": "production",
                "ci_config_ref_uri": "gitlab.com/acme/web//.gitlab-ci.yml@refs/heads/main",
                "pipeline_id": "1001", "user_login": "alice",
                "repository": "must-not-be-used",
            }),
        );
        let p = CiProvenance::from_claims(&c);
        assert_eq!(p.issuer.as_deref(), Some("https://gitlab.com"));
        assert_eq!(p.repository.as_deref(), Some("acme/web"));
        assert_eq!(p.repository_id.as_deref(), Some("77"));
        assert_eq!(p.repository_owner.as_deref(), Some("acme"));
        assert_eq!(p.repository_owner_id.as_deref(), Some("5"), "numbers become strings");
        assert_eq!(p.ref_.as_deref(), Some("main"));
        assert_eq!(p.workflow_ref.as_deref(), Some("gitlab.com/acme/web//.gitlab-ci.yml@refs/heads/main"));
        assert_eq!(p.run_id.as_deref(), Some("1001"));
        assert_eq!(p.run_attempt, None);
        assert_eq!(p.actor.as_deref(), Some("alice"));
    }

    #[test]
    fn provenance_from_generic_issuer_is_issuer_only() {
        let c = verified(
            IssuerKind::Generic,
            json!({"iss": "https://ci.example", "repository": "acme/web", "ref": "main"}),
        );
        assert_eq!(
            CiProvenance::from_claims(&c),
            CiProvenance { issuer: Some("https://ci.example".into()), ..CiProvenance::default() }
        );
    }
}
