//! What callers and vendors send the vendor flows: the Incode webhook body, TeleSign's phone number and `xid`, a
//! Citadel public token, and vendors' error bodies. The first byte picks the input; the rest is it. Properties: no
//! panic; what is accepted is what the flow promises to pass on (plain ids, E.164 digits, no control characters, a
//! vendor code short and plain, never a message).

use credgate::fuzzing::{incode_event, plain_id, telesign_phone, telesign_xid, vendor_code};

fn plain(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&pick, input)) = data.split_first() else {
            return;
        };
        let text = std::str::from_utf8(input).ok();
        match pick % 5 {
            0 => {
                let Ok([id, status, client, flow, external]) = incode_event(input) else {
                    return;
                };
                let id = id.unwrap_or_default();
                assert!(
                    !id.is_empty() && id.len() <= 128 && plain(&id, b":"),
                    "interview id {id:?}"
                );
                let status = status.unwrap_or_default();
                assert!(
                    !status.is_empty() && status.len() <= 64,
                    "status {status:?}"
                );
                assert!(
                    status
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                );
                for v in [client, flow, external].into_iter().flatten() {
                    assert!(
                        v.len() <= 256 && !v.chars().any(char::is_control),
                        "an optional id {v:?}"
                    );
                }
            }
            1 => {
                let Some(phone) = text.and_then(telesign_phone) else {
                    return;
                };
                assert!((7..=15).contains(&phone.len()), "phone {phone:?}");
                assert!(
                    phone.bytes().all(|b| b.is_ascii_digit()) && !phone.starts_with('0'),
                    "phone {phone:?}"
                );
            }
            2 => {
                if let Some(xid) = text.filter(|t| telesign_xid(t)) {
                    assert!(
                        !xid.is_empty() && xid.len() <= 128 && plain(xid, b""),
                        "xid {xid:?}"
                    );
                }
            }
            3 => {
                if let Some(t) = text.filter(|t| plain_id(t, 256)) {
                    assert!(
                        !t.is_empty() && t.len() <= 256 && plain(t, b""),
                        "public token {t:?}"
                    );
                }
            }
            _ => {
                let Some(code) = vendor_code(input) else {
                    return;
                };
                assert!(!code.is_empty() && code.len() <= 40, "vendor code {code:?}");
                assert!(plain(&code, b""), "vendor code {code:?}");
            }
        }
    });
}
