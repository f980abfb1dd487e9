//! Calls to the writ server: audience discovery, the exchange and revocation, each over the retrying [`Client`].

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::client::{Client, Reply};
use crate::wire::{ExchangeRequest, Granted, Secret};

/// Checks a server URL and returns it without a trailing slash. Plain HTTP
/// is refused except to loopback: the OIDC token is a credential, and on
/// an open network anyone on the path could take and spend it first.
pub fn server_base(url: &str) -> anyhow::Result<String> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").with_context(|| format!("server {url:?} is not a URL (https://…)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        bail!("server {url:?} has no host");
    }
    if rest.contains(['?', '#']) {
        bail!("server {url:?} must be a base URL, without query or fragment");
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(url.to_owned()),
        "http" if is_loopback(host) => Ok(url.to_owned()),
        "http" => bail!("server {url:?} uses plain HTTP; use https:// (plain HTTP is allowed only to loopback)"),
        _ => bail!("server {url:?} must start with https://"),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The audience the server wants in OIDC tokens (`GET /v1/audience`), or
/// `None` when it does not say (older server, error): the caller then
/// uses the server URL.
pub fn discover_audience(client: &Client, server: &str) -> Option<String> {
    let url = format!("{server}/v1/audience");
    let reply = client
        .call("GET /v1/audience", |_, timeout| {
            Ok(client
                .agent()
                .get(&url)
                .header("Accept", "application/json")
                .config()
                .timeout_global(Some(timeout))
                .build()
                .call())
        })
        .ok()?;
    if !reply.is_success() {
        return None;
    }
    let body: Value = serde_json::from_str(&reply.body).ok()?;
    body.get("audience").and_then(Value::as_str).map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned)
}

/// What to ask for, besides the OIDC token.
#[derive(Debug)]
pub struct Wanted<'a> {
    /// The org.
    pub org: &'a str,
    /// Permissions; empty: the rule's grant.
    pub permissions: &'a [String],
    /// Apps; empty: not limited.
    pub apps: &'a [String],
    /// Machines; empty: not limited.
    pub machines: &'a [String],
    /// Lifetime, e.g. `10m`.
    pub ttl: Option<&'a str>,
}

/// The server's final answer to an exchange.
#[derive(Debug)]
pub enum Exchanged {
    /// 2xx: the grant, and the whole answer as JSON.
    Granted(Granted, Value),
    /// A final non-2xx answer (a denial, or a 4xx from something in front
    /// of the server).
    Refused {
        /// HTTP status.
        status: u16,
        /// The body.
        body: String,
        /// Attempts made (more than one: an earlier one may have reached
        /// the server and spent the OIDC token).
        attempts: u32,
    },
}

/// `POST {server}/v1/exchange`, retrying transient failures. `subject`
/// gives the OIDC token for each attempt (number 0, 1, …): under GitHub
/// Actions a retry gets a fresh token, because the server accepts each
/// token once and a failed attempt may still have reached it.
pub fn exchange(
    client: &Client,
    server: &str,
    wanted: &Wanted<'_>,
    mut subject: impl FnMut(u32) -> anyhow::Result<Secret>,
) -> anyhow::Result<Exchanged> {
    let url = format!("{server}/v1/exchange");
    let mut attempts = 0;
    let reply: Reply = client.call("POST /v1/exchange", |attempt, timeout| {
        attempts = attempt + 1;
        let token = subject(attempt)?;
        let body = ExchangeRequest {
            token: &token,
            org: wanted.org,
            permissions: wanted.permissions,
            apps: wanted.apps,
            machines: wanted.machines,
            ttl: wanted.ttl,
        };
        Ok(client
            .agent()
            .post(&url)
            .header("Accept", "application/json")
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send_json(&body))
    })?;
    if reply.is_success() {
        let raw: Value = serde_json::from_str(&reply.body).context("the server's grant is not JSON")?;
        let granted: Granted = serde_json::from_value(raw.clone()).context("the server's grant lacks the token")?;
        if granted.token.expose().is_empty() {
            bail!("the server's grant has an empty token");
        }
        Ok(Exchanged::Granted(granted, raw))
    } else {
        Ok(Exchanged::Refused { status: reply.status, body: reply.body, attempts })
    }
}

/// The outcome of a revocation.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    /// 200: revoked (RFC 7009 also answers 200 for unknown tokens).
    Done,
    /// 404 or 405: the server has no revocation endpoint.
    Unsupported(u16),
    /// Any other final answer.
    Refused(u16, String),
}

/// `POST {server}/oauth/revoke` (RFC 7009), form
/// `token=…&token_type_hint=access_token`.
pub fn revoke(client: &Client, server: &str, token: &Secret) -> anyhow::Result<Revoked> {
    let url = format!("{server}/oauth/revoke");
    let reply = client.call("POST /oauth/revoke", |_, timeout| {
        Ok(client
            .agent()
            .post(&url)
            .header("Accept", "application/json")
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send_form([("token", token.expose()), ("token_type_hint", "access_token")]))
    })?;
    Ok(match reply.status {
        200..=299 => Revoked::Done,
        404 | 405 => Revoked::Unsupported(reply.status),
        status => Revoked::Refused(status, crate::wire::render_error(status, &reply.body).join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_must_be_https_or_loopback() {
        assert_eq!(server_base("https://writ.example.com/").expect("https"), "https://writ.example.com");
        assert_eq!(server_base(" https://w.example/base// ").expect("path"), "https://w.example/base");
        for ok in ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9", "http://127.0.0.2"] {
            assert!(server_base(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://writ.example.com",
            "http://127.0.0.1.evil.example",
            "http://localhost@evil.example",
            "ftp://x",
            "writ.example.com",
            "https://",
            "https://w.example/?x=1",
        ] {
            assert!(server_base(bad).is_err(), "{bad}");
        }
    }
}
