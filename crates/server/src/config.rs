//! The server's configuration: one TOML file, then `WRIT_*` environment
//! overrides, turned into domain types once at start-up.
//!
//! Every failure names the field (and, for syntax, the line and column) so
//! an operator can fix the file without reading code. Relative paths in the
//! file (`storage.url`, `policies.dir`, `issuers.jwks_file`) are resolved
//! against the directory that holds the config file, not the working
//! directory, so `writ serve --config /etc/writ/writ.toml` behaves the same
//! from anywhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use writ_core::issuer::IssuerKind;

use crate::auth::CredentialHash;
use crate::storage::kek::KeyEncryptionKey;
use crate::storage::{DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, StorageOptions};

/// Lifetime of a minted token when the request names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Upper bound of any minted token's lifetime unless the operator sets one.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60 * 60);
/// Oldest OIDC token (now - iat) accepted for exchange. CI tokens are used
/// within seconds of being minted; a bound limits what a leaked but
/// unexpired token from a long-lived issuer is worth.
pub const DEFAULT_MAX_TOKEN_AGE: Duration = Duration::from_secs(60 * 60);
/// Largest request body accepted on any endpoint.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Exchanges per minute one repository may make (a minute's worth may come
/// at once). A deploy job makes one or two; a thousand repositories
/// sharing a server never notice, one runaway workflow is slowed down.
pub const DEFAULT_EXCHANGES_PER_MINUTE_PER_REPOSITORY: u32 = 600;
/// Requests per second one client address may send to any endpoint (two
/// seconds' worth may come at once). Behind a load balancer every request
/// comes from the balancer's address: set this to 0 there and limit at the
/// balancer.
pub const DEFAULT_REQUESTS_PER_SECOND_PER_CLIENT: u32 = 1000;
/// Largest OIDC token accepted; real CI tokens are 1-2 KiB.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Permissions that govern writ itself; always part of the catalogue so an
/// org can manage its policy from its own CI with OIDC (GitOps).
pub const ADMIN_PERMISSIONS: [(&str, &str); 4] = [
    ("writ:policy:read", "Read this org's trust policy"),
    ("writ:policy:write", "Change this org's trust policy"),
    ("writ:audit:read", "Read this org's audit log"),
    ("writ:tokens:revoke", "Revoke tokens issued for this org"),
];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// writ's own URL: the `iss` of minted tokens and base of discovery.
    pub public_url: String,
    /// The `aud` every incoming OIDC token must contain.
    pub audience: String,
    /// Settings of minted tokens.
    pub tokens: TokenSettings,
    /// Storage URL: `sqlite://path` (created if missing) or `postgres://…`.
    pub storage_url: String,
    /// The rest of `[storage]`: pool settings and the key-encryption key
    /// (PostgreSQL).
    pub storage: StorageOptions,
    /// Directory of file-managed org policies (`*.toml`, one org each).
    pub policies_dir: Option<PathBuf>,
    /// The permission catalogue: name → description, admin permissions
    /// included.
    pub permissions: BTreeMap<String, String>,
    /// Trusted OIDC issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Request size limits.
    pub limits: Limits,
    /// The admin API.
    pub admin: AdminSettings,
    /// Resource servers allowed to call `POST /oauth/introspect`.
    pub introspection_clients: Vec<IntrospectionClient>,
}

/// Settings of the admin API.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    /// SHA-256 of the operator root credential; `None`: no root access
    /// (orgs can then only come from the policy directory).
    pub root_credential_hash: Option<CredentialHash>,
}

/// A resource server that may introspect tokens (RFC 7662), with HTTP
/// Basic client credentials.
#[derive(Debug, Clone)]
pub struct IntrospectionClient {
    /// The client id (the Basic user name).
    pub id: String,
    /// SHA-256 of its secret.
    pub secret_hash: CredentialHash,
}

/// Settings of the tokens writ mints.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `aud` of minted tokens: the platform API that accepts them.
    pub audience: String,
    /// Lifetime when the request and rule name none.
    pub default_ttl: Duration,
    /// Upper bound on every lifetime.
    pub max_ttl: Duration,
}

