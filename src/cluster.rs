//! Fleet mode: replicas that share upstream tokens through Redis. Built from the optional `[cluster]` section
//! ([`config`]); without it nothing here exists and every replica is on its own.
//!
//! One Redis connection per gateway ([`redis::aio::ConnectionManager`], RESP3, so that the same connection carries
//! commands and the pub/sub channel the replicas announce new tokens on). Every command has a deadline; a command
//! that fails or is late marks Redis down, and while it is down token credentials fetch locally, exactly as a single
//! node does. A probe every second marks it up again. Each transition is logged once and counted; `/readyz` shows
//! it as degraded, never as unready. The per-credential protocol (lease, encrypted token, compare-and-delete) is in
//! [`tokens`]; tokens are sealed with AES-256-GCM ([`seal`]). Rate limits the fleet enforces together (TeleSign's)
//! run a GCRA script ([`limits`]).

pub mod config;
mod limits;
mod seal;
mod tokens;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, PushInfo, PushKind, RedisResult};
use secrecy::ExposeSecret;
use tokio::sync::watch;

pub use config::{ClusterConfig, RawCluster};

use crate::credentials::config::TokenSettings;
use crate::credentials::fleet::{Fleet, SharedToken};
use crate::metrics::Metrics;
use crate::rate_limit::SharedLimits;
use seal::Sealer;

/// How often Redis is probed, so that a replica notices it return (and go) without a request asking.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The cluster cannot be set up from this config.
#[derive(Debug, thiserror::Error)]
#[error("cluster.redis_url: {0}")]
pub struct BuildError(String);

/// What is known of Redis.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A replica's view of its fleet.
pub struct Cluster {
    inner: Arc<Inner>,
    limits: Arc<limits::RedisLimits>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.node_id)
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Per-credential announcement channels, keyed by credential name; the value is the last generation announced
/// (`u64::MAX`: "look again", after a reconnection may have lost messages).
type Announcements = Mutex<HashMap<String, watch::Sender<u64>>>;

struct Inner {
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    prefix: String,
    node_id: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    sealer: Sealer,
    health: AtomicU8,
    subscribed: AtomicBool,
    /// Whether an undecryptable value was logged already (logged once: it repeats on every read).
    unsealable_logged: AtomicBool,
    announcements: Arc<Announcements>,
    metrics: ClusterMetrics,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    credential: String,
    source: &'static str,
}

#[derive(Clone, Debug)]
struct ClusterMetrics {
    up: Gauge,
    outages: Counter,
    tokens: Family<TokenLabels, Counter>,
}

impl ClusterMetrics {
    fn new(metrics: &Metrics) -> Self {
        let m = Self {
            up: Gauge::default(),
            outages: Counter::default(),
            tokens: Family::default(),
        };
        metrics.register(
            "credgate_cluster_redis_up",
            "1 while Redis answers and tokens are shared by the fleet; 0 while this replica fetches on its own.",
            m.up.clone(),
        );
        metrics.register(
            "credgate_cluster_redis_outages",
            "Times Redis stopped answering (or answered too late) and this replica fell back to fetching tokens alone.",
            m.outages.clone(),
        );
        metrics.register(
            "credgate_cluster_tokens",
            "Token requests answered through the fleet, by how: fleet (read, stored by another replica), fetched \
             (here, for the fleet) or local (here alone, Redis unavailable).",
            m.tokens.clone(),
        );
        m
    }
}

