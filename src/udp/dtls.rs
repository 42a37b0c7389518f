//! DTLS record headers, read (never decrypted) by the front door to tell DTLS from plain CoAP and to find the
//! Connection ID of a record.
//!
//! DTLS 1.2 (RFC 6347 §4.1; RFC 9146 for the Connection ID):
//!
//! ```text
//! type(1) version(2) epoch(2) sequence_number(6) [cid(n), only when type = 25 tls12_cid] length(2) fragment
//! ```
//!
//! The CID's length `n` is not in the record: both ends agreed on it in the handshake (the server chose it in its
//! `connection_id` extension, and it is the server that decides what CIDs it hands out). The front door does not
//! follow handshakes, so `n` comes from the listener's `dtls_cid_length`: the fixed length of the CIDs the servers
//! issue (Californium, Mbed TLS, Eclipse tinydtls and pion/dtls all issue fixed-length CIDs).
//!
//! DTLS 1.3 (RFC 9147 §4) ciphertext records have a unified header whose first byte is `001CSLEE`; when `C` is
//! set, the CID follows that byte, with the same agreed length. DTLS 1.3 handshakes start with DTLS 1.2-style
//! plaintext records.
//!
//! A CID is opaque to everyone but its issuer, with one convention for clusters: Eclipse Californium (the DTLS
//! stack of Leshan) issues, when given a node id (`DTLS_CONNECTION_ID_NODE_ID`, its `MultiNodeConnectionIdGenerator`),
//! CIDs whose first byte is that node id and whose other bytes are random ([`cid_node_id`]).

/// Content type of a DTLS 1.2 record carrying a Connection ID (RFC 9146).
pub const TLS12_CID: u8 = 25;
/// Content type of a handshake record.
pub const HANDSHAKE: u8 = 22;

/// Whether the first byte of a datagram starts a DTLS record: a DTLS 1.2 content type (20 change_cipher_spec to
/// 26 ack) or a DTLS 1.3 unified header (`001x xxxx`). CoAP version 1 starts with `01`, so the two never overlap.
pub fn is_dtls(first: u8) -> bool {
    matches!(first, 20..=26 | 0x20..=0x3F)
}

/// Why a datagram that starts like DTLS is not a DTLS record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than a record header")]
    TooShort,
    #[error("content type {0} is not a DTLS record")]
    ContentType(u8),
    #[error("record version {0:#06x} is not DTLS")]
    Version(u16),
    #[error("the record length runs past the end of the datagram")]
    Length,
    #[error("a record with a Connection ID on a listener without dtls_cid_length")]
    UnexpectedCid,
    #[error("an encrypted record with no content")]
    Empty,
}

/// The first record of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The DTLS 1.2 content type, or `None` for a DTLS 1.3 unified header.
    pub content_type: Option<u8>,
    /// The Connection ID, when the record carries one.
    pub cid: Option<&'a [u8]>,
}

/// Checks every record of `datagram` (which [`is_dtls`]) and returns the first one. A datagram may hold several
/// records (RFC 6347 §4.1.1, RFC 9147 §4.2): each must have a DTLS content type or unified header, a DTLS version,
/// and a length that ends within the datagram; the last one must end exactly at its end (a DTLS 1.3 record without
/// a length field takes the rest). `cid_length` is the listener's `dtls_cid_length`: without it the servers issue
/// no Connection IDs, so a record carrying one (content type 25, or a unified header with the C bit) is refused: its
/// length field cannot be found, and no session of the servers can use it.
pub fn check_datagram(datagram: &[u8], cid_length: Option<u8>) -> Result<Record<'_>, Malformed> {
    let (first, mut rest) = record(datagram, cid_length)?;
    while !rest.is_empty() {
        (_, rest) = record(rest, cid_length)?;
    }
    Ok(first)
}

/// Reads the header of the first record of `datagram` (which [`is_dtls`]), ignoring what follows it.
pub fn first_record(datagram: &[u8], cid_length: Option<u8>) -> Result<Record<'_>, Malformed> {
    record(datagram, cid_length).map(|(r, _)| r)
}

