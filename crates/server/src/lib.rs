//! writ-server: the exchange server — axum app, OIDC key cache, storage,
//! configuration and routes. Only this crate knows HTTP on the server side.

pub mod config;
// LEAD: app, error, exchange, policies, routes are enabled once oidc/storage/signing land.
