//! The backend-independent test suite of [`Storage`]. Every backend runs
//! each case against a fresh, empty store of its own: its test module
//! passes a runner macro to [`all_cases!`] (`suite_tests!` in `sqlite.rs`,
//! `postgres_suite!` in `postgres.rs`), so a case added here runs against
//! every backend. A new backend is done when it passes all of them.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretSlice};
use serde_json::json;
use uuid::{NoContext, Timestamp, Uuid};

use super::{
    AuditQuery, AuditRecord, ExchangeRecord, IssuedToken, JTI_RETENTION_LEEWAY_SECS, ManagedBy, NarrowRecord, NewOrg,
    NewPolicy, Outcome, Pin, PinKind, PolicyFormat, Revocation, RevocationTarget, Storage, StorageError,
    StoredSigningKey, UsedJti,
};

/// Calls `$runner!(case, …)` with every case of the suite.
macro_rules! all_cases {
    ($runner:ident) => {
        $runner!(
            ping_answers,
            policy_versions_history_and_conflict,
            list_policies_returns_latest_of_each_org,
            exchange_writes_everything,
            a_token_its_audit_row_holds_reads_back_whole,
            replayed_jti_is_refused_and_nothing_else_written,
            pin_conflict_rolls_back_jti_and_audit,
            pins_are_case_insensitive_and_per_issuer,
            denial_does_not_consume_jti,
            purge_keeps_unexpired_jtis,
            signing_keys_round_trip,
            audit_round_trips_every_field_newest_first,
            concurrent_exchanges_of_one_jti_exactly_one_succeeds,
            orgs_are_created_once_and_policies_count_as_orgs,
            audit_query_filters_and_pages_newest_first,
            revocation_targets_stay_inside_their_org,
            revoking_a_token_revokes_its_narrowed_descendants,
            narrowing_a_revoked_token_writes_nothing,
            revocation_feed_is_ordered_paged_and_drops_expired,
            concurrent_revocations_count_each_token_once,
            gitlab_pins_are_recorded,
            revocation_feed_never_skips_with_concurrent_revokers,
            narrowing_racing_a_revocation_never_leaves_a_live_child,
            concurrent_policy_writes_get_distinct_versions,
        );
    };
}
pub(crate) use all_cases;

/// The subject tokens' issuer in every case.
pub(crate) const ISSUER: &str = "https://token.actions.githubusercontent.com";

/// A TOML, API-managed policy version.
pub(crate) fn new_policy(org: &str, source: &str, expected_version: Option<i64>) -> NewPolicy {
    NewPolicy {
        org: org.into(),
        source: source.into(),
        format: PolicyFormat::Toml,
        managed_by: ManagedBy::Api,
        author: Some("github:repo:acme/infra".into()),
        expected_version,
    }
}

/// An audit record whose id sorts by `time` (for times after the epoch).
fn audit(org: &str, time: i64, outcome: Outcome) -> AuditRecord {
    let mut a = AuditRecord::new(time, format!("req-{time}"), org, outcome);
    let secs = u64::try_from(time).unwrap_or(0);
    a.id = Uuid::new_v7(Timestamp::from_unix(NoContext, secs, 0));
    a
}

fn pin(kind: PinKind, name: &str, id: &str) -> Pin {
    Pin { issuer: ISSUER.into(), kind, name: name.into(), id: id.into(), created_at: 5 }
}

/// A granted exchange of subject token `subject_jti` (expiring at
/// `exp`) into writ token `token_jti`, pinning `acme` and `acme/web`.
pub(crate) fn exchange(subject_jti: &str, token_jti: &str, exp: i64) -> ExchangeRecord {
    exchange_with_pins(
        subject_jti,
        token_jti,
        exp,
        vec![pin(PinKind::Owner, "acme", "1"), pin(PinKind::Repository, "acme/web", "10")],
    )
}

fn exchange_with_pins(subject_jti: &str, token_jti: &str, exp: i64, pins: Vec<Pin>) -> ExchangeRecord {
    let mut a = audit("acme", exp - 300, Outcome::Granted);
    a.rule = Some("deploy-web".into());
    a.issuer = Some(ISSUER.into());
    a.subject_jti = Some(subject_jti.into());
    a.repository = Some("acme/web".into());
    a.granted_permissions = vec!["deploy".into()];
    a.token_jti = Some(token_jti.into());
    a.token_expires_at = Some(exp);
    ExchangeRecord {
        used_jti: UsedJti::new(ISSUER, subject_jti, exp),
        new_pins: pins,
        issued: IssuedToken {
            jti: token_jti.into(),
            org: "acme".into(),
            subject: "github:repo:acme/web:ref:refs/heads/main".into(),
            repository: Some("acme/web".into()),
            run_id: Some("42".into()),
            rule: "deploy-web".into(),
            issued_at: exp - 300,
            expires_at: exp,
        },
        audit: a,
    }
}

