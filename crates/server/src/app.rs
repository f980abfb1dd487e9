//! Application state, the router with its layers, and start-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::response::IntoResponse;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, HeaderValue, StatusCode};
use tracing::Instrument;

use crate::config::Config;
use crate::error::{REQUEST_ID_HEADER, finish_errors};
use crate::oidc::{FetchLimits, IssuerEntry, Issuers, KeySource};
use crate::policies::{Catalogue, PolicySet};
use crate::signing::{Keyring, KeyringConfig};
use crate::storage::Storage;
use crate::{api, routes, storage};

/// How long a request may take end to end before the server gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest total size of a request's headers. Real clients send well under
/// 2 KiB; the cap keeps a flood of huge headers from costing memory before
/// any handler runs.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How often expired replay records are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The server's notion of now, in Unix seconds. Tests pin it to exercise
/// expiry without sleeping; the exchange path reads it once per request.
#[derive(Clone, Default)]
pub struct Clock {
    pinned: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { pinned: None }
    }

    /// A clock that stays at `now` until [`Clock::set`].
    pub fn pinned(now: i64) -> Clock {
        Clock { pinned: Some(Arc::new(AtomicI64::new(now))) }
    }

    /// Moves a pinned clock; no effect on the system clock.
    pub fn set(&self, now: i64) {
        if let Some(p) = &self.pinned {
            p.store(now, Ordering::SeqCst);
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        match &self.pinned {
            Some(p) => p.load(Ordering::SeqCst),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default(),
        }
    }
}

/// Everything a request handler needs: one shared [`Services`]. Cloning
/// (axum does it for every request) copies one pointer.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

impl AppState {
    /// The same services with another keyring (tests that shorten the key
    /// rotation windows build their own).
    pub fn with_keyring(&self, keyring: Keyring) -> AppState {
        AppState(Arc::new(Services { keyring, ..(*self.0).clone() }))
    }
}

/// The services behind [`AppState`].
#[derive(Clone)]
pub struct Services {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Trusted issuers and their key caches.
    pub issuers: Issuers,
    /// Durable storage.
    pub store: Arc<dyn Storage>,
    /// writ's signing keys.
    pub keyring: Keyring,
    /// Parsed policies of every org.
    pub policies: PolicySet,
    /// Issuers and permissions, for the linter.
    pub catalogue: Arc<Catalogue>,
    /// The time source.
    pub clock: Clock,
    /// Rate limits per repository and per client address.
    pub rate_limits: crate::ratelimit::RateLimits,
}

impl AppState {
    /// Opens storage, loads keys and policies, and prepares the issuers.
    /// Fails fast, naming what is wrong.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<AppState> {
        let store: Arc<dyn Storage> = storage::open(&config.storage_url, &config.storage)
            .await
            .with_context(|| format!("opening storage {}", redact_url(&config.storage_url)))?;
        AppState::with_store(config, store, clock).await
    }

    /// Like [`AppState::build`] with storage already open.
    pub async fn with_store(config: Config, store: Arc<dyn Storage>, clock: Clock) -> anyhow::Result<AppState> {
        let mut entries = Vec::new();
        for issuer in &config.issuers {
            let keys = match &issuer.jwks_file {
                None => KeySource::Discovery,
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("issuer {}: cannot read jwks_file {}", issuer.name, path.display()))?;
                    let set = serde_json::from_str(&text).with_context(|| {
                        format!("issuer {}: jwks_file {} is not a JSON Web Key Set", issuer.name, path.display())
                    })?;
                    KeySource::Pinned(set)
                }
            };
            entries.push(IssuerEntry {
                spec: writ_core::jwt::IssuerSpec {
                    name: issuer.name.clone(),
                    kind: issuer.kind,
                    url: issuer.url.clone(),
                    algorithms: issuer.algorithms.clone(),
                },
                keys,
            });
        }
        let issuers = Issuers::new(entries, FetchLimits::default())?;
        let keyring_config = KeyringConfig { max_token_lifetime: config.tokens.max_ttl, ..KeyringConfig::default() };
        let keyring = Keyring::load_or_create(store.as_ref(), keyring_config, clock.now())
            .await
            .context("loading or creating the signing key")?;
        let catalogue = Catalogue {
            issuers: config.issuers.iter().map(|i| (i.name.clone(), i.kind)).collect(),
            permissions: config.permissions.keys().cloned().collect(),
        };
        let policies = PolicySet::default();
        policies.load_from_storage(store.as_ref(), &catalogue).await?;
        if let Some(dir) = &config.policies_dir {
            crate::policies::sync_dir(dir, &policies, store.as_ref(), &catalogue, clock.now()).await?;
        }
        let rate_limits = crate::ratelimit::RateLimits::new(config.limits.rate);
        let catalogue = Arc::new(catalogue);
        Ok(AppState(Arc::new(Services {
            config: Arc::new(config),
            issuers,
            store,
            keyring,
            policies,
            catalogue,
            clock,
            rate_limits,
        })))
    }

    /// Starts the background tasks: policy directory watch, replay-record
    /// purge, key warm-up.
    pub fn spawn_background(&self) {
        let rate_limits = self.rate_limits.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::ratelimit::RETAIN_INTERVAL).await;
                rate_limits.retain_recent();
            }
        });
        if let Some(dir) = self.config.policies_dir.clone() {
            tokio::spawn(crate::policies::watch_dir(
                dir,
                self.policies.clone(),
                self.store.clone(),
                (*self.catalogue).clone(),
                self.clock.clone(),
            ));
        }
        let store = self.store.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PURGE_INTERVAL).await;
                if let Err(e) = store.purge_expired(clock.now()).await {
                    tracing::warn!("purging expired replay records failed: {e}");
                }
                // Revocations of expired tokens: an expired token is
                // refused anyway, and the feed stays small.
                if let Err(e) = store.purge_revocations(clock.now()).await {
                    tracing::warn!("purging revocations of expired tokens failed: {e}");
                }
            }
        });
        let issuers = self.issuers.clone();
        tokio::spawn(async move { issuers.warm().await });
        crate::replicas::spawn(self);
    }
}

