//! The server's token-signing keys: created on first start, kept in
//! storage, published in the JWKS, rotated with a pre-publication window.
//!
//! Lifecycle of a key (times in seconds since the Unix epoch):
//!
//! ```text
//! created_at ──(pre-publication)──▶ activates_at ──(signs)──▶ next key activates
//!   published in JWKS ─────────────────────────────────────────────────────────▶
//!                        …stays published for max token lifetime + margin, then retired
//! ```
//!
//! - A new key is published [`KeyringConfig::prepublication`] (default 1 h)
//!   before it signs, so every resource server that caches writ's JWKS for
//!   less than that already knows the key when the first token signed with
//!   it arrives. The very first key signs at once: nothing can have cached
//!   an earlier JWKS.
//! - A superseded key stays published until every token it signed has
//!   expired (the longest token lifetime after its successor activated),
//!   plus [`RETIREMENT_MARGIN_SECS`] for verifiers' clock skew.
//!
//! Private keys live in storage as PKCS#8 and in memory inside
//! [`SigningKey`]; both redact in `Debug`, and neither is ever logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretSlice};
use writ_core::token::{SIGNING_ALGORITHM, SigningKey};

use crate::storage::{Storage, StoredSigningKey};

/// Default [`KeyringConfig::prepublication`]: one hour, longer than any
/// sensible JWKS cache lifetime at resource servers.
pub const DEFAULT_PREPUBLICATION: Duration = Duration::from_secs(60 * 60);

/// Default [`KeyringConfig::max_token_lifetime`]: the default `[tokens]
/// max_ttl`.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// How long past its tokens' expiry a superseded key stays published: room
/// for verifiers whose clocks run behind.
pub const RETIREMENT_MARGIN_SECS: i64 = 5 * 60;

/// Rotation timing.
#[derive(Debug, Clone)]
pub struct KeyringConfig {
    /// How long a new key is published before it signs.
    pub prepublication: Duration,
    /// The longest lifetime of any token writ issues (`[tokens] max_ttl`):
    /// how long a superseded key must stay published.
    pub max_token_lifetime: Duration,
}

impl Default for KeyringConfig {
    fn default() -> Self {
        KeyringConfig { prepublication: DEFAULT_PREPUBLICATION, max_token_lifetime: DEFAULT_MAX_TOKEN_LIFETIME }
    }
}

/// One loaded key and its public JWK, computed once.
struct Entry {
    key: Arc<SigningKey>,
    jwk: serde_json::Value,
    activates_at: i64,
}

/// An immutable view of all keys, sorted by activation time (oldest first).
/// Never empty.
struct Snapshot {
    entries: Vec<Entry>,
}

/// writ's signing keys. Cloning is cheap and shares the keys; reading
/// ([`Keyring::current`], [`Keyring::jwks`]) takes no lock: the key set is
/// an atomically swapped snapshot.
#[derive(Clone)]
pub struct Keyring {
    snapshot: Arc<ArcSwap<Snapshot>>,
    config: Arc<KeyringConfig>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.snapshot.load();
        let kids: Vec<&str> = snapshot.entries.iter().map(|e| e.key.kid()).collect();
        f.debug_struct("Keyring").field("kids", &kids).field("config", &self.config).finish()
    }
}

impl Keyring {
    /// Loads the stored keys; on first start (no key usable at `now`),
    /// creates one that signs at once and stores it.
    pub async fn load_or_create(store: &dyn Storage, config: KeyringConfig, now: i64) -> anyhow::Result<Keyring> {
        let mut stored = store.signing_keys().await.context("reading signing keys")?;
        if !stored.iter().any(|k| k.activates_at <= now) {
            let key = generate_key(now, now)?;
            tracing::info!(kid = %key.kid, "created the first signing key {}", key.kid);
            store.insert_signing_key(key).await.context("storing the new signing key")?;
            // Read back rather than use only our own: replicas starting
            // together on an empty database may each have created one, and
            // every replica must publish all of them.
            stored = store.signing_keys().await.context("reading signing keys")?;
        }
        let config = Arc::new(config);
        let snapshot = build_snapshot(&stored, &config, now)?;
        Ok(Keyring { snapshot: Arc::new(ArcSwap::from_pointee(snapshot)), config })
    }