/// An exchange's record as the exchange makes it: the token's jti is
/// [`held`]`(token)`, its grant's audit id, and the audit record agrees
/// with the issued token in everything.
pub(crate) fn exchange_as_made(subject_jti: &str, token: &str, exp: i64) -> ExchangeRecord {
    let mut rec = exchange(subject_jti, &held(token), exp);
    rec.new_pins.clear();
    rec.audit.id = Uuid::parse_str(&rec.issued.jti).expect("a held jti is a UUID");
    rec.audit.issuer = Some("github".into());
    rec.audit.subject = Some("repo:acme/web:ref:refs/heads/main".into());
    rec.audit.run_id = Some("42".into());
    rec.audit.time = rec.issued.issued_at;
    rec
}

fn signing_key(kid: &str, activates_at: i64) -> StoredSigningKey {
    StoredSigningKey {
        kid: kid.into(),
        algorithm: "EdDSA".into(),
        private_pkcs8: SecretSlice::from(kid.as_bytes().repeat(3)),
        public_key: format!("public-{kid}").into_bytes(),
        created_at: activates_at - 10,
        activates_at,
    }
}

/// Every field of a stored key, the secret exposed, for comparison.
fn flat(k: &StoredSigningKey) -> (String, String, Vec<u8>, Vec<u8>, i64, i64) {
    (
        k.kid.clone(),
        k.algorithm.clone(),
        k.private_pkcs8.expose_secret().to_vec(),
        k.public_key.clone(),
        k.created_at,
        k.activates_at,
    )
}

fn pin_keys() -> Vec<(PinKind, String)> {
    vec![(PinKind::Owner, "acme".into()), (PinKind::Repository, "acme/web".into())]
}

pub(crate) async fn ping_answers(store: Arc<dyn Storage>) {
    store.ping().await.expect("a fresh store answers");
}

pub(crate) async fn policy_versions_history_and_conflict(store: Arc<dyn Storage>) {
    assert_eq!(store.get_policy("acme").await.expect("get"), None);

    let v1 = store.put_policy(new_policy("acme", "one", Some(0)), 100).await.expect("v1");
    assert_eq!((v1.version, v1.created_at), (1, 100));
    let v2 = store.put_policy(new_policy("acme", "two", Some(1)), 200).await.expect("v2");
    assert_eq!(v2.version, 2);

    // A writer that read v1 loses against the one that wrote v2.
    let stale = store.put_policy(new_policy("acme", "stale", Some(1)), 300).await;
    assert!(matches!(stale, Err(StorageError::VersionConflict { current: 2 })), "{stale:?}");
    // "Create" (expected 0) of an existing policy conflicts too.
    let create = store.put_policy(new_policy("acme", "again", Some(0)), 300).await;
    assert!(matches!(create, Err(StorageError::VersionConflict { current: 2 })), "{create:?}");

    // Unconditional writes (file-managed reloads) just append.
    let mut file = new_policy("acme", "three", None);
    file.managed_by = ManagedBy::File;
    file.format = PolicyFormat::Json;
    file.author = None;
    let v3 = store.put_policy(file, 400).await.expect("v3");
    assert_eq!(v3.version, 3);

    assert_eq!(store.get_policy("acme").await.expect("get"), Some(v3.clone()));
    let history = store.policy_history("acme").await.expect("history");
    assert_eq!(history, vec![v1, v2, v3], "history is kept, oldest first; conflicts wrote nothing");
    assert!(store.policy_history("other").await.expect("history").is_empty());
}

pub(crate) async fn list_policies_returns_latest_of_each_org(store: Arc<dyn Storage>) {
    store.put_policy(new_policy("beta", "b1", None), 1).await.expect("put");
    store.put_policy(new_policy("acme", "a1", None), 2).await.expect("put");
    store.put_policy(new_policy("acme", "a2", None), 3).await.expect("put");
    let latest: Vec<(String, i64, String)> =
        store.list_policies().await.expect("list").into_iter().map(|p| (p.org, p.version, p.source)).collect();
    assert_eq!(latest, vec![("acme".into(), 2, "a2".into()), ("beta".into(), 1, "b1".into())]);
}

pub(crate) async fn exchange_writes_everything(store: Arc<dyn Storage>) {
    let rec = exchange("subject-1", "token-1", 1_000);
    store.record_exchange(rec.clone()).await.expect("exchange");

    assert_eq!(store.audit_recent("acme", 10).await.expect("audit"), vec![rec.audit.clone()]);
    assert_eq!(store.get_issued_token("acme", "token-1").await.expect("issued"), Some(rec.issued.clone()));
    assert_eq!(store.get_issued_token("beta", "token-1").await.expect("issued"), None, "another org's token");
    let pins = store.get_pins(ISSUER, &pin_keys()).await.expect("pins");
    assert_eq!(pins, rec.new_pins);
}

