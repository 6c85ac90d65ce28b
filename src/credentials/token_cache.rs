//! The token cache behind the token-based credential kinds: a moka entry per credential that expires with its token,
//! one in-flight fetch at a time ([`Flight`]), refresh ahead of expiry on a timer, exponential [`Backoff`] with jitter
//! on failure, and generation-checked invalidation when an upstream rejects a token. In fleet mode the same cache asks
//! its [`SharedToken`] instead of the source, and adopts the tokens other replicas announce; the hot path stays a
//! local read. It never logs a token or secret; log lines name the credential.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::FutureExt;
use http::HeaderValue;
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};

use super::config::TokenSettings;
use super::fleet::{FleetToken, Obtained, Replacing, SharedToken};
pub(crate) use super::source::{FetchedToken, TokenError, TokenSource};
use super::{Attachment, CredentialError, sensitive_value};
use crate::config::secret::constant_time_eq;
use crate::jwt_payload;
use crate::metrics::{CredentialCounters, Metrics};
use crate::refresh::{Backoff, Flight, Landing};
use crate::unix_time;

/// A token credential as an operator sees it (the admin API): never the token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenStatus {
    /// `fresh`, `renewing`, `fetching`, `failing` or `no_token`.
    pub state: &'static str,
    /// Seconds until the cached token expires.
    pub expires_in_secs: Option<u64>,
    /// Seconds it may still be attached (expiry minus the safety margin).
    pub usable_for_secs: Option<u64>,
    /// Seconds until the next renewal (or retry).
    pub next_renewal_in_secs: Option<u64>,
    /// Unix seconds when the last token request ended.
    pub last_fetch_unix: Option<u64>,
    /// Whether it got a token.
    pub last_fetch_ok: Option<bool>,
    /// Failed token requests in a row.
    pub consecutive_failures: u32,
    /// Token requests that got a token, since start.
    pub fetches: u64,
    /// Token requests that failed, since start.
    pub failures: u64,
    /// In fleet mode, where the token in use stands: `shared` (the fleet's, held in Redis for every replica) or
    /// `local` (fetched by this replica alone while the fleet was unreachable); absent outside fleet mode or without
    /// a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<&'static str>,
}

/// A cached token with everything the hot path needs precomputed.
#[derive(Debug)]
pub(crate) struct Issued {
    /// Headers ready to attach.
    pub attachment: Attachment,
    token: SecretString,
    expires_at: Instant,
    /// Never injected at or after this instant (expiry minus the safety margin).
    usable_until: Instant,
    /// When the token was first handed out: the same token handed back again keeps the earlier instant.
    fetched_at: Instant,
    /// Its generation in the fleet, when it came from or went to one.
    fleet_generation: Option<u64>,
}

/// What a fetch hands its waiters: the token issued, or nothing when the fetch failed.
type Fetch = Landing<Option<Arc<Issued>>>;

#[derive(Default)]
struct State {
    flight: Flight<Option<Arc<Issued>>>,
    failures: u32,
    /// During backoff no request starts a fetch; requests without a valid token fail fast.
    retry_at: Option<Instant>,
    generation: u64,
    current: Option<Arc<Issued>>,
    /// Renewals driven by upstream rejections in a row; each one asks the next rejected token to be older.
    rejection_renewals: u32,
    /// The generation whose too-young rejection was last logged, so that a stream of them logs once per token.
    warned_generation: u64,
    /// When the renewal timer fires next.
    next_renewal: Option<Instant>,
    /// When the last token request ended, and whether it got a token.
    last_fetch: Option<(SystemTime, bool)>,
    refresh_token: Option<SecretString>,
    /// Bumped whenever a timer is scheduled; an older timer that wakes up finds a newer epoch and does nothing.
    timer_epoch: u64,
    /// The fleet generation an upstream rejected, for the next fetch to replace fleet-wide.
    rejected_fleet: Option<u64>,
    /// Whether the task adopting the fleet's announced tokens runs.
    following: bool,
}

