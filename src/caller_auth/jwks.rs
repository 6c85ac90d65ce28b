//! One issuer at run time: its key set (published by [`ArcSwap`], read lock-free on the request path), and the JWKS
//! fetching that feeds it — at startup, on a refresh schedule honouring `Cache-Control: max-age` within bounds, and on
//! an unknown `kid` (single flight, at most one per interval, unknown kids remembered). A failed fetch keeps the last
//! good keys until `max_staleness`, and is retried with [`Backoff`]. Requests never wait on a lock: a fetch runs in
//! its own task ([`Flight`]) and waiters await its landing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use headers::{CacheControl, HeaderMapExt as _};
use http::header::ACCEPT;
use http::{HeaderValue, Request, StatusCode};
use jsonwebtoken::jwk::JwkSet;

use super::config::{IssuerConfig, JwksConfig};
use super::keys::{self, KeySet};
use crate::body;
use crate::http_client::{self, FetchError, HttpClient};
use crate::metrics::{IssuerCounters, Metrics};
use crate::refresh::{Backoff, Flight, Landing};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// First retry delay after a failed fetch; doubles up to [`MAX_BACKOFF`] (or the refresh interval, when shorter).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a JWKS fetch failed; safe to log (no response content).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    /// Transport failure or timeout.
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// The IdP answered with an error status.
    #[error("status {0}")]
    Status(StatusCode),
    /// The body is not a JWKS.
    #[error("not a JWKS document")]
    Parse,
    /// The JWKS has no key credgate can use.
    #[error("JWKS has no usable signing key")]
    NoUsableKey,
    /// The request could not be built.
    #[error("bad request")]
    Request,
}

/// What a fetch hands its waiters: the response's `max-age`, or the error text.
type FetchResult = Result<Option<Duration>, String>;

#[derive(Debug, Default)]
struct Fetches {
    flight: Flight<FetchResult>,
    last_unknown_kid_fetch: Option<Instant>,
}

#[derive(Debug, Default)]
struct Status {
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// An issuer's config and live key set.
#[derive(Debug)]
pub(crate) struct Issuer {
    /// Its validated config.
    pub cfg: IssuerConfig,
    keys: ArcSwap<KeySet>,
    fetcher: Option<Fetcher>,
    /// Set once its background work started: an issuer kept across a reload is not started twice.
    started: AtomicBool,
}

#[derive(Debug)]
struct Fetcher {
    cfg: JwksConfig,
    http: HttpClient,
    counters: IssuerCounters,
    fetches: Mutex<Fetches>,
    status: Mutex<Status>,
    unknown_kids: moka::sync::Cache<Box<str>, ()>,
}

/// Whether a kid miss may be retried after a refetch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refetch {
    /// A fetch completed; look again.
    Done,
    /// No fetch now: rate-limited, remembered as unknown, or no JWKS.
    Skipped,
}

impl Issuer {
    /// Build with static keys in force; JWKS keys come with the first fetch.
    pub(crate) fn new(cfg: IssuerConfig, http: &HttpClient, metrics: &Arc<Metrics>) -> Self {
        let keys = ArcSwap::from_pointee(KeySet::new(cfg.static_keys.clone(), None));
        let fetcher = cfg.jwks.clone().map(|j| Fetcher {
            unknown_kids: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(j.unknown_kid_refetch_interval)
                .build(),
            cfg: j,
            http: http.clone(),
            counters: metrics.issuer(&cfg.name),
            fetches: Mutex::default(),
            status: Mutex::default(),
        });
        Self {
            cfg,
            keys,
            fetcher,
            started: AtomicBool::new(false),
        }
    }

    /// True the first time only: whoever gets it starts the issuer's background work.
    pub(crate) fn claim_start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// The key set in force.
    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// What an operator sees of this issuer (the admin API): its keys by id and type, the JWKS age, the last error.
    pub(crate) fn status(&self) -> serde_json::Value {
        let set = self.keys.load();
        let keys: Vec<_> = set
            .iter()
            .map(|k| serde_json::json!({"kid": k.kid(), "type": k.key_type()}))
            .collect();
        let last_error = self
            .fetcher
            .as_ref()
            .and_then(|f| f.status.lock().ok().and_then(|s| s.last_error.clone()));
        serde_json::json!({
            "name": self.cfg.name,
            "issuer": self.cfg.issuer,
            "ready": !set.is_empty(),
            "keys": keys,
            "jwks": self.fetcher.is_some(),
            "jwks_age_secs": set.fetched_at.map(|at| at.elapsed().as_secs()),
            "last_error": last_error,
        })
    }

