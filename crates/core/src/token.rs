//! writ's own access tokens: the RFC 9068 claims it mints and the signing
//! step itself.
//!
//! Pure like the rest of core: the caller supplies every timestamp, the key
//! and the identifiers; nothing here reads a clock or touches storage.
//! Verification of writ tokens lives with the resource servers
//! (`writ-verify`) and, for downscoping, in the server.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::b64;
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
    /// The `jti` of the writ token this one was narrowed from; absent on a
    /// token obtained by OIDC exchange. Revoking the parent revokes this
    /// token too (the server follows the chain, transitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
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
    /// The encoded token was not ASCII (a bug: base64url and dots are).
    #[error("encoding the token failed")]
    Encode,
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
    // Sized up front: growing from empty took several reallocations per token.
    let mut header_json = Vec::with_capacity(128);
    serde_json::to_writer(&mut header_json, &header)?;
    let mut claims_json = Vec::with_capacity(1024);
    serde_json::to_writer(&mut claims_json, claims)?;

    // Encoded straight into one buffer, not into a string per part and
    // then joined. Filled with dots, so the two separators are in place
    // once each part is encoded into its slice; the capacity leaves room
    // for the signature (64 bytes, 86 in base64url).
    let header_len = b64::encoded_len(header_json.len());
    let claims_len = b64::encoded_len(claims_json.len());
    let signing_input_len = header_len + 1 + claims_len;
    let mut jws = Vec::with_capacity(signing_input_len + 1 + 86);
    jws.resize(signing_input_len + 1, b'.');
    b64::encode_into(&header_json, &mut jws[..header_len]);
    b64::encode_into(&claims_json, &mut jws[header_len + 1..signing_input_len]);
    let signature = key.key_pair.try_sign(&jws[..signing_input_len]).map_err(|_| MintError::Sign)?;
    let signature = signature.as_ref();
    jws.resize(signing_input_len + 1 + b64::encoded_len(signature.len()), b'.');
    b64::encode_into(signature, &mut jws[signing_input_len + 1..]);
    // Base64url output and dots are ASCII.
    String::from_utf8(jws).map_err(|_| MintError::Encode)
}

/// The public JWK (RFC 8037) of an Ed25519 key:
/// `{"kty":"OKP","crv":"Ed25519","x":…,"kid":…,"alg":"EdDSA","use":"sig"}`.
pub fn ed25519_public_jwk(kid: &str, public_key_bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64::encode(public_key_bytes),
        "kid": kid,
        "alg": SIGNING_ALGORITHM,
        "use": "sig",
    })
}

/// Permissions whose names start with this prefix govern writ itself
/// (`writ:policy:write`, …). A token carries either only these, with
/// writ's admin audience, or none of them, with the platform's audience:
/// the two kinds never mix, so a platform that receives a deploy token can
/// never replay it against writ's admin API.
pub const ADMIN_PERMISSION_PREFIX: &str = "writ:";

/// True for writ's own admin permissions.
pub fn is_admin_permission(permission: &str) -> bool {
    permission.starts_with(ADMIN_PERMISSION_PREFIX)
}

/// What a writ token must satisfy besides its signature.
#[derive(Debug, Clone, Copy)]
pub struct TokenCheck<'a> {
    /// The `iss` writ stamps on its tokens (its public URL).
    pub issuer: &'a str,
    /// Audiences accepted here; the token's `aud` must be one of them.
    pub audiences: &'a [&'a str],
    /// Clock-skew allowance on `exp` and `nbf`, seconds. The server checks
    /// its own tokens against its own clock and passes 0.
    pub leeway_secs: i64,
    /// Largest accepted token, bytes; checked before anything is decoded.
    pub max_token_bytes: usize,
}