    /// Re-reads the keys from storage, picking up keys that another replica
    /// created. Call it periodically (well within the pre-publication
    /// window) when several replicas share one store.
    pub async fn reload(&self, store: &dyn Storage, now: i64) -> anyhow::Result<()> {
        let stored = store.signing_keys().await.context("reading signing keys")?;
        if !stored.iter().any(|k| k.activates_at <= now) {
            bail!("no stored signing key is active");
        }
        self.snapshot.store(Arc::new(build_snapshot(&stored, &self.config, now)?));
        Ok(())
    }

    /// Starts a rotation: creates a key, stores it and publishes it now; it
    /// signs from `now + prepublication`. Returns the new key's kid.
    pub async fn rotate(&self, store: &dyn Storage, now: i64) -> anyhow::Result<String> {
        let activates_at = now.saturating_add(secs(self.config.prepublication));
        let key = generate_key(now, activates_at)?;
        let kid = key.kid.clone();
        store.insert_signing_key(key).await.context("storing the new signing key")?;
        tracing::info!(kid = %kid, activates_at, "rotating signing key: published {kid}, signs from {activates_at}");
        self.reload(store, now).await?;
        Ok(kid)
    }

    /// The key to sign with now: the newest one whose activation time has
    /// passed.
    pub fn current(&self) -> Arc<SigningKey> {
        self.current_at(unix_now())
    }

    /// [`Keyring::current`] at a given time.
    pub fn current_at(&self, now: i64) -> Arc<SigningKey> {
        let snapshot = self.snapshot.load();
        let entries = &snapshot.entries;
        let active = entries.iter().rev().find(|e| e.activates_at <= now);
        // If the clock stepped back before every activation, the oldest key
        // is the best choice: it is the one verifiers have known longest.
        let entry = active
            .or_else(|| entries.first())
            .expect("a keyring snapshot is never empty: load_or_create and reload ensure a key");
        Arc::clone(&entry.key)
    }

    /// The raw public key of the published key `kid` at `now`, for
    /// verifying writ's own tokens (admin calls, narrowing,
    /// introspection). A retired key is not found: tokens it signed have
    /// expired.
    pub fn public_key_at(&self, kid: &str, now: i64) -> Option<Vec<u8>> {
        let snapshot = self.snapshot.load();
        published(&snapshot.entries, &self.config, now)
            .find(|e| e.key.kid() == kid)
            .map(|e| e.key.public_key_bytes().to_vec())
    }

    /// The JWKS document (`{"keys": […]}`) to publish now.
    pub fn jwks(&self) -> serde_json::Value {
        self.jwks_at(unix_now())
    }

    /// [`Keyring::jwks`] at a given time: every key that is not retired,
    /// including a pre-published next key; newest first.
    pub fn jwks_at(&self, now: i64) -> serde_json::Value {
        let snapshot = self.snapshot.load();
        let keys: Vec<serde_json::Value> =
            published(&snapshot.entries, &self.config, now).rev().map(|e| e.jwk.clone()).collect();
        serde_json::json!({ "keys": keys })
    }
}

/// The entries published at `now`, oldest first.
fn published<'a>(entries: &'a [Entry], config: &KeyringConfig, now: i64) -> impl DoubleEndedIterator<Item = &'a Entry> {
    let keep_for = secs(config.max_token_lifetime).saturating_add(RETIREMENT_MARGIN_SECS);
    entries.iter().enumerate().filter(move |(i, _)| is_published(entries, *i, keep_for, now)).map(|(_, e)| e)
}

/// Whether `entries[i]` is still published: it is, unless a later key
/// activated more than `keep_for` ago (the longest token lifetime plus
/// margin), so that every token `entries[i]` signed has expired. Entries
/// are sorted by activation; a pending key has no active successor and is
/// published.
fn is_published(entries: &[Entry], i: usize, keep_for: i64, now: i64) -> bool {
    let successor = entries[i + 1..].iter().rfind(|n| n.activates_at <= now);
    successor.is_none_or(|n| now < n.activates_at.saturating_add(keep_for))
}

