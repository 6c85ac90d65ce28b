//! The canonical form of a request path, made once before routing so that the gateway and the upstream agree on what
//! path a request is for. Upstreams differ in what they normalise (Tomcat and Spring strip `;` parameters, many decode
//! `%XX` or merge slashes, some ignore case); a route's caller policy must hold for every reading of the path, so:
//!
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded, other escapes are kept with upper-case hex;
//! - runs of `/` are merged into one (nginx's `merge_slashes`);
//! - refused: an encoded `/` or `\`, a raw `\`, a `;` (path parameters), a control character, a malformed escape, and
//!   any `.` or `..` segment however it is spelt (`%2e`, `.%2E`, `..;`);
//! - refused too: the four letters outside ASCII whose case mapping is an ASCII letter (`İ ı ſ K`, raw or escaped),
//!   which an upstream comparing as Java's `equalsIgnoreCase` does reads as `i`, `s` and `k` (found by fuzzing);
//! - route prefixes then match case-insensitively (ASCII), so `/pub/ADMIN` is held to the `/pub/admin` route; the
//!   path is forwarded as canonicalised, its case as sent.
//!
//! A leaf: the pipeline and the vendor flows that check paths of their own both call it.

use std::borrow::Cow;

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `.` or `..` segment, in any spelling.
    #[error("path has dot segments")]
    DotSegment,
    /// `%2F` or `%5C`, or a raw backslash: a segment boundary some upstreams see and others do not.
    #[error("path has an encoded slash or a backslash")]
    EncodedSlash,
    /// A `;` path parameter, which some upstreams strip before routing.
    #[error("path parameters (;) are not accepted")]
    Parameter,
    /// A `%` not followed by two hex digits, or an escaped control character.
    #[error("path has a malformed or control-character escape")]
    BadEscape,
    /// The path does not start with `/`.
    #[error("path must start with /")]
    NotAbsolute,
    /// A letter whose case mapping is ASCII (`İ ı ſ K`): some upstreams match it as `i`, `s` or `k`.
    #[error("path has a letter that case-folds to ASCII (İ ı ſ K)")]
    CaseFoldsToAscii,
}

/// The canonical form of `path` (see the module doc), borrowed when it is already canonical (nearly every request).
pub(crate) fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // The common case: no escape, no doubled slash, nothing refused, no dot segment. One scan and no allocation.
    if !bytes
        .iter()
        .any(|b| matches!(b, b'%' | b'\\' | b';' | b'.') || b.is_ascii_control() || !b.is_ascii())
        && !path.contains("//")
    {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let v = decode_hex(hex).ok_or(PathError::BadEscape)?;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b';' => return Err(PathError::Parameter),
                    v if v.is_ascii_control() => return Err(PathError::BadEscape),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::EncodedSlash),
            b';' => return Err(PathError::Parameter),
            b if b.is_ascii_control() => return Err(PathError::BadEscape),
            b'/' if out.ends_with('/') => i += 1,
            _ => {
                // Multi-byte UTF-8 is copied whole: `path` is a `str`, and only ASCII bytes are matched above.
                let len = utf8_len(b);
                out.push_str(&path[i..i + len]);
                i += len;
            }
        }
    }
    if out.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(PathError::DotSegment);
    }
    if (out.contains('%') || !out.is_ascii()) && folds_to_ascii(&out) {
        return Err(PathError::CaseFoldsToAscii);
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The letters outside ASCII whose simple case mapping is an ASCII letter, in UTF-8: `İ` and `ı` (to `i`/`I`), `ſ`
/// (to `S`), `K` (Kelvin sign, to `k`).
const FOLDS_TO_ASCII: [&[u8]; 4] = [b"\xC4\xB0", b"\xC4\xB1", b"\xC5\xBF", b"\xE2\x84\xAA"];

/// Whether `path` (canonical so far: every `%` starts a valid escape) holds one of [`FOLDS_TO_ASCII`], raw or escaped.
fn folds_to_ascii(path: &str) -> bool {
    let b = path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b
            .get(i + 1..i + 3)
            .filter(|_| b[i] == b'%')
            .and_then(decode_hex)
        {
            Some(v) => {
                decoded.push(v);
                i += 3;
            }
            None => {
                decoded.push(b[i]);
                i += 1;
            }
        }
    }
    FOLDS_TO_ASCII
        .iter()
        .any(|f| decoded.windows(f.len()).any(|w| w == *f))
}

