//! The crypto ceiling: what one core can do if an exchange were nothing but
//! its unavoidable cryptography — one RS256 verification of the subject
//! token (RSA-2048, as CI issuers use) and one Ed25519 signature of the
//! minted token — measured with the same library and calls as the server:
//! aws-lc-rs `ParsedPublicKey::verify_sig` with the issuer's key parsed once
//! (as the server keeps it per issuer, `writ_core::jwt::KeySet`), and
//! aws-lc-rs `Ed25519KeyPair`. Parsing the key once is also the fastest way
//! aws-lc-rs offers, so the ceiling is the strictest this library allows.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_lc_rs::signature::{Ed25519KeyPair, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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

/// How long the ceiling's two operations take right after the thread
/// slept, against back to back.
///
/// On a virtual machine whose idle vCPU halts, the host may hand the
/// physical core to other work, or let it sleep or slow down, while the
/// guest idles; the guest then comes back to colder caches or a slower
/// core. A server under an open loop sleeps between requests and pays
/// that on every wake-up; a closed loop at high concurrency hardly ever
/// sleeps. On session 22's host (docs/PERFORMANCE.md) the pair took about
/// 1.1 times as long right after a 200 µs sleep as back to back, and over
/// spells of low load the whole pair ran about 1.5 times slower for
/// hundreds of milliseconds at a time. With another process keeping the
/// core busy in the gaps, a thread pinned to it ran the pair after a sleep
/// as fast as back to back (p50 31.0 against 30.1 µs): the core's idling
/// costs, not the sleep or the switch.
#[derive(Debug, Clone, Copy)]
pub struct IdlePenalty {
    /// Mean µs of one verification and one signature, back to back.
    pub busy_us: f64,
    /// Mean µs of the same two, each pair right after a sleep of
    /// [`IDLE_GAP`].
    pub after_sleep_us: f64,
}

/// The sleep before each pair [`Crypto::idle_penalty`] times: about the gap
/// between two requests reaching one core at half the peak rate.
pub const IDLE_GAP: Duration = Duration::from_micros(200);

impl IdlePenalty {
    /// How many times as long the pair takes after a sleep.
    pub fn ratio(&self) -> f64 {
        self.after_sleep_us / self.busy_us
    }

    /// As a JSON object.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "busy_us": self.busy_us,
            "after_sleep_us": self.after_sleep_us,
            "ratio": self.ratio(),
        })
    }
}

/// Pairs of each kind per round of [`Crypto::idle_penalty`].
const IDLE_ROUND: usize = 25;

/// Work before each round's back-to-back pairs are timed.
const IDLE_WARM_UP: Duration = Duration::from_millis(5);

/// The mean of the fastest 99% of `samples` (all of them when there are
/// fewer than 100): a preemption during one pair says nothing about the
/// caches, and one of a few milliseconds would outweigh hundreds of
/// pairs. Sorts `samples`; 0 for none.
fn trimmed_mean(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let kept = &samples[..samples.len() - samples.len() / 100];
    if kept.is_empty() { 0.0 } else { kept.iter().sum::<f64>() / kept.len() as f64 }
}

/// The ceiling's work, ready to run: the issuer's key parsed once, the
/// subject token split and its signature checked, a fresh Ed25519 key.
/// Built once per run; both measurements time the same operations.
pub struct Crypto {
    key: ParsedPublicKey,
    message: Vec<u8>,
    signature: Vec<u8>,
    pair: Ed25519KeyPair,
    signing_input: Vec<u8>,
}

impl Crypto {
    /// `oidc_token` is a real subject token and `jwk` its issuer's public
    /// key; `signing_input` is what the server signs (`b64(header).b64(claims)`
    /// of a minted writ token), so message sizes match the exchange.
    pub fn new(oidc_token: &str, jwk: &serde_json::Value, signing_input: &[u8]) -> anyhow::Result<Crypto> {
        let key = parsed_rsa_key(jwk)?;
        let (message, signature) = oidc_token.rsplit_once('.').context("the subject token is not a JWS")?;
        let signature = URL_SAFE_NO_PAD.decode(signature).context("the subject token's signature is not base64url")?;
        if key.verify_sig(message.as_bytes(), &signature).is_err() {
            bail!("the subject token's signature does not verify with its issuer's key");
        }
        let pair = Ed25519KeyPair::generate().context("generating an Ed25519 key")?;
        Ok(Crypto { key, message: message.as_bytes().to_vec(), signature, pair, signing_input: signing_input.to_vec() })
    }