/// One trusted OIDC issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Name used in policies (`issuer = "github"`).
    pub name: String,
    /// Shape of its identities.
    pub kind: IssuerKind,
    /// The exact `iss` value; discovery happens below it.
    pub url: String,
    /// Pinned keys instead of discovery (air-gapped servers).
    pub jwks_file: Option<PathBuf>,
    /// Signature algorithms accepted from this issuer; never the header's.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Oldest token (now - iat) accepted from this issuer.
    pub max_token_age: Duration,
}

/// Size limits on requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest subject token, in bytes.
    pub max_token_bytes: usize,
    /// Rate limits per repository and per client address.
    pub rate: crate::ratelimit::RateLimitConfig,
}

// ---- the file format -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    policies: RawPolicies,
    #[serde(default)]
    permissions: BTreeMap<String, String>,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    introspection: RawIntrospection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    root_credential_hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    #[serde(default)]
    clients: Vec<RawIntrospectionClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospectionClient {
    id: String,
    secret_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    public_url: String,
    audience: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    audience: Option<String>,
    #[serde(default, with = "humantime_serde")]
    default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Option<String>,
    max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    acquire_timeout: Option<Duration>,
    key_encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: String,
    kind: IssuerKind,
    url: String,
    jwks_file: Option<PathBuf>,
    algorithms: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    max_token_age: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_body_bytes: Option<usize>,
    max_token_bytes: Option<usize>,
    exchanges_per_minute_per_repository: Option<u32>,
    requests_per_second_per_client: Option<u32>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

impl Config {
    /// Reads the file at `path`, applies `WRIT_*` overrides from `env`, and
    /// validates everything.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base, env).with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        apply_env(&mut raw, env)?;
        build(raw, base)
    }
}

/// Environment overrides: `WRIT_LISTEN`, `WRIT_PUBLIC_URL`, `WRIT_AUDIENCE`,
/// `WRIT_TOKEN_AUDIENCE`, `WRIT_DEFAULT_TTL`, `WRIT_MAX_TTL`,
/// `WRIT_STORAGE_URL`, `WRIT_POLICIES_DIR`, `WRIT_ROOT_CREDENTIAL_HASH`.
fn apply_env(raw: &mut RawConfig, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    if let Some(v) = env("WRIT_LISTEN") {
        raw.server.listen = v;
    }
    if let Some(v) = env("WRIT_PUBLIC_URL") {
        raw.server.public_url = v;
    }
    if let Some(v) = env("WRIT_AUDIENCE") {
        raw.server.audience = Some(v);
    }
    if let Some(v) = env("WRIT_TOKEN_AUDIENCE") {
        raw.tokens.audience = Some(v);
    }
    let duration = |name: &str, v: String| {
        humantime::parse_duration(&v)
            .with_context(|| format!("{name}={v:?} is not a duration such as \"15m\" or \"1h\""))
    };
    if let Some(v) = env("WRIT_DEFAULT_TTL") {
        raw.tokens.default_ttl = Some(duration("WRIT_DEFAULT_TTL", v)?);
    }
    if let Some(v) = env("WRIT_MAX_TTL") {
        raw.tokens.max_ttl = Some(duration("WRIT_MAX_TTL", v)?);
    }
    if let Some(v) = env("WRIT_STORAGE_URL") {
        raw.storage.url = Some(v);
    }
    if let Some(v) = env("WRIT_POLICIES_DIR") {
        raw.policies.dir = Some(PathBuf::from(v));
    }
    if let Some(v) = env("WRIT_ROOT_CREDENTIAL_HASH") {
        raw.admin.root_credential_hash = Some(v);
    }
    Ok(())
}

