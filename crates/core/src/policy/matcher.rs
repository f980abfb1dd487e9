//! Compiled conditions: exact, case-folded and glob patterns (built once at
//! parse time), and the comparison of a wanted value with a claim value.

use globset::{GlobBuilder, GlobMatcher};
use serde_json::Value;

/// Lowercases the way every case-insensitive comparison and pin key does.
pub(crate) fn fold(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// `fold(candidate) == folded`, without allocating. An ASCII candidate
/// (the usual repository, branch or environment name) folds byte by byte;
/// any other goes through Unicode lowercasing, under which some non-ASCII
/// characters become ASCII ones (the Kelvin sign `K` is `k`).
pub(crate) fn fold_eq(candidate: &str, folded: &str) -> bool {
    if candidate.is_ascii() {
        // `folded` is lowercase already, so folding both sides is the same
        // as folding the candidate.
        return candidate.eq_ignore_ascii_case(folded);
    }
    candidate.chars().flat_map(char::to_lowercase).eq(folded.chars())
}

/// One wanted string: compared exactly, or as a glob when it contains `*`.
///
/// `*` is the only wildcard: it matches any run of characters except `/`;
/// `**` written as a whole path segment (`refs/heads/**`) also crosses
/// `/`. Every other character, `?`, `[`, `{` and `\` included, is literal,
/// so a value means what it says.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    text: String,
    folded: Option<String>,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    Glob(GlobMatcher),
    /// A glob that did not compile: it never matches (the linter reports it).
    Invalid,
}

impl Pattern {
    /// Compiles `text`; on a bad glob returns a pattern that never matches
    /// together with the reason.
    pub fn compile(text: &str, case_insensitive: bool) -> (Pattern, Option<String>) {
        let folded = case_insensitive.then(|| fold(text));
        if !text.contains('*') {
            return (Pattern { text: text.to_owned(), folded, matcher: Matcher::Exact }, None);
        }
        // globset would read `v**` as `v*`; an author writing it most likely
        // expected it to cross `/`, so it is refused rather than guessed.
        if text.split('/').any(|segment| segment.contains("**") && segment != "**") {
            let problem = "`**` must be a whole path segment (`refs/heads/**`); within a segment write `*`";
            return (Pattern { text: text.to_owned(), folded, matcher: Matcher::Invalid }, Some(problem.to_owned()));
        }
        let mut glob = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            match c {
                '?' | '[' | ']' | '{' | '}' => {
                    glob.push('[');
                    glob.push(c);
                    glob.push(']');
                }
                c => glob.push(c),
            }
        }
        let built = GlobBuilder::new(&glob)
            .literal_separator(true)
            .backslash_escape(false)
            .case_insensitive(case_insensitive)
            .build();
        match built {
            Ok(g) => (Pattern { text: text.to_owned(), folded, matcher: Matcher::Glob(g.compile_matcher()) }, None),
            Err(e) => {
                (Pattern { text: text.to_owned(), folded, matcher: Matcher::Invalid }, Some(e.kind().to_string()))
            }
        }
    }

    /// The value as written in the policy.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The folded name that a case-insensitive pattern without `*` is
    /// ([`super::index`]): it matches a candidate exactly when the folded
    /// candidate equals it. `None` for globs and case-sensitive patterns.
    pub fn exact_folded(&self) -> Option<&str> {
        match (&self.matcher, &self.folded) {
            (Matcher::Exact, Some(folded)) => Some(folded),
            _ => None,
        }
    }

    /// True when the value contains `*`.
    pub fn is_glob(&self) -> bool {
        !matches!(self.matcher, Matcher::Exact)
    }

    /// Does `candidate` satisfy this pattern?
    pub fn matches(&self, candidate: &str) -> bool {
        match (&self.matcher, &self.folded) {
            (Matcher::Exact, Some(folded)) => fold_eq(candidate, folded),
            (Matcher::Exact, None) => candidate == self.text,
            (Matcher::Glob(glob), _) => glob.is_match(candidate),
            (Matcher::Invalid, _) => false,
        }
    }

    /// Conservative inclusion test for the linter: true only when every
    /// string `other` matches is certainly matched by `self`.
    pub fn covers(&self, other: &Pattern) -> bool {
        let same_text = match &self.folded {
            Some(folded) => fold_eq(&other.text, folded),
            None => self.text == other.text,
        };
        same_text || (!other.is_glob() && self.matches(&other.text))
    }
}

/// A name condition (`repository`, `project_path`, `namespace_path`) with
/// the parts of it that are fixed: the owner or namespace (pinned to its
/// id) and the top-level owner or group (decides [`super::Policy::names_owner`]).
#[derive(Debug, Clone)]
pub(crate) struct NamePattern {
    pub pattern: Pattern,
    /// The literal owner or namespace part, folded; `None` when it globs.
    pub owner: Option<String>,
    /// The literal first path segment, folded; `None` when it globs.
    pub top: Option<String>,
}

