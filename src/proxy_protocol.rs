//! PROXY protocol (v1 text, v2 binary): headers sent to a server before the client's bytes, so that brokers that
//! accept it (EMQX, HAProxy, NGINX) see the real client address; and headers read from an upstream L4 balancer
//! (AWS NLB, another HAProxy) in front of a listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::ProxyProtocol;

const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Both addresses in the same family (an IPv4 address is mapped to IPv6 if the other one is IPv6).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (src, dst),
        _ => (v6(src), v6(dst)),
    }
}

/// What a v2 header tells a server about the client's TLS session (the PP2_TYPE_SSL TLV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3`, `TLSv1_2` (as rustls names them; sent as `TLSv1.3`, `TLSv1.2`, the spelling of the PROXY protocol
    /// specification and of HAProxy's `ssl_fc_protocol`).
    pub version: String,
    /// The verified client certificate's subject CN (mTLS).
    pub common_name: Option<String>,
}

const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value.get(..usize::from(len)).unwrap_or_default());
}

/// Like [`header`], and for v2 with the PP2_TYPE_SSL TLV (TLS version, client certificate CN) when the client
/// came over TLS.
pub fn header_with_tls(kind: ProxyProtocol, src: SocketAddr, dst: SocketAddr, tls: Option<&TlsInfo>) -> Vec<u8> {
    let mut out = header(kind, src, dst);
    let (ProxyProtocol::V2, Some(info)) = (kind, tls) else {
        return out;
    };
    let mut ssl = vec![PP2_CLIENT_SSL | if info.common_name.is_some() { PP2_CLIENT_CERT_CONN } else { 0 }];
    ssl.extend_from_slice(&0u32.to_be_bytes()); // verify: 0 = the client certificate (if any) was verified
    tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, info.version.replace('_', ".").as_bytes());
    if let Some(cn) = &info.common_name {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    tlv(&mut out, PP2_TYPE_SSL, &ssl);
    // Fix the length field (bytes 14..16) to cover the TLVs.
    let body = u16::try_from(out.len().saturating_sub(16)).unwrap_or(u16::MAX);
    if let Some(len) = out.get_mut(14..16) {
        len.copy_from_slice(&body.to_be_bytes());
    }
    out
}

/// The header for a client at `src` that reached mqtt-lb at `dst`; empty for `none`.
pub fn header(kind: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match kind {
        ProxyProtocol::None => Vec::new(),
        ProxyProtocol::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = Vec::with_capacity(52);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY command
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let six = |ip: IpAddr| match ip {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        IpAddr::V6(v6) => v6.octets(),
                    };
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&six(s));
                    out.extend_from_slice(&six(d));
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

/// The longest v1 header, CRLF included (spec: 107 bytes).
const V1_MAX: usize = 107;
/// The longest v2 header we accept: 16 bytes + addresses + TLVs. Upstream balancers send far less.
const V2_MAX_BODY: usize = 1024;

/// What an upstream balancer said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The original client address; None for `LOCAL` (v2) or `UNKNOWN` (v1): use the TCP peer.
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
}

/// A header that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    BadV2(&'static str),
    #[error("connection closed in the PROXY protocol header")]
    Closed,
    #[error("PROXY protocol header not received in time")]
    Timeout,
}

impl ProxyError {
    /// The `reason` label of a refused connection.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Missing | ProxyError::BadV1(_) | ProxyError::BadV2(_) => "proxy_protocol_invalid",
            ProxyError::Closed => "closed_before_connect",
            ProxyError::Timeout => "proxy_protocol_timeout",
        }
    }
}