struct UntilUsable;

impl moka::Expiry<(), Arc<Issued>> for UntilUsable {
    fn expire_after_create(
        &self,
        _key: &(),
        value: &Arc<Issued>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.usable_until.saturating_duration_since(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _key: &(),
        value: &Arc<Issued>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.usable_until.saturating_duration_since(Instant::now()))
    }
}

/// The hasher of a cache whose only key is `()`: every key hashes alike, so SipHash's work per read buys nothing.
#[derive(Default)]
struct OneKey;

impl Hasher for OneKey {
    fn write(&mut self, _: &[u8]) {}

    fn finish(&self) -> u64 {
        0
    }
}

/// One credential's token: cached, refreshed ahead, fetched once at a time.
pub(crate) struct TokenCache {
    name: Arc<str>,
    source: Box<dyn TokenSource>,
    settings: TokenSettings,
    /// Where the fleet shares this token; `None` on a single node.
    share: Option<Arc<dyn SharedToken>>,
    cache: moka::sync::Cache<(), Arc<Issued>, BuildHasherDefault<OneKey>>,
    state: Mutex<State>,
    counters: CredentialCounters,
    weak: Weak<TokenCache>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cold cache for credential `name`, shared with the fleet through `share` when there is one. Fetches nothing
    /// until first asked.
    pub(crate) fn new(
        name: &str,
        source: Box<dyn TokenSource>,
        settings: TokenSettings,
        metrics: Arc<Metrics>,
        share: Option<Arc<dyn SharedToken>>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|weak| Self {
            name: name.into(),
            source,
            settings,
            share,
            // One key per cache, so no capacity bound: without one moka keeps less eviction bookkeeping per read
            // (measured in benches/credentials.rs: about half the cost of a warm read).
            cache: moka::sync::Cache::builder()
                .expire_after(UntilUsable)
                .build_with_hasher(BuildHasherDefault::default()),
            state: Mutex::new(State::default()),
            counters: metrics.credential(name),
            weak: weak.clone(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (plain field writes), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unavailable(&self) -> CredentialError {
        CredentialError::Unavailable {
            credential: self.name.to_string(),
        }
    }

    /// The headers to attach, when the cache holds a usable token: no lock, no await.
    pub(crate) fn ready(&self) -> Option<Attachment> {
        self.cache
            .get(&())
            .filter(|t| Instant::now() < t.usable_until)
            .map(|t| t.attachment.clone())
    }

    /// The headers to attach now: from the cache when warm, otherwise after the one in-flight fetch. Fails fast
    /// while backing off with no valid token.
    pub(crate) async fn attach(&self) -> Result<Attachment, CredentialError> {
        match self.ready() {
            Some(a) => Ok(a),
            None => self.attach_slow().await,
        }
    }

    async fn attach_slow(&self) -> Result<Attachment, CredentialError> {
        let fut = {
            let st = self.state();
            match st.flight.in_flight() {
                Some(f) => f,
                None if st.retry_at.is_some_and(|t| Instant::now() < t) => {
                    return Err(self.unavailable());
                }
                None => {
                    drop(st);
                    self.start_fetch()
                }
            }
        };
        self.counters.waits.inc();
        match fut.await.flatten() {
            Some(t) if Instant::now() < t.usable_until => Ok(t.attachment.clone()),
            _ => Err(self.unavailable()),
        }
    }

    /// The upstream rejected `used`. Returns whether a replay may carry another token: true when a newer one is
    /// current already, or when `used` was old enough to drop (the next attachment then comes from a fresh fetch).
    /// A token younger than `min_token_age`, or than the backoff that rejection-driven renewals in a row have grown
    /// to, is kept: an upstream rejecting fresh tokens is misconfigured, and fetching more would hammer the vendor's
    /// token endpoint on every caller request.
    pub(crate) fn drop_rejected(&self, used: &Attachment) -> bool {
        let mut st = self.state();
        let Some(current) = st.current.clone() else {
            return true;
        };
        if current.attachment.generation != used.generation {
            return true;
        }
        let age = current.fetched_at.elapsed();
        let renewals = st.rejection_renewals;
        let backoff = Backoff {
            first: self.settings.backoff_min,
            max: self.settings.backoff_max,
        };
        let need = if renewals == 0 {
            self.settings.min_token_age
        } else {
            self.settings.min_token_age.max(backoff.delay(renewals))
        };
        if age < need {
            self.counters.rejections_kept.inc();
            if st.warned_generation != used.generation {
                st.warned_generation = used.generation;
                tracing::warn!(credential = %self.name, generation = used.generation, token_age = ?age, renew_after = ?need,
                    "upstream rejected a token this young; keeping it (an upstream rejecting fresh tokens points to a misconfigured credential)");
            }
            return false;
        }
        // A token that lived well past the bar was a genuine expiry or revocation: the streak starts over.
        st.rejection_renewals = if age > need.saturating_mul(2) {
            1
        } else {
            renewals.saturating_add(1)
        };
        self.counters.rejections_renewed.inc();
        tracing::info!(credential = %self.name, generation = used.generation, token_age = ?age, "upstream rejected the token; fetching a new one");
        st.rejected_fleet = current.fleet_generation;
        st.current = None;
        // Inside the state lock, and the fetch publishes to `current` before the cache: a token fetched meanwhile
        // has a newer generation and is never dropped here.
        self.cache.invalidate_all();
        true
    }

    /// What an operator sees of this credential: its state and times, never the token.
    pub(crate) fn status(&self) -> TokenStatus {
        let now = Instant::now();
        let st = self.state();
        let usable = st.current.as_ref().filter(|c| now < c.usable_until);
        let fetching = st.flight.in_flight().is_some();
        let state = match (usable.is_some(), st.failures > 0, fetching) {
            (_, true, _) => "failing",
            (true, false, true) => "renewing",
            (true, false, false) => "fresh",
            (false, false, true) => "fetching",
            (false, false, false) => "no_token",
        };
        let secs = |at: Instant| at.saturating_duration_since(now).as_secs();
        TokenStatus {
            state,
            expires_in_secs: usable.map(|c| secs(c.expires_at)),
            usable_for_secs: usable.map(|c| secs(c.usable_until)),
            next_renewal_in_secs: st.next_renewal.map(secs),
            last_fetch_unix: st.last_fetch.and_then(|(at, _)| {
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
            last_fetch_ok: st.last_fetch.map(|(_, ok)| ok),
            consecutive_failures: st.failures,
            fetches: self.counters.fetched.get(),
            failures: self.counters.failed.get(),
            fleet: self.share.as_ref().and(usable).map(|c| {
                if c.fleet_generation.is_some() {
                    "shared"
                } else {
                    "local"
                }
            }),
        }
    }

    /// Fetch a first token when none was ever fetched and none is being fetched (serving starts).
    pub(crate) fn warm_up(&self) {
        let st = self.state();
        let never =
            st.last_fetch.is_none() && st.current.is_none() && st.flight.in_flight().is_none();
        drop(st);
        if never {
            drop(self.start_fetch());
        }
    }

    /// Renew now, an operator's request: joins a fetch in flight, and does not wait out a backoff.
    pub(crate) fn refresh_now(&self) {
        drop(self.start_fetch());
    }

    /// Join the in-flight fetch or start one; the fetch runs as its own task so a caller going away does not cancel it.
    fn start_fetch(&self) -> Fetch {
        let mut st = self.state();
        if let Some(f) = st.flight.in_flight() {
            return f;
        }
        let Some(this) = self.weak.upgrade() else {
            return futures_util::future::ready(None).boxed().shared();
        };
        st.flight.join_or_start(this.run_fetch())
    }

    async fn run_fetch(self: Arc<Self>) -> Option<Arc<Issued>> {
        let result = match self.share.clone() {
            None => self.fetch_from_source().await.map(|t| (t, None, true)),
            Some(share) => self.obtain_from_fleet(&share).await,
        };
        match result.and_then(|(t, fleet, fetched)| Ok((self.issue(t, fleet)?, fetched))) {
            Ok(((issued, refresh_token, near_expiry), fetched)) => {
                self.publish(issued, refresh_token, near_expiry, fetched)
            }
            Err(e) => {
                self.fail(&e);
                None
            }
        }
    }

    /// One token request to the source, within the timeout.
    async fn fetch_from_source(&self) -> Result<FetchedToken, TokenError> {
        let refresh = self.state().refresh_token.clone();
        let timeout = self.settings.timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.source.fetch(refresh.as_ref())).await
        {
            Ok(r) => r,
            Err(_) => Err(TokenError::Timeout(timeout)),
        };
        self.counters
            .fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// The token from the fleet, or fetched here (for the fleet, or alone when it is unreachable). Also makes sure
    /// the tokens other replicas announce are adopted from now on. Answers the token, its fleet generation and
    /// first fetch, and whether this replica made the token request.
    async fn obtain_from_fleet(
        self: &Arc<Self>,
        share: &Arc<dyn SharedToken>,
    ) -> Result<(FetchedToken, Option<(u64, Instant)>, bool), TokenError> {
        let (replacing, failures) = {
            let mut st = self.state();
            if !st.following {
                st.following = true;
                tokio::spawn(follow(self.weak.clone(), share.clone()));
            }
            let replacing = match (
                st.rejected_fleet.take(),
                st.current.as_ref().and_then(|c| c.fleet_generation),
            ) {
                (Some(g), _) => Replacing::Rejected(g),
                (None, Some(g)) => Replacing::Renewing(g),
                (None, None) => Replacing::Nothing,
            };
            (replacing, st.failures)
        };
        let fetched = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = fetched.clone();
        let fetch = async move {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            self.fetch_from_source().await
        }
        .boxed();
        let obtained = share
            .obtain(replacing, self.backoff(failures.saturating_add(1)), fetch)
            .await?;
        let fetched = fetched.load(std::sync::atomic::Ordering::Relaxed);
        Ok(match obtained {
            Obtained::Fleet(f) => (f.token, Some((f.generation, f.fetched_at)), fetched),
            Obtained::Local(t) => (t, None, fetched),
        })
    }

    /// The fleet's generation of the current token.
    fn fleet_generation(&self) -> Option<u64> {
        self.state()
            .current
            .as_ref()
            .and_then(|c| c.fleet_generation)
    }

    /// Take a token another replica announced, unless a fetch of this replica's is under way (it will end with the
    /// fleet's token too) or it is the current one.
    fn adopt(&self, t: FleetToken) {
        {
            let st = self.state();
            if st.flight.in_flight().is_some()
                || st.current.as_ref().and_then(|c| c.fleet_generation) == Some(t.generation)
            {
                return;
            }
        }
        match self.issue(t.token, Some((t.generation, t.fetched_at))) {
            Ok((issued, refresh_token, near_expiry)) => {
                tracing::debug!(credential = %self.name, fleet_generation = t.generation, "adopted the fleet's new token");
                if self.install(issued, refresh_token, near_expiry, false) {
                    self.counters.adopted.inc();
                }
            }
            Err(e) => {
                tracing::warn!(credential = %self.name, error = %e, "the fleet's new token is unusable here; keeping ours");
            }
        }
    }

    /// Turn a fetched token into a cache entry. Returns the entry, the refresh token and whether it is already
    /// due for renewal (an endpoint handing back the same near-expiry token).
    /// `fleet` is the token's fleet generation and first fetch, when it came from or went to the fleet.
    fn issue(
        &self,
        t: FetchedToken,
        fleet: Option<(u64, Instant)>,
    ) -> Result<(Arc<Issued>, Option<SecretString>, bool), TokenError> {
        let now = Instant::now();
        let st = self.state();
        let same = st
            .current
            .as_ref()
            .is_some_and(|c| constant_time_eq(&c.token, t.token.expose_secret().as_bytes()));
        // The fleet's token this replica holds already (adopted while its own request waited): not "handed back".
        let already_held = same
            && fleet.is_some_and(|(g, _)| {
                st.current.as_ref().and_then(|c| c.fleet_generation) == Some(g)
            });
        // The same token handed back keeps its earlier expiry and safety margin: it is not fresh just because it was
        // returned again, and a margin recomputed from the shrinking remainder would let it be sent ever closer to
        // its real expiry.
        let lifetime = t.expires_at.saturating_duration_since(now);
        let margin = self.settings.expiry_margin.min(lifetime / 10);
        let (expires_at, usable_until, fetched_at) = match (&st.current, same) {
            (Some(c), true) => (
                c.expires_at.min(t.expires_at),
                c.usable_until.min(t.expires_at - margin),
                c.fetched_at,
            ),
            _ => (
                t.expires_at,
                t.expires_at - margin,
                fleet.map_or(now, |(_, at)| at.min(now)),
            ),
        };
        let generation = if same {
            st.generation
        } else {
            st.generation + 1
        };
        drop(st);
        if usable_until <= now {
            return Err(TokenError::AlreadyExpired);
        }
        let mut headers = Vec::with_capacity(self.settings.headers.len());
        for (name, template) in &self.settings.headers {
            let value: HeaderValue = sensitive_value(&template.render(t.token.expose_secret()))
                .ok_or(TokenError::BadHeaderValue)?;
            headers.push((name.clone(), value));
        }
        // The same token handed back, or one already inside its renewal window, is renewed again after a backoff.
        let near_expiry = (same && !already_held) || self.refresh_at(now, expires_at) <= now;
        Ok((
            Arc::new(Issued {
                attachment: Attachment {
                    headers: headers.into(),
                    generation,
                },
                token: t.token,
                expires_at,
                usable_until,
                fetched_at,
                fleet_generation: fleet.map(|(g, _)| g),
            }),
            t.refresh_token,
            near_expiry,
        ))
    }

    /// When to renew a token expiring at `expires_at`: at 80% of its remaining lifetime or `refresh_before` ahead of
    /// expiry, whichever is earlier, minus up to 5% jitter so that many credentials do not renew together.
    fn refresh_at(&self, now: Instant, expires_at: Instant) -> Instant {
        let lifetime = expires_at.saturating_duration_since(now);
        let mut ahead = lifetime / 5;
        if let Some(rb) = self.settings.refresh_before {
            ahead = ahead.max(rb);
        }
        let jitter = lifetime.mul_f64(rand::thread_rng().gen_range(0.0..0.05));
        expires_at
            .checked_sub(ahead.saturating_add(jitter))
            .unwrap_or(now)
            .max(now)
    }

    /// Make `issued` current as the end of this replica's fetch; `fetched` says whether it made a token request.
    fn publish(
        &self,
        issued: Arc<Issued>,
        refresh_token: Option<SecretString>,
        near_expiry: bool,
        fetched: bool,
    ) -> Option<Arc<Issued>> {
        if fetched {
            self.counters.fetched.inc();
        }
        self.install(issued.clone(), refresh_token, near_expiry, true);
        Some(issued)
    }

    /// Make `issued` current and schedule its renewal; `landing` ends this replica's fetch (an adopted token does
    /// not, and is dropped when a fetch started meanwhile: that fetch ends with the fleet's token itself). Returns
    /// whether it was installed.
    fn install(
        &self,
        issued: Arc<Issued>,
        refresh_token: Option<SecretString>,
        near_expiry: bool,
        landing: bool,
    ) -> bool {
        let now = Instant::now();
        let generation = issued.attachment.generation;
        {
            let mut st = self.state();
            if !landing && st.flight.in_flight().is_some() {
                return false;
            }
            st.generation = generation;
            st.current = Some(issued.clone());
            if refresh_token.is_some() {
                st.refresh_token = refresh_token;
            }
        }
        self.cache.insert((), issued.clone());
        let mut st = self.state();
        if landing {
            st.flight.land();
            st.last_fetch = Some((SystemTime::now(), true));
        }
        let next = if near_expiry {
            // Valid, so it is served, but renewal is due already: retry after a backoff, not in a tight loop.
            st.failures = st.failures.saturating_add(1);
            let delay = self.backoff(st.failures);
            tracing::warn!(credential = %self.name, generation, retry_in = ?delay, "token endpoint handed back a token already due for renewal; retrying later");
            later(now, delay)
        } else {
            st.failures = 0;
            let at = self.refresh_at(now, issued.expires_at);
            tracing::debug!(credential = %self.name, generation, lifetime = ?issued.expires_at.saturating_duration_since(now), refresh_in = ?at.saturating_duration_since(now), "token obtained");
            at
        };
        st.retry_at = None;
        self.schedule(&mut st, next);
        true
    }

    fn fail(&self, e: &TokenError) {
        self.counters.failed.inc();
        let mut st = self.state();
        st.flight.land();
        st.last_fetch = Some((SystemTime::now(), false));
        st.failures = st.failures.saturating_add(1);
        let delay = self.backoff(st.failures);
        let valid = st
            .current
            .as_ref()
            .is_some_and(|c| Instant::now() < c.usable_until);
        tracing::warn!(credential = %self.name, error = %e, failures = st.failures, retry_in = ?delay, still_valid = valid, "token request failed");
        let at = later(Instant::now(), delay);
        st.retry_at = Some(at);
        self.schedule(&mut st, at);
    }

    /// Exponential backoff from `backoff_min` to `backoff_max`, with jitter over the upper half.
    fn backoff(&self, failures: u32) -> Duration {
        Backoff {
            first: self.settings.backoff_min,
            max: self.settings.backoff_max,
        }
        .jittered(failures)
    }

    /// Fetch in the background at `at`, unless a newer timer replaces this one. The timer holds a weak reference:
    /// a gateway that is dropped stops refreshing.
    fn schedule(&self, st: &mut State, at: Instant) {
        st.next_renewal = Some(at);
        st.timer_epoch += 1;
        let epoch = st.timer_epoch;
        let weak = self.weak.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let Some(this) = weak.upgrade() else { return };
            if this.state().timer_epoch != epoch {
                return;
            }
            let fut = this.start_fetch();
            drop(this);
            fut.await;
        });
    }
}

/// Adopt the tokens the fleet announces, for as long as the cache and the fleet live.
async fn follow(weak: Weak<TokenCache>, share: Arc<dyn SharedToken>) {
    loop {
        let have = match weak.upgrade() {
            Some(c) => c.fleet_generation(),
            None => return,
        };
        let Some(t) = share.next_announced(have).await else {
            return;
        };
        let Some(cache) = weak.upgrade() else { return };
        cache.adopt(t);
    }
}

/// Seconds from `now` until the `exp` claim of `token` when it is a JWT, read without verifying: the token is ours to
/// send, not a caller's to trust, and its signature key is the vendor's.
pub(crate) fn jwt_remaining(token: &str, now: SystemTime) -> Option<Duration> {
    let exp = jwt_payload::unverified_claims(token)?
        .get("exp")?
        .as_f64()?;
    unix_time::until(exp, now)
}

/// Longest lifetime believed: a vendor's absurd value must not overflow the clock.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// `now + d`, with `d` capped at a year so that no configured or vendor-sent value can overflow.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(MAX_LIFETIME)).unwrap_or(now)
}

/// The earliest of the known lifetimes, as an instant.
pub(crate) fn earliest(now: Instant, lifetimes: &[Option<Duration>]) -> Option<Instant> {
    lifetimes.iter().flatten().min().map(|d| later(now, *d))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::UNIX_EPOCH;

    use base64::Engine as _;
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::config::Ctx;
    use crate::credentials::config::{self, CredentialConfig, RawCredential};

    /// A source never asked: these tests hand tokens to `issue` directly.
    #[derive(Debug)]
    struct Unused;

    impl TokenSource for Unused {
        fn fetch<'a>(
            &'a self,
            _: Option<&'a SecretString>,
        ) -> BoxFuture<'a, Result<FetchedToken, TokenError>> {
            Box::pin(async { Err(TokenError::NoLifetime) })
        }
    }