    /// Measures both operations on the calling thread for about `budget`
    /// each.
    pub fn ceiling(&self, budget: Duration) -> Ceiling {
        let (verify_us, sign_us) = fastest_windows(budget, || self.verify(), || self.sign());
        Ceiling { verify_us, sign_us }
    }

    /// Times single pairs (one verification, one signature) on the calling
    /// thread for about `budget`, in rounds: [`IDLE_WARM_UP`] of untimed
    /// pairs, then [`IDLE_ROUND`] back to back, then [`IDLE_ROUND`] each
    /// after a sleep of [`IDLE_GAP`].
    pub fn idle_penalty(&self, budget: Duration) -> IdlePenalty {
        let (mut busy, mut idle) = (Vec::new(), Vec::new());
        let start = Instant::now();
        while busy.is_empty() || start.elapsed() < budget {
            // The core first runs flat out for a while: after an idle spell
            // it takes milliseconds, not one pair, to reach full speed again.
            let warm = Instant::now();
            while warm.elapsed() < IDLE_WARM_UP {
                self.pair_us();
            }
            for _ in 0..IDLE_ROUND {
                busy.push(self.pair_us());
            }
            for _ in 0..IDLE_ROUND {
                std::thread::sleep(IDLE_GAP);
                idle.push(self.pair_us());
            }
        }
        IdlePenalty { busy_us: trimmed_mean(&mut busy), after_sleep_us: trimmed_mean(&mut idle) }
    }

    /// One RS256 verification. It was checked in [`Crypto::new`]; here
    /// only its cost matters.
    fn verify(&self) {
        let _ = std::hint::black_box(self.key.verify_sig(std::hint::black_box(&self.message), &self.signature));
    }

    /// One Ed25519 signature.
    fn sign(&self) {
        let _ = std::hint::black_box(self.pair.try_sign(std::hint::black_box(&self.signing_input)));
    }

    /// One verification and one signature, timed: µs.
    fn pair_us(&self) -> f64 {
        let start = Instant::now();
        self.verify();
        self.sign();
        start.elapsed().as_secs_f64() * 1e6
    }
}

/// The issuer's RSA key, parsed once for RS256 (PKCS#1 v1.5, SHA-256).
fn parsed_rsa_key(jwk: &serde_json::Value) -> anyhow::Result<ParsedPublicKey> {
    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
        let text = jwk[name].as_str().with_context(|| format!("the issuer's JWK has no `{name}`"))?;
        URL_SAFE_NO_PAD.decode(text).with_context(|| format!("the issuer's JWK `{name}` is not base64url"))
    };
    RsaPublicKeyComponents { n: field("n")?, e: field("e")? }
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
        .map_err(|e| anyhow::anyhow!("the issuer's JWK is not a usable RSA key: {e}"))
}

/// Windows each operation's budget is cut into.
const WINDOWS: u32 = 20;

/// Times `a` and `b` in alternating short windows, [`WINDOWS`] of each in
/// about `budget` per operation (after a short warm-up), and returns µs
/// per call of each one's fastest window.
///
/// The fastest window rather than the average: on a shared host a
/// neighbour's burst, a preemption or a frequency drop only ever makes a
/// window slower, so the fastest one is the closest to what the core can
/// do, and the ceiling is as high (as strict) as this host allows.
/// Alternating the two lets both see the same quiet moments. A whole-budget
/// average measured 13.7–23.1 µs for the same signature within one hour
/// on one host (docs/PERFORMANCE.md).
fn fastest_windows(budget: Duration, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        a();
        b();
    }
    let window = budget / WINDOWS;
    let (mut best_a, mut best_b) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..WINDOWS {
        best_a = best_a.min(time_window(window, &mut a));
        best_b = best_b.min(time_window(window, &mut b));
    }
    (best_a, best_b)
}

/// Runs `op` in groups of 16 until `window` has passed; µs per call.
fn time_window(window: Duration, op: &mut impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n: u64 = 0;
    while n == 0 || start.elapsed() < window {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trimmed_mean_leaves_out_the_slowest_percent() {
        let mut samples: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        // 200 samples: the two slowest (199, 200) are left out.
        assert_eq!(trimmed_mean(&mut samples), 99.5);
        let mut few = vec![3.0, 1.0, 1000.0];
        assert_eq!(trimmed_mean(&mut few), 1004.0 / 3.0);
        assert_eq!(trimmed_mean(&mut []), 0.0);
    }
}
