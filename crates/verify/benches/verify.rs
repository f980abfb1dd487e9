//! Verification throughput of writ-verify: what one platform core can check
//! per second, and what refused tokens cost.
//!
//! Method: a verifier with pinned keys (no network; the key cache is warm,
//! which is the steady state of a discovered verifier too), tokens minted
//! by writ-core exactly as the server mints them (full `ci` provenance,
//! about 1 KiB), time passed to `verify_at` so no clock is read.
//!
//! - `verify/valid`: one accepted token, single thread (includes claim
//!   parsing, the revocation lookup and building the `Grant`);
//! - `verify/valid_100k_revoked`: the same with 100 000 revoked token ids
//!   remembered (the lookup is a hash probe);
//! - `verify/parallel_<n>`: `n` threads verifying at once; the reported
//!   time per element is wall time divided by all verifications, so its
//!   inverse is the machine's throughput;
//! - `refused/*`: a forged signature (costs a verification), an unknown
//!   `kid` and an OIDC ID token (refused before any crypto);
//! - `baseline/ed25519_verify`: aws-lc-rs's Ed25519 verification alone, the
//!   crypto-only ceiling.
//!
//! Run: `cargo bench -p writ-verify --bench verify`.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use writ_core::token::{CiProvenance, SigningKey, WritClaims, mint};
use writ_verify::{Verifier, VerifierConfig};

const ISSUER: &str = "https://writ.example.com";
const AUDIENCE: &str = "https://api.platform.example";

fn key(kid: &str) -> (SigningKey, Ed25519KeyPair) {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
    let signing = SigningKey::from_pkcs8_der(kid, der.as_ref()).expect("key");
    let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("key");
    (signing, pair)
}

fn claims(now: i64, jti: &str) -> WritClaims {
    WritClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: "github:repo:acme/web:environment:production".into(),
        client_id: "github:acme/web".into(),
        iat: now,
        nbf: now,
        exp: now + 900,
        jti: jti.into(),
        scope: "deploy logs:read".into(),
        org: "acme-prod".into(),
        apps: Some(vec!["web".into()]),
        machines: None,
        ci: CiProvenance {
            issuer: Some("https://token.actions.githubusercontent.com".into()),
            repository: Some("acme/web".into()),
            repository_id: Some("123456789".into()),
            repository_owner: Some("acme".into()),
            repository_owner_id: Some("987654".into()),
            ref_: Some("refs/heads/main".into()),
            sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            workflow_ref: Some("acme/web/.github/workflows/deploy.yml@refs/heads/main".into()),
            environment: Some("production".into()),
            run_id: Some("12345678901".into()),
            run_attempt: Some("1".into()),
            actor: Some("octocat".into()),
        },
        parent: None,
    }
}

fn verifier(keys: &[&SigningKey]) -> Verifier {
    let jwks = json!({ "keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() }).to_string();
    Verifier::from_jwks(ISSUER, &jwks, VerifierConfig::new(AUDIENCE)).expect("verifier")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let now = unix_now();
    let (signing, pair) = key("writ-key-1");
    let verifier = verifier(&[&signing]);
    let token = mint(&claims(now, "0197a3b0-0000-7000-8000-000000000001"), &signing).expect("mint");
    assert!(rt.block_on(verifier.verify_at(&token, now)).is_ok(), "the benchmark token verifies");

    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("valid", |b| b.to_async(&rt).iter(|| verifier.verify_at(&token, now)));

    let crowded = self::verifier(&[&signing]);
    for n in 0..100_000 {
        crowded.revoke(format!("0197a3b0-0000-7000-8000-{n:012}"), now + 3600);
    }
    assert_eq!(crowded.revocation_status().revoked, 100_000);
    group.bench_function("valid_100k_revoked", |b| b.to_async(&rt).iter(|| crowded.verify_at(&token, now)));

    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    group.bench_function(format!("parallel_{threads}"), |b| {
        b.iter_custom(|iters| parallel(&verifier, &token, now, threads, iters));
    });
    group.finish();

    let mut refused = c.benchmark_group("refused");
    refused.throughput(Throughput::Elements(1));
    let (outsider, _) = key("writ-key-1");
    let forged = mint(&claims(now, "forged"), &outsider).expect("mint");
    refused.bench_function("forged_signature", |b| b.to_async(&rt).iter(|| verifier.verify_at(&forged, now)));
    let (stranger, _) = key("unknown-kid");
    let unknown = mint(&claims(now, "unknown"), &stranger).expect("mint");
    refused.bench_function("unknown_kid", |b| b.to_async(&rt).iter(|| verifier.verify_at(&unknown, now)));
    let id_token = writ_testkit::TestKey::generate("github-1").sign(&json!({"iss": "https://token.actions.githubusercontent.com", "aud": AUDIENCE, "sub": "repo:acme/web:ref:refs/heads/main", "iat": now, "exp": now + 300}));
    refused.bench_function("oidc_id_token", |b| b.to_async(&rt).iter(|| verifier.verify_at(&id_token, now)));
    refused.finish();

    let mut baseline = c.benchmark_group("baseline");
    baseline.throughput(Throughput::Elements(1));
    let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
    let signature = base64_url_decode(signature);
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    baseline.bench_function("ed25519_verify", |b| {
        b.iter(|| public.verify(signing_input.as_bytes(), &signature).expect("valid"))
    });
    baseline.finish();
}

/// Verifies `iters` times spread over `threads` threads; returns the wall
/// time.
fn parallel(verifier: &Verifier, token: &str, now: i64, threads: usize, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let runtimes: Vec<tokio::runtime::Runtime> =
        (0..threads).map(|_| tokio::runtime::Builder::new_current_thread().build().expect("runtime")).collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for rt in &runtimes {
            scope.spawn(|| {
                rt.block_on(async {
                    for _ in 0..per_thread {
                        std::hint::black_box(verifier.verify_at(token, now).await.is_ok());
                    }
                });
            });
        }
    });
    start.elapsed()
}

fn base64_url_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
