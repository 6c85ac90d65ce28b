//! Tokens at rest in Redis: AES-256-GCM with a random 96-bit nonce per value (aws-lc-rs), bound by associated data
//! to the key and generation it is stored under, so that a value copied to another key or generation does not open.
//! A sealed value is `base64(nonce || ciphertext || tag)`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox};

/// The cluster's token key.
pub(crate) struct Sealer {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(AES-256-GCM)")
    }
}

/// A value that does not open: a wrong key, tampering, or not a sealed value at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "a value in Redis does not decrypt with cluster.encryption_key (another key, or tampered with)"
)]
pub(crate) struct Unsealable;

impl Sealer {
    /// A sealer with `key`.
    pub(crate) fn new(key: &SecretBox<[u8; 32]>) -> Self {
        Self {
            // Only a wrong key length fails, and the type fixes it at 32 bytes.
            key: RandomizedNonceKey::new(&AES_256_GCM, key.expose_secret())
                .unwrap_or_else(|_| unreachable!("AES-256 takes a 32-byte key")),
        }
    }

    /// Encrypt `plain` for the slot named `aad`.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> String {
        let mut buf = plain.to_vec();
        // Sealing fails only past GCM's 64 GiB limit per value.
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut buf)
            .unwrap_or_else(|_| unreachable!("a token is far below GCM's size limit"));
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
    }

    /// Decrypt a value sealed for the slot named `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &str) -> Result<Vec<u8>, Unsealable> {
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(sealed)
            .map_err(|_| Unsealable)?;
        if raw.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| Unsealable)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&SecretBox::new(Box::new([b; 32])))
    }

    #[test]
    fn opens_only_with_its_key_and_slot() {
        let s = sealer(1);
        let sealed = s.seal(b"k:1", b"the-token");
        assert!(!sealed.contains("the-token"));
        assert_eq!(s.open(b"k:1", &sealed).expect("opens"), b"the-token");
        assert_ne!(
            s.seal(b"k:1", b"the-token"),
            sealed,
            "a fresh nonce each time"
        );
        assert!(s.open(b"k:2", &sealed).is_err(), "another slot");
        assert!(sealer(2).open(b"k:1", &sealed).is_err(), "another key");
        assert!(s.open(b"k:1", "not base64!").is_err());
        assert!(s.open(b"k:1", "AAAA").is_err());
    }
}
