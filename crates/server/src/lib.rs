//! writ-server: the exchange server — axum app, OIDC key cache, storage,
//! configuration and routes. Only this crate knows HTTP on the server side.

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod exchange;
pub mod metrics;
pub mod narrow;
pub mod oidc;
pub mod policies;
pub mod ratelimit;
pub mod replicas;
pub mod revocation;
pub mod routes;
pub mod signing;
pub mod storage;
