//! The admin API through the router (`oneshot`, no socket): org creation,
//! policy get/put/history with preconditions, dry-run, audit queries,
//! revocation, the revocation feed, RFC 7009 and RFC 7662, narrowing, and
//! proof that an admin of one org can do nothing to another.

mod harness;

use harness::{Harness, INTROSPECTION_SECRET, PROD_POLICY, ROOT_CREDENTIAL, Reply, STAGING_POLICY};
use http::StatusCode;
use serde_json::{Value, json};

const ALL_ADMIN: &[&str] = &["writ:policy:read", "writ:policy:write", "writ:audit:read", "writ:tokens:revoke"];

/// The production org, plus rules that give its infra repository admin
/// tokens, an auditor read-only audit access, and one (bad) rule mixing
/// admin and platform permissions.
fn prod_admin_policy() -> String {
    format!(
        r#"{PROD_POLICY}
[[rule]]
name = "infra-admin"
issuer = "github"
repository = "acme/infra"
ref = "refs/heads/main"
permissions = ["writ:policy:read", "writ:policy:write", "writ:audit:read", "writ:tokens:revoke"]

[[rule]]
name = "auditor"
issuer = "github"
repository = "acme/auditor"
permissions = ["writ:audit:read"]

[[rule]]
name = "mixed"
issuer = "github"
repository = "acme/tools"
permissions = ["deploy", "writ:audit:read"]
"#
    )
}

/// The staging org, whose own infra repository administers it.
fn staging_admin_policy() -> String {
    format!(
        r#"{STAGING_POLICY}
[[rule]]
name = "staging-admin"
issuer = "github"
repository = "acme/staging-infra"
permissions = ["writ:policy:read", "writ:policy:write", "writ:audit:read", "writ:tokens:revoke"]
"#
    )
}

async fn start() -> Harness {
    Harness::start(&[&prod_admin_policy(), &staging_admin_policy()]).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn root() -> String {
    bearer(ROOT_CREDENTIAL)
}

/// A token of `org` obtained by exchange from `repository` on main.
async fn exchange_token(h: &Harness, repository: &str, org: &str, permissions: &[&str]) -> String {
    let claims = h.github(repository).environment("production").build();
    let (status, body) =
        h.exchange(json!({"token": h.issuer.mint(&claims), "org": org, "permissions": permissions})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    body["token"].as_str().expect("token").to_owned()
}

async fn prod_admin(h: &Harness) -> String {
    exchange_token(h, "acme/infra", "acme-prod", ALL_ADMIN).await
}

async fn staging_admin(h: &Harness) -> String {
    exchange_token(h, "acme/staging-infra", "acme-staging", ALL_ADMIN).await
}

/// A prod deploy token (deploy + logs:read, app web, 15 min).
async fn deploy_token(h: &Harness) -> String {
    exchange_token(h, "acme/web", "acme-prod", &[]).await
}

async fn get(h: &Harness, path: &str, auth: &str) -> Reply {
    h.call("GET", path, &[("authorization", auth)], None).await
}

async fn post_json(h: &Harness, path: &str, auth: &str, body: &Value) -> Reply {
    h.call("POST", path, &[("authorization", auth), ("content-type", "application/json")], Some(&body.to_string()))
        .await
}

async fn put_policy(h: &Harness, org: &str, auth: &str, precondition: Option<(&str, &str)>, toml: &str) -> Reply {
    let mut headers = vec![("authorization", auth), ("content-type", "application/toml")];
    if let Some(p) = precondition {
        headers.push(p);
    }
    h.call("PUT", &format!("/v1/orgs/{org}/policy"), &headers, Some(toml)).await
}

async fn introspect(h: &Harness, token: &str) -> Value {
    let basic = format!("Basic {}", b64(&format!("platform-api:{INTROSPECTION_SECRET}")));
    let form = format!("token={token}");
    let r = h
        .call(
            "POST",
            "/oauth/introspect",
            &[("authorization", &basic), ("content-type", "application/x-www-form-urlencoded")],
            Some(&form),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("b64"))
        .expect("json")
}

fn assert_error(r: &Reply, status: StatusCode, code: &str, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.json["error"], code, "{}", r.text);
    assert!(r.json["error_description"].as_str().is_some_and(|d| d.contains(needle)), "want {needle:?}: {}", r.text);
    assert!(r.json["request_id"].as_str().is_some_and(|s| !s.is_empty()), "{}", r.text);
}

fn narrow_form(token: &str, extra: &str) -> String {
    format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={token}\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token{extra}"
    )
}

// ---- authentication ----------------------------------------------------------

#[tokio::test]
async fn admin_tokens_have_their_own_audience_and_never_mix_with_platform_permissions() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let claims = claims_of(&admin);
    assert_eq!(claims["aud"], "https://writ.test/admin");
    assert_eq!(claims["scope"], ALL_ADMIN.join(" "));

    let deploy = deploy_token(&h).await;
    assert_eq!(claims_of(&deploy)["aud"], "https://api.platform.example");
    let r = get(&h, "/v1/orgs/acme-prod/policy", &bearer(&deploy)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token", "not an admin token");

    // A rule granting both kinds: asking for both is refused and audited.
    let claims = h.github("acme/tools").build();
    let (status, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["error"], "invalid_scope");
    assert!(body["error_description"].as_str().expect("text").contains("separate exchanges"), "{body:#}");
    // Each kind alone is fine.
    exchange_token(&h, "acme/tools", "acme-prod", &["writ:audit:read"]).await;
    exchange_token(&h, "acme/tools", "acme-prod", &["deploy"]).await;
}

