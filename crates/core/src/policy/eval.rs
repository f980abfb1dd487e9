//! Evaluation: one exchange request against one org's policy, giving a
//! decision that explains, rule by rule, what held and what did not.
//!
//! Pure and fast: globs were compiled at parse time, recorded pins arrive
//! as a parameter, and the cost depends only on this policy's rules, never
//! on how many orgs the server holds.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::matcher::{
    NamePattern, Pattern, claim_matches, fold, fold_eq, render_got, render_wanted, string_claim_matches,
};
use super::{Located, Policy, Rule, Sugar, sugar_applies};
use crate::claims::VerifiedClaims;
use crate::issuer::IssuerKind;

/// GitHub events that never match a rule unless it lists them in
/// `allow_events`. `pull_request_target` runs in the base repository's
/// context (with its secrets and OIDC permission) for pull requests from
/// forks; `workflow_run` is triggered by another workflow, possibly one a
/// fork's pull request started. Both let people without write access cause
/// a privileged run: the classic "pwn request".
pub const UNSAFE_EVENTS: &[&str] = &["pull_request_target", "workflow_run"];

/// What the caller asks for. Empty lists mean "whatever the rule grants".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Requested permissions, a subset of the rule's; empty: all of them.
    pub permissions: Vec<String>,
    /// Apps to limit the token to; empty: the rule's apps (unrestricted
    /// when the rule lists none).
    pub apps: Vec<String>,
    /// Machines to limit the token to; empty: as for apps.
    pub machines: Vec<String>,
    /// Requested lifetime; `None`: the server default.
    pub ttl: Option<Duration>,
}

/// The server's token lifetime settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlLimits {
    /// Lifetime when the request names none.
    pub default: Duration,
    /// Upper bound on every token.
    pub max: Duration,
}

/// What kind of name a pin ties to an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinKind {
    /// A GitHub repository (`acme/web` to `repository_id`).
    Repository,
    /// A GitHub owner (`acme` to `repository_owner_id`).
    Owner,
    /// A GitLab project (`group/app` to `project_id`).
    Project,
    /// A GitLab namespace (`group/sub` to `namespace_id`).
    Namespace,
}

impl PinKind {
    /// The lowercase name used in storage and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::Repository => "repository",
            PinKind::Owner => "owner",
            PinKind::Project => "project",
            PinKind::Namespace => "namespace",
        }
    }

    /// The rule field that pins this kind of name explicitly.
    pub fn rule_field(self) -> &'static str {
        match self {
            PinKind::Repository => "repository_id",
            PinKind::Owner => "owner_id",
            PinKind::Project => "project_id",
            PinKind::Namespace => "namespace_id",
        }
    }
}

impl fmt::Display for PinKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name tied to the immutable id it had when first used. Names are
/// lowercased (they compare case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pin {
    /// The configured issuer name the name lives under.
    pub issuer: String,
    /// What the name names.
    pub kind: PinKind,
    /// The lowercased name (`acme/web`, `acme`).
    pub name: String,
    /// The id, as the claims spell it.
    pub id: String,
}

/// Ids recorded so far, looked up by (issuer, kind, lowercased name).
///
/// Security invariant: a name seen once keeps its id. Without pins, whoever
/// re-creates a deleted repository, or takes over a renamed account's name,
/// inherits every rule written for the old one.
///
/// A vector searched in order rather than a map: an exchange looks up the
/// two or so pins of its own token, and a map cost an allocation per
/// lookup (its owned key) and per insert.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    /// Each (issuer, kind, name) once, the name lowercased.
    pins: Vec<Pin>,
}

impl Pins {
    /// No pins recorded.
    pub fn new() -> Self {
        Pins::default()
    }

    /// Records (or replaces) a pin.
    pub fn insert(&mut self, mut pin: Pin) {
        // Folds (allocates) only a name that is not lowercase already.
        if !fold_eq(&pin.name, &pin.name) {
            pin.name = fold(&pin.name);
        }
        match self.position(&pin.issuer, pin.kind, &pin.name) {
            Some(i) => self.pins[i] = pin,
            None => self.pins.push(pin),
        }
    }

    /// The recorded id of a name, if any.
    pub fn get(&self, issuer: &str, kind: PinKind, name: &str) -> Option<&str> {
        self.position(issuer, kind, name).map(|i| self.pins[i].id.as_str())
    }

    fn position(&self, issuer: &str, kind: PinKind, name: &str) -> Option<usize> {
        self.pins.iter().position(|p| p.kind == kind && p.issuer == issuer && fold_eq(name, &p.name))
    }

    /// Number of pins.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// True when no pin is recorded.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }
}

impl FromIterator<Pin> for Pins {
    fn from_iter<I: IntoIterator<Item = Pin>>(iter: I) -> Self {
        let mut pins = Pins::new();
        pins.extend(iter);
        pins
    }
}

impl Extend<Pin> for Pins {
    fn extend<I: IntoIterator<Item = Pin>>(&mut self, iter: I) {
        for pin in iter {
            self.insert(pin);
        }
    }
}

/// Where the id a name was checked against came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinSource {
    /// Written in the rule (`repository_id = …`).
    Rule,
    /// Recorded by the first grant for that name.
    FirstUse,
}

/// Why one rule did not give the token. Serialized with a `type` tag (and,
/// inside a [`RuleOutcome`], a `message` with the [`Display`](fmt::Display)
/// sentence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Failure {
    /// The rule is for another configured issuer.
    IssuerMismatch {
        /// The rule's issuer.
        wanted: String,
        /// The token's issuer.
        got: String,
    },
    /// The rule has a defect the linter reports; it never matches.
    InvalidRule {
        /// The defect.
        problem: String,
    },
    /// The rule uses a field that does not exist for this issuer's kind.
    NotApplicable {
        /// The field.
        field: String,
        /// The token issuer's kind.
        issuer_kind: IssuerKind,
    },
    /// A GitHub rule that fixes no owner: any repository could satisfy it.
    OwnerNotPinned,
    /// A GitLab or generic rule that names no project, namespace or claim.
    NotIdentifying {
        /// The token issuer's kind.
        issuer_kind: IssuerKind,
    },
    /// A claim does not have a wanted value.
    Claim {
        /// The claim's name.
        claim: String,
        /// The wanted value, or `one of a, b` for a list.
        wanted: String,
        /// The claim's value; `None` when absent or null.
        got: Option<String>,
    },
    /// The caller's workflow (`workflow_ref` without its `@ref`) differs.
    Workflow {
        /// The wanted workflow path, or `one of a, b`.
        wanted: String,
        /// The caller's workflow path; `None` when `workflow_ref` is absent.
        got: Option<String>,
    },
    /// The token comes from an event that runs privileged code on behalf of
    /// others, and the rule does not list it in `allow_events`.
    UnsafeEvent {
        /// The `event_name` claim.
        event: String,
    },
    /// A name is pinned to another id than the token carries.
    PinMismatch {
        /// What the name names.
        pin: PinKind,
        /// The name (as the token spells it).
        name: String,
        /// The id it is pinned to.
        pinned: String,
        /// The token's id for it; `None` when the claim is absent.
        got: Option<String>,
        /// Where the pinned id came from.
        source: PinSource,
    },
    /// The rule grants no permissions at all.
    NoPermissions,
    /// A requested permission the rule does not grant.
    PermissionNotGranted {
        /// The permission.
        permission: String,
    },
    /// A requested app the rule does not grant.
    AppNotGranted {
        /// The app.
        app: String,
    },
    /// A requested machine the rule does not grant.
    MachineNotGranted {
        /// The machine.
        machine: String,
    },
}