/// One record at the start of `data`, and the bytes after it.
fn record(data: &[u8], cid_length: Option<u8>) -> Result<(Record<'_>, &[u8]), Malformed> {
    let (&first, rest) = data.split_first().ok_or(Malformed::TooShort)?;
    if (0x20..=0x3F).contains(&first) {
        return unified(first, rest, cid_length);
    }
    if !is_dtls(first) {
        return Err(Malformed::ContentType(first));
    }
    let (head, after) = data.split_first_chunk::<11>().ok_or(Malformed::TooShort)?;
    let [_, major, minor, ..] = *head;
    if major != 0xFE {
        return Err(Malformed::Version(u16::from_be_bytes([major, minor])));
    }
    let (cid, after) = match (first, cid_length) {
        (TLS12_CID, Some(n)) => {
            let (cid, after) = after.split_at_checked(usize::from(n)).ok_or(Malformed::TooShort)?;
            (Some(cid), after)
        }
        (TLS12_CID, None) => return Err(Malformed::UnexpectedCid),
        _ => (None, after),
    };
    let (fragment, after) = with_length(after)?;
    if first == TLS12_CID && fragment.is_empty() {
        return Err(Malformed::Empty);
    }
    Ok((Record { content_type: Some(first), cid }, after))
}

/// A two-byte length and that many bytes of `data`, and what follows them.
fn with_length(data: &[u8]) -> Result<(&[u8], &[u8]), Malformed> {
    let (length, rest) = data.split_first_chunk::<2>().ok_or(Malformed::TooShort)?;
    rest.split_at_checked(usize::from(u16::from_be_bytes(*length))).ok_or(Malformed::Length)
}

/// A DTLS 1.3 unified header (`001CSLEE` [CID] sequence (1 or 2 bytes) [length (2)]) and its encrypted record.
fn unified(first: u8, rest: &[u8], cid_length: Option<u8>) -> Result<(Record<'_>, &[u8]), Malformed> {
    let has_cid = first & 0x10 != 0;
    let (cid, rest) = match (has_cid, cid_length) {
        (true, Some(n)) => {
            let (cid, rest) = rest.split_at_checked(usize::from(n)).ok_or(Malformed::TooShort)?;
            (Some(cid), rest)
        }
        (true, None) => return Err(Malformed::UnexpectedCid),
        (false, _) => (None, rest),
    };
    let sequence_len = if first & 0x08 != 0 { 2 } else { 1 };
    let (_, rest) = rest.split_at_checked(sequence_len).ok_or(Malformed::TooShort)?;
    let (encrypted, after) = if first & 0x04 != 0 { with_length(rest)? } else { (rest, &[][..]) };
    // At least the inner content type and an authentication tag.
    if encrypted.is_empty() {
        return Err(Malformed::Empty);
    }
    Ok((Record { content_type: None, cid }, after))
}

/// The node id a CID carries under Californium's multi-node convention: its first byte (0 to 255). Whether a
/// server issues such CIDs is configuration (`dtls_cid_node_id` of the server), not something a CID can tell.
pub fn cid_node_id(cid: &[u8]) -> Option<u8> {
    cid.first().copied()
}

