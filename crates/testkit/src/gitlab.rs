//! A builder of realistic GitLab CI ID-token claims (`id_tokens:`), with `sub`, `ref_type` and `ref_path` derived the way GitLab derives them.
//!
//! Shapes follow GitLab's "OpenID Connect (OIDC) authentication using ID
//! tokens" documentation: ids and booleans such as `ref_protected` are JSON
//! strings, `runner_id` is a number, `ref` is the short name (`main`), and
//! `nbf` sits 5 seconds before `iat`.

use serde_json::{Map, Value, json};

use crate::claims::{Overrides, Times, fake_sha, fresh_jti, stable_id};

/// GitLab's default ID-token lifetime used by the builder, in seconds.
pub const GITLAB_TOKEN_LIFETIME_SECS: i64 = 3600;

/// How far GitLab backdates `nbf` before `iat`, in seconds.
const GITLAB_NBF_SKEW_SECS: i64 = 5;

/// Builder of realistic GitLab CI ID-token claims.
///
/// Derived claims are computed in [`GitLabClaims::build`], so setters can be
/// called in any order. Ids default to stable hashes of names.
/// [`GitLabClaims::set`] and [`GitLabClaims::remove`] apply last.
#[derive(Debug, Clone)]
pub struct GitLabClaims {
    issuer: String,
    audience: String,
    project_path: String,
    project_id: Option<u64>,
    namespace_id: Option<u64>,
    visibility: String,
    ref_name: String,
    ref_type: String,
    ref_protected: Option<bool>,
    environment: Option<String>,
    environment_protected: bool,
    deployment_tier: Option<String>,
    pipeline_source: String,
    user_login: String,
    user_id: Option<u64>,
    sha: Option<String>,
    runner_id: Option<u64>,
    runner_environment: String,
    ci_config_path: String,
    jti: String,
    times: Times,
    overrides: Overrides,
}

impl GitLabClaims {
    /// Claims for a `push` pipeline on branch `main` of `project_path`
    /// (`"group/project"`, subgroups allowed) issued by `issuer` for
    /// `audience` at `now` (unix seconds).
    ///
    /// Defaults: `iat = now`, `nbf = now - 5`, `exp = now + 3600`, a fresh
    /// UUID v4 `jti`, user `sample-user`, a private project, a GitLab-hosted
    /// runner, `.gitlab-ci.yml`, `ref_protected` true only for `main`, no
    /// environment.
    pub fn new(issuer: &str, audience: &str, project_path: &str, now: i64) -> Self {
        GitLabClaims {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            project_path: project_path.to_owned(),
            project_id: None,
            namespace_id: None,
            visibility: "private".to_owned(),
            ref_name: "main".to_owned(),
            ref_type: "branch".to_owned(),
            ref_protected: None,
            environment: None,
            environment_protected: false,
            deployment_tier: None,
            pipeline_source: "push".to_owned(),
            user_login: "sample-user".to_owned(),
            user_id: None,
            sha: None,
            runner_id: None,
            runner_environment: "gitlab-hosted".to_owned(),
            ci_config_path: ".gitlab-ci.yml".to_owned(),
            jti: fresh_jti(),
            times: Times {
                iat: now,
                nbf: None,
                exp: None,
                lifetime: GITLAB_TOKEN_LIFETIME_SECS,
                nbf_skew: GITLAB_NBF_SKEW_SECS,
            },
            overrides: Overrides::default(),
        }
    }

