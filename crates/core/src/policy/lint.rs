//! The linter: checks a parsed policy against the server's issuers and
//! permission catalogue, and catches rules that are unsafe (any repository
//! could satisfy them), misspelt, or unreachable.

use crate::issuer::IssuerKind;

use super::eval::UNSAFE_EVENTS;
use super::matcher::NamePattern;
use super::{Diagnostic, Located, Policy, Pos, Rule, Severity, Sugar, did_you_mean, sugar_applies};

/// What the linter needs from the server configuration.
#[derive(Debug, Clone, Copy)]
pub struct LintContext<'a> {
    /// Configured issuers: name and kind.
    pub issuers: &'a [(String, IssuerKind)],
    /// The permission catalogue.
    pub permissions: &'a [String],
}

/// Claims GitHub Actions documents for its OIDC tokens.
pub const GITHUB_CLAIMS: &[&str] = &[
    "aud",
    "iss",
    "sub",
    "jti",
    "iat",
    "nbf",
    "exp",
    "actor",
    "actor_id",
    "base_ref",
    "check_run_id",
    "enterprise",
    "enterprise_id",
    "environment",
    "environment_node_id",
    "event_name",
    "head_ref",
    "job_workflow_ref",
    "job_workflow_sha",
    "ref",
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
    "sha",
    "workflow",
    "workflow_ref",
    "workflow_sha",
];

/// Claims GitLab documents for CI/CD ID tokens.
pub const GITLAB_CLAIMS: &[&str] = &[
    "aud",
    "iss",
    "sub",
    "jti",
    "iat",
    "nbf",
    "exp",
    "namespace_id",
    "namespace_path",
    "project_id",
    "project_path",
    "user_id",
    "user_login",
    "user_email",
    "user_identities",
    "user_access_level",
    "pipeline_id",
    "pipeline_source",
    "job_id",
    "ref",
    "ref_type",
    "ref_path",
    "ref_protected",
    "environment",
    "environment_protected",
    "deployment_tier",
    "environment_action",
    "runner_id",
    "runner_environment",
    "sha",
    "ci_config_ref_uri",
    "ci_config_sha",
    "project_visibility",
    "job_namespace_id",
    "job_namespace_path",
    "job_project_id",
    "job_project_path",
    "groups_direct",
];

/// Claims that have a rule field of their own: naming them in `claims`
/// would skip the field's case-insensitivity and id pinning.
fn sugar_for_claim(kind: IssuerKind, claim: &str) -> Option<&'static str> {
    match (kind, claim) {
        (IssuerKind::GitHub, "repository" | "repository_owner") => Some("repository"),
        (IssuerKind::GitHub, "repository_id") => Some("repository_id"),
        (IssuerKind::GitHub, "repository_owner_id") => Some("owner_id"),
        (IssuerKind::GitLab, "project_path") => Some("project_path"),
        (IssuerKind::GitLab, "namespace_path") => Some("namespace_path"),
        (IssuerKind::GitLab, "project_id") => Some("project_id"),
        (IssuerKind::GitLab, "namespace_id") => Some("namespace_id"),
        (IssuerKind::GitLab, "ref_protected") => Some("ref_protected"),
        (IssuerKind::GitHub | IssuerKind::GitLab, "ref") => Some("ref"),
        (IssuerKind::GitHub | IssuerKind::GitLab, "environment") => Some("environment"),
        _ => None,
    }
}

