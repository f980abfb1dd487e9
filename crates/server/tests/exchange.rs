//! The exchange through the router (`oneshot`, no socket): one test per
//! check of DESIGN "The exchange", hostile tokens, safe defaults, and the
//! stories an exchange alone can show. The fake issuer runs on loopback.

mod harness;

use harness::{Harness, PROD_POLICY, STAGING_POLICY};
use http::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;
use writ_testkit::hostile;

async fn prod_and_staging() -> Harness {
    Harness::start(&[PROD_POLICY, STAGING_POLICY]).await
}

fn assert_refused(status: StatusCode, body: &Value, code: &str, needle: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["error"], code, "{body:#}");
    let text = body.to_string();
    assert!(text.contains(needle), "expected {needle:?} in {body:#}");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{body:#}");
}

// ---- granted ---------------------------------------------------------------

#[tokio::test]
async fn production_deploy_job_gets_a_scoped_token_that_verifies() {
    let h = prod_and_staging().await;
    let token = h.github("acme/web").environment("production").build();
    let (status, body) =
        h.exchange(json!({"token": h.issuer.mint(&token), "org": "acme-prod", "permissions": ["deploy"]})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["org"], "acme-prod");
    assert_eq!(body["permissions"], json!(["deploy"]));
    assert_eq!(body["apps"], json!(["web"]));
    assert_eq!(body["rule"], "deploy-web");
    assert_eq!(body["expires_in"], 900);
    assert!(body["expires_at"].as_str().is_some_and(|s| s.ends_with('Z')));

    let claims = h.verify_writ_token(body["token"].as_str().expect("token")).await;
    assert_eq!(claims["org"], "acme-prod");
    assert_eq!(claims["scope"], "deploy");
    assert_eq!(claims["apps"], json!(["web"]));
    assert_eq!(claims["aud"], "https://api.platform.example");
    assert_eq!(claims["iss"], h.public_url());
    assert_eq!(claims["sub"], format!("github:{}", token["sub"].as_str().expect("sub")));
    assert_eq!(claims["ci"]["repository"], "acme/web");
    assert_eq!(claims["ci"]["environment"], "production");
    assert_eq!(claims["ci"]["run_id"], token["run_id"]);
    assert_eq!(claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"), 900);
}

#[tokio::test]
async fn the_grant_is_audited_before_it_is_returned() {
    let h = prod_and_staging().await;
    let token = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let audit = h.audit("acme-prod").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["outcome"], "granted");
    assert_eq!(audit[0]["rule"], "deploy-web");
    assert_eq!(audit[0]["repository"], "acme/web");
}

#[tokio::test]
async fn requested_ttl_is_capped_by_the_rule() {
    let h = prod_and_staging().await;
    let token = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod", "ttl": "2h"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["expires_in"], 900, "rule max_ttl is 15m");
    let token = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let (_, body) = h.exchange(json!({"token": token, "org": "acme-prod", "ttl": "5m"})).await;
    assert_eq!(body["expires_in"], 300);
}

#[tokio::test]
async fn rfc8693_form_takes_the_same_path() {
    let h = prod_and_staging().await;
    let token = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={token}\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token&audience=acme-prod\
         &scope=deploy+logs%3Aread&resource=app%3Aweb"
    );
    let (status, body) = h.post_form("/oauth/token", &form).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "deploy logs:read");
    let claims = h.verify_writ_token(body["access_token"].as_str().expect("token")).await;
    assert_eq!(claims["apps"], json!(["web"]));
}

#[tokio::test]
async fn rfc8693_form_errors_name_the_bad_parameter() {
    let h = prod_and_staging().await;
    let (status, body) = h.post_form("/oauth/token", "grant_type=password&username=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"] == "unsupported_grant_type" || body["error"] == "invalid_request", "{body:#}");
    let (_, body) = h
        .post_form(
            "/oauth/token",
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=x",
        )
        .await;
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].as_str().expect("text").contains("subject_token_type"), "{body:#}");
}

// ---- step 1-3: verification --------------------------------------------------

#[tokio::test]
async fn alg_none_is_refused() {
    let h = prod_and_staging().await;
    let claims = h.github("acme/web").environment("production").build();
    let token = hostile::unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims);
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "invalid token");
    assert!(body.get("explanation").is_none(), "nothing more before the signature verifies");
}

