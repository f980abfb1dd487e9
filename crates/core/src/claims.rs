//! Claims of an OIDC token whose signature, issuer, audience and times have
//! been verified.
//!
//! [`VerifiedClaims`] can only be built by [`crate::jwt::verify_oidc`] (and by
//! test helpers behind `cfg(test)`), so a policy decision can never be made on
//! claims that did not pass verification: "don't check, convert".

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::issuer::IssuerKind;

/// `name` as a `&'static str` when it is one that CI issuers send (RFC
/// 7519's registered claims, and every name of the linter's
/// [`GITHUB_CLAIMS`](crate::policy::GITHUB_CLAIMS) and
/// [`GITLAB_CLAIMS`](crate::policy::GITLAB_CLAIMS), which a test keeps in
/// step). A parsed claim with such a name borrows it instead of allocating
/// it: a GitHub token has about 30 claims, and copying their names out of
/// the payload was a third of the allocations of an exchange. Any other
/// name is stored as parsed.
/// A `match`, which compiles to a comparison by length and then by bytes,
/// costs less than a binary search over the names.
fn claim_name(name: &str) -> Option<&'static str> {
    // Each name maps to itself, so a typo cannot rename a claim.
    macro_rules! known {
        ($($known:literal),* $(,)?) => {
            match name {
                $($known => Some($known),)*
                _ => None,
            }
        };
    }
    known!(
        "actor",
        "actor_id",
        "aud",
        "azp",
        "base_ref",
        "check_run_id",
        "ci_config_ref_uri",
        "ci_config_sha",
        "deployment_tier",
        "email",
        "email_verified",
        "enterprise",
        "enterprise_id",
        "environment",
        "environment_action",
        "environment_node_id",
        "environment_protected",
        "event_name",
        "exp",
        "groups_direct",
        "head_ref",
        "iat",
        "iss",
        "job_id",
        "job_namespace_id",
        "job_namespace_path",
        "job_project_id",
        "job_project_path",
        "job_workflow_ref",
        "job_workflow_sha",
        "jti",
        "namespace_id",
        "namespace_path",
        "nbf",
        "nonce",
        "pipeline_id",
        "pipeline_source",
        "project_id",
        "project_path",
        "project_visibility",
        "ref",
        "ref_path",
        "ref_protected",
        "ref_type",
        "repository",
        "repository_id",
        "repository_owner",
        "repository_owner_id",
        "repository_visibility",
        "run_attempt",
        "run_id",
        "run_number",
        "runner_environment",
        "runner_id",
        "sha",
        "sub",
        "user_access_level",
        "user_email",
        "user_id",
        "user_identities",
        "user_login",
        "workflow",
        "workflow_ref",
        "workflow_sha",
    )
}

/// The claims of one token by name: each name once, in name order.
///
/// A vector sorted once rather than a `BTreeMap<String, Value>`: a token's
/// 20-40 claims are inserted once and then only looked up, and building the
/// tree (a node per few claims, every insert a search) was most of what
/// parsing a payload cost. When a name appears more than once, the last
/// one counts, as with a map (RFC 7519 §4 allows either that or a refusal).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    entries: Vec<(Cow<'static, str>, Value)>,
}

impl Claims {
    /// The claim called `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let found = self.entries.binary_search_by(|(key, _)| key.as_ref().cmp(name)).ok()?;
        self.entries.get(found).map(|(_, value)| value)
    }

    /// Whether there is a claim called `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// How many claims there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every claim, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(key, value)| (key.as_ref(), value))
    }

    /// The claims as a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        self.entries.iter().map(|(key, value)| (key.clone().into_owned(), value.clone())).collect()
    }

    /// Claims in the order they came, duplicates allowed: sorted by name,
    /// and of each name the last kept.
    fn from_entries(mut entries: Vec<(Cow<'static, str>, Value)>) -> Claims {
        // Stable: among equal names the later one stays later.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            std::mem::swap(later, kept);
            true
        });
        Claims { entries }
    }
}

impl From<Map<String, Value>> for Claims {
    fn from(map: Map<String, Value>) -> Claims {
        Claims::from_entries(map.into_iter().map(|(key, value)| (Cow::Owned(key), value)).collect())
    }
}

impl<'de> serde::Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = Claims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(32).min(64));
                while let Some(entry) = map.next_entry::<ClaimName, Value>()? {
                    entries.push((entry.0.0, entry.1));
                }
                Ok(Claims::from_entries(entries))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A claim's name as parsed: borrowed when it is a known one.
