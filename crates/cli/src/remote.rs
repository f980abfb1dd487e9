//! Talking to a remote writ server: where it is, which credential to
//! present, and how its errors become messages and exit codes.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::{EXIT_AUTH, EXIT_CONFLICT, EXIT_DENIED, EXIT_ERROR, EXIT_NOT_FOUND};

/// `--server` and `--token`, shared by every command that calls a server.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// The writ server's URL, e.g. https://writ.example.com.
    #[arg(long, env = "WRIT_SERVER")]
    pub server: Option<String>,
    /// The credential: a writ admin token, or the operator root
    /// credential. `@FILE` reads it from a file, `-` from stdin.
    #[arg(long, env = "WRIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A failure that carries its exit code (see the codes in `main.rs`).
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What to print after `error: `.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Reads a secret given as a value, `@FILE` or `-` (stdin).
pub fn read_secret(value: &str) -> anyhow::Result<String> {
    if value == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
        return Ok(text.trim().to_owned());
    }
    match value.strip_prefix('@') {
        Some(path) => {
            Ok(std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?.trim().to_owned())
        }
        None => Ok(value.trim().to_owned()),
    }
}

/// A server connection.
pub struct Remote {
    base: String,
    credential: Option<String>,
    http: reqwest::Client,
}

/// A successful reply.
pub struct Reply {
    /// The `ETag` header, if any.
    pub etag: Option<String>,
    /// Other headers one command or another needs.
    pub next_cursor: Option<String>,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.text).context("the server's answer is not JSON")
    }
}

