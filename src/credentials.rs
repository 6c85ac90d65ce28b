//! Upstream credentials: what the gateway attaches to a forwarded request. Each kind implements [`Credential`]; the
//! pipeline only asks for the current [`Attachment`] and reports upstream rejections, through
//! [`replay_on_rejection`], the one renewal mechanism the request path and the flows share. Kinds: `static` (fixed headers),
//! `oauth2_client_credentials` ([`oauth2`]) and `login` ([`login`]), the last two behind a [`token_cache`]. Values
//! are secret: they are marked sensitive in headers and never logged; logs name the credential only. In fleet mode
//! the token kinds share one token per credential across replicas through a [`fleet::Fleet`].

pub(crate) mod config;
pub(crate) mod fleet;
pub(crate) mod login;
pub(crate) mod oauth2;
pub(crate) mod source;
pub(crate) mod token_cache;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::{BoxFuture, FutureExt};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use secrecy::ExposeSecret;

use crate::body::{self, Body, BoxError};
use crate::http_client::HttpClient;
use crate::metrics::Metrics;
use crate::problem::Problem;
pub(crate) use config::RejectPolicy;
use config::{CredentialConfig, Readiness, StaticConfig, TokenSettings};
use fleet::{Fleet, SharedToken};
use token_cache::{TokenCache, TokenSource};

/// Headers to add to one upstream request, shared cheaply between requests.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// Header name and sensitive value pairs.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    /// Which token generation these headers carry (0 for static credentials).
    pub generation: u64,
}

/// No valid credential can be attached right now.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The token endpoint failed and no unexpired token is left.
    #[error("credential {credential} has no valid token")]
    Unavailable {
        /// Credential name.
        credential: String,
    },
}

/// Map a credential error to the caller's problem.
pub(crate) fn problem(e: &CredentialError) -> Problem {
    match e {
        CredentialError::Unavailable { .. } => Problem {
            retry_after: Some(5),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_credentials_unavailable",
                "Upstream credentials unavailable",
            )
        },
    }
}

/// One kind of upstream credential: async, fallible, and cheap on the hot path once warm.
pub trait Credential: Send + Sync + fmt::Debug {
    /// The header names this credential sets; they are removed from the caller's request before attaching.
    fn header_names(&self) -> &[HeaderName];

    /// The headers to attach now.
    fn attach(&self) -> BoxFuture<'_, Result<Attachment, CredentialError>>;

    /// The headers to attach when they are at hand without waiting (fixed headers, a warm token): the request path
    /// tries this first and skips the boxed future of [`Credential::attach`].
    fn ready(&self) -> Option<Attachment> {
        None
    }

    /// The upstream rejected `used` (e.g. 401): drop it, so that the next attachment is a fresh one. Returns
    /// whether a replay may carry another attachment; fixed kinds have nothing to drop and never replay.
    fn drop_rejected(&self, used: &Attachment) -> bool {
        let _ = used;
        false
    }

    /// How an upstream answer rejecting this credential looks, for kinds that can renew it; `None` for fixed ones,
    /// whose requests are then forwarded once with no body buffering.
    fn reject_policy(&self) -> Option<&RejectPolicy> {
        None
    }

    /// What an operator sees of it (the admin API): its kind and, for token kinds, the token's state and times.
    fn status(&self) -> CredentialStatus {
        CredentialStatus {
            kind: "static",
            token: None,
        }
    }

    /// Renew now (an operator's request); false for kinds with nothing to renew.
    fn refresh_now(&self) -> bool {
        false
    }

    /// Whether it is ready, with a detail, for kinds that count for readiness; `None` for the others.
    fn readiness(&self) -> Option<(bool, String)> {
        None
    }

    /// Serving starts: fetch a first token now, for kinds that count for readiness and have none yet.
    fn warm_up(&self) {}
}

/// A credential as the admin API shows it: never a secret or token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialStatus {
    /// `static`, `oauth2_client_credentials` or `login`.
    pub kind: &'static str,
    /// The token's state, for token kinds.
    #[serde(flatten)]
    pub token: Option<token_cache::TokenStatus>,
}

