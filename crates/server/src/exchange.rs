//! The exchange: one code path behind `POST /v1/exchange` and
//! `POST /oauth/token`.
//!
//! Order matters and is part of the security contract (DESIGN "The
//! exchange"): verify the subject token (issuer, keys, signature, times),
//! evaluate the org's policy, mint, then record the replay entry, pins and
//! audit in ONE transaction, and only then return the token. A failure to
//! record means no token. A denial is audited but does not consume the
//! subject token's `jti`.
//!
//! A writ token presented as the subject token is not an OIDC identity:
//! it takes the narrowing path ([`crate::narrow`]), which can only ever
//! give less than the token already has.

use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use writ_core::claims::{TokenSubject, VerifiedClaims};
use writ_core::jwt::{ParsedToken, VerifyConfig, VerifyError};
use writ_core::policy::{self, Decision, Pins, Request as PolicyRequest, TtlLimits};
use writ_core::token::{CiProvenance, WritClaims};

use crate::app::AppState;
use crate::error::ApiError;
use crate::storage::{
    AuditRecord, ExchangeRecord, IssuedToken, JTI_RETENTION_LEEWAY_SECS, Outcome, Pin, PinKind, StorageError, UsedJti,
};

/// Clock skew tolerated on `exp`, `nbf` and `iat` of subject tokens.
///
/// Security invariant: a used `jti` is remembered until `exp` plus
/// [`JTI_RETENTION_LEEWAY_SECS`]; if that were shorter than this leeway, a
/// token that verification still accepts could be exchanged twice. The
/// assertion below keeps the two in step at compile time.
pub const LEEWAY_SECS: i64 = 60;
const _: () = assert!(JTI_RETENTION_LEEWAY_SECS >= LEEWAY_SECS, "replay records must outlive the leeway");

/// What the caller asked for, whichever front door it came through.
#[derive(Debug, Clone)]
pub struct ExchangeInput {
    /// The presented OIDC token (untrusted until verified).
    pub subject_token: String,
    /// The org whose policy decides.
    pub org: String,
    /// Requested permissions; empty means the matching rule's grant.
    pub permissions: Vec<String>,
    /// Requested apps; empty means the rule's apps (or unrestricted).
    pub apps: Vec<String>,
    /// Requested machines.
    pub machines: Vec<String>,
    /// Requested lifetime.
    pub ttl: Option<Duration>,
}

/// Who is calling, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct CallerInfo {
    /// The request id.
    pub request_id: String,
    /// The client's address, when known.
    pub client_addr: Option<String>,
}

/// A granted exchange.
#[derive(Debug, Clone)]
pub struct ExchangeOutput {
    /// The minted writ token.
    pub token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// Its expiry, Unix seconds.
    pub expires_at: i64,
    /// The org.
    pub org: String,
    /// Granted permissions.
    pub permissions: Vec<String>,
    /// Apps the token is limited to (empty: unrestricted).
    pub apps: Vec<String>,
    /// Machines the token is limited to (empty: unrestricted).
    pub machines: Vec<String>,
    /// The rule that granted it.
    pub rule: String,
}