struct ClaimName(Cow<'static, str>);

impl<'de> serde::Deserialize<'de> for ClaimName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl serde::de::Visitor<'_> for NameVisitor {
            type Value = ClaimName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<ClaimName, E> {
                Ok(ClaimName(claim_name(name).map_or_else(|| Cow::Owned(name.to_owned()), Cow::Borrowed)))
            }
            fn visit_string<E: serde::de::Error>(self, name: String) -> Result<ClaimName, E> {
                Ok(ClaimName(claim_name(&name).map_or(Cow::Owned(name), Cow::Borrowed)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

impl serde::Serialize for Claims {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// Verified claims of one OIDC subject token. Private fields: the only way in
/// is verification.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub(crate) issuer_name: String,
    pub(crate) issuer_kind: IssuerKind,
    pub(crate) issuer_url: String,
    pub(crate) jti: String,
    pub(crate) sub: String,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    pub(crate) claims: Claims,
}

impl VerifiedClaims {
    /// The configured name of the issuer that signed the token (`github`).
    pub fn issuer_name(&self) -> &str {
        &self.issuer_name
    }

    /// The kind of that issuer.
    pub fn issuer_kind(&self) -> IssuerKind {
        self.issuer_kind
    }

    /// The issuer URL, exactly as in the token's `iss` (equal to the config).
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// The token's unique id; single-use is enforced on it.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// The token's `sub`. Never parse it for decisions: its format changes.
    pub fn sub(&self) -> &str {
        &self.sub
    }

    /// Issued-at, seconds since the Unix epoch.
    pub fn iat(&self) -> i64 {
        self.iat
    }

    /// Expiry, seconds since the Unix epoch.
    pub fn exp(&self) -> i64 {
        self.exp
    }

    /// One claim by name, as the issuer sent it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// A claim rendered as a string: strings as they are, numbers and
    /// booleans in their JSON spelling; `None` for absent, null, arrays and
    /// objects.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.text(name).map(Cow::into_owned)
    }

    /// [`get_str`](Self::get_str) without copying a string claim: only a
    /// number or a boolean is rendered into a new string.
    pub fn text(&self, name: &str) -> Option<Cow<'_, str>> {
        match self.claims.get(name)? {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(Cow::Owned(b.to_string())),
            _ => None,
        }
    }

    /// All claims, for audit records and `policy test` output.
    pub fn all(&self) -> &Claims {
        &self.claims
    }

    /// Keeps who the token names (issuer, `sub`, `jti`) and frees every
    /// other claim now. The exchange calls it before it waits for its
    /// commit: after that wait the request may go on on another thread, and
    /// a claim freed there costs the allocator more than one freed where it
    /// was allocated (docs/PERFORMANCE.md, session 9).
    pub fn into_subject(self) -> TokenSubject {
        TokenSubject { issuer_name: self.issuer_name, sub: self.sub, jti: self.jti }
    }

    /// A copy of who the token names, keeping the claims.
    pub fn subject(&self) -> TokenSubject {
        TokenSubject { issuer_name: self.issuer_name.clone(), sub: self.sub.clone(), jti: self.jti.clone() }
    }

    /// Builds claims without verification, for unit tests and for the
    /// offline `policy test --claims` path, which evaluates a claims file the
    /// operator typed in (no token exists there to verify). Never call it on
    /// the exchange path.
    pub fn from_trusted_claims_file(issuer_name: &str, issuer_kind: IssuerKind, claims: Map<String, Value>) -> Self {
        let claims = Claims::from(claims);
        let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let num = |k: &str| claims.get(k).and_then(Value::as_i64).unwrap_or_default();
        VerifiedClaims {
            issuer_name: issuer_name.to_owned(),
            issuer_kind,
            issuer_url: text("iss"),
            jti: text("jti"),
            sub: text("sub"),
            iat: num("iat"),
            exp: num("exp"),
            claims,
        }
    }
}

/// Who a verified token names, without its other claims
/// ([`VerifiedClaims::subject`], [`VerifiedClaims::into_subject`]).
#[derive(Debug, Clone)]
pub struct TokenSubject {
    /// The configured name of the issuer that signed the token.
    pub issuer_name: String,
    /// The token's `sub`.
    pub sub: String,
    /// The token's `jti`.
    pub jti: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn claims_parse_into_name_order_and_the_last_of_a_repeated_name_counts() {
        let claims: Claims =
            serde_json::from_str(r#"{"sub":"a","iss":"x","aud":["y"],"sub":"b","n":1,"iss":"z"}"#).expect("an object");
        assert_eq!(claims.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["aud", "iss", "n", "sub"]);
        assert_eq!(claims.get("sub"), Some(&json!("b")));
        assert_eq!(claims.get("iss"), Some(&json!("z")));
        assert_eq!(claims.get("n"), Some(&json!(1)));
        assert_eq!(claims.get("absent"), None);
        assert!(claims.contains_key("aud"));
        // The same as serde_json's own map, which keeps the last duplicate.
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"sub":"a","iss":"x","aud":["y"],"sub":"b","n":1,"iss":"z"}"#).expect("an object");
        assert_eq!(claims.to_map(), map);
        assert_eq!(Claims::from(map.clone()), claims);
        assert_eq!(serde_json::to_value(&claims).expect("serializes"), Value::Object(map));
    }

    #[test]
    fn known_names_are_borrowed_and_any_other_name_is_kept() {
        // A known name, one escaped in the JSON (parsed into a new string),
        // and names writ has never heard of.
        let claims: Claims =
            serde_json::from_str(r#"{"repository":"a/b","r\u0065f":"main","x-custom":1,"ref_":2}"#).expect("an object");
        assert_eq!(claims.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["ref", "ref_", "repository", "x-custom"]);
        assert!(
            claims
                .entries
                .iter()
                .filter(|(k, _)| k != "x-custom" && k != "ref_")
                .all(|(k, _)| matches!(k, Cow::Borrowed(_)))
        );
        assert_eq!(claims.get("ref"), Some(&json!("main")));
        assert_eq!(claims.get("x-custom"), Some(&json!(1)));
        assert_eq!(claims.get("ref_"), Some(&json!(2)));
    }

    #[test]
    fn every_documented_github_and_gitlab_claim_name_is_known() {
        for name in crate::policy::GITHUB_CLAIMS.iter().chain(crate::policy::GITLAB_CLAIMS) {
            assert_eq!(claim_name(name), Some(*name), "add {name:?} to claim_name's list");
        }
    }

    #[test]
    fn only_an_object_is_claims() {
        for not_an_object in ["[]", "\"iss\"", "1", "null", r#"{"a":1"#, r#"{1:2}"#] {
            assert!(serde_json::from_str::<Claims>(not_an_object).is_err(), "{not_an_object}");
        }
        let empty: Claims = serde_json::from_str("{}").expect("an object");
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
    }
}