/// A token-based credential (OAuth2 client credentials, login): headers rendered from a cached token.
#[derive(Debug)]
pub(crate) struct TokenCredential {
    kind: &'static str,
    names: Vec<HeaderName>,
    reject: RejectPolicy,
    readiness: Readiness,
    cache: Arc<TokenCache>,
}

impl TokenCredential {
    /// A credential named `name` of `kind` whose tokens come from `source`, shared through `share` in a fleet.
    pub(crate) fn new(
        name: &str,
        kind: &'static str,
        source: Box<dyn TokenSource>,
        settings: TokenSettings,
        metrics: Arc<Metrics>,
        share: Option<Arc<dyn SharedToken>>,
    ) -> Self {
        Self {
            kind,
            names: settings.headers.iter().map(|(n, _)| n.clone()).collect(),
            reject: settings.reject.clone(),
            readiness: settings.readiness,
            cache: TokenCache::new(name, source, settings, metrics, share),
        }
    }
}

impl Credential for TokenCredential {
    fn header_names(&self) -> &[HeaderName] {
        &self.names
    }

    fn attach(&self) -> BoxFuture<'_, Result<Attachment, CredentialError>> {
        self.cache.attach().boxed()
    }

    fn ready(&self) -> Option<Attachment> {
        self.cache.ready()
    }

    fn drop_rejected(&self, used: &Attachment) -> bool {
        self.cache.drop_rejected(used)
    }

    fn reject_policy(&self) -> Option<&RejectPolicy> {
        Some(&self.reject)
    }

    fn status(&self) -> CredentialStatus {
        CredentialStatus {
            kind: self.kind,
            token: Some(self.cache.status()),
        }
    }

    fn refresh_now(&self) -> bool {
        self.cache.refresh_now();
        true
    }

    fn readiness(&self) -> Option<(bool, String)> {
        if self.readiness == Readiness::Ignored {
            return None;
        }
        let st = self.cache.status();
        let ready = st.usable_for_secs.is_some();
        let detail = match (ready, st.last_fetch_ok) {
            (true, _) => format!("token {}", st.state),
            (false, None) => "no token yet".to_owned(),
            (false, Some(_)) => format!(
                "no usable token; {} token requests failed in a row",
                st.consecutive_failures
            ),
        };
        Some((ready, detail))
    }

    fn warm_up(&self) {
        if self.readiness == Readiness::Required {
            self.cache.warm_up();
        }
    }
}

/// Renewal on rejection: `first` answers a request that carried `used`. When the credential can be renewed and
/// `rejects` confirms that the answer rejects it, the attachment is dropped if it is old enough (so later requests
/// get a fresh one too) and, when the request can be `replay`ed and a fresh attachment is at hand, it is sent once
/// more with that one. Otherwise `first` is the answer.
pub(crate) async fn replay_on_rejection<T, E, Check, Sent>(
    cred: &dyn Credential,
    used: &Attachment,
    first: T,
    rejects: impl FnOnce(T) -> Check,
    replay: Option<impl FnOnce(Attachment) -> Sent>,
) -> Result<T, E>
where
    Check: Future<Output = (bool, T)>,
    Sent: Future<Output = Result<T, E>>,
{
    if cred.reject_policy().is_none() {
        return Ok(first);
    }
    let (rejected, first) = rejects(first).await;
    if !rejected {
        return Ok(first);
    }
    // Dropped even when the request cannot be replayed: later requests then get a fresh token. A token kept
    // (too young to drop) is not replayed either: the same token would be rejected again.
    let renewed = cred.drop_rejected(used);
    let (true, Some(replay)) = (renewed, replay) else {
        return Ok(first);
    };
    let Ok(fresh) = cred.attach().await else {
        return Ok(first);
    };
    drop(first);
    replay(fresh).await
}

/// Largest upstream error body read to look for a rejection marker.
const MARKER_SCAN_LIMIT: usize = 64 * 1024;

