//! Fleet-wide rate limits in Redis: GCRA in one Lua script per check, on Redis's own clock (`TIME`), so replicas
//! need no clock agreement. A key holds its theoretical arrival time and expires when its budget is whole again.
//! Limited values (phone numbers, caller ids) never appear in Redis: key names carry an HMAC-SHA256 of them, keyed
//! by a key derived from the cluster's encryption key.

use std::time::Duration;

use aws_lc_rs::hmac;
use futures_util::future::{BoxFuture, FutureExt};
use redis::Script;
use std::sync::{Arc, LazyLock, Weak};

use super::Inner;
use crate::rate_limit::{Rate, SharedLimits};

/// KEYS: the limit's key. ARGV: interval µs, burst tolerance µs (interval × (burst − 1)).
/// Answers 0 when allowed, else the µs to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return math.max(1, allow_at - now) end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return 0
";

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// The fleet's rate limits.
#[derive(Debug)]
pub(super) struct RedisLimits {
    cluster: Weak<Inner>,
    /// Keys the HMAC of limited values; derived from the encryption key, so it never leaves the replicas.
    names: HmacKey,
}

struct HmacKey(hmac::Key);

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl RedisLimits {
    pub(super) fn new(cluster: &Arc<Inner>, encryption_key: &[u8]) -> Self {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, encryption_key),
            b"credgate rate-limit key names",
        );
        Self {
            cluster: Arc::downgrade(cluster),
            names: HmacKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())),
        }
    }

    fn key(&self, prefix: &str, scope: &str, key: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.names.0);
        ctx.update(scope.as_bytes());
        ctx.update(b"\0");
        ctx.update(key.as_bytes());
        let tag = ctx.sign();
        let hex: String = tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{prefix}limit:{scope}:{hex}")
    }

    async fn check_inner(
        &self,
        scope: &str,
        key: &str,
        rate: Rate,
    ) -> Option<Result<(), Duration>> {
        let c = self.cluster.upgrade().filter(|c| c.is_up())?;
        let name = self.key(&c.prefix, scope, key);
        let interval = u64::try_from(rate.interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let tolerance = interval.saturating_mul(u64::from(rate.burst.saturating_sub(1)));
        let wait = c
            .call("rate limit", |mut conn| async move {
                GCRA_SCRIPT
                    .key(&name)
                    .arg(interval)
                    .arg(tolerance)
                    .invoke_async::<u64>(&mut conn)
                    .await
            })
            .await?;
        Some(if wait == 0 {
            Ok(())
        } else {
            Err(Duration::from_micros(wait))
        })
    }
}

impl SharedLimits for RedisLimits {
    fn check<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        rate: Rate,
    ) -> BoxFuture<'a, Option<Result<(), Duration>>> {
        self.check_inner(scope, key, rate).boxed()
    }
}
