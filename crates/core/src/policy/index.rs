//! The rules that may grant a token, found without walking every rule.
//!
//! Most rules name their repositories (GitHub) or projects (GitLab)
//! exactly. An org with a rule per repository would otherwise test each of
//! them against every token: with 1,000 rules that was about 55 µs per
//! exchange, more than the exchange's crypto. The index maps each exactly
//! written name, folded as the rule compares it, to the rules that list
//! it; a rule it cannot place (no name condition, a glob, a name compared
//! case-sensitively) is a candidate for every token. The candidates come
//! out in document order, so the first rule that grants is the same one a
//! walk over every rule finds.

use std::collections::HashMap;

use serde_json::Value;

use super::matcher::{NamePattern, fold};
use super::{Located, Rule, Sugar};
use crate::claims::VerifiedClaims;
use crate::issuer::IssuerKind;

/// A policy's rules by the names of their `repository` and `project_path`
/// conditions.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    rules: usize,
    repository: NameIndex,
    project_path: NameIndex,
}

impl RuleIndex {
    pub fn new(rules: &[Rule]) -> RuleIndex {
        RuleIndex {
            rules: rules.len(),
            repository: NameIndex::new(rules.iter().map(|r| r.repository.as_ref())),
            project_path: NameIndex::new(rules.iter().map(|r| r.project_path.as_ref())),
        }
    }

    /// Positions of the rules that may grant `claims`, ascending. Every
    /// rule left out has a name condition that `claims` fail; a rule in it
    /// may fail too. A generic issuer's tokens have no name claim the
    /// index knows: every rule is a candidate.
    pub fn candidates<'a>(&'a self, claims: &VerifiedClaims) -> Candidates<'a> {
        let (index, claim) = match claims.issuer_kind() {
            IssuerKind::GitHub => (&self.repository, "repository"),
            IssuerKind::GitLab => (&self.project_path, "project_path"),
            IssuerKind::Generic => return Candidates::All(0..self.rules),
        };
        let named = claims.get(claim).and_then(Value::as_str).and_then(|name| index.named(name));
        Candidates::Merged { named: named.map_or(&[], Vec::as_slice), others: &index.others }
    }
}

/// One name condition's index.
#[derive(Debug, Clone, Default)]
struct NameIndex {
    /// A folded name → the positions of the rules whose condition is a
    /// list of exact, case-insensitive names that holds it; ascending.
    exact: HashMap<String, Vec<usize>>,
    /// The positions of every other rule, ascending.
    others: Vec<usize>,
}

impl NameIndex {
    fn new<'a>(conditions: impl Iterator<Item = Option<&'a Sugar<Vec<Located<NamePattern>>>>>) -> NameIndex {
        let mut index = NameIndex::default();
        for (position, condition) in conditions.enumerate() {
            let names: Option<Vec<&str>> =
                condition.map(|c| c.value.iter().map(|p| p.value.pattern.exact_folded()).collect()).unwrap_or_default();
            match names {
                Some(names) => {
                    for name in names {
                        let positions = index.exact.entry(name.to_owned()).or_default();
                        if positions.last() != Some(&position) {
                            positions.push(position);
                        }
                    }
                }
                None => index.others.push(position),
            }
        }
        index
    }

    /// The rules that list `name`, folded as [`fold`] does. A short ASCII
    /// name (the usual one) is folded on the stack.
    fn named(&self, name: &str) -> Option<&Vec<usize>> {
        let mut buffer = [0u8; 128];
        if let Some(folded) = buffer.get_mut(..name.len()).filter(|_| name.is_ascii()) {
            folded.copy_from_slice(name.as_bytes());
            folded.make_ascii_lowercase();
            if let Ok(folded) = std::str::from_utf8(folded) {
                return self.exact.get(folded);
            }
        }
        self.exact.get(&fold(name))
    }
}