    /// Sets the ref: `refs/heads/x` or a bare `x` is branch `x`,
    /// `refs/tags/v1` is tag `v1`. `ref_type`, `ref_path`, `sub` and
    /// `ci_config_ref_uri` follow.
    pub fn ref_(mut self, git_ref: &str) -> Self {
        let (ref_type, name) = if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
            ("tag", tag)
        } else {
            ("branch", git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref))
        };
        ref_type.clone_into(&mut self.ref_type);
        name.clone_into(&mut self.ref_name);
        self
    }

    /// Runs the job in a deployment environment; `deployment_tier` follows
    /// GitLab's name-based guess unless set.
    pub fn environment(mut self, name: impl Into<String>) -> Self {
        self.environment = Some(name.into());
        self
    }

    /// Sets `environment_protected` (default false).
    pub fn environment_protected(mut self, protected: bool) -> Self {
        self.environment_protected = protected;
        self
    }

    /// Sets `deployment_tier` (`production`, `staging`, `testing`,
    /// `development`, `other`).
    pub fn deployment_tier(mut self, tier: impl Into<String>) -> Self {
        self.deployment_tier = Some(tier.into());
        self
    }

    /// Sets `pipeline_source` (`push`, `web`, `schedule`,
    /// `merge_request_event`, ...).
    pub fn pipeline_source(mut self, source: impl Into<String>) -> Self {
        self.pipeline_source = source.into();
        self
    }

    /// Sets `ref_protected` (default: true only for branch `main`).
    pub fn ref_protected(mut self, protected: bool) -> Self {
        self.ref_protected = Some(protected);
        self
    }

    /// Pins `project_id` (default: a stable hash of the project path).
    pub fn project_id(mut self, id: u64) -> Self {
        self.project_id = Some(id);
        self
    }

    /// Pins `namespace_id` (default: a stable hash of the namespace path).
    pub fn namespace_id(mut self, id: u64) -> Self {
        self.namespace_id = Some(id);
        self
    }

    /// Sets `project_visibility` (`private`, `internal`, `public`).
    pub fn visibility(mut self, visibility: impl Into<String>) -> Self {
        self.visibility = visibility.into();
        self
    }

    /// Sets `user_login`; `user_id` and `user_email` follow.
    pub fn user(mut self, login: impl Into<String>) -> Self {
        self.user_login = login.into();
        self
    }

    /// Pins `user_id` (default: a stable hash of the login).
    pub fn user_id(mut self, id: u64) -> Self {
        self.user_id = Some(id);
        self
    }

    /// Sets `sha` (and `ci_config_sha`, which follows it).
    pub fn sha(mut self, sha: impl Into<String>) -> Self {
        self.sha = Some(sha.into());
        self
    }

    /// Sets the CI config file path (default `.gitlab-ci.yml`), which
    /// appears in `ci_config_ref_uri`.
    pub fn ci_config_path(mut self, path: impl Into<String>) -> Self {
        self.ci_config_path = path.into();
        self
    }

    /// Pins `runner_id`.
    pub fn runner_id(mut self, id: u64) -> Self {
        self.runner_id = Some(id);
        self
    }

    /// Sets `runner_environment` (`gitlab-hosted` or `self-hosted`).
    pub fn runner_environment(mut self, runner: impl Into<String>) -> Self {
        self.runner_environment = runner.into();
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

    /// Sets `aud` (a single string; use [`GitLabClaims::set`] for an array).
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

    /// Removes a claim from the built set (a later [`GitLabClaims::set`]
    /// brings it back).
    pub fn remove(mut self, name: impl Into<String>) -> Self {
        self.overrides.remove(name.into());
        self
    }

    /// The namespace: everything before the last `/` of the project path.
    fn namespace_path(&self) -> &str {
        self.project_path.rsplit_once('/').map_or(self.project_path.as_str(), |(namespace, _)| namespace)
    }

    /// The issuer's host (and port), which GitLab puts in `ci_config_ref_uri`.
    fn issuer_host(&self) -> &str {
        let issuer = self.issuer.as_str();
        let rest = issuer.strip_prefix("https://").or_else(|| issuer.strip_prefix("http://")).unwrap_or(issuer);
        rest.trim_end_matches('/')
    }

    /// Builds the claims as a JSON object.
    pub fn build(&self) -> Value {
        let project = &self.project_path;
        let namespace = self.namespace_path();
        let ref_path = match self.ref_type.as_str() {
            "tag" => format!("refs/tags/{}", self.ref_name),
            _ => format!("refs/heads/{}", self.ref_name),
        };
        let sub = format!("project_path:{project}:ref_type:{}:ref:{}", self.ref_type, self.ref_name);
        let sha = self.sha.clone().unwrap_or_else(|| fake_sha(&format!("{project}@{ref_path}")));
        let ref_protected = self.ref_protected.unwrap_or(self.ref_type == "branch" && self.ref_name == "main");
        let pipeline_seed = format!("{project}@{}", self.times.iat);
        let id =
            |pinned: Option<u64>, space: &str, name: &str| pinned.unwrap_or_else(|| stable_id(space, name)).to_string();

        let mut claims = Map::new();
        let mut put = |name: &str, value: Value| {
            claims.insert(name.to_owned(), value);
        };
        put("namespace_id", json!(id(self.namespace_id, "namespace", namespace)));
        put("namespace_path", json!(namespace));
        put("project_id", json!(id(self.project_id, "project", project)));
        put("project_path", json!(project));
        put("user_id", json!(id(self.user_id, "user", &self.user_login)));
        put("user_login", json!(self.user_login));
        put("user_email", json!(format!("{}@example.com", self.user_login)));
        put("pipeline_id", json!(stable_id("pipeline", &pipeline_seed).to_string()));
        put("pipeline_source", json!(self.pipeline_source));
        put("job_id", json!(stable_id("job", &pipeline_seed).to_string()));
        put("ref", json!(self.ref_name));
        put("ref_type", json!(self.ref_type));
        put("ref_path", json!(ref_path));
        put("ref_protected", json!(ref_protected.to_string()));
        if let Some(environment) = &self.environment {
            let tier = self.deployment_tier.clone().unwrap_or_else(|| guess_tier(environment).to_owned());
            put("environment", json!(environment));
            put("environment_protected", json!(self.environment_protected.to_string()));
            put("deployment_tier", json!(tier));
            put("environment_action", json!("start"));
        }
        let runner_id = self.runner_id.unwrap_or_else(|| stable_id("runner", &self.runner_environment) % 100_000);
        put("runner_id", json!(runner_id));
        put("runner_environment", json!(self.runner_environment));
        put("sha", json!(sha));
        put("project_visibility", json!(self.visibility));
        put(
            "ci_config_ref_uri",
            json!(format!("{}/{project}//{}@{ref_path}", self.issuer_host(), self.ci_config_path)),
        );
        put("ci_config_sha", json!(sha));
        put("jti", json!(self.jti));
        put("iss", json!(self.issuer));
        put("iat", json!(self.times.iat));
        put("nbf", json!(self.times.nbf()));
        put("exp", json!(self.times.exp()));
        put("sub", json!(sub));
        put("aud", json!(self.audience));
        self.overrides.apply(claims)
    }
}

