//! The checks on one writ token, given the keys and the time: pure, no I/O.
//!
//! [`peek_unverified`] is the one function that reads a token before its
//! signature is verified; what it returns is named `unverified_*` and is
//! used only to refuse early and to pick the key. [`verify_signed`] checks
//! the signature and then every claim, and is the only way to a [`Grant`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::VerifyError;
use crate::grant::{Grant, Provenance};

/// The JOSE `typ` of writ tokens (RFC 9068 section 2.1).
pub const TOKEN_TYPE: &str = "at+jwt";

/// The one JOSE `alg` accepted: writ signs with Ed25519 (RFC 8037).
pub const ALGORITHM: &str = "EdDSA";

/// What the claims must match, apart from the key.
#[derive(Debug, Clone)]
pub(crate) struct Checks {
    /// The writ server's URL: `iss` must equal it byte for byte.
    pub issuer: String,
    /// This platform's audience: `aud` must contain it.
    pub audience: String,
    /// Clock-skew tolerance in seconds, at most 60.
    pub leeway_secs: i64,
    /// Largest accepted token, checked before any decoding.
    pub max_token_bytes: usize,
}

/// A token taken apart; nothing verified yet.
#[derive(Debug)]
pub(crate) struct Unverified<'t> {
    /// The header's `kid`: picks the key, nothing else.
    pub unverified_kid: String,
    /// `b64(header).b64(payload)`: what the signature covers.
    signing_input: &'t str,
    unverified_payload_b64: &'t str,
    unverified_signature_b64: &'t str,
}

/// The header fields writ-verify looks at.
#[derive(Deserialize)]
struct UnverifiedHeader {
    alg: Option<String>,
    typ: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

/// Reads a token's header WITHOUT verifying anything, and refuses what no
/// key could make valid: oversized or malformed tokens, `crit`, a `typ`
/// other than `at+jwt`, an `alg` other than `EdDSA`, no `kid`.
///
/// The size bound is checked before any decoding, so a caller cannot make
/// the platform decode megabytes. Refusing the `typ` and `alg` here, before
/// any key lookup, also keeps foreign tokens from causing JWKS refetches.
pub(crate) fn peek_unverified(token: &str, max_token_bytes: usize) -> Result<Unverified<'_>, VerifyError> {
    if token.len() > max_token_bytes {
        return Err(VerifyError::TooLarge { len: token.len(), max: max_token_bytes });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(unverified_payload_b64), Some(unverified_signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("a jwt has three dot-separated parts"));
    };
    let header_json =
        URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| VerifyError::Malformed("the header is not base64url"))?;
    let header: UnverifiedHeader = serde_json::from_slice(&header_json)
        .map_err(|_| VerifyError::Malformed("the header is not a json object of strings"))?;
    if header.crit.is_some() {
        return Err(VerifyError::CriticalHeader);
    }
    if !header.typ.as_deref().is_some_and(is_access_token_type) {
        return Err(VerifyError::WrongType);
    }
    if header.alg.as_deref() != Some(ALGORITHM) {
        return Err(VerifyError::Algorithm);
    }
    let unverified_kid = header.kid.ok_or(VerifyError::MissingKeyId)?;
    Ok(Unverified {
        unverified_kid,
        signing_input: &token[..header_b64.len() + 1 + unverified_payload_b64.len()],
        unverified_payload_b64,
        unverified_signature_b64,
    })
}

/// RFC 9068 section 4: `at+jwt`, or the full media type
/// `application/at+jwt`; media types compare case-insensitively.
fn is_access_token_type(typ: &str) -> bool {
    let typ = typ.strip_prefix("application/").unwrap_or(typ);
    typ.eq_ignore_ascii_case(TOKEN_TYPE)
}

/// Verifies the signature with `key`, then every claim at `now` (seconds
/// since the Unix epoch):
///
/// 1. Ed25519 signature over the signing input;
/// 2. `iss` equals [`Checks::issuer`] byte for byte;
/// 3. `aud` (string or array) contains [`Checks::audience`];
/// 4. `exp` required, refused when `now >= exp + leeway`; `nbf`, if
///    present, refused when `nbf > now + leeway`; `iat` required, refused
///    when `iat > now + leeway`;
/// 5. `jti`, `sub`, `client_id`, `org` required non-empty strings; `scope`
///    a string (space-separated permissions); `apps` and `machines`, if
///    present, arrays of strings; `ci` an object; `parent`, if present, a
///    non-empty string.
///
/// Revocation is checked by the caller, which holds the revocation set.
pub(crate) fn verify_signed(
    unverified: &Unverified<'_>,
    key: &DecodingKey,
    checks: &Checks,
    now: i64,
) -> Result<Grant, VerifyError> {
    let signature_ok = jsonwebtoken::crypto::verify(
        unverified.unverified_signature_b64,
        unverified.signing_input.as_bytes(),
        key,
        Algorithm::EdDSA,
    )
    // An undecodable signature or a key the provider refuses: either way
    // the token is not signed by this key.
    .unwrap_or(false);
    if !signature_ok {
        return Err(VerifyError::Signature);
    }
    // The signature covers the payload bytes decoded here.
    let payload = URL_SAFE_NO_PAD
        .decode(unverified.unverified_payload_b64)
        .map_err(|_| VerifyError::Malformed("the payload is not base64url"))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| VerifyError::Malformed("the payload is not a json object"))?;
    check_claims(claims, checks, now)
}

