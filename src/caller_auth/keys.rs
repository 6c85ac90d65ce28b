//! Issuer-bound key sets: each public key is parsed once into aws-lc-rs verifiers, one per algorithm it may be used
//! with. The key's type decides the algorithm family (RSA → RS*/PS*, EC → ES256/ES384 by curve, OKP → EdDSA); a key
//! never verifies an algorithm outside its family or its issuer's allowlist. Keys come from jsonwebtoken's JWK types or
//! from SPKI DER (PEM files); there is no hand-written JWK parsing here and no symmetric key is ever accepted.

use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents, VerificationAlgorithm};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};

/// A JWS algorithm credgate verifies. Symmetric (HS*) and `none` are deliberately absent, so config naming them is
/// refused by serde with the list of these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// What kind of public key a key is; it decides which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// RSA, at least 2048 bits.
    Rsa,
    /// EC on P-256.
    P256,
    /// EC on P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

impl Alg {
    /// Every supported algorithm.
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The algorithm with this exact (case-sensitive, RFC 7518) name.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Its JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The key family this algorithm needs.
    pub fn family(self) -> Family {
        match self {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                Family::Rsa
            }
            Alg::ES256 => Family::P256,
            Alg::ES384 => Family::P384,
            Alg::EdDSA => Family::Ed25519,
        }
    }

    fn rsa_params(self) -> Option<&'static signature::RsaParameters> {
        match self {
            Alg::RS256 => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            Alg::RS384 => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
            Alg::RS512 => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
            Alg::PS256 => Some(&signature::RSA_PSS_2048_8192_SHA256),
            Alg::PS384 => Some(&signature::RSA_PSS_2048_8192_SHA384),
            Alg::PS512 => Some(&signature::RSA_PSS_2048_8192_SHA512),
            Alg::ES256 | Alg::ES384 | Alg::EdDSA => None,
        }
    }

    fn verification(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            // JWS carries ECDSA signatures as fixed-width r||s, not ASN.1.
            Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            Alg::EdDSA => &signature::ED25519,
        }
    }
}

/// Why a key was not taken.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A symmetric, encryption-only or unknown key type.
    #[error("unsupported key type (only RSA, EC P-256/P-384 and Ed25519 public keys are used)")]
    Unsupported,
    /// `use` is not `sig`, or `key_ops` lacks `verify`.
    #[error("key is not for signature verification (use/key_ops)")]
    NotForSigning,
    /// None of the issuer's algorithms fits this key.
    #[error("no allowed algorithm fits this key")]
    NoAllowedAlg,
    /// RSA modulus under 2048 bits.
    #[error("RSA key shorter than 2048 bits")]
    WeakKey,
    /// The key material does not parse.
    #[error("malformed key material")]
    Malformed,
}

/// One public key with a verifier per usable algorithm.
pub struct Key {
    kid: Option<Box<str>>,
    family: Family,
    /// The raw public material and allowed algorithms, to recognise the same key in a later JWKS.
    material: Vec<u8>,
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field(
                "algorithms",
                &self
                    .verifiers
                    .iter()
                    .map(|(a, _)| a.name())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Shown in `/admin/config` as its id, type and algorithms (public material, no secret).
impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Key", 3)?;
        st.serialize_field("kid", &self.kid)?;
        st.serialize_field("key_type", self.key_type())?;
        let algs: Vec<Alg> = self.verifiers.iter().map(|(a, _)| *a).collect();
        st.serialize_field("algorithms", &algs)?;
        st.end()
    }
}

