//! Narrowing on the server: a writ token presented as the subject token of
//! `POST /oauth/token` (`subject_token_type` access_token) or of
//! `POST /v1/exchange` comes back as a narrower token.
//!
//! The parent is verified in full (signature, `typ`, `iss`, `aud` — the
//! platform's or writ's admin audience — times, not revoked), the scope
//! arithmetic is `writ_core::narrow` (never wider), and the new token, its
//! `parent` link and the audit record commit in one transaction that also
//! re-checks, under the write lock, that the parent is not revoked. The
//! chain is recorded three ways: the `parent` claim in the token, the
//! `parent_jti` column of the issued-token row (which revocation follows
//! transitively), and the audit record, whose `issuer` is writ itself and
//! whose `subject_jti` is the parent's `jti`.
//!
//! Narrowing consumes nothing: a parent may be narrowed any number of
//! times while it is valid. Denials are audited and shown in full to the
//! holder, who already holds the token they concern.

use serde_json::json;
use writ_core::narrow::{self, NarrowRequest};
use writ_core::token::WritClaims;

use crate::app::AppState;
use crate::auth::{AuthFailure, admin_audience, verify_writ_token};
use crate::error::ApiError;
use crate::exchange::{CallerInfo, ExchangeInput, ExchangeOutput, storage_error};
use crate::storage::{AuditRecord, IssuedToken, NarrowRecord, Outcome, StorageError};

/// True when `token` claims to be one of this server's tokens (its
/// unverified `iss` is writ's `public_url`). Only routes the request; the
/// narrowing path then verifies it in full. No configured OIDC issuer may
/// have writ's URL (the config refuses it), so the two never overlap.
pub fn is_writ_token(state: &AppState, token: &str) -> bool {
    writ_core::jwt::peek_unverified(token, state.config.limits.max_token_bytes)
        .is_ok_and(|t| t.unverified_iss == state.config.public_url)
}

/// Narrows the writ token in `input.subject_token`. `input.org`, when not
/// empty, must be the token's org.
pub async fn narrow(state: &AppState, input: ExchangeInput, caller: &CallerInfo) -> Result<ExchangeOutput, ApiError> {
    let now = state.clock.now();
    let admin_aud = admin_audience(&state.config.public_url);
    let audiences = [state.config.tokens.audience.as_str(), admin_aud.as_str()];
    let parent = verify_writ_token(state, &input.subject_token, &audiences).await.map_err(|e| match e {
        AuthFailure::Token(e) => ApiError::invalid_grant(format!("invalid token (writ token): {e}")),
        AuthFailure::Revoked => ApiError::invalid_grant("the token was revoked; nothing can be narrowed from it"),
        AuthFailure::Storage(e) => e,
    })?;
    let Some(issued) = state.store.get_issued_token(&parent.org, &parent.jti).await.map_err(storage_error)? else {
        tracing::warn!(jti = %parent.jti, "a validly signed writ token has no issued-token record");
        return Err(ApiError::invalid_grant("this server has no record of issuing the token"));
    };

    let request = NarrowRequest {
        org: (!input.org.is_empty()).then(|| input.org.clone()),
        permissions: input.permissions.clone(),
        apps: input.apps.clone(),
        machines: input.machines.clone(),
        ttl: input.ttl,
    };
    let mut audit = audit_for(state, &parent, &issued, &input, now, caller);
    let narrowed = match narrow::narrow(&parent, &request, now) {
        Ok(n) => n,
        Err(e) => {
            audit.outcome = Outcome::Denied;
            audit.error = Some(e.oauth_error().to_owned());
            audit.explanation = Some(json!({"narrowed_from": parent.jti, "refused": e.to_string()}));
            state.store.record_denial(audit).await.map_err(storage_error)?;
            return Err(ApiError::denied(e.oauth_error(), e.to_string()));
        }
    };

    let jti = uuid::Uuid::new_v4().to_string();
    let child = narrow::narrowed_claims(&parent, &narrowed, jti.clone(), now);
    let token = writ_core::token::mint(&child, &state.keyring.current_at(now)).map_err(|e| {
        tracing::error!("minting failed: {e}");
        ApiError::internal()
    })?;
    audit.granted_permissions = narrowed.permissions.clone();
    audit.granted_apps = narrowed.apps.clone();
    audit.granted_machines = narrowed.machines.clone();
    audit.token_jti = Some(jti.clone());
    audit.token_expires_at = Some(child.exp);
    let record = NarrowRecord {
        parent_jti: parent.jti.clone(),
        issued: IssuedToken {
            jti: jti.clone(),
            org: parent.org.clone(),
            subject: parent.sub.clone(),
            repository: issued.repository.clone(),
            run_id: issued.run_id.clone(),
            rule: issued.rule.clone(),
            issued_at: now,
            expires_at: child.exp,
        },
        audit,
    };
    match state.store.record_narrowing(record).await {
        Ok(()) => {}
        Err(StorageError::Revoked) => {
            return Err(ApiError::invalid_grant("the token was revoked; nothing can be narrowed from it"));
        }
        Err(e) => return Err(storage_error(e)),
    }
    tracing::info!(
        org = %parent.org, parent_jti = %parent.jti, jti = %jti, ttl_s = child.exp - now,
        "narrowed token {} of org {} to {}", parent.jti, parent.org, child.scope
    );
    Ok(ExchangeOutput {
        token,
        expires_in: u64::try_from(child.exp - now).unwrap_or(0),
        expires_at: child.exp,
        org: parent.org,
        permissions: narrowed.permissions,
        apps: narrowed.apps.unwrap_or_default(),
        machines: narrowed.machines.unwrap_or_default(),
        rule: issued.rule,
    })
}

/// The audit record of a narrowing: writ is the issuer of its subject
/// token, the parent's `jti` is the subject's `jti`, the provenance is the
/// parent's. Starts as a grant; a refusal turns it into a denial.
fn audit_for(
    state: &AppState,
    parent: &WritClaims,
    issued: &IssuedToken,
    input: &ExchangeInput,
    now: i64,
    caller: &CallerInfo,
) -> AuditRecord {
    let mut a = AuditRecord::new(now, caller.request_id.clone(), parent.org.clone(), Outcome::Granted);
    a.rule = Some(issued.rule.clone());
    a.issuer = Some(state.config.public_url.clone());
    a.subject = Some(parent.sub.clone());
    a.subject_jti = Some(parent.jti.clone());
    a.repository = parent.ci.repository.clone();
    a.repository_id = parent.ci.repository_id.clone();
    a.ref_ = parent.ci.ref_.clone();
    a.environment = parent.ci.environment.clone();
    a.workflow_ref = parent.ci.workflow_ref.clone();
    a.run_id = parent.ci.run_id.clone();
    a.actor = parent.ci.actor.clone();
    a.requested_permissions = input.permissions.clone();
    a.requested_apps = input.apps.clone();
    a.requested_machines = input.machines.clone();
    a.explanation = Some(json!({
        "narrowed_from": parent.jti,
        "parent": {"scope": parent.scope, "apps": parent.apps, "machines": parent.machines, "exp": parent.exp},
    }));
    a.client_addr = caller.client_addr.clone();
    a
}
