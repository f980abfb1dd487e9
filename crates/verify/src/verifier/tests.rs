//! One test per check of [`Verifier::verify_at`], with pinned keys (no
//! network): the fetching side is tested in `tests/` against real sockets.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::test_support::{AUDIENCE, ISSUER, Key, NOW, claims, jwks, verifier};
use crate::{Provenance, SetupError, Target, Verifier, VerifierConfig, VerifyError};

fn with(mut claims: Value, changes: Value) -> Value {
    for (name, value) in changes.as_object().expect("object") {
        if value.is_null() {
            claims.as_object_mut().expect("object").remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

async fn refused(verifier: &Verifier, token: &str, now: i64) -> VerifyError {
    verifier.verify_at(token, now).await.expect_err("the token must be refused")
}

#[tokio::test]
async fn a_valid_token_becomes_a_grant() {
    let key = Key::new("k1");
    let grant = verifier(&[&key]).verify_at(&key.sign(&claims()), NOW).await.expect("valid");
    assert_eq!(grant.org(), "acme-prod");
    assert_eq!(grant.permissions(), ["deploy", "logs:read"]);
    assert_eq!(grant.apps(), Some(&["web".to_owned()][..]));
    assert_eq!(grant.machines(), None);
    assert_eq!(grant.subject(), "github:repo:acme/web:environment:production");
    assert_eq!(grant.client_id(), "github:acme/web");
    assert_eq!(grant.jti(), "0197a3b0-0000-7000-8000-000000000001");
    assert_eq!(grant.expires_at(), UNIX_EPOCH + Duration::from_secs((NOW + 900) as u64));
    assert_eq!(grant.issued_at(), UNIX_EPOCH + Duration::from_secs(NOW as u64));
    let p: &Provenance = grant.provenance();
    assert_eq!(p.repository.as_deref(), Some("acme/web"));
    assert_eq!(p.git_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(p.environment.as_deref(), Some("production"));
    assert_eq!(p.sha, None);
    assert_eq!(grant.require("acme-prod", "deploy", Target::App("web")), Ok(()));
}

#[tokio::test]
async fn a_token_minted_by_writ_core_verifies() {
    // The server mints with writ-core; this pins the two crates' formats
    // together without a runtime dependency between them.
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::Ed25519KeyPair;
    use writ_core::token::{CiProvenance, SigningKey, WritClaims, mint};

    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
    let key = SigningKey::from_pkcs8_der("core-kid", der.as_ref()).expect("key");
    let jwks = json!({ "keys": [key.public_jwk()] }).to_string();
    let verifier = Verifier::from_jwks(ISSUER, &jwks, VerifierConfig::new(AUDIENCE)).expect("verifier");
    let claims = WritClaims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: "github:repo:acme/ops:ref:refs/heads/main".into(),
        client_id: "github:acme/ops".into(),
        iat: NOW,
        nbf: NOW,
        exp: NOW + 600,
        jti: "j-core".into(),
        scope: "machines:exec".into(),
        org: "acme-prod".into(),
        apps: None,
        machines: Some(vec!["vm-7".into()]),
        ci: CiProvenance { repository: Some("acme/ops".into()), run_id: Some("7".into()), ..CiProvenance::default() },
        parent: Some("j-parent".into()),
    };
    let grant = verifier.verify_at(&mint(&claims, &key).expect("mint"), NOW).await.expect("verifies");
    assert_eq!(grant.machines(), Some(&["vm-7".to_owned()][..]));
    assert_eq!(grant.apps(), None);
    assert_eq!(grant.provenance().run_id.as_deref(), Some("7"));
    assert_eq!(grant.parent(), Some("j-parent"));
    assert_eq!(grant.require("acme-prod", "machines:exec", Target::Machine("vm-7")), Ok(()));
}

#[tokio::test]
async fn typ_must_be_at_jwt() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        let token = key.sign_with_header(&json!({"alg": "EdDSA", "typ": typ, "kid": "k1"}), &claims());
        assert!(v.verify_at(&token, NOW).await.is_ok(), "{typ}");
    }
    // Signed by the trusted key, right claims: still not an access token.
    for header in [
        json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}),
        json!({"alg": "EdDSA", "kid": "k1"}),
        json!({"alg": "EdDSA", "typ": "id_token+jwt", "kid": "k1"}),
        json!({"alg": "EdDSA", "typ": "application/jwt", "kid": "k1"}),
    ] {
        let token = key.sign_with_header(&header, &claims());
        assert_eq!(refused(&v, &token, NOW).await, VerifyError::WrongType, "{header}");
    }
}

