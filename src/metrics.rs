//! The metrics registry, rendered in OpenMetrics text by `prometheus-client`. Hot-path counters live next to what
//! they count (per-route stats); this registry holds the labelled ones. Every label value is a configured name
//! (credential, issuer, route) or a closed enum, never caller input, so every label set is bounded by the config.
//! Owners resolve their series once at build time and then only touch an atomic.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Content type of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a fetch ended, as the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// `result="ok"`.
    Ok,
    /// `result="error"`.
    Error,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        })
    }
}

/// What became of a token an upstream rejected, as the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rejection {
    /// `result="renewed"`: dropped, and the next attachment fetches a new one.
    Renewed,
    /// `result="kept"`: too young to drop.
    Kept,
}

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(match self {
            Rejection::Renewed => "renewed",
            Rejection::Kept => "kept",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabels {
    credential: Arc<str>,
    result: Rejection,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CredentialLabels {
    credential: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CredentialResultLabels {
    credential: Arc<str>,
    result: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IssuerLabels {
    issuer: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IssuerResultLabels {
    issuer: Arc<str>,
    result: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: Arc<str>,
}

/// One credential's series.
#[derive(Clone, Debug)]
pub struct CredentialCounters {
    /// `credgate_credential_waits_total`: requests that waited for a token request.
    pub waits: Counter,
    /// `credgate_token_requests_total{result="ok"}`.
    pub fetched: Counter,
    /// `credgate_token_requests_total{result="error"}`.
    pub failed: Counter,
    /// `credgate_token_rejections_total{result="renewed"}`: rejected tokens dropped for a fresh fetch.
    pub rejections_renewed: Counter,
    /// `credgate_token_rejections_total{result="kept"}`: rejected tokens kept for being too young to drop.
    pub rejections_kept: Counter,
    /// `credgate_token_request_duration_seconds`: how long token requests take, whatever their result.
    pub fetch_seconds: Histogram,
    /// `credgate_token_adoptions_total`: tokens another replica of the fleet fetched and announced, taken here.
    pub adopted: Counter,
}

impl Default for CredentialCounters {
    fn default() -> Self {
        Self {
            waits: Counter::default(),
            fetched: Counter::default(),
            failed: Counter::default(),
            rejections_renewed: Counter::default(),
            rejections_kept: Counter::default(),
            fetch_seconds: fetch_histogram(),
            adopted: Counter::default(),
        }
    }
}

/// Buckets from 5 ms to about 20 s: token endpoints answer in tens of milliseconds, and time out in seconds.
fn fetch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// Buckets for request and upstream times: 0.5 ms to 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteClassLabels {
    route: Arc<str>,
    class: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Arc<str>,
}

/// One route's request-time histograms, by status class (1xx to 5xx).
#[derive(Clone, Debug)]
pub struct RouteLatency([Histogram; 5]);

impl RouteLatency {
    /// Count one request answered with `status` after `seconds`.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[class].observe(seconds);
    }
}

/// One listener's series.
#[derive(Clone, Debug, Default)]
pub struct ListenerCounters {
    /// `credgate_connections_refused_total`.
    pub refused: Counter,
    /// `credgate_connections_open`.
    pub open: Gauge,
    /// `credgate_tls_handshake_failures_total`: failed or timed-out handshakes.
    pub tls_failures: Counter,
    /// `credgate_connections_parked_total`: idle HTTP/1.1 connections that gave their buffers back.
    pub parked: Counter,
}

/// One issuer's series.
#[derive(Clone, Debug, Default)]
pub struct IssuerCounters {
    /// `credgate_jwks_fetches_total{result="ok"}`.
    pub fetched: Counter,
    /// `credgate_jwks_fetches_total{result="error"}`.
    pub failed: Counter,
    /// `credgate_jwks_keys`: keys in force after the last good fetch.
    pub keys: Gauge,
}

/// The registry, built once per gateway and shared by `Arc`.
#[derive(Debug)]
pub struct Metrics {
    /// Locked only to register (at build time) and to render (a scrape); never on a request.
    registry: Mutex<Registry>,
    credential_waits: Family<CredentialLabels, Counter>,
    token_requests: Family<CredentialResultLabels, Counter>,
    token_rejections: Family<RejectionLabels, Counter>,
    credential_retries: Family<RouteLabels, Counter>,
    jwks_fetches: Family<IssuerResultLabels, Counter>,
    jwks_keys: Family<IssuerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    tls_failures: Family<ListenerLabels, Counter>,
    connections_parked: Family<ListenerLabels, Counter>,
    token_fetch_seconds: Family<CredentialLabels, Histogram, fn() -> Histogram>,
    config_reloads: Family<ResultLabels, Counter>,
    token_adoptions: Family<CredentialLabels, Counter>,
    request_seconds: Family<RouteClassLabels, Histogram, fn() -> Histogram>,
    upstream_seconds: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: Outcome,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Mutex::default(),
            credential_waits: Family::default(),
            token_requests: Family::default(),
            token_rejections: Family::default(),
            credential_retries: Family::default(),
            jwks_fetches: Family::default(),
            jwks_keys: Family::default(),
            connections_refused: Family::default(),
            connections_parked: Family::default(),
            connections_open: Family::default(),
            tls_failures: Family::default(),
            token_fetch_seconds: Family::new_with_constructor(fetch_histogram),
            config_reloads: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            token_adoptions: Family::default(),
        };
        m.register(
            "credgate_request_duration_seconds",
            "Time from a request's head to its response's head, by route and status class.",
            m.request_seconds.clone(),
        );
        m.register(
            "credgate_upstream_response_seconds",
            "Time from sending a request upstream to its response's head, by upstream.",
            m.upstream_seconds.clone(),
        );
        m.register(
            "credgate_config_reloads",
            "Config reloads by result: an error leaves the running config in place.",
            m.config_reloads.clone(),
        );
        // Counters are registered under their base name: the encoder appends `_total`.
        m.register(
            "credgate_credential_waits",
            "Requests that had to wait for a token request.",
            m.credential_waits.clone(),
        );
        m.register(
            "credgate_token_requests",
            "Token requests by credential and result.",
            m.token_requests.clone(),
        );
        m.register(
            "credgate_token_rejections",
            "Tokens an upstream rejected, by credential and whether they were renewed or kept (too young).",
            m.token_rejections.clone(),
        );
        m.register(
            "credgate_credential_retries",
            "Requests replayed with a fresh token after a rejection.",
            m.credential_retries.clone(),
        );
        m.register(
            "credgate_jwks_fetches",
            "JWKS fetches by issuer and result.",
            m.jwks_fetches.clone(),
        );
        m.register(
            "credgate_jwks_keys",
            "Keys in force per issuer.",
            m.jwks_keys.clone(),
        );
        m.register(
            "credgate_connections_open",
            "Connections open per listener.",
            m.connections_open.clone(),
        );
        m.register(
            "credgate_tls_handshake_failures",
            "TLS handshakes that failed or timed out, per listener.",
            m.tls_failures.clone(),
        );
        m.register(
            "credgate_token_request_duration_seconds",
            "How long token requests take, per credential.",
            m.token_fetch_seconds.clone(),
        );
        m.register(
            "credgate_token_adoptions",
            "Tokens another replica of the fleet fetched and announced, taken by this one (fleet mode).",
            m.token_adoptions.clone(),
        );
        m.register(
            "credgate_connections_refused",
            "Connections closed at once for being over their listener's max_connections.",
            m.connections_refused.clone(),
        );
        m.register(
            "credgate_connections_parked",
            "Idle HTTP/1.1 connections that gave their buffers back until the caller sent again.",
            m.connections_parked.clone(),
        );
        m
    }
}

impl Metrics {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Registering and encoding leave the registry whole even if a panic interrupts them.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a metric a module owns (its label type is that module's), e.g. rejections by reason. A counter is
    /// named without `_total`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Route `name`'s request-time histograms, resolved once so that a request only observes.
    pub fn route_latency(&self, name: &str) -> RouteLatency {
        let route: Arc<str> = name.into();
        let class = |class| {
            self.request_seconds
                .get_or_create(&RouteClassLabels {
                    route: route.clone(),
                    class,
                })
                .clone()
        };
        RouteLatency([
            class("1xx"),
            class("2xx"),
            class("3xx"),
            class("4xx"),
            class("5xx"),
        ])
    }

    /// Upstream `name`'s response-time histogram.
    pub fn upstream_latency(&self, name: &str) -> Histogram {
        self.upstream_seconds
            .get_or_create(&UpstreamLabels {
                upstream: name.into(),
            })
            .clone()
    }

    /// Count a config reload that ended with `result`.
    pub(crate) fn config_reload(&self, result: Outcome) {
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The series of credential `name`, resolved once so counting is one atomic add.
    pub fn credential(&self, name: &str) -> CredentialCounters {
        let credential: Arc<str> = name.into();
        let result = |result| CredentialResultLabels {
            credential: credential.clone(),
            result,
        };
        // One `let` each: `get_or_create` holds a read lock until its statement ends, and the next may need to write.
        let waits = self
            .credential_waits
            .get_or_create(&CredentialLabels {
                credential: credential.clone(),
            })
            .clone();
        let fetched = self
            .token_requests
            .get_or_create(&result(Outcome::Ok))
            .clone();
        let failed = self
            .token_requests
            .get_or_create(&result(Outcome::Error))
            .clone();
        let rejection = |result| RejectionLabels {
            credential: credential.clone(),
            result,
        };
        let rejections_renewed = self
            .token_rejections
            .get_or_create(&rejection(Rejection::Renewed))
            .clone();
        let rejections_kept = self
            .token_rejections
            .get_or_create(&rejection(Rejection::Kept))
            .clone();
        let fetch_seconds = self
            .token_fetch_seconds
            .get_or_create(&CredentialLabels {
                credential: credential.clone(),
            })
            .clone();
        let adopted = self
            .token_adoptions
            .get_or_create(&CredentialLabels {
                credential: credential.clone(),
            })
            .clone();
        CredentialCounters {
            waits,
            fetched,
            failed,
            rejections_renewed,
            rejections_kept,
            fetch_seconds,
            adopted,
        }
    }

    /// The series of issuer `name`, resolved once.
    pub fn issuer(&self, name: &str) -> IssuerCounters {
        let issuer: Arc<str> = name.into();
        let result = |result| IssuerResultLabels {
            issuer: issuer.clone(),
            result,
        };
        let fetched = self
            .jwks_fetches
            .get_or_create(&result(Outcome::Ok))
            .clone();
        let failed = self
            .jwks_fetches
            .get_or_create(&result(Outcome::Error))
            .clone();
        let keys = self
            .jwks_keys
            .get_or_create(&IssuerLabels {
                issuer: issuer.clone(),
            })
            .clone();
        IssuerCounters {
            fetched,
            failed,
            keys,
        }
    }

    /// `credgate_credential_retries_total` of route `name`, resolved once.
    pub fn route_retries(&self, name: &str) -> Counter {
        self.credential_retries
            .get_or_create(&RouteLabels { route: name.into() })
            .clone()
    }

    /// The series of the listener bound at `listener`, resolved once.
    pub fn listener(&self, listener: &str) -> ListenerCounters {
        let labels = ListenerLabels {
            listener: listener.into(),
        };
        let refused = self.connections_refused.get_or_create(&labels).clone();
        let open = self.connections_open.get_or_create(&labels).clone();
        let tls_failures = self.tls_failures.get_or_create(&labels).clone();
        let parked = self.connections_parked.get_or_create(&labels).clone();
        ListenerCounters {
            refused,
            open,
            tls_failures,
            parked,
        }
    }

    /// Append the exposition of every registered metric, ending with `# EOF`.
    pub fn render(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = text::encode(out, &self.registry());
    }

    /// Current value of one series as rendered, e.g. `get("x_total", &[("reason", "expired")])`; 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key = String::from(name);
        if !labels.is_empty() {
            key.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(key, "{k}=\"{v}\"");
            }
            key.push('}');
        }
        key.push(' ');
        let mut out = String::new();
        self.render(&mut out);
        out.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_series_count_and_render_in_openmetrics_text() {
        let m = Metrics::default();
        let c = m.credential("a\"b");
        c.waits.inc();
        c.waits.inc();
        m.credential("a\"b").failed.inc();
        m.issuer("idp").keys.set(3);
        assert_eq!(
            m.get("credgate_credential_waits_total", &[("credential", "a\"b")]),
            2.0
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("# TYPE credgate_credential_waits counter\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "credgate_token_requests_total{credential=\"a\\\"b\",result=\"error\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("credgate_jwks_keys{issuer=\"idp\"} 3\n"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
