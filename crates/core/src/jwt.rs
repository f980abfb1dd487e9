//! Verification of incoming OIDC subject tokens: the one place that decodes a
//! JWT without verifying it ([`peek_unverified`], only to pick the issuer),
//! and the checks that turn a token into [`VerifiedClaims`] ([`verify_oidc`]).
//!
//! Pure: keys, configuration and the current time (`now`, seconds since the
//! Unix epoch) are parameters. jsonwebtoken checks the signature only; every
//! claim check (issuer, audience, times) is done here against `now`, because
//! jsonwebtoken's own checks would read the system clock.
//!
//! Trust levels are in the names: `unverified_*` values come from a token
//! whose signature has not been checked and are used only to choose which
//! configured issuer and key to verify with; after [`verify_oidc`] the values
//! are `claims`.

use std::str::FromStr;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use crate::claims::{Claims, VerifiedClaims};
use crate::issuer::IssuerKind;

/// Default and maximum clock-skew leeway for `exp`, `nbf` and `iat`.
///
/// Every second of leeway lengthens the life of a stolen or leaked token past
/// its `exp`, so it is capped: a configured leeway above the cap is clamped to
/// it (and a negative one to zero) by [`VerifyConfig::effective_leeway_secs`].
pub const MAX_LEEWAY_SECS: i64 = 60;

/// Default bound on a token's age (`now - iat`): one hour.
///
/// Stops replay of old tokens from issuers that mint long-lived ID tokens
/// (GitLab's live as long as the job): a token captured from an old job log
/// is refused even while its `exp` lies ahead. GitHub's tokens live 5 minutes,
/// so for them `exp` is the tighter bound.
pub const DEFAULT_MAX_TOKEN_AGE_SECS: i64 = 60 * 60;

/// Default bound on the size of a presented token, in bytes: 16 KiB.
///
/// Checked before anything is decoded, so a caller cannot make the server
/// base64-decode and parse megabytes of JSON before it is refused. Real CI
/// tokens are 1-2 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What incoming OIDC tokens must satisfy, apart from the per-issuer facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// The `aud` that incoming tokens must contain (this server's audience).
    /// Stops a token minted for another relying party from being replayed
    /// here.
    pub audience: String,
    /// Clock-skew leeway in seconds, capped at [`MAX_LEEWAY_SECS`].
    pub leeway_secs: i64,
    /// Largest accepted token age, `now - iat`, in seconds; see
    /// [`DEFAULT_MAX_TOKEN_AGE_SECS`].
    pub max_age_secs: i64,
    /// Largest accepted token, in bytes; see [`DEFAULT_MAX_TOKEN_BYTES`].
    pub max_token_bytes: usize,
}

impl VerifyConfig {
    /// A configuration for `audience` with the documented defaults.
    pub fn new(audience: impl Into<String>) -> Self {
        VerifyConfig {
            audience: audience.into(),
            leeway_secs: MAX_LEEWAY_SECS,
            max_age_secs: DEFAULT_MAX_TOKEN_AGE_SECS,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }

    /// The leeway actually applied: `leeway_secs` clamped to
    /// `0..=MAX_LEEWAY_SECS`.
    pub fn effective_leeway_secs(&self) -> i64 {
        self.leeway_secs.clamp(0, MAX_LEEWAY_SECS)
    }
}

/// One configured, trusted OIDC issuer, as verification needs it.
///
/// Enterprise (`https://token.actions.githubusercontent.com/<slug>`), GHES and
/// GHE.com issuers are separate `IssuerSpec`s: issuers are matched by exact
/// string equality, never by prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSpec {
    /// The issuer's name in the server config and in policies (`github`).
    pub name: String,
    /// What shape of identity it issues.
    pub kind: IssuerKind,
    /// The exact `iss` value its tokens carry.
    pub url: String,
    /// The fixed list of signature algorithms accepted from it. The token's
    /// header only selects among these; HMAC algorithms are never accepted,
    /// even if listed, because the verification key of an OIDC issuer is
    /// public.
    pub algorithms: Vec<Algorithm>,
}

impl IssuerSpec {
    /// An issuer with the default algorithm allow-list of its kind
    /// ([`default_algorithms`]).
    pub fn new(name: impl Into<String>, kind: IssuerKind, url: impl Into<String>) -> Self {
        IssuerSpec { name: name.into(), kind, url: url.into(), algorithms: default_algorithms(kind) }
    }
}

/// The algorithms accepted from an issuer of `kind` unless configured
/// otherwise: RS256, the only algorithm GitHub Actions and GitLab sign ID
/// tokens with, and the one OIDC Core requires every issuer to support.
pub fn default_algorithms(kind: IssuerKind) -> Vec<Algorithm> {
    match kind {
        IssuerKind::GitHub | IssuerKind::GitLab | IssuerKind::Generic => vec![Algorithm::RS256],
    }
}

/// The header fields and issuer of a token whose signature has NOT been
/// verified. Use them only to choose the configured issuer and its key.
#[derive(Debug, Clone)]
pub struct UnverifiedToken<'a> {
    /// The `iss` claim, as the token states it.
    pub unverified_iss: String,
    /// The header's `kid`, if any.
    pub unverified_kid: Option<String>,
    /// The header's `alg`, as written (may be `none`, `HS256`, anything).
    pub unverified_alg: String,
    unverified_jwt: &'a str,
}

impl<'a> UnverifiedToken<'a> {
    /// The compact token these fields were read from.
    pub fn unverified_jwt(&self) -> &'a str {
        self.unverified_jwt
    }
}

