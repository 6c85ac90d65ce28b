//! The verified-token cache: a token seen again skips signature verification (time and route checks still run on
//! every hit). Bounded by weight; an entry never outlives its token's `exp`; an entry is only honoured while the exact
//! key it was verified with is still in its issuer's key set, so a key removed from the JWKS stops validating cached
//! tokens at once.
//!
//! Keying: the cache compares the whole token on every hit, and hashes only the signature's last bytes. A signature
//! is unpredictable to anyone without the issuer's private key and only verified tokens are ever inserted, so the
//! tail spreads entries as well as the whole token would, at a fraction of the cost: hashing the whole token with
//! SHA-256 alone costs more than the 300 ns a hit may take (see `benches/caller_auth.rs`). Tokens are held as
//! [`SecretString`]s, zeroed when the entry goes.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Equivalent;
use moka::sync::Cache;
use secrecy::{ExposeSecret, SecretString};

use super::keys::Key;
use crate::config::secret::constant_time_eq;

/// What a successful verification established, shared by every later hit of the same token.
#[derive(Debug)]
pub struct Verified {
    /// Index of the issuer in [`super::CallerAuth`].
    pub issuer: usize,
    /// The key the signature was checked with.
    pub key: Arc<Key>,
    /// `exp`, seconds since the epoch.
    pub exp: i64,
    /// `nbf`, when present.
    pub nbf: Option<i64>,
    /// `iat`, when present.
    pub iat: Option<i64>,
    /// Scopes from `scope` (space-delimited) and `scp`.
    pub scopes: Box<[Box<str>]>,
    /// Every claim, for route requirements.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Claims that can be forwarded as headers, prepared once.
    pub header_values: Box<[(Box<str>, http::HeaderValue)]>,
    /// Who the token speaks for, unique across issuers: `iss`, a newline and `sub`; `None` without a string `sub`.
    pub subject: Option<Box<str>>,
}

/// Largest total weight (approximate bytes) the cache holds.
const MAX_WEIGHT: u64 = 64 * 1024 * 1024;
/// How many trailing bytes of a token feed the hash.
const HASHED_TAIL: usize = 32;

fn hash_tail<H: Hasher>(token: &[u8], state: &mut H) {
    token[token.len().saturating_sub(HASHED_TAIL)..].hash(state);
}

/// A cached token, zeroed on drop.
struct TokenKey(SecretString);

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_tail(self.0.expose_secret().as_bytes(), state);
    }
}

impl PartialEq for TokenKey {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.0, other.0.expose_secret().as_bytes())
    }
}

impl Eq for TokenKey {}

/// A presented token, for lookups without copying it.
struct Presented<'a>(&'a [u8]);

impl Hash for Presented<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_tail(self.0, state);
    }
}

impl Equivalent<TokenKey> for Presented<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        // A presented token against another caller's cached one: no early exit to time.
        constant_time_eq(&key.0, self.0)
    }
}

struct UntilExp;

impl moka::Expiry<TokenKey, Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Arc<Verified>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.exp.saturating_sub(crate::unix_time::now_secs());
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

/// The cache.
pub(crate) struct VerifiedCache {
    inner: Cache<TokenKey, Arc<Verified>>,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("entries", &self.inner.entry_count())
            .finish()
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self {
            inner: Cache::builder()
                .max_capacity(MAX_WEIGHT)
                .weigher(|k: &TokenKey, v: &Arc<Verified>| {
                    let claims = v.claims.len() * 64;
                    u32::try_from(k.0.expose_secret().len() + claims + 256).unwrap_or(u32::MAX)
                })
                .expire_after(UntilExp)
                .build(),
        }
    }
}

impl VerifiedCache {
    /// The entry for exactly this token.
    pub(crate) fn get(&self, token: &[u8]) -> Option<Arc<Verified>> {
        self.inner.get(&Presented(token))
    }

    /// Remember a verified token.
    pub(crate) fn insert(&self, token: &str, v: Arc<Verified>) {
        self.inner
            .insert(TokenKey(SecretString::from(token.to_owned())), v);
    }

    /// Forget a token (its key went away, or a benchmark wants a miss).
    pub(crate) fn remove(&self, token: &[u8]) {
        self.inner.invalidate(&Presented(token));
    }
}