#[tokio::test]
async fn the_algorithm_comes_from_the_allow_list_not_the_header() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    for alg in ["none", "HS256", "RS256", "ES256", "eddsa", "Ed25519"] {
        let token = key.sign_with_header(&json!({"alg": alg, "typ": "at+jwt", "kid": "k1"}), &claims());
        assert_eq!(refused(&v, &token, NOW).await, VerifyError::Algorithm, "{alg}");
    }
    let unsigned = format!("{}.", key.sign_with_header(&json!({"alg": "none", "typ": "at+jwt"}), &claims()));
    assert!(matches!(refused(&v, &unsigned, NOW).await, VerifyError::Malformed(_) | VerifyError::Algorithm));
}

#[tokio::test]
async fn the_key_is_chosen_by_kid_and_must_have_signed() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    let no_kid = key.sign_with_header(&json!({"alg": "EdDSA", "typ": "at+jwt"}), &claims());
    assert_eq!(refused(&v, &no_kid, NOW).await, VerifyError::MissingKeyId);
    assert_eq!(refused(&v, &Key::new("k2").sign(&claims()), NOW).await, VerifyError::UnknownKey);
    // An outside key that claims the trusted kid.
    assert_eq!(refused(&v, &Key::new("k1").sign(&claims()), NOW).await, VerifyError::Signature);
}

#[tokio::test]
async fn a_tampered_payload_fails_the_signature() {
    let key = Key::new("k1");
    let token = key.sign(&claims());
    let other = key.sign(&with(claims(), json!({"org": "acme-staging"})));
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = other.split('.').nth(1).expect("payload");
    assert_eq!(refused(&verifier(&[&key]), &parts.join("."), NOW).await, VerifyError::Signature);
}

#[tokio::test]
async fn the_issuer_must_match_exactly() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    for iss in ["https://writ.test/", "https://writ.test.evil.example", "https://WRIT.test", "http://writ.test"] {
        let err = refused(&v, &key.sign(&with(claims(), json!({"iss": iss}))), NOW).await;
        assert_eq!(err, VerifyError::Issuer { expected: ISSUER.into(), got: iss.into() });
    }
    assert_eq!(
        refused(&v, &key.sign(&with(claims(), json!({"iss": null}))), NOW).await,
        VerifyError::MissingClaim("iss")
    );
}

#[tokio::test]
async fn the_audience_must_contain_this_platform() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    let other = key.sign(&with(claims(), json!({"aud": "https://api.other.example"})));
    let err = refused(&v, &other, NOW).await;
    assert_eq!(err.to_string(), "token is for audience https://api.other.example, not https://api.platform.example");
    let many = key.sign(&with(claims(), json!({"aud": ["https://api.other.example", AUDIENCE]})));
    assert!(v.verify_at(&many, NOW).await.is_ok());
    let none = key.sign(&with(claims(), json!({"aud": null})));
    assert_eq!(refused(&v, &none, NOW).await, VerifyError::MissingClaim("aud"));
    let number = key.sign(&with(claims(), json!({"aud": 7})));
    assert!(matches!(refused(&v, &number, NOW).await, VerifyError::InvalidClaim { claim: "aud", .. }));
}

#[tokio::test]
async fn expiry_and_not_before_allow_the_configured_leeway_only() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    let token = key.sign(&claims());
    let exp = NOW + 900;
    assert!(v.verify_at(&token, exp + 29).await.is_ok(), "within the 30 s default leeway");
    assert_eq!(refused(&v, &token, exp + 30).await, VerifyError::Expired { exp, now: exp + 30 });

    let early = key.sign(&with(claims(), json!({"nbf": NOW + 100, "iat": NOW})));
    assert!(v.verify_at(&early, NOW + 70).await.is_ok());
    assert_eq!(refused(&v, &early, NOW + 69).await, VerifyError::NotYetValid { nbf: NOW + 100, now: NOW + 69 });

    let future = key.sign(&with(claims(), json!({"iat": NOW + 31, "nbf": null})));
    assert_eq!(refused(&v, &future, NOW).await, VerifyError::IssuedInFuture { iat: NOW + 31, now: NOW });

    let strict = Verifier::from_jwks(
        ISSUER,
        &jwks(&[&key]),
        VerifierConfig { leeway: Duration::ZERO, ..VerifierConfig::new(AUDIENCE) },
    )
    .expect("verifier");
    assert_eq!(refused(&strict, &token, exp).await, VerifyError::Expired { exp, now: exp });
    assert!(strict.verify_at(&token, exp - 1).await.is_ok());
}