/// Why an OIDC token was refused: one variant per failed check.
///
/// `Display` never contains values read from an unverified token (an
/// attacker chooses them); values from verified claims may appear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is longer than [`VerifyConfig::max_token_bytes`].
    #[error("token is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size of the presented token.
        len: usize,
        /// The configured bound.
        max: usize,
    },
    /// The token is not a well-formed compact JWS with a JSON header and
    /// a JSON object as payload.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header lists `crit` extensions; none are supported (RFC 7515
    /// §4.1.11 requires refusing them).
    #[error("token header lists critical extensions (`crit`), which this server does not support")]
    CriticalHeader,
    /// The token's `iss` is no configured issuer.
    #[error(
        "token issuer is not one this server trusts: request the token from a configured issuer, or configure it under [[issuers]]"
    )]
    UnknownIssuer,
    /// The issuer's signing keys could not be fetched and none are cached.
    /// Temporary: the server answers 503 "temporarily unavailable", and the
    /// client may retry.
    #[error("signing keys of issuer `{issuer}` are temporarily unavailable: retry later")]
    KeysUnavailable {
        /// The configured issuer name.
        issuer: String,
    },
    /// The header's `alg` is not in the issuer's allow-list (`none`, HMAC
    /// and anything unlisted).
    #[error("token algorithm is not accepted from this issuer (accepted: {allowed})")]
    Algorithm {
        /// The issuer's allow-list, for the message.
        allowed: String,
    },
    /// The token has no `kid` and the key set does not hold exactly one key
    /// usable with its algorithm.
    #[error(
        "token has no `kid` and the issuer publishes more than one usable key (or none): mint a token with a `kid`"
    )]
    MissingKeyId,
    /// No key in the issuer's key set has the token's `kid` (rotated out,
    /// or forged).
    #[error("token `kid` names no key the issuer publishes: mint a fresh token")]
    UnknownKey,
    /// More than one usable key in the set has the token's `kid`.
    #[error("the issuer publishes several usable keys with the token's `kid`")]
    AmbiguousKey,
    /// The key named by `kid` cannot verify the token's algorithm.
    #[error("the key named by the token's `kid` cannot verify its algorithm: {0}")]
    KeyMismatch(&'static str),
    /// The signature does not verify with the selected key.
    #[error("token signature does not verify")]
    Signature,
    /// The verified `iss` is not byte-for-byte the configured issuer URL.
    #[error("token `iss` is not exactly the configured issuer `{expected}`")]
    Issuer {
        /// The configured URL.
        expected: String,
    },
    /// `aud` is missing or does not contain this server's audience.
    #[error("token audience {got} does not include `{expected}`: request the OIDC token with audience `{expected}`")]
    Audience {
        /// The configured audience.
        expected: String,
        /// The token's `aud`, rendered as JSON (`null` when absent).
        got: String,
    },
    /// `now > exp + leeway`.
    #[error("token expired at {exp} (now {now}): request a fresh token")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The time of the check.
        now: i64,
    },
    /// `nbf > now + leeway`.
    #[error("token is not valid before {nbf} (now {now}): check the clocks of the issuer and this server")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The time of the check.
        now: i64,
    },
    /// `iat > now + leeway`.
    #[error("token is issued in the future, at {iat} (now {now}): check the clocks of the issuer and this server")]
    IssuedInFuture {
        /// The token's `iat`.
        iat: i64,
        /// The time of the check.
        now: i64,
    },
    /// `now - iat > max_age`.
    #[error("token is {age_secs} s old, older than the {max_secs} s allowed: request a fresh token")]
    TooOld {
        /// `now - iat`.
        age_secs: i64,
        /// The configured bound.
        max_secs: i64,
    },
    /// A required claim is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim is present with the wrong type or an empty value.
    #[error("token claim `{claim}` is invalid: {reason}")]
    InvalidClaim {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl VerifyError {
    /// A short, stable class for metrics, logs and the caller-facing
    /// "invalid token" answer.
    pub fn reason_class(&self) -> &'static str {
        match self {
            VerifyError::TooLarge { .. } => "too_large",
            VerifyError::Malformed(_) | VerifyError::CriticalHeader => "malformed",
            VerifyError::UnknownIssuer => "unknown_issuer",
            VerifyError::KeysUnavailable { .. } => "keys_unavailable",
            VerifyError::Algorithm { .. } => "algorithm",
            VerifyError::MissingKeyId | VerifyError::UnknownKey | VerifyError::AmbiguousKey => "unknown_key",
            VerifyError::KeyMismatch(_) => "key_mismatch",
            VerifyError::Signature => "signature",
            VerifyError::Issuer { .. } => "issuer",
            VerifyError::Audience { .. } => "audience",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::IssuedInFuture { .. } => "issued_in_future",
            VerifyError::TooOld { .. } => "too_old",
            VerifyError::MissingClaim(_) => "missing_claim",
            VerifyError::InvalidClaim { .. } => "invalid_claim",
        }
    }

    /// True when the failure was found before the signature verified. Then
    /// nothing about the token is trustworthy, and the server says only
    /// "invalid token" plus [`reason_class`](Self::reason_class) (or, for
    /// [`KeysUnavailable`](Self::KeysUnavailable), "temporarily unavailable").
    pub fn before_signature(&self) -> bool {
        match self {
            VerifyError::TooLarge { .. }
            | VerifyError::Malformed(_)
            | VerifyError::CriticalHeader
            | VerifyError::UnknownIssuer
            | VerifyError::KeysUnavailable { .. }
            | VerifyError::Algorithm { .. }
            | VerifyError::MissingKeyId
            | VerifyError::UnknownKey
            | VerifyError::AmbiguousKey
            | VerifyError::KeyMismatch(_)
            | VerifyError::Signature => true,
            VerifyError::Issuer { .. }
            | VerifyError::Audience { .. }
            | VerifyError::Expired { .. }
            | VerifyError::NotYetValid { .. }
            | VerifyError::IssuedInFuture { .. }
            | VerifyError::TooOld { .. }
            | VerifyError::MissingClaim(_)
            | VerifyError::InvalidClaim { .. } => false,
        }
    }

    /// True when retrying later may succeed without a new token: the server
    /// answers these with 503, not 4xx.
    pub fn is_temporary(&self) -> bool {
        matches!(self, VerifyError::KeysUnavailable { .. })
    }
}

/// Reads a token's header and `iss` WITHOUT verifying anything: the one
/// place in writ that decodes a JWT unverified.
///
/// The result may only pick the configured issuer (by exact `iss`) and the
/// key (by `kid`); every value in it is attacker-controlled. The size bound
/// is checked first, before any decoding.
///
/// Same checks, in the same order, as [`verify_oidc`]'s first step, but the
/// payload is only scanned for `iss`, for callers that look at a token
/// without verifying it afterwards (narrowing, the CLI). A caller that
/// will verify the token parses it once with [`ParsedToken::parse`].
pub fn peek_unverified(token: &str, max_token_bytes: usize) -> Result<UnverifiedToken<'_>, VerifyError> {
    let (header_b64, payload_b64, _) = split_compact(token, max_token_bytes)?;
    let unverified_header: JoseHeader = decode_json(header_b64, "the header is not base64url JSON")?;
    let payload = crate::b64::decode(payload_b64).map_err(|_| VerifyError::Malformed(PAYLOAD_NOT_JSON))?;
    let PeekedIss(unverified_iss) =
        serde_json::from_slice(&payload).map_err(|_| VerifyError::Malformed(PAYLOAD_NOT_JSON))?;
    let (unverified_alg, unverified_kid) = header_fields(unverified_header)?;
    let Some(unverified_iss) = unverified_iss else {
        return Err(VerifyError::Malformed("the payload has no `iss` string"));
    };
    Ok(UnverifiedToken { unverified_iss, unverified_kid, unverified_alg, unverified_jwt: token })
}

