//! One credential's token, shared by the fleet through Redis. Two keys per credential, under one hash tag so that a
//! Redis Cluster keeps them on one shard: `{prefix}{name}:token` holds `"{generation}.{sealed}"` (the token,
//! its times and refresh token, AES-GCM-sealed; it expires with the token's usable life) and `{prefix}{name}:lease`
//! holds the fencing value of the replica fetching now (`SET NX PX`, so a replica that dies mid-fetch loses it).
//!
//! Each step is one Lua script, so that it is atomic: [`OBTAIN`] hands back the stored token unless it is the one
//! being replaced (deleting it first when an upstream rejected it: compare-and-delete, so a newer token survives),
//! else takes the lease, else says who holds it. [`STORE`] stores a token only while the fence still holds the
//! lease, and announces it on the channel; every replica then reads it instead of fetching. A replica that finds
//! the lease held waits for that announcement, with the lease's expiry as the bound, and never polls faster.

use std::sync::{LazyLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

use futures_util::future::{BoxFuture, FutureExt};
use rand::Rng as _;
use redis::Script;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Inner;
use crate::credentials::config::TokenSettings;
use crate::credentials::fleet::{FleetToken, Obtained, Replacing, SharedToken};
use crate::credentials::source::{FetchedToken, TokenError};

/// KEYS: token, lease. ARGV: generation being replaced (or ""), "1" to delete it, fence, lease ms.
/// Answers `T<value>` (the stored token), `L` (lease taken), `H<ms>` (held for ms more) or `B<ms>` (backing off).
const OBTAIN: &str = r"
local tok = redis.call('GET', KEYS[1])
if tok then
  local gen = string.match(tok, '^(%d+)%.')
  if gen ~= ARGV[1] then return 'T' .. tok end
  if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return 'L' end
local holder = redis.call('GET', KEYS[2]) or ''
local ttl = redis.call('PTTL', KEYS[2])
if string.sub(holder, 1, 8) == 'backoff:' then return 'B' .. ttl end
return 'H' .. ttl
";

/// KEYS: token, lease. ARGV: fence, value, ttl ms, channel, message. 1 when stored, 0 when the lease was lost.
const STORE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

/// KEYS: lease. ARGV: fence, backoff ms, channel, message. The failed fetcher's lease becomes the fleet's backoff,
/// and waiters are woken to see it.
const BACK_OFF: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'backoff:' .. ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

static OBTAIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(OBTAIN));
static STORE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(STORE));
static BACK_OFF_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BACK_OFF));

/// What is sealed: the token and what a replica needs to use it as its own.
/// Its secrets are wiped when it is dropped, as is the JSON they are written to.
#[derive(Serialize, Deserialize)]
struct Stored {
    token: Zeroizing<String>,
    expires_unix_ms: u64,
    fetched_unix_ms: u64,
    refresh_token: Option<Zeroizing<String>>,
}

/// What [`OBTAIN`] answered.
enum Step {
    Token(String),
    Lease,
    Held(Duration),
    BackingOff(Duration),
}

impl Step {
    fn parse(s: &str) -> Option<Self> {
        // PTTL answers -2 for a lease gone between the steps: no wait.
        let ms = |rest: &str| {
            rest.parse::<i64>()
                .ok()
                .map(|n| Duration::from_millis(n.try_into().unwrap_or(0)))
        };
        match s.split_at_checked(1)? {
            ("T", v) => Some(Step::Token(v.to_owned())),
            ("L", _) => Some(Step::Lease),
            ("H", left) => ms(left).map(Step::Held),
            ("B", left) => ms(left).map(Step::BackingOff),
            _ => None,
        }
    }
}