/// Runs one exchange.
pub async fn exchange(
    state: &AppState,
    mut input: ExchangeInput,
    caller: &CallerInfo,
) -> Result<ExchangeOutput, ApiError> {
    validate_names(&input)?;
    // The token is parsed once; before its signature is verified, only
    // its `iss` is looked at, to tell whose it claims to be.
    let parsed = ParsedToken::parse(&input.subject_token, state.config.limits.max_token_bytes);
    // A writ token as the subject token: narrowing, never a new grant.
    if parsed.as_ref().is_ok_and(|t| t.unverified_iss() == state.config.public_url) {
        drop(parsed);
        // Boxed, as is every denial's write below: these rare paths' state
        // would otherwise be part of every exchange's future (see
        // `record_denial`).
        return Box::pin(crate::narrow::narrow(state, input, caller)).await;
    }
    validate_input(&input)?;
    let now = state.clock.now();
    let mut parsed = parsed.map_err(|e| verify_error(&e))?;
    let claims = verify(state, &mut parsed, now).await?;
    // The token has become the claims; its text (about a kilobyte) is not
    // needed again.
    drop(parsed);
    input.subject_token = String::new();
    // After the signature verified: a forged token cannot spend another
    // repository's budget. Not audited: a runaway loop would flood the log.
    let source = client_id(&claims);
    if let Err(wait) = state.rate_limits.check_repository(&source) {
        let secs = crate::ratelimit::retry_after_secs(wait);
        return Err(ApiError::too_many_requests(
            format!("too many exchanges for {source}; retry after {secs} s"),
            secs,
        ));
    }

    let provenance = CiProvenance::from_claims(&claims);
    let mut audit = audit_for(claims.subject(), &provenance, &input, now, caller);

    let Some(loaded) = state.policies.get(&input.org) else {
        let description = format!(
            "no trust policy of org {:?} grants this identity; check the org name, or ask the org's admins to add a rule",
            input.org
        );
        deny(&mut audit, "invalid_grant", json!([{"org": "this org has no trust policy"}]));
        record_denial(state, audit).await?;
        return Err(ApiError::invalid_grant(description));
    };

    let pins: Pins = match state.store.get_pins(claims.issuer_name(), &pin_keys(&claims)).await {
        Ok(found) => found.into_iter().map(Pin::into_core).collect(),
        Err(e) => return Err(storage_error(e)),
    };
    let request = PolicyRequest {
        permissions: input.permissions.clone(),
        apps: input.apps.clone(),
        machines: input.machines.clone(),
        ttl: input.ttl,
    };
    let limits = TtlLimits { default: state.config.tokens.default_ttl, max: state.config.tokens.max_ttl };
    let mut grant = match policy::evaluate_for_grant(&loaded.policy, &claims, &request, &pins, limits) {
        Decision::Granted(grant) => grant,
        Decision::Denied(denial) => {
            let explanation = serde_json::to_value(&denial.explanation).unwrap_or_default();
            let code = denial.kind.oauth_error();
            let detailed = denial_sentence(&input.org, &denial);
            deny(&mut audit, code, explanation.clone());
            record_denial(state, audit).await?;
            // Only a caller whose verified owner the policy names learns
            // which conditions failed; anyone else could use the detail to
            // map another org's policy.
            return Err(if loaded.policy.names_owner(&claims) {
                ApiError::denied(code, detailed).with_explanation(explanation)
            } else {
                ApiError::denied(
                    code,
                    format!(
                        "no trust policy of org {:?} grants this identity; the org's admins can see why in the audit log (request id {})",
                        input.org, caller.request_id
                    ),
                )
            });
        }
    };

    // Admin permissions and platform permissions never share a token: an
    // admin token is for writ (its own audience), a platform token for the
    // platform, so neither can be replayed at the other.
    let admin_count = grant.permissions.iter().filter(|p| writ_core::token::is_admin_permission(p)).count();
    let token_audience = if admin_count == 0 {
        state.config.tokens.audience.clone()
    } else if admin_count == grant.permissions.len() {
        crate::auth::admin_audience(&state.config.public_url)
    } else {
        let description = format!(
            "rule {:?} grants writ's admin permissions and platform permissions together; request them in separate exchanges (e.g. permissions [\"writ:policy:write\"], then [\"deploy\"])",
            grant.rule
        );
        deny(&mut audit, "invalid_scope", json!([{"mixed_scope": grant.permissions}]));
        record_denial(state, audit).await?;
        return Err(ApiError::denied("invalid_scope", description));
    };

    let ttl_secs = grant.ttl.as_secs().max(1);
    let expires_at = now + ttl_secs as i64;
    // The token's jti is its grant's audit id: a UUIDv7, unique like v4
    // (74 random bits) but ordered by time, so the records keyed by it grow
    // at their end instead of touching a random page per exchange. The
    // time it reveals is the token's `iat` anyway. One id for both lets a
    // backend keep the issued token as the audit row itself
    // ([`ExchangeRecord::audit_holds_issued`]; SQLite does).
    let jti = audit.id.hyphenated().to_string();
    let mut writ_claims = WritClaims {
        iss: state.config.public_url.clone(),
        aud: token_audience,
        sub: format!("{}:{}", claims.issuer_name(), claims.sub()),
        client_id: source,
        iat: now,
        nbf: now,
        exp: expires_at,
        jti: jti.clone(),
        scope: grant.permissions.join(" "),
        org: input.org.clone(),
        apps: (!grant.apps.is_empty()).then(|| grant.apps.clone()),
        machines: (!grant.machines.is_empty()).then(|| grant.machines.clone()),
        ci: provenance,
        parent: None,
    };
    let key = state.keyring.current_at(now);
    let token = writ_core::token::mint(&writ_claims, &key).map_err(|e| {
        tracing::error!("minting failed: {e}");
        ApiError::internal()
    })?;

    // The denial record is moved into the grant's, not copied: the rare
    // denials below (replay, pin conflict) build theirs again.
    let mut granted = audit;
    granted.outcome = Outcome::Granted;
    granted.rule = Some(grant.rule.clone());
    granted.granted_permissions = grant.permissions.clone();
    granted.granted_apps = (!grant.apps.is_empty()).then(|| grant.apps.clone());
    granted.granted_machines = (!grant.machines.is_empty()).then(|| grant.machines.clone());
    granted.token_jti = Some(jti.clone());
    granted.token_expires_at = Some(expires_at);
    // A grant's record keeps the granting rule's outcome only. The rules
    // that did not match before it explain nothing about this token, and
    // writing each one's failures into every grant made the audit row (and
    // so the bytes synced per exchange) several times larger. A denial's
    // record keeps every rule's outcome.
    granted.explanation =
        serde_json::to_value(grant.explanation.last().map(std::slice::from_ref).unwrap_or_default()).ok();
    let record = ExchangeRecord {
        used_jti: UsedJti::new(claims.issuer_name(), claims.jti(), claims.exp()),
        new_pins: grant.new_pins.iter().map(|p| Pin::from_core(p, now)).collect(),
        issued: IssuedToken {
            jti: jti.clone(),
            org: input.org.clone(),
            subject: std::mem::take(&mut writ_claims.sub),
            repository: granted.repository.clone(),
            run_id: granted.run_id.clone(),
            rule: grant.rule.clone(),
            issued_at: now,
            expires_at,
        },
        audit: granted,
    };
    // What the rest needs is kept; the claims, the minted claims, the pins
    // and the policy's explanation are freed now, by the thread that
    // allocated them. After the commit's wait below the request may go on
    // on the other worker thread, and whenever it does, each of these few
    // dozen values freed there is a cross-thread free, which costs the
    // allocator more (docs/PERFORMANCE.md, session 9).
    let ci = std::mem::take(&mut writ_claims.ci);
    let subject = claims.into_subject();
    drop(writ_claims);
    drop(pins);
    drop(request);
    drop(std::mem::take(&mut grant.explanation));
    drop(std::mem::take(&mut grant.new_pins));
    match state.store.record_exchange(record).await {
        Ok(()) => {}
        Err(StorageError::Replay) => {
            let description =
                "this OIDC token was already exchanged; request a fresh one (each token is accepted once)";
            let mut audit = audit_for(subject.clone(), &ci, &input, now, caller);
            deny(&mut audit, "invalid_grant", json!([{"replay": subject.jti}]));
            record_denial(state, audit).await?;
            return Err(ApiError::invalid_grant(description));
        }
        Err(StorageError::PinConflict { kind, name, pinned_id, presented_id }) => {
            let description = format!(
                "{kind} {name} was pinned to id {pinned_id} on first use and this token carries id {presented_id}; if the {kind} was deleted and re-created, an org admin must pin the new id in the policy"
            );
            let mut audit = audit_for(subject.clone(), &ci, &input, now, caller);
            deny(&mut audit, "invalid_grant", json!([{"pin_conflict": name}]));
            record_denial(state, audit).await?;
            return Err(ApiError::invalid_grant(description));
        }
        Err(e) => return Err(storage_error(e)),
    }
    // Debug, not info: the audit log is the record of every decision, and a
    // log line per grant costs a write to stderr per exchange.
    tracing::debug!(
        org = %input.org, rule = %grant.rule, repository = ?ci.repository, ttl_s = ttl_secs,
        "granted {} to {} for org {} by rule {}", grant.permissions.join(" "), subject.sub, input.org, grant.rule
    );
    Ok(ExchangeOutput {
        token,
        expires_in: ttl_secs,
        expires_at,
        org: input.org,
        permissions: grant.permissions,
        apps: grant.apps,
        machines: grant.machines,
        rule: grant.rule,
    })
}

