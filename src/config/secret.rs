//! Secret references in config: `${ENV_VAR}`, `${file:/path}` or `*_file` keys, resolved once at load into
//! [`SecretString`]s. Never prints a resolved value; errors name the reference, not what it held.

use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

use super::Ctx;

/// Why a secret reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `${NAME}` names an environment variable that is not set (or not UTF-8).
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// `${file:...}` or a `*_file` key names a file that cannot be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file named.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A `${` with no closing `}`.
    #[error("unterminated ${{...}} reference")]
    Unterminated,
    /// The reference resolved to an empty string.
    #[error("resolves to an empty value")]
    Empty,
}

/// Expand every `${ENV}` and `${file:PATH}` in `raw`; text outside references is kept as written. Files read are
/// remembered by `ctx` (the reload watcher follows them).
pub fn expand(ctx: &Ctx, raw: &str) -> Result<SecretString, SecretError> {
    expand_with(ctx, raw, |value| Ok(value.to_owned()))
}

/// [`expand`], passing each resolved reference through `encode` before it is inserted (e.g. to JSON-escape it).
pub fn expand_with(
    ctx: &Ctx,
    raw: &str,
    mut encode: impl FnMut(&str) -> Result<String, SecretError>,
) -> Result<SecretString, SecretError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(SecretError::Unterminated)?;
        let name = &after[..end];
        let value = match name.strip_prefix("file:") {
            Some(path) => read_file(ctx, Path::new(path))?,
            None => std::env::var(name).map_err(|_| SecretError::MissingEnv(name.to_owned()))?,
        };
        out.push_str(&encode(&value)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(SecretString::from(out))
}

/// Read a secret file, trimming one trailing newline (as editors and `echo` add one).
pub fn read_file(ctx: &Ctx, path: &Path) -> Result<String, SecretError> {
    let text = ctx
        .read_to_string(path)
        .map_err(|source| SecretError::File {
            path: path.display().to_string(),
            source,
        })?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(trimmed.to_owned())
}

/// Resolve a secret given either inline (`key = "${ENV}"`) or as a file (`key_file = "/path"`); exactly one is allowed.
pub fn resolve(
    ctx: &Ctx,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, SecretError> {
    match (value, file) {
        (Some(v), _) => expand(ctx, v).map(Some),
        (None, Some(f)) => read_file(ctx, f).map(|s| Some(SecretString::from(s))),
        (None, None) => Ok(None),
    }
}

/// True when a secret and presented bytes are equal, compared in constant time (only the length may leak).
pub fn constant_time_eq(a: &SecretString, b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.expose_secret().as_bytes(), b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_text_is_kept_and_missing_env_is_named() {
        assert_eq!(
            expand(&Ctx::new("<t>"), "plain")
                .map(|s| s.expose_secret().to_owned())
                .ok(),
            Some("plain".into())
        );
        let ctx = Ctx::new("<t>");
        match expand(&ctx, "${CREDGATE_TEST_SURELY_UNSET_VAR}") {
            Err(SecretError::MissingEnv(name)) => {
                assert_eq!(name, "CREDGATE_TEST_SURELY_UNSET_VAR")
            }
            other => panic!("expected MissingEnv, got {other:?}"),
        }
        assert!(matches!(
            expand(&ctx, "${OPEN"),
            Err(SecretError::Unterminated)
        ));
    }

    #[test]
    fn file_reference_reads_and_trims() {
        let dir = std::env::temp_dir().join(format!("credgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let f = dir.join("s");
        std::fs::write(&f, "hunter2\n").expect("write");
        let ctx = Ctx::new("<t>");
        let s = expand(&ctx, &format!("pre-${{file:{}}}-post", f.display())).expect("expand");
        assert_eq!(s.expose_secret(), "pre-hunter2-post");
        let files: Vec<_> = ctx.files().into_iter().map(|(p, _)| p).collect();
        assert_eq!(files, vec![f.clone()], "the file read is remembered");
        assert!(constant_time_eq(&SecretString::from("abc"), b"abc"));
        assert!(!constant_time_eq(&SecretString::from("abc"), b"abd"));
        assert!(!constant_time_eq(&SecretString::from("abc"), b"ab"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
