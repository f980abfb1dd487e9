//! The trust-policy language: an org's rules for which CI identities get
//! which deploy tokens. [`parse`] reads a document, [`lint`] checks it
//! against the server's issuers and permission catalogue, [`evaluate`]
//! decides one exchange and explains the decision rule by rule.
//!
//! # The language
//!
//! One TOML document per org (the same structure is accepted as JSON):
//!
//! ```toml
//! org = "acme-prod"
//!
//! [[rule]]
//! name = "deploy-web"
//! issuer = "github"            # an issuer name from the server config
//! repository = "acme/web"      # owner/name, or a list; "acme/*" = any repository of acme
//! ref = "refs/heads/main"      # string or list (any-of); "refs/tags/v*" globs
//! environment = "production"
//! workflow = "acme/web/.github/workflows/deploy.yml"
//! claims = { runner_environment = "github-hosted", event_name = ["push", "workflow_dispatch"] }
//! permissions = ["deploy", "logs:read"]
//! apps = ["web"]               # optional: tokens limited to these apps
//! machines = ["vm-123"]        # optional: tokens limited to these machines
//! max_ttl = "15m"              # optional
//! ```
//!
//! Top-level keys: `org` (required) and `rule` (the rules, in order). Any
//! other key, and any rule field not listed below, is an error that names
//! the nearest valid field.
//!
//! ## Rule fields
//!
//! | field | issuers | meaning |
//! | --- | --- | --- |
//! | `name` | all | required; unique; named in decisions, tokens and the audit log |
//! | `description` | all | free text for humans |
//! | `issuer` | all | required; the configured issuer name the token must come from |
//! | `repository` | github | `owner/name` or list; claim `repository`, owner part also vs `repository_owner`; case-insensitive; `owner/*` = any repository of that owner |
//! | `repository_id`, `owner_id` | github | pins: the `repository_id` / `repository_owner_id` claims must equal these |
//! | `workflow` | github | the claim `workflow_ref` with its `@ref` part removed, e.g. `acme/web/.github/workflows/deploy.yml` |
//! | `project_path` | gitlab | `group/project` or list; claim `project_path`; case-insensitive |
//! | `namespace_path` | gitlab | `group` or `group/sub`, or list; claim `namespace_path`; case-insensitive |
//! | `project_id`, `namespace_id` | gitlab | pins on the `project_id` / `namespace_id` claims |
//! | `ref_protected` | gitlab | `true` or `false`; claim `ref_protected` |
//! | `ref` | github, gitlab | claim `ref`. GitHub sends the full ref (`refs/heads/main`, `refs/tags/v1`, `refs/pull/7/merge`); GitLab sends the bare branch or tag name (`main`) |
//! | `environment` | github, gitlab | claim `environment` |
//! | `claims` | all | `{ claim = value or [values] }`: any other claim; the only condition generic issuers have |
//! | `permissions` | all | what the token may do; names from the server's permission catalogue |
//! | `apps`, `machines` | all | optional; a token is limited to these. Without the field the rule grants every app (machine) |
//! | `max_ttl` | all | optional upper bound on token lifetime, e.g. `"15m"`, `"1h 30m"` |
//! | `allow_events` | all | opens an unsafe GitHub event (`pull_request_target`, `workflow_run`) for this rule |
//!
//! Ids may be written as strings or integers. A list given for a
//! condition is any-of and must not be empty; `apps` and `machines`, when
//! present, must not be empty either (omit the field to allow all).
//!
//! ## Matching
//!
//! - Every condition given must hold; claims the rule does not name are
//!   unconstrained, within the safe defaults below.
//! - Owner, repository, project and namespace names compare
//!   case-insensitively (GitHub and GitLab treat them so). Refs,
//!   environments, `workflow` and `claims` values compare exactly.
//! - A wanted string containing `*` is a glob: `*` matches any characters
//!   except `/`, and `**` as a whole segment (`refs/heads/**`) also crosses
//!   `/`. `refs/tags/v*` matches `refs/tags/v1.2` but not `refs/tags/v1/x`.
//!   No other character is special.
//! - `claims` values: a wanted string matches a string claim, and the JSON
//!   spelling of a boolean or number claim (`"true"`, `"42"`). A wanted
//!   boolean or integer matches that JSON value or its string spelling
//!   (GitHub sends some booleans and ids as strings). A claim that is an
//!   array matches when any element matches. An absent or `null` claim
//!   never matches. Floats cannot be wanted.
//!
//! ## Safe defaults
//!
//! - A token whose `event_name` is `pull_request_target` or `workflow_run`
//!   never matches a rule, unless the rule lists that event in
//!   `allow_events`: both run with the base repository's privileges on
//!   behalf of code or events from people without write access.
//! - A rule for a GitHub issuer must fix an owner (`repository = "acme/…"`
//!   or `owner_id`): a rule without one could be satisfied by any
//!   repository on GitHub. A GitLab rule needs `project_path`,
//!   `namespace_path` or an id, a generic rule needs `claims`. Rules
//!   without one are lint errors and never match.
//! - Names are pinned to ids: the first grant through a rule naming
//!   `acme/web` records the repository's and owner's ids (the decision lists
//!   them in [`Grant::new_pins`]); later tokens for the same name with other
//!   ids are refused (a deleted and re-created repository, a renamed
//!   account whose name was taken). Ids written in the rule take the place
//!   of recorded pins. `acme/*` pins only the owner.
//! - `sub` is never parsed: its format differs between issuers and changes
//!   over time; rules match the discrete claims.
//!
//! ## Choosing the rule and the token
//!
//! Rules are tried in document order; the first rule whose conditions all
//! hold and which grants everything requested is chosen (see
//! [`evaluate`]). A request without permissions gets all of the rule's
//! permissions; a request without apps gets the rule's apps (unrestricted
//! when the rule has none); the same for machines. The token's lifetime is
//! the least of the requested lifetime (or the server default), the rule's
//! `max_ttl` and the server's maximum.

