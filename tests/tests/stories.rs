//! The user stories of DESIGN.md ("Who uses it") end to end, one scenario
//! each: CI jobs (the fake GitHub issuer) exchange their OIDC token with
//! `writ-action exchange` against a real `writ serve --config` child
//! process, admins and holders use the `writ` CLI, and every acceptance or
//! refusal is the demo platform's answer (writ-verify, over a loopback
//! socket). Only the key-rotation story runs writ in process, because it
//! drives the rotation itself. docs/stories.md lists the scenarios.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use writ_server::revocation::REVOCATION_POLL_SECS;
use writ_server::signing::{Keyring, KeyringConfig};
use writ_testkit::{FakeIssuer, IssuerShape};
use writ_verify::VerifierConfig;

mod common;
#[path = "stories/world.rs"]
mod world;

use common::now;
use world::{ACME_PROD, ACME_STAGING, AUDIENCE, GLOBEX, INITECH, World, header, payload, server_config};

/// The `writ-action` denial's first line, after the "writ denied the
/// exchange:" heading.
fn denial_line(stderr: &str) -> &str {
    let mut lines = stderr.lines();
    assert_eq!(lines.next(), Some("writ denied the exchange:"), "{stderr}");
    lines.next().expect("the error line").trim()
}

/// Whether the rendered denial lists `line` (trimmed) among its lines.
#[track_caller]
fn assert_lists(stderr: &str, line: &str) {
    assert!(stderr.lines().any(|l| l.trim() == line), "expected the line {line:?} in:\n{stderr}");
}

// ---------------------------------------------------------------------------
// 1. staging and prod are separate orgs; one token can never touch the other.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_1_staging_and_prod_tokens_never_cross_orgs() {
    let world = World::start(&[("acme-prod", ACME_PROD), ("acme-staging", ACME_STAGING)]).await;
    let platform = &world.platform;

    // Devops' deploy job asks each org for its own token (two exchanges,
    // two OIDC tokens): each token names exactly one org.
    let devops = || world.job("acme/web").environment("production");
    let prod = world.granted("acme-prod", &devops(), &[]).await;
    let staging = world.granted("acme-staging", &devops(), &[]).await;
    assert_eq!(payload(&prod)["org"], "acme-prod");
    assert_eq!(payload(&staging)["org"], "acme-staging");

    // Each works at home.
    platform.deploy("acme-prod", "web", &prod).await.ok();
    platform.deploy("acme-staging", "web", &staging).await.ok();

    // Every resource of the other org refuses it, whatever the permission.
    for (token, home, other, machine) in
        [(&prod, "acme-prod", "acme-staging", "vm-staging-1"), (&staging, "acme-staging", "acme-prod", "vm-prod-1")]
    {
        let refusal = format!("token is for org {home}, not {other}");
        platform.deploy(other, "web", token).await.forbidden(&refusal);
        platform.deploy(other, "billing", token).await.forbidden(&refusal);
        platform.logs(other, "web", token).await.forbidden(&refusal);
        platform.metrics(other, token).await.forbidden(&refusal);
        platform.exec(other, machine, token).await.forbidden(&refusal);
    }
}

