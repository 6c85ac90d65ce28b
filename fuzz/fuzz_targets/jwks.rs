//! JWKS parsing, as a fetch and a refresh read a document (jsonwebtoken's JWK types, then credgate's key checks and
//! merge). Properties: no panic; every key in force verifies at least one algorithm, only of its own family and curve, and
//! never a symmetric one.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some(keys) = credgate::fuzzing::jwks(data) else {
            return;
        };
        for (kty, algs) in keys {
            assert!(!algs.is_empty(), "a {kty} key that verifies nothing");
            for alg in algs {
                let family_ok = match kty {
                    "RSA" => alg.starts_with("RS") || alg.starts_with("PS"),
                    "EC P-256" => alg == "ES256",
                    "EC P-384" => alg == "ES384",
                    "Ed25519" => alg == "EdDSA",
                    _ => false,
                };
                assert!(family_ok, "a {kty} key verifies {alg}");
            }
        }
    });
}