/// The exchange's own shape: the token's jti is its grant's audit id, and
/// the audit record says everything the issued token does. A backend may
/// keep such a token as that row (SQLite does); either way it reads back
/// whole, for its org only, and a record the audit row does not hold (a
/// rule that differs) is kept whole too.
pub(crate) async fn a_token_its_audit_row_holds_reads_back_whole(store: Arc<dyn Storage>) {
    let token = issued(&held("t-1"), "acme", "acme/web", "7", "deploy-web", 2_000);
    grant(&store, token.clone()).await;
    assert_eq!(store.get_issued_token("acme", &token.jti).await.expect("issued"), Some(token.clone()));
    assert_eq!(store.get_issued_token("beta", &token.jti).await.expect("issued"), None, "another org's token");
    assert_eq!(store.get_issued_token("acme", &held("t-2")).await.expect("issued"), None, "never issued");
    let audit = store.audit_recent("acme", 10).await.expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].id.to_string(), audit[0].token_jti.clone()), (token.jti.clone(), Some(token.jti.clone())));

    let mut rec = exchange_as_made("subject-3", "t-3", 2_000);
    assert!(rec.audit_holds_issued(), "{rec:?}");
    rec.issued.rule = "another-rule".into();
    assert!(!rec.audit_holds_issued());
    store.record_exchange(rec.clone()).await.expect("exchange");
    assert_eq!(store.get_issued_token("acme", &held("t-3")).await.expect("issued"), Some(rec.issued));
    // Revocation goes by the issued token's rule, not by its audit row's.
    let by_rule = |rule: &str| revocation("acme", RevocationTarget::Rule(rule.into()), 1_000);
    assert_eq!(store.revoke(&by_rule("deploy-web")).await.expect("revoke"), 1);
    assert_eq!(revoked(&store, &[&token.jti, &held("t-3")]).await, [true, false]);
    assert_eq!(store.revoke(&by_rule("another-rule")).await.expect("revoke"), 1);
}

pub(crate) async fn replayed_jti_is_refused_and_nothing_else_written(store: Arc<dyn Storage>) {
    store.record_exchange(exchange("subject-1", "token-1", 1_000)).await.expect("first use");

    let mut replay = exchange("subject-1", "token-2", 1_000);
    replay.new_pins.push(pin(PinKind::Owner, "evil", "666"));
    replay.audit.time += 1;
    let result = store.record_exchange(replay).await;
    assert!(matches!(result, Err(StorageError::Replay)), "{result:?}");

    assert_eq!(store.audit_recent("acme", 10).await.expect("audit").len(), 1, "no audit");
    assert_eq!(store.get_issued_token("acme", "token-2").await.expect("issued"), None, "no token");
    let evil = store.get_pins(ISSUER, &[(PinKind::Owner, "evil".into())]).await.expect("pins");
    assert!(evil.is_empty(), "no pins");

    // jtis are unique per issuer only: the same jti from another issuer is
    // another token.
    let mut other = exchange("subject-1", "token-3", 1_000);
    other.used_jti.issuer = "https://gitlab.com".into();
    other.new_pins.clear();
    store.record_exchange(other).await.expect("same jti, other issuer");
}

pub(crate) async fn pin_conflict_rolls_back_jti_and_audit(store: Arc<dyn Storage>) {
    store.record_exchange(exchange("subject-1", "token-1", 1_000)).await.expect("pins acme/web=10");

    // acme/web deleted and re-created by someone else: new id, same name.
    let recreated = exchange_with_pins(
        "subject-2",
        "token-2",
        2_000,
        vec![pin(PinKind::Owner, "acme", "1"), pin(PinKind::Repository, "acme/web", "11")],
    );
    match store.record_exchange(recreated).await {
        Err(StorageError::PinConflict { kind, name, pinned_id, presented_id }) => {
            assert_eq!(
                (kind, name.as_str(), pinned_id.as_str(), presented_id.as_str()),
                (PinKind::Repository, "acme/web", "10", "11")
            );
        }
        other => panic!("expected a pin conflict, got {other:?}"),
    }
    assert_eq!(store.audit_recent("acme", 10).await.expect("audit").len(), 1, "audit rolled back");
    assert_eq!(store.get_issued_token("acme", "token-2").await.expect("issued"), None);
    let pins = store.get_pins(ISSUER, &pin_keys()).await.expect("pins");
    assert!(pins.iter().all(|p| p.id != "11"), "pin unchanged: {pins:?}");

    // The jti was rolled back too: the same subject token still works for a
    // request that does not conflict.
    store
        .record_exchange(exchange("subject-2", "token-2", 2_000))
        .await
        .expect("jti of the conflicting attempt was not consumed");
}

pub(crate) async fn pins_are_case_insensitive_and_per_issuer(store: Arc<dyn Storage>) {
    let rec = exchange_with_pins("subject-1", "token-1", 1_000, vec![pin(PinKind::Repository, "Acme/Web", "10")]);
    store.record_exchange(rec).await.expect("exchange");

    let found = store
        .get_pins(ISSUER, &[(PinKind::Repository, "ACME/web".into()), (PinKind::Owner, "acme".into())])
        .await
        .expect("pins");
    assert_eq!(found, vec![Pin { name: "acme/web".into(), ..pin(PinKind::Repository, "x", "10") }]);

    let elsewhere =
        store.get_pins("https://ghe.example.com", &[(PinKind::Repository, "acme/web".into())]).await.expect("pins");
    assert!(elsewhere.is_empty(), "pins are per issuer");

    // Presenting an existing pin again (any case) is not a conflict.
    let again = exchange_with_pins("subject-2", "token-2", 1_000, vec![pin(PinKind::Repository, "ACME/WEB", "10")]);
    store.record_exchange(again).await.expect("same id is fine");
}

