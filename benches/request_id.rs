//! Request ids: the gateway's per-thread chunked ids (`pipeline::request_id`: a `SmallRng` draw, cut from a shared
//! 4 KiB chunk) beside the plain `uuid` crate with its `fast-rng` feature (`Uuid::new_v4` on a thread-local
//! generator, then a `HeaderValue` of its own). Both produce a fresh v4 UUID as a header value and clone it once, as
//! the request path does (one copy goes upstream, one into the response); the architecture issue asks to keep the
//! simpler one unless this says otherwise. Figures live in BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_id");
    g.bench_function("chunked", |b| {
        b.iter(|| {
            let id = credgate::pipeline::request_id(None);
            std::hint::black_box((id.clone(), id))
        })
    });
    g.bench_function("uuid_fast_rng", |b| {
        b.iter(|| {
            let mut buf = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            let id = HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"));
            std::hint::black_box((id.clone(), id))
        })
    });
    g.finish();
}

criterion_group!(benches, ids);
criterion_main!(benches);
