//! Narrowing: a writ token exchanged for a narrower one — fewer
//! permissions, fewer apps or machines, a shorter life — and never a wider
//! one. This is how a holder hands a token for exactly one VM to one party.
//!
//! Pure scope arithmetic: the parent's claims have been verified by the
//! caller, and the time is a parameter.
//!
//! The rules, each a security invariant:
//! - the org never changes;
//! - permissions are a subset of the parent's `scope` (none requested: all
//!   of them);
//! - apps: a parent limited to apps gives a child limited to a subset of
//!   them (none requested: the parent's list) — a limit can never be
//!   dropped; an unrestricted parent may be narrowed to any apps;
//! - machines: the same as apps;
//! - `exp` is at most the parent's (none requested: the parent's);
//! - `aud`, `sub`, `client_id` and the CI provenance are copied; `parent`
//!   names the parent's `jti`, which is how revoking a token reaches every
//!   token narrowed from it.

use std::time::Duration;

use crate::token::WritClaims;

/// What the holder asks for. Empty lists mean "as the parent has it".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NarrowRequest {
    /// The org named in the request, if any; it must be the token's.
    pub org: Option<String>,
    /// Permissions to keep; empty: all of the parent's.
    pub permissions: Vec<String>,
    /// Apps to limit the new token to; empty: the parent's limit (if any).
    pub apps: Vec<String>,
    /// Machines to limit the new token to; empty: the parent's limit.
    pub machines: Vec<String>,
    /// Lifetime from now; `None`: the rest of the parent's life.
    pub ttl: Option<Duration>,
}

/// The scope of the narrowed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowed {
    /// Its permissions, a subset of the parent's.
    pub permissions: Vec<String>,
    /// Its app limit; `None`: not limited (only when the parent is not).
    pub apps: Option<Vec<String>>,
    /// Its machine limit; `None`: not limited (only when the parent is not).
    pub machines: Option<Vec<String>>,
    /// Its expiry, at most the parent's.
    pub exp: i64,
}

/// Why a narrowing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarrowError {
    /// The request names another org than the token's.
    #[error("the token is for org {token_org:?}; a narrowed token stays in that org and cannot be for {requested:?}")]
    OtherOrg {
        /// The parent's org.
        token_org: String,
        /// The org the request named.
        requested: String,
    },
    /// A requested permission is not in the parent's scope.
    #[error("the token does not carry permission {0:?}; a narrowed token keeps only permissions of its parent")]
    Permission(String),
    /// A requested app is outside the parent's app limit.
    #[error("the token is limited to apps {allowed:?}; a narrowed token cannot add app {app:?}")]
    App {
        /// The app asked for.
        app: String,
        /// The parent's limit.
        allowed: Vec<String>,
    },
    /// A requested machine is outside the parent's machine limit.
    #[error("the token is limited to machines {allowed:?}; a narrowed token cannot add machine {machine:?}")]
    Machine {
        /// The machine asked for.
        machine: String,
        /// The parent's limit.
        allowed: Vec<String>,
    },
    /// The parent has expired.
    #[error("the token has expired; nothing can be narrowed from it")]
    Expired,
    /// A lifetime of zero was asked for.
    #[error("ttl must be longer than zero")]
    ZeroTtl,
}

impl NarrowError {
    /// The OAuth error code of this refusal.
    pub fn oauth_error(&self) -> &'static str {
        match self {
            NarrowError::OtherOrg { .. } | NarrowError::App { .. } | NarrowError::Machine { .. } => "invalid_target",
            NarrowError::Permission(_) => "invalid_scope",
            NarrowError::Expired => "invalid_grant",
            NarrowError::ZeroTtl => "invalid_request",
        }
    }
}

/// Decides the scope of a token narrowed from `parent` at `now`.
pub fn narrow(parent: &WritClaims, request: &NarrowRequest, now: i64) -> Result<Narrowed, NarrowError> {
    if let Some(org) = &request.org
        && *org != parent.org
    {
        return Err(NarrowError::OtherOrg { token_org: parent.org.clone(), requested: org.clone() });
    }
    if now >= parent.exp {
        return Err(NarrowError::Expired);
    }
    let held: Vec<&str> = parent.permissions().collect();
    let permissions = if request.permissions.is_empty() {
        held.iter().map(|p| (*p).to_owned()).collect()
    } else {
        let requested = dedup(&request.permissions);
        if let Some(extra) = requested.iter().find(|p| !held.contains(&p.as_str())) {
            return Err(NarrowError::Permission(extra.clone()));
        }
        requested
    };
    // A token that names apps or machines reaches only those (writ-verify
    // refuses the other kind of target): for such a parent an absent list
    // means "none", never "any", or a child could add what its parent lacks.
    let limited = parent.apps.is_some() || parent.machines.is_some();
    let none: &[String] = &[];
    let parent_apps = parent.apps.as_deref().or(limited.then_some(none));
    let parent_machines = parent.machines.as_deref().or(limited.then_some(none));
    let apps = limit(parent_apps, &request.apps).map_err(|(app, allowed)| NarrowError::App { app, allowed })?;
    let machines = limit(parent_machines, &request.machines)
        .map_err(|(machine, allowed)| NarrowError::Machine { machine, allowed })?;
    let exp = match request.ttl {
        Some(ttl) if ttl.is_zero() => return Err(NarrowError::ZeroTtl),
        Some(ttl) => now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)).min(parent.exp),
        None => parent.exp,
    };
    Ok(Narrowed { permissions, apps, machines, exp })
}

