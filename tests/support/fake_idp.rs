//! A fake identity provider on 127.0.0.1:0: serves a JWKS that can rotate, go down and set `Cache-Control`, counts
//! fetches, and mints tokens (RS256, PS256, ES256, EdDSA) with any header and claims, including hostile ones.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Which kind of key.
enum Material {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key with its kid, able to sign and to describe its public half.
#[derive(Clone)]
pub struct SigningKey {
    /// Key id.
    pub kid: String,
    m: Arc<Material>,
}

impl SigningKey {
    /// A fresh RSA-2048 key.
    pub fn rsa(kid: &str) -> Self {
        let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa keygen");
        Self {
            kid: kid.into(),
            m: Arc::new(Material::Rsa(kp)),
        }
    }

    /// A fresh P-256 key.
    pub fn ec(kid: &str) -> Self {
        let kp =
            EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec keygen");
        Self {
            kid: kid.into(),
            m: Arc::new(Material::Ec(kp)),
        }
    }

    /// A fresh Ed25519 key.
    pub fn ed(kid: &str) -> Self {
        let kp = Ed25519KeyPair::generate().expect("ed keygen");
        Self {
            kid: kid.into(),
            m: Arc::new(Material::Ed(kp)),
        }
    }

    /// The same key material under another kid.
    pub fn with_kid(&self, kid: &str) -> Self {
        Self {
            kid: kid.into(),
            m: self.m.clone(),
        }
    }

    /// The algorithm this key signs with by default.
    pub fn default_alg(&self) -> &'static str {
        match &*self.m {
            Material::Rsa(_) => "RS256",
            Material::Ec(_) => "ES256",
            Material::Ed(_) => "EdDSA",
        }
    }

    /// Sign `msg` with `alg` (RS256/PS256 for RSA keys; the key's own algorithm otherwise).
    pub fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &*self.m {
            Material::Rsa(kp) => {
                let mut sig = vec![0; kp.public_modulus_len()];
                let pad: &'static dyn signature::RsaEncoding = match alg {
                    "PS256" => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                kp.sign(pad, &rng, msg, &mut sig).expect("rsa sign");
                sig
            }
            Material::Ec(kp) => kp.sign(&rng, msg).expect("ec sign").as_ref().to_vec(),
            Material::Ed(kp) => kp.sign(msg).as_ref().to_vec(),
        }
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        match &*self.m {
            Material::Rsa(kp) => kp.public_key().as_der().expect("der").as_ref().to_vec(),
            Material::Ec(kp) => kp.public_key().as_der().expect("der").as_ref().to_vec(),
            Material::Ed(kp) => kp.public_key().as_der().expect("der").as_ref().to_vec(),
        }
    }

    /// The public key as a PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> String {
        let b64 = STANDARD.encode(self.spki_der());
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).expect("ascii"));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }

    /// The public key as a JWK (JSON).
    pub fn jwk(&self) -> Value {
        let b = |x: &[u8]| URL_SAFE_NO_PAD.encode(x);
        match &*self.m {
            Material::Rsa(kp) => {
                let p = kp.public_key();
                json!({"kty": "RSA", "kid": self.kid, "use": "sig",
                       "n": b(p.modulus().big_endian_without_leading_zero()),
                       "e": b(p.exponent().big_endian_without_leading_zero())})
            }
            Material::Ec(kp) => {
                let pt = kp.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "crv": "P-256", "x": b(&pt[1..33]), "y": b(&pt[33..65])})
            }
            Material::Ed(kp) => {
                json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b(kp.public_key().as_ref())})
            }
        }
    }
}

/// base64url without padding.
pub fn b64(x: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(x)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Standard claims: iss, aud, sub, scope, iat now, exp in an hour, a unique jti.
pub fn claims(iss: &str, aud: &str) -> Value {
    static N: AtomicUsize = AtomicUsize::new(0);
    json!({"iss": iss, "aud": aud, "sub": "svc-a", "scope": "read write", "azp": "billing",
           "iat": now(), "exp": now() + 3600, "jti": format!("j{}", N.fetch_add(1, Ordering::Relaxed))})
}

/// A token with exactly this header and claims, signed by `key` with `alg`.
pub fn token_with(header: &Value, claims: &Value, key: &SigningKey, alg: &str) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(alg, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// A token signed by `key` with its default algorithm and its kid.
pub fn mint(key: &SigningKey, claims: &Value) -> String {
    let alg = key.default_alg();
    token_with(
        &json!({"alg": alg, "typ": "JWT", "kid": key.kid}),
        claims,
        key,
        alg,
    )
}

struct State {
    jwks: Mutex<Value>,
    down: AtomicBool,
    hits: AtomicUsize,
    attacker_hits: AtomicUsize,
    max_age: Mutex<Option<u64>>,
}

/// A running fake IdP.
#[derive(Clone)]
pub struct FakeIdp {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl FakeIdp {
    /// Serve a JWKS of `keys` (public halves).
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            jwks: Mutex::new(Value::Null),
            down: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
            attacker_hits: AtomicUsize::new(0),
            max_age: Mutex::new(None),
        });
        let idp = FakeIdp {
            addr,
            state: state.clone(),
        };
        idp.set_keys(keys);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req.uri().path())) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        idp
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// A URL an attacker would point `jku` at; fetches are counted by [`FakeIdp::attacker_hits`].
    pub fn attacker_url(&self) -> String {
        format!("http://{}/attacker.json", self.addr)
    }

    /// Replace the published keys (rotation).
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        let set = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
        *self.state.jwks.lock().expect("lock") = set;
    }

    /// Answer 503 to every fetch while down.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Send `Cache-Control: max-age=N`.
    pub fn set_max_age(&self, secs: Option<u64>) {
        *self.state.max_age.lock().expect("lock") = secs;
    }

    /// JWKS fetches so far (including failed ones).
    pub fn jwks_hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Fetches of the attacker URL.
    pub fn attacker_hits(&self) -> usize {
        self.state.attacker_hits.load(Ordering::SeqCst)
    }
}

fn answer(state: &State, path: &str) -> Response<credgate::body::Body> {
    let mut rsp = match path {
        "/jwks.json" => {
            state.hits.fetch_add(1, Ordering::SeqCst);
            if state.down.load(Ordering::SeqCst) {
                let mut r = Response::new(credgate::body::full("down"));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return r;
            }
            let body = state.jwks.lock().expect("lock").to_string();
            let mut r = Response::new(credgate::body::full(body));
            if let Some(age) = *state.max_age.lock().expect("lock") {
                r.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_str(&format!("max-age={age}")).expect("hv"),
                );
            }
            r
        }
        "/attacker.json" => {
            state.attacker_hits.fetch_add(1, Ordering::SeqCst);
            Response::new(credgate::body::full("{\"keys\":[]}"))
        }
        _ => {
            let mut r = Response::new(credgate::body::full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}