fn check_claims(mut claims: Map<String, Value>, checks: &Checks, now: i64) -> Result<Grant, VerifyError> {
    let leeway = checks.leeway_secs;

    let iss = required_string(&mut claims, "iss")?;
    if iss != checks.issuer {
        return Err(VerifyError::Issuer { expected: checks.issuer.clone(), got: iss });
    }

    let audiences = audiences(claims.remove("aud"))?;
    if !audiences.contains(&checks.audience) {
        return Err(VerifyError::Audience { expected: checks.audience.clone(), got: audiences });
    }

    let exp = numeric_date(&claims, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(VerifyError::Expired { exp, now });
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(VerifyError::NotYetValid { nbf, now });
    }
    let iat = numeric_date(&claims, "iat")?.ok_or(VerifyError::MissingClaim("iat"))?;
    if iat > now.saturating_add(leeway) {
        return Err(VerifyError::IssuedInFuture { iat, now });
    }

    // Revocation and audit name tokens by `jti`: a token without one could
    // never be revoked.
    let jti = required_string(&mut claims, "jti")?;
    let subject = required_string(&mut claims, "sub")?;
    let client_id = required_string(&mut claims, "client_id")?;
    let org = required_string(&mut claims, "org")?;
    let permissions = match claims.remove("scope") {
        None | Some(Value::Null) => return Err(VerifyError::MissingClaim("scope")),
        Some(Value::String(scope)) => scope.split_ascii_whitespace().map(str::to_owned).collect(),
        Some(_) => {
            return Err(VerifyError::InvalidClaim { claim: "scope", reason: "it is not a space-separated string" });
        }
    };
    let apps = string_list(claims.remove("apps"), "apps")?;
    let machines = string_list(claims.remove("machines"), "machines")?;
    let parent = match claims.remove("parent") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if !p.is_empty() => Some(p),
        Some(_) => return Err(VerifyError::InvalidClaim { claim: "parent", reason: "it is not a token id" }),
    };
    let provenance = match claims.remove("ci") {
        None | Some(Value::Null) => Provenance::default(),
        Some(ci) => serde_json::from_value(ci)
            .map_err(|_| VerifyError::InvalidClaim { claim: "ci", reason: "it is not an object of strings" })?,
    };
    Ok(Grant {
        org,
        permissions,
        apps,
        machines,
        subject,
        client_id,
        jti,
        issued_at: iat,
        expires_at: exp,
        provenance,
        parent,
    })
}

fn required_string(claims: &mut Map<String, Value>, name: &'static str) -> Result<String, VerifyError> {
    match claims.remove(name) {
        None | Some(Value::Null) => Err(VerifyError::MissingClaim(name)),
        Some(Value::String(s)) if s.is_empty() => Err(VerifyError::InvalidClaim { claim: name, reason: "it is empty" }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(VerifyError::InvalidClaim { claim: name, reason: "it is not a string" }),
    }
}

/// `aud` is a string or an array of strings (RFC 7519 section 4.1.3).
fn audiences(aud: Option<Value>) -> Result<Vec<String>, VerifyError> {
    let invalid = VerifyError::InvalidClaim { claim: "aud", reason: "it is not a string or an array of strings" };
    match aud {
        None | Some(Value::Null) => Err(VerifyError::MissingClaim("aud")),
        Some(Value::String(one)) => Ok(vec![one]),
        Some(Value::Array(many)) => many
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(invalid.clone()),
            })
            .collect(),
        Some(_) => Err(invalid),
    }
}

/// `apps`/`machines`: absent (or null) means unrestricted; otherwise an
/// array of strings, kept as is (an empty array restricts to nothing).
fn string_list(value: Option<Value>, claim: &'static str) -> Result<Option<Vec<String>>, VerifyError> {
    let invalid = VerifyError::InvalidClaim { claim, reason: "it is not an array of strings" };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(invalid.clone()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid),
    }
}

/// A NumericDate: absent is `None`; anything but a JSON integer is refused
/// (writ writes integers).
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or(VerifyError::InvalidClaim { claim: name, reason: "it is not an integer number of seconds" }),
        Some(_) => Err(VerifyError::InvalidClaim { claim: name, reason: "it is not an integer number of seconds" }),
    }
}
