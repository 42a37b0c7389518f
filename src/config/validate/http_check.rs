//! `backends[].health` with `check: http`: the readiness endpoint's port, path, Host header, expected statuses and
//! TLS; and the refusal of those keys under any other check, where they would be silently ignored.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::RootCertStore;

use super::Checker;
use crate::config::http_check::{FileExpectStatus, FileHttpTls, FileHttpTlsOptions};
use crate::config::runtime::HealthCheckKind;
use crate::config::schema::FileHealth;
use crate::config::{
    ConfigError, ExpectStatus, HttpCheck, HttpCheckTls, DEFAULT_EXPECT_STATUS, DEFAULT_HTTP_CHECK_PATH,
};
use crate::tls_material::certificates::{load_certs, provider};

/// The `check: http` settings of `backends[i].health` (`key`: `backends[i]`), or `None` for another check.
pub(super) fn http_check(
    c: &Checker<'_>,
    key: &str,
    check: HealthCheckKind,
    h: &FileHealth,
) -> Result<Option<HttpCheck>, ConfigError> {
    let key = format!("{key}.health");
    if check != HealthCheckKind::Http {
        let set = [
            ("port", h.port.is_some()),
            ("path", h.path.is_some()),
            ("expect_status", h.expect_status.is_some()),
            ("tls", h.tls.is_some()),
            ("host", h.host.is_some()),
        ];
        if let Some((name, _)) = set.iter().find(|(_, is_set)| *is_set) {
            return Err(c.err(
                format!("{key}.{name}"),
                format!("only check: http has this key (this backend's check is {})", check.as_str()),
            ));
        }
        return Ok(None);
    }
    let port = match h.port {
        None => {
            return Err(c.err(
                format!("{key}.port"),
                "check: http needs the port of the broker's readiness endpoint (EMQX's dashboard: 18083)",
            ))
        }
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| c.err(format!("{key}.port"), format!("port {p} is out of range 1 to 65535")))?,
    };
    let path = h.path.clone().unwrap_or_else(|| DEFAULT_HTTP_CHECK_PATH.to_owned());
    check_path(&path).map_err(|m| c.err(format!("{key}.path"), m))?;
    if let Some(host) = &h.host {
        check_host(host).map_err(|m| c.err(format!("{key}.host"), m))?;
    }
    let expect = match &h.expect_status {
        None => ExpectStatus(vec![(DEFAULT_EXPECT_STATUS, DEFAULT_EXPECT_STATUS)]),
        Some(e) => expect_status(c, &format!("{key}.expect_status"), e)?,
    };
    let tls = match &h.tls {
        None | Some(FileHttpTls::Enabled(false)) => None,
        Some(FileHttpTls::Enabled(true)) => Some(https(c, &key, &FileHttpTlsOptions { ca: None, server_name: None })?),
        Some(FileHttpTls::Options(options)) => Some(https(c, &key, options)?),
    };
    Ok(Some(HttpCheck { port, path, host: h.host.clone(), expect, tls }))
}

/// A request target we can put on the request line as it is: `/`, then visible ASCII (no space, no CR or LF).
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /, like \"/api/v5/status\""));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{path:?}: only visible ASCII characters (no spaces; percent-encode the others)"));
    }
    Ok(())
}

/// A Host header value: a name or address with an optional port, visible ASCII.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{host:?}: a host name (and optional :port), visible ASCII without spaces"));
    }
    Ok(())
}

/// Each item a code of 100-599 or a class 1xx-5xx.
fn expect_status(c: &Checker<'_>, key: &str, e: &FileExpectStatus) -> Result<ExpectStatus, ConfigError> {
    if e.items.is_empty() {
        return Err(c.err(key, "an empty list: give at least one status, such as 200 or 2xx"));
    }
    let mut ranges = Vec::with_capacity(e.items.len());
    for (i, item) in e.items.iter().enumerate() {
        let item_key = if e.list { format!("{key}[{i}]") } else { key.to_owned() };
        ranges.push(status_range(&item.0).map_err(|m| c.err(item_key, m))?);
    }
    Ok(ExpectStatus(ranges))
}

fn status_range(text: &str) -> Result<(u16, u16), String> {
    let out_of_range = || format!("{text:?} is not an HTTP status: use a code of 100 to 599 or a class 1xx to 5xx");
    if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
        let class: u16 = class.parse().map_err(|_| out_of_range())?;
        return if (1..=5).contains(&class) { Ok((class * 100, class * 100 + 99)) } else { Err(out_of_range()) };
    }
    match text.parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok((code, code)),
        _ => Err(out_of_range()),
    }
}

/// The client configuration of an HTTPS readiness check: `tls.ca` alone, or the system's CA certificates.
fn https(c: &Checker<'_>, key: &str, options: &FileHttpTlsOptions) -> Result<HttpCheckTls, ConfigError> {
    if let Some(name) = &options.server_name {
        ServerName::try_from(name.as_str())
            .map_err(|_| c.err(format!("{key}.tls.server_name"), format!("{name:?} is not a DNS name or address")))?;
    }
    let mut roots = RootCertStore::empty();
    match &options.ca {
        Some(ca) => {
            let ca = c.resolve(ca);
            for cert in load_certs(&ca).map_err(|m| c.err(format!("{key}.tls.ca"), m))? {
                roots.add(cert).map_err(|e| {
                    c.err(format!("{key}.tls.ca"), format!("{}: unusable CA certificate: {e}", ca.display()))
                })?;
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(system.certs);
            if roots.is_empty() {
                let why = system.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(c.err(
                    format!("{key}.tls"),
                    format!("no system CA certificates found{why}: give tls: {{ ca: FILE }}"),
                ));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| c.err(format!("{key}.tls"), format!("TLS set-up failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(HttpCheckTls { client_config: Arc::new(config), server_name: options.server_name.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_codes_or_classes_within_100_to_599() {
        assert_eq!(status_range("200"), Ok((200, 200)));
        assert_eq!(status_range("2xx"), Ok((200, 299)));
        assert_eq!(status_range("5XX"), Ok((500, 599)));
        for bad in ["99", "600", "0", "6xx", "0xx", "xx", "ok", "-200", "20x"] {
            assert!(status_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_start_with_a_slash_and_hold_no_space_or_line_break() {
        assert!(check_path("/api/v5/status").is_ok());
        assert!(check_path("/health?probe=1").is_ok());
        for bad in ["api/v5/status", "", "/a b", "/a\r\nX-Injected: 1"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }
}
