//! The writ server's wire types as this client sends and reads them, a redacting wrapper for tokens, and the readable rendering of an error body with its per-rule explanation.
//!
//! These mirror DESIGN.md's "Wire and config contract" rather than importing
//! the server's types: the client stays small, and unknown fields the
//! server adds later are ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A credential (an OIDC token or a writ token). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The credential itself, for the few places that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// `POST /v1/exchange` request body.
#[derive(Debug, Serialize)]
pub struct ExchangeRequest<'a> {
    /// The CI job's OIDC token.
    #[serde(serialize_with = "expose")]
    pub token: &'a Secret,
    /// The org to get a token for.
    pub org: &'a str,
    /// Permissions wanted; none: the matching rule's grant.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub permissions: &'a [String],
    /// Apps to limit the token to.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub apps: &'a [String],
    /// Machines to limit the token to.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub machines: &'a [String],
    /// Lifetime wanted, e.g. `10m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<&'a str>,
}

fn expose<S: serde::Serializer>(secret: &&Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

/// `POST /v1/exchange` 200 body.
#[derive(Debug, Deserialize)]
pub struct Granted {
    /// The writ token.
    #[serde(deserialize_with = "secret")]
    pub token: Secret,
    /// Expiry, RFC 3339.
    #[serde(default)]
    pub expires_at: String,
    /// Seconds until expiry.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// The org.
    #[serde(default)]
    pub org: String,
    /// Granted permissions.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Apps the token is limited to; empty: not limited.
    #[serde(default)]
    pub apps: Vec<String>,
    /// Machines the token is limited to; empty: not limited.
    #[serde(default)]
    pub machines: Vec<String>,
    /// The rule that granted it.
    #[serde(default)]
    pub rule: String,
}

fn secret<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
    String::deserialize(deserializer).map(Secret::new)
}

/// The one error shape of every writ endpoint.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// RFC 6749 error code.
    pub error: String,
    /// One sentence.
    #[serde(default)]
    pub error_description: Option<String>,
    /// Per-rule detail of a denial, when the server shows it to this caller.
    #[serde(default)]
    pub explanation: Option<Value>,
    /// The server's request id, for the org admins' audit log.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A readable account of a non-2xx answer: the error code and sentence,