impl Cluster {
    /// Set up fleet mode from `cfg`. Connects to nothing: [`Cluster::start`] does, when serving starts.
    pub fn new(cfg: &ClusterConfig, metrics: &Metrics) -> Result<Arc<Self>, BuildError> {
        let info = redis::IntoConnectionInfo::into_connection_info(cfg.redis_url.expose_secret())
            // The error may quote the URL, password included: say only what kind it is.
            .map_err(|e| BuildError(format!("not a usable Redis URL ({:?})", e.kind())))?;
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis);
        let client = match &cfg.tls {
            Some(tls) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: tls
                        .client_pem
                        .as_ref()
                        .map(|(cert, key)| redis::ClientTlsConfig {
                            client_cert: cert.clone(),
                            client_key: key.expose_secret().clone(),
                        }),
                    root_cert: tls.ca_pem.clone(),
                },
            ),
            None => redis::Client::open(info),
        }
        // The error may quote the URL, password included: say only what kind it is.
        .map_err(|e| {
            BuildError(format!(
                "not a usable Redis URL or TLS setting ({:?})",
                e.kind()
            ))
        })?;
        let inner = Arc::new(Inner {
            client,
            conn: OnceLock::new(),
            prefix: cfg.key_prefix.clone(),
            node_id: cfg.node_id.clone(),
            command_timeout: cfg.command_timeout,
            connect_timeout: cfg.connect_timeout,
            sealer: Sealer::new(&cfg.encryption_key, &cfg.decryption_keys),
            health: AtomicU8::new(UNKNOWN),
            subscribed: AtomicBool::new(false),
            unsealable_logged: AtomicBool::new(false),
            announcements: Arc::default(),
            metrics: ClusterMetrics::new(metrics),
        });
        let limits = Arc::new(limits::RedisLimits::new(
            &inner,
            cfg.encryption_key.expose_secret(),
        ));
        Ok(Arc::new(Self { inner, limits }))
    }

    /// Connect, subscribe to the fleet's announcements and start the probe. Returns once the first attempt is over
    /// (Redis down at start is not an error: tokens are then fetched locally until it answers).
    pub async fn start(&self) {
        let inner = &self.inner;
        // Started already: a reload kept this cluster (its connection and probe loop stay as they are).
        if inner.conn.get().is_some() {
            return;
        }
        let weak = Arc::downgrade(&inner.announcements);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(inner.connect_timeout))
            .set_response_timeout(Some(inner.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_push_sender(move |push: PushInfo| {
                if let Some(a) = weak.upgrade() {
                    on_push(&a, push);
                }
                Ok::<(), std::convert::Infallible>(())
            })
            .set_automatic_resubscription();
        match ConnectionManager::new_lazy_with_config(inner.client.clone(), config) {
            Ok(conn) => {
                let _ = inner.conn.set(conn);
            }
            Err(e) => {
                tracing::error!(error_kind = ?e.kind(), "cannot set up the Redis connection; tokens are fetched per replica");
                return;
            }
        }
        inner.probe().await;
        let weak = Arc::downgrade(inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.probe().await;
            }
        });
    }

    /// The readiness line: always ready (a replica without Redis still serves), with what degrades in the detail.
    pub fn readiness(&self) -> (String, bool, String) {
        let i = &self.inner;
        let detail = match i.health.load(Ordering::Relaxed) {
            UP => format!("redis up: tokens shared by the fleet (node {})", i.node_id),
            DOWN => format!(
                "degraded: redis unreachable; node {} fetches tokens on its own until it returns",
                i.node_id
            ),
            _ => "redis not reached yet: tokens are fetched on this node until it is".to_owned(),
        };
        ("cluster".to_owned(), true, detail)
    }
}

impl Cluster {
    /// The fleet's shared rate limits.
    pub(crate) fn limits(&self) -> Arc<dyn SharedLimits> {
        self.limits.clone()
    }
}

impl Fleet for Cluster {
    fn token(&self, name: &str, settings: &TokenSettings) -> Arc<dyn SharedToken> {
        let (tx, rx) = watch::channel(0);
        self.inner
            .announcements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), tx);
        Arc::new(tokens::RedisToken::new(
            Arc::downgrade(&self.inner),
            &self.inner.prefix,
            name,
            settings,
            rx,
        ))
    }
}

