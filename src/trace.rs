//! W3C Trace Context (`traceparent`, <https://www.w3.org/TR/trace-context/>): a caller's trace is honoured and
//! forwarded upstream as it came, so the upstream's spans join the caller's trace; a request without one (or with a
//! malformed one, which the recommendation says to discard) starts a trace here, sampled, so that the upstream records
//! it under an id the access log names. `tracestate` is end-to-end and passes through untouched. With span export on
//! ([`export`], `[tracing]`), the gateway takes part in the trace: the upstream gets the id of the gateway's own span.

pub mod config;
pub mod export;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore as _;

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Length of a version-00 `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex.
const LEN: usize = 55;

/// The trace a request belongs to: the `traceparent` forwarded upstream.
#[derive(Debug, Clone)]
pub struct TraceContext {
    traceparent: HeaderValue,
    /// Whether the caller sent it (rather than the gateway starting it).
    sent: bool,
}

impl TraceContext {
    /// The caller's trace when it sent exactly one well-formed `traceparent`; otherwise a new one.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut sent = headers.get_all(&TRACEPARENT).iter();
        match (sent.next(), sent.next()) {
            (Some(v), None) if valid(v.as_bytes()) => Self {
                traceparent: v.clone(),
                sent: true,
            },
            _ => Self::start(),
        }
    }

    /// A new trace: random trace and parent ids, sampled.
    pub fn start() -> Self {
        let mut ids = [0u8; 24];
        loop {
            rand::thread_rng().fill_bytes(&mut ids);
            // All-zero ids are invalid; at 2^-64 odds, draw again rather than send one.
            if ids[..16].iter().any(|&b| b != 0) && ids[16..].iter().any(|&b| b != 0) {
                break;
            }
        }
        let (mut trace_id, mut parent_id) = ([0u8; 16], [0u8; 8]);
        trace_id.copy_from_slice(&ids[..16]);
        parent_id.copy_from_slice(&ids[16..]);
        Self {
            sent: false,
            ..Self::from_ids(trace_id, parent_id, 1)
        }
    }

    /// The version-00 trace with these ids and flags.
    pub fn from_ids(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Self {
        let mut out = [0u8; LEN];
        out[..3].copy_from_slice(b"00-");
        hex(&trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex(&parent_id, &mut out[36..52]);
        out[52] = b'-';
        hex(&[flags], &mut out[53..55]);
        Self {
            // Hex digits and dashes are always a valid header value.
            traceparent: HeaderValue::from_bytes(&out)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            sent: false,
        }
    }

    /// The caller's trace id, parent id and flags, when it sent a trace.
    pub fn sent(&self) -> Option<([u8; 16], [u8; 8], u8)> {
        if !self.sent {
            return None;
        }
        let v = self.traceparent.as_bytes();
        let (mut trace_id, mut parent_id, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
        // Checked well-formed when received.
        (unhex(&v[3..35], &mut trace_id)
            && unhex(&v[36..52], &mut parent_id)
            && unhex(&v[53..55], &mut flags))
        .then_some((trace_id, parent_id, flags[0]))
    }

    /// The `traceparent` to send upstream.
    pub fn traceparent(&self) -> &HeaderValue {
        &self.traceparent
    }

    /// The trace id (32 lower-case hex digits), for logs.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .ok()
            .and_then(|s| s.get(3..35))
            .unwrap_or("-")
    }
}

/// Whether `v` is a `traceparent` this gateway may forward: version 00 exactly as specified, or a later version
/// whose first four fields read as version 00's (the recommendation's rule for versions it does not know).
fn valid(v: &[u8]) -> bool {
    if v.len() < LEN || (v.len() > LEN && v[LEN] != b'-') {
        return false;
    }
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && lower_hex(version)
        && version != b"ff"
        && (version != b"00" || v.len() == LEN)
        && lower_hex(trace)
        && nonzero(trace)
        && lower_hex(parent)
        && nonzero(parent)
        && lower_hex(flags)
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Decode lower-case hex `digits` into `out` (twice as many digits as bytes); false on anything else.
fn unhex(digits: &[u8], out: &mut [u8]) -> bool {
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    digits.len() == out.len() * 2
        && digits.chunks_exact(2).zip(out.iter_mut()).all(|(pair, o)| {
            match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => {
                    *o = h << 4 | l;
                    true
                }
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn of(values: &[&str]) -> TraceContext {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&TRACEPARENT, HeaderValue::from_str(v).expect("value"));
        }
        TraceContext::of(&h)
    }

    #[test]
    fn a_well_formed_traceparent_is_kept_as_sent() {
        let t = of(&[SENT]);
        assert_eq!(t.traceparent(), SENT);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let later = format!("cc-{}-what-comes-next", &SENT[3..]);
        assert_eq!(
            of(&[&later]).traceparent(),
            later.as_str(),
            "a later version's fields"
        );
    }

    #[test]
    fn a_malformed_or_repeated_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let t = of(&[bad]);
            assert_ne!(t.traceparent(), bad);
            assert!(
                valid(t.traceparent().as_bytes()),
                "{bad:?} → {:?}",
                t.traceparent()
            );
        }
        let twice = of(&[SENT, SENT]);
        assert_ne!(twice.traceparent(), SENT);
    }

    #[test]
    fn a_sent_trace_reads_back_as_its_ids_and_one_started_here_has_no_sender() {
        let (trace_id, parent_id, flags) = of(&[SENT]).sent().expect("sent");
        let again = TraceContext::from_ids(trace_id, parent_id, flags);
        assert_eq!(again.traceparent(), SENT);
        assert_eq!(flags, 1);
        assert_eq!(TraceContext::start().sent(), None);
        assert_eq!(of(&["00-bad"]).sent(), None, "a malformed one is replaced");
        let unsampled = TraceContext::from_ids(trace_id, parent_id, 0);
        assert!(
            unsampled
                .traceparent()
                .to_str()
                .expect("ascii")
                .ends_with("-00")
        );
    }

    #[test]
    fn started_traces_are_valid_sampled_and_distinct() {
        let a = TraceContext::start();
        let b = TraceContext::start();
        assert!(valid(a.traceparent().as_bytes()), "{:?}", a.traceparent());
        assert!(a.traceparent().to_str().expect("ascii").ends_with("-01"));
        assert_ne!(a.trace_id(), b.trace_id());
    }
}
