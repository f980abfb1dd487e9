//! Why a job has no OIDC token, and how to fix it: the first check the action makes, so a workflow author gets a fix instead of a failed HTTP call.
//!
//! GitHub sets `ACTIONS_ID_TOKEN_REQUEST_URL` and `_TOKEN` only for jobs
//! with `permissions: id-token: write`, and never for runs it treats as
//! untrusted (pull requests from forks, runs triggered by Dependabot), so
//! the same symptom has three causes with different fixes.

use serde_json::Value;

/// The environment variables that carry the Actions OIDC endpoint.
pub const REQUEST_URL_ENV: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The bearer token for [`REQUEST_URL_ENV`].
pub const REQUEST_TOKEN_ENV: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// What the runner tells us about the run.
#[derive(Debug, Default)]
pub struct RunFacts {
    /// `GITHUB_ACTIONS` is `true`.
    pub github_actions: bool,
    /// `GITHUB_EVENT_NAME`.
    pub event_name: Option<String>,
    /// `GITHUB_ACTOR`.
    pub actor: Option<String>,
    /// `GITHUB_TRIGGERING_ACTOR` (differs from the actor on re-runs).
    pub triggering_actor: Option<String>,
    /// `GITHUB_REPOSITORY`.
    pub repository: Option<String>,
    /// The event payload at `GITHUB_EVENT_PATH`, when readable.
    pub event: Option<Value>,
    /// `ACTIONS_ID_TOKEN_REQUEST_URL` is set.
    pub has_request_url: bool,
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN` is set.
    pub has_request_token: bool,
}

impl RunFacts {
    /// Reads the facts from this process's environment.
    pub fn from_env() -> RunFacts {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let event = var("GITHUB_EVENT_PATH")
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        RunFacts {
            github_actions: var("GITHUB_ACTIONS").as_deref() == Some("true"),
            event_name: var("GITHUB_EVENT_NAME"),
            actor: var("GITHUB_ACTOR"),
            triggering_actor: var("GITHUB_TRIGGERING_ACTOR"),
            repository: var("GITHUB_REPOSITORY"),
            event,
            has_request_url: var(REQUEST_URL_ENV).is_some(),
            has_request_token: var(REQUEST_TOKEN_ENV).is_some(),
        }
    }
}

/// The likely reason there is no OIDC token.
#[derive(Debug, PartialEq, Eq)]
pub enum Cause {
    /// Both variables are there: nothing to fix.
    None,
    /// Not running under GitHub Actions at all.
    NotActions,
    /// A run triggered by Dependabot.
    Dependabot,
    /// A pull request whose head is in another repository.
    ForkPullRequest {
        /// The fork, `owner/name`, when the payload names it.
        fork: Option<String>,
    },
    /// The job lacks `permissions: id-token: write`.
    MissingPermission,
    /// Only one of the two variables is set.
    HalfSet,
}

const DEPENDABOT: &str = "dependabot[bot]";

/// Events whose payload has a `pull_request` with `head` and `base`, and
/// for which GitHub withholds the OIDC token when the head is a fork.
const PULL_REQUEST_EVENTS: &[&str] = &["pull_request", "pull_request_review", "pull_request_review_comment"];

/// Picks the likely cause. Dependabot first (its pull requests come from
/// the same repository, so they would otherwise look like a missing
/// permission), then forks, then the permission.
pub fn diagnose(facts: &RunFacts) -> Cause {
    match (facts.has_request_url, facts.has_request_token) {
        (true, true) => return Cause::None,
        (true, false) | (false, true) => return Cause::HalfSet,
        (false, false) => {}
    }
    if !facts.github_actions {
        return Cause::NotActions;
    }
    if [&facts.actor, &facts.triggering_actor].iter().any(|a| a.as_deref() == Some(DEPENDABOT)) {
        return Cause::Dependabot;
    }
    if facts.event_name.as_deref().is_some_and(|e| PULL_REQUEST_EVENTS.contains(&e))
        && let Some(pr) = facts.event.as_ref().and_then(|e| e.get("pull_request"))
    {
        let head = pr.pointer("/head/repo/full_name").and_then(Value::as_str);
        let base = pr.pointer("/base/repo/full_name").and_then(Value::as_str).or(facts.repository.as_deref());
        let fork_flag = pr.pointer("/head/repo/fork").and_then(Value::as_bool) == Some(true);
        // A deleted fork leaves `head.repo` null.
        let head_gone = pr.pointer("/head/repo").is_some_and(Value::is_null);
        let differs = matches!((head, base), (Some(h), Some(b)) if !h.eq_ignore_ascii_case(b));
        if differs || head_gone || (fork_flag && head.is_none()) {
            return Cause::ForkPullRequest { fork: head.map(str::to_owned) };
        }
    }
    Cause::MissingPermission
}

/// The annotation title for a cause.
pub const TITLE: &str = "writ cannot get an OIDC token";

/// The fix-it message for a cause (several lines).
pub fn message(cause: &Cause) -> String {
    match cause {
        Cause::None => String::new(),
        Cause::NotActions => format!(
            "{REQUEST_URL_ENV} is not set and this is not a GitHub Actions run (GITHUB_ACTIONS is not \"true\").\n\
             Outside GitHub Actions, pass your CI system's OIDC token explicitly:\n  \
             writ-action exchange --server URL --org ORG --oidc-token-env VAR   (or --oidc-token-file FILE, or stdin)"
        ),
        Cause::Dependabot => "This run was triggered by Dependabot. GitHub gives Dependabot's runs a read-only \
             GITHUB_TOKEN and no OIDC token, whatever `permissions:` says, so they cannot obtain deploy tokens.\n\
             Fix: skip this step for Dependabot, e.g. `if: github.actor != 'dependabot[bot]'`, and deploy after the \
             update is merged."
            .to_owned(),
        Cause::ForkPullRequest { fork } => {
            let from =
                fork.as_deref().map(|f| format!(" from the fork {f}")).unwrap_or_else(|| " from a fork".to_owned());
            format!(
                "This run is for a pull request{from}. GitHub gives workflows run for pull requests from forks no \
                 OIDC token, whatever `permissions:` says: code from outside the repository must not obtain deploy \
                 credentials.\n\
                 Fix: skip this step for fork pull requests, e.g. \
                 `if: github.event.pull_request.head.repo.full_name == github.repository`, and deploy after merge. \
                 Do not switch to `pull_request_target` to get a token: it runs with the base repository's \
                 privileges, and writ refuses its tokens unless a rule explicitly allows that event."
            )
        }
        Cause::MissingPermission => "This job may not request an OIDC token: ACTIONS_ID_TOKEN_REQUEST_URL and \
             ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set.\n\
             Fix: grant the job (or the whole workflow) the `id-token: write` permission:\n  \
             permissions:\n    id-token: write\n    contents: read   # a permissions block sets every permission it \
             does not list to none\n\
             In a reusable workflow, the calling job must grant `id-token: write` too."
            .to_owned(),
        Cause::HalfSet => format!(
            "Only one of {REQUEST_URL_ENV} and {REQUEST_TOKEN_ENV} is set, which a GitHub runner never does. \
             Something in the workflow overwrote or removed one of them (an `env:` entry, or a step writing to \
             $GITHUB_ENV); remove that."
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn actions(event: &str) -> RunFacts {
        RunFacts {
            github_actions: true,
            event_name: Some(event.to_owned()),
            actor: Some("octocat".to_owned()),
            repository: Some("acme/web".to_owned()),
            ..RunFacts::default()
        }
    }

    fn pr_payload(head: Value) -> Value {
        json!({"pull_request": {"head": {"repo": head}, "base": {"repo": {"full_name": "acme/web"}}}})
    }

    #[test]
    fn both_variables_present_needs_no_fix() {
        let facts = RunFacts { has_request_url: true, has_request_token: true, ..actions("push") };
        assert_eq!(diagnose(&facts), Cause::None);
    }

    #[test]
    fn a_plain_push_without_the_variables_lacks_the_permission() {
        assert_eq!(diagnose(&actions("push")), Cause::MissingPermission);
        let same_repo_pr = RunFacts {
            event: Some(pr_payload(json!({"full_name": "acme/web", "fork": false}))),
            ..actions("pull_request")
        };
        assert_eq!(diagnose(&same_repo_pr), Cause::MissingPermission);
        assert!(message(&Cause::MissingPermission).contains("id-token: write"));
    }

    #[test]
    fn a_pull_request_from_a_fork_is_named() {
        let facts = RunFacts {
            event: Some(pr_payload(json!({"full_name": "mallory/web", "fork": true}))),
            ..actions("pull_request")
        };
        let cause = diagnose(&facts);
        assert_eq!(cause, Cause::ForkPullRequest { fork: Some("mallory/web".to_owned()) });
        let text = message(&cause);
        assert!(text.contains("mallory/web") && text.contains("head.repo.full_name"), "{text}");
        assert!(!text.contains("id-token: write"), "a fork's run cannot be fixed with permissions: {text}");
    }

    #[test]
    fn a_pull_request_from_a_deleted_fork_is_a_fork() {
        let facts = RunFacts { event: Some(pr_payload(Value::Null)), ..actions("pull_request_review") };
        assert_eq!(diagnose(&facts), Cause::ForkPullRequest { fork: None });
    }

    #[test]
    fn owner_names_compare_case_insensitively() {
        let facts = RunFacts { event: Some(pr_payload(json!({"full_name": "Acme/Web"}))), ..actions("pull_request") };
        assert_eq!(diagnose(&facts), Cause::MissingPermission);
    }

    #[test]
    fn dependabot_wins_over_the_other_causes() {
        let facts = RunFacts {
            actor: Some("dependabot[bot]".to_owned()),
            event: Some(pr_payload(json!({"full_name": "acme/web"}))),
            ..actions("pull_request")
        };
        assert_eq!(diagnose(&facts), Cause::Dependabot);
        let rerun = RunFacts { triggering_actor: Some("dependabot[bot]".to_owned()), ..actions("push") };
        assert_eq!(diagnose(&rerun), Cause::Dependabot);
        assert!(message(&Cause::Dependabot).contains("github.actor != 'dependabot[bot]'"));
    }

    #[test]
    fn outside_actions_points_to_the_exchange_subcommand() {
        let facts = RunFacts::default();
        assert_eq!(diagnose(&facts), Cause::NotActions);
        assert!(message(&Cause::NotActions).contains("writ-action exchange"));
    }

    #[test]
    fn one_variable_without_the_other_is_reported_as_such() {
        let facts = RunFacts { has_request_url: true, ..actions("push") };
        assert_eq!(diagnose(&facts), Cause::HalfSet);
    }
}