impl Key {
    /// The key id, if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key type as an operator names it: `RSA`, `EC P-256`, `EC P-384` or `Ed25519`.
    pub fn key_type(&self) -> &'static str {
        match self.family {
            Family::Rsa => "RSA",
            Family::P256 => "EC P-256",
            Family::P384 => "EC P-384",
            Family::Ed25519 => "Ed25519",
        }
    }

    /// The verifier for `alg`, if this key may verify it.
    pub fn verifier(&self, alg: Alg) -> Option<&ParsedPublicKey> {
        self.verifiers
            .iter()
            .find_map(|(a, k)| (*a == alg).then_some(k))
    }

    fn same_as(&self, other: &Key) -> bool {
        self.kid == other.kid
            && self.family == other.family
            && self.material == other.material
            && self.verifiers.len() == other.verifiers.len()
            && self
                .verifiers
                .iter()
                .zip(&other.verifiers)
                .all(|(a, b)| a.0 == b.0)
    }

    fn build(
        kid: Option<String>,
        family: Family,
        material: Vec<u8>,
        algs: &[Alg],
        parse: impl Fn(Alg) -> Option<ParsedPublicKey>,
    ) -> Result<Key, KeyError> {
        let mut verifiers = Vec::new();
        for &alg in algs.iter().filter(|a| a.family() == family) {
            verifiers.push((alg, parse(alg).ok_or(KeyError::Malformed)?));
        }
        if verifiers.is_empty() {
            return Err(KeyError::NoAllowedAlg);
        }
        Ok(Key {
            kid: kid.map(String::into_boxed_str),
            family,
            material,
            verifiers,
        })
    }

    /// A key from a JWK, usable with those of `allowed` that fit its type (and its own `alg`, when it names one).
    pub fn from_jwk(jwk: &Jwk, allowed: &[Alg]) -> Result<Key, KeyError> {
        if let Some(u) = &jwk.common.public_key_use
            && *u != PublicKeyUse::Signature
        {
            return Err(KeyError::NotForSigning);
        }
        if let Some(ops) = &jwk.common.key_operations
            && !ops.contains(&KeyOperations::Verify)
        {
            return Err(KeyError::NotForSigning);
        }
        let algs: Vec<Alg> = match jwk.common.key_algorithm {
            None => allowed.to_vec(),
            Some(ka) => match alg_of(ka) {
                Some(a) if allowed.contains(&a) => vec![a],
                Some(_) => return Err(KeyError::NoAllowedAlg),
                None => return Err(KeyError::Unsupported),
            },
        };
        let kid = jwk.common.key_id.clone();
        match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let n = b64(&p.n)?;
                let e = b64(&p.e)?;
                let n_trim = trim_zeros(&n);
                if n_trim.len() < 256 {
                    return Err(KeyError::WeakKey);
                }
                let mut material = n_trim.to_vec();
                material.extend_from_slice(&e);
                let comps = RsaPublicKeyComponents {
                    n: n_trim,
                    e: trim_zeros(&e),
                };
                Key::build(kid, Family::Rsa, material.clone(), &algs, |a| {
                    comps.to_parsed_public_key(a.rsa_params()?).ok()
                })
            }
            AlgorithmParameters::EllipticCurve(p) => {
                let (family, len) = match p.curve {
                    EllipticCurve::P256 => (Family::P256, 32),
                    EllipticCurve::P384 => (Family::P384, 48),
                    // P-521, Ed25519 under kty EC, and curves jsonwebtoken may add later.
                    _ => return Err(KeyError::Unsupported),
                };
                let (x, y) = (b64(&p.x)?, b64(&p.y)?);
                if x.len() != len || y.len() != len {
                    return Err(KeyError::Malformed);
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Key::build(kid, family, point.clone(), &algs, |a| {
                    ParsedPublicKey::new(a.verification(), &point).ok()
                })
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                if p.curve != EllipticCurve::Ed25519 {
                    return Err(KeyError::Unsupported);
                }
                let x = b64(&p.x)?;
                if x.len() != 32 {
                    return Err(KeyError::Malformed);
                }
                Key::build(kid, Family::Ed25519, x.clone(), &algs, |a| {
                    ParsedPublicKey::new(a.verification(), &x).ok()
                })
            }
            AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_) => {
                Err(KeyError::Unsupported)
            }
            // `AlgorithmParameters` is non-exhaustive: a future variant is a key type we do not know.
            _ => Err(KeyError::Unsupported),
        }
    }

    /// A key from SubjectPublicKeyInfo DER (a PEM `PUBLIC KEY`); its type is found by parsing it.
    pub fn from_spki_der(
        kid: Option<String>,
        der: &[u8],
        allowed: &[Alg],
    ) -> Result<Key, KeyError> {
        for (family, probe) in [
            (Family::Rsa, Alg::RS256),
            (Family::P256, Alg::ES256),
            (Family::P384, Alg::ES384),
            (Family::Ed25519, Alg::EdDSA),
        ] {
            if ParsedPublicKey::new(probe.verification(), der).is_ok() {
                return Key::build(kid, family, der.to_vec(), allowed, |a| {
                    ParsedPublicKey::new(a.verification(), der).ok()
                });
            }
        }
        Err(KeyError::Malformed)
    }
}

