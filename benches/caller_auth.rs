//! Caller-token validation cost, per algorithm, beside its floor: the bare aws-lc-rs signature verification of the
//! same signing input with a pre-parsed key (what no validator can beat), and jsonwebtoken's `decode` of the same
//! token (what a straightforward implementation costs). Then the verified-token cache: a hit, and the whole
//! `authenticate` call a request makes on a hit (bearer extraction, cache, key/time re-checks, route rules).
//!
//! Run: `cargo bench --bench caller_auth -- --warm-up-time 1 --measurement-time 3`
//! Figures: see the FIGURES comment below and README.md (Caller authentication).

// FIGURES — 2026-11-23 20:56 UTC, 2-vCPU AMD EPYC VM (shared with other builds; load average 0.9-1.5 during the run),
// `cargo bench --bench caller_auth -- --warm-up-time 1 --measurement-time 3`, criterion medians:
//
//   case   floor: aws-lc-rs verify   jsonwebtoken decode   credgate verify (uncached)   credgate miss (+ cache insert)
//   RS256  17.94 µs                  24.99 µs (1.39x)      21.06 µs (1.17x)             22.78 µs (1.27x)
//   ES256  56.80 µs                  62.61 µs (1.10x)      59.99 µs (1.06x)             61.41 µs (1.08x)
//   EdDSA  41.67 µs                  45.24 µs (1.09x)      44.56 µs (1.07x)             46.04 µs (1.10x)
//
//   cached: validate (hit: cache lookup, key still published, exp/nbf/iat)             212 ns
//   cached: authenticate (hit + bearer extraction + scope check + one forwarded claim)  286 ns
//   (cached rows: 21:00 UTC run with `-- ^cached`, after bearer extraction moved to bytes; it was 337 ns before)
//
// Earlier runs the same evening under load average 3-9 were 1.5-3x slower and their ratios wandered with the noise;
// compare only within one quiet run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use credgate::caller_auth::{CallerAuth, RoutePolicy};
use credgate::gateway::Config;
use credgate::metrics::Metrics;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test/";
const AUD: &str = "credgate";

/// Signs a message with the case's private key.
type Signer = Box<dyn Fn(&[u8]) -> Vec<u8>>;

struct Case {
    alg: &'static str,
    jwk: Value,
    spki: Vec<u8>,
    floor_alg: &'static dyn signature::VerificationAlgorithm,
    jwt_alg: jsonwebtoken::Algorithm,
    sign: Signer,
}

