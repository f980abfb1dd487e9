//! From source text to a typed [`Policy`]: syntax, types, unknown fields
//! (all reported at once, with positions); globs compiled here so that
//! evaluation does no parsing.

use super::matcher::{NamePattern, Pattern, Wanted};
use super::source::{Entry, LineIndex, Node, Value, read_json, read_toml};
use super::{
    ClaimCondition, Diagnostic, Located, Policy, PolicyError, Pos, Problem, Rule, Severity, SourceFormat, Sugar,
    did_you_mean,
};

/// Top-level keys of a policy document.
const TOP_LEVEL_FIELDS: &[&str] = &["org", "rule"];

/// Every field a rule may have.
pub(crate) const RULE_FIELDS: &[&str] = &[
    "name",
    "description",
    "issuer",
    "repository",
    "ref",
    "environment",
    "workflow",
    "claims",
    "permissions",
    "apps",
    "machines",
    "max_ttl",
    "repository_id",
    "owner_id",
    "allow_events",
    "project_path",
    "namespace_path",
    "ref_protected",
    "project_id",
    "namespace_id",
];

/// Parses a policy document. Fails with every syntax and type error
/// (unknown or misspelt fields, wrong value types, empty lists, missing
/// `org`, rule `name` or `issuer`), each with its line and column. Checks
/// that need the server's configuration, and defects that do not stop the
/// document from being read (bad globs, bad durations), are left to
/// [`super::lint`].
pub fn parse(source: &str, format: SourceFormat) -> Result<Policy, PolicyError> {
    let index = LineIndex::new(source);
    let root = match format {
        SourceFormat::Toml => read_toml(source, &index),
        SourceFormat::Json => read_json(source, &index),
    }
    .map_err(|diagnostics| PolicyError { diagnostics })?;
    let mut reader = Reader { index: &index, errors: Vec::new(), rule: None };
    let policy = reader.policy(root);
    match policy {
        Some(policy) if reader.errors.is_empty() => Ok(policy),
        _ => Err(PolicyError { diagnostics: reader.errors }),
    }
}

struct Reader<'a> {
    index: &'a LineIndex<'a>,
    errors: Vec<Diagnostic>,
    /// The rule being read, named in its diagnostics.
    rule: Option<String>,
}

