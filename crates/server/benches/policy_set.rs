//! Criterion bench of the exchange's policy step as the server runs it:
//! the org's parsed policy looked up in the in-memory [`PolicySet`], then
//! `writ_core::policy::evaluate`, with 1, 100 and 10,000 rules in the org
//! while 10,000 other orgs are loaded — and the same with only that org
//! loaded, to show the cost does not depend on how many orgs exist.
//!
//! Run with `cargo bench -p writ-server --bench policy_set`; figures are in
//! docs/PERFORMANCE.md. Nothing here asserts a time.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::JwkSet;
use writ_core::claims::VerifiedClaims;
use writ_core::issuer::IssuerKind;
use writ_core::jwt::{IssuerSpec, VerifyConfig, verify_oidc};
use writ_core::policy::{self, Decision, Pins, Request, SourceFormat, TtlLimits};
use writ_server::policies::PolicySet;
use writ_server::storage::ManagedBy;
use writ_testkit::{GitHubClaims, TestKey};

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const AUDIENCE: &str = "https://writ.example.com";
const NOW: i64 = 1_900_000_000;
const OTHER_ORGS: usize = 10_000;

fn claims() -> VerifiedClaims {
    let key = TestKey::generate("bench-key");
    let token = key.sign(&GitHubClaims::new(ISSUER, AUDIENCE, "acme/web", NOW).environment("production").build());
    let keys: JwkSet = serde_json::from_value(key.public_jwks()).expect("testkit JWKS parses");
    let spec = IssuerSpec::new("github", IssuerKind::GitHub, ISSUER);
    verify_oidc(&token, &spec, &keys, &VerifyConfig::new(AUDIENCE), NOW).expect("the bench token verifies")
}

/// `rules` rules for org `org`; only the last grants acme/web.
fn policy_text(org: &str, rules: usize) -> String {
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

fn install(set: &PolicySet, org: &str, rules: usize) {
    let parsed = policy::parse(&policy_text(org, rules), SourceFormat::Toml).expect("bench policy parses");
    set.install_compiled(parsed, 1, ManagedBy::Api);
}

fn bench_lookup_and_evaluate(c: &mut Criterion) {
    let claims = claims();
    let request = Request { permissions: vec!["deploy".into()], apps: vec![], machines: vec![], ttl: None };
    let limits = TtlLimits { default: Duration::from_secs(900), max: Duration::from_secs(3600) };
    let pins = Pins::new();
    let crowded = PolicySet::default();
    for i in 0..OTHER_ORGS {
        install(&crowded, &format!("org-{i:05}"), 2);
    }
    let mut group = c.benchmark_group("policy_set_lookup_and_evaluate");
    for rules in [1_usize, 100, 10_000] {
        let alone = PolicySet::default();
        install(&alone, "acme-prod", rules);
        install(&crowded, "acme-prod", rules);
        for (orgs, set) in [(1, &alone), (OTHER_ORGS + 1, &crowded)] {
            let loaded = set.get("acme-prod").expect("installed");
            assert!(matches!(policy::evaluate(&loaded.policy, &claims, &request, &pins, limits), Decision::Granted(_)));
            group.bench_with_input(
                BenchmarkId::new(format!("{rules}_rules"), format!("{orgs}_orgs")),
                set,
                |b, set| {
                    b.iter(|| {
                        let loaded = set.get(black_box("acme-prod")).expect("installed");
                        policy::evaluate(&loaded.policy, &claims, &request, &pins, limits)
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_lookup_and_evaluate);
criterion_main!(benches);
