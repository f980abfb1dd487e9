//! Fetching one issuer's signing keys: OIDC discovery with the exact
//! issuer-equality check, then its JWKS; bounded bodies and timeouts on
//! every request.
//!
//! Hand-rolled on reqwest rather than the `openidconnect` crate (lead's
//! decision): writ needs only the discovery document's `issuer` and
//! `jwks_uri`, and `openidconnect` would fetch and parse the JWKS with its
//! own crypto stack instead of jsonwebtoken's.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use reqwest::header::ACCEPT;
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::{Host, Url};

/// Why fetching an issuer's keys failed. For logs only: the caller of the
/// exchange sees "temporarily unavailable".
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Connecting, sending or reading failed, or the timeout elapsed.
    #[error("fetching the {what} from {url} failed: {source}")]
    Request {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a non-success status.
    #[error("the {what} at {url} answered HTTP {status}")]
    Status { what: &'static str, url: String, status: StatusCode },
    /// The body exceeded the configured cap.
    #[error("the {what} at {url} is larger than the {max} bytes allowed")]
    TooLarge { what: &'static str, url: String, max: usize },
    /// The body is not the expected JSON.
    #[error("the {what} at {url} is not valid: {source}")]
    Json {
        what: &'static str,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The discovery document names another issuer.
    #[error(
        "the discovery document of {expected} names issuer {got:?}: it must equal the configured issuer byte for byte"
    )]
    IssuerMismatch { expected: String, got: String },
    /// `jwks_uri` is not https (or http on a loopback host).
    #[error("the discovery document's jwks_uri {0:?} is not an https URL (http only for loopback hosts)")]
    InsecureJwksUri(String),
    /// The JWKS holds no key that jsonwebtoken can read.
    #[error("the JWKS at {url} holds no usable key")]
    NoUsableKeys { url: String },
}

/// The two fields of an OIDC discovery document that writ uses.
#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

/// A JWK Set read key by key, so one key of a type jsonwebtoken cannot
/// parse does not make the whole set unusable.
#[derive(Deserialize)]
struct LenientJwkSet {
    keys: Vec<serde_json::Value>,
}

/// Discovers `issuer_url`'s `jwks_uri` and fetches its keys.
///
/// The discovery document's `issuer` must equal `issuer_url` exactly (OIDC
/// Discovery §4.3): stops an issuer host that serves documents for another
/// issuer (or a misconfigured URL that answers with someone else's document)
/// from supplying keys for tokens it did not issue.
pub(crate) async fn fetch_keys(client: &Client, issuer_url: &str, max_body_bytes: usize) -> Result<JwkSet, FetchError> {
    // OIDC Discovery §4: a trailing `/` of the issuer is removed before
    // appending the well-known path.
    let discovery_url = format!("{}/.well-known/openid-configuration", issuer_url.trim_end_matches('/'));
    let discovery: DiscoveryDocument = get_json(client, &discovery_url, "discovery document", max_body_bytes).await?;
    if discovery.issuer != issuer_url {
        return Err(FetchError::IssuerMismatch { expected: issuer_url.to_owned(), got: discovery.issuer });
    }
    if !is_allowed_url(&discovery.jwks_uri) {
        return Err(FetchError::InsecureJwksUri(discovery.jwks_uri));
    }
    let lenient: LenientJwkSet = get_json(client, &discovery.jwks_uri, "JWKS", max_body_bytes).await?;
    let keys: Vec<Jwk> = lenient.keys.into_iter().filter_map(|key| serde_json::from_value(key).ok()).collect();
    if keys.is_empty() {
        return Err(FetchError::NoUsableKeys { url: discovery.jwks_uri });
    }
    Ok(JwkSet { keys })
}

/// GETs `url` and parses its JSON body, reading at most `max_body_bytes`.
async fn get_json<T: DeserializeOwned>(
    client: &Client,
    url: &str,
    what: &'static str,
    max_body_bytes: usize,
) -> Result<T, FetchError> {
    let request_error = |source| FetchError::Request { what, url: url.to_owned(), source };
    let mut response = client.get(url).header(ACCEPT, "application/json").send().await.map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status { what, url: url.to_owned(), status });
    }
    let too_large = || FetchError::TooLarge { what, url: url.to_owned(), max: max_body_bytes };
    // A declared length over the cap is refused before reading; an
    // undeclared (chunked) body is cut off as soon as it passes the cap.
    if response.content_length().is_some_and(|len| len > max_body_bytes as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > max_body_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|source| FetchError::Json { what, url: url.to_owned(), source })
}

/// Whether writ may fetch from `url`: https, or plain http to a loopback
/// host (tests, `writ serve --dev`). Plain http elsewhere would let anyone
/// on the path substitute the keys.
pub(crate) fn is_allowed_url(url: &str) -> bool {
    let Ok(url) = Url::parse(url) else {
        return false;
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host() {
            Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// Redirects are followed only within the same origin (scheme, host and
/// port), at most 3 times: a discovery or JWKS URL must not bounce the
/// server to another host, e.g. an internal address.
pub(crate) fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
        if !same_origin {
            attempt.error("redirect to another origin refused")
        } else if attempt.previous().len() > 3 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::is_allowed_url;

    #[test]
    fn only_https_or_loopback_http_urls_are_fetched() {
        for ok in [
            "https://token.actions.githubusercontent.com",
            "https://gitlab.example.com/oauth/discovery/keys",
            "http://127.0.0.1:8080/.well-known/jwks",
            "http://localhost:1/jwks",
            "http://[::1]:9/jwks",
        ] {
            assert!(is_allowed_url(ok), "{ok}");
        }
        for refused in [
            "http://token.actions.githubusercontent.com/.well-known/jwks",
            "http://10.0.0.1/jwks",
            "http://169.254.169.254/latest/meta-data",
            "ftp://127.0.0.1/jwks",
            "file:///etc/passwd",
            "not a url",
            "",
        ] {
            assert!(!is_allowed_url(refused), "{refused}");
        }
    }
}