/// Verifies the subject token. Before the signature has verified, the
/// caller learns only "invalid token" and the reason class: nothing that
/// would help probe issuers or keys.
async fn verify(state: &AppState, token: &mut ParsedToken<'_>, now: i64) -> Result<VerifiedClaims, ApiError> {
    let cfg = VerifyConfig {
        audience: state.config.audience.clone(),
        leeway_secs: LEEWAY_SECS,
        max_age_secs: max_token_age_secs(state),
        max_token_bytes: state.config.limits.max_token_bytes,
    };
    let claims = state.issuers.verify_parsed(token, &cfg, now).await.map_err(|e| verify_error(&e))?;
    // The issuer is known only once verification picked it: the shared
    // check above used the loosest bound of all issuers, this one applies
    // the issuer's own `max_token_age`.
    let max_secs = state
        .config
        .issuers
        .iter()
        .find(|i| i.name == claims.issuer_name())
        .map_or(cfg.max_age_secs, |i| i.max_token_age.as_secs() as i64);
    let age_secs = now - claims.iat();
    if age_secs > max_secs {
        return Err(verify_error(&VerifyError::TooOld { age_secs, max_secs }));
    }
    Ok(claims)
}

/// The loosest token-age bound of all issuers; each issuer's own bound is
/// applied after verification.
fn max_token_age_secs(state: &AppState) -> i64 {
    state.config.issuers.iter().map(|i| i.max_token_age.as_secs() as i64).max().unwrap_or(3600)
}