impl Reader<'_> {
    fn pos(&self, offset: usize) -> Pos {
        self.index.pos(offset)
    }

    fn error(&mut self, offset: usize, message: String, help: Option<String>) {
        let pos = self.pos(offset);
        self.errors.push(Diagnostic::new(Severity::Error, pos, self.rule.as_deref(), message).with_help(help));
    }

    fn type_error(&mut self, node: &Node, field: &str, expected: &str) {
        let message = format!("`{field}` must be {expected}, found {}", node.value.type_name());
        self.error(node.span.start, message, None);
    }

    fn policy(&mut self, root: Node) -> Option<Policy> {
        let Value::Table(entries) = root.value else {
            self.error(root.span.start, "a policy must be a table".to_owned(), None);
            return None;
        };
        let mut org = None;
        let mut rules = Vec::new();
        for entry in entries {
            match entry.key.as_str() {
                "org" => org = self.non_empty_string(&entry.value, "org"),
                "rule" => rules = self.rules(entry.value),
                other => {
                    let help = did_you_mean(other, TOP_LEVEL_FIELDS.iter().copied());
                    self.error(entry.key_span.start, format!("unknown top-level key `{other}`"), help);
                }
            }
        }
        let rules: Vec<Rule> = rules.into_iter().flatten().collect();
        if org.is_none() && !self.errors.iter().any(|e| e.message.starts_with("`org`")) {
            self.error(0, "missing `org`: the org this policy is for".to_owned(), None);
        }
        Some(Policy { org: org?, index: super::index::RuleIndex::new(&rules), rules })
    }

    fn rules(&mut self, node: Node) -> Vec<Option<Rule>> {
        let Value::Array(items) = node.value else {
            let message = format!("`rule` must be a list of tables ([[rule]]), found {}", node.value.type_name());
            self.error(node.span.start, message, None);
            return Vec::new();
        };
        items
            .into_iter()
            .map(|item| {
                let rule = self.rule(item);
                self.rule = None;
                rule
            })
            .collect()
    }

    fn rule(&mut self, node: Node) -> Option<Rule> {
        let table_pos = self.pos(node.span.start);
        let Value::Table(entries) = node.value else {
            let message = format!("each rule must be a table, found {}", node.value.type_name());
            self.error(node.span.start, message, None);
            return None;
        };
        self.rule = None;
        let mut name = None;
        if let Some(entry) = entries.iter().find(|e| e.key == "name") {
            name = self.non_empty_string(&entry.value, "name").map(|n| (n, self.pos(entry.value.span.start)));
            self.rule = name.as_ref().map(|(n, _)| n.clone());
        }
        let mut b = RuleBuilder::default();
        for entry in entries {
            self.rule_field(entry, &mut b);
        }
        let Some((name, name_pos)) = name else {
            self.errors.push(Diagnostic::new(
                Severity::Error,
                table_pos,
                None,
                "rule has no `name`: decisions and tokens name the rule that granted them".to_owned(),
            ));
            return None;
        };
        let Some(issuer) = b.issuer else {
            self.errors.push(Diagnostic::new(
                Severity::Error,
                name_pos,
                Some(&name),
                "rule has no `issuer`: name the configured issuer its tokens come from".to_owned(),
            ));
            return None;
        };
        self.rule = None;
        Some(Rule {
            name,
            name_pos,
            description: b.description,
            issuer,
            repository: b.repository,
            workflow: b.workflow,
            repository_id: b.repository_id,
            owner_id: b.owner_id,
            project_path: b.project_path,
            namespace_path: b.namespace_path,
            project_id: b.project_id,
            namespace_id: b.namespace_id,
            ref_protected: b.ref_protected,
            git_ref: b.git_ref,
            environment: b.environment,
            claims: b.claims,
            claims_key: b.claims_key,
            permissions: b.permissions.iter().map(|p| p.value.clone()).collect(),
            permission_pos: b.permissions.iter().map(|p| p.pos).collect(),
            permissions_key: b.permissions_key,
            apps: b.apps,
            machines: b.machines,
            max_ttl: b.max_ttl,
            allow_events: b.allow_events,
            problems: b.problems,
        })
    }

    fn rule_field(&mut self, entry: Entry, b: &mut RuleBuilder) {
        let Entry { key, key_span, value } = entry;
        let key_pos = self.pos(key_span.start);
        let value_pos = self.pos(value.span.start);
        // A fresh closure per use: the fields hold different value types.
        macro_rules! sugar {
            () => {
                |value| Sugar { key: key_pos, value_pos, value }
            };
        }
        match key.as_str() {
            "name" => {}
            "description" => b.description = self.string(&value, "description"),
            "issuer" => {
                b.issuer = self.non_empty_string(&value, "issuer").map(|v| Located { value: v, pos: value_pos });
            }
            "repository" => {
                b.repository = self.names(&value, &key, NamePattern::repository, &mut b.problems).map(sugar!());
            }
            "project_path" => {
                b.project_path = self.names(&value, &key, NamePattern::project, &mut b.problems).map(sugar!());
            }
            "namespace_path" => {
                b.namespace_path = self.names(&value, &key, NamePattern::namespace, &mut b.problems).map(sugar!());
            }
            "ref" => b.git_ref = self.patterns(&value, &key, &mut b.problems).map(sugar!()),
            "environment" => b.environment = self.patterns(&value, &key, &mut b.problems).map(sugar!()),
            "workflow" => b.workflow = self.patterns(&value, &key, &mut b.problems).map(sugar!()),
            "repository_id" => b.repository_id = self.id(&value, &key).map(sugar!()),
            "owner_id" => b.owner_id = self.id(&value, &key).map(sugar!()),
            "project_id" => b.project_id = self.id(&value, &key).map(sugar!()),
            "namespace_id" => b.namespace_id = self.id(&value, &key).map(sugar!()),
            "ref_protected" => match value.value {
                Value::Bool(v) => b.ref_protected = Some(Sugar { key: key_pos, value_pos, value: v }),
                _ => self.type_error(&value, &key, "true or false (without quotes)"),
            },
            "claims" => {
                b.claims_key = Some(key_pos);
                b.claims = self.claims(value, &mut b.problems);
            }
            "permissions" => {
                b.permissions_key = Some(key_pos);
                // An empty list is readable (the linter refuses it with a
                // clear message); such a rule never grants.
                if matches!(&value.value, Value::Array(items) if items.is_empty()) {
                    return;
                }
                b.permissions = self.strings(&value, &key).unwrap_or_default();
            }
            "apps" => b.apps = self.scope_list(&value, &key, "app"),
            "machines" => b.machines = self.scope_list(&value, &key, "machine"),
            "max_ttl" => b.max_ttl = self.duration(&value, &mut b.problems),
            "allow_events" => b.allow_events = self.strings(&value, &key).unwrap_or_default(),
            other => {
                let help = did_you_mean(other, super::parse::RULE_FIELDS.iter().copied());
                self.error(key_span.start, format!("unknown rule field `{other}`"), help);
            }
        }
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.type_error(node, field, "a string");
                None
            }
        }
    }

    fn non_empty_string(&mut self, node: &Node, field: &str) -> Option<String> {
        let s = self.string(node, field)?;
        if s.trim().is_empty() {
            self.error(node.span.start, format!("`{field}` must not be empty"), None);
            return None;
        }
        Some(s)
    }

    /// A string or a non-empty list of strings, each with its position.
    fn strings(&mut self, node: &Node, field: &str) -> Option<Vec<Located<String>>> {
        match &node.value {
            Value::Str(s) => Some(vec![Located { value: s.clone(), pos: self.pos(node.span.start) }]),
            Value::Array(items) if items.is_empty() => {
                let message = format!("`{field}` is an empty list, which never matches: omit the field or name values");
                self.error(node.span.start, message, None);
                None
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match &item.value {
                        Value::Str(s) => out.push(Located { value: s.clone(), pos: self.pos(item.span.start) }),
                        _ => self.type_error(item, field, "a string or a list of strings"),
                    }
                }
                (out.len() == items.len()).then_some(out)
            }
            _ => {
                self.type_error(node, field, "a string or a list of strings");
                None
            }
        }
    }

    fn patterns(&mut self, node: &Node, field: &str, problems: &mut Vec<Problem>) -> Option<Vec<Located<Pattern>>> {
        let values = self.strings(node, field)?;
        Some(values.into_iter().map(|v| Located { value: compile(&v, field, false, problems), pos: v.pos }).collect())
    }

    fn names(
        &mut self,
        node: &Node,
        field: &str,
        build: BuildName,
        problems: &mut Vec<Problem>,
    ) -> Option<Vec<Located<NamePattern>>> {
        let values = self.strings(node, field)?;
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            match build(&v.value) {
                Ok((name, problem)) => {
                    if let Some(reason) = problem {
                        problems.push(glob_problem(&v, field, &reason));
                    }
                    out.push(Located { value: name, pos: v.pos });
                }
                Err(message) => {
                    problems.push(Problem { pos: v.pos, message: format!("`{field}` {message}"), help: None })
                }
            }
        }
        Some(out)
    }

    /// An immutable id: a string or a non-negative integer, kept as the
    /// decimal string the claims carry.
    fn id(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Int(i) if *i >= 0 => Some(i.to_string()),
            _ => {
                self.type_error(node, field, "an id (a string or a non-negative integer)");
                None
            }
        }
    }

    /// `apps`/`machines`: absent means all; present must name some.
    fn scope_list(&mut self, node: &Node, field: &str, what: &str) -> Option<Vec<String>> {
        if matches!(&node.value, Value::Array(items) if items.is_empty()) {
            // An empty list would read as "no restriction" to a resource
            // server, the opposite of what it seems to say.
            let message = format!("`{field}` must name at least one {what}; omit it to allow every {what}");
            self.error(node.span.start, message, None);
            return None;
        }
        Some(self.strings(node, field)?.into_iter().map(|v| v.value).collect())
    }

    fn duration(&mut self, node: &Node, problems: &mut Vec<Problem>) -> Option<Located<std::time::Duration>> {
        let text = self.string(node, "max_ttl")?;
        let pos = self.pos(node.span.start);
        match humantime::parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                problems.push(Problem { pos, message: "`max_ttl` must be longer than zero".to_owned(), help: None });
                None
            }
            Ok(value) => Some(Located { value, pos }),
            Err(e) => {
                problems.push(Problem {
                    pos,
                    message: format!("`max_ttl` is not a duration: {e}"),
                    help: Some("write it like \"15m\", \"1h\" or \"1h 30m\"".to_owned()),
                });
                None
            }
        }
    }

    fn claims(&mut self, node: Node, problems: &mut Vec<Problem>) -> Vec<ClaimCondition> {
        let Value::Table(entries) = node.value else {
            let message = format!("`claims` must be a table, found {}", node.value.type_name());
            self.error(node.span.start, message, None);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(entries.len());
        for Entry { key, key_span, value } in entries {
            let items = match value.value {
                Value::Array(items) if items.is_empty() => {
                    let message = format!("claim `{key}` wants an empty list, which never matches");
                    self.error(value.span.start, message, None);
                    continue;
                }
                Value::Array(items) => items,
                scalar => vec![Node { span: value.span, value: scalar }],
            };
            let mut wanted = Vec::with_capacity(items.len());
            for item in items {
                let pos = self.pos(item.span.start);
                let w = match &item.value {
                    Value::Str(s) => {
                        let v = Located { value: s.clone(), pos };
                        Wanted::Str(compile(&v, &format!("claims.{key}"), false, problems))
                    }
                    Value::Bool(b) => Wanted::Bool(*b),
                    Value::Int(i) => Wanted::Int(*i),
                    _ => {
                        let field = format!("claims.{key}");
                        self.type_error(&item, &field, "a string, boolean or integer, or a list of them");
                        continue;
                    }
                };
                wanted.push(Located { value: w, pos });
            }
            out.push(ClaimCondition { name: key, key: self.pos(key_span.start), wanted });
        }
        out
    }
}