fn cases() -> Vec<Case> {
    let b = |x: &[u8]| B64.encode(x);
    let rsa = Arc::new(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa"));
    let ec =
        Arc::new(EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec"));
    let ed = Arc::new(Ed25519KeyPair::generate().expect("ed"));
    let (r, e, d) = (rsa.clone(), ec.clone(), ed.clone());
    let pt = ec.public_key().as_ref().to_vec();
    vec![
        Case {
            alg: "RS256",
            jwk: json!({"kty": "RSA", "kid": "k-RS256",
                "n": b(rsa.public_key().modulus().big_endian_without_leading_zero()),
                "e": b(rsa.public_key().exponent().big_endian_without_leading_zero())}),
            spki: rsa.public_key().as_der().expect("der").as_ref().to_vec(),
            floor_alg: &signature::RSA_PKCS1_2048_8192_SHA256,
            jwt_alg: jsonwebtoken::Algorithm::RS256,
            sign: Box::new(move |m| {
                let mut s = vec![0; r.public_modulus_len()];
                r.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    m,
                    &mut s,
                )
                .expect("sign");
                s
            }),
        },
        Case {
            alg: "ES256",
            jwk: json!({"kty": "EC", "kid": "k-ES256", "crv": "P-256", "x": b(&pt[1..33]), "y": b(&pt[33..65])}),
            spki: ec.public_key().as_der().expect("der").as_ref().to_vec(),
            floor_alg: &signature::ECDSA_P256_SHA256_FIXED,
            jwt_alg: jsonwebtoken::Algorithm::ES256,
            sign: Box::new(move |m| {
                e.sign(&SystemRandom::new(), m)
                    .expect("sign")
                    .as_ref()
                    .to_vec()
            }),
        },
        Case {
            alg: "EdDSA",
            jwk: json!({"kty": "OKP", "kid": "k-EdDSA", "crv": "Ed25519", "x": b(ed.public_key().as_ref())}),
            spki: ed.public_key().as_der().expect("der").as_ref().to_vec(),
            floor_alg: &signature::ED25519,
            jwt_alg: jsonwebtoken::Algorithm::EdDSA,
            sign: Box::new(move |m| d.sign(m).as_ref().to_vec()),
        },
    ]
}

fn token(c: &Case) -> String {
    let now = credgate::unix_time::now_secs();
    let header = json!({"alg": c.alg, "typ": "JWT", "kid": format!("k-{}", c.alg)});
    let claims = json!({"iss": ISS, "aud": AUD, "sub": "svc-a", "scope": "read payments", "azp": "billing",
        "iat": now, "exp": now + 3600, "jti": "0f8e7d6c5b4a"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = (c.sign)(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

fn bench(crit: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cases = cases();
    let dir = std::env::temp_dir().join(format!("credgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks = dir.join("jwks.json");
    let set = json!({"keys": cases.iter().map(|c| c.jwk.clone()).collect::<Vec<_>>()});
    std::fs::write(&jwks, set.to_string()).expect("write");
    let cfg = Config::from_toml(
        &format!(
            r#"
[upstreams.u]
url = "http://127.0.0.1:1"
[[issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["{AUD}"]
keys = [{{ file = "{}" }}]
[[routes]]
path_prefix = "/"
upstream = "u"
scopes = ["payments"]
forward_claims = {{ sub = "X-Credgate-Subject" }}
"#,
            jwks.display()
        ),
        "<bench>",
    )
    .expect("config");
    let http = credgate::http_client::build(&[], Duration::from_secs(5)).expect("client");
    let auth = CallerAuth::new(
        &cfg.issuers,
        cfg.routes.iter().flat_map(|r| r.auth.forwarded_claims()),
        &http,
        Arc::new(Metrics::default()),
    );

    for c in &cases {
        let t = token(c);
        let (input, sig_b64) = t.rsplit_once('.').expect("jws");
        let sig = B64.decode(sig_b64).expect("sig");
        let mut g = crit.benchmark_group(c.alg);
        let floor = ParsedPublicKey::new(c.floor_alg, &c.spki).expect("key");
        g.bench_function("floor: aws-lc-rs verify, pre-parsed key", |b| {
            b.iter(|| floor.verify_sig(black_box(input.as_bytes()), black_box(&sig)))
        });
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(c.jwk.clone()).expect("jwk");
        let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
        let mut v = jsonwebtoken::Validation::new(c.jwt_alg);
        v.set_issuer(&[ISS]);
        v.set_audience(&[AUD]);
        g.bench_function("jsonwebtoken decode", |b| {
            b.iter(|| jsonwebtoken::decode::<Value>(black_box(&t), &dk, &v).expect("valid"))
        });
        g.bench_function("credgate verify (uncached)", |b| {
            b.to_async(&rt)
                .iter(|| async { auth.verify(black_box(&t)).await.expect("valid") })
        });
        g.bench_function("credgate miss: verify + cache insert", |b| {
            b.to_async(&rt).iter_batched(
                || auth.forget(&t),
                |()| async { auth.validate(black_box(&t)).await.expect("valid") },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }

    let t = token(&cases[0]);
    let policy = RoutePolicy::new(cfg.routes[0].auth.clone());
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {t}")).expect("hv"),
    );
    let uri: http::Uri = "/orders/42".parse().expect("uri");
    rt.block_on(auth.validate(&t)).expect("warm");
    let mut g = crit.benchmark_group("cached");
    g.bench_function("validate (hit)", |b| {
        b.to_async(&rt)
            .iter(|| async { auth.validate(black_box(&t)).await.expect("valid") })
    });
    g.bench_function(
        "authenticate (hit, scope check, one forwarded claim)",
        |b| {
            b.to_async(&rt).iter(|| async {
                auth.authenticate(&policy, black_box(&headers), &uri)
                    .await
                    .expect("valid")
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