impl NamePattern {
    /// `owner/name` (GitHub `repository`).
    pub fn repository(text: &str) -> Result<(NamePattern, Option<String>), String> {
        if text.chars().all(|c| c == '*') && !text.is_empty() {
            // "any repository": kept so the linter can say why it is refused.
            let (pattern, problem) = Pattern::compile(text, true);
            return Ok((NamePattern { pattern, owner: None, top: None }, problem));
        }
        let Some((owner, name)) = text.split_once('/') else {
            return Err(format!("`{text}` is not of the form owner/name"));
        };
        if owner.is_empty() || name.is_empty() || name.contains('/') {
            return Err(format!("`{text}` is not of the form owner/name"));
        }
        let literal_owner = (!owner.contains('*')).then(|| fold(owner));
        let (pattern, problem) = Pattern::compile(text, true);
        Ok((NamePattern { pattern, top: literal_owner.clone(), owner: literal_owner }, problem))
    }

    /// `group/sub/project` (GitLab `project_path`): the namespace is all but
    /// the last segment, fixed when it has no `*` and the last segment is
    /// not `**`.
    pub fn project(text: &str) -> Result<(NamePattern, Option<String>), String> {
        let Some((namespace, name)) = text.rsplit_once('/') else {
            return Err(format!("`{text}` is not of the form group/project"));
        };
        if namespace.is_empty() || name.is_empty() || namespace.split('/').any(str::is_empty) {
            return Err(format!("`{text}` is not of the form group/project"));
        }
        let owner = (!namespace.contains('*') && !name.contains("**")).then(|| fold(namespace));
        let (pattern, problem) = Pattern::compile(text, true);
        Ok((NamePattern { pattern, owner, top: literal_top(text) }, problem))
    }

    /// `group/sub` (GitLab `namespace_path`).
    pub fn namespace(text: &str) -> Result<(NamePattern, Option<String>), String> {
        if text.is_empty() || text.split('/').any(str::is_empty) {
            return Err(format!("`{text}` is not a group path"));
        }
        let owner = (!text.contains('*')).then(|| fold(text));
        let (pattern, problem) = Pattern::compile(text, true);
        Ok((NamePattern { pattern, owner, top: literal_top(text) }, problem))
    }
}

fn literal_top(path: &str) -> Option<String> {
    let top = path.split('/').next().unwrap_or_default();
    (!top.is_empty() && !top.contains('*')).then(|| fold(top))
}

/// One wanted value of a `claims` condition.
#[derive(Debug, Clone)]
pub(crate) enum Wanted {
    /// Matches a string claim (exactly or as a glob) and the JSON spelling
    /// of a boolean or number claim.
    Str(Pattern),
    /// Matches the JSON boolean or its spelling `"true"`/`"false"`.
    Bool(bool),
    /// Matches the JSON number or its decimal spelling (`"42"`).
    Int(i64),
}

impl Wanted {
    fn matches_scalar(&self, claim: &Value) -> bool {
        match (self, claim) {
            (Wanted::Str(p), Value::String(s)) => p.matches(s),
            (Wanted::Str(p), Value::Bool(b)) => p.matches(if *b { "true" } else { "false" }),
            (Wanted::Str(p), Value::Number(n)) => p.matches(&n.to_string()),
            (Wanted::Bool(want), Value::Bool(b)) => want == b,
            (Wanted::Bool(want), Value::String(s)) => s == if *want { "true" } else { "false" },
            (Wanted::Int(want), Value::Number(n)) => n.as_i64() == Some(*want),
            (Wanted::Int(want), Value::String(s)) => *s == want.to_string(),
            _ => false,
        }
    }

    /// The value as the policy wrote it.
    pub fn render(&self) -> String {
        match self {
            Wanted::Str(p) => p.text().to_owned(),
            Wanted::Bool(b) => b.to_string(),
            Wanted::Int(i) => i.to_string(),
        }
    }

    /// Linter inclusion test, see [`Pattern::covers`].
    pub fn covers(&self, other: &Wanted) -> bool {
        match (self, other) {
            (Wanted::Str(a), Wanted::Str(b)) => a.covers(b),
            (Wanted::Bool(a), Wanted::Bool(b)) => a == b,
            (Wanted::Int(a), Wanted::Int(b)) => a == b,
            _ => false,
        }
    }
}

/// Does the claim satisfy any of the wanted values? An absent or null claim
/// never does; an array claim does when any element does.
pub(crate) fn claim_matches<'w, I>(claim: Option<&Value>, wanted: I) -> bool
where
    I: IntoIterator<Item = &'w Wanted>,
    I::IntoIter: Clone,
{
    let wanted = wanted.into_iter();
    match claim {
        None | Some(Value::Null | Value::Object(_)) => false,
        Some(Value::Array(items)) => items.iter().any(|item| wanted.clone().any(|w| w.matches_scalar(item))),
        Some(scalar) => wanted.clone().any(|w| w.matches_scalar(scalar)),
    }
}

