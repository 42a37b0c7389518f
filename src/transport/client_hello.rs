//! The server name (SNI) of a TLS ClientHello, read from the first record a client sends: rustls's unbuffered
//! server connection does not expose it, and routes need it. Only a ClientHello that fits in its first record is
//! read (every common client sends it so; one split over records counts as no server name).

/// What the bytes received so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The first record is not complete yet.
    Incomplete,
    /// The first record was read: the server name it asks for, if it is a ClientHello with a `server_name`
    /// extension holding a host name (lower-cased).
    Read(Option<String>),
}

/// Reads the server name from `received`, the connection's first bytes.
pub fn server_name(received: &[u8]) -> Hello {
    let mut header = Reader(received);
    let (Some([kind]), Some(_version), Some(length)) = (header.array::<1>(), header.array::<2>(), header.u16()) else {
        return Hello::Incomplete;
    };
    if kind != 0x16 {
        return Hello::Read(None);
    }
    match received.get(5..5 + length) {
        None => Hello::Incomplete,
        Some(record) => Hello::Read(from_handshake(record)),
    }
}

/// The cursor over a message's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<usize> {
        self.array::<1>().map(|[b]| usize::from(b))
    }

    fn u16(&mut self) -> Option<usize> {
        self.array::<2>().map(|b| usize::from(u16::from_be_bytes(b)))
    }

    /// A field prefixed with its length in `width` bytes.
    fn vector(&mut self, width: usize) -> Option<Reader<'a>> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(n).map(Reader)
    }
}

/// The server name of a ClientHello handshake message (RFC 8446 section 4.1.2, RFC 6066 section 3).
fn from_handshake(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 0x01 {
        return None;
    }
    let [high, mid, low] = r.array::<3>()?;
    let length = usize::from(high) << 16 | usize::from(mid) << 8 | usize::from(low);
    let mut hello = Reader(r.take(length)?);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vector(1)?; // legacy_session_id
    hello.vector(2)?; // cipher_suites
    hello.vector(1)?; // legacy_compression_methods
    let mut extensions = hello.vector(2)?;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.vector(2)?;
        if kind != 0 {
            continue;
        }
        let mut names = data.vector(2)?;
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vector(2)?;
            if name_type == 0 {
                return std::str::from_utf8(name.0).ok().map(str::to_ascii_lowercase);
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls's client writes it, asking for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_name_of_a_real_client_hello() {
        let hello = client_hello("Tenant-A.example.org");
        assert_eq!(server_name(&hello), Hello::Read(Some("tenant-a.example.org".into())));
        assert_eq!(server_name(&hello[..hello.len() - 1]), Hello::Incomplete);
        assert_eq!(server_name(&hello[..3]), Hello::Incomplete);
    }

    #[test]
    fn no_name_without_sni_or_on_other_bytes() {
        assert_eq!(server_name(&client_hello("127.0.0.1")), Hello::Read(None), "an IP address is sent without SNI");
        assert_eq!(server_name(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"), Hello::Read(None));
        assert_eq!(server_name(b"\x16\x03\x01\x00\x02\x01\xff"), Hello::Read(None), "truncated inside the record");
    }
}
