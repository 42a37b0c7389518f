//! TLS termination with rustls (ring provider): TLS 1.2 and 1.3, a PEM certificate chain with an ECDSA, RSA or
//! Ed25519 key, and optionally client certificates verified against a CA (`tls.client_ca`).
//!
//! Connections run on rustls's unbuffered API ([`TlsStream`]): this module owns the TLS input, decrypted input and
//! encrypted output buffers and keeps each only while it holds bytes, so an idle client costs no buffer at all
//! (rustls's buffered connection keeps a 4 KiB input buffer for the life of every connection).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::client_hello;

/// Bytes asked of the socket per read: a whole TLS record of the largest size (2^14 + 256 bytes of ciphertext plus
/// its 5-byte header) fits, so a bulk sender is read one record or more per system call.
const READ_SIZE: usize = 16 * 1024 + 256 + 5;

/// Plaintext taken per write at most (four full records): what a peer that does not read can make this stream hold.
const MAX_WRITE: usize = 64 * 1024;

/// A TLS server connection over TCP, on rustls's unbuffered API so that this stream owns every buffer: the TLS
/// input, the decrypted input and the encrypted output each exist only while they hold bytes. An idle connection
/// holds no buffer at all, only rustls's connection state (keys and handshake state).
pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed: at most a partial record once processing has run.
    incoming: Vec<u8>,
    /// Decrypted application data not yet read, from `plain_read` on.
    plain: Vec<u8>,
    plain_read: usize,
    /// Encrypted bytes not yet written to the socket, from `out_written` on.
    outgoing: Vec<u8>,
    out_written: usize,
    /// The socket reached EOF.
    eof: bool,
    /// The peer sent close_notify: the application data is complete.
    peer_closed: bool,
    /// close_notify is queued or sent.
    close_sent: bool,
    /// The ClientHello's server name (SNI); read during the handshake.
    server_name: Option<String>,
}

/// What a pass over the received records is for.
#[derive(Clone, Copy)]
enum Action<'a> {
    /// Decrypt what arrived; stop when more input is needed.
    Read,
    /// Encrypt these bytes once the connection can carry application data.
    Write(&'a [u8]),
    /// Queue close_notify.
    Close,
}

/// A rustls error as an I/O error (the rustls error stays reachable through `get_ref`).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends what `write` puts into a buffer of its asking to `out`; `write` reports the size it needs when the room
/// given is too small.
fn append_with(
    out: &mut Vec<u8>,
    first_guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = first_guess;
    for _ in 0..2 {
        out.resize(start + room, 0);
        match write(out.get_mut(start..).unwrap_or_default()) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(required)) => room = required,
            Err(None) => break,
        }
    }
    out.truncate(start);
    Err(io::Error::other("TLS record could not be encoded"))
}

/// The room an encoding asked for, if lack of room is what failed.
fn needed_for_encode(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// The room an encryption asked for, if lack of room is what failed.
fn needed_for_encrypt(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// Classifies a failed handshake for `mqttlb_tls_handshake_failures_total{kind}`.
pub fn handshake_failure_kind(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return "eof";
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => "revoked",
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownRevocationStatus)) => {
            "revocation_unknown"
        }
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => "client_certificate",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol",
        None => "io",
    }
}

/// Accepts a TLS connection: runs the handshake to its end (client certificate checked, when asked for) and
/// returns the stream. Sends the alert rustls chose when the handshake fails. The caller bounds it in time.
pub async fn accept(io: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut s = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_read: 0,
        outgoing: Vec::new(),
        out_written: 0,
        eof: false,
        peer_closed: false,
        close_sent: false,
        server_name: None,
    };
    // Until the first record is whole (rustls processes nothing before), it is where the server name is.
    let mut hello_read = false;
    loop {
        if !hello_read {
            if let client_hello::Hello::Read(name) = client_hello::server_name(&s.incoming) {
                (s.server_name, hello_read) = (name, true);
            }
        }
        if let Err(e) = s.process(Action::Read) {
            // The alert rustls chose goes out, best effort; the handshake's error is what is reported.
            s.queue_alert();
            let _ = std::future::poll_fn(|cx| s.poll_write_out(cx)).await;
            return Err(e);
        }
        // The handshake's own flights go out before anything else.
        std::future::poll_fn(|cx| s.poll_write_out(cx)).await?;
        if !s.conn.is_handshaking() {
            return Ok(s);
        }
        if s.eof || s.peer_closed {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        std::future::poll_fn(|cx| s.poll_fill(cx)).await?;
    }
}

