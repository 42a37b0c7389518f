//! Raw MQTT over TLS, for what rumqttc cannot show, such as the exact bytes of a refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A 3.1.1 CONNECT (clean session, keep alive 60, no credentials).
pub fn connect_packet_v311(client_id: &str) -> Vec<u8> {
    connect_packet(4, client_id, None)
}

/// A 5 CONNECT (clean start, keep alive 60, no properties, no credentials).
pub fn connect_packet_v5(client_id: &str) -> Vec<u8> {
    connect_packet(5, client_id, None)
}

/// A CONNECT of protocol `level` (4: 3.1.1, 5) (clean session, keep alive 60, no properties), with a user name if
/// given (no password).
pub fn connect_packet(level: u8, client_id: &str, username: Option<&str>) -> Vec<u8> {
    let flags = if username.is_some() { 0x82 } else { 0x02 };
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 60];
    if level == 5 {
        body.push(0x00); // property length
    }
    for s in std::iter::once(client_id).chain(username) {
        body.extend_from_slice(&u16::try_from(s.len()).expect("string too long").to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Opens a TLS connection (server name `localhost`) to `addr`.
pub async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name").to_owned();
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await
}

/// Sends `bytes` over TLS and returns everything the server sends until it closes (errs after `timeout`).
pub async fn tls_exchange(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    tokio::time::timeout(timeout, async {
        let mut s = tls_connect(addr, tls).await.map_err(|e| format!("TLS connect to {addr}: {e}"))?;
        s.write_all(bytes).await.map_err(|e| format!("write: {e}"))?;
        s.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return Ok(answer),
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                // A close without close_notify still ends the answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(answer),
                Err(e) => return Err(format!("read after {answer:02x?}: {e}")),
            }
        }
    })
    .await
    .map_err(|_| format!("{addr}: the server did not close within {timeout:?}"))?
}