#[tokio::test]
async fn hs256_keyed_with_the_rsa_public_key_is_refused() {
    let h = prod_and_staging().await;
    let key = h.issuer.current_key();
    let claims = h.github("acme/web").environment("production").build();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": key.kid()});
    let token = hostile::hs256(&header, &claims, key.public_key_pem().as_bytes());
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "invalid token");
}

#[tokio::test]
async fn forged_signature_under_a_known_kid_is_refused() {
    let h = prod_and_staging().await;
    let token = hostile::tamper_signature(&h.issuer.mint(&h.github("acme/web").environment("production").build()));
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "invalid token");
}

#[tokio::test]
async fn a_token_signed_by_an_outside_key_is_refused() {
    let h = prod_and_staging().await;
    let outsider = writ_testkit::TestKey::generate(h.issuer.current_key().kid());
    let token = outsider.sign(&h.github("acme/web").environment("production").build());
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "invalid token");
}

#[tokio::test]
async fn unknown_kids_within_the_cooldown_fetch_keys_once() {
    let h = prod_and_staging().await;
    let claims = h.github("acme/web").environment("production").build();
    // Warm the cache with a good token.
    let (status, _) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK);
    let hits = h.issuer.jwks_hits();
    for i in 0..5 {
        let stranger = writ_testkit::TestKey::generate(format!("garbage-{i}"));
        let token = stranger.sign(&h.github("acme/web").environment("production").build());
        let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
        assert_refused(status, &body, "invalid_grant", "invalid token");
    }
    assert!(h.issuer.jwks_hits() <= hits + 1, "at most one refresh per cooldown, saw {}", h.issuer.jwks_hits() - hits);
}

#[tokio::test]
async fn issuer_with_trailing_slash_or_lookalike_prefix_is_unknown() {
    let h = prod_and_staging().await;
    for iss in
        [format!("{}/", h.issuer.url()), format!("{}.evil.example", h.issuer.url()), format!("{}/acme", h.issuer.url())]
    {
        let claims = h.github("acme/web").environment("production").set("iss", json!(iss)).build();
        let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
        assert_refused(status, &body, "invalid_grant", "invalid token");
    }
}

#[tokio::test]
async fn audience_missing_or_other_is_refused() {
    let h = prod_and_staging().await;
    let other = h.github("acme/web").environment("production").audience("https://someone-else.example").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&other), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "aud");
    let missing = h.github("acme/web").environment("production").remove("aud").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&missing), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "aud");
}

#[tokio::test]
async fn time_checks_refuse_expired_future_and_old_tokens() {
    let h = prod_and_staging().await;
    let now = h.clock.now();
    let cases = [
        ("expired", h.github("acme/web").environment("production").iat(now - 400).nbf(now - 400).exp(now - 61).build()),
        ("not_yet_valid", h.github("acme/web").environment("production").nbf(now + 120).build()),
        ("future", h.github("acme/web").environment("production").iat(now + 120).build()),
        (
            "too_old",
            h.github("acme/web").environment("production").iat(now - 7200).nbf(now - 7200).exp(now + 60).build(),
        ),
    ];
    for (what, claims) in cases {
        let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body:#}");
        assert_eq!(body["error"], "invalid_grant", "{what}: {body:#}");
    }
    // Within the 60 s leeway is fine.
    let skewed = h.github("acme/web").environment("production").iat(now + 30).nbf(now + 30).build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&skewed), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
}

#[tokio::test]
async fn missing_jti_or_exp_is_refused() {
    let h = prod_and_staging().await;
    for claim in ["jti", "exp"] {
        let claims = h.github("acme/web").environment("production").remove(claim).build();
        let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
        assert_refused(status, &body, "invalid_grant", claim);
    }
}

