//! TEST-ONLY RSA signing keys that mint RS256 JWTs the way CI OIDC issuers do.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::jose;

/// A TEST-ONLY RSA-2048 signing key with a key id (`kid`).
///
/// The key lives only in memory and is never protected: use it in tests and
/// in `writ serve --dev`, never to sign anything a real system trusts.
///
/// The private key stays parsed (inside an `Arc`), so signing costs one RSA
/// operation and cloning is cheap. That matters for benchmarks that pre-mint
/// many tokens: `jsonwebtoken::encode` re-parses the DER key on every call.
#[derive(Clone)]
pub struct TestKey {
    inner: Arc<Inner>,
}

struct Inner {
    kid: String,
    pair: RsaKeyPair,
    rng: SystemRandom,
    /// `b64({"alg":"RS256","kid":..,"typ":"JWT"})`, computed once.
    default_header_b64: String,
    public_jwk: Value,
    public_key_pem: String,
}

impl TestKey {
    /// Generates a fresh TEST-ONLY RSA-2048 key with the given `kid`.
    ///
    /// Key generation takes a noticeable fraction of a second; share keys
    /// between tokens rather than generating one per token.
    pub fn generate(kid: impl Into<String>) -> TestKey {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048)
            .expect("aws-lc-rs generates RSA-2048 keys unless the system RNG fails");
        TestKey::from_key_pair(kid.into(), pair)
    }

    fn from_key_pair(kid: String, pair: RsaKeyPair) -> TestKey {
        let public = pair.public_key();
        let public_jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": jose::b64(public.modulus().big_endian_without_leading_zero()),
            "e": jose::b64(public.exponent().big_endian_without_leading_zero()),
        });
        let spki = public.as_der().expect("an RSA public key always encodes as SubjectPublicKeyInfo");
        let public_key_pem = pem("PUBLIC KEY", spki.as_ref());
        let default_header_b64 = jose::b64_json(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}));
        TestKey {
            inner: Arc::new(Inner {
                kid,
                pair,
                rng: SystemRandom::new(),
                default_header_b64,
                public_jwk,
                public_key_pem,
            }),
        }
    }

    /// The key id, published as `kid` in the JWK and in signed headers.
    pub fn kid(&self) -> &str {
        &self.inner.kid
    }

    /// The public half as a JWK:
    /// `{"kty":"RSA","use":"sig","alg":"RS256","kid":..,"n":..,"e":..}`.
    pub fn public_jwk(&self) -> Value {
        self.inner.public_jwk.clone()
    }

    /// A JWK Set holding only this key, e.g. for a pinned `jwks_file`.
    pub fn public_jwks(&self) -> Value {
        json!({ "keys": [self.inner.public_jwk] })
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// Attack tests use these exact bytes as an HMAC secret: a verifier that
    /// takes the algorithm from the token header would accept an HS256 token
    /// "signed" with the issuer's public key.
    pub fn public_key_pem(&self) -> String {
        self.inner.public_key_pem.clone()
    }

    /// Signs `claims` as an RS256 JWT with header
    /// `{"alg":"RS256","typ":"JWT","kid":<kid>}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_segments(&self.inner.default_header_b64, claims)
    }

    /// Signs `claims` with RS256 under an arbitrary header, taken verbatim.
    ///
    /// The header may lie (`"alg":"HS256"`, a wrong `typ`, a missing or
    /// foreign `kid`); the signature is always a valid RS256 signature by this
    /// key, so a verifier must reject such tokens on the header alone.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        self.sign_segments(&jose::b64_json(header), claims)
    }

    fn sign_segments(&self, header_b64: &str, claims: &Value) -> String {
        let mut token = jose::signing_input(header_b64, claims);
        let mut signature = vec![0; self.inner.pair.public_modulus_len()];
        self.inner
            .pair
            .sign(&RSA_PKCS1_SHA256, &self.inner.rng, token.as_bytes(), &mut signature)
            .expect("RS256 signing with a valid key and a modulus-sized buffer cannot fail");
        token.push('.');
        token.push_str(&jose::b64(&signature));
        token
    }
}

/// Shows the `kid` only: key material never reaches logs or test output.
impl fmt::Debug for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKey").field("kid", &self.inner.kid).finish_non_exhaustive()
    }
}

/// Wraps DER bytes in RFC 7468 PEM armour with 64-column lines.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    use std::sync::LazyLock;

    /// One key for the module: generation is the slow part of these tests.
    static KEY: LazyLock<TestKey> = LazyLock::new(|| TestKey::generate("unit-key"));

    fn claims() -> Value {
        json!({"iss": "https://issuer.test", "aud": "writ", "sub": "s", "exp": 4_000_000_000_i64})
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&["writ"]);
        v.set_issuer(&["https://issuer.test"]);
        v
    }

    /// Verifies RS256 with the JWK's n/e, independent of what the header says.
    fn rs256_valid_under_jwk(token: &str, jwk: &Value) -> bool {
        let (input, sig) = token.rsplit_once('.').expect("token has a signature part");
        let component = |name: &str| {
            jose::unb64(jwk[name].as_str().expect("jwk component is a string")).expect("jwk component is base64url")
        };
        let public = RsaPublicKeyComponents { n: component("n"), e: component("e") };
        let sig = jose::unb64(sig).expect("signature is base64url");
        public.verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig).is_ok()
    }

    #[test]
    fn signed_token_verifies_with_published_jwk() {
        let token = KEY.sign(&claims());
        let jwk: Jwk = serde_json::from_value(KEY.public_jwk()).expect("public_jwk is a valid JWK");
        let key = DecodingKey::from_jwk(&jwk).expect("RSA JWK becomes a decoding key");
        let data = decode::<Value>(&token, &key, &validation()).expect("token verifies");
        assert_eq!(data.claims, claims());
        assert_eq!(data.header.kid.as_deref(), Some("unit-key"));
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
    }

    #[test]
    fn public_jwk_has_the_published_shape() {
        let jwk = KEY.public_jwk();
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["kid"], "unit-key");
        assert_eq!(jwk["e"], "AQAB");
        let n = jose::unb64(jwk["n"].as_str().expect("n is a string")).expect("n is base64url");
        assert_eq!(n.len(), 256, "RSA-2048 modulus without a leading zero");
        assert_eq!(KEY.public_jwks()["keys"][0], jwk);
    }

    #[test]
    fn public_key_pem_is_the_signing_key() {
        let pem = KEY.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        let key = DecodingKey::from_rsa_pem(pem.as_bytes()).expect("SPKI PEM parses");
        decode::<Value>(KEY.sign(&claims()), &key, &validation()).expect("verifies under the PEM");
    }

    #[test]
    fn sign_with_header_keeps_the_header_verbatim_and_signs_rs256() {
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": "someone-else", "x": 1});
        let token = KEY.sign_with_header(&header, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        let decoded: Value =
            serde_json::from_slice(&jose::unb64(parts[0]).expect("header is base64url")).expect("header is JSON");
        assert_eq!(decoded, header);
        assert!(rs256_valid_under_jwk(&token, &KEY.public_jwk()));
        assert_eq!(decode_header(&token).expect("header parses").alg, Algorithm::HS256);
    }

    #[test]
    fn keys_are_distinct_and_debug_hides_material() {
        let other = TestKey::generate("other");
        assert_ne!(other.public_jwk()["n"], KEY.public_jwk()["n"]);
        assert!(!rs256_valid_under_jwk(&other.sign(&claims()), &KEY.public_jwk()));
        assert_eq!(format!("{other:?}"), r#"TestKey { kid: "other", .. }"#);
    }
}