#[tokio::test]
async fn required_claims_must_be_present_and_well_typed() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    for claim in ["exp", "iat", "jti", "sub", "client_id", "org", "scope"] {
        let token = key.sign(&with(claims(), json!({ claim: null })));
        assert_eq!(refused(&v, &token, NOW).await, VerifyError::MissingClaim(claim), "{claim}");
    }
    let cases = [
        (json!({"jti": ""}), "jti"),
        (json!({"org": ""}), "org"),
        (json!({"org": 5}), "org"),
        (json!({"exp": "soon"}), "exp"),
        (json!({"exp": 1.5e9}), "exp"),
        (json!({"scope": ["deploy"]}), "scope"),
        (json!({"apps": "web"}), "apps"),
        (json!({"machines": [1]}), "machines"),
        (json!({"ci": "github"}), "ci"),
    ];
    for (change, claim) in cases {
        let token = key.sign(&with(claims(), change.clone()));
        match refused(&v, &token, NOW).await {
            VerifyError::InvalidClaim { claim: got, .. } => assert_eq!(got, claim, "{change}"),
            other => panic!("{change}: {other:?}"),
        }
    }
    // Unknown claims are ignored: writ may add claims.
    assert!(v.verify_at(&key.sign(&with(claims(), json!({"new_claim": {"x": 1}}))), NOW).await.is_ok());
}

#[tokio::test]
async fn malformed_and_oversized_tokens_are_refused_before_any_key_lookup() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    for garbage in ["", "a", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.sig"] {
        let err = refused(&v, garbage, NOW).await;
        assert!(matches!(err, VerifyError::Malformed(_) | VerifyError::WrongType), "{garbage:?}: {err:?}");
    }
    let crit = key.sign_with_header(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1", "crit": ["exp"]}), &claims());
    assert_eq!(refused(&v, &crit, NOW).await, VerifyError::CriticalHeader);
    let huge = key.sign(&with(claims(), json!({"padding": "x".repeat(20_000)})));
    assert!(matches!(refused(&v, &huge, NOW).await, VerifyError::TooLarge { max: 16384, .. }));
}

#[tokio::test]
async fn a_revoked_token_is_refused_until_it_expires() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    let now = super::unix_now();
    let token = key.sign(&with(claims(), json!({"iat": now, "nbf": now, "exp": now + 600})));
    assert!(v.verify_at(&token, now).await.is_ok());
    v.revoke("0197a3b0-0000-7000-8000-000000000001", now + 600);
    let err = refused(&v, &token, now).await;
    assert_eq!(err.to_string(), "token 0197a3b0-0000-7000-8000-000000000001 was revoked");
    assert_eq!(v.revocation_status().revoked, 1);
}

#[tokio::test]
async fn a_token_narrowed_from_a_revoked_token_is_refused() {
    let key = Key::new("k1");
    let v = verifier(&[&key]);
    let now = super::unix_now();
    let child =
        key.sign(&with(claims(), json!({"iat": now, "nbf": now, "exp": now + 300, "jti": "child", "parent": "p"})));
    assert_eq!(v.verify_at(&child, now).await.expect("valid").parent(), Some("p"));
    // The server lists narrowed tokens with their parent; refusing on the
    // parent too keeps a child out even from a feed that lists only it.
    v.revoke("p", now + 600);
    assert_eq!(refused(&v, &child, now).await, VerifyError::Revoked { jti: "p".into() });
    let bad_parent = key.sign(&with(claims(), json!({"parent": 5})));
    assert!(matches!(refused(&v, &bad_parent, NOW).await, VerifyError::InvalidClaim { claim: "parent", .. }));
}

#[test]
fn setup_refuses_a_leeway_above_a_minute_and_an_empty_audience() {
    let key = Key::new("k1");
    let config = VerifierConfig { leeway: Duration::from_secs(61), ..VerifierConfig::new(AUDIENCE) };
    assert!(matches!(Verifier::from_jwks(ISSUER, &jwks(&[&key]), config), Err(SetupError::Leeway { .. })));
    let config = VerifierConfig::new("");
    assert!(matches!(Verifier::from_jwks(ISSUER, &jwks(&[&key]), config), Err(SetupError::EmptyAudience)));
}

#[test]
fn pinned_keys_must_hold_an_ed25519_key() {
    let config = || VerifierConfig::new(AUDIENCE);
    assert!(matches!(Verifier::from_jwks(ISSUER, "not json", config()), Err(SetupError::PinnedJwks(_))));
    let rsa_only = r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r"}]}"#;
    assert!(matches!(Verifier::from_jwks(ISSUER, rsa_only, config()), Err(SetupError::NoPinnedKeys)));
    let v = verifier(&[&Key::new("b"), &Key::new("a")]);
    assert_eq!(v.key_ids(), ["a", "b"]);
    assert_eq!(v.issuer(), ISSUER);
    assert_eq!(v.audience(), AUDIENCE);
}
