//! The crypto ceiling: what one core can do if an exchange were nothing but
//! its unavoidable cryptography — one RS256 verification of the subject
//! token (RSA-2048, as CI issuers use) and one Ed25519 signature of the
//! minted token — measured with the same libraries and calls as the server
//! (`jsonwebtoken::crypto::verify` on aws-lc-rs; aws-lc-rs `Ed25519KeyPair`).
//!
//! The verification key is decoded from the JWK once, outside the timed
//! loop, which makes the ceiling slightly higher (stricter) than the
//! server's per-request path.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lc_rs::signature::Ed25519KeyPair;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};

/// Cost of the two operations on one core.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// One RS256 verification, µs.
    pub verify_us: f64,
    /// One Ed25519 signature, µs.
    pub sign_us: f64,
}

impl Ceiling {
    /// Crypto-only exchanges per second on one core.
    pub fn per_core(&self) -> f64 {
        1e6 / (self.verify_us + self.sign_us)
    }

    /// The cheaper of two measurements of each operation: the least
    /// disturbed by other processes, so the highest (strictest) ceiling.
    pub fn best(self, other: Ceiling) -> Ceiling {
        Ceiling { verify_us: self.verify_us.min(other.verify_us), sign_us: self.sign_us.min(other.sign_us) }
    }

    /// As a JSON object.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "rs256_verify_us": self.verify_us,
            "ed25519_sign_us": self.sign_us,
            "per_core_per_s": self.per_core(),
        })
    }
}

/// Measures both operations on the calling thread for about `budget` each.
///
/// `oidc_token` is a real subject token and `jwk` its issuer's public key;
/// `signing_input` is what the server signs (`b64(header).b64(claims)` of a
/// minted writ token), so message sizes match the exchange.
pub fn measure(
    oidc_token: &str,
    jwk: &serde_json::Value,
    signing_input: &[u8],
    budget: Duration,
) -> anyhow::Result<Ceiling> {
    let jwk_value = jwk.clone();
    let jwk: Jwk = serde_json::from_value(jwk.clone()).context("the issuer's JWK does not parse")?;
    let key = DecodingKey::from_jwk(&jwk).context("the issuer's JWK is not a usable key")?;
    let (message, signature) = oidc_token.rsplit_once('.').context("the subject token is not a JWS")?;
    if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, Algorithm::RS256)? {
        bail!("the subject token's signature does not verify with its issuer's key");
    }
    let verify_us = time_per_op(budget, || {
        // The result is checked above; here only the cost matters.
        let _ = std::hint::black_box(jsonwebtoken::crypto::verify(
            signature,
            std::hint::black_box(message.as_bytes()),
            &key,
            Algorithm::RS256,
        ));
    });

    // The same verification with the key parsed once (aws-lc-rs
    // `ParsedPublicKey`): whichever is cheaper sets the ceiling.
    let parsed = parsed_rsa_key(&jwk_value)?;
    let signature_bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)
        .context("the subject token's signature is not base64url")?;
    parsed
        .verify_sig(message.as_bytes(), &signature_bytes)
        .map_err(|_| anyhow::anyhow!("the subject token's signature does not verify with the parsed key"))?;
    let parsed_us = time_per_op(budget, || {
        let _ = std::hint::black_box(parsed.verify_sig(std::hint::black_box(message.as_bytes()), &signature_bytes));
    });
    eprintln!("DEBUG verify: jsonwebtoken {verify_us:.2} us, parsed key {parsed_us:.2} us");

    let pair = Ed25519KeyPair::generate().context("generating an Ed25519 key")?;
    let sign_us = time_per_op(budget, || {
        let _ = std::hint::black_box(pair.try_sign(std::hint::black_box(signing_input)));
    });
    Ok(Ceiling { verify_us, sign_us })
}

/// Runs `op` repeatedly for about `budget` (after a short warm-up) and
/// returns µs per call.
fn time_per_op(budget: Duration, mut op: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        op();
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < budget {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn parsed_rsa_key(jwk: &serde_json::Value) -> anyhow::Result<aws_lc_rs::signature::ParsedPublicKey> {
    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
        let text = jwk[name].as_str().with_context(|| format!("the JWK has no {name}"))?;
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, text)
            .with_context(|| format!("the JWK's {name} is not base64url"))
    };
    let components = aws_lc_rs::signature::RsaPublicKeyComponents { n: field("n")?, e: field("e")? };
    components
        .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
        .map_err(|e| anyhow::anyhow!("the JWK is not a usable RSA key: {e}"))
}