// ---------------------------------------------------------------------------
// 2. Only the protected `production` environment (devops) gets prod
//    tokens; dev and devops both get staging tokens.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_2_only_the_production_environment_gets_prod_tokens() {
    let world = World::start(&[("acme-prod", ACME_PROD), ("acme-staging", ACME_STAGING)]).await;
    let platform = &world.platform;

    // A developer's branch job, deploying to the staging environment.
    let dev = || world.job("acme/web").ref_("refs/heads/feature-login").environment("staging");
    // A developer's job on main without the protected environment.
    let dev_main = || world.job("acme/web");
    // Devops' job: main, in the protected environment.
    let devops = || world.job("acme/web").environment("production");

    // Staging: all three get a token, and it deploys staging.
    for job in [dev(), dev_main(), devops()] {
        let token = world.granted("acme-staging", &job, &[]).await;
        platform.deploy("acme-staging", "web", &token).await.ok();
    }

    // Prod: the developer's jobs are refused, and told which condition failed.
    let refused = world.action_exchange("acme-prod", &dev(), &[]).await.expect_err("dev branch job gets no prod token");
    assert!(denial_line(&refused).starts_with("invalid_grant (HTTP 400): no rule of org \"acme-prod\""), "{refused}");
    assert_lists(&refused, "rule \"deploy-prod\" did not match:");
    assert_lists(&refused, "- claim `ref` is `refs/heads/feature-login`; the rule wants refs/heads/main");
    assert_lists(&refused, "- claim `environment` is `staging`; the rule wants production");

    let refused = world.action_exchange("acme-prod", &dev_main(), &[]).await.expect_err("no environment, no prod");
    assert!(denial_line(&refused).starts_with("invalid_grant (HTTP 400): "), "{refused}");
    assert_lists(&refused, "- claim `environment` is absent; the rule wants production");

    // Devops gets one, and it deploys prod.
    let prod = world.granted("acme-prod", &devops(), &[]).await;
    let claims = payload(&prod);
    assert_eq!((claims["org"].as_str(), claims["ci"]["environment"].as_str()), (Some("acme-prod"), Some("production")));
    platform.deploy("acme-prod", "web", &prod).await.ok();
}

// ---------------------------------------------------------------------------
// 3. A read-only `metrics:read` token for a Grafana-like consumer.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_3_a_grafana_metrics_token_reads_metrics_and_nothing_else() {
    let world = World::start(&[("acme-prod", ACME_PROD)]).await;
    let platform = &world.platform;
    let grafana = || world.job("acme/grafana-sync").environment("production");

    let answer = world.action_exchange("acme-prod", &grafana(), &["--permissions", "metrics:read"]).await;
    let answer = answer.unwrap_or_else(|e| panic!("granted: {e}"));
    assert_eq!(answer["permissions"], json!(["metrics:read"]));
    assert_eq!(answer["rule"], "grafana");
    let token = answer["token"].as_str().expect("token");

    let metrics = platform.metrics("acme-prod", token).await;
    assert_eq!(metrics.ok()["apps"]["web"], json!({"version": 0}));

    platform.deploy("acme-prod", "web", token).await.forbidden("token lacks permission deploy (has metrics:read)");
    platform.logs("acme-prod", "web", token).await.forbidden("token lacks permission logs:read (has metrics:read)");
    platform
        .exec("acme-prod", "vm-prod-1", token)
        .await
        .forbidden("token lacks permission machines:exec (has metrics:read)");

    // Nor can the Grafana job obtain more than its rule grants.
    let refused = world
        .action_exchange("acme-prod", &grafana(), &["--permissions", "metrics:read,deploy"])
        .await
        .expect_err("no deploy for grafana");
    assert!(denial_line(&refused).starts_with("invalid_scope (HTTP 400): "), "{refused}");
    assert_lists(&refused, "rule \"grafana\" matched the caller but not the request:");
}

// ---------------------------------------------------------------------------
// 4. A `logs:read` token for log shipping.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_4_a_log_shipping_token_reads_logs_only() {
    let world = World::start(&[("acme-prod", ACME_PROD)]).await;
    let platform = &world.platform;
    let shipper = || world.job("acme/log-shipper").environment("production");

    let token = world.granted("acme-prod", &shipper(), &["--permissions", "logs:read"]).await;
    assert_eq!(payload(&token)["scope"], "logs:read");
    for app in ["web", "billing"] {
        let logs = platform.logs("acme-prod", app, &token).await;
        assert_eq!(logs.ok()["lines"], json!([format!("{app}: created")]));
    }
    platform.deploy("acme-prod", "web", &token).await.forbidden("token lacks permission deploy (has logs:read)");
    platform.metrics("acme-prod", &token).await.forbidden("token lacks permission metrics:read (has logs:read)");
    platform
        .exec("acme-prod", "vm-prod-1", &token)
        .await
        .forbidden("token lacks permission machines:exec (has logs:read)");

    // A forwarder for one app asks for just that app.
    let web_only = world.granted("acme-prod", &shipper(), &["--permissions", "logs:read", "--apps", "web"]).await;
    platform.logs("acme-prod", "web", &web_only).await.ok();
    platform.logs("acme-prod", "billing", &web_only).await.forbidden("token is limited to apps web; not billing");
}