/// GitLab's guess of a deployment tier from an environment name.
fn guess_tier(environment: &str) -> &'static str {
    let name = environment.to_lowercase();
    let first = name.split(['/', '-', '_']).next().unwrap_or_default();
    match first {
        "production" | "prod" | "live" => "production",
        "staging" | "stage" | "model" | "demo" => "staging",
        "test" | "testing" | "qa" => "testing",
        "dev" | "development" | "review" | "trunk" => "development",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://gitlab.example.com";
    const NOW: i64 = 1_800_000_000;

    fn base() -> GitLabClaims {
        GitLabClaims::new(ISS, "https://writ.example.com", "my-group/my-project", NOW)
    }

    #[test]
    fn defaults_describe_a_push_pipeline_on_main() {
        let claims = base().build();
        assert_eq!(claims["sub"], "project_path:my-group/my-project:ref_type:branch:ref:main");
        assert_eq!(claims["ref"], "main");
        assert_eq!(claims["ref_type"], "branch");
        assert_eq!(claims["ref_path"], "refs/heads/main");
        assert_eq!(claims["ref_protected"], "true");
        assert_eq!(claims["namespace_path"], "my-group");
        assert_eq!(claims["pipeline_source"], "push");
        assert_eq!(
            claims["ci_config_ref_uri"],
            "gitlab.example.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main"
        );
        assert_eq!(claims["ci_config_sha"], claims["sha"]);
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["nbf"], NOW - 5);
        assert_eq!(claims["exp"], NOW + 3600);
        assert!(claims["runner_id"].is_u64());
        assert!(claims["project_id"].is_string());
        assert!(claims.get("environment").is_none());
        assert!(claims.get("deployment_tier").is_none());
    }

    #[test]
    fn every_documented_claim_is_present() {
        let claims = base().environment("production").build();
        for name in [
            "namespace_id",
            "namespace_path",
            "project_id",
            "project_path",
            "user_id",
            "user_login",
            "user_email",
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
            "runner_id",
            "runner_environment",
            "sha",
            "ci_config_ref_uri",
            "ci_config_sha",
            "project_visibility",
            "jti",
            "iss",
            "iat",
            "nbf",
            "exp",
            "sub",
            "aud",
        ] {
            assert!(claims.get(name).is_some(), "missing claim {name}");
        }
    }

    #[test]
    fn tag_ref_sets_ref_type_ref_path_and_sub() {
        let claims = base().ref_("refs/tags/v1.0").build();
        assert_eq!(claims["ref"], "v1.0");
        assert_eq!(claims["ref_type"], "tag");
        assert_eq!(claims["ref_path"], "refs/tags/v1.0");
        assert_eq!(claims["ref_protected"], "false");
        assert_eq!(claims["sub"], "project_path:my-group/my-project:ref_type:tag:ref:v1.0");
        let branch = base().ref_("feature").build();
        assert_eq!(branch, base().ref_("refs/heads/feature").jti(branch["jti"].as_str().unwrap_or_default()).build());
    }

    #[test]
    fn environment_adds_protection_and_tier() {
        let claims = base().environment("production").environment_protected(true).build();
        assert_eq!(claims["environment"], "production");
        assert_eq!(claims["environment_protected"], "true");
        assert_eq!(claims["deployment_tier"], "production");
        assert_eq!(base().environment("review/feature-1").build()["deployment_tier"], "development");
        assert_eq!(base().environment("canary").deployment_tier("staging").build()["deployment_tier"], "staging");
    }

    #[test]
    fn subgroups_and_ids() {
        let claims = GitLabClaims::new(ISS, "a", "org/team/app", NOW).build();
        assert_eq!(claims["namespace_path"], "org/team");
        let same = GitLabClaims::new(ISS, "a", "Org/Team/App", NOW).build();
        assert_eq!(claims["project_id"], same["project_id"]);
        assert_eq!(claims["namespace_id"], same["namespace_id"]);
        let pinned = base().project_id(20).namespace_id(72).user_id(1).build();
        assert_eq!(
            (pinned["project_id"].as_str(), pinned["namespace_id"].as_str(), pinned["user_id"].as_str()),
            (Some("20"), Some("72"), Some("1"))
        );
    }

    #[test]
    fn loopback_issuer_host_keeps_the_port() {
        let claims = GitLabClaims::new("http://127.0.0.1:4000", "a", "g/p", NOW).build();
        assert_eq!(claims["ci_config_ref_uri"], "127.0.0.1:4000/g/p//.gitlab-ci.yml@refs/heads/main");
    }
}