pub(crate) async fn denial_does_not_consume_jti(store: Arc<dyn Storage>) {
    let mut denied = audit("acme", 500, Outcome::Denied);
    denied.error = Some("invalid_grant".into());
    denied.issuer = Some(ISSUER.into());
    denied.subject_jti = Some("subject-1".into());
    store.record_denial(denied.clone()).await.expect("denial");

    let granted = exchange("subject-1", "token-1", 1_000);
    store.record_exchange(granted.clone()).await.expect("the denied token can still be exchanged");

    let recent = store.audit_recent("acme", 10).await.expect("audit");
    assert_eq!(recent, vec![granted.audit, denied], "both decisions audited, newest first");
}

pub(crate) async fn purge_keeps_unexpired_jtis(store: Arc<dyn Storage>) {
    let old = exchange("old", "token-old", 100);
    assert_eq!(old.used_jti.expires_at, 100 + JTI_RETENTION_LEEWAY_SECS, "retention adds leeway");
    store.record_exchange(old).await.expect("old");
    store.record_exchange(exchange("new", "token-new", 200)).await.expect("new");

    // At exactly exp + leeway the token might still verify: keep it.
    assert_eq!(store.purge_expired(100 + JTI_RETENTION_LEEWAY_SECS).await.expect("purge"), 0);
    assert_eq!(store.purge_expired(100 + JTI_RETENTION_LEEWAY_SECS + 1).await.expect("purge"), 1);

    let kept = store.record_exchange(exchange("new", "token-new-2", 200)).await;
    assert!(matches!(kept, Err(StorageError::Replay)), "unexpired jti kept: {kept:?}");
    store.record_exchange(exchange("old", "token-old-2", 100)).await.expect("purged jti is forgotten");
    // Purging touched only replay records.
    assert_eq!(store.audit_recent("acme", 10).await.expect("audit").len(), 3);
}

pub(crate) async fn signing_keys_round_trip(store: Arc<dyn Storage>) {
    assert!(store.signing_keys().await.expect("keys").is_empty());
    store.insert_signing_key(signing_key("later", 200)).await.expect("insert");
    store.insert_signing_key(signing_key("earlier", 100)).await.expect("insert");

    let got: Vec<_> = store.signing_keys().await.expect("keys").iter().map(flat).collect();
    let want: Vec<_> = [signing_key("earlier", 100), signing_key("later", 200)].iter().map(flat).collect();
    assert_eq!(got, want, "ordered by activation");

    let dup = store.insert_signing_key(signing_key("later", 300)).await;
    assert!(dup.is_err(), "keys are immutable: a kid is stored once");
}

pub(crate) async fn audit_round_trips_every_field_newest_first(store: Arc<dyn Storage>) {
    let mut full = audit("acme", 300, Outcome::Denied);
    full.error = Some("invalid_scope".into());
    full.rule = Some("deploy-web".into());
    full.issuer = Some(ISSUER.into());
    full.subject = Some("repo:acme/web:pull_request".into());
    full.subject_jti = Some("subject-9".into());
    full.repository = Some("acme/web".into());
    full.repository_id = Some("10".into());
    full.ref_ = Some("refs/pull/7/merge".into());
    full.environment = Some("production".into());
    full.workflow_ref = Some("acme/web/.github/workflows/deploy.yml@refs/pull/7/merge".into());
    full.run_id = Some("42".into());
    full.actor = Some("mallory".into());
    full.requested_permissions = vec!["deploy".into(), "logs:read".into()];
    full.requested_apps = vec!["web".into()];
    full.requested_machines = vec!["vm-1".into()];
    full.granted_apps = Some(vec![]);
    full.granted_machines = Some(vec!["vm-1".into()]);
    full.token_expires_at = Some(900);
    full.explanation = Some(json!([{"rule": "deploy-web", "failed": [
        {"claim": "ref", "wanted": "refs/heads/main", "got": "refs/pull/7/merge"}]}]));
    full.client_addr = Some("192.0.2.7".into());

    store.record_denial(audit("acme", 100, Outcome::Denied)).await.expect("oldest");
    store.record_denial(full.clone()).await.expect("newest");
    store.record_denial(audit("acme", 200, Outcome::Denied)).await.expect("middle");
    store.record_denial(audit("beta", 400, Outcome::Denied)).await.expect("other org");

    let recent = store.audit_recent("acme", 2).await.expect("audit");
    assert_eq!(recent.len(), 2, "limit is honoured");
    assert_eq!(recent[0], full, "every field round-trips");
    assert_eq!(recent[1].time, 200, "newest first");
    assert_eq!(store.audit_recent("beta", 10).await.expect("audit").len(), 1, "per org");
}

