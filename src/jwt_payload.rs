//! The compact JWT (JWS) form: three base64url segments. Splitting and decoding only; nothing here verifies a
//! signature. Caller tokens are verified afterwards by `caller_auth`; a vendor token's claims are read unverified by
//! `credentials` (the token is ours to send, not a caller's to trust).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// The header, payload and signature segments of a compact JWS; `None` unless there are exactly three.
pub(crate) fn segments(token: &str) -> Option<(&str, &str, &str)> {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => Some((h, p, s)),
        _ => None,
    }
}

/// A segment as RFC 7515 writes it: base64url without padding.
pub(crate) fn decode(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment).ok()
}

/// base64url, padded or not: for values whose writers differ (JWK members, vendor tokens).
pub(crate) fn decode_padded_or_not(segment: &str) -> Option<Vec<u8>> {
    decode(segment.trim_end_matches('='))
}

/// The claims of `token` when it is a JWT, read without verifying it.
pub(crate) fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let (_, payload, _) = segments(token)?;
    serde_json::from_slice(&decode_padded_or_not(payload)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_read_from_exactly_three_segments() {
        let p = URL_SAFE_NO_PAD.encode(br#"{"exp":5}"#);
        let claims = unverified_claims(&format!("h.{p}.s")).expect("claims");
        assert_eq!(claims.get("exp"), Some(&Value::from(5)));
        assert!(
            unverified_claims(&format!("h.{p}==.s")).is_some(),
            "padding"
        );
        assert!(unverified_claims(&format!("h.{p}")).is_none());
        assert!(unverified_claims(&format!("h.{p}.s.x")).is_none());
        assert!(unverified_claims("a.b.c").is_none());
        assert_eq!(decode("YQ=="), None, "strict: no padding");
        assert_eq!(decode_padded_or_not("YQ=="), Some(b"a".to_vec()));
    }
}