impl Failure {
    /// True for failures about what was requested rather than who asked.
    fn is_scope(&self) -> bool {
        matches!(
            self,
            Failure::NoPermissions
                | Failure::PermissionNotGranted { .. }
                | Failure::AppNotGranted { .. }
                | Failure::MachineNotGranted { .. }
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::IssuerMismatch { wanted, got } => {
                write!(f, "the rule is for tokens from issuer `{wanted}`; this token is from `{got}`")
            }
            Failure::InvalidRule { problem } => write!(f, "the rule is invalid and never matches: {problem}"),
            Failure::NotApplicable { field, issuer_kind } => {
                write!(f, "`{field}` does not apply to {issuer_kind} issuers, so the rule never matches")
            }
            Failure::OwnerNotPinned => f.write_str(
                "the rule fixes no repository owner, so any repository on GitHub could satisfy it; it never matches",
            ),
            Failure::NotIdentifying { issuer_kind: IssuerKind::Generic } => {
                f.write_str("the rule has no `claims` to identify the caller, so it never matches")
            }
            Failure::NotIdentifying { .. } => {
                f.write_str("the rule names no fixed project or namespace, so it never matches")
            }
            Failure::Claim { claim, wanted, got: Some(got) } => {
                write!(f, "claim `{claim}` is `{got}`; the rule wants {wanted}")
            }
            Failure::Claim { claim, wanted, got: None } => {
                write!(f, "claim `{claim}` is absent; the rule wants {wanted}")
            }
            Failure::Workflow { wanted, got: Some(got) } => {
                write!(f, "the workflow is `{got}` (`workflow_ref` without its @ref); the rule wants {wanted}")
            }
            Failure::Workflow { wanted, got: None } => {
                write!(f, "claim `workflow_ref` is absent; the rule wants workflow {wanted}")
            }
            Failure::UnsafeEvent { event } => write!(
                f,
                "event `{event}` can run privileged workflows on behalf of people without write access; \
                 the rule would have to list it in `allow_events`"
            ),
            Failure::PinMismatch { pin, name, pinned, got, source } => {
                let got_text = got.as_deref().map_or_else(|| "no id".to_owned(), |g| format!("id {g}"));
                match source {
                    PinSource::FirstUse => {
                        write!(f, "{pin} {name} was pinned to id {pinned} on first use; this token has {got_text}")?
                    }
                    PinSource::Rule => {
                        write!(f, "the rule pins {pin} {name} to id {pinned}; this token has {got_text}")?
                    }
                }
                let cause = match pin {
                    PinKind::Repository | PinKind::Project => "was it deleted and re-created, or replaced?",
                    PinKind::Owner | PinKind::Namespace => {
                        "was it deleted or renamed, and its name taken by someone else?"
                    }
                };
                write!(f, ": {cause}")?;
                if let Some(got) = got {
                    let field = pin.rule_field();
                    match source {
                        PinSource::FirstUse => write!(
                            f,
                            " If the new one is legitimate, set `{field} = \"{got}\"` in the rule (or reset the pin)"
                        )?,
                        PinSource::Rule => {
                            write!(f, " If the new one is legitimate, change the rule to `{field} = \"{got}\"`")?
                        }
                    }
                }
                Ok(())
            }
            Failure::NoPermissions => f.write_str("the rule grants no permissions"),
            Failure::PermissionNotGranted { permission } => {
                write!(f, "the rule does not grant permission `{permission}`")
            }
            Failure::AppNotGranted { app } => write!(f, "the rule does not grant app `{app}`"),
            Failure::MachineNotGranted { machine } => write!(f, "the rule does not grant machine `{machine}`"),
        }
    }
}

/// How one rule fared. `matched` is true when all of the rule's conditions
/// held; its `failures` are then only about the request (permissions, apps,
/// machines), and empty for the rule that granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleOutcome {
    /// The rule's name.
    pub rule: String,
    /// All conditions held.
    pub matched: bool,
    /// What failed, in rule order; each serialized with its `message`.
    #[serde(serialize_with = "failures_with_messages")]
    pub failures: Vec<Failure>,
}

fn failures_with_messages<S: Serializer>(failures: &[Failure], serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct WithMessage<'a> {
        #[serde(flatten)]
        failure: &'a Failure,
        message: String,
    }
    serializer.collect_seq(failures.iter().map(|failure| WithMessage { failure, message: failure.to_string() }))
}

/// The outcome of an exchange's policy step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// A rule grants the request.
    Granted(Grant),
    /// No rule does.
    Denied(Denial),
}

impl Decision {
    /// The per-rule explanation, granted or not.
    pub fn explanation(&self) -> &[RuleOutcome] {
        match self {
            Decision::Granted(g) => &g.explanation,
            Decision::Denied(d) => &d.explanation,
        }
    }
}

/// What the token gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The rule that granted.
    pub rule: String,
    /// Granted permissions: the requested ones, or all of the rule's.
    pub permissions: Vec<String>,
    /// Apps the token is limited to; empty: not limited.
    pub apps: Vec<String>,
    /// Machines the token is limited to; empty: not limited.
    pub machines: Vec<String>,
    /// Token lifetime: min(requested or default, rule `max_ttl`, server max).
    #[serde(rename = "ttl_s", serialize_with = "seconds")]
    pub ttl: Duration,
    /// Names seen without a recorded pin; the server records them with the
    /// audit record of this exchange.
    pub new_pins: Vec<Pin>,
    /// Outcomes of the rules tried, the granting one last.
    pub explanation: Vec<RuleOutcome>,
}

fn seconds<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(d.as_secs())
}

/// Why no token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// The class of denial, mapped to an OAuth error code.
    pub kind: DenialKind,
    /// One sentence for `error_description`.
    pub message: String,
    /// Every rule's outcome.
    pub explanation: Vec<RuleOutcome>,
}

/// The classes of denial, as RFC 6749/8693 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialKind {
    /// No rule's conditions hold for this identity (or there are no rules).
    InvalidGrant,
    /// A rule's conditions hold, but none grants the requested permissions.
    InvalidScope,
    /// Rules grant the permissions, but not the requested apps or machines.
    InvalidTarget,
}

impl DenialKind {
    /// The OAuth `error` code.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            DenialKind::InvalidGrant => "invalid_grant",
            DenialKind::InvalidScope => "invalid_scope",
            DenialKind::InvalidTarget => "invalid_target",
        }
    }
}

/// Decides one request.
///
/// Rules are tried in document order. A rule is chosen when all its
/// conditions hold for `claims` and it grants everything requested:
/// requested permissions are among the rule's; requested apps are among
/// the rule's apps when it lists apps (a rule without `apps` grants every
/// app); the same for machines. Later rules are not tried.
///
/// The grant's permissions are the requested ones, or all of the rule's
/// when none were requested. Its apps are the requested ones, or the rule's
/// when none were requested (empty, meaning unrestricted, when the rule
/// lists none); the same for machines. Its lifetime is
/// min(`request.ttl` or `limits.default`, rule `max_ttl`, `limits.max`).
///
/// Names the rule pins (see [`Pins`]) are checked against `pins` (or the
/// ids written in the rule) and those without a recorded pin come back in
/// [`Grant::new_pins`].
///
/// Denials: [`DenialKind::InvalidGrant`] when no rule's conditions hold
/// (including an empty policy, or none for the token's issuer);
/// [`DenialKind::InvalidTarget`] when some matching rule grants the
/// permissions but not the apps or machines; [`DenialKind::InvalidScope`]
/// otherwise.
pub fn evaluate(
    policy: &Policy,
    claims: &VerifiedClaims,
    request: &Request,
    pins: &Pins,
    limits: TtlLimits,
) -> Decision {
    if policy.rules.is_empty() {
        return Decision::Denied(Denial {
            kind: DenialKind::InvalidGrant,
            message: format!("the policy of org {} has no rules", policy.org),
            explanation: Vec::new(),
        });
    }
    evaluate_rules(policy, claims, request, pins, limits, policy.rules.iter(), policy.rules.len())
}

/// [`evaluate`] for a caller that keeps only the granting rule's outcome
/// (the exchange's audit record). Rules that cannot match this token, by
/// issuer or by repository or project name, are passed over without
/// building the explanation of their failure; the policy's index of
/// exactly named repositories and projects finds the others without
/// walking every rule, so a policy's size matters little to a grant.
/// Skipping a rule that fails anyway cannot change which rule grants, so
/// the decision is the same as [`evaluate`]'s; a grant's explanation lists
/// fewer rules, and a denial is evaluated again in full, so it explains
/// every rule.
pub fn evaluate_for_grant(
    policy: &Policy,
    claims: &VerifiedClaims,
    request: &Request,
    pins: &Pins,
    limits: TtlLimits,
) -> Decision {
    let candidates = policy.index.candidates(claims).filter_map(|position| policy.rules.get(position));
    let rules = candidates.filter(|rule| !cannot_match(rule, claims));
    match evaluate_rules(policy, claims, request, pins, limits, rules, 1) {
        granted @ Decision::Granted(_) => granted,
        Decision::Denied(_) => evaluate(policy, claims, request, pins, limits),
    }
}

/// True when `rule` certainly fails for `claims` on its first conditions
/// (the same comparisons [`RuleCheck::conditions`] makes first).
fn cannot_match(rule: &Rule, claims: &VerifiedClaims) -> bool {
    if rule.issuer() != claims.issuer_name() || !rule.problems.is_empty() {
        return true;
    }
    let (claim, patterns) = match claims.issuer_kind() {
        IssuerKind::GitHub => ("repository", &rule.repository),
        IssuerKind::GitLab => ("project_path", &rule.project_path),
        IssuerKind::Generic => return false,
    };
    let Some(patterns) = patterns else { return false };
    let name = claims.get(claim).and_then(Value::as_str);
    !name.is_some_and(|n| patterns.value.iter().any(|p| p.value.pattern.matches(n)))
}