pub(crate) async fn concurrent_exchanges_of_one_jti_exactly_one_succeeds(store: Arc<dyn Storage>) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.record_exchange(exchange("contested", &format!("token-{i}"), 1_000)).await },
            )
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        match task.await.expect("task ran") {
            Ok(()) => granted += 1,
            Err(StorageError::Replay) => {}
            Err(other) => panic!("only replays may fail, got {other:?}"),
        }
    }
    assert_eq!(granted, 1, "exactly one exchange of a token");
    assert_eq!(store.audit_recent("acme", 20).await.expect("audit").len(), 1);
}

// ---- the admin API -----------------------------------------------------------

pub(crate) async fn orgs_are_created_once_and_policies_count_as_orgs(store: Arc<dyn Storage>) {
    assert!(!store.org_exists("acme").await.expect("exists"));
    let (org, policy) = store
        .create_org(NewOrg { org: "acme".into(), created_by: Some("root".into()) }, None, 10)
        .await
        .expect("create");
    assert_eq!((org.org.as_str(), org.created_at, org.created_by.as_deref(), policy), ("acme", 10, Some("root"), None));
    assert!(store.org_exists("acme").await.expect("exists"));
    let again = store.create_org(NewOrg { org: "acme".into(), created_by: None }, None, 11).await;
    assert!(matches!(again, Err(StorageError::AlreadyExists)), "{again:?}");

    // With a first policy: version 1, in the same transaction.
    let (_, policy) = store
        .create_org(NewOrg { org: "beta".into(), created_by: None }, Some(new_policy("beta", "b1", Some(0))), 20)
        .await
        .expect("create with policy");
    assert_eq!(policy.map(|p| (p.version, p.source)), Some((1, "b1".to_owned())));
    assert_eq!(store.get_policy("beta").await.expect("get").map(|p| p.version), Some(1));

    // An org with a policy but no registry row (file-managed) exists too.
    store.put_policy(new_policy("gamma", "g1", None), 30).await.expect("put");
    assert!(store.org_exists("gamma").await.expect("exists"));
    let clash = store.create_org(NewOrg { org: "gamma".into(), created_by: None }, None, 31).await;
    assert!(matches!(clash, Err(StorageError::AlreadyExists)), "{clash:?}");
}

pub(crate) async fn audit_query_filters_and_pages_newest_first(store: Arc<dyn Storage>) {
    for t in 1..=6 {
        let mut a = audit("acme", t * 100, if t % 2 == 0 { Outcome::Granted } else { Outcome::Denied });
        a.repository = Some(if t <= 3 { "Acme/Web" } else { "acme/api" }.into());
        a.rule = (t % 2 == 0).then(|| "deploy-web".to_owned());
        a.requested_permissions = if t == 5 { vec!["logs:read".into()] } else { vec![] };
        a.granted_permissions = if t % 2 == 0 { vec!["deploy".into()] } else { vec![] };
        store.record_denial(a).await.expect("audit");
    }
    store.record_denial(audit("beta", 350, Outcome::Granted)).await.expect("other org");
    let times = |records: Vec<AuditRecord>| records.into_iter().map(|r| r.time).collect::<Vec<_>>();
    let query = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery::new("acme", 100);
        f(&mut q);
        let store = Arc::clone(&store);
        async move { times(store.query_audit(&q).await.expect("query")) }
    };

    assert_eq!(query(&|_| {}).await, vec![600, 500, 400, 300, 200, 100], "newest first, one org");
    assert_eq!(query(&|q| q.outcome = Some(Outcome::Granted)).await, vec![600, 400, 200]);
    assert_eq!(query(&|q| q.repository = Some("ACME/web".into())).await, vec![300, 200, 100], "case-insensitive");
    assert_eq!(query(&|q| q.rule = Some("deploy-web".into())).await, vec![600, 400, 200]);
    assert_eq!(query(&|q| q.permission = Some("deploy".into())).await, vec![600, 400, 200], "granted");
    assert_eq!(query(&|q| q.permission = Some("logs:read".into())).await, vec![500], "requested");
    assert_eq!(query(&|q| (q.from, q.to) = (Some(200), Some(400))).await, vec![300, 200], "from inclusive, to not");
    let combined = query(&|q| {
        q.outcome = Some(Outcome::Denied);
        q.repository = Some("acme/api".into());
    });
    assert_eq!(combined.await, vec![500]);

    // Pages: the cursor is the last id of the previous page.
    let mut q = AuditQuery::new("acme", 4);
    let first = store.query_audit(&q).await.expect("page 1");
    assert_eq!(first.iter().map(|r| r.time).collect::<Vec<_>>(), vec![600, 500, 400, 300]);
    q.before = first.last().map(|r| r.id);
    assert_eq!(times(store.query_audit(&q).await.expect("page 2")), vec![200, 100]);
}

/// An issued token of org `org` for `repository`, run `run`, rule `rule`.
fn issued(jti: &str, org: &str, repository: &str, run: &str, rule: &str, expires_at: i64) -> IssuedToken {
    IssuedToken {
        jti: jti.into(),
        org: org.into(),
        subject: format!("github:repo:{repository}"),
        repository: Some(repository.into()),
        run_id: Some(run.into()),
        rule: rule.into(),
        issued_at: expires_at - 900,
        expires_at,
    }
}