fn decode_hex(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16);
    let hi = digit(hex[0])?;
    let lo = digit(hex[1])?;
    u8::try_from(hi * 16 + lo).ok()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The length of the UTF-8 sequence that starts with `lead`.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_canonicalise_or_are_refused() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/api/x", Ok("/api/x")),
            ("/a/.well-known/x", Ok("/a/.well-known/x")),
            ("/api/..x/", Ok("/api/..x/")),
            ("/api/x..", Ok("/api/x..")),
            ("/pub/%61dmin", Ok("/pub/admin")),
            ("/pub/%7Euser%2d%5F", Ok("/pub/~user-_")),
            ("/q/100%25", Ok("/q/100%25")),
            ("/q/a%2bb", Ok("/q/a%2Bb")),
            ("/q/%C3%A9", Ok("/q/%C3%A9")),
            ("/q/é", Ok("/q/é")),
            ("/pub//admin", Ok("/pub/admin")),
            ("//pub///admin/", Ok("/pub/admin/")),
            ("/pub/ADMIN", Ok("/pub/ADMIN")),
            ("/api/../x", Err(DotSegment)),
            ("/api/./x", Err(DotSegment)),
            ("/..", Err(DotSegment)),
            ("/api/%2e%2e/x", Err(DotSegment)),
            ("/api/%2E./x", Err(DotSegment)),
            ("/api/.%2E", Err(DotSegment)),
            ("/api/%2e", Err(DotSegment)),
            ("/api/..;/x", Err(Parameter)),
            ("/api/.;/x", Err(Parameter)),
            ("/pub/admin;x", Err(Parameter)),
            ("/pub/admin%3bx", Err(Parameter)),
            ("/api/..%2fadmin", Err(EncodedSlash)),
            ("/ids/a%2Fb", Err(EncodedSlash)),
            ("/api/%2E%2E%5Cadmin", Err(EncodedSlash)),
            ("/api/..\\admin", Err(EncodedSlash)),
            ("/api/%", Err(BadEscape)),
            ("/api/%4", Err(BadEscape)),
            ("/api/%zz", Err(BadEscape)),
            ("/api/%00", Err(BadEscape)),
            ("/api/%0a", Err(BadEscape)),
            ("api", Err(NotAbsolute)),
            ("/q/ı", Err(CaseFoldsToAscii)),
            ("/q/%C4%B1", Err(CaseFoldsToAscii)),
            ("/q/%c5%bf", Err(CaseFoldsToAscii)),
            ("/q/\u{212a}", Err(CaseFoldsToAscii)),
            ("/q/İ", Err(CaseFoldsToAscii)),
            ("/q/Å", Ok("/q/Å")),
            ("/q/%C4%B2", Ok("/q/%C4%B2")),
        ];
        for (path, want) in cases {
            let got = canonical(path).map(|c| c.into_owned());
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{path}");
        }
    }

    /// Found by the `path_route` fuzz target: `/apı` was held to the `/` route, while an upstream matching as Java's
    /// `equalsIgnoreCase` serves it as `/api`; likewise `ſ` for `s` and the Kelvin sign for `k`.
    #[test]
    fn fuzz_path_route_letters_that_case_fold_to_ascii_are_refused() {
        for found in [
            "/ap\u{131}",
            "/ap\u{131}/a/intKrnal/sudo+",
            "/static/file\u{17f}//\u{17f}A9",
            "/ap\u{131}/////a//ial/sudoB",
        ] {
            assert_eq!(
                canonical(found),
                Err(PathError::CaseFoldsToAscii),
                "{found}"
            );
        }
    }

    #[test]
    fn a_canonical_path_is_borrowed() {
        assert!(matches!(canonical("/api/v1/x-y_z~"), Ok(Cow::Borrowed(_))));
        assert!(matches!(canonical("/a/.well-known"), Ok(Cow::Borrowed(_))));
        assert!(matches!(canonical("/q/é"), Ok(Cow::Borrowed(_))));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Pieces that make paths hard: dot segments in every spelling, encoded and raw separators, parameters,
        /// escapes good and bad, case, non-ASCII.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "/",
                "//",
                "a",
                "A",
                "admin",
                "ADMIN",
                ".",
                "..",
                "%2e",
                "%2E",
                ".%2e",
                "%2f",
                "%2F",
                "%5c",
                "\\",
                "%61",
                "%41",
                "%25",
                "%2b",
                "%7e",
                "~",
                "-",
                "_",
                ";",
                "%3b",
                "%",
                "%4",
                "%zz",
                "%00",
                "é",
                "%C3%A9",
                "x..",
                "..x",
                ".well-known",
            ])
        }

        fn raw_path() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..12).prop_map(|p| format!("/{}", p.concat()))
        }

        /// How a decoding upstream reads a path: `%XX` decoded, slashes merged.
        fn decoded(path: &str) -> Vec<u8> {
            let b = path.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                let byte = if b[i] == b'%' && i + 3 <= b.len() {
                    let v = u8::from_str_radix(&path[i + 1..i + 3], 16).unwrap_or(b'%');
                    i += 3;
                    v
                } else {
                    i += 1;
                    b[i - 1]
                };
                if !(byte == b'/' && out.last() == Some(&b'/')) {
                    out.push(byte);
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// A canonical path is its own canonical form, and has nothing an upstream could read two ways.
            #[test]
            fn the_canonical_form_is_stable_and_unambiguous(raw in raw_path()) {
                let Ok(c) = canonical(&raw) else { return Ok(()) };
                let again = canonical(&c).expect("canonical again");
                prop_assert_eq!(again.as_ref(), c.as_ref());
                prop_assert!(c.starts_with('/') && !c.contains("//"), "{}", c);
                prop_assert!(!c.contains(';') && !c.contains('\\'), "{}", c);
                for seg in c.split('/') {
                    prop_assert!(seg != "." && seg != "..", "dot segment in {}", c);
                }
                let b = c.as_bytes();
                for (i, _) in c.match_indices('%') {
                    let hex = b.get(i + 1..i + 3).expect("two digits after %");
                    prop_assert!(hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)), "{}", c);
                    let v = u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16).expect("hex");
                    prop_assert!(!(v.is_ascii_alphanumeric() || b"-._~".contains(&v)), "unreserved left escaped in {}", c);
                    prop_assert!(v != b'/' && v != b'\\', "{}", c);
                }
            }

            /// What the gateway routes on reads the same as what a decoding, slash-merging upstream reads: no path
            /// is held to one route and served as another's.
            #[test]
            fn the_canonical_form_means_what_the_raw_path_means(raw in raw_path()) {
                let Ok(c) = canonical(&raw) else { return Ok(()) };
                prop_assert_eq!(decoded(&c), decoded(&raw), "{} -> {}", raw, c);
            }
        }
    }
}
