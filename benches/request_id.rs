//! Request ids: `pipeline::request_id` (the `uuid` crate's `Uuid::new_v4` with its `fast-rng` feature, one
//! `HeaderValue` each) beside the per-thread chunked ids it replaced (a `SmallRng` draw cut from a shared 4 KiB
//! chunk, kept here as the yardstick). Both make a fresh v4 UUID as a header value and clone it once, as the request
//! path does (one copy goes upstream, one into the response). Figures live in BENCHMARKS.md.

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;

/// The chunked ids the gateway used before: one allocation per ~100 ids instead of one per id.
mod chunked {
    use bytes::{Bytes, BytesMut};
    use rand::rngs::SmallRng;
    use rand::{Rng as _, SeedableRng as _};

    pub(crate) struct IdSource {
        rng: SmallRng,
        arena: BytesMut,
    }

    impl IdSource {
        pub(crate) fn new() -> Self {
            Self {
                rng: SmallRng::from_entropy(),
                arena: BytesMut::new(),
            }
        }

        pub(crate) fn next(&mut self) -> Bytes {
            let mut buf = uuid::Uuid::encode_buffer();
            let random = self.rng.r#gen::<u128>().to_ne_bytes();
            let id = uuid::Builder::from_random_bytes(random)
                .into_uuid()
                .hyphenated()
                .encode_lower(&mut buf);
            if self.arena.capacity() < id.len() {
                self.arena = BytesMut::with_capacity(4096);
            }
            self.arena.extend_from_slice(id.as_bytes());
            self.arena.split().freeze()
        }
    }
}

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_id");
    g.bench_function("uuid_fast_rng", |b| {
        b.iter(|| {
            let id = credgate::pipeline::request_id(None);
            std::hint::black_box((id.clone(), id))
        })
    });
    let mut source = chunked::IdSource::new();
    g.bench_function("chunked", |b| {
        b.iter(|| {
            let id = HeaderValue::from_maybe_shared(source.next())
                .unwrap_or(HeaderValue::from_static("-"));
            std::hint::black_box((id.clone(), id))
        })
    });
    g.finish();
}

criterion_group!(benches, ids);
criterion_main!(benches);