#[tokio::test]
async fn missing_wrong_revoked_and_expired_credentials_are_401() {
    let h = start().await;
    let r = h.call("GET", "/v1/orgs/acme-prod/policy", &[], None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token", "Authorization: Bearer");
    assert!(r.headers.get("www-authenticate").is_some_and(|v| v.to_str().expect("ascii").starts_with("Bearer")));

    let wrong_root = bearer("writ_root_not-the-right-one");
    assert_error(
        &get(&h, "/v1/orgs/acme-prod/policy", &wrong_root).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "root credential",
    );
    assert_eq!(get(&h, "/v1/orgs/acme-prod/policy", "Bearer garbage").await.status, StatusCode::UNAUTHORIZED);

    let admin = prod_admin(&h).await;
    let mut parts: Vec<String> = admin.split('.').map(str::to_owned).collect();
    parts[2] = parts[2].chars().rev().collect();
    let tampered = parts.join(".");
    assert_eq!(get(&h, "/v1/orgs/acme-prod/policy", &bearer(&tampered)).await.status, StatusCode::UNAUTHORIZED);

    assert_eq!(get(&h, "/v1/orgs/acme-prod/policy", &bearer(&admin)).await.status, StatusCode::OK);
    let jti = claims_of(&admin)["jti"].as_str().expect("jti").to_owned();
    let r = post_json(&h, "/v1/orgs/acme-prod/revocations", &root(), &json!({"jti": jti})).await;
    assert_eq!(r.json["revoked"], 1, "{}", r.text);
    let r = get(&h, "/v1/orgs/acme-prod/policy", &bearer(&admin)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token", "revoked");

    let fresh = prod_admin(&h).await;
    h.clock.set(h.clock.now() + 16 * 60);
    let r = get(&h, "/v1/orgs/acme-prod/policy", &bearer(&fresh)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_token", "expired");
}

// ---- POST /v1/orgs -----------------------------------------------------------

const NEW_ORG_POLICY: &str = r#"org = "client-a"

[[rule]]
name = "deploy"
issuer = "github"
repository = "client-a/app"
permissions = ["deploy"]
"#;

#[tokio::test]
async fn root_creates_an_org_with_a_linted_first_policy() {
    let h = start().await;
    let typo = NEW_ORG_POLICY.replace("[\"deploy\"]", "[\"deploi\"]");
    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "client-a", "policy": typo})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "request body:7:");
    let diagnostic = &r.json["explanation"][0];
    assert_eq!((diagnostic["line"].as_i64(), diagnostic["column"].as_i64()), (Some(7), Some(16)), "{}", r.text);
    assert!(diagnostic["help"].as_str().is_some_and(|h| h.contains("deploy")), "nearest name: {}", r.text);
    let r = get(&h, "/v1/orgs/client-a/policy", &root()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing was stored: {}", r.text);

    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "client-a", "policy": NEW_ORG_POLICY})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["policy_version"], 1);
    assert_eq!(r.headers["etag"], "\"v1\"");
    let r = get(&h, "/v1/orgs/client-a/policy", &root()).await;
    assert_eq!((r.status, r.json["version"].as_i64()), (StatusCode::OK, Some(1)), "{}", r.text);
    assert_eq!(r.json["author"], "root");
    // The new policy is live: client-a's repository gets a token.
    exchange_token(&h, "client-a/app", "client-a", &["deploy"]).await;

    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "client-a"})).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", "exists already");
    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "acme-prod"})).await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", "exists already");
}

#[tokio::test]
async fn creating_an_org_refuses_bad_input_and_non_root_callers() {
    let h = start().await;
    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "bad/name"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "not a valid org name");
    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "client-b", "policy": NEW_ORG_POLICY})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "is for org \"client-a\"");
    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "client-b", "colour": "red"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "unknown field");
    let r = h.call("POST", "/v1/orgs", &[("authorization", &root())], Some("{}")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "Content-Type: application/json");

    let admin = prod_admin(&h).await;
    let r = post_json(&h, "/v1/orgs", &bearer(&admin), &json!({"org": "client-b"})).await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope", "root credential");
    let r = h.call("POST", "/v1/orgs", &[("content-type", "application/json")], Some("{\"org\":\"x\"}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // An org without a policy takes its first one with If-None-Match: *.
    let r = post_json(&h, "/v1/orgs", &root(), &json!({"org": "client-a"})).await;
    assert_eq!((r.status, &r.json["policy_version"]), (StatusCode::CREATED, &Value::Null), "{}", r.text);
    let r = put_policy(&h, "client-a", &root(), None, NEW_ORG_POLICY).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_REQUIRED, "{}", r.text);
    let r = put_policy(&h, "client-a", &root(), Some(("if-match", "*")), NEW_ORG_POLICY).await;
    assert_eq!((r.status, &r.json["current_version"]), (StatusCode::PRECONDITION_FAILED, &json!(0)), "{}", r.text);
    let r = put_policy(&h, "client-a", &root(), Some(("if-none-match", "*")), NEW_ORG_POLICY).await;
    assert_eq!((r.status, &r.json["version"]), (StatusCode::CREATED, &json!(1)), "{}", r.text);
    let r = put_policy(&h, "client-a", &root(), Some(("if-none-match", "*")), NEW_ORG_POLICY).await;
    assert_eq!((r.status, &r.json["current_version"]), (StatusCode::PRECONDITION_FAILED, &json!(1)), "{}", r.text);
}

