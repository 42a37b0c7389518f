//! PROXY protocol headers (v1 text, v2 binary) sent to a server before the client's bytes, so that brokers that
//! accept it (EMQX, HAProxy, NGINX, mosquitto 2.1) see the real client address.

use std::net::{IpAddr, SocketAddr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