#[tokio::test]
async fn oversize_token_and_body_are_refused_in_the_error_shape() {
    let h = prod_and_staging().await;
    let claims = h.github("acme/web").environment("production").set("padding", json!("x".repeat(20 * 1024))).build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "invalid token");

    let huge = json!({"token": "x".repeat(200 * 1024), "org": "acme-prod"});
    let (status, body) = h.exchange(huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:#}");
    assert_eq!(body["error"], "invalid_request");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn oversize_headers_are_refused_in_the_error_shape() {
    let h = prod_and_staging().await;
    let request = http::Request::post("/v1/exchange")
        .header("content-type", "application/json")
        .header("x-filler", "y".repeat(20 * 1024))
        .body(axum::body::Body::from("{}"))
        .expect("request");
    let (status, body) = h.send(request).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{body:#}");
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let h = prod_and_staging().await;
    let (status, body) = h.post_raw("/v1/exchange", "application/json", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_request");
    let (_, body) = h.exchange(json!({"token": "a.b.c", "org": "acme-prod", "permission": ["deploy"]})).await;
    assert!(body["error_description"].as_str().expect("text").contains("permission"), "{body:#}");
    let (_, body) = h.exchange(json!({"org": "acme-prod"})).await;
    assert!(body["error_description"].as_str().expect("text").contains("token"), "{body:#}");
    let (_, body) = h.exchange(json!({"token": "garbage", "org": "acme-prod"})).await;
    assert_refused(StatusCode::BAD_REQUEST, &body, "invalid_grant", "invalid token");
    let (status, body) = h.get("/no/such/thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

// ---- step 4: replay ------------------------------------------------------------

#[tokio::test]
async fn a_token_is_exchanged_once() {
    let h = prod_and_staging().await;
    let token = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let (status, _) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "already");
    // The replay's denial names the token as the grant did (it is built
    // after the claims were freed, from what the exchange kept of them).
    let audit = h.audit("acme-prod").await;
    let granted = audit.iter().find(|r| r["outcome"] == "granted").expect("the grant's record");
    let replay = audit.iter().find(|r| r["outcome"] == "denied").expect("the replay's record");
    for field in [
        "issuer",
        "subject",
        "subject_jti",
        "repository",
        "repository_id",
        "ref",
        "environment",
        "workflow_ref",
        "run_id",
        "actor",
    ] {
        assert!(!granted[field].is_null(), "grant's {field}: {granted:#}");
        assert_eq!(replay[field], granted[field], "{field}");
    }
    assert_eq!(replay["error"], "invalid_grant");
    assert_eq!(replay["explanation"][0]["replay"], granted["subject_jti"]);
    // Also through the other front door, and for another org.
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-staging"})).await;
    assert_refused(status, &body, "invalid_grant", "already");
}

#[tokio::test]
async fn a_denied_exchange_does_not_consume_the_token() {
    let h = prod_and_staging().await;
    let token = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod", "permissions": ["metrics:read"]})).await;
    assert_refused(status, &body, "invalid_scope", "metrics:read");
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-prod", "permissions": ["deploy"]})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
}

// ---- step 5: policy and safe defaults --------------------------------------------

#[tokio::test]
async fn pull_request_target_and_workflow_run_never_match() {
    let h = prod_and_staging().await;
    for event in ["pull_request_target", "workflow_run"] {
        let claims = h.github("acme/web").ref_("refs/heads/main").event_name(event).build();
        let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-staging"})).await;
        assert_refused(status, &body, "invalid_grant", event);
    }
}

#[tokio::test]
async fn the_linter_refuses_a_wildcard_owner_rule() {
    let h = prod_and_staging().await;
    let policy = "org = \"open\"\n[[rule]]\nname = \"any\"\nissuer = \"github\"\nrepository = \"*/web\"\npermissions = [\"deploy\"]\n";
    let err = h.apply_policy(policy).await.expect_err("must be refused");
    let text = format!("{err:#}");
    assert!(text.contains(":5:"), "line and column of the repository: {text}");
    assert!(h.state.policies.get("open").is_none());
}

#[tokio::test]
async fn a_recreated_repository_with_new_ids_is_refused() {
    let h = prod_and_staging().await;
    let first = h.github("acme/web").environment("production").repository_id(1001).build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&first), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let impostor = h.github("acme/web").environment("production").repository_id(2002).build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&impostor), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "2002");
    // The original repository keeps working.
    let again = h.github("acme/web").environment("production").repository_id(1001).build();
    let (status, _) = h.exchange(json!({"token": h.issuer.mint(&again), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn denials_explain_conditions_only_to_owners_the_policy_names() {
    let h = prod_and_staging().await;
    let own = h.github("acme/web").ref_("refs/heads/feature").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&own), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "environment");
    assert!(body["explanation"].is_array(), "{body:#}");

    let stranger = h.github("mallory/web").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&stranger), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.get("explanation").is_none(), "a stranger learns nothing of acme's policy: {body:#}");
    assert!(!body.to_string().contains("production"), "{body:#}");
    // The admins see the detail in the audit log.
    let audit = h.audit("acme-prod").await;
    assert!(audit.iter().any(|a| a["outcome"] == "denied" && a["repository"] == "mallory/web"));
}

#[tokio::test]
async fn unknown_org_gets_the_generic_denial() {
    let h = prod_and_staging().await;
    let claims = h.github("acme/web").environment("production").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "nope"})).await;
    assert_refused(status, &body, "invalid_grant", "no trust policy");
}