/// Parses a complete v1 line (`PROXY TCP4 src dst sport dport\r\n`).
pub fn parse_v1(line: &[u8]) -> Result<Received, ProxyError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::BadV1("not ASCII"))?;
    let text = text.strip_suffix("\r\n").ok_or(ProxyError::BadV1("no CRLF"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyError::BadV1("no PROXY signature"));
    }
    let family = parts.next().ok_or(ProxyError::BadV1("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(Received { source: None, destination: None });
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(ProxyError::BadV1("expected 4 fields after the protocol"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        match family {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| ProxyError::BadV1("bad IPv4 address")),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| ProxyError::BadV1("bad IPv6 address")),
            _ => Err(ProxyError::BadV1("protocol must be TCP4, TCP6 or UNKNOWN")),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
        {
            return Err(ProxyError::BadV1("bad port"));
        }
        s.parse().map_err(|_| ProxyError::BadV1("bad port"))
    };
    Ok(Received {
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
    })
}

/// Parses a complete v2 header (signature, 4 bytes, then `len` bytes of addresses and TLVs).
pub fn parse_v2(header: &[u8]) -> Result<Received, ProxyError> {
    let (fixed, body) = header.split_at_checked(16).ok_or(ProxyError::BadV2("shorter than 16 bytes"))?;
    let [s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, ver_cmd, fam, l0, l1] = fixed else {
        return Err(ProxyError::BadV2("shorter than 16 bytes"));
    };
    if [*s0, *s1, *s2, *s3, *s4, *s5, *s6, *s7, *s8, *s9, *s10, *s11] != V2_SIGNATURE {
        return Err(ProxyError::BadV2("bad signature"));
    }
    if usize::from(u16::from_be_bytes([*l0, *l1])) != body.len() {
        return Err(ProxyError::BadV2("length does not match"));
    }
    match ver_cmd {
        0x20 => return Ok(Received { source: None, destination: None }), // LOCAL: health checks of the balancer
        0x21 => {}
        _ => return Err(ProxyError::BadV2("version must be 2 and command LOCAL or PROXY")),
    }
    let port = |b: &[u8], at: usize| -> Result<u16, ProxyError> {
        match b.get(at..at + 2) {
            Some([h, l]) => Ok(u16::from_be_bytes([*h, *l])),
            _ => Err(ProxyError::BadV2("address block too short")),
        }
    };
    match fam {
        0x11 => {
            let a: [u8; 12] =
                body.get(..12).and_then(|b| b.try_into().ok()).ok_or(ProxyError::BadV2("address block too short"))?;
            let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
            Ok(Received {
                source: Some(SocketAddr::new(IpAddr::V4(src), port(&a, 8)?)),
                destination: Some(SocketAddr::new(IpAddr::V4(dst), port(&a, 10)?)),
            })
        }
        0x21 => {
            let a: [u8; 36] =
                body.get(..36).and_then(|b| b.try_into().ok()).ok_or(ProxyError::BadV2("address block too short"))?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(a.get(..16).unwrap_or(&[0; 16]));
            dst.copy_from_slice(a.get(16..32).unwrap_or(&[0; 16]));
            Ok(Received {
                source: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), port(&a, 32)?)),
                destination: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(dst)), port(&a, 34)?)),
            })
        }
        // UNSPEC, UNIX or UDP: the addresses are not useful here; keep the TCP peer.
        _ => Ok(Received { source: None, destination: None }),
    }
}