/// Lints a parsed policy. Errors make the server refuse the policy;
/// warnings are shown. Each diagnostic points at the offending value.
///
/// Errors: defects found while reading (invalid glob, invalid `max_ttl`,
/// malformed names); duplicate rule names; unknown issuer; fields of
/// another issuer kind; a GitHub rule that fixes no owner, or a wildcard
/// owner; a GitLab or generic rule that identifies nothing; a claim in
/// `claims` that has its own field; a pin that does not name one thing;
/// no permissions; an unknown permission; an unknown `allow_events` value.
/// Warnings: a claim the issuer kind does not document; `sub` in `claims`;
/// a GitLab `ref` written as `refs/…`; an unsafe event wanted but not
/// allowed; a rule no token can reach because an earlier rule takes all
/// its tokens.
pub fn lint(policy: &Policy, ctx: &LintContext<'_>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut linter = RuleLinter { rule, out: &mut out };
        linter.problems();
        if policy.rules[..i].iter().any(|r| r.name == rule.name) {
            linter.error(
                rule.name_pos,
                format!("duplicate rule name `{}`: decisions, tokens and the audit log name rules", rule.name),
                None,
            );
        }
        let kind = ctx.issuers.iter().find(|(name, _)| *name == rule.issuer.value).map(|(_, kind)| *kind);
        match kind {
            None => {
                let help = did_you_mean(&rule.issuer.value, ctx.issuers.iter().map(|(n, _)| n.as_str()));
                linter.error(rule.issuer.pos, format!("unknown issuer `{}`", rule.issuer.value), help);
            }
            Some(kind) => {
                linter.sugar_kinds(kind);
                match kind {
                    IssuerKind::GitHub => linter.github(),
                    IssuerKind::GitLab => linter.gitlab(),
                    IssuerKind::Generic => linter.generic(),
                }
                linter.claims(kind);
            }
        }
        linter.permissions(ctx.permissions);
        linter.allow_events();
        if let Some(earlier) = policy.rules[..i].iter().find(|a| shadows(a, rule, kind)) {
            let mut message = format!(
                "rule `{}` is unreachable: rule `{}` comes first, matches every token it matches and grants at least as much",
                rule.name, earlier.name
            );
            if rule.max_ttl() > earlier.max_ttl() && earlier.max_ttl().is_some() {
                message.push_str(" (its longer max_ttl never applies)");
            }
            linter.warning(
                rule.name_pos,
                message,
                Some("reorder the rules or make the earlier one narrower".to_owned()),
            );
        }
    }
    out
}

struct RuleLinter<'a> {
    rule: &'a Rule,
    out: &'a mut Vec<Diagnostic>,
}

