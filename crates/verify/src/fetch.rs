//! Talking to the writ server: discovery with the exact issuer check, the
//! JWKS, and bounded GETs (timeouts, body caps, same-origin redirects) for
//! those and the revocation feed. Reading a JWK Set into Ed25519 keys.
//!
//! The same ideas as the server's OIDC key cache (`writ-server`'s
//! `oidc::fetch`), written again here because writ-verify must not depend
//! on the server.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use reqwest::header::ACCEPT;
use reqwest::{Client, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::FetchError;

/// The verification keys of one JWKS, by `kid`.
pub(crate) type KeyMap = HashMap<String, DecodingKey>;

/// The HTTP client for the writ server: rustls, `timeout` on connect and on
/// the whole request, redirects only within the same origin.
pub(crate) fn client(timeout: Duration) -> reqwest::Result<Client> {
    Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(same_origin_redirects())
        .user_agent(concat!("writ-verify/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The two fields of the discovery document that are used.
#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

/// Fetches `{writ_url}/.well-known/openid-configuration` and returns its
/// `jwks_uri`.
///
/// The document's `issuer` must equal `writ_url` exactly (OIDC Discovery
/// section 4.3): stops a host that answers with another server's document
/// (or a misconfigured URL) from supplying the keys, and guarantees that
/// the `iss` every token is later checked against is the one the operator
/// named.
pub(crate) async fn discover_jwks_uri(client: &Client, writ_url: &str, max_body: usize) -> Result<String, FetchError> {
    let url = format!("{}/.well-known/openid-configuration", writ_url.trim_end_matches('/'));
    let doc: DiscoveryDocument = get_json(client, &url, "discovery document", max_body).await?;
    if doc.issuer != writ_url {
        return Err(FetchError::IssuerMismatch { url, expected: writ_url.to_owned(), got: doc.issuer });
    }
    if !is_allowed_url(&doc.jwks_uri) {
        return Err(FetchError::InsecureJwksUri(doc.jwks_uri));
    }
    Ok(doc.jwks_uri)
}

/// Fetches the JWKS at `jwks_uri` and keeps its usable keys.
pub(crate) async fn fetch_keys(client: &Client, jwks_uri: &str, max_body: usize) -> Result<KeyMap, FetchError> {
    let set: LenientJwkSet = get_json(client, jwks_uri, "JWKS", max_body).await?;
    let keys = usable_keys(set);
    if keys.is_empty() {
        return Err(FetchError::NoUsableKeys { url: jwks_uri.to_owned() });
    }
    Ok(keys)
}

/// A JWK Set read key by key, so that one key of another type (an RSA key
/// published next to the Ed25519 ones, a future key type) does not make
/// the whole set unusable.
#[derive(Deserialize)]
pub(crate) struct LenientJwkSet {
    keys: Vec<serde_json::Value>,
}

/// One JWK, as far as an Ed25519 verification key needs it.
#[derive(Deserialize)]
struct Ed25519Jwk {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
}

/// The keys of `set` that can verify writ tokens: `kty` OKP, `crv`
/// Ed25519, a 32-byte `x`, a `kid`; `alg`, if present, `EdDSA` (or RFC
/// 9864's `Ed25519`); `use`, if present, `sig`; `key_ops`, if present,
/// including `verify`. Anything else is skipped: an encryption key or a
/// key published for another algorithm must never verify a signature.
///
/// A `kid` published twice names no key at all (both are dropped, with a
/// warning): which one was meant cannot be known.
pub(crate) fn usable_keys(set: LenientJwkSet) -> KeyMap {
    let mut keys = KeyMap::new();
    let mut duplicated = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Ed25519Jwk>(value) else {
            continue;
        };
        let fits = jwk.kty == "OKP"
            && jwk.crv.as_deref() == Some("Ed25519")
            && jwk.alg.as_deref().is_none_or(|a| a == "EdDSA" || a == "Ed25519")
            && jwk.use_.as_deref().is_none_or(|u| u == "sig")
            && jwk.key_ops.as_ref().is_none_or(|ops| ops.iter().any(|op| op == "verify"));
        let (Some(kid), Some(x), true) = (jwk.kid, jwk.x, fits) else {
            continue;
        };
        if URL_SAFE_NO_PAD.decode(&x).map(|bytes| bytes.len()) != Ok(32) {
            continue;
        }
        let Ok(key) = DecodingKey::from_ed_components(&x) else {
            continue;
        };
        if keys.insert(kid.clone(), key).is_some() {
            duplicated.push(kid);
        }
    }
    for kid in duplicated {
        tracing::warn!(kid = %kid, "the writ JWKS publishes kid {kid} more than once; tokens naming it are refused");
        keys.remove(&kid);
    }
    keys
}

/// GETs `url` and parses its JSON body, reading at most `max_body` bytes.
pub(crate) async fn get_json<T: DeserializeOwned>(
    client: &Client,
    url: &str,
    what: &'static str,
    max_body: usize,
) -> Result<T, FetchError> {
    let request_error = |source| FetchError::Request { what, url: url.to_owned(), source };
    let mut response = client.get(url).header(ACCEPT, "application/json").send().await.map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status { what, url: url.to_owned(), status: status.as_u16() });
    }
    let too_large = || FetchError::TooLarge { what, url: url.to_owned(), max: max_body };
    // A declared length over the cap is refused before reading; a chunked
    // body is cut off as soon as it passes the cap.
    if response.content_length().is_some_and(|len| len > max_body as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > max_body {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|source| FetchError::Json { what, url: url.to_owned(), source })
}

/// Whether `url` may be fetched: https, or plain http to a loopback host
/// (tests, `writ serve --dev`). Plain http elsewhere would let anyone on
/// the path substitute the keys or hide revocations.
pub(crate) fn is_allowed_url(url: &str) -> bool {
    let Ok(url) = Url::parse(url) else {
        return false;
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => {
            // `host_str` writes IPv6 addresses in brackets.
            let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// Redirects are followed only within the same origin, at most 3 times: a
/// discovery, JWKS or feed URL must not bounce the platform to another
/// host, e.g. an internal address.
fn same_origin_redirects() -> reqwest::redirect::Policy {
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
    use serde_json::json;

    use super::*;

    fn x() -> String {
        URL_SAFE_NO_PAD.encode([7u8; 32])
    }

    fn set(keys: serde_json::Value) -> LenientJwkSet {
        serde_json::from_value(json!({ "keys": keys })).expect("jwks shape")
    }

    #[test]
    fn only_ed25519_signing_keys_with_a_kid_are_kept() {
        let keys = usable_keys(set(json!([
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "good", "alg": "EdDSA", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "bare"},
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "fully-specified", "alg": "Ed25519"},
            {"kty": "OKP", "crv": "Ed25519", "x": x()},
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "rs", "alg": "RS256"},
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "ops", "key_ops": ["sign"]},
            {"kty": "OKP", "crv": "X25519", "x": x(), "kid": "ecdh"},
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 16]), "kid": "short"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "rsa"},
            "not even an object",
        ])));
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["bare", "fully-specified", "good"]);
    }

    #[test]
    fn a_kid_published_twice_names_no_key() {
        let keys = usable_keys(set(json!([
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "twice"},
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([9u8; 32]), "kid": "twice"},
            {"kty": "OKP", "crv": "Ed25519", "x": x(), "kid": "once"},
        ])));
        assert!(!keys.contains_key("twice"));
        assert!(keys.contains_key("once"));
    }

    #[test]
    fn only_https_or_loopback_http_urls_are_fetched() {
        for ok in ["https://writ.example.com", "http://127.0.0.1:8080", "http://localhost:1/x", "http://[::1]:9/"] {
            assert!(is_allowed_url(ok), "{ok}");
        }
        for refused in ["http://writ.example.com", "http://10.0.0.1/jwks", "ftp://127.0.0.1/", "file:///etc/passwd", ""]
        {
            assert!(!is_allowed_url(refused), "{refused}");
        }
    }
}