/// Reads exactly one v1 or v2 header from the start of `s` (never a byte more: what follows is the client's TLS or
/// MQTT), under `deadline`.
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S, deadline: Duration) -> Result<Received, ProxyError> {
    let read = async {
        // Both formats are at least 15 bytes long ("PROXY UNKNOWN\r\n"; v2: 16).
        let mut buf = vec![0u8; 15];
        s.read_exact(&mut buf).await.map_err(|_| ProxyError::Closed)?;
        if buf.starts_with(&V2_SIGNATURE) {
            let mut rest = [0u8; 1];
            s.read_exact(&mut rest).await.map_err(|_| ProxyError::Closed)?;
            buf.extend_from_slice(&rest);
            let len = match buf.get(14..16) {
                Some([h, l]) => usize::from(u16::from_be_bytes([*h, *l])),
                _ => return Err(ProxyError::BadV2("shorter than 16 bytes")),
            };
            if len > V2_MAX_BODY {
                return Err(ProxyError::BadV2("longer than 1024 bytes"));
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.map_err(|_| ProxyError::Closed)?;
            buf.extend_from_slice(&body);
            return parse_v2(&buf);
        }
        if !buf.starts_with(b"PROXY ") {
            return Err(ProxyError::Missing);
        }
        // v1: one byte at a time up to LF, so nothing after the header is consumed.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::BadV1("longer than 107 bytes"));
            }
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await.map_err(|_| ProxyError::Closed)?;
            buf.extend_from_slice(&byte);
        }
        parse_v1(&buf)
    };
    tokio::time::timeout(deadline, read).await.map_err(|_| ProxyError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_headers_parse_back() {
        let src: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:8883".parse().unwrap();
        let src6: SocketAddr = "[2001:db8::7]:5001".parse().unwrap();
        let dst6: SocketAddr = "[2001:db8::1]:8883".parse().unwrap();
        for (s, d) in [(src, dst), (src6, dst6)] {
            let want = Received { source: Some(s), destination: Some(d) };
            assert_eq!(parse_v1(&header(ProxyProtocol::V1, s, d)), Ok(want));
            assert_eq!(parse_v2(&header(ProxyProtocol::V2, s, d)), Ok(want));
        }
    }

    #[test]
    fn v2_carries_tls_tlvs() {
        let src: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:8883".parse().unwrap();
        let info = TlsInfo { version: "TLSv1_3".into(), common_name: Some("sensor-1".into()) };
        let h = header_with_tls(ProxyProtocol::V2, src, dst, Some(&info));
        // Still a valid header for the same addresses, now with a TLV after them.
        assert_eq!(parse_v2(&h), Ok(Received { source: Some(src), destination: Some(dst) }));
        let tlvs = &h[28..];
        assert_eq!(tlvs[0], PP2_TYPE_SSL);
        assert_eq!(tlvs[3], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN);
        let text = String::from_utf8_lossy(tlvs);
        assert!(text.contains("TLSv1.3") && text.contains("sensor-1"), "{text}");
        assert_eq!(header_with_tls(ProxyProtocol::V1, src, dst, Some(&info)), header(ProxyProtocol::V1, src, dst));
    }

    #[test]
    fn bad_headers_are_refused() {
        let bad_v1: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXI TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ];
        for h in bad_v1 {
            assert!(parse_v1(h).is_err(), "{}", String::from_utf8_lossy(h));
        }
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(Received { source: None, destination: None }));
        let good = header(ProxyProtocol::V2, "192.0.2.1:5000".parse().unwrap(), "198.51.100.2:8883".parse().unwrap());
        let mut wrong_len = good.clone();
        wrong_len[15] = 13;
        assert!(parse_v2(&wrong_len).is_err());
        let mut wrong_version = good.clone();
        wrong_version[12] = 0x31;
        assert!(parse_v2(&wrong_version).is_err());
        assert!(parse_v2(&good[..20]).is_err());
        for cut in 0..good.len() {
            let _ = parse_v2(&good[..cut]);
        }
    }

    #[tokio::test]
    async fn read_header_consumes_exactly_the_header() {
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let src: SocketAddr = "192.0.2.1:5000".parse().unwrap();
            let dst: SocketAddr = "198.51.100.2:8883".parse().unwrap();
            let mut bytes = header(version, src, dst);
            bytes.extend_from_slice(b"\x16\x03\x01rest");
            let mut reader = &bytes[..];
            let got = read_header(&mut reader, Duration::from_secs(1)).await.unwrap();
            assert_eq!(got.source, Some(src));
            assert_eq!(reader, b"\x16\x03\x01rest");
        }
        let mut plain: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a";
        assert_eq!(read_header(&mut plain, Duration::from_secs(1)).await, Err(ProxyError::Missing));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend_from_slice(&[b'1'; 200]);
        assert!(read_header(&mut &long[..], Duration::from_secs(1)).await.is_err());
    }

    #[test]
    fn v1_and_v2() {
        let src: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:8883".parse().unwrap();
        assert_eq!(header(ProxyProtocol::V1, src, dst), b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 8883\r\n");
        let v2 = header(ProxyProtocol::V2, src, dst);
        assert_eq!(v2.len(), 16 + 12);
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&v2[16..20], &[192, 0, 2, 1]);
        assert_eq!(&v2[24..26], &5000u16.to_be_bytes());
        let dst6: SocketAddr = "[2001:db8::1]:8883".parse().unwrap();
        let mixed = header(ProxyProtocol::V1, src, dst6);
        assert_eq!(mixed, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::1 5000 8883\r\n");
        assert!(header(ProxyProtocol::None, src, dst).is_empty());
    }
}
