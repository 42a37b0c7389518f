//! The keys of `health: { check: http }`, as written in the file and as the probe uses them: the readiness endpoint's
//! port and path, the statuses that mean ready, the Host header and TLS.
//!
//! `expect_status` is a code (`200`), a class (`2xx`) or a list of both; `tls` is `true` (the system's CA
//! certificates), `false` (plain HTTP, the default) or `{ ca, server_name }`. Both are read here as written and
//! checked in [`super::validate`], so that an error names the item that is wrong.

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::value::MapAccessDeserializer;
use serde::Deserialize;

/// The statuses that mean ready when the file says nothing: what EMQX's `/api/v5/status` and HiveMQ's health API
/// answer when the node can take clients.
pub const DEFAULT_EXPECT_STATUS: u16 = 200;

/// The path requested when the file says nothing.
pub const DEFAULT_HTTP_CHECK_PATH: &str = "/";

/// A validated `check: http`.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// The readiness port, on each server's own host.
    pub port: u16,
    /// The request target, starting with `/` (a query is allowed).
    pub path: String,
    /// The Host header; `None`: the server's host and `port`.
    pub host: Option<String>,
    pub expect: ExpectStatus,
    /// `None`: plain HTTP.
    pub tls: Option<HttpCheckTls>,
}

/// HTTPS for the readiness endpoint.
#[derive(Debug, Clone)]
pub struct HttpCheckTls {
    /// Trusts `tls.ca`, or the system's CA certificates.
    pub client_config: Arc<rustls::ClientConfig>,
    /// The name the certificate must carry (and the SNI); `None`: the server's host.
    pub server_name: Option<String>,
}

/// The statuses that mean ready: inclusive ranges of codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectStatus(pub Vec<(u16, u16)>);

impl ExpectStatus {
    pub fn allows(&self, code: u16) -> bool {
        self.0.iter().any(|&(low, high)| (low..=high).contains(&code))
    }
}

impl std::fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|&(low, high)| if low == high { low.to_string() } else { format!("{}xx", low / 100) })
            .collect();
        f.write_str(&items.join(", "))
    }
}

/// One `expect_status` item as written: a code or a class, checked later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStatus(pub(super) String);

/// `expect_status` as written: one item, or a list (`list`: whether errors index it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileExpectStatus {
    pub(super) items: Vec<FileStatus>,
    pub(super) list: bool,
}

/// `tls` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FileHttpTls {
    Enabled(bool),
    Options(FileHttpTlsOptions),
}

/// `tls: { ca, server_name }`: each optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHttpTlsOptions {
    #[serde(default)]
    pub(super) ca: Option<PathBuf>,
    #[serde(default)]
    pub(super) server_name: Option<String>,
}

impl<'de> Deserialize<'de> for FileStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StatusVisitor)
    }
}

struct StatusVisitor;

impl<'de> serde::de::Visitor<'de> for StatusVisitor {
    type Value = FileStatus;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an HTTP status code such as 200, or a class such as 2xx")
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FileStatus, E> {
        Ok(FileStatus(v.to_string()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FileStatus, E> {
        Ok(FileStatus(v.to_string()))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileStatus, E> {
        Ok(FileStatus(v.to_owned()))
    }
}

impl<'de> Deserialize<'de> for FileExpectStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileExpectStatus;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an HTTP status code (200), a class (2xx) or a list of them")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FileExpectStatus, E> {
                StatusVisitor.visit_u64(v).map(FileExpectStatus::one)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FileExpectStatus, E> {
                StatusVisitor.visit_i64(v).map(FileExpectStatus::one)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileExpectStatus, E> {
                StatusVisitor.visit_str(v).map(FileExpectStatus::one)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FileExpectStatus, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<FileStatus>()? {
                    items.push(item);
                }
                Ok(FileExpectStatus { items, list: true })
            }
        }
        d.deserialize_any(V)
    }
}

impl FileExpectStatus {
    fn one(item: FileStatus) -> FileExpectStatus {
        FileExpectStatus { items: vec![item], list: false }
    }
}

impl<'de> Deserialize<'de> for FileHttpTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileHttpTls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a mapping with ca and server_name")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<FileHttpTls, E> {
                Ok(FileHttpTls::Enabled(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<FileHttpTls, A::Error> {
                FileHttpTlsOptions::deserialize(MapAccessDeserializer::new(map)).map(FileHttpTls::Options)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_status_allows_its_codes_and_classes_and_says_them() {
        let e = ExpectStatus(vec![(200, 299), (404, 404)]);
        assert!(e.allows(200) && e.allows(299) && e.allows(404));
        assert!(!e.allows(300) && !e.allows(503) && !e.allows(199));
        assert_eq!(e.to_string(), "2xx, 404");
    }
}