// ---------------------------------------------------------------------------
// 5. A consultant's client org gets tokens only for that client's org,
//    never the consultant's other orgs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_5_a_consultants_client_never_reaches_the_consultants_other_orgs() {
    let world = World::start(&[("globex", GLOBEX), ("initech", INITECH)]).await;
    let platform = &world.platform;
    let client_job = || world.job("globex/shop").environment("production");

    // The client's repository gets globex tokens.
    let globex = world.granted("globex", &client_job(), &[]).await;
    platform.deploy("globex", "shop", &globex).await.ok();

    // At exchange: initech's policy does not know globex, so the client's
    // job is refused without learning anything about initech's rules.
    let refused = world.action_exchange("initech", &client_job(), &[]).await.expect_err("globex gets no initech token");
    let line = denial_line(&refused);
    assert!(
        line.starts_with(
            "invalid_grant (HTTP 400): no trust policy of org \"initech\" grants this identity; the org's admins can see why in the audit log (request id "
        ),
        "{refused}"
    );
    assert!(!refused.contains("rule \""), "initech's rules stay private: {refused}");
    // initech's admins see the attempt, with the full explanation.
    let audit = world.audit("initech").await;
    let attempt = audit.iter().find(|r| r["repository"] == "globex/shop").expect("the attempt is audited");
    assert_eq!(attempt["outcome"], "denied", "{attempt:#}");

    // At the platform: a globex token reaches nothing of initech.
    let refusal = "token is for org globex, not initech";
    platform.deploy("initech", "tps", &globex).await.forbidden(refusal);
    platform.logs("initech", "tps", &globex).await.forbidden(refusal);
    platform.metrics("initech", &globex).await.forbidden(refusal);
    platform.exec("initech", "vm-initech-1", &globex).await.forbidden(refusal);

    // The consultant's own deploy kit is trusted by both clients, one org
    // per token: its globex token still cannot touch initech, and the
    // reverse.
    let kit = || world.job("pat-consulting/deploy-kit");
    let kit_globex = world.granted("globex", &kit(), &[]).await;
    let kit_initech = world.granted("initech", &kit(), &[]).await;
    platform.deploy("globex", "shop", &kit_globex).await.ok();
    platform.deploy("initech", "tps", &kit_initech).await.ok();
    platform.deploy("initech", "tps", &kit_globex).await.forbidden("token is for org globex, not initech");
    platform.deploy("globex", "shop", &kit_initech).await.forbidden("token is for org initech, not globex");
}

// ---------------------------------------------------------------------------
// 6. A contributor's PR that edits the workflow cannot obtain a prod token.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_6_a_pull_request_that_edits_the_workflow_gets_no_prod_token() {
    let world = World::start(&[("acme-prod", ACME_PROD), ("acme-staging", ACME_STAGING)]).await;
    let deploy = ["--permissions", "deploy"];

    // The edited workflow runs on the PR's merge ref, without the protected
    // environment (GitHub does not give it to a PR).
    let pr = || world.job("acme/web").pull_request(7, "evil-workflow");
    let refused = world.action_exchange("acme-prod", &pr(), &deploy).await.expect_err("pull_request");
    assert!(denial_line(&refused).starts_with("invalid_grant (HTTP 400): "), "{refused}");
    assert_lists(&refused, "- claim `ref` is `refs/pull/7/merge`; the rule wants refs/heads/main");
    assert_lists(&refused, "- claim `environment` is absent; the rule wants production");

    // Even if the edited workflow names the environment (protection
    // misconfigured), the merge ref is refused.
    let pr_in_env = || world.job("acme/web").pull_request(7, "evil-workflow").environment("production");
    let refused = world.action_exchange("acme-prod", &pr_in_env(), &deploy).await.expect_err("pull_request + env");
    assert_lists(&refused, "- claim `ref` is `refs/pull/7/merge`; the rule wants refs/heads/main");

    // pull_request_target runs in the base branch's context (main, and it
    // may name the environment): everything else matches, the event alone
    // is refused.
    let target = || world.job("acme/web").event_name("pull_request_target").environment("production");
    let refused = world.action_exchange("acme-prod", &target(), &deploy).await.expect_err("pull_request_target");
    assert!(denial_line(&refused).starts_with("invalid_grant (HTTP 400): "), "{refused}");
    assert_lists(
        &refused,
        "- event `pull_request_target` can run privileged workflows on behalf of people without write access; the rule would have to list it in `allow_events`",
    );
    // The PR gets no staging token either.
    world.action_exchange("acme-staging", &pr(), &deploy).await.expect_err("no staging token for a PR");

    // No prod token ever existed: the audit has three denials, no grant.
    let audit = world.audit("acme-prod").await;
    let outcomes: Vec<&str> = audit.iter().map(|r| r["outcome"].as_str().expect("outcome")).collect();
    assert_eq!(outcomes, ["denied", "denied", "denied"], "{audit:#?}");
}