/// Does `rsp` reject the credential under `policy`? With a body marker configured, up to 64 KiB of a response with a
/// matching status is read to look for it; the response is handed back whole either way.
pub(crate) async fn is_rejection(
    policy: &RejectPolicy,
    rsp: Response<Body>,
) -> (bool, Response<Body>) {
    if !policy.statuses.contains(&rsp.status()) {
        return (false, rsp);
    }
    let Some(marker) = &policy.body_marker else {
        return (true, rsp);
    };
    let (parts, mut incoming) = rsp.into_parts();
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
    let mut seen = Vec::new();
    let mut ended = false;
    while seen.len() <= MARKER_SCAN_LIMIT {
        match incoming.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    seen.extend_from_slice(d);
                }
                frames.push(Ok(frame));
            }
            Some(Err(e)) => {
                frames.push(Err(e));
                ended = true;
                break;
            }
        }
    }
    let found = seen.windows(marker.len()).any(|w| w == marker.as_bytes());
    let head = futures_util::stream::iter(frames);
    let body = if ended {
        body::boxed(StreamBody::new(head))
    } else {
        body::boxed(StreamBody::new(head.chain(BodyStream::new(incoming))))
    };
    (found, Response::from_parts(parts, body))
}

/// Fixed secret headers, rendered once at startup.
#[derive(Debug)]
pub(crate) struct StaticCredential {
    names: Vec<HeaderName>,
    attachment: Attachment,
}

impl StaticCredential {
    /// Build from validated config.
    pub(crate) fn new(cfg: &StaticConfig) -> Result<Self, InvalidHeaderValue> {
        let mut pairs = Vec::with_capacity(cfg.headers.len());
        for (name, value) in &cfg.headers {
            pairs.push((
                name.clone(),
                sensitive_value(value.expose_secret())
                    .ok_or_else(|| InvalidHeaderValue(name.clone()))?,
            ));
        }
        Ok(Self {
            names: pairs.iter().map(|(n, _)| n.clone()).collect(),
            attachment: Attachment {
                headers: pairs.into(),
                generation: 0,
            },
        })
    }
}

impl Credential for StaticCredential {
    fn header_names(&self) -> &[HeaderName] {
        &self.names
    }

    fn attach(&self) -> BoxFuture<'_, Result<Attachment, CredentialError>> {
        futures_util::future::ready(Ok(self.attachment.clone())).boxed()
    }

    fn ready(&self) -> Option<Attachment> {
        Some(self.attachment.clone())
    }
}

/// A secret cannot be a header value (control characters or non-visible bytes).
#[derive(Debug, thiserror::Error)]
#[error("the value of header {0} is not a valid header value")]
pub struct InvalidHeaderValue(pub HeaderName);

