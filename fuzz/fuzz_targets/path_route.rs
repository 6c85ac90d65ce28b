//! The path canonicaliser and the route matcher, on request targets as hyper hands them over. Routes nest: public
//! prefixes with stricter routes below them (`/pub` and `/pub/admin`, `/api` and `/api/v1/internal`). Property: the
//! route the canonical path is held to is the route every common upstream reading of it falls under (percent-decoded
//! once, `\` as `/`, `;` parameters cut, dot segments resolved, slashes merged, case folded as Java's
//! `equalsIgnoreCase` folds it), so no path accepted for one route is served as a stricter route's.

use std::sync::Arc;

use credgate::fuzzing::canonical;
use credgate::gateway::{Config, Gateway};
use http::uri::PathAndQuery;

const ROUTES: &[(&str, &str)] = &[
    ("/pub", "auth = \"none\""),
    ("/pub/admin", "scopes = [\"admin\"]"),
    ("/pub/kyc", "scopes = [\"kyc\"]"),
    ("/api", "scopes = [\"read\"]"),
    ("/api/v1/internal", "scopes = [\"internal\"]"),
    ("/api/v1/internal/sudo", "scopes = [\"sudo\"]"),
    ("/static/files", "auth = \"none\""),
    ("/", "scopes = [\"root\"]"),
];

fn gateway() -> Arc<Gateway> {
    let mut toml = String::from(
        "[upstreams.u]\nurl = \"http://127.0.0.1:9\"\n[[issuers]]\nname = \"idp\"\nissuer = \"https://idp.test/\"\n\
         audiences = [\"a\"]\njwks_url = \"http://127.0.0.1:9/jwks\"\n",
    );
    for (prefix, auth) in ROUTES {
        toml.push_str(&format!(
            "[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"u\"\n{auth}\n"
        ));
    }
    let cfg = Config::from_toml(&toml, "<fuzz>").unwrap_or_else(|e| panic!("fixture config: {e}"));
    credgate_fuzz::runtime()
        .block_on(async { Gateway::build(&cfg) })
        .unwrap_or_else(|e| panic!("gateway: {e}"))
}

fn percent_decode(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let hex = p
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(v) if p[i] == b'%' => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(p[i]);
                i += 1;
            }
        }
    }
    out
}

/// RFC 3986 §5.2.4 on a path already split at `/`, with `;` parameters cut from each segment first (Tomcat).
fn resolve(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::from("/");
    s.push_str(&out.join("/"));
    while s.contains("//") {
        s = s.replace("//", "/");
    }
    s
}

/// Java's `equalsIgnoreCase` compares chars by their upper and lower case: the non-ASCII letters whose case mapping
/// is ASCII (`İ ı ſ K`) compare equal to ASCII letters.
fn java_fold(p: &str) -> String {
    p.chars()
        .map(|c| match c {
            '\u{130}' | '\u{131}' => 'i',
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn main() {
    // Read-only after setup: a panic in one input cannot leave it half-changed.
    let gw = std::panic::AssertUnwindSafe(gateway());
    afl::fuzz!(|data: &[u8]| {
        let Ok(pq) = PathAndQuery::try_from(data) else {
            return;
        };
        let Ok(c) = canonical(pq.path()) else {
            return;
        };
        let route = |p: &str| gw.routes.find(None, p).map(|r| r.name.as_str());
        let held = route(&c);
        assert_eq!(
            canonical(&c).as_deref(),
            Ok(&*c),
            "the canonical form is not stable"
        );
        let decoded = String::from_utf8_lossy(&percent_decode(c.as_bytes())).into_owned();
        let backslashed = decoded.replace('\\', "/");
        for (how, reading) in [
            ("as sent", c.to_string()),
            ("decoded", decoded.clone()),
            ("decoded, resolved", resolve(&backslashed)),
            ("resolved without decoding", resolve(&c.replace('\\', "/"))),
            (
                "decoded, resolved, case-folded",
                java_fold(&resolve(&backslashed)),
            ),
        ] {
            assert_eq!(
                route(&reading),
                held,
                "{:?} canonical {c:?} read {how} as {reading:?}",
                pq.path()
            );
        }
    });
}