// ---- the policy ---------------------------------------------------------------

#[tokio::test]
async fn policy_get_returns_the_version_as_etag_json_or_toml() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let r = get(&h, "/v1/orgs/acme-prod/policy", &bearer(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert_eq!((r.json["version"].as_i64(), r.json["format"].as_str()), (Some(1), Some("toml")));
    assert_eq!(r.json["source"], prod_admin_policy());
    assert_eq!(r.json["managed_by"], "api");

    let r = h
        .call(
            "GET",
            "/v1/orgs/acme-prod/policy",
            &[("authorization", &bearer(&admin)), ("accept", "application/toml")],
            None,
        )
        .await;
    assert_eq!(r.text, prod_admin_policy());
    assert!(r.headers["content-type"].to_str().expect("ascii").starts_with("application/toml"));

    let r = get(&h, "/v1/orgs/acme-prod/policy?version=1", &bearer(&admin)).await;
    assert_eq!(r.json["version"], 1);
    assert_eq!(get(&h, "/v1/orgs/acme-prod/policy?version=7", &bearer(&admin)).await.status, StatusCode::NOT_FOUND);
    let r = get(&h, "/v1/orgs/acme-prod/policy?versoin=1", &bearer(&admin)).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "unknown query parameter");
    assert_eq!(get(&h, "/v1/orgs/nobody/policy", &root()).await.status, StatusCode::NOT_FOUND);

    let auditor = exchange_token(&h, "acme/auditor", "acme-prod", &[]).await;
    let r = get(&h, "/v1/orgs/acme-prod/policy", &bearer(&auditor)).await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope", "writ:policy:read");
}

#[tokio::test]
async fn policy_put_stores_versions_and_refuses_stale_missing_and_bad_writes() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let auth = bearer(&admin);
    // v2 drops the grafana rule.
    let v2 = prod_admin_policy()
        .replace("name = \"grafana\"", "name = \"grafana-v2\"")
        .replace("acme/dashboards", "acme/dash2");
    let r = put_policy(&h, "acme-prod", &auth, Some(("if-match", "\"v1\"")), &v2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.json["version"].as_i64(), r.headers["etag"].to_str().ok()), (Some(2), Some("\"v2\"")));
    let claims = h.github("acme/dashboards").build();
    let (status, _) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the new version is live at once");

    let r = put_policy(&h, "acme-prod", &auth, Some(("if-match", "\"v1\"")), &prod_admin_policy()).await;
    assert_error(&r, StatusCode::PRECONDITION_FAILED, "precondition_failed", "version 2");
    assert_eq!((&r.json["current_version"], r.headers["etag"].to_str().ok()), (&json!(2), Some("\"v2\"")));
    let r = put_policy(&h, "acme-prod", &auth, None, &prod_admin_policy()).await;
    assert_error(&r, StatusCode::PRECONDITION_REQUIRED, "precondition_required", "If-Match");

    let typo = v2.replace("environment = \"production\"", "enviroment = \"production\"");
    let r = put_policy(&h, "acme-prod", &auth, Some(("if-match", "\"v2\"")), &typo).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "not stored");
    let d = &r.json["explanation"][0];
    assert!(d["line"].as_i64().is_some() && d["column"].as_i64().is_some(), "{}", r.text);
    assert!(d["help"].as_str().is_some_and(|h| h.contains("environment")), "{}", r.text);
    let r = put_policy(&h, "acme-prod", &auth, Some(("if-match", "\"v2\"")), &staging_admin_policy()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "is for org \"acme-staging\"");
    let r = h
        .call(
            "PUT",
            "/v1/orgs/acme-prod/policy",
            &[("authorization", &auth), ("if-match", "\"v2\""), ("content-type", "text/plain")],
            Some(&v2),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "application/toml");
    assert_eq!(get(&h, "/v1/orgs/acme-prod/policy", &auth).await.json["version"], 2, "refusals stored nothing");

    // JSON is accepted too.
    let as_json = json!({"org": "acme-prod", "rule": [{"name": "infra-admin", "issuer": "github",
        "repository": "acme/infra", "permissions": ALL_ADMIN}]});
    let r = h
        .call(
            "PUT",
            "/v1/orgs/acme-prod/policy",
            &[("authorization", &auth), ("if-match", "\"v2\""), ("content-type", "application/json")],
            Some(&as_json.to_string()),
        )
        .await;
    assert_eq!((r.status, r.json["version"].as_i64()), (StatusCode::OK, Some(3)), "{}", r.text);

    let r = get(&h, "/v1/orgs/acme-prod/policy/history", &auth).await;
    let versions: Vec<i64> =
        r.json["versions"].as_array().expect("versions").iter().map(|v| v["version"].as_i64().expect("n")).collect();
    assert_eq!(versions, vec![3, 2, 1], "newest first");
    assert_eq!(r.json["versions"][0]["format"], "json");
    assert!(r.json["versions"][0]["author"].as_str().is_some_and(|a| a.contains("acme/infra")), "{}", r.text);
}

