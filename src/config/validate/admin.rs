//! `admin`: the read-only and control addresses, the bearer token, the connection cap and the request deadline.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use super::super::runtime::{AdminConfig, AdminToken};
use super::super::schema::FileAdmin;
use super::super::ConfigError;
use super::Checker;

/// `admin`: its addresses must not be ones a listener binds.
pub(super) fn admin(
    c: &Checker<'_>,
    file: Option<FileAdmin>,
    binds: &HashSet<SocketAddr>,
) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(a) = file else {
        return Ok(None);
    };
    let bind = c.socket_addr("admin.bind".into(), &a.bind)?;
    if bind.port() != 0 && binds.contains(&bind) {
        return Err(c.err("admin.bind", format!("{bind} is already used by a listener")));
    }
    let control_bind = match &a.control_bind {
        None => None,
        Some(text) => {
            let addr = c.socket_addr("admin.control_bind".into(), text)?;
            if addr.port() != 0 && binds.contains(&addr) {
                return Err(c.err("admin.control_bind", format!("{addr} is already used by a listener")));
            }
            // The same address as `bind` is one socket serving everything, as without the key.
            (addr != bind || addr.port() == 0).then_some(addr)
        }
    };
    let token = a.token_file.map(|p| admin_token(c, &c.resolve(&p))).transpose()?;
    if !(1..=65_536).contains(&a.max_connections) {
        return Err(c.err("admin.max_connections", "must be between 1 and 65536"));
    }
    let request_timeout = c.duration("admin.request_timeout".into(), a.request_timeout.0)?;
    let state_file = a.state_file.map(|p| c.resolve(&p));
    if let Some(dir) = state_file.as_deref().and_then(Path::parent) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            let shown = dir.display();
            return Err(c.err("admin.state_file", format!("directory {shown} does not exist")));
        }
    }
    Ok(Some(AdminConfig { bind, control_bind, token, max_connections: a.max_connections, request_timeout, state_file }))
}

/// `admin.token_file`: a regular file of at most 4 KiB holding the token on its first line.
fn admin_token(c: &Checker<'_>, path: &Path) -> Result<AdminToken, ConfigError> {
    const KEY: &str = "admin.token_file";
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| c.err(KEY, format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() || meta.len() > 4096 {
        return Err(c.err(KEY, format!("{shown} must be a regular file of at most 4KiB")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| c.err(KEY, format!("cannot read {shown}: {e}")))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(c.err(KEY, format!("{shown} holds no token")));
    }
    if !token.chars().all(|ch| ch.is_ascii_graphic()) {
        return Err(c.err(KEY, format!("{shown}: the token must be printable ASCII without spaces")));
    }
    Ok(AdminToken(token.as_bytes().into()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{parse, Config, ConfigError};

    fn with_admin(admin: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "listeners: [{{ name: m, bind: \"127.0.0.1:1883\", protocol: mqtt, backend: b }}]\n\
             backends: [{{ name: b, servers: [{{ name: s, address: \"127.0.0.1:1\" }}] }}]\n\
             admin: {admin}\n"
        );
        parse(&text, Path::new("test.yaml"))
    }

    #[test]
    fn an_existing_admin_section_keeps_one_socket_with_safe_defaults() {
        let c = with_admin("{ bind: \"0.0.0.0:9100\" }").unwrap();
        let a = c.admin.unwrap();
        assert_eq!((a.control_bind, a.token.is_none()), (None, true));
        assert_eq!((a.max_connections, a.request_timeout), (64, Duration::from_secs(10)));
        assert_eq!(a.exposure_warning(), None, "control stays on loopback connections");
        let same = with_admin("{ bind: \"127.0.0.1:9100\", control_bind: \"127.0.0.1:9100\" }").unwrap();
        assert_eq!(same.admin.unwrap().control_bind, None, "the same address is one socket");
    }

    #[test]
    fn control_beyond_loopback_without_a_token_is_warned_about() {
        let a = with_admin("{ bind: \"0.0.0.0:9100\", control_bind: \"0.0.0.0:9101\" }").unwrap().admin.unwrap();
        let warning = a.exposure_warning().unwrap();
        assert!(warning.contains("admin.token_file") && warning.contains("0.0.0.0:9101"), "{warning}");
        let a = with_admin("{ bind: \"0.0.0.0:9100\", control_bind: \"127.0.0.1:9101\" }").unwrap().admin.unwrap();
        assert_eq!(a.exposure_warning(), None);
    }

    #[test]
    fn the_token_file_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("mqtt-lb-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret-token\n").unwrap();
        let admin = format!("{{ bind: \"0.0.0.0:9100\", control_bind: \"0.0.0.0:9101\", token_file: {file:?} }}");
        let a = with_admin(&admin).unwrap().admin.unwrap();
        assert_eq!(a.token.as_ref().map(|t| &*t.0), Some(&b"s3cret-token"[..]));
        assert_eq!(a.exposure_warning(), None);
        assert!(!format!("{a:?}").contains("s3cret"), "the token stays out of Debug output");
        std::fs::write(&file, "\n").unwrap();
        assert!(with_admin(&admin).unwrap_err().to_string().contains("admin.token_file"));
        std::fs::remove_file(&file).unwrap();
        assert!(with_admin(&admin).unwrap_err().to_string().contains("admin.token_file"));
        let a_dir = format!("{{ bind: \"127.0.0.1:9100\", token_file: {dir:?} }}");
        assert!(with_admin(&a_dir).unwrap_err().to_string().contains("regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn caps_and_deadlines_are_range_checked() {
        for (admin, key) in [
            ("{ bind: \"127.0.0.1:9100\", max_connections: 0 }", "admin.max_connections"),
            ("{ bind: \"127.0.0.1:9100\", request_timeout: 0s }", "admin.request_timeout"),
            ("{ bind: \"127.0.0.1:9100\", request_timeout: 2h }", "admin.request_timeout"),
            ("{ bind: \"127.0.0.1:9100\", control_bind: \"nowhere\" }", "admin.control_bind"),
            ("{ bind: \"127.0.0.1:9100\", control_bind: \"127.0.0.1:1883\" }", "admin.control_bind"),
        ] {
            let e = with_admin(admin).unwrap_err().to_string();
            assert!(e.contains(key), "{admin}: {e}");
        }
    }
}
