//! What a verified writ token grants ([`Grant`]) and the authorization check
//! a platform runs on it before each action ([`Grant::require`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The verified content of a writ token: one org, named permissions and,
/// optionally, named apps or machines.
///
/// Only [`Verifier::verify`](crate::Verifier::verify) makes a `Grant`, so
/// holding one means every check passed (signature, `typ`, issuer,
/// audience, times, revocation). Fields are private: what a handler may do
/// is asked through [`Grant::require`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub(crate) org: String,
    pub(crate) permissions: Vec<String>,
    pub(crate) apps: Option<Vec<String>>,
    pub(crate) machines: Option<Vec<String>>,
    pub(crate) subject: String,
    pub(crate) client_id: String,
    pub(crate) jti: String,
    pub(crate) issued_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) provenance: Provenance,
    pub(crate) parent: Option<String>,
}

/// Where the CI job that obtained the token came from (the token's `ci`
/// claim), in GitHub's vocabulary whatever the CI system (writ maps
/// GitLab's `project_path` to `repository`, `pipeline_id` to `run_id`, …).
/// Every field is optional. For logs and audit trails, not for decisions:
/// writ already decided, and the decision is `org`, permissions and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Provenance {
    /// The OIDC issuer URL of the CI job's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `owner/name` (GitLab: the project path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The repository's immutable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// The owner's name (GitLab: the namespace path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_owner: Option<String>,
    /// The owner's immutable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_owner_id: Option<String>,
    /// The git ref the job ran on (`ref` in the claim).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The commit the job ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
    /// The workflow file and ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_ref: Option<String>,
    /// The deployment environment, when the job declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The workflow run id (GitLab: pipeline id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The attempt number of that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_attempt: Option<String>,
    /// Who triggered the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// What an action touches, for [`Grant::require`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// An org-wide resource that belongs to no single app or machine
    /// (metrics of the whole org, the list of apps, …).
    Org,
    /// One app, by name.
    App(&'a str),
    /// One machine, by id.
    Machine(&'a str),
}

/// `app web`, `machine vm-7`, `the whole org`: for log lines.
impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Org => f.write_str("the whole org"),
            Target::App(app) => write!(f, "app {app}"),
            Target::Machine(id) => write!(f, "machine {id}"),
        }
    }
}

/// The target of a refused action, owned, as [`Denied`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeniedTarget {
    /// The whole org.
    Org(String),
    /// An app.
    App(String),
    /// A machine.
    Machine(String),
}

/// Why [`Grant::require`] refused an action: one variant per check. The
/// messages name what the token has and what was asked, so the holder can
/// fix the request or the trust policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// The token is for another org. A staging token never touches prod.
    #[error("token is for org {token_org}, not {required}")]
    WrongOrg {
        /// The token's org.
        token_org: String,
        /// The org of the action.
        required: String,
    },
    /// The token does not carry the permission.
    #[error("token lacks permission {required} (has {})", render_list(.has))]
    MissingPermission {
        /// The permission the action needs.
        required: String,
        /// The token's permissions.
        has: Vec<String>,
    },
    /// The token is limited to other apps or machines.
    #[error("token is limited to {}; not {}", render_limits(.apps, .machines), render_target(.apps, .machines, .target))]
    OutsideLimits {
        /// The token's apps (`None`: not limited by app).
        apps: Option<Vec<String>>,
        /// The token's machines (`None`: not limited by machine).
        machines: Option<Vec<String>>,
        /// What the action touches.
        target: DeniedTarget,
    },
}

impl Denied {
    /// The permission the refused action needs, for the `scope` attribute
    /// of an RFC 6750 `insufficient_scope` answer.
    pub fn required_permission(&self) -> Option<&str> {
        match self {
            Denied::MissingPermission { required, .. } => Some(required),
            _ => None,
        }
    }
}