/// A string condition (sugar such as `ref`): the claim must be a string, or
/// an array with a string, that matches any pattern.
pub(crate) fn string_claim_matches<'w, I>(claim: Option<&Value>, wanted: I) -> bool
where
    I: IntoIterator<Item = &'w Pattern>,
    I::IntoIter: Clone,
{
    let wanted = wanted.into_iter();
    let one = |v: &Value| v.as_str().is_some_and(|s| wanted.clone().any(|p| p.matches(s)));
    match claim {
        Some(Value::Array(items)) => items.iter().any(one),
        Some(v) => one(v),
        None => false,
    }
}

/// What a claim holds, for explanations: strings as they are, other values
/// in their JSON spelling; `None` for absent or null.
pub(crate) fn render_got(claim: Option<&Value>) -> Option<String> {
    match claim? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// What a condition wants, for explanations: the value itself, or
/// `one of a, b` for a list.
pub(crate) fn render_wanted<I: IntoIterator<Item = String>>(values: I) -> String {
    let values: Vec<String> = values.into_iter().collect();
    match values.as_slice() {
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fold_eq_is_folding_then_comparing() {
        let names = [
            "acme/web",
            "Acme/Web",
            "ACME/WEB",
            "acme/we",
            "acme/webb",
            "",
            "a",
            "Straße",
            "STRASSE",
            "straße",
            "\u{212A}elvin",
            "kelvin",
            "KELVIN",
            "İstanbul",
            "i\u{307}stanbul",
            "istanbul",
            "Ωmega",
            "ωmega",
        ];
        for candidate in names {
            for text in names {
                let folded = fold(text);
                assert_eq!(fold_eq(candidate, &folded), fold(candidate) == folded, "{candidate:?} against {text:?}");
            }
        }
        assert!(fold_eq("\u{212A}elvin", "kelvin"), "the Kelvin sign folds to an ASCII k");
    }

    fn pat(text: &str) -> Pattern {
        let (p, problem) = Pattern::compile(text, false);
        assert_eq!(problem, None);
        p
    }

    #[test]
    fn star_never_crosses_a_slash_but_a_double_star_segment_does() {
        assert!(pat("refs/tags/v*").matches("refs/tags/v1.2"));
        assert!(!pat("refs/tags/v*").matches("refs/tags/v1/x"));
        assert!(pat("refs/heads/**").matches("refs/heads/a/b/c"));
        assert!(!pat("refs/heads/*").matches("refs/heads/a/b"));
    }

    #[test]
    fn only_the_star_is_special() {
        assert!(pat("v?[1]{a}\\*").matches("v?[1]{a}\\x"));
        assert!(!pat("v?*").matches("vx1"));
        assert!(pat("release?").matches("release?"));
        assert!(!pat("release?").matches("releaseX"));
    }

    #[test]
    fn case_insensitive_patterns_fold_both_sides() {
        let (p, _) = Pattern::compile("Acme/Web", true);
        assert!(p.matches("acme/WEB"));
        let (g, _) = Pattern::compile("ACME/*", true);
        assert!(g.matches("acme/web"));
        assert!(!pat("Acme/Web").matches("acme/web"));
    }

    #[test]
    fn wanted_values_match_json_spellings() {
        let s = |t| Wanted::Str(pat(t));
        assert!(claim_matches(Some(&json!(true)), &[s("true")]));
        assert!(claim_matches(Some(&json!(42)), &[s("42")]));
        assert!(claim_matches(Some(&json!("true")), &[Wanted::Bool(true)]));
        assert!(claim_matches(Some(&json!(true)), &[Wanted::Bool(true)]));
        assert!(!claim_matches(Some(&json!("True")), &[Wanted::Bool(true)]));
        assert!(claim_matches(Some(&json!("42")), &[Wanted::Int(42)]));
        assert!(!claim_matches(Some(&json!("042")), &[Wanted::Int(42)]));
        assert!(claim_matches(Some(&json!(["a", "b"])), &[s("b")]));
        assert!(!claim_matches(Some(&json!(null)), &[s("null")]));
        assert!(!claim_matches(None, &[s("x")]));
        assert!(!claim_matches(Some(&json!({"a": 1})), &[s("*")]));
    }

    #[test]
    fn name_patterns_know_their_fixed_owner() {
        let (r, _) = NamePattern::repository("Acme/*").expect("valid");
        assert_eq!(r.owner.as_deref(), Some("acme"));
        let (r, _) = NamePattern::repository("*/web").expect("valid");
        assert_eq!(r.owner, None);
        assert!(NamePattern::repository("acme").is_err());
        assert!(NamePattern::repository("acme/web/x").is_err());
        let (p, _) = NamePattern::project("Group/Sub/app").expect("valid");
        assert_eq!((p.owner.as_deref(), p.top.as_deref()), (Some("group/sub"), Some("group")));
        let (p, _) = NamePattern::project("group/**").expect("valid");
        assert_eq!((p.owner, p.top.as_deref()), (None, Some("group")));
    }
}