// ---------------------------------------------------------------------------
// 7. A token for exactly one VM, handed to one party.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_7_a_one_machine_token_reaches_that_machine_only() {
    let world = World::start(&[("acme-prod", ACME_PROD)]).await;
    let platform = &world.platform;
    let ops = world.granted("acme-prod", &world.job("acme/ops").environment("production"), &[]).await;
    let ops_jti = payload(&ops)["jti"].as_str().expect("jti").to_owned();

    // The holder narrows it to one machine for ten minutes with the CLI.
    let run = world
        .writ(
            None,
            &["token", "narrow", &ops, "--permissions", "machines:exec", "--machines", "vm-prod-1", "--ttl", "10m"],
        )
        .await;
    run.expect_code(0);
    let vm = run.stdout.trim().to_owned();
    let claims = payload(&vm);
    assert_eq!(claims["machines"], json!(["vm-prod-1"]));
    assert_eq!(claims["parent"], json!(ops_jti));
    assert!(claims["exp"].as_i64() <= Some(now() + 600), "{claims:#}");

    // The third party runs commands on that machine...
    let out = platform.exec("acme-prod", "vm-prod-1", &vm).await;
    assert!(out.ok()["output"].as_str().expect("output").starts_with("(simulated) uptime on vm-prod-1"));
    // ...and nothing else.
    platform
        .exec("acme-prod", "vm-prod-2", &vm)
        .await
        .forbidden("token is limited to machines vm-prod-1; not vm-prod-2");
    platform.exec("acme-staging", "vm-staging-1", &vm).await.forbidden("token is for org acme-prod, not acme-staging");
    platform.deploy("acme-prod", "web", &vm).await.forbidden("token lacks permission deploy (has machines:exec)");
    platform.metrics("acme-prod", &vm).await.forbidden("token lacks permission metrics:read (has machines:exec)");

    // Nor can the third party widen it again (RFC 8693 form).
    let (status, body) = world.narrow_form(&vm, &[("resource", "machine:vm-prod-2")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body:#}");
    assert_eq!(
        body["error_description"],
        "the token is limited to machines [\"vm-prod-1\"]; a narrowed token cannot add machine \"vm-prod-2\""
    );
}

// ---------------------------------------------------------------------------
// 8. A holder narrows a token (fewer permissions, one app, shorter life)
//    and hands the narrower one on; it never gets wider.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_8_a_narrowed_token_handed_on_is_never_wider() {
    let world = World::start(&[("acme-prod", ACME_PROD)]).await;
    let platform = &world.platform;
    let parent = world.granted("acme-prod", &world.job("acme/web").environment("production"), &[]).await;
    let parent_claims = payload(&parent);
    assert_eq!(parent_claims["scope"], "deploy logs:read");
    assert_eq!(parent_claims["apps"], json!(["web", "billing"]));

    // Fewer permissions, one app, five minutes.
    let run = world
        .writ(None, &["token", "narrow", &parent, "--permissions", "logs:read", "--apps", "web", "--ttl", "5m"])
        .await;
    run.expect_code(0);
    let child = run.stdout.trim().to_owned();
    let claims = payload(&child);
    assert_eq!((claims["scope"].as_str(), &claims["apps"]), (Some("logs:read"), &json!(["web"])));
    let exp = claims["exp"].as_i64().expect("exp");
    assert!(exp < parent_claims["exp"].as_i64().expect("exp") && exp - claims["iat"].as_i64().expect("iat") <= 300);

    // The recipient reads web's logs and nothing more.
    platform.logs("acme-prod", "web", &child).await.ok();
    platform.logs("acme-prod", "billing", &child).await.forbidden("token is limited to apps web; not billing");
    platform.deploy("acme-prod", "web", &child).await.forbidden("token lacks permission deploy (has logs:read)");

    // Widening attempts, each refused with its reason.
    let run = world.writ(None, &["token", "narrow", &child, "--permissions", "deploy"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("invalid_scope"), "{}", run.stderr);
    let run = world.writ(None, &["token", "narrow", &child, "--apps", "billing"]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("invalid_target"), "{}", run.stderr);
    let (status, body) = world.narrow_form(&child, &[("scope", "logs:read deploy")]).await;
    assert_eq!(
        (status, &body["error"], &body["error_description"]),
        (
            400,
            &json!("invalid_scope"),
            &json!(
                "the token does not carry permission \"deploy\"; a narrowed token keeps only permissions of its parent"
            )
        )
    );
    let (status, body) = world.narrow_form(&child, &[("audience", "acme-staging")]).await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_target")), "{body:#}");
    assert_eq!(
        body["error_description"],
        "the token is for org \"acme-prod\"; a narrowed token stays in that org and cannot be for \"acme-staging\""
    );
    // A longer life is cut to the holder's own.
    let (status, body) = world.narrow_form(&child, &[("ttl", "2h")]).await;
    assert_eq!(status, 200, "{body:#}");
    let longer = payload(body["access_token"].as_str().expect("access_token"));
    assert_eq!(longer["exp"].as_i64(), Some(exp), "never past the holder's expiry");

    // Handed on again: the next holder narrows once more, shorter still.
    let (status, body) = world.narrow_form(&child, &[("ttl", "1m")]).await;
    assert_eq!(status, 200, "{body:#}");
    let grandchild = body["access_token"].as_str().expect("access_token");
    assert_eq!(payload(grandchild)["parent"], claims["jti"]);
    assert!(body["expires_in"].as_i64() <= Some(60), "{body:#}");
    platform.logs("acme-prod", "web", grandchild).await.ok();

    // Narrowing consumed nothing: the parent keeps its scope.
    platform.deploy("acme-prod", "billing", &parent).await.ok();
}

// ---------------------------------------------------------------------------
// 9. A revoked token is refused by the platform within the feed interval.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_9_a_revoked_token_is_refused_by_the_platform_within_the_feed_interval() {
    let world = World::start(&[("acme-prod", ACME_PROD)]).await;
    let platform = &world.platform;
    let token = world.granted("acme-prod", &world.job("acme/web").environment("production"), &[]).await;
    let jti = payload(&token)["jti"].as_str().expect("jti").to_owned();
    let run = world.writ(None, &["token", "narrow", &token, "--permissions", "logs:read", "--apps", "web"]).await;
    run.expect_code(0);
    let child = run.stdout.trim().to_owned();
    let child_jti = payload(&child)["jti"].as_str().expect("jti").to_owned();
    platform.logs("acme-prod", "web", &token).await.ok();
    platform.logs("acme-prod", "web", &child).await.ok();

    // The org admin revokes it in an incident, with the admin token the
    // org's infra repository gets by OIDC exchange (GitOps, no stored secret).
    let admin = world.granted("acme-prod", &world.job("acme/infra"), &[]).await;
    assert_eq!(payload(&admin)["aud"], json!(format!("{}/admin", world.url)));
    let run =
        world.writ(Some(&admin), &["token", "revoke", "--org", "acme-prod", "--jti", &jti, "--reason", "leaked"]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("revoked 2 token(s)"), "{}", run.stdout);

    // The platform follows writ's feed on writ's schedule (poll_after_s,
    // REVOCATION_POLL_SECS); within that interval (plus slack for a busy
    // machine) both tokens are refused.
    let deadline = Instant::now() + Duration::from_secs(REVOCATION_POLL_SECS + 30);
    loop {
        let answer = platform.logs("acme-prod", "web", &token).await;
        if answer.status != 200 {
            answer.unauthorized(&format!("token {jti} was revoked"));
            break;
        }
        assert!(Instant::now() < deadline, "the platform still accepts the revoked token");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    platform.logs("acme-prod", "web", &child).await.unauthorized(&format!("token {child_jti} was revoked"));
    let health = platform.health().await;
    assert_eq!(health["revocation_feed"]["revoked_tokens"], 2, "{health:#}");
}

// ---------------------------------------------------------------------------
// 10. Signing-key rotation with no failed request.

/// How long the rotated key is published before it signs: writ's 1 h
/// scaled down, as the platform's key refresh below scales down its 15 min.
const PREPUBLICATION: Duration = Duration::from_secs(5);

/// The story drives exchanges from one repository continuously, far past
/// the default rate limit per repository: turn it off for this server.
fn rotation_config(port: u16, issuer: &writ_testkit::FakeIssuer) -> String {
    format!("{}\n[limits]\nexchanges_per_minute_per_repository = 0\n", server_config(port, issuer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_10_signing_key_rotation_fails_no_request() {
    // writ runs in process here (writ_server::app on 127.0.0.1:0): `writ
    // serve` has no rotation command, and the test must start the rotation
    // and shorten the pre-publication window.
    let issuer = FakeIssuer::start(IssuerShape::GitHub).await.expect("issuer");
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind writ");
    let port = listener.local_addr().expect("addr").port();
    let config =
        writ_server::config::Config::parse(&rotation_config(port, &issuer), dir.path(), &|_| None).expect("config");
    let max_ttl = config.tokens.max_ttl;
    let state = writ_server::app::AppState::build(config, writ_server::app::Clock::system()).await.expect("state");
    let keyring_config = KeyringConfig { prepublication: PREPUBLICATION, max_token_lifetime: max_ttl };
    let state = state
        .with_keyring(Keyring::load_or_create(state.store.as_ref(), keyring_config, now()).await.expect("keyring"));
    let app = writ_server::app::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // The platform refreshes writ's keys every second (its default is
    // 15 min against writ's 1 h pre-publication).
    let verifier = VerifierConfig {
        keys_max_age: Duration::from_secs(1),
        refresh_cooldown: Duration::from_secs(1),
        ..VerifierConfig::new(AUDIENCE)
    };
    let url = format!("http://127.0.0.1:{port}");
    let world = World::finish(issuer, url, None, dir, &[("acme-prod", ACME_PROD)], verifier).await;
    let platform = &world.platform;
    let http = reqwest::Client::new();
    let exchange = || async {
        let oidc = world.issuer.mint(&world.job("acme/web").environment("production").build());
        let r = http
            .post(format!("{}/v1/exchange", world.url))
            .json(&json!({"token": oidc, "org": "acme-prod", "permissions": ["logs:read"]}))
            .send()
            .await
            .expect("exchange");
        assert_eq!(r.status().as_u16(), 200, "exchanges never fail during the rotation");
        let body: Value = r.json().await.expect("JSON");
        body["token"].as_str().expect("token").to_owned()
    };

    // A token signed with the old key, used throughout.
    let old_token = world.granted("acme-prod", &world.job("acme/web").environment("production"), &[]).await;
    let old_kid = header(&old_token)["kid"].as_str().expect("kid").to_owned();
    platform.logs("acme-prod", "web", &old_token).await.ok();

    let new_kid = state.keyring.rotate(state.store.as_ref(), now()).await.expect("rotate");
    let jwks: Value =
        reqwest::get(format!("{}/.well-known/jwks.json", world.url)).await.expect("jwks").json().await.expect("json");
    let kids: Vec<&str> = jwks["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()], "both published, the new one first");

    // Requests without pause, fresh tokens and the old one, until tokens
    // signed with the new key have been accepted a few times.
    let mut by_kid: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let deadline = Instant::now() + PREPUBLICATION + Duration::from_secs(60);
    while by_kid.get(&new_kid).copied().unwrap_or(0) < 20 {
        assert!(Instant::now() < deadline, "writ never signed with the new key: {by_kid:?}");
        let token = exchange().await;
        let kid = header(&token)["kid"].as_str().expect("kid").to_owned();
        for (what, answer) in [
            (kid.clone(), platform.logs("acme-prod", "web", &token).await),
            (format!("old token ({old_kid})"), platform.logs("acme-prod", "web", &old_token).await),
        ] {
            if answer.status != 200 {
                failures.push((what, answer));
            }
        }
        *by_kid.entry(kid).or_default() += 1;
    }
    eprintln!("requests per signing key: {by_kid:?}");
    assert!(failures.is_empty(), "failed requests during the rotation: {failures:#?}");
    // The first exchange came right after the rotation, well inside the
    // pre-publication window: the old key still signed it.
    assert!(by_kid.get(&old_kid).copied().unwrap_or(0) > 0, "the old key signed during pre-publication: {by_kid:?}");
    assert_eq!(by_kid.len(), 2, "only the two keys signed: {by_kid:?}");
    assert_eq!(platform.verifier.key_ids(), {
        let mut both = vec![new_kid.clone(), old_kid.clone()];
        both.sort();
        both
    });
    server.abort();
}

// ---------------------------------------------------------------------------
// Under every story: the platform accepts only what writ minted for it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_refuses_tokens_writ_did_not_mint_for_it() {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::Ed25519KeyPair;
    use writ_core::token::{SigningKey, WritClaims, mint};

    let world = World::start(&[("acme-prod", ACME_PROD)]).await;
    let platform = &world.platform;
    let job = world.job("acme/web").environment("production");
    let real = world.granted("acme-prod", &job, &["--permissions", "logs:read", "--apps", "web"]).await;
    platform.logs("acme-prod", "web", &real).await.ok();

    // The CI job's own OIDC ID token, however valid, is not a writ token.
    let oidc = world.issuer.mint(&world.job("acme/web").environment("production").build());
    platform.logs("acme-prod", "web", &oidc).await.unauthorized(
        "token is not a writ access token: its typ is not at+jwt (an oidc id token or another kind of jwt?)",
    );

    // Claims widened and signed with an outside key under writ's kid.
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
    let kid = header(&real)["kid"].as_str().expect("kid").to_owned();
    let outside = SigningKey::from_pkcs8_der(kid, der.as_ref()).expect("key");
    let mut claims: WritClaims = serde_json::from_value(payload(&real)).expect("writ claims");
    claims.scope = "deploy logs:read".to_owned();
    claims.apps = None;
    let forged = mint(&claims, &outside).expect("mint");
    platform.deploy("acme-prod", "billing", &forged).await.unauthorized("token signature does not verify");

    // writ's own admin token is for writ, not for the platform.
    let admin = world.granted("acme-prod", &world.job("acme/infra"), &[]).await;
    platform
        .logs("acme-prod", "web", &admin)
        .await
        .unauthorized(&format!("token is for audience {}/admin, not {AUDIENCE}", world.url));
}

// ---------------------------------------------------------------------------
// Found while writing story 8: narrowing adds a machine to an app-limited
// token. writ-verify reads a token that names apps but no machines as
// reaching no machine; writ_core::narrow reads the absent `machines` as
// "unrestricted" and lets the child add any machine, which the platform
// then lets it reach. The result is wider than the input.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_never_adds_a_machine_to_an_app_limited_token() {
    let world = World::start(&[("acme-prod", ACME_PROD)]).await;
    let platform = &world.platform;
    let ops = world.granted("acme-prod", &world.job("acme/ops").environment("production"), &[]).await;

    // Limited to app web: it reaches no machine.
    let run = world.writ(None, &["token", "narrow", &ops, "--apps", "web"]).await;
    run.expect_code(0);
    let app_only = run.stdout.trim().to_owned();
    platform
        .exec("acme-prod", "vm-prod-1", &app_only)
        .await
        .forbidden("token is limited to apps web; not machine vm-prod-1");

    // So narrowing it must not make a token that reaches vm-prod-1.
    let (status, body) = world.narrow_form(&app_only, &[("resource", "machine:vm-prod-1")]).await;
    if status == 200 {
        let child = body["access_token"].as_str().expect("access_token");
        let claims = payload(child);
        let answer = platform.exec("acme-prod", "vm-prod-1", child).await;
        panic!(
            "narrowing widened the token: the child has apps {} and machines {}, and the platform answers {} to \
             exec on vm-prod-1, which its parent could not reach",
            claims["apps"], claims["machines"], answer.status
        );
    }
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body:#}");
}
