//! The in-memory set of org trust policies, and file-managed policies read
//! from `[policies] dir`.
//!
//! Storage is the source of truth (versions, history); this set holds the
//! parsed latest version of every org so the exchange path does one hash
//! lookup and no I/O — evaluation time does not depend on how many orgs
//! exist. A policy enters the set only after it parsed and linted without
//! errors; a bad edit never replaces a good policy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use writ_core::issuer::IssuerKind;
use writ_core::policy::{self, Diagnostic, LintContext, Policy, Severity, SourceFormat};

use crate::storage::{ManagedBy, NewPolicy, PolicyFormat, Storage, StorageError, StoredPolicy};

/// How often the policy directory is checked for changes. Polling (rather
/// than inotify) works on every filesystem, including network and
/// container-mounted ones, and costs one `stat` per file.
pub const POLICY_DIR_POLL: Duration = Duration::from_secs(2);

/// A parsed, linted policy and where it came from.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The parsed policy.
    pub policy: Policy,
    /// Its version in storage.
    pub version: i64,
    /// Who may change it.
    pub managed_by: ManagedBy,
}

/// What the linter needs to know about the server: issuer names and kinds,
/// and the permission catalogue.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// Configured issuers.
    pub issuers: Vec<(String, IssuerKind)>,
    /// Permission names.
    pub permissions: Vec<String>,
}

impl Catalogue {
    fn lint_context(&self) -> LintContext<'_> {
        LintContext { issuers: &self.issuers, permissions: &self.permissions }
    }
}

/// A policy that failed to parse or lint: every diagnostic, with positions.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_diagnostics(.origin, .diagnostics))]
pub struct PolicyRejected {
    /// File name or "request body".
    pub origin: String,
    /// The errors (warnings are not fatal and not listed here).
    pub diagnostics: Vec<Diagnostic>,
}