fn render_list(items: &[String]) -> String {
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

fn render_limits(apps: &Option<Vec<String>>, machines: &Option<Vec<String>>) -> String {
    let apps = apps.as_ref().map(|a| format!("apps {}", render_list(a)));
    let machines = machines.as_ref().map(|m| format!("machines {}", render_list(m)));
    match (apps, machines) {
        (Some(a), Some(m)) => format!("{a} and {m}"),
        (Some(one), None) | (None, Some(one)) => one,
        // Not produced by `require` (an unrestricted token passes), but a
        // hand-built value must still render.
        (None, None) => "nothing".to_owned(),
    }
}

/// Names the refused target: just the name when the token is limited in
/// the target's own kind ("limited to apps web; not billing"), with its
/// kind otherwise ("limited to machines vm-7; not app web").
fn render_target(apps: &Option<Vec<String>>, machines: &Option<Vec<String>>, target: &DeniedTarget) -> String {
    match target {
        DeniedTarget::Org(org) => format!("the whole org {org}"),
        DeniedTarget::App(app) if apps.is_some() => app.clone(),
        DeniedTarget::App(app) => format!("app {app}"),
        DeniedTarget::Machine(id) if machines.is_some() => id.clone(),
        DeniedTarget::Machine(id) => format!("machine {id}"),
    }
}

impl Grant {
    /// Allows an action on `org` that needs `permission` and touches
    /// `target`, or says precisely why not. Checks, in this order:
    ///
    /// 1. the token's org is `org` (exact);
    /// 2. the token carries `permission` (exact);
    /// 3. the target is within the token's limits. A token without `apps`
    ///    and `machines` is unrestricted within its org. A token that names
    ///    either is limited to exactly what it names: an app outside its
    ///    `apps`, a machine outside its `machines`, an app when it names
    ///    only machines (and the reverse), and org-wide resources are all
    ///    refused. A one-machine token handed to a third party reaches that
    ///    machine and nothing else.
    pub fn require(&self, org: &str, permission: &str, target: Target<'_>) -> Result<(), Denied> {
        if self.org != org {
            return Err(Denied::WrongOrg { token_org: self.org.clone(), required: org.to_owned() });
        }
        if !self.has_permission(permission) {
            return Err(Denied::MissingPermission { required: permission.to_owned(), has: self.permissions.clone() });
        }
        if self.reaches(target) {
            return Ok(());
        }
        Err(Denied::OutsideLimits {
            apps: self.apps.clone(),
            machines: self.machines.clone(),
            target: match target {
                Target::Org => DeniedTarget::Org(org.to_owned()),
                Target::App(app) => DeniedTarget::App(app.to_owned()),
                Target::Machine(id) => DeniedTarget::Machine(id.to_owned()),
            },
        })
    }

    /// Whether `target` is within the token's app and machine limits.
    fn reaches(&self, target: Target<'_>) -> bool {
        let listed =
            |list: &Option<Vec<String>>, name: &str| list.as_ref().is_some_and(|l| l.iter().any(|n| n == name));
        let unrestricted = self.apps.is_none() && self.machines.is_none();
        match target {
            _ if unrestricted => true,
            Target::Org => false,
            Target::App(app) => listed(&self.apps, app),
            Target::Machine(id) => listed(&self.machines, id),
        }
    }

    /// Whether the token carries `permission`.
    pub fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// The one org this token is valid for.
    pub fn org(&self) -> &str {
        &self.org
    }

    /// The granted permissions (the token's `scope`), in token order.
    pub fn permissions(&self) -> &[String] {
        &self.permissions
    }

    /// The apps the token is limited to; `None` means not limited by app.
    pub fn apps(&self) -> Option<&[String]> {
        self.apps.as_deref()
    }

    /// The machines the token is limited to; `None` means not limited by
    /// machine.
    pub fn machines(&self) -> Option<&[String]> {
        self.machines.as_deref()
    }

    /// Who the token was issued to: `<issuer-name>:<oidc sub>`, e.g.
    /// `github:repo:acme/web:environment:production`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The party that requested the token, e.g. `github:acme/web`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The token's unique id: what revocation and audit records name.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// When the token was issued.
    pub fn issued_at(&self) -> SystemTime {
        unix_to_system(self.issued_at)
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        unix_to_system(self.expires_at)
    }

    /// [`Grant::expires_at`] in seconds since the Unix epoch.
    pub fn expires_at_unix(&self) -> i64 {
        self.expires_at
    }

    /// Where the CI job that obtained the token came from.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }

    /// The `jti` of the token this one was narrowed from (`None` for a
    /// token from a CI job's exchange). Revoking the parent revokes this
    /// one too.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }
}

fn unix_to_system(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(apps: Option<&[&str]>, machines: Option<&[&str]>) -> Grant {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        Grant {
            org: "acme-prod".into(),
            permissions: vec!["deploy".into(), "logs:read".into()],
            apps: list(apps),
            machines: list(machines),
            subject: "github:repo:acme/web:environment:production".into(),
            client_id: "github:acme/web".into(),
            jti: "j-1".into(),
            issued_at: 1_900_000_000,
            expires_at: 1_900_000_900,
            provenance: Provenance::default(),
            parent: None,
        }
    }

    #[track_caller]
    fn refused(grant: &Grant, org: &str, permission: &str, target: Target<'_>) -> String {
        match grant.require(org, permission, target) {
            Ok(()) => panic!("{org} {permission} {target:?} was allowed"),
            Err(denied) => denied.to_string(),
        }
    }

    #[test]
    fn the_org_must_match_exactly() {
        let g = grant(None, None);
        assert_eq!(refused(&g, "acme-staging", "deploy", Target::Org), "token is for org acme-prod, not acme-staging");
        assert_eq!(refused(&g, "ACME-PROD", "deploy", Target::Org), "token is for org acme-prod, not ACME-PROD");
    }

    #[test]
    fn a_missing_permission_names_what_the_token_has() {
        let mut g = grant(None, None);
        g.permissions = vec!["logs:read".into()];
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::App("web")),
            "token lacks permission deploy (has logs:read)"
        );
        g.permissions.clear();
        assert_eq!(refused(&g, "acme-prod", "deploy", Target::Org), "token lacks permission deploy (has none)");
        let denied = g.require("acme-prod", "deploy", Target::Org).expect_err("refused");
        assert_eq!(denied.required_permission(), Some("deploy"));
    }

    #[test]
    fn the_org_is_checked_before_the_permission() {
        let g = grant(None, None);
        assert!(matches!(g.require("other", "nope", Target::Org), Err(Denied::WrongOrg { .. })));
    }

    #[test]
    fn an_unrestricted_token_reaches_every_app_machine_and_the_org() {
        let g = grant(None, None);
        for target in [Target::Org, Target::App("web"), Target::App("billing"), Target::Machine("vm-1")] {
            assert_eq!(g.require("acme-prod", "deploy", target), Ok(()), "{target:?}");
        }
    }

    #[test]
    fn an_app_limited_token_reaches_only_its_apps() {
        let g = grant(Some(&["web"]), None);
        assert_eq!(g.require("acme-prod", "deploy", Target::App("web")), Ok(()));
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::App("billing")),
            "token is limited to apps web; not billing"
        );
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::Machine("vm-1")),
            "token is limited to apps web; not machine vm-1"
        );
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::Org),
            "token is limited to apps web; not the whole org acme-prod"
        );
        let g = grant(Some(&["web", "api"]), None);
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::App("billing")),
            "token is limited to apps web, api; not billing"
        );
    }

    #[test]
    fn a_one_machine_token_reaches_that_machine_only() {
        let g = grant(None, Some(&["vm-7"]));
        assert_eq!(g.require("acme-prod", "deploy", Target::Machine("vm-7")), Ok(()));
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::Machine("vm-8")),
            "token is limited to machines vm-7; not vm-8"
        );
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::App("web")),
            "token is limited to machines vm-7; not app web"
        );
    }

    #[test]
    fn both_limits_are_named_and_an_empty_list_reaches_nothing() {
        let g = grant(Some(&["web"]), Some(&["vm-7"]));
        assert_eq!(g.require("acme-prod", "deploy", Target::App("web")), Ok(()));
        assert_eq!(g.require("acme-prod", "deploy", Target::Machine("vm-7")), Ok(()));
        assert_eq!(
            refused(&g, "acme-prod", "deploy", Target::App("billing")),
            "token is limited to apps web and machines vm-7; not billing"
        );
        let g = grant(Some(&[]), None);
        assert_eq!(refused(&g, "acme-prod", "deploy", Target::App("web")), "token is limited to apps none; not web");
    }

    #[test]
    fn targets_display_for_logs() {
        assert_eq!(Target::App("web").to_string(), "app web");
        assert_eq!(Target::Machine("vm-7").to_string(), "machine vm-7");
        assert_eq!(Target::Org.to_string(), "the whole org");
    }

    #[test]
    fn names_compare_exactly() {
        let g = grant(Some(&["web"]), None);
        assert!(g.require("acme-prod", "Deploy", Target::App("web")).is_err());
        assert!(g.require("acme-prod", "deploy", Target::App("Web")).is_err());
        assert!(g.require("acme-prod", "deploy", Target::App("web ")).is_err());
    }
}