fn alg_of(ka: KeyAlgorithm) -> Option<Alg> {
    Alg::from_name(&ka.to_string())
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// base64url, padded or not (IdPs differ).
fn b64(s: &str) -> Result<Vec<u8>, KeyError> {
    crate::jwt_payload::decode_padded_or_not(s).ok_or(KeyError::Malformed)
}

/// Keys of a JWKS that were not taken, by kid, with the reason.
pub(crate) type Skipped = Vec<(Option<String>, KeyError)>;

/// Parse every usable key of a JWKS; unusable ones are reported and skipped, as IdPs publish encryption keys too.
pub(crate) fn from_jwks(set: &JwkSet, allowed: &[Alg]) -> (Vec<Arc<Key>>, Skipped) {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for jwk in &set.keys {
        match Key::from_jwk(jwk, allowed) {
            Ok(k) => keys.push(Arc::new(k)),
            Err(e) => skipped.push((jwk.common.key_id.clone(), e)),
        }
    }
    (keys, skipped)
}

/// The keys in force for one issuer: its static keys plus the last good JWKS. Replaced whole, never mutated.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<Arc<Key>>,
    /// When the JWKS part was last fetched successfully.
    pub fetched_at: Option<Instant>,
}

/// The result of looking a token's `kid` up.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// The key to verify with.
    Found(&'a Arc<Key>),
    /// No key with that id (or no id and more than one key).
    Missing,
}

impl KeySet {
    /// A set of `keys`.
    pub(crate) fn new(keys: Vec<Arc<Key>>, fetched_at: Option<Instant>) -> Self {
        Self { keys, fetched_at }
    }