/// Renders diagnostics as `origin:line:column: severity: message (help)`.
pub fn render_diagnostics(origin: &str, diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| {
            let severity = match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let mut line = format!("{origin}:{}:{}: {severity}: {}", d.line, d.column, d.message);
            if let Some(help) = &d.help {
                line.push_str(&format!(" ({help})"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses and lints `source`; errors refuse it, warnings come back with it.
pub fn compile(
    source: &str,
    format: SourceFormat,
    catalogue: &Catalogue,
    origin: &str,
) -> Result<(Policy, Vec<Diagnostic>), PolicyRejected> {
    let parsed = policy::parse(source, format)
        .map_err(|e| PolicyRejected { origin: origin.to_owned(), diagnostics: e.diagnostics })?;
    let diagnostics = policy::lint(&parsed, &catalogue.lint_context());
    let (errors, warnings): (Vec<_>, Vec<_>) = diagnostics.into_iter().partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        return Err(PolicyRejected { origin: origin.to_owned(), diagnostics: errors });
    }
    Ok((parsed, warnings))
}

/// The latest parsed policy of every org.
#[derive(Clone, Default)]
pub struct PolicySet {
    inner: Arc<RwLock<HashMap<String, Arc<LoadedPolicy>>>>,
}

impl PolicySet {
    /// The current policy of `org`, if any.
    pub fn get(&self, org: &str) -> Option<Arc<LoadedPolicy>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).get(org).cloned()
    }

    /// Number of orgs with a policy.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no org has a policy.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes `loaded` the org's current policy unless a newer version is
    /// already in place: two writers whose stores commit as v3 then v4 may
    /// reach this point in the other order, and the set must end at v4.
    fn insert(&self, org: String, loaded: LoadedPolicy) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if map.get(&org).is_some_and(|current| current.version > loaded.version) {
            return;
        }
        map.insert(org, Arc::new(loaded));
    }

    /// Installs a policy that was compiled and stored by the caller (an org
    /// created with its first policy).
    pub fn install_compiled(&self, policy: Policy, version: i64, managed_by: ManagedBy) {
        self.insert(policy.org().to_owned(), LoadedPolicy { policy, version, managed_by });
    }

    /// Loads the latest version of every org from storage. A stored policy
    /// that no longer lints (say, a permission was removed from the
    /// catalogue) is skipped with an error in the log: its org gets no
    /// tokens until an admin fixes it, which fails closed.
    pub async fn load_from_storage(&self, store: &dyn Storage, catalogue: &Catalogue) -> anyhow::Result<()> {
        for stored in store.list_policies().await.context("listing stored policies")? {
            self.install(stored, catalogue);
        }
        Ok(())
    }

    /// Brings `org` up to its latest stored version when storage holds a
    /// newer one than this set (another replica stored it). Returns whether
    /// it changed anything.
    pub async fn refresh_org(
        &self,
        store: &dyn Storage,
        catalogue: &Catalogue,
        org: &str,
    ) -> Result<bool, StorageError> {
        match store.get_policy(org).await? {
            Some(stored) => Ok(self.install_if_newer(stored, catalogue)),
            None => Ok(false),
        }
    }

    /// [`PolicySet::refresh_org`] for every org: the reconciliation that
    /// backs up change notifications. Compiles only what changed.
    pub async fn refresh_all(&self, store: &dyn Storage, catalogue: &Catalogue) -> Result<usize, StorageError> {
        let mut changed = 0;
        for stored in store.list_policies().await? {
            changed += usize::from(self.install_if_newer(stored, catalogue));
        }
        Ok(changed)
    }

    fn install_if_newer(&self, stored: StoredPolicy, catalogue: &Catalogue) -> bool {
        if self.get(&stored.org).is_some_and(|current| current.version >= stored.version) {
            return false;
        }
        self.install(stored, catalogue);
        true
    }

    fn install(&self, stored: StoredPolicy, catalogue: &Catalogue) {
        let origin = format!("stored policy of org {} v{}", stored.org, stored.version);
        match compile(&stored.source, source_format(stored.format), catalogue, &origin) {
            Ok((policy, _)) => self.insert(
                stored.org.clone(),
                LoadedPolicy { policy, version: stored.version, managed_by: stored.managed_by },
            ),
            Err(e) => {
                tracing::error!(org = %stored.org, "policy no longer valid, org gets no tokens until fixed:\n{e}")
            }
        }
    }

    /// Stores a new version of a policy (after parsing and linting it) and
    /// makes it current. Returns the stored version and the lint warnings.
    pub async fn apply(
        &self,
        store: &dyn Storage,
        catalogue: &Catalogue,
        update: PolicyUpdate<'_>,
        now: i64,
    ) -> anyhow::Result<(StoredPolicy, Vec<Diagnostic>)> {
        let (parsed, warnings) = compile(update.source, update.format, catalogue, update.origin)?;
        let stored = self.apply_compiled(store, parsed, update, now).await?;
        Ok((stored, warnings))
    }

    /// Stores `parsed` (compiled from `update.source` by the caller) as the
    /// org's next version, honouring `update.expected_version`, and makes
    /// it current.
    pub async fn apply_compiled(
        &self,
        store: &dyn Storage,
        parsed: Policy,
        update: PolicyUpdate<'_>,
        now: i64,
    ) -> Result<StoredPolicy, StorageError> {
        let PolicyUpdate { source, format, managed_by, expected_version, origin: _, author } = update;
        let org = parsed.org().to_owned();
        let stored = store
            .put_policy(
                NewPolicy {
                    org: org.clone(),
                    source: source.to_owned(),
                    format: policy_format(format),
                    managed_by,
                    author: author.map(str::to_owned),
                    expected_version,
                },
                now,
            )
            .await?;
        self.insert(org, LoadedPolicy { policy: parsed, version: stored.version, managed_by });
        Ok(stored)
    }
}

/// The storage spelling of a policy's syntax.
pub fn policy_format(f: SourceFormat) -> PolicyFormat {
    match f {
        SourceFormat::Toml => PolicyFormat::Toml,
        SourceFormat::Json => PolicyFormat::Json,
    }
}

/// The parser's spelling of a stored policy's syntax.
pub fn source_format(f: PolicyFormat) -> SourceFormat {
    match f {
        PolicyFormat::Toml => SourceFormat::Toml,
        PolicyFormat::Json => SourceFormat::Json,
    }
}

/// A new policy version to store.
#[derive(Debug, Clone, Copy)]
pub struct PolicyUpdate<'a> {
    /// The policy text.
    pub source: &'a str,
    /// Its syntax.
    pub format: SourceFormat,
    /// Who manages the org from now on.
    pub managed_by: ManagedBy,
    /// Optimistic concurrency: the version the writer last saw (`Some(0)`:
    /// the org must have no policy yet; `None`: no check).
    pub expected_version: Option<i64>,
    /// File name or "request body", for diagnostics.
    pub origin: &'a str,
    /// Who submitted it (an admin's `sub`, `root`), for the history.
    pub author: Option<&'a str>,
}