/// Maps a verification failure to what the caller may see.
pub fn verify_error(e: &VerifyError) -> ApiError {
    if matches!(e, VerifyError::KeysUnavailable { .. }) {
        tracing::warn!("issuer keys unavailable: {e}");
        return ApiError::unavailable("the token's issuer keys cannot be fetched right now; retry shortly");
    }
    tracing::info!(reason = e.reason_class(), "subject token refused: {e}");
    if e.before_signature() {
        ApiError::invalid_grant(format!("invalid token ({})", e.reason_class()))
    } else {
        ApiError::invalid_grant(format!("invalid token ({}): {e}", e.reason_class()))
    }
}

fn validate_input(input: &ExchangeInput) -> Result<(), ApiError> {
    if input.org.is_empty() {
        return Err(ApiError::invalid_request("the org is missing; send it as \"org\" (or audience on /oauth/token)"));
    }
    Ok(())
}

/// Checks what both an exchange and a narrowing need: a subject token,
/// well-formed names (the org may be empty: a narrowing keeps the token's).
fn validate_names(input: &ExchangeInput) -> Result<(), ApiError> {
    if input.subject_token.is_empty() {
        return Err(ApiError::invalid_request(
            "the OIDC token is missing; send it as \"token\" (or subject_token on /oauth/token)",
        ));
    }
    let names = input.permissions.iter().chain(&input.apps).chain(&input.machines);
    for name in names.chain(std::iter::once(&input.org).filter(|o| !o.is_empty())) {
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::invalid_request(format!(
                "{name:?} is not a valid name: 1-128 characters, no spaces or control characters"
            )));
        }
    }
    if input.ttl.is_some_and(|t| t.is_zero()) {
        return Err(ApiError::invalid_request("ttl must be longer than zero, e.g. \"10m\""));
    }
    Ok(())
}

