//! End-to-end checks of the fake issuer over real loopback HTTP: discovery, JWKS, rotation, outages, counters and the Actions token endpoint.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use writ_testkit::{FakeIssuer, IssuerShape};

fn now() -> i64 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    i64::try_from(secs).expect("time fits i64")
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.expect("request reaches the fake issuer");
    let status = response.status();
    let body = response.text().await.expect("body reads");
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

async fn published_jwks(issuer: &FakeIssuer) -> JwkSet {
    let (status, discovery) = get(&format!("{}/.well-known/openid-configuration", issuer.url())).await;
    assert_eq!(status, StatusCode::OK);
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri is a string");
    let (status, jwks) = get(jwks_uri).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_value(jwks).expect("JWKS parses as a JWK Set")
}

/// Verifies like a relying party: the key is chosen by the token's kid from
/// the JWKS fetched over HTTP, and iss and aud are checked.
async fn verify(issuer: &FakeIssuer, token: &str, audience: &str) -> Result<Value, String> {
    let kid = decode_header(token).map_err(|e| e.to_string())?.kid.ok_or("no kid")?;
    let jwks = published_jwks(issuer).await;
    let jwk = jwks.find(&kid).ok_or(format!("kid {kid} not published"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer.url()]);
    decode::<Value>(token, &key, &validation).map(|data| data.claims).map_err(|e| e.to_string())
}

#[test]
fn handles_and_keys_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<FakeIssuer>();
    assert_send_sync::<writ_testkit::TestKey>();
}

#[tokio::test]
async fn discovery_document_has_github_shape_and_names_the_issuer() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let url = issuer.url();
    assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with('/'), "{url}");
    let (status, doc) = get(&format!("{url}/.well-known/openid-configuration")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["issuer"], url.as_str());
    assert_eq!(doc["jwks_uri"], format!("{url}/.well-known/jwks"));
    assert_eq!(doc["id_token_signing_alg_values_supported"], json!(["RS256"]));
    assert_eq!(doc["response_types_supported"], json!(["id_token"]));
    assert!(doc["subject_types_supported"].as_array().is_some_and(|s| s.contains(&json!("public"))));
    assert!(doc["claims_supported"].as_array().is_some_and(|c| c.contains(&json!("repository_owner_id"))));
    assert!(doc.get("authorization_endpoint").is_none(), "GitHub's real document has none");
    assert_eq!(issuer.discovery_hits(), 1);
    assert_eq!(issuer.jwks_hits(), 0);
}

#[tokio::test]
async fn gitlab_discovery_is_a_full_provider_document() {
    let issuer = FakeIssuer::start(IssuerShape::GitLab).await.expect("issuer starts");
    let (status, doc) = get(&format!("{}/.well-known/openid-configuration", issuer.url())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["issuer"], issuer.url().as_str());
    assert_eq!(doc["authorization_endpoint"], format!("{}/oauth/authorize", issuer.url()));
    assert!(doc["claims_supported"].as_array().is_some_and(|c| c.contains(&json!("project_path"))));
    assert_eq!(issuer.published_kids(), vec!["gitlab-1"]);
}

#[tokio::test]
async fn minted_github_token_verifies_with_the_published_jwk() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let claims = issuer.github_claims("https://writ.test", "acme/web", now()).environment("production").build();
    let token = issuer.mint(&claims);
    let header = decode_header(&token).expect("header parses");
    assert_eq!(header.kid.as_deref(), Some(issuer.current_key().kid()));
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let verified = verify(&issuer, &token, "https://writ.test").await.expect("token verifies");
    assert_eq!(verified, claims);
    assert_eq!(verified["iss"], issuer.url().as_str());
    assert!(verify(&issuer, &token, "https://other.test").await.is_err(), "aud is checked");
}

#[tokio::test]
async fn minted_gitlab_token_verifies_with_the_published_jwk() {
    let issuer = FakeIssuer::start(IssuerShape::GitLab).await.expect("issuer starts");
    let claims = issuer.gitlab_claims("https://writ.test", "group/project", now()).build();
    let verified = verify(&issuer, &issuer.mint(&claims), "https://writ.test").await.expect("token verifies");
    assert_eq!(verified["sub"], "project_path:group/project:ref_type:branch:ref:main");
}

#[tokio::test]
async fn rotation_publishes_both_keys_until_the_old_one_is_retired() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let claims = issuer.github_claims("aud", "acme/web", now()).build();
    let old_kid = issuer.current_key().kid().to_owned();
    let old_token = issuer.mint(&claims);

    let new_kid = issuer.rotate();
    assert_ne!(new_kid, old_kid);
    assert_eq!(issuer.current_key().kid(), new_kid);
    let kids: Vec<_> = published_jwks(&issuer).await.keys.into_iter().filter_map(|k| k.common.key_id).collect();
    assert_eq!(kids, vec![old_kid.clone(), new_kid.clone()]);
    let new_token = issuer.mint(&claims);
    assert_eq!(decode_header(&new_token).expect("header").kid.as_deref(), Some(new_kid.as_str()));
    verify(&issuer, &old_token, "aud").await.expect("old key still published");
    verify(&issuer, &new_token, "aud").await.expect("new key published");

    issuer.retire(&old_kid);
    let kids: Vec<_> = published_jwks(&issuer).await.keys.into_iter().filter_map(|k| k.common.key_id).collect();
    assert_eq!(kids, vec![new_kid]);
    assert!(verify(&issuer, &old_token, "aud").await.is_err(), "retired key no longer verifies");
    verify(&issuer, &new_token, "aud").await.expect("current key still verifies");
}

