//! Pieces shared by the GitHub and GitLab claim builders: stable fake ids, fake commit shas, time and override handling.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// A stable, realistic-looking numeric id for `name` within `space`.
///
/// Same input, same id, across runs and machines, so tests can pin ids.
/// Names are lowercased first because GitHub and GitLab treat owner and
/// repository names case-insensitively: `Acme/Web` and `acme/web` are the
/// same repository and must carry the same id.
pub(crate) fn stable_id(space: &str, name: &str) -> u64 {
    let digest = Sha256::digest(format!("writ-testkit:{space}:{}", name.to_lowercase()));
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Nine digits: the range real GitHub and GitLab ids live in today.
    100_000_000 + u64::from_be_bytes(first) % 900_000_000
}

/// A stable 40-hex-digit fake commit sha for `seed`.
pub(crate) fn fake_sha(seed: &str) -> String {
    Sha256::digest(format!("writ-testkit:sha:{seed}")).iter().take(20).map(|byte| format!("{byte:02x}")).collect()
}

/// A fresh random `jti`, as both issuers send (a UUID v4).
pub(crate) fn fresh_jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Token times: `nbf` and `exp` follow `iat` unless set explicitly.
#[derive(Debug, Clone)]
pub(crate) struct Times {
    pub(crate) iat: i64,
    pub(crate) nbf: Option<i64>,
    pub(crate) exp: Option<i64>,
    pub(crate) lifetime: i64,
    /// How far `nbf` sits before `iat` when derived (GitLab backdates it).
    pub(crate) nbf_skew: i64,
}

impl Times {
    pub(crate) fn nbf(&self) -> i64 {
        self.nbf.unwrap_or(self.iat - self.nbf_skew)
    }

    pub(crate) fn exp(&self) -> i64 {
        self.exp.unwrap_or(self.iat + self.lifetime)
    }
}

/// Claims set or removed by hand; applied after the derived claims.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    set: Map<String, Value>,
    removed: BTreeSet<String>,
}

impl Overrides {
    pub(crate) fn set(&mut self, name: String, value: Value) {
        self.removed.remove(&name);
        self.set.insert(name, value);
    }

    pub(crate) fn remove(&mut self, name: String) {
        self.set.remove(&name);
        self.removed.insert(name);
    }

    pub(crate) fn apply(&self, mut claims: Map<String, Value>) -> Value {
        for (name, value) in &self.set {
            claims.insert(name.clone(), value.clone());
        }
        for name in &self.removed {
            claims.remove(name);
        }
        Value::Object(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stable_ids_are_stable_case_insensitive_and_spread() {
        assert_eq!(stable_id("repo", "acme/web"), stable_id("repo", "Acme/Web"));
        assert_ne!(stable_id("repo", "acme/web"), stable_id("repo", "acme/api"));
        assert_ne!(stable_id("repo", "acme"), stable_id("account", "acme"));
        let id = stable_id("account", "acme");
        assert!((100_000_000..1_000_000_000).contains(&id));
    }

    #[test]
    fn fake_shas_look_like_git_shas() {
        let sha = fake_sha("acme/web@refs/heads/main");
        assert_eq!(sha.len(), 40);
        assert!(sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(sha, fake_sha("acme/web@refs/heads/main"));
        assert_ne!(sha, fake_sha("acme/web@refs/heads/dev"));
    }

    #[test]
    fn later_set_or_remove_wins() {
        let mut overrides = Overrides::default();
        overrides.set("a".into(), json!(1));
        overrides.remove("b".into());
        overrides.remove("c".into());
        overrides.set("c".into(), json!(3));
        let base = json!({"a": 0, "b": 0, "d": 0});
        let Value::Object(base) = base else { unreachable!("literal object") };
        assert_eq!(overrides.apply(base), json!({"a": 1, "c": 3, "d": 0}));
    }
}
