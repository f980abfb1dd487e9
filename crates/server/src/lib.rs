//! writ-server: the exchange server — axum app, OIDC key cache, storage,
//! configuration and routes. Only this crate knows HTTP on the server side.

pub mod app;
pub mod config;
pub mod error;
pub mod exchange;
pub mod oidc;
pub mod policies;
pub mod routes;
pub mod signing;
pub mod storage;
