//! Prometheus metrics: exchange outcomes and latency, served at `/metrics`.
//!
//! The recorder is process-global (the `metrics` macros report to it), so
//! it is installed once, on first use; several servers in one process
//! (tests) share it. Labels are bounded sets (outcome and OAuth error
//! code), never tokens, repositories or orgs, so the series count stays
//! fixed whatever callers send.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Exchanges answered, by `outcome` (`granted` or `refused`) and `error`
/// (the OAuth error code, empty when granted).
pub const EXCHANGES_TOTAL: &str = "writ_exchanges_total";
/// Seconds from request to answer of each exchange.
pub const EXCHANGE_SECONDS: &str = "writ_exchange_duration_seconds";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often samples recorded since the last pass are folded into the
/// histograms. `install_recorder` does not do it on its own: each
/// histogram sample would stay queued until the next scrape of `/metrics`,
/// so a server that is never scraped would grow by every exchange.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The global recorder's handle; `None` when the embedding program already
/// installed another recorder (then `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                let upkeep = handle.clone();
                let started = std::thread::Builder::new().name("writ-metrics-upkeep".to_owned()).spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
                if let Err(e) = started {
                    tracing::warn!("metrics upkeep thread not started ({e}); histogram samples wait for /metrics");
                }
                Some(handle)
            }
            Err(e) => {
                tracing::warn!("metrics recorder not installed: {e}");
                None
            }
        })
        .as_ref()
}

/// The series every grant updates, registered once: looking a series up by
/// name and labels on each exchange cost about 1% of the server's CPU.
struct GrantSeries {
    granted: Counter,
    seconds: Histogram,
}

static GRANT_SERIES: OnceLock<GrantSeries> = OnceLock::new();

/// Records one answered exchange.
pub fn exchange(started: Instant, error: Option<&'static str>) {
    if handle().is_none() {
        return;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let Some(code) = error else {
        let series = GRANT_SERIES.get_or_init(|| GrantSeries {
            granted: metrics::counter!(EXCHANGES_TOTAL, "outcome" => "granted", "error" => ""),
            seconds: metrics::histogram!(EXCHANGE_SECONDS),
        });
        series.granted.increment(1);
        series.seconds.record(elapsed);
        return;
    };
    metrics::counter!(EXCHANGES_TOTAL, "outcome" => "refused", "error" => code).increment(1);
    metrics::histogram!(EXCHANGE_SECONDS).record(elapsed);
}