#[tokio::test]
async fn down_answers_503_everywhere_and_still_counts_hits() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let url = issuer.url();
    issuer.set_down(true);
    for path in ["/.well-known/openid-configuration", "/.well-known/jwks", "/actions/token", "/nope"] {
        let (status, _) = get(&format!("{url}{path}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    assert_eq!((issuer.discovery_hits(), issuer.jwks_hits(), issuer.actions_token_hits()), (1, 1, 1));

    issuer.set_down(false);
    assert_eq!(get(&format!("{url}/.well-known/jwks")).await.0, StatusCode::OK);
    assert_eq!(get(&format!("{url}/nope")).await.0, StatusCode::NOT_FOUND);
    assert_eq!((issuer.discovery_hits(), issuer.jwks_hits()), (1, 2));
}

#[tokio::test]
async fn discovery_issuer_can_be_overridden_and_restored() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let discovery_url = format!("{}/.well-known/openid-configuration", issuer.url());
    issuer.set_discovery_issuer(Some(format!("{}/", issuer.url())));
    let (_, doc) = get(&discovery_url).await;
    assert_eq!(doc["issuer"], format!("{}/", issuer.url()));
    assert_eq!(doc["jwks_uri"], format!("{}/.well-known/jwks", issuer.url()), "jwks_uri unaffected");
    issuer.set_discovery_issuer(None);
    assert_eq!(get(&discovery_url).await.1["issuer"], issuer.url().as_str());
    assert_eq!(issuer.discovery_hits(), 2);
}

#[tokio::test]
async fn actions_token_endpoint_mints_for_the_requested_audience() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let template = issuer.github_claims("ignored", "acme/api", 1_000).environment("production").lifetime(120).build();
    issuer.set_actions_claims(Some(template.clone()));
    let client = reqwest::Client::new();
    // The runner's URL already has a query; clients append `&audience=`.
    let url = format!("{}&audience=https%3A%2F%2Fwrit.test", issuer.actions_token_url());
    assert!(url.contains("/actions/token?api-version=2.0&audience="));

    let response = client.get(&url).bearer_auth(issuer.actions_request_token()).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    let token = body["value"].as_str().expect("value is the token");
    let claims = verify(&issuer, token, "https://writ.test").await.expect("token verifies");
    assert_eq!(claims["aud"], "https://writ.test");
    assert_eq!(claims["sub"], "repo:acme/api:environment:production");
    assert_ne!(claims["jti"], template["jti"], "fresh jti per request");
    let iat = claims["iat"].as_i64().expect("iat");
    assert!((iat - now()).abs() < 60, "iat comes from the clock");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 120), "template lifetime kept");

    let second = client.get(&url).bearer_auth(issuer.actions_request_token()).send().await.expect("request");
    let second: Value = second.json().await.expect("JSON body");
    assert_ne!(second["value"], body["value"]);
}

#[tokio::test]
async fn actions_token_endpoint_rejects_a_wrong_or_missing_bearer() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let client = reqwest::Client::new();
    let url = format!("{}&audience=x", issuer.actions_token_url());
    let wrong = client.get(&url).bearer_auth("guess").send().await.expect("request");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let missing = client.get(&url).send().await.expect("request");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(issuer.actions_token_hits(), 2);
}

#[tokio::test]
async fn default_actions_template_is_a_github_push_token() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let response = reqwest::Client::new()
        .get(format!("{}/actions/token?audience=a", issuer.url()))
        .bearer_auth(issuer.actions_request_token())
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.expect("JSON body");
    let claims = verify(&issuer, body["value"].as_str().expect("token"), "a").await.expect("verifies");
    assert_eq!(claims["sub"], "repo:acme/web:ref:refs/heads/main");
    assert_eq!(claims["iss"], issuer.url().as_str());
}

#[tokio::test]
async fn dev_mint_signs_posted_claims_on_loopback() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let claims = issuer.github_claims("https://writ.test", "acme/web", now()).build();
    let client = reqwest::Client::new();
    let response = client.post(format!("{}/dev/mint", issuer.url())).json(&claims).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let token = response.text().await.expect("body");
    assert_eq!(verify(&issuer, &token, "https://writ.test").await.expect("verifies"), claims);
    issuer.set_down(true);
    let down = client.post(format!("{}/dev/mint", issuer.url())).json(&claims).send().await.expect("request");
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn shutdown_stops_every_handle_and_drop_of_one_clone_does_not() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let jwks_url = format!("{}/.well-known/jwks", issuer.url());
    let clone = issuer.clone();
    drop(clone);
    assert_eq!(get(&jwks_url).await.0, StatusCode::OK, "other handles keep it running");
    issuer.shutdown().await;
    assert!(reqwest::get(&jwks_url).await.is_err(), "nothing listens after shutdown");
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer starts");
    let addr = issuer.url().trim_start_matches("http://").to_owned();
    drop(issuer);
    // Shutdown runs on the server task; wait for it by retrying the connect
    // (bounded), not by sleeping a guessed duration.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(closed.is_ok(), "listener closed after the last handle dropped");
}

#[tokio::test]
async fn start_on_uses_the_given_port() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe binds");
    let addr = probe.local_addr().expect("probe addr");
    drop(probe);
    let issuer = FakeIssuer::start_on(IssuerShape::GitHub, addr).await.expect("issuer starts on the port");
    assert_eq!(issuer.url(), format!("http://{addr}"));
    assert!(FakeIssuer::start_on(IssuerShape::GitHub, addr).await.is_err(), "port is taken");
}