/// A message on the announcement channel (`"{generation} {credential}"`) or a (re)subscription.
fn on_push(announcements: &Announcements, push: PushInfo) {
    let a = announcements.lock().unwrap_or_else(|p| p.into_inner());
    match push.kind {
        PushKind::Message => {
            let Some(redis::Value::BulkString(payload)) = push.data.get(1) else {
                return;
            };
            let Some((generation, name)) = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.split_once(' '))
                .and_then(|(g, n)| Some((g.parse::<u64>().ok()?, n)))
            else {
                return;
            };
            if let Some(tx) = a.get(name) {
                tx.send_replace(generation);
            }
        }
        // Subscribed anew after a reconnection: messages sent meanwhile are lost, so every credential looks again.
        PushKind::Subscribe => {
            drop(a);
            poke_all(announcements);
        }
        _ => {}
    }
}

/// Wake everything waiting on an announcement, to look again.
fn poke_all(a: &Announcements) {
    for tx in a.lock().unwrap_or_else(|p| p.into_inner()).values() {
        tx.send_replace(u64::MAX);
    }
}

impl Inner {
    /// The channel tokens are announced on.
    fn channel(&self) -> String {
        format!("{}tokens", self.prefix)
    }

    fn is_up(&self) -> bool {
        self.health.load(Ordering::Relaxed) == UP
    }

    /// Run one command with the deadline, noting whether Redis answered. `None`: Redis is unavailable.
    async fn call<T, F>(
        &self,
        what: &'static str,
        f: impl FnOnce(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let conn = self.conn.get()?.clone();
        match tokio::time::timeout(self.command_timeout, f(conn)).await {
            Ok(Ok(v)) => {
                self.note(true, what, None);
                Some(v)
            }
            Ok(Err(e)) => {
                self.note(false, what, Some(&e));
                None
            }
            Err(_) => {
                self.note(false, what, None);
                None
            }
        }
    }

    /// Record whether Redis answered; log and count a change.
    fn note(&self, ok: bool, what: &'static str, error: Option<&redis::RedisError>) {
        let now = if ok { UP } else { DOWN };
        let was = self.health.swap(now, Ordering::Relaxed);
        if was == now {
            return;
        }
        self.metrics.up.set(i64::from(ok));
        if ok {
            tracing::info!(node = %self.node_id, "redis answers: tokens are shared by the fleet");
        } else {
            self.metrics.outages.inc();
            // The error's kind only: its text may quote the URL.
            tracing::warn!(node = %self.node_id, during = what, error_kind = ?error.map(|e| e.kind()),
                timeout = ?self.command_timeout,
                "redis unavailable: tokens are fetched by this replica alone until it answers again");
            // A later message may be lost while down: have every credential look again once it is back.
            self.subscribed.store(false, Ordering::Relaxed);
            // Replicas waiting for another's token would wait out its lease: wake them to fetch on their own.
            poke_all(&self.announcements);
        }
    }

    /// Ping, and subscribe when not subscribed yet (the connection resubscribes by itself after that).
    async fn probe(&self) {
        let pinged = self
            .call("ping", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await;
        if pinged.is_some() && !self.subscribed.load(Ordering::Relaxed) {
            let channel = self.channel();
            if self
                .call(
                    "subscribe",
                    |mut c| async move { c.subscribe(channel).await },
                )
                .await
                .is_some()
            {
                self.subscribed.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Note that a value did not decrypt: logged once, as it will repeat on every read until replaced.
    fn unsealable(&self, key: &str) {
        if !self.unsealable_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(node = %self.node_id, key, "{}; fetching tokens on this replica (is cluster.encryption_key, or one of its decryption_keys, the same on every replica?)", seal::Unsealable);
        }
    }

    fn count(&self, credential: &str, source: &'static str) {
        self.metrics
            .tokens
            .get_or_create(&TokenLabels {
                credential: credential.to_owned(),
                source,
            })
            .inc();
    }
}