/// One credential's token in Redis.
#[derive(Debug)]
pub(super) struct RedisToken {
    cluster: Weak<Inner>,
    name: String,
    token_key: String,
    lease_key: String,
    /// How long a lease holds: the token request's timeout and a second; a holder that dies is replaced after it.
    lease: Duration,
    expiry_margin: Duration,
    /// Cloned for each wait, so a wait sees only announcements made after it began.
    announced: watch::Receiver<u64>,
    /// The adopter's own receiver: announcements made while it adopts one are not lost.
    follower: tokio::sync::Mutex<watch::Receiver<u64>>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration as whole milliseconds for Redis, at least 1 (0 is an error for `PX`).
fn px(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisToken {
    pub(super) fn new(
        cluster: Weak<Inner>,
        prefix: &str,
        name: &str,
        settings: &TokenSettings,
        announced: watch::Receiver<u64>,
    ) -> Self {
        Self {
            cluster,
            name: name.to_owned(),
            token_key: format!("{prefix}{{{name}}}:token"),
            lease_key: format!("{prefix}{{{name}}}:lease"),
            lease: settings.timeout.saturating_add(Duration::from_secs(1)),
            expiry_margin: settings.expiry_margin,
            follower: tokio::sync::Mutex::new(announced.clone()),
            announced,
        }
    }

    /// The associated data a value is sealed under: its key and generation.
    fn aad(&self, generation: u64) -> Vec<u8> {
        format!("{}:{generation}", self.token_key).into_bytes()
    }

    fn seal(&self, c: &Inner, generation: u64, t: &FetchedToken) -> Option<(String, Duration)> {
        let now = Instant::now();
        let sys = SystemTime::now();
        let lifetime = t.expires_at.saturating_duration_since(now);
        // The same margin as the cache's: no replica reads a token it may no longer attach.
        let usable = lifetime.saturating_sub(self.expiry_margin.min(lifetime / 10));
        if usable.is_zero() {
            return None;
        }
        let plain = Zeroizing::new(
            serde_json::to_vec(&Stored {
                token: Zeroizing::new(t.token.expose_secret().to_owned()),
                expires_unix_ms: unix_ms(sys + lifetime),
                fetched_unix_ms: unix_ms(sys),
                refresh_token: t
                    .refresh_token
                    .as_ref()
                    .map(|r| Zeroizing::new(r.expose_secret().to_owned())),
            })
            .ok()?,
        );
        let sealed = c.sealer.seal(&self.aad(generation), &plain);
        Some((format!("{generation}.{sealed}"), usable))
    }

    /// A stored value as a token; `None` (logged once) when it does not open.
    fn open(&self, c: &Inner, value: &str) -> Option<FleetToken> {
        let opened = value.split_once('.').and_then(|(g, sealed)| {
            let generation: u64 = g.parse().ok()?;
            let plain = c.sealer.open(&self.aad(generation), sealed).ok()?;
            let s: Stored = serde_json::from_slice(&plain).ok()?;
            Some((generation, s))
        });
        let Some((generation, mut s)) = opened else {
            c.unsealable(&self.token_key);
            return None;
        };
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        Some(FleetToken {
            token: FetchedToken {
                token: SecretString::from(std::mem::take(&mut *s.token)),
                expires_at: now + Duration::from_millis(s.expires_unix_ms.saturating_sub(now_ms)),
                refresh_token: s
                    .refresh_token
                    .as_mut()
                    .map(|r| SecretString::from(std::mem::take(&mut **r))),
            },
            generation,
            fetched_at: now
                .checked_sub(Duration::from_millis(
                    now_ms.saturating_sub(s.fetched_unix_ms),
                ))
                .unwrap_or(now),
        })
    }

    async fn local(
        &self,
        c: Option<&Inner>,
        fetch: BoxFuture<'_, Result<FetchedToken, TokenError>>,
    ) -> Result<Obtained, TokenError> {
        let t = fetch.await?;
        if let Some(c) = c {
            c.count(&self.name, "local");
        }
        Ok(Obtained::Local(t))
    }

    async fn obtain_inner(
        &self,
        replacing: Replacing,
        backoff: Duration,
        fetch: BoxFuture<'_, Result<FetchedToken, TokenError>>,
    ) -> Result<Obtained, TokenError> {
        let Some(c) = self.cluster.upgrade() else {
            return self.local(None, fetch).await;
        };
        if !c.is_up() {
            return self.local(Some(&c), fetch).await;
        }
        let (stale, delete) = match replacing {
            Replacing::Nothing => (String::new(), "0"),
            Replacing::Renewing(g) => (g.to_string(), "0"),
            Replacing::Rejected(g) => (g.to_string(), "1"),
        };
        let fence = format!("{}:{:016x}", c.node_id, rand::thread_rng().r#gen::<u64>());
        let lease_ms = px(self.lease);
        // A holder that died is waited for once, for its lease; past twice that, this replica fetches on its own.
        let deadline = Instant::now() + self.lease.saturating_mul(2);
        let mut announced = self.announced.clone();
        announced.borrow_and_update();
        loop {
            let answer = c
                .call("obtain", |mut conn| {
                    let (tk, lk, stale, fence) = (&self.token_key, &self.lease_key, &stale, &fence);
                    async move {
                        OBTAIN_SCRIPT
                            .key(tk)
                            .key(lk)
                            .arg(stale)
                            .arg(delete)
                            .arg(fence)
                            .arg(lease_ms)
                            .invoke_async::<String>(&mut conn)
                            .await
                    }
                })
                .await;
            let Some(step) = answer.as_deref().and_then(Step::parse) else {
                return self.local(Some(&c), fetch).await;
            };
            match step {
                Step::Token(v) => {
                    let Some(t) = self.open(&c, &v) else {
                        return self.local(Some(&c), fetch).await;
                    };
                    c.count(&self.name, "fleet");
                    return Ok(Obtained::Fleet(t));
                }
                Step::Lease => return self.fetch_for_fleet(&c, &fence, backoff, fetch).await,
                Step::BackingOff(left) => return Err(TokenError::FleetBackingOff(left)),
                Step::Held(left) => {
                    let now = Instant::now();
                    if now >= deadline {
                        tracing::warn!(credential = %self.name, node = %c.node_id, "another replica has held the token lease too long; fetching on this replica");
                        return self.local(Some(&c), fetch).await;
                    }
                    let wait = left
                        .clamp(Duration::from_millis(10), self.lease)
                        .min(deadline - now);
                    if let Ok(Err(_)) = tokio::time::timeout(wait, announced.changed()).await {
                        // The gateway is going away.
                        return self.local(Some(&c), fetch).await;
                    }
                }
            }
        }
    }

    /// This replica holds the lease: fetch, then store the token for the fleet and announce it, or on failure turn
    /// the lease into the fleet's backoff.
    async fn fetch_for_fleet(
        &self,
        c: &Inner,
        fence: &str,
        backoff: Duration,
        fetch: BoxFuture<'_, Result<FetchedToken, TokenError>>,
    ) -> Result<Obtained, TokenError> {
        let channel = c.channel();
        let t = match fetch.await {
            Ok(t) => t,
            Err(e) => {
                let message = format!("0 {}", self.name);
                c.call("back off", |mut conn| async move {
                    BACK_OFF_SCRIPT
                        .key(&self.lease_key)
                        .arg(fence)
                        .arg(px(backoff))
                        .arg(&channel)
                        .arg(&message)
                        .invoke_async::<i64>(&mut conn)
                        .await
                })
                .await;
                return Err(e);
            }
        };
        let generation = rand::thread_rng().gen_range(1..u64::MAX);
        let Some((value, ttl)) = self.seal(c, generation, &t) else {
            // Already past its usable life: the cache refuses it, as it would a local one.
            return Ok(Obtained::Local(t));
        };
        let message = format!("{generation} {}", self.name);
        let stored = c
            .call("store", |mut conn| async move {
                STORE_SCRIPT
                    .key(&self.token_key)
                    .key(&self.lease_key)
                    .arg(fence)
                    .arg(&value)
                    .arg(px(ttl))
                    .arg(&channel)
                    .arg(&message)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match stored {
            Some(1) => {
                c.count(&self.name, "fetched");
                Ok(Obtained::Fleet(FleetToken {
                    token: t,
                    generation,
                    fetched_at: Instant::now(),
                }))
            }
            Some(_) => {
                tracing::warn!(credential = %self.name, node = %c.node_id, lease = ?self.lease,
                    "the token request outlasted the fleet lease; this token serves this replica only");
                c.count(&self.name, "local");
                Ok(Obtained::Local(t))
            }
            None => {
                c.count(&self.name, "local");
                Ok(Obtained::Local(t))
            }
        }
    }

    async fn next_announced_inner(&self, have: Option<u64>) -> Option<FleetToken> {
        let mut rx = self.follower.lock().await;
        loop {
            rx.changed().await.ok()?;
            let g = *rx.borrow_and_update();
            if g == 0 || Some(g) == have {
                continue;
            }
            let c = self.cluster.upgrade()?;
            let key = &self.token_key;
            let value = c
                .call("read", |mut conn| async move {
                    redis::cmd("GET")
                        .arg(key)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                })
                .await
                .flatten();
            if let Some(t) = value.and_then(|v| self.open(&c, &v))
                && Some(t.generation) != have
            {
                return Some(t);
            }
        }
    }
}

impl SharedToken for RedisToken {
    fn obtain<'a>(
        &'a self,
        replacing: Replacing,
        backoff: Duration,
        fetch: BoxFuture<'a, Result<FetchedToken, TokenError>>,
    ) -> BoxFuture<'a, Result<Obtained, TokenError>> {
        self.obtain_inner(replacing, backoff, fetch).boxed()
    }

    fn next_announced(&self, have: Option<u64>) -> BoxFuture<'_, Option<FleetToken>> {
        self.next_announced_inner(have).boxed()
    }
}
