//! `check: http`: a GET on the broker's own readiness endpoint (EMQX's `/api/v5/status` on its dashboard port,
//! HiveMQ's health API), on the server's host at the check's port, over TLS if asked.
//!
//! Only the answer's head is read: the status line and headers, at most [`crate::transport::ws::MAX_UPGRADE_REQUEST`]
//! bytes, under the probe's timeout (set by the caller); the body is never read and the connection is closed after
//! the head. The request is ours (a fixed HTTP/1.1 GET with `Connection: close`) and the answer is parsed by
//! httparse, which the WebSocket upgrade already uses: a client library would add a body reader and connection pool
//! that a probe does not need.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ProbeError;
use crate::config::HttpCheck;
use crate::transport::ws::{read_head, HeadError};

/// Headers an answer may have before it is refused as not HTTP.
const MAX_ANSWER_HEADERS: usize = 64;

/// One readiness probe of the server at `address` (as configured), whose host resolved to `resolved`.
pub(super) async fn probe(check: &HttpCheck, address: &str, resolved: &[SocketAddr]) -> Result<(), ProbeError> {
    let targets: Vec<SocketAddr> = resolved.iter().map(|a| SocketAddr::new(a.ip(), check.port)).collect();
    let tcp = TcpStream::connect(&targets[..]).await.map_err(|e| {
        let at = targets.first().map(ToString::to_string).unwrap_or_else(|| format!("port {}", check.port));
        ProbeError::Readiness(format!("connect to {at}: {e}"))
    })?;
    let host = host_of(address);
    let request = request(check, host);
    let code = match &check.tls {
        None => exchange(tcp, &request).await?,
        Some(tls) => {
            let name = tls.server_name.as_deref().unwrap_or(host);
            let name = ServerName::try_from(name.to_owned())
                .map_err(|_| ProbeError::Readiness(format!("{name:?} is not a TLS server name")))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client_config))
                .connect(name, tcp)
                .await
                .map_err(|e| ProbeError::Readiness(format!("TLS handshake: {e}")))?;
            exchange(stream, &request).await?
        }
    };
    if check.expect.allows(code) {
        Ok(())
    } else {
        Err(ProbeError::Status { code, expected: check.expect.to_string() })
    }
}

/// The host of a `host:port` or `[v6]:port` address, without brackets.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

fn request(check: &HttpCheck, host: &str) -> String {
    let host = match &check.host {
        Some(header) => header.clone(),
        None if host.contains(':') => format!("[{host}]:{}", check.port),
        None => format!("{host}:{}", check.port),
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mqtt-lb/{} health-check\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        check.path,
        env!("CARGO_PKG_VERSION")
    )
}

/// Sends the request and reads the answer's head; returns its status.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> Result<u16, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Readiness(format!("sending the request: {e}"));
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let (head, end) = read_head(&mut stream).await.map_err(|e| {
        ProbeError::Readiness(
            match e {
                HeadError::TooLarge => "the answer's head is larger than 8 KiB",
                HeadError::Closed => "the endpoint closed the connection before a whole answer",
                HeadError::Io => "reading the answer failed",
            }
            .to_owned(),
        )
    })?;
    status(head.get(..end).unwrap_or_default())
}

/// The status of an HTTP/1.x answer head.
fn status(head: &[u8]) -> Result<u16, ProbeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    match (answer.parse(head), answer.code) {
        (Ok(httparse::Status::Complete(_)), Some(code)) => Ok(code),
        _ => Err(ProbeError::Readiness("the answer is not HTTP/1.x".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExpectStatus;

    fn check(host: Option<&str>) -> HttpCheck {
        HttpCheck {
            port: 18083,
            path: "/api/v5/status".into(),
            host: host.map(str::to_owned),
            expect: ExpectStatus(vec![(200, 200)]),
            tls: None,
        }
    }

    #[test]
    fn the_request_names_the_server_host_at_the_check_port_unless_a_host_is_set() {
        let r = request(&check(None), host_of("emqx-1.cluster:1883"));
        assert!(r.starts_with("GET /api/v5/status HTTP/1.1\r\nHost: emqx-1.cluster:18083\r\n"), "{r}");
        assert!(r.ends_with("Connection: close\r\n\r\n"), "{r}");
        assert!(request(&check(None), host_of("[::1]:1883")).contains("Host: [::1]:18083\r\n"));
        assert!(request(&check(Some("status.local")), "10.0.0.1").contains("Host: status.local\r\n"));
    }

    #[test]
    fn statuses_are_read_from_whole_heads_only() {
        assert_eq!(status(b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\n").ok(), Some(503));
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n\r\n").ok(), Some(200));
        for bad in [&b"SSH-2.0-OpenSSH_9\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 2000 OK\r\n\r\n"] {
            assert!(status(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