    /// Find the key for a token's `kid`; a token without `kid` is accepted only when the issuer has exactly one key.
    pub(crate) fn find(&self, kid: Option<&str>) -> Lookup<'_> {
        let hit = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        };
        hit.map_or(Lookup::Missing, Lookup::Found)
    }

    /// Whether this exact key (same parsed object) is still in the set.
    pub(crate) fn holds(&self, key: &Arc<Key>) -> bool {
        self.keys.iter().any(|k| Arc::ptr_eq(k, key))
    }

    /// The keys in force.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.keys.iter()
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no key at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Merge static keys with freshly fetched ones, reusing keys this set already holds so that tokens verified
    /// against an unchanged key stay cached. Static keys win a `kid` clash. Returns the keys and whether they changed.
    pub(crate) fn merge(
        &self,
        statics: &[Arc<Key>],
        fetched: Vec<Arc<Key>>,
    ) -> (Vec<Arc<Key>>, bool) {
        let mut out: Vec<Arc<Key>> = statics.to_vec();
        for k in fetched {
            if k.kid.is_some() && out.iter().any(|s| s.kid == k.kid) {
                continue;
            }
            let reused = self.keys.iter().find(|old| old.same_as(&k)).cloned();
            out.push(reused.unwrap_or(k));
        }
        let changed = out.len() != self.keys.len()
            || out.iter().zip(&self.keys).any(|(a, b)| !Arc::ptr_eq(a, b));
        (out, changed)
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    use super::*;

    #[test]
    fn spki_key_type_decides_the_family() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("keygen");
        let der = kp.public_key().as_der().expect("der");
        let key = Key::from_spki_der(Some("e".into()), der.as_ref(), &Alg::ALL).expect("key");
        assert_eq!(key.family, Family::P256);
        assert!(key.verifier(Alg::ES256).is_some());
        assert!(key.verifier(Alg::RS256).is_none() && key.verifier(Alg::ES384).is_none());
        // An EC key on an RSA-only issuer is refused, not reinterpreted.
        assert!(matches!(
            Key::from_spki_der(None, der.as_ref(), &[Alg::RS256]),
            Err(KeyError::NoAllowedAlg)
        ));
    }

    /// A P-256 key, and a function parsing the same key again into a new object (as a refreshed JWKS would).
    fn p256(kid: &'static str) -> (Arc<Key>, impl Fn() -> Arc<Key>) {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("keygen");
        let der = kp.public_key().as_der().expect("der").as_ref().to_vec();
        let parse =
            move || Arc::new(Key::from_spki_der(Some(kid.into()), &der, &Alg::ALL).expect("key"));
        (parse(), parse)
    }

    #[test]
    fn a_refresh_keeps_unchanged_keys_as_they_were_and_lets_removed_ones_go() {
        let ((a, a_again), (b, _)) = (p256("a"), p256("b"));
        let before = KeySet::new(vec![a.clone(), b.clone()], None);
        // The refreshed JWKS: `a` again (a new object for the same key), `b` gone.
        let (keys, changed) = before.merge(&[], vec![a_again()]);
        assert!(changed);
        let after = KeySet::new(keys, None);
        assert!(
            after.holds(&a),
            "tokens verified with the unchanged key stay cached"
        );
        assert!(
            !after.holds(&b),
            "tokens verified with the removed key stop at once"
        );
        // A refresh that changes nothing keeps the very same keys.
        let (keys, changed) = after.merge(&[], vec![a_again()]);
        assert!(!changed);
        assert!(Arc::ptr_eq(&keys[0], &a));
    }

    #[test]
    fn jwks_skips_symmetric_encryption_and_weak_keys() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "weak", "n": "AQAB", "e": "AQAB"},
        ]}))
        .expect("jwks");
        let (keys, skipped) = from_jwks(&set, &Alg::ALL);
        assert!(keys.is_empty());
        let reasons: Vec<_> = skipped.iter().map(|(_, e)| e.to_string()).collect();
        assert!(reasons[0].contains("unsupported"), "{reasons:?}");
        assert!(reasons[1].contains("not for signature"), "{reasons:?}");
        assert!(reasons[2].contains("2048"), "{reasons:?}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn b64url() -> impl Strategy<Value = String> {
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            })
        }

        /// A JWK as a hostile or careless IdP might publish it: any key type and curve, any sizes, any use.
        fn jwk() -> impl Strategy<Value = serde_json::Value> {
            (
                prop::sample::select(vec!["RSA", "EC", "OKP", "oct", "", "rsa"]),
                prop::sample::select(vec!["P-256", "P-384", "P-521", "Ed25519", "X25519", ""]),
                prop::sample::select(vec!["sig", "enc", ""]),
                b64url(),
                b64url(),
                prop::option::of(prop::sample::select(vec![
                    "RS256", "ES256", "EdDSA", "HS256", "none",
                ])),
            )
                .prop_map(|(kty, crv, use_, a, b, alg)| {
                    let mut k = serde_json::json!({
                        "kty": kty, "kid": "k", "crv": crv, "use": use_,
                        "n": a, "e": b, "x": a, "y": b, "k": a,
                    });
                    if let Some(alg) = alg {
                        k["alg"] = serde_json::json!(alg);
                    }
                    k
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Whatever a JWKS holds, reading it never panics, and every key it yields can verify something.
            #[test]
            fn any_jwks_is_read_without_a_panic(keys in prop::collection::vec(jwk(), 0..6)) {
                let doc = serde_json::json!({"keys": keys});
                let Ok(set) = serde_json::from_value::<JwkSet>(doc) else { return Ok(()) };
                let (keys, skipped) = from_jwks(&set, &Alg::ALL);
                prop_assert!(keys.len() + skipped.len() <= set.keys.len());
                for k in keys {
                    prop_assert!(!k.verifiers.is_empty(), "a key with no algorithm to verify with");
                }
            }
        }
    }
}
