//! TEST-ONLY helpers for the unit tests: throwaway Ed25519 keys and tokens
//! with any header and claims.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::{Verifier, VerifierConfig};

pub const ISSUER: &str = "https://writ.test";
pub const AUDIENCE: &str = "https://api.platform.example";
pub const NOW: i64 = 1_900_000_000;

/// A throwaway Ed25519 key with a kid.
pub struct Key {
    pub kid: String,
    pair: Ed25519KeyPair,
}

impl Key {
    pub fn new(kid: &str) -> Key {
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        Key { kid: kid.to_owned(), pair: Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("parses") }
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref()),
        })
    }

    /// Signs `claims` under `header`, both taken verbatim.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let mut jws =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self.pair.sign(jws.as_bytes());
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        jws
    }

    /// Signs `claims` with a writ token header.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid}), claims)
    }
}

pub fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// Valid writ claims at [`NOW`] for [`ISSUER`] and [`AUDIENCE`].
pub fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE,
        "sub": "github:repo:acme/web:environment:production", "client_id": "github:acme/web",
        "iat": NOW, "nbf": NOW, "exp": NOW + 900, "jti": "0197a3b0-0000-7000-8000-000000000001",
        "scope": "deploy logs:read", "org": "acme-prod", "apps": ["web"],
        "ci": {"issuer": "https://token.actions.githubusercontent.com", "repository": "acme/web",
               "ref": "refs/heads/main", "environment": "production", "run_id": "42"},
    })
}

/// A pinned verifier trusting `keys`.
pub fn verifier(keys: &[&Key]) -> Verifier {
    Verifier::from_jwks(ISSUER, &jwks(keys), VerifierConfig::new(AUDIENCE)).expect("verifier")
}
