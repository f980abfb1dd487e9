//! A builder of realistic GitHub Actions OIDC claims, with `sub`, `ref_type` and `workflow_ref` derived the way GitHub derives them.
//!
//! Shapes follow GitHub's "About security hardening with OpenID Connect"
//! documentation: numeric ids and `ref_protected` are JSON strings, `aud` is
//! a single string, `environment` is present only when the job has one.

use serde_json::{Map, Value, json};

use crate::claims::{Overrides, Times, fake_sha, fresh_jti, stable_id};

/// GitHub's default OIDC token lifetime used by the builder, in seconds.
pub const GITHUB_TOKEN_LIFETIME_SECS: i64 = 300;

/// The default workflow file of a built token.
const DEFAULT_WORKFLOW: &str = ".github/workflows/deploy.yml";

/// Builder of realistic GitHub Actions ID-token claims.
///
/// Derived claims are computed in [`GitHubClaims::build`], so setters can be
/// called in any order: `sub`, `ref_type`, `workflow_ref` and
/// `job_workflow_ref` always agree with `ref`, `environment`, `event_name`
/// and the workflow path. Ids default to stable hashes of names (same name,
/// same id). [`GitHubClaims::set`] and [`GitHubClaims::remove`] apply last
/// and may make the claims inconsistent on purpose.
#[derive(Debug, Clone)]
pub struct GitHubClaims {
    issuer: String,
    audience: String,
    repository: String,
    repository_id: Option<u64>,
    owner_id: Option<u64>,
    visibility: String,
    git_ref: String,
    ref_protected: Option<bool>,
    environment: Option<String>,
    event_name: String,
    head_ref: String,
    base_ref: String,
    workflow_path: String,
    workflow_name: Option<String>,
    job_workflow_ref: Option<String>,
    sha: Option<String>,
    actor: String,
    actor_id: Option<u64>,
    run_id: Option<u64>,
    run_number: Option<u64>,
    run_attempt: u64,
    runner_environment: String,
    jti: String,
    times: Times,
    overrides: Overrides,
}

impl GitHubClaims {
    /// Claims for a `push` to `refs/heads/main` of `repository` (`"acme/web"`)
    /// issued by `issuer` for `audience` at `now` (unix seconds).
    ///
    /// Defaults: `iat = nbf = now`, `exp = now + 300`, a fresh UUID v4 `jti`,
    /// workflow `.github/workflows/deploy.yml`, actor `octocat`, a private
    /// repository, a GitHub-hosted runner, `ref_protected` true only for
    /// `refs/heads/main`, no environment.
    pub fn new(issuer: &str, audience: &str, repository: &str, now: i64) -> Self {
        GitHubClaims {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            repository: repository.to_owned(),
            repository_id: None,
            owner_id: None,
            visibility: "private".to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            ref_protected: None,
            environment: None,
            event_name: "push".to_owned(),
            head_ref: String::new(),
            base_ref: String::new(),
            workflow_path: DEFAULT_WORKFLOW.to_owned(),
            workflow_name: None,
            job_workflow_ref: None,
            sha: None,
            actor: "octocat".to_owned(),
            actor_id: None,
            run_id: None,
            run_number: None,
            run_attempt: 1,
            runner_environment: "github-hosted".to_owned(),
            jti: fresh_jti(),
            times: Times { iat: now, nbf: None, exp: None, lifetime: GITHUB_TOKEN_LIFETIME_SECS, nbf_skew: 0 },
            overrides: Overrides::default(),
        }
    }

    /// Sets `ref` (`refs/heads/x`, `refs/tags/v1`, `refs/pull/7/merge`);
    /// `ref_type`, `sub` and `workflow_ref` follow.
    pub fn ref_(mut self, git_ref: impl Into<String>) -> Self {
        self.git_ref = git_ref.into();
        self
    }

    /// Runs the job in a deployment environment; `sub` becomes
    /// `repo:<repo>:environment:<name>`, as GitHub does.
    pub fn environment(mut self, name: impl Into<String>) -> Self {
        self.environment = Some(name.into());
        self
    }

