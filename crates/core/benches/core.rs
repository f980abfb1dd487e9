//! Criterion benches of writ-core's hot-path pieces: OIDC token
//! verification (`jwt::verify_oidc`), minting (`token::mint`) and policy
//! evaluation (`policy::evaluate`, and the exchange's `policy::evaluate_for_grant`)
//! with 1, 100 and 10,000 rules.
//!
//! Run with `cargo bench -p writ-core`; figures and method are in
//! docs/PERFORMANCE.md. Nothing here asserts a time.

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;
use writ_core::claims::VerifiedClaims;
use writ_core::issuer::IssuerKind;
use writ_core::jwt::{IssuerSpec, VerifyConfig, verify_oidc};
use writ_core::policy::{self, Decision, Pins, Request, SourceFormat, TtlLimits};
use writ_core::token::{SigningKey, WritClaims, mint};
use writ_testkit::{GitHubClaims, TestKey};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const AUDIENCE: &str = "https://writ.example.com";
const NOW: i64 = 1_900_000_000;

/// A realistic GitHub deploy token, its issuer's keys and spec.
fn subject_token() -> (String, JwkSet, IssuerSpec) {
    let key = TestKey::generate("bench-key");
    let claims = GitHubClaims::new(ISSUER, AUDIENCE, "acme/web", NOW).environment("production").build();
    let keys: JwkSet = serde_json::from_value(key.public_jwks()).expect("testkit JWKS parses");
    (key.sign(&claims), keys, IssuerSpec::new("github", IssuerKind::GitHub, ISSUER))
}

fn verified_claims() -> VerifiedClaims {
    let (token, keys, spec) = subject_token();
    verify_oidc(&token, &spec, &keys, &VerifyConfig::new(AUDIENCE), NOW).expect("the bench token verifies")
}

fn bench_verify(c: &mut Criterion) {
    let (token, keys, spec) = subject_token();
    let cfg = VerifyConfig::new(AUDIENCE);
    c.bench_function("verify_oidc/rs256_github_token", |b| {
        b.iter(|| verify_oidc(black_box(&token), &spec, &keys, &cfg, NOW).expect("verifies"))
    });
}

fn bench_mint(c: &mut Criterion) {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ed25519 keygen");
    let key = SigningKey::from_pkcs8_der("bench-kid", der.as_ref()).expect("generated key parses");
    // Built from JSON so fields added to WritClaims later (all optional)
    // don't break the bench.
    let claims: WritClaims = serde_json::from_value(json!({
        "iss": "https://writ.example.com",
        "aud": "https://api.platform.example",
        "sub": "github:repo:acme/web:environment:production",
        "client_id": "github:acme/web",
        "iat": NOW, "nbf": NOW, "exp": NOW + 900,
        "jti": "0197a3b0-0000-7000-8000-000000000001",
        "scope": "deploy logs:read",
        "org": "acme-prod",
        "apps": ["web"],
        "ci": {
            "issuer": ISSUER, "repository": "acme/web", "repository_id": "123456789",
            "repository_owner": "acme", "repository_owner_id": "987654321",
            "ref": "refs/heads/main", "sha": "0123456789abcdef0123456789abcdef01234567",
            "workflow_ref": "acme/web/.github/workflows/deploy.yml@refs/heads/main",
            "environment": "production", "run_id": "4242424242", "run_attempt": "1", "actor": "octocat"
        }
    }))
    .expect("bench claims deserialize");
    c.bench_function("mint/ed25519_writ_token", |b| b.iter(|| mint(black_box(&claims), &key).expect("mints")));
}

/// A policy of `rules` rules where only the last grants the bench identity.
pub fn policy_text(org: &str, rules: usize) -> String {
    let mut text = format!("org = \"{org}\"\n");
    for i in 1..rules {
        text.push_str(&format!(
            "\n[[rule]]\nname = \"other-{i}\"\nissuer = \"github\"\nrepository = \"acme/service-{i}\"\n\
             ref = \"refs/heads/main\"\nenvironment = \"production\"\npermissions = [\"deploy\"]\n"
        ));
    }
    text.push_str(
        "\n[[rule]]\nname = \"deploy-web\"\nissuer = \"github\"\nrepository = \"acme/web\"\n\
         ref = \"refs/heads/main\"\nenvironment = \"production\"\n\
         workflow = \"acme/web/.github/workflows/deploy.yml\"\n\
         claims = { runner_environment = \"github-hosted\", event_name = [\"push\", \"workflow_dispatch\"] }\n\
         permissions = [\"deploy\", \"logs:read\"]\napps = [\"web\"]\nmax_ttl = \"15m\"\n",
    );
    text
}

fn bench_evaluate(c: &mut Criterion) {
    let claims = verified_claims();
    let request = Request { permissions: vec!["deploy".into()], apps: vec![], machines: vec![], ttl: None };
    let limits = TtlLimits { default: Duration::from_secs(900), max: Duration::from_secs(3600) };
    let pins = Pins::new();
    type Evaluate = fn(&policy::Policy, &VerifiedClaims, &Request, &Pins, TtlLimits) -> Decision;
    // `evaluate_for_grant` is what the exchange runs: the rules for other
    // repositories are passed over through the policy's index instead of
    // each being tested.
    let evaluations: [(&str, Evaluate); 2] = [
        ("evaluate/last_rule_grants", policy::evaluate),
        ("evaluate_for_grant/last_rule_grants", policy::evaluate_for_grant),
    ];
    for (name, evaluate) in evaluations {
        let mut group = c.benchmark_group(name);
        for rules in [1_usize, 100, 10_000] {
            let policy =
                policy::parse(&policy_text("acme-prod", rules), SourceFormat::Toml).expect("bench policy parses");
            assert!(matches!(evaluate(&policy, &claims, &request, &pins, limits), Decision::Granted(_)));
            group.bench_with_input(BenchmarkId::from_parameter(rules), &policy, |b, policy| {
                b.iter(|| evaluate(black_box(policy), &claims, &request, &pins, limits))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_verify, bench_mint, bench_evaluate);
criterion_main!(benches);