/// The jti of a token its grant's audit row holds, as the exchange makes
/// them (the jti is the audit id, a UUID), named `name` (up to 16 bytes)
/// for whoever reads a case. The other tokens of the cases, named plainly,
/// are ones an audit row does not hold, like narrowed tokens and those a
/// version 5 SQLite file holds: the revocation cases mix both.
pub(crate) fn held(name: &str) -> String {
    assert!(name.len() <= 16, "{name:?} is longer than 16 bytes");
    let mut bytes = [0u8; 16];
    bytes.iter_mut().zip(name.bytes()).for_each(|(b, n)| *b = n);
    Uuid::from_bytes(bytes).hyphenated().to_string()
}

/// Records the exchange that issued `token`, its audit record agreeing
/// with it; the audit row holds the token when its jti is [`held`].
async fn grant(store: &Arc<dyn Storage>, token: IssuedToken) {
    let mut rec = exchange(&format!("subject-of-{}", token.jti), &token.jti, token.expires_at);
    rec.new_pins.clear();
    let a = &mut rec.audit;
    let (issuer, sub) = token.subject.split_once(':').expect("a subject is <issuer>:<sub>");
    (a.issuer, a.subject) = (Some(issuer.into()), Some(sub.into()));
    a.org = token.org.clone();
    a.time = token.issued_at;
    a.repository = token.repository.clone();
    a.run_id = token.run_id.clone();
    a.rule = Some(token.rule.clone());
    let held = Uuid::parse_str(&token.jti);
    if let Ok(id) = held {
        a.id = id;
    }
    rec.issued = token;
    assert_eq!(rec.audit_holds_issued(), held.is_ok(), "{rec:?}");
    store.record_exchange(rec).await.expect("exchange");
}

fn narrowing(parent: &str, child: IssuedToken) -> NarrowRecord {
    let mut a = audit(&child.org, child.issued_at, Outcome::Granted);
    a.subject_jti = Some(parent.into());
    a.token_jti = Some(child.jti.clone());
    NarrowRecord { parent_jti: parent.into(), issued: child, audit: a }
}

fn revocation(org: &str, target: RevocationTarget, now: i64) -> Revocation {
    Revocation { org: org.into(), target, reason: "admin".into(), revoked_by: Some("root".into()), now }
}

async fn revoked(store: &Arc<dyn Storage>, jtis: &[&str]) -> Vec<bool> {
    let mut out = Vec::new();
    for jti in jtis {
        out.push(store.is_revoked(jti).await.expect("is_revoked"));
    }
    out
}

pub(crate) async fn revocation_targets_stay_inside_their_org(store: Arc<dyn Storage>) {
    // a1, a3 and b1 are their grants' audit rows; a2 and old are not.
    let (a1, a3, b1) = (held("a1"), held("a3"), held("b1"));
    grant(&store, issued(&a1, "acme", "acme/web", "1", "deploy-web", 2_000)).await;
    grant(&store, issued("a2", "acme", "ACME/Web", "2", "deploy-web", 2_000)).await;
    grant(&store, issued(&a3, "acme", "acme/api", "3", "deploy-api", 2_000)).await;
    grant(&store, issued(&b1, "beta", "acme/web", "1", "deploy-web", 2_000)).await;
    grant(&store, issued("old", "acme", "acme/web", "4", "deploy-web", 900)).await;
    let all = [a1.as_str(), "a2", &a3, &b1, "old"];

    let n = store.revoke(&revocation("acme", RevocationTarget::Jti(b1.clone()), 1_000)).await.expect("revoke");
    assert_eq!(n, 0, "a jti of another org is not touched");
    let n = store.revoke(&revocation("acme", RevocationTarget::Repository("acme/WEB".into()), 1_000)).await;
    assert_eq!(n.expect("revoke"), 2, "both spellings, not the expired one, not org beta's");
    assert_eq!(revoked(&store, &all).await, [true, true, false, false, false]);
    let again = store.revoke(&revocation("acme", RevocationTarget::Repository("acme/web".into()), 1_001)).await;
    assert_eq!(again.expect("revoke"), 0, "already revoked tokens are not counted twice");

    let by_run = store.revoke(&revocation("beta", RevocationTarget::RunId("1".into()), 1_000)).await;
    assert_eq!(by_run.expect("revoke"), 1);
    let by_rule = store.revoke(&revocation("acme", RevocationTarget::Rule("deploy-api".into()), 1_000)).await;
    assert_eq!(by_rule.expect("revoke"), 1);
    let by_jti = store.revoke(&revocation("acme", RevocationTarget::Jti("old".into()), 1_000)).await;
    assert_eq!(by_jti.expect("revoke"), 0, "an expired token needs no revocation");
    assert_eq!(revoked(&store, &all).await, [true, true, true, true, false]);
}