/// Evaluates `rules` (some of `policy`'s, in its order) until one grants;
/// `outcomes` is how many rule outcomes the explanation is expected to hold.
fn evaluate_rules<'p>(
    policy: &Policy,
    claims: &VerifiedClaims,
    request: &Request,
    pins: &Pins,
    limits: TtlLimits,
    rules: impl Iterator<Item = &'p Rule>,
    outcomes: usize,
) -> Decision {
    let mut explanation = Vec::with_capacity(outcomes);
    for rule in rules {
        let mut check = RuleCheck { rule, claims, pins, failures: Vec::new(), new_pins: Vec::new() };
        check.conditions();
        if !check.failures.is_empty() {
            explanation.push(RuleOutcome { rule: rule.name.clone(), matched: false, failures: check.failures });
            continue;
        }
        match grant_scope(rule, request) {
            Ok((permissions, apps, machines)) => {
                explanation.push(RuleOutcome { rule: rule.name.clone(), matched: true, failures: Vec::new() });
                let mut ttl = request.ttl.unwrap_or(limits.default).min(limits.max);
                if let Some(max) = rule.max_ttl() {
                    ttl = ttl.min(max);
                }
                return Decision::Granted(Grant {
                    rule: rule.name.clone(),
                    permissions,
                    apps,
                    machines,
                    ttl,
                    new_pins: check.new_pins,
                    explanation,
                });
            }
            Err(failures) => explanation.push(RuleOutcome { rule: rule.name.clone(), matched: true, failures }),
        }
    }
    Decision::Denied(denial(policy, claims, explanation))
}

fn denial(policy: &Policy, claims: &VerifiedClaims, explanation: Vec<RuleOutcome>) -> Denial {
    let matched: Vec<&RuleOutcome> = explanation.iter().filter(|o| o.matched).collect();
    let names = |outcomes: &[&RuleOutcome]| outcomes.iter().map(|o| o.rule.as_str()).collect::<Vec<_>>().join(", ");
    let (kind, message) = if matched.is_empty() {
        let message = if policy.rules.iter().all(|r| r.issuer() != claims.issuer_name()) {
            format!("no rule of org {} accepts tokens from issuer {}", policy.org, claims.issuer_name())
        } else {
            format!("no rule of org {} matches this token", policy.org)
        };
        (DenialKind::InvalidGrant, message)
    } else if matched.iter().any(|o| {
        o.failures.iter().all(|f| matches!(f, Failure::AppNotGranted { .. } | Failure::MachineNotGranted { .. }))
    }) {
        let message =
            format!("rule {} matches this token but does not grant the requested apps or machines", names(&matched));
        (DenialKind::InvalidTarget, message)
    } else {
        let message =
            format!("rule {} matches this token but does not grant the requested permissions", names(&matched));
        (DenialKind::InvalidScope, message)
    };
    Denial { kind, message, explanation }
}

type Scope = (Vec<String>, Vec<String>, Vec<String>);

/// What a matching rule grants for `request`, or why it cannot.
fn grant_scope(rule: &Rule, request: &Request) -> Result<Scope, Vec<Failure>> {
    let mut failures = Vec::new();
    if rule.permissions.is_empty() {
        failures.push(Failure::NoPermissions);
    }
    let permissions = if request.permissions.is_empty() {
        rule.permissions.clone()
    } else {
        let requested = dedup(&request.permissions);
        for p in &requested {
            if !rule.permissions.contains(p) {
                failures.push(Failure::PermissionNotGranted { permission: p.clone() });
            }
        }
        requested
    };
    let apps = narrow(rule.apps.as_deref(), &request.apps, &mut failures, |app| Failure::AppNotGranted { app });
    let machines = narrow(rule.machines.as_deref(), &request.machines, &mut failures, |machine| {
        Failure::MachineNotGranted { machine }
    });
    debug_assert!(failures.iter().all(Failure::is_scope));
    if failures.is_empty() { Ok((permissions, apps, machines)) } else { Err(failures) }
}

/// Apps (or machines) of the token: the requested ones, which the rule must
/// grant when it lists any; else the rule's own list (empty: unrestricted).
fn narrow(
    granted: Option<&[String]>,
    requested: &[String],
    failures: &mut Vec<Failure>,
    not_granted: impl Fn(String) -> Failure,
) -> Vec<String> {
    match granted {
        Some(list) if requested.is_empty() => list.to_vec(),
        Some(list) => {
            let requested = dedup(requested);
            for r in &requested {
                if !list.contains(r) {
                    failures.push(not_granted(r.clone()));
                }
            }
            requested
        }
        None => dedup(requested),
    }
}

fn dedup(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// The caller's workflow file: `workflow_ref` without its `@ref` suffix.
/// Refs start with `refs/`, so the first `@refs/` splits even when the
/// branch name holds an `@`.
fn workflow_path(workflow_ref: &str) -> &str {
    let at = workflow_ref.find("@refs/").or_else(|| workflow_ref.rfind('@'));
    at.map_or(workflow_ref, |i| &workflow_ref[..i])
}

impl Rule {
    /// A GitHub rule fixes an owner: every `repository` has a literal owner
    /// part, or `owner_id` is given.
    pub(crate) fn fixes_github_owner(&self) -> bool {
        self.owner_id.is_some()
            || self.repository.as_ref().is_some_and(|r| r.value.iter().all(|p| p.value.owner.is_some()))
    }

    /// A GitLab rule names a fixed project or group: an id, or paths whose
    /// first segment is literal.
    pub(crate) fn identifies_gitlab_project(&self) -> bool {
        let literal_top = |names: &Option<Sugar<Vec<Located<NamePattern>>>>| {
            names.as_ref().is_some_and(|n| n.value.iter().all(|p| p.value.top.is_some()))
        };
        self.project_id.is_some()
            || self.namespace_id.is_some()
            || literal_top(&self.project_path)
            || literal_top(&self.namespace_path)
    }

    /// Whether the rule can match tokens of this issuer kind at all, and
    /// why not.
    pub(crate) fn structural_failures(&self, kind: IssuerKind) -> Vec<Failure> {
        let mut failures: Vec<Failure> = self
            .sugar_fields()
            .into_iter()
            .filter(|(field, _)| !sugar_applies(field, kind))
            .map(|(field, _)| Failure::NotApplicable { field: field.to_owned(), issuer_kind: kind })
            .collect();
        match kind {
            IssuerKind::GitHub if !self.fixes_github_owner() => failures.push(Failure::OwnerNotPinned),
            IssuerKind::GitLab if !self.identifies_gitlab_project() => {
                failures.push(Failure::NotIdentifying { issuer_kind: kind });
            }
            IssuerKind::Generic if self.claims.is_empty() => {
                failures.push(Failure::NotIdentifying { issuer_kind: kind });
            }
            _ => {}
        }
        failures
    }
}

/// Checks one rule's conditions against the claims.
struct RuleCheck<'a> {
    rule: &'a Rule,
    claims: &'a VerifiedClaims,
    pins: &'a Pins,
    failures: Vec<Failure>,
    new_pins: Vec<Pin>,
}