fn compile(value: &Located<String>, field: &str, case_insensitive: bool, problems: &mut Vec<Problem>) -> Pattern {
    let (pattern, problem) = Pattern::compile(&value.value, case_insensitive);
    if let Some(reason) = problem {
        problems.push(glob_problem(value, field, &reason));
    }
    pattern
}

fn glob_problem(value: &Located<String>, field: &str, reason: &str) -> Problem {
    Problem {
        pos: value.pos,
        message: format!("`{field}` has an invalid glob `{}`: {reason}", value.value),
        help: None,
    }
}

/// Reads one name pattern: the pattern and an optional glob problem, or
/// why the name is malformed.
type BuildName = fn(&str) -> Result<(NamePattern, Option<String>), String>;

#[derive(Default)]
struct RuleBuilder {
    description: Option<String>,
    issuer: Option<Located<String>>,
    repository: Option<Sugar<Vec<Located<NamePattern>>>>,
    workflow: Option<Sugar<Vec<Located<Pattern>>>>,
    repository_id: Option<Sugar<String>>,
    owner_id: Option<Sugar<String>>,
    project_path: Option<Sugar<Vec<Located<NamePattern>>>>,
    namespace_path: Option<Sugar<Vec<Located<NamePattern>>>>,
    project_id: Option<Sugar<String>>,
    namespace_id: Option<Sugar<String>>,
    ref_protected: Option<Sugar<bool>>,
    git_ref: Option<Sugar<Vec<Located<Pattern>>>>,
    environment: Option<Sugar<Vec<Located<Pattern>>>>,
    claims: Vec<ClaimCondition>,
    claims_key: Option<Pos>,
    permissions: Vec<Located<String>>,
    permissions_key: Option<Pos>,
    apps: Option<Vec<String>>,
    machines: Option<Vec<String>>,
    max_ttl: Option<Located<std::time::Duration>>,
    allow_events: Vec<Located<String>>,
    problems: Vec<Problem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(source: &str, format: SourceFormat) -> Vec<(usize, usize, String, Option<String>)> {
        parse(source, format)
            .expect_err("should not parse")
            .diagnostics
            .into_iter()
            .map(|d| (d.line, d.column, d.message, d.help))
            .collect()
    }