// ---- stories -------------------------------------------------------------------

#[tokio::test]
async fn story_staging_and_prod_are_separate_orgs() {
    let h = prod_and_staging().await;
    let staging_job = h.github("acme/web").ref_("refs/heads/main").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&staging_job), "org": "acme-staging"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let claims = h.verify_writ_token(body["token"].as_str().expect("token")).await;
    assert_eq!(claims["org"], "acme-staging", "a token names exactly one org");
    // The same job (no production environment) cannot get a prod token.
    let again = h.github("acme/web").ref_("refs/heads/main").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&again), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "environment");
}

#[tokio::test]
async fn story_only_the_production_environment_gets_prod_tokens() {
    let h = prod_and_staging().await;
    for env in ["staging", "Production", "production-like"] {
        let claims = h.github("acme/web").environment(env).build();
        let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
        assert_refused(status, &body, "invalid_grant", "environment");
    }
    // devops (production) and dev both get staging tokens.
    for env in [Some("production"), None] {
        let mut b = h.github("acme/web");
        if let Some(e) = env {
            b = b.environment(e);
        }
        let (status, body) = h.exchange(json!({"token": h.issuer.mint(&b.build()), "org": "acme-staging"})).await;
        assert_eq!(status, StatusCode::OK, "{env:?}: {body:#}");
    }
}

#[tokio::test]
async fn story_a_pull_request_cannot_get_a_prod_token() {
    let h = prod_and_staging().await;
    // A PR that edits the workflow to ask for prod: it runs on the merge ref,
    // without the protected environment's approval.
    let pr = h.github("acme/web").pull_request(7, "mallory-patch").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&pr), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "refs/pull/7/merge");
    // Even claiming the environment does not help on a PR ref.
    let pr_env = h.github("acme/web").pull_request(7, "mallory-patch").environment("production").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&pr_env), "org": "acme-prod"})).await;
    assert_refused(status, &body, "invalid_grant", "ref");
}

#[tokio::test]
async fn story_a_client_org_is_isolated_from_the_consultants_other_orgs() {
    let client_a = "org = \"client-a\"\n[[rule]]\nname = \"client-a-deploy\"\nissuer = \"github\"\nrepository = \"client-a/site\"\npermissions = [\"deploy\"]\n";
    let consultant = "org = \"consultancy\"\n[[rule]]\nname = \"ours\"\nissuer = \"github\"\nrepository = \"consultancy/*\"\npermissions = [\"deploy\"]\n";
    let h = Harness::start(&[client_a, consultant]).await;
    let client_job = h.github("client-a/site").build();
    let (status, _) = h.exchange(json!({"token": h.issuer.mint(&client_job), "org": "client-a"})).await;
    assert_eq!(status, StatusCode::OK);
    let client_job = h.github("client-a/site").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&client_job), "org": "consultancy"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert!(body.get("explanation").is_none(), "the client learns nothing of the consultancy's policy");
}

#[tokio::test]
async fn story_a_metrics_only_token_for_grafana() {
    let h = prod_and_staging().await;
    let grafana = h.github("acme/dashboards").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&grafana), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["permissions"], json!(["metrics:read"]));
    let grafana = h.github("acme/dashboards").build();
    let (status, body) =
        h.exchange(json!({"token": h.issuer.mint(&grafana), "org": "acme-prod", "permissions": ["deploy"]})).await;
    assert_refused(status, &body, "invalid_scope", "deploy");
}

#[tokio::test]
async fn apps_outside_the_rule_are_an_invalid_target() {
    let h = prod_and_staging().await;
    let claims = h.github("acme/web").environment("production").build();
    let (status, body) =
        h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod", "apps": ["billing"]})).await;
    assert_refused(status, &body, "invalid_target", "billing");
}

// ---- discovery and health -------------------------------------------------------------