impl RuleLinter<'_> {
    fn push(&mut self, severity: Severity, pos: Pos, message: String, help: Option<String>) {
        self.out.push(Diagnostic::new(severity, pos, Some(&self.rule.name), message).with_help(help));
    }

    fn error(&mut self, pos: Pos, message: String, help: Option<String>) {
        self.push(Severity::Error, pos, message, help);
    }

    fn warning(&mut self, pos: Pos, message: String, help: Option<String>) {
        self.push(Severity::Warning, pos, message, help);
    }

    fn problems(&mut self) {
        for p in &self.rule.problems {
            self.error(p.pos, p.message.clone(), p.help.clone());
        }
    }

    fn sugar_kinds(&mut self, kind: IssuerKind) {
        for (field, key) in self.rule.sugar_fields() {
            if sugar_applies(field, kind) {
                continue;
            }
            let help = match (kind, field) {
                (IssuerKind::Generic, _) => {
                    format!("generic issuers take only `claims`: write `claims = {{ {field} = … }}`")
                }
                (IssuerKind::GitHub, "project_path" | "namespace_path") => "use `repository`".to_owned(),
                (IssuerKind::GitHub, "project_id") => "use `repository_id`".to_owned(),
                (IssuerKind::GitHub, "namespace_id") => "use `owner_id`".to_owned(),
                (IssuerKind::GitLab, "repository") => "use `project_path` or `namespace_path`".to_owned(),
                (IssuerKind::GitLab, "repository_id") => "use `project_id`".to_owned(),
                (IssuerKind::GitLab, "owner_id") => "use `namespace_id`".to_owned(),
                _ => format!("`{field}` is not available for {kind} issuers"),
            };
            let message = format!("`{field}` does not apply to issuer `{}`, a {kind} issuer", self.rule.issuer.value);
            self.error(key, message, Some(help));
        }
    }

    fn github(&mut self) {
        let rule = self.rule;
        match &rule.repository {
            None if rule.owner_id.is_none() => self.error(
                rule.name_pos,
                "the rule fixes no repository owner: any repository on GitHub could satisfy it".to_owned(),
                Some("add `repository = \"owner/name\"` (or \"owner/*\")".to_owned()),
            ),
            None => {}
            Some(repository) => {
                for p in &repository.value {
                    if p.value.owner.is_none() {
                        self.error(
                            p.pos,
                            format!(
                                "`{}` has a wildcard owner: any repository on GitHub could satisfy it",
                                p.value.pattern.text()
                            ),
                            Some("name the owner, e.g. `acme/web` or `acme/*`".to_owned()),
                        );
                    }
                }
            }
        }
        self.single_name_pin(&rule.repository, &rule.repository_id, "repository", "repository_id", |p| {
            !p.pattern.is_glob()
        });
        self.single_owner_pin(&rule.repository, &rule.owner_id, "repository", "owner_id");
    }

    fn gitlab(&mut self) {
        let rule = self.rule;
        if !rule.identifies_gitlab_project() {
            let wildcard = [&rule.project_path, &rule.namespace_path]
                .into_iter()
                .flatten()
                .flat_map(|s| s.value.iter())
                .find(|p| p.value.top.is_none());
            match wildcard {
                Some(p) => self.error(
                    p.pos,
                    format!(
                        "`{}` has a wildcard top-level group: any project on the GitLab instance could satisfy it",
                        p.value.pattern.text()
                    ),
                    Some("name the group, e.g. `acme/app` or `acme/*`".to_owned()),
                ),
                None => self.error(
                    rule.name_pos,
                    "the rule names no project or group: any project on the GitLab instance could satisfy it"
                        .to_owned(),
                    Some("add `project_path = \"group/project\"` or `namespace_path = \"group\"`".to_owned()),
                ),
            }
        }
        if let Some(git_ref) = &rule.git_ref {
            for r in &git_ref.value {
                if r.value.text().starts_with("refs/") {
                    self.warning(
                        r.pos,
                        format!("GitLab's `ref` claim is a bare branch or tag name, never `{}`", r.value.text()),
                        Some(format!(
                            "write `{}`",
                            r.value.text().trim_start_matches("refs/heads/").trim_start_matches("refs/tags/")
                        )),
                    );
                }
            }
        }
        self.single_name_pin(&rule.project_path, &rule.project_id, "project_path", "project_id", |p| {
            !p.pattern.is_glob()
        });
        self.single_name_pin(&rule.namespace_path, &rule.namespace_id, "namespace_path", "namespace_id", |p| {
            p.owner.is_some()
        });
    }

    fn generic(&mut self) {
        if self.rule.claims.is_empty() {
            self.error(
                self.rule.claims_key.unwrap_or(self.rule.name_pos),
                "the rule has no `claims`: every token of the issuer could satisfy it".to_owned(),
                Some("add `claims = { … }` naming the claims that identify the caller".to_owned()),
            );
        }
    }

    /// An id pin must go with exactly one fixed name (or no name at all,
    /// when it is the only condition on the id).
    fn single_name_pin(
        &mut self,
        names: &Option<Sugar<Vec<Located<NamePattern>>>>,
        id: &Option<Sugar<String>>,
        name_field: &str,
        id_field: &str,
        fixed: fn(&NamePattern) -> bool,
    ) {
        if let (Some(names), Some(id)) = (names, id)
            && (names.value.len() != 1 || !names.value.iter().all(|p| fixed(&p.value)))
        {
            self.error(
                id.value_pos,
                format!("`{id_field}` pins one {name_field}, but `{name_field}` does not name exactly one"),
                Some(format!("split the rule, one per {name_field}")),
            );
        }
    }

    fn single_owner_pin(
        &mut self,
        names: &Option<Sugar<Vec<Located<NamePattern>>>>,
        id: &Option<Sugar<String>>,
        name_field: &str,
        id_field: &str,
    ) {
        if let (Some(names), Some(id)) = (names, id) {
            let mut owners: Vec<&str> = names.value.iter().filter_map(|p| p.value.owner.as_deref()).collect();
            owners.dedup();
            if owners.len() > 1 {
                self.error(
                    id.value_pos,
                    format!("`{id_field}` pins one owner, but `{name_field}` names several"),
                    Some("split the rule, one per owner".to_owned()),
                );
            }
        }
    }

    fn claims(&mut self, kind: IssuerKind) {
        let rule = self.rule;
        let known = match kind {
            IssuerKind::GitHub => GITHUB_CLAIMS,
            IssuerKind::GitLab => GITLAB_CLAIMS,
            IssuerKind::Generic => &[],
        };
        for claim in &rule.claims {
            let name = claim.name.as_str();
            if let Some(field) = sugar_for_claim(kind, name) {
                let example = if name == "repository_owner" { " (\"owner/*\")" } else { "" };
                self.error(
                    claim.key,
                    format!("claim `{name}` has its own rule field: use `{field}`{example}"),
                    Some(format!("`{field}` applies {kind}'s case rules and id pinning, which `claims` cannot")),
                );
                continue;
            }
            if kind != IssuerKind::Generic && !known.contains(&name) {
                self.warning(
                    claim.key,
                    format!("`{name}` is not a documented {kind} claim; a claim the token lacks never matches"),
                    did_you_mean(name, known.iter().copied()),
                );
            }
            if name == "sub" && kind != IssuerKind::Generic {
                self.warning(
                    claim.key,
                    "`sub`'s format varies and changes over time; match the discrete claims instead".to_owned(),
                    None,
                );
            }
            if name == "event_name" {
                for w in &claim.wanted {
                    let text = w.value.render();
                    if UNSAFE_EVENTS.contains(&text.as_str()) && !rule.allow_events().any(|e| e == text) {
                        self.warning(
                            w.pos,
                            format!("event `{text}` never matches unless the rule lists it in `allow_events`"),
                            Some(format!("add `allow_events = [\"{text}\"]` if you mean it")),
                        );
                    }
                }
            }
        }
    }

    fn permissions(&mut self, catalogue: &[String]) {
        let rule = self.rule;
        if rule.permissions.is_empty() {
            self.error(
                rule.permissions_key.unwrap_or(rule.name_pos),
                "the rule grants no permissions".to_owned(),
                Some("add `permissions = [\"…\"]` from the server's permission catalogue".to_owned()),
            );
        }
        for (permission, pos) in rule.permissions.iter().zip(&rule.permission_pos) {
            if !catalogue.contains(permission) {
                let help = did_you_mean(permission, catalogue.iter().map(String::as_str));
                self.error(*pos, format!("unknown permission `{permission}`"), help);
            }
        }
    }

    fn allow_events(&mut self) {
        for event in &self.rule.allow_events {
            if !UNSAFE_EVENTS.contains(&event.value.as_str()) {
                let help = did_you_mean(&event.value, UNSAFE_EVENTS.iter().copied())
                    .or_else(|| Some(format!("only {} are refused by default", UNSAFE_EVENTS.join(" and "))));
                self.error(event.pos, format!("`{}` is not an event `allow_events` can open", event.value), help);
            }
        }
    }
}

