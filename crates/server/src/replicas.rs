//! Keeps this replica's in-memory state — parsed policies and signing
//! keys — in step with shared storage, when other replicas change it.
//!
//! The exchange path reads policies and keys from memory (no I/O), so a
//! policy stored through replica A must reach replica B's memory. Two
//! mechanisms, one fast and one sure:
//!
//! - **Notifications.** With PostgreSQL, every policy or key write
//!   notifies in its own transaction; [`crate::storage::Storage::subscribe`]
//!   delivers the change within milliseconds of its commit, and this task
//!   reloads just that org (or the keys). After the listener reconnects it
//!   delivers [`Change::Resync`], which reloads everything.
//! - **Reconciliation** every [`RECONCILE_INTERVAL`], whatever the
//!   backend: every org whose stored version is newer than memory's, and
//!   the keys. It bounds the damage of a notification lost any other way,
//!   and picks up keys that another process (say `writ` on the same SQLite
//!   file) stored.
//!
//! Revocations and consumed `jti`s need neither: they are checked in the
//! database on every use, so every replica sees them as soon as they
//! commit.
//!
//! Key rotation is safe across replicas because a new key is published
//! [`crate::signing::KeyringConfig::prepublication`] (default 1 h) before
//! any replica signs with it: every replica reloads it, and every verifier
//! refetches the JWKS, long before the first token signed with it exists.

use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use crate::app::AppState;
use crate::storage::Change;

/// How often a replica reconciles its memory with storage, notifications
/// or not. Far below the key pre-publication window (1 h), and cheap: an
/// unchanged org costs one row read and no parsing.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(15);

/// Starts following changes for `state` (see the module docs).
pub fn spawn(state: &AppState) {
    let changes = state.store.subscribe();
    tokio::spawn(follow(state.clone(), changes));
}

async fn follow(state: AppState, mut changes: Option<broadcast::Receiver<Change>>) {
    let mut reconcile = tokio::time::interval(RECONCILE_INTERVAL);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; start-up has just loaded everything.
    reconcile.tick().await;
    loop {
        let change = match &mut changes {
            Some(rx) => tokio::select! {
                received = rx.recv() => match received {
                    Ok(change) => change,
                    Err(RecvError::Lagged(_)) => Change::Resync,
                    Err(RecvError::Closed) => {
                        changes = None;
                        continue;
                    }
                },
                _ = reconcile.tick() => Change::Resync,
            },
            None => {
                reconcile.tick().await;
                Change::Resync
            }
        };
        apply(&state, change).await;
    }
}

/// Brings memory up to date with one change. Failures are logged and
/// left to the next change or reconciliation: the last good policies and
/// keys keep serving meanwhile.
pub async fn apply(state: &AppState, change: Change) {
    let store = state.store.as_ref();
    match change {
        Change::Policy(org) => match state.policies.refresh_org(store, &state.catalogue, &org).await {
            Ok(true) => tracing::info!(org = %org, "policy of org {org} updated from storage"),
            Ok(false) => {}
            Err(e) => tracing::warn!(org = %org, "reloading the policy of org {org} failed: {e}"),
        },
        Change::SigningKeys => reload_keys(state).await,
        Change::Resync => {
            match state.policies.refresh_all(store, &state.catalogue).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(orgs = n, "{n} org policies updated from storage"),
                Err(e) => tracing::warn!("reloading policies failed: {e}"),
            }
            reload_keys(state).await;
        }
    }
}

async fn reload_keys(state: &AppState) {
    if let Err(e) = state.keyring.reload(state.store.as_ref(), state.clock.now()).await {
        tracing::warn!("reloading signing keys failed: {e:#}");
    }
}
