//! Secrets in the configuration: read from a file or an environment
//! variable, never from the file's own text, at start-up.

use std::path::Path;

use baker_adapter_api::Secret;

/// A secret's text from a file, without its trailing newline.
pub(super) fn read_secret(path: &Path) -> Result<Secret, String> {
    let text = read_file(path)?;
    Ok(Secret::new(text.expose().trim_end_matches(['\n', '\r'])))
}

/// A file's whole text, as a secret.
pub(super) fn read_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(text))
}

/// A secret's text from an environment variable.
pub(super) fn read_env(variable: &str) -> Result<Secret, String> {
    match std::env::var(variable) {
        Ok(text) if !text.is_empty() => Ok(Secret::new(text)),
        Ok(_) => Err(format!("the environment variable {variable} is empty")),
        Err(_) => Err(format!("the environment variable {variable} is not set")),
    }
}