/// A header value marked sensitive (kept out of HPACK tables and debug output).
pub(crate) fn sensitive_value(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Every configured credential, by name.
#[derive(Debug, Default)]
pub struct Credentials {
    by_name: BTreeMap<String, Arc<dyn Credential>>,
}

/// A credential could not be built from config.
#[derive(Debug, thiserror::Error)]
#[error("credentials.{name}: {source}")]
pub struct BuildError {
    /// Credential name.
    pub name: String,
    /// Why.
    #[source]
    pub source: InvalidHeaderValue,
}

impl Credentials {
    /// Build every credential in `cfg`; token kinds call out through `http`. Fetches nothing: tokens are obtained on
    /// first use, so `credgate check` never contacts a vendor. A credential `keep` returns (a reload's unchanged one)
    /// is kept as it is, with its cached token and renewal timer.
    pub fn build(
        cfg: &BTreeMap<String, CredentialConfig>,
        http: &HttpClient,
        metrics: &Arc<Metrics>,
        keep: impl Fn(&str) -> Option<Arc<dyn Credential>>,
    ) -> Result<Self, BuildError> {
        Self::build_in_fleet(cfg, http, metrics, None, keep)
    }

    /// [`Credentials::build`], the token kinds sharing their tokens through `fleet` when there is one.
    pub(crate) fn build_in_fleet(
        cfg: &BTreeMap<String, CredentialConfig>,
        http: &HttpClient,
        metrics: &Arc<Metrics>,
        fleet: Option<&dyn Fleet>,
        keep: impl Fn(&str) -> Option<Arc<dyn Credential>>,
    ) -> Result<Self, BuildError> {
        let share = |name: &str, settings: &TokenSettings| fleet.map(|f| f.token(name, settings));
        let mut by_name: BTreeMap<String, Arc<dyn Credential>> = BTreeMap::new();
        for (name, c) in cfg {
            if let Some(kept) = keep(name) {
                by_name.insert(name.clone(), kept);
                continue;
            }
            let cred: Arc<dyn Credential> = match c {
                CredentialConfig::Static(s) => {
                    Arc::new(StaticCredential::new(s).map_err(|source| BuildError {
                        name: name.clone(),
                        source,
                    })?)
                }
                CredentialConfig::OAuth2(o) => Arc::new(TokenCredential::new(
                    name,
                    "oauth2_client_credentials",
                    Box::new(oauth2::OAuth2Source::new(name, o.clone(), http.clone())),
                    o.token.clone(),
                    metrics.clone(),
                    share(name, &o.token),
                )),
                CredentialConfig::Login(l) => Arc::new(TokenCredential::new(
                    name,
                    "login",
                    Box::new(login::LoginSource::new(l.clone(), http.clone())),
                    l.token.clone(),
                    metrics.clone(),
                    share(name, &l.token),
                )),
            };
            by_name.insert(name.clone(), cred);
        }
        Ok(Self { by_name })
    }

    /// The credential named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Credential>> {
        self.by_name.get(name).cloned()
    }

    /// Every credential, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Credential>)> {
        self.by_name.iter().map(|(n, c)| (n.as_str(), c))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use secrecy::SecretString;

    use super::*;
    use token_cache::{FetchedToken, TokenError};

    /// Hands out `t1`, `t2`, ... valid for an hour.
    #[derive(Debug, Default)]
    struct Counting(AtomicU32);

    impl TokenSource for Counting {
        fn fetch<'a>(
            &'a self,
            _: Option<&'a SecretString>,
        ) -> BoxFuture<'a, Result<FetchedToken, TokenError>> {
            let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
            futures_util::future::ready(Ok(FetchedToken {
                token: SecretString::from(format!("t{n}")),
                expires_at: Instant::now() + Duration::from_secs(3600),
                refresh_token: None,
            }))
            .boxed()
        }
    }

    /// A token credential whose rejections drop tokens at least `min_token_age` old.
    fn token_credential(min_token_age: Duration) -> TokenCredential {
        let mut settings = token_cache::tests::settings();
        settings.min_token_age = min_token_age;
        TokenCredential::new(
            "v",
            "oauth2_client_credentials",
            Box::new(Counting::default()),
            settings,
            Arc::new(Metrics::default()),
            None,
        )
    }

    /// Replays by answering with the generation of the attachment it was given.
    async fn replay_answer(cred: &dyn Credential, rejected: bool) -> (u64, u64) {
        let used = cred.attach().await.expect("token");
        let answer = replay_on_rejection(
            cred,
            &used,
            used.generation,
            |first| async move { (rejected, first) },
            Some(|fresh: Attachment| async move { Ok::<_, ()>(fresh.generation) }),
        )
        .await
        .expect("answer");
        (used.generation, answer)
    }

    #[tokio::test]
    async fn a_rejection_drops_the_token_and_replays_once_with_a_fresh_one() {
        let cred = token_credential(Duration::ZERO);
        let (used, answer) = replay_answer(&cred, true).await;
        assert_eq!((used, answer), (1, 2), "replayed with the fresh token");
        let (used, answer) = replay_answer(&cred, false).await;
        assert_eq!(
            (used, answer),
            (2, 2),
            "no rejection: the first answer, token kept"
        );
    }

    #[tokio::test]
    async fn a_rejected_token_younger_than_the_minimum_age_is_kept_and_not_replayed() {
        let cred = token_credential(Duration::from_secs(3600));
        for _ in 0..3 {
            let (used, answer) = replay_answer(&cred, true).await;
            assert_eq!((used, answer), (1, 1), "the first answer; the token kept");
        }
    }

    #[tokio::test]
    async fn a_fixed_credential_is_never_replayed() {
        let cred = StaticCredential::new(&StaticConfig {
            allowed_hosts: Vec::new(),
            headers: Vec::new(),
        })
        .expect("static");
        let used = cred.attach().await.expect("headers");
        let answer = replay_on_rejection(
            &cred,
            &used,
            "first",
            |first| async move { (true, first) },
            Some(|_: Attachment| async { Ok::<_, ()>("replayed") }),
        )
        .await;
        assert_eq!(answer, Ok("first"));
    }
}