impl RuleCheck<'_> {
    fn conditions(&mut self) {
        let rule = self.rule;
        if rule.issuer() != self.claims.issuer_name() {
            self.failures.push(Failure::IssuerMismatch {
                wanted: rule.issuer().to_owned(),
                got: self.claims.issuer_name().to_owned(),
            });
            return;
        }
        if let Some(problem) = rule.problems.first() {
            self.failures.push(Failure::InvalidRule { problem: problem.message.clone() });
            return;
        }
        let kind = self.claims.issuer_kind();
        self.failures = rule.structural_failures(kind);
        if !self.failures.is_empty() {
            return;
        }
        match kind {
            IssuerKind::GitHub => self.github(),
            IssuerKind::GitLab => self.gitlab(),
            IssuerKind::Generic => {}
        }
        for condition in &rule.claims {
            let claim = self.claims.get(&condition.name);
            if !claim_matches(claim, condition.wanted.iter().map(|w| &w.value)) {
                self.failures.push(Failure::Claim {
                    claim: condition.name.clone(),
                    wanted: render_wanted(condition.wanted.iter().map(|w| w.value.render())),
                    got: render_got(claim),
                });
            }
        }
        if let Some(event) = self.claims.get("event_name").and_then(Value::as_str)
            && UNSAFE_EVENTS.contains(&event)
            && !rule.allow_events().any(|allowed| allowed == event)
        {
            self.failures.push(Failure::UnsafeEvent { event: event.to_owned() });
        }
    }

    fn github(&mut self) {
        let rule = self.rule;
        let (mut owner_done, mut repository_done) = (false, false);
        if let Some(repository) = &rule.repository {
            match self.name_condition("repository", &repository.value) {
                // The ids belong to the name; with the name wrong there is
                // nothing to compare them with. Other conditions still run,
                // so the explanation lists every failure.
                None => (owner_done, repository_done) = (true, true),
                Some((pattern, name)) => {
                    if let Some(owner) = &pattern.owner {
                        let owner_written = pattern.pattern.text().split('/').next().unwrap_or_default();
                        if let Some(got) = self.expect_folded("repository_owner", owner, owner_written) {
                            self.pin(PinKind::Owner, &got, "repository_owner_id", rule.owner_id.as_ref());
                        }
                        owner_done = true;
                    }
                    if !pattern.pattern.is_glob() {
                        self.pin(PinKind::Repository, &name, "repository_id", rule.repository_id.as_ref());
                        repository_done = true;
                    }
                }
            }
        }
        if !owner_done {
            self.id_condition("repository_owner_id", rule.owner_id.as_ref());
        }
        if !repository_done {
            self.id_condition("repository_id", rule.repository_id.as_ref());
        }
        self.string_condition("ref", rule.git_ref.as_ref());
        self.string_condition("environment", rule.environment.as_ref());
        if let Some(workflow) = &rule.workflow {
            let got = self.claims.get("workflow_ref").and_then(Value::as_str).map(workflow_path);
            if !got.is_some_and(|g| workflow.value.iter().any(|p| p.value.matches(g))) {
                self.failures
                    .push(Failure::Workflow { wanted: render_patterns(&workflow.value), got: got.map(str::to_owned) });
            }
        }
    }

    fn gitlab(&mut self) {
        let rule = self.rule;
        let (mut namespace_done, mut project_done) = (false, false);
        if let Some(project) = &rule.project_path {
            match self.name_condition("project_path", &project.value) {
                // As for GitHub: no name, no ids to compare.
                None => (namespace_done, project_done) = (true, true),
                Some((pattern, name)) => {
                    if let Some(namespace) = &pattern.owner {
                        let written = pattern.pattern.text().rsplit_once('/').map_or("", |(ns, _)| ns);
                        if let Some(got) = self.expect_folded("namespace_path", namespace, written) {
                            self.pin(PinKind::Namespace, &got, "namespace_id", rule.namespace_id.as_ref());
                        }
                        namespace_done = true;
                    }
                    if !pattern.pattern.is_glob() {
                        self.pin(PinKind::Project, &name, "project_id", rule.project_id.as_ref());
                        project_done = true;
                    }
                }
            }
        }
        if let Some(namespace) = &rule.namespace_path
            && let Some((pattern, name)) = self.name_condition("namespace_path", &namespace.value)
            && pattern.owner.is_some()
            && !namespace_done
        {
            self.pin(PinKind::Namespace, &name, "namespace_id", rule.namespace_id.as_ref());
            namespace_done = true;
        }
        if !namespace_done {
            self.id_condition("namespace_id", rule.namespace_id.as_ref());
        }
        if !project_done {
            self.id_condition("project_id", rule.project_id.as_ref());
        }
        self.gitlab_rest();
    }

    /// GitLab conditions that do not depend on the project.
    fn gitlab_rest(&mut self) {
        let rule = self.rule;
        self.string_condition("ref", rule.git_ref.as_ref());
        if let Some(protected) = &rule.ref_protected {
            let claim = self.claims.get("ref_protected");
            if !claim_matches(claim, &[super::matcher::Wanted::Bool(protected.value)]) {
                self.failures.push(Failure::Claim {
                    claim: "ref_protected".to_owned(),
                    wanted: protected.value.to_string(),
                    got: render_got(claim),
                });
            }
        }
        self.string_condition("environment", rule.environment.as_ref());
    }

    /// A case-insensitive name condition; on success the pattern that
    /// matched and the caller's name.
    fn name_condition<'p>(
        &mut self,
        claim: &str,
        patterns: &'p [Located<NamePattern>],
    ) -> Option<(&'p NamePattern, String)> {
        let got = self.claims.get(claim);
        let name = got.and_then(Value::as_str);
        let matched = name.and_then(|n| patterns.iter().find(|p| p.value.pattern.matches(n)));
        match (matched, name) {
            (Some(p), Some(name)) => Some((&p.value, name.to_owned())),
            _ => {
                self.failures.push(Failure::Claim {
                    claim: claim.to_owned(),
                    wanted: render_wanted(patterns.iter().map(|p| p.value.pattern.text().to_owned())),
                    got: render_got(got),
                });
                None
            }
        }
    }

    /// The claim must equal `folded` case-insensitively; returns its value.
    fn expect_folded(&mut self, claim: &str, folded: &str, written: &str) -> Option<String> {
        let got = self.claims.get(claim);
        match got.and_then(Value::as_str) {
            Some(value) if fold(value) == folded => Some(value.to_owned()),
            _ => {
                self.failures.push(Failure::Claim {
                    claim: claim.to_owned(),
                    wanted: written.to_owned(),
                    got: render_got(got),
                });
                None
            }
        }
    }

    fn string_condition(&mut self, claim: &str, wanted: Option<&Sugar<Vec<Located<Pattern>>>>) {
        let Some(wanted) = wanted else { return };
        let got = self.claims.get(claim);
        if !string_claim_matches(got, wanted.value.iter().map(|p| &p.value)) {
            self.failures.push(Failure::Claim {
                claim: claim.to_owned(),
                wanted: render_patterns(&wanted.value),
                got: render_got(got),
            });
        }
    }

    /// An id written in the rule, checked as a plain condition (no name to
    /// pin it to).
    fn id_condition(&mut self, claim: &str, wanted: Option<&Sugar<String>>) {
        let Some(wanted) = wanted else { return };
        let got = self.claims.text(claim);
        if got.as_deref() != Some(wanted.value.as_str()) {
            let got = got.map(Cow::into_owned);
            self.failures.push(Failure::Claim { claim: claim.to_owned(), wanted: wanted.value.clone(), got });
        }
    }

    /// Checks that `name` still has the id it is pinned to: the rule's id
    /// when written, else the recorded one; a name never seen becomes a new
    /// pin. A token without the id claim fails: the name cannot be pinned.
    fn pin(&mut self, kind: PinKind, name: &str, id_claim: &str, rule_id: Option<&Sugar<String>>) {
        let got = self.claims.text(id_claim);
        let issuer = self.claims.issuer_name();
        let mismatch = |pinned: &str, source| Failure::PinMismatch {
            pin: kind,
            name: name.to_owned(),
            pinned: pinned.to_owned(),
            got: got.as_deref().map(str::to_owned),
            source,
        };
        if let Some(wanted) = rule_id {
            if got.as_deref() != Some(wanted.value.as_str()) {
                self.failures.push(mismatch(&wanted.value, PinSource::Rule));
            }
            return;
        }
        match (self.pins.get(issuer, kind, name), &got) {
            (Some(pinned), got) if got.as_deref() != Some(pinned) => {
                self.failures.push(mismatch(pinned, PinSource::FirstUse));
            }
            (Some(_), _) => {}
            (None, Some(id)) => {
                let pin = Pin { issuer: issuer.to_owned(), kind, name: fold(name), id: id.to_string() };
                if !self.new_pins.contains(&pin) {
                    self.new_pins.push(pin);
                }
            }
            (None, None) => self.failures.push(Failure::Claim {
                claim: id_claim.to_owned(),
                wanted: format!("an id to pin {kind} {name} to"),
                got: None,
            }),
        }
    }
}

fn render_patterns(patterns: &[Located<Pattern>]) -> String {
    render_wanted(patterns.iter().map(|p| p.value.text().to_owned()))
}