fn build_snapshot(stored: &[StoredSigningKey], config: &KeyringConfig, now: i64) -> anyhow::Result<Snapshot> {
    let mut entries = stored.iter().map(load_key).collect::<anyhow::Result<Vec<_>>>()?;
    entries.sort_by(|a, b| (a.activates_at, a.key.kid()).cmp(&(b.activates_at, b.key.kid())));
    // Retired keys are dropped from memory (the newest active key is never
    // retired, so the snapshot stays non-empty).
    let keep_for = secs(config.max_token_lifetime).saturating_add(RETIREMENT_MARGIN_SECS);
    let keep: Vec<bool> = (0..entries.len()).map(|i| is_published(&entries, i, keep_for, now)).collect();
    let entries: Vec<Entry> = entries.into_iter().zip(keep).filter(|(_, keep)| *keep).map(|(e, _)| e).collect();
    if entries.is_empty() {
        bail!("no signing key to load");
    }
    Ok(Snapshot { entries })
}

/// Parses one stored key and checks it against its kid, so a corrupted or
/// tampered row fails loudly at start instead of signing unverifiable
/// tokens.
fn load_key(stored: &StoredSigningKey) -> anyhow::Result<Entry> {
    if stored.algorithm != SIGNING_ALGORITHM {
        bail!("signing key {}: unsupported algorithm {:?}", stored.kid, stored.algorithm);
    }
    let key = SigningKey::from_pkcs8_der(stored.kid.clone(), stored.private_pkcs8.expose_secret())
        .with_context(|| format!("signing key {}", stored.kid))?;
    if key.public_key_bytes() != stored.public_key.as_slice() {
        bail!("signing key {}: stored public key does not match the private key", stored.kid);
    }
    if jwk_thumbprint(key.public_key_bytes()) != stored.kid {
        bail!("signing key {}: kid is not the key's thumbprint", stored.kid);
    }
    Ok(Entry { jwk: key.public_jwk(), key: Arc::new(key), activates_at: stored.activates_at })
}

