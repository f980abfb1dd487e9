//! Hand-built hostile tokens for attack tests: unsigned, HMAC-forged, raw and tampered JWTs.
//!
//! Each function builds exactly the bytes it is asked for, with no validation,
//! so tests can present a verifier with tokens no honest issuer would mint.

use aws_lc_rs::hmac;
use serde_json::Value;

use crate::jose;

/// An unsecured JWT: `b64(header).b64(claims).` with an empty signature.
///
/// Pass a header such as `{"alg":"none","typ":"JWT"}` for the classic
/// `alg: none` attack (RFC 7519 §6); the header is used verbatim.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    let mut token = jose::signing_input(&jose::b64_json(header), claims);
    token.push('.');
    token
}

/// A JWT whose signature is HMAC-SHA256 over the signing input with `secret`.
///
/// With the issuer's public key PEM as the secret and `"alg":"HS256"` in the
/// header this is the algorithm-confusion attack: a verifier that trusts the
/// header's `alg` and feeds its RSA key bytes to HMAC accepts the forgery.
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let mut token = jose::signing_input(&jose::b64_json(header), claims);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, token.as_bytes());
    token.push('.');
    token.push_str(&jose::b64(tag.as_ref()));
    token
}

/// Joins three already-encoded segments as `header.payload.signature`.
///
/// For malformed-input tests: segments are not checked, so they may be empty,
/// padded, non-base64 or contain dots.
pub fn raw(header_b64: &str, payload_b64: &str, sig_b64: &str) -> String {
    format!("{header_b64}.{payload_b64}.{sig_b64}")
}

/// Encodes a JSON value as a base64url JWS segment, for use with [`raw`].
pub fn b64_json(value: &Value) -> String {
    jose::b64_json(value)
}

/// Encodes bytes as an unpadded base64url segment, for use with [`raw`].
pub fn b64(bytes: &[u8]) -> String {
    jose::b64(bytes)
}

/// Returns `token` with one bit of its signature flipped; header and payload
/// are untouched.
///
/// The flip happens on the decoded signature bytes and is re-encoded, because
/// editing a base64 character can be a no-op (the last character's low bits
/// are padding that lenient decoders ignore). A token without a decodable,
/// non-empty signature gets the one-byte signature `AA` instead.
pub fn tamper_signature(token: &str) -> String {
    let (signing_input, signature) = token.rsplit_once('.').unwrap_or((token, ""));
    let tampered = match jose::unb64(signature) {
        Some(mut bytes) if !bytes.is_empty() => {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            jose::b64(&bytes)
        }
        _ => jose::b64(&[0]),
    };
    format!("{signing_input}.{tampered}")
}

/// Returns `token` with its payload replaced by `claims`, keeping the
/// original header and signature: the "edit the claims, reuse the signature"
/// forgery that a verifier must reject.
pub fn swap_claims(token: &str, claims: &Value) -> String {
    let mut parts = token.splitn(3, '.');
    let header = parts.next().unwrap_or_default();
    let _payload = parts.next();
    let signature = parts.next().unwrap_or_default();
    raw(header, &jose::b64_json(claims), signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestKey;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    use serde_json::json;
    use std::sync::LazyLock;

    static KEY: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("hostile-key"));

    fn claims() -> Value {
        json!({"iss": "https://issuer.test", "aud": "writ", "exp": 4_000_000_000_i64})
    }

    fn segment_json(segment: &str) -> Value {
        serde_json::from_slice(&jose::unb64(segment).expect("segment is base64url")).expect("segment is JSON")
    }

    fn rs256_verifies(token: &str) -> bool {
        let jwk: Jwk = serde_json::from_value(KEY.public_jwk()).expect("valid JWK");
        let key = DecodingKey::from_jwk(&jwk).expect("RSA decoding key");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["writ"]);
        decode::<Value>(token, &key, &validation).is_ok()
    }

    #[test]
    fn unsigned_has_two_json_segments_and_an_empty_signature() {
        let header = json!({"alg": "none", "typ": "JWT"});
        let token = unsigned(&header, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(segment_json(parts[0]), header);
        assert_eq!(segment_json(parts[1]), claims());
        assert_eq!(parts[2], "");
    }

    #[test]
    fn hs256_keyed_with_the_public_pem_verifies_as_hmac() {
        // This is the forgery a confused verifier would accept; the test pins
        // that the token really is a valid HMAC under those exact PEM bytes.
        let pem = KEY.public_key_pem();
        let token = hs256(&json!({"alg": "HS256", "typ": "JWT"}), &claims(), pem.as_bytes());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["writ"]);
        let data = decode::<Value>(&token, &DecodingKey::from_secret(pem.as_bytes()), &validation)
            .expect("a valid HS256 token under the PEM bytes");
        assert_eq!(data.claims, claims());
        assert!(decode::<Value>(&token, &DecodingKey::from_secret(b"other"), &validation).is_err());
    }

    #[test]
    fn raw_joins_segments_verbatim() {
        assert_eq!(raw("a", "b=", ""), "a.b=.");
        assert_eq!(raw(&b64_json(&json!({})), &b64(b"x"), "s"), "e30.eA.s");
    }

    #[test]
    fn tampered_signature_keeps_header_and_payload_but_fails_verification() {
        let token = KEY.sign(&claims());
        assert!(rs256_verifies(&token));
        let tampered = tamper_signature(&token);
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let (tampered_input, tampered_sig) = tampered.rsplit_once('.').expect("three parts");
        assert_eq!(input, tampered_input);
        assert_ne!(sig, tampered_sig);
        assert_eq!(jose::unb64(sig).map(|s| s.len()), jose::unb64(tampered_sig).map(|s| s.len()));
        assert!(!rs256_verifies(&tampered));
        assert_eq!(tamper_signature("a.b."), "a.b.AA");
    }

    #[test]
    fn swapped_claims_keep_the_old_signature_and_fail_verification() {
        let token = KEY.sign(&claims());
        let mut other = claims();
        other["sub"] = json!("attacker");
        let swapped = swap_claims(&token, &other);
        assert_eq!(swapped.split('.').next(), token.split('.').next());
        assert_eq!(swapped.rsplit('.').next(), token.rsplit('.').next());
        assert_eq!(segment_json(swapped.split('.').nth(1).expect("payload")), other);
        assert!(!rs256_verifies(&swapped));
    }
}