    const GOOD: &str = r#"
org = "acme-prod"

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
ref = ["refs/heads/main", "refs/tags/v*"]
claims = { runner_environment = "github-hosted", run_attempt = 1, ref_protected = true }
permissions = ["deploy"]
apps = ["web"]
max_ttl = "15m"
repository_id = 123
"#;

    #[test]
    fn reads_a_full_rule() {
        let policy = parse(GOOD, SourceFormat::Toml).expect("parses");
        assert_eq!(policy.org(), "acme-prod");
        let rule = &policy.rules()[0];
        assert_eq!(rule.name(), "deploy-web");
        assert_eq!(rule.name_pos, Pos { line: 5, column: 8 });
        assert_eq!(rule.issuer(), "github");
        assert_eq!(rule.apps(), Some(&["web".to_owned()][..]));
        assert_eq!(rule.max_ttl(), Some(std::time::Duration::from_secs(900)));
        assert_eq!(rule.repository_id.as_ref().map(|s| s.value.as_str()), Some("123"));
        assert_eq!(rule.claims.len(), 3);
        assert_eq!(rule.claims[0].name, "runner_environment");
        assert!(rule.problems.is_empty());
    }

    #[test]
    fn the_same_policy_reads_from_json() {
        let json = r#"{"org": "acme-prod", "rule": [{"name": "deploy-web", "issuer": "github",
            "repository": "acme/web", "permissions": ["deploy"], "claims": {"run_attempt": 1}}]}"#;
        let policy = parse(json, SourceFormat::Json).expect("parses");
        assert_eq!(policy.rules()[0].name(), "deploy-web");
        assert_eq!(policy.rules()[0].name_pos, Pos { line: 1, column: 40 });
    }

    #[test]
    fn unknown_rule_field_names_the_nearest() {
        let source = "org = \"a\"\n[[rule]]\nname = \"r\"\nissuer = \"github\"\nrepo = \"acme/web\"\n";
        assert_eq!(
            errors(source, SourceFormat::Toml),
            [(5, 1, "unknown rule field `repo`".to_owned(), Some("did you mean `repository`?".to_owned()))]
        );
    }

    #[test]
    fn unknown_top_level_key_names_the_nearest() {
        let source = "org = \"a\"\n[[rules]]\nname = \"r\"\n";
        assert_eq!(
            errors(source, SourceFormat::Toml),
            [(2, 3, "unknown top-level key `rules`".to_owned(), Some("did you mean `rule`?".to_owned()))]
        );
    }

    #[test]
    fn unknown_json_field_points_at_its_key() {
        let source = "{\"org\": \"a\", \"rule\": [{\"name\": \"r\", \"issuer\": \"g\",\n  \"permisions\": []}]}";
        assert_eq!(
            errors(source, SourceFormat::Json),
            [(2, 3, "unknown rule field `permisions`".to_owned(), Some("did you mean `permissions`?".to_owned()))]
        );
    }

    #[test]
    fn toml_syntax_errors_have_positions() {
        let found = errors("org = \"a\"\n[[rule]\n", SourceFormat::Toml);
        assert_eq!((found[0].0, found[0].1), (2, 8));
    }

    #[test]
    fn json_syntax_errors_have_positions() {
        let found = errors("{\"org\": \"a\",\n  \"rule\": [}\n", SourceFormat::Json);
        assert_eq!((found[0].0, found[0].1), (2, 12));
        assert!(!found[0].2.contains("at line"), "{}", found[0].2);
    }

    #[test]
    fn type_errors_name_field_and_types() {
        let source = "org = \"a\"\n[[rule]]\nname = \"r\"\nissuer = \"github\"\nref_protected = \"true\"\nref = 3\n";
        assert_eq!(
            errors(source, SourceFormat::Toml),
            [
                (5, 17, "`ref_protected` must be true or false (without quotes), found a string".to_owned(), None),
                (6, 7, "`ref` must be a string or a list of strings, found an integer".to_owned(), None),
            ]
        );
    }

    #[test]
    fn missing_org_name_and_issuer_are_errors() {
        let found = errors("[[rule]]\nissuer = \"github\"\n[[rule]]\nname = \"x\"\n", SourceFormat::Toml);
        let messages: Vec<_> = found.iter().map(|e| (e.0, e.1, e.2.split(':').next().unwrap_or_default())).collect();
        assert_eq!(messages, [(1, 1, "rule has no `name`"), (4, 8, "rule has no `issuer`"), (1, 1, "missing `org`")]);
        let rules: Vec<_> = parse("[[rule]]\nname = \"x\"\n", SourceFormat::Toml)
            .expect_err("invalid")
            .diagnostics
            .into_iter()
            .map(|d| d.rule)
            .collect();
        assert_eq!(rules, [Some("x".to_owned()), None], "the missing org is no rule's fault");
    }

    #[test]
    fn empty_lists_and_scopes_are_errors() {
        let source = "org = \"a\"\n[[rule]]\nname = \"r\"\nissuer = \"g\"\nref = []\napps = []\n";
        let found = errors(source, SourceFormat::Toml);
        assert_eq!((found[0].0, found[0].1), (5, 7));
        assert!(found[0].2.contains("empty list"));
        assert_eq!((found[1].0, found[1].1), (6, 8));
        assert!(found[1].2.contains("omit it to allow every app"));
    }

    #[test]
    fn floats_and_dates_cannot_be_wanted() {
        let source = "org = \"a\"\n[[rule]]\nname = \"r\"\nissuer = \"g\"\nclaims = { a = 1.5, b = [1979-05-27] }\n";
        let found = errors(source, SourceFormat::Toml);
        assert_eq!(found.len(), 2);
        assert!(found[0].2.ends_with("found a float"));
        assert!(found[1].2.ends_with("found a date-time"));
    }

    #[test]
    fn bad_globs_and_durations_parse_but_leave_problems() {
        let source = "org = \"a\"\n[[rule]]\nname = \"r\"\nissuer = \"g\"\nref = \"refs/**x\"\nmax_ttl = \"soon\"\nrepository = \"acme\"\n";
        let policy = parse(source, SourceFormat::Toml).expect("parses");
        let problems: Vec<_> = policy.rules()[0].problems.iter().map(|p| (p.pos.line, p.pos.column)).collect();
        assert_eq!(problems.len(), 3, "{:?}", policy.rules()[0].problems);
        assert_eq!(problems, [(5, 7), (6, 11), (7, 14)]);
    }
}