    /// Refetch the JWKS now (joining a fetch in flight) without waiting for it; false without a JWKS.
    pub(crate) fn refresh_now(self: &Arc<Self>) -> bool {
        self.join_or_start(false).is_some()
    }

    /// Readiness row: (ready, detail).
    pub(crate) fn readiness(&self) -> (bool, String) {
        let set = self.keys.load();
        let mut detail = format!("{} keys", set.len());
        if let Some(at) = set.fetched_at {
            detail.push_str(&format!("; JWKS fetched {}s ago", at.elapsed().as_secs()));
        }
        if let Some(f) = &self.fetcher
            && let Ok(st) = f.status.lock()
        {
            if st.last_ok.is_none() {
                detail.push_str("; JWKS not fetched yet");
            }
            if let Some(e) = &st.last_error {
                detail.push_str("; last fetch error: ");
                detail.push_str(e);
            }
        }
        (!set.is_empty(), detail)
    }

    /// An unknown `kid` was presented: refetch (single flight, rate-limited) and wait for it, unless this kid was
    /// just found unknown or the interval has not passed.
    pub(crate) async fn refetch_for_unknown_kid(self: &Arc<Self>, kid: Option<&str>) -> Refetch {
        let Some(f) = &self.fetcher else {
            return Refetch::Skipped;
        };
        if let Some(kid) = kid
            && f.unknown_kids.contains_key(kid)
        {
            return Refetch::Skipped;
        }
        let Some(landing) = self.join_or_start(true) else {
            return Refetch::Skipped;
        };
        let waited = tokio::time::timeout(f.cfg.fetch_timeout + Duration::from_secs(1), landing)
            .await
            .is_ok();
        if !waited {
            return Refetch::Skipped;
        }
        Refetch::Done
    }

    /// Remember that `kid` was not in a fresh JWKS.
    pub(crate) fn remember_unknown(&self, kid: &str) {
        if let Some(f) = &self.fetcher {
            f.unknown_kids.insert(kid.into(), ());
        }
    }

    /// Join the fetch in flight, or start one. `None` when `rate_limited` and the interval has not passed.
    fn join_or_start(self: &Arc<Self>, rate_limited: bool) -> Option<Landing<FetchResult>> {
        let f = self.fetcher.as_ref()?;
        let mut fetches = f.fetches.lock().ok()?;
        if let Some(landing) = fetches.flight.in_flight() {
            return Some(landing);
        }
        if rate_limited {
            let now = Instant::now();
            if fetches
                .last_unknown_kid_fetch
                .is_some_and(|t| now.duration_since(t) < f.cfg.unknown_kid_refetch_interval)
            {
                return None;
            }
            fetches.last_unknown_kid_fetch = Some(now);
        }
        let me = self.clone();
        Some(fetches.flight.join_or_start(async move {
            let result = me.fetch_and_publish().await;
            me.finish(result)
        }))
    }

    fn finish(&self, result: Result<Option<Duration>, JwksError>) -> FetchResult {
        let result = result.map_err(|e| e.to_string());
        let Some(f) = &self.fetcher else {
            return result;
        };
        let name = self.cfg.name.as_str();
        match &result {
            Ok(_) => {
                f.counters.fetched.inc();
            }
            Err(e) => {
                tracing::warn!(issuer = name, url = %f.cfg.url, error = e, "JWKS fetch failed; keeping the last good keys");
                f.counters.failed.inc();
            }
        }
        if let Ok(mut st) = f.status.lock() {
            match &result {
                Ok(_) => {
                    st.last_ok = Some(Instant::now());
                    st.last_error = None;
                }
                Err(e) => st.last_error = Some(e.clone()),
            }
        }
        if let Ok(mut fetches) = f.fetches.lock() {
            fetches.flight.land();
        }
        result
    }