/// An app (or machine) limit of the child: within the parent's limit when
/// it has one (which then cannot be dropped), anything when it has none.
type LimitError = (String, Vec<String>);

fn limit(parent: Option<&[String]>, requested: &[String]) -> Result<Option<Vec<String>>, LimitError> {
    match parent {
        // The parent reaches nothing of this kind: neither does the child.
        Some([]) if requested.is_empty() => Ok(None),
        Some(allowed) if requested.is_empty() => Ok(Some(allowed.to_vec())),
        Some(allowed) => {
            let requested = dedup(requested);
            match requested.iter().find(|r| !allowed.contains(r)) {
                Some(extra) => Err((extra.clone(), allowed.to_vec())),
                None => Ok(Some(requested)),
            }
        }
        None if requested.is_empty() => Ok(None),
        None => Ok(Some(dedup(requested))),
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

/// The claims of the narrowed token: the parent's identity and provenance,
/// the narrowed scope, a fresh `jti`, and `parent` = the parent's `jti`.
pub fn narrowed_claims(parent: &WritClaims, narrowed: &Narrowed, jti: String, now: i64) -> WritClaims {
    WritClaims {
        iss: parent.iss.clone(),
        aud: parent.aud.clone(),
        sub: parent.sub.clone(),
        client_id: parent.client_id.clone(),
        iat: now,
        nbf: now,
        exp: narrowed.exp,
        jti,
        scope: narrowed.permissions.join(" "),
        org: parent.org.clone(),
        apps: narrowed.apps.clone(),
        machines: narrowed.machines.clone(),
        ci: parent.ci.clone(),
        parent: Some(parent.jti.clone()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::token::CiProvenance;

    const NOW: i64 = 1_900_000_000;

    fn parent(scope: &str, apps: Option<&[&str]>, machines: Option<&[&str]>) -> WritClaims {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        WritClaims {
            iss: "https://writ.example.com".into(),
            aud: "https://api.platform.example".into(),
            sub: "github:repo:acme/web:environment:production".into(),
            client_id: "github:acme/web".into(),
            iat: NOW - 60,
            nbf: NOW - 60,
            exp: NOW + 840,
            jti: "parent-jti".into(),
            scope: scope.into(),
            org: "acme-prod".into(),
            apps: list(apps),
            machines: list(machines),
            ci: CiProvenance { repository: Some("acme/web".into()), ..CiProvenance::default() },
            parent: None,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nothing_requested_keeps_everything_but_the_identity_is_new() {
        let p = parent("deploy logs:read", Some(&["web"]), None);
        let n = narrow(&p, &NarrowRequest::default(), NOW).expect("narrow");
        assert_eq!(
            n,
            Narrowed {
                permissions: strings(&["deploy", "logs:read"]),
                apps: Some(strings(&["web"])),
                machines: None,
                exp: p.exp
            }
        );
        let c = narrowed_claims(&p, &n, "child".into(), NOW);
        assert_eq!((c.parent.as_deref(), c.jti.as_str(), c.iat), (Some("parent-jti"), "child", NOW));
        assert_eq!((c.org, c.aud, c.sub, c.ci), (p.org, p.aud, p.sub, p.ci));
    }

    #[test]
    fn an_unrestricted_token_can_be_narrowed_to_one_machine_and_one_permission() {
        let p = parent("deploy machines:exec", None, None);
        let req = NarrowRequest {
            permissions: strings(&["machines:exec"]),
            machines: strings(&["vm-1"]),
            ..NarrowRequest::default()
        };
        let n = narrow(&p, &req, NOW).expect("narrow");
        assert_eq!(n.permissions, strings(&["machines:exec"]));
        assert_eq!(n.machines, Some(strings(&["vm-1"])));
        assert_eq!(n.apps, None);
    }

    #[test]
    fn a_machine_cannot_be_added_to_an_app_limited_token() {
        // The app-limited parent reaches no machine; a child naming one
        // would reach more than its parent.
        let p = parent("deploy machines:exec", Some(&["web"]), None);
        let req = NarrowRequest { machines: strings(&["vm-1"]), ..NarrowRequest::default() };
        let e = narrow(&p, &req, NOW).expect_err("wider");
        assert!(matches!(e, NarrowError::Machine { ref machine, .. } if machine == "vm-1"), "{e:?}");
        assert_eq!(e.oauth_error(), "invalid_target");
        let n = narrow(&p, &NarrowRequest::default(), NOW).expect("same reach");
        assert_eq!((n.apps, n.machines), (Some(strings(&["web"])), None));
    }

    #[test]
    fn a_permission_the_parent_lacks_is_invalid_scope() {
        let p = parent("logs:read", None, None);
        let req = NarrowRequest { permissions: strings(&["deploy"]), ..NarrowRequest::default() };
        let e = narrow(&p, &req, NOW).expect_err("wider");
        assert_eq!(e, NarrowError::Permission("deploy".into()));
        assert_eq!(e.oauth_error(), "invalid_scope");
    }

    #[test]
    fn an_app_limit_cannot_be_dropped_or_widened() {
        let p = parent("deploy", Some(&["web"]), None);
        let e =
            narrow(&p, &NarrowRequest { apps: strings(&["api"]), ..NarrowRequest::default() }, NOW).expect_err("wider");
        assert!(matches!(e, NarrowError::App { ref app, .. } if app == "api"), "{e:?}");
        assert_eq!(e.oauth_error(), "invalid_target");
        // Asking for no apps keeps the limit rather than removing it.
        let n = narrow(&p, &NarrowRequest::default(), NOW).expect("narrow");
        assert_eq!(n.apps, Some(strings(&["web"])));
    }

    #[test]
    fn a_machine_limit_cannot_be_widened() {
        let p = parent("deploy", None, Some(&["vm-1"]));
        let e = narrow(&p, &NarrowRequest { machines: strings(&["vm-1", "vm-2"]), ..NarrowRequest::default() }, NOW)
            .expect_err("wider");
        assert!(matches!(e, NarrowError::Machine { ref machine, .. } if machine == "vm-2"), "{e:?}");
    }

    #[test]
    fn lifetime_is_capped_by_the_parent() {
        let p = parent("deploy", None, None);
        let long = NarrowRequest { ttl: Some(Duration::from_secs(86_400)), ..NarrowRequest::default() };
        assert_eq!(narrow(&p, &long, NOW).expect("narrow").exp, p.exp);
        let short = NarrowRequest { ttl: Some(Duration::from_secs(60)), ..NarrowRequest::default() };
        assert_eq!(narrow(&p, &short, NOW).expect("narrow").exp, NOW + 60);
        let zero = NarrowRequest { ttl: Some(Duration::ZERO), ..NarrowRequest::default() };
        assert_eq!(narrow(&p, &zero, NOW), Err(NarrowError::ZeroTtl));
    }

    #[test]
    fn another_org_and_an_expired_parent_are_refused() {
        let p = parent("deploy", None, None);
        let other = NarrowRequest { org: Some("acme-staging".into()), ..NarrowRequest::default() };
        assert!(matches!(narrow(&p, &other, NOW), Err(NarrowError::OtherOrg { .. })));
        let same = NarrowRequest { org: Some("acme-prod".into()), ..NarrowRequest::default() };
        assert!(narrow(&p, &same, NOW).is_ok());
        assert_eq!(narrow(&p, &NarrowRequest::default(), p.exp), Err(NarrowError::Expired));
    }

    fn names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")].prop_map(str::to_owned), 0..4)
    }

    fn limit_strategy() -> impl Strategy<Value = Option<Vec<String>>> {
        proptest::option::of(names().prop_filter("a limit lists something", |v| !v.is_empty()))
    }

    proptest! {
        /// Whatever is asked, a granted narrowing is never wider than its
        /// parent in any dimension.
        #[test]
        fn never_wider(
            scope in names(), apps in limit_strategy(), machines in limit_strategy(),
            want_perms in names(), want_apps in names(), want_machines in names(),
            ttl in proptest::option::of(0u64..5000), at in 0i64..1000,
        ) {
            let mut p = parent(&scope.join(" "), None, None);
            p.apps = apps.clone();
            p.machines = machines.clone();
            let req = NarrowRequest { org: None, permissions: want_perms, apps: want_apps, machines: want_machines, ttl: ttl.map(Duration::from_secs) };
            let now = NOW + at;
            if let Ok(n) = narrow(&p, &req, now) {
                let held: Vec<&str> = p.permissions().collect();
                prop_assert!(n.permissions.iter().all(|x| held.contains(&x.as_str())));
                let limited = apps.is_some() || machines.is_some();
                for (child, parent) in [(&n.apps, &apps), (&n.machines, &machines)] {
                    match parent {
                        Some(limit) => {
                            let child = child.as_ref().expect("a limit is never dropped");
                            prop_assert!(child.iter().all(|x| limit.contains(x)));
                        }
                        // A limited parent reaches none of this kind.
                        None if limited => prop_assert!(child.is_none()),
                        None => {}
                    }
                }
                prop_assert!(n.exp <= p.exp && n.exp > now);
            }
        }
    }
}