pub(crate) async fn revoking_a_token_revokes_its_narrowed_descendants(store: Arc<dyn Storage>) {
    // The root is its grant's audit row, the sibling is not; narrowed
    // tokens never are.
    let root = held("root");
    grant(&store, issued(&root, "acme", "acme/web", "1", "deploy-web", 2_000)).await;
    grant(&store, issued("sibling", "acme", "acme/web", "1", "deploy-web", 2_000)).await;
    store
        .record_narrowing(narrowing(&root, issued("child", "acme", "acme/web", "1", "deploy-web", 1_900)))
        .await
        .expect("child");
    store
        .record_narrowing(narrowing("child", issued("grandchild", "acme", "acme/web", "1", "deploy-web", 1_800)))
        .await
        .expect("grandchild");
    let n = store.revoke(&revocation("acme", RevocationTarget::Jti(root.clone()), 1_000)).await.expect("revoke");
    assert_eq!(n, 3, "the token, its child and its grandchild");
    assert_eq!(revoked(&store, &[&root, "child", "grandchild", "sibling"]).await, [true, true, true, false]);

    // Revoking a child leaves its parent alone.
    store
        .record_narrowing(narrowing("sibling", issued("nephew", "acme", "acme/web", "1", "deploy-web", 1_900)))
        .await
        .expect("nephew");
    store.revoke(&revocation("acme", RevocationTarget::Jti("nephew".into()), 1_000)).await.expect("revoke");
    assert_eq!(revoked(&store, &["sibling", "nephew"]).await, [false, true]);

    // The narrowing is in the audit log, naming its parent.
    let audit = store.audit_recent("acme", 10).await.expect("audit");
    assert!(audit.iter().any(|a| a.token_jti.as_deref() == Some("child") && a.subject_jti.as_deref() == Some(&*root)));

    // A repository's tokens of both kinds, and their narrowed ones.
    let n = store.revoke(&revocation("acme", RevocationTarget::Repository("acme/web".into()), 1_000)).await;
    assert_eq!(n.expect("revoke"), 1, "only the sibling was left");
    assert_eq!(revoked(&store, &["sibling"]).await, [true]);
}

pub(crate) async fn narrowing_a_revoked_token_writes_nothing(store: Arc<dyn Storage>) {
    let parent = held("parent");
    grant(&store, issued(&parent, "acme", "acme/web", "1", "deploy-web", 2_000)).await;
    store.revoke(&revocation("acme", RevocationTarget::Jti(parent.clone()), 1_000)).await.expect("revoke");
    let before = store.audit_recent("acme", 10).await.expect("audit").len();
    let result = store.record_narrowing(narrowing(&parent, issued("child", "acme", "acme/web", "1", "r", 1_900))).await;
    assert!(matches!(result, Err(StorageError::Revoked)), "{result:?}");
    assert_eq!(store.get_issued_token("acme", "child").await.expect("issued"), None);
    assert_eq!(store.audit_recent("acme", 10).await.expect("audit").len(), before, "no audit record either");
}

pub(crate) async fn revocation_feed_is_ordered_paged_and_drops_expired(store: Arc<dyn Storage>) {
    grant(&store, issued("short", "acme", "acme/web", "1", "r", 1_100)).await;
    grant(&store, issued("long-1", "acme", "acme/web", "2", "r", 5_000)).await;
    grant(&store, issued("long-2", "beta", "beta/web", "3", "r", 5_000)).await;
    for (org, jti) in [("acme", "short"), ("acme", "long-1"), ("beta", "long-2")] {
        store.revoke(&revocation(org, RevocationTarget::Jti(jti.into()), 1_000)).await.expect("revoke");
    }
    let feed = store.revocation_feed(0, 1_000, 10).await.expect("feed");
    assert_eq!(feed.iter().map(|e| e.jti.as_str()).collect::<Vec<_>>(), ["short", "long-1", "long-2"]);
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq), "strictly increasing positions");
    assert_eq!((feed[2].org.as_str(), feed[2].expires_at, feed[2].revoked_at), ("beta", 5_000, 1_000));

    let page = store.revocation_feed(0, 1_000, 2).await.expect("page");
    let rest = store.revocation_feed(page[1].seq, 1_000, 2).await.expect("rest");
    assert_eq!(rest.iter().map(|e| e.jti.as_str()).collect::<Vec<_>>(), ["long-2"]);
    assert!(store.revocation_feed(rest[0].seq, 1_000, 2).await.expect("empty").is_empty());

    let later = store.revocation_feed(0, 1_100, 10).await.expect("feed");
    assert_eq!(later.iter().map(|e| e.jti.as_str()).collect::<Vec<_>>(), ["long-1", "long-2"], "expired dropped");
    assert_eq!(store.purge_revocations(1_101).await.expect("purge"), 1);
    assert!(!store.is_revoked("short").await.expect("is_revoked"), "purged");
}

pub(crate) async fn concurrent_revocations_count_each_token_once(store: Arc<dyn Storage>) {
    for i in 0..5 {
        let name = format!("t{i}");
        let jti = if i % 2 == 0 { held(&name) } else { name };
        grant(&store, issued(&jti, "acme", "acme/web", "7", "r", 2_000)).await;
    }
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.revoke(&revocation("acme", RevocationTarget::RunId("7".into()), 1_000)).await },
            )
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task").expect("revoke");
    }
    assert_eq!(total, 5, "each token revoked exactly once across racing requests");
    assert_eq!(store.revocation_feed(0, 1_000, 100).await.expect("feed").len(), 5);
}

