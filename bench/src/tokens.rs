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
        Ok(Minter {
            key,
            claims: claims.build(),
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
    /// `exp = now + lifetime`.
    pub fn token(&self) -> String {
        let now = unix_now();
        let mut claims = self.claims.clone();
        if let Some(map) = claims.as_object_mut() {
            map.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
            map.insert("iat".into(), json!(now));
            map.insert("nbf".into(), json!(now));
            map.insert("exp".into(), json!(now + self.lifetime_secs));
        }
        self.key.sign(&claims)
    }

    /// A request body holding a fresh token.
    pub fn body(&self) -> Bytes {
        let token = self.token();
        let mut body = String::with_capacity(self.body_prefix.len() + token.len() + self.body_suffix.len());
        body.push_str(&self.body_prefix);
        body.push_str(&token);
        body.push_str(&self.body_suffix);
        Bytes::from(body)
    }
}

/// Mints `n` bodies on `threads` threads.
pub fn premint(minter: &Minter, n: usize, threads: usize) -> Vec<Bytes> {
    let threads = threads.clamp(1, n.max(1));
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let count = per.min(n.saturating_sub(t * per));
                s.spawn(move || (0..count).map(|_| minter.body()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
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
                    if tx.blocking_send(minter.body()).is_err() {
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