const PAYLOAD_NOT_JSON: &str = "the payload is not base64url JSON";

/// A JSON object's `iss` member when it is a string (the last one, like a
/// full parse), read without keeping any other member.
struct PeekedIss(Option<String>);

impl<'de> serde::Deserialize<'de> for PeekedIss {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = PeekedIss;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PeekedIss, A::Error> {
                let mut iss = None;
                while let Some(IsIss(is_iss)) = map.next_key()? {
                    if is_iss {
                        iss = match map.next_value::<Value>()? {
                            Value::String(s) => Some(s),
                            _ => None,
                        };
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(PeekedIss(iss))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Whether an object key is `iss`, decided without allocating the key.
struct IsIss(bool);

impl<'de> serde::Deserialize<'de> for IsIss {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = IsIss;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsIss, E> {
                Ok(IsIss(key == "iss"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The three dot-separated parts of a compact JWS, after the size check.
fn split_compact(token: &str, max_token_bytes: usize) -> Result<(&str, &str, &str), VerifyError> {
    if token.len() > max_token_bytes {
        return Err(VerifyError::TooLarge { len: token.len(), max: max_token_bytes });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(unverified_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("a JWT has three dot-separated parts"));
    };
    Ok((header_b64, payload_b64, unverified_signature))
}

/// The header's `alg` and `kid`, refusing `crit` (RFC 7515 §4.1.11).
fn header_fields(unverified_header: JoseHeader) -> Result<(String, Option<String>), VerifyError> {
    if unverified_header.crit {
        return Err(VerifyError::CriticalHeader);
    }
    let Some(Value::String(unverified_alg)) = unverified_header.alg else {
        return Err(VerifyError::Malformed("the header has no `alg` string"));
    };
    let unverified_kid = match unverified_header.kid {
        None => None,
        Some(Value::String(kid)) => Some(kid),
        Some(_) => return Err(VerifyError::Malformed("the header's `kid` is not a string")),
    };
    Ok((unverified_alg, unverified_kid))
}

/// The members of a JOSE header that verification reads, parsed without
/// building a map of every member: `alg` and `kid` as given (the last of
/// duplicates, like a map), and whether `crit` is present at all.
#[derive(Default)]
struct JoseHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    crit: bool,
}

impl<'de> serde::Deserialize<'de> for JoseHeader {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = JoseHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JoseHeader, A::Error> {
                let mut header = JoseHeader::default();
                while let Some(key) = map.next_key::<HeaderKey>()? {
                    match key {
                        HeaderKey::Alg => header.alg = Some(map.next_value()?),
                        HeaderKey::Kid => header.kid = Some(map.next_value()?),
                        HeaderKey::Crit => {
                            header.crit = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        HeaderKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(header)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Which header member a key names, decided without allocating the key.
enum HeaderKey {
    Alg,
    Kid,
    Crit,
    Other,
}

impl<'de> serde::Deserialize<'de> for HeaderKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = HeaderKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<HeaderKey, E> {
                Ok(match key {
                    "alg" => HeaderKey::Alg,
                    "kid" => HeaderKey::Kid,
                    "crit" => HeaderKey::Crit,
                    _ => HeaderKey::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A token taken apart, nothing verified yet.
struct UnverifiedParts<'a> {
    unverified: UnverifiedToken<'a>,
    unverified_payload: Claims,
    /// `b64(header).b64(payload)`: what the signature covers.
    signing_input: &'a str,
    unverified_signature: &'a str,
}

fn split_unverified(token: &str, max_token_bytes: usize) -> Result<UnverifiedParts<'_>, VerifyError> {
    let (header_b64, payload_b64, unverified_signature) = split_compact(token, max_token_bytes)?;
    let unverified_header: JoseHeader = decode_json(header_b64, "the header is not base64url JSON")?;
    let unverified_payload: Claims = decode_json(payload_b64, PAYLOAD_NOT_JSON)?;
    let (unverified_alg, unverified_kid) = header_fields(unverified_header)?;
    let Some(Value::String(unverified_iss)) = unverified_payload.get("iss") else {
        return Err(VerifyError::Malformed("the payload has no `iss` string"));
    };
    Ok(UnverifiedParts {
        unverified: UnverifiedToken {
            unverified_iss: unverified_iss.clone(),
            unverified_kid,
            unverified_alg,
            unverified_jwt: token,
        },
        signing_input: &token[..header_b64.len() + 1 + payload_b64.len()],
        unverified_payload,
        unverified_signature,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str, what: &'static str) -> Result<T, VerifyError> {
    let bytes = crate::b64::decode(part).map_err(|_| VerifyError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed(what))
}

/// Verifies an OIDC token from `issuer` against its `keys` at time `now`
/// (seconds since the Unix epoch), in this order:
///
/// 1. size at most `cfg.max_token_bytes`; header and payload parse;
/// 2. the header's `alg` is in `issuer.algorithms` and not HMAC — the
///    algorithm is never taken from the header alone, which stops `none` and
///    the HS256-keyed-with-the-public-key confusion attack;
/// 3. the key: the JWK whose `kid` equals the header's; a token without
///    `kid` only when the set holds exactly one key usable with the
///    algorithm. The JWK's `kty` (and curve) must fit the algorithm family
///    (RSA for RS*/PS*, EC for ES*, OKP for EdDSA), its `alg`, if present,
///    must equal the algorithm, its `use`, if present, must be `sig`;
/// 4. the signature (jsonwebtoken's `crypto::verify` with that one
///    algorithm; claims are never read from jsonwebtoken);
/// 5. `iss` byte-for-byte equal to `issuer.url` (a trailing slash or a
///    lookalike host is a mismatch);
/// 6. `aud` (string or array) contains `cfg.audience`;
/// 7. `exp` required, `now > exp + leeway` is expired; `nbf`, if present,
///    `nbf > now + leeway` is not yet valid; `iat` required,
///    `iat > now + leeway` is refused, `now - iat > max_age` is too old;
/// 8. `jti` and `sub` required, non-empty strings (`jti` is what replay
///    protection records).
///
/// Numeric dates must be JSON integers.
pub fn verify_oidc(
    token: &str,
    issuer: &IssuerSpec,
    keys: &JwkSet,
    cfg: &VerifyConfig,
    now: i64,
) -> Result<VerifiedClaims, VerifyError> {
    verify_oidc_with(token, issuer, &KeySet::new(keys.clone()), cfg, now)
}

/// [`verify_oidc`] with keys prepared once ([`KeySet`]): what the server
/// calls for every exchange, with the key set it keeps per issuer.
pub fn verify_oidc_with(
    token: &str,
    issuer: &IssuerSpec,
    keys: &KeySet,
    cfg: &VerifyConfig,
    now: i64,
) -> Result<VerifiedClaims, VerifyError> {
    ParsedToken::parse(token, cfg.max_token_bytes)?.verify(issuer, keys, cfg, now)
}

/// A token taken apart and its header and payload parsed, nothing
/// verified: what the exchange reads once and then verifies, instead of
/// peeking at it ([`peek_unverified`]) and parsing it again to verify.
pub struct ParsedToken<'a> {
    parts: UnverifiedParts<'a>,
}

impl<'a> ParsedToken<'a> {
    /// Size, shape, header and payload: the same checks, in the same
    /// order, as the first step of [`verify_oidc`].
    pub fn parse(token: &'a str, max_token_bytes: usize) -> Result<ParsedToken<'a>, VerifyError> {
        Ok(ParsedToken { parts: split_unverified(token, max_token_bytes)? })
    }

    /// The `iss` claim as the token states it: only for choosing the
    /// issuer, verification checks it.
    pub fn unverified_iss(&self) -> &str {
        &self.parts.unverified.unverified_iss
    }

    /// Verifies the token like [`verify_oidc_with`]. The payload becomes
    /// the claims only once the signature over it verified; a token refused
    /// before that (an unknown key, say) can be verified again, with other
    /// keys. After the signature verified, the payload is spent: another
    /// call refuses the token.
    pub fn verify(
        &mut self,
        issuer: &IssuerSpec,
        keys: &KeySet,
        cfg: &VerifyConfig,
        now: i64,
    ) -> Result<VerifiedClaims, VerifyError> {
        let parts = &mut self.parts;
        if parts.unverified_payload.is_empty() {
            return Err(VerifyError::Malformed("the payload was already taken by an earlier verification"));
        }
        let alg = allowed_algorithm(&parts.unverified.unverified_alg, &issuer.algorithms)?;
        let (index, jwk) = select_key(&keys.jwks, parts.unverified.unverified_kid.as_deref(), alg)?;
        match (alg, keys.rs256.get(index)) {
            (Algorithm::RS256, Some(Some(parsed))) => {
                verify_parsed(parts.signing_input, parts.unverified_signature, parsed)?;
            }
            _ => {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|_| VerifyError::KeyMismatch("the key's parameters are not a valid public key"))?;
                verify_signature(parts.signing_input, parts.unverified_signature, &key, alg)?;
            }
        }
        // The signature covers the payload bytes these claims were parsed from.
        let claims = std::mem::take(&mut parts.unverified_payload);
        check_claims(claims, issuer, cfg, now)
    }
}

/// An issuer's published keys, with each RSA key also parsed once for
/// RS256 (aws-lc-rs `ParsedPublicKey`), so that verifying a token does not
/// decode the key's modulus and set up its arithmetic again. Key selection
/// and every check on the JWK are the same as for the plain set.
#[derive(Clone)]
pub struct KeySet {
    jwks: JwkSet,
    /// Per entry of `jwks.keys`: the key parsed for RS256, if it is an RSA
    /// key that parses (others take jsonwebtoken's path, which refuses them
    /// as it always did).
    rs256: Vec<Option<aws_lc_rs::signature::ParsedPublicKey>>,
}

impl KeySet {
    /// Prepares `jwks`.
    pub fn new(jwks: JwkSet) -> KeySet {
        let rs256 = jwks.keys.iter().map(parse_rs256).collect();
        KeySet { jwks, rs256 }
    }

    /// The keys as published.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }
}

impl From<JwkSet> for KeySet {
    fn from(jwks: JwkSet) -> Self {
        KeySet::new(jwks)
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<Option<&str>> = self.jwks.keys.iter().map(|k| k.common.key_id.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish_non_exhaustive()
    }
}

fn parse_rs256(jwk: &Jwk) -> Option<aws_lc_rs::signature::ParsedPublicKey> {
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else { return None };
    let n = crate::b64::decode(&rsa.n).ok()?;
    let e = crate::b64::decode(&rsa.e).ok()?;
    aws_lc_rs::signature::RsaPublicKeyComponents { n, e }
        .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
        .ok()
}

/// RS256 with a parsed key: the same algorithm parameters (PKCS#1 v1.5,
/// SHA-256, 2048–8192-bit keys) and the same strict base64url decoding of
/// the signature as jsonwebtoken's aws-lc-rs verifier (see [`crate::b64`]).
fn verify_parsed(
    signing_input: &str,
    unverified_signature: &str,
    key: &aws_lc_rs::signature::ParsedPublicKey,
) -> Result<(), VerifyError> {
    let signature = crate::b64::decode(unverified_signature).map_err(|_| VerifyError::Signature)?;
    key.verify_sig(signing_input.as_bytes(), &signature).map_err(|_| VerifyError::Signature)
}

fn allowed_algorithm(unverified_alg: &str, allowed: &[Algorithm]) -> Result<Algorithm, VerifyError> {
    let refuse = || VerifyError::Algorithm {
        allowed: allowed
            .iter()
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    // `Algorithm::from_str` knows no `none`, so `none` is refused here.
    let alg = Algorithm::from_str(unverified_alg).map_err(|_| refuse())?;
    if alg.family() == AlgorithmFamily::Hmac || !allowed.contains(&alg) {
        return Err(refuse());
    }
    Ok(alg)
}

/// Picks the verification key: by `kid`, else the single usable key.
/// Returns the key's index in the set with the key.
fn select_key<'k>(
    keys: &'k JwkSet,
    unverified_kid: Option<&str>,
    alg: Algorithm,
) -> Result<(usize, &'k Jwk), VerifyError> {
    let Some(kid) = unverified_kid else {
        let mut usable = keys.keys.iter().enumerate().filter(|(_, jwk)| key_fits(jwk, alg).is_ok());
        return match (usable.next(), usable.next()) {
            (Some(found), None) => Ok(found),
            _ => Err(VerifyError::MissingKeyId),
        };
    };
    let named: Vec<(usize, &Jwk)> =
        keys.keys.iter().enumerate().filter(|(_, jwk)| jwk.common.key_id.as_deref() == Some(kid)).collect();
    let Some(&(_, first)) = named.first() else {
        return Err(VerifyError::UnknownKey);
    };
    let mut usable = named.iter().filter(|(_, jwk)| key_fits(jwk, alg).is_ok());
    match (usable.next(), usable.next()) {
        (Some(&found), None) => Ok(found),
        (Some(_), Some(_)) => Err(VerifyError::AmbiguousKey),
        (None, _) => Err(key_fits(first, alg).err().unwrap_or(VerifyError::UnknownKey)),
    }
}

/// Whether `jwk` may verify `alg`. Stops key-type confusion: an RSA token
/// checked against an EC or symmetric (`oct`) key, a key published for
/// another algorithm, or an encryption key used for signatures.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> Result<(), VerifyError> {
    let kty_fits = match (&jwk.algorithm, alg.family()) {
        (AlgorithmParameters::RSA(_), AlgorithmFamily::Rsa) => true,
        (AlgorithmParameters::EllipticCurve(ec), AlgorithmFamily::Ec) => matches!(
            (&ec.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        (AlgorithmParameters::OctetKeyPair(okp), AlgorithmFamily::Ed) => okp.curve == EllipticCurve::Ed25519,
        _ => false,
    };
    if !kty_fits {
        return Err(VerifyError::KeyMismatch("the key type (`kty`, `crv`) does not fit the algorithm"));
    }
    if let Some(key_alg) = jwk.common.key_algorithm
        && key_alg != KeyAlgorithm::from(alg)
    {
        return Err(VerifyError::KeyMismatch("the key's `alg` is not the token's algorithm"));
    }
    if let Some(key_use) = &jwk.common.public_key_use
        && *key_use != PublicKeyUse::Signature
    {
        return Err(VerifyError::KeyMismatch("the key's `use` is not `sig`"));
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err(VerifyError::KeyMismatch("the key's `key_ops` do not include `verify`"));
    }
    Ok(())
}

/// Checks the signature with jsonwebtoken's `crypto::verify`, for the one
/// allowed algorithm. Not `jsonwebtoken::decode`: even with all of its
/// checks off it parses the claims again under its own rules (refusing, as
/// a JSON error, a signed token whose `sub` is not a string) and its time
/// checks would read the system clock; every claim check is done here.
fn verify_signature(
    signing_input: &str,
    unverified_signature: &str,
    key: &DecodingKey,
    alg: Algorithm,
) -> Result<(), VerifyError> {
    match jsonwebtoken::crypto::verify(unverified_signature, signing_input.as_bytes(), key, alg) {
        Ok(true) => Ok(()),
        Ok(false) => Err(VerifyError::Signature),
        Err(err) => Err(match err.kind() {
            ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidKeyFormat => {
                VerifyError::KeyMismatch("the key's parameters are not a valid public key")
            }
            // Undecodable (e.g. non-canonical base64) signature bytes, and
            // any other refusal of the crypto provider.
            _ => VerifyError::Signature,
        }),
    }
}

/// Every claim check after the signature verified.
fn check_claims(
    claims: Claims,
    issuer: &IssuerSpec,
    cfg: &VerifyConfig,
    now: i64,
) -> Result<VerifiedClaims, VerifyError> {
    let leeway = cfg.effective_leeway_secs();

    // Exact equality: `https://token.actions.githubusercontent.com/` and
    // `https://token.actions.githubusercontent.com.evil.com` are other
    // issuers, and so is an enterprise issuer `…/acme`.
    let iss = required_string(&claims, "iss")?;
    if iss != issuer.url {
        return Err(VerifyError::Issuer { expected: issuer.url.clone() });
    }

    check_audience(claims.get("aud"), &cfg.audience)?;

    let exp = numeric_date(&claims, "exp")?.ok_or(VerifyError::MissingClaim("exp"))?;
    if now > exp.saturating_add(leeway) {
        return Err(VerifyError::Expired { exp, now });
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(VerifyError::NotYetValid { nbf, now });
    }
    // `iat` in the future means a skewed or misbehaving issuer; accepting it
    // would also defeat the age bound below.
    let iat = numeric_date(&claims, "iat")?.ok_or(VerifyError::MissingClaim("iat"))?;
    if iat > now.saturating_add(leeway) {
        return Err(VerifyError::IssuedInFuture { iat, now });
    }
    let age_secs = now.saturating_sub(iat);
    if age_secs > cfg.max_age_secs {
        return Err(VerifyError::TooOld { age_secs, max_secs: cfg.max_age_secs });
    }

    // Replay protection records `jti`; without one a token could be
    // presented any number of times.
    let jti = required_string(&claims, "jti")?;
    let sub = required_string(&claims, "sub")?;

    Ok(VerifiedClaims {
        issuer_name: issuer.name.clone(),
        issuer_kind: issuer.kind,
        issuer_url: iss,
        jti,
        sub,
        iat,
        exp,
        claims,
    })
}

fn required_string(claims: &Claims, name: &'static str) -> Result<String, VerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(VerifyError::MissingClaim(name)),
        Some(Value::String(s)) if s.is_empty() => Err(VerifyError::InvalidClaim { claim: name, reason: "it is empty" }),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(VerifyError::InvalidClaim { claim: name, reason: "it is not a string" }),
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3); it must
/// contain `expected`. Stops a token minted for another relying party (say,
/// a cloud provider's STS) being spent here.
fn check_audience(aud: Option<&Value>, expected: &str) -> Result<(), VerifyError> {
    let contains = match aud {
        Some(Value::String(one)) => one == expected,
        Some(Value::Array(many)) => many.iter().any(|v| v.as_str() == Some(expected)),
        _ => false,
    };
    if contains {
        return Ok(());
    }
    Err(VerifyError::Audience {
        expected: expected.to_owned(),
        got: aud.map_or_else(|| "null".to_owned(), Value::to_string),
    })
}

/// A NumericDate claim: absent is `None`; anything but a JSON integer is
/// refused (GitHub and GitLab send integers; fractions are allowed by RFC
/// 7519 but would only add rounding questions).
fn numeric_date(claims: &Claims, name: &'static str) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or(VerifyError::InvalidClaim { claim: name, reason: "it is not an integer number of seconds" }),
        Some(_) => Err(VerifyError::InvalidClaim { claim: name, reason: "it is not an integer number of seconds" }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use serde_json::json;
    use writ_testkit::{GitHubClaims, TestKey, hostile};

    use super::*;

    const ISS: &str = "https://token.actions.githubusercontent.com";
    const AUD: &str = "https://writ.example.com";
    const NOW: i64 = 1_780_000_000;

    /// TEST-ONLY keys, generated per test run.
    static KEY: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("key-1"));
    /// Another key that claims the same kid: a forger's.
    static FORGER: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("key-1"));
    static KEY_2: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("key-2"));

    fn github() -> IssuerSpec {
        IssuerSpec::new("github", IssuerKind::GitHub, ISS)
    }

    fn jwks(keys: &[Value]) -> JwkSet {
        serde_json::from_value(json!({ "keys": keys })).expect("a JWK set")
    }

    /// The cheap peek reads `iss` exactly as the full parse that follows
    /// it: the last of duplicates, only strings, only from an object.
    #[test]
    fn peek_reads_iss_like_the_full_parse() {
        let header = hostile::b64_json(&json!({"alg": "RS256", "kid": "k"}));
        let token = |payload: &str| hostile::raw(&header, &hostile::b64(payload.as_bytes()), "sig");
        for payload in [
            r#"{"iss":"https://a","sub":"x","iss":"https://b"}"#,
            r#"{"iss":42}"#,
            r#"{"i\u0073s":"https://escaped","nested":{"iss":"https://inner"}}"#,
            r#"["https://a"]"#,
            r#"{"iss":"https://a""#,
        ] {
            let peeked = peek_unverified(&token(payload), DEFAULT_MAX_TOKEN_BYTES).map(|t| t.unverified_iss);
            let full = split_unverified(&token(payload), DEFAULT_MAX_TOKEN_BYTES).map(|p| p.unverified.unverified_iss);
            assert_eq!(peeked, full, "{payload}");
        }
        assert_eq!(
            peek_unverified(&token(r#"{"iss":"https://a","iss":"https://b"}"#), DEFAULT_MAX_TOKEN_BYTES)
                .map(|t| t.unverified_iss),
            Ok("https://b".to_owned())
        );
    }

    /// The header is read for `alg`, `kid` and the presence of `crit`
    /// only, with a map's rules: the last of duplicates, escaped keys
    /// unescaped, anything that is not an object refused.
    #[test]
    fn the_header_yields_alg_and_kid_and_refuses_crit() {
        let payload = hostile::b64_json(&json!({"iss": "https://a"}));
        let header = |text: &str| {
            peek_unverified(&hostile::raw(&hostile::b64(text.as_bytes()), &payload, "sig"), DEFAULT_MAX_TOKEN_BYTES)
                .map(|t| (t.unverified_alg, t.unverified_kid))
        };
        let ok = |alg: &str, kid: Option<&str>| Ok((alg.to_owned(), kid.map(str::to_owned)));
        assert_eq!(header(r#"{"alg":"RS256","kid":"k","typ":"JWT","x5t":"t"}"#), ok("RS256", Some("k")));
        assert_eq!(header(r#"{"alg":"RS256"}"#), ok("RS256", None));
        assert_eq!(header(r#"{"alg":"HS256","kid":"a","alg":"RS256","kid":"b"}"#), ok("RS256", Some("b")));
        assert_eq!(header(r#"{"\u0061lg":"RS256","k\u0069d":"k"}"#), ok("RS256", Some("k")));
        assert_eq!(header(r#"{"alg":"RS256","nested":{"crit":["x"]}}"#), ok("RS256", None));
        for crit in [r#"{"alg":"RS256","crit":["exp"]}"#, r#"{"crit":null,"alg":"RS256"}"#] {
            assert_eq!(header(crit), Err(VerifyError::CriticalHeader), "{crit}");
        }
        for (text, reason) in [
            (r#"{"kid":"k"}"#, "the header has no `alg` string"),
            (r#"{"alg":256}"#, "the header has no `alg` string"),
            (r#"{"alg":"RS256","kid":7}"#, "the header's `kid` is not a string"),
            (r#"["RS256"]"#, "the header is not base64url JSON"),
            (r#"{"alg":"RS256""#, "the header is not base64url JSON"),
        ] {
            assert_eq!(header(text), Err(VerifyError::Malformed(reason)), "{text}");
        }
    }

    fn keys() -> JwkSet {
        jwks(&[KEY.public_jwk()])
    }

    fn claims() -> GitHubClaims {
        GitHubClaims::new(ISS, AUD, "acme/web", NOW)
    }

    fn check_with(token: &str, keys: &JwkSet, cfg: &VerifyConfig) -> Result<VerifiedClaims, VerifyError> {
        verify_oidc(token, &github(), keys, cfg, NOW)
    }

    fn check(token: &str) -> Result<VerifiedClaims, VerifyError> {
        check_with(token, &keys(), &VerifyConfig::new(AUD))
    }

    fn refused(token: &str) -> VerifyError {
        check(token).expect_err("the token must be refused")
    }

    #[test]
    fn a_valid_token_passes_and_becomes_verified_claims() {
        let built = claims().environment("production").build();
        let verified = check(&KEY.sign(&built)).expect("valid token");
        assert_eq!(verified.issuer_name(), "github");
        assert_eq!(verified.issuer_kind(), IssuerKind::GitHub);
        assert_eq!(verified.issuer_url(), ISS);
        assert_eq!(verified.jti(), built["jti"].as_str().expect("jti"));
        assert_eq!(verified.sub(), "repo:acme/web:environment:production");
        assert_eq!(verified.iat(), NOW);
        assert_eq!(verified.exp(), NOW + 300);
        assert_eq!(verified.get_str("repository").as_deref(), Some("acme/web"));
    }

    #[test]
    fn peek_reads_header_and_iss_without_verifying() {
        let token = FORGER.sign(&claims().build());
        let unverified = peek_unverified(&token, DEFAULT_MAX_TOKEN_BYTES).expect("well-formed");
        assert_eq!(unverified.unverified_iss, ISS);
        assert_eq!(unverified.unverified_kid.as_deref(), Some("key-1"));
        assert_eq!(unverified.unverified_alg, "RS256");
        assert_eq!(unverified.unverified_jwt(), token);
    }

    /// The exchange parses once and may verify twice (with its cached keys,
    /// then with fresh ones after an unknown `kid`): a refusal before the
    /// signature leaves the token verifiable, a token whose signature
    /// verified cannot be verified again, and a forged one stays refused.
    #[test]
    fn a_parsed_token_verifies_after_an_unknown_key_and_only_once() {
        let token = KEY_2.sign(&claims().build());
        let cfg = VerifyConfig::new(AUD);
        let mut parsed = ParsedToken::parse(&token, DEFAULT_MAX_TOKEN_BYTES).expect("well-formed");
        assert_eq!(parsed.unverified_iss(), ISS);
        let old = KeySet::new(keys());
        let err = parsed.verify(&github(), &old, &cfg, NOW).expect_err("key-2 is not published yet");
        assert!(matches!(err, VerifyError::UnknownKey), "{err:?}");
        let fresh = KeySet::new(jwks(&[KEY.public_jwk(), KEY_2.public_jwk()]));
        let verified = parsed.verify(&github(), &fresh, &cfg, NOW).expect("verifies with the fresh keys");
        assert_eq!(verified.issuer_url(), ISS);
        assert!(parsed.verify(&github(), &fresh, &cfg, NOW).is_err(), "spent after its signature verified");

        let forged = FORGER.sign(&claims().build());
        let mut parsed = ParsedToken::parse(&forged, DEFAULT_MAX_TOKEN_BYTES).expect("well-formed");
        for _ in 0..2 {
            let err = parsed.verify(&github(), &KeySet::new(keys()), &cfg, NOW).expect_err("forged");
            assert!(matches!(err, VerifyError::Signature), "{err:?}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        for alg in ["none", "None", "NONE"] {
            let token = hostile::unsigned(&json!({"alg": alg, "typ": "JWT", "kid": "key-1"}), &claims().build());
            let err = refused(&token);
            assert_eq!(err.reason_class(), "algorithm", "{alg}");
            assert!(err.before_signature());
        }
    }

    #[test]
    fn hs256_keyed_with_the_rsa_public_key_pem_is_refused_even_if_listed() {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": "key-1"});
        let token = hostile::hs256(&header, &claims().build(), KEY.public_key_pem().as_bytes());
        assert!(matches!(refused(&token), VerifyError::Algorithm { .. }));

        // An operator listing HS256 does not open the confusion attack.
        let mut careless = github();
        careless.algorithms.push(Algorithm::HS256);
        let err =
            verify_oidc(&token, &careless, &keys(), &VerifyConfig::new(AUD), NOW).expect_err("HMAC is never accepted");
        assert_eq!(err, VerifyError::Algorithm { allowed: "RS256".to_owned() });
    }

    #[test]
    fn an_algorithm_outside_the_allow_list_is_refused_even_with_a_valid_signature() {
        // A genuine RS256 signature, but the header claims RS512: the
        // header never chooses the algorithm.
        let token = KEY.sign_with_header(&json!({"alg": "RS512", "kid": "key-1"}), &claims().build());
        assert_eq!(refused(&token).reason_class(), "algorithm");
    }

    #[test]
    fn a_key_of_the_wrong_type_under_the_kid_is_refused() {
        let token = KEY.sign(&claims().build());
        let ec = json!({"kty": "EC", "crv": "P-256", "kid": "key-1",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let oct = json!({"kty": "oct", "kid": "key-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"});
        let okp = json!({"kty": "OKP", "crv": "Ed25519", "kid": "key-1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        for wrong in [ec, oct, okp] {
            let err = check_with(&token, &jwks(std::slice::from_ref(&wrong)), &VerifyConfig::new(AUD))
                .expect_err("wrong kty");
            assert!(matches!(err, VerifyError::KeyMismatch(_)), "{wrong}: {err}");
            assert!(err.before_signature());
        }
    }

    #[test]
    fn a_jwk_published_for_another_alg_or_use_is_refused() {
        let token = KEY.sign(&claims().build());
        for (field, value) in [("alg", "RS512"), ("use", "enc")] {
            let mut jwk = KEY.public_jwk();
            jwk[field] = json!(value);
            let err = check_with(&token, &jwks(&[jwk]), &VerifyConfig::new(AUD)).expect_err(field);
            assert_eq!(err.reason_class(), "key_mismatch", "{field}");
        }
    }

    #[test]
    fn a_tampered_or_forged_signature_under_a_known_kid_is_refused() {
        let genuine = KEY.sign(&claims().build());
        let forged = FORGER.sign(&claims().build());
        let swapped = hostile::swap_claims(&genuine, &claims().environment("production").build());
        for token in [hostile::tamper_signature(&genuine), forged, swapped] {
            let err = refused(&token);
            assert_eq!(err, VerifyError::Signature);
            assert!(err.before_signature());
        }
        // An empty or undecodable signature is a bad signature too.
        let (input, _) = genuine.rsplit_once('.').expect("three parts");
        assert_eq!(refused(&format!("{input}.")), VerifyError::Signature);
        assert_eq!(refused(&format!("{input}.!!!")), VerifyError::Signature);
    }

    /// The server verifies RS256 with each key parsed once; that path and
    /// jsonwebtoken's (the fallback for any other algorithm) agree on what
    /// verifies.
    #[test]
    fn prepared_rsa_keys_verify_exactly_like_jsonwebtoken() {
        let prepared = KeySet::new(keys());
        assert!(prepared.rs256.iter().all(Option::is_some), "the RSA key is prepared");
        let genuine = KEY.sign(&claims().build());
        let (input, _) = genuine.rsplit_once('.').expect("three parts");
        let tokens = [
            genuine.clone(),
            hostile::tamper_signature(&genuine),
            FORGER.sign(&claims().build()),
            hostile::swap_claims(&genuine, &claims().environment("production").build()),
            format!("{input}."),
            format!("{input}.!!!"),
            format!("{input}.{}", &genuine[input.len() + 1..genuine.len() - 2]),
        ];
        let jwk = &keys().keys[0];
        let plain = DecodingKey::from_jwk(jwk).expect("key");
        for token in tokens {
            let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
            let parsed = prepared.rs256[0].as_ref().expect("prepared");
            let fast = verify_parsed(signing_input, signature, parsed).is_ok();
            let slow = verify_signature(signing_input, signature, &plain, Algorithm::RS256).is_ok();
            assert_eq!(fast, slow, "{token}");
            let through = verify_oidc_with(&token, &github(), &prepared, &VerifyConfig::new(AUD), NOW);
            assert_eq!(through.is_ok(), slow, "{through:?}");
        }
    }

    #[test]
    fn an_unknown_kid_is_refused() {
        let err = refused(&KEY_2.sign(&claims().build()));
        assert_eq!(err, VerifyError::UnknownKey);
        assert_eq!(err.reason_class(), "unknown_key");
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_usable_key() {
        let token = KEY.sign_with_header(&json!({"alg": "RS256", "typ": "JWT"}), &claims().build());
        check(&token).expect("one key in the set");
        // An unusable key (another kty) does not count.
        let oct = json!({"kty": "oct", "kid": "mac", "k": "c2VjcmV0"});
        check_with(&token, &jwks(&[KEY.public_jwk(), oct]), &VerifyConfig::new(AUD)).expect("one usable key");
        let two = jwks(&[KEY.public_jwk(), KEY_2.public_jwk()]);
        let err = check_with(&token, &two, &VerifyConfig::new(AUD)).expect_err("two keys");
        assert_eq!(err, VerifyError::MissingKeyId);
    }

    #[test]
    fn duplicate_kids_in_the_key_set_are_ambiguous() {
        let token = KEY.sign(&claims().build());
        let err = check_with(&token, &jwks(&[FORGER.public_jwk(), KEY.public_jwk()]), &VerifyConfig::new(AUD))
            .expect_err("ambiguous");
        assert_eq!(err, VerifyError::AmbiguousKey);
    }

    #[test]
    fn an_iss_that_is_not_exactly_the_configured_url_is_refused() {
        for lookalike in [
            "https://token.actions.githubusercontent.com/",
            "https://token.actions.githubusercontent.com.evil.com",
            "https://token.actions.githubusercontent.com/acme",
            "https://TOKEN.actions.githubusercontent.com",
            "http://token.actions.githubusercontent.com",
        ] {
            let err = refused(&KEY.sign(&claims().issuer(lookalike).build()));
            assert_eq!(err, VerifyError::Issuer { expected: ISS.to_owned() }, "{lookalike}");
            assert!(!err.before_signature());
        }
    }

    #[test]
    fn a_missing_or_other_audience_is_refused() {
        let err = refused(&KEY.sign(&claims().remove("aud").build()));
        assert_eq!(err, VerifyError::Audience { expected: AUD.to_owned(), got: "null".to_owned() });
        for other in [json!("https://github.com/acme"), json!([]), json!(["sts.amazonaws.com"]), json!(7)] {
            let err = refused(&KEY.sign(&claims().set("aud", other.clone()).build()));
            assert_eq!(err.reason_class(), "audience", "{other}");
        }
        check(&KEY.sign(&claims().set("aud", json!(["sts.amazonaws.com", AUD])).build()))
            .expect("an array containing the audience");
    }

    #[test]
    fn an_expired_token_is_refused_after_the_leeway() {
        let at = |exp: i64| KEY.sign(&claims().iat(exp - 300).exp(exp).build());
        check(&at(NOW - 60)).expect("inside the 60 s leeway");
        assert_eq!(refused(&at(NOW - 61)), VerifyError::Expired { exp: NOW - 61, now: NOW });
    }

    #[test]
    fn the_leeway_is_capped() {
        let mut cfg = VerifyConfig::new(AUD);
        cfg.leeway_secs = 3600;
        let token = KEY.sign(&claims().iat(NOW - 400).exp(NOW - 61).build());
        assert_eq!(check_with(&token, &keys(), &cfg).expect_err("capped").reason_class(), "expired");
        cfg.leeway_secs = -5;
        assert_eq!(cfg.effective_leeway_secs(), 0);
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        check(&KEY.sign(&claims().nbf(NOW + 60).build())).expect("inside the leeway");
        assert_eq!(
            refused(&KEY.sign(&claims().nbf(NOW + 61).build())),
            VerifyError::NotYetValid { nbf: NOW + 61, now: NOW }
        );
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let token = KEY.sign(&claims().iat(NOW + 61).nbf(NOW).exp(NOW + 400).build());
        assert_eq!(refused(&token), VerifyError::IssuedInFuture { iat: NOW + 61, now: NOW });
    }

    #[test]
    fn a_token_older_than_the_max_age_is_refused() {
        let token = KEY.sign(&claims().iat(NOW - 3601).exp(NOW + 100).build());
        assert_eq!(refused(&token), VerifyError::TooOld { age_secs: 3601, max_secs: 3600 });
        let token = KEY.sign(&claims().iat(NOW - 3600).exp(NOW + 100).build());
        check(&token).expect("exactly the max age");
    }

    #[test]
    fn required_claims_must_be_present() {
        for name in ["jti", "exp", "iat", "sub"] {
            let err = refused(&KEY.sign(&claims().remove(name).build()));
            assert_eq!(err, VerifyError::MissingClaim(name));
            assert_eq!(err.reason_class(), "missing_claim");
        }
    }

    #[test]
    fn claims_of_the_wrong_type_are_refused() {
        for (name, value) in [
            ("jti", json!("")),
            ("jti", json!(42)),
            ("sub", json!(["a"])),
            ("exp", json!("1780000300")),
            ("exp", json!(1_780_000_300.5)),
            ("iat", json!(null)),
        ] {
            let err = refused(&KEY.sign(&claims().set(name, value.clone()).build()));
            assert!(
                matches!(err, VerifyError::InvalidClaim { .. } | VerifyError::MissingClaim(_)),
                "{name} = {value}: {err}"
            );
        }
    }

    #[test]
    fn an_oversize_token_is_refused_before_decoding() {
        let token = KEY.sign(&claims().set("padding", json!("x".repeat(DEFAULT_MAX_TOKEN_BYTES))).build());
        let err = refused(&token);
        assert_eq!(err, VerifyError::TooLarge { len: token.len(), max: DEFAULT_MAX_TOKEN_BYTES });
        assert!(err.before_signature());
        let not_even_a_jwt = "!".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
        assert_eq!(refused(&not_even_a_jwt).reason_class(), "too_large");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let header = hostile::b64_json(&json!({"alg": "RS256", "kid": "key-1"}));
        let payload = hostile::b64_json(&claims().build());
        for token in [
            String::new(),
            "a.b".to_owned(),
            format!("{header}.{payload}.sig.extra.parts"),
            hostile::raw("!!", &payload, "sig"),
            hostile::raw(&header, "not json", "sig"),
            hostile::raw(&hostile::b64(b"[1]"), &payload, "sig"),
            hostile::raw(&hostile::b64_json(&json!({"kid": "key-1"})), &payload, "sig"),
            hostile::raw(&header, &hostile::b64_json(&json!({"sub": "x"})), "sig"),
        ] {
            let err = refused(&token);
            assert_eq!(err.reason_class(), "malformed", "{token}: {err}");
            assert!(err.before_signature());
        }
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let token = KEY.sign_with_header(
            &json!({"alg": "RS256", "kid": "key-1", "crit": ["b64"], "b64": false}),
            &claims().build(),
        );
        assert_eq!(refused(&token), VerifyError::CriticalHeader);
    }

    #[test]
    fn only_checks_before_the_signature_are_reported_as_such() {
        let after = [
            VerifyError::Issuer { expected: ISS.to_owned() },
            VerifyError::Expired { exp: 0, now: 1 },
            VerifyError::MissingClaim("jti"),
        ];
        assert!(after.iter().all(|e| !e.before_signature()));
        let unavailable = VerifyError::KeysUnavailable { issuer: "github".to_owned() };
        assert!(unavailable.before_signature() && unavailable.is_temporary());
        assert_eq!(unavailable.reason_class(), "keys_unavailable");
        assert!(!VerifyError::UnknownKey.is_temporary());
    }
}