mod eval;
mod index;
mod lint;
mod matcher;
mod parse;
mod source;

use std::time::Duration;

use serde::Serialize;

pub use eval::{
    Decision, Denial, DenialKind, Failure, Grant, Pin, PinKind, PinSource, Pins, Request, RuleOutcome, TtlLimits,
    UNSAFE_EVENTS, evaluate, evaluate_for_grant,
};
pub use lint::{GITHUB_CLAIMS, GITLAB_CLAIMS, LintContext, lint};
pub use parse::parse;

use matcher::{NamePattern, Pattern, Wanted};

/// A parsed policy: valid syntax and types, globs compiled, ready to lint
/// and evaluate. Keeps the positions of its values for [`lint`].
#[derive(Debug, Clone)]
pub struct Policy {
    org: String,
    rules: Vec<Rule>,
    /// Which rules may grant a token ([`evaluate_for_grant`]).
    index: index::RuleIndex,
}

impl Policy {
    /// The org this policy is for.
    pub fn org(&self) -> &str {
        &self.org
    }

    /// The rules, in document (evaluation) order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

/// Input format of a policy document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// TOML (files, `writ policy` commands).
    Toml,
    /// JSON (the admin API).
    Json,
}

/// One rule of a policy. See the [module docs](self) for what each field
/// means.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) name: String,
    pub(crate) name_pos: Pos,
    pub(crate) description: Option<String>,
    pub(crate) issuer: Located<String>,
    pub(crate) repository: Option<Sugar<Vec<Located<NamePattern>>>>,
    pub(crate) workflow: Option<Sugar<Vec<Located<Pattern>>>>,
    pub(crate) repository_id: Option<Sugar<String>>,
    pub(crate) owner_id: Option<Sugar<String>>,
    pub(crate) project_path: Option<Sugar<Vec<Located<NamePattern>>>>,
    pub(crate) namespace_path: Option<Sugar<Vec<Located<NamePattern>>>>,
    pub(crate) project_id: Option<Sugar<String>>,
    pub(crate) namespace_id: Option<Sugar<String>>,
    pub(crate) ref_protected: Option<Sugar<bool>>,
    pub(crate) git_ref: Option<Sugar<Vec<Located<Pattern>>>>,
    pub(crate) environment: Option<Sugar<Vec<Located<Pattern>>>>,
    pub(crate) claims: Vec<ClaimCondition>,
    pub(crate) claims_key: Option<Pos>,
    pub(crate) permissions: Vec<String>,
    pub(crate) permission_pos: Vec<Pos>,
    pub(crate) permissions_key: Option<Pos>,
    pub(crate) apps: Option<Vec<String>>,
    pub(crate) machines: Option<Vec<String>>,
    pub(crate) max_ttl: Option<Located<Duration>>,
    pub(crate) allow_events: Vec<Located<String>>,
    /// Defects found while reading (bad glob, bad duration, malformed
    /// name): reported by [`lint`]; a rule with any never matches.
    pub(crate) problems: Vec<Problem>,
}

impl Rule {
    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The optional human description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The configured issuer name tokens must come from.
    pub fn issuer(&self) -> &str {
        &self.issuer.value
    }

    /// The permissions the rule grants.
    pub fn permissions(&self) -> &[String] {
        &self.permissions
    }

    /// The apps tokens are limited to; `None`: every app.
    pub fn apps(&self) -> Option<&[String]> {
        self.apps.as_deref()
    }

    /// The machines tokens are limited to; `None`: every machine.
    pub fn machines(&self) -> Option<&[String]> {
        self.machines.as_deref()
    }

