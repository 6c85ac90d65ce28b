//! Writes what needs the private keys in `fuzz/keys/`: the public `keys/jwks.json` the caller-auth target trusts,
//! and seeds of real signed tokens (every algorithm, good and subtly bad) for `corpus/caller_auth`. Run from `fuzz/`
//! with `cargo run --bin seeds` after changing a key; tokens expire in 2100.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use credgate_fuzz::{AUD, AZP, ISS, SCOPE};
use serde_json::{Value, json};

fn der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("PEM base64")
}

fn b(x: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(x)
}

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Signer {
    fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Ed(k) => k.sign(msg).as_ref().to_vec(),
            Signer::Ec(k) => k.sign(&rng, msg).expect("ec sign").as_ref().to_vec(),
            Signer::Rsa(k) => {
                let pad: &'static dyn signature::RsaEncoding = match alg {
                    "PS256" => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(pad, &rng, msg, &mut sig).expect("rsa sign");
                sig
            }
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Ed(k) => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b(k.public_key().as_ref())})
            }
            Signer::Ec(k) => {
                let pt = k.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b(&pt[1..33]), "y": b(&pt[33..65])})
            }
            Signer::Rsa(k) => {
                let p = k.public_key();
                json!({"kty": "RSA", "kid": kid, "use": "sig",
                       "n": b(p.modulus().big_endian_without_leading_zero()),
                       "e": b(p.exponent().big_endian_without_leading_zero())})
            }
        }
    }
}

fn token(signer: &Signer, alg: &str, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b(header.to_string().as_bytes()),
        b(claims.to_string().as_bytes())
    );
    let sig = signer.sign(alg, input.as_bytes());
    format!("{input}.{}", b(&sig))
}

fn main() {
    let read = |f: &str| std::fs::read_to_string(format!("keys/{f}")).expect("run from fuzz/");
    let ed =
        Signer::Ed(Ed25519KeyPair::from_pkcs8(&der(&read("ed25519.pem"))).expect("ed25519 key"));
    let ec = Signer::Ec(
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der(&read("p256.pem")),
        )
        .expect("p256 key"),
    );
    let rsa = Signer::Rsa(RsaKeyPair::from_pkcs8(&der(&read("rsa.pem"))).expect("rsa key"));
    let keys = [
        (&ed, "ed-1", "EdDSA"),
        (&ec, "ec-1", "ES256"),
        (&rsa, "rsa-1", "RS256"),
    ];
    let jwks = json!({"keys": keys.iter().map(|(s, kid, _)| s.jwk(kid)).collect::<Vec<_>>()});
    std::fs::write(
        "keys/jwks.json",
        serde_json::to_string_pretty(&jwks).expect("json"),
    )
    .expect("write jwks");

    let good = json!({"iss": ISS, "aud": AUD, "sub": "svc-a", "scope": format!("{SCOPE} write"), AZP.0: AZP.1,
                      "iat": 1_700_000_000, "exp": 4_102_444_800_i64});
    let mut variants: Vec<(&str, Value)> = vec![("good", good.clone())];
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    variants.push(("aud-array", with("aud", json!(["other", AUD]))));
    variants.push(("scp-array", with("scp", json!([SCOPE]))));
    variants.push(("no-scope", with("scope", json!("write"))));
    variants.push(("expired", with("exp", json!(1_700_000_100))));
    variants.push(("nbf-future", with("nbf", json!(4_000_000_000_i64))));
    variants.push(("wrong-azp", with(AZP.0, json!("other"))));
    variants.push(("wrong-iss", with("iss", json!("https://evil.test/"))));
    let dir = std::path::Path::new("corpus/caller_auth");
    std::fs::create_dir_all(dir).expect("corpus dir");
    let mut n = 0;
    for (signer, kid, alg) in keys {
        for (name, claims) in &variants {
            let t = token(
                signer,
                alg,
                &json!({"alg": alg, "typ": "JWT", "kid": kid}),
                claims,
            );
            // The input: the request target on the first line, then each Authorization header value.
            std::fs::write(
                dir.join(format!("{kid}-{name}")),
                format!("/api/x?q=1\nBearer {t}"),
            )
            .expect("seed");
            n += 1;
        }
    }
    let t = token(
        &rsa,
        "PS256",
        &json!({"alg": "PS256", "kid": "rsa-1"}),
        &good,
    );
    std::fs::write(dir.join("rsa-1-ps256"), format!("/api/x\nBearer {t}")).expect("seed");
    let t = token(
        &ed,
        "EdDSA",
        &json!({"alg": "EdDSA", "kid": "ed-1", "crit": ["exp"]}),
        &good,
    );
    std::fs::write(dir.join("ed-1-crit"), format!("/api/x\nBearer {t}")).expect("seed");
    let t = token(&ec, "ES256", &json!({"alg": "ES256", "kid": "ec-1"}), &good);
    std::fs::write(
        dir.join("ec-1-two-headers"),
        format!("/api/x\nBearer {t}\nBearer {t}"),
    )
    .expect("seed");
    std::fs::write(
        dir.join("ec-1-in-query"),
        format!("/api/x?access_token={t}\nBearer {t}"),
    )
    .expect("seed");
    eprintln!("wrote keys/jwks.json and {} seeds", n + 4);
}