    /// Sets `event_name` (`push`, `workflow_dispatch`, `pull_request`,
    /// `pull_request_target`, ...). With `pull_request` and no environment,
    /// `sub` becomes `repo:<repo>:pull_request`.
    pub fn event_name(mut self, event: impl Into<String>) -> Self {
        self.event_name = event.into();
        self
    }

    /// A `pull_request` run from branch `head_ref` into `main`: sets the
    /// event, `ref` `refs/pull/<number>/merge`, `head_ref`, `base_ref` and an
    /// unprotected ref — what a contributor's PR job presents.
    pub fn pull_request(mut self, number: u64, head_ref: impl Into<String>) -> Self {
        self.event_name = "pull_request".to_owned();
        self.git_ref = format!("refs/pull/{number}/merge");
        self.head_ref = head_ref.into();
        self.base_ref = "main".to_owned();
        self.ref_protected = Some(false);
        self
    }

    /// Sets the workflow file, relative to the repository root
    /// (`.github/workflows/release.yml`); a bare file name is taken to be in
    /// `.github/workflows/`. `workflow_ref` and `job_workflow_ref` follow.
    pub fn workflow(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.workflow_path = if path.contains('/') { path } else { format!(".github/workflows/{path}") };
        self
    }

    /// Sets the `workflow` claim (the workflow's `name:`); by default it is
    /// the workflow file path, as GitHub sends for unnamed workflows.
    pub fn workflow_name(mut self, name: impl Into<String>) -> Self {
        self.workflow_name = Some(name.into());
        self
    }

    /// Sets `job_workflow_ref` for a job run by a reusable workflow, e.g.
    /// `acme/shared/.github/workflows/deploy.yml@refs/heads/main`.
    pub fn job_workflow_ref(mut self, job_workflow_ref: impl Into<String>) -> Self {
        self.job_workflow_ref = Some(job_workflow_ref.into());
        self
    }

    /// Pins `repository_id` (default: a stable hash of the repository name).
    pub fn repository_id(mut self, id: u64) -> Self {
        self.repository_id = Some(id);
        self
    }

    /// Pins `repository_owner_id` (default: a stable hash of the owner name).
    pub fn owner_id(mut self, id: u64) -> Self {
        self.owner_id = Some(id);
        self
    }

    /// Sets `repository_visibility` (`private`, `internal`, `public`).
    pub fn visibility(mut self, visibility: impl Into<String>) -> Self {
        self.visibility = visibility.into();
        self
    }

    /// Sets `actor`; `actor_id` follows unless pinned.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// Pins `actor_id` (default: a stable hash of the actor name).
    pub fn actor_id(mut self, id: u64) -> Self {
        self.actor_id = Some(id);
        self
    }

    /// Sets `sha` (and `workflow_sha`, `job_workflow_sha`, which follow it).
    pub fn sha(mut self, sha: impl Into<String>) -> Self {
        self.sha = Some(sha.into());
        self
    }

    /// Sets `ref_protected` (default: true only for `refs/heads/main`).
    pub fn ref_protected(mut self, protected: bool) -> Self {
        self.ref_protected = Some(protected);
        self
    }

    /// Sets `runner_environment` (`github-hosted` or `self-hosted`).
    pub fn runner_environment(mut self, runner: impl Into<String>) -> Self {
        self.runner_environment = runner.into();
        self
    }

    /// Pins `run_id` (default: a stable hash of repository and `iat`).
    pub fn run_id(mut self, id: u64) -> Self {
        self.run_id = Some(id);
        self
    }

    /// Pins `run_number` (default: a stable number per repository).
    pub fn run_number(mut self, number: u64) -> Self {
        self.run_number = Some(number);
        self
    }

    /// Sets `run_attempt` (default 1).
    pub fn run_attempt(mut self, attempt: u64) -> Self {
        self.run_attempt = attempt;
        self
    }

