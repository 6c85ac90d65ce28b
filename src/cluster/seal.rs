//! Tokens at rest in Redis: AES-256-GCM with a random 96-bit nonce per value (aws-lc-rs), bound by associated data
//! to the key and generation it is stored under, so that a value copied to another key or generation does not open.
//! A sealed value is `base64(nonce || ciphertext || tag)`. Values are sealed with the configured key and opened with it
//! or any of `cluster.decryption_keys`, so that a fleet can rotate its key without a moment of unreadable tokens.
//! Opened plaintext is wiped when dropped.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

/// The cluster's token key, and the keys it also opens with.
pub(crate) struct Sealer {
    key: RandomizedNonceKey,
    also: Vec<RandomizedNonceKey>,
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
    /// A sealer with `key` that also opens what `also` sealed.
    pub(crate) fn new(key: &SecretBox<[u8; 32]>, also: &[SecretBox<[u8; 32]>]) -> Self {
        // Only a wrong key length fails, and the type fixes it at 32 bytes.
        let aead = |k: &SecretBox<[u8; 32]>| {
            RandomizedNonceKey::new(&AES_256_GCM, k.expose_secret())
                .unwrap_or_else(|_| unreachable!("AES-256 takes a 32-byte key"))
        };
        Self {
            key: aead(key),
            also: also.iter().map(aead).collect(),
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

    /// Decrypt a value sealed for the slot named `aad`, with the key or any other it opens with.
    pub(crate) fn open(&self, aad: &[u8], sealed: &str) -> Result<Zeroizing<Vec<u8>>, Unsealable> {
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(sealed)
            .map_err(|_| Unsealable)?;
        if raw.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        for key in std::iter::once(&self.key).chain(&self.also) {
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealable)?;
            let mut buf = Zeroizing::new(ct.to_vec());
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(aad), &mut buf) {
                let len = plain.len();
                buf.truncate(len);
                return Ok(buf);
            }
        }
        Err(Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretBox<[u8; 32]> {
        SecretBox::new(Box::new([b; 32]))
    }

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&key(b), &[])
    }

    #[test]
    fn opens_only_with_its_key_and_slot() {
        let s = sealer(1);
        let sealed = s.seal(b"k:1", b"the-token");
        assert!(!sealed.contains("the-token"));
        assert_eq!(
            s.open(b"k:1", &sealed).expect("opens").as_slice(),
            b"the-token"
        );
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

    #[test]
    fn a_rotation_opens_with_either_key_and_seals_with_the_new_one() {
        let old = sealer(1);
        let rotating = Sealer::new(&key(2), &[key(1)]);
        let by_old = old.seal(b"k:1", b"old-token");
        assert_eq!(
            rotating.open(b"k:1", &by_old).expect("opens").as_slice(),
            b"old-token"
        );
        let by_new = rotating.seal(b"k:1", b"new-token");
        assert!(
            old.open(b"k:1", &by_new).is_err(),
            "sealed with the new key only"
        );
        assert_eq!(
            sealer(2).open(b"k:1", &by_new).expect("opens").as_slice(),
            b"new-token"
        );
        assert!(
            rotating.open(b"k:2", &by_old).is_err(),
            "still bound to its slot"
        );
    }
}
