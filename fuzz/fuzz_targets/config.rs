//! The TOML config loader on any text. Properties: never a panic; every refusal names the file and says where (a
//! TOML syntax error its line, any other error the dotted key of the value that cannot be used).

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
                // TOML's own syntax errors give the line; serde's the dotted key ("." is the root: no key).
                let named = message.starts_with("TOML parse error at line")
                    || message
                        .split_once(": ")
                        .is_some_and(|(key, _)| !key.is_empty() && key != ".");
                assert!(named, "an error naming neither a line nor a key: {msg}");
            }
            other => panic!("loading text gave {other:?}"),
        }
    });
}
