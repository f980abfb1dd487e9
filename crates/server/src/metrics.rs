//! Prometheus metrics: exchange outcomes and latency, served at `/metrics`.
//!
//! The recorder is process-global (the `metrics` macros report to it), so
//! it is installed once, on first use; several servers in one process
//! (tests) share it. Labels are bounded sets (outcome and OAuth error
//! code), never tokens, repositories or orgs, so the series count stays
//! fixed whatever callers send.

use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Exchanges answered, by `outcome` (`granted` or `refused`) and `error`
/// (the OAuth error code, empty when granted).
pub const EXCHANGES_TOTAL: &str = "writ_exchanges_total";
/// Seconds from request to answer of each exchange.
pub const EXCHANGE_SECONDS: &str = "writ_exchange_duration_seconds";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The global recorder's handle; `None` when the embedding program already
/// installed another recorder (then `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!("metrics recorder not installed: {e}");
                None
            }
        })
        .as_ref()
}

/// Records one answered exchange.
pub fn exchange(started: Instant, error: Option<&'static str>) {
    if handle().is_none() {
        return;
    }
    let outcome = if error.is_some() { "refused" } else { "granted" };
    metrics::counter!(EXCHANGES_TOTAL, "outcome" => outcome, "error" => error.unwrap_or("")).increment(1);
    metrics::histogram!(EXCHANGE_SECONDS).record(started.elapsed().as_secs_f64());
}