/// The state of the policy directory seen last: file → (mtime, length).
type DirSignature = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

fn dir_signature(dir: &Path) -> anyhow::Result<DirSignature> {
    let mut sig = DirSignature::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read policy directory {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let meta = std::fs::metadata(&path)?;
            sig.insert(path, (meta.modified().ok(), meta.len()));
        }
    }
    Ok(sig)
}

/// Reads every `*.toml` in `dir` and stores each one whose text changed as
/// a new version of its org's policy (managed by file). Two files naming the
/// same org, or a file for an org managed through the API, are errors.
///
/// All files are checked before any is stored, so one bad file at start-up
/// stops the server with every problem listed, and one bad edit while
/// running changes nothing (the previous version keeps serving).
pub async fn sync_dir(
    dir: &Path,
    set: &PolicySet,
    store: &dyn Storage,
    catalogue: &Catalogue,
    now: i64,
) -> anyhow::Result<usize> {
    let mut compiled = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in dir_signature(dir)?.into_keys() {
        let source = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        match compile(&source, SourceFormat::Toml, catalogue, &path.display().to_string()) {
            Ok((policy, warnings)) => {
                for w in &warnings {
                    tracing::warn!("{}", render_diagnostics(&path.display().to_string(), std::slice::from_ref(w)));
                }
                let org = policy.org().to_owned();
                if let Some(other) = seen.insert(org.clone(), path.clone()) {
                    problems.push(format!(
                        "{} and {} both define org {org:?}; keep one file per org",
                        other.display(),
                        path.display()
                    ));
                }
                compiled.push((org, source));
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        bail!("policy directory {} has errors; nothing was loaded from it:\n{}", dir.display(), problems.join("\n"));
    }
    let mut changed = 0;
    for (org, source) in compiled {
        let current = store.get_policy(&org).await?;
        if let Some(cur) = &current {
            if cur.managed_by == ManagedBy::Api {
                bail!(
                    "org {org:?} is managed through the admin API; remove its file from {} or delete the org's API-managed policy first",
                    dir.display()
                );
            }
            if cur.source == source {
                continue;
            }
        }
        let origin = format!("{}/{org}", dir.display());
        let update = PolicyUpdate {
            source: &source,
            format: SourceFormat::Toml,
            managed_by: ManagedBy::File,
            expected_version: Some(current.as_ref().map_or(0, |c| c.version)),
            origin: &origin,
            author: Some(&origin),
        };
        if let Err(e) = set.apply(store, catalogue, update, now).await {
            // Replicas sharing a database and the same directory race to
            // store the same file; the loser takes the winner's version.
            let raced = matches!(e.downcast_ref::<StorageError>(), Some(StorageError::VersionConflict { .. }))
                && store.get_policy(&org).await?.is_some_and(|stored| stored.source == source);
            if !raced {
                return Err(e);
            }
            set.refresh_org(store, catalogue, &org).await?;
            continue;
        }
        tracing::info!(org = %org, "loaded policy of org {org} from {}", dir.display());
        changed += 1;
    }
    Ok(changed)
}

/// Watches `dir` and re-syncs it whenever a file's time or size changes.
/// Errors are logged, never fatal: the last good policies keep serving.
pub async fn watch_dir(
    dir: PathBuf,
    set: PolicySet,
    store: Arc<dyn Storage>,
    catalogue: Catalogue,
    clock: crate::app::Clock,
) {
    let mut last = dir_signature(&dir).ok();
    loop {
        tokio::time::sleep(POLICY_DIR_POLL).await;
        let now_sig = match dir_signature(&dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e:#}");
                continue;
            }
        };
        if last.as_ref() == Some(&now_sig) {
            continue;
        }
        last = Some(now_sig);
        match sync_dir(&dir, &set, store.as_ref(), &catalogue, clock.now()).await {
            Ok(n) if n > 0 => tracing::info!("policy directory {}: {n} org(s) updated", dir.display()),
            Ok(_) => {}
            Err(e) => tracing::error!("{e:#}"),
        }
    }
}