    /// The rule's cap on token lifetime.
    pub fn max_ttl(&self) -> Option<Duration> {
        self.max_ttl.as_ref().map(|t| t.value)
    }

    /// Unsafe events this rule explicitly accepts.
    pub fn allow_events(&self) -> impl Iterator<Item = &str> {
        self.allow_events.iter().map(|e| e.value.as_str())
    }

    /// The issuer-kind sugar fields present, with the position of their key.
    pub(crate) fn sugar_fields(&self) -> Vec<(&'static str, Pos)> {
        let mut fields = Vec::new();
        let mut add = |name, key: Option<Pos>| {
            if let Some(key) = key {
                fields.push((name, key));
            }
        };
        add("repository", self.repository.as_ref().map(|s| s.key));
        add("workflow", self.workflow.as_ref().map(|s| s.key));
        add("repository_id", self.repository_id.as_ref().map(|s| s.key));
        add("owner_id", self.owner_id.as_ref().map(|s| s.key));
        add("project_path", self.project_path.as_ref().map(|s| s.key));
        add("namespace_path", self.namespace_path.as_ref().map(|s| s.key));
        add("project_id", self.project_id.as_ref().map(|s| s.key));
        add("namespace_id", self.namespace_id.as_ref().map(|s| s.key));
        add("ref_protected", self.ref_protected.as_ref().map(|s| s.key));
        add("ref", self.git_ref.as_ref().map(|s| s.key));
        add("environment", self.environment.as_ref().map(|s| s.key));
        fields.sort_by_key(|(_, pos)| *pos);
        fields
    }
}

/// Which issuer kinds a sugar field applies to.
pub(crate) fn sugar_applies(field: &str, kind: crate::issuer::IssuerKind) -> bool {
    use crate::issuer::IssuerKind;
    match kind {
        IssuerKind::GitHub => {
            matches!(field, "repository" | "workflow" | "repository_id" | "owner_id" | "ref" | "environment")
        }
        IssuerKind::GitLab => matches!(
            field,
            "project_path" | "namespace_path" | "project_id" | "namespace_id" | "ref_protected" | "ref" | "environment"
        ),
        IssuerKind::Generic => false,
    }
}

/// A 1-based line and column in the policy source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    pub value: T,
    pub pos: Pos,
}

/// An issuer-kind sugar field: its value and where its key was written.
#[derive(Debug, Clone)]
pub(crate) struct Sugar<T> {
    pub key: Pos,
    pub value_pos: Pos,
    pub value: T,
}

/// One entry of a rule's `claims` table: any of `wanted` must hold.
#[derive(Debug, Clone)]
pub(crate) struct ClaimCondition {
    pub name: String,
    pub key: Pos,
    pub wanted: Vec<Located<Wanted>>,
}

/// A defect found while reading a rule that only the linter reports.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub pos: Pos,
    pub message: String,
    pub help: Option<String>,
}

/// How serious a [`Diagnostic`] is. Errors refuse the policy; warnings are
/// shown and the policy is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is refused.
    Error,
    /// The policy works, but probably not as meant.
    Warning,
}

/// One finding of [`parse`] or [`lint`], pointing at the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, one lowercase sentence.
    pub message: String,
    /// 1-based line of the offending value.
    pub line: usize,
    /// 1-based column (in characters) of the offending value.
    pub column: usize,
    /// The rule it concerns, when it concerns one.
    pub rule: Option<String>,
    /// How to fix it, e.g. the nearest valid name.
    pub help: Option<String>,
}

impl Diagnostic {
    pub(crate) fn new(severity: Severity, pos: Pos, rule: Option<&str>, message: String) -> Self {
        Diagnostic { severity, message, line: pos.line, column: pos.column, rule: rule.map(str::to_owned), help: None }
    }

    pub(crate) fn with_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}: {severity}: {}", self.line, self.column, self.message)?;
        if let Some(rule) = &self.rule {
            write!(f, " (rule {rule})")?;
        }
        if let Some(help) = &self.help {
            write!(f, "; help: {help}")?;
        }
        Ok(())
    }
}

/// A policy that could not be read: syntax or type errors, all of them,
/// each with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all(.diagnostics))]
pub struct PolicyError {
    /// Every error found, in document order.
    pub diagnostics: Vec<Diagnostic>,
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// The candidate nearest to `name` when it is close enough to be the
/// likely intent (a typo, a missing letter, a plural).
pub(crate) fn nearest<'a, I: IntoIterator<Item = &'a str>>(name: &str, candidates: I) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `did you mean …?` help for an unknown name.
pub(crate) fn did_you_mean<'a, I: IntoIterator<Item = &'a str>>(name: &str, candidates: I) -> Option<String> {
    nearest(name, candidates).map(|n| format!("did you mean `{n}`?"))
}