impl Policy {
    /// True when a rule for the token's issuer names the caller's verified
    /// owner: for GitHub the `repository_owner` (or `repository_owner_id`)
    /// against the owner part of `repository` (or `owner_id`); for GitLab
    /// the top-level group of `namespace_path` against the first segment of
    /// `project_path`/`namespace_path`. Generic issuers have no owner:
    /// false. The server shows a denial's explanation to the caller only
    /// when this holds, so strangers learn nothing about an org's rules.
    pub fn names_owner(&self, claims: &VerifiedClaims) -> bool {
        let rules = self.rules.iter().filter(|r| r.issuer() == claims.issuer_name());
        match claims.issuer_kind() {
            IssuerKind::GitHub => {
                let owner = claims.get("repository_owner").and_then(Value::as_str).map(fold);
                let owner_id = claims.text("repository_owner_id");
                rules.into_iter().any(|rule| {
                    let by_name = rule
                        .repository
                        .as_ref()
                        .is_some_and(|r| r.value.iter().any(|p| p.value.owner.is_some() && p.value.owner == owner));
                    let by_id = rule.owner_id.as_ref().is_some_and(|id| Some(id.value.as_str()) == owner_id.as_deref());
                    by_name || by_id
                })
            }
            IssuerKind::GitLab => {
                let top =
                    claims.get("namespace_path").and_then(Value::as_str).and_then(|ns| ns.split('/').next()).map(fold);
                let Some(top) = top else { return false };
                rules.into_iter().any(|rule| {
                    [&rule.project_path, &rule.namespace_path]
                        .into_iter()
                        .flatten()
                        .any(|names| names.value.iter().any(|p| p.value.top.as_deref() == Some(top.as_str())))
                })
            }
            IssuerKind::Generic => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::policy::{SourceFormat, parse};

    const LIMITS: TtlLimits = TtlLimits { default: Duration::from_secs(15 * 60), max: Duration::from_secs(3600) };

    /// The reference policy most rows run against.
    const DEPLOY: &str = r#"
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
max_ttl = "10m"
"#;

    /// Realistic GitHub Actions claims of a push to main in environment
    /// production; `overrides` replace claims, `null` removes one.
    fn gh(overrides: Value) -> VerifiedClaims {
        let base = json!({
            "iss": "https://token.actions.githubusercontent.com",
            "sub": "repo:acme/web:environment:production",
            "jti": "jti-1",
            "repository": "acme/web",
            "repository_id": "123",
            "repository_owner": "acme",
            "repository_owner_id": "456",
            "repository_visibility": "private",
            "ref": "refs/heads/main",
            "ref_type": "branch",
            "ref_protected": "true",
            "environment": "production",
            "event_name": "push",
            "workflow_ref": "acme/web/.github/workflows/deploy.yml@refs/heads/main",
            "job_workflow_ref": "acme/web/.github/workflows/deploy.yml@refs/heads/main",
            "runner_environment": "github-hosted",
            "run_id": "42",
            "run_attempt": "1",
            "actor": "alice"
        });
        claims_of("github", IssuerKind::GitHub, base, overrides)
    }

    /// Realistic GitLab CI claims of a pipeline on protected `main`.
    fn gl(overrides: Value) -> VerifiedClaims {
        let base = json!({
            "iss": "https://gitlab.example.com",
            "sub": "project_path:acme/infra/app:ref_type:branch:ref:main",
            "jti": "jti-2",
            "namespace_id": "70",
            "namespace_path": "acme/infra",
            "project_id": "700",
            "project_path": "acme/infra/app",
            "ref": "main",
            "ref_type": "branch",
            "ref_protected": "true",
            "environment": "production",
            "pipeline_source": "push"
        });
        claims_of("gitlab", IssuerKind::GitLab, base, overrides)
    }

    fn claims_of(issuer: &str, kind: IssuerKind, base: Value, overrides: Value) -> VerifiedClaims {
        let mut map: Map<String, Value> = match base {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if let Value::Object(o) = overrides {
            for (k, v) in o {
                if v.is_null() {
                    map.remove(&k);
                } else {
                    map.insert(k, v);
                }
            }
        }
        VerifiedClaims::from_trusted_claims_file(issuer, kind, map)
    }

    fn req(permissions: &[&str], apps: &[&str], machines: &[&str], ttl: Option<u64>) -> Request {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Request {
            permissions: owned(permissions),
            apps: owned(apps),
            machines: owned(machines),
            ttl: ttl.map(Duration::from_secs),
        }
    }

    fn full() -> Request {
        Request::default()
    }

    enum Expect {
        /// Granted by this rule.
        Granted(&'static str),
        /// Denied with this kind, and some failure sentence contains the text.
        Denied(DenialKind, &'static str),
    }

    /// Evaluates, and checks on every row of every table that the
    /// exchange's shortcut ([`evaluate_for_grant`]) decides the same: the
    /// same denial, or a grant that differs only in listing fewer
    /// non-matching rules.
    fn decide(policy: &str, claims: &VerifiedClaims, request: &Request, pins: &Pins) -> Decision {
        let policy = parse(policy, SourceFormat::Toml).expect("test policy parses");
        let full = evaluate(&policy, claims, request, pins, LIMITS);
        let quick = evaluate_for_grant(&policy, claims, request, pins, LIMITS);
        match (&full, quick) {
            (Decision::Granted(full), Decision::Granted(mut quick)) => {
                assert_eq!(quick.explanation.last(), full.explanation.last(), "the granting rule's outcome");
                assert!(quick.explanation.len() <= full.explanation.len());
                quick.explanation.clone_from(&full.explanation);
                assert_eq!(&quick, full);
            }
            (full, quick) => assert_eq!(&quick, full),
        }
        full
    }

    #[test]
    fn the_exchange_shortcut_passes_over_rules_for_other_repositories() {
        let policy = r#"
org = "acme"

[[rule]]
name = "other"
issuer = "github"
repository = "acme/api"
permissions = ["deploy"]

[[rule]]
name = "deploy-web"
issuer = "github"
repository = "acme/web"
permissions = ["deploy"]
"#;
        let policy = parse(policy, SourceFormat::Toml).expect("test policy parses");
        let claims = gh(json!({}));
        let Decision::Granted(quick) = evaluate_for_grant(&policy, &claims, &full(), &Pins::new(), LIMITS) else {
            panic!("acme/web is granted")
        };
        assert_eq!(quick.explanation.iter().map(|o| o.rule.as_str()).collect::<Vec<_>>(), ["deploy-web"]);
        let Decision::Granted(all) = evaluate(&policy, &claims, &full(), &Pins::new(), LIMITS) else {
            panic!("acme/web is granted")
        };
        assert_eq!(all.explanation.len(), 2, "the full evaluation explains the other rule too");
    }

    /// One row of the table: evaluates and checks the outcome.
    #[track_caller]
    fn check(policy: &str, claims: VerifiedClaims, request: Request, expect: Expect) -> Decision {
        let decision = decide(policy, &claims, &request, &Pins::new());
        let sentences: Vec<String> =
            decision.explanation().iter().flat_map(|o| o.failures.iter().map(ToString::to_string)).collect();
        match (&expect, &decision) {
            (Expect::Granted(rule), Decision::Granted(g)) => assert_eq!(g.rule, *rule),
            (Expect::Denied(kind, text), Decision::Denied(d)) => {
                assert_eq!(d.kind, *kind, "{sentences:#?}");
                assert!(sentences.iter().any(|s| s.contains(text)), "no failure mentions {text:?}: {sentences:#?}");
            }
            (Expect::Granted(rule), Decision::Denied(d)) => {
                panic!("expected a grant by {rule}, got {:?}: {sentences:#?}", d.kind)
            }
            (Expect::Denied(kind, _), Decision::Granted(g)) => panic!("expected {kind:?}, granted by {}", g.rule),
        }
        decision
    }

    fn granted(decision: Decision) -> Grant {
        match decision {
            Decision::Granted(g) => g,
            Decision::Denied(d) => panic!("denied: {d:?}"),
        }
    }

    #[test]
    fn the_reference_token_gets_the_rules_full_grant() {
        let g = granted(check(DEPLOY, gh(json!({})), full(), Expect::Granted("deploy-web")));
        assert_eq!(g.permissions, ["deploy", "logs:read"]);
        assert_eq!(g.apps, ["web"]);
        assert!(g.machines.is_empty());
        assert_eq!(g.ttl, Duration::from_secs(600));
        assert_eq!(g.explanation, [RuleOutcome { rule: "deploy-web".into(), matched: true, failures: vec![] }]);
    }

    #[test]
    fn each_condition_must_hold() {
        use DenialKind::InvalidGrant as G;
        let rows: &[(&str, Value, &str)] = &[
            ("other repository", json!({"repository": "acme/api"}), "claim `repository` is `acme/api`"),
            ("other owner", json!({"repository": "evil/web", "repository_owner": "evil"}), "the rule wants acme/web"),
            (
                "owner claim disagrees with repository",
                json!({"repository_owner": "evil"}),
                "claim `repository_owner` is `evil`; the rule wants acme",
            ),
            ("pull request ref", json!({"ref": "refs/pull/7/merge"}), "claim `ref` is `refs/pull/7/merge`"),
            ("other branch", json!({"ref": "refs/heads/dev"}), "the rule wants refs/heads/main"),
            ("no environment", json!({"environment": null}), "claim `environment` is absent"),
            ("staging environment", json!({"environment": "staging"}), "claim `environment` is `staging`"),
            (
                "other workflow",
                json!({"workflow_ref": "acme/web/.github/workflows/evil.yml@refs/heads/main"}),
                "the workflow is `acme/web/.github/workflows/evil.yml`",
            ),
            ("no workflow_ref", json!({"workflow_ref": null}), "claim `workflow_ref` is absent"),
            (
                "self-hosted runner",
                json!({"runner_environment": "self-hosted"}),
                "claim `runner_environment` is `self-hosted`",
            ),
            (
                "event not in the list",
                json!({"event_name": "schedule"}),
                "claim `event_name` is `schedule`; the rule wants one of push, workflow_dispatch",
            ),
        ];
        for (name, overrides, text) in rows {
            eprintln!("row: {name}");
            check(DEPLOY, gh(overrides.clone()), full(), Expect::Denied(G, text));
        }
    }

    #[test]
    fn the_explanation_lists_every_failed_condition() {
        let stranger = gh(json!({
            "repository": "evil/web", "repository_owner": "evil", "ref": "refs/pull/1/merge", "environment": null
        }));
        let decision = decide(DEPLOY, &stranger, &full(), &Pins::new());
        let claims: Vec<&str> = decision.explanation()[0]
            .failures
            .iter()
            .filter_map(|f| match f {
                Failure::Claim { claim, .. } => Some(claim.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(claims, ["repository", "ref", "environment"]);
    }

    #[test]
    fn names_compare_case_insensitively_but_refs_exactly() {
        let claims = gh(json!({"repository": "ACME/Web", "repository_owner": "Acme"}));
        check(DEPLOY, claims, full(), Expect::Granted("deploy-web"));
        let claims = gh(json!({"ref": "refs/heads/MAIN"}));
        check(DEPLOY, claims, full(), Expect::Denied(DenialKind::InvalidGrant, "claim `ref` is `refs/heads/MAIN`"));
        let claims = gh(json!({"environment": "Production"}));
        check(DEPLOY, claims, full(), Expect::Denied(DenialKind::InvalidGrant, "claim `environment`"));
    }

    #[test]
    fn workflow_ignores_the_ref_part_only() {
        let claims = gh(json!({"workflow_ref": "acme/web/.github/workflows/deploy.yml@refs/tags/v1@x"}));
        check(DEPLOY, claims, full(), Expect::Granted("deploy-web"));
        assert_eq!(workflow_path("o/r/.github/workflows/a.yml@refs/heads/a@b"), "o/r/.github/workflows/a.yml");
        assert_eq!(workflow_path("o/r/.github/workflows/a.yml@main"), "o/r/.github/workflows/a.yml");
        assert_eq!(workflow_path("o/r/.github/workflows/a.yml"), "o/r/.github/workflows/a.yml");
    }

    const RELEASE: &str = r#"
org = "acme-prod"
[[rule]]
name = "release"
issuer = "github"
repository = ["acme/web", "acme/api"]
ref = ["refs/tags/v*", "refs/heads/release/**"]
permissions = ["deploy"]
"#;

    #[test]
    fn glob_refs_and_lists_are_any_of() {
        let rows: &[(&str, bool)] = &[
            ("refs/tags/v1.2", true),
            ("refs/tags/v1/x", false),
            ("refs/tags/x1", false),
            ("refs/heads/release/2026/q1", true),
            ("refs/heads/main", false),
        ];
        for (git_ref, ok) in rows {
            let claims = gh(json!({"ref": git_ref}));
            let expect = if *ok { Expect::Granted("release") } else { Expect::Denied(DenialKind::InvalidGrant, "ref") };
            check(RELEASE, claims, full(), expect);
        }
        let claims = gh(json!({"repository": "acme/api", "ref": "refs/tags/v2"}));
        check(RELEASE, claims, full(), Expect::Granted("release"));
        let claims = gh(json!({"repository": "acme/other", "ref": "refs/tags/v2"}));
        check(RELEASE, claims, full(), Expect::Denied(DenialKind::InvalidGrant, "one of acme/web, acme/api"));
    }

    #[test]
    fn claim_values_follow_json_spelling_rules() {
        let policy = |claims: &str| {
            format!(
                "org = \"o\"\n[[rule]]\nname = \"r\"\nissuer = \"github\"\nrepository = \"acme/web\"\n\
                 permissions = [\"deploy\"]\nclaims = {{ {claims} }}\n"
            )
        };
        let rows: &[(&str, Value, bool)] = &[
            ("run_attempt = 1", json!({"run_attempt": "1"}), true),
            ("run_attempt = 1", json!({"run_attempt": 1}), true),
            ("run_attempt = 1", json!({"run_attempt": "01"}), false),
            ("run_attempt = \"1\"", json!({"run_attempt": 1}), true),
            ("ref_protected = true", json!({"ref_protected": "true"}), true),
            ("ref_protected = true", json!({"ref_protected": true}), true),
            ("ref_protected = true", json!({"ref_protected": "false"}), false),
            ("ref_protected = \"true\"", json!({"ref_protected": true}), true),
            ("groups = \"devops\"", json!({"groups": ["dev", "devops"]}), true),
            ("groups = \"devops\"", json!({"groups": ["dev"]}), false),
            ("enterprise = \"acme\"", json!({}), false),
            ("enterprise = \"acme\"", json!({"enterprise": null}), false),
            ("actor = [\"alice\", \"bob\"]", json!({"actor": "bob"}), true),
            (
                "job_workflow_ref = \"acme/shared/*@refs/heads/main\"",
                json!({"job_workflow_ref": "acme/shared/.github/workflows/d.yml@refs/heads/main"}),
                false,
            ),
            (
                "job_workflow_ref = \"acme/shared/**\"",
                json!({"job_workflow_ref": "acme/shared/.github/workflows/d.yml@refs/heads/main"}),
                true,
            ),
        ];
        for (wanted, claims, ok) in rows {
            eprintln!("row: {wanted} / {claims}");
            let expect = if *ok { Expect::Granted("r") } else { Expect::Denied(DenialKind::InvalidGrant, "claim") };
            check(&policy(wanted), gh(claims.clone()), full(), expect);
        }
        let absent = decide(&policy("enterprise = \"acme\""), &gh(json!({})), &full(), &Pins::new());
        assert_eq!(
            absent.explanation()[0].failures,
            [Failure::Claim { claim: "enterprise".into(), wanted: "acme".into(), got: None }]
        );
    }

    #[test]
    fn unsafe_events_never_match_unless_allowed() {
        let open = DEPLOY.replace(
            "event_name = [\"push\", \"workflow_dispatch\"]",
            "event_name = [\"push\", \"pull_request_target\", \"workflow_run\"]",
        );
        for event in UNSAFE_EVENTS {
            let claims = gh(json!({"event_name": event}));
            let text = format!("event `{event}`");
            let decision = decide(&open, &claims, &full(), &Pins::new());
            let Decision::Denied(d) = decision else { panic!("{event} granted") };
            assert_eq!(d.explanation[0].failures, [Failure::UnsafeEvent { event: (*event).to_owned() }], "{text}");
            let allowed = format!("{open}allow_events = [\"{event}\"]\n");
            check(&allowed, gh(json!({"event_name": event})), full(), Expect::Granted("deploy-web"));
        }
        // Even a rule that says nothing about events refuses them.
        let bare = "org = \"o\"\n[[rule]]\nname = \"r\"\nissuer = \"github\"\nrepository = \"acme/web\"\npermissions = [\"deploy\"]\n";
        check(
            bare,
            gh(json!({"event_name": "pull_request_target"})),
            full(),
            Expect::Denied(DenialKind::InvalidGrant, "allow_events"),
        );
    }

    #[test]
    fn a_pull_request_cannot_reach_a_main_only_or_environment_only_rule() {
        let pr = json!({"ref": "refs/pull/7/merge", "event_name": "pull_request", "environment": null});
        check(DEPLOY, gh(pr.clone()), full(), Expect::Denied(DenialKind::InvalidGrant, "refs/pull/7/merge"));
        let env_only = "org = \"o\"\n[[rule]]\nname = \"prod\"\nissuer = \"github\"\nrepository = \"acme/*\"\n\
                        environment = \"production\"\npermissions = [\"deploy\"]\n";
        check(env_only, gh(pr), full(), Expect::Denied(DenialKind::InvalidGrant, "claim `environment` is absent"));
        check(env_only, gh(json!({})), full(), Expect::Granted("prod"));
    }

    #[test]
    fn requests_narrow_within_the_rule() {
        let g = granted(check(
            DEPLOY,
            gh(json!({})),
            req(&["deploy", "deploy"], &[], &[], None),
            Expect::Granted("deploy-web"),
        ));
        assert_eq!(g.permissions, ["deploy"]);
        check(
            DEPLOY,
            gh(json!({})),
            req(&["deploy", "admin"], &[], &[], None),
            Expect::Denied(DenialKind::InvalidScope, "does not grant permission `admin`"),
        );
        let g = granted(check(DEPLOY, gh(json!({})), req(&[], &["web"], &[], None), Expect::Granted("deploy-web")));
        assert_eq!(g.apps, ["web"]);
        check(
            DEPLOY,
            gh(json!({})),
            req(&["deploy"], &["api"], &[], None),
            Expect::Denied(DenialKind::InvalidTarget, "does not grant app `api`"),
        );
        // Permissions and apps both missing: the permission is the problem.
        let decision = check(
            DEPLOY,
            gh(json!({})),
            req(&["admin"], &["api"], &[], None),
            Expect::Denied(DenialKind::InvalidScope, "admin"),
        );
        let Decision::Denied(d) = decision else { unreachable!() };
        assert_eq!(d.message, "rule deploy-web matches this token but does not grant the requested permissions");
    }

    #[test]
    fn machines_and_unrestricted_scopes() {
        let vm = "org = \"o\"\n[[rule]]\nname = \"vm\"\nissuer = \"github\"\nrepository = \"acme/web\"\n\
                  permissions = [\"deploy\"]\nmachines = [\"vm-123\"]\n";
        let g = granted(check(vm, gh(json!({})), full(), Expect::Granted("vm")));
        assert_eq!((g.apps.len(), g.machines.as_slice()), (0, &["vm-123".to_owned()][..]));
        check(
            vm,
            gh(json!({})),
            req(&[], &[], &["vm-9"], None),
            Expect::Denied(DenialKind::InvalidTarget, "machine `vm-9`"),
        );
        // No `apps` in the rule: every app, so the request decides.
        let g = granted(check(vm, gh(json!({})), req(&[], &["web", "api"], &[], None), Expect::Granted("vm")));
        assert_eq!(g.apps, ["web", "api"]);
    }

    const ORDERED: &str = r#"
org = "acme-prod"
[[rule]]
name = "read-logs"
issuer = "github"
repository = "acme/*"
permissions = ["logs:read"]

[[rule]]
name = "deploy"
issuer = "github"
repository = "acme/web"
environment = "production"
permissions = ["deploy", "logs:read"]
"#;

    #[test]
    fn the_first_rule_that_grants_the_request_wins() {
        let g = granted(check(ORDERED, gh(json!({})), full(), Expect::Granted("read-logs")));
        assert_eq!(g.permissions, ["logs:read"]);
        assert_eq!(g.explanation.len(), 1, "later rules are not tried");
        let g = granted(check(ORDERED, gh(json!({})), req(&["deploy"], &[], &[], None), Expect::Granted("deploy")));
        assert_eq!(g.explanation[0].failures, [Failure::PermissionNotGranted { permission: "deploy".into() }]);
        assert!(g.explanation[0].matched);
        // Outside production only the first rule's conditions hold.
        check(
            ORDERED,
            gh(json!({"environment": "staging"})),
            req(&["deploy"], &[], &[], None),
            Expect::Denied(DenialKind::InvalidScope, "permission `deploy`"),
        );
    }

    #[test]
    fn ttl_is_the_least_of_request_rule_and_server() {
        let rows: &[(&str, Option<u64>, u64)] = &[
            (DEPLOY, None, 600),
            (DEPLOY, Some(300), 300),
            (DEPLOY, Some(7200), 600),
            (ORDERED, None, 900),
            (ORDERED, Some(7200), 3600),
            (ORDERED, Some(60), 60),
        ];
        for (policy, ttl, want) in rows {
            let decision = decide(policy, &gh(json!({})), &req(&[], &[], &[], *ttl), &Pins::new());
            assert_eq!(granted(decision).ttl, Duration::from_secs(*want), "{ttl:?}");
        }
    }

    fn pin(kind: PinKind, name: &str, id: &str) -> Pin {
        Pin { issuer: "github".into(), kind, name: name.into(), id: id.into() }
    }

    #[test]
    fn pins_are_found_by_issuer_kind_and_name_in_any_case_and_a_later_insert_replaces() {
        let mut pins = Pins::new();
        pins.insert(pin(PinKind::Repository, "Acme/Web", "1"));
        pins.insert(pin(PinKind::Owner, "acme", "9"));
        assert_eq!(pins.get("github", PinKind::Repository, "acme/web"), Some("1"));
        assert_eq!(pins.get("github", PinKind::Repository, "ACME/WEB"), Some("1"));
        assert_eq!(pins.get("github", PinKind::Owner, "Acme"), Some("9"));
        assert_eq!(pins.get("github", PinKind::Owner, "acme/web"), None, "another kind");
        assert_eq!(pins.get("gitlab", PinKind::Repository, "acme/web"), None, "another issuer");
        // Unicode folding: the Kelvin sign lowercases to an ASCII k.
        pins.insert(pin(PinKind::Repository, "\u{212A}ube/app", "5"));
        assert_eq!(pins.get("github", PinKind::Repository, "kube/APP"), Some("5"));
        pins.insert(pin(PinKind::Repository, "ACME/web", "2"));
        assert_eq!(pins.get("github", PinKind::Repository, "acme/web"), Some("2"));
        assert_eq!(pins.len(), 3);
    }

    #[test]
    fn first_use_records_pins_and_later_use_enforces_them() {
        let g = granted(decide(DEPLOY, &gh(json!({"repository": "Acme/Web"})), &full(), &Pins::new()));
        assert_eq!(g.new_pins, [pin(PinKind::Owner, "acme", "456"), pin(PinKind::Repository, "acme/web", "123")]);

        let pins: Pins = g.new_pins.into_iter().collect();
        let g = granted(decide(DEPLOY, &gh(json!({})), &full(), &pins));
        assert!(g.new_pins.is_empty());

        let recreated = gh(json!({"repository_id": "999"}));
        let Decision::Denied(d) = decide(DEPLOY, &recreated, &full(), &pins) else { panic!("granted") };
        assert_eq!(d.kind, DenialKind::InvalidGrant);
        assert_eq!(
            d.explanation[0].failures[0].to_string(),
            "repository acme/web was pinned to id 123 on first use; this token has id 999: was it deleted and \
             re-created, or replaced? If the new one is legitimate, set `repository_id = \"999\"` in the rule \
             (or reset the pin)"
        );

        let taken_over = gh(json!({"repository_owner_id": "666", "repository_id": "124"}));
        let Decision::Denied(d) = decide(DEPLOY, &taken_over, &full(), &pins) else { panic!("granted") };
        assert!(matches!(&d.explanation[0].failures[0], Failure::PinMismatch { pin: PinKind::Owner, .. }));
    }

    #[test]
    fn ids_in_the_rule_replace_recorded_pins() {
        let policy = DEPLOY.replace("max_ttl", "repository_id = 999\nowner_id = \"456\"\nmax_ttl");
        let pins: Pins = [pin(PinKind::Repository, "acme/web", "123")].into_iter().collect();
        let g = granted(decide(&policy, &gh(json!({"repository_id": "999"})), &full(), &pins));
        assert!(g.new_pins.is_empty(), "rule ids are not recorded: {:?}", g.new_pins);
        let Decision::Denied(d) = decide(&policy, &gh(json!({})), &full(), &pins) else { panic!("granted") };
        assert_eq!(
            d.explanation[0].failures,
            [Failure::PinMismatch {
                pin: PinKind::Repository,
                name: "acme/web".into(),
                pinned: "999".into(),
                got: Some("123".into()),
                source: PinSource::Rule,
            }]
        );
    }

    #[test]
    fn an_owner_wildcard_pins_only_the_owner() {
        let g = granted(decide(ORDERED, &gh(json!({})), &full(), &Pins::new()));
        assert_eq!(g.new_pins, [pin(PinKind::Owner, "acme", "456")]);
        let g = granted(decide(ORDERED, &gh(json!({"repository_owner_id": 456})), &full(), &Pins::new()));
        assert_eq!(g.new_pins, [pin(PinKind::Owner, "acme", "456")], "numeric ids pin as their spelling");
        check(
            ORDERED,
            gh(json!({"repository_owner_id": null})),
            full(),
            Expect::Denied(DenialKind::InvalidGrant, "claim `repository_owner_id` is absent"),
        );
    }

    #[test]
    fn other_issuers_and_empty_policies_are_invalid_grants() {
        let decision = decide(DEPLOY, &gl(json!({})), &full(), &Pins::new());
        let Decision::Denied(d) = decision else { panic!("granted") };
        assert_eq!(d.kind, DenialKind::InvalidGrant);
        assert_eq!(d.message, "no rule of org acme-prod accepts tokens from issuer gitlab");
        assert_eq!(
            d.explanation[0].failures,
            [Failure::IssuerMismatch { wanted: "github".into(), got: "gitlab".into() }]
        );
        let Decision::Denied(d) = decide("org = \"empty\"\n", &gh(json!({})), &full(), &Pins::new()) else {
            panic!("granted")
        };
        assert_eq!(
            (d.kind.oauth_error(), d.message.as_str()),
            ("invalid_grant", "the policy of org empty has no rules")
        );
    }

    #[test]
    fn rules_that_could_match_anyone_never_match() {
        let rows: &[(&str, &str)] = &[
            ("claims = { event_name = \"push\" }", "fixes no repository owner"),
            ("repository = \"*/web\"", "fixes no repository owner"),
            ("repository = \"acme/web\"\nproject_path = \"acme/web\"", "`project_path` does not apply to github"),
            ("repository = \"acme/web\"\nref = \"refs/**x\"", "the rule is invalid"),
        ];
        for (conditions, text) in rows {
            let policy = format!(
                "org = \"o\"\n[[rule]]\nname = \"r\"\nissuer = \"github\"\n{conditions}\npermissions = [\"deploy\"]\n"
            );
            check(&policy, gh(json!({})), full(), Expect::Denied(DenialKind::InvalidGrant, text));
        }
    }

    const GITLAB: &str = r#"
org = "acme-prod"
[[rule]]
name = "gitlab-app"
issuer = "gitlab"
project_path = "ACME/infra/app"
ref = "main"
ref_protected = true
environment = "production"
permissions = ["deploy"]

[[rule]]
name = "gitlab-group"
issuer = "gitlab"
namespace_path = "acme/infra"
claims = { pipeline_source = "schedule" }
permissions = ["logs:read"]
"#;

    #[test]
    fn gitlab_rules_use_gitlab_claims() {
        let g = granted(check(GITLAB, gl(json!({})), full(), Expect::Granted("gitlab-app")));
        let issuer =
            |kind, name: &str, id: &str| Pin { issuer: "gitlab".into(), kind, name: name.into(), id: id.into() };
        assert_eq!(
            g.new_pins,
            [issuer(PinKind::Namespace, "acme/infra", "70"), issuer(PinKind::Project, "acme/infra/app", "700")]
        );
        check(
            GITLAB,
            gl(json!({"ref_protected": "false"})),
            full(),
            Expect::Denied(DenialKind::InvalidGrant, "ref_protected"),
        );
        check(
            GITLAB,
            gl(json!({"ref": "refs/heads/main"})),
            full(),
            Expect::Denied(DenialKind::InvalidGrant, "claim `ref`"),
        );
        check(
            GITLAB,
            gl(json!({"pipeline_source": "schedule", "ref": "dev"})),
            full(),
            Expect::Granted("gitlab-group"),
        );
        let pins: Pins =
            [Pin { issuer: "gitlab".into(), kind: PinKind::Project, name: "acme/infra/app".into(), id: "700".into() }]
                .into_iter()
                .collect();
        let moved = gl(json!({"project_id": "701"}));
        let Decision::Denied(d) = decide(GITLAB, &moved, &full(), &pins) else { panic!("granted") };
        assert!(d.explanation[0].failures[0].to_string().starts_with("project acme/infra/app was pinned to id 700"));
    }

    #[test]
    fn gitlab_project_globs_stay_in_their_group() {
        let policy = "org = \"o\"\n[[rule]]\nname = \"g\"\nissuer = \"gitlab\"\nproject_path = \"acme/infra/*\"\npermissions = [\"deploy\"]\n";
        check(policy, gl(json!({})), full(), Expect::Granted("g"));
        let nested = gl(json!({"project_path": "acme/infra/sub/app", "namespace_path": "acme/infra/sub"}));
        check(policy, nested, full(), Expect::Denied(DenialKind::InvalidGrant, "project_path"));
        let lying = gl(json!({"namespace_path": "evil"}));
        check(policy, lying, full(), Expect::Denied(DenialKind::InvalidGrant, "claim `namespace_path` is `evil`"));
    }

    #[test]
    fn generic_issuers_match_claims_only() {
        let policy = "org = \"o\"\n[[rule]]\nname = \"ci\"\nissuer = \"buildkite\"\n\
                      claims = { organization_slug = \"acme\", pipeline_slug = \"deploy-*\" }\npermissions = [\"deploy\"]\n";
        let claims = |o: Value| {
            claims_of(
                "buildkite",
                IssuerKind::Generic,
                json!({"organization_slug": "acme", "pipeline_slug": "deploy-web"}),
                o,
            )
        };
        check(policy, claims(json!({})), full(), Expect::Granted("ci"));
        check(
            policy,
            claims(json!({"pipeline_slug": "test"})),
            full(),
            Expect::Denied(DenialKind::InvalidGrant, "pipeline_slug"),
        );
        let refless =
            policy.replace("claims = { organization_slug = \"acme\", pipeline_slug = \"deploy-*\" }", "ref = \"main\"");
        check(
            &refless,
            claims(json!({})),
            full(),
            Expect::Denied(DenialKind::InvalidGrant, "does not apply to generic"),
        );
    }

    #[test]
    fn names_owner_decides_who_may_read_explanations() {
        let policy = parse(ORDERED, SourceFormat::Toml).expect("parses");
        assert!(policy.names_owner(&gh(json!({}))));
        assert!(policy.names_owner(&gh(json!({"repository": "ACME/x", "repository_owner": "ACME"}))));
        assert!(!policy.names_owner(&gh(json!({"repository": "evil/web", "repository_owner": "evil"}))));
        assert!(!policy.names_owner(&gl(json!({}))), "another issuer's names do not count");
        let gitlab = parse(GITLAB, SourceFormat::Toml).expect("parses");
        assert!(gitlab.names_owner(&gl(json!({"namespace_path": "acme/other"}))));
        assert!(!gitlab.names_owner(&gl(json!({"namespace_path": "evil"}))));
        let by_id = parse(
            "org = \"o\"\n[[rule]]\nname = \"r\"\nissuer = \"github\"\nowner_id = 456\npermissions = [\"x\"]\n",
            SourceFormat::Toml,
        )
        .expect("parses");
        assert!(by_id.names_owner(&gh(json!({"repository_owner": "renamed"}))));
    }

    #[test]
    fn explanations_render_for_people_and_machines() {
        let claims = gh(json!({"ref": "refs/pull/7/merge", "environment": null, "event_name": "pull_request_target"}));
        let decision = decide(ORDERED, &claims, &req(&["deploy"], &[], &[], None), &Pins::new());
        insta::assert_json_snapshot!("denied_pull_request_target", decision);
        let decision =
            decide(DEPLOY, &gh(json!({"ref": "refs/pull/7/merge", "environment": null})), &full(), &Pins::new());
        let text: Vec<String> = decision
            .explanation()
            .iter()
            .flat_map(|o| o.failures.iter().map(move |f| format!("{}: {f}", o.rule)))
            .collect();
        insta::assert_snapshot!("denied_pull_request_text", text.join("\n"));
        let unit_variants = RuleOutcome {
            rule: "r".into(),
            matched: true,
            failures: vec![Failure::OwnerNotPinned, Failure::NoPermissions],
        };
        assert_eq!(
            serde_json::to_value(&unit_variants).expect("serializes"),
            json!({"rule": "r", "matched": true, "failures": [
                {"type": "owner_not_pinned", "message": Failure::OwnerNotPinned.to_string()},
                {"type": "no_permissions", "message": "the rule grants no permissions"},
            ]})
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-zA-Z0-9/*@._-]{0,24}".prop_map(Value::String),
            prop::sample::select(vec!["acme/web", "ACME", "refs/heads/main", "123", "true", "pull_request_target"])
                .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const CLAIM_NAMES: &[&str] = &[
        "repository",
        "repository_owner",
        "repository_id",
        "repository_owner_id",
        "ref",
        "environment",
        "workflow_ref",
        "event_name",
        "runner_environment",
        "project_path",
        "namespace_path",
        "project_id",
        "namespace_id",
        "ref_protected",
    ];

    proptest! {
        #[test]
        fn evaluation_never_panics(
            values in prop::collection::vec(arb_json(), CLAIM_NAMES.len()),
            kind in prop::sample::select(vec![IssuerKind::GitHub, IssuerKind::GitLab, IssuerKind::Generic]),
            permissions in prop::collection::vec("[a-z:]{0,8}", 0..3),
            apps in prop::collection::vec("[a-z]{0,4}", 0..2),
            ttl in prop::option::of(0u64..100_000),
        ) {
            let map: Map<String, Value> = CLAIM_NAMES.iter().map(|n| (*n).to_owned()).zip(values).collect();
            let claims = VerifiedClaims::from_trusted_claims_file("github", kind, map);
            let request = Request { permissions, apps, machines: vec![], ttl: ttl.map(Duration::from_secs) };
            for policy in [DEPLOY, ORDERED, RELEASE, GITLAB] {
                let policy = parse(policy, SourceFormat::Toml).expect("parses");
                let decision = evaluate(&policy, &claims, &request, &Pins::new(), LIMITS);
                if let Decision::Granted(g) = &decision {
                    prop_assert!(g.ttl <= LIMITS.max);
                }
                let _ = policy.names_owner(&claims);
                let _ = serde_json::to_string(&decision).expect("serializes");
            }
        }
    }
}
