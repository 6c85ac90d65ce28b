//! How a validated config is shown (`GET /admin/config`): `serialize_with` helpers for the field types that have no
//! serde form of their own. Secrets cannot slip through: `SecretString` and `HeaderValue` do not implement
//! `Serialize`, so a secret field without [`redacted`] does not compile.

use std::fmt::Display;

use rustls::pki_types::CertificateDer;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// What a secret is shown as.
pub const REDACTED: &str = "[REDACTED]";

/// Any value, shown as [`REDACTED`].
pub fn redacted<T: ?Sized, S: Serializer>(_: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

/// A list of secrets: one [`REDACTED`] for each.
pub fn redacted_each<T, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| REDACTED))
}

/// An optional secret: `null` when absent, else [`REDACTED`].
pub fn redacted_opt<T, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// A value by its `Display` form (URIs, methods, header names, CIDRs).
pub fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// An optional value by its `Display` form, `null` when absent.
pub fn display_opt<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) => s.collect_str(x),
        None => s.serialize_none(),
    }
}

/// A list of values by their `Display` forms.
pub fn display_all<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for x in v {
        seq.serialize_element(&format_args!("{x}"))?;
    }
    seq.end()
}

/// Named secrets (headers, parameters): their names, each value [`REDACTED`].
pub fn names<K: Display, V, S: Serializer>(v: &[(K, V)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(v.len()))?;
    for (name, _) in v {
        map.serialize_entry(&format_args!("{name}"), REDACTED)?;
    }
    map.end()
}

/// Pairs as a map, each key by its `Display` form.
pub fn map<K: Display, V: Serialize, S: Serializer>(v: &[(K, V)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(v.len()))?;
    for (k, x) in v {
        map.serialize_entry(&format_args!("{k}"), x)?;
    }
    map.end()
}

/// Pairs as a map, keys and values by their `Display` forms.
pub fn map_display<K: Display, V: Display, S: Serializer>(
    v: &[(K, V)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(v.len()))?;
    for (k, x) in v {
        map.serialize_entry(&format_args!("{k}"), &format_args!("{x}"))?;
    }
    map.end()
}

/// Certificates by their SHA-256 fingerprints (`sha256:…`), the form `openssl x509 -fingerprint -sha256` prints.
pub fn certs<S: Serializer>(v: &[CertificateDer<'static>], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for c in v {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, c.as_ref());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        seq.serialize_element(&format_args!("sha256:{hex}"))?;
    }
    seq.end()
}