/// Why a writ token was refused: one variant per failed check. Messages
/// never contain values read from the unverified token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`TokenCheck::max_token_bytes`].
    #[error("token is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size of the presented token.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Not a compact JWS with JSON header and writ claims.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header's `typ` is not `at+jwt`: an ID token or another JWT.
    #[error("token is not a writ access token (typ is not at+jwt)")]
    WrongType,
    /// The header's `alg` is not EdDSA, or it lists `crit` extensions.
    #[error("token algorithm is not EdDSA")]
    Algorithm,
    /// No published key has the token's `kid`.
    #[error("token names no signing key of this server")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature does not verify")]
    Signature,
    /// Signed by writ, but `iss` is another writ deployment's URL.
    #[error("token was issued by another server")]
    Issuer,
    /// `aud` is none of the accepted audiences.
    #[error("token is for another audience")]
    Audience,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` lies in the future.
    #[error("token is not valid yet")]
    NotYetValid,
}

#[derive(Deserialize)]
struct UnverifiedHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Verifies one of writ's own tokens: header (`alg` EdDSA, `typ` at+jwt,
/// no `crit`), Ed25519 signature with the public key `public_key(kid)`
/// returns, then `iss`, `aud`, `exp` and `nbf` against `now`. Pure: the
/// keys and the time are parameters. Revocation is the caller's business
/// (it needs storage).
///
/// The `kid` read from the header before the signature verifies is used
/// only to pick the key; nothing else from the token is trusted until then.
pub fn verify(
    token: &str,
    public_key: impl Fn(&str) -> Option<Vec<u8>>,
    check: &TokenCheck<'_>,
    now: i64,
) -> Result<WritClaims, TokenError> {
    if token.len() > check.max_token_bytes {
        return Err(TokenError::TooLarge { len: token.len(), max: check.max_token_bytes });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let header_bytes = b64::decode(header_b64).map_err(|_| TokenError::Malformed("header is not base64url"))?;
    let unverified_header: UnverifiedHeader =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed("header is not a JOSE header"))?;
    let typ_ok = unverified_header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(TOKEN_TYPE) || t.eq_ignore_ascii_case("application/at+jwt"));
    if !typ_ok {
        return Err(TokenError::WrongType);
    }
    if unverified_header.alg != SIGNING_ALGORITHM || unverified_header.crit.is_some() {
        return Err(TokenError::Algorithm);
    }
    let unverified_kid = unverified_header.kid.ok_or(TokenError::UnknownKey)?;
    let key = public_key(&unverified_kid).ok_or(TokenError::UnknownKey)?;
    let signature = b64::decode(signature_b64).map_err(|_| TokenError::Signature)?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &key)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::Signature)?;
    // The signature covers the payload: from here on the claims are writ's.
    let payload = b64::decode(payload_b64).map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let claims: WritClaims =
        serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed("claims are not writ token claims"))?;
    if claims.iss != check.issuer {
        return Err(TokenError::Issuer);
    }
    if !check.audiences.contains(&claims.aud.as_str()) {
        return Err(TokenError::Audience);
    }
    let leeway = check.leeway_secs.max(0);
    if now >= claims.exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if claims.nbf > now.saturating_add(leeway) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
            parent: None,
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

    fn check<'a>(auds: &'a [&'a str]) -> TokenCheck<'a> {
        TokenCheck { issuer: "https://writ.example.com", audiences: auds, leeway_secs: 0, max_token_bytes: 16 * 1024 }
    }

    fn keys_of(key: &SigningKey) -> impl Fn(&str) -> Option<Vec<u8>> + '_ {
        move |kid: &str| (kid == key.kid()).then(|| key.public_key_bytes().to_vec())
    }

    #[test]
    fn verify_accepts_a_minted_token_and_checks_each_claim() {
        let key = new_key("k");
        let token = mint(&claims(), &key).expect("mint");
        let auds = ["https://api.platform.example"];
        let now = 1_900_000_100;
        assert_eq!(verify(&token, keys_of(&key), &check(&auds), now).expect("valid"), claims());

        assert_eq!(verify(&token, keys_of(&key), &check(&["other"]), now), Err(TokenError::Audience));
        let mut other_iss = check(&auds);
        other_iss.issuer = "https://elsewhere";
        assert_eq!(verify(&token, keys_of(&key), &other_iss, now), Err(TokenError::Issuer));
        assert_eq!(verify(&token, keys_of(&key), &check(&auds), 4_000_000_000), Err(TokenError::Expired));
        assert_eq!(verify(&token, keys_of(&key), &check(&auds), 1_800_000_000), Err(TokenError::NotYetValid));
        assert_eq!(verify(&token, |_| None, &check(&auds), now), Err(TokenError::UnknownKey));
        let other = new_key("k");
        assert_eq!(verify(&token, keys_of(&other), &check(&auds), now), Err(TokenError::Signature));
    }

    #[test]
    fn verify_refuses_tampering_and_foreign_headers() {
        let key = new_key("k");
        let auds = ["https://api.platform.example"];
        let now = 1_900_000_100;
        let token = mint(&claims(), &key).expect("mint");
        let parts: Vec<&str> = token.split('.').collect();

        let mut wider = claims();
        wider.scope = "deploy logs:read admin".into();
        let forged =
            format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).expect("json")), parts[2]);
        assert_eq!(verify(&forged, keys_of(&key), &check(&auds), now), Err(TokenError::Signature));

        let header =
            |h: serde_json::Value| format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(h.to_string()), parts[1], parts[2]);
        let id_token = header(json!({"alg": "EdDSA", "typ": "JWT", "kid": "k"}));
        assert_eq!(verify(&id_token, keys_of(&key), &check(&auds), now), Err(TokenError::WrongType));
        let hmac = header(json!({"alg": "HS256", "typ": "at+jwt", "kid": "k"}));
        assert_eq!(verify(&hmac, keys_of(&key), &check(&auds), now), Err(TokenError::Algorithm));
        let crit = header(json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k", "crit": ["exp"]}));
        assert_eq!(verify(&crit, keys_of(&key), &check(&auds), now), Err(TokenError::Algorithm));
        assert!(matches!(verify("a.b", keys_of(&key), &check(&auds), now), Err(TokenError::Malformed(_))));
        let mut small = check(&auds);
        small.max_token_bytes = 10;
        assert!(matches!(verify(&token, keys_of(&key), &small, now), Err(TokenError::TooLarge { .. })));
    }

    #[test]
    fn parent_claim_round_trips_and_is_omitted_when_absent() {
        let mut c = claims();
        assert!(serde_json::to_value(&c).expect("json").get("parent").is_none());
        c.parent = Some("parent-jti".into());
        let key = new_key("k");
        let token = mint(&c, &key).expect("mint");
        let got = verify(&token, keys_of(&key), &check(&["https://api.platform.example"]), 1_900_000_100).expect("ok");
        assert_eq!(got.parent.as_deref(), Some("parent-jti"));
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
