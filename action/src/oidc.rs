//! The CI job's OIDC token: fetching it from the GitHub Actions runtime, and reading its claims unverified for display.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::wire::Secret;

/// Reads a JWT's payload **without verifying its signature**.
///
/// Only for display (the step summary's repository, ref and environment,
/// the debug listing of claims): the token came straight from the runner,
/// and the writ server verifies it before trusting any claim. Nothing here
/// decides anything based on these claims.
pub fn unverified_claims(jwt: &str) -> anyhow::Result<Map<String, Value>> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("the OIDC token is not a JWT (three base64url parts separated by dots)");
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("the OIDC token's payload is not base64url")?;
    match serde_json::from_slice(&bytes).context("the OIDC token's payload is not JSON")? {
        Value::Object(claims) => Ok(claims),
        _ => bail!("the OIDC token's payload is not a JSON object"),
    }
}

/// A claim as display text: strings as they are, other values as JSON.
pub fn claim_text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters
/// stay as they are).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `ACTIONS_ID_TOKEN_REQUEST_URL` with `audience` appended. The runner's
/// URL already carries a query (`?api-version=2.0`), hence `&`.
pub fn token_request_url(request_url: &str, audience: &str) -> String {
    let separator = if request_url.contains('?') { '&' } else { '?' };
    format!("{request_url}{separator}audience={}", encode_query_value(audience))
}

/// Asks the Actions runtime for an OIDC token for `audience`, retrying
/// transient failures within the client's deadline.
pub fn fetch_actions_token(
    client: &Client,
    request_url: &str,
    request_token: &Secret,
    audience: &str,
) -> anyhow::Result<Secret> {
    let url = token_request_url(request_url, audience);
    let authorization = format!("Bearer {}", request_token.expose());
    let reply = client.call("requesting the OIDC token from the Actions runtime", |_, timeout| {
        Ok(client
            .agent()
            .get(&url)
            .header("Authorization", &authorization)
            .header("Accept", "application/json")
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call())
    })?;
    if !reply.is_success() {
        bail!("the Actions runtime refused the OIDC token request: HTTP {} {}", reply.status, reply.excerpt());
    }
    let body: Value = serde_json::from_str(&reply.body).context("the Actions runtime's answer is not JSON")?;
    match body.get("value").and_then(Value::as_str) {
        Some(token) if !token.is_empty() => Ok(Secret::new(token.to_owned())),
        _ => bail!("the Actions runtime's answer has no `value`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(payload))
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let claims = unverified_claims(&jwt(r#"{"repository":"acme/web","run_id":"7","n":3}"#)).expect("claims");
        assert_eq!(claim_text(&claims, "repository").as_deref(), Some("acme/web"));
        assert_eq!(claim_text(&claims, "n").as_deref(), Some("3"));
        assert_eq!(claim_text(&claims, "environment"), None);
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        for bad in ["", "a.b", "a.b.c.d", "a.!!!.c", &jwt("[1]"), &jwt("not json")] {
            assert!(unverified_claims(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_audience_is_appended_encoded() {
        assert_eq!(
            token_request_url("https://x/token?api-version=2.0", "https://writ.example.com/a b"),
            "https://x/token?api-version=2.0&audience=https%3A%2F%2Fwrit.example.com%2Fa%20b"
        );
        assert_eq!(token_request_url("http://x/t", "aud"), "http://x/t?audience=aud");
    }
}