fn build(raw: RawConfig, base: &Path) -> anyhow::Result<Config> {
    let listen: SocketAddr = raw.server.listen.parse().with_context(|| {
        format!("server.listen = {:?} is not an address:port such as \"127.0.0.1:8080\"", raw.server.listen)
    })?;
    let public_url = trim_url("server.public_url", &raw.server.public_url)?;
    check_url_scheme("server.public_url", &public_url)?;
    let audience = raw.server.audience.unwrap_or_else(|| public_url.clone());
    if audience.is_empty() {
        bail!("server.audience must not be empty");
    }

    let default_ttl = raw.tokens.default_ttl.unwrap_or(DEFAULT_TTL);
    let max_ttl = raw.tokens.max_ttl.unwrap_or(DEFAULT_MAX_TTL.max(default_ttl));
    if default_ttl.is_zero() || max_ttl.is_zero() {
        bail!("tokens.default_ttl and tokens.max_ttl must be longer than zero");
    }
    if default_ttl > max_ttl {
        bail!(
            "tokens.default_ttl ({}) is longer than tokens.max_ttl ({}); lower default_ttl or raise max_ttl",
            humantime::format_duration(default_ttl),
            humantime::format_duration(max_ttl)
        );
    }
    let tokens =
        TokenSettings { audience: raw.tokens.audience.unwrap_or_else(|| public_url.clone()), default_ttl, max_ttl };

    let storage_url = resolve_storage_url(raw.storage.url.as_deref().unwrap_or("sqlite://writ.db"), base)?;
    let storage = storage_options(&raw.storage, &storage_url, base)?;
    let policies_dir = raw.policies.dir.map(|d| base.join(d));

    let mut permissions = BTreeMap::new();
    for (name, description) in raw.permissions {
        check_permission_name(&name)?;
        if name.starts_with("writ:") {
            bail!("permissions.{name:?}: names starting with \"writ:\" are reserved for writ's own admin permissions");
        }
        permissions.insert(name, description);
    }
    for (name, description) in ADMIN_PERMISSIONS {
        permissions.insert(name.to_owned(), description.to_owned());
    }

    if raw.issuers.is_empty() {
        bail!(
            "no [[issuers]] configured: add at least one, e.g.\n[[issuers]]\nname = \"github\"\nkind = \"github\"\nurl = \"https://token.actions.githubusercontent.com\""
        );
    }
    let mut issuers: Vec<IssuerConfig> = Vec::new();
    for (i, r) in raw.issuers.into_iter().enumerate() {
        let field = |f: &str| format!("issuers[{i}].{f}");
        if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("{} = {:?}: use letters, digits, '-' and '_' only", field("name"), r.name);
        }
        if issuers.iter().any(|o| o.name == r.name) {
            bail!("{} = {:?} is configured twice; issuer names must be unique", field("name"), r.name);
        }
        let url = trim_url(&field("url"), &r.url)?;
        if url != r.url {
            bail!(
                "{} = {:?} ends with '/': write the issuer exactly as its tokens' `iss` ({url:?}); writ compares it byte for byte",
                field("url"),
                r.url
            );
        }
        check_url_scheme(&field("url"), &url)?;
        if let Some(o) = issuers.iter().find(|o| o.url == url) {
            bail!("{} = {url:?} is already configured as issuer {:?}", field("url"), o.name);
        }
        let algorithms = match r.algorithms {
            None => vec![jsonwebtoken::Algorithm::RS256],
            Some(list) => {
                let mut out = Vec::new();
                for a in list {
                    out.push(parse_algorithm(&a).with_context(|| field("algorithms"))?);
                }
                if out.is_empty() {
                    bail!("{} is empty; leave it out for RS256", field("algorithms"));
                }
                out
            }
        };
        issuers.push(IssuerConfig {
            name: r.name,
            kind: r.kind,
            url,
            jwks_file: r.jwks_file.map(|p| base.join(p)),
            algorithms,
            max_token_age: r.max_token_age.unwrap_or(DEFAULT_MAX_TOKEN_AGE),
        });
    }

    let limits = Limits {
        max_body_bytes: raw.limits.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        max_token_bytes: raw.limits.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES),
        rate: crate::ratelimit::RateLimitConfig {
            exchanges_per_minute_per_repository: raw
                .limits
                .exchanges_per_minute_per_repository
                .unwrap_or(DEFAULT_EXCHANGES_PER_MINUTE_PER_REPOSITORY),
            requests_per_second_per_client: raw
                .limits
                .requests_per_second_per_client
                .unwrap_or(DEFAULT_REQUESTS_PER_SECOND_PER_CLIENT),
        },
    };
    if limits.max_token_bytes > limits.max_body_bytes {
        bail!("limits.max_token_bytes must not exceed limits.max_body_bytes");
    }

    let admin_aud = crate::auth::admin_audience(&public_url);
    if tokens.audience == admin_aud {
        bail!("tokens.audience = {admin_aud:?} is the audience of writ's own admin tokens; the platform needs another");
    }
    if let Some(i) = issuers.iter().find(|i| i.url == public_url) {
        bail!("issuers: {:?} has writ's own public_url as its url; writ is not an OIDC issuer of CI tokens", i.name);
    }
    let admin = AdminSettings {
        root_credential_hash: raw
            .admin
            .root_credential_hash
            .map(|h| CredentialHash::parse(&h).map_err(|e| anyhow::anyhow!("admin.root_credential_hash {e}")))
            .transpose()?,
    };
    let mut introspection_clients: Vec<IntrospectionClient> = Vec::new();
    for (i, c) in raw.introspection.clients.into_iter().enumerate() {
        if c.id.is_empty() || c.id.contains(':') || c.id.chars().any(char::is_control) {
            bail!("introspection.clients[{i}].id = {:?}: 1 or more characters, no ':'", c.id);
        }
        if introspection_clients.iter().any(|o| o.id == c.id) {
            bail!("introspection.clients[{i}].id = {:?} is configured twice", c.id);
        }
        let secret_hash = CredentialHash::parse(&c.secret_hash)
            .map_err(|e| anyhow::anyhow!("introspection.clients[{i}].secret_hash {e}"))?;
        introspection_clients.push(IntrospectionClient { id: c.id, secret_hash });
    }

    Ok(Config {
        listen,
        public_url,
        audience,
        tokens,
        storage_url,
        storage,
        policies_dir,
        permissions,
        issuers,
        limits,
        admin,
        introspection_clients,
    })
}