impl TlsStream {
    /// The server name the client asked for (SNI), if it sent one, handed over once (the stream keeps none).
    pub fn take_server_name(&mut self) -> Option<String> {
        self.server_name.take()
    }

    /// The TCP connection under TLS.
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// The rustls connection: negotiated version, client certificate.
    pub fn connection(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// Runs the received records through rustls: decrypted data goes to `plain`, handshake messages and alerts to
    /// `outgoing`. Returns the bytes of `action`'s data encrypted (for [`Action::Write`]).
    fn process(&mut self, action: Action<'_>) -> io::Result<usize> {
        let result = loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            // What to do once `discard` bytes are gone: None goes round again.
            let outcome: Option<io::Result<usize>> = match state {
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    let mut failed = None;
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(r) => self.plain.extend_from_slice(r.payload),
                            Err(e) => {
                                failed = Some(Err(tls_error(e)));
                                break;
                            }
                        }
                    }
                    failed
                }
                Ok(ConnectionState::ReadEarlyData(mut records)) => {
                    // Early data is not enabled in the server configuration; nothing is expected here.
                    while records.next_record().is_some() {}
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    match append_with(&mut self.outgoing, 1024, |room| encode.encode(room).map_err(needed_for_encode)) {
                        Ok(()) => None,
                        Err(e) => Some(Err(e)),
                    }
                }
                // Encoded bytes are in `outgoing`, ahead of anything encrypted later, and written in order.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Some(match action {
                        Action::Write(_) => Err(io::ErrorKind::BrokenPipe.into()),
                        Action::Read | Action::Close => Ok(0),
                    })
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => Some(match action {
                    Action::Read => Ok(0),
                    Action::Write(data) => {
                        let data = data.get(..MAX_WRITE).unwrap_or(data);
                        let overhead = data.len() / (16 * 1024) * 64 + 64;
                        append_with(&mut self.outgoing, data.len() + overhead, |room| {
                            traffic.encrypt(data, room).map_err(needed_for_encrypt)
                        })
                        .map(|()| data.len())
                    }
                    Action::Close => append_with(&mut self.outgoing, 64, |room| {
                        traffic.queue_close_notify(room).map_err(needed_for_encrypt)
                    })
                    .map(|()| 0),
                }),
                Ok(ConnectionState::BlockedHandshake) => Some(match action {
                    Action::Read | Action::Close => Ok(0),
                    Action::Write(_) => Err(io::Error::other("TLS handshake not complete")),
                }),
                Ok(_) => Some(Err(io::Error::other("unexpected TLS connection state"))),
                Err(e) => Some(Err(tls_error(e))),
            };
            let discard = discard.min(self.incoming.len());
            self.incoming.drain(..discard);
            if let Some(result) = outcome {
                break result;
            }
        };
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            self.incoming = Vec::new();
        }
        result
    }
}