    /// Sets `jti` (default: a fresh UUID v4 per builder).
    pub fn jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = jti.into();
        self
    }

    /// Sets `iss`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into();
        self
    }

    /// Sets `aud` (a single string, as GitHub sends; use
    /// [`GitHubClaims::set`] for an array).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Sets `iat`; `nbf` and `exp` follow it unless set explicitly.
    pub fn iat(mut self, iat: i64) -> Self {
        self.times.iat = iat;
        self
    }

    /// Sets `nbf` explicitly.
    pub fn nbf(mut self, nbf: i64) -> Self {
        self.times.nbf = Some(nbf);
        self
    }

    /// Sets `exp` explicitly.
    pub fn exp(mut self, exp: i64) -> Self {
        self.times.exp = Some(exp);
        self
    }

    /// Sets `exp = iat + secs` (clears an explicit `exp`).
    pub fn lifetime(mut self, secs: i64) -> Self {
        self.times.lifetime = secs;
        self.times.exp = None;
        self
    }

    /// Sets any claim to any JSON value, after everything else is derived.
    pub fn set(mut self, name: impl Into<String>, value: Value) -> Self {
        self.overrides.set(name.into(), value);
        self
    }

    /// Removes a claim from the built set (a later [`GitHubClaims::set`]
    /// brings it back).
    pub fn remove(mut self, name: impl Into<String>) -> Self {
        self.overrides.remove(name.into());
        self
    }

    /// The repository owner: the part of `repository` before the `/`.
    fn owner(&self) -> &str {
        self.repository.split_once('/').map_or(self.repository.as_str(), |(owner, _)| owner)
    }

    /// Builds the claims as a JSON object.
    pub fn build(&self) -> Value {
        let repo = &self.repository;
        let git_ref = &self.git_ref;
        let ref_type = if git_ref.starts_with("refs/tags/") { "tag" } else { "branch" };
        let sub = match (&self.environment, self.event_name.as_str()) {
            (Some(environment), _) => format!("repo:{repo}:environment:{environment}"),
            (None, "pull_request") => format!("repo:{repo}:pull_request"),
            (None, _) => format!("repo:{repo}:ref:{git_ref}"),
        };
        let workflow_ref = format!("{repo}/{}@{git_ref}", self.workflow_path);
        let sha = self.sha.clone().unwrap_or_else(|| fake_sha(&format!("{repo}@{git_ref}")));
        let ref_protected = self.ref_protected.unwrap_or(git_ref == "refs/heads/main");
        let run_seed = format!("{repo}@{}", self.times.iat);
        let run_id = self.run_id.unwrap_or_else(|| stable_id("run", &run_seed));
        let run_number = self.run_number.unwrap_or_else(|| stable_id("run-number", repo) % 1000 + 1);
        let id =
            |pinned: Option<u64>, space: &str, name: &str| pinned.unwrap_or_else(|| stable_id(space, name)).to_string();

        let mut claims = Map::new();
        let mut put = |name: &str, value: Value| {
            claims.insert(name.to_owned(), value);
        };
        put("jti", json!(self.jti));
        put("sub", json!(sub));
        if let Some(environment) = &self.environment {
            put("environment", json!(environment));
        }
        put("aud", json!(self.audience));
        put("ref", json!(git_ref));
        put("sha", json!(sha));
        put("repository", json!(repo));
        put("repository_owner", json!(self.owner()));
        put("repository_owner_id", json!(id(self.owner_id, "account", self.owner())));
        put("run_id", json!(run_id.to_string()));
        put("run_number", json!(run_number.to_string()));
        put("run_attempt", json!(self.run_attempt.to_string()));
        put("repository_visibility", json!(self.visibility));
        put("repository_id", json!(id(self.repository_id, "repo", repo)));
        put("actor_id", json!(id(self.actor_id, "account", &self.actor)));
        put("actor", json!(self.actor));
        put("workflow", json!(self.workflow_name.as_deref().unwrap_or(&self.workflow_path)));
        put("head_ref", json!(self.head_ref));
        put("base_ref", json!(self.base_ref));
        put("event_name", json!(self.event_name));
        put("ref_protected", json!(ref_protected.to_string()));
        put("ref_type", json!(ref_type));
        put("job_workflow_ref", json!(self.job_workflow_ref.as_deref().unwrap_or(&workflow_ref)));
        put("workflow_ref", json!(workflow_ref));
        put("workflow_sha", json!(sha));
        put("job_workflow_sha", json!(sha));
        put("runner_environment", json!(self.runner_environment));
        put("check_run_id", json!(stable_id("check-run", &run_seed).to_string()));
        put("iss", json!(self.issuer));
        put("nbf", json!(self.times.nbf()));
        put("exp", json!(self.times.exp()));
        put("iat", json!(self.times.iat));
        self.overrides.apply(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://token.actions.githubusercontent.com";
    const NOW: i64 = 1_800_000_000;

    fn base() -> GitHubClaims {
        GitHubClaims::new(ISS, "https://writ.example.com", "acme/web", NOW)
    }

    #[test]
    fn defaults_describe_a_push_to_main() {
        let claims = base().build();
        assert_eq!(claims["sub"], "repo:acme/web:ref:refs/heads/main");
        assert_eq!(claims["ref"], "refs/heads/main");
        assert_eq!(claims["ref_type"], "branch");
        assert_eq!(claims["ref_protected"], "true");
        assert_eq!(claims["event_name"], "push");
        assert_eq!(claims["workflow_ref"], "acme/web/.github/workflows/deploy.yml@refs/heads/main");
        assert_eq!(claims["job_workflow_ref"], claims["workflow_ref"]);
        assert_eq!(claims["repository_owner"], "acme");
        assert_eq!(claims["iss"], ISS);
        assert_eq!(claims["aud"], "https://writ.example.com");
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["nbf"], NOW);
        assert_eq!(claims["exp"], NOW + 300);
        assert_eq!(claims["head_ref"], "");
        assert!(claims.get("environment").is_none());
        assert_eq!(claims["sha"], claims["workflow_sha"]);
        assert_eq!(claims["sha"].as_str().map(str::len), Some(40));
    }

    #[test]
    fn every_documented_claim_is_present() {
        let claims = base().environment("production").build();
        for name in [
            "jti",
            "sub",
            "aud",
            "ref",
            "sha",
            "repository",
            "repository_owner",
            "repository_owner_id",
            "run_id",
            "run_number",
            "run_attempt",
            "repository_visibility",
            "repository_id",
            "actor_id",
            "actor",
            "workflow",
            "head_ref",
            "base_ref",
            "event_name",
            "ref_protected",
            "ref_type",
            "workflow_ref",
            "workflow_sha",
            "job_workflow_ref",
            "job_workflow_sha",
            "runner_environment",
            "environment",
            "iss",
            "nbf",
            "exp",
            "iat",
            "check_run_id",
        ] {
            assert!(claims.get(name).is_some(), "missing claim {name}");
        }
        for name in [
            "repository_id",
            "repository_owner_id",
            "actor_id",
            "run_id",
            "run_number",
            "run_attempt",
            "check_run_id",
            "ref_protected",
        ] {
            assert!(claims[name].is_string(), "{name} must be a JSON string, as GitHub sends it");
        }
    }

    #[test]
    fn ids_are_stable_per_name_and_differ_between_names() {
        let one = base().build();
        let again = GitHubClaims::new(ISS, "x", "Acme/Web", NOW + 99).build();
        let other = GitHubClaims::new(ISS, "x", "acme/api", NOW).build();
        let evil = GitHubClaims::new(ISS, "x", "evil/web", NOW).build();
        assert_eq!(one["repository_id"], again["repository_id"]);
        assert_eq!(one["repository_owner_id"], again["repository_owner_id"]);
        assert_ne!(one["repository_id"], other["repository_id"]);
        assert_eq!(one["repository_owner_id"], other["repository_owner_id"]);
        assert_ne!(one["repository_owner_id"], evil["repository_owner_id"]);
        assert_ne!(one["jti"], base().build()["jti"], "each builder gets a fresh jti");
    }

    #[test]
    fn pinned_ids_override_derived_ones() {
        let claims = base().repository_id(42).owner_id(7).actor_id(9).run_id(11).build();
        assert_eq!(claims["repository_id"], "42");
        assert_eq!(claims["repository_owner_id"], "7");
        assert_eq!(claims["actor_id"], "9");
        assert_eq!(claims["run_id"], "11");
    }

    #[test]
    fn environment_changes_sub_but_not_workflow_ref() {
        let claims = base().environment("production").build();
        assert_eq!(claims["sub"], "repo:acme/web:environment:production");
        assert_eq!(claims["environment"], "production");
        assert_eq!(claims["workflow_ref"], "acme/web/.github/workflows/deploy.yml@refs/heads/main");
    }

    #[test]
    fn tag_ref_sets_ref_type_sub_and_workflow_ref() {
        let claims = base().ref_("refs/tags/v1.2.3").build();
        assert_eq!(claims["ref_type"], "tag");
        assert_eq!(claims["ref_protected"], "false");
        assert_eq!(claims["sub"], "repo:acme/web:ref:refs/tags/v1.2.3");
        assert_eq!(claims["workflow_ref"], "acme/web/.github/workflows/deploy.yml@refs/tags/v1.2.3");
    }

    #[test]
    fn setter_order_does_not_matter() {
        let a = base().jti("j").ref_("refs/heads/dev").workflow("release.yml").build();
        let b = base().workflow(".github/workflows/release.yml").jti("j").ref_("refs/heads/dev").build();
        assert_eq!(a, b);
        assert_eq!(a["workflow_ref"], "acme/web/.github/workflows/release.yml@refs/heads/dev");
        assert_eq!(a["sub"], "repo:acme/web:ref:refs/heads/dev");
    }

    #[test]
    fn pull_request_run_looks_like_a_contributor_pr() {
        let claims = base().pull_request(7, "feature").build();
        assert_eq!(claims["sub"], "repo:acme/web:pull_request");
        assert_eq!(claims["event_name"], "pull_request");
        assert_eq!(claims["ref"], "refs/pull/7/merge");
        assert_eq!(claims["ref_type"], "branch");
        assert_eq!(claims["ref_protected"], "false");
        assert_eq!(claims["head_ref"], "feature");
        assert_eq!(claims["base_ref"], "main");
        assert_eq!(claims["workflow_ref"], "acme/web/.github/workflows/deploy.yml@refs/pull/7/merge");
        // An environment still wins over the event in `sub`.
        let with_env = base().pull_request(7, "feature").environment("staging").build();
        assert_eq!(with_env["sub"], "repo:acme/web:environment:staging");
    }

    #[test]
    fn reusable_workflow_sets_job_workflow_ref_only() {
        let shared = "acme/shared/.github/workflows/deploy.yml@refs/heads/main";
        let claims = base().job_workflow_ref(shared).build();
        assert_eq!(claims["job_workflow_ref"], shared);
        assert_eq!(claims["workflow_ref"], "acme/web/.github/workflows/deploy.yml@refs/heads/main");
    }

    #[test]
    fn times_follow_iat_unless_explicit() {
        let claims = base().lifetime(60).iat(NOW + 10).build();
        assert_eq!(
            (claims["iat"].as_i64(), claims["nbf"].as_i64(), claims["exp"].as_i64()),
            (Some(NOW + 10), Some(NOW + 10), Some(NOW + 70))
        );
        let claims = base().nbf(NOW + 5).exp(NOW - 1).build();
        assert_eq!((claims["nbf"].as_i64(), claims["exp"].as_i64()), (Some(NOW + 5), Some(NOW - 1)));
    }

    #[test]
    fn set_and_remove_apply_last() {
        let claims = base()
            .set("aud", json!(["a", "b"]))
            .set("sub", json!("repo:acme/web:whatever"))
            .remove("jti")
            .remove("environment")
            .environment("production")
            .build();
        assert_eq!(claims["aud"], json!(["a", "b"]));
        assert_eq!(claims["sub"], "repo:acme/web:whatever");
        assert!(claims.get("jti").is_none());
        assert!(claims.get("environment").is_none());
    }
}