/// A DTLS 1.2 ClientHello for the `dtls-hello` health check: PSK and ECDHE-ECDSA suites of CoAP (RFC 7252 §9,
/// CCM_8 and more), no session, no cookie. A live DTLS server answers it with a HelloVerifyRequest (stateless
/// cookie exchange, RFC 6347 §4.2.1), a ServerHello or an alert; the probe never goes further.
pub fn client_hello(random: [u8; 32]) -> Vec<u8> {
    let mut body = vec![0xFE, 0xFD];
    body.extend_from_slice(&random);
    body.extend_from_slice(&[0x00, 0x00]); // session id, cookie: empty
    let suites: [u16; 6] = [0xC0A8, 0xC0AE, 0xC0AC, 0x00AE, 0xC02B, 0xC023];
    body.extend_from_slice(&(2 * suites.len() as u16).to_be_bytes());
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let extensions: [&[u8]; 3] = [
        &[0x00, 0x0A, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17], // supported_groups: secp256r1
        &[0x00, 0x0B, 0x00, 0x02, 0x01, 0x00],             // ec_point_formats: uncompressed
        &[0x00, 0x0D, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03], // signature_algorithms: ecdsa_secp256r1_sha256
    ];
    let ext_len: usize = extensions.iter().map(|e| e.len()).sum();
    body.extend_from_slice(&(ext_len as u16).to_be_bytes());
    for e in extensions {
        body.extend_from_slice(e);
    }
    let len = (body.len() as u32).to_be_bytes();
    // Handshake header: client_hello, length, message_seq 0, fragment_offset 0, fragment_length = length.
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(len.get(1..).unwrap_or_default());
    handshake.extend_from_slice(&[0, 0, 0, 0, 0]);
    handshake.extend_from_slice(len.get(1..).unwrap_or_default());
    handshake.extend_from_slice(&body);
    // Record: handshake, DTLS 1.0 record version (as clients send their first flight), epoch 0, sequence 0.
    let mut record = vec![HANDSHAKE, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The `dtls-hello` health check of `address` (a socket address, or `host:port`): a [`client_hello`], answered by any DTLS handshake
/// or alert record. Other datagrams are ignored; the caller bounds the wait.
pub async fn hello_probe(address: impl tokio::net::ToSocketAddrs) -> Result<(), super::coap::UdpProbeError> {
    use super::coap::UdpProbeError;
    let socket = super::coap::probe_socket(address).await?;
    let mut random = [0u8; 32];
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    for (i, chunk) in random.chunks_mut(16).enumerate() {
        chunk.copy_from_slice(&(nanos ^ (i as u128) << 64).to_le_bytes());
    }
    socket.send(&client_hello(random)).await.map_err(UdpProbeError::Io)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await.map_err(UdpProbeError::Io)?;
        let answer = buf.get(..n).unwrap_or_default();
        if let Ok(Record { content_type: Some(21 | HANDSHAKE), .. }) = first_record(answer, None) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DTLS 1.2 record: `cid` makes it a tls12_cid record.
    fn record(content_type: u8, cid: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut r = vec![content_type, 0xFE, 0xFD, 0x00, 0x01, 0, 0, 0, 0, 0, 7];
        r.extend_from_slice(cid);
        r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        r.extend_from_slice(payload);
        r
    }

    #[test]
    fn classifies_first_bytes() {
        for b in [20u8, 22, 23, 25, 26, 0x20, 0x3F] {
            assert!(is_dtls(b), "{b:#x}");
        }
        for b in [0x40u8, 0x41, 0x50, 0x60, 0x70, 0x7F, 0x00, 0x13, 0x1B, 0x80, 0xFF] {
            assert!(!is_dtls(b), "{b:#x}");
        }
    }

    #[test]
    fn reads_the_connection_id() {
        let cid = [0xC1, 0xD2, 0xE3, 0xF4];
        let r = record(TLS12_CID, &cid, &[0xAA; 32]);
        assert_eq!(first_record(&r, Some(4)).unwrap(), Record { content_type: Some(25), cid: Some(&cid[..]) });
        // Without a configured length the servers issue no CIDs: the record is refused.
        assert_eq!(first_record(&r, None), Err(Malformed::UnexpectedCid));
        // A wrong configured length shows as a length mismatch or as another CID, never as a panic.
        assert!(first_record(&r, Some(40)).is_err());
        let hello = record(HANDSHAKE, &[], &[0x01; 60]);
        assert_eq!(first_record(&hello, Some(4)).unwrap(), Record { content_type: Some(22), cid: None });
    }

    #[test]
    fn node_id_is_the_first_byte_of_the_cid() {
        // As Californium's multi-node generator builds them: node id, then random bytes.
        let cid = [0x07, 0x9A, 0x3C, 0x51, 0xE2, 0x00];
        let r = record(TLS12_CID, &cid, &[0xAA; 16]);
        let read = first_record(&r, Some(6)).unwrap().cid.unwrap();
        assert_eq!(cid_node_id(read), Some(7));
        assert_eq!(cid_node_id(&[0xFF]), Some(255));
        assert_eq!(cid_node_id(&[]), None);
        // A DTLS 1.3 record with a CID: the same bytes, the same node id.
        let unified = [0x3D, 0x2A, 0x01, 0x00, 0x09, 0x00, 0x01, 0x55];
        assert_eq!(first_record(&unified, Some(2)).unwrap().cid.and_then(cid_node_id), Some(0x2A));
    }

    #[test]
    fn refuses_broken_headers() {
        let mut bad_version = record(23, &[], &[1, 2, 3]);
        bad_version[1] = 0x03;
        assert_eq!(first_record(&bad_version, None), Err(Malformed::Version(0x03FD)));
        let mut long = record(23, &[], &[1, 2, 3]);
        long.truncate(long.len() - 1);
        assert_eq!(first_record(&long, None), Err(Malformed::Length));
        assert_eq!(first_record(&[22, 0xFE, 0xFD, 0, 0], None), Err(Malformed::TooShort));
        let short_cid = record(TLS12_CID, &[1, 2], &[]);
        assert_eq!(first_record(&short_cid[..13], Some(8)), Err(Malformed::TooShort));
    }

    #[test]
    fn client_hello_is_a_well_formed_record() {
        let hello = client_hello([7; 32]);
        let record = first_record(&hello, None).unwrap();
        assert_eq!(record.content_type, Some(HANDSHAKE));
        let length = u16::from_be_bytes([hello[11], hello[12]]) as usize;
        assert_eq!(length, hello.len() - 13, "one record, exactly");
        assert_eq!(hello[13], 0x01, "client_hello");
        let body_len = u32::from_be_bytes([0, hello[14], hello[15], hello[16]]) as usize;
        assert_eq!(body_len, length - 12);
        assert_eq!(&hello[22..25], &hello[14..17], "one fragment: fragment_length = length");
        assert_eq!(&hello[25..27], &[0xFE, 0xFD], "client_version DTLS 1.2");
    }

    #[test]
    fn dtls13_unified_header() {
        // 001C SLEE = 0011 1101: CID, 16-bit sequence, length, epoch 1.
        let mut r = vec![0x3D, 0xAB, 0xCD, 0x00, 0x09, 0x00, 0x02, 0x55, 0x66];
        assert_eq!(first_record(&r, Some(2)).unwrap(), Record { content_type: None, cid: Some(&[0xAB, 0xCD][..]) });
        assert_eq!(first_record(&r, None), Err(Malformed::UnexpectedCid));
        r.pop();
        assert_eq!(first_record(&r, Some(2)), Err(Malformed::Length));
        // No CID, 8-bit sequence, no length.
        assert_eq!(first_record(&[0x21, 0x05, 0xEE, 0xEE], Some(2)).unwrap().cid, None);
        assert_eq!(first_record(&[0x21], Some(2)), Err(Malformed::TooShort));
        assert_eq!(first_record(&[0x21, 0x05], Some(2)), Err(Malformed::Empty));
    }

    #[test]
    fn every_record_of_a_datagram_is_checked() {
        let hello = record(HANDSHAKE, &[], &[0x01; 20]);
        let ccs = record(20, &[], &[1]);
        let two = [hello.clone(), ccs.clone()].concat();
        assert_eq!(check_datagram(&two, None).unwrap().content_type, Some(HANDSHAKE));
        // Bytes after the last record, a second record cut short, a second record with a TLS version.
        assert_eq!(check_datagram(&[hello.clone(), vec![0]].concat(), None), Err(Malformed::ContentType(0)));
        assert_eq!(check_datagram(&[hello.clone(), vec![22, 0xFE]].concat(), None), Err(Malformed::TooShort));
        let mut tls = ccs.clone();
        tls[1] = 0x03;
        assert_eq!(check_datagram(&[hello.clone(), tls].concat(), None), Err(Malformed::Version(0x03FD)));
        // A single byte of any DTLS-looking value is nothing.
        for b in (20u8..=26).chain(0x20..=0x3F) {
            assert!(check_datagram(&[b], None).is_err(), "{b:#x}");
            assert!(check_datagram(&[b], Some(4)).is_err(), "{b:#x}");
        }
        // tls12_cid: its length is checked where the configured CID length puts it.
        let cid = record(TLS12_CID, &[1, 2, 3, 4], &[0xAA; 8]);
        assert!(check_datagram(&cid, Some(4)).is_ok());
        assert_eq!(check_datagram(&cid, Some(3)), Err(Malformed::Length));
        let mut short = cid.clone();
        short.truncate(cid.len() - 1);
        assert_eq!(check_datagram(&short, Some(4)), Err(Malformed::Length));
        assert_eq!(check_datagram(&[cid.clone(), cid.clone()].concat(), Some(4)).unwrap().cid, Some(&[1, 2, 3, 4][..]));
        assert_eq!(check_datagram(&record(TLS12_CID, &[1, 2, 3, 4], &[]), Some(4)), Err(Malformed::Empty));
        // A DTLS 1.3 record without a length takes the rest; with one, the next record follows.
        let no_length = [0x28, 0x00, 0x01, 0x55, 0x66];
        assert!(check_datagram(&[ccs.clone(), no_length.to_vec()].concat(), None).is_ok());
        let with_length = [0x2C, 0x00, 0x01, 0x00, 0x02, 0x55, 0x66];
        assert!(check_datagram(&[with_length.to_vec(), ccs.clone()].concat(), None).is_ok());
        let mut overlong = with_length;
        overlong[4] = 0x40;
        assert_eq!(check_datagram(&[overlong.to_vec(), ccs].concat(), None), Err(Malformed::Length));
    }
}