/// Does `a` (earlier) take every token `b` could get? True when every
/// condition of `a` is implied by one of `b`'s, `a` allows no fewer unsafe
/// events, and `a` grants at least `b`'s permissions, apps and machines.
/// Conservative: false when unsure. Lifetimes do not matter: selection
/// ignores them, so a longer `max_ttl` on `b` does not make it reachable.
fn shadows(a: &Rule, b: &Rule, kind: Option<IssuerKind>) -> bool {
    if a.issuer.value != b.issuer.value || !a.problems.is_empty() || !b.problems.is_empty() {
        return false;
    }
    if let Some(kind) = kind
        && !a.structural_failures(kind).is_empty()
    {
        return false;
    }
    let names =
        |a: &Option<Sugar<Vec<Located<NamePattern>>>>, b: &Option<Sugar<Vec<Located<NamePattern>>>>| match (a, b) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => {
                b.value.iter().all(|pb| a.value.iter().any(|pa| pa.value.pattern.covers(&pb.value.pattern)))
            }
        };
    let patterns = |a: &Option<Sugar<Vec<Located<super::matcher::Pattern>>>>,
                    b: &Option<Sugar<Vec<Located<super::matcher::Pattern>>>>| match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.value.iter().all(|pb| a.value.iter().any(|pa| pa.value.covers(&pb.value))),
    };
    fn same<T: PartialEq>(a: &Option<Sugar<T>>, b: &Option<Sugar<T>>) -> bool {
        match (a, b) {
            (None, _) => true,
            (Some(a), Some(b)) => a.value == b.value,
            (Some(_), None) => false,
        }
    }
    let claims = a.claims.iter().all(|ca| {
        b.claims.iter().any(|cb| {
            cb.name == ca.name && cb.wanted.iter().all(|wb| ca.wanted.iter().any(|wa| wa.value.covers(&wb.value)))
        })
    });
    let scope = |a: &Option<Vec<String>>, b: &Option<Vec<String>>| match (a, b) {
        (None, _) => true,
        (Some(a), Some(b)) => b.iter().all(|x| a.contains(x)),
        (Some(_), None) => false,
    };
    names(&a.repository, &b.repository)
        && names(&a.project_path, &b.project_path)
        && names(&a.namespace_path, &b.namespace_path)
        && patterns(&a.git_ref, &b.git_ref)
        && patterns(&a.environment, &b.environment)
        && patterns(&a.workflow, &b.workflow)
        && same(&a.repository_id, &b.repository_id)
        && same(&a.owner_id, &b.owner_id)
        && same(&a.project_id, &b.project_id)
        && same(&a.namespace_id, &b.namespace_id)
        && same(&a.ref_protected, &b.ref_protected)
        && claims
        && b.allow_events().all(|e| a.allow_events().any(|x| x == e))
        && b.permissions.iter().all(|p| a.permissions.contains(p))
        && scope(&a.apps, &b.apps)
        && scope(&a.machines, &b.machines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{SourceFormat, parse};

    type Found = (Severity, usize, usize, String, Option<String>);

    fn lint_toml(source: &str) -> Vec<Found> {
        let issuers = [
            ("github".to_owned(), IssuerKind::GitHub),
            ("gitlab".to_owned(), IssuerKind::GitLab),
            ("buildkite".to_owned(), IssuerKind::Generic),
        ];
        let permissions = ["deploy".to_owned(), "logs:read".to_owned(), "metrics:read".to_owned()];
        let policy = parse(source, SourceFormat::Toml).expect("test policy parses");
        let ctx = LintContext { issuers: &issuers, permissions: &permissions };
        lint(&policy, &ctx).into_iter().map(|d| (d.severity, d.line, d.column, d.message, d.help)).collect()
    }

    /// A GitHub rule `r`: lines 1–6 fixed (repository on 5, permissions on
    /// 6), `extra` from line 7.
    fn github_rule(extra: &str) -> String {
        format!(
            "org = \"o\"\n[[rule]]\nname = \"r\"\nissuer = \"github\"\nrepository = \"acme/web\"\npermissions = [\"deploy\"]\n{extra}\n"
        )
    }

    /// A rule `r` for `issuer` with only `fields` (from line 5).
    fn rule_for(issuer: &str, fields: &str) -> String {
        format!("org = \"o\"\n[[rule]]\nname = \"r\"\nissuer = \"{issuer}\"\n{fields}\n")
    }

    fn error(line: usize, column: usize, message: &str, help: Option<&str>) -> Found {
        (Severity::Error, line, column, message.to_owned(), help.map(str::to_owned))
    }

    fn warning(line: usize, column: usize, message: &str, help: Option<&str>) -> Found {
        (Severity::Warning, line, column, message.to_owned(), help.map(str::to_owned))
    }

    #[test]
    fn good_policies_are_clean() {
        let source = r#"
org = "acme-prod"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
ref = "refs/heads/main"
environment = "production"
workflow = "acme/web/.github/workflows/deploy.yml"
claims = { runner_environment = "github-hosted", event_name = ["push", "workflow_dispatch"] }
permissions = ["deploy", "logs:read"]
apps = ["web"]
max_ttl = "15m"
repository_id = "123"
owner_id = 456

[[rule]]
name = "gitlab"
issuer = "gitlab"
project_path = "acme/infra/app"
ref = "main"
ref_protected = true
project_id = 700
permissions = ["deploy"]

[[rule]]
name = "buildkite"
issuer = "buildkite"
claims = { organization_slug = "acme", anything_at_all = true }
permissions = ["metrics:read"]
"#;
        assert_eq!(lint_toml(source), []);
    }

    #[test]
    fn unknown_permission_names_the_nearest() {
        assert_eq!(
            lint_toml(&github_rule("").replace("[\"deploy\"]", "[\"deploy\", \"log:read\"]")),
            [error(6, 26, "unknown permission `log:read`", Some("did you mean `logs:read`?"))]
        );
    }

    #[test]
    fn empty_permissions_are_an_error() {
        assert_eq!(
            lint_toml(&github_rule("").replace("[\"deploy\"]", "[]")),
            [error(
                6,
                1,
                "the rule grants no permissions",
                Some("add `permissions = [\"…\"]` from the server's permission catalogue")
            )]
        );
    }

    #[test]
    fn a_github_rule_without_owner_is_an_error() {
        let source = rule_for("github", "environment = \"production\"\npermissions = [\"deploy\"]");
        assert_eq!(
            lint_toml(&source),
            [error(
                3,
                8,
                "the rule fixes no repository owner: any repository on GitHub could satisfy it",
                Some("add `repository = \"owner/name\"` (or \"owner/*\")")
            )]
        );
    }

    #[test]
    fn a_wildcard_owner_is_an_error() {
        for (repository, column) in [("\"*/web\"", 14), ("\"*\"", 14), ("[\"acme/web\", \"*/web\"]", 27)] {
            let source = rule_for("github", &format!("repository = {repository}\npermissions = [\"deploy\"]"));
            let found = lint_toml(&source);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!((found[0].0, found[0].1, found[0].2), (Severity::Error, 5, column), "{repository}");
            assert!(found[0].3.ends_with("has a wildcard owner: any repository on GitHub could satisfy it"));
        }
    }

    #[test]
    fn gitlab_and_generic_rules_must_identify_something() {
        assert_eq!(
            lint_toml(&rule_for("gitlab", "ref = \"main\"\npermissions = [\"deploy\"]")),
            [error(
                3,
                8,
                "the rule names no project or group: any project on the GitLab instance could satisfy it",
                Some("add `project_path = \"group/project\"` or `namespace_path = \"group\"`")
            )]
        );
        let found = lint_toml(&rule_for("gitlab", "project_path = \"*/app\"\npermissions = [\"deploy\"]"));
        assert_eq!((found.len(), found[0].1, found[0].2), (1, 5, 16));
        assert!(found[0].3.contains("wildcard top-level group"));
        assert_eq!(
            lint_toml(&rule_for("buildkite", "permissions = [\"deploy\"]")),
            [error(
                3,
                8,
                "the rule has no `claims`: every token of the issuer could satisfy it",
                Some("add `claims = { … }` naming the claims that identify the caller")
            )]
        );
    }

    #[test]
    fn unknown_issuer_names_the_nearest() {
        let source = github_rule("").replace("issuer = \"github\"", "issuer = \"githb\"");
        assert_eq!(lint_toml(&source), [error(4, 10, "unknown issuer `githb`", Some("did you mean `github`?"))]);
    }

    #[test]
    fn undocumented_claims_warn_for_known_kinds_only() {
        assert_eq!(
            lint_toml(&github_rule("claims = { runner_env = \"github-hosted\" }")),
            [warning(
                7,
                12,
                "`runner_env` is not a documented github claim; a claim the token lacks never matches",
                Some("did you mean `runner_environment`?")
            )]
        );
        let generic = rule_for("buildkite", "claims = { runner_env = \"x\" }\npermissions = [\"deploy\"]");
        assert_eq!(lint_toml(&generic), []);
    }

    #[test]
    fn fields_of_another_issuer_kind_are_errors() {
        assert_eq!(
            lint_toml(&github_rule("project_path = \"acme/web\"")),
            [error(
                7,
                1,
                "`project_path` does not apply to issuer `github`, a github issuer",
                Some("use `repository`")
            )]
        );
        let generic = rule_for("buildkite", "claims = { a = \"b\" }\nref = \"main\"\npermissions = [\"deploy\"]");
        assert_eq!(
            lint_toml(&generic),
            [error(
                6,
                1,
                "`ref` does not apply to issuer `buildkite`, a generic issuer",
                Some("generic issuers take only `claims`: write `claims = { ref = … }`")
            )]
        );
    }

    #[test]
    fn claims_with_their_own_field_are_errors() {
        assert_eq!(
            lint_toml(&github_rule("claims = { event_name = \"push\", repository_owner = \"acme\" }")),
            [error(
                7,
                33,
                "claim `repository_owner` has its own rule field: use `repository` (\"owner/*\")",
                Some("`repository` applies github's case rules and id pinning, which `claims` cannot")
            )]
        );
    }

    #[test]
    fn duplicate_rule_names_are_errors() {
        let source = format!(
            "{}[[rule]]\nname = \"r\"\nissuer = \"github\"\nrepository = \"acme/api\"\npermissions = [\"deploy\"]\n",
            github_rule("")
        );
        assert_eq!(
            lint_toml(&source),
            [error(9, 8, "duplicate rule name `r`: decisions, tokens and the audit log name rules", None)]
        );
    }

    #[test]
    fn a_shadowed_rule_is_unreachable() {
        let shadowing = r#"org = "o"
[[rule]]
name = "any-acme"
issuer = "github"
repository = "acme/*"
permissions = ["deploy", "logs:read"]
max_ttl = "5m"

[[rule]]
name = "web-main"
issuer = "github"
repository = "ACME/web"
ref = "refs/heads/main"
permissions = ["deploy"]
apps = ["web"]
max_ttl = "1h"
"#;
        assert_eq!(
            lint_toml(shadowing),
            [warning(
                10,
                8,
                "rule `web-main` is unreachable: rule `any-acme` comes first, matches every token it matches and \
                 grants at least as much (its longer max_ttl never applies)",
                Some("reorder the rules or make the earlier one narrower")
            )]
        );
        // Each of these makes the later rule reachable again.
        for (from, to) in [
            ("repository = \"acme/*\"", "repository = \"acme/*\"\nref = \"refs/tags/*\""),
            ("permissions = [\"deploy\", \"logs:read\"]", "permissions = [\"logs:read\"]"),
            ("max_ttl = \"5m\"", "apps = [\"api\"]"),
            ("max_ttl = \"5m\"", "claims = { runner_environment = \"github-hosted\" }"),
        ] {
            let reachable = shadowing.replacen(from, to, 1);
            assert_eq!(lint_toml(&reachable), [], "{to}");
        }
        // A later rule that opens an unsafe event reaches tokens the earlier refuses.
        let opened = shadowing.replace("max_ttl = \"1h\"", "allow_events = [\"workflow_run\"]");
        assert_eq!(lint_toml(&opened), []);
    }

    #[test]
    fn invalid_globs_and_durations_are_errors() {
        assert_eq!(
            lint_toml(&github_rule("ref = [\"refs/heads/main\", \"refs/heads/feat**\"]\nmax_ttl = \"15 minuts\"")),
            [
                error(
                    7,
                    27,
                    "`ref` has an invalid glob `refs/heads/feat**`: `**` must be a whole path segment \
                     (`refs/heads/**`); within a segment write `*`",
                    None
                ),
                error(
                    8,
                    11,
                    "`max_ttl` is not a duration: unknown time unit \"minuts\", supported units: ns, us/µs, ms, sec, \
                     min, hours, days, weeks, months, years (and few variations)",
                    Some("write it like \"15m\", \"1h\" or \"1h 30m\"")
                ),
            ]
        );
    }

    #[test]
    fn unknown_allow_events_are_errors() {
        assert_eq!(
            lint_toml(&github_rule("allow_events = [\"pull_request_targets\", \"push\"]")),
            [
                error(
                    7,
                    17,
                    "`pull_request_targets` is not an event `allow_events` can open",
                    Some("did you mean `pull_request_target`?")
                ),
                error(
                    7,
                    41,
                    "`push` is not an event `allow_events` can open",
                    Some("only pull_request_target and workflow_run are refused by default")
                ),
            ]
        );
    }

    #[test]
    fn wanting_an_unsafe_event_without_allowing_it_warns() {
        assert_eq!(
            lint_toml(&github_rule("claims = { event_name = [\"push\", \"workflow_run\"] }")),
            [warning(
                7,
                34,
                "event `workflow_run` never matches unless the rule lists it in `allow_events`",
                Some("add `allow_events = [\"workflow_run\"]` if you mean it")
            )]
        );
    }

    #[test]
    fn gitlab_refs_are_bare_names() {
        let source =
            rule_for("gitlab", "project_path = \"acme/app\"\nref = \"refs/heads/main\"\npermissions = [\"deploy\"]");
        assert_eq!(
            lint_toml(&source),
            [warning(
                6,
                7,
                "GitLab's `ref` claim is a bare branch or tag name, never `refs/heads/main`",
                Some("write `main`")
            )]
        );
    }

    #[test]
    fn a_pin_must_name_one_thing() {
        let source = rule_for(
            "github",
            "repository = [\"acme/web\", \"acme/api\"]\nrepository_id = 1\npermissions = [\"deploy\"]",
        );
        assert_eq!(
            lint_toml(&source),
            [error(
                6,
                17,
                "`repository_id` pins one repository, but `repository` does not name exactly one",
                Some("split the rule, one per repository")
            )]
        );
    }

    #[test]
    fn sub_in_claims_warns() {
        let found = lint_toml(&github_rule("claims = { sub = \"repo:acme/web:ref:refs/heads/main\" }"));
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].0, found[0].1, found[0].2), (Severity::Warning, 7, 12));
        assert!(found[0].3.starts_with("`sub`'s format varies"));
    }

    #[test]
    fn json_policies_lint_with_positions_too() {
        let source = "{\"org\": \"o\", \"rule\": [{\n  \"name\": \"r\", \"issuer\": \"github\", \"repository\": \"acme/web\",\n  \"permissions\": [\"deploy\", \"deplo\"]\n}]}";
        let issuers = [("github".to_owned(), IssuerKind::GitHub)];
        let permissions = ["deploy".to_owned()];
        let policy = parse(source, SourceFormat::Json).expect("parses");
        let found = lint(&policy, &LintContext { issuers: &issuers, permissions: &permissions });
        assert_eq!(
            found.iter().map(|d| (d.line, d.column, d.message.as_str())).collect::<Vec<_>>(),
            [(3, 29, "unknown permission `deplo`")]
        );
    }
}