/// Generates a fresh Ed25519 key, published from `created_at`, signing from
/// `activates_at`.
fn generate_key(created_at: i64, activates_at: i64) -> anyhow::Result<StoredSigningKey> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).context("generating an ed25519 key")?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).context("parsing the generated key")?;
    let public_key = pair.public_key().as_ref().to_vec();
    Ok(StoredSigningKey {
        kid: jwk_thumbprint(&public_key),
        algorithm: SIGNING_ALGORITHM.to_owned(),
        private_pkcs8: SecretSlice::from(pkcs8.as_ref().to_vec()),
        public_key,
        created_at,
        activates_at,
    })
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 section
/// A.3): base64url SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":"…"}`.
pub fn jwk_thumbprint(public_key: &[u8]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(public_key));
    URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The wall clock, in seconds since the Unix epoch.
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(secs).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use writ_core::token::{CiProvenance, WritClaims, mint};

    use super::*;
    use crate::storage::sqlite::SqliteStore;

    const T0: i64 = 1_900_000_000;
    const HOUR: i64 = 3600;

    fn config() -> KeyringConfig {
        KeyringConfig { prepublication: Duration::from_secs(3600), max_token_lifetime: Duration::from_secs(900) }
    }

    fn kids(jwks: &serde_json::Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .expect("keys array")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    #[test]
    fn thumbprint_matches_rfc8037_example() {
        let x = URL_SAFE_NO_PAD.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").expect("b64");
        assert_eq!(jwk_thumbprint(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[tokio::test]
    async fn first_start_creates_a_key_and_later_starts_reuse_it() {
        let store = SqliteStore::open_in_memory().await.expect("store");
        let first = Keyring::load_or_create(&store, config(), T0).await.expect("create");
        let stored = store.signing_keys().await.expect("keys");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].kid, first.current_at(T0).kid());
        assert_eq!(stored[0].kid, jwk_thumbprint(&stored[0].public_key));

        let again = Keyring::load_or_create(&store, config(), T0 + 10).await.expect("load");
        assert_eq!(again.current_at(T0 + 10).kid(), first.current_at(T0).kid());
        assert_eq!(store.signing_keys().await.expect("keys").len(), 1, "no second key");
    }

    #[tokio::test]
    async fn tokens_signed_with_current_key_verify_against_jwks() {
        let store = SqliteStore::open_in_memory().await.expect("store");
        let ring = Keyring::load_or_create(&store, config(), T0).await.expect("create");
        let claims = WritClaims {
            iss: "https://writ.example.com".into(),
            aud: "https://api.example".into(),
            sub: "github:x".into(),
            client_id: "github:acme/web".into(),
            iat: T0,
            nbf: T0,
            exp: 4_000_000_000,
            jti: "t1".into(),
            scope: "deploy".into(),
            org: "acme".into(),
            apps: None,
            machines: None,
            ci: CiProvenance::default(),
            parent: None,
        };
        let token = mint(&claims, &ring.current_at(T0)).expect("mint");

        let jwks: JwkSet = serde_json::from_value(ring.jwks_at(T0)).expect("jwks parses");
        let kid = jsonwebtoken::decode_header(&token).expect("header").kid.expect("kid");
        let jwk = jwks.find(&kid).expect("signing key is published");
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["https://api.example"]);
        let decoded =
            jsonwebtoken::decode::<WritClaims>(&token, &DecodingKey::from_jwk(jwk).expect("key"), &validation)
                .expect("verifies");
        assert_eq!(decoded.claims, claims);
    }

    #[tokio::test]
    async fn rotation_prepublishes_then_switches_then_retires() {
        let store = SqliteStore::open_in_memory().await.expect("store");
        let ring = Keyring::load_or_create(&store, config(), T0).await.expect("create");
        let old = ring.current_at(T0).kid().to_owned();

        let new = ring.rotate(&store, T0 + 10).await.expect("rotate");
        // Published at once, but the old key keeps signing for an hour.
        assert_eq!(kids(&ring.jwks_at(T0 + 10)), vec![new.clone(), old.clone()]);
        assert_eq!(ring.current_at(T0 + 10 + HOUR - 1).kid(), old);
        assert_eq!(ring.current_at(T0 + 10 + HOUR).kid(), new);

        // The old key stays published while tokens it signed can be valid.
        let switch = T0 + 10 + HOUR;
        let retire = switch + 900 + RETIREMENT_MARGIN_SECS;
        assert_eq!(kids(&ring.jwks_at(retire - 1)), vec![new.clone(), old.clone()]);
        assert_eq!(kids(&ring.jwks_at(retire)), vec![new.clone()]);

        // A restart after retirement loads only the new key.
        let later = Keyring::load_or_create(&store, config(), retire).await.expect("load");
        assert_eq!(kids(&later.jwks_at(retire)), vec![new.clone()]);
        assert_eq!(later.current_at(retire).kid(), new);
    }

    #[tokio::test]
    async fn reload_picks_up_a_key_rotated_by_another_replica() {
        let store = SqliteStore::open_in_memory().await.expect("store");
        let a = Keyring::load_or_create(&store, config(), T0).await.expect("a");
        let b = Keyring::load_or_create(&store, config(), T0).await.expect("b");
        let new = b.rotate(&store, T0 + 1).await.expect("rotate on b");
        assert!(!kids(&a.jwks_at(T0 + 1)).contains(&new));
        a.reload(&store, T0 + 2).await.expect("reload");
        assert!(kids(&a.jwks_at(T0 + 2)).contains(&new));
    }

    #[tokio::test]
    async fn a_stored_key_that_does_not_match_its_kid_is_refused() {
        let store = SqliteStore::open_in_memory().await.expect("store");
        let mut key = generate_key(T0, T0).expect("generate");
        key.kid = "not-the-thumbprint".into();
        store.insert_signing_key(key).await.expect("insert");
        let err = Keyring::load_or_create(&store, config(), T0).await.expect_err("corrupt key");
        assert!(format!("{err:#}").contains("thumbprint"), "{err:#}");
    }

    #[test]
    fn debug_shows_kids_not_private_keys() {
        let key = generate_key(T0, T0).expect("generate");
        let shown = format!("{key:?}");
        let secret = key.private_pkcs8.expose_secret();
        assert!(!shown.contains(&format!("{secret:?}")), "{shown}");

        let snapshot = build_snapshot(std::slice::from_ref(&key), &config(), T0).expect("snapshot");
        let ring = Keyring { snapshot: Arc::new(ArcSwap::from_pointee(snapshot)), config: Arc::new(config()) };
        assert_eq!(format!("{ring:?}"), format!("Keyring {{ kids: [{:?}], config: {:?} }}", key.kid, config()));
    }
}
