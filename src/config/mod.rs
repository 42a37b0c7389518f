//! Configuration: the YAML file (`config.yaml`) and the validated runtime [`Config`].
//!
//! Loading happens in two steps. First the file is deserialized into the `File*` types, which mirror the YAML one to
//! one and refuse unknown keys (`deny_unknown_fields`); durations (`2s`, `500ms`, `30m`, `1h`) and sizes (`64KiB`,
//! `1MiB`, `65536`) are parsed there. Then `validate` checks what serde cannot (duplicate names, references between
//! listeners and backends, addresses, certificate files) and builds the runtime [`Config`]. Every error is a
//! [`ConfigError`] that names the file, the key path (for example `backends[0].servers[2].address`) and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

mod runtime;
mod schema;
mod units;
mod validate;

pub use crate::net::{source_allowed, Cidr};
pub use runtime::*;
pub use units::{parse_duration, parse_size, DurationValue, SizeValue};

#[cfg(test)]
use std::time::Duration;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The key path inside the file, such as `backends[0].servers[2].address`; empty for the whole document.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates configuration text; `origin` names the file in errors and anchors relative paths.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let mut failed_at = String::new();
    let options = serde_saphyr::options! { with_snippet: false };
    let file: Result<schema::FileConfig, _> =
        serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                failed_at = e.path().to_string();
                e.into_inner()
            })
        });
    let file = file.map_err(|e| ConfigError {
        file: origin.to_path_buf(),
        key: if failed_at == "." { String::new() } else { failed_at.clone() },
        message: e.to_string(),
    })?;
    validate::validate(file, origin)
}

#[cfg(test)]
mod tests;
