//! The operator's key-encryption key: how writ's signing keys are kept
//! encrypted at rest in a shared database.
//!
//! With PostgreSQL, several replicas must sign with the same keys, so the
//! keys live in the database every replica reads. A database is reachable
//! over the network and copied into backups, dumps and replicas that more
//! people can read than writ's host; a private key stored in the clear
//! there would let any of them mint tokens for every org. So each private
//! key is sealed with AES-256-GCM under a 256-bit key that only the writ
//! replicas hold (`[storage] key_encryption_key_file`, distributed like any
//! other deployment secret), with the key's `kid` as associated data: a
//! sealed key moved to another row does not open. Reading the database
//! alone yields public keys and ciphertext.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretSlice;

use super::StorageError;

/// Length of a key-encryption key in bytes (AES-256).
pub const KEK_LEN: usize = 32;

/// Domain separation of [`KeyEncryptionKey::id`].
const ID_CONTEXT: &[u8] = b"writ key-encryption key id v1\0";

/// Domain separation of the associated data: a sealed signing key of this
/// format, for one `kid`.
const AAD_CONTEXT: &str = "writ signing key v1:";

/// A 256-bit AES-GCM key that seals signing keys in the database. Its
/// `Debug` shows only its [`id`](KeyEncryptionKey::id). Cloning shares it.
#[derive(Clone)]
pub struct KeyEncryptionKey {
    key: Arc<RandomizedNonceKey>,
    id: String,
}

impl fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEncryptionKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why a key-encryption key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// Not base64.
    #[error("not base64; generate one with `openssl rand -base64 32`")]
    NotBase64,
    /// Base64 of the wrong length.
    #[error("decodes to {0} bytes, not {KEK_LEN}; generate one with `openssl rand -base64 32`")]
    WrongLength(usize),
}

impl KeyEncryptionKey {
    /// Parses the standard base64 of 32 random bytes (surrounding
    /// whitespace, such as a final newline, is ignored).
    pub fn from_base64(text: &str) -> Result<KeyEncryptionKey, KekError> {
        let bytes = SecretSlice::from(STANDARD.decode(text.trim()).map_err(|_| KekError::NotBase64)?);
        Self::from_bytes(secrecy::ExposeSecret::expose_secret(&bytes))
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<KeyEncryptionKey, KekError> {
        if bytes.len() != KEK_LEN {
            return Err(KekError::WrongLength(bytes.len()));
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| KekError::WrongLength(bytes.len()))?;
        // A short, public name for the key: a hash of 256 random bits
        // reveals nothing about them.
        let mut input = ID_CONTEXT.to_vec();
        input.extend_from_slice(bytes);
        let hash = digest(&SHA256, &input);
        let id = hash.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(KeyEncryptionKey { key: Arc::new(key), id })
    }

    /// The key's public name, stored beside every key it sealed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals the private key of signing key `kid`: nonce, then ciphertext
    /// and tag.
    pub fn seal(&self, kid: &str, private_key: &[u8]) -> Result<Vec<u8>, StorageError> {
        let mut in_out = private_key.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad(kid)), &mut in_out)
            .map_err(|_| StorageError::other("sealing a signing key failed"))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&in_out);
        // The plaintext copy in `in_out` was overwritten in place.
        Ok(sealed)
    }

    /// Opens what [`KeyEncryptionKey::seal`] sealed for `kid`. Fails when
    /// the ciphertext, the `kid` or the key differ.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<SecretSlice<u8>, StorageError> {
        let refused = || {
            StorageError::other(format!(
                "signing key {kid} does not decrypt under key-encryption key {}: the stored key is corrupt or was \
                 sealed for another kid",
                self.id
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut in_out = SecretSlice::from(ciphertext.to_vec());
        let len = {
            let buf = secrecy::ExposeSecretMut::expose_secret_mut(&mut in_out);
            self.key.open_in_place(nonce, Aad::from(aad(kid)), buf).map_err(|_| refused())?.len()
        };
        let plain = secrecy::ExposeSecret::expose_secret(&in_out)[..len].to_vec();
        Ok(SecretSlice::from(plain))
    }
}

fn aad(kid: &str) -> Vec<u8> {
    format!("{AAD_CONTEXT}{kid}").into_bytes()
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn kek(byte: u8) -> KeyEncryptionKey {
        KeyEncryptionKey::from_bytes(&[byte; KEK_LEN]).expect("32 bytes")
    }

    #[test]
    fn sealed_keys_open_only_with_the_same_key_and_kid() {
        let sealed = kek(1).seal("kid-a", b"private key").expect("seal");
        assert!(!sealed.windows(11).any(|w| w == b"private key"), "ciphertext hides the key");
        assert_eq!(kek(1).open("kid-a", &sealed).expect("open").expose_secret(), b"private key");
        assert!(kek(2).open("kid-a", &sealed).is_err(), "another key-encryption key");
        assert!(kek(1).open("kid-b", &sealed).is_err(), "moved to another kid");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(kek(1).open("kid-a", &tampered).is_err(), "tampered");
        assert!(kek(1).open("kid-a", &sealed[..5]).is_err(), "truncated");
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(kek(1).seal("k", b"x").expect("seal"), kek(1).seal("k", b"x").expect("seal"));
    }

    #[test]
    fn parses_base64_of_32_bytes_only() {
        let text = format!("{}\n", STANDARD.encode([7u8; KEK_LEN]));
        assert_eq!(KeyEncryptionKey::from_base64(&text).expect("parses").id(), kek(7).id());
        assert!(matches!(KeyEncryptionKey::from_base64("not base64!"), Err(KekError::NotBase64)));
        assert!(matches!(KeyEncryptionKey::from_base64(&STANDARD.encode([1u8; 16])), Err(KekError::WrongLength(16))));
    }

    #[test]
    fn debug_shows_the_id_only() {
        let k = kek(3);
        assert_eq!(format!("{k:?}"), format!("KeyEncryptionKey {{ id: {:?}, .. }}", k.id()));
        assert_ne!(k.id(), kek(4).id());
    }
}
