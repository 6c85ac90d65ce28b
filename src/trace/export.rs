//! OTLP span export (`[tracing]`): a server span per request, with children for caller authentication, the wait for
//! a credential's token and the upstream exchange, sent in batches to an OTLP/HTTP collector by the `opentelemetry`
//! SDK. The upstream span's id is the parent id forwarded upstream, so the upstream's own spans hang under it.
//! Off (no `[tracing]`), the request path never reaches this module.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, SpanRef, Status, TraceContextExt as _, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};
use secrecy::{ExposeSecret as _, SecretString};

use super::TraceContext;
use super::config::TracingConfig;
use crate::http_client::{self, ClientBuildError, HttpClient};

/// Span export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The collector's client could not be built.
    #[error("tracing: {0}")]
    Client(#[from] ClientBuildError),
    /// The OTLP exporter refused its settings.
    #[error("tracing: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Built outside a Tokio runtime, which exports run on.
    #[error("tracing: no Tokio runtime to export on")]
    NoRuntime,
}

/// The span exporter: one per `[tracing]` section, kept across reloads that leave it unchanged.
pub struct Export {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    endpoint: String,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Export {
    /// Set up export to the collector `cfg` names. Must run inside the Tokio runtime exports are sent from.
    pub fn build(cfg: &TracingConfig) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
        let client = Collector {
            http: http_client::build(&cfg.extra_ca, cfg.timeout)?,
            runtime,
            headers: cfg.headers.clone().into(),
            timeout: cfg.timeout,
            endpoint: cfg.endpoint.clone(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .build()?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.max_queue)
            .with_scheduled_delay(cfg.batch_delay)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            // A caller's trace follows its sampled flag; a trace started here is recorded at the configured ratio.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("credgate");
        Ok(Self {
            provider,
            tracer,
            endpoint: cfg.endpoint.clone(),
        })
    }

    /// Start a request's server span, a child of the caller's trace when it sent one.
    pub fn request(&self, trace: &TraceContext, method: &Method, path: &str) -> RequestSpans<'_> {
        let parent = match trace.sent() {
            Some((trace_id, parent_id, flags)) => {
                Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(trace_id),
                    SpanId::from_bytes(parent_id),
                    TraceFlags::new(flags),
                    true,
                    TraceState::NONE,
                ))
            }
            None => Context::new(),
        };
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(method.as_str().to_owned())
                .with_kind(SpanKind::Server)
                .with_start_time(SystemTime::now())
                .with_attributes([
                    KeyValue::new("http.request.method", method.as_str().to_owned()),
                    KeyValue::new("url.path", path.to_owned()),
                ]),
            &parent,
        );
        RequestSpans {
            export: self,
            cx: parent.with_span(span),
            method: method.clone(),
        }
    }

    /// Send what is queued and stop exporting (at shutdown, or when a reload replaced this exporter).
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

impl Drop for Export {
    /// The SDK's shutdown blocks until the queue is sent: off the runtime's worker threads.
    fn drop(&mut self) {
        let provider = self.provider.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || provider.shutdown());
        }
    }
}

/// The spans of one request: the server span, in whose context the children start.
pub struct RequestSpans<'a> {
    export: &'a Export,
    cx: Context,
    /// For the span's final name, `METHOD route`.
    method: Method,
}

impl RequestSpans<'_> {
    /// The trace as this gateway now takes part in it: the server span's ids, which the access log names.
    pub fn context(&self) -> TraceContext {
        of_span(self.cx.span().span_context())
    }

    /// Start a child span of the request.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        self.export.tracer.build_with_context(
            self.export.tracer.span_builder(name).with_kind(kind),
            &self.cx,
        )
    }

    /// End the server span with the route that served it and the status answered.
    pub fn finish(self, route: Option<&str>, request_id: &str, status: u16) {
        let span: SpanRef<'_> = self.cx.span();
        if let Some(route) = route {
            span.update_name(format!("{} {route}", self.method));
            span.set_attribute(KeyValue::new("credgate.route", route.to_owned()));
        }
        span.set_attributes([
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("credgate.request_id", request_id.to_owned()),
        ]);
        // A server span is an error only for what the server failed at, not for a caller's 4xx.
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// End a child span; `failure` marks it an error.
pub fn end(mut span: Span, failure: Option<&dyn std::fmt::Display>) {
    if let Some(f) = failure {
        span.set_status(Status::error(f.to_string()));
    }
    span.end();
}

/// End the upstream span with the status the upstream answered (or the failure).
pub fn end_upstream(mut span: Span, upstream: &str, status: Result<u16, &dyn std::fmt::Display>) {
    span.set_attribute(KeyValue::new("credgate.upstream", upstream.to_owned()));
    match status {
        Ok(s) => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
            if s >= 400 {
                span.set_status(Status::error(""));
            }
        }
        Err(f) => span.set_status(Status::error(f.to_string())),
    }
    span.end();
}

/// The trace to forward from a span: its trace id, its span id as the parent, its flags.
pub fn of_span(sc: &SpanContext) -> TraceContext {
    TraceContext::from_ids(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    )
}

/// The collector as the OTLP exporter sees it: its requests go through credgate's own HTTP client, spawned on the
/// gateway's runtime (the SDK's batch processor exports from a thread of its own), with the configured headers.
struct Collector {
    http: HttpClient,
    runtime: tokio::runtime::Handle,
    headers: Arc<[(HeaderName, SecretString)]>,
    timeout: Duration,
    endpoint: String,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// An answer larger than this from a collector is refused (an OTLP answer is a few bytes of partial-success).
const MAX_ANSWER: usize = 64 * 1024;

#[async_trait]
impl opentelemetry_http::HttpClient for Collector {
    async fn send_bytes(
        &self,
        req: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let (mut parts, body) = req.into_parts();
        for (name, value) in self.headers.iter() {
            let mut v = HeaderValue::from_str(value.expose_secret())?;
            v.set_sensitive(true);
            parts.headers.insert(name.clone(), v);
        }
        let req = Request::from_parts(parts, crate::body::full(body));
        let (http, timeout) = (self.http.clone(), self.timeout);
        let sent = self
            .runtime
            .spawn(async move { http_client::fetch(&http, req, timeout, MAX_ANSWER).await })
            .await?;
        let got = match sent {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e, "span export failed");
                return Err(e.into());
            }
        };
        if !got.status.is_success() {
            tracing::warn!(endpoint = %self.endpoint, status = got.status.as_u16(), "span export refused");
        }
        let mut rsp = Response::new(got.body);
        *rsp.status_mut() = got.status;
        *rsp.headers_mut() = got.headers;
        Ok(rsp)
    }
}