/// The audit record of this exchange, as far as the claims tell; starts as
/// a denial and becomes a grant only when everything succeeded.
fn audit_for(
    subject: TokenSubject,
    ci: &CiProvenance,
    input: &ExchangeInput,
    now: i64,
    caller: &CallerInfo,
) -> AuditRecord {
    let mut a = AuditRecord::new(now, caller.request_id.clone(), input.org.clone(), Outcome::Denied);
    a.issuer = Some(subject.issuer_name);
    a.subject = Some(subject.sub);
    a.subject_jti = Some(subject.jti);
    a.repository = ci.repository.clone();
    a.repository_id = ci.repository_id.clone();
    a.ref_ = ci.ref_.clone();
    a.environment = ci.environment.clone();
    a.workflow_ref = ci.workflow_ref.clone();
    a.run_id = ci.run_id.clone();
    a.actor = ci.actor.clone();
    a.requested_permissions = input.permissions.clone();
    a.requested_apps = input.apps.clone();
    a.requested_machines = input.machines.clone();
    a.client_addr = caller.client_addr.clone();
    a
}

fn deny(audit: &mut AuditRecord, code: &str, explanation: serde_json::Value) {
    audit.outcome = Outcome::Denied;
    audit.error = Some(code.to_owned());
    audit.explanation = Some(explanation);
}

/// The names whose recorded id pins are looked up for these claims: the
/// repository and owner (GitHub), the project and namespace (GitLab).
pub(crate) fn pin_keys(claims: &VerifiedClaims) -> Vec<(PinKind, String)> {
    let pairs: &[(PinKind, &str)] = match claims.issuer_kind() {
        writ_core::issuer::IssuerKind::GitHub => {
            &[(PinKind::Repository, "repository"), (PinKind::Owner, "repository_owner")]
        }
        writ_core::issuer::IssuerKind::GitLab => {
            &[(PinKind::Project, "project_path"), (PinKind::Namespace, "namespace_path")]
        }
        writ_core::issuer::IssuerKind::Generic => &[],
    };
    pairs.iter().filter_map(|(kind, claim)| claims.text(claim).map(|name| (*kind, name.to_lowercase()))).collect()
}

/// One sentence naming the denial and its first failing conditions.
fn denial_sentence(org: &str, denial: &policy::Denial) -> String {
    let reasons: Vec<String> = denial
        .explanation
        .iter()
        .map(|o| {
            let failures: Vec<String> = o.failures.iter().map(|f| f.to_string()).collect();
            format!("rule {:?}: {}", o.rule, failures.join("; "))
        })
        .collect();
    if reasons.is_empty() {
        format!("org {org:?} has no rule for this identity's issuer")
    } else {
        format!("no rule of org {org:?} grants this request: {}", reasons.join(" | "))
    }
}

/// The `client_id` of minted tokens: who the token was issued to, as the
/// issuer names it (`github:acme/web`), or the subject for generic issuers.
fn client_id(claims: &VerifiedClaims) -> String {
    let who = claims.text("repository").or_else(|| claims.text("project_path"));
    format!("{}:{}", claims.issuer_name(), who.as_deref().unwrap_or(claims.sub()))
}

/// Writes a denial's audit record. Boxed, like the narrowing path: held
/// inline, the rare paths' state was part of every exchange's future (6,224
/// bytes with them, 4,616 without; axum allocates and copies the handler's
/// future whole for each request).
fn record_denial(state: &AppState, audit: AuditRecord) -> BoxFuture<'_, Result<(), ApiError>> {
    Box::pin(async move { state.store.record_denial(audit).await.map_err(storage_error) })
}

/// Storage failures: unavailable → 503 with Retry-After (fail closed);
/// anything else → 500. Logged here, once.
pub fn storage_error(e: StorageError) -> ApiError {
    match e {
        StorageError::Unavailable(_) => {
            tracing::error!("storage unavailable: {e}");
            ApiError::unavailable("storage is unavailable; no token was issued; retry shortly")
        }
        other => {
            tracing::error!("storage error: {other}");
            ApiError::internal()
        }
    }
}