/// each rule's failed conditions, and the request id. Falls back to the
/// status and a body excerpt when the body is not writ's error shape (a
/// proxy's or load balancer's page).
pub fn render_error(status: u16, body: &str) -> Vec<String> {
    let Ok(parsed) = serde_json::from_str::<ErrorBody>(body) else {
        let text = crate::client::excerpt(body);
        return vec![if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") }];
    };
    let mut lines = vec![match &parsed.error_description {
        Some(description) => format!("{} (HTTP {status}): {description}", parsed.error),
        None => format!("{} (HTTP {status})", parsed.error),
    }];
    match &parsed.explanation {
        Some(Value::Array(rules)) => {
            for rule in rules {
                render_rule(rule, &mut lines);
            }
        }
        Some(Value::Null) | None => {}
        Some(other) => lines.push(format!("explanation: {other}")),
    }
    if let Some(id) = parsed.request_id.as_deref().filter(|id| !id.is_empty()) {
        lines.push(format!("request id: {id} (the org's admins find this decision in the audit log under it)"));
    }
    lines
}

/// One `{"rule", "matched", "failures"}` entry as lines.
fn render_rule(rule: &Value, lines: &mut Vec<String>) {
    let Some(object) = rule.as_object() else {
        lines.push(format!("- {rule}"));
        return;
    };
    let name = object.get("rule").and_then(Value::as_str).unwrap_or("(unnamed)");
    lines.push(match object.get("matched").and_then(Value::as_bool) {
        Some(true) => format!("rule {name:?} matched the caller but not the request:"),
        Some(false) => format!("rule {name:?} did not match:"),
        None => format!("rule {name:?}:"),
    });
    let failures = object.get("failures").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for failure in failures {
        lines.push(format!("  - {}", render_failure(failure)));
    }
    // Anything else the server adds to an entry is shown rather than lost.
    for (key, value) in object.iter().filter(|(k, _)| !matches!(k.as_str(), "rule" | "matched" | "failures")) {
        lines.push(format!("  {key}: {}", plain(value)));
    }
}

/// A failure object: its `message` sentence when the server sends one,
/// else its `type` and fields.
fn render_failure(failure: &Value) -> String {
    let Some(object) = failure.as_object() else {
        return plain(failure);
    };
    if let Some(message) = object.get("message").and_then(Value::as_str) {
        return message.to_owned();
    }
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("failure");
    let fields: Vec<String> =
        object.iter().filter(|(k, _)| k.as_str() != "type").map(|(k, v)| format!("{k}: {}", plain(v))).collect();
    if fields.is_empty() { kind.to_owned() } else { format!("{kind} ({})", fields.join(", ")) }
}

/// A JSON value as text, strings without quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "(none)".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret = Secret::new("eyJ.secret.sig".to_owned());
        assert!(!format!("{secret:?}").contains("secret.sig"));
        let request =
            ExchangeRequest { token: &secret, org: "o", permissions: &[], apps: &[], machines: &[], ttl: None };
        assert!(!format!("{request:?}").contains("secret.sig"));
        assert_eq!(
            serde_json::to_value(&request).expect("json"),
            serde_json::json!({"token": "eyJ.secret.sig", "org": "o"})
        );
    }

    #[test]
    fn a_denial_is_rendered_rule_by_rule() {
        let body = r#"{"error":"invalid_grant","error_description":"no rule grants this",
            "explanation":[
              {"rule":"deploy-web","matched":false,"failures":[
                {"type":"claim","claim":"ref","wanted":"refs/heads/main","got":"refs/pull/7/merge",
                 "message":"claim `ref` is `refs/pull/7/merge`; the rule wants refs/heads/main"},
                {"type":"claim","claim":"environment","wanted":"production","got":null}]},
              {"rule":"logs","matched":true,"failures":[{"type":"permission_not_granted","permission":"deploy"}]}],
            "request_id":"req-1"}"#;
        assert_eq!(
            render_error(400, body),
            [
                "invalid_grant (HTTP 400): no rule grants this",
                "rule \"deploy-web\" did not match:",
                "  - claim `ref` is `refs/pull/7/merge`; the rule wants refs/heads/main",
                "  - claim (claim: environment, got: (none), wanted: production)",
                "rule \"logs\" matched the caller but not the request:",
                "  - permission_not_granted (permission: deploy)",
                "request id: req-1 (the org's admins find this decision in the audit log under it)",
            ]
        );
    }

    #[test]
    fn a_generic_denial_has_no_rule_lines() {
        let body =
            r#"{"error":"invalid_grant","error_description":"no trust policy grants this identity","request_id":""}"#;
        assert_eq!(render_error(400, body), ["invalid_grant (HTTP 400): no trust policy grants this identity"]);
    }

    #[test]
    fn a_foreign_error_page_is_shown_as_status_and_excerpt() {
        assert_eq!(render_error(403, "<html>\nForbidden\n</html>"), ["HTTP 403: <html> Forbidden </html>"]);
        assert_eq!(render_error(403, ""), ["HTTP 403"]);
    }

    #[test]
    fn a_grant_reads_the_documented_fields_and_ignores_new_ones() {
        let body = r#"{"token":"t","token_type":"Bearer","expires_in":600,"expires_at":"2026-11-27T12:10:00Z",
            "org":"acme-prod","permissions":["deploy"],"apps":["web"],"machines":[],"rule":"deploy-web","new":1}"#;
        let granted: Granted = serde_json::from_str(body).expect("grant");
        assert_eq!(granted.token.expose(), "t");
        assert_eq!(granted.permissions, ["deploy"]);
        assert_eq!(granted.rule, "deploy-web");
    }
}
