//! JWS compact parsing: three base64url segments, a JOSE header read only for `alg`, `kid` and `crit` (never `jku`,
//! `x5u`, `jwk` or `x5c`), and the claims. Parsing only: nothing here trusts the token; signatures are checked by the
//! caller with the issuer's own keys.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::AuthError;
use super::keys::Alg;
use crate::jwt_payload;

/// Longest accepted token, in bytes.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest accepted header segment, in bytes: real JOSE headers are well under 300.
pub(crate) const MAX_HEADER_BYTES: usize = 1024;

/// A token split and decoded, not yet verified.
#[derive(Debug)]
pub(crate) struct Parsed<'t> {
    /// `header.payload`, the signed bytes.
    pub signing_input: &'t [u8],
    /// The signature bytes.
    pub signature: Vec<u8>,
    /// Header `alg`.
    pub alg: Alg,
    /// Header `kid`.
    pub kid: Option<String>,
    /// The claims.
    pub claims: Claims,
}

/// Registered claims pulled out of the claim set, plus the whole set.
#[derive(Debug)]
pub(crate) struct Claims {
    /// `iss`.
    pub iss: Option<String>,
    /// `aud`, as a list.
    pub aud: Vec<String>,
    /// `exp`.
    pub exp: Option<i64>,
    /// `nbf`.
    pub nbf: Option<i64>,
    /// `iat`.
    pub iat: Option<i64>,
    /// Scopes from `scope` and `scp`.
    pub scopes: Vec<Box<str>>,
    /// Every claim.
    pub all: Map<String, Value>,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
    /// Any `crit` at all is refused: credgate understands no JWS extension.
    crit: Option<serde::de::IgnoredAny>,
}

/// Split and decode `token`; rejects anything but a well-formed, signed JWS with an acceptable algorithm name.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let (h, p, s) = jwt_payload::segments(token)
        .ok_or(AuthError::Malformed("not three dot-separated segments"))?;
    if h.len() > MAX_HEADER_BYTES {
        return Err(AuthError::TooLarge);
    }
    let header_json =
        jwt_payload::decode(h).ok_or(AuthError::Malformed("header is not base64url"))?;
    let header: Header<'_> = serde_json::from_slice(&header_json)
        .map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
    let alg = match header.alg.as_deref() {
        None => return Err(AuthError::Malformed("header has no alg")),
        Some(name) => Alg::from_name(name).ok_or(AuthError::AlgNotAllowed { alg: None })?,
    };
    if header.crit.is_some() {
        return Err(AuthError::UnsupportedCrit);
    }
    if s.is_empty() {
        return Err(AuthError::Malformed("signature is empty"));
    }
    let signature =
        jwt_payload::decode(s).ok_or(AuthError::Malformed("signature is not base64url"))?;
    let payload = jwt_payload::decode(p).ok_or(AuthError::Malformed("payload is not base64url"))?;
    let all: Map<String, Value> = serde_json::from_slice(&payload)
        .map_err(|_| AuthError::Malformed("payload is not a JSON object"))?;
    let claims = Claims::from_map(all)?;
    Ok(Parsed {
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
        alg,
        kid: header.kid.map(Cow::into_owned),
        claims,
    })
}

fn numeric_date(v: Option<&Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(AuthError::Malformed(name)),
        Some(_) => Err(AuthError::Malformed(name)),
    }
}

fn strings(v: Option<&Value>, name: &'static str) -> Result<Vec<String>, AuthError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or(AuthError::Malformed(name))
            })
            .collect(),
        Some(_) => Err(AuthError::Malformed(name)),
    }
}

impl Claims {
    fn from_map(all: Map<String, Value>) -> Result<Self, AuthError> {
        let iss = match all.get("iss") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(AuthError::Malformed("iss is not a string")),
        };
        let aud = strings(all.get("aud"), "aud is not a string or array of strings")?;
        let exp = numeric_date(all.get("exp"), "exp is not a number")?;
        let nbf = numeric_date(all.get("nbf"), "nbf is not a number")?;
        let iat = numeric_date(all.get("iat"), "iat is not a number")?;
        let mut scopes: Vec<Box<str>> = Vec::new();
        for name in ["scope", "scp"] {
            for s in strings(
                all.get(name),
                "scope/scp is not a string or array of strings",
            )? {
                scopes.extend(s.split(' ').filter(|x| !x.is_empty()).map(Box::from));
            }
        }
        Ok(Claims {
            iss,
            aud,
            exp,
            nbf,
            iat,
            scopes,
            all,
        })
    }
}