    async fn fetch_and_publish(&self) -> Result<Option<Duration>, JwksError> {
        let Some(f) = &self.fetcher else {
            return Ok(None);
        };
        let req = Request::get(f.cfg.url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(body::empty())
            .map_err(|_| JwksError::Request)?;
        let rsp = http_client::fetch(&f.http, req, f.cfg.fetch_timeout, MAX_JWKS_BYTES).await?;
        if rsp.status != StatusCode::OK {
            return Err(JwksError::Status(rsp.status));
        }
        let set: JwkSet = serde_json::from_slice(&rsp.body).map_err(|_| JwksError::Parse)?;
        let (fetched, skipped) = keys::from_jwks(&set, &self.cfg.algorithms);
        for (kid, e) in skipped {
            tracing::debug!(issuer = %self.cfg.name, ?kid, error = %e, "JWKS key skipped");
        }
        if fetched.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        let cur = self.keys.load();
        let (merged, changed) = cur.merge(&self.cfg.static_keys, fetched);
        let n = merged.len();
        self.keys
            .store(Arc::new(KeySet::new(merged, Some(Instant::now()))));
        f.counters.keys.set(i64::try_from(n).unwrap_or(i64::MAX));
        if changed {
            tracing::info!(issuer = %self.cfg.name, keys = n, "issuer keys updated");
        }
        Ok(max_age(&rsp.headers))
    }

    /// Fetch now (joining a fetch in flight) and wait for the outcome.
    async fn fetch_now(self: &Arc<Self>) -> FetchResult {
        let Some(f) = &self.fetcher else {
            return Ok(None);
        };
        let Some(landing) = self.join_or_start(false) else {
            return Err("fetch state poisoned".into());
        };
        match tokio::time::timeout(f.cfg.fetch_timeout + Duration::from_secs(1), landing).await {
            Ok(Some(result)) => result,
            Ok(None) | Err(_) => Err("fetch did not finish".into()),
        }
    }

    /// The first fetch, for `startup = "fail_fast"`.
    pub(crate) async fn initial_fetch(self: &Arc<Self>) -> Result<(), String> {
        self.fetch_now().await.map(|_| ())
    }

    /// Drop JWKS keys older than `max_staleness` (static keys stay).
    fn expire_stale(&self, max_staleness: Duration) {
        let cur = self.keys.load();
        if let Some(at) = cur.fetched_at
            && at.elapsed() > max_staleness
        {
            tracing::error!(issuer = %self.cfg.name, "JWKS older than max_staleness; dropping its keys");
            self.keys
                .store(Arc::new(KeySet::new(self.cfg.static_keys.clone(), None)));
        }
    }

    /// Spawn the refresh loop; it ends when the issuer is dropped. `fetched` says the first fetch already happened.
    pub(crate) fn spawn_refresh(self: &Arc<Self>, fetched: bool) {
        let Some(f) = &self.fetcher else { return };
        let cfg = f.cfg.clone();
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let backoff = Backoff {
                first: FIRST_BACKOFF,
                max: MAX_BACKOFF.min(cfg.refresh_interval),
            };
            let mut failures = 0u32;
            let mut next = if fetched {
                Some(cfg.refresh_interval)
            } else {
                None
            };
            loop {
                if let Some(wait) = next {
                    tokio::time::sleep(wait).await;
                }
                let Some(me) = weak.upgrade() else { return };
                let wait = match me.fetch_now().await {
                    Ok(age) => {
                        failures = 0;
                        age.unwrap_or(cfg.refresh_interval)
                            .clamp(cfg.min_refresh_interval, cfg.max_refresh_interval)
                    }
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        backoff.delay(failures)
                    }
                };
                me.expire_stale(cfg.max_staleness);
                // Wake in time to drop keys that go stale before the next attempt.
                let stale_in =
                    me.keys.load().fetched_at.map(|at| {
                        (at + cfg.max_staleness).saturating_duration_since(Instant::now())
                    });
                next = Some(stale_in.map_or(wait, |s| wait.min(s + Duration::from_millis(1))));
            }
        });
    }
}

/// `Cache-Control: max-age` of a response, unless `no-cache`/`no-store` (then zero, clamped up by the caller).
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let cc = headers.typed_get::<CacheControl>()?;
    if cc.no_cache() || cc.no_store() {
        return Some(Duration::ZERO);
    }
    cc.max_age()
}

#[cfg(test)]
mod tests {
    use http::header::CACHE_CONTROL;

    use super::*;

    #[test]
    fn max_age_is_read_and_no_store_wins() {
        let mut h = http::HeaderMap::new();
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=120"),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("max-age=120, no-store"),
        );
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        h.remove(CACHE_CONTROL);
        assert_eq!(max_age(&h), None);
    }
}