#[tokio::test]
async fn concurrent_policy_writes_exactly_one_wins() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let auth = bearer(&admin);
    let writes = (0..8).map(|i| {
        let text = prod_admin_policy().replace("max_ttl = \"15m\"", &format!("max_ttl = \"{}m\"", i + 1));
        let auth = auth.clone();
        let h = &h;
        async move { put_policy(h, "acme-prod", &auth, Some(("if-match", "\"v1\"")), &text).await }
    });
    let replies = futures::future::join_all(writes).await;
    let won = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    let lost: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::PRECONDITION_FAILED).collect();
    assert_eq!((won, lost.len()), (1, 7), "{:?}", replies.iter().map(|r| &r.text).collect::<Vec<_>>());
    assert!(lost.iter().all(|r| r.json["current_version"] == 2));
    assert_eq!(
        get(&h, "/v1/orgs/acme-prod/policy/history", &auth).await.json["versions"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn a_file_managed_org_refuses_api_writes() {
    let h = start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("files.toml"), NEW_ORG_POLICY.replace("client-a", "files-org")).expect("write");
    writ_server::policies::sync_dir(
        dir.path(),
        &h.state.policies,
        h.state.store.as_ref(),
        &h.state.catalogue,
        h.clock.now(),
    )
    .await
    .expect("sync");
    let r = get(&h, "/v1/orgs/files-org/policy", &root()).await;
    assert_eq!(r.json["managed_by"], "file", "{}", r.text);
    let r = put_policy(
        &h,
        "files-org",
        &root(),
        Some(("if-match", "\"v1\"")),
        &NEW_ORG_POLICY.replace("client-a", "files-org"),
    )
    .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", "file-managed");
}

// ---- dry run -------------------------------------------------------------------

#[tokio::test]
async fn dry_run_explains_claims_and_tokens_without_consuming_or_auditing() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let auth = bearer(&admin);
    let audited = h.audit("acme-prod").await.len();

    let pr = h.github("acme/web").pull_request(7, "feature").build();
    let r = post_json(&h, "/v1/orgs/acme-prod/policy/dry-run", &auth, &json!({"claims": pr})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.json["decision"].as_str(), r.json["policy_version"].as_i64()), (Some("denied"), Some(1)));
    let deploy_web = &r.json["explanation"][0];
    assert_eq!(deploy_web["rule"], "deploy-web");
    assert!(deploy_web.to_string().contains("refs/pull/7/merge"), "{}", r.text);

    let job = h.github("acme/web").environment("production").build();
    let token = h.issuer.mint(&job);
    let body = json!({"token": token, "request": {"permissions": ["deploy"], "ttl": "5m"}});
    let r = post_json(&h, "/v1/orgs/acme-prod/policy/dry-run", &auth, &body).await;
    assert_eq!(
        (r.json["decision"].as_str(), r.json["rule"].as_str()),
        (Some("granted"), Some("deploy-web")),
        "{}",
        r.text
    );
    assert_eq!((r.json["ttl_s"].as_i64(), r.json["consumed"].as_bool()), (Some(300), Some(false)));
    assert_eq!(h.audit("acme-prod").await.len(), audited, "a dry run is not a decision");
    let (status, _) = h.exchange(json!({"token": token, "org": "acme-prod"})).await;
    assert_eq!(status, StatusCode::OK, "the token's jti was not consumed by the dry run");

    // A candidate policy, before applying it.
    let candidate = prod_admin_policy()
        .replace("ref = \"refs/heads/main\"\nenvironment", "ref = \"refs/pull/*/merge\"\nenvironment");
    let r =
        post_json(&h, "/v1/orgs/acme-prod/policy/dry-run", &auth, &json!({"claims": pr, "policy": candidate})).await;
    assert_eq!((r.json["decision"].as_str(), &r.json["policy_version"]), (Some("denied"), &Value::Null), "{}", r.text);

    let both = json!({"claims": pr, "token": token});
    let r = post_json(&h, "/v1/orgs/acme-prod/policy/dry-run", &auth, &both).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "exactly one");
    let r = post_json(&h, "/v1/orgs/acme-prod/policy/dry-run", &auth, &json!({"token": "not.a.token"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "does not verify");
    let r = post_json(&h, "/v1/orgs/acme-prod/policy/dry-run", &auth, &json!({"claims": pr, "issuer": "gitlab"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "unknown issuer");
    let r =
        h.call("POST", "/v1/orgs/acme-prod/policy/dry-run", &[("content-type", "application/json")], Some("{}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// ---- the audit log ---------------------------------------------------------------

#[tokio::test]
async fn audit_filters_pages_and_speaks_csv() {
    let h = start().await;
    let admin = prod_admin(&h).await; // 1 grant (acme/infra)
    deploy_token(&h).await; // 1 grant (acme/web)
    for n in 0..3 {
        let pr = h.github("acme/web").pull_request(n, "x").build();
        h.exchange(json!({"token": h.issuer.mint(&pr), "org": "acme-prod"})).await; // 3 denials
    }
    let grafana = h.github("acme/dashboards").build();
    h.exchange(json!({"token": h.issuer.mint(&grafana), "org": "acme-prod"})).await; // 1 grant
    let auth = bearer(&admin);
    let query = |q: &str| {
        let (h, auth) = (&h, auth.clone());
        let path = format!("/v1/orgs/acme-prod/audit{q}");
        async move { get(h, &path, &auth).await }
    };
    let count = |r: &Reply| r.json["records"].as_array().map_or(0, Vec::len);

    let all = query("").await;
    assert_eq!((all.status, count(&all)), (StatusCode::OK, 6), "{}", all.text);
    assert_eq!(all.json["records"][0]["rule"], "grafana", "newest first");
    assert_eq!(count(&query("?outcome=denied").await), 3);
    assert_eq!(count(&query("?repository=ACME/WEB").await), 4);
    assert_eq!(count(&query("?rule=deploy-web").await), 1);
    assert_eq!(count(&query("?permission=metrics:read").await), 1);
    assert_eq!(count(&query("?outcome=granted&repository=acme/web").await), 1);
    let now = h.clock.now();
    assert_eq!(count(&query(&format!("?from={}", now + 1)).await), 0);
    assert_eq!(count(&query(&format!("?to={}", now + 1)).await), 6);

    let page1 = query("?limit=4").await;
    assert_eq!(count(&page1), 4);
    let cursor = page1.json["next_cursor"].as_str().expect("more pages").to_owned();
    let page2 = query(&format!("?limit=4&cursor={cursor}")).await;
    assert_eq!((count(&page2), &page2.json["next_cursor"]), (2, &Value::Null));
    let ids =
        |r: &Reply| r.json["records"].as_array().expect("records").iter().map(|x| x["id"].clone()).collect::<Vec<_>>();
    assert!(ids(&page2).iter().all(|id| !ids(&page1).contains(id)), "pages do not overlap");

    let csv = h
        .call(
            "GET",
            "/v1/orgs/acme-prod/audit?outcome=denied",
            &[("authorization", &auth), ("accept", "text/csv")],
            None,
        )
        .await;
    assert!(csv.headers["content-type"].to_str().expect("ascii").starts_with("text/csv"));
    let lines: Vec<&str> = csv.text.lines().collect();
    assert!(lines[0].starts_with("time,outcome,error,rule,repository"), "{}", csv.text);
    assert_eq!(lines.len(), 4, "header and three denials: {}", csv.text);
    assert!(lines[1].contains(",denied,invalid_grant,"), "{}", csv.text);
    let csv2 = query("?format=csv&limit=2").await;
    assert!(csv2.headers.contains_key("x-next-cursor"));

    for bad in ["?outcome=maybe", "?from=yesterday", "?limit=0", "?limit=5000", "?cursor=zzz", "?colour=red"] {
        assert_eq!(query(bad).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let policy_only = exchange_token(&h, "acme/infra", "acme-prod", &["writ:policy:write"]).await;
    let r = get(&h, "/v1/orgs/acme-prod/audit", &bearer(&policy_only)).await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope", "writ:audit:read");
}

// ---- revocation ------------------------------------------------------------------

#[tokio::test]
async fn revocation_by_jti_repository_run_and_rule() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let auth = bearer(&admin);
    let revoke = |body: Value| {
        let (h, auth) = (&h, auth.clone());
        async move { post_json(h, "/v1/orgs/acme-prod/revocations", &auth, &body).await }
    };

    let one = deploy_token(&h).await;
    let r = revoke(json!({"jti": claims_of(&one)["jti"], "reason": "leaked in a log"})).await;
    assert_eq!((r.status, &r.json["revoked"]), (StatusCode::OK, &json!(1)), "{}", r.text);
    assert_eq!(introspect(&h, &one).await, json!({"active": false}));

    let a = deploy_token(&h).await;
    let b = deploy_token(&h).await;
    let r = revoke(json!({"repository": "Acme/Web"})).await;
    assert_eq!(r.json["revoked"], 2, "{}", r.text);
    assert_eq!(
        (introspect(&h, &a).await["active"].as_bool(), introspect(&h, &b).await["active"].as_bool()),
        (Some(false), Some(false))
    );

    let claims = h.github("acme/web").environment("production").run_id(4242).build();
    let (_, body) = h.exchange(json!({"token": h.issuer.mint(&claims), "org": "acme-prod"})).await;
    let by_run = body["token"].as_str().expect("token").to_owned();
    assert_eq!(revoke(json!({"run_id": "4242"})).await.json["revoked"], 1);
    assert_eq!(introspect(&h, &by_run).await["active"], false);

    let grafana = exchange_token(&h, "acme/dashboards", "acme-prod", &[]).await;
    assert_eq!(revoke(json!({"rule": "grafana"})).await.json["revoked"], 1);
    assert_eq!(introspect(&h, &grafana).await["active"], false);
    assert_eq!(introspect(&h, &admin).await["active"], true, "the admin's own token was not selected");

    let r = revoke(json!({"jti": "x", "rule": "grafana"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "exactly one");
    assert_error(&revoke(json!({})).await, StatusCode::BAD_REQUEST, "invalid_request", "exactly one");
    assert_error(&revoke(json!({"jti": "no-such-token"})).await, StatusCode::NOT_FOUND, "not_found", "no token");

    let auditor = exchange_token(&h, "acme/auditor", "acme-prod", &[]).await;
    let r = post_json(&h, "/v1/orgs/acme-prod/revocations", &bearer(&auditor), &json!({"rule": "grafana"})).await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope", "writ:tokens:revoke");
}

#[tokio::test]
async fn concurrent_revocations_revoke_each_token_once() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    for _ in 0..4 {
        deploy_token(&h).await;
    }
    let auth = bearer(&admin);
    let body = json!({"rule": "deploy-web"});
    let calls = (0..6).map(|_| post_json(&h, "/v1/orgs/acme-prod/revocations", &auth, &body));
    let replies = futures::future::join_all(calls).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let total: i64 = replies.iter().map(|r| r.json["revoked"].as_i64().expect("count")).sum();
    assert_eq!(total, 4);
}

#[tokio::test]
async fn the_revocation_feed_is_public_ordered_and_drops_expired_entries() {
    let h = start().await;
    let r = h.call("GET", "/v1/revocations", &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "no credential needed: {}", r.text);
    assert_eq!((r.json["revocations"].as_array().map(Vec::len), r.json["poll_after_s"].as_i64()), (Some(0), Some(30)));
    let start_cursor = r.json["cursor"].as_str().expect("cursor").to_owned();

    let admin = prod_admin(&h).await;
    let t1 = deploy_token(&h).await;
    let t2 = deploy_token(&h).await;
    for t in [&t1, &t2] {
        post_json(&h, "/v1/orgs/acme-prod/revocations", &bearer(&admin), &json!({"jti": claims_of(t)["jti"]})).await;
    }
    let r = h.call("GET", &format!("/v1/revocations?since={start_cursor}&limit=1"), &[], None).await;
    let entry = &r.json["revocations"][0];
    assert_eq!(entry["jti"], claims_of(&t1)["jti"]);
    assert_eq!((entry["org"].as_str(), entry["exp"].as_i64()), (Some("acme-prod"), claims_of(&t1)["exp"].as_i64()));
    assert!(entry["revoked_at"].as_i64().is_some());
    assert_eq!(r.json["poll_after_s"], 0, "a full page: fetch the next one now");
    let next = r.json["cursor"].as_str().expect("cursor").to_owned();
    let r = h.call("GET", &format!("/v1/revocations?since={next}"), &[], None).await;
    assert_eq!(r.json["revocations"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.json["revocations"][0]["jti"], claims_of(&t2)["jti"]);
    let last = r.json["cursor"].as_str().expect("cursor").to_owned();
    let r = h.call("GET", &format!("/v1/revocations?since={last}"), &[], None).await;
    assert_eq!(
        (r.json["revocations"].as_array().map(Vec::len), r.json["cursor"].as_str()),
        (Some(0), Some(last.as_str()))
    );

    h.clock.set(h.clock.now() + 16 * 60);
    let r = h.call("GET", "/v1/revocations", &[], None).await;
    assert_eq!(r.json["revocations"].as_array().map(Vec::len), Some(0), "expired tokens leave the feed");

    for bad in ["?since=garbage", "?limit=0", "?limit=abc", "?org=acme-prod"] {
        let r = h.call("GET", &format!("/v1/revocations{bad}"), &[], None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
}

// ---- RFC 7009 and RFC 7662 ---------------------------------------------------------

#[tokio::test]
async fn a_holder_revokes_its_own_token_and_unknown_tokens_get_200() {
    let h = start().await;
    let token = deploy_token(&h).await;
    let form = |t: &str| format!("token={t}&token_type_hint=access_token");
    let post = |body: String| {
        let h = &h;
        async move {
            h.call("POST", "/oauth/revoke", &[("content-type", "application/x-www-form-urlencoded")], Some(&body)).await
        }
    };
    assert_eq!(introspect(&h, &token).await["active"], true);
    let r = post(form(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(introspect(&h, &token).await["active"], false);
    let feed = h.call("GET", "/v1/revocations", &[], None).await;
    assert_eq!(feed.json["revocations"][0]["jti"], claims_of(&token)["jti"]);

    assert_eq!(post(form(&token)).await.status, StatusCode::OK, "again: nothing to do");
    assert_eq!(post(form("garbage")).await.status, StatusCode::OK, "unknown tokens too (RFC 7009 2.2)");
    let r = post("token_type_hint=access_token".into()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request", "token is missing");
    let r = h.call("POST", "/oauth/revoke", &[("content-type", "application/json")], Some("{}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn introspection_needs_a_client_and_reports_only_active_tokens() {
    let h = start().await;
    let token = deploy_token(&h).await;
    let active = introspect(&h, &token).await;
    assert_eq!(active["active"], true);
    assert_eq!((active["org"].as_str(), active["scope"].as_str()), (Some("acme-prod"), Some("deploy logs:read")));
    assert_eq!((active["apps"].clone(), active["token_type"].as_str()), (json!(["web"]), Some("Bearer")));
    assert_eq!(active["jti"], claims_of(&token)["jti"]);

    let form = format!("token={token}");
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let r = h.call("POST", "/oauth/introspect", &[ct], Some(&form)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "invalid_client", "client credentials");
    assert!(r.headers["www-authenticate"].to_str().expect("ascii").starts_with("Basic"));
    let wrong = format!("Basic {}", b64("platform-api:wrong"));
    assert_eq!(
        h.call("POST", "/oauth/introspect", &[ct, ("authorization", &wrong)], Some(&form)).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The root credential, and an admin of the token's own org, may ask.
    let r = h.call("POST", "/oauth/introspect", &[ct, ("authorization", &root())], Some(&form)).await;
    assert_eq!(r.json["active"], true, "{}", r.text);
    let own = bearer(&prod_admin(&h).await);
    assert_eq!(
        h.call("POST", "/oauth/introspect", &[ct, ("authorization", &own)], Some(&form)).await.json["active"],
        true
    );
    let other = bearer(&staging_admin(&h).await);
    let r = h.call("POST", "/oauth/introspect", &[ct, ("authorization", &other)], Some(&form)).await;
    assert_eq!(r.json, json!({"active": false}), "another org's admin learns nothing");

    assert_eq!(introspect(&h, "not-a-token").await, json!({"active": false}));
    let oidc = h.issuer.mint(&h.github("acme/web").build());
    assert_eq!(introspect(&h, &oidc).await, json!({"active": false}), "an OIDC token is not a writ token");
    h.clock.set(h.clock.now() + 15 * 60);
    assert_eq!(introspect(&h, &token).await, json!({"active": false}), "expired");
}

// ---- narrowing -----------------------------------------------------------------------

#[tokio::test]
async fn narrowing_gives_a_subset_with_a_parent_claim_and_never_more() {
    let h = start().await;
    let parent = deploy_token(&h).await;
    let parent_claims = claims_of(&parent);

    let (status, body) = h.post_form("/oauth/token", &narrow_form(&parent, "&scope=logs%3Aread&ttl=5m")).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!((body["scope"].as_str(), body["expires_in"].as_i64()), (Some("logs:read"), Some(300)));
    let child = h.verify_writ_token(body["access_token"].as_str().expect("token")).await;
    assert_eq!(child["parent"], parent_claims["jti"]);
    assert_eq!(child["apps"], json!(["web"]), "the app limit is kept");
    for same in ["org", "aud", "sub", "client_id", "ci"] {
        assert_eq!(child[same], parent_claims[same], "{same}");
    }

    let refused = |extra: &'static str| {
        let (h, parent) = (&h, parent.clone());
        async move { h.post_form("/oauth/token", &narrow_form(&parent, extra)).await }
    };
    let (status, body) = refused("&scope=metrics%3Aread").await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_scope")), "{body:#}");
    let (_, body) = refused("&resource=app%3Aapi").await;
    assert_eq!(body["error"], "invalid_target", "{body:#}");
    let (_, body) = refused("&audience=acme-staging").await;
    assert_eq!(body["error"], "invalid_target", "{body:#}");
    let (status, body) = refused("&ttl=10h").await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["expires_in"], 900, "capped by the parent's remaining life");

    // An unrestricted parent can be narrowed to one machine, via /v1/exchange too.
    let staging = exchange_token(&h, "acme/web", "acme-staging", &[]).await;
    let (status, body) =
        h.exchange(json!({"token": staging, "permissions": ["deploy"], "machines": ["vm-1"], "ttl": "2m"})).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!((body["machines"].clone(), body["org"].as_str()), (json!(["vm-1"]), Some("acme-staging")));
    let vm = claims_of(body["token"].as_str().expect("token"));
    assert_eq!((vm["machines"].clone(), vm["scope"].as_str()), (json!(["vm-1"]), Some("deploy")));

    // The declared subject_token_type must fit the token.
    let oidc = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let (status, body) = h.post_form("/oauth/token", &narrow_form(&oidc, "&audience=acme-prod")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error_description"].as_str().expect("text").contains("not one"), "{body:#}");
    let as_oidc = narrow_form(&parent, "").replace("access_token", "id_token");
    let (_, body) = h.post_form("/oauth/token", &format!("{as_oidc}&audience=acme-prod")).await;
    assert!(body["error_description"].as_str().expect("text").contains("writ token"), "{body:#}");
}

#[tokio::test]
async fn narrowing_is_audited_and_revoking_a_token_revokes_its_descendants() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let parent = deploy_token(&h).await;
    let (_, body) = h.post_form("/oauth/token", &narrow_form(&parent, "&scope=deploy")).await;
    let child = body["access_token"].as_str().expect("child").to_owned();
    let (_, body) = h.post_form("/oauth/token", &narrow_form(&child, "&ttl=1m")).await;
    let grandchild = body["access_token"].as_str().expect("grandchild").to_owned();
    assert_eq!(claims_of(&grandchild)["parent"], claims_of(&child)["jti"]);

    let audit = get(&h, "/v1/orgs/acme-prod/audit", &bearer(&admin)).await;
    let record = &audit.json["records"][1];
    assert_eq!(record["token_jti"], claims_of(&child)["jti"], "{}", audit.text);
    assert_eq!(record["subject_jti"], claims_of(&parent)["jti"], "the chain is in the audit log");
    assert_eq!((record["issuer"].as_str(), record["rule"].as_str()), (Some("https://writ.test"), Some("deploy-web")));

    let r =
        post_json(&h, "/v1/orgs/acme-prod/revocations", &bearer(&admin), &json!({"jti": claims_of(&parent)["jti"]}))
            .await;
    assert_eq!(r.json["revoked"], 3, "{}", r.text);
    for t in [&parent, &child, &grandchild] {
        assert_eq!(introspect(&h, t).await["active"], false);
    }
    let feed = h.call("GET", "/v1/revocations", &[], None).await;
    assert_eq!(feed.json["revocations"].as_array().map(Vec::len), Some(3));
    let (status, body) = h.post_form("/oauth/token", &narrow_form(&child, "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error_description"].as_str().expect("text").contains("revoked"), "{body:#}");

    // A holder's RFC 7009 revocation reaches descendants too.
    let other = deploy_token(&h).await;
    let (_, body) = h.post_form("/oauth/token", &narrow_form(&other, "")).await;
    let other_child = body["access_token"].as_str().expect("child").to_owned();
    h.call(
        "POST",
        "/oauth/revoke",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(&format!("token={other}")),
    )
    .await;
    assert_eq!(introspect(&h, &other_child).await["active"], false);

    // An expired parent narrows to nothing.
    let late = deploy_token(&h).await;
    h.clock.set(h.clock.now() + 15 * 60);
    let (status, body) = h.post_form("/oauth/token", &narrow_form(&late, "")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error_description"].as_str().expect("text").contains("expired"), "{body:#}");
}

#[tokio::test]
async fn a_narrowed_admin_token_keeps_only_what_it_was_narrowed_to() {
    let h = start().await;
    let admin = prod_admin(&h).await;
    let (status, body) = h.post_form("/oauth/token", &narrow_form(&admin, "&scope=writ%3Aaudit%3Aread")).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let reader = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(claims_of(&reader)["aud"], "https://writ.test/admin");
    assert_eq!(get(&h, "/v1/orgs/acme-prod/audit", &bearer(&reader)).await.status, StatusCode::OK);
    let r = put_policy(&h, "acme-prod", &bearer(&reader), Some(("if-match", "\"v1\"")), &prod_admin_policy()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

// ---- org isolation -----------------------------------------------------------------

#[tokio::test]
async fn an_admin_of_one_org_can_do_nothing_to_another() {
    let h = start().await;
    let staging = bearer(&staging_admin(&h).await);
    let prod_token = deploy_token(&h).await;
    let prod_jti = claims_of(&prod_token)["jti"].as_str().expect("jti").to_owned();
    let pr = h.github("acme/web").pull_request(1, "x").build();

    let attempts = [
        get(&h, "/v1/orgs/acme-prod/policy", &staging).await,
        get(&h, "/v1/orgs/acme-prod/policy/history", &staging).await,
        put_policy(&h, "acme-prod", &staging, Some(("if-match", "\"v1\"")), &prod_admin_policy()).await,
        put_policy(&h, "acme-prod", &staging, Some(("if-match", "*")), &prod_admin_policy()).await,
        post_json(&h, "/v1/orgs/acme-prod/policy/dry-run", &staging, &json!({"claims": pr})).await,
        get(&h, "/v1/orgs/acme-prod/audit", &staging).await,
        get(&h, "/v1/orgs/acme-prod/audit?format=csv", &staging).await,
        post_json(&h, "/v1/orgs/acme-prod/revocations", &staging, &json!({"jti": prod_jti})).await,
        post_json(&h, "/v1/orgs/acme-prod/revocations", &staging, &json!({"repository": "acme/web"})).await,
        post_json(&h, "/v1/orgs/acme-prod/revocations", &staging, &json!({"rule": "deploy-web"})).await,
        get(&h, "/v1/orgs/no-such-org/policy", &staging).await,
        post_json(&h, "/v1/orgs", &staging, &json!({"org": "acme-prod-2"})).await,
    ];
    for r in &attempts {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert!(
            !r.text.contains("deploy-web") && !r.text.contains("acme/dashboards"),
            "nothing of prod leaks: {}",
            r.text
        );
    }
    // Staging's own jti space does not reach prod either.
    let r = post_json(&h, "/v1/orgs/acme-staging/revocations", &staging, &json!({"jti": prod_jti})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = post_json(&h, "/v1/orgs/acme-staging/revocations", &staging, &json!({"repository": "acme/web"})).await;
    assert_eq!(r.json["revoked"], 0, "only staging's tokens of acme/web, of which there are none: {}", r.text);

    assert_eq!(introspect(&h, &prod_token).await["active"], true, "prod's token survived");
    assert_eq!(get(&h, "/v1/orgs/acme-prod/policy", &root()).await.json["version"], 1, "prod's policy unchanged");
    // And a staging admin token is not a prod token of any kind.
    let (status, _) =
        h.post_form("/oauth/token", &narrow_form(staging.trim_start_matches("Bearer "), "&audience=acme-prod")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn discovery_names_the_new_endpoints() {
    let h = start().await;
    let (_, body) = h.get("/.well-known/openid-configuration").await;
    assert_eq!(body["revocation_endpoint"], "https://writ.test/oauth/revoke");
    assert_eq!(body["introspection_endpoint"], "https://writ.test/oauth/introspect");
    assert_eq!(body["writ_revocation_feed"], "https://writ.test/v1/revocations");
    assert_eq!(body["writ_admin_audience"], "https://writ.test/admin");
}