/// The candidates of [`RuleIndex::candidates`].
#[derive(Debug)]
pub(crate) enum Candidates<'a> {
    All(std::ops::Range<usize>),
    /// Two ascending lists, merged (they share no position).
    Merged {
        named: &'a [usize],
        others: &'a [usize],
    },
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::All(range) => range.next(),
            Candidates::Merged { named, others } => {
                let list = match (named.first(), others.first()) {
                    (Some(n), Some(o)) if n < o => named,
                    (Some(_), None) => named,
                    (_, Some(_)) => others,
                    (None, None) => return None,
                };
                let (&first, rest) = list.split_first()?;
                *list = rest;
                Some(first)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::policy::{SourceFormat, parse};

    fn claims(issuer: &str, kind: IssuerKind, name_claim: &str, name: Option<&str>) -> VerifiedClaims {
        let mut map = Map::new();
        if let Some(name) = name {
            map.insert(name_claim.to_owned(), json!(name));
        }
        VerifiedClaims::from_trusted_claims_file(issuer, kind, map)
    }

    fn rule(name: &str, condition: &str) -> String {
        format!("\n[[rule]]\nname = \"{name}\"\nissuer = \"github\"\n{condition}\npermissions = [\"deploy\"]\n")
    }

    /// The positions a walk over every rule would not pass over for a
    /// GitHub token with this `repository`.
    fn walked(policy: &crate::policy::Policy, repository: Option<&str>) -> Vec<usize> {
        let positions = policy.rules.iter().enumerate();
        positions
            .filter(|(_, rule)| match (&rule.repository, repository) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(patterns), Some(name)) => patterns.value.iter().any(|p| p.value.pattern.matches(name)),
            })
            .map(|(position, _)| position)
            .collect()
    }

    #[test]
    fn candidates_are_the_rules_naming_the_repository_and_those_it_cannot_place_in_order() {
        let mut text = "org = \"acme\"\n".to_owned();
        for (name, condition) in [
            ("api", "repository = \"acme/api\""),
            ("web-upper", "repository = \"ACME/Web\""),
            ("any-acme", "repository = \"acme/*\""),
            ("no-repository", "owner_id = \"456\""),
            ("web-or-api", "repository = [\"acme/web\", \"acme/api\", \"Acme/WEB\"]"),
            ("kelvin", "repository = \"acme/\u{212A}elvin\""),
            ("web-glob-in-list", "repository = [\"acme/web\", \"acme/w*\"]"),
            ("other", "repository = \"beta/web\""),
        ] {
            text.push_str(&rule(name, condition));
        }
        let long = format!("acme/{}", "x".repeat(200));
        text.push_str(&rule("long", &format!("repository = \"{long}\"")));
        let policy = parse(&text, SourceFormat::Toml).expect("the policy parses");
        let names =
            |positions: Vec<usize>| positions.into_iter().map(|p| policy.rules[p].name.clone()).collect::<Vec<_>>();
        let candidates = |repository: Option<&str>| {
            let claims = claims("github", IssuerKind::GitHub, "repository", repository);
            policy.index.candidates(&claims).collect::<Vec<_>>()
        };

        assert_eq!(
            names(candidates(Some("acme/web"))),
            ["web-upper", "any-acme", "no-repository", "web-or-api", "web-glob-in-list"]
        );
        assert_eq!(
            names(candidates(Some("Acme/API"))),
            ["api", "any-acme", "no-repository", "web-or-api", "web-glob-in-list"]
        );
        assert_eq!(names(candidates(Some("acme/kelvin"))), ["any-acme", "no-repository", "kelvin", "web-glob-in-list"]);
        assert_eq!(
            names(candidates(Some("acme/\u{212A}ELVIN"))),
            ["any-acme", "no-repository", "kelvin", "web-glob-in-list"],
            "a non-ASCII name folds as the rule's does"
        );
        assert_eq!(names(candidates(Some("acme/unknown"))), ["any-acme", "no-repository", "web-glob-in-list"]);
        assert_eq!(names(candidates(None)), ["any-acme", "no-repository", "web-glob-in-list"]);

        assert_eq!(
            names(candidates(Some(&long.to_uppercase()))),
            ["any-acme", "no-repository", "web-glob-in-list", "long"],
            "a name longer than the stack buffer"
        );

        // Never fewer than a walk over every rule keeps, and in order.
        for repository in [
            Some("acme/web"),
            Some("ACME/WEB"),
            Some("acme/api"),
            Some("acme/\u{212A}elvin"),
            Some("beta/web"),
            Some("acme/wx"),
            Some(""),
            None,
        ] {
            let got = candidates(repository);
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{repository:?}: {got:?} is not ascending");
            let walked = walked(&policy, repository);
            assert!(walked.iter().all(|p| got.contains(p)), "{repository:?}: {got:?} lacks some of {walked:?}");
        }
    }

    #[test]
    fn gitlab_tokens_go_by_project_and_generic_ones_by_every_rule() {
        let text = "org = \"acme\"\n\
            [[rule]]\nname = \"app\"\nissuer = \"gitlab\"\nproject_path = \"acme/infra/app\"\npermissions = [\"deploy\"]\n\
            [[rule]]\nname = \"web\"\nissuer = \"github\"\nrepository = \"acme/web\"\npermissions = [\"deploy\"]\n\
            [[rule]]\nname = \"other-app\"\nissuer = \"gitlab\"\nproject_path = \"acme/infra/other\"\npermissions = [\"deploy\"]\n\
            [[rule]]\nname = \"ci\"\nissuer = \"ci\"\nclaims = { sub = \"builder\" }\npermissions = [\"deploy\"]\n";
        let policy = parse(text, SourceFormat::Toml).expect("the policy parses");
        let gitlab = claims("gitlab", IssuerKind::GitLab, "project_path", Some("ACME/infra/app"));
        // The GitHub rule has no project condition: a candidate, which its
        // issuer then rules out.
        assert_eq!(policy.index.candidates(&gitlab).collect::<Vec<_>>(), [0, 1, 3]);
        let generic = claims("ci", IssuerKind::Generic, "repository", Some("acme/web"));
        assert_eq!(policy.index.candidates(&generic).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }
}
