//! The exchange: one code path behind `POST /v1/exchange` and
//! `POST /oauth/token`.
//!
//! Order matters and is part of the security contract (DESIGN "The
//! exchange"): verify the subject token (issuer, keys, signature, times),
//! evaluate the org's policy, mint, then record the replay entry, pins and
//! audit in ONE transaction, and only then return the token. A failure to
//! record means no token. A denial is audited but does not consume the
//! subject token's `jti`.

use std::time::Duration;

use serde_json::json;
use writ_core::claims::VerifiedClaims;
use writ_core::jwt::{VerifyConfig, VerifyError};
use writ_core::policy::{self, Decision, Pins, Request as PolicyRequest, TtlLimits};
use writ_core::token::{CiProvenance, WritClaims};

use crate::app::AppState;
use crate::error::ApiError;
use crate::storage::{AuditRecord, ExchangeRecord, IssuedToken, StorageError};

/// Clock skew tolerated on `exp`, `nbf` and `iat` of subject tokens, and
/// added to `exp` for how long a used `jti` is remembered. The two must be
/// the same number: a replay record kept for less than `exp + leeway` would
/// let a token that verification still accepts be exchanged twice.
pub const LEEWAY_SECS: i64 = 60;

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
pub async fn exchange(state: &AppState, input: ExchangeInput, caller: &CallerInfo) -> Result<ExchangeOutput, ApiError> {
    validate_input(&input)?;
    let now = state.clock.now();
    let claims = verify(state, &input.subject_token, now).await?;

    let mut audit = AuditRecord::for_claims(&claims, &input.org, now, caller);
    audit.requested_permissions = input.permissions.clone();
    audit.requested_apps = input.apps.clone();
    audit.requested_machines = input.machines.clone();

    let Some(loaded) = state.policies.get(&input.org) else {
        let description = format!(
            "no trust policy of org {:?} grants this identity; check the org name, or ask the org's admins to add a rule",
            input.org
        );
        audit.deny("invalid_grant", &description, json!([{"org": "no policy for this org"}]));
        record_denial(state, audit).await?;
        return Err(ApiError::invalid_grant(description));
    };

    let pin_keys = policy::pin_keys(&claims);
    let pins = match state.store.get_pins(claims.issuer_name(), &pin_keys).await {
        Ok(found) => Pins::from_iter(found.into_iter().map(|p| p.into_core())),
        Err(e) => return Err(storage_error(e)),
    };
    let request = PolicyRequest {
        permissions: input.permissions.clone(),
        apps: input.apps.clone(),
        machines: input.machines.clone(),
        ttl: input.ttl,
    };
    let limits = TtlLimits { default: state.config.tokens.default_ttl, max: state.config.tokens.max_ttl };
    let grant = match policy::evaluate(&loaded.policy, &claims, &request, &pins, limits) {
        Decision::Granted(grant) => grant,
        Decision::Denied(denial) => {
            let explanation = serde_json::to_value(&denial.explanation).unwrap_or_default();
            let code = denial.kind.oauth_error();
            let detailed = denial_sentence(&input.org, &denial);
            audit.deny(code, &detailed, explanation.clone());
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

    let ttl_secs = grant.ttl.as_secs().max(1);
    let expires_at = now + ttl_secs as i64;
    let jti = uuid::Uuid::new_v4().to_string();
    let provenance = CiProvenance::from_claims(&claims);
    let writ_claims = WritClaims {
        iss: state.config.public_url.clone(),
        aud: state.config.tokens.audience.clone(),
        sub: format!("{}:{}", claims.issuer_name(), claims.sub()),
        client_id: client_id(&claims),
        iat: now,
        nbf: now,
        exp: expires_at,
        jti: jti.clone(),
        scope: grant.permissions.join(" "),
        org: input.org.clone(),
        apps: (!grant.apps.is_empty()).then(|| grant.apps.clone()),
        machines: (!grant.machines.is_empty()).then(|| grant.machines.clone()),
        ci: provenance,
    };
    let key = state.keyring.current();
    let token = writ_core::token::mint(&writ_claims, &key).map_err(|e| {
        tracing::error!("minting failed: {e}");
        ApiError::internal()
    })?;

    audit.grant(&grant, &jti, expires_at);
    let record = ExchangeRecord {
        issuer: claims.issuer_name().to_owned(),
        subject_jti: claims.jti().to_owned(),
        subject_jti_expires_at: claims.exp() + LEEWAY_SECS,
        new_pins: grant.new_pins.iter().map(crate::storage::Pin::from_core).collect(),
        audit: audit.clone(),
        issued: IssuedToken {
            jti: jti.clone(),
            org: input.org.clone(),
            rule: grant.rule.clone(),
            repository: audit.repository.clone(),
            run_id: audit.run_id.clone(),
            expires_at,
        },
    };
    match state.store.record_exchange(record).await {
        Ok(()) => {}
        Err(StorageError::Replay) => {
            let description = "this OIDC token was already exchanged; request a fresh one (each token is accepted once)";
            audit.deny("invalid_grant", description, json!([{"replay": claims.jti()}]));
            record_denial(state, audit).await?;
            return Err(ApiError::invalid_grant(description));
        }
        Err(StorageError::PinConflict { kind, name, pinned, got }) => {
            let description = format!(
                "{kind} {name} was pinned to id {pinned} on first use and this token carries id {got}; if the {kind} was deleted and re-created, an org admin must pin the new id in the policy"
            );
            audit.deny("invalid_grant", &description, json!([{"pin_conflict": name}]));
            record_denial(state, audit).await?;
            return Err(ApiError::invalid_grant(description));
        }
        Err(e) => return Err(storage_error(e)),
    }
    tracing::info!(
        org = %input.org, rule = %grant.rule, repository = ?claims.get_str("repository"), ttl_s = ttl_secs,
        "granted {} to {} for org {} by rule {}", grant.permissions.join(" "), claims.sub(), input.org, grant.rule
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
async fn verify(state: &AppState, token: &str, now: i64) -> Result<VerifiedClaims, ApiError> {
    let cfg = VerifyConfig {
        audience: state.config.audience.clone(),
        leeway_secs: LEEWAY_SECS,
        max_age_secs: max_token_age_secs(state),
        max_token_bytes: state.config.limits.max_token_bytes,
    };
    state.issuers.verify(token, &cfg, now).await.map_err(|e| verify_error(&e))
}

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
    if input.subject_token.is_empty() {
        return Err(ApiError::invalid_request("the OIDC token is missing; send it as \"token\" (or subject_token on /oauth/token)"));
    }
    if input.org.is_empty() {
        return Err(ApiError::invalid_request("the org is missing; send it as \"org\" (or audience on /oauth/token)"));
    }
    let names = input.permissions.iter().chain(&input.apps).chain(&input.machines);
    for name in names.chain(std::iter::once(&input.org)) {
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
    let who = claims
        .get_str("repository")
        .or_else(|| claims.get_str("project_path"))
        .unwrap_or_else(|| claims.sub().to_owned());
    format!("{}:{}", claims.issuer_name(), who)
}

async fn record_denial(state: &AppState, audit: AuditRecord) -> Result<(), ApiError> {
    state.store.record_denial(audit).await.map_err(storage_error)
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
