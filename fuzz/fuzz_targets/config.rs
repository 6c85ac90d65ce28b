//! The TOML config loader on any text. Properties: never a panic; every refusal names the file and says where (a
//! parse error with its line, or the dotted key of the value that cannot be used).

use credgate::config::ConfigError;
use credgate::gateway::Config;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Err(e) = Config::from_toml(text, "<fuzz>") else {
            return;
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("<fuzz>: "),
            "the error names no file: {msg}"
        );
        match &e {
            ConfigError::Invalid { key, message, .. } => {
                assert!(!key.is_empty(), "an error naming no key: {msg}");
                assert!(!message.is_empty(), "an empty error: {msg}");
            }
            ConfigError::Parse { message, .. } => {
                assert!(!message.trim().is_empty(), "an empty error: {msg}")
            }
            other => panic!("loading text gave {other:?}"),
        }
    });
}
