//! The client side of the upgrade, for `websocket` backends and health checks: `GET path` with subprotocol `mqtt`,
//! and the server's answer checked (101, `Upgrade` and `Connection`, the accept key of our key, `mqtt` echoed).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::stream::{Role, WsIo};
use super::{header_tokens, header_values, key, read_head, HeadError, MAX_HEADERS};

/// Why an upgrade to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade request not sent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed before answering the upgrade")]
    Closed,
    #[error("the server's upgrade answer could not be read")]
    Read,
    #[error("the server's upgrade answer is too large")]
    TooLarge,
    #[error("the server answered the upgrade with HTTP {0}")]
    Status(u16),
    #[error("bad upgrade answer: {0}")]
    BadAnswer(&'static str),
}

/// Upgrades a connection to a WebSocket server: `GET path` on `address` (the Host) with subprotocol `mqtt`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    address: &str,
    path: &str,
) -> Result<WsIo<S>, UpgradeError> {
    let key = key::client_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let (mut buf, end) = read_head(&mut stream).await.map_err(|e| match e {
        HeadError::TooLarge => UpgradeError::TooLarge,
        HeadError::Closed => UpgradeError::Closed,
        HeadError::Io => UpgradeError::Read,
    })?;
    check_answer(buf.get(..end).unwrap_or_default(), &key)?;
    let early_frames = buf.split_off(end);
    Ok(WsIo::new(stream, Role::Client, early_frames))
}

/// Checks the head of a server's answer to our upgrade request with `key`.
fn check_answer(head: &[u8], key: &str) -> Result<(), UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(UpgradeError::BadAnswer("not an HTTP/1.1 answer")),
    }
    match response.code {
        Some(101) => {}
        Some(code) => return Err(UpgradeError::Status(code)),
        None => return Err(UpgradeError::BadAnswer("no status")),
    }
    let headers = response.headers;
    if !header_tokens(headers, "upgrade").any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Err(UpgradeError::BadAnswer("\"Upgrade: websocket\" is missing"));
    }
    if !header_tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(UpgradeError::BadAnswer("\"Connection: Upgrade\" is missing"));
    }
    if header_values(headers, "sec-websocket-accept").next() != Some(key::accept_key(key.as_bytes()).as_str()) {
        return Err(UpgradeError::BadAnswer("Sec-WebSocket-Accept does not match our key"));
    }
    if !header_tokens(headers, "sec-websocket-protocol").any(|t| t.eq_ignore_ascii_case("mqtt")) {
        return Err(UpgradeError::BadAnswer("the subprotocol mqtt is not echoed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const GOOD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

    #[test]
    fn answers() {
        assert!(check_answer(GOOD.as_bytes(), KEY).is_ok());
        let cases = [
            (GOOD.replace("101 Switching Protocols", "404 Not Found"), "HTTP 404"),
            (GOOD.replace("Upgrade: websocket\r\n", ""), "Upgrade"),
            (GOOD.replace("Connection: Upgrade", "Connection: close"), "Connection"),
            (GOOD.replace("s3pP", "AAAA"), "Accept"),
            (GOOD.replace("Sec-WebSocket-Protocol: mqtt\r\n", ""), "subprotocol"),
            ("SSH-2.0-OpenSSH\r\n\r\n".to_owned(), "HTTP"),
        ];
        for (answer, what) in cases {
            let e = check_answer(answer.as_bytes(), KEY).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }
}
