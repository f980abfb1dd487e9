//! Real GitHub Actions OIDC tokens and GitHub's published keys (see
//! `fixtures/github-oidc/README.md` for their provenance) run through
//! `verify_oidc`: proof that the checks accept what GitHub actually mints,
//! across its 2022-2026 header layouts and key rotations.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use writ_core::issuer::IssuerKind;
use writ_core::jwt::{IssuerSpec, VerifyConfig, VerifyError, verify_oidc};

const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// The kid of GitHub's 2022-2023 signing key, since rotated out.
const KID_78167F: &str = "78167F727DEC5D801DD1C8784C704A1C880EC0E1";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github-oidc")
}

fn read(rel: &str) -> String {
    let path = fixtures().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn manifest() -> Value {
    serde_json::from_str(&read("manifest.json")).expect("manifest.json is JSON")
}

fn github() -> IssuerSpec {
    IssuerSpec::new("github", IssuerKind::GitHub, GITHUB_ISSUER)
}

/// A key file from the manifest as a JWK set. A PEM certificate becomes a
/// one-key set: its RSA public key, with the certificate's kid.
fn key_set(rel: &str, kid: &str) -> JwkSet {
    if rel.ends_with(".pem") {
        let key = DecodingKey::from_rsa_pem(read(rel).as_bytes()).expect("certificate holds an RSA key");
        let mut jwk = Jwk::from_decoding_key(&key, Some(Algorithm::RS256)).expect("RSA key to JWK");
        jwk.common.key_id = Some(kid.to_owned());
        JwkSet { keys: vec![jwk] }
    } else {
        serde_json::from_str(&read(rel)).expect("key file is a JWK set")
    }
}

struct Fixture {
    file: String,
    token: String,
    kid: String,
    aud: String,
    jti: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    key_files: Vec<String>,
}

fn tokens() -> Vec<Fixture> {
    let manifest = manifest();
    let tokens = manifest["tokens"].as_array().expect("manifest lists tokens");
    assert_eq!(tokens.len(), 10, "the manifest's ten tokens");
    tokens
        .iter()
        .map(|t| {
            let text = |v: &Value| v.as_str().expect("a string").to_owned();
            let file = text(&t["file"]);
            Fixture {
                token: read(&file).trim().to_owned(),
                file,
                kid: text(&t["header"]["kid"]),
                aud: text(&t["claims"]["aud"]),
                jti: text(&t["claims"]["jti"]),
                iat: t["iat"].as_i64().expect("iat"),
                nbf: t["nbf"].as_i64().expect("nbf"),
                exp: t["exp"].as_i64().expect("exp"),
                key_files: t["signature_verified_with"].as_array().expect("key files").iter().map(text).collect(),
            }
        })
        .collect()
}

#[test]
fn every_real_token_verifies_with_each_listed_key_file_inside_its_lifetime() {
    let mut checked = 0;
    for t in tokens() {
        let cfg = VerifyConfig::new(t.aud.clone());
        for key_file in &t.key_files {
            let keys = key_set(key_file, &t.kid);
            // `iat` and `exp` both lie inside [nbf, exp]; `nbf` itself is
            // 5-10 minutes before `iat`, which the iat-in-the-future check
            // rightly refuses.
            assert!(t.nbf <= t.iat && t.iat <= t.exp);
            for now in [t.iat, t.exp] {
                let claims = verify_oidc(&t.token, &github(), &keys, &cfg, now)
                    .unwrap_or_else(|e| panic!("{} with {key_file} at {now}: {e}", t.file));
                assert_eq!(claims.jti(), t.jti);
                assert_eq!(claims.issuer_url(), GITHUB_ISSUER);
                assert_eq!(claims.issuer_name(), "github");
                assert_eq!(claims.iat(), t.iat);
                assert_eq!(claims.exp(), t.exp);
                assert!(claims.sub().starts_with("repo:"));
                checked += 1;
            }
        }
    }
    // 4 tokens × 3 key files + 6 tokens × 1 key file, at two instants each.
    assert_eq!(checked, 2 * (4 * 3 + 6));
}

#[test]
fn every_real_token_is_refused_as_expired_under_the_real_clock() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let now = i64::try_from(now).expect("seconds fit i64");
    for t in tokens() {
        let cfg = VerifyConfig::new(t.aud.clone());
        let keys = key_set(&t.key_files[0], &t.kid);
        let err = verify_oidc(&t.token, &github(), &keys, &cfg, now).expect_err(&t.file);
        assert_eq!(err, VerifyError::Expired { exp: t.exp, now }, "{}", t.file);
        assert!(!err.before_signature(), "expiry is judged after the signature");
    }
}

#[test]
fn a_token_signed_with_a_rotated_out_key_is_an_unknown_kid_in_the_2025_key_set() {
    let keys = key_set("jwks/github_jwks_2025_cratesio.json", "");
    let t = tokens().into_iter().find(|t| t.kid == KID_78167F).expect("a 78167F token");
    let cfg = VerifyConfig::new(t.aud.clone());
    let err = verify_oidc(&t.token, &github(), &keys, &cfg, t.iat).expect_err("rotated-out key");
    assert_eq!(err, VerifyError::UnknownKey);
    assert_eq!(err.reason_class(), "unknown_key");
    assert!(err.before_signature());
}

#[test]
fn the_real_token_with_an_altered_signature_is_refused() {
    let manifest = manifest();
    let negative = &manifest["negatives"][0];
    let file = negative["file"].as_str().expect("negative file");
    let token = read(file).trim().to_owned();
    // The genuine token it was altered from (same repository and kid).
    let genuine = tokens().into_iter().find(|t| t.file.contains("flaskoidc")).expect("the genuine flask-oidc token");
    let cfg = VerifyConfig::new(genuine.aud.clone());
    for key_file in &genuine.key_files {
        let keys = key_set(key_file, KID_78167F);
        verify_oidc(&genuine.token, &github(), &keys, &cfg, genuine.iat)
            .expect("the unaltered token verifies, so the refusal below is the signature's");
        let err = verify_oidc(&token, &github(), &keys, &cfg, genuine.iat).expect_err(file);
        assert_eq!(err, VerifyError::Signature, "{key_file}");
    }
}

#[test]
fn a_real_token_is_refused_for_another_audience_and_a_lookalike_issuer() {
    let t = tokens().into_iter().next().expect("a token");
    let keys = key_set(&t.key_files[0], &t.kid);
    let err = verify_oidc(&t.token, &github(), &keys, &VerifyConfig::new("https://writ.example.com"), t.iat)
        .expect_err("other audience");
    assert_eq!(err.reason_class(), "audience");

    let enterprise = IssuerSpec::new("acme", IssuerKind::GitHub, format!("{GITHUB_ISSUER}/acme"));
    let err = verify_oidc(&t.token, &enterprise, &keys, &VerifyConfig::new(t.aud.clone()), t.iat)
        .expect_err("github.com token presented as an enterprise issuer's");
    assert_eq!(err, VerifyError::Issuer { expected: format!("{GITHUB_ISSUER}/acme") });
}