impl Remote {
    /// A connection from the flags; the credential is optional here and
    /// checked by [`Remote::require_credential`] where a command needs it.
    pub fn new(args: &RemoteArgs) -> anyhow::Result<Remote> {
        let Some(server) = args.server.as_deref().filter(|s| !s.is_empty()) else {
            return Err(Failure {
                code: EXIT_ERROR,
                message: "no server: pass --server URL or set WRIT_SERVER".to_owned(),
            }
            .into());
        };
        let url = url_of(server)?;
        let credential = args.token.as_deref().map(read_secret).transpose()?.filter(|c| !c.is_empty());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("writ-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Remote { base: url, credential, http })
    }

    /// Fails with a helpful message when no credential was given.
    pub fn require_credential(&self) -> anyhow::Result<()> {
        if self.credential.is_none() {
            return Err(Failure {
                code: EXIT_AUTH,
                message: "no credential: pass --token (a writ admin token or the root credential) or set WRIT_TOKEN"
                    .to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Sends a request; non-2xx answers become [`Failure`]s with the
    /// server's explanation.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(&str, String)>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.credential {
            request = request.bearer_auth(c);
        }
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        if let Some((content_type, text)) = body {
            request = request.header("content-type", content_type).body(text);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach the writ server at {}", self.base))?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let etag = header("etag");
        let next_cursor = header("x-next-cursor");
        let text = response.text().await.context("reading the server's answer")?;
        if (200..300).contains(&status) {
            return Ok(Reply { etag, next_cursor, text });
        }
        Err(server_failure(status, &text).into())
    }

    /// GET with the credential.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::GET, path, &[], None).await
    }

    /// POST JSON with the credential.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::POST, path, &[], Some(("application/json", body.to_string()))).await
    }

    /// POST a form (RFC 6749 style endpoints), without the credential
    /// unless `authenticated`.
    pub async fn post_form(&self, path: &str, form: &[(&str, String)], authenticated: bool) -> anyhow::Result<Reply> {
        let body: String = url_encode(form);
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if authenticated && let Some(c) = &self.credential {
            request = request.bearer_auth(c);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach the writ server at {}", self.base))?;
        let status = response.status().as_u16();
        let text = response.text().await.context("reading the server's answer")?;
        if (200..300).contains(&status) {
            return Ok(Reply { etag: None, next_cursor: None, text });
        }
        Err(server_failure(status, &text).into())
    }
}

fn url_of(server: &str) -> anyhow::Result<String> {
    let trimmed = server.trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).with_context(|| format!("--server {server:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("--server {server:?}: use an http(s) URL");
    }
    Ok(trimmed.to_owned())
}

/// Form-encodes pairs (`application/x-www-form-urlencoded`).
pub fn url_encode(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v))).collect::<Vec<_>>().join("&")
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn encode_query(s: &str) -> String {
    encode_component(s).replace('+', "%20")
}

/// An error answer as a message and an exit code: 401/403 → 4, 404 → 5,
/// 409/412/428 → 3, a refused policy or request (400) → 2, else 1.
fn server_failure(status: u16, text: &str) -> Failure {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let description = body["error_description"].as_str().unwrap_or(text).to_owned();
    let code = body["error"].as_str().unwrap_or("error");
    let mut message = format!("{description} ({code}, HTTP {status}");
    if let Some(id) = body["request_id"].as_str() {
        message.push_str(&format!(", request id {id}"));
    }
    message.push(')');
    if let Some(current) = body["current_version"].as_i64() {
        message.push_str(&format!("\n  the server's policy is at version {current}"));
    }
    if let Some(explanation) = body.get("explanation").filter(|e| !e.is_null()) {
        message.push_str(&render_explanation(explanation));
    }
    let exit = match status {
        401 | 403 => EXIT_AUTH,
        404 => EXIT_NOT_FOUND,
        409 | 412 | 428 => EXIT_CONFLICT,
        400 => EXIT_DENIED,
        _ => EXIT_ERROR,
    };
    Failure { code: exit, message }
}

/// Policy diagnostics (`line`/`column`) or a denial's per-rule outcomes,
/// one per line.
pub fn render_explanation(explanation: &Value) -> String {
    let mut out = String::new();
    for item in explanation.as_array().into_iter().flatten() {
        if let (Some(line), Some(column)) = (item["line"].as_i64(), item["column"].as_i64()) {
            let severity = item["severity"].as_str().unwrap_or("error");
            out.push_str(&format!("\n  {line}:{column}: {severity}: {}", item["message"].as_str().unwrap_or_default()));
            if let Some(help) = item["help"].as_str() {
                out.push_str(&format!(" ({help})"));
            }
        } else if let Some(rule) = item["rule"].as_str() {
            let failures: Vec<&str> =
                item["failures"].as_array().into_iter().flatten().filter_map(|f| f["message"].as_str()).collect();
            out.push_str(&format!("\n  rule {rule:?}: {}", failures.join("; ")));
        } else {
            out.push_str(&format!("\n  {item}"));
        }
    }
    out
}

/// Rewrites diagnostics' `request body:` origin to the file they came from.
pub fn with_origin(failure: anyhow::Error, file: &str) -> anyhow::Error {
    match failure.downcast::<Failure>() {
        Ok(mut f) => {
            f.message =
                f.message.replace("request body:", &format!("{file}:")).replace("\n  ", &format!("\n  {file}:"));
            f.into()
        }
        Err(other) => other,
    }
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Prints rows as aligned columns (the last column is not padded).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let parts: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i == last { c } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            url_encode(&[("scope", "logs:read deploy".into()), ("t", "a.b-c_d".into())]),
            "scope=logs%3Aread+deploy&t=a.b-c_d"
        );
    }

    #[test]
    fn server_errors_map_to_exit_codes_and_show_diagnostics() {
        let body = r#"{"error":"invalid_request","error_description":"the policy has an error","request_id":"r1",
            "explanation":[{"severity":"error","line":7,"column":16,"message":"unknown permission `deploi`","help":"did you mean `deploy`?"}]}"#;
        let f = server_failure(400, body);
        assert_eq!(f.code, EXIT_DENIED);
        assert!(
            f.message.contains("7:16: error: unknown permission `deploi` (did you mean `deploy`?)"),
            "{}",
            f.message
        );
        assert_eq!(server_failure(403, "{}").code, EXIT_AUTH);
        assert_eq!(server_failure(412, r#"{"current_version":3}"#).code, EXIT_CONFLICT);
        assert!(server_failure(412, r#"{"current_version":3}"#).message.contains("version 3"));
        assert_eq!(server_failure(404, "{}").code, EXIT_NOT_FOUND);
        assert_eq!(server_failure(503, "oops").code, EXIT_ERROR);
    }
}