/// The router with its one middleware ([`edge`]) and the body limit.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.limits.max_body_bytes;
    // Every route, with its OpenAPI operation: `api::documented` is the
    // route table (tests/openapi.rs: no route is added here).
    let rate_limits = state.rate_limits.clone();
    api::routes()
        .fallback(routes::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(rate_limits, edge))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
}

/// What every request goes through, in one middleware (one boxed future
/// per request instead of one per concern; a stack of tower layers cost
/// about 10 µs per exchange, docs/PERFORMANCE.md):
///
/// 1. a request id: the client's `x-request-id` if it sent one, else a
///    new UUID; handlers read it from the header, and the response
///    carries it back;
/// 2. `Authorization` and `Cookie` marked sensitive, so no debug output
///    of the headers ever shows them;
/// 3. a `request` span with method, path and request id around
///    everything below, so every log line of the request names it;
/// 4. headers that add up to more than [`MAX_HEADER_BYTES`]: 431;
/// 5. a client address over its request rate: 429 with `Retry-After`
///    (requests without a peer address, in-process tests, are not limited);
/// 6. [`REQUEST_TIMEOUT`]: 408 if the handler is not done by then;
/// 7. every error response, from a handler or axum itself, rendered as
///    the JSON error shape with the request id ([`finish_errors`]); a 5xx
///    is also logged at `error`.
async fn edge(
    axum::extract::State(limits): axum::extract::State<crate::ratelimit::RateLimits>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let headers = request.headers_mut();
    let request_id = match headers.get(REQUEST_ID_HEADER) {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), id.clone());
            id
        }
    };
    for name in [AUTHORIZATION, COOKIE] {
        if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            entry.iter_mut().for_each(|value| value.set_sensitive(true));
        }
    }
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %String::from_utf8_lossy(request_id.as_bytes()),
    );
    let response = async move {
        let size: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        let response = if size > MAX_HEADER_BYTES {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.into_response()
        } else if let Some(ip) = peer
            && let Err(wait) = limits.check_client(ip)
        {
            let secs = crate::ratelimit::retry_after_secs(wait);
            crate::error::ApiError::too_many_requests(
                format!("too many requests from {ip}; retry after {secs} s"),
                secs,
            )
            .into_response()
        } else {
            match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
                Ok(response) => response,
                Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
            }
        };
        let status = response.status();
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), elapsed_ms, "request failed with status {status}");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "request finished with status {status}");
        }
        response
    }
    .instrument(span)
    .await;
    let mut response = finish_errors(response, Some(&request_id));
    response.headers_mut().entry(REQUEST_ID_HEADER).or_insert(request_id);
    response
}

/// A new request id: a random UUID, hyphenated.
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Binds the configured address and serves until Ctrl-C / SIGTERM.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    state.spawn_background();
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// A storage URL with any password removed, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