/// The pool settings and the key-encryption key of `[storage]`. They serve
/// PostgreSQL, which requires the key; with SQLite they are refused rather
/// than silently ignored.
fn storage_options(raw: &RawStorage, storage_url: &str, base: &Path) -> anyhow::Result<StorageOptions> {
    let postgres = storage_url.starts_with("postgres://") || storage_url.starts_with("postgresql://");
    if !postgres {
        for (set, field) in [
            (raw.max_connections.is_some(), "max_connections"),
            (raw.acquire_timeout.is_some(), "acquire_timeout"),
            (raw.key_encryption_key_file.is_some(), "key_encryption_key_file"),
        ] {
            if set {
                bail!("storage.{field} applies to a postgres:// storage.url only; remove it for SQLite");
            }
        }
        return Ok(StorageOptions::default());
    }
    let Some(file) = &raw.key_encryption_key_file else {
        bail!(
            "storage.key_encryption_key_file is required with a postgres:// storage.url: writ's signing keys are \
             stored in the database encrypted under it; create one with `openssl rand -base64 32 > writ-kek.key` \
             (mode 0600, the same file on every replica)"
        );
    };
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("storage.key_encryption_key_file: cannot read {}", path.display()))?;
    let key = KeyEncryptionKey::from_base64(&text)
        .map_err(|e| anyhow::anyhow!("storage.key_encryption_key_file {}: {e}", path.display()))?;
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        bail!("storage.max_connections must be at least 1");
    }
    let acquire_timeout = raw.acquire_timeout.unwrap_or(DEFAULT_ACQUIRE_TIMEOUT);
    if acquire_timeout.is_zero() {
        bail!("storage.acquire_timeout must be longer than zero, e.g. \"3s\"");
    }
    Ok(StorageOptions { max_connections, acquire_timeout, key_encryption_key: Some(key) })
}