pub(crate) async fn gitlab_pins_are_recorded(store: Arc<dyn Storage>) {
    let pins = vec![
        Pin {
            issuer: "https://gitlab.com".into(),
            kind: PinKind::Project,
            name: "grp/app".into(),
            id: "7".into(),
            created_at: 1,
        },
        Pin {
            issuer: "https://gitlab.com".into(),
            kind: PinKind::Namespace,
            name: "grp".into(),
            id: "3".into(),
            created_at: 1,
        },
    ];
    store.record_exchange(exchange_with_pins("subject-1", "token-1", 1_000, pins.clone())).await.expect("gitlab pins");
    let keys = vec![(PinKind::Project, "grp/app".to_owned()), (PinKind::Namespace, "grp".to_owned())];
    assert_eq!(store.get_pins("https://gitlab.com", &keys).await.expect("pins"), pins);
}

/// A verifier polling the feed with a cursor while revocations commit
/// concurrently must see every one of them: an entry that became visible
/// after a later one had been read would be skipped for good (the reader
/// below would then never finish).
pub(crate) async fn revocation_feed_never_skips_with_concurrent_revokers(store: Arc<dyn Storage>) {
    const N: usize = 150;
    for i in 0..N {
        grant(&store, issued(&format!("t{i:03}"), "acme", "acme/web", &format!("run-{i}"), "r", 5_000)).await;
    }
    let reader = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let (mut cursor, mut seen) = (0, Vec::new());
            while seen.len() < N {
                for entry in store.revocation_feed(cursor, 1_000, 2).await.expect("feed") {
                    assert!(entry.seq > cursor, "positions only grow");
                    cursor = entry.seq;
                    seen.push(entry.jti);
                }
                tokio::task::yield_now().await;
            }
            seen
        })
    };
    let revokers: Vec<_> = (0..N)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store.revoke(&revocation("acme", RevocationTarget::RunId(format!("run-{i}")), 1_000)).await
            })
        })
        .collect();
    for r in revokers {
        assert_eq!(r.await.expect("task").expect("revoke"), 1);
    }
    let mut seen = tokio::time::timeout(std::time::Duration::from_secs(30), reader)
        .await
        .expect("the polling verifier saw every revocation (none was skipped)")
        .expect("reader");
    seen.sort();
    let want: Vec<String> = (0..N).map(|i| format!("t{i:03}")).collect();
    assert_eq!(seen, want, "each revocation exactly once");
}

/// A narrowing and a revocation of its parent, racing: either the
/// narrowing fails as revoked and wrote nothing, or its child is revoked
/// too. Never a live child of a revoked parent.
pub(crate) async fn narrowing_racing_a_revocation_never_leaves_a_live_child(store: Arc<dyn Storage>) {
    for round in 0..12 {
        let (parent, child) = (format!("parent-{round}"), format!("child-{round}"));
        let parent = if round % 2 == 0 { held(&parent) } else { parent };
        grant(&store, issued(&parent, "acme", "acme/web", "1", "r", 2_000)).await;
        let narrow = {
            let store = Arc::clone(&store);
            let rec = narrowing(&parent, issued(&child, "acme", "acme/web", "1", "r", 1_900));
            tokio::spawn(async move { store.record_narrowing(rec).await })
        };
        let revoke = {
            let store = Arc::clone(&store);
            let r = revocation("acme", RevocationTarget::Jti(parent.clone()), 1_000);
            tokio::spawn(async move { store.revoke(&r).await })
        };
        let narrowed = narrow.await.expect("task");
        revoke.await.expect("task").expect("revoke");
        match narrowed {
            Ok(()) => assert!(store.is_revoked(&child).await.expect("is_revoked"), "round {round}: live child"),
            Err(StorageError::Revoked) => {
                assert_eq!(store.get_issued_token("acme", &child).await.expect("issued"), None, "round {round}")
            }
            Err(other) => panic!("round {round}: {other:?}"),
        }
    }
}

/// Writers that race on one org's policy each get their own version
/// (unconditional writes), or exactly one wins (conditional ones).
pub(crate) async fn concurrent_policy_writes_get_distinct_versions(store: Arc<dyn Storage>) {
    let writes: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put_policy(new_policy("acme", &format!("v{i}"), None), i).await })
        })
        .collect();
    let mut versions = Vec::new();
    for w in writes {
        versions.push(w.await.expect("task").expect("unconditional write").version);
    }
    versions.sort();
    assert_eq!(versions, (1..=6).collect::<Vec<i64>>());

    let conditional: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put_policy(new_policy("acme", &format!("c{i}"), Some(6)), 10 + i).await })
        })
        .collect();
    let mut won = 0;
    for w in conditional {
        match w.await.expect("task") {
            Ok(p) => {
                assert_eq!(p.version, 7);
                won += 1;
            }
            Err(StorageError::VersionConflict { current: 7 }) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1, "one conditional writer wins");
}
