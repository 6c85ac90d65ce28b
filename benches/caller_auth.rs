//! scratch
#![allow(missing_docs)]
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let tok = "a".repeat(620);
    c.bench_function("sha256_620", |b| {
        b.iter(|| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(tok.as_bytes())))
    });
    c.bench_function("sha256_342", |b| {
        b.iter(|| {
            aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                black_box(&tok.as_bytes()[..342]),
            )
        })
    });
    let cache: moka::sync::Cache<[u8; 32], u64> =
        moka::sync::Cache::builder().max_capacity(10000).build();
    let k = [7u8; 32];
    cache.insert(k, 5);
    c.bench_function("moka_sync_get", |b| b.iter(|| cache.get(black_box(&k))));
    let cache2: moka::sync::Cache<u64, u64> =
        moka::sync::Cache::builder().max_capacity(10000).build();
    cache2.insert(5, 5);
    c.bench_function("moka_sync_get_u64", |b| {
        b.iter(|| cache2.get(black_box(&5)))
    });
    use std::hash::BuildHasher;
    let rs = std::collections::hash_map::RandomState::new();
    c.bench_function("siphash13_620", |b| {
        b.iter(|| rs.hash_one(black_box(tok.as_bytes())))
    });
}
criterion_group!(benches, bench);
criterion_main!(benches);