fn trim_url(field: &str, url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url).with_context(|| format!("{field} = {url:?} is not a URL"))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("{field} = {url:?} must not have a query or fragment");
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Issuer and public URLs must be https; plain http is accepted only for
/// loopback hosts (tests and dev mode), because keys fetched over plain
/// http from elsewhere could be swapped by anyone on the path.
fn check_url_scheme(field: &str, url: &str) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("{field} = {url:?} is not a URL"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        "http" => {
            bail!("{field} = {url:?} must use https (plain http is allowed only for 127.0.0.1, [::1] and localhost)")
        }
        other => bail!("{field} = {url:?} has scheme {other:?}; use https"),
    }
}

/// True for 127.0.0.0/8, ::1 and `localhost`.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn check_permission_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.'));
    if !ok {
        bail!(
            "permissions.{name:?}: a permission name is 1-64 characters of letters, digits, ':', '-', '_' and '.' (it travels in a space-separated OAuth scope)"
        );
    }
    Ok(())
}

fn parse_algorithm(name: &str) -> anyhow::Result<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm::*;
    Ok(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        other => bail!(
            "algorithm {other:?} is not accepted; choose from RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (HMAC and none never are)"
        ),
    })
}

/// `sqlite://relative.db` resolves against the config file's directory;
/// `sqlite::memory:` and `postgres://` URLs pass through.
fn resolve_storage_url(url: &str, base: &Path) -> anyhow::Result<String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() {
            bail!("storage.url = {url:?} names no file; write e.g. \"sqlite://writ.db\"");
        }
        let full = base.join(path);
        return Ok(format!("sqlite://{}", full.display()));
    }
    if url == "sqlite::memory:" || url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_owned());
    }
    bail!("storage.url = {url:?}: use \"sqlite://FILE\" or \"postgres://USER@HOST/DB\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = r#"
[server]
public_url = "https://writ.example.com"

[[issuers]]
name = "github"
kind = "github"
url = "https://token.actions.githubusercontent.com"
"#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL, Path::new("/etc/writ"), &no_env).expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.audience, "https://writ.example.com");
        assert_eq!(c.tokens.audience, "https://writ.example.com");
        assert_eq!(c.tokens.default_ttl, DEFAULT_TTL);
        assert_eq!(c.tokens.max_ttl, DEFAULT_MAX_TTL);
        assert_eq!(c.storage_url, "sqlite:///etc/writ/writ.db");
        assert!(c.permissions.contains_key("writ:policy:write"));
        assert_eq!(c.issuers[0].algorithms, vec![jsonwebtoken::Algorithm::RS256]);
    }

    #[test]
    fn env_overrides_the_file() {
        let env = |k: &str| match k {
            "WRIT_STORAGE_URL" => Some("sqlite::memory:".to_owned()),
            "WRIT_MAX_TTL" => Some("30m".to_owned()),
            _ => None,
        };
        let c = Config::parse(MINIMAL, Path::new("."), &env).expect("valid");
        assert_eq!(c.storage_url, "sqlite::memory:");
        assert_eq!(c.tokens.max_ttl, Duration::from_secs(1800));
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", Config::parse(text, Path::new("."), &no_env).expect_err("must fail"))
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = error_of(&MINIMAL.replace("[server]", "[server]\nlisten_on = \"x\""));
        assert!(e.contains("listen_on") && e.contains("line"), "{e}");
    }

    #[test]
    fn plain_http_issuer_is_refused_unless_loopback() {
        let e = error_of(&MINIMAL.replace("https://token.actions", "http://token.actions"));
        assert!(e.contains("must use https"), "{e}");
        let ok = MINIMAL.replace("https://token.actions.githubusercontent.com", "http://127.0.0.1:9999");
        assert!(Config::parse(&ok, Path::new("."), &no_env).is_ok());
    }

    #[test]
    fn issuer_url_with_trailing_slash_is_refused() {
        let e = error_of(&MINIMAL.replace("githubusercontent.com\"", "githubusercontent.com/\""));
        assert!(e.contains("byte for byte"), "{e}");
    }

    #[test]
    fn hmac_algorithms_are_refused() {
        let e = error_of(&format!("{MINIMAL}algorithms = [\"HS256\"]\n"));
        assert!(e.contains("HS256"), "{e}");
    }

    #[test]
    fn reserved_permission_names_are_refused() {
        let e = error_of(&format!("{MINIMAL}\n[permissions]\n\"writ:x\" = \"no\"\n"));
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn default_ttl_above_max_is_refused() {
        let e = error_of(&format!("{MINIMAL}\n[tokens]\ndefault_ttl = \"2h\"\nmax_ttl = \"1h\"\n"));
        assert!(e.contains("longer than tokens.max_ttl"), "{e}");
    }

    #[test]
    fn admin_and_introspection_credentials_are_hashes() {
        let hash = CredentialHash::of("writ_root_x").to_string();
        let text = format!(
            "{MINIMAL}\n[admin]\nroot_credential_hash = \"{hash}\"\n[[introspection.clients]]\nid = \"platform\"\nsecret_hash = \"{hash}\"\n"
        );
        let c = Config::parse(&text, Path::new("."), &no_env).expect("valid");
        assert!(c.admin.root_credential_hash.expect("root").matches("writ_root_x"));
        assert_eq!(c.introspection_clients[0].id, "platform");
        let e = error_of(&format!("{MINIMAL}\n[admin]\nroot_credential_hash = \"hunter2\"\n"));
        assert!(e.contains("admin.root_credential_hash") && e.contains("writ credential new"), "{e}");
    }

    #[test]
    fn the_platform_audience_cannot_be_the_admin_audience() {
        let e = error_of(&format!("{MINIMAL}\n[tokens]\naudience = \"https://writ.example.com/admin\"\n"));
        assert!(e.contains("admin tokens"), "{e}");
    }

    #[test]
    fn missing_issuers_says_how_to_add_one() {
        let e = error_of("[server]\npublic_url = \"https://w.example\"\n");
        assert!(e.contains("[[issuers]]"), "{e}");
    }

    fn with_storage(storage: &str) -> String {
        MINIMAL.replace("[[issuers]]", &format!("[storage]\n{storage}\n\n[[issuers]]"))
    }

    #[test]
    fn postgres_storage_reads_its_key_encryption_key_relative_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kek.key"), "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\n").expect("write");
        let text = with_storage(
            "url = \"postgres://writ@db.internal/writ\"\nkey_encryption_key_file = \"kek.key\"\nmax_connections = 4\nacquire_timeout = \"1s\"",
        );
        let c = Config::parse(&text, dir.path(), &no_env).expect("valid");
        assert_eq!(c.storage_url, "postgres://writ@db.internal/writ");
        assert_eq!((c.storage.max_connections, c.storage.acquire_timeout), (4, Duration::from_secs(1)));
        let kek = c.storage.key_encryption_key.clone().expect("loaded");
        assert_eq!(kek.id(), KeyEncryptionKey::from_bytes(&[0x42; 32]).expect("key").id());
        assert!(!format!("{:?}", c.storage).contains("QkJC"), "the key never shows in Debug");
    }

    #[test]
    fn postgres_storage_requires_a_valid_key_encryption_key() {
        let e = error_of(&with_storage("url = \"postgres://writ@db/writ\""));
        assert!(e.contains("storage.key_encryption_key_file is required"), "{e}");
        let e =
            error_of(&with_storage("url = \"postgres://writ@db/writ\"\nkey_encryption_key_file = \"/no/such/file\""));
        assert!(e.contains("storage.key_encryption_key_file: cannot read /no/such/file"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("short.key"), "c2hvcnQ=").expect("write");
        let text = with_storage("url = \"postgres://writ@db/writ\"\nkey_encryption_key_file = \"short.key\"");
        let e = format!("{:#}", Config::parse(&text, dir.path(), &no_env).expect_err("short key"));
        assert!(e.contains("decodes to 5 bytes, not 32"), "{e}");
    }

    #[test]
    fn postgres_only_settings_are_refused_with_sqlite() {
        let e = error_of(&with_storage("url = \"sqlite://writ.db\"\nmax_connections = 4"));
        assert!(e.contains("storage.max_connections applies to a postgres:// storage.url only"), "{e}");
    }
}