    /// The token settings of a minimal OAuth2 credential, for tests that build a cache.
    pub(crate) fn settings() -> TokenSettings {
        let raw: RawCredential = toml::from_str(
            r#"
kind = "oauth2_client_credentials"
allowed_hosts = ["api.example"]
token_url = "http://127.0.0.1:9/token"
client_id = "id"
client_secret = "secret"
"#,
        )
        .expect("toml");
        let cfg = config::validate(&Ctx::new("<test>"), "v", raw).expect("config");
        let CredentialConfig::OAuth2(o) = cfg else {
            panic!("oauth2 credential");
        };
        o.token
    }

    fn cache() -> Arc<TokenCache> {
        TokenCache::new(
            "v",
            Box::new(Unused),
            settings(),
            Arc::new(Metrics::default()),
            None,
        )
    }

    #[test]
    fn the_same_token_handed_back_keeps_its_first_margin() {
        let cache = cache();
        let now = Instant::now();
        // Issued a while ago: 200 s left, usable for 100 s more (a 100 s margin). Wide windows: a loaded machine
        // cannot push `now` past them.
        let first = Arc::new(Issued {
            attachment: Attachment {
                headers: Vec::new().into(),
                generation: 1,
            },
            token: SecretString::from("same"),
            expires_at: now + Duration::from_secs(200),
            usable_until: now + Duration::from_secs(100),
            fetched_at: now,
            fleet_generation: None,
        });
        {
            let mut st = cache.state();
            st.generation = 1;
            st.current = Some(first.clone());
        }
        // Handed back again, claiming a fresh 2,000 s.
        let (again, _, due) = cache
            .issue(
                FetchedToken {
                    token: SecretString::from("same"),
                    expires_at: now + Duration::from_secs(2000),
                    refresh_token: None,
                },
                None,
            )
            .expect("still usable");
        assert!(due, "renewed again after a backoff");
        assert_eq!(again.attachment.generation, 1);
        assert_eq!(again.expires_at, first.expires_at);
        assert_eq!(
            again.usable_until, first.usable_until,
            "a margin taken from the remainder would creep towards expiry"
        );
    }

    fn jwt(exp: u64) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(format!(r#"{{"credentialName":"x","exp":{exp}}}"#))
        )
    }

    #[test]
    fn jwt_exp_is_read_without_verifying() {
        let now = SystemTime::now();
        let unix = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let left = jwt_remaining(&jwt(unix + 100), now).expect("exp");
        assert!(left <= Duration::from_secs(100) && left >= Duration::from_secs(98));
        assert_eq!(jwt_remaining(&jwt(unix - 5), now), Some(Duration::ZERO));
        assert_eq!(jwt_remaining("opaque-token", now), None);
        assert_eq!(jwt_remaining("a.b.c", now), None);
    }

    #[test]
    fn earliest_takes_the_minimum_known() {
        let now = Instant::now();
        assert_eq!(
            earliest(
                now,
                &[
                    Some(Duration::from_secs(9)),
                    None,
                    Some(Duration::from_secs(3))
                ]
            ),
            Some(now + Duration::from_secs(3))
        );
        assert_eq!(earliest(now, &[None]), None);
        assert_eq!(
            earliest(now, &[Some(Duration::MAX)]),
            Some(later(now, MAX_LIFETIME))
        );
    }
}
