//! Configuration: the YAML file (`config.yaml`) and the validated runtime [`Config`].
//!
//! The file is read twice. The first reading (`schema.rs`) takes every section except the listeners' own keys: each
//! listener gives only its `protocol`. The second (`listener_schema.rs`) reads each listener with the keys of that
//! protocol, so an `mqtt` listener refuses a `coap` key. Both refuse unknown keys (`deny_unknown_fields`) and parse
//! durations and sizes (`units.rs`); `messages.rs` words what they refuse. Then `validate/` checks what serde cannot
//! (names, references between listeners and backends, addresses, certificate files), section by section, and builds
//! the runtime types (`runtime.rs`, re-exported here). Every error is a [`ConfigError`] that names the file, the key
//! path (for example `backends[0].servers[2].address`) and what is wrong.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeSeed;

mod http_check;
mod listener_schema;
mod messages;
mod runtime;
mod schema;
mod units;
mod validate;
pub mod view;

pub use crate::named_file::FileKind;
pub use crate::net::{source_allowed, Cidr};
pub use http_check::{ExpectStatus, HttpCheck, HttpCheckTls, DEFAULT_EXPECT_STATUS, DEFAULT_HTTP_CHECK_PATH};
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

/// Where [`load`] reads when the path is `-`, and how errors name it.
pub const STDIN: &str = "<stdin>";

/// Reads, parses and validates a configuration file; `-` reads standard input (relative paths in it are then
/// relative to the working directory).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let (origin, bytes) = if path == Path::new("-") {
        (PathBuf::from(STDIN), crate::named_file::read_capped(std::io::stdin(), FileKind::Config))
    } else {
        (path.to_path_buf(), crate::named_file::read(path, FileKind::Config))
    };
    let unreadable = |why: String| ConfigError {
        file: origin.clone(),
        key: String::new(),
        message: format!("cannot read the file: {why}"),
    };
    let text = String::from_utf8(bytes.map_err(|e| unreadable(e.to_string()))?)
        .map_err(|_| unreadable("not UTF-8 text".to_owned()))?;
    parse(&text, &origin)
}

/// Parses and validates configuration text; `origin` names the file in errors and anchors relative paths.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let file: schema::FileConfig<schema::ListenerProtocolOnly> = read(text, origin, &[], PhantomData)?;
    let protocols: Vec<ListenerProtocol> = file.listeners.iter().map(|l| l.protocol).collect();
    let listeners = read(text, origin, &protocols, listener_schema::ListenersByProtocol(&protocols))?;
    validate::validate(file.with_listeners(listeners), origin)
}

/// One reading of the document with `seed`; an error names the key path where it failed (`protocols`: the
/// listeners', once known, for what an unknown listener key says).
fn read<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    origin: &Path,
    protocols: &[ListenerProtocol],
    seed: S,
) -> Result<S::Value, ConfigError> {
    let mut track = serde_path_to_error::Track::new();
    let options = serde_saphyr::options! { with_snippet: false };
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        seed.deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    result.map_err(|e| {
        let failed_at = track.path().to_string();
        ConfigError {
            file: origin.to_path_buf(),
            message: messages::describe(&e, &failed_at, protocols),
            key: messages::key_path(&e, &failed_at),
        }
    })
}

#[cfg(test)]
mod routes_tests;
#[cfg(test)]
mod server_caps_tests;
#[cfg(test)]
mod tests;