#[tokio::test]
async fn discovery_jwks_and_health_are_served() {
    let h = prod_and_staging().await;
    let (status, body) = h.get("/.well-known/openid-configuration").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["issuer"], h.public_url());
    assert_eq!(body["jwks_uri"], format!("{}/.well-known/jwks.json", h.public_url()));
    let (status, jwks) = h.get("/.well-known/jwks.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let (status, body) = h.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let (status, body) = h.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let (_, body) = h.get("/v1/audience").await;
    assert_eq!(body["audience"], h.audience());
}

#[tokio::test]
async fn a_noisy_repository_is_rate_limited_without_starving_others() {
    let h = Harness::start_with(&[STAGING_POLICY], "[limits]\nexchanges_per_minute_per_repository = 2\n").await;
    for _ in 0..2 {
        let token = h.issuer.mint(&h.github("acme/web").build());
        let (status, body) = h.exchange(json!({"token": token, "org": "acme-staging"})).await;
        assert_eq!(status, StatusCode::OK, "{body:#}");
    }
    let token = h.issuer.mint(&h.github("acme/web").build());
    let (status, body) = h.exchange(json!({"token": token, "org": "acme-staging"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body["error_description"].as_str().expect("text").contains("github:acme/web"), "{body:#}");
    // Another repository is not affected.
    let other = h.issuer.mint(&h.github("acme/api").build());
    let (status, body) = h.exchange(json!({"token": other, "org": "acme-staging"})).await;
    assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    // A forged token for the noisy repository is refused as invalid, never
    // counted against anyone's budget.
    let forged = hostile::tamper_signature(&h.issuer.mint(&h.github("acme/api").build()));
    let (status, body) = h.exchange(json!({"token": forged, "org": "acme-staging"})).await;
    assert_eq!(body["error"], "invalid_grant", "{status}: {body:#}");
}

#[tokio::test]
async fn a_noisy_client_address_gets_429_with_retry_after_on_any_endpoint() {
    let h = Harness::start_with(&[STAGING_POLICY], "[limits]\nrequests_per_second_per_client = 1\n").await;
    let from = |ip: &str| {
        let mut request = http::Request::get("/healthz").body(axum::body::Body::empty()).expect("request");
        let addr: std::net::SocketAddr = format!("{ip}:40000").parse().expect("addr");
        request.extensions_mut().insert(axum::extract::ConnectInfo(addr));
        request
    };
    // A burst of two seconds' worth, then refusal.
    for _ in 0..2 {
        let (status, _) = h.send(from("192.0.2.1")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let response = h.router.clone().oneshot(from("192.0.2.1")).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    let (status, _) = h.send(from("192.0.2.2")).await;
    assert_eq!(status, StatusCode::OK, "another address keeps its budget");
}

#[tokio::test]
async fn metrics_count_exchanges_by_outcome_without_naming_callers() {
    let h = prod_and_staging().await;
    let token = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let (status, _) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = h
        .router
        .clone()
        .oneshot(http::Request::get("/metrics").body(axum::body::Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("utf8");
    // The recorder is process-wide (other tests add to it): check presence.
    assert!(text.contains(r#"writ_exchanges_total{outcome="granted",error=""}"#), "{text}");
    assert!(text.contains(r#"writ_exchanges_total{outcome="refused",error="invalid_grant"}"#), "{text}");
    assert!(text.contains("writ_exchange_duration_seconds"), "{text}");
    assert!(!text.contains("acme"), "no org or repository in any label: {text}");
}

#[tokio::test]
async fn each_issuer_keeps_its_own_token_age_bound() {
    // A second, laxer issuer must not loosen github's 10-minute bound.
    let extra = "max_token_age = \"10m\"\n[[issuers]]\nname = \"lax\"\nkind = \"generic\"\nurl = \"http://127.0.0.1:9\"\nmax_token_age = \"2h\"\n";
    let h = Harness::start_with(&[STAGING_POLICY], extra).await;
    let now = h.clock.now();
    let old = h.github("acme/web").iat(now - 1200).nbf(now - 1200).exp(now + 60).build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&old), "org": "acme-staging"})).await;
    assert_refused(status, &body, "invalid_grant", "too_old");
    let fresh = h.github("acme/web").iat(now - 300).nbf(now - 300).exp(now + 60).build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&fresh), "org": "acme-staging"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
}