impl TlsStream {
    /// After a failure (handshake or record): encodes the alert rustls queued for the peer, if any. One pass only:
    /// the alert is the one message a failure queues (everything queued before went out in the pass that failed), and
    /// a second pass would run the failed input through rustls again.
    fn queue_alert(&mut self) {
        // The same buffer as before: rustls may hold positions of a partial handshake message in it.
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            // Best effort: the handshake failed whatever becomes of the alert.
            let _ = append_with(&mut self.outgoing, 64, |room| encode.encode(room).map_err(needed_for_encode));
        }
    }

    /// Writes `outgoing` to the socket; frees it once all is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.outgoing.get(self.out_written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_written += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
        }
        self.out_written = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming` (allocated only now, when bytes are there). Ready once something
    /// was read or EOF was seen. A read that does not fill the buffer tells tokio the socket is drained, so the next
    /// call waits for readiness instead of asking the kernel again.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.io.poll_read_ready(cx))?;
        self.incoming.reserve(READ_SIZE);
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.incoming) {
            Poll::Ready(Ok(n)) => {
                self.eof = n == 0;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Idle: keep no more than the partial record already received.
                if self.incoming.is_empty() {
                    self.incoming = Vec::new();
                } else {
                    self.incoming.shrink_to_fit();
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Messages rustls answers by itself (key updates) leave whenever the socket takes them.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if let Some(ready) = this.plain.get(this.plain_read..).filter(|p| !p.is_empty()) {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(ready.get(..n).unwrap_or_default());
                this.plain_read += n;
                if this.plain_read == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_fill(cx))?;
            if let Err(e) = this.process(Action::Read) {
                // A record that fails (bad MAC, bad framing): tell the peer with the alert rustls chose, best effort.
                this.queue_alert();
                let _ = this.poll_write_out(cx);
                return Poll::Ready(Err(e));
            }
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One batch at most waits in `outgoing`: a peer that does not read pushes back here.
        ready!(this.poll_write_out(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let decrypted = this.plain.len();
        let n = this.process(Action::Write(buf))?;
        if this.plain.len() > decrypted {
            // Records decrypted on the way are the reader's: make sure it looks.
            cx.waker().wake_by_ref();
        }
        // Start sending now; what the socket does not take yet goes with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.poll_write_out(cx))?;
            // Marked first: a close that fails is not tried again.
            this.close_sent = true;
            this.process(Action::Close)?;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_material::certificates::provider;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::ServerName;
    use rustls::RootCertStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server configuration with a fresh self-signed certificate, and a client configuration trusting it.
    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Accepts one TLS connection on a loopback port.
    async fn serve_one(
        server: Arc<rustls::ServerConfig>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<io::Result<TlsStream>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, server).await
        });
        (addr, accepting)
    }

    /// A TLS client connected to a [`TlsStream`] over loopback.
    async fn pair(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, TlsStream) {
        let (server, client) = configs(versions);
        let (addr, accepting) = serve_one(server).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.unwrap();
        let server = accepting.await.unwrap().unwrap();
        (client, server)
    }

    fn holds_no_buffer(s: &TlsStream) -> bool {
        s.incoming.capacity() == 0 && s.plain.capacity() == 0 && s.outgoing.capacity() == 0
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn carries_a_megabyte_each_way_and_holds_no_buffer_when_idle() {
        for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
            let (mut client, mut server) = pair(versions).await;
            assert!(holds_no_buffer(&server), "buffers kept after the handshake");
            let up = pattern(1 << 20, 1);
            let down = pattern(1 << 20, 7);
            let (up2, down2) = (up.clone(), down.clone());
            let client_side = async move {
                let (mut r, mut w) = tokio::io::split(&mut client);
                let send = async {
                    w.write_all(&up2).await.unwrap();
                    w.flush().await.unwrap();
                };
                let recv = async {
                    let mut got = vec![0; down2.len()];
                    r.read_exact(&mut got).await.unwrap();
                    got
                };
                let ((), got) = tokio::join!(send, recv);
                assert!(got == down2, "client received other bytes than sent");
                client
            };
            let server_side = async {
                // Both directions at once through the one stream, as the relay uses it.
                let (mut r, mut w) = tokio::io::split(&mut server);
                let recv = async {
                    let mut got = vec![0; up.len()];
                    r.read_exact(&mut got).await.unwrap();
                    got
                };
                let send = async {
                    w.write_all(&down).await.unwrap();
                    w.flush().await.unwrap();
                };
                let (got, ()) = tokio::join!(recv, send);
                got
            };
            let (mut client, got) = tokio::join!(client_side, server_side);
            assert!(got == up, "server received other bytes than sent");
            assert!(holds_no_buffer(&server), "buffers kept once idle");

            // A key update from the client is answered and traffic goes on.
            client.get_mut().1.refresh_traffic_keys().ok();
            client.write_all(b"after").await.unwrap();
            client.flush().await.unwrap();
            let mut five = [0; 5];
            server.read_exact(&mut five).await.unwrap();
            assert_eq!(&five, b"after");

            // close_notify: a clean end of stream, each way.
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
            server.shutdown().await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_forged_record_fails_the_read_and_the_peer_gets_an_alert() {
        let (mut client, mut server) = pair(&[&rustls::version::TLS13]).await;
        // An application-data record the client's keys did not make, written under the client's TLS layer.
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend_from_slice(&[0x5a; 40]);
        client.get_mut().0.write_all(&forged).await.unwrap();
        let mut buf = [0; 16];
        let err = server.read(&mut buf).await.unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(matches!(inner, Some(rustls::Error::DecryptError)), "{err:?}");
        // The client hears why (bounded: without the alert it would wait for the server's next byte).
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf));
        let err = read.await.expect("an alert within 5 s").unwrap_err();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(matches!(inner, Some(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac))), "{err:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_write_takes_at_most_max_write_bytes() {
        let (mut client, mut server) = pair(&[&rustls::version::TLS13]).await;
        let n = server.write(&vec![7; 1 << 20]).await.unwrap();
        assert_eq!(n, MAX_WRITE, "a write is bounded");
        server.flush().await.unwrap();
        let mut got = vec![0; n];
        client.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 7));
    }

    /// A small deterministic generator (xorshift), so every run sends the same bytes.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn garbage_before_or_after_the_handshake_is_an_error_never_a_panic() {
        let (server, _) = configs(&[&rustls::version::TLS13, &rustls::version::TLS12]);
        for seed in 0..150u64 {
            // Before: bare noise, or noise behind a plausible handshake record header.
            let mut bytes = noise(seed, 1 + (seed as usize * 37) % 3000);
            if seed % 2 == 0 {
                let len = (bytes.len() as u16).to_be_bytes();
                bytes.splice(0..0, [22, 3, 1, len[0], len[1]]);
            }
            let (addr, accepting) = serve_one(Arc::clone(&server)).await;
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&bytes).await.unwrap();
            tcp.shutdown().await.unwrap();
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), accepting).await;
            let joined = outcome.expect("accept ends on its own");
            assert!(joined.expect("no panic").is_err(), "seed {seed}: garbage accepted as a handshake");
        }
        for seed in 0..50u64 {
            // After: noise under a completed handshake, as records or bare.
            let (mut client, mut server) = pair(&[&rustls::version::TLS13]).await;
            let mut bytes = noise(seed, 1 + (seed as usize * 53) % 2000);
            if seed % 2 == 0 {
                let len = (bytes.len() as u16).to_be_bytes();
                bytes.splice(0..0, [23, 3, 3, len[0], len[1]]);
            }
            client.get_mut().0.write_all(&bytes).await.unwrap();
            client.get_mut().0.shutdown().await.unwrap();
            let mut buf = [0; 64];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf)).await;
            assert!(read.expect("the read ends on its own").is_err(), "seed {seed}: noise read as data");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_close_without_close_notify_is_an_unexpected_eof() {
        let (client, mut server) = pair(&[&rustls::version::TLS13]).await;
        // FIN without close_notify (unread tickets make a plain drop a reset instead).
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let mut buf = [0; 16];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_handshake_sends_an_alert_and_returns_the_rustls_error() {
        let (server, _) = configs(&[&rustls::version::TLS13]);
        let (_, untrusting) = configs(&[&rustls::version::TLS13]);
        let (addr, accepting) = serve_one(server).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        // The client does not trust the server's certificate: it sends an alert, which the server reports.
        assert!(tokio_rustls::TlsConnector::from(untrusting).connect(name, tcp).await.is_err());
        let err = accepting.await.unwrap().err().unwrap();
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(matches!(inner, Some(rustls::Error::AlertReceived(_))), "{err:?}");

        // A client speaking no TLS gets an alert back before the close.
        let (server, _) = configs(&[&rustls::version::TLS13]);
        let (addr, accepting) = serve_one(server).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer.first(), Some(&21), "expected a TLS alert record, got {answer:?}");
        assert!(accepting.await.unwrap().is_err());
    }
}
