//! A TCP connect to a server that sends its first bytes at once.
//!
//! tokio's `TcpStream::connect` waits for the reactor to report the new socket writable, then asks the kernel for
//! the connect's outcome (getsockopt `SO_ERROR`), and only then may anything be written. Towards a broker on the
//! same host or LAN the handshake has usually completed by the time the first bytes are ready, so this connect
//! tries them straight away, as HAProxy does: sent, the connection is known up with no wait and no extra system
//! call; refused by the kernel as still connecting (`EAGAIN` while the SYN is out), the connect falls back to
//! waiting for writability and `SO_ERROR` as tokio's does. A connect error comes back from that first send
//! (`ECONNREFUSED`) just as it would from `SO_ERROR`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

use crate::config::TcpKeepalive;

/// What a connect did: the stream, and how many of the first bytes it already sent.
pub struct Connected {
    pub stream: TcpStream,
    pub sent: usize,
}

/// Why a connect failed, and whether the server was reached first.
#[derive(Debug)]
pub enum ConnectError {
    /// No connection: refused, unreachable, or a socket that could not be made.
    Connect(io::Error),
    /// Connected, then the first bytes could not be sent (the server reset or closed).
    FirstBytes(io::Error),
}

/// Opens a connection to `addr` with TCP_NODELAY and `keepalive` ([`super::socket_options`]) and sends as much of
/// `first` as the socket takes at once (none while the handshake is still under way).
pub async fn connect(
    addr: SocketAddr,
    keepalive: Option<&TcpKeepalive>,
    first: &[u8],
) -> Result<Connected, ConnectError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))
        .map_err(ConnectError::Connect)?;
    super::socket_options::apply(&SockRef::from(&socket), keepalive);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(ConnectError::Connect(e)),
    }
    let sent = if first.is_empty() {
        0
    } else {
        match socket.send(first) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // The connect's own failure, reported by the send as by SO_ERROR.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(ConnectError::Connect(e)),
            Err(e) => return Err(ConnectError::FirstBytes(e)),
        }
    };
    let stream = TcpStream::from_std(socket.into()).map_err(ConnectError::Connect)?;
    if sent == 0 {
        // Not known to be up: wait for the handshake's end and ask how it ended.
        stream.writable().await.map_err(ConnectError::Connect)?;
        if let Some(e) = stream.take_error().map_err(ConnectError::Connect)? {
            return Err(ConnectError::Connect(e));
        }
    }
    Ok(Connected { stream, sent })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn the_first_bytes_arrive_and_the_rest_is_the_callers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connected = connect(addr, None, b"hello").await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        assert!(connected.sent <= 5);
        let mut stream = connected.stream;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &b"hello"[connected.sent..]).await.unwrap();
        let mut got = [0u8; 5];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert!(SockRef::from(&stream).tcp_nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        // A port nothing listens on: bound, then closed.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        for first in [&b""[..], b"CONNECT"] {
            match connect(addr, None, first).await {
                Err(ConnectError::Connect(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("connected to a closed port"),
            }
        }
    }
}
