//! Subject tokens for the load: GitHub-shaped OIDC tokens from the testkit's
//! fake issuer, each with its own `jti`, wrapped in a ready-to-send request
//! body.
//!
//! RS256 signing costs about 240 µs per token, far more than an exchange's
//! share of the server's work, so tokens are minted before a measured phase
//! ([`premint`], on every core) or, for the soak, on generator threads
//! while the load runs ([`stream`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use serde_json::{Value, json};
use writ_testkit::{GitHubClaims, TestKey};

/// Mints request bodies: a claims template with a fresh `jti` and times,
/// signed by the issuer's key, placed into the body template.
#[derive(Clone)]
pub struct Minter {
    key: TestKey,
    claims: Value,
    lifetime_secs: i64,
    /// The body template around the `{token}` placeholder.
    body_prefix: String,
    body_suffix: String,
}

/// What the minted tokens and bodies look like.
#[derive(Debug, Clone)]
pub struct TokenShape {
    /// The issuer URL (`iss`).
    pub issuer: String,
    /// The `aud` the server requires.
    pub audience: String,
    /// `owner/name`.
    pub repository: String,
    /// The deployment environment, if any.
    pub environment: Option<String>,
    /// Token lifetime (`exp - iat`), seconds.
    pub lifetime_secs: i64,
    /// Request body with `{token}` where the token goes.
    pub body_template: String,
    /// Claims added to (or replacing) the GitHub-shaped ones.
    pub extra_claims: serde_json::Map<String, Value>,
}

impl Minter {
    /// A minter signing with `key`.
    pub fn new(key: TestKey, shape: &TokenShape) -> anyhow::Result<Minter> {
        let mut claims = GitHubClaims::new(&shape.issuer, &shape.audience, &shape.repository, unix_now())
            .ref_("refs/heads/main")
            .event_name("push");
        if let Some(env) = &shape.environment {
            claims = claims.environment(env.clone());
        }
        let (prefix, suffix) =
            shape.body_template.split_once("{token}").context("--body-template must contain {token}")?;
        let mut claims = claims.build();
        if let Some(map) = claims.as_object_mut() {
            map.extend(shape.extra_claims.clone());
        }
        Ok(Minter {
            key,
            claims,
            lifetime_secs: shape.lifetime_secs,
            body_prefix: prefix.to_owned(),
            body_suffix: suffix.to_owned(),
        })
    }

    /// Changes the lifetime of tokens minted from now on.
    pub fn set_lifetime(&mut self, secs: i64) {
        self.lifetime_secs = secs;
    }

    /// A fresh token issued now: new `jti`, `iat = nbf = now`,
    /// `exp = now + lifetime`, and the `nonce` claim when one is given.
    pub fn token(&self, nonce: Option<&str>) -> String {
        let now = unix_now();
        let mut claims = self.claims.clone();
        if let Some(map) = claims.as_object_mut() {
            map.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
            map.insert("iat".into(), json!(now));
            map.insert("nbf".into(), json!(now));
            map.insert("exp".into(), json!(now + self.lifetime_secs));
            if let Some(nonce) = nonce {
                map.insert("nonce".into(), json!(nonce));
            }
        }
        self.key.sign(&claims)
    }

    /// A request body holding a fresh token (with `nonce`, if given).
    pub fn body(&self, nonce: Option<&str>) -> Bytes {
        let token = self.token(nonce);
        let mut body = String::with_capacity(self.body_prefix.len() + token.len() + self.body_suffix.len());
        body.push_str(&self.body_prefix);
        body.push_str(&token);
        body.push_str(&self.body_suffix);
        Bytes::from(body)
    }
}

/// Mints `n` bodies on `threads` threads; the i-th token carries
/// `nonces[i]` when `nonces` is not empty.
///
/// Thread `t` mints tokens `t`, `t + threads`, `t + 2·threads`, …, so the
/// tokens come out in about the order they were minted, as a server sees
/// them in production: their `exp` seconds only grow along the list.
/// (Until session 5 each thread minted one contiguous part, and the second
/// half of a phase went back to the first half's `exp` seconds.)
pub fn premint(minter: &Minter, n: usize, threads: usize, nonces: &[String]) -> Vec<Bytes> {
    let threads = threads.clamp(1, n.max(1));
    let parts: Vec<Vec<Bytes>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..n).step_by(threads).map(|i| minter.body(nonces.get(i).map(String::as_str))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut parts: Vec<_> = parts.into_iter().map(Vec::into_iter).collect();
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        if let Some(body) = parts.get_mut(i % threads).and_then(Iterator::next) {
            bodies.push(body);
        }
    }
    bodies
}

/// Mints bodies on `threads` threads into `tx` until `stop` is set or the
/// receiver is gone. The channel's capacity bounds how far minting runs
/// ahead (and so the tokens' age when sent).
pub fn stream(
    minter: Minter,
    threads: usize,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads.max(1))
        .map(|_| {
            let minter = minter.clone();
            let tx = tx.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if tx.blocking_send(minter.body(None)).is_err() {
                        break;
                    }
                }
            })
        })
        .collect()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn payload(body: &[u8]) -> Value {
        let text = std::str::from_utf8(body).expect("UTF-8 body");
        let token = text.strip_prefix("T=").expect("template prefix");
        let part = token.split('.').nth(1).expect("JWT payload");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON payload")
    }

    #[test]
    fn each_preminted_token_carries_its_own_nonce_and_the_extra_claims() {
        let mut extra = serde_json::Map::new();
        extra.insert("email".into(), json!("ci@acme.test"));
        extra.insert("environment".into(), json!("staging"));
        let shape = TokenShape {
            issuer: "https://127.0.0.1:1".into(),
            audience: "aud".into(),
            repository: "acme/web".into(),
            environment: Some("production".into()),
            lifetime_secs: 60,
            body_template: "T={token}".into(),
            extra_claims: extra,
        };
        let minter = Minter::new(TestKey::generate("k1"), &shape).expect("minter");
        let nonces: Vec<String> = (0..7).map(|i| format!("nonce-{i}")).collect();
        let bodies = premint(&minter, 7, 3, &nonces);
        let claims: Vec<Value> = bodies.iter().map(|b| payload(b)).collect();
        for (i, c) in claims.iter().enumerate() {
            assert_eq!(c["nonce"], json!(format!("nonce-{i}")), "token {i}");
            assert_eq!(c["email"], "ci@acme.test");
            assert_eq!(c["environment"], "staging", "extra claims replace the shaped ones");
            assert_eq!(c["iss"], "https://127.0.0.1:1");
        }
        let plain = payload(&premint(&minter, 1, 1, &[])[0]);
        assert!(plain.get("nonce").is_none(), "no nonce unless one is given");
    }
}
